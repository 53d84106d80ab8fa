"""Tiled inference for tile-trained models (``metadata["inference"]``), on real data.

The bundled default model (256 px tiles at ~0.5 um/px) on a 512 x 512 crop of the held-out
bottom-right quarter of ``hgsc_nest`` (rows/cols 750-1499, never used for training).
Measured (torch CPU, the weights of 2026-12-02): ``nuclei`` prompt Dice 0.825 tiled vs 0.788
with the whole-image path (crop resized to 256 px; the first weights, trained without zoom
augmentation, gave 0.800 vs 0.624 on the union of the class prompts); recognize: 201
instances (142 of the three classes, 59 unclassified nuclei) for 117 labelled nuclei (not
every nucleus is labelled); the same region at 1.0 um/px: rescaled with ``mpp=1.0`` to
0.5 um/px vs not (a sub-tile image is padded with its background, white for H&E,
``tiled.background_fill``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imread
from skimage.transform import rescale, resize

from napari_biomedparse.inference.predictor import Predictor
from napari_biomedparse.inference.recognition import UNCLASSIFIED
from napari_biomedparse.inference.tiled import (
    TileGrid,
    blend_weights,
    inference_spec,
    tile_origins,
)
from napari_biomedparse.training.metrics import dice

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"
MASK = ROOT / "tests" / "data" / "hgsc_nest_inst_mask.npz"
V1 = ROOT / "tests" / "data" / "v1_tiny"
PROMPTS = ["neoplastic cells", "inflammatory cells", "connective tissue cells"]
DEFAULT_INFERENCE = {"mode": "tiled", "tile_size": 256, "overlap": 32, "mpp": 0.5}

NUCLEI_DICE_FLOOR = 0.80  # measured 0.825 (the `nuclei` prompt)
#: the same field at 1.0 um/px, rescaled to the model's 0.5 um/px: measured 0.790 (union of the
#: three classes, shipped weights of 2026-12-07), 0.605 without the rescaling
RESCALED_DICE_FLOOR = 0.76


@pytest.fixture(scope="module")
def held_out():
    """512 x 512 crop inside the held-out quarter [750:, 750:], with its instance labels."""
    img = imread(IMAGE)
    inst = np.load(MASK)["nuc_raster"]
    assert img.shape == (1500, 1500, 3) and inst.shape == (1500, 1500)
    sl = (slice(800, 1312), slice(800, 1312))
    return img[sl], inst[sl]


@pytest.fixture(scope="module")
def predictor():
    from napari_biomedparse.hub import load_model

    torch.set_num_threads(2)
    return Predictor(load_model("default"), device="cpu")


@pytest.fixture(scope="module")
def tiled_probs(predictor, held_out):
    return predictor.segment(held_out[0], PROMPTS, modality="pathology")


def test_default_model_declares_tiled_inference(predictor):
    assert predictor.model.metadata["inference"] == DEFAULT_INFERENCE
    assert inference_spec(predictor.model) == DEFAULT_INFERENCE
    assert inference_spec({"inference": None}) is None
    assert inference_spec({"inference": {"mode": "whole"}}) is None
    assert inference_spec({"inference": {"mode": "tiled"}})["overlap"] == 32
    with pytest.raises(ValueError, match="unknown inference mode"):
        inference_spec({"inference": {"mode": "sideways"}})


def test_inference_metadata_round_trips_through_checkpoints(tmp_path):
    from napari_biomedparse.hub import load_model
    from napari_biomedparse.model import BiomedParseConfig, build_model
    from napari_biomedparse.model.checkpoint import read_checkpoint_metadata, save_checkpoint

    m = build_model(BiomedParseConfig.tiny(input_size=64))
    m.metadata["inference"] = {"mode": "tiled", "tile_size": 64, "overlap": 16, "mpp": 0.25}
    path = save_checkpoint(m, tmp_path / "t.safetensors")
    assert read_checkpoint_metadata(path)["inference"] == m.metadata["inference"]
    assert load_model(str(path)).metadata["inference"] == m.metadata["inference"]


def test_finetune_writes_tiled_inference_metadata(predictor):
    from napari_biomedparse.training.finetune import _base_mpp, tiled_inference

    assert tiled_inference(256, 0.5) == DEFAULT_INFERENCE
    assert tiled_inference(128) == {"mode": "tiled", "tile_size": 128, "overlap": 32}
    # fine-tuning the default model keeps its pixel size unless finetune(mpp=...) says otherwise
    assert _base_mpp(predictor.model.metadata) == 0.5
    assert _base_mpp({"inference": None}) is None


def test_tile_grid_and_weights_cover_the_image():
    origins = tile_origins((600, 300), 256, 32)
    cover = np.zeros((600, 300), int)
    for y, x in origins:
        cover[y : y + 256, x : x + 256] += 1
    assert cover.min() >= 1 and max(y for y, _ in origins) == 600 - 256
    # the prediction grid: tiles inside the image, 224 px apart, the last ending at its edge
    grid = TileGrid((600, 300), 1.0, 1.0, 256, 32)
    assert sorted({y for y, _ in origins}) == [0, 224, 600 - 256]
    assert sorted({x for _, x in origins}) == [0, 300 - 256]
    assert grid.tiles_in(0, 0, 600, 300) == list(range(grid.n_tiles))
    assert grid.tiles_in(590, 0, 600, 10) == [k for k in range(grid.n_tiles)
                                             if grid.extent(k)[2] > 590 and grid.extent(k)[1] < 10]  # fmt: skip
    w = blend_weights(256, 32)
    assert w.shape == (256, 256) and w.min() > 0 and w[128, 128] == 1.0
    assert w[0, 128] < w[16, 128] < w[31, 128] <= 1.0  # falls off towards the edges


def test_tiled_segment_beats_whole_image_on_held_out_nuclei(predictor, held_out, tiled_probs):
    crop, gt = held_out
    assert tiled_probs.shape == (3, 512, 512) and tiled_probs.dtype == np.float32
    tiled = predictor.segment(crop, ["nuclei"], modality="pathology")[0]
    nuclei = dice(tiled > 0.5, gt > 0)
    assert nuclei > NUCLEI_DICE_FLOOR, nuclei
    # the official whole-image path (crop resized to 256 px, i.e. nuclei at half their size)
    # on the same model: worse, though the zoom-augmented model is fairly robust to scale
    meta = predictor.model.metadata
    spec = meta.pop("inference")
    try:
        whole = predictor.segment(crop, ["nuclei"], modality="pathology")[0]
    finally:
        meta["inference"] = spec
    whole_dice = dice(whole > 0.5, gt > 0)
    assert nuclei > whole_dice + 0.02, (nuclei, whole_dice)


def test_training_predict_tiles_is_the_inference_tiling(predictor, held_out):
    from napari_biomedparse.training.finetune import predict_tiles

    crop = held_out[0][:256, :400]  # two overlapping tiles
    a = predict_tiles(predictor.model, crop, PROMPTS[:1])
    b = predictor.segment(crop, PROMPTS[:1], modality="pathology")  # RGB: no intensity change
    np.testing.assert_array_equal(a, b)


def test_tiled_recognize_counts_and_existence(predictor, held_out):
    crop, gt = held_out
    rec = predictor.recognize(crop, modality="pathology")
    n_true = len(np.unique(gt)) - 1
    n_pred = int(len(np.unique(rec.labels)) - 1)
    classed = int((rec.table["class"] != UNCLASSIFIED).sum())
    # not every nucleus is labelled: the classes find about as many, the unclassified class
    # the nuclei they leave (the baseline finds 1.7 x the labelled count on the quarter)
    assert 0.6 * n_true <= classed <= 1.6 * n_true, (classed, n_true)
    assert classed < n_pred <= 2.0 * n_true, (n_pred, classed, n_true)
    assert UNCLASSIFIED in rec.kept
    # existence test on the whole crop at native resolution: the nuclei classes are present
    assert set(rec.kept) >= {"neoplastic cells", "inflammatory cells"}
    assert np.all(np.isfinite(rec.p_values)) and rec.p_values.min() > 0.05, rec.p_values
    assert rec.probs.shape == (4, 512, 512) and rec.labels.shape == (512, 512)  # 3 classes, nuclei


def test_mpp_rescales_to_the_models_pixel_size(predictor):
    img = imread(IMAGE)[800:1184, 800:1184]
    gt = np.load(MASK)["nuc_raster"][800:1184, 800:1184] > 0
    # the same field at 1.0 um/px (half the model's resolution)
    small = rescale(img, 0.5, channel_axis=-1, preserve_range=True, anti_aliasing=True, order=1)
    small = np.rint(small).astype(np.uint8)
    gt_small = resize(gt, small.shape[:2], order=0) > 0
    plain = predictor.segment(small, PROMPTS, modality="pathology")
    scaled = predictor.segment(small, PROMPTS, modality="pathology", mpp=1.0)
    assert scaled.shape == plain.shape == (3, 192, 192)
    d_plain = dice((plain > 0.5).any(0), gt_small)
    d_scaled = dice((scaled > 0.5).any(0), gt_small)
    assert d_scaled > RESCALED_DICE_FLOOR and d_scaled > d_plain + 0.1, (d_scaled, d_plain)


def test_v1_style_model_keeps_the_whole_image_path(monkeypatch):
    """No inference metadata: the official path (pad to square, resize to the input size, one
    ``predict`` call); tests/test_tasks.py and tests/test_predictor.py check its numbers."""
    from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

    m = build_model(BiomedParseConfig.from_reference_json(V1 / "config.json"), device="meta")
    load_checkpoint(m, V1 / "state_dict.pt")
    assert inference_spec(m) is None
    pred = Predictor(m, device="cpu")
    seen = []
    real_predict = pred.predict

    def predict(rgb, prompts, joint=False):
        seen.append(rgb.shape)
        return real_predict(rgb, prompts, joint=joint)

    def no_tiles(*args, **kwargs):
        raise AssertionError("predict_batch (tiling) used for a whole-image model")

    monkeypatch.setattr(pred, "predict", predict)
    monkeypatch.setattr(pred, "predict_batch", no_tiles)
    img = imread(IMAGE)[:300, :200]
    got = pred.segment(img, ["neoplastic cells"], modality="pathology")
    assert seen == [(pred.input_size, pred.input_size, 3)]
    assert got.shape == (1, 300, 200) and got.dtype == np.float32
