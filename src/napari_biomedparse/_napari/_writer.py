"""Writer: Labels (with features) or Shapes as QuPath GeoJSON or CSV.

GeoJSON and CSV go through the package's one writer of per-object tables
(:mod:`napari_biomedparse.inference.geojson`, :func:`~napari_biomedparse.inference.objects.
write_table`), straight from the layer's data in memory. Coordinates are pixels of the source image (level 0 for a slide), in QuPath's convention (pixel ``k`` spans
``[k, k+1)``), computed from the layer's ``scale`` / ``translate`` and the image transform
recorded in the layer's metadata by the widgets.

Layers of a slide run (metadata ``store``) export the complete result from the store, not
only what napari draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

_TABLE_DEFAULTS = {
    "class_id": 0,
    "score": np.nan,
    "area": np.nan,
    "area_um2": np.nan,
    "centroid_y": np.nan,
    "centroid_x": np.nan,
}


def _bp(attributes: dict) -> dict:
    return (attributes.get("metadata") or {}).get("biomedparse") or {}


def _affine(attributes: dict, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with image pixel = data * a + b (pixel centres at integers)."""
    scale = np.asarray(attributes.get("scale", np.ones(ndim)), dtype=np.float64)[-2:]
    translate = np.asarray(attributes.get("translate", np.zeros(ndim)), dtype=np.float64)[-2:]
    bp = _bp(attributes)
    S = np.asarray(bp.get("image_scale", scale), dtype=np.float64)[-2:]
    T = np.asarray(bp.get("image_translate", translate), dtype=np.float64)[-2:]
    return scale / S, (translate - T) / S


def _store(attributes: dict) -> str | None:
    store = _bp(attributes).get("store")
    return store if store and Path(store).exists() else None


def _check_ext(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in (".geojson", ".csv"):
        raise ValueError(f"cannot write {path}: use a .geojson or .csv file name")
    return ext


def _table_from_features(features: pd.DataFrame, a, b) -> pd.DataFrame:
    f = features.copy()
    if "index" in f.columns and "label" not in f.columns:
        f = f.rename(columns={"index": "label"})
    if "class" not in f.columns:
        f["class"] = "object"
    f["class"] = f["class"].astype(str)
    names = list(dict.fromkeys(f["class"]))
    f["class_id"] = [names.index(c) + 1 for c in f["class"]]
    for col, default in _TABLE_DEFAULTS.items():
        if col not in f.columns:
            f[col] = default
    f["centroid_y"] = f["centroid_y"].astype(float) * a[0] + b[0]
    f["centroid_x"] = f["centroid_x"].astype(float) * a[1] + b[1]
    for c, i in (("bbox_y0", 0), ("bbox_y1", 0), ("bbox_x0", 1), ("bbox_x1", 1)):
        if c in f.columns:
            f[c] = f[c].astype(float) * a[i] + b[i]
    if "area" in f.columns:
        f["area"] = f["area"].astype(float) * a[0] * a[1]
    return f


def _write(path: str, table: pd.DataFrame, rings_fn, name: str) -> list[str]:
    """rings_fn() -> {label: (K, 2) yx} in image pixel-centre coordinates."""
    from napari_biomedparse.inference.geojson import write_geojson
    from napari_biomedparse.inference.objects import write_table

    table = table.reset_index(drop=True)
    if Path(path).suffix.lower() == ".csv":
        cols = [c for c in table.columns if c != "class_id"]
        return [os.fspath(write_table(table[cols], path, "csv"))]
    # QuPath: pixel k spans [k, k+1)
    rings = {int(lab): np.asarray(r, dtype=np.float64) + 0.5 for lab, r in rings_fn().items()}
    return [os.fspath(write_geojson(path, [(table, rings)], source=name))]


def _write_store(path: str, store) -> list[str]:
    """Export the whole result store a slide-run layer comes from (every object)."""
    from napari_biomedparse.slide.engine import SlideResult

    res = SlideResult.open(store)
    if Path(path).suffix.lower() == ".csv":
        return [os.fspath(res.to_csv(path))]
    return [os.fspath(res.to_geojson(path))]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """Save instance Labels (one object per label value) with their features."""
    _check_ext(path)
    store = _store(attributes)
    if store is not None:
        return _write_store(path, store)
    if isinstance(data, list):
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError("only 2D label images can be exported (choose one plane).")
    a, b = _affine(attributes)
    features = attributes.get("features")
    if features is None or len(features) == 0 or "index" not in getattr(features, "columns", []):
        from napari_biomedparse.inference.instances import instance_table

        features = instance_table(labels).rename(columns={"label": "index"})
    features = features[features["index"] > 0]
    table = _table_from_features(features, a, b)

    def rings():
        from napari_biomedparse.inference.instances import instance_outlines

        kept = set(table["label"])
        return {lab: ring * a + b for lab, ring in instance_outlines(labels).items() if lab in kept}

    return _write(path, table, rings, attributes.get("name", "labels"))


def write_shapes(path: str, data, attributes: dict) -> list[str]:
    """Save Shapes (polygons, rectangles) with their features, one object per shape."""
    _check_ext(path)
    store = _store(attributes)
    if store is not None:
        return _write_store(path, store)
    a, b = _affine(attributes)
    polys = [np.asarray(d, dtype=np.float64)[:, -2:] * a + b for d in data]
    features = attributes.get("features")
    if features is None or len(features) != len(polys):
        features = pd.DataFrame({"index": np.arange(1, len(polys) + 1)})
    features = features.reset_index(drop=True).copy()
    if "index" not in features.columns:
        features["index"] = np.arange(1, len(polys) + 1)
    # geometry of each shape in image pixels (measurements the layer may not have)
    cy = [float(p[:, 0].mean()) for p in polys]
    cx = [float(p[:, 1].mean()) for p in polys]
    table = _table_from_features(
        features.drop(columns=["centroid_y", "centroid_x"], errors="ignore"),
        np.ones(2),
        np.zeros(2),
    )
    table["centroid_y"], table["centroid_x"] = cy, cx
    rings = dict(zip(table["label"].astype(int), polys))
    return _write(path, table, lambda: rings, attributes.get("name", ""))
