"""``benchmarks/device_check.sh OUTDIR --dry-run``: every step of the GPU check rehearsed on
the CPU (wheels resolved for CPython 3.12 without an index, imports, CUDA tests (skipped),
model and slide benchmarks at tiny sizes, rendering), and the renderer's docs update."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT.parent / "shared" / "device-wheels"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_rehearses_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    if not WHEELS.is_dir():
        pytest.skip(f"no device wheels at {WHEELS}")
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(tmp_path), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    steps = dict(
        (row.split("\t")[0], int(row.split("\t")[1]))
        for row in (tmp_path / "steps.tsv").read_text().splitlines()
    )
    assert steps == {k: 0 for k in ("install", "imports", "cuda_tests", "model", "slide", "render")}
    wheels = sorted(p.name for p in WHEELS.glob("*.whl"))
    install = (tmp_path / "install.txt").read_text()
    assert all(w in install for w in wheels)  # each resolved for cp312 manylinux
    model = json.loads((tmp_path / "model.json").read_text())
    assert [r["variant"] for r in model["results"]] == ["fp32", "bf16"]
    assert all(r["tiles_per_s"] > 0 and r["encode_s"] > 0 for r in model["results"])
    slide = json.loads((tmp_path / "slide.json").read_text())
    assert slide["tiles"] == 16 and slide["input_size"] == 256 and slide["tile_size"] == 128
    assert slide["wall_s"] >= slide["tile_stage_s"] > 0 and slide["tissue_mpx_per_s"] > 0
    section = (tmp_path / "benchmarks_section.md").read_text()
    assert "dry run" in section and "| fp32 |" in section and "tile stage" in section


def test_renderer_replaces_its_section_only(tmp_path):
    from render_benchmarks import BEGIN, END, write_docs

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    write_docs("### Device check on A\n", doc)
    write_docs("### Device check on B\n", doc)
    text = doc.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "on B" in text and "on A" not in text and text.startswith("# Benchmarks\n\nintro\n")
