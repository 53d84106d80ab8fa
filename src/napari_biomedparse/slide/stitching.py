"""Blending overlapping tile probabilities into chunked maps, and the per-pixel class rule.

``blend_region`` computes the blended probabilities of one output rectangle from the stored
tiles (``tiles/probs``, uint8 = round(255 p)) with the weights of
:func:`~napari_biomedparse.inference.tiled.blend_weights`, summing the tiles in index order, so
the result of a chunk does not depend on when or where its tiles were computed (a resumed or
distributed run writes identical bytes). ``blend_chunks`` writes whole chunks of
``probs/0`` and ``classes/0`` (each chunk owned by one call).

Class rule on a slide (documented choice). The official recognition
(``interactive_infer_image_all``) filters targets by an image-level existence p-value, then
by an image-wide NMS and an area rule before assigning each pixel to the surviving target
with the highest probability above 0.5. The image-wide steps do not tile (their outcome for
one tile would depend on the whole field), so the slide engine applies the local part only:
a pixel belongs to ``argmax_p prob_p`` when that maximum exceeds ``threshold`` (0.5), else to
background. Classes that are absent simply produce no pixels above 0.5. The class-agnostic
``nuclei`` map beside class maps (class name ``unclassified nuclei``) gets the pixels where it
exceeds 0.5 and no class does: the candidates of the recognition's unclassified rule, which
the instance stage claims per object (``blockwise.label_block``). With ``recognize`` the
class map is rewritten by :mod:`.global_rule`.
"""

from __future__ import annotations

import numpy as np

from napari_biomedparse.inference.recognition import UNCLASSIFIED, agnostic_index
from napari_biomedparse.inference.tiled import blend_weights

from .store import read_meta
from .tiling import TileGrid

__all__ = ["blend_region", "class_map", "blend_chunks"]


def class_map(probs: np.ndarray, threshold: float = 0.5, agnostic: int | None = None) -> np.ndarray:
    """Per-pixel class ``(H, W)`` uint8 from probabilities ``(P, H, W)`` (float in [0, 1]
    or uint8 x 255): ``1 + argmax`` where the maximum exceeds ``threshold``, else 0.

    ``agnostic``: index of the class-agnostic ``nuclei`` map beside class maps
    (:data:`~napari_biomedparse.inference.recognition.UNCLASSIFIED`): it takes no part in the
    argmax and gets the pixels where it exceeds ``threshold`` and no class does."""
    if probs.dtype == np.uint8:
        thr = threshold * 255.0
    else:
        thr = threshold
    if probs.shape[0] == 0:
        return np.zeros(probs.shape[1:], np.uint8)
    cls = probs
    if agnostic is not None:
        cls = probs.copy()
        cls[agnostic] = 0
    am = np.argmax(cls, axis=0)
    mx = np.take_along_axis(cls, am[None], axis=0)[0]
    out = np.where(mx > thr, am + 1, 0).astype(np.uint8)
    if agnostic is not None:
        out[(out == 0) & (probs[agnostic] > thr)] = agnostic + 1
    return out


class TileCache:
    """Reads tiles from ``tiles/probs`` and keeps the most recent ones (bounded).

    Whether a tile is done is read from ``tiles/state`` one grid row at a time, for the rows
    the blended region needs only: a blending unit (a chunk row) touches two or three tile
    rows, and ``tiles/state`` holds one chunk file per tile (reading all of it per unit cost
    O(units x tiles) file reads: 4x the run time of a 50,000 px slide)."""

    def __init__(self, probs_arr, state_arr, grid: TileGrid, max_tiles: int = 128):
        self.probs = probs_arr
        self.state = state_arr
        self.grid = grid
        self.max = max_tiles
        self._cache: dict[int, np.ndarray | None] = {}
        self._rows: dict[int, np.ndarray] = {}

    def done(self, k: int) -> bool:
        i, j = self.grid.index(k)
        if i not in self._rows:
            self._rows[i] = np.asarray(self.state[i]) == 1
        return bool(self._rows[i][j])

    def get(self, k: int) -> np.ndarray | None:
        if k in self._cache:
            return self._cache[k]
        if not self.done(k):
            val = None
        else:
            i, j = self.grid.index(k)
            val = np.asarray(self.probs[i, j])
        if len(self._cache) >= self.max:
            self._cache.pop(next(iter(self._cache)))
        self._cache[k] = val
        return val


def blend_region(cache: TileCache, y0: int, x0: int, y1: int, x1: int, n_prompts: int):
    """Blended probabilities ``(P, y1-y0, x1-x0)`` float32 in [0, 1] and the weight sum
    ``(h, w)`` (0 where no processed tile covers a pixel) of output rectangle [y0,y1)x[x0,x1).
    """
    grid = cache.grid
    T = grid.tile_size
    w = blend_weights(T, grid.overlap)
    acc = np.zeros((n_prompts, y1 - y0, x1 - x0), np.float32)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    for k in grid.tiles_in(y0, x0, y1, x1):
        t = cache.get(k)
        if t is None:
            continue
        ty0, tx0, ty1, tx1 = grid.extent(k)
        a, b = max(y0, ty0), min(y1, ty1)
        c, d = max(x0, tx0), min(x1, tx1)
        if b <= a or d <= c:
            continue
        ww = w[a - ty0 : b - ty0, c - tx0 : d - tx0]
        acc[:, a - y0 : b - y0, c - x0 : d - x0] += ww * t[:, a - ty0 : b - ty0, c - tx0 : d - tx0]
        wsum[a - y0 : b - y0, c - x0 : d - x0] += ww
    covered = wsum > 0
    acc[:, covered] /= wsum[covered] * 255.0
    return acc, wsum


def blend_chunks(
    group,
    grid: TileGrid,
    chunk_ids,
    *,
    n_prompts: int,
    recognize: bool,
    threshold=0.5,
    progress=None,
    cancel=None,
) -> int:
    """Blend and write the output chunks ``chunk_ids`` (flat indices over the chunk grid of
    ``probs/0``); also write ``classes/0`` when ``recognize``. Skips chunks already recorded
    in ``probs_state``. Returns the number of chunks written."""
    from .store import RunCancelled

    probs = group["probs/0"]
    state = group["probs_state"]
    classes = group["classes/0"] if recognize else None
    names = read_meta(group).get("class_names") or []
    agnostic = names.index(UNCLASSIFIED) if UNCLASSIFIED in names else agnostic_index(names)
    C = probs.chunks[1]
    H, W = grid.shape
    nbx = -(-W // C)
    cache = TileCache(group["tiles/probs"], group["tiles/state"], grid)
    done_rows: dict[int, np.ndarray] = {}  # rows of probs_state this unit needs (one file each)
    written = 0
    for n, cid in enumerate(chunk_ids):
        if cancel is not None and cancel.is_set():
            raise RunCancelled("cancelled while blending")
        bi, bj = divmod(int(cid), nbx)
        if bi not in done_rows:
            done_rows[bi] = np.asarray(state[bi])
        if done_rows[bi][bj] == 1:
            continue
        y0, x0 = bi * C, bj * C
        y1, x1 = min(y0 + C, H), min(x0 + C, W)
        p, wsum = blend_region(cache, y0, x0, y1, x1, n_prompts)
        if wsum.any():
            q = np.rint(p * 255.0).astype(np.uint8)
            probs[:, y0:y1, x0:x1] = q
            if classes is not None:
                classes[y0:y1, x0:x1] = class_map(q, threshold, agnostic)
        state[bi, bj] = 1
        written += 1
        if progress is not None:
            progress(n + 1, len(chunk_ids), "blending")
    return written
