"""Existence-test statistics fitted on training data (``target_dist.json``-style).

BiomedParse's object-existence test compares four statistics of a predicted mask with a Beta
distribution per statistic, fitted per (modality, target) on training data. The statistics are
those of the official ``mask_stats``: over the pixels with ``mask >= 128`` (mask = probability
x 255), ``[mean(mask) / 256, mean(R) / 256, mean(G) / 256, mean(B) / 256]``.

Here they are computed on the fine-tuned model's own probability maps for training tiles in
which the target is present, and each statistic is fitted with a Beta distribution by the
method of moments (:func:`fit_beta`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def mask_stats(mask_255: np.ndarray, rgb: np.ndarray) -> list[float]:
    """The official four statistics of a mask in 0..255 on an (H, W, 3) RGB image.

    Returns [0, 0, 0, 0] when ``mask.max() <= 127`` (nothing predicted), as the official code.
    """
    m = np.asarray(mask_255, dtype=np.float64)
    if m.max() <= 127:
        return [0.0, 0.0, 0.0, 0.0]
    sel = m >= 128
    img = np.asarray(rgb, dtype=np.float64)
    return [float(m[sel].mean() / 256)] + [float(img[..., c][sel].mean() / 256) for c in range(3)]


def fit_beta(values: Iterable[float], eps: float = 1e-4, min_sd: float = 0.0) -> list[float]:
    """Beta(a, b) parameters of values in (0, 1) by the method of moments.

    The variance is floored (``eps``, 1 % of the maximal variance m(1-m), and ``min_sd**2``)
    so that a nearly constant statistic gives a sharp but finite distribution, and so that a
    few training images do not give a distribution narrower than the variation expected
    between images (``min_sd``). Returns [a, b].
    """
    x = np.clip(np.asarray(list(values), dtype=np.float64), 1e-4, 1 - 1e-4)
    if x.size == 0:
        raise ValueError("fit_beta needs at least one value")
    m = float(x.mean())
    v = float(x.var()) if x.size > 1 else 0.0
    vmax = m * (1 - m)
    v = min(max(v, eps, 0.01 * vmax, min_sd**2), 0.99 * vmax)
    k = vmax / v - 1.0
    return [m * k, (1 - m) * k]


def fit_target_dist(
    stats: Mapping[str, Mapping[str, list[list[float]]]],
    min_samples: int = 2,
    min_sd: float | tuple[float, float, float, float] = 0.0,
) -> dict[str, dict[str, list[list[float]]]]:
    """Fit Beta parameters per modality, target and statistic.

    Args:
        stats: modality -> target -> list of 4-vectors (one per training tile/mask). All-zero
            vectors (nothing predicted) are skipped.
        min_samples: targets with fewer non-zero vectors are left out (not testable).
        min_sd: floor of the fitted standard deviation (see :func:`fit_beta`), one value or one
            per statistic (probability, R, G, B).

    Returns:
        modality -> target -> 4 x [a, b] (the layout of the official ``target_dist.json``).
    """
    floors = tuple(min_sd) if isinstance(min_sd, (tuple, list)) else (float(min_sd),) * 4
    out: dict[str, dict[str, list[list[float]]]] = {}
    for modality, targets in stats.items():
        for target, vectors in targets.items():
            arr = np.asarray([v for v in vectors if any(v)], dtype=np.float64).reshape(-1, 4)
            if len(arr) < min_samples:
                continue
            out.setdefault(modality, {})[target] = [
                fit_beta(arr[:, i], min_sd=floors[i]) for i in range(4)
            ]
    return out
