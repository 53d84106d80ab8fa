"""Where the time goes per tile: read, preprocess, H2D copy, encode, decode, D2H, write.

Runs batches of tiles of a slide (or a synthetic in-memory slide) through the two paths of
the slide engine and times each phase (with a device synchronisation around each phase on
CUDA, so that every phase is charged for its own kernels):

- ``reference``: tiles read and resized to the model input on the CPU (PIL, what
  ``process_slide`` does with a ``Predictor``), ``Predictor.predict_batch`` (H2D copy, encode,
  decode and the upsampling to the model input inside it, measured as one phase), resize of
  the probabilities to the tile on the CPU, quantisation and the zarr write of each tile.
- ``fast``: :class:`napari_biomedparse.inference.fast.FastPredictor`: tiles read at the
  tile size, uint8 H2D copy from pinned memory, resize + normalisation on the device, encode,
  one decoder pass for all prompts, logits resized to the tile on the device, D2H, write.

Examples::

    python benchmarks/profile_tile.py --device cpu --config tiny --input-size 256
    python benchmarks/profile_tile.py --device cuda --config v1 --dtype bf16 --batch-size 16

``--json PATH`` writes the figures; ``bench_distributed.py --profile`` puts them in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/data/v1_tiny/config.json"
PROMPTS = [
    "neoplastic cells", "inflammatory cells", "connective tissue cells", "epithelial cells",
    "dead cells", "glandular structure", "tumor", "lesion",
]  # fmt: skip
PHASES = ["read", "h2d", "preprocess", "predict", "encode", "decode", "postprocess", "d2h",
          "resize_cpu", "write"]  # fmt: skip


class PhaseTimer:
    """``with timer("name"):`` adds the wall time of the block (device synchronised)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t0


def build(config: str, input_size: int | None, seed: int = 0):
    from napari_biomedparse.model import BiomedParseConfig, build_model

    if config == "v1":
        cfg = BiomedParseConfig.biomedparse_v1()
    elif config == "tiny":
        cfg = BiomedParseConfig.from_reference_json(TINY)
    else:
        cfg = BiomedParseConfig.from_reference_json(config)
    if input_size:
        cfg = dataclasses.replace(cfg, input_size=int(input_size))
    torch.manual_seed(seed)
    return build_model(cfg)


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """H&E-like RGB: pink tissue with purple nuclei on glass (fast to make at any size)."""
    rng = np.random.default_rng(seed)
    small = max(8, size // 16)
    base = np.empty((small, small, 3), np.uint8)
    base[...] = (230, 160, 200)
    n = rng.random((small, small)) < 0.15
    base[n] = (90, 40, 140)
    yy, xx = np.mgrid[:small, :small]
    r = ((yy - small / 2) / (0.45 * small)) ** 2 + ((xx - small / 2) / (0.45 * small)) ** 2
    base[r > 1] = (243, 243, 243)  # glass around an elliptic section (~64 % of the area)
    img = np.repeat(np.repeat(base, 16, 0), 16, 1)[:size, :size]
    noise = rng.integers(-10, 11, (size, size, 1), dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def profile(
    *,
    device: str = "cpu",
    config: str = "tiny",
    input_size: int | None = None,
    tile_size: int = 256,
    batch_size: int = 4,
    n_prompts: int = 5,
    n_batches: int = 3,
    dtype: str = "fp32",
    compile_: bool = False,
    slide: str | None = None,
    slide_mpp: float = 0.5,
    mpp: float = 0.5,
    paths=("reference", "fast"),
) -> dict:
    """Per-phase seconds per tile for each path; returns a JSON-able dict."""
    from napari_biomedparse.inference.fast import FastPredictor
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.inference.tiled import resize_probs
    from napari_biomedparse.slide.readers import open_image
    from napari_biomedparse.slide.store import open_group
    from napari_biomedparse.slide.tiling import TileGrid, read_tile

    dev = torch.device(device)
    model = build(config, input_size)
    pred = Predictor(model, device=dev, dtype=None if dtype == "fp32" else dtype)
    S = pred.input_size
    prompts = PROMPTS[:n_prompts]
    if slide:
        image = open_image(slide, mpp=slide_mpp)
    else:
        edge = int(np.ceil(np.sqrt(batch_size * (n_batches + 1))) + 1) * tile_size
        image = open_image(synthetic_image(int(edge * mpp / slide_mpp)), mpp=slide_mpp)
    grid = TileGrid(image.shape, float(image.mpp), mpp, tile_size, tile_size // 8)
    need = batch_size * (n_batches + 1)
    if grid.n_tiles < need:
        raise SystemExit(f"the slide has {grid.n_tiles} tiles, {need} needed")
    ks = list(range(need))
    batches = [ks[i : i + batch_size] for i in range(0, need, batch_size)]
    tmp = tempfile.TemporaryDirectory()
    g = open_group(Path(tmp.name) / "p.zarr", "w")
    ny, nx = grid.grid_shape
    P, T = len(prompts), tile_size
    arr = g.create_array("probs", shape=(ny, nx, P, T, T), chunks=(1, 1, P, T, T), dtype="uint8")
    results = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": config,
        "input_size": S,
        "tile_size": T,
        "batch_size": batch_size,
        "prompts": P,
        "dtype": dtype,
        "compile": compile_,
        "paths": {},
    }
    for path in paths:
        timer = PhaseTimer(dev)
        if path == "fast":
            runner = FastPredictor(pred, T, compile=compile_, timer=timer)
            size = T
        else:
            runner = pred
            size = S
            if compile_:
                from napari_biomedparse.inference.fast import compile_predictor

                compile_predictor(pred)
        for n, batch in enumerate(batches):
            if n == 1:  # batch 0 is the warm-up (and the compilation)
                timer.seconds.clear()
                t_start = time.perf_counter()
            with timer("read"):
                rgb = np.stack([read_tile(image, grid, k, size) for k in batch])
            if path == "fast":
                out = runner.predict_batch(rgb, prompts)
            else:
                with timer("predict"):
                    out = runner.predict_batch(rgb, prompts)
                with timer("resize_cpu"):
                    out = resize_probs(out, (T, T))
            with timer("write"):
                if out.dtype == np.uint8:  # quantised on the device (FastPredictor)
                    q = out
                else:
                    q = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
                for b, k in enumerate(batch):
                    i, j = grid.index(k)
                    arr[i, j] = q[b]
        wall = time.perf_counter() - t_start
        n_tiles = batch_size * n_batches
        per_tile = {k: v / n_tiles for k, v in timer.seconds.items()}
        results["paths"][path] = {
            "ms_per_tile": {k: round(1000 * v, 3) for k, v in per_tile.items()},
            "tiles_per_s": round(n_tiles / wall, 3),
            "wall_s": round(wall, 3),
            "tiles": n_tiles,
        }
    tmp.cleanup()
    return results


def format_table(res: dict) -> str:
    lines = [
        f"Per-tile time ({res['device']}; config {res['config']}, input {res['input_size']} px, "
        f"tiles {res['tile_size']} px, batch {res['batch_size']}, {res['prompts']} prompts, "
        f"{res['dtype']}{', compiled' if res['compile'] else ''}; phases synchronised):",
        "",
        "| phase | " + " | ".join(f"{p} (ms/tile)" for p in res["paths"]) + " |",
        "|---|" + "---|" * len(res["paths"]),
    ]
    for ph in PHASES:
        vals = [res["paths"][p]["ms_per_tile"].get(ph) for p in res["paths"]]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {ph} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals)
                     + " |")  # fmt: skip
    tot = [sum(res["paths"][p]["ms_per_tile"].values()) for p in res["paths"]]
    lines.append("| **total** | " + " | ".join(f"**{t:.2f}**" for t in tot) + " |")
    tps = [res["paths"][p]["tiles_per_s"] for p in res["paths"]]
    lines.append("| tiles/s | " + " | ".join(f"{t:.2f}" for t in tps) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="tiny", help="tiny, v1 or a reference config.json")
    ap.add_argument("--input-size", type=int, default=None, help="override the model input")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--batches", type=int, default=3, help="timed batches (after 1 warm-up)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--slide", default=None, help="a slide file (default: synthetic)")
    ap.add_argument("--slide-mpp", type=float, default=0.5)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = profile(
        device=a.device, config=a.config, input_size=a.input_size, tile_size=a.tile_size,
        batch_size=a.batch_size, n_prompts=a.prompts, n_batches=a.batches, dtype=a.dtype,
        compile_=a.compile, slide=a.slide, slide_mpp=a.slide_mpp, mpp=a.mpp,
    )  # fmt: skip
    print(format_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
