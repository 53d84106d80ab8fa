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
    # every object carries one of the default model's pathology classes, and the nuclei no
    # class claims are objects of the explicit unclassified class (in the GeoJSON, the table
    # and the printed summary)
    from napari_biomedparse.inference.recognition import UNCLASSIFIED

    classes = {f["properties"]["classification"]["name"] for f in geo["features"]}
    assert classes <= {"neoplastic cells", "inflammatory cells", "connective tissue cells",
                       UNCLASSIFIED}  # fmt: skip
    assert UNCLASSIFIED in classes and UNCLASSIFIED in set(table["class"])
    assert f"{UNCLASSIFIED}: " in printed
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


def test_every_option_has_help_with_its_default_and_out_is_a_folder():
    import argparse

    from napari_biomedparse.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "--out" in text, name  # one spelling everywhere
        for action in p._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.required or action.dest == "help":
                continue
            shown = p._get_formatter()._get_help_string(action)
            assert "default" in shown, f"{name} {action.option_strings}: no default shown"
        out = next((a for a in p._actions if "--out" in a.option_strings), None)
        assert out is not None and out.metavar == "DIR", name
    assert '"""' not in sub.choices["slide"].description
    assert "``" not in sub.choices["slide"].format_help()  # no raw docstring
    # the old spelling still works
    args = parser.parse_args(["slide", "a.svs", "--out-dir", "x"])
    assert args.out_dir == "x"
    assert parser.parse_args(["slide", "a.svs", "-o", "y"]).out_dir == "y"
