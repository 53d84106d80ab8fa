"""Benchmarks of the slide engine past one process (issue 8).

1. Scaling over local CPU worker processes (``--workers 1,2,4``): the same synthetic slide
   (written as a TIFF, reopened by path on the workers) through ``process_slide`` in one
   process (one torch thread, like one worker) and over a ``LocalCluster`` of N worker
   processes with one thread each; tile-stage and total wall times, speed-up, and a check
   that every run wrote the same bytes. Model: the tiny reference architecture with random
   weights at a small input (``--input-size``).
2. On CUDA (``--gpu``): tiles per second of the full-size configuration (random weights,
   1024 px input) in fp32, bf16 and bf16 + ``torch.compile``, with the ``Predictor`` and the
   ``FastPredictor`` (GPU resize/normalisation); a slide run with the fast path measuring
   the fraction of the tile stage during which the GPU is busy (CUDA events around each
   batch's work; also NVML utilisation when pynvml is installed) and megapixels of tissue per
   second; the card's name. ``--profile`` adds the per-tile phase table of
   ``profile_tile.py``.

Examples::

    python benchmarks/bench_distributed.py --workers 1,2 --size 1024            # CPU, quick
    python benchmarks/bench_distributed.py --workers 1,2,4 --gpu --profile      # GPU machine

One call on a GPU machine whose files come back through ``$OUT`` (then, here,
``--from-json that.json`` rewrites the docs section without measuring anything)::

    python benchmarks/bench_distributed.py --gpu --profile --compile --workers 1,2,4,8 \
        --size 2048 --json $OUT/bench_distributed.json --no-write

Order: eager variants, the slide run, the compiled variant, the profile, the CPU scaling;
the JSON is rewritten after each part, so a run cut short keeps what it measured.

Replaces only the part of docs/benchmarks.md between ``<!-- distributed:begin -->`` and
``<!-- distributed:end -->`` (the CPU and CUDA tables are kept apart, so a CPU run does not
erase the CUDA figures); ``--no-write`` prints only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_tile import build, format_table, profile, synthetic_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- distributed:begin -->", "<!-- distributed:end -->"
PROMPTS = ["neoplastic cells", "inflammatory cells", "connective tissue cells",
           "epithelial cells", "dead cells"]  # fmt: skip


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------
# 1. CPU worker scaling


def cpu_scaling(workers: list[int], size: int, input_size: int, tile: int, batch: int) -> dict:
    import tifffile
    from distributed import Client, LocalCluster

    from napari_biomedparse.inference.loading import load_predictor as resolve_predictor
    from napari_biomedparse.model import save_checkpoint
    from napari_biomedparse.slide.distributed import register_model
    from napari_biomedparse.slide.engine import process_slide

    tmp = Path(tempfile.mkdtemp(prefix="nbp-bench-"))
    model_path = save_checkpoint(build("tiny", input_size), tmp / "tiny.safetensors")
    slide = tmp / "slide.tif"
    tifffile.imwrite(slide, synthetic_image(size), tile=(256, 256))
    kw = dict(prompts=PROMPTS[:2], mpp=0.5, tile_size=tile, overlap=tile // 8, batch_size=batch,
              instances="components", slide_mpp=0.5, device="cpu")  # fmt: skip
    rows = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before our own work
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = process_slide(slide, tmp / "one.zarr", model=str(model_path), **kw)
    base_total = time.perf_counter() - t0
    torch.set_num_threads(n_threads)
    ref = np.asarray(base.probs)
    s = base.summary
    rows.append({"setup": "one process, 1 thread", "tiles_s": s["seconds_tiles"],
                 "total_s": base_total, "identical": True})  # fmt: skip
    for n in workers:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)  # fmt: skip
        client = Client(cluster)
        try:
            pred = resolve_predictor(str(model_path), "cpu")
            register_model(
                client, pred, source=str(model_path), device="cpu"
            )  # model loaded before timing
            t0 = time.perf_counter()
            res = process_slide(slide, tmp / f"w{n}.zarr", model=str(model_path), client=client,
                                **kw)  # fmt: skip
            total = time.perf_counter() - t0
            rows.append({"setup": f"{n} worker process{'es' if n > 1 else ''}",
                         "tiles_s": res.summary["seconds_tiles"], "total_s": total,
                         "identical": bool(np.array_equal(np.asarray(res.probs), ref))})  # fmt: skip
        finally:
            client.close()
            cluster.close()
    for r in rows:
        r["speedup_tiles"] = rows[0]["tiles_s"] / r["tiles_s"]
        r["speedup_total"] = rows[0]["total_s"] / r["total_s"]
    return {
        "rows": rows,
        "tiles": s["tiles_processed"],
        "slide": f"{size} x {size} px synthetic TIFF at 0.5 um/px",
        "model": f"tiny reference architecture, random weights, input {input_size} px",
        "tile": tile,
        "batch": batch,
        "cores": os.cpu_count(),
        "cpu": cpu_name(),
        "load": load,
    }


def format_cpu(r: dict) -> str:
    lines = [
        f"### Local CPU worker processes ({r['cpu']}, {r['cores']} cores visible, load "
        f"{r['load']:.1f} before the runs)",
        "",
        f"{r['slide']}, {r['tiles']} tiles of {r['tile']} px (batches of {r['batch']}), "
        f"{r['model']}, 2 prompts. Workers: `LocalCluster(n_workers=N, threads_per_worker=1)`; "
        "the model is loaded on the workers before the clock starts. *identical* = the blended "
        "probabilities equal the one-process run byte for byte.",
        "",
        *(
            [
                f"**The machine was busy before the runs (load {r['load']:.1f} on {r['cores']} "
                "cores, shared with other jobs): these figures measure contention, not "
                "scaling.**",
                "",
            ]
            if r["load"] is not None and r["load"] > r["cores"] / 2
            else []
        ),
        "| setup | tile stage (s) | speed-up | whole slide (s) | speed-up | identical |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['setup']} | {x['tiles_s']:.1f} | {x['speedup_tiles']:.2f}x | "
            f"{x['total_s']:.1f} | {x['speedup_total']:.2f}x | "
            f"{'yes' if x['identical'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 2. CUDA


def _nvml_sampler(device_index: int):
    """A thread sampling ``torch.cuda.utilization`` (NVML) every 20 ms, or None."""
    try:
        torch.cuda.utilization(device_index)
    except Exception:  # noqa: BLE001 - pynvml missing or no NVML
        return None
    samples, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            samples.append((time.perf_counter(), torch.cuda.utilization(device_index)))
            time.sleep(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return samples, stop, t


class BusyMeter:
    """Wraps ``predict_batch``: CUDA events around each batch's device work."""

    def __init__(self, predictor):
        self.p = predictor
        self.input_size = predictor.input_size
        self.device = predictor.device
        self.model = predictor.model
        self.dtype = predictor.dtype
        self.events: list = []
        self.fingerprint = predictor.fingerprint

    def predict_batch(self, rgb, prompts):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        out = self.p.predict_batch(rgb, prompts)
        b.record()
        self.events.append((a, b))
        return out

    def busy_seconds(self) -> float:
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.events) / 1000.0


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _tiles_per_s(runner, size, batch, prompts, n, dev, rng) -> tuple[float, float]:
    tiles = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    runner.predict_batch(tiles, prompts)  # warm-up / compilation
    _sync(dev)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        runner.predict_batch(tiles, prompts)
    _sync(dev)
    return n * batch / (time.perf_counter() - t0), first


def gpu_bench(args, save=lambda: None) -> dict:
    """Eager variants, then the slide run, then the compiled variants (the slowest to start),
    each guarded: a failure is recorded and the next part runs. ``save()`` after each."""
    from napari_biomedparse.inference.fast import (
        FastPredictor,
        auto_batch_size,
        compile_predictor,
    )
    from napari_biomedparse.inference.predictor import Predictor

    dev = torch.device(args.gpu_device)
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else f"{dev} (dry run)"
    model = build(args.gpu_config, args.gpu_input)
    S = model.config.input_size
    prompts = PROMPTS[: args.prompts]
    rng = np.random.default_rng(0)
    out: dict = {"device": name, "input_size": S, "prompts": len(prompts), "variants": []}
    results_ref = args._results
    results_ref["gpu"] = out
    batch = args.gpu_batch
    if batch is None:
        probe = Predictor(model, device=dev)
        batch = min(32, auto_batch_size(probe, prompts, max_batch=32, default=2))
    out["batch"] = batch

    def variant(dtype, comp):
        pred = Predictor(model, device=dev, dtype=None if dtype == "fp32" else dtype)
        if comp:
            compile_predictor(pred)
        for kind in ("Predictor", "FastPredictor"):
            runner = pred if kind == "Predictor" else FastPredictor(pred, args.gpu_tile)
            size = S if kind == "Predictor" else args.gpu_tile
            row = {"variant": dtype + (" + compile" if comp else ""), "path": kind,
                   "tile": size, "batch": batch}  # fmt: skip
            try:
                row["tiles_per_s"], row["first_batch_s"] = _tiles_per_s(
                    runner, size, batch, prompts, args.gpu_batches, dev, rng
                )
            except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                if cuda:
                    torch.cuda.empty_cache()
            out["variants"].append(row)
            print(row, flush=True)
            save()

    for dtype in ("fp32", "bf16"):
        variant(dtype, False)
    try:
        out["slide"] = slide_run(args, model, dev, prompts, batch)
    except Exception as exc:  # noqa: BLE001
        out["slide_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(out.get("slide", out.get("slide_error")), flush=True)
    save()
    if args.compile:
        variant("bf16", True)
    return out


def slide_run(args, model, dev, prompts, batch) -> dict:
    """``process_slide`` with the fast path in bf16; GPU busy fraction and tissue MP/s."""
    from napari_biomedparse.inference.fast import FastPredictor
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.slide.engine import process_slide

    cuda = dev.type == "cuda"
    fast = FastPredictor(Predictor(model, device=dev, dtype="bf16"), args.gpu_tile)
    meter = BusyMeter(fast) if cuda else fast
    if args.slide:
        src, slide_mpp, what = args.slide, None, Path(args.slide).name
    else:
        src = synthetic_image(args.gpu_slide)
        slide_mpp, what = 0.25, f"{args.gpu_slide} x {args.gpu_slide} px synthetic (in memory)"
    sampler = _nvml_sampler(dev.index or 0) if cuda else None
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = process_slide(src, Path(tmp) / "gpu.zarr", model=meter, prompts=prompts,
                                slide_mpp=slide_mpp, mpp=0.5, tile_size=args.gpu_tile,
                                overlap=args.gpu_tile // 8, batch_size=batch,
                                readers=args.readers, instances="components")  # fmt: skip
            total = time.perf_counter() - t0
            s = res.summary
            H0, W0 = res.meta["grid"]["level0_shape"]
    finally:
        util = None
        if sampler is not None:
            samples, stop, th = sampler
            stop.set()
            th.join()
            util = float(np.mean([u for _, u in samples])) if samples else None
    if not s["tiles_processed"]:
        raise RuntimeError(f"no tissue tiles in {what} (tissue fraction {s['tissue_fraction']})")
    busy = meter.busy_seconds() if cuda else float("nan")
    tissue_mp = s["tissue_fraction"] * H0 * W0 / 1e6
    return {
        "what": what, "level0": [H0, W0], "tiles": s["tiles_processed"],
        "seconds_tiles": s["seconds_tiles"], "seconds_total": total,
        "busy_fraction": busy / s["seconds_tiles"], "nvml_util_mean": util,
        "tissue_mp": tissue_mp, "tissue_mp_per_s_tiles": tissue_mp / s["seconds_tiles"],
        "tissue_mp_per_s_total": tissue_mp / total,
        "tiles_per_s": s["tiles_processed"] / s["seconds_tiles"],
    }  # fmt: skip


def format_gpu(r: dict) -> str:
    lines = [
        f"### CUDA: {r['device']}",
        "",
        f"Full-size configuration (BiomedParse v1 architecture, random weights), input "
        f"{r['input_size']} px, {r['prompts']} prompts decoded in one pass, batch {r['batch']}. "
        "*Predictor*: tiles already at 1024 px; *FastPredictor*: tiles at the tile size, "
        "resized and normalised on the GPU, probabilities returned at the tile size.",
        "",
        "| variant | path | tile (px) | tiles/s | first batch (s) |",
        "|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        if "error" in v:
            lines.append(f"| {v['variant']} | {v['path']} | {v['tile']} | failed: "
                         f"{v['error']} | |")  # fmt: skip
            continue
        lines.append(f"| {v['variant']} | {v['path']} | {v['tile']} | {v['tiles_per_s']:.1f} | "
                     f"{v['first_batch_s']:.1f} |")  # fmt: skip
    if r.get("slide_error"):
        lines += ["", f"Slide run failed: {r['slide_error']}"]
    s = r.get("slide")
    if s:
        util = f"{s['nvml_util_mean']:.0f} %" if s["nvml_util_mean"] is not None else "n/a"
        lines += [
            "",
            f"Slide run (`process_slide`, FastPredictor bf16, 0.5 um/px, {s['tiles']} tiles): "
            f"{s['what']}, level 0 {s['level0'][0]} x {s['level0'][1]} px.",
            "",
            "| tiles/s | GPU busy (CUDA events) | NVML utilisation | tissue MP/s (tile stage) "
            "| tissue MP/s (whole run) | tile stage (s) | whole run (s) |",
            "|---|---|---|---|---|---|---|",
            f"| {s['tiles_per_s']:.1f} | {100 * s['busy_fraction']:.0f} % | {util} | "
            f"{s['tissue_mp_per_s_tiles']:.3g} | {s['tissue_mp_per_s_total']:.3g} | "
            f"{s['seconds_tiles']:.1f} | {s['seconds_total']:.1f} |",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# docs


def write_doc(blocks: dict[str, str]) -> None:
    """Replace the named sub-blocks inside the distributed section (others are kept)."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        body, post = rest.split(END, 1)
    else:
        pre, body, post = text.rstrip("\n") + "\n\n", "", "\n"
    intro = (
        "\n## Distributed and GPU (`slide/distributed.py`)\n\n"
        "Produced by `python benchmarks/bench_distributed.py` (see the script for the flags; "
        "docs/distributed.md for the setup).\n\n"
    )
    for key, content in blocks.items():
        b, e = f"<!-- distributed-{key}:begin -->", f"<!-- distributed-{key}:end -->"
        block = f"{b}\n{content}{e}\n"
        if b in body and e in body:
            head, rest = body.split(b, 1)
            _, tail = rest.split(e, 1)
            body = head + block + tail.lstrip("\n")
        else:
            body = body + ("\n" if body and not body.endswith("\n\n") else "") + block
    if "## Distributed and GPU" not in body:
        body = intro + body.lstrip("\n")
    DOC.write_text(pre + BEGIN + body.rstrip("\n") + "\n" + END + post)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4", help="CPU worker counts ('' to skip)")
    ap.add_argument("--size", type=int, default=1024, help="synthetic slide edge (px, 0.5 um/px)")
    ap.add_argument("--input-size", type=int, default=256, help="tiny model input (CPU part)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also the CUDA benchmarks")
    ap.add_argument("--compile", action="store_true", help="include bf16 + torch.compile")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--gpu-batch", type=int, default=None, help="default: auto (free memory)")
    ap.add_argument("--gpu-batches", type=int, default=5)
    ap.add_argument("--gpu-tile", type=int, default=256)
    ap.add_argument("--gpu-slide", type=int, default=8192, help="synthetic slide edge (px)")
    ap.add_argument("--slide", default=None, help="a real slide for the GPU slide run")
    ap.add_argument("--readers", type=int, default=6, help="tile reader threads (GPU run)")
    ap.add_argument("--profile", action="store_true", help="add the per-tile phase table")
    ap.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run
    ap.add_argument("--gpu-config", default="v1", help=argparse.SUPPRESS)
    ap.add_argument("--gpu-input", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--from-json", default=None, help="only rewrite the docs from a JSON")
    a = ap.parse_args(argv)
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
    else:
        results = run_all(a)
    blocks = make_blocks(results)
    for text in blocks.values():
        print(text, flush=True)
    if not a.no_write and blocks:
        write_doc(blocks)
        print(f"wrote {DOC}")


def make_blocks(results: dict) -> dict[str, str]:
    blocks = {}
    if "cpu" in results:
        blocks["cpu"] = format_cpu(results["cpu"])
    if "gpu" in results:
        blocks["cuda"] = format_gpu(results["gpu"])
    if "profile_cuda" in results:
        blocks["cuda-profile"] = format_table(results["profile_cuda"])
    if "profile_cpu" in results:
        blocks["cpu-profile"] = format_table(results["profile_cpu"])
    return blocks


def run_all(a) -> dict:
    """GPU parts first (the scarce machine), then the CPU scaling; the JSON is saved after
    every part so that a run cut short keeps what it measured."""
    results: dict = {"date": datetime.datetime.now(datetime.UTC).isoformat()}
    a._results = results

    def save():
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1, default=str))

    if a.gpu:
        if a.gpu_device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device")
        gpu_bench(a, save)
        save()
        if a.profile:
            try:
                results["profile_cuda"] = profile(
                    device=a.gpu_device, config=a.gpu_config, input_size=a.gpu_input,
                    tile_size=a.gpu_tile, batch_size=results["gpu"]["batch"],
                    n_prompts=a.prompts, n_batches=3, dtype="bf16",
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                print(f"profile failed: {exc!r}", flush=True)
            save()
    elif a.profile:
        results["profile_cpu"] = profile(device="cpu", config="tiny", input_size=256,
                                         tile_size=a.tile, batch_size=a.batch,
                                         n_prompts=a.prompts, n_batches=2)  # fmt: skip
        save()
    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    if workers:
        results["cpu"] = cpu_scaling(workers, a.size, a.input_size, a.tile, a.batch)
        save()
    return results


if __name__ == "__main__":
    main()
