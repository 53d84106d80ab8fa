"""Shared test fixtures (plugin-focused; nothing here runs unless a test asks for it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "src" / "napari_biomedparse" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def plugin_settings(tmp_path, monkeypatch):
    """Widget settings go to a fresh folder (never the user's ~/.config)."""
    cfg = tmp_path / "config"
    monkeypatch.setenv("NAPARI_BIOMEDPARSE_CONFIG_DIR", str(cfg))
    return cfg


@pytest.fixture
def plugin_model_state():
    """The plugin's shared model state, reset before and after the test."""
    from napari_biomedparse._napari._model_state import MODEL

    MODEL.clear()
    yield MODEL
    MODEL.clear()


def _tiny_predictor():
    import dataclasses

    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

    cfg = BiomedParseConfig.from_reference_json(TEST_DATA / "v1_tiny" / "config.json")
    model = build_model(dataclasses.replace(cfg, input_size=256))  # fast on CPU
    load_checkpoint(model, TEST_DATA / "v1_tiny" / "state_dict.pt")
    return Predictor(model, device="cpu")


@pytest.fixture(scope="session")
def bundled_predictor():
    """A Predictor of the bundled default model (the tiny official-architecture fixture at
    256 px when the package has no bundled weights yet)."""
    try:
        from napari_biomedparse.hub import load_model
        from napari_biomedparse.inference.predictor import Predictor

        return Predictor(load_model("default"), device="cpu")
    except (ImportError, FileNotFoundError, OSError):
        return _tiny_predictor()


@pytest.fixture
def plugin_model(plugin_model_state, bundled_predictor):
    """The plugin's current model set to ``bundled_predictor``."""
    plugin_model_state.use(bundled_predictor, name="default")
    return plugin_model_state


# --------------------------------------------------------------------------- GUI tests


def _no_display_reason() -> str | None:
    """Why Qt cannot open a window here (None when it can).

    Linux without ``DISPLAY`` / ``WAYLAND_DISPLAY`` has nowhere to draw: Qt would abort the
    whole run (``Fatal Python error: Aborted``). pytest-xvfb, when installed and Xvfb is
    available, sets ``DISPLAY`` before collection, so this only triggers when neither is.
    ``QT_QPA_PLATFORM`` set by the user (e.g. ``offscreen``) is respected as their choice.
    """
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if os.environ.get("QT_QPA_PLATFORM"):
        return None
    return (
        "no display: DISPLAY is unset and no Xvfb was started. Install Xvfb "
        "(apt-get install xvfb libgl1-mesa-dri) and pytest-xvfb (pip install -e '.[testing]'), "
        "or run under 'xvfb-run -a python -m pytest'"
    )


def pytest_collection_modifyitems(config, items):
    reason = _no_display_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)
