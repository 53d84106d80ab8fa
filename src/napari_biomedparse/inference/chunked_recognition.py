"""The official recognition rule, global part included, on an image read chunk by chunk.

:func:`~.recognition.recognize_maps` needs all P probability maps of the image at once. A
whole slide does not fit, yet every image-wide step of the official rule depends on the
image only through sums over its pixels, so it can be computed exactly from chunks:

1. existence test (``check_mask_stats``): per target the count of confident pixels
   (``prob * 255 >= 128``) and the sums of ``prob * 255`` and of R, G, B over them give the
   four means of :func:`~.existence.mask_stats`, hence one p-value per target per image;
2. suppression (:func:`~.recognition.non_maxima_suppression`): per target the area of
   ``prob > 0.5`` and per pair of targets the area of the intersection of those masks;
3. combination (:func:`~.recognition.combine_masks`): per target the candidate area
   (``prob > 0.1``) and probability sum there (its mean probability), then, for the targets
   kept by 2, how many candidate pixels each wins (needs the kept set: a second pass);
4. the final per-pixel rule among the survivors of 3 (a third pass, chunk-local).

Pass 1 :func:`chunk_stats` (summed with ``+``) -> :func:`decide` -> pass 2
:func:`assigned_counts` (summed) -> :func:`survivors` -> pass 3 :func:`chunk_class_map`.
Each pass is per chunk with no halo, so chunks can run in any order or process, and the result
equals :func:`~.recognition.recognize_maps` on the whole image (same class per pixel; sums
in float64 where the official means are float32, so p-values agree to ~1e-8).
:func:`recognize_in_chunks` runs the three passes over an in-memory image (the reference for
tests and small images).

Not included: the class-agnostic ``nuclei`` target beside class targets is left out of steps
1-3 as in :func:`~.recognition.recognize_maps`, but its object-level classification of the
nuclei (:func:`~.recognition.classify_nuclei`) needs instances, which the slide engine
builds block by block; it is applied there (``slide.blockwise.label_block``, per block window),
not in these passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .existence import TargetDistribution, adjusted_p_value
from .recognition import agnostic_index, nms_order

__all__ = [
    "ChunkStats",
    "Decision",
    "assigned_counts",
    "chunk_class_map",
    "chunk_stats",
    "decide",
    "recognize_in_chunks",
    "survivors",
]


def _as_prob(probs) -> np.ndarray:
    """(P, h, w) float32 probabilities from float in [0, 1] or uint8 = round(255 p)."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities (P, H, W); got shape {probs.shape}")
    if probs.dtype == np.uint8:
        return probs.astype(np.float32) / np.float32(255.0)
    return probs.astype(np.float32, copy=False)


@dataclass
class ChunkStats:
    """Additive per-target pixel sums of one chunk (or, summed, of the whole image).

    Shapes: P targets. ``n_conf`` (P,) pixels with prob*255 >= 128; ``sum_conf`` (P,) sum of
    prob*255 there; ``sum_rgb`` (P, 3) sums of R, G, B there; ``area05`` (P,) pixels with
    prob > 0.5; ``inter05`` (P, P) pixels where both targets have prob > 0.5; ``area01`` (P,)
    pixels with prob > 0.1; ``sum01`` (P,) sum of prob there.
    """

    n_conf: np.ndarray
    sum_conf: np.ndarray
    sum_rgb: np.ndarray
    area05: np.ndarray
    inter05: np.ndarray
    area01: np.ndarray
    sum01: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> ChunkStats:
        return cls(
            np.zeros(n, np.int64),
            np.zeros(n, np.float64),
            np.zeros((n, 3), np.float64),
            np.zeros(n, np.int64),
            np.zeros((n, n), np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.float64),
        )

    def __add__(self, other: ChunkStats) -> ChunkStats:
        return ChunkStats(*(a + b for a, b in zip(self._fields(), other._fields())))

    def _fields(self):
        return (
            self.n_conf,
            self.sum_conf,
            self.sum_rgb,
            self.area05,
            self.inter05,
            self.area01,
            self.sum01,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """For saving (``np.savez``); :meth:`from_arrays` reads it back."""
        names = ("n_conf", "sum_conf", "sum_rgb", "area05", "inter05", "area01", "sum01")
        return dict(zip(names, self._fields()))

    @classmethod
    def from_arrays(cls, a) -> ChunkStats:
        return cls(*(np.asarray(a[k]) for k in cls.zeros(0).to_arrays()))


def chunk_stats(probs, rgb=None, valid=None) -> ChunkStats:
    """Pass 1 over one chunk.

    Args:
        probs: (P, h, w) float probabilities in [0, 1] or uint8 = round(255 p).
        rgb: (h, w, 3) uint8 image at the same pixels (the existence statistics), or None
            (no existence test: the RGB sums stay 0).
        valid: optional (h, w) bool, the pixels that belong to the image (e.g. covered by a
            processed tile); others are ignored.
    """
    p = _as_prob(probs)
    n = p.shape[0]
    if valid is not None:
        valid = np.asarray(valid, bool)
        p = np.where(valid[None], p, np.float32(0))
    p255 = p * np.float32(255)  # float32, as the official prob * 255
    conf = p255 >= 128
    m05 = (p > 0.5).reshape(n, -1)
    m01 = p > 0.1
    s = ChunkStats.zeros(n)
    s.n_conf = conf.reshape(n, -1).sum(1).astype(np.int64)
    s.sum_conf = np.where(conf, p255, 0).reshape(n, -1).sum(1, dtype=np.float64)
    if rgb is not None:
        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[:2] != p.shape[1:] or img.shape[2] < 3:
            raise ValueError(f"rgb must be (h, w, 3) matching probs {p.shape[1:]}; got {img.shape}")
        flat = img[..., :3].reshape(-1, 3).astype(np.float64)
        s.sum_rgb = conf.reshape(n, -1).astype(np.float64) @ flat
    s.area05 = m05.sum(1).astype(np.int64)
    m05f = m05.astype(np.float64)  # exact integer counts
    s.inter05 = np.rint(m05f @ m05f.T).astype(np.int64)
    s.area01 = m01.reshape(n, -1).sum(1).astype(np.int64)
    s.sum01 = np.where(m01, p, 0).reshape(n, -1).sum(1, dtype=np.float64)
    return s


@dataclass
class Decision:
    """Image-level outcome of pass 1: ``p_values`` (P,) float64 (NaN = not testable) and
    ``kept`` the indices surviving the existence filter and the suppression, in the official
    processing order (descending p-value)."""

    p_values: np.ndarray
    kept: list[int] = field(default_factory=list)


def _p_values(stats: ChunkStats, targets, modality, target_dist, site) -> np.ndarray:
    td = TargetDistribution.coerce(target_dist) or TargetDistribution.official_v1()
    out = np.full(len(targets), math.nan)
    for i, t in enumerate(targets):
        params = td.params(modality, t, site=site)
        if params is None:
            continue
        n = int(stats.n_conf[i])
        if n == 0:
            st = [0, 0, 0, 0]
        else:
            st = [stats.sum_conf[i] / n / 256, *(stats.sum_rgb[i] / n / 256)]
        out[i] = adjusted_p_value(st, params)
    return out


def decide(
    stats: ChunkStats,
    targets: Sequence[str],
    *,
    modality=None,
    target_dist=None,
    site: str | None = None,
    p_values=None,
    p_threshold: float | None = 0.05,
) -> Decision:
    """Existence test and suppression from the summed statistics of the whole image.

    Args:
        stats: the sum of :func:`chunk_stats` over every chunk of the image.
        targets: the P target names.
        modality, target_dist, site: the existence statistics (as
            :func:`~.existence.existence_p_values`); ignored when ``p_values`` is given.
        p_values: (P,) given p-values, or None to compute them (``modality`` needed).
        p_threshold: targets below it are dropped (None or 0: no filtering).
    """
    targets = list(targets)
    n = len(targets)
    if p_values is None:
        if modality is None:
            raise ValueError("give modality= for the existence test, or p_values=")
        p_values = _p_values(stats, targets, modality, target_dist, site)
    p_values = np.asarray(p_values, np.float64).reshape(-1)
    if p_values.size != n:
        raise ValueError(f"p_values has {p_values.size} entries, expected {n}")
    order = nms_order(p_values, n)
    if p_threshold:
        order = [i for i in order if math.isnan(p_values[i]) or p_values[i] >= p_threshold]
    agn = agnostic_index(targets)  # the class-agnostic target takes no part (recognition.py)
    order = [i for i in order if i != agn]
    kept: list[int] = []
    for i in order:
        area = int(stats.area05[i])
        if area == 0:
            continue
        if not any(stats.inter05[i, j] > 0.5 * area for j in kept):
            kept.append(i)
    return Decision(p_values, kept)


def assigned_counts(probs, kept: Sequence[int], valid=None) -> np.ndarray:
    """Pass 2 over one chunk: (K,) int64, how many candidate pixels (prob > 0.1) each kept
    target wins (highest probability; ties: the earlier in ``kept``)."""
    kept = list(kept)
    if not kept:
        return np.zeros(0, np.int64)
    p = _as_prob(probs)[kept]
    if valid is not None:
        p = np.where(np.asarray(valid, bool)[None], p, np.float32(0))
    cand = p > 0.1
    best = np.argmax(np.where(cand, p, -np.inf), axis=0)
    return np.bincount(best[cand.any(0)].ravel(), minlength=len(kept)).astype(np.int64)


def survivors(stats: ChunkStats, kept: Sequence[int], assigned) -> list[int]:
    """The kept targets not discarded by the official combination (in ``kept`` order): a target
    winning less than half of its candidate area is dropped, except the one with the highest
    mean candidate probability."""
    kept = list(kept)
    if not kept:
        return []
    area = stats.area01[kept].astype(np.float64)
    mean = np.where(area > 0, stats.sum01[kept] / np.maximum(area, 1), 0.0)
    discard = np.asarray(assigned) < 0.5 * area
    discard[int(np.argmax(mean))] = False
    return [k for k, d in zip(kept, discard) if not d]


def chunk_class_map(probs, kept: Sequence[int], surv: Sequence[int], valid=None) -> np.ndarray:
    """Pass 3 over one chunk: (h, w) int32 class map, 0 = background, k = 1 + target index:
    the surviving target with the highest probability > 0.5 (ties: earlier in ``kept``)."""
    p = _as_prob(probs)
    out = np.zeros(p.shape[1:], np.int32)
    kept, surv = list(kept), set(surv)
    order = [k for k in kept if k in surv]
    if not order:
        return out
    q = p[order]
    final = np.where(q > 0.5, q, -np.inf)
    win = np.argmax(final, axis=0)
    has = np.isfinite(final.max(0))
    if valid is not None:
        has &= np.asarray(valid, bool)
    out[has] = np.asarray(order, np.int32)[win[has]] + 1
    return out


def recognize_in_chunks(
    probs,
    targets: Sequence[str],
    rgb=None,
    *,
    chunk: int = 1024,
    modality=None,
    target_dist=None,
    site: str | None = None,
    p_values=None,
    p_threshold: float | None = 0.05,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The three passes over an in-memory (P, H, W) image in ``chunk`` x ``chunk`` pieces.

    Returns:
        (class_map (H, W) int32, kept_targets in the order of ``targets``, p_values (P,)) --
        the first two equal :func:`~.recognition.recognize_maps` with the same p-values.
    """
    targets = list(targets)
    probs = np.asarray(probs)
    _, h, w = probs.shape
    boxes = [
        (y, x, min(y + chunk, h), min(x + chunk, w))
        for y in range(0, h, chunk)
        for x in range(0, w, chunk)
    ]
    stats = ChunkStats.zeros(len(targets))
    for y0, x0, y1, x1 in boxes:
        c_rgb = None if rgb is None else rgb[y0:y1, x0:x1]
        stats = stats + chunk_stats(probs[:, y0:y1, x0:x1], c_rgb)
    dec = decide(
        stats,
        targets,
        modality=modality,
        target_dist=target_dist,
        site=site,
        p_values=p_values,
        p_threshold=p_threshold,
    )
    assigned = np.zeros(len(dec.kept), np.int64)
    for y0, x0, y1, x1 in boxes:
        assigned += assigned_counts(probs[:, y0:y1, x0:x1], dec.kept)
    surv = survivors(stats, dec.kept, assigned)
    cmap = np.zeros((h, w), np.int32)
    for y0, x0, y1, x1 in boxes:
        cmap[y0:y1, x0:x1] = chunk_class_map(probs[:, y0:y1, x0:x1], dec.kept, surv)
    present = set(np.unique(cmap[cmap > 0]) - 1)
    kept_targets = [targets[i] for i in range(len(targets)) if i in surv and i in present]
    return cmap, kept_targets, dec.p_values
