"""The code base respects its own lint configuration (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is part of the [testing] extra")
def test_ruff_check_passes():
    targets = [p for p in ("src", "tests", "benchmarks", "scripts") if (ROOT / p).exists()]
    proc = subprocess.run(
        ["ruff", "check", "--no-cache", *targets], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imports(path: Path, modules: tuple[str, ...]) -> list[str]:
    pattern = re.compile(r"^\s*(?:import|from)\s+({})(?:\.|\s|$)".format("|".join(modules)))
    return [line.strip() for line in path.read_text().splitlines() if pattern.match(line)]


def test_only_the_plugin_imports_napari_and_the_model_imports_only_torch():
    """The layer rules of docs/architecture.md, read from the source tree."""
    src = ROOT / "src" / "napari_biomedparse"
    offenders = []
    for path in src.rglob("*.py"):
        if "_napari" not in path.parts:
            hits = _imports(path, ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide6"))
            offenders += [f"{path.relative_to(src)}: {h}" for h in hits]
    heavy = ("numpy", "skimage", "dask", "zarr", "openslide", "tifffile", "pandas", "scipy")
    for path in (src / "model").rglob("*.py"):
        offenders += [f"{path.relative_to(src)}: {h}" for h in _imports(path, heavy)]
    assert not offenders, "layer rule broken:\n" + "\n".join(offenders)
