"""The official recognition rules: existence filtering, overlap suppression, pixel combination.

``interactive_infer_image_all`` (``inference_utils/inference.py``, microsoft/BiomedParse v1)
runs every target of an image type, then

1. drops targets whose adjusted existence p-value is below ``p_value_threshold``;
2. :func:`non_maxima_suppression`: targets in descending p-value order; a target whose
   mask (prob > 0.5) is empty is skipped, one whose mask overlaps the masks of already kept
   targets by more than half of its own area is dropped;
3. :func:`combine_masks`: every pixel with prob > 0.1 for some target goes to the target with
   the highest probability there; a target that gets less than half of its own candidate
   area (prob > 0.1) is discarded, except the one with the highest mean probability; the final
   mask of a surviving target holds the pixels where its probability is > 0.5 and the highest
   among the surviving targets.

See ``shared/reference/v1_facts.md`` section 8. The official code loops over pixels in Python;
these are vectorised equivalents (same tie-breaking: the earlier target wins).

Every nucleus answered (an addition to the official rules): when the class-agnostic target
:data:`CLASS_AGNOSTIC` (``"nuclei"``) runs beside class targets (e.g. the default model's
pathology vocabulary), it takes no part in steps 1-3; afterwards its objects (its mask, prob >
0.5, split into instances) are the nuclei, and each takes one class over its whole extent
(:func:`classify_nuclei`): the class that holds most of its pixels when the classes together
hold at least half of it, else the explicit class :data:`UNCLASSIFIED` (``"unclassified
nuclei"``), scored by the ``nuclei`` probability. So no nucleus the model finds is dropped for
want of a class or cut into class fragments too small to keep, and no class is guessed for it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "CLASS_AGNOSTIC",
    "UNCLASSIFIED",
    "agnostic_index",
    "class_names",
    "classify_nuclei",
    "combine_masks",
    "non_maxima_suppression",
    "recognize_maps",
]

#: The class-agnostic target (trained on every labelled nucleus, whatever its class).
CLASS_AGNOSTIC = "nuclei"
#: The class of the objects the class-agnostic target finds and no class claims.
UNCLASSIFIED = "unclassified nuclei"


def agnostic_index(targets) -> int | None:
    """Index of :data:`CLASS_AGNOSTIC` in ``targets`` when it runs beside at least one class
    target, else None (alone, e.g. fluorescence ``nuclei``, it is an ordinary target)."""
    names = [str(t).strip().lower() for t in targets]
    if CLASS_AGNOSTIC in names and len(names) > 1:
        return names.index(CLASS_AGNOSTIC)
    return None


def class_names(targets) -> list[str]:
    """The names of the classes of a recognition over ``targets`` (class value k = 1 + index):
    the targets, with the class-agnostic one named :data:`UNCLASSIFIED` when it runs beside
    class targets."""
    names = [str(t) for t in targets]
    k = agnostic_index(names)
    if k is not None:
        names[k] = UNCLASSIFIED
    return names


def classify_nuclei(
    class_map: np.ndarray,
    agnostic_prob: np.ndarray,
    value: int,
    min_fraction: float = 0.5,
    split: dict | None = None,
) -> np.ndarray:
    """Give every nucleus of the class-agnostic map one class over its whole extent.

    Args:
        class_map: (H, W) int, 0 background, > 0 a class (the official rules' class map).
        agnostic_prob: (H, W) float probability of :data:`CLASS_AGNOSTIC`.
        value: class value of :data:`UNCLASSIFIED` in the class map.
        min_fraction: a nucleus (an object of the agnostic mask, prob > 0.5, split into
            instances by :func:`~.instances.split_instances`) takes the class that holds most
            of its pixels when the classes together hold at least this fraction of them; else
            it is unclassified (``value``).
        split: ``split_instances`` keyword arguments (the instance step's, e.g.
            :func:`~.postprocess.instance_defaults`); None = its size-aware defaults.

    Returns:
        (H, W) int32 class map: the input, with every pixel of every nucleus set to that
        nucleus's class (so a class's fragments inside another class's nucleus, and the
        nucleus pixels no class reached, follow the nucleus); pixels outside the nuclei are
        unchanged (class objects the agnostic target missed stay as the classes have them).
    """
    from .instances import split_instances

    class_map = np.asarray(class_map)
    prob = np.asarray(agnostic_prob, dtype=np.float32)
    out = class_map.astype(np.int32, copy=True)
    mask = prob > 0.5
    if not mask.any():
        return out
    inst = split_instances(mask, prob, **(split or {}))
    n = int(inst.max())
    if n == 0:
        return out
    k = int(max(out.max(initial=0), value)) + 1
    sel = inst > 0
    counts = np.bincount(
        inst[sel].astype(np.int64) * k + out[sel].clip(0), minlength=(n + 1) * k
    ).reshape(n + 1, k)
    area = counts.sum(1)
    counts[:, value] = 0  # earlier unclassified candidates claim nothing
    claimed = counts[:, 1:].sum(1)
    best = counts[:, 1:].argmax(1) + 1  # ties -> the lower class value
    cls = np.where(claimed >= min_fraction * np.maximum(area, 1), best, value).astype(np.int32)
    out[sel] = cls[inst[sel]]
    return out


def _check_probs(probs, n: int | None = None) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities (P, H, W); got shape {probs.shape}")
    if n is not None and probs.shape[0] != n:
        raise ValueError(f"probs has {probs.shape[0]} maps but {n} targets were given")
    return probs


def nms_order(p_values, n: int) -> list[int]:
    """Indices sorted by descending p-value (stable; NaN = not testable goes last; None keeps
    the given order)."""
    if p_values is None:
        return list(range(n))
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size != n:
        raise ValueError(f"p_values has {p.size} entries, expected {n}")
    key = [(-math.inf if math.isnan(v) else -v) for v in p]
    # python's sort is stable: equal p-values keep the targets' order (as the official sorted())
    return sorted(range(n), key=lambda i: (math.isnan(p[i]), key[i]))


def non_maxima_suppression(probs, p_values=None, order=None) -> list[int]:
    """Official overlap suppression.

    Args:
        probs: (P, H, W) probabilities.
        p_values: (P,) adjusted p-values giving the order (descending); None = given order.
        order: explicit processing order (indices), overrides ``p_values``.

    Returns:
        Indices of the kept targets, in processing order.
    """
    probs = _check_probs(probs)
    n = probs.shape[0]
    if order is None:
        order = nms_order(p_values, n)
    kept: list[int] = []
    for i in order:
        region = probs[i] > 0.5
        area = int(region.sum())
        if area == 0:
            continue
        # overlap with ANY kept mask: the official loop tests each kept mask separately
        drop = False
        for j in kept:
            if np.count_nonzero(region & (probs[j] > 0.5)) > 0.5 * area:
                drop = True
                break
        if not drop:
            kept.append(i)
    return kept


def combine_masks(probs, order=None) -> tuple[np.ndarray, list[int]]:
    """Official pixel-wise combination of the targets' probability maps.

    Args:
        probs: (K, H, W) probabilities of the candidate targets.
        order: the targets' order (indices into probs; the official dict order, i.e. NMS order),
            used for ties; default 0..K-1.

    Returns:
        (winner, survivors): winner (H, W) int32, -1 where no surviving target has prob > 0.5,
        else the index (into ``probs``) of the surviving target with the highest probability;
        survivors: indices of the targets not discarded, in ``order``.
    """
    probs = _check_probs(probs)
    k = probs.shape[0]
    if order is None:
        order = list(range(k))
    order = list(order)
    if k == 0 or not order:
        return np.full(probs.shape[1:], -1, dtype=np.int32), []
    p = probs[order].astype(np.float32, copy=False)
    cand = p > 0.1
    area = cand.reshape(len(order), -1).sum(1)
    psum = np.where(cand, p, 0).reshape(len(order), -1).sum(1, dtype=np.float64)
    mean_prob = np.where(area > 0, psum / np.maximum(area, 1), 0.0)
    any_cand = cand.any(0)
    masked = np.where(cand, p, -np.inf)
    best = np.argmax(masked, axis=0)  # first maximal -> earlier target wins ties
    assigned = np.bincount(best[any_cand].ravel(), minlength=len(order))
    discard = assigned < 0.5 * area
    # the most confident target (highest mean prob; ties -> first) is never discarded
    most = int(np.argmax(mean_prob))
    discard[most] = False
    surv = [i for i in range(len(order)) if not discard[i]]
    final = np.where((p > 0.5) & ~discard[:, None, None], p, -np.inf)
    win = np.argmax(final, axis=0)
    has = np.isfinite(np.max(final, axis=0))
    winner = np.where(has, np.asarray(order)[win], -1).astype(np.int32)
    return winner, [order[i] for i in surv]


def recognize_maps(
    probs,
    targets,
    p_values=None,
    p_threshold: float | None = 0.05,
    split: dict | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Class map from the probability maps of all targets, with the official rules.

    Args:
        probs: (P, H, W) float32 probabilities, one map per target.
        targets: the P target names.
        p_values: (P,) adjusted existence p-values (NaN = not testable, never filtered, ordered
            last in the suppression) or None (no filtering, given order).
        p_threshold: targets with p-value below it are dropped first (None or 0 = no
            filtering, as the official code).
        split: the instance step's ``split_instances`` arguments, used to find the objects of
            the class-agnostic target (:func:`classify_nuclei`).

    Returns:
        (class_map, kept_targets): class_map (H, W) int32, 0 = background and k = 1 + index of
        the target in ``targets``; kept_targets: the classes present in the class map, named
        as :func:`class_names` (the class-agnostic target beside class targets is
        :data:`UNCLASSIFIED`: see the module docstring), in the order of ``targets``.
    """
    targets = list(targets)
    names = class_names(targets)
    agn = agnostic_index(targets)
    probs = _check_probs(probs, len(targets))
    n = len(targets)
    if p_values is not None:
        p_values = np.asarray(p_values, dtype=np.float64).reshape(-1)
        if p_values.size != n:
            raise ValueError(f"p_values has {p_values.size} entries, expected {n}")
    order = nms_order(p_values, n)
    if p_threshold and p_values is not None:
        order = [i for i in order if math.isnan(p_values[i]) or p_values[i] >= p_threshold]
    use_agnostic = agn is not None and agn in order
    if agn is not None:
        order = [i for i in order if i != agn]
    kept = non_maxima_suppression(probs, order=order)
    if kept:
        winner, surv = combine_masks(probs, order=kept)
        class_map = (winner + 1).astype(np.int32)
    else:
        class_map, surv = np.zeros(probs.shape[1:], dtype=np.int32), []
    if use_agnostic:
        class_map = classify_nuclei(class_map, probs[agn], agn + 1, split=split)
        surv = [*surv, agn]
    # a survivor can end with no pixel; report the targets present in the class map
    present = set(np.unique(class_map[class_map > 0]) - 1)
    kept_targets = [names[i] for i in range(n) if i in surv and i in present]
    return class_map, kept_targets
