"""``napari-biomedparse slide`` over paths, globs and folders, with resume and overwrite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import napari_biomedparse.inference.loading as loading
from napari_biomedparse.cli import main
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.cli import expand_sources

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"
FAST = [
    "--mpp",
    "2",
    "--tile-size",
    "128",
    "--overlap",
    "16",
    "--instances",
    "components",
    "--prompts",
    "nuclei",
    "--no-progress",
]


@pytest.fixture
def slides(tmp_path, monkeypatch):
    # the command line's model loading is replaced by the fast deterministic predictor
    monkeypatch.setattr(loading, "load_predictor", lambda model, device=None: StainPredictor(128))
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(CMU, d / "a.svs")
    shutil.copy(ROOT / "tests/data/openslide_fixtures/small.svs", d / "tiny.svs")
    (d / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 100)
    (d / "notes.txt").write_text("not a slide")
    return d


def test_expand_sources(slides):
    got = expand_sources([str(slides)])
    assert [p.name for p in got] == ["a.svs", "broken.svs", "tiny.svs"]
    assert [p.name for p in expand_sources([str(slides / "*.svs"), str(slides / "a.svs")])] == [
        "a.svs",
        "broken.svs",
        "tiny.svs",
    ]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_sources([str(slides / "*.ndpi")])


def test_cli_folder_resume_overwrite_and_summary(slides, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["slide", str(slides), "-o", str(out), "--geojson", "--csv", *FAST])
    captured = capsys.readouterr()
    assert rc == 1  # one broken slide
    assert "broken.svs: FAILED" in captured.out and "truncated or corrupt" in captured.out
    assert "a.svs:" in captured.out and "objects (nuclei:" in captured.out
    assert "skipped (background)" in captured.out
    # the work is shown before it is done: tiles, pixel size, prompts, blocks
    planned = [ln for ln in captured.err.splitlines() if "planned: " in ln]
    assert planned and " tissue tiles of " in planned[0] and " um/px " in planned[0], planned
    res = out / "a.svs.biomedparse.zarr"
    assert res.exists() and (out / "a.svs.biomedparse.geojson").exists()
    gj = json.loads((out / "a.svs.biomedparse.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) > 50
    assert (out / "a.svs.biomedparse.csv").exists()
    # second run: finished slides are kept, not recomputed
    mtime = (res / "table.parquet").stat().st_mtime_ns
    rc = main(["slide", str(slides / "a.svs"), "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 0 and "already done" in err
    assert (res / "table.parquet").stat().st_mtime_ns == mtime
    # different parameters on a finished result need --overwrite
    rc = main(
        [
            "slide",
            str(slides / "a.svs"),
            "-o",
            str(out),
            *FAST,
            "--overwrite",
            "--prompts",
            "nuclei",
            "other",
        ]
    )
    assert rc == 0
    meta = json.loads((res / "zarr.json").read_text())
    assert meta["attributes"]["biomedparse_slide"]["class_names"] == [
        "unclassified nuclei",
        "other",
    ]


def test_cli_missing_pixel_size_message(tmp_path, monkeypatch, capsys):
    import numpy as np
    import tifffile

    monkeypatch.setattr(loading, "load_predictor", lambda model, device=None: StainPredictor(128))
    img = np.full((300, 300, 3), 240, np.uint8)
    tifffile.imwrite(tmp_path / "nompp.tif", img)
    rc = main(["slide", str(tmp_path / "nompp.tif"), "-o", str(tmp_path / "o"), *FAST])
    out = capsys.readouterr().out
    assert rc == 1 and "--slide-mpp" in out
    rc = main(
        [
            "slide",
            str(tmp_path / "nompp.tif"),
            "-o",
            str(tmp_path / "o"),
            *FAST,
            "--slide-mpp",
            "0.5",
        ]
    )
    assert rc == 0 and "0 objects" in capsys.readouterr().out
