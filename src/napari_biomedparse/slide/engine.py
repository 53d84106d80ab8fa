"""The whole-slide engine: ``process_slide`` and ``SlideResult``.

A run goes through resumable stages, each made of tasks that write chunks no other task
writes (so the same functions can be dispatched to other processes or machines):

1. tissue mask on a low-resolution level (saved as ``tissue_mask``);
2. tiles: a bounded read-ahead of tiles on worker threads feeds fixed batches to the model;
   a writer thread stores each tile's probabilities (``tiles/probs``) and then marks it done
   (``tiles/state``) -- :func:`run_tiles`, the unit of work to dispatch elsewhere;
3. blending of overlapping tiles into ``probs/0`` and the class map ``classes/0``
   (:func:`~napari_biomedparse.slide.stitching.blend_chunks`);
4. instances block by block with a halo, merged across block borders
   (:mod:`~napari_biomedparse.slide.blockwise`), painted into ``labels/0``;
5. display pyramids, the table and outlines (level-0 coordinates), the summary; then the
   ``<out>.partial`` directory is renamed to ``out``.

Batches are a fixed partition of the tissue tiles, and a batch whose tiles are not all
recorded is recomputed whole, so a resumed run feeds the model exactly the same batches as
an uninterrupted one and writes identical bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .blockwise import (
    BlockLayout,
    BlockRecord,
    components,
    label_block,
    paint_block,
    split_labeller,
)
from .readers import SlideImage, SlideReadError, open_image
from .stitching import blend_chunks
from .store import (
    FORMAT_VERSION,
    RunCancelled,
    finalize_store,
    open_group,
    partial_path,
    prepare_store,
    read_meta,
    read_state,
    save_npz_atomic,
    write_meta,
)
from .tiling import TileGrid, defaults_for, read_tile
from .tissue import compute_tissue_mask

__all__ = [
    "process_slide",
    "process_slides",
    "SlideResult",
    "run_tiles",
    "resolve_predictor",
    "model_fingerprint",
    "CLASS_COLORS",
]

CHUNK = 1024  # output chunk / instance block edge (output pixels)
HALO_UM = 32.0  # instance halo in microns (grows when an object needs more)
MAX_HALO_UM = 512.0
MIN_TISSUE_FRACTION = 0.01

CLASS_COLORS = {
    "neoplastic cells": (255, 0, 0),
    "inflammatory cells": (0, 200, 0),
    "connective tissue cells": (0, 80, 255),
    "epithelial cells": (255, 160, 0),
    "dead cells": (255, 255, 0),
}
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def class_color(name: str, index: int) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name.lower(), _PALETTE[index % len(_PALETTE)])


# --------------------------------------------------------------------------------------------
# model resolution


def resolve_predictor(model: Any = "default", device: str | None = None):
    """A predictor for ``model``: a name or path (``hub.load_model``), a model object, or
    anything with ``predict_batch(rgb (B,S,S,3) uint8, prompts) -> (B,P,S,S)`` and
    ``input_size`` (returned as is)."""
    if hasattr(model, "predict_batch") and hasattr(model, "input_size"):
        return model
    from napari_biomedparse.inference.predictor import Predictor

    if isinstance(model, (str, os.PathLike)):
        from napari_biomedparse.hub import load_model

        model = load_model(str(model) if isinstance(model, os.PathLike) else model)
    return Predictor(model, device=device or "auto")


def model_fingerprint(predictor) -> str:
    """A stable identity of the predictor's weights (sha256 over names, shapes and bytes)."""
    fp = getattr(predictor, "fingerprint", None)
    if fp is not None:
        return str(fp() if callable(fp) else fp)
    cached = getattr(predictor, "_nbp_fingerprint", None)
    if cached:
        return cached
    m = getattr(predictor, "model", None)
    h = hashlib.sha256()
    if m is not None and hasattr(m, "state_dict"):
        for k, v in sorted(m.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(str(t.dtype).encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    else:
        h.update(type(predictor).__qualname__.encode())
        h.update(repr(getattr(predictor, "__dict__", {})).encode())
    out = "sha256:" + h.hexdigest()[:32]
    try:
        predictor._nbp_fingerprint = out
    except Exception:
        pass
    return out


def resolve_prompts(prompts, modality: str, predictor) -> list[str]:
    if prompts is not None:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p).strip() for p in prompts if str(p).strip()]
        if not prompts:
            raise ValueError("prompts is empty; give at least one text prompt or prompts=None")
        return prompts
    from napari_biomedparse.inference.modalities import targets_for

    model = getattr(predictor, "model", None)
    return list(targets_for(modality, model=model if model is not None else predictor))


# --------------------------------------------------------------------------------------------
# the tile stage (unit of distributed work)


def _resize_probs(out: np.ndarray, size: int) -> np.ndarray:
    """(B, P, S, S) float -> (B, P, size, size) float32 (bilinear, antialiased downscale)."""
    if out.shape[-1] == size and out.shape[-2] == size:
        return out.astype(np.float32, copy=False)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    r = torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False, antialias=size < out.shape[-1]
    )
    return r.numpy()


def run_tiles(
    group,
    image: SlideImage,
    grid: TileGrid,
    predictor,
    batches: list[list[int]],
    prompts: list[str],
    *,
    fill: int = 255,
    intensity_range: tuple[float, float] | None = None,
    readers: int = 2,
    read_ahead: int = 2,
    progress=None,
    cancel=None,
) -> int:
    """Process these tile batches with this predictor and write them into this store.

    ``batches``: lists of flat tile indices (fixed partition; a batch is always run whole).
    Writes ``tiles/probs[i, j]`` (uint8, round(255 p), ``(P, T, T)``) then
    ``tiles/state[i, j] = 1`` for each tile, from a writer thread, while worker threads read
    the next tiles (at most ``read_ahead`` batches ahead). Only the chunks of the given
    tiles are written, so several processes may run disjoint batches on one store.
    ``progress(done_tiles, total_tiles, message)`` is called after tiles are flushed.
    Raises :class:`RunCancelled` when ``cancel`` is set (written tiles stay recorded).
    Returns the number of tiles written.
    """
    S = int(predictor.input_size)
    T = grid.tile_size
    probs_arr = group["tiles/probs"]
    state_arr = group["tiles/state"]
    total = sum(len(b) for b in batches)
    done = [0]
    errors: list[BaseException] = []
    wq: queue.Queue = queue.Queue(maxsize=max(1, read_ahead))

    def writer():
        while True:
            item = wq.get()
            if item is None:
                return
            if errors:
                continue
            batch, out = item
            try:
                if out.dtype == np.uint8 and out.shape[-1] == T:  # round(255 p) made on the GPU
                    q = out
                else:
                    out = _resize_probs(np.asarray(out, dtype=np.float32), T)
                    q = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
                for b, k in enumerate(batch):
                    i, j = grid.index(k)
                    probs_arr[i, j] = q[b]
                for k in batch:  # only after every tile of the batch is stored
                    i, j = grid.index(k)
                    state_arr[i, j] = 1
                done[0] += len(batch)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

    wt = threading.Thread(target=writer, name="nbp-tile-writer", daemon=True)
    wt.start()
    pool = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="nbp-tile-reader")

    def submit(batch):
        return [
            pool.submit(read_tile, image, grid, k, S, fill=fill, intensity_range=intensity_range)
            for k in batch
        ]

    pending: collections.deque = collections.deque()
    it = iter(batches)
    try:
        for _ in range(max(1, read_ahead) + 1):
            b = next(it, None)
            if b is None:
                break
            pending.append((b, submit(b)))
        last_reported = -1
        while pending:
            if cancel is not None and cancel.is_set():
                raise RunCancelled("cancelled")
            if errors:
                raise errors[0]
            batch, futs = pending.popleft()
            rgb = np.stack([f.result() for f in futs])
            nb = next(it, None)
            if nb is not None:
                pending.append((nb, submit(nb)))
            out = predictor.predict_batch(rgb, prompts)
            if hasattr(out, "detach"):
                out = out.detach().cpu().numpy()
            out = np.asarray(out)
            if out.shape[:2] != (len(batch), len(prompts)):
                raise RuntimeError(
                    f"predictor returned shape {out.shape}, expected ({len(batch)}, "
                    f"{len(prompts)}, {S}, {S})"
                )
            wq.put((batch, out))
            if progress is not None and done[0] != last_reported:
                last_reported = done[0]
                progress(done[0], total, f"tiles {done[0]}/{total}")
    finally:
        for _, futs in pending:
            for f in futs:
                f.cancel()
        pool.shutdown(wait=True)
        wq.put(None)
        wt.join()
    if errors:
        raise errors[0]
    if progress is not None:
        progress(done[0], total, f"tiles {done[0]}/{total}")
    return done[0]


# --------------------------------------------------------------------------------------------
# helpers


def _require(group, name, shape, chunks, dtype, fill_value=0):
    if name in group:
        arr = group[name]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"store array {name} has shape {arr.shape}, expected {shape}")
        return arr
    return group.create_array(
        name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value
    )


def _intensity_range(image: SlideImage) -> tuple[float, float] | None:
    if image.dtype == np.uint8:
        return None
    # local threads even when a distributed Client is the default scheduler
    low = np.asarray(image.levels[-1][:2048, :2048].compute(scheduler="threads"), np.float32)
    lo, hi = np.percentile(low, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _source_id(image: SlideImage) -> dict:
    return {
        "name": Path(image.path).name if image.path else "array",
        "shape": list(image.shape),
        "channels": image.channels,
        "quickhash": image.properties.get("openslide.quickhash-1"),
    }


def _pyramid(group, name: str, dtype, min_size: int = CHUNK) -> int:
    """Build ``name/1..`` by 2x subsampling (nearest: labels stay labels). Returns levels."""
    lvl = 0
    while True:
        src = group[f"{name}/{lvl}"]
        H, W = src.shape
        if max(H, W) <= min_size:
            return lvl + 1
        h, w = -(-H // 2), -(-W // 2)
        dst_name = f"{name}/{lvl + 1}"
        if dst_name in group and tuple(group[dst_name].shape) == (h, w):
            dst = group[dst_name]
            if group[dst_name].attrs.get("complete"):
                lvl += 1
                continue
        else:
            dst = group.create_array(
                dst_name, shape=(h, w), chunks=(CHUNK, CHUNK), dtype=dtype, fill_value=0
            )
        half = CHUNK // 2
        for y in range(0, h, CHUNK):
            for x in range(0, w, CHUNK):
                sub = np.zeros((min(CHUNK, h - y), min(CHUNK, w - x)), dtype)
                for dy in range(0, sub.shape[0], half):  # one source chunk at a time
                    for dx in range(0, sub.shape[1], half):
                        sy, sx = 2 * (y + dy), 2 * (x + dx)
                        blk = np.asarray(src[sy : sy + CHUNK, sx : sx + CHUNK])[::2, ::2]
                        sub[dy : dy + blk.shape[0], dx : dx + blk.shape[1]] = blk
                if sub.any():
                    dst[y : y + sub.shape[0], x : x + sub.shape[1]] = sub
        dst.attrs["complete"] = True
        lvl += 1
        _trim_memory()


def _trim_memory() -> None:
    """Give freed heap memory back to the OS between stages (glibc keeps per-thread arenas
    of freed buffers, which otherwise shows up as resident memory)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _Progress:
    """Maps stage progress onto one overall (done, total) and checks ``cancel``."""

    def __init__(self, callback, cancel, total):
        self.cb, self.cancel, self.total, self.base = callback, cancel, max(int(total), 1), 0

    def stage(self, size):
        def f(done, total, message):
            if self.cb is not None:
                self.cb(min(self.base + done, self.total), self.total, message)

        return f

    def advance(self, size):
        self.base += size
        _trim_memory()

    def check(self):
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled("cancelled")


# --------------------------------------------------------------------------------------------
# the public entry point


def process_slide(
    source,
    out,
    *,
    model: Any = "default",
    prompts=None,
    recognize: bool = True,
    modality: str = "pathology",
    mpp: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tissue_mask: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    progress=None,
    cancel=None,
    client=None,
    slide_mpp: float | None = None,
    device: str | None = None,
    instances: str = "split",
    min_area_um2: float = 8.0,
    readers: int = 2,
    keep_tiles: bool = False,
) -> SlideResult:
    """Recognise (or segment) a whole slide tile by tile into a zarr store at ``out``.

    Parameters
    ----------
    source
        slide path, zarr store, array or :class:`SlideImage` (see ``open_image``).
    out
        result directory (a zarr v3 store). Written as ``out + ".partial"`` and renamed when
        complete. An existing ``out`` is refused unless ``overwrite``.
    model
        "default", a model name or path (``load_model``), a model object, or a Predictor
        (anything with ``predict_batch`` and ``input_size``).
    prompts
        text prompts; None = every target of ``modality`` known to the model.
    recognize
        also make the class map, instances, table and outlines (else probabilities only).
    mpp, tile_size, overlap
        target um/px and tile edge / overlap in pixels at that resolution; defaults per
        modality (pathology: 0.5 um/px, 256 px, 32 px; fluorescence and others: the image's
        own resolution, which then needs no pixel size). Each tile is resized to the model's
        input size.
    batch_size
        tiles per model call (default 4 on CPU, 16 on CUDA).
    tissue_mask
        skip tiles without tissue (mask from a low-resolution level, saved in the store).
    resume, overwrite
        resume an unfinished run with the same parameters; ``overwrite`` starts over and
        replaces an existing result (only once the new one is complete).
    progress, cancel
        ``progress(done, total, message)``; ``cancel`` a threading.Event-like object.
        On cancel :class:`~napari_biomedparse.slide.store.RunCancelled` is raised and the
        finished work stays in ``out.partial`` for a resume.
    client
        a dask.distributed client to dispatch tiles (``slide/distributed.py``).
    slide_mpp
        level-0 um/px of the slide when the file has none (or to override it).
    instances
        "split" (touching nuclei separated with ``inference.instances.split_instances`` at a
        fixed radius of 3.5 um) or "components" (8-connected components of each class).
    min_area_um2
        objects smaller than this are dropped.
    readers
        worker threads reading tiles ahead of the model.
    keep_tiles
        keep the raw per-tile probabilities (``tiles/probs``) in the result; by default
        they are deleted once blended (``tiles/state`` stays as the record of the run).

    Returns
    -------
    SlideResult (table coordinates in level-0 pixels of the slide).
    """
    t_start = time.perf_counter()
    out = Path(out)
    if isinstance(source, SlideImage):
        image = dataclasses.replace(source)  # never change the caller's object
        if slide_mpp is not None:
            image.mpp = float(slide_mpp)
    else:
        image = open_image(source, mpp=slide_mpp)
    d = defaults_for(modality)
    notes: list[str] = []
    native = mpp is None and d["mpp"] is None
    physical = image.mpp is not None
    if image.mpp is None and native:
        # a modality processed at its own resolution needs no physical pixel size
        image.mpp = 1.0
        notes.append(
            "the image has no pixel size; processed at its own resolution "
            "(areas in um^2 assume 1 um/px)"
        )
    if image.mpp is None:
        raise ValueError(
            f"{image.path or 'the image'} has no pixel size (microns per pixel) in its "
            "metadata. Give it: process_slide(..., slide_mpp=0.25) or on the command line "
            "--slide-mpp 0.25."
        )
    target_mpp = float(image.mpp if native else (mpp if mpp is not None else d["mpp"]))
    if not (target_mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    T = int(tile_size if tile_size is not None else d["tile_size"])
    O_ = int(overlap if overlap is not None else d["overlap"])
    grid = TileGrid(image.shape, float(image.mpp), target_mpp, T, O_)
    H, W = grid.shape
    if H < T and W < T:
        msg = (
            f"the slide ({H} x {W} px at {target_mpp:g} um/px) is smaller than one tile "
            f"({T} px); it is processed as one padded tile"
        )
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    if client is not None:
        try:
            from . import distributed  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "client= needs napari_biomedparse.slide.distributed, which is not available "
                "in this installation; run without client"
            ) from exc
    predictor = resolve_predictor(model, device)
    prompts = resolve_prompts(prompts, modality, predictor)
    P = len(prompts)
    S = int(predictor.input_size)
    if batch_size is None:
        dev = str(getattr(predictor, "device", "cpu"))
        batch_size = 16 if dev.startswith("cuda") else 4
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    min_area = max(1, int(round(min_area_um2 / target_mpp**2)))
    if instances not in ("split", "components"):
        raise ValueError(f"instances must be 'split' or 'components', got {instances!r}")
    params = {
        "format_version": FORMAT_VERSION,
        "source": _source_id(image),
        "slide_mpp": float(image.mpp),
        "mpp": target_mpp,
        "tile_size": T,
        "overlap": O_,
        "batch_size": batch_size,
        "prompts": prompts,
        "modality": str(modality),
        "recognize": bool(recognize),
        "tissue_mask": bool(tissue_mask),
        "model": model_fingerprint(predictor),
        "input_size": S,
        "instances": instances,
        "min_area_um2": float(min_area_um2),
    }
    group, resumed = prepare_store(out, params, resume=resume, overwrite=overwrite)
    meta = read_meta(group)
    meta.update(
        {
            "grid": grid.to_dict(),
            "shape": [H, W],
            "scale": grid.scale,
            "offset": list(image.offset),
            "class_names": prompts,
            "class_colors": [class_color(p, i) for i, p in enumerate(prompts)],
            "source_path": str(image.path) if image.path else None,
            "objective_power": image.objective_power,
        }
    )
    write_meta(group, meta)

    # 1. tissue mask -----------------------------------------------------------------------
    brightfield = True
    if "tissue_mask" in group and group["tissue_mask"].attrs.get("complete"):
        tm_arr = group["tissue_mask"]
        mask = np.asarray(tm_arr[...]).astype(bool)
        mask_ds = float(tm_arr.attrs["downsample"])
        brightfield = bool(tm_arr.attrs.get("brightfield", True))
    else:
        import dask

        with dask.config.set(scheduler="threads"):  # not a default distributed Client
            tm = compute_tissue_mask(image)
        mask, mask_ds, brightfield = tm.mask, tm.downsample, tm.brightfield
        tm_arr = group.create_array(
            "tissue_mask",
            shape=mask.shape,
            chunks=mask.shape,
            dtype="uint8",
            fill_value=0,
            overwrite=True,
        )
        tm_arr[...] = mask.astype(np.uint8)
        tm_arr.attrs.update({"downsample": mask_ds, "brightfield": brightfield, "complete": True})
    from .tissue import TissueMask

    tmask = TissueMask(mask, mask_ds, brightfield)

    # 2. tiles -----------------------------------------------------------------------------
    ny, nx = grid.grid_shape
    s = grid.scale
    selected = []
    for k in range(grid.n_tiles):
        y0, x0, y1, x1 = grid.extent(k)
        if not tissue_mask or tmask.region_fraction(y0 * s, x0 * s, y1 * s, x1 * s) >= (
            MIN_TISSUE_FRACTION
        ):
            selected.append(k)
    batches = [selected[i : i + batch_size] for i in range(0, len(selected), batch_size)]
    _require(group, "tiles/probs", (ny, nx, P, T, T), (1, 1, P, T, T), "uint8")
    state = _require(group, "tiles/state", (ny, nx), (1, 1), "uint8")
    done_tiles = read_state(state).reshape(-1) == 1
    todo = [b for b in batches if not all(done_tiles[k] for k in b)]
    C = CHUNK
    nby, nbx = -(-H // C), -(-W // C)
    _require(group, "probs/0", (P, H, W), (P, C, C), "uint8")
    _require(group, "probs_state", (nby, nbx), (1, 1), "uint8")
    if recognize:
        _require(group, "classes/0", (H, W), (C, C), "uint8")
        _require(group, "labels/0", (H, W), (C, C), "int32")
    n_blocks = nby * nbx
    total_units = len(selected) + n_blocks + (2 * n_blocks if recognize else 0)
    prog = _Progress(progress, cancel, total_units)
    n_before = len(selected) - sum(len(b) for b in todo)
    prog.advance(n_before)
    t_tiles = time.perf_counter()
    fill = 255 if brightfield else 0
    if todo:
        if client is not None:
            from .distributed import run_tiles_distributed

            run_tiles_distributed(
                client,
                out,
                image,
                grid,
                predictor,
                todo,
                prompts,
                fill=fill,
                progress=prog.stage(len(selected)),
                cancel=cancel,
                model=model,
                device=device,
                readers=readers,
            )
        else:
            run_tiles(
                group,
                image,
                grid,
                predictor,
                todo,
                prompts,
                fill=fill,
                intensity_range=_intensity_range(image),
                readers=readers,
                progress=prog.stage(len(selected)),
                cancel=cancel,
            )
    prog.advance(len(selected) - n_before)
    t_tiles = time.perf_counter() - t_tiles

    # 3. blending --------------------------------------------------------------------------
    prog.check()
    blend_chunks(
        group,
        grid,
        range(n_blocks),
        n_prompts=P,
        recognize=recognize,
        progress=_relabel(prog.stage(n_blocks), "blending"),
        cancel=cancel,
    )
    prog.advance(n_blocks)

    # 4. instances -------------------------------------------------------------------------
    n_cut = 0
    if recognize:
        layout = BlockLayout((H, W), C)
        halo = max(8, int(round(HALO_UM / target_mpp)))
        max_halo = max(halo, int(round(MAX_HALO_UM / target_mpp)))
        labeller = components
        if instances == "split":
            # nuclei radius ~3.5 um; without a physical pixel size split_instances estimates it
            labeller = split_labeller(3.5 / target_mpp if physical else None)
        bdir = partial_path(out) / "blocks"
        bdir.mkdir(exist_ok=True)
        classes_arr, probs_arr = group["classes/0"], group["probs/0"]

        def one_block(b):
            f = bdir / f"b_{b}.npz"
            if not f.exists():
                rec = label_block(
                    classes_arr,
                    probs_arr,
                    layout,
                    b,
                    n_classes=P,
                    halo=halo,
                    max_halo=max_halo,
                    min_area=min_area,
                    labeller=labeller,
                )
                save_npz_atomic(f, **rec.to_arrays())

        # blocks are independent (each writes its own record): a few worker threads (the
        # labelling libraries release the GIL for much of their work); bounded in flight
        n_done = 0
        with ThreadPoolExecutor(max(1, readers), thread_name_prefix="nbp-blocks") as pool:
            todo_blocks = collections.deque(range(n_blocks))
            running: collections.deque = collections.deque()
            while todo_blocks or running:
                while todo_blocks and len(running) < 2 * max(1, readers):
                    prog.check()
                    running.append(pool.submit(one_block, todo_blocks.popleft()))
                running.popleft().result()
                n_done += 1
                if progress is not None:
                    progress(prog.base + n_done, prog.total, f"instances {n_done}/{n_blocks}")
        prog.advance(n_blocks)
        counts, boxes = [], []
        for b in range(n_blocks):
            with np.load(bdir / f"b_{b}.npz") as a:
                counts.append(int(a["n"]))
                oy, ox = (int(v) for v in a["origin"])
                h, w = a["crop"].shape
                boxes.append((oy, ox, oy + h, ox + w))
                n_cut += int(a["n_cut"])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        labels_arr = group["labels/0"]
        # LRU of block records: a 3 x 3 neighbourhood moving along a row needs ~9 of them
        cache: collections.OrderedDict[int, BlockRecord] = collections.OrderedDict()
        for b in range(n_blocks):
            prog.check()
            cy0, cx0, cy1, cx1 = layout.core(b)
            near = {}
            for nb, (y0, x0, y1, x1) in enumerate(boxes):
                if counts[nb] and y0 < cy1 and y1 > cy0 and x0 < cx1 and x1 > cx0:
                    if nb in cache:
                        cache.move_to_end(nb)
                    else:
                        with np.load(bdir / f"b_{nb}.npz") as a:
                            cache[nb] = BlockRecord.from_arrays(a)
                        while len(cache) > 12:
                            cache.popitem(last=False)
                    near[nb] = cache[nb]
            core = paint_block(layout, b, near, offsets)
            if core.any():
                labels_arr[cy0:cy1, cx0:cx1] = core
            if progress is not None:
                progress(prog.base + b + 1, prog.total, f"labels {b + 1}/{n_blocks}")
        prog.advance(n_blocks)
        n_levels = _pyramid(group, "labels", "int32")
        _pyramid(group, "classes", "uint8")
    else:
        n_levels, bdir, offsets = 1, None, None

    part = partial_path(out)
    if not keep_tiles:  # raw tile outputs are only needed until blending is done
        shutil.rmtree(part / "tiles" / "probs", ignore_errors=True)
    per_class = _write_tables(bdir, n_blocks, offsets, grid, prompts, target_mpp, part)
    n_objects = int(sum(per_class.values()))
    summary = {
        "objects": n_objects,
        "objects_per_class": per_class,
        "tiles_total": int(grid.n_tiles),
        "tiles_processed": int(len(selected)),
        "tiles_skipped": int(grid.n_tiles - len(selected)),
        "tiles_resumed": int(n_before),
        "tissue_fraction": float(tmask.fraction),
        "objects_cut_at_max_halo": int(n_cut),
        "seconds": round(time.perf_counter() - t_start, 3),
        "seconds_tiles": round(t_tiles, 3),
        "resumed": bool(resumed),
        "notes": notes,
        "pyramid_levels": n_levels,
    }
    meta = read_meta(group)
    meta.update({"status": "complete", "summary": summary})
    write_meta(group, meta)
    final = finalize_store(out, overwrite=overwrite)
    if not isinstance(source, SlideImage):
        image.close()  # a folder of slides must not accumulate open handles and caches
    if progress is not None:
        progress(prog.total, prog.total, "done")
    return SlideResult.open(final)


def _relabel(cb, word):
    def f(done, total, message):
        cb(done, total, f"{word} {done}/{total}")

    return f


def _table_schemas():
    import pyarrow as pa

    from .blockwise import TABLE_COLUMNS

    ints = {"label", "class_id", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"}
    fields = []
    for c in TABLE_COLUMNS:
        t = pa.int64() if c in ints else pa.string() if c == "class" else pa.float64()
        fields.append(pa.field(c, t))
    table = pa.schema(fields)
    outl = pa.schema(
        [
            pa.field("label", pa.int64()),
            pa.field("y", pa.list_(pa.float32())),
            pa.field("x", pa.list_(pa.float32())),
        ]
    )
    return table, outl


def _write_tables(bdir: Path, n_blocks, offsets, grid: TileGrid, prompts, target_mpp, part):
    """Stream the table and outlines (level-0 pixel coordinates) from the block records into
    ``table.parquet`` / ``outlines.parquet``, one row group per block (memory stays bounded
    whatever the number of objects). Returns objects per class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .blockwise import TABLE_COLUMNS

    s = grid.scale
    H0, W0 = grid.level0_shape
    names = np.array(prompts, dtype=object)
    schema_t, schema_o = _table_schemas()
    tmp_t = part / f"table.parquet.tmp-{os.getpid()}"
    tmp_o = part / f"outlines.parquet.tmp-{os.getpid()}"
    counts = np.zeros(len(prompts), np.int64)
    with pq.ParquetWriter(tmp_t, schema_t) as wt, pq.ParquetWriter(tmp_o, schema_o) as wo:
        for b in range(n_blocks):
            if bdir is None:
                break
            with np.load(bdir / f"b_{b}.npz") as a:
                rec = BlockRecord.from_arrays(a)
            if rec.n == 0:
                continue
            r = rec.rows
            lab = np.arange(1, rec.n + 1, dtype=np.int64) + int(offsets[b])
            cid = r["class_id"].astype(np.int64)
            np.add.at(counts, cid - 1, 1)
            cols = {
                "label": lab,
                "class": names[cid - 1].astype(str),
                "class_id": cid,
                "score": r["mean_prob"].astype(np.float64),
                "p_value": np.full(rec.n, np.nan),
                # areas: output pixels -> level-0 pixels / um^2
                "area": np.rint(r["area"] * s * s).astype(np.int64),
                "area_um2": r["area"] * target_mpp**2,
                # centroid: output pixel centre index -> level-0 pixel centre index
                "centroid_y": (r["centroid_y"] + 0.5) * s - 0.5,
                "centroid_x": (r["centroid_x"] + 0.5) * s - 0.5,
                "bbox_y0": np.floor(r["bbox_y0"] * s).astype(np.int64),
                "bbox_x0": np.floor(r["bbox_x0"] * s).astype(np.int64),
                "bbox_y1": np.minimum(np.ceil(r["bbox_y1"] * s), H0).astype(np.int64),
                "bbox_x1": np.minimum(np.ceil(r["bbox_x1"] * s), W0).astype(np.int64),
                "mean_prob": r["mean_prob"].astype(np.float64),
            }
            wt.write_table(pa.table([cols[c] for c in TABLE_COLUMNS], schema=schema_t))
            # the last output row / column may reach up to s/2 past the slide edge: clamp
            ys = [np.minimum(o[:, 0] * s, H0).astype(np.float32) for o in rec.outlines]
            xs = [np.minimum(o[:, 1] * s, W0).astype(np.float32) for o in rec.outlines]
            wo.write_table(
                pa.table(
                    [
                        pa.array(lab),
                        pa.array(ys, pa.list_(pa.float32())),
                        pa.array(xs, pa.list_(pa.float32())),
                    ],
                    schema=schema_o,
                )
            )
    os.replace(tmp_t, part / "table.parquet")
    os.replace(tmp_o, part / "outlines.parquet")
    return {p: int(c) for p, c in zip(prompts, counts)}


# --------------------------------------------------------------------------------------------
# results


@dataclass
class SlideResult:
    """A finished slide run (a zarr store directory).

    ``table``: one row per object, level-0 pixel coordinates (pixel centres at integers;
    bbox as [y0, y1) x [x0, x1) in level-0 pixels), ``area`` in level-0 pixels,
    ``area_um2`` in square microns, ``score`` = ``mean_prob`` = mean probability of the
    object's class over its pixels; ``p_value`` is NaN (the existence test is image-level
    and does not tile; see ``stitching`` for the class rule). ``labels`` / ``classes``: multiscale lists of lazy dask
    arrays ``(H_l, W_l)`` at the target resolution subsampled by ``2**l``; to overlay them on
    the slide in napari use ``scale = (result.scale * 2**l,) * 2`` in level-0 pixels.
    """

    path: Path
    meta: dict = field(repr=False)

    @classmethod
    def open(cls, path) -> SlideResult:
        """Reopen an earlier run's result directory."""
        path = Path(path)
        if not path.exists():
            part = partial_path(path)
            hint = (
                f" An unfinished run exists at {part}; rerun to resume it." if part.exists() else ""
            )
            raise FileNotFoundError(f"no slide result at {path}.{hint}")
        try:
            meta = read_meta(open_group(path, "r"))
        except Exception as exc:
            raise ValueError(f"{path} is not a slide result store ({exc})") from exc
        if meta.get("status") != "complete":
            raise ValueError(f"{path} is not a complete slide result (status {meta.get('status')})")
        return cls(path=path, meta=meta)

    # metadata -----------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return dict(self.meta.get("params", {}))

    @property
    def summary(self) -> dict:
        return dict(self.meta.get("summary", {}))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.meta.get("class_colors", [])]

    @property
    def scale(self) -> float:
        """Level-0 slide pixels per output pixel."""
        return float(self.meta["scale"])

    @property
    def mpp(self) -> float:
        """Microns per output pixel (the target resolution)."""
        return float(self.params["mpp"])

    @property
    def offset(self) -> tuple[int, int]:
        return tuple(self.meta.get("offset", (0, 0)))

    # data ---------------------------------------------------------------------------------
    def _multiscale(self, name):
        import dask.array as da

        g = open_group(self.path, "r")
        if name not in g:
            return []
        out, lvl = [], 0
        while f"{lvl}" in g[name]:
            out.append(da.from_zarr(g[name][f"{lvl}"]))
            lvl += 1
        return out

    @property
    def labels(self) -> list:
        return self._multiscale("labels")

    @property
    def classes(self) -> list:
        return self._multiscale("classes")

    @property
    def probs(self):
        """Blended probabilities, dask ``(P, H, W)`` uint8 (x 255) at the target mpp."""
        import dask.array as da

        return da.from_zarr(open_group(self.path, "r")["probs/0"])

    @property
    def tissue_mask(self) -> np.ndarray:
        return np.asarray(open_group(self.path, "r")["tissue_mask"][...]).astype(bool)

    @property
    def table(self):
        import pandas as pd

        return pd.read_parquet(self.path / "table.parquet")

    @property
    def outlines(self):
        """DataFrame label, y, x: closed rings in level-0 continuous pixel coordinates."""
        import pandas as pd

        return pd.read_parquet(self.path / "outlines.parquet")

    # exports ------------------------------------------------------------------------------
    def to_geojson(self, path, object_type: str = "detection", include_offset: bool = False):
        from .export import write_geojson

        return write_geojson(self, path, object_type=object_type, include_offset=include_offset)

    def to_csv(self, path):
        from .export import write_table

        return write_table(self.table, path, "csv")

    def to_parquet(self, path):
        from .export import write_table

        return write_table(self.table, path, "parquet")


def process_slides(sources, out_dir, *, progress=None, cancel=None, on_error="raise", **kwargs):
    """Process several slides into ``out_dir/<name>.biomedparse.zarr``.

    Returns ``{source: SlideResult | Exception}``; ``on_error="continue"`` records the error
    of a slide and goes on with the next.
    """
    if kwargs.get("client") is not None:  # whole slides or tiles over the cluster
        from .distributed import process_slides_distributed

        return process_slides_distributed(
            kwargs.pop("client"),
            sources,
            out_dir,
            progress=progress,
            cancel=cancel,
            on_error=on_error,
            **kwargs,
        )
    out_dir = Path(out_dir)
    # load the model once for all slides
    kwargs["model"] = resolve_predictor(kwargs.get("model", "default"), kwargs.get("device"))
    results: dict[str, Any] = {}
    for src in sources:
        name = Path(str(src)).name
        dest = out_dir / f"{name}.biomedparse.zarr"
        try:
            results[str(src)] = process_slide(src, dest, progress=progress, cancel=cancel, **kwargs)
        except RunCancelled:
            raise
        except (SlideReadError, ValueError, FileExistsError, FileNotFoundError, OSError) as exc:
            if on_error != "continue":
                raise
            results[str(src)] = exc
    return results
