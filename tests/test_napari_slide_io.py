"""Slide processing widget, opening earlier results, and the GeoJSON / CSV writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("plugin_settings")]

SAMPLES = Path(__file__).resolve().parent.parent / "src" / "napari_biomedparse" / "data"


def _wait(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.run.running, timeout=timeout)


def test_slide_widget_runs_engine_and_opens_results(
    make_napari_viewer, qtbot, plugin_model, tmp_path
):
    from napari_biomedparse._napari._widgets.slide import SlideWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    slide = viewer.layers[0]
    w = SlideWidget(viewer)
    w.mpp.value = 1.0  # 1480 x 1110 px at 1 um/px: two label levels, few tiles
    w.tile_size.value = 256
    w.overlap.value = 32
    w.output_folder.value = str(tmp_path)
    msgs = []
    w.run.progressed.connect(lambda d, t, m: msgs.append((d, t, m)))
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    assert any("tile" in m.lower() for _, _, m in msgs)  # the bar shows tiles done
    store = tmp_path / "cmu_small_region.biomedparse.zarr"
    assert store.exists()
    from napari_biomedparse.slide.engine import SlideResult

    # the bar counts the units of the stage its text names ("tiles 4/83" is 4 of 83, not 4
    # of every stage's units together); the tile stage's total is the tiles processed
    counted = [(d, t, m) for d, t, m in msgs if re.search(r"\d+/\d+$", m)]
    assert counted and all(m.endswith(f" {d}/{t}") for d, t, m in counted)
    tiles = [t for _, t, m in counted if m.startswith("tiles")]
    assert set(tiles) == {SlideResult.open(store).summary["tiles_processed"]}
    inst = viewer.layers["cmu_small_region instances"]
    classes = viewer.layers["cmu_small_region classes"]
    assert inst.multiscale and classes.multiscale
    # drawn as outlines (the tissue stays visible); boxes and classes shown when asked
    assert inst.visible and inst.contour > 0 and not classes.visible
    shapes = [lay for lay in viewer.layers if lay._type_string == "shapes"]
    assert shapes and not any(lay.visible for lay in shapes)
    import dask.array as da

    assert isinstance(inst.data[0], da.Array)  # lazily read from the store
    # aligned with the slide: same world extent (within one output pixel)
    ext_img = np.asarray(slide.extent.world)
    ext_lab = np.asarray(inst.extent.world)
    np.testing.assert_allclose(ext_lab, ext_img, atol=2.0)
    res = SlideResult.open(store)
    assert len(inst.features) == len(res.table)
    n = len(viewer.layers)
    # refuses to overwrite silently
    w.start()
    assert not w.run.running and len(viewer.layers) == n
    # open the earlier run again (replacing the layers)
    w.results.value = str(store)
    w.open_results()
    assert len(viewer.layers) == n
    # the reader opens a result store too (drag and drop of the folder)
    opened = viewer.open(str(store), plugin="napari-biomedparse")
    kinds = sorted(lay._type_string for lay in opened)
    assert kinds == ["labels", "labels", "shapes"]
    assert any(lay.name.startswith("cmu_small_region instances") for lay in opened)
    for lay in opened:
        viewer.layers.remove(lay)
    # export the full set through the writer
    out = tmp_path / "cells.geojson"
    from napari_biomedparse._napari._writer import write_labels

    written = write_labels(str(out), inst.data, inst._get_state())
    gj = json.loads(Path(written[0]).read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(res.table)


def test_slide_widget_on_a_dask_scheduler_equals_the_local_run(
    make_napari_viewer, qtbot, plugin_model, tmp_path
):
    from distributed import LocalCluster

    from napari_biomedparse._napari._widgets.slide import SlideWidget
    from napari_biomedparse.slide.engine import SlideResult

    viewer = make_napari_viewer()
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    w = SlideWidget(viewer)
    w.mpp.value = 2.0  # 740 x 555 px: a handful of tiles
    w.tile_size.value = 256
    w.overlap.value = 32
    w.overwrite.value = True
    stores = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        for name, address in (("local", ""), ("cluster", cluster.scheduler_address)):
            w.output_folder.value = str(tmp_path / name)
            w.scheduler.value = address
            w.start()
            _wait(qtbot, w)
            assert w.run.last_outcome == "ok", w.run.last_error
            stores.append(SlideResult.open(tmp_path / name / "cmu_small_region.biomedparse.zarr"))
    local, remote = stores
    assert local.summary["tiles_processed"] > 1
    np.testing.assert_array_equal(np.asarray(remote.probs), np.asarray(local.probs))
    assert len(remote.table) == len(local.table) > 0


def test_unreachable_scheduler_is_a_clear_error():
    from napari_biomedparse.slide.distributed import make_client

    with pytest.raises(ConnectionError, match="no dask scheduler answers at 'tcp://127.0.0.1:9'"):
        make_client("tcp://127.0.0.1:9", timeout="2s")


def test_open_results_bad_path_is_a_notification(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_biomedparse._napari._widgets.slide import SlideWidget

    viewer = make_napari_viewer()
    w = SlideWidget(viewer)
    w.results.value = str(tmp_path / "nothing.biomedparse.zarr")
    n0 = len(notification_manager.records)
    assert w.open_results() is None
    rec = notification_manager.records[n0:]
    assert rec and "earlier run" in rec[-1].message and len(viewer.layers) == 0


def _labels_layer():
    from napari.layers import Labels

    labels = np.zeros((40, 40), np.int32)
    labels[2:6, 3:9] = 1  # 4 x 6
    labels[20:30, 20:25] = 2  # 10 x 5
    feats = pd.DataFrame(
        {
            "index": [1, 2],
            "class": ["neoplastic cells", "inflammatory cells"],
            "score": [0.9, 0.7],
            "p_value": [0.3, 0.2],
            "area": [24, 50],
            "centroid_y": [3.5, 24.5],
            "centroid_x": [5.5, 22.0],
        }
    )
    return Labels(
        labels,
        features=feats,
        scale=(2.0, 2.0),
        translate=(100.0, 0.0),
        metadata={"biomedparse": {"image_scale": (1.0, 1.0), "image_translate": (0.0, 0.0)}},
    )


def test_writer_labels_geojson_and_csv(tmp_path):
    from napari_biomedparse._napari._writer import write_labels

    layer = _labels_layer()
    out = write_labels(str(tmp_path / "x.geojson"), layer.data, layer._get_state())
    gj = json.loads(Path(out[0]).read_text())
    feats = gj["features"]
    assert len(feats) == 2
    f0 = feats[0]["properties"]
    assert f0["classification"]["name"] == "neoplastic cells"
    assert f0["measurements"]["Score"] == pytest.approx(0.9)
    ring = np.asarray(feats[0]["geometry"]["coordinates"][0])  # [x, y] image pixels
    # label 1 covers data rows 2..5, cols 3..8 -> image pixels (x2 scale, +100 in y)
    # pixel edges: data rows 1.5..5.5 -> world 103..111 (centre convention) -> +0.5 (QuPath)
    assert ring[:, 1].min() == pytest.approx(103.5)
    assert ring[:, 1].max() == pytest.approx(111.5)
    assert ring[:, 0].min() == pytest.approx(5.5) and ring[:, 0].max() == pytest.approx(17.5)
    assert np.allclose(ring[0], ring[-1])
    out = write_labels(str(tmp_path / "x.csv"), layer.data, layer._get_state())
    table = pd.read_csv(out[0])
    assert list(table["label"]) == [1, 2]
    assert table["class"].tolist() == ["neoplastic cells", "inflammatory cells"]
    # centroids in image pixels
    assert table["centroid_y"].tolist() == pytest.approx([100 + 2 * 3.5, 100 + 2 * 24.5])
    with pytest.raises(ValueError, match="geojson"):
        write_labels(str(tmp_path / "x.txt"), layer.data, layer._get_state())


def test_writer_shapes_and_napari_save(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    boxes = [
        np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float),
        np.array([[20, 20], [20, 30], [30, 25]], float),
    ]
    viewer.add_shapes(
        boxes,
        shape_type=["rectangle", "polygon"],
        features=pd.DataFrame({"class": ["tumor", "stroma"], "score": [0.5, 0.6]}),
        name="boxes",
    )
    path = tmp_path / "shapes.geojson"
    written = viewer.layers["boxes"].save(str(path), plugin="napari-biomedparse")
    assert written and Path(written[0]).exists()
    gj = json.loads(path.read_text())
    names = [f["properties"]["classification"]["name"] for f in gj["features"]]
    assert names == ["tumor", "stroma"]
    viewer.add_labels(_labels_layer().data, features=_labels_layer().features, name="cells")
    csv = tmp_path / "cells.csv"
    viewer.layers["cells"].save(str(csv), plugin="napari-biomedparse")
    assert pd.read_csv(csv)["class"].tolist() == ["neoplastic cells", "inflammatory cells"]


def test_slide_cancel_mid_run_leaves_viewer_unchanged(
    make_napari_viewer, qtbot, plugin_model, tmp_path
):
    from napari_biomedparse._napari._widgets.slide import SlideWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    w = SlideWidget(viewer)
    w.mpp.value = 1.0
    w.output_folder.value = str(tmp_path)
    seen = []

    def on_progress(done, total, message):
        seen.append((done, total, message))
        if "tile" in message.lower() and done >= 1:
            w.run.cancel()  # mid-run: some tiles done, not all

    w.run.progressed.connect(on_progress)
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "cancelled"
    assert [lay.name for lay in viewer.layers] == ["cmu_small_region"]
    out = tmp_path / "cmu_small_region.biomedparse.zarr"
    assert not out.exists()  # no half-made result
    assert Path(str(out) + ".partial").exists()  # finished tiles kept for a resume
    tiles = [(d, t) for d, t, m in seen if "tile" in m.lower()]
    assert tiles and tiles[-1][0] < tiles[-1][1]


def test_slide_layers_on_an_in_memory_image_in_microns(bundled_predictor, tmp_path):
    """Without a viewer: an array (or layer) with a scale in microns goes through the slide
    engine, and the results carry the same transform and units."""
    from napari.layers import Image, Layer
    from skimage.io import imread

    from napari_biomedparse._napari import slide_layers

    rgb = imread(SAMPLES / "hgsc_nest.jpg")[:512, :512]
    layer = Image(rgb, name="crop", scale=(0.25, 0.25), translate=(5.0, 7.0), units="um")
    out = slide_layers(
        layer, tmp_path / "crop.biomedparse.zarr", modality="pathology", model=bundled_predictor
    )
    kinds = [kind for _, _, kind in out]
    assert kinds[:2] == ["labels", "labels"]
    labels = Layer.create(*out[0])
    assert labels.name == "crop instances"
    # processed at 0.5 um/px = 2 image pixels per output pixel, centred on them
    np.testing.assert_allclose(labels.scale, [0.5, 0.5])
    np.testing.assert_allclose(labels.translate, [5.0 + 0.125, 7.0 + 0.125])
    assert str(labels.units[0]) == "micrometer"
    lo, hi = np.asarray(labels.extent.world)
    ilo, ihi = np.asarray(layer.extent.world)[:, :2]
    np.testing.assert_allclose(lo, ilo, atol=0.5)
    np.testing.assert_allclose(hi, ihi, atol=0.5)
