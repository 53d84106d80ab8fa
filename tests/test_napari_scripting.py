"""docs/scripting.md is a working scripted session: run every Python block in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("plugin_settings", "plugin_model_state")]

DOC = Path(__file__).resolve().parent.parent / "docs" / "scripting.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_scripting_doc_runs(monkeypatch, qtbot, capsys):
    from napari_biomedparse import hub

    if not hub.DEFAULT_WEIGHTS.is_file():
        # until the bundled weights ship, "default" is the tiny official-architecture
        # fixture (same code path, random weights)
        from conftest import _tiny_predictor

        tiny = _tiny_predictor().model
        real = hub.load_model
        monkeypatch.setattr(
            hub,
            "load_model",
            lambda name="default", *a, **k: tiny if name == "default" else real(name, *a, **k),
        )
    blocks = _blocks()
    assert len(blocks) >= 5
    ns: dict = {}
    try:
        for code in blocks:
            code = code.replace("napari.run()", "viewer.close()")
            exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
    except Exception:
        if "viewer" in ns:
            ns["viewer"].close()
        raise
    out = capsys.readouterr().out
    assert (
        "labels  hgsc_nest instances (recognize)" in out.replace("image ", "")
        or "instances (recognize)" in out
    )
    viewer = ns["viewer"]
    assert ns["out"].exists() and ns["out"].stat().st_size > 0
    assert any(name.endswith("(slide)") for name in [t[1]["name"] for t in ns["slide"]])
    assert ns["widget"].__class__.__name__ == "RecognizeWidget"
    del viewer
