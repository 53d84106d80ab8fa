"""Predictor: official interactive_infer_image semantics on the tiny fixture (final.pt)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_biomedparse.inference.predictor import (
    DecodeResult,
    ImageEncoding,
    Predictor,
    resize_rgb,
    resolve_device,
)
from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

DATA = Path(__file__).parent / "data" / "v1_tiny"
FINAL = torch.load(DATA / "final.pt", weights_only=True)


def max_err(x, ref) -> float:
    x = torch.as_tensor(x).float()
    if torch.is_tensor(ref):
        assert tuple(x.shape) == tuple(ref.shape)
        return (x - ref).abs().max().item()
    assert list(x.shape) == list(ref["full_shape"])
    c = ref["crop"]
    grid = x.index_select(-2, ref["rows"]).index_select(-1, ref["cols"])
    return max(
        (grid - ref["grid"]).abs().max().item(),
        (x[..., :c, :c] - ref["crop_tl"]).abs().max().item(),
        (x[..., -c:, -c:] - ref["crop_br"]).abs().max().item(),
    )


@pytest.fixture(scope="module")
def predictor():
    m = build_model(BiomedParseConfig.from_reference_json(DATA / "config.json"), device="meta")
    load_checkpoint(m, DATA / "state_dict.pt")
    m.compute_default_text_embeddings()
    return Predictor(m, device="cpu")


@pytest.fixture(scope="module")
def small(predictor):
    """The same weights run at 256 x 256 input (cheap checks of the API)."""
    cfg = dataclasses.replace(predictor.model.config, input_size=256)
    m = build_model(cfg)
    m.load_state_dict(predictor.model.state_dict())
    return Predictor(m, device="cpu")


@pytest.fixture(scope="module")
def images():
    return {name: np.load(DATA / f"{name}.npy") for name in ("image_a", "image_b")}


@pytest.fixture(scope="module")
def encodings(predictor, images):
    return {name: predictor.encode(img) for name, img in images.items()}


def test_official_resize():
    a, b = np.load(DATA / "image_a.npy"), np.load(DATA / "image_b.npy")
    assert resize_rgb(a, 1024) is a and FINAL["image_a_resized_equals_input"]
    rb = resize_rgb(b, 1024)
    assert rb.shape == (1024, 1024, 3) and rb.dtype == np.uint8
    assert hashlib.sha256(rb.tobytes()).hexdigest() == FINAL["image_b_resized_sha256"]
    assert max_err(torch.from_numpy(rb).permute(2, 0, 1), FINAL["image_b_resized_subset"]) == 0


@pytest.mark.parametrize("name", ["image_a", "image_b"])
@pytest.mark.parametrize("k", range(5))
def test_predict_matches_official_final(predictor, images, encodings, name, k):
    ref = FINAL[name][k]
    prompts = ref["prompts"]
    if k in (0, 4):  # the full predict() path (official call semantics: joint for several)
        probs = predictor.predict(images[name], prompts, joint=True)
    else:  # predict() == decode(encode(image)).probabilities(H, W): reuse the encoding
        probs = predictor.decode(encodings[name], prompts).probabilities(*images[name].shape[:2])
    assert probs.dtype == np.float32
    assert probs.shape == (len(prompts), ref["height"], ref["width"])
    assert max_err(probs, ref["prob"]) < 2e-4
    stats = ref["prob_stats"]
    assert abs(float(probs.min()) - stats["min"]) < 2e-4
    assert abs(float(probs.max()) - stats["max"]) < 2e-4
    assert abs(float(probs.mean()) - stats["mean"]) < 2e-5
    assert abs(float((probs > 0.5).mean()) - stats["frac_gt_0.5"]) < 1e-3


@pytest.mark.parametrize("name", ["image_a", "image_b"])
@pytest.mark.parametrize("k", range(5))
def test_decode_selected_queries_and_logits(predictor, encodings, name, k):
    ref = FINAL[name][k]
    res = predictor.decode(encodings[name], ref["prompts"], joint=True)
    assert isinstance(res, DecodeResult)
    assert torch.equal(res.matched.cpu(), ref["matched_id"])
    assert max_err(res.similarity.T, ref["out_prob"]) < 2e-3
    assert max_err(res.mask_logits, ref["selected_mask_logits"]) < 2e-3
    assert torch.allclose(res.scores, ref["out_prob"].max(0).values, atol=2e-3)
    assert res.mask_logits.shape[-2:] == (256, 256)


def test_independent_prompts_equal_single_calls(predictor, images, encodings):
    """One batched decoder pass with joint=False equals separate single-prompt calls (and
    therefore the official single-prompt outputs)."""
    multi = FINAL["image_a"][4]["prompts"]
    together = predictor.predict(images["image_a"], multi)
    enc = encodings["image_a"]
    singles = np.concatenate([predictor.decode(enc, [p]).probabilities(1024, 1024) for p in multi])
    assert np.abs(together - singles).max() < 1e-5
    # 'neoplastic cells' alone is official call 0
    assert max_err(together[:1], FINAL["image_a"][0]["prob"]) < 2e-4
    # the official coupled call differs (prompts interact through the self-attention)
    joint = predictor.decode(enc, multi, joint=True).probabilities(1024, 1024)
    assert np.abs(joint - together).max() > 0.05
    res = predictor.decode(encodings["image_a"], multi)
    assert res.matched.shape == (3,) and res.mask_logits.shape == (3, 256, 256)
    assert res.matched[0].item() == FINAL["image_a"][0]["matched_id"].item()


def test_encode_once_decode_many(predictor, images, encodings):
    enc = encodings["image_b"]
    assert isinstance(enc, ImageEncoding)
    assert enc.original_size == (300, 517) and enc.input_size == 1024
    assert enc.features["mask_features"].shape == (1, 32, 256, 256)
    a = predictor.decode(enc, ["liver"]).probabilities(300, 517)
    b = predictor.decode(enc, ["liver"]).probabilities(300, 517)
    np.testing.assert_array_equal(a, b)
    assert max_err(a, FINAL["image_b"][2]["prob"]) < 2e-4


def test_predict_batch_matches_predict(predictor, images, encodings):
    tiles = np.stack([images["image_a"], resize_rgb(images["image_b"], 1024)])
    prompts = ["neoplastic cells", "liver"]
    out = predictor.predict_batch(tiles, prompts)
    assert out.shape == (2, 2, 1024, 1024) and out.dtype == np.float32
    for i, name in enumerate(["image_a", "image_b"]):
        # the encoding of image_b is that of its 1024 x 1024 resize, i.e. tile 1
        single = predictor.decode(encodings[name], prompts).probabilities(1024, 1024)
        assert np.abs(out[i] - single).max() < 1e-5
    assert max_err(out[0, :1], FINAL["image_a"][0]["prob"]) < 2e-4


def test_predict_batch_torch_input(small, images):
    tiles = np.stack([resize_rgb(images[n], 256) for n in ("image_a", "image_b")])
    prompts = ["neoplastic cells", "liver", "tumor"]
    out = small.predict_batch(tiles, prompts)
    assert out.shape == (2, 3, 256, 256)
    t = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()  # channels first, float
    out_t = small.predict_batch(t, prompts, as_numpy=False)
    assert torch.is_tensor(out_t)
    assert (out_t.cpu() - torch.from_numpy(out)).abs().max() < 1e-5
    out_j = small.predict_batch(torch.from_numpy(tiles), prompts, joint=True)
    assert out_j.shape == (2, 3, 256, 256)
    for i in range(2):
        assert np.abs(out_j[i] - small.predict(tiles[i], prompts, joint=True)).max() < 1e-5


def test_bad_inputs(small, images):
    predictor = small
    img = images["image_b"]
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(img.astype(np.float32), ["liver"])
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(img[..., :2], ["liver"])
    with pytest.raises(ValueError, match="at least one"):
        predictor.predict(img, [])
    with pytest.raises(ValueError, match="non-empty strings"):
        predictor.predict(img, ["liver", ""])
    with pytest.raises(ValueError, match="input size"):
        predictor.predict_batch(np.zeros((1, 512, 512, 3), np.uint8), ["liver"])
    with pytest.raises(ValueError, match="input size"):
        predictor.predict_batch(torch.zeros((1, 3, 128, 128)), ["liver"])
    with pytest.raises(ValueError, match="dtype"):
        Predictor(predictor.model, device="cpu", dtype="int8")
    meta = build_model(BiomedParseConfig.tiny(), device="meta")
    with pytest.raises(ValueError, match="load a checkpoint"):
        Predictor(meta, device="cpu")


def test_grey_image_is_stacked(small, images):
    predictor = small
    grey = images["image_b"][..., 1]
    a = predictor.predict(grey, ["liver"])
    b = predictor.predict(np.stack([grey] * 3, -1), ["liver"])
    np.testing.assert_array_equal(a, b)


def test_device_resolution(predictor):
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None:
        mps = getattr(torch.backends, "mps", None)
        expected = "mps" if mps is not None and mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert predictor.device.type == "cpu" and predictor.input_size == 1024


def test_bfloat16_autocast_runs_close(small, images):
    """Reduced precision is an option (autocast); results stay close to float32."""
    predictor = small
    bf = Predictor(predictor.model, device="cpu", dtype=torch.bfloat16)
    img = images["image_b"]
    p16 = bf.predict(img, ["inflammatory cells"])
    p32 = predictor.predict(img, ["inflammatory cells"])
    assert p16.dtype == np.float32 and np.isfinite(p16).all()
    assert np.abs(p16 - p32).mean() < 0.05
    assert ((p16 > 0.5) == (p32 > 0.5)).mean() > 0.9
