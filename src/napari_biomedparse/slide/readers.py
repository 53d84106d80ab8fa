"""Lazy readers for whole-slide images and large arrays.

``open_image(source)`` returns a :class:`SlideImage`: a pyramid of lazy dask arrays, level 0
(full resolution) first, each of shape ``(H_l, W_l, C)`` (C = 3 for RGB slides, 1 for grey
images), plus metadata. No reader ever loads a whole level: pixels are read chunk by chunk
when a dask chunk is computed.

Sources
-------
- OpenSlide formats (svs, ndpi, mrxs, scn, bif, vms, vmu, svslide, generic tiled TIFF,
  DICOM-WSI) through openslide-python with the openslide-bin binary.
- TIFF / OME-TIFF through tifffile's zarr store (``aszarr``), which works with zarr 3.
- zarr / OME-Zarr (v0.4 ``multiscales`` in the attributes, v0.5 under ``ome``), or a plain
  zarr array.
- numpy or dask arrays, or a list of them (a napari layer's data, multiscale or not).

Coordinates
-----------
Level-0 pixel coordinates in this package are relative to ``levels[0][0, 0]``. For OpenSlide
formats that declare a bounding box of the non-empty region (``openslide.bounds-x/y``, e.g.
MIRAX), the levels are cropped to that box, exactly as QuPath does, so that coordinates are
QuPath coordinates; ``SlideImage.offset`` = (bounds-y, bounds-x) is where our (0, 0) lies in
OpenSlide's own level-0 frame (add it to go back to OpenSlide coordinates).

(Longer than 400 lines on purpose: the four readers (OpenSlide, tifffile, zarr, arrays) all
build the one :class:`SlideImage`, whose ``read_region`` and ``close`` use the readers'
per-level views (``read_axes``, ``_OpenSlideLevel``); they share the axis rules (``_to_yxc``,
``_reduced_axes``) and ``_parse_float``, and ``open_image`` / ``_open_path`` choose between
them with the format fallbacks in one place. The natural next split is one module per reader.)
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = [
    "SlideImage",
    "SlideReadError",
    "open_image",
    "OPENSLIDE_SUFFIXES",
    "READABLE_SUFFIXES",
]

OPENSLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
    ".tif",
    ".tiff",
)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff", ".qptiff")
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
#: Every file name ending :func:`open_image` reads (what the CLI picks up in a folder).
READABLE_SUFFIXES = tuple(dict.fromkeys(OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES))

_DEFAULT_CHUNK = 1024


class SlideReadError(ValueError):
    """A slide or image could not be read (corrupt, truncated, unsupported, or missing)."""


@dataclass
class SlideImage:
    """A lazy image pyramid with its metadata.

    Attributes
    ----------
    levels
        dask arrays ``(H_l, W_l, C)``, level 0 (full resolution) first. dtype as stored
        (uint8 for brightfield slides).
    mpp
        microns per pixel at level 0 (mean of x and y), or None when the file has none.
    objective_power
        scanner objective magnification (e.g. 20.0), or None.
    offset
        ``(y, x)`` in level-0 pixels: where ``levels[0][0, 0]`` lies in the file's native
        level-0 frame (the OpenSlide bounds offset; (0, 0) for other sources).
    associated
        name -> small RGB numpy array (label, macro, thumbnail), read eagerly (they are small).
    path
        the file or directory read, or None for arrays.
    format
        short reader name: the OpenSlide vendor (``aperio``, ``generic-tiff``, ``dicom``...),
        ``tiff``, ``ome-tiff``, ``zarr``, ``ome-zarr`` or ``array``.
    """

    levels: list[da.Array]
    mpp: float | None = None
    objective_power: float | None = None
    offset: tuple[int, int] = (0, 0)
    associated: dict[str, np.ndarray] = field(default_factory=dict)
    path: str | None = None
    format: str = "array"
    properties: dict[str, Any] = field(default_factory=dict)
    # per level: (array-like, axes letters) read directly by read_region, bypassing dask
    # chunking (reads only the file tiles a region needs); None = read through dask
    direct: list | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 size ``(H, W)`` in pixels."""
        return int(self.levels[0].shape[0]), int(self.levels[0].shape[1])

    @property
    def channels(self) -> int:
        return int(self.levels[0].shape[2])

    @property
    def dtype(self) -> np.dtype:
        return self.levels[0].dtype

    @property
    def downsamples(self) -> list[float]:
        """Per level: level-0 pixels per level pixel (mean of y and x), 1.0 for level 0."""
        h0, w0 = self.shape
        return [0.5 * (h0 / max(lv.shape[0], 1) + w0 / max(lv.shape[1], 1)) for lv in self.levels]

    def level_for_downsample(self, downsample: float) -> int:
        """The lowest-resolution level whose downsample is <= ``downsample`` (1 % tolerance)."""
        best = 0
        for i, d in enumerate(self.downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def close(self) -> None:
        """Release the file handle (and OpenSlide's tile cache) of an OpenSlide source; the
        levels stay usable and reopen the file when read again."""
        if (
            self.path
            and self.direct
            and any(d is not None and isinstance(d[0], _OpenSlideLevel) for d in self.direct)
        ):
            _OpenSlideLevel.close_path(self.path)

    def read_region(
        self, y0: int, x0: int, h: int, w: int, level: int = 0, fill: int | float = 0
    ) -> np.ndarray:
        """Read ``(h, w, C)`` pixels of ``level`` starting at level pixel ``(y0, x0)``.

        Parts outside the image are filled with ``fill``. Reads only the chunks it needs.
        """
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out = np.full((h, w, arr.shape[2]), fill, dtype=arr.dtype)
        ys, ye = max(y0, 0), min(y0 + h, H)
        xs, xe = max(x0, 0), min(x0 + w, W)
        if ye > ys and xe > xs:
            try:
                if self.direct is not None and self.direct[level] is not None:
                    src, axes = self.direct[level]
                    block = read_axes(src, axes, ys, ye, xs, xe)[..., : arr.shape[2]]
                else:
                    block = np.asarray(arr[ys:ye, xs:xe].compute(scheduler="synchronous"))
            except SlideReadError:
                raise
            except Exception as exc:  # decoder / file errors deep inside tifffile or zarr
                raise SlideReadError(
                    f"could not read pixels from {self.path or 'the image'} (level {level}, "
                    f"y={ys}, x={xs}): {type(exc).__name__}: {exc}. The file may be truncated "
                    "or corrupt."
                ) from exc
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = block
        return out


# --------------------------------------------------------------------------------------------
# OpenSlide


class _OpenSlideLevel:
    """Array-like view ``(H, W, 3) uint8`` of one OpenSlide level, cropped to the bounds.

    Picklable (the slide handle is reopened lazily in each process), thread-safe (OpenSlide
    handles are thread-safe).
    """

    _handles: dict[str, Any] = {}
    _lock = threading.Lock()

    def __init__(self, path, level, shape, downsample, offset, background):
        self.path = str(path)
        self.level = int(level)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.downsample = float(downsample)
        self.offset = tuple(int(o) for o in offset)
        self.background = tuple(int(b) for b in background)
        # handles are shared per file version (path, size, mtime): a file replaced at the
        # same path and opened again never reads through the old file's handle
        self.key = f"{self.path}:{_token(Path(self.path))}"

    def __setstate__(self, state):  # pickles made before ``key`` existed
        self.__dict__.update(state)
        self.__dict__.setdefault("key", self.path)

    @classmethod
    def close_path(cls, path: str) -> None:
        """Close this process's OpenSlide handles of ``path`` (reopened on the next read)."""
        with cls._lock:
            keys = [k for k in cls._handles if k == str(path) or k.startswith(f"{path}:")]
            hs = [cls._handles.pop(k) for k in keys]
        for h in hs:
            h.close()

    def _slide(self):
        import openslide

        with _OpenSlideLevel._lock:
            h = _OpenSlideLevel._handles.get(self.key)
            if h is None:
                h = openslide.OpenSlide(self.path)
                _OpenSlideLevel._handles[self.key] = h
            return h

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        h, w = max(y1 - y0, 0), max(x1 - x0, 0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)[:, :, cs]
        # read_region takes the top-left in level-0 coordinates of the native frame
        loc = (
            int(round(self.offset[1] + x0 * self.downsample)),
            int(round(self.offset[0] + y0 * self.downsample)),
        )
        try:
            rgba = np.asarray(self._slide().read_region(loc, self.level, (w, h)))
        except Exception as exc:  # openslide.OpenSlideError and friends
            raise SlideReadError(
                f"could not read pixels from {self.path} (level {self.level}, "
                f"y={y0}, x={x0}): {exc}. The file may be truncated or corrupt."
            ) from exc
        rgb = rgba[..., :3].copy()
        transparent = rgba[..., 3] == 0
        if transparent.any():
            rgb[transparent] = self.background
        return rgb[:, :, cs]


def _parse_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _open_openslide(path: Path, chunk: int) -> SlideImage:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideReadError(
            f"{path}: OpenSlide cannot read this file ({exc}): it is not a supported "
            "whole-slide format, or it is truncated or corrupt. Supported: svs, ndpi, mrxs, "
            "scn, bif, vms, vmu, svslide, tiled TIFF, DICOM-WSI, OME-TIFF, zarr."
        ) from exc
    except openslide.OpenSlideError as exc:
        raise SlideReadError(
            f"{path}: OpenSlide could not open the file ({exc}); it may be truncated or corrupt."
        ) from exc
    props = dict(slide.properties)
    bx = int(props.get("openslide.bounds-x", 0) or 0)
    by = int(props.get("openslide.bounds-y", 0) or 0)
    w0, h0 = slide.level_dimensions[0]
    bw = int(props.get("openslide.bounds-width", w0) or w0)
    bh = int(props.get("openslide.bounds-height", h0) or h0)
    bg = props.get("openslide.background-color")
    background = (255, 255, 255)
    if bg and re.fullmatch(r"[0-9A-Fa-f]{6}", bg):
        background = tuple(int(bg[i : i + 2], 16) for i in (0, 2, 4))
    levels, direct = [], []
    for lv, ds in enumerate(slide.level_downsamples):
        h = max(1, int(math.ceil(bh / ds)))
        w = max(1, int(math.ceil(bw / ds)))
        lw, lh = slide.level_dimensions[lv]
        h, w = min(h, lh), min(w, lw)
        th = int(props.get(f"openslide.level[{lv}].tile-height", 0) or 0)
        tw = int(props.get(f"openslide.level[{lv}].tile-width", 0) or 0)
        cy = max(th, 1) * max(1, chunk // max(th, 1)) if th else chunk
        cx = max(tw, 1) * max(1, chunk // max(tw, 1)) if tw else chunk
        view = _OpenSlideLevel(path, lv, (h, w, 3), ds, (by, bx), background)
        direct.append((view, "YXC"))
        levels.append(
            da.from_array(
                view,
                chunks=(cy, cx, 3),
                asarray=False,
                fancy=False,
                name=f"openslide-{_token(path)}-{lv}",
            )
        )
    mx, my = _parse_float(props.get("openslide.mpp-x")), _parse_float(props.get("openslide.mpp-y"))
    mpp = None
    if mx and my:
        mpp = 0.5 * (mx + my)
    elif mx or my:
        mpp = mx or my
    if mpp is not None and slide.detect_format(str(path)) == "generic-tiff" and mpp > 100:
        # resolution tags in inches/centimetres with the default 72 dpi: not a real pixel size
        mpp = None
    associated = {}
    for name, img in slide.associated_images.items():
        try:
            associated[name] = np.asarray(img.convert("RGB"))
        except Exception:  # a broken associated image must not prevent reading the slide
            continue
    vendor = props.get("openslide.vendor") or slide.detect_format(str(path)) or "openslide"
    return SlideImage(
        levels=levels,
        mpp=mpp,
        objective_power=_parse_float(props.get("openslide.objective-power")),
        offset=(by, bx),
        associated=associated,
        path=str(path),
        format=vendor,
        properties=props,
        direct=direct,
    )


def _token(path: Path) -> str:
    import hashlib

    st = os.stat(path)
    key = f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# TIFF through tifffile + zarr


def read_axes(arr, axes: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read rows [y0,y1) and columns [x0,x1) of an array-like with axes letters ``axes``
    (tifffile / OME: Y, X, C, S, others taken at index 0) as numpy ``(h, w, C)``; the same
    axis rules as :func:`_to_yxc`."""
    axes = axes.upper()
    both = "C" in axes and "S" in axes
    idx, kept = [], []
    for a in axes:
        if a == "Y":
            idx.append(slice(y0, y1))
            kept.append("Y")
        elif a == "X":
            idx.append(slice(x0, x1))
            kept.append("X")
        elif a == "S" or (a == "C" and not both):
            idx.append(slice(None))
            kept.append("C")
        else:
            idx.append(0)
    out = np.asarray(arr[tuple(idx)])
    if "C" not in kept:
        out = out[..., None]
        kept.append("C")
    return out.transpose([kept.index("Y"), kept.index("X"), kept.index("C")])


def _reduced_axes(axes: str, shape) -> dict[str, int]:
    """The axes other than Y, X, C, S of size > 1 (read at index 0): ``{"T": 3, "Z": 5}``.
    With both C and S, C is one of them (samples are kept)."""
    axes = axes.upper()
    both = "C" in axes and "S" in axes
    return {
        a: int(n)
        for a, n in zip(axes, shape)
        if int(n) > 1 and (a not in "YXCS" or (a == "C" and both))
    }


def check_processable(image: SlideImage) -> None:
    """Refuse, for processing, an image whose reading dropped planes (a T / Z stack read at
    index 0) or whose pixel type / channel count the model pipeline cannot interpret (the
    rules of :func:`napari_biomedparse.inference.validate.check_image_kind`)."""
    from napari_biomedparse.inference.validate import check_image_kind

    name = image.path or "the image"
    reduced = image.properties.get("reduced_axes") or {}
    if reduced:
        dims = ", ".join(f"{a}={n}" for a, n in reduced.items())
        raise SlideReadError(
            f"{name} is a stack ({dims}); a slide run reads one 2-D plane. Save the plane you "
            "want as its own image (e.g. with tifffile: imwrite(out, data[t, z])), or segment "
            "the stack slice by slice with segment/recognize"
        )
    check_image_kind(image.dtype, image.channels, name=name)


def _to_yxc(arr: da.Array, axes: str) -> da.Array:
    """Reorder a dask array with tifffile / OME axes letters to (Y, X, C)."""
    axes = axes.upper()
    index = []
    for i, a in enumerate(axes):
        if a in "YXCS":
            index.append(slice(None))
        else:
            index.append(0 if arr.shape[i] > 0 else slice(None))
    arr = arr[tuple(index)]
    kept = [a for a in axes if a in "YXCS"]
    if "C" in kept and "S" in kept:  # both: keep samples, first channel
        arr = arr[tuple(0 if a == "C" else slice(None) for a in kept)]
        kept = [a for a in kept if a != "C"]
    kept = ["C" if a == "S" else a for a in kept]
    if "C" not in kept:
        arr = arr[..., None]
        kept.append("C")
    order = [kept.index("Y"), kept.index("X"), kept.index("C")]
    return arr.transpose(order)


def _tiff_mpp(tif, page) -> float | None:
    # OME metadata
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m:
            v = float(m.group(1))
            unit = u.group(1) if u else "µm"
            scale = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit, 1.0)
            return _parse_float(v * scale)
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return _parse_float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den:
            ppu = num / den
            per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
            if per_unit_um and ppu > 0:
                mpp = per_unit_um / ppu
                if 0.01 < mpp < 100:  # 72 dpi defaults etc. are not a pixel size
                    return mpp
    return None


def _open_tifffile(path: Path, chunk: int) -> SlideImage:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(str(path))
        series = tif.series[0]
        if "Y" not in series.axes or "X" not in series.axes:
            raise ValueError(f"no image plane in the first series (axes {series.axes!r})")
        reduced = _reduced_axes(series.axes, series.shape)
        store = series.aszarr()
        z = zarr.open(store, mode="r")
        if isinstance(z, zarr.Array):
            arrays = [z]
        else:
            arrays = [z[str(i)] for i in range(len(series.levels))]
        levels, direct = [], []
        for a in arrays:
            d = da.from_zarr(a)
            direct.append((a, series.axes))
            d = _to_yxc(d, series.axes)
            if d.chunksize[0] < chunk or d.chunksize[1] < chunk:
                d = d.rechunk((min(chunk, d.shape[0]), min(chunk, d.shape[1]), d.shape[2]))
            levels.append(d)
    except Exception as exc:
        raise SlideReadError(
            f"{path}: could not read as TIFF ({type(exc).__name__}: {exc}); the file may be "
            "truncated, corrupt or not a TIFF."
        ) from exc
    mpp = _tiff_mpp(tif, series.pages[0] if series.pages else tif.pages[0])
    return SlideImage(
        levels=levels,
        mpp=mpp,
        path=str(path),
        format="ome-tiff" if tif.is_ome else "tiff",
        direct=direct,
        properties={"reduced_axes": reduced} if reduced else {},
    )


# --------------------------------------------------------------------------------------------
# zarr / OME-Zarr


def _open_zarr(path: Path, chunk: int) -> SlideImage:
    import zarr

    try:
        z = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise SlideReadError(f"{path}: could not open as zarr ({exc}).") from exc
    if isinstance(z, zarr.Array):
        arr = da.from_zarr(z)
        return _from_arrays([arr], None, str(path), "zarr")
    attrs = dict(z.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        names = sorted((k for k, _ in z.arrays()), key=lambda s: (len(s), s))
        if not names:
            raise SlideReadError(f"{path}: zarr group without arrays or OME multiscales metadata.")
        return _from_arrays([da.from_zarr(z[n]) for n in names], None, str(path), "zarr")
    m = ms[0]
    try:
        datasets = [z[ds["path"]] for ds in m["datasets"]]
    except (KeyError, TypeError, FileNotFoundError) as exc:
        listed = [ds.get("path") for ds in m.get("datasets", []) if isinstance(ds, dict)]
        present = sorted(k for k, _ in z.arrays())
        raise SlideReadError(
            f"{path}: the OME-Zarr multiscales metadata lists levels {listed} but "
            f"{exc} is missing or unreadable (present: {present}); the store is incomplete "
            "(an interrupted copy?): copy it again, or remove the missing level from the "
            "multiscales datasets"
        ) from None
    if not datasets:
        raise SlideReadError(f"{path}: the OME-Zarr multiscales metadata lists no datasets.")
    axes = m.get("axes") or ["t", "c", "z", "y", "x"][-datasets[0].ndim :]
    letters = "".join(str(a["name"] if isinstance(a, dict) else a)[:1].upper() for a in axes)
    if "Y" not in letters or "X" not in letters or len(letters) != datasets[0].ndim:
        raise SlideReadError(
            f"{path}: the OME-Zarr axes {[a.get('name') if isinstance(a, dict) else a for a in axes]} "
            f"do not name a 'y' and an 'x' axis for the {datasets[0].ndim}-D arrays; fix the "
            "multiscales 'axes' metadata (e.g. ['c', 'y', 'x'])"
        )
    reduced = _reduced_axes(letters, datasets[0].shape)
    levels, mpp, direct = [], None, []
    for ds in m["datasets"]:
        d = da.from_zarr(z[ds["path"]])
        levels.append(_to_yxc(d, letters))
        direct.append((z[ds["path"]], letters))
        if mpp is None:
            for t in ds.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    yi = letters.index("Y")
                    unit = None
                    if isinstance(axes[yi], dict):
                        unit = axes[yi].get("unit")
                    scale = {"nanometer": 1e-3, "millimeter": 1e3, "meter": 1e6}.get(unit, 1.0)
                    if unit in (None, "micrometer", "nanometer", "millimeter", "meter"):
                        mpp = _parse_float(float(t["scale"][yi]) * scale)
    return SlideImage(
        levels=levels,
        mpp=mpp,
        path=str(path),
        format="ome-zarr",
        direct=direct,
        properties={"reduced_axes": reduced} if reduced else {},
    )


# --------------------------------------------------------------------------------------------
# arrays


def _from_arrays(arrays, mpp, path, fmt) -> SlideImage:
    levels, direct = [], []
    for a in arrays:
        d = a if isinstance(a, da.Array) else da.from_array(a, chunks=_DEFAULT_CHUNK)
        axes = "YXC"
        if d.ndim == 2:
            d = d[..., None]
            axes = "YX"
        elif d.ndim == 3 and d.shape[-1] not in (1, 3, 4) and d.shape[0] in (1, 3, 4):
            d = d.transpose(1, 2, 0)  # channel-first (C, H, W)
            axes = "CYX"
        elif d.ndim != 3:
            raise SlideReadError(
                f"expected an image array of shape (H, W), (H, W, C) or (C, H, W); got "
                f"shape {tuple(d.shape)}. Pass one 2D plane (e.g. data[t, z]) instead."
            )
        if d.shape[-1] == 4:
            d = d[..., :3]
        levels.append(d)
        direct.append((a, axes) if isinstance(a, np.ndarray) else None)
    if not levels:
        raise SlideReadError("no image data (an empty list of levels).")
    return SlideImage(levels=levels, mpp=mpp, path=path, format=fmt, direct=direct)


def open_image(source, *, mpp: float | None = None, chunk: int = _DEFAULT_CHUNK) -> SlideImage:
    """Open a slide, a TIFF, a zarr store or an array as a lazy pyramid.

    Parameters
    ----------
    source
        a path (str or Path) to a slide file, TIFF, DICOM file or zarr directory; a numpy or
        dask array ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``; a list of such arrays (a
        multiscale napari layer's data, full resolution first); or a ``SlideImage``.
    mpp
        microns per pixel at level 0, overriding (or supplying) the file's value.
    chunk
        preferred dask chunk edge in pixels (aligned to the file's tiles where known).

    Returns
    -------
    SlideImage with ``levels`` of shape ``(H_l, W_l, C)``, level 0 first.

    Raises
    ------
    FileNotFoundError
        the path does not exist.
    SlideReadError (a ValueError)
        the file is corrupt, truncated or of an unsupported format; the message says which.
    """
    if isinstance(source, SlideImage):
        img = source
    elif isinstance(source, (np.ndarray, da.Array)) or (
        hasattr(source, "shape") and hasattr(source, "dtype") and not isinstance(source, list)
    ):
        img = _from_arrays([source], None, None, "array")
    elif isinstance(source, (list, tuple)):
        img = _from_arrays(list(source), None, None, "array")
    else:
        path = Path(os.fspath(source)).expanduser()
        if not path.exists():
            if path.is_symlink():
                raise SlideReadError(
                    f"{path} is a symbolic link that leads nowhere (broken, or a loop of links): "
                    "point it at the slide file or give the file itself"
                )
            raise FileNotFoundError(f"no such slide or image: {path}")
        img = _open_path(path, chunk)
    if mpp is not None:
        if not (_parse_float(mpp)):
            raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
        img.mpp = float(mpp)
    if img.levels[0].shape[0] == 0 or img.levels[0].shape[1] == 0:
        raise SlideReadError(f"{img.path or 'array'}: the image is empty (zero pixels).")
    return img


def _open_path(path: Path, chunk: int) -> SlideImage:
    name = path.name.lower()
    if path.is_dir():
        if (
            (path / "zarr.json").exists()
            or (path / ".zgroup").exists()
            or (path / ".zarray").exists()
        ):
            return _open_zarr(path, chunk)
        if name.endswith(ZARR_SUFFIXES):
            raise SlideReadError(f"{path}: not a zarr store (no zarr.json / .zgroup inside).")
        raise SlideReadError(
            f"{path} is a directory; open_image reads one slide (a file or a zarr store). "
            "For a folder of slides use process_slides or the command line."
        )
    if path.stat().st_size == 0:
        raise SlideReadError(f"{path}: the file is empty (0 bytes).")
    is_ome = name.endswith((".ome.tif", ".ome.tiff"))
    try:
        import openslide  # noqa: F401
    except ImportError:  # openslide-python / openslide-bin missing: TIFF-based files only
        if name.endswith(TIFF_SUFFIXES + (".svs", ".ndpi", ".scn", ".bif", ".svslide")):
            return _open_tifffile(path, chunk)
        raise SlideReadError(
            f"{path}: reading this format needs openslide-python and openslide-bin "
            "(pip install openslide-python openslide-bin)"
        ) from None
    if name.endswith(TIFF_SUFFIXES) and not is_ome:
        # pyramidal / vendor TIFFs (svs-like, generic tiled) read best through OpenSlide
        import openslide

        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except Exception:
            fmt = None
        if fmt is not None:
            try:
                return _open_openslide(path, chunk)
            except SlideReadError:
                pass
        return _open_tifffile(path, chunk)
    if is_ome:
        return _open_tifffile(path, chunk)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return _open_openslide(path, chunk)
    # unknown suffix: let OpenSlide sniff it, then tifffile
    import openslide

    fmt = None
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        fmt = None
    if fmt:
        return _open_openslide(path, chunk)
    try:
        return _open_tifffile(path, chunk)
    except SlideReadError:
        pass
    raise SlideReadError(
        f"{path}: unsupported file format. Readable: OpenSlide formats (svs, ndpi, mrxs, scn, "
        "bif, vms, vmu, svslide, tiled TIFF, DICOM-WSI), TIFF / OME-TIFF, zarr / OME-Zarr."
    )
