"""Slide run on one accelerator: GPU busy fraction, tissue megapixels per second, time split.

    python benchmarks/bench_device_slide.py --device cuda --json OUT/slide.json
    python benchmarks/bench_device_slide.py --device cpu --dry-run --json OUT/slide.json

A synthetic pyramidal TIFF, zlib-compressed (decodable without imagecodecs), tissue texture
over the whole slide except a white margin, at 0.25 um/px, is processed at the official v1
pathology geometry (:data:`~napari_biomedparse.inference.application.V1_INFERENCE`: 256 px
tiles at 0.25 um/px, resized on the device to the 1024 px input) with the full-size v1
architecture (random weights: timings do not depend on the values) through
:class:`~napari_biomedparse.inference.fast.FastPredictor` (bf16 by default). Measured:

- wall time of ``process_slide`` and its tile stage (``summary["seconds_tiles"]``);
- GPU busy fraction of the tile stage: ``nvidia-smi`` utilisation sampled every 100 ms
  (percentage of time a kernel was running), and the sum of CUDA-event spans of the model
  calls over the tile-stage wall time;
- where the rest goes: the same tiles read alone with the engine's reader threads, the model
  alone on the same batches, blending and the other stages (total minus tile stage);
- tissue megapixels (level-0 px inside the tissue mask) per second of the whole run.

``--dry-run``: the same steps on the CPU with the tiny architecture and a small slide (a
rehearsal, seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_slide import _texture  # noqa: E402


def make_slide(path: Path, size: int, mpp: float = 0.25, tile: int = 256) -> None:
    """Pyramidal zlib TIFF ``size`` x ``size`` px: texture everywhere but a 1/16 white margin."""
    import tifffile

    tex = _texture()
    margin = size // 16

    def level(k):
        f = 2**k
        h = -(-size // f)
        for ty in range(0, h, tile):
            for tx in range(0, h, tile):
                yy = (np.arange(tile)[:, None] + ty) * f
                xx = (np.arange(tile)[None, :] + tx) * f
                inside = (
                    (yy >= margin) & (yy < size - margin) & (xx >= margin) & (xx < size - margin)
                )
                out = np.full((tile, tile, 3), 242, np.uint8)
                if inside.any():
                    patch = np.roll(tex, (-(ty % 1024), -(tx % 1024)), axis=(0, 1))[:tile, :tile]
                    out[inside] = patch[inside]
                yield out

    n_sub = 0
    while size / 2 ** (n_sub + 1) >= 1024:
        n_sub += 1
    res = (1e4 / mpp, 1e4 / mpp)

    def write(extra):
        kw = dict(tile=(tile, tile), photometric="rgb", compression="zlib", dtype=np.uint8)
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            tw.write(
                level(0), shape=(size, size, 3), resolution=res, resolutionunit="CENTIMETER",
                **kw, **extra,
            )  # fmt: skip
            for k in range(1, n_sub + 1):
                h = -(-size // 2**k)
                tw.write(
                    level(k), shape=(h, h, 3), subfiletype=1,
                    resolution=(res[0] / 2**k, res[1] / 2**k), resolutionunit="CENTIMETER",
                    **kw, **extra,
                )  # fmt: skip

    try:  # zlib level 1 (fast) where tifffile takes compressionargs
        write({"compressionargs": {"level": 1}})
    except TypeError:  # pragma: no cover - older tifffile
        write({})


class SmiSampler:
    """``nvidia-smi`` GPU utilisation every ``interval_ms`` in a background process."""

    def __init__(self, interval_ms: int = 100):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        cmd = [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        self.proc = subprocess.Popen(
            [*cmd, f"-lms={interval_ms}"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.split(",")[0])))
            except ValueError:
                pass

    def mean(self, t0: float, t1: float) -> float | None:
        v = [u for t, u in self.samples if t0 <= t <= t1]
        return float(np.mean(v)) / 100.0 if v else None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


class EventTimer:
    """Wraps ``predict_batch``: CUDA-event span (GPU side) and host wall time of each call."""

    def __init__(self, predictor, cuda: bool):
        import torch

        self.p, self.cuda, self.torch = predictor, cuda, torch
        self.events: list = []
        self.host = 0.0
        self.calls = 0
        self.first = self.last = None  # host time of the first call's start, last call's end

    def __getattr__(self, name):
        return getattr(self.p, name)

    def predict_batch(self, tiles, prompts, *args, **kwargs):
        t0 = time.perf_counter()
        if self.cuda:
            a = self.torch.cuda.Event(enable_timing=True)
            b = self.torch.cuda.Event(enable_timing=True)
            a.record()
        out = self.p.predict_batch(tiles, prompts, *args, **kwargs)
        if self.cuda:
            b.record()
            self.events.append((a, b))
        t1 = time.perf_counter()
        self.host += t1 - t0
        self.first = t0 if self.first is None else self.first
        self.last = t1
        self.calls += 1
        return out

    def gpu_seconds(self) -> float | None:
        if not self.cuda:
            return None
        self.torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.events) / 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, small slide (CPU)")
    ap.add_argument("--size", type=int, default=None, help="slide edge in px (level 0)")
    ap.add_argument("--dtype", default="bf16", help="fp32, bf16 or fp16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    ap.add_argument("--prompts", type=int, default=4, help="number of pathology prompts")
    ap.add_argument("--batch", type=int, default=0, help="tiles per call (0: from free memory)")
    ap.add_argument("--readers", type=int, default=8, help="tile reader threads")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from napari_biomedparse.inference.application import V1_INFERENCE, application_defaults
    from napari_biomedparse.inference.fast import FastPredictor, auto_batch_size
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.model import BiomedParseConfig, build_model
    from napari_biomedparse.slide.engine import process_slide
    from napari_biomedparse.slide.readers import open_image

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    cuda = args.device == "cuda"
    if args.dry_run:
        cfg = BiomedParseConfig.tiny()  # input 256: a tile of 128 px is resized 2x
        size = args.size or 1024
        tile, mpp, overlap = 128, 0.25, 16
    else:
        cfg = BiomedParseConfig.biomedparse_v1()
        size = args.size or 12288  # tissue 10752 px square: (10752 / 224)^2 = 2304 tiles
        spec = application_defaults({"inference": V1_INFERENCE, "input_size": 1024}, "pathology")
        tile, mpp, overlap = spec.tile_size, spec.mpp, spec.overlap
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nbp-devslide-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"synthetic_{size}.tif"
    t0 = time.perf_counter()
    if not slide.exists():
        make_slide(slide, size, mpp=0.25)
    t_make = time.perf_counter() - t0
    print(f"slide {size} px written in {t_make:.1f} s ({slide.stat().st_size / 2**20:.0f} MiB)")

    torch.manual_seed(0)
    model = build_model(cfg).to(args.device).eval()
    dtype = None if args.dtype == "fp32" else args.dtype
    base = Predictor(model, device=args.device, dtype=dtype)
    fast = FastPredictor(base, tile, compile=args.compile)
    prompts = ["neoplastic cells", "inflammatory cells", "connective tissue cells",
               "epithelial cells"][: max(1, args.prompts)]  # fmt: skip
    bs = args.batch or auto_batch_size(fast, prompts, default=4)
    timed = EventTimer(fast, cuda)
    # warm-up: kernels (and compilation for this batch shape), text encodings
    warm = np.zeros((bs, tile, tile, 3), np.uint8)
    tw = time.perf_counter()
    fast.predict_batch(warm, prompts)
    if cuda:
        torch.cuda.synchronize()
    t_warm = time.perf_counter() - tw

    smi = SmiSampler() if cuda else None
    out = work / "run.biomedparse.zarr"
    kw = dict(
        model=timed,
        prompts=prompts,
        mpp=mpp,
        tile_size=tile,
        overlap=overlap,
        batch_size=bs,
        recognize=False,
        overwrite=True,
        readers=args.readers,
    )
    t0 = time.perf_counter()
    res = process_slide(slide, out, **kw)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    s = res.summary
    t_tiles = float(s["seconds_tiles"])
    window = (timed.last - timed.first) if timed.calls else 0.0  # first to last model call
    busy_smi = smi.mean(timed.first, timed.last) if smi and timed.calls else None
    gpu_s = timed.gpu_seconds()
    if smi:
        smi.stop()

    # where the rest goes: the tissue tiles read alone, the model alone on the same batches
    from concurrent.futures import ThreadPoolExecutor

    from napari_biomedparse.slide.store import open_group
    from napari_biomedparse.slide.tiling import TileGrid, read_tile

    img = open_image(slide)
    grid = TileGrid(img.shape, img.mpp, mpp, tile, overlap)
    g = open_group(out, "r")
    done = np.flatnonzero(np.asarray(g["tiles/state"][...]).reshape(-1) == 1)
    tr = time.perf_counter()
    with ThreadPoolExecutor(args.readers) as pool:
        tiles = list(pool.map(lambda k: read_tile(img, grid, int(k), tile), done))
    t_read = time.perf_counter() - tr
    batches = [np.stack(tiles[i : i + bs]) for i in range(0, len(tiles), bs)]
    del tiles
    tm = time.perf_counter()
    for b in batches:
        fast.predict_batch(b, prompts)
    if cuda:
        torch.cuda.synchronize()
    t_model = time.perf_counter() - tm
    tissue_px = float(s["tissue_fraction"]) * img.shape[0] * img.shape[1]
    n = int(len(done))
    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if cuda else "",
        "dry_run": bool(args.dry_run),
        "config": "tiny" if args.dry_run else "v1",
        "input_size": int(cfg.input_size),
        "dtype": args.dtype,
        "compile": bool(args.compile),
        "slide_px": size,
        "slide_mib": slide.stat().st_size / 2**20,
        "compression": "zlib",
        "mpp": mpp,
        "tile_size": tile,
        "overlap": overlap,
        "prompts": len(prompts),
        "batch_size": int(bs),
        "readers": args.readers,
        "tiles": n,
        "tiles_total": int(s["tiles_total"]),
        "make_slide_s": t_make,
        "warmup_s": t_warm,
        "wall_s": wall,
        "tile_stage_s": t_tiles,
        "other_stages_s": wall - t_tiles,
        "tiles_per_s": n / t_tiles if t_tiles else None,
        "tissue_mpx": tissue_px / 1e6,
        "tissue_mpx_per_s": tissue_px / 1e6 / wall,
        "model_window_s": window,
        "gpu_busy_smi": busy_smi,
        "model_gpu_s": gpu_s,
        "gpu_busy_events": (gpu_s / window) if gpu_s is not None and window else None,
        "model_host_s": timed.host,
        "read_alone_s": t_read,
        "model_alone_s": t_model,
        "model_alone_tiles_per_s": n / t_model if t_model else None,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
