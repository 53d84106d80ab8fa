"""The per-object table every result shares, the class colours, and table files.

One schema for every entry point (``segment``/``detect``/``recognize`` on an array, a slide
run, a napari layer export): :data:`TABLE_COLUMNS` with the dtypes :data:`COLUMN_DTYPES`.

- ``label`` (int64): instance id (unique within the result; 0 is background and never a row).
- ``class`` (str) / ``class_id`` (int64): class name and k = 1 + index into the result's
  class names.
- ``score`` (float64, 0..1): mean probability of the object's class over its pixels, times
  the fraction of its pixels whose class-map class is its class. Every result of this package
  puts each instance inside one class region, so there ``score`` is exactly the mean
  probability (the former ``mean_prob`` column held the same numbers and is gone).
- ``area`` (int64): pixels of the image the coordinates refer to (level 0 for a slide);
  ``area_um2`` (float64): square microns, NaN without a pixel size.
- ``centroid_y`` / ``centroid_x`` (float64): pixel-centre coordinates (pixel k is centred on k).
- ``bbox_y0`` / ``bbox_x0`` / ``bbox_y1`` / ``bbox_x1`` (int64): half-open box, rows y0..y1-1.

Results of 3-D stacks add ``z`` (and ``detect`` adds ``prompt``) in front. There is no
per-object ``p_value``: the existence test is a per-class, whole-image test, so it is reported
once per class, not repeated on every row: ``Detection.summary()``, ``Recognition.summary()``,
``recognize --out DIR``'s ``classes.csv`` and a slide run's ``summary["recognition"]["p_values"]`` (from the
slide-wide rule of :mod:`napari_biomedparse.slide.global_rule`).

Colours: :func:`class_color` gives the RGB colour of a class name, the same in napari layers,
QuPath GeoJSON and any other export (one table, :data:`CLASS_COLORS`, then a stable palette
entry chosen from the name).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pandas as pd

__all__ = [
    "CLASS_COLORS",
    "COLUMN_DTYPES",
    "TABLE_COLUMNS",
    "class_color",
    "csv_safe",
    "empty_table",
    "write_table",
]

#: Columns of every per-object table, in order.
TABLE_COLUMNS = [
    "label",
    "class",
    "class_id",
    "score",
    "area",
    "area_um2",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
]

#: dtype of each column of :data:`TABLE_COLUMNS` (pandas names; ``object`` holds str).
COLUMN_DTYPES = {
    "label": "int64",
    "class": "object",
    "class_id": "int64",
    "score": "float64",
    "area": "int64",
    "area_um2": "float64",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "bbox_y0": "int64",
    "bbox_x0": "int64",
    "bbox_y1": "int64",
    "bbox_x1": "int64",
}

#: Fixed RGB (0-255) colours of common classes, close to QuPath's defaults.
CLASS_COLORS = {
    "neoplastic cells": (255, 0, 0),
    "tumor": (200, 0, 0),
    "inflammatory cells": (0, 200, 0),
    "connective tissue cells": (0, 80, 255),
    "epithelial cells": (255, 160, 0),
    "dead cells": (255, 255, 0),
    "necrosis": (50, 50, 50),
    "cell": (255, 200, 0),
    "nuclei": (255, 200, 0),
    "unclassified nuclei": (255, 200, 0),  # recognition.UNCLASSIFIED: nuclei, no class
    "glandular structure": (0, 160, 160),
}

# A colour-blind-friendly categorical palette (Okabe-Ito + Tableau), RGB 0-255.
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 225, 25),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]


def class_color(name: str) -> tuple[int, int, int]:
    """RGB (0-255) colour of a class name: the same in every run, layer and export."""
    key = str(name).strip().lower()
    if key in CLASS_COLORS:
        return CLASS_COLORS[key]
    return _PALETTE[zlib.crc32(key.encode("utf-8", "replace")) % len(_PALETTE)]


def empty_table(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """An empty per-object table with the schema's columns and dtypes (``extra`` columns,
    e.g. ``("prompt",)`` or ``("z",)``, come first: str for ``prompt``, int64 otherwise)."""
    cols = [*extra, *TABLE_COLUMNS]
    dt = {**{c: ("object" if c == "prompt" else "int64") for c in extra}, **COLUMN_DTYPES}
    return pd.DataFrame({c: pd.Series(dtype=dt[c]) for c in cols}, columns=cols)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells cannot run as spreadsheet formulas.

    A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
    leading apostrophe (the OWASP rule for CSV injection); numbers are left as they are.
    """
    out = table.copy()
    for c in out.columns:
        col = out[c]
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            out[c] = [
                "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v for v in col
            ]
    return out


def write_table(table: pd.DataFrame, path, fmt: str | None = None) -> Path:
    """Write a per-object table as CSV or Parquet (by ``fmt`` or the suffix); returns the path.

    CSV text cells go through :func:`csv_safe`. The file is written to a temporary name next to
    ``path`` and renamed, so a partial file never appears (the temporary file is removed when
    writing fails).
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "parquet", "pq"):
        raise ValueError(f"unknown table format {fmt!r}: use .csv or .parquet")
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        if fmt == "csv":
            csv_safe(table).to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
