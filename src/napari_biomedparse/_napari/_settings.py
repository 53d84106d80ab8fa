"""Widget settings remembered between sessions (a small JSON file per user).

The file is ``$NAPARI_BIOMEDPARSE_CONFIG_DIR/widgets.json`` when that variable is set, else
``<user config dir>/napari-biomedparse/widgets.json``. Each widget stores a flat dict of its
simple values (str / float / int / bool) under its own key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def settings_path() -> Path:
    env = os.environ.get("NAPARI_BIOMEDPARSE_CONFIG_DIR")
    if env:
        base = Path(env)
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        base = Path(xdg) / "napari-biomedparse"
    return base / "widgets.json"


def load_settings(key: str) -> dict[str, Any]:
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    value = data.get(key, {})
    return value if isinstance(value, dict) else {}


def save_settings(key: str, values: dict[str, Any]) -> None:
    path = settings_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = {k: v for k, v in values.items() if isinstance(v, str | int | float | bool)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:  # read-only home: settings are a convenience, never an error
        pass


def restore(widgets: dict[str, Any], key: str) -> None:
    """Set each magicgui widget in ``widgets`` (name -> widget) from the saved values."""
    saved = load_settings(key)
    for name, w in widgets.items():
        if name not in saved:
            continue
        value = saved[name]
        try:
            choices = getattr(w, "choices", None)
            if choices is not None and value not in choices:
                continue
            w.value = value
        except Exception:  # noqa: BLE001 - a stale setting must never break the widget
            continue


def remember(widgets: dict[str, Any], key: str) -> None:
    """Save the widgets' values now and whenever one changes."""

    def _save(*_):
        values = {}
        for name, w in widgets.items():
            v = w.value
            if isinstance(v, Path):
                v = str(v)
            values[name] = v
        save_settings(key, values)

    for w in widgets.values():
        w.changed.connect(_save)
