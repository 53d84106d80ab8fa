"""The slide engine's recognition equals the official whole-image recognition.

An image small enough to hold is processed by ``process_slide``; the reference is
:func:`~napari_biomedparse.inference.recognition.recognize_maps` applied to the same image at
once: the run's blended probabilities (what the engine keeps, uint8) with the existence
p-values of :func:`~napari_biomedparse.inference.existence.existence_p_values` on the RGB
image at the same pixels. Models: the bundled default model on a held-out H&E crop (real
probabilities, several classes), and the tiny v1 fixture (official format, random weights)
at its pathology geometry (one 64 um tile resized to 1024 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.io import imread

from napari_biomedparse.inference.existence import existence_p_values
from napari_biomedparse.inference.predictor import Predictor
from napari_biomedparse.inference.recognition import recognize_maps
from napari_biomedparse.slide.engine import process_slide

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"
V1 = ROOT / "tests" / "data" / "v1_tiny"
TARGETS = ["neoplastic cells", "inflammatory cells", "connective tissue cells"]


def _reference(res, rgb, td):
    p = np.asarray(res.probs).astype(np.float32) / 255
    pv = existence_p_values(rgb, p, "pathology", res.class_names, td)
    cmap, kept = recognize_maps(p, res.class_names, pv, 0.05)
    return cmap, kept, pv


def _check(res, rgb, td):
    ref, kept, pv = _reference(res, rgb, td)
    got = np.asarray(res.classes[0])
    assert got.shape == ref.shape
    assert np.array_equal(got, ref)
    rec = res.summary["recognition"]
    np.testing.assert_allclose(rec["p_values"], pv, atol=1e-6)
    assert rec["kept"] == kept
    table = res.table
    assert set(table["class"]) <= set(kept)  # every object belongs to a kept class
    return ref, kept


def test_default_model_slide_recognition_is_the_official_rule(tmp_path):
    import torch

    from napari_biomedparse.hub import load_model

    torch.set_num_threads(2)
    rgb = imread(IMAGE)[900:1284, 900:1284]  # held-out quarter, 384 px at 0.5 um/px
    pred = Predictor(load_model("default"), device="cpu")
    res = process_slide(rgb, tmp_path / "run.zarr", model=pred, prompts=TARGETS, slide_mpp=0.5,
                        tissue_mask=False, instances="components")  # fmt: skip
    assert res.params["tile_size"] == 256 and res.summary["tiles_processed"] == 4
    ref, kept = _check(res, rgb, pred.model.metadata["target_dist"])
    assert len(kept) >= 2 and (ref > 0).mean() > 0.05 and len(res.table) > 20


def test_v1_fixture_slide_recognition_is_the_official_rule(tmp_path):
    from napari_biomedparse.hub import load_model
    from napari_biomedparse.model import BiomedParseConfig

    cfg = BiomedParseConfig.from_reference_json(V1 / "config.json")
    model = load_model(V1 / "state_dict.pt", config=cfg)
    rgb = imread(IMAGE)[900:1156, 900:1156]  # 256 px, taken as 0.25 um/px: one v1 tile
    res = process_slide(rgb, tmp_path / "v1.zarr", model=Predictor(model, device="cpu"),
                        prompts=TARGETS, slide_mpp=0.25, overlap=0, tissue_mask=False,
                        instances="components")  # fmt: skip
    assert (res.params["tile_size"], res.params["mpp"], res.params["input_size"]) == (
        256,
        0.25,
        1024,
    )
    ref, _ = _check(res, rgb, model.metadata["target_dist"])
    from napari_biomedparse.slide.stitching import class_map

    # random weights: the existence test rejects every class over the image, which the
    # per-pixel rule alone would not (the global part matters here)
    assert (class_map(np.asarray(res.probs)) != ref).mean() > 0.1
