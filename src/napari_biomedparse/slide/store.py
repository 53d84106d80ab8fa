"""The on-disk result store of a slide run (a zarr v3 directory store) and its resume record.

Layout of ``<out>`` (written as ``<out>.partial`` and renamed when the run is complete)::

    zarr.json                    attrs["biomedparse_slide"]: format, params, grid, classes,
                                 status ("running" | "complete"), summary
    tissue_mask      uint8 (h, w)            1 = tissue; attrs: downsample (level-0 px / px)
    tiles/probs      uint8 (ny, nx, P, T, T) raw tile probabilities x 255, one chunk per tile
    tiles/state      uint8 (ny, nx)          1 = tile written (chunk (1, 1): one writer per tile)
    probs/0          uint8 (P, H, W)         blended probabilities x 255 at the target mpp
    probs_state      uint8 (nby, nbx)        1 = blended chunk written
    classes/0..L     uint8 (H_l, W_l)        class map (0 = background, k = class_names[k-1])
    labels/0..L      int32 (H_l, W_l)        instance ids (0 = background), = table.label
    blocks/          one ``b_<i>_<j>.npz`` per instance block (owned objects; resume record)
    table.parquet    one row per instance (level-0 pixel coordinates)
    outlines.parquet label, y, x (float32 lists, level-0 pixel coordinates, pixel edges)

Level ``l`` of ``classes`` / ``labels`` is level 0 subsampled by ``2**l``; level 0 is at the
target resolution, ``scale`` level-0 slide pixels per pixel (attrs).

Chunk ownership: every writer writes whole chunks that no other task writes (a tile writes
its own ``tiles/*`` chunk; a blend task one ``probs`` / ``classes`` chunk; an instance
block its own ``labels`` chunk and ``.npz``), so tasks may run in several processes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.progress import Cancelled

__all__ = [
    "FORMAT_VERSION",
    "RunCancelled",
    "ResumeMismatch",
    "partial_path",
    "prepare_store",
    "finalize_store",
    "read_meta",
    "write_meta",
    "open_group",
]

FORMAT_VERSION = (
    2  # 2: tiles inside the image (inference.tiled.TileGrid), per-slide preset statistics
)
ATTR = "biomedparse_slide"


class RunCancelled(Cancelled):
    """A slide run was cancelled; finished work is kept in ``<out>.partial`` for a resume.

    A :class:`~..inference.progress.Cancelled`, so whoever stops in-memory runs stops slide
    runs with the same ``except``."""


class ResumeMismatch(ValueError):
    """An unfinished run exists with different parameters."""


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def open_group(path: str | os.PathLike, mode: str = "r+"):
    import zarr

    return zarr.open_group(str(path), mode=mode)


def read_meta(group) -> dict[str, Any]:
    return dict(group.attrs.get(ATTR, {}))


def write_meta(group, meta: dict[str, Any]) -> None:
    group.attrs[ATTR] = json.loads(json.dumps(meta, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _normalise(v):
    return json.loads(json.dumps(v, default=_json_default))


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = _normalise(old.get(k)), _normalise(new.get(k))
        if isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-9 * max(1, abs(a)):
            continue
        if a != b:
            diffs.append(f"{k} (was {a!r}, now {b!r})")
    return diffs


def prepare_store(
    out: str | os.PathLike, params: dict[str, Any], *, resume: bool, overwrite: bool
) -> tuple[Any, bool]:
    """Create or reopen ``<out>.partial`` for a run with ``params``.

    Returns ``(zarr group, resumed)``. Refuses (FileExistsError) when ``out`` exists and
    ``overwrite`` is False; refuses (:class:`ResumeMismatch`) to resume a partial run made
    with different parameters unless ``overwrite`` (start over) is True.
    """
    import zarr

    out = Path(out)
    part = partial_path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists. Pass overwrite=True (command line: --overwrite) to replace "
            "it, or open the earlier result with SlideResult.open(path)."
        )
    if part.exists():
        meta = {}
        try:
            meta = read_meta(open_group(part, "r"))
        except Exception:
            meta = {}
        if not meta and not overwrite:
            raise ResumeMismatch(
                f"{part} exists but is not a readable run of this program. Remove it or pass "
                "overwrite=True (command line: --overwrite) to start over."
            )
        if meta and resume and not overwrite:
            diffs = _differences(meta.get("params", {}), params)
            if diffs:
                raise ResumeMismatch(
                    f"an unfinished run in {part} used different parameters: "
                    + "; ".join(diffs)
                    + ". Use the same parameters to resume it, or pass overwrite=True "
                    "(command line: --overwrite) to start over."
                )
            return open_group(part, "r+"), True
        if meta and not resume and not overwrite:
            raise FileExistsError(
                f"an unfinished run exists in {part}. Pass resume=True to continue it or "
                "overwrite=True to start over (command line: leave out --no-resume to "
                "continue it, or add --overwrite to start over)."
            )
        shutil.rmtree(part)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(part), mode="w")
    write_meta(
        g,
        {
            "format": "napari-biomedparse slide result",
            "format_version": FORMAT_VERSION,
            "params": params,
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return g, False


def finalize_store(out: str | os.PathLike, *, overwrite: bool) -> Path:
    """Atomically publish ``<out>.partial`` as ``out`` (replacing ``out`` if ``overwrite``)."""
    out = Path(out)
    part = partial_path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} appeared while the run was going; not replaced.")
        old = out.with_name(out.name + f".old-{os.getpid()}")
        os.replace(out, old)
        os.replace(part, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(part, out)
    return out


def read_state(arr, band: int = 8) -> np.ndarray:
    """Read a small 2D state array with one chunk per element (``tiles/state``...) a band of
    rows at a time, so that reading 10^4-10^5 tiny chunks keeps memory bounded."""
    out = np.zeros(arr.shape, arr.dtype)
    for r in range(0, arr.shape[0], band):
        out[r : r + band] = arr[r : r + band]
    return out


def save_npz_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
