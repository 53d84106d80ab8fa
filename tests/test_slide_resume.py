"""A run killed with SIGKILL resumes where it stopped and ends identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import process_slide
from napari_biomedparse.slide.store import open_group, partial_path, read_meta

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"

KW = dict(
    prompts=["nuclei", "dark nuclei"],
    mpp=2.0,
    tile_size=128,
    overlap=16,
    instances="components",
    batch_size=3,
)

SCRIPT = """
import sys, time
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import process_slide
kw = {kw}
def progress(done, total, message):
    if message.startswith("tiles") and done >= {n}:
        print("KILL ME", done, flush=True)
        time.sleep(120)
process_slide({src!r}, {out!r}, model=StainPredictor(128, delay=0.05), progress=progress, **kw)
print("FINISHED", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed.zarr"
    code = SCRIPT.format(kw=repr(KW), n=9, src=str(CMU), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("KILL ME") or not line:
                break
        assert line.startswith("KILL ME"), proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    part = partial_path(out)
    assert part.exists() and not out.exists()
    g = open_group(part, "r")
    assert read_meta(g)["status"] == "running"
    done_before = int((np.asarray(g["tiles/state"][...]) == 1).sum())
    assert 9 <= done_before < 26

    resumed = process_slide(CMU, out, model=StainPredictor(128), **KW)
    ref = process_slide(CMU, tmp_path / "ref.zarr", model=StainPredictor(128), **KW)
    assert resumed.summary["resumed"] and resumed.summary["tiles_resumed"] >= 9
    assert resumed.summary["tiles_processed"] == ref.summary["tiles_processed"]
    np.testing.assert_array_equal(np.asarray(resumed.probs), np.asarray(ref.probs))
    for a, b in zip(resumed.labels, ref.labels):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(resumed.classes[0]), np.asarray(ref.classes[0]))
    pd.testing.assert_frame_equal(resumed.table, ref.table)
    pd.testing.assert_frame_equal(resumed.outlines, ref.outlines)
    ga = json.loads(resumed.to_geojson(tmp_path / "a.geojson").read_text())
    gb = json.loads(ref.to_geojson(tmp_path / "b.geojson").read_text())
    assert ga == gb and len(ga["features"]) > 100
