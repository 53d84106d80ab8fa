"""The command line: the README's main job (``demo``) end to end, and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from napari_biomedparse.cli import main


@pytest.mark.slow
def test_demo_runs_the_main_job_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "cmu_small_region.svs:" in printed and "objects" in printed

    store = out / "cmu_small_region.svs.biomedparse.zarr"
    assert (store / "zarr.json").exists()
    geo = json.loads(store.with_suffix(".geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    table = pd.read_csv(store.with_suffix(".csv"))
    assert len(geo["features"]) == len(table) > 0
    # every object carries one of the default model's pathology classes
    classes = {f["properties"]["classification"]["name"] for f in geo["features"]}
    assert classes <= {"neoplastic cells", "inflammatory cells", "connective tissue cells"}
    # the slide is 2220 x 2967 px at level 0: every centroid lies inside it
    assert table["centroid_x"].between(0, 2220).all()
    assert table["centroid_y"].between(0, 2967).all()

    # a second run finds the finished result and does not redo it
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    assert "already done" in capsys.readouterr().err


def test_missing_slide_is_a_clear_error(tmp_path, capsys):
    code = main(["slide", str(tmp_path / "nope.svs"), "-o", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "no such slide" in err and "Traceback" not in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
