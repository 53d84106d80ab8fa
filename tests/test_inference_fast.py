"""The fast tile path (inference/fast.py) and model loading (inference/loading.py) on the CPU.

A real (small) BiomedParse model with seeded random weights at a 64 px input.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_biomedparse.inference.fast import (
    FastPredictor,
    auto_batch_size,
    compile_predictor,
    configure_predictor,
)
from napari_biomedparse.inference.loading import (
    ModelSpec,
    load_predictor,
    model_fingerprint,
    model_spec,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/data/v1_tiny"
PROMPTS = ["neoplastic cells", "inflammatory cells"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from napari_biomedparse.model import BiomedParseConfig, build_model, save_checkpoint

    cfg = BiomedParseConfig.from_reference_json(TINY / "config.json")
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, input_size=64))
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny64.safetensors")


@pytest.fixture(scope="module")
def pred(model_path):
    return load_predictor(str(model_path), "cpu")


def tiles(seed, n, size):
    """Pink tissue with purple discs (nucleus-like), uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    img = np.full((n, size, size, 3), (230, 160, 200), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for b in range(n):
        for _ in range(6):
            cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 8)
            img[b][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 140)
    return img


def test_fast_predictor_matches_the_predictor(pred):
    """At the model input size the device path equals predict_batch; resizing on the device
    stays close to PIL on the CPU + probabilities resized back."""
    from PIL import Image

    from napari_biomedparse.inference.tiled import resize_probs

    same = tiles(1, 2, 64)
    ref = pred.predict_batch(same, PROMPTS)
    got = FastPredictor(pred, 64, output="float32").predict_batch(same, PROMPTS)
    assert got.shape == ref.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    q = FastPredictor(pred, 64).predict_batch(same, PROMPTS)  # round(255 p) on the device
    assert q.dtype == np.uint8 and q.shape == ref.shape
    d = np.abs(q.astype(int) - np.rint(ref * 255).astype(int))
    assert d.max() <= 1 and (d == 0).mean() > 0.99
    big = tiles(2, 1, 128)
    small = np.asarray(Image.fromarray(big[0]).resize((64, 64), Image.Resampling.BILINEAR))
    ref128 = resize_probs(pred.predict_batch(small[None], PROMPTS), (128, 128))
    got128 = FastPredictor(pred, 128, output="float32").predict_batch(big, PROMPTS)
    assert got128.shape == (1, 2, 128, 128)
    assert np.abs(got128 - ref128).mean() < 0.02
    with pytest.raises(ValueError, match="uint8"):
        FastPredictor(pred, 128).predict_batch(big[:, :64, :64], PROMPTS)
    with pytest.raises(ValueError, match="output"):
        FastPredictor(pred, 64, output="float16")
    assert auto_batch_size(pred, PROMPTS, default=3) == 3  # no free-memory query: the default


def test_bf16_autocast_on_the_cpu(pred):
    """bf16 autocast runs on the CPU through the same code; maps stay close to fp32 and the
    fingerprint names the precision (a bf16 run never resumes an fp32 one)."""
    x = tiles(3, 2, 64)
    ref = FastPredictor(pred, 64, output="float32").predict_batch(x, PROMPTS)
    bf = configure_predictor(pred, dtype="bf16", fast=True, tile_size=64)
    assert isinstance(bf, FastPredictor) and bf.dtype == torch.bfloat16
    assert bf.model is pred.model  # the weights are shared, not copied
    got = bf.predict_batch(x, PROMPTS)
    assert got.dtype == np.uint8 and got.shape == (2, 2, 64, 64)
    diff = np.abs(got.astype(np.float32) / 255.0 - ref)
    assert diff.mean() < 0.05 and diff.max() < 0.5
    assert "fast64" in bf.fingerprint() and "bfloat16" in bf.fingerprint()
    assert bf.fingerprint() != FastPredictor(pred, 64).fingerprint()


def test_compile_on_the_cpu(model_path):
    """torch.compile of the image encoder, where it works here quickly (else skipped)."""
    p = load_predictor(str(model_path), "cpu")
    x = tiles(4, 2, 64)
    ref = p.predict_batch(x, PROMPTS)
    fp = model_fingerprint(p)
    try:
        t0 = time.perf_counter()
        compile_predictor(p)
        got = FastPredictor(p, 64, output="float32").predict_batch(x, PROMPTS)
    except Exception as exc:  # noqa: BLE001 - no compiler toolchain here
        pytest.skip(f"torch.compile does not work on this CPU: {type(exc).__name__}: {exc}")
    if time.perf_counter() - t0 > 240:
        pytest.skip("torch.compile works but is too slow here to test routinely")
    assert p.compiled and model_fingerprint(p) == fp  # state-dict keys unchanged
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_load_predictor_and_the_fingerprint(model_path, pred):
    from napari_biomedparse.slide._testing import StainPredictor

    assert load_predictor(pred) is pred
    assert load_predictor(pred, dtype="bf16").dtype == torch.bfloat16
    stain = StainPredictor(64)
    assert load_predictor(stain) is stain
    with pytest.raises(ValueError, match="needs a BiomedParse model"):
        load_predictor(stain, dtype="bf16")
    with pytest.raises(ValueError, match="need a BiomedParse model"):
        configure_predictor(stain, dtype="bf16")
    with pytest.raises(TypeError, match="model must be"):
        load_predictor(3.5)
    # the fingerprint: the same weights loaded twice agree; an edited tensor is noticed
    again = load_predictor(str(model_path), "cpu")
    assert model_fingerprint(again) == model_fingerprint(pred)
    t0 = time.perf_counter()
    model_fingerprint(pred)
    assert time.perf_counter() - t0 < 1.0  # reads samples, not every weight
    with torch.no_grad():
        next(again.model.parameters()).add_(0.5)
    assert model_fingerprint(again) != model_fingerprint(pred)


def test_model_spec_rebuilds_the_same_predictor(model_path, pred):
    spec = model_spec(pred, device="cpu")
    assert spec.kind == "path" and spec.source == str(Path(model_path).resolve())
    assert model_fingerprint(spec.build()) == model_fingerprint(pred) == spec.fingerprint
    shipped = model_spec(pred, device="cpu", by_path=False)
    assert shipped.kind == "weights" and shipped.payload and shipped.light().payload is None
    assert model_fingerprint(shipped.build()) == model_fingerprint(pred)
    fast = model_spec(configure_predictor(pred, dtype="bf16", fast=True, tile_size=128))
    assert (fast.fast, fast.tile_size, fast.dtype) == (True, 128, "bf16")
    built = fast.build("cpu")
    assert isinstance(built, FastPredictor) and built.input_size == 128
    assert built.dtype == torch.bfloat16
    assert isinstance(spec, ModelSpec) and spec.key != fast.key
