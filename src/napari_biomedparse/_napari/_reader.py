"""Reader: whole-slide and pyramidal images as lazy multiscale Image layers.

Claims OpenSlide formats (svs, ndpi, mrxs, scn, bif), pyramidal / tiled / whole-slide TIFFs,
OME-TIFF and zarr / OME-Zarr images, plus result stores of the slide engine (opened as their
result layers). Plain TIFFs (one small untiled page) and every other file are left to
napari's own readers (``get_reader`` returns None).

The pixels are never loaded at once: levels are dask arrays read tile by tile by
:func:`napari_biomedparse.slide.readers.open_image`. The layer's ``scale`` is the pixel size
in microns (when the file records it), ``units`` micrometres, and ``metadata`` keeps ``mpp``,
``path``, ``objective_power`` and ``offset`` for the widgets and the writer.
"""

from __future__ import annotations

import os
from pathlib import Path

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff", ".qptiff")
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
#: Longest side of the coarsest level napari gets; a slide stored with fewer levels gets lazy
#: 2x-subsampled levels down to this size so that it draws fast when zoomed out.
MIN_LEVEL_SIDE = 1024


def _is_slide_tiff(path: str) -> bool:
    """Whether a TIFF is whole-slide-like: several levels, tiled and large, SVS or OME."""
    import tifffile

    lower = path.lower()
    if lower.endswith((".ome.tif", ".ome.tiff", ".qptiff", ".btf")):
        return True
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or tif.is_ndpi or tif.is_scn or tif.is_ome:
                return True
            series = tif.series[0]
            if len(series.levels) > 1:
                return True
            page = tif.pages[0]
            return bool(page.is_tiled and max(page.shape[:2]) > 4096)
    except Exception:  # noqa: BLE001 - not ours to read
        return False


def _is_result_store(path: str) -> bool:
    import json

    meta = Path(path) / "zarr.json"
    try:
        return "biomedparse_slide" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def get_reader(path):
    """npe2 reader hook: a reader function for slide-like paths, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    lower = path.lower().rstrip("/")
    if lower.endswith(ZARR_SUFFIXES) or (Path(path).is_dir() and _is_result_store(path)):
        if _is_result_store(path):
            return read_result_store
        return read_slide if Path(path).exists() else None
    if lower.endswith(SLIDE_SUFFIXES):
        return read_slide
    if lower.endswith(TIFF_SUFFIXES) and _is_slide_tiff(path):
        return read_slide
    return None


def pyramid(levels: list, min_side: int = MIN_LEVEL_SIDE) -> list:
    """The levels as napari wants them: grey images (C = 1) squeezed, and lazy 2x
    subsampled levels added while the coarsest is longer than ``min_side``."""
    out = []
    for lv in levels:
        if lv.ndim == 3 and lv.shape[-1] == 1:
            lv = lv[..., 0]
        out.append(lv)
    while max(out[-1].shape[:2]) > 2 * min_side:
        out.append(out[-1][::2, ::2])
    return out


def slide_layer_data(source, name: str | None = None):
    """(data, kwargs, "image") for a slide path (or anything ``open_image`` accepts)."""
    from napari_biomedparse.slide.readers import open_image

    img = open_image(source)
    levels = pyramid(list(img.levels))
    path = img.path or (os.fspath(source) if isinstance(source, str | os.PathLike) else None)
    if name is None:
        name = Path(path).name.split(".")[0] if path else "image"
    kwargs = {
        "name": name,
        "multiscale": len(levels) > 1,
        "rgb": levels[0].ndim == 3 and levels[0].shape[-1] in (3, 4),
        "metadata": {
            "mpp": img.mpp,
            "path": path,
            "objective_power": img.objective_power,
            "offset": tuple(int(v) for v in img.offset),
            "format": img.format,
        },
    }
    if img.mpp:
        kwargs["scale"] = (float(img.mpp), float(img.mpp))
        kwargs["units"] = ("um", "um")
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def read_slide(path):
    """Reader function: one lazy multiscale Image layer."""
    if isinstance(path, list | tuple):
        path = path[0]
    return [slide_layer_data(os.fspath(path))]


def read_result_store(path):
    """Reader function for a slide-engine result store: its result layers."""
    from ._functions import open_result_layers

    if isinstance(path, list | tuple):
        path = path[0]
    return open_result_layers(os.fspath(path))
