"""Without a display the GUI tests are skipped with a reason; the run does not abort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gui_tests_skip_without_display(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "XAUTHORITY")
    }
    env["NAPARI_BIOMEDPARSE_CONFIG_DIR"] = str(tmp_path)
    # one GUI test (it opens a viewer) and pytest-xvfb disabled: nothing provides a display
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:xvfb",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        "tests/test_napari_widgets.py::test_settings_are_remembered",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Fatal Python error" not in out
    assert proc.returncode == 0, out
    assert "1 skipped" in out, out
    assert "no display" in out and "xvfb" in out.lower(), out  # the reason says what to do
