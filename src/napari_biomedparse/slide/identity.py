"""The identity of a slide run's source, recorded in the store and checked on resume.

:func:`source_identity` returns two dicts:

- ``key`` (compared: a resume or a rerun with another key is refused): level-0 shape,
  channels, dtype, the shapes of all levels, OpenSlide's ``quickhash-1`` where there is one,
  the file size (a file source) and ``content``, a sha256 of what is read: the whole
  smallest pyramid level when it has at most 4 M pixels (else a 1024 x 1024 corner of it),
  a 3 x 3 grid of 256 x 256 level-0 patches, and for a file its first and last MiB; for a
  zarr directory its metadata files (``zarr.json``, ``.zarray``, ``.zattrs``...). Reading
  this costs a few MB whatever the slide size (a 3 GB slide: well under a second).
- ``info`` (recorded, not compared): the resolved path and ``mtime_ns`` of the source, so
  that a moved or copied slide still resumes, but the store says where it came from.

:func:`check_same_source` raises :class:`~napari_biomedparse.errors.SourceChangedError`
naming what differs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from napari_biomedparse.errors import SourceChangedError

__all__ = ["source_identity", "check_same_source", "file_digest"]

_MIB = 1 << 20
_ZARR_META = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def file_digest(path: str | os.PathLike, edge: int = _MIB) -> str:
    """sha256 of the size and the first and last ``edge`` bytes of a file."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            h.update(f.read(edge))
    return h.hexdigest()


def _dir_digest(path: Path, limit: int = 4096) -> str:
    """sha256 of the zarr metadata files of a directory store (names and contents)."""
    h = hashlib.sha256()
    n = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        array = False
        for name in sorted(files):
            if name in _ZARR_META:
                p = Path(root) / name
                data = p.read_bytes()
                h.update(str(p.relative_to(path)).encode())
                h.update(data)
                array |= name == ".zarray" or (name == "zarr.json" and b'"array"' in data)
                n += 1
                if n >= limit:
                    return h.hexdigest()
        if array:
            dirs[:] = []  # below an array there are only chunks: never list them
    return h.hexdigest()


def _pixels_digest(image) -> str:
    h = hashlib.sha256()
    lv = len(image.levels) - 1
    lh, lw = (int(v) for v in image.levels[lv].shape[:2])
    if lh * lw > 4_000_000:  # no small level: its 1024 x 1024 corner
        lh, lw = min(lh, 1024), min(lw, 1024)
    h.update(np.ascontiguousarray(image.read_region(0, 0, lh, lw, level=lv)).tobytes())
    H, W = image.shape
    p = 256
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 0.5, 1.0):
            y0 = int(round(fy * max(H - p, 0)))
            x0 = int(round(fx * max(W - p, 0)))
            patch = image.read_region(y0, x0, min(p, H), min(p, W), level=0)
            h.update(np.ascontiguousarray(patch).tobytes())
    return h.hexdigest()


def source_identity(image) -> tuple[dict, dict]:
    """``(key, info)`` of a :class:`~napari_biomedparse.slide.readers.SlideImage` (see the
    module docstring). ``key`` is JSON-serialisable and compared on resume."""
    h = hashlib.sha256(_pixels_digest(image).encode())
    key = {
        "shape": [int(v) for v in image.shape],
        "channels": int(image.channels),
        "dtype": str(np.dtype(image.dtype)),
        "levels": [[int(lv.shape[0]), int(lv.shape[1])] for lv in image.levels],
        "quickhash": image.properties.get("openslide.quickhash-1"),
    }
    info: dict = {"path": None, "mtime_ns": None}
    if image.path:
        p = Path(image.path)
        try:
            st = p.stat()
            info = {"path": str(p.resolve()), "mtime_ns": int(st.st_mtime_ns)}
            if p.is_file():
                key["size"] = int(st.st_size)
                h.update(file_digest(p).encode())
            elif p.is_dir():
                h.update(_dir_digest(p).encode())
        except OSError:
            pass
    key["content"] = "sha256:" + h.hexdigest()[:32]
    return key, info


_WHAT = {
    "shape": "level-0 size",
    "channels": "channels",
    "dtype": "pixel type",
    "levels": "pyramid levels",
    "quickhash": "OpenSlide quickhash",
    "size": "file size",
    "content": "content",
}


def check_same_source(recorded: dict | None, key: dict, *, where, source=None) -> None:
    """Raise SourceChangedError when ``recorded`` (the key stored in ``where``) is not
    ``key``. A store without a recorded key (older format) passes."""
    if not recorded or "content" not in recorded:
        return
    diffs = [
        _WHAT.get(k, k)
        for k in sorted(set(recorded) | set(key))
        if recorded.get(k) != key.get(k) and k in _WHAT
    ]
    if diffs:
        raise SourceChangedError(
            f"{where} was made from another image than {source or 'the one given'} "
            f"(different {', '.join(diffs)}): the source was replaced or changed since. "
            "Give the original image, or pass overwrite=True (command line: --overwrite) "
            "to start over from this one."
        )
