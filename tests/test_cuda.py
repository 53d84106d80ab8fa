"""The GPU path on a CUDA device (marker ``cuda``; skipped where torch sees no CUDA device).

Each test compares the CUDA result with the same computation on the CPU (fp32, TF32 off):
the reference predictor, the fast tile path (uint8 upload, resize and quantisation on the
device, pinned copies), bf16 autocast, ``torch.compile``, the free-memory batch size, and a
slide run through the engine. The tiny v1 fixture (tests/data/v1_tiny, official format,
input 1024) is the model. ``python tests/test_cuda.py`` runs them without pytest (the device
check uses that where pytest is not installed).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import pytest
except ImportError:  # run as a script on a machine without pytest
    pytest = None

import torch

V1 = Path(__file__).parent / "data" / "v1_tiny"
PROMPTS = ["neoplastic cells", "inflammatory cells"]
HAS_CUDA = torch.cuda.is_available()

if pytest is not None:
    pytestmark = [
        pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
    ]


def _model(device):
    from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

    m = build_model(BiomedParseConfig.from_reference_json(V1 / "config.json"), device="meta")
    load_checkpoint(m, V1 / "state_dict.pt")
    return m.to(device).eval()


def _predictors(dtype=None):
    from napari_biomedparse.inference.predictor import Predictor

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return Predictor(_model("cpu"), device="cpu"), Predictor(
        _model("cuda"), device="cuda", dtype=dtype
    )


def _tiles(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_reference_predictor_matches_cpu():
    cpu, gpu = _predictors()
    img = np.load(V1 / "image_a.npy")
    a = cpu.predict(img, PROMPTS)
    b = gpu.predict(img, PROMPTS)
    assert a.shape == b.shape == (2, *img.shape[:2])
    assert np.abs(a - b).max() < 2e-3
    batch = _tiles(3, gpu.input_size)
    np.testing.assert_allclose(
        gpu.predict_batch(batch, PROMPTS), cpu.predict_batch(batch, PROMPTS), atol=2e-3
    )


def test_fast_path_uint8_and_float_match_cpu():
    from napari_biomedparse.inference.fast import FastPredictor

    cpu, gpu = _predictors()
    tiles = _tiles(4, 256, seed=1)
    fc, fg = FastPredictor(cpu, 256), FastPredictor(gpu, 256)
    qc, qg = fc.predict_batch(tiles, PROMPTS), fg.predict_batch(tiles, PROMPTS)
    assert qg.dtype == np.uint8 and qg.shape == (4, 2, 256, 256)
    diff = np.abs(qc.astype(int) - qg.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01
    fgf = FastPredictor(gpu, 256, output="float32")
    pf = fgf.predict_batch(tiles, PROMPTS)
    assert pf.dtype == np.float32 and np.abs(pf * 255 - qg).max() <= 0.5 + 1e-3
    dev = fg.predict_batch(tiles, PROMPTS, as_numpy=False)
    assert dev.is_cuda and torch.equal(dev.cpu(), torch.from_numpy(qg))


def test_bf16_close_to_fp32():
    from napari_biomedparse.inference.fast import FastPredictor

    _, g32 = _predictors()
    _, g16 = _predictors(dtype="bf16")
    tiles = _tiles(2, 256, seed=2)
    a = FastPredictor(g32, 256, output="float32").predict_batch(tiles, PROMPTS)
    b = FastPredictor(g16, 256, output="float32").predict_batch(tiles, PROMPTS)
    assert np.isfinite(b).all()
    assert np.abs(a - b).mean() < 0.02 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_compiled_fast_path_matches_eager():
    from napari_biomedparse.inference.fast import FastPredictor

    _, g = _predictors()
    tiles = _tiles(2, 256, seed=3)
    eager = FastPredictor(g, 256, output="float32").predict_batch(tiles, PROMPTS)
    _, g2 = _predictors()
    comp = FastPredictor(g2, 256, compile=True, output="float32")
    out = comp.predict_batch(tiles, PROMPTS)
    assert comp.compiled and np.abs(out - eager).max() < 5e-3
    short = comp.predict_batch(tiles[:1], PROMPTS)  # smaller last batch: padded, no recompile
    assert short.shape == (1, 2, 256, 256)


def test_auto_batch_size_fits_free_memory():
    from napari_biomedparse.inference.fast import FastPredictor, auto_batch_size

    _, g = _predictors()
    fast = FastPredictor(g, 256)
    b = auto_batch_size(fast, PROMPTS, max_batch=64)
    assert 1 <= b <= 64
    free, _ = torch.cuda.mem_get_info()
    out = fast.predict_batch(_tiles(min(b, 8), 256), PROMPTS)
    assert out.shape[0] == min(b, 8) and free > 0


def test_slide_run_on_cuda_matches_cpu():
    from napari_biomedparse.inference.fast import FastPredictor
    from napari_biomedparse.slide.engine import process_slide

    cpu, gpu = _predictors()
    rng = np.random.default_rng(4)
    slide = rng.integers(80, 220, (200, 200, 3), dtype=np.uint8)
    kw = dict(prompts=PROMPTS, slide_mpp=0.5, mpp=0.25, tile_size=256, overlap=32,
              tissue_mask=False, recognize=False, batch_size=4)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        a = process_slide(slide, Path(d) / "cpu.zarr", model=FastPredictor(cpu, 256), **kw)
        b = process_slide(slide, Path(d) / "gpu.zarr", model=FastPredictor(gpu, 256), **kw)
        pa, pb = np.asarray(a.probs), np.asarray(b.probs)
    assert pa.shape == pb.shape == (2, 400, 400)
    assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 2


if __name__ == "__main__":
    if not HAS_CUDA:
        print("SKIPPED: torch sees no CUDA device")
        raise SystemExit(0)
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"PASSED {name}")
            except Exception as exc:  # noqa: BLE001 - report every test
                failed += 1
                print(f"FAILED {name}: {type(exc).__name__}: {exc}")
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)
