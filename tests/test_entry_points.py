"""The same answer from every entry point: one image region, one set of parameters.

``process_slide`` (what the demo, ``napari-biomedparse slide`` and the Slide widget run) and
``Predictor.recognize`` on the same array (what the Recognize widget runs on an in-memory
image) must return the same objects: the same count, and every object matched one-to-one with
IoU >= 0.99. The region is a crop of the bundled slide at 0.5 um/px (the bundled model's
pixel size, so that neither path resamples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "src" / "napari_biomedparse" / "data" / "cmu_small_region.svs"


def _matches(a: np.ndarray, b: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(objects in a, objects in b, IoU of each one-to-one match at IoU > 0.5)."""
    ia, ib = np.unique(a[a > 0]), np.unique(b[b > 0])
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a = dict(zip(*np.unique(a[a > 0], return_counts=True)))
    area_b = dict(zip(*np.unique(b[b > 0], return_counts=True)))
    iou = [i / (area_a[p] + area_b[q] - i) for (p, q), i in zip(pairs.T, inter)]
    return ia.size, ib.size, np.array([v for v in iou if v > 0.5])


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured on a 640 px crop at 0.5 um/px (after the slide engine runs the full "
    "official rule): process_slide 474 objects (121 connective, 74 inflammatory, 0 neoplastic, "
    "279 'nuclei'), Predictor.recognize 392 (94, 51, 14, 233 'unclassified nuclei'); 228 "
    "matched at IoU > 0.5 (PQ 0.40). Post-processing defaults are shared "
    "(inference.postprocess); not yet isolated: the instance step (slide blocks split at a fixed "
    "radius, uint8 probabilities) and the name of the class-agnostic class",
)
def test_process_slide_and_recognize_give_the_same_objects(bundled_predictor, tmp_path):
    from napari_biomedparse.slide.engine import process_slide
    from napari_biomedparse.slide.readers import open_image

    img = open_image(SLIDE)
    crop = np.ascontiguousarray(np.asarray(img.read_region(1100, 700, 640, 640, 0, 255))[..., :3])
    res = process_slide(
        crop,
        tmp_path / "crop.biomedparse.zarr",
        model=bundled_predictor,
        slide_mpp=0.5,
        modality="pathology",
        tissue_mask=False,
    )
    rec = bundled_predictor.recognize(crop, modality="pathology", mpp=0.5)
    slide_labels = np.asarray(res.labels[0])
    assert slide_labels.shape == rec.labels.shape == crop.shape[:2]
    n_slide, n_rec, iou = _matches(slide_labels, rec.labels)
    assert n_slide > 20  # a real answer, not two empty ones
    assert n_slide == n_rec, (n_slide, n_rec)
    assert len(iou) == n_slide and iou.min() >= 0.99, (len(iou), n_slide, iou.min())
