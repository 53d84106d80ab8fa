"""docs/scripting.md is a working scripted session: run every Python block in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("plugin_settings", "plugin_model_state")]

DOC = Path(__file__).resolve().parent.parent / "docs" / "scripting.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_scripting_doc_runs(qtbot, capsys):
    """Every block as written, the final ``napari.run()`` included: it returns once the
    (shown) window is closed, here by a timer standing in for the user."""
    from qtpy.QtCore import QTimer

    blocks = _blocks()
    assert len(blocks) >= 5
    assert "napari.run()" in blocks[-1]
    ns: dict = {}
    closed = []

    contours = []

    def _user_closes_window():
        closed.append(ns["viewer"].window._qt_window.isVisible())
        contours.append(ns["viewer"].layers["hgsc_nest instances"].contour)
        ns["viewer"].close()

    try:
        for code in blocks:
            if "napari.run()" in code:
                QTimer.singleShot(1500, _user_closes_window)
            exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    except Exception:
        if "viewer" in ns:
            ns["viewer"].close()
        raise
    out = capsys.readouterr().out
    for line in (
        "labels  hgsc_nest instances",
        "labels  hgsc_nest classes",
        "shapes  hgsc_nest outlines",
    ):
        assert line in out
    assert "image neoplastic cells mask" in out
    viewer = ns["viewer"]
    assert ns["out"].exists() and ns["out"].stat().st_size > 0
    assert closed == [True]  # napari.run() ran with the window shown, and returned
    names = [t[1]["name"] for t in ns["slide"]]
    assert "cmu_small_region instances" in names and "cmu_small_region outlines" in names
    visible = {t[1]["name"]: t[1].get("visible", True) for t in ns["layers"]}
    assert visible == {
        "hgsc_nest instances": True,
        "hgsc_nest classes": False,
        "hgsc_nest outlines": False,  # the instances draw the outlines
    }
    # added as written (add_layers): the instances are drawn as outlines, not filled
    assert contours and contours[0] > 0
    assert ns["widget"].__class__.__name__ == "RecognizeWidget"
    del viewer
