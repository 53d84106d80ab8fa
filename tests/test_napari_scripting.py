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
    for line in (
        "labels  hgsc_nest instances (recognize)",
        "labels  hgsc_nest classes (recognize)",
        "shapes  hgsc_nest outlines (recognize)",
    ):
        assert line in out
    assert "image neoplastic cells mask (segment)" in out
    viewer = ns["viewer"]
    assert ns["out"].exists() and ns["out"].stat().st_size > 0
    assert any(name.endswith("(slide)") for name in [t[1]["name"] for t in ns["slide"]])
    assert ns["widget"].__class__.__name__ == "RecognizeWidget"
    del viewer
