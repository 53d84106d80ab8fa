"""Segmentation, instance and detection metrics (numpy / scipy only).

* :func:`dice`: Dice of two binary masks.
* :func:`panoptic_quality`: PQ = SQ x RQ of instance labels, matches at IoU > 0.5 (unique by
  construction, Kirillov et al. 2019).
* :func:`detection_f1`: object detection by centroids: a predicted object is a true positive
  when it is matched one-to-one (Hungarian, minimal total distance) to a ground-truth object
  whose centroid lies within ``radius`` pixels.
"""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P&G| / (|P|+|G|) of two (H, W) masks (1.0 when both are empty)."""
    p = np.asarray(pred, bool)
    g = np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    s = p.sum() + g.sum()
    if s == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, g).sum() / s)


def _relabel(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype == bool:
        from scipy import ndimage as ndi

        lab = ndi.label(lab)[0]
    _, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    if (lab == 0).any():
        return inv.astype(np.int64)  # 0 stays 0 (the smallest value)
    return inv.astype(np.int64) + 1


def panoptic_quality(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict:
    """Panoptic quality of (H, W) instance labels (0 background), single class.

    The package's one PQ (training, evaluation, the instance tests and the benchmarks use it).
    A prediction and a truth instance match when their IoU exceeds 0.5 (unique matches).

    Args:
        pred_labels: (H, W) int predicted instances (or a bool mask: its connected components).
        gt_labels: (H, W) int ground-truth instances, same shape.

    Returns:
        dict with ``pq`` = ``sq`` x ``rq``, ``sq`` (mean IoU of matches), ``rq`` (recognition
        quality = F1 of the matching, called DQ in some papers), ``tp``, ``fp`` (unmatched
        predictions), ``fn`` (unmatched truth). PQ is 1.0 when both are empty.
    """
    p = _relabel(pred_labels)
    g = _relabel(gt_labels)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    n_p, n_g = int(p.max()), int(g.max())
    if n_p == 0 and n_g == 0:
        return dict(pq=1.0, sq=1.0, rq=1.0, tp=0, fp=0, fn=0)
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)
    area_g = np.bincount(g.ravel(), minlength=n_g + 1)
    both = (p > 0) & (g > 0)
    pair = p[both] * (n_g + 1) + g[both]
    pairs, inter = np.unique(pair, return_counts=True)
    pi, gi = pairs // (n_g + 1), pairs % (n_g + 1)
    union = area_p[pi] + area_g[gi] - inter
    iou = inter / union
    ok = iou > 0.5
    tp = int(ok.sum())
    fp = n_p - tp
    fn = n_g - tp
    sq = float(iou[ok].mean()) if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    return dict(pq=sq * rq, sq=sq, rq=float(rq), tp=tp, fp=fp, fn=fn)


def centroids(labels: np.ndarray) -> np.ndarray:
    """(N, 2) float (y, x) centroids of the non-zero labels, in increasing label order."""
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids), float).reshape(-1, 2)


def detection_f1(pred: np.ndarray, gt: np.ndarray, radius: float = 6.0) -> dict:
    """Detection precision / recall / F1 of centroids matched within ``radius`` pixels.

    Args:
        pred, gt: (N, 2) / (M, 2) centroid arrays (y, x) in pixels, or (H, W) instance label
            images (their centroids are used).
        radius: maximal centroid distance of a match, pixels.

    Returns:
        dict with ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    pc = centroids(pred) if np.asarray(pred).ndim == 2 and np.asarray(pred).shape[1] != 2 else None
    P = pc if pc is not None else np.asarray(pred, float).reshape(-1, 2)
    gc = centroids(gt) if np.asarray(gt).ndim == 2 and np.asarray(gt).shape[1] != 2 else None
    G = gc if gc is not None else np.asarray(gt, float).reshape(-1, 2)
    tp = 0
    if len(P) and len(G):
        d = cdist(P, G)
        cost = np.where(d <= radius, d, 1e6)
        r, c = linear_sum_assignment(cost)
        tp = int((d[r, c] <= radius).sum())
    fp, fn = len(P) - tp, len(G) - tp
    prec = tp / len(P) if len(P) else (1.0 if not len(G) else 0.0)
    rec = tp / len(G) if len(G) else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return dict(precision=float(prec), recall=float(rec), f1=float(f1), tp=tp, fp=fp, fn=fn)
