"""Metrics, classical baselines and existence-statistics fitting (training layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_biomedparse.training.baseline import (
    fluorescence_nuclei_baseline,
    he_nuclei_baseline,
)
from napari_biomedparse.training.metrics import detection_f1, dice, panoptic_quality
from napari_biomedparse.training.target_dist import fit_beta, fit_target_dist, mask_stats

ROOT = Path(__file__).resolve().parents[1]
PKG_DATA = ROOT / "src" / "napari_biomedparse" / "data"
TEST_DATA = ROOT / "tests" / "data"


def test_dice_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert dice(a, b) == 1.0
    a[:5] = True
    assert dice(a, b) == 0.0
    b[:5, :5] = True  # 25 of a's 50 pixels
    assert dice(a, b) == pytest.approx(2 * 25 / 75)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:5])


def test_panoptic_quality_matching():
    gt = np.zeros((40, 40), np.int32)
    gt[2:12, 2:12] = 1
    gt[20:30, 20:30] = 2
    assert panoptic_quality(gt, gt)["pq"] == pytest.approx(1.0)
    pred = np.zeros_like(gt)
    pred[2:12, 4:14] = 7  # IoU 80/120 = 0.667 with object 1
    pred[35:38, 35:38] = 3  # false positive; object 2 missed
    r = panoptic_quality(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["sq"] == pytest.approx(80 / 120)
    assert r["rq"] == pytest.approx(1 / (1 + 1))
    assert r["pq"] == pytest.approx(80 / 120 * 0.5)
    # argument order (prediction, truth): a second false positive counts in fp, not fn
    pred[30:33, 2:5] = 4
    assert [panoptic_quality(pred, gt)[k] for k in ("tp", "fp", "fn")] == [1, 2, 1]
    assert [panoptic_quality(gt, pred)[k] for k in ("tp", "fp", "fn")] == [1, 1, 2]
    # IoU exactly 0.5 is not a match
    half = np.zeros_like(gt)
    half[2:12, 2:7] = 1
    assert panoptic_quality(half, gt == 1)["tp"] == 0


def test_detection_f1_radius():
    gt = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    pred = np.array([[14.0, 10.0], [50.0, 57.0], [10.0, 11.0]])  # 4 px ok, 7 px too far, dup
    r = detection_f1(pred, gt, radius=6)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["f1"] == pytest.approx(2 / (2 + 2 + 2))
    assert detection_f1(pred, gt, radius=8)["tp"] == 2
    # label images give their centroids
    lab = np.zeros((30, 30), np.int32)
    lab[5:10, 5:10] = 1
    assert detection_f1(lab, lab)["f1"] == 1.0


def _he_holdout():
    from skimage import io

    img = io.imread(PKG_DATA / "hgsc_nest.jpg")
    inst = np.load(TEST_DATA / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    return img[750:, 750:], inst[750:, 750:]


def test_he_baseline_on_heldout_region():
    rgb, gt = _he_holdout()
    mask, labels = he_nuclei_baseline(rgb)
    assert mask.shape == gt.shape and labels.max() > 100
    d = dice(mask, gt > 0)
    assert 0.70 < d < 0.85  # measured 0.774; the model card compares the model with this
    assert detection_f1(labels, gt)["recall"] > 0.6


def test_fluorescence_baseline_on_heldout_region():
    import tifffile

    img = tifffile.imread(PKG_DATA / "stardist_img2d.tif")[256:, 256:]
    gt = tifffile.imread(TEST_DATA / "stardist_mask2d.tif")[256:, 256:]
    mask, labels = fluorescence_nuclei_baseline(img)
    assert dice(mask, gt > 0) > 0.85  # measured 0.896
    assert panoptic_quality(labels, gt)["pq"] > 0.5
    with pytest.raises(ValueError, match="2-D"):
        fluorescence_nuclei_baseline(np.zeros((2, 3, 4, 5)))


def test_fit_beta_recovers_parameters():
    rng = np.random.default_rng(0)
    x = rng.beta(8.0, 3.0, 20000)
    a, b = fit_beta(x)
    assert a == pytest.approx(8.0, rel=0.08) and b == pytest.approx(3.0, rel=0.08)
    # nearly constant statistic: finite, sharp, centred
    a, b = fit_beta([0.99] * 10)
    assert np.isfinite(a) and np.isfinite(b) and a / (a + b) == pytest.approx(0.99, abs=1e-3)


def test_mask_stats_and_fit_target_dist():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 128
    mask = np.zeros((4, 4))
    assert mask_stats(mask + 127, rgb) == [0, 0, 0, 0]
    mask[:2] = 255
    assert mask_stats(mask, rgb) == pytest.approx([255 / 256, 0.5, 0.0, 0.0])
    rng = np.random.default_rng(1)
    stats = {"pathology": {"nuclei": rng.uniform(0.2, 0.8, (50, 4)).tolist(), "rare": [[0.5] * 4]}}
    td = fit_target_dist(stats)
    assert list(td["pathology"]) == ["nuclei"]  # one sample is too few to fit
    assert np.asarray(td["pathology"]["nuclei"]).shape == (4, 2)


def test_fit_beta_standard_deviation_floor():
    a, b = fit_beta(np.full(50, 0.3) + np.linspace(-0.001, 0.001, 50), min_sd=0.1)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert mean == pytest.approx(0.3, abs=1e-3) and np.sqrt(var) == pytest.approx(0.1, rel=1e-3)
