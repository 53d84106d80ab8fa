"""Benchmark of the BiomedParse model layer (issue 3): encode / decode / multi-prompt cost.

Random weights (timings do not depend on the values). Examples::

    python benchmarks/bench_model.py --device cpu --config v1 --repeats 2
    python benchmarks/bench_model.py --device cuda --config v1 --dtypes fp32,bf16 --compile

Prints the figures and replaces the section between ``<!-- model:begin -->`` and
``<!-- model:end -->`` of docs/benchmarks.md (``--no-write`` to skip; one section per device,
``--device cpu`` and ``--device cuda`` runs keep each other's tables).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_biomedparse.inference.predictor import Predictor
from napari_biomedparse.model import BiomedParseConfig, build_model

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- model:begin -->", "<!-- model:end -->"
PROMPTS = [
    "neoplastic cells", "inflammatory cells", "connective tissue cells", "epithelial cells",
    "liver", "left kidney", "right kidney", "pancreas", "spleen", "tumor", "edema",
    "optic disc", "optic cup", "lesion", "left lung", "glandular structure",
]  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> tuple[float, object]:
    """Median wall time (synchronised on CUDA). On CPU the median process CPU time (all
    threads) is recorded too, in ``_timed.cpu``: robust to other jobs sharing the cores."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    _timed.cpu = statistics.median(cpu)
    return statistics.median(times), out


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, {os.cpu_count()} visible cores"


def run_variant(model, device, dtype_name: str, compile_: bool, args) -> dict:
    dtype = None if dtype_name == "fp32" else dtype_name
    pred = Predictor(model, device=device, dtype=dtype)
    s = model.config.input_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    res = {"variant": dtype_name + (" + compile" if compile_ else ""), "dtype": dtype_name}
    if compile_:
        eager_encode = model.encode_image
        model.encode_image = torch.compile(eager_encode, dynamic=False)
    try:
        # first call (warm-up, compilation): time and peak memory of one predict(1 prompt)
        gc.collect()
        rss0 = _rss_peak_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base_cuda = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        pred.predict(image, PROMPTS[:1])
        _sync(device)
        res["first_call_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            res["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) - base_cuda
            res["peak_mem_kind"] = "CUDA memory allocated above the weights"
        else:
            res["peak_mem_bytes"] = max(0, _rss_peak_bytes() - rss0)
            res["peak_mem_kind"] = "growth of the process peak RSS above the weights"
            res["rss_peak_bytes"] = _rss_peak_bytes()
        if compile_ and device.type == "cuda":  # a second warm-up for autotuned kernels
            pred.predict(image, PROMPTS[:1])
        res["encode_s"], _ = _timed(lambda: pred.encode(image, cache=False), device, args.repeats)
        res["encode_cpu"] = _timed.cpu
        # decoder on an encoding without cache: every call recomputes the prompt-independent
        # tensors, as predict() does
        enc = pred.encode(image, cache=False)
        for n in args.prompts:
            res[f"decode{n}_s"], _ = _timed(
                lambda n=n: pred.decode(enc, PROMPTS[:n]), device, args.decode_repeats
            )
            res[f"decode{n}_cpu"] = _timed.cpu
        # decoder on an encoding whose cache is warm (GUI: trying prompts on one image)
        enc_c = pred.encode(image, cache=True)
        pred.decode(enc_c, PROMPTS[:1])
        res["decode1_cached_s"], _ = _timed(
            lambda: pred.decode(enc_c, PROMPTS[1:2]), device, args.decode_repeats
        )
        res["decode1_cached_cpu"] = _timed.cpu
        enc = enc_c = None  # free the encodings before the predict timings
        for n in args.prompts:
            res[f"predict{n}_s"], _ = _timed(
                lambda n=n: pred.predict(image, PROMPTS[:n]), device, args.repeats
            )
            res[f"predict{n}_cpu"] = _timed.cpu
        if args.batch:  # slide throughput: B tiles at the input size, one prompt
            b = int(args.batch)
            tiles = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
            pred.predict_batch(tiles, PROMPTS[:1])  # warm-up (and compilation of this shape)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base_cuda = torch.cuda.memory_allocated(device)
            t, _ = _timed(lambda: pred.predict_batch(tiles, PROMPTS[:1]), device, args.repeats)
            res.update(batch=b, tiles_per_s=b / t, ms_per_tile=1000.0 * t / b, batch_cpu=_timed.cpu)
            if device.type == "cuda":
                res["batch_peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) - base_cuda
    finally:
        if compile_:
            model.encode_image = eager_encode
    return res


def format_section(results: list[dict], meta: dict, prompts: list[int]) -> str:
    n1 = prompts[0]
    lines = [
        f"### `{meta['config']}` configuration on {meta['device_kind']}",
        "",
        f"Device: {meta['device_name']}. {meta['date']}, torch {torch.__version__}, "
        f"input {meta['input_size']} x {meta['input_size']}, {meta['params'] / 1e6:.1f} M "
        f"parameters (random weights). `predict(n)`: official-semantics call with n prompts "
        f"(one image encoding, one batched decoder pass, probabilities at full size), median of "
        f"{meta['repeats']}; `encode`: image encoder only, median of {meta['repeats']}; "
        f"`decode(n)`: decoder only, on an encoding without cache (what predict does), median of "
        f"{meta['decode_repeats']}; *cached*: decoder on an encoding whose prompt-independent "
        f"tensors are cached (`Predictor.encode(..., cache=True)`, trying prompts on one image). "
        f"Estimated cost of n prompts = (encode + decode(n)) / (encode + decode({n1})); measured "
        f"= predict(n) / predict({n1}). First call = first predict({n1}) (warm-up, compilation), "
        f"which also gives the peak memory. Command: `{meta['command']}`.",
        "",
    ]
    if meta["device_kind"] == "cpu":
        lines += [
            "The 2 CPU cores were shared with other jobs (load average about 4 to 8) while this "
            "ran: wall-clock times are inflated and noisy; the process CPU times (second "
            "table) are the reliable cost figures.",
            "",
        ]
    head = "| variant | first call (s) | peak memory | encode (s) |"
    sep = "|---|---|---|---|"
    for n in prompts:
        head += f" decode {n} (s) |"
        sep += "---|"
    head += " decode 1, cached (s) |"
    sep += "---|"
    for n in prompts:
        head += f" predict {n} (s) |"
        sep += "---|"
    for n in prompts[1:]:
        head += f" cost {n} / {n1} prompt: estimated, measured |"
        sep += "---|"
    lines += [head, sep]
    for r in results:
        row = (
            f"| {r['variant']} | {r['first_call_s']:.2f} | "
            f"{r['peak_mem_bytes'] / 2**20:.0f} MiB ({r['peak_mem_kind']}) | {r['encode_s']:.3f} |"
        )
        for n in prompts:
            row += f" {r[f'decode{n}_s']:.3f} |"
        row += f" {r['decode1_cached_s']:.3f} |"
        for n in prompts:
            row += f" {r[f'predict{n}_s']:.3f} |"
        for n in prompts[1:]:
            est = (r["encode_s"] + r[f"decode{n}_s"]) / (r["encode_s"] + r[f"decode{n1}_s"])
            meas = r[f"predict{n}_s"] / r[f"predict{n1}_s"]
            row += f" {est:.2f} x, {meas:.2f} x |"
        lines.append(row)
    lines.append("")
    if meta["device_kind"] == "cpu":
        lines += [
            "Process CPU time (seconds of CPU used by the benchmark, all threads; robust to the "
            "other jobs on the machine) for the same runs:",
            "",
        ]
        head = "| variant | encode | " + " | ".join(f"decode {n}" for n in prompts)
        head += " | decode 1, cached | " + " | ".join(f"predict {n}" for n in prompts)
        head += " | " + " | ".join(f"cost {n} / {n1} prompt" for n in prompts[1:]) + " |"
        ncol = 3 + 2 * len(prompts) + len(prompts) - 1
        lines += [head, "|" + "---|" * ncol]
        for r in results:
            row = f"| {r['variant']} | {r['encode_cpu']:.2f} | "
            row += " | ".join(f"{r[f'decode{n}_cpu']:.2f}" for n in prompts)
            row += f" | {r['decode1_cached_cpu']:.2f} | "
            row += " | ".join(f"{r[f'predict{n}_cpu']:.2f}" for n in prompts)
            row += " | " + " | ".join(
                f"{r[f'predict{n}_cpu'] / r[f'predict{n1}_cpu']:.2f} x" for n in prompts[1:]
            )
            lines.append(row + " |")
        lines.append("")
    return "\n".join(lines)


def write_doc(section: str, device_kind: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    sub_begin = f"<!-- model-{device_kind}:begin -->"
    sub_end = f"<!-- model-{device_kind}:end -->"
    block = f"{sub_begin}\n{section}{sub_end}\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        body, post = rest.split(END, 1)
        if sub_begin in body and sub_end in body:
            body = re.sub(
                re.escape(sub_begin) + r".*?" + re.escape(sub_end) + r"\n?",
                lambda _m: block,
                body,
                flags=re.S,
            )
        else:
            body = body.rstrip("\n") + "\n" + block
        text = pre + BEGIN + body + END + post
    else:
        intro = (
            "\n## Model (issue 3): BiomedParse v1 forward (`Predictor`)\n\nProduced by "
            "`benchmarks/bench_model.py` (random weights; timings do not depend on them). Goal: "
            "4 prompts on one image cost at most 1.3 x one prompt (the image is encoded once; "
            "all prompts share one batched decoder pass). CUDA figures (fp32, bf16, "
            "torch.compile): `python benchmarks/bench_model.py --device cuda --config v1 "
            "--dtypes fp32,bf16 --compile`; each device keeps its own table below.\n"
        )
        text = text.rstrip("\n") + f"\n\n{BEGIN}{intro}{block}{END}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "mps"], default="cpu")
    ap.add_argument("--config", choices=["v1", "tiny"], default="v1")
    ap.add_argument("--dtypes", default="fp32", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--compile", action="store_true", help="also run torch.compile variants")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of encode / predict")
    ap.add_argument("--decode-repeats", type=int, default=5, help="repeats of decode")
    ap.add_argument("--prompts", default="1,4,16", help="prompt counts (first = reference)")
    ap.add_argument("--input-size", type=int, default=None, help="override the input size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--section-out", default=None, help="also write the markdown section here")
    ap.add_argument("--compile-dtypes", default=None, help="dtypes compiled (default: --dtypes)")
    ap.add_argument("--batch", type=int, default=0, help="also time predict_batch of N tiles")
    ap.add_argument("--json", default=None, help="write the figures (meta, results) as JSON")
    args = ap.parse_args(argv)
    args.prompts = [int(x) for x in args.prompts.split(",")]
    if max(args.prompts) > len(PROMPTS):
        ap.error(f"at most {len(PROMPTS)} prompts")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    cfg = BiomedParseConfig.biomedparse_v1() if args.config == "v1" else BiomedParseConfig.tiny()
    if args.input_size:
        import dataclasses

        cfg = dataclasses.replace(cfg, input_size=args.input_size)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(cfg).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"built {args.config} in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    variants = [(d.strip(), False) for d in args.dtypes.split(",") if d.strip()]
    if args.compile:
        cd = [d.strip() for d in (args.compile_dtypes or args.dtypes).split(",") if d.strip()]
        variants += [(d, True) for d in cd]
    results = []
    for dtype_name, comp in variants:
        print(f"running {dtype_name}{' + compile' if comp else ''} ...", flush=True)
        r = run_variant(model, device, dtype_name, comp, args)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        results.append(r)
        if args.section_out:  # partial results survive a time-out
            Path(args.section_out + ".partial").write_text(repr(results))
    meta = {
        "config": args.config,
        "device_kind": device.type,
        "device_name": _device_name(device),
        "date": datetime.date.today().isoformat(),
        "input_size": cfg.input_size,
        "params": sum(p.numel() for p in model.parameters()),
        "repeats": args.repeats,
        "decode_repeats": args.decode_repeats,
        "command": "python benchmarks/bench_model.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    section = format_section(results, meta, args.prompts)
    print(section)
    if args.section_out:
        Path(args.section_out).write_text(section)
    if not args.no_write:
        write_doc(section, device.type)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
