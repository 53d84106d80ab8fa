"""The widgets in a real napari viewer (under Xvfb): runs in thread workers, layers and
features, re-running, cancelling, errors as notifications, remembered settings."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imread

from napari_biomedparse._napari._widgets._common import ADD, REPLACE

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("plugin_settings")]

from pathlib import Path  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "src" / "napari_biomedparse" / "data"
FEATURES = {"index", "class", "score", "p_value", "area", "centroid_y", "centroid_x"}


@pytest.fixture
def he_crop():
    return imread(SAMPLES / "hgsc_nest.jpg")[200:456, 300:556]


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.run.running, timeout=timeout)
    assert widget.run.last_outcome is not None


def _hidden(widget) -> bool:
    return widget.native.isHidden()


def _errors():
    from napari.utils.notifications import notification_manager

    return [r for r in notification_manager.records if str(r.severity) == "error"]


def _check_instances(layer):
    labels = np.asarray(layer.data)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    feats = layer.features
    assert FEATURES <= set(feats.columns)
    assert sorted(feats["index"]) == list(ids)
    areas = dict(zip(feats["index"], feats["area"]))
    for i in ids[:5]:
        assert areas[i] == np.count_nonzero(labels == i)


def test_segment_instances_rerun_replace_and_add(make_napari_viewer, qtbot, plugin_model, he_crop):
    from napari_biomedparse._napari._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he", scale=(0.5, 0.5), translate=(10, 20))
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.image.value.name == "he" and _hidden(w.scope)  # small image: no "whole image"
    assert "neoplastic cells" in w.vocabulary.choices  # the modality's vocabulary is offered
    w.vocabulary.value = "neoplastic cells"
    w.add_prompt.clicked.emit()
    w.prompts.value = w.prompts.value + ", my free text target"
    assert w.prompt_list == ["neoplastic cells", "my free text target"]
    w.existence_test.value = False
    w.output.value = "instances"
    worker = w.start()
    assert worker is not None
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    names = [lay.name for lay in viewer.layers]
    assert "he neoplastic cells instances" in names
    assert "he my free text target instances" in names
    shapes = [lay for lay in viewer.layers if lay._type_string == "shapes"]
    assert len(shapes) == 1 and shapes[0].name == "he boxes"  # default: boxes
    assert set(shapes[0].shape_type) <= {"rectangle"}
    inst = viewer.layers["he neoplastic cells instances"]
    _check_instances(inst)
    # the results view counts the objects of both prompts' layers; its table shows either
    other = viewer.layers["he my free text target instances"]
    assert sum(w.results.counts_by_class.values()) == len(inst.features) + len(other.features)
    assert w.results.which.choices == (inst.name, other.name) and not _hidden(w.results.which)
    w.results.which.value = other.name
    assert w.results.labels_layer is other and len(w.results._rows) == len(other.features)
    assert set(inst.features["class"].astype(str)) <= {"neoplastic cells"}
    # aligned with the image
    np.testing.assert_allclose(inst.scale, [0.5, 0.5])
    np.testing.assert_allclose(inst.translate, [10, 20])
    np.testing.assert_allclose(shapes[0].scale, [0.5, 0.5])
    assert (
        len(shapes[0].data)
        == len(viewer.layers["he my free text target instances"].features) + len(inst.features)
        or shapes[0].metadata["biomedparse"]["note"]
    )
    n = len(viewer.layers)

    # re-run, replacing: the same layers, no duplicates
    w.on_rerun.value = REPLACE
    w.start()
    _wait(qtbot, w)
    assert len(viewer.layers) == n
    # re-run, adding: a second set
    w.on_rerun.value = ADD
    w.start()
    _wait(qtbot, w)
    assert len(viewer.layers) == 2 * n - 1


def test_segment_masks_and_probabilities(make_napari_viewer, qtbot, plugin_model, he_crop):
    from napari_biomedparse._napari._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    w = SegmentWidget(viewer)
    w.prompts.value = "neoplastic cells"
    w.existence_test.value = True
    w.output.value = "masks"
    w.start()
    _wait(qtbot, w)
    mask = viewer.layers["he neoplastic cells mask"]
    assert mask._type_string == "labels" and mask.data.shape == he_crop.shape[:2]
    assert {"class", "p_value", "present"} <= set(mask.features.columns)
    assert 0 <= float(mask.features["p_value"][0]) <= 1
    w.output.value = "probabilities"
    w.start()
    _wait(qtbot, w)
    prob = viewer.layers["he neoplastic cells probability"]
    assert prob.data.dtype == np.float32 and prob.data.shape == he_crop.shape[:2]
    assert 0 <= prob.data.min() and prob.data.max() <= 1


def test_recognize_all(make_napari_viewer, qtbot, plugin_model, he_crop):
    from napari_biomedparse._napari._widgets.recognize import RecognizeWidget

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    w = RecognizeWidget(viewer)
    assert "neoplastic cells" in w.targets.value
    w.p_threshold.value = 0.0001
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    inst = viewer.layers["he instances"]
    classes = viewer.layers["he classes"]
    outlines = viewer.layers["he outlines"]  # default: outlines
    assert len(outlines.data) == len(inst.features) and set(outlines.shape_type) == {"polygon"}
    assert list(outlines.text.values[:3]) == list(outlines.features["class"].astype(str)[:3])
    _check_instances(inst)
    assert set(classes.features["class"]) >= {"neoplastic cells", "inflammatory cells"}
    assert "p_value" in classes.features.columns
    # the nuclei no class claims are objects of the explicit unclassified class, with a score
    from napari_biomedparse.inference.recognition import UNCLASSIFIED

    assert "nuclei" in w.targets.value  # the loaded model's vocabulary, in full
    assert UNCLASSIFIED in set(classes.features["class"])
    unclassified = inst.features[inst.features["class"].astype(str) == UNCLASSIFIED]
    assert len(unclassified) > 0 and unclassified["score"].between(0, 1).all()
    # every instance is coloured with its class colour
    from napari_biomedparse._napari._layers import class_color

    for idx, cls in list(zip(inst.features["index"], inst.features["class"].astype(str)))[:3]:
        np.testing.assert_allclose(inst.colormap.map(np.array([idx]))[0], class_color(cls))
    # class-map values are 1 + the index of class_names
    vals = np.unique(classes.data)
    assert vals.min() >= 0 and vals.max() <= len(classes.features)


def test_cancel_leaves_viewer_unchanged(make_napari_viewer, qtbot, plugin_model, he_crop):
    from napari_biomedparse._napari._widgets.recognize import RecognizeWidget

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    w = RecognizeWidget(viewer)
    before = [lay.name for lay in viewer.layers]
    # cancel as soon as the run reports progress (i.e. mid-run)
    w.run.progressed.connect(lambda *a: w.run.cancel())
    w.start()
    assert w.run.running and w.run.cancel_button.enabled
    _wait(qtbot, w)
    assert w.run.last_outcome == "cancelled"
    assert [lay.name for lay in viewer.layers] == before
    assert w.run.run_button.enabled and not w.run.cancel_button.enabled


def test_viewer_stays_responsive_during_run(make_napari_viewer, qtbot, plugin_model, he_crop):
    """The GUI thread keeps processing events while the worker runs."""
    from qtpy.QtCore import QTimer

    from napari_biomedparse._napari._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    w = SegmentWidget(viewer)
    w.prompts.value = "neoplastic cells"
    w.output.value = "probabilities"
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(w.run.running))
    timer.start(10)
    w.start()
    _wait(qtbot, w)
    timer.stop()
    assert sum(ticks) >= 3  # the event loop ran many times while the job was running


def test_bad_checkpoint_gives_notification(make_napari_viewer, qtbot, plugin_model_state, tmp_path):
    from napari_biomedparse._napari._widgets.model import ModelWidget

    viewer = make_napari_viewer()
    w = ModelWidget(viewer)
    w.source.value = "checkpoint"
    assert not _hidden(w.checkpoint)
    w.checkpoint.value = str(tmp_path / "missing.pt")
    n0 = len(_errors())
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "error"
    errs = _errors()[n0:]
    assert errs and "missing.pt" in errs[-1].message
    assert "Model widget" in errs[-1].message  # says what to do
    assert plugin_model_state.loaded_spec is None
    # a corrupt file: also a notification, not a traceback
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    w.checkpoint.value = str(bad)
    n1 = len(_errors())
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "error" and len(_errors()) == n1 + 1
    assert plugin_model_state.loaded_spec is None


def test_settings_are_remembered(make_napari_viewer, plugin_settings):
    from napari_biomedparse._napari._widgets.model import ModelWidget
    from napari_biomedparse._napari._widgets.segment import SegmentWidget
    from napari_biomedparse._napari._widgets.slide import SlideWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    w.modality.value = "CT"
    assert not _hidden(w.site) and "abdomen" in w.site.choices
    w.site.value = "liver"
    w.prompts.value = "tumor"
    w.threshold.value = 0.3
    w.existence_test.value = False
    w.output.value = "masks"
    s = SlideWidget(viewer)
    s.tile_size.value = 512  # not remembered: it follows the model and the modality
    s.output_folder.value = str(plugin_settings / "out")
    m = ModelWidget(viewer)
    assert _hidden(m.checkpoint)
    m.device.value = "cpu"
    assert (plugin_settings / "widgets.json").exists()
    w2, s2, m2 = SegmentWidget(viewer), SlideWidget(viewer), ModelWidget(viewer)
    assert (w2.modality.value, w2.site.value, w2.prompts.value) == ("CT", "liver", "tumor")
    assert w2.threshold.value == pytest.approx(0.3)
    assert w2.existence_test.value is False and w2.output.value == "masks"
    assert "vessel" in w2.vocabulary.choices  # CT-Liver targets
    assert s2.tile_size.value == 256 and str(s2.output_folder.value).endswith("out")
    assert m2.device.value == "cpu"
    for x in (w, s, m, w2, s2, m2):
        x.native.deleteLater()


def test_current_view_on_a_slide(make_napari_viewer, qtbot, plugin_model):
    """On a multiscale layer, 'current view' segments the region on screen at the level drawn,
    and the result lands on that region of the slide."""
    from napari_biomedparse._napari._widgets.segment import CURRENT_VIEW, SegmentWidget

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    slide = viewer.layers[0]
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert not _hidden(w.scope) and w.scope.value == CURRENT_VIEW
    # zoom onto the top-left quarter of the slide (world units: microns)
    viewer.camera.center = (300.0, 250.0)
    viewer.camera.zoom = viewer.camera.zoom * 4
    qtbot.wait(200)
    corners = np.asarray(slide.corner_pixels)
    assert corners[1, 0] < slide.data[slide.data_level].shape[0] - 1  # only part is on screen
    w.prompts.value = "neoplastic cells"
    w.existence_test.value = False
    w.output.value = "probabilities"
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    prob = viewer.layers["cmu_small_region neoplastic cells probability"]
    lo, hi = np.asarray(prob.extent.world)
    img_lo, img_hi = np.asarray(slide.extent.world)[:, :2]
    assert (lo >= img_lo - 1).all() and (hi <= img_hi + 1).all()
    assert (hi - lo < (img_hi - img_lo) * 0.9).any()  # a region, not the whole slide
    # the region covers the point at the centre of the view
    assert (lo <= np.array([300.0, 250.0])).all() and (hi >= np.array([300.0, 250.0])).all()


def test_model_widget_loads_a_checkpoint_in_the_background(
    make_napari_viewer, qtbot, plugin_model_state, bundled_predictor, tmp_path
):
    from napari_biomedparse._napari._widgets.model import ModelWidget
    from napari_biomedparse.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(bundled_predictor.model, tmp_path / "mine.safetensors")
    viewer = make_napari_viewer()
    w = ModelWidget(viewer)
    w.source.value = "checkpoint"
    w.checkpoint.value = str(ckpt)
    w.device.value = "cpu"
    steps = []
    w.run.progressed.connect(lambda d, t, m: steps.append(m))
    w.start()
    assert w.run.running  # loading does not block the GUI thread
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    assert any("loading" in m for m in steps) and "model ready" in steps
    spec = plugin_model_state.loaded_spec  # the package's one ModelSpec
    from napari_biomedparse.inference.loading import ModelSpec

    assert isinstance(spec, ModelSpec) and spec.kind == "path" and spec.source == str(ckpt)
    assert "mine.safetensors" in w.loaded.value
    pred = plugin_model_state.predictor()  # already loaded: no second load
    # a model loaded elsewhere (another widget's first run, a script) shows up too
    plugin_model_state.use(bundled_predictor, name="/x/other.safetensors", device="cpu")
    qtbot.waitUntil(lambda: "other.safetensors" in w.loaded.value, timeout=5000)
    assert pred.model.config.input_size == bundled_predictor.model.config.input_size


def test_segment_whole_image_runs_the_slide_engine(
    make_napari_viewer, qtbot, plugin_model, he_crop, tmp_path
):
    """On a multiscale layer, 'whole image' goes through the slide engine; its store lands in
    the Slide widget's output folder and the labels are multiscale-ready dask arrays."""
    import dask.array as da

    from napari_biomedparse._napari._settings import save_settings
    from napari_biomedparse._napari._widgets.segment import WHOLE_IMAGE, SegmentWidget

    save_settings("slide", {"output_folder": str(tmp_path)})
    viewer = make_napari_viewer()
    pyramid = [he_crop, he_crop[::2, ::2]]
    viewer.add_image(pyramid, name="pyr", multiscale=True, scale=(0.25, 0.25), units="um")
    w = SegmentWidget(viewer)
    assert not _hidden(w.scope)
    w.scope.value = WHOLE_IMAGE
    w.prompts.value = "neoplastic cells"
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    assert (tmp_path / "pyr.segment.biomedparse.zarr").exists()
    inst = viewer.layers["pyr instances"]
    assert isinstance(inst.data if not inst.multiscale else inst.data[0], da.Array)
    assert str(inst.units[0]) == "micrometer"
    np.testing.assert_allclose(inst.scale, [0.5, 0.5])  # the engine's 0.5 um/px
    assert set(inst.features["class"].astype(str)) <= {"neoplastic cells"}


def test_unavailable_device_says_what_to_do():
    import torch

    from napari_biomedparse._napari._model_state import ModelState, model_spec

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from napari_biomedparse.errors import InvalidInputError

    state = ModelState()
    with pytest.raises(InvalidInputError, match="use the device cpu or auto"):
        state.load(model_spec(device="cuda"))
    assert state.loaded_spec is None


WIDGETS = ("Segment", "Recognize all", "Slide processing", "Model", "Fine-tune")


def test_every_widget_docks_through_the_manifest(make_napari_viewer, plugin_model_state, he_crop):
    """Each manifest widget docks; layer choices are magicgui's napari-aware ones and follow
    the viewer; the vocabulary is the configured model's (read before it is loaded)."""
    from napari.layers import Image

    viewer = make_napari_viewer()
    widgets = {
        name: viewer.window.add_plugin_dock_widget("napari-biomedparse", name)[1]
        for name in WIDGETS
    }
    assert plugin_model_state.loaded_spec is None  # docking loads nothing
    rec, seg = widgets["Recognize all"], widgets["Segment"]
    assert rec.image.annotation is Image and rec.image.value is None
    layer = viewer.add_image(he_crop, name="he")
    assert rec.image.value is layer and seg.image.value is layer
    layer.name = "renamed"
    assert [lay.name for lay in rec.image.choices] == ["renamed"]
    # the bundled model's pathology vocabulary, in full; not the official list
    from napari_biomedparse.hub import DEFAULT_WEIGHTS
    from napari_biomedparse.model.checkpoint import read_checkpoint_metadata

    expected = read_checkpoint_metadata(DEFAULT_WEIGHTS)["vocabulary"]["pathology"]
    assert rec.targets.value.split(", ") == list(expected)
    assert "epithelial cells" not in rec.targets.value
    assert "epithelial cells" not in seg.vocabulary.choices
    viewer.layers.remove(layer)
    assert rec.image.value is None


def test_progress_in_activity_dock_and_widget_then_results_view(
    make_napari_viewer, qtbot, plugin_model, he_crop, tmp_path
):
    """A run reports progress to napari's progress model (the activity dock) and to the
    widget; the results view shows per-class counts and links table rows to the canvas;
    one click exports GeoJSON and CSV."""
    import json

    import pandas as pd
    from napari.utils import progress

    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-biomedparse", "Recognize all")
    w.p_threshold.value = 0.0001
    in_dock, in_widget = [], []

    def on_progress(done, total, message):
        in_widget.append((done, total, message, w.run.progress_bar.value))
        in_dock.append([(p.desc, p.n, p.total) for p in progress._all_instances])

    w.run.progressed.connect(on_progress)
    w.start()
    assert any(p is w.run.pbar for p in progress._all_instances)  # listed while it runs
    _wait(qtbot, w)
    assert w.run.last_outcome == "ok", w.run.last_error
    assert in_widget and in_widget[-1][0] == in_widget[-1][1]  # the last report: all done
    assert all(any(d.startswith("Recognize all") for d, _, _ in entries) for entries in in_dock)
    assert w.run.pbar is None and not any(
        str(p.desc).startswith("Recognize all") for p in progress._all_instances
    )  # closed when the run ended
    # results view: counts of the last run = the instance layer's features
    inst = viewer.layers["he instances"]
    expected = inst.features["class"].astype(str).value_counts().to_dict()
    assert expected and w.results.counts_by_class == expected
    for name, n in expected.items():
        assert f"{name} {n}" in w.results.counts.value
    # visibility: instances shown as outlines (the tissue stays visible under them), the
    # Shapes outlines (the same outlines, with the class text) and the class map hidden
    assert inst.visible and inst.contour > 0 and inst.opacity == 1.0
    assert not viewer.layers["he outlines"].visible
    assert not viewer.layers["he classes"].visible
    assert viewer.layers.selection.active is inst  # its controls (contour) are shown
    # the counts are a legend: each class in its colour of the one colour table
    from napari_biomedparse.inference.objects import class_color

    for name in expected:
        assert "#{:02x}{:02x}{:02x}".format(*class_color(name)) in w.results.counts.value
    # table row -> canvas
    row = 2
    label = int(w.results._rows[row])
    w.results.select_row(row)
    assert inst.selected_label == label and inst.show_selected_label
    shapes = viewer.layers["he outlines"]
    assert [int(shapes.features["index"][i]) for i in shapes.selected_data] == [label]
    # canvas -> table (an object picked in the canvas)
    other = int(w.results._rows[0])
    inst.show_selected_label = False
    inst.selected_label = other
    assert w.results.selected_row == 0
    # one-click export of the current result
    w.results.folder.value = str(tmp_path)
    (geo,) = w.results.export(".geojson")
    (csv,) = w.results.export(".csv")
    gj = json.loads(open(geo).read())
    assert len(gj["features"]) == len(inst.features) == len(pd.read_csv(csv))


def test_cancel_from_the_activity_dock(make_napari_viewer, qtbot, plugin_model, he_crop):
    """The activity dock's cancel (napari's cancelable_progress) cancels the run: no layer."""
    viewer = make_napari_viewer()
    viewer.add_image(he_crop, name="he")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-biomedparse", "Segment")
    w.prompts.value = "neoplastic cells"
    before = [lay.name for lay in viewer.layers]
    w.run.progressed.connect(lambda *a: w.run.pbar is not None and w.run.pbar.cancel())
    w.start()
    _wait(qtbot, w)
    assert w.run.last_outcome == "cancelled"
    assert [lay.name for lay in viewer.layers] == before
    assert w.results.labels_layer is None  # nothing shown as a result


def test_run_on_choice_renders_on_a_slide(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-biomedparse", "cmu_small_region")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-biomedparse", "Recognize all")
    qtbot.wait(50)
    assert w.scope.native.isVisible()
    assert w.scope.native.currentText() == "current view" and w.scope.native.count() == 2
    assert w.scope.native.sizeHint().height() > 10


def test_docks_leave_the_canvas_most_of_a_small_window(make_napari_viewer, qtbot):
    """In an 853 px window the plugin's docks share one tabbed dock no wider than
    ``dock_width_limit``, their forms fit it (no sideways scrolling) and the canvas stays the
    widest part; a long status line is elided to the dock's width on one line."""
    from qtpy.QtWidgets import QAbstractSpinBox, QApplication

    from napari_biomedparse._napari._widgets._common import DOCK_MIN_WIDTH, dock_width_limit

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(853, 640)
    docks = {
        name: viewer.window.add_plugin_dock_widget("napari-biomedparse", name)
        for name in ("Recognize all", "Model", "Segment", "Slide processing")
    }
    qtbot.wait(200)
    QApplication.processEvents()
    first = docks["Recognize all"][0]
    assert {d.windowTitle() for d in window.tabifiedDockWidgets(first)} == {
        docks[n][0].windowTitle() for n in ("Model", "Segment", "Slide processing")
    }
    limit = dock_width_limit(window.width())
    assert DOCK_MIN_WIDTH <= limit < 853 / 4
    canvas = viewer.window._qt_viewer.canvas.native.width()
    for name, (dock, widget) in docks.items():
        area = widget.native
        assert area.maximumWidth() == limit, name
        form = area.widget()
        # the form fits the dock beside the vertical scroll bar: nothing is cut at the right
        room = limit - 2 * area.frameWidth() - area.verticalScrollBar().sizeHint().width()
        assert form.minimumSizeHint().width() <= room, name
        assert dock.width() <= limit + 10 and canvas > 1.5 * dock.width(), name
        for spin in area.findChildren(QAbstractSpinBox):  # its number is readable
            edit = spin.lineEdit()
            assert edit.width() >= edit.fontMetrics().horizontalAdvance(spin.text()), name
    # a wrapped text takes the dock's width (not one word per line)
    counts = docks["Slide processing"][1].result_view.counts.native
    assert counts.width() > 0.8 * docks["Slide processing"][1].native.widget().width()
    # a finished run's status line: one line, elided to the label, the whole text kept
    run = docks["Recognize all"][1].run
    text = "Recognize all: done in 89.6 s, and a message longer than the dock is wide"
    run._status_text.set(text)
    label = run.status.native
    assert run.status_text == text and label.toolTip() == text
    shown = label.text()
    assert shown != text and shown.endswith("…")
    assert label.fontMetrics().horizontalAdvance(shown) <= label.contentsRect().width()
    assert label.sizeHint().height() < 2 * label.fontMetrics().lineSpacing()


def test_numbers_readable_in_a_wide_window(make_napari_viewer, qtbot):
    """In a 1280 px window the dock is wider than the 'no +/- buttons' limit: spin boxes keep
    the buttons they were made with, and every number is readable."""
    from qtpy.QtWidgets import QAbstractSpinBox

    from napari_biomedparse._napari._widgets._common import SPIN_BUTTONS_MIN_DOCK

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    qtbot.wait(100)
    dock, seg = viewer.window.add_plugin_dock_widget("napari-biomedparse", "Segment")
    qtbot.wait(200)
    assert seg.native.width() >= SPIN_BUTTONS_MIN_DOCK
    assert seg.p_threshold.native.buttonSymbols() != QAbstractSpinBox.ButtonSymbols.NoButtons
    for spin in seg.native.findChildren(QAbstractSpinBox):
        edit = spin.lineEdit()
        assert edit.width() >= edit.fontMetrics().horizontalAdvance(spin.text()), spin.text()
