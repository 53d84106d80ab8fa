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
