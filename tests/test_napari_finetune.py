"""Fine-tune widget in a real napari viewer: Image + Labels layers + prompts -> a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("plugin_settings")]

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = "1: connective tissue cells, 2: inflammatory cells, 3: neoplastic cells"


@pytest.fixture
def annotated():
    img = imread(ROOT / "src/napari_biomedparse/data/hgsc_nest.jpg")[0:256, 0:256]
    typ = np.load(ROOT / "tests/data/hgsc_nest_type_mask.npz")["nuc_raster"][0:256, 0:256]
    return img, typ.astype(np.int32)


def _errors():
    from napari.utils.notifications import notification_manager

    return [r for r in notification_manager.records if str(r.severity) == "error"]


def _widget(make_napari_viewer, annotated, tmp_path):
    from napari_biomedparse._napari.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer()
    img, typ = annotated
    viewer.add_image(img, name="he")
    viewer.add_labels(typ, name="cells")
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.prompts.value = PROMPTS
    w.steps.value = 3
    w.batch_size.value = 2
    w.device.value = "cpu"
    w.output.value = tmp_path / "tuned.safetensors"
    return viewer, w


def test_finetune_from_layers(make_napari_viewer, qtbot, plugin_model_state, annotated, tmp_path):
    from napari_biomedparse.hub import load_model

    viewer, w = _widget(make_napari_viewer, annotated, tmp_path)
    assert w.image.value.name == "he" and w.labels_layer.value.name == "cells"
    n_layers = len(viewer.layers)
    n_errors = len(_errors())  # notifications of earlier tests stay in napari's records
    w.start()
    assert w.run.running
    qtbot.waitUntil(lambda: not w.run.running, timeout=300_000)
    assert w.run.last_outcome == "ok", w.run.last_error
    res = w.last_result
    assert res.steps == 3 and not res.cancelled
    out = tmp_path / "tuned.safetensors"
    assert res.path == out and out.exists()
    # validated on the held-out quarter, which training never saw
    assert set(res.val_dice) == {
        "connective tissue cells",
        "inflammatory cells",
        "neoplastic cells",
    }
    assert "held-out Dice" in w.result.value
    # a complete drop-in checkpoint, now also the plugin's current model
    m = load_model(str(out))
    assert m.metadata["vocabulary"]["pathology"][:3] == [
        "connective tissue cells",
        "inflammatory cells",
        "neoplastic cells",
    ]
    assert plugin_model_state.predictor().model is res.model
    assert len(viewer.layers) == n_layers  # training adds no layers
    assert not _errors()[n_errors:]


def test_finetune_cancel_writes_nothing(
    make_napari_viewer, qtbot, plugin_model, annotated, tmp_path
):
    """Starting from the plugin's current model and cancelling: no file, current model intact."""
    from napari_biomedparse._napari.finetune_widget import START_CURRENT

    current = plugin_model.predictor().model
    before = {k: v.clone() for k, v in current.state_dict().items()}
    viewer, w = _widget(make_napari_viewer, annotated, tmp_path)
    w.start_from.value = START_CURRENT
    w.steps.value = 500
    w.run.progressed.connect(lambda *a: w.run.cancel())
    w.start()
    qtbot.waitUntil(lambda: not w.run.running, timeout=300_000)
    assert w.run.last_outcome == "cancelled"
    assert not (tmp_path / "tuned.safetensors").exists()
    assert w.run.run_button.enabled
    assert plugin_model.predictor().model is current  # still the current model, unchanged
    after = current.state_dict()
    assert all((after[k] == v).all() for k, v in before.items())


def test_finetune_bad_inputs_are_notifications(
    make_napari_viewer, qtbot, plugin_model_state, annotated, tmp_path
):
    viewer, w = _widget(make_napari_viewer, annotated, tmp_path)
    viewer.add_labels(np.zeros((100, 100), np.int32), name="small")
    w.labels_layer.value = viewer.layers["small"]
    assert w.start() is None and not w.run.running
    assert any("size" in str(r.message) or "empty" in str(r.message) for r in _errors())
    w.labels_layer.value = viewer.layers["cells"]
    w.prompts.value = "1: connective tissue cells"  # values 2 and 3 have no prompt
    assert w.start() is None and not w.run.running
    assert any("no prompt" in str(r.message) for r in _errors())
