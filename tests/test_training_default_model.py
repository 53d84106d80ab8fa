"""The bundled default model, loaded offline, on the held-out regions (never trained on).

Floors are set a little below the figures measured for the shipped weights (docs/model-card.md;
the test uses the top-left 480 x 480 px of the H&E held-out quarter to stay fast).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_biomedparse.training.default_model import NAME, datasets, default_config
from napari_biomedparse.training.finetune import predict_tiles
from napari_biomedparse.training.metrics import dice

# measured with the shipped weights (torch 2.13 CPU): nuclei 0.823, neoplastic 0.789,
# fluorescence nuclei 0.936
HE_NUCLEI_FLOOR = 0.78
HE_NEOPLASTIC_FLOOR = 0.74
FL_NUCLEI_FLOOR = 0.90


@pytest.fixture(scope="module")
def model():
    from napari_biomedparse.hub import DEFAULT_WEIGHTS, load_model

    torch.set_num_threads(2)
    assert DEFAULT_WEIGHTS.stat().st_size < 25 * 2**20
    return load_model("default")


@pytest.fixture(scope="module")
def held():
    return datasets()[1]


def test_default_model_metadata(model):
    assert model.metadata["name"] == NAME
    assert model.config.to_dict() == default_config().to_dict()
    vocab = model.metadata["vocabulary"]
    assert sorted(vocab["pathology"]) == sorted(
        ["neoplastic cells", "inflammatory cells", "connective tissue cells"]
    )
    assert vocab["fluorescence"] == ["nuclei"]
    td = model.metadata["target_dist"]
    for modality, prompts in vocab.items():
        for p in prompts:
            assert np.asarray(td[modality][p]).shape == (4, 2)


def test_default_model_segments_heldout_he(model, held):
    he = held[0]
    assert he.shape == (750, 750)
    sub = he.crop(slice(0, 480), slice(0, 480))
    prompts = list(sub.prompts.values())
    probs = predict_tiles(model, sub.image, prompts)
    nuclei = dice(probs.max(0) > 0.5, sub.instances > 0)
    per = {p: dice(pr > 0.5, sub.classes == v) for (v, p), pr in zip(sub.prompts.items(), probs)}
    assert nuclei > HE_NUCLEI_FLOOR, nuclei
    assert per["neoplastic cells"] > HE_NEOPLASTIC_FLOOR, per
    # the prompt matters: the neoplastic map is not the inflammatory map
    assert (
        dice(
            probs[prompts.index("neoplastic cells")] > 0.5,
            probs[prompts.index("inflammatory cells")] > 0.5,
        )
        < 0.5
    )


def test_default_model_segments_heldout_fluorescence(model, held):
    fl = held[1]
    probs = predict_tiles(model, fl.image, ["nuclei"])
    assert dice(probs[0] > 0.5, fl.instances > 0) > FL_NUCLEI_FLOOR


def test_default_model_existence_statistics_accept_heldout_objects(model, held):
    """The fitted target_dist says the held-out nuclei are present and a blank field empty."""
    from napari_biomedparse.inference.predictor import Predictor

    pred = Predictor(model, device="cpu")
    fl = held[1]  # 256 x 256: the model's input size, so detect() sees it unresized
    det = pred.detect(fl.image, ["nuclei"], modality="fluorescence")
    assert det.p_values[0] > 0.05 and det.present[0]
    he = held[0].crop(slice(50, 306), slice(50, 306))  # dense neoplastic nuclei
    assert (he.classes == 3).mean() > 0.1
    det = pred.detect(he.image, ["neoplastic cells"], modality="pathology")
    assert det.p_values[0] > 0.05
    blank = np.full((256, 256, 3), 235, np.uint8)
    assert pred.detect(blank, ["neoplastic cells"], modality="pathology").p_values[0] < 0.05
