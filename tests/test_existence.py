"""The official existence test (check_mask_stats, v1_facts.md section 7) on target_dist.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from napari_biomedparse.inference.existence import (
    TargetDistribution,
    adjusted_p_value,
    existence_p_value,
    existence_p_values,
    mask_stats,
)
from napari_biomedparse.inference.modalities import BIOMED_OBJECTS

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "napari_biomedparse" / "inference" / "target_dist_v1.json"
RAW = json.loads(BUNDLED.read_text())


def _crafted(color=(128, 64, 200), p=0.9, shape=(40, 50)):
    img = np.zeros(shape + (3,), np.uint8)
    img[...] = (250, 250, 250)
    img[10:30, 5:25] = color
    prob = np.zeros(shape, np.float32)
    prob[10:30, 5:25] = p
    return img, prob


def test_bundled_file_is_the_reference_copy():
    import hashlib

    digest = hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
    assert digest == "384e5f8db866b757dc61e28d205c1e7223bf0b7ed416f91289ad0821a78e52db"
    assert TargetDistribution.official_v1().image_types() == list(RAW)


def test_hand_computed_p_value_pathology():
    img, prob = _crafted()
    # statistics by hand: mean of 0.9 * 255 (float32), colour / 256
    x = [np.float32(0.9) * np.float32(255) / 256, 128 / 256, 64 / 256, 200 / 256]
    np.testing.assert_allclose(mask_stats(prob * 255, img), x, rtol=1e-6)
    params = RAW["Pathology"]["neoplastic cells"]
    # one-observation two-sided KS p-value = 2 min(F, 1 - F); product; fourth root
    by_hand = 1.0
    for xi, (a, b) in zip(x, params):
        f = stats.beta.cdf(xi, a, b)
        by_hand *= 2 * min(f, 1 - f)
    by_hand **= 0.25
    # and the official call itself
    official = (
        np.prod(
            [stats.ks_1samp([xi], stats.beta(a, b).cdf).pvalue for xi, (a, b) in zip(x, params)]
        )
        ** 0.25
    )
    p = existence_p_value(img, prob, "pathology", "neoplastic cells")
    assert p == pytest.approx(by_hand, rel=1e-6)  # by hand: the float32 mean is rounded
    assert p == pytest.approx(official, rel=1e-6)
    got = mask_stats(prob * 255, img)
    exact = np.prod(
        [stats.ks_1samp([g], stats.beta(a, b).cdf).pvalue for g, (a, b) in zip(got, params)]
    )
    assert p == pytest.approx(exact**0.25, rel=1e-12)
    assert p == pytest.approx(0.0836892, abs=1e-7)
    assert 0.0 < p < 1.0


@pytest.mark.parametrize(
    "image_type,target",
    [
        ("CT-Abdomen", "liver"),
        ("MRI-FLAIR-Brain", "edema"),
        ("X-Ray-Chest", "left lung"),
        ("OCT", "edema"),
    ],
)
def test_hand_computed_p_values_other_types(image_type, target):
    # an object whose statistics sit at the means of its Beta distributions: a typical object
    params = np.asarray(RAW[image_type][target])
    means = params[:, 0] / params.sum(1)
    color = tuple(int(round(m * 256)) for m in means[1:])
    img, prob = _crafted(color=color, p=min(means[0] * 256 / 255, 1.0))
    x = mask_stats(prob * 255, img)
    by_hand = (
        np.prod(
            [
                2 * min(stats.beta.cdf(xi, a, b), stats.beta.sf(xi, a, b))
                for xi, (a, b) in zip(x, params)
            ]
        )
        ** 0.25
    )
    got = existence_p_value(img, prob, image_type, target)
    assert got == pytest.approx(by_hand, rel=1e-6)
    assert got > 0.3  # typical objects pass the official 0.05 threshold easily
    # a green square with a low-confidence mask is atypical
    img2, prob2 = _crafted(color=(5, 250, 5), p=0.55)
    assert existence_p_value(img2, prob2, image_type, target) < 0.05


def test_low_confidence_mask_gives_zero():
    img, prob = _crafted(p=0.49)  # max 0.49 * 255 = 124.95 <= 127: statistics [0, 0, 0, 0]
    assert mask_stats(prob * 255, img) == [0, 0, 0, 0]
    assert existence_p_value(img, prob, "pathology", "neoplastic cells") == 0.0


def test_not_testable_and_vocabulary_matching():
    img, prob = _crafted()
    assert math.isnan(existence_p_value(img, prob, "pathology", "mitochondria"))
    assert math.isnan(existence_p_value(img, prob, "CT-Liver", "tumor"))  # absent from v1 file
    assert math.isnan(existence_p_value(img, prob, "fluorescence", "nuclei"))
    # friendly names and case-insensitive targets find the official entries
    a = existence_p_value(img, prob, "Pathology", "Neoplastic  Cells")
    b = existence_p_value(img, prob, "pathology", "neoplastic cells")
    assert a == b and not math.isnan(a)
    c = existence_p_value(img, prob, "CT", "liver", site="abdomen")
    assert c == existence_p_value(img, prob, "CT-Abdomen", "liver")
    d = existence_p_value(img, prob, "CT", "nodule", site="lung")  # lung window = CT-Chest
    assert d == existence_p_value(img, prob, "CT-Chest", "nodule")


def test_every_official_target_with_statistics_is_testable():
    td = TargetDistribution.official_v1()
    for image_type, targets in BIOMED_OBJECTS.items():
        for target in targets:
            has = image_type in RAW and target in RAW[image_type]
            assert (td.params(image_type, target) is not None) == has, (image_type, target)
    assert td.params("CT-Liver", "vessel") is None


def test_custom_distribution_for_microscopy():
    td = TargetDistribution({"fluorescence": {"nuclei": [[20, 3], [2, 5], [2, 5], [2, 5]]}})
    img, prob = _crafted(color=(100, 100, 100))
    p = existence_p_value(img, prob, "Fluorescence", "nuclei", td)
    x = mask_stats(prob * 255, img)
    expected = (
        np.prod(
            [
                2 * min(stats.beta.cdf(xi, a, b), stats.beta.sf(xi, a, b))
                for xi, (a, b) in zip(x, [[20, 3], [2, 5], [2, 5], [2, 5]])
            ]
        )
        ** 0.25
    )
    assert p == pytest.approx(expected, rel=1e-6)  # scipy vs closed form: ~1e-8
    with pytest.raises(ValueError, match="4 positive"):
        TargetDistribution({"Pathology": {"x": [[1, 2]]}})


def test_existence_on_real_hne_nuclei():
    """Annotated nuclei of the real H&E crop look like nuclei; the white background does not."""
    from PIL import Image

    img = np.asarray(Image.open(ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"))
    types = np.load(ROOT / "tests" / "data" / "hgsc_nest_type_mask.npz")["nuc_raster"]
    targets = ["connective tissue cells", "inflammatory cells", "neoplastic cells"]
    probs = np.stack([np.where(types == k, 0.9, 0.0) for k in (1, 2, 3)]).astype(np.float32)
    pv = existence_p_values(img, probs, "pathology", targets)
    assert (pv > 0.4).all(), pv  # each true class is consistent with its own statistics
    background = np.where(img.mean(-1) > 200, 0.9, 0.0).astype(np.float32)
    assert existence_p_value(img, background, "pathology", "neoplastic cells") < 0.05
    # inflammatory nuclei are darker than the neoplastic statistics expect, and vice versa
    assert existence_p_value(img, probs[1], "pathology", "neoplastic cells") < pv[1]
    assert existence_p_value(img, probs[2], "pathology", "inflammatory cells") < pv[2]


def test_adjusted_p_value_matches_scipy_over_a_grid():
    params = RAW["Dermoscopy"]["lesion"]
    for s in np.linspace(0.01, 0.99, 7):
        x = [s, 1 - s, s / 2, 0.5]
        official = np.prod(
            [stats.ks_1samp([xi], stats.beta(a, b).cdf).pvalue for xi, (a, b) in zip(x, params)]
        )
        assert adjusted_p_value(x, params) == pytest.approx(official**0.25, rel=1e-12, abs=1e-300)
