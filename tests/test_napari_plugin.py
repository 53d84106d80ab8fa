"""The plugin as napari sees it: manifest, reader, sample data (GUI tests under Xvfb)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TEST_DATA = Path(__file__).resolve().parent / "data"
SAMPLES = TEST_DATA.parent.parent / "src" / "napari_biomedparse" / "data"

pytestmark = pytest.mark.gui

WIDGETS = {"Segment", "Recognize all", "Slide processing", "Model", "Fine-tune"}


def test_manifest_validates():
    import npe2

    mf = npe2.PluginManifest.from_distribution("napari-biomedparse")
    assert mf.name == "napari-biomedparse"
    assert {w.display_name for w in mf.contributions.widgets} == WIDGETS
    assert {s.key for s in mf.contributions.sample_data} == {
        "hgsc_nest",
        "stardist_nuclei",
        "cmu_small_region",
    }
    ids = {c.id for c in mf.contributions.commands}
    assert "napari-biomedparse.finetune_widget" in ids
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-biomedparse", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_napari_sees_the_plugin(make_napari_viewer):
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    pm = PluginManager.instance()
    assert "napari-biomedparse" in pm._manifests
    names = {w.display_name for w in pm.iter_widgets() if w.plugin_name == "napari-biomedparse"}
    assert names == WIDGETS
    # a widget docks from the manifest (napari imports it through npe2)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-biomedparse", "Segment")
    assert type(widget).__name__ == "SegmentWidget"


def test_reader_opens_svs_as_lazy_multiscale_with_scale(make_napari_viewer):
    import dask.array as da

    viewer = make_napari_viewer()
    layers = viewer.open(str(SAMPLES / "cmu_small_region.svs"), plugin="napari-biomedparse")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert layer.data[0].shape == (2967, 2220, 3)
    assert len(layer.data) >= 2 and isinstance(layer.data[0], da.Array)
    np.testing.assert_allclose(layer.scale, [0.499, 0.499])
    assert str(layer.units[0]) == "micrometer"
    assert layer.metadata["mpp"] == pytest.approx(0.499)
    # pixels are right: the level-0 corner matches OpenSlide
    import openslide

    with openslide.OpenSlide(str(SAMPLES / "cmu_small_region.svs")) as s:
        ref = np.asarray(s.read_region((100, 200), 0, (16, 16)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(layer.data[0][200:216, 100:116]), ref)


def test_reader_leaves_other_files_to_napari(tmp_path):
    from napari_biomedparse._napari._reader import get_reader

    assert get_reader(str(SAMPLES / "stardist_img2d.tif")) is None  # plain small TIFF
    assert get_reader(str(SAMPLES / "hgsc_nest.jpg")) is None
    boxes = get_reader(str(TEST_DATA / "openslide_fixtures" / "boxes.tiff"))
    assert boxes is not None  # a pyramidal generic TIFF is ours
    data, kwargs, kind = boxes(str(TEST_DATA / "openslide_fixtures" / "boxes.tiff"))[0]
    assert kind == "image" and kwargs["multiscale"] and len(data) == 4
    assert [lv.shape[:2] for lv in data][0] == (250, 300)
    assert "scale" not in kwargs  # no pixel size in the file: pixels
    assert get_reader([str(SAMPLES / "cmu_small_region.svs")] * 2) is None


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-biomedparse", "hgsc_nest")
    viewer.open_sample("napari-biomedparse", "stardist_nuclei")
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    he, fluo, slide = viewer.layers
    assert he.data.shape == (1500, 1500, 3) and he.rgb
    assert fluo.data.shape == (512, 512) and fluo.data.dtype == np.uint16
    assert slide.multiscale
    np.testing.assert_allclose(slide.scale, [0.499, 0.499])
