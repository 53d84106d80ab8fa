"""The official recognition rules (v1_facts.md section 8) on synthetic overlapping class maps.

``_official_*`` transcribe the official per-pixel loops (``interactive_infer_image_all``,
``non_maxima_suppression``, ``combine_masks``) literally, dict order and all; the vectorised
implementation must give the same class map.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_biomedparse.inference.recognition import (
    combine_masks,
    non_maxima_suppression,
    recognize_maps,
)


# ------------------------------------------------------------------ literal transcription
def _official_nms(predicts, p_values):
    order = sorted(predicts, key=lambda t: p_values[t], reverse=True)
    kept = {}
    for t in order:
        region = predicts[t] > 0.5
        area = region.sum()
        if area == 0:
            continue
        if any((region & (kept[k] > 0.5)).sum() > 0.5 * area for k in kept):
            continue
        kept[t] = predicts[t]
    return kept


def _official_combine(predicts):
    pixel_preds, target_area, target_probs = {}, {}, {}
    for target, pred in predicts.items():
        target_area[target] = 0
        target_probs[target] = 0
        for i, j in zip(*np.where(pred > 0.1)):
            pixel_preds.setdefault((i, j), {})[target] = pred[i, j]
            target_area[target] += 1
            target_probs[target] += pred[i, j]
    for target in predicts:
        if target_area[target]:
            target_probs[target] /= target_area[target]
    combined = {t: 0 for t in predicts}
    for index in pixel_preds:
        best = sorted(pixel_preds[index], key=lambda t: pixel_preds[index][t], reverse=True)[0]
        combined[best] += 1
    discard = [t for t in predicts if combined[t] < 0.5 * target_area[t]]
    most = sorted(predicts, key=lambda t: target_probs[t], reverse=True)[0]
    discard = [t for t in discard if t != most]
    masks = {t: np.zeros(p.shape, np.uint8) for t, p in predicts.items() if t not in discard}
    for index, cands in pixel_preds.items():
        c = [t for t in cands if t not in discard and cands[t] > 0.5]
        if c:
            masks[max(c, key=lambda t: cands[t])][index] = 1
    return masks


def _official_class_map(probs, targets, p_values, p_threshold):
    predicts = {t: probs[i] for i, t in enumerate(targets)}
    pv = dict(zip(targets, p_values))
    if p_threshold:
        predicts = {t: v for t, v in predicts.items() if pv[t] >= p_threshold}
    kept = _official_nms(predicts, pv)
    out = np.zeros(probs.shape[1:], np.int32)
    if not kept:
        return out
    for t, m in _official_combine(kept).items():
        out[m > 0] = targets.index(t) + 1
    return out


# ------------------------------------------------------------------ synthetic scene
def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - cy, xx - cx) <= r


def _soft(mask, peak, sigma=1.5):
    return (ndi.gaussian_filter(mask.astype(float), sigma) * peak).astype(np.float32)


def _scene(seed=0, shape=(48, 48)):
    """Five targets with known, partly overlapping masks and different confidences."""
    rng = np.random.default_rng(seed)
    a = _disc(shape, 14, 14, 9)  # target A: a disc
    b = _disc(shape, 20, 22, 8)  # B overlaps A, less confident -> loses pixels to A
    c = _disc(shape, 36, 34, 8)  # C: separate object
    d = _disc(shape, 36, 36, 6)  # D: almost inside C (overlap > half its area) -> suppressed
    e = np.zeros(shape, bool)  # E: empty map
    probs = np.stack([_soft(a, 0.95), _soft(b, 0.8), _soft(c, 0.9), _soft(d, 0.97), _soft(e, 0.9)])
    probs += rng.uniform(0, 0.05, probs.shape).astype(np.float32)
    return np.clip(probs, 0, 1), ["A", "B", "C", "D", "E"]


def test_known_scene_official_rules():
    probs, targets = _scene()
    pv = np.array([0.5, 0.4, 0.3, 0.2, 0.6])
    cmap, kept = recognize_maps(probs, targets, pv, p_threshold=0.05)
    np.testing.assert_array_equal(cmap, _official_class_map(probs, targets, pv, 0.05))
    # D lies inside C: processed after C (lower p-value) it is suppressed; E is empty
    assert kept == ["A", "B", "C"]
    assert (cmap == 4).sum() == 0 and (cmap == 5).sum() == 0
    # where A and B overlap, the more probable one wins pixel by pixel
    both = (probs[0] > 0.5) & (probs[1] > 0.5)
    assert both.any()
    win = np.where(probs[0][both] >= probs[1][both], 1, 2)
    np.testing.assert_array_equal(cmap[both], win)


def test_p_value_order_decides_suppression():
    probs, targets = _scene()
    # now D has the higher p-value: D is kept first, and C, whose overlap with D (~all of D,
    # ~110 px) exceeds half of C's own area (~200 px), is suppressed
    pv = np.array([0.5, 0.4, 0.2, 0.3, 0.6])
    cmap, kept = recognize_maps(probs, targets, pv, p_threshold=0.05)
    np.testing.assert_array_equal(cmap, _official_class_map(probs, targets, pv, 0.05))
    assert "D" in kept and "C" not in kept
    assert non_maxima_suppression(probs, pv) == [0, 1, 3]


def test_existence_threshold_drops_targets():
    probs, targets = _scene()
    pv = np.array([0.01, 0.4, 0.3, 0.2, 0.6])  # A absent
    cmap, kept = recognize_maps(probs, targets, pv, p_threshold=0.05)
    np.testing.assert_array_equal(cmap, _official_class_map(probs, targets, pv, 0.05))
    assert "A" not in kept and (cmap == 1).sum() == 0
    # no threshold: A is back
    cmap0, kept0 = recognize_maps(probs, targets, pv, p_threshold=None)
    np.testing.assert_array_equal(cmap0, _official_class_map(probs, targets, pv, None))
    assert "A" in kept0


def test_combination_discards_dominated_target():
    shape = (30, 30)
    big = _disc(shape, 15, 15, 10)
    small = _disc(shape, 15, 15, 6)
    # X covers the centre with 0.7, Y covers a larger area with 0.9 -> X gets < half its area
    probs = np.stack([np.where(small, 0.7, 0.0), np.where(big, 0.9, 0.0)]).astype(np.float32)
    winner, surv = combine_masks(probs)
    assert surv == [1]
    masks = _official_combine({"X": probs[0], "Y": probs[1]})
    assert list(masks) == ["Y"]
    np.testing.assert_array_equal(winner == 1, masks["Y"] > 0)
    # the most confident target (highest mean prob over prob > 0.1) is never discarded
    probs2 = np.stack([np.where(big, 0.6, 0.0), np.where(small, 0.95, 0.0)]).astype(np.float32)
    _, surv2 = combine_masks(probs2)
    assert 1 in surv2


@pytest.mark.parametrize("seed", range(6))
def test_random_overlaps_match_the_official_loops(seed):
    rng = np.random.default_rng(seed)
    shape = (32, 32)
    n = 4
    probs = np.zeros((n, *shape), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            m = _disc(shape, *rng.integers(4, 28, 2), rng.integers(3, 10))
            probs[i] = np.maximum(probs[i], _soft(m, rng.uniform(0.55, 1.0), sigma=1.0))
    probs = np.clip(probs + rng.uniform(0, 0.15, probs.shape).astype(np.float32), 0, 1)
    targets = [f"t{i}" for i in range(n)]
    pv = rng.uniform(0, 1, n)
    pv[rng.integers(0, n)] = pv[rng.integers(0, n)]  # possible ties keep the targets' order
    for thr in (None, 0.05, 0.3):
        cmap, kept = recognize_maps(probs, targets, pv, p_threshold=thr)
        np.testing.assert_array_equal(cmap, _official_class_map(probs, targets, pv, thr))
        assert set(kept) == {targets[k - 1] for k in np.unique(cmap[cmap > 0])}


def test_not_testable_targets_are_kept_and_ordered_last():
    probs, targets = _scene()
    pv = np.array([np.nan, 0.4, 0.3, 0.2, 0.6])
    cmap, kept = recognize_maps(probs, targets, pv, p_threshold=0.05)
    assert "A" in kept
    assert non_maxima_suppression(probs, pv)[-1] == 0


def test_nothing_survives_and_bad_input():
    probs = np.zeros((2, 8, 8), np.float32)
    cmap, kept = recognize_maps(probs, ["a", "b"], [0.9, 0.9])
    assert kept == [] and cmap.dtype == np.int32 and not cmap.any()
    with pytest.raises(ValueError, match="2 maps but 3 targets"):
        recognize_maps(probs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="p_values has 1"):
        recognize_maps(probs, ["a", "b"], [0.5])


# ------------------------------------------------------------------ every nucleus answered
def _two_nuclei_field():
    """A classified nucleus and an unclassified one; the class-agnostic map sees both."""
    yy, xx = np.mgrid[:80, :80]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 < 8**2
    b = (yy - 55) ** 2 + (xx - 55) ** 2 < 8**2
    probs = np.zeros((3, 80, 80), np.float32)
    probs[0][a] = 0.9  # neoplastic: nucleus a only
    probs[1][a] = 0.2  # inflammatory: nowhere above 0.5
    probs[2][a | b] = 0.8  # nuclei: both
    return probs, a, b


def test_unclaimed_nuclei_become_the_unclassified_class():
    from napari_biomedparse.inference.recognition import UNCLASSIFIED, class_names

    probs, a, b = _two_nuclei_field()
    targets = ["neoplastic cells", "inflammatory cells", "nuclei"]
    cm, kept = recognize_maps(probs, targets, None)
    names = class_names(targets)
    assert names == ["neoplastic cells", "inflammatory cells", UNCLASSIFIED]
    assert kept == ["neoplastic cells", UNCLASSIFIED]
    assert (cm[a] == 1).all()  # the class keeps its nucleus (nuclei take no part in the NMS)
    assert (cm[b] == 3).all()  # the other nucleus is answered, as unclassified
    assert (cm[~(a | b)] == 0).all()
    # without the class-agnostic target the unclaimed nucleus is dropped (official rules)
    cm2, kept2 = recognize_maps(probs[:2], targets[:2], None)
    assert (cm2[b] == 0).all() and kept2 == ["neoplastic cells"]
    # alone (fluorescence vocabulary) "nuclei" is an ordinary target, not "unclassified"
    cm3, kept3 = recognize_maps(probs[2:], ["nuclei"], None)
    assert kept3 == ["nuclei"] and (cm3[a | b] == 1).all()


def test_unclassified_respects_existence_filter_and_partial_claims():
    probs, a, b = _two_nuclei_field()
    targets = ["neoplastic cells", "inflammatory cells", "nuclei"]
    # nuclei filtered out by its p-value: no unclassified objects
    cm, kept = recognize_maps(probs, targets, [0.5, 0.5, 0.001], p_threshold=0.05)
    assert kept == ["neoplastic cells"] and not (cm == 3).any()
    # a nucleus mostly claimed by a class gets no unclassified fragment around it
    probs[0][a] = 0.0
    yy, xx = np.mgrid[:80, :80]
    probs[0][((yy - 20) ** 2 + (xx - 20) ** 2 < 6**2)] = 0.9  # ~56 % of nucleus a
    cm, _ = recognize_maps(probs, targets, None)
    assert not (cm[a] == 3).any() and (cm[b] == 3).all()
    # ... and its class over the whole nucleus, also where the class's map is below 0.5
    assert (cm[a] == 1).all()


def test_every_nucleus_takes_one_class_over_its_extent():
    """Two classes split one nucleus (53 % / 35 %, the rest to none): the nucleus is one
    object of the majority class, not two fragments the instance step's minimum size drops."""
    from napari_biomedparse.inference.recognition import classify_nuclei

    yy, xx = np.mgrid[:60, :60]
    nucleus = (yy - 30) ** 2 + (xx - 30) ** 2 < 10**2
    cm = np.zeros((60, 60), np.int32)
    cm[nucleus & (xx < 31)] = 1
    cm[nucleus & (xx >= 31) & (xx < 37)] = 2
    assert 0.5 < (cm[nucleus] == 1).mean() < 0.6 and 0.3 < (cm[nucleus] == 2).mean() < 0.4
    cm[5:9, 5:9] = 2  # a class object outside every nucleus stays as it is
    prob = np.where(nucleus, 0.9, 0.05).astype(np.float32)
    out = classify_nuclei(cm, prob, 3, split={"min_size": 40})
    assert (out[nucleus] == 1).all()
    assert (out[5:9, 5:9] == 2).all() and (out[~nucleus & (cm == 0)] == 0).all()
    # the classes hold less than half: unclassified over the whole nucleus
    few = np.where(nucleus & (xx < 22), 1, 0).astype(np.int32)
    out = classify_nuclei(few, prob, 3, split={"min_size": 40})
    assert (out[nucleus] == 3).all()
