"""QuPath-compatible GeoJSON of per-object tables: the one writer of every result.

Input is one or more ``(table, outlines)`` parts: ``table`` a per-object table
(:mod:`.objects` schema; ``label`` and ``class`` are required, the other columns become
measurements when present), ``outlines`` the polygon of each object, either a mapping
``label -> (K, 2) (y, x)`` array or a DataFrame with columns ``label``, ``y``, ``x`` (lists
of vertices, the slide store's ``outlines.parquet``). Outline coordinates must already be in
QuPath's pixel convention (pixel k spans [k, k+1)); ``offset`` (y, x) is added. Parts are
written one after the other, so a slide run streams its row groups without holding every
object in memory (:func:`write_geojson`), while a single image passes its whole table once.

Output (QuPath 0.4+ conventions): a ``FeatureCollection``; one ``Feature`` per object with
a ``Polygon`` geometry (closed exterior ring, ``[x, y]`` pairs) and ``properties``:
``objectType`` ("detection", "cell" or "annotation"; for cells ``nucleusGeometry`` repeats
the outline, since the model segments nuclei), ``classification`` ``{"name", "color": [r, g,
b]}`` (colour from :func:`.objects.class_color`, the same as in napari), ``measurements`` (a
name -> number dict: area in um^2 and px, score, centroid in the outline's convention, label;
NaN values left out) and ``isLocked`` false; the feature ``id`` is a UUID derived from
``source`` and the label. Objects whose outline has fewer than 3 distinct vertices are left
out.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .objects import class_color

__all__ = ["OBJECT_TYPES", "feature_collection", "features", "write_geojson"]

OBJECT_TYPES = ("detection", "cell", "annotation")

_NS = uuid.UUID("6f1d8a52-2b7e-4c55-9d0e-7a3c2f1e9b10")

#: table column -> QuPath measurement name
_MEASUREMENTS = {
    "area_um2": "Area um^2",
    "area": "Area px",
    "score": "Score",
    "centroid_x": "Centroid X px",
    "centroid_y": "Centroid Y px",
    "z": "Z slice",
    "label": "Label",
}


def _check_type(object_type: str) -> None:
    if object_type not in OBJECT_TYPES:
        raise ValueError(
            f"object_type must be one of {', '.join(OBJECT_TYPES)}; got {object_type!r}"
        )


def _rings(outlines) -> Mapping[int, tuple[np.ndarray, np.ndarray]]:
    """label -> (ys, xs) float64 arrays."""
    if isinstance(outlines, pd.DataFrame):
        return {
            int(lab): (np.asarray(y, np.float64), np.asarray(x, np.float64))
            for lab, y, x in zip(outlines["label"], outlines["y"], outlines["x"])
        }
    out = {}
    for lab, ring in outlines.items():
        ring = np.asarray(ring, dtype=np.float64)
        out[int(lab)] = (ring[:, -2], ring[:, -1])  # (z, y, x) rings: plane in the table
    return out


def features(
    table: pd.DataFrame,
    outlines,
    *,
    object_type: str = "detection",
    offset: tuple[float, float] = (0.0, 0.0),
    source: str = "",
) -> Iterator[dict]:
    """Yield one GeoJSON Feature dict per row of ``table`` that has an outline."""
    _check_type(object_type)
    rings = _rings(outlines)
    oy, ox = float(offset[0]), float(offset[1])
    cols = [c for c in _MEASUREMENTS if c in table.columns]
    labels = table["label"].to_numpy()
    classes = table["class"].astype(str).to_numpy() if "class" in table.columns else None
    values = {c: table[c].to_numpy() for c in cols}
    for i, lab in enumerate(labels):
        r = rings.get(int(lab))
        if r is None:
            continue
        ys, xs = r[0] + oy, r[1] + ox
        ring = [[round(float(x), 3), round(float(y), 3)] for y, x in zip(ys, xs)]
        if len(ring) > 1 and ring[0] == ring[-1]:
            ring.pop()
        if len({tuple(p) for p in ring}) < 3:
            continue
        ring.append(ring[0])
        geom = {"type": "Polygon", "coordinates": [ring]}
        name = classes[i] if classes is not None else "object"
        meas = {}
        for c in cols:
            v = values[c][i]
            if c == "centroid_x":  # table: pixel centres at integers; QuPath: at k + 0.5
                v = v + 0.5 + ox
            elif c == "centroid_y":
                v = v + 0.5 + oy
            if c in ("label", "z"):
                meas[_MEASUREMENTS[c]] = int(v)
            elif np.isfinite(v):  # NaN (e.g. no pixel size) is not JSON: leave it out
                meas[_MEASUREMENTS[c]] = float(v)
        props = {
            "objectType": object_type,
            "classification": {"name": name, "color": list(class_color(name))},
            "isLocked": False,
            "measurements": meas,
        }
        if object_type == "cell":
            props["nucleusGeometry"] = geom
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_NS, f"{source}:{int(lab)}")),
            "geometry": geom,
            "properties": props,
        }


def feature_collection(table: pd.DataFrame, outlines, **kwargs) -> dict:
    """The FeatureCollection dict of one table (keyword arguments as :func:`features`)."""
    return {"type": "FeatureCollection", "features": list(features(table, outlines, **kwargs))}


def write_geojson(
    path,
    parts: Iterable[tuple[pd.DataFrame, object]],
    *,
    object_type: str = "detection",
    offset: tuple[float, float] = (0.0, 0.0),
    source: str = "",
) -> Path:
    """Write a FeatureCollection of every ``(table, outlines)`` part; returns the path.

    Streams features to a temporary file next to ``path`` and renames it, so a partial file
    never appears; the temporary file is removed when writing fails (e.g. a full disk).
    """
    _check_type(object_type)
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write('{"type": "FeatureCollection", "features": [')
            first = True
            for table, outlines in parts:
                for feat in features(
                    table, outlines, object_type=object_type, offset=offset, source=source
                ):
                    f.write(("" if first else ",") + "\n" + json.dumps(feat, separators=(",", ":")))
                    first = False
            f.write("\n]}\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
