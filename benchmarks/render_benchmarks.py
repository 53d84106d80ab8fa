"""Render the results of ``benchmarks/device_check.sh OUTDIR`` as a markdown section.

    python benchmarks/render_benchmarks.py OUTDIR               # OUTDIR/benchmarks_section.md
    python benchmarks/render_benchmarks.py OUTDIR --write-docs  # also into docs/benchmarks.md

Reads OUTDIR/{env.json, steps.tsv, cuda_tests.txt, model.json, slide.json} (missing files are
reported as not measured) and writes the section between ``<!-- device-check:begin -->`` and
``<!-- device-check:end -->`` of docs/benchmarks.md (appended when absent), titled with the
card's name, with the issue's goals next to the figures.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- device-check:begin -->", "<!-- device-check:end -->"
TFLOP_PER_TILE = 2.45  # v1 at 1024 x 1024, one prompt (docs/benchmarks.md, model section)


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(v, fmt="{:.1f}", none="n/m"):
    return none if v is None else fmt.format(v)


def _goal(ok: bool | None) -> str:
    return "" if ok is None else (" (goal met)" if ok else " (goal missed)")


def render(outdir: Path) -> str:
    env = _load(outdir / "env.json") or {}
    model = _load(outdir / "model.json")
    slide = _load(outdir / "slide.json")
    dry = bool(env.get("dry_run"))
    card = env.get("gpu") or f"no GPU ({env.get('cpu', 'CPU')})"
    title = f"### Device check on {card}" + (" (dry run on the CPU: a rehearsal)" if dry else "")
    lines = [title, ""]
    lines.append(
        f"`bash benchmarks/device_check.sh OUTDIR{' --dry-run' if dry else ''}`; Python "
        f"{env.get('python', '?')}, torch {env.get('torch', '?')}"
        + (f", CUDA {env['cuda']}, {env.get('gpu_memory_gib')} GiB" if env.get("cuda") else "")
        + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else "")
        + ". Random weights (timings do not depend on them)."
    )
    lines.append("")
    steps = []
    try:
        for row in (outdir / "steps.tsv").read_text().splitlines():
            name, rc, sec = row.split("\t")
            steps.append(f"{name} {'ok' if rc == '0' else f'rc {rc}'} ({sec} s)")
    except (OSError, ValueError):
        pass
    if steps:
        lines += ["Steps: " + ", ".join(steps) + ".", ""]
    try:
        txt = (outdir / "cuda_tests.txt").read_text()
        summary = [ln for ln in txt.splitlines() if re.search(r"passed|failed|skipped|SKIP", ln)]
        if summary:
            lines += [f"CUDA tests: `{summary[-1].strip()}`.", ""]
    except OSError:
        pass

    if model:
        res = model["results"]
        meta = model["meta"]
        lines += [
            f"**Model** (`{meta['config']}` configuration, input {meta['input_size']} x "
            f"{meta['input_size']}, {meta['params'] / 1e6:.1f} M parameters): throughput = "
            f"`predict_batch` of {res[0].get('batch', '?')} tiles at the input size, 1 prompt; "
            "encode / decode = one image; peak = memory above the weights.",
            "",
            "| variant | tiles/s | ms per tile | peak memory (batch) | encode (ms) | decode 1 "
            "prompt (ms) | predict 1 prompt (ms) | first call (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        by = {}
        for r in res:
            by[r["variant"]] = r
            peak = r.get("batch_peak_mem_bytes", r.get("peak_mem_bytes"))
            lines.append(
                f"| {r['variant']} | {_f(r.get('tiles_per_s'))} | {_f(r.get('ms_per_tile'))} | "
                f"{_f(peak / 2**20 if peak is not None else None, '{:.0f} MiB')} | "
                f"{1000 * r['encode_s']:.1f} | {1000 * r['decode1_s']:.1f} | "
                f"{1000 * r['predict1_s']:.1f} | {r['first_call_s']:.1f} |"
            )
        lines.append("")
        f32, b16 = by.get("fp32", {}), by.get("bf16", {})
        b16c = by.get("bf16 + compile", {})
        best = max((r.get("tiles_per_s") or 0 for r in res), default=0)
        if f32.get("tiles_per_s") and b16.get("tiles_per_s"):
            ratio = b16["tiles_per_s"] / f32["tiles_per_s"]
            lines.append(
                f"bf16 / fp32 throughput: **{ratio:.2f} x**"
                + _goal(None if dry else ratio >= 2.0)
                + " (goal >= 2 x on an H100/H200)."
            )
        if best:
            tflops = best * TFLOP_PER_TILE if meta["config"] == "v1" else None
            lines.append(
                f"Best throughput: **{best:.1f} tiles/s**"
                + (f" = {tflops:.0f} TFLOP/s" if tflops else "")
                + _goal(None if dry or meta["config"] != "v1" else best >= 130)
                + " (goal >= 130 tiles/s of 1024 x 1024 in bf16 on an H100/H200"
                + (f"; bf16 + compile: {_f(b16c.get('tiles_per_s'))} tiles/s" if b16c else "")
                + ")."
            )
        lines.append("")
    else:
        lines += ["Model benchmark: not measured (see model.txt).", ""]

    if slide:
        s = slide
        busy = s.get("gpu_busy_smi")
        rest = s["wall_s"] - s["tile_stage_s"]
        gp_s = 1000.0 / s["tissue_mpx_per_s"] if s.get("tissue_mpx_per_s") else None
        lines += [
            f"**Slide** ({s['config']} configuration, {s['dtype']}"
            f"{' + compile' if s.get('compile') else ''}): synthetic pyramidal {s['compression']} "
            f"TIFF {s['slide_px']:,} x {s['slide_px']:,} px at 0.25 um/px ({s['slide_mib']:.0f} "
            f"MiB), {s['tiles']:,} tissue tiles of {s['tile_size']} px at {s['mpp']} um/px "
            f"(overlap {s['overlap']}) resized on the device to {s['input_size']} px, "
            f"{s['prompts']} prompts, batch {s['batch_size']}, {s['readers']} reader threads, "
            "probabilities only (no recognition: random weights).",
            "",
            "| wall (s) | tile stage (s) | tiles/s | GPU busy (nvidia-smi) | model-call GPU "
            "time / call window | tissue MP/s | 1 GP of tissue |",
            "|---|---|---|---|---|---|---|",
            f"| {s['wall_s']:.1f} | {s['tile_stage_s']:.1f} | {_f(s.get('tiles_per_s'))} | "
            f"{_f(busy, '{:.0%}')}{_goal(None if dry or busy is None else busy >= 0.9)} | "
            f"{_f(s.get('gpu_busy_events'), '{:.0%}')} | {s['tissue_mpx_per_s']:.2f} | "
            f"{_f(gp_s, '{:.0f} s')}{_goal(None if dry or gp_s is None else gp_s < 120)} |",
            "",
            f"Where the time goes: tile stage {s['tile_stage_s']:.1f} s of {s['wall_s']:.1f} s; "
            f"the other stages (tissue mask, blending, store) {rest:.1f} s; the same tiles read "
            f"alone with {s['readers']} threads {s['read_alone_s']:.1f} s; the model alone on "
            f"the same batches {s['model_alone_s']:.1f} s ({_f(s.get('model_alone_tiles_per_s'))}"
            f" tiles/s); host time inside model calls {s['model_host_s']:.1f} s. Goals: GPU "
            "busy >= 90 % of the run, 1 GP of tissue in < 2 min at v1's field of view.",
            "",
        ]
    else:
        lines += ["Slide benchmark: not measured (see slide.txt).", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_docs(section: str, doc: Path = DOC) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n## GPU device check (`benchmarks/device_check.sh`)\n\n{section}{END}"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    section = render(out)
    (out / "benchmarks_section.md").write_text(section)
    print(section)
    if args.write_docs:
        write_docs(section)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
