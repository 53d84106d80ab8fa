"""Model-aware application defaults (``inference.application.application_defaults``).

The official v1 checkpoint (here the tiny fixture in tests/data/v1_tiny: official state-dict
format, random weights, input size 1024) is applied to pathology at the field of view of its
PanNuke training crops: 256 px tiles at 0.25 um/px (64 um), each resized 4x to the 1024 px
input. The bundled default model keeps the geometry it had (0.5 um/px, 256 px, 32 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_biomedparse.inference.application import (
    MODALITY_DEFAULTS,
    V1_INFERENCE,
    ApplicationSpec,
    application_defaults,
)
from napari_biomedparse.inference.tiled import inference_spec

V1 = Path(__file__).parent / "data" / "v1_tiny"


@pytest.fixture(scope="module")
def v1_tiny():
    from napari_biomedparse.hub import load_model
    from napari_biomedparse.model import BiomedParseConfig

    cfg = BiomedParseConfig.from_reference_json(V1 / "config.json")
    return load_model(V1 / "state_dict.pt", config=cfg)


def test_v1_checkpoint_gets_the_pannuke_field_of_view(v1_tiny):
    assert v1_tiny.metadata["inference"] == V1_INFERENCE
    assert inference_spec(v1_tiny) is None  # small images: official whole-image semantics
    spec = application_defaults(v1_tiny, "Pathology")
    assert spec == ApplicationSpec("tiled", 0.25, 256, 32, 1024, "model:pathology")
    assert spec.resize_factor == 4.0
    assert spec.field_of_view_um == 64.0
    assert spec.input_mpp == 0.0625
    # other modalities: nothing model-specific, the modality's defaults and whole images
    ct = application_defaults(v1_tiny, "CT")
    assert (ct.mode, ct.source, ct.mpp, ct.tile_size) == ("whole", "modality", None, 512)


def test_default_model_geometry_is_unchanged():
    """The bundled model (tiled, 256 px at 0.5 um/px) gets what the engine used before."""
    from napari_biomedparse.hub import load_model

    m = load_model("default")
    path = application_defaults(m, "pathology")
    assert (path.mpp, path.tile_size, path.overlap, path.resize_factor) == (0.5, 256, 32, 1.0)
    assert path.mode == "tiled" and path.source == "model"
    fl = application_defaults(m, "fluorescence")  # no physical scale: the image's own
    assert (fl.mpp, fl.tile_size, fl.overlap) == (None, 256, 32)


def test_precedence_model_entry_then_model_then_modality():
    meta = {
        "inference": {
            "mode": "tiled",
            "tile_size": 128,
            "overlap": 16,
            "mpp": 1.0,
            "modalities": {"Fluorescence": {"mpp": 0.2, "tile_size": 64}},
        },
        "input_size": 256,
    }
    fl = application_defaults(meta, "fluorescence")
    assert (fl.mpp, fl.tile_size, fl.overlap, fl.source) == (0.2, 64, 16, "model:fluorescence")
    assert fl.resize_factor == 4.0
    pa = application_defaults(meta, "pathology-breast")
    assert (pa.mpp, pa.tile_size, pa.overlap, pa.source) == (1.0, 128, 16, "model")
    ct = application_defaults(meta, "CT")  # model's tile geometry, image's own resolution
    assert (ct.mpp, ct.tile_size, ct.overlap) == (None, 128, 16)
    none = application_defaults({}, "pathology")
    d = MODALITY_DEFAULTS["pathology"]
    assert (none.mpp, none.tile_size, none.overlap, none.source) == (
        d["mpp"],
        d["tile_size"],
        d["overlap"],
        "modality",
    )
    assert none.input_size is None and none.resize_factor is None


@pytest.mark.parametrize(
    "bad",
    [
        "tiled",
        {"mode": "sliding"},
        {"mode": "tiled", "modalities": ["pathology"]},
        {"mode": "whole", "modalities": {"pathology": {"mpp": -1.0}}},
    ],
)
def test_malformed_metadata_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="inference"):
        application_defaults({"inference": bad, "input_size": 256}, "pathology")


def test_v1_geometry_on_a_slide_resizes_64um_tiles_4x(v1_tiny, tmp_path):
    """The slide engine, given nothing, tiles the v1 model's slide at 0.25 um/px in 256 px
    tiles and feeds each to the model at 1024 px (resize factor 4)."""
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.slide.engine import process_slide

    pred = Predictor(v1_tiny, device="cpu")
    seen = []
    real = pred.predict_batch

    def predict_batch(rgb, prompts, *args, **kwargs):
        seen.append(np.asarray(rgb).shape)
        return real(rgb, prompts, *args, **kwargs)

    pred.predict_batch = predict_batch
    rng = np.random.default_rng(0)
    slide = rng.integers(60, 200, size=(240, 240, 3), dtype=np.uint8)  # 120 um at 0.5 um/px
    res = process_slide(
        slide,
        tmp_path / "run.zarr",
        model=pred,
        prompts=["neoplastic cells"],
        slide_mpp=0.5,
        tissue_mask=False,
        recognize=False,
    )
    p = res.params
    assert (p["mpp"], p["tile_size"], p["overlap"], p["input_size"]) == (0.25, 256, 32, 1024)
    assert res.probs.shape == (1, 480, 480)  # 120 um at 0.25 um/px
    assert seen and all(s[1:] == (1024, 1024, 3) for s in seen)
    # tiles lie inside the image: origins 0 and 224 (= 480 - 256) per axis, 2 x 2 tiles of 64 um
    assert sum(s[0] for s in seen) == 4
