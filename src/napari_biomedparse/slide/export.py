"""Exports of a slide result: QuPath-compatible GeoJSON, CSV and Parquet tables.

GeoJSON (QuPath 0.4+ conventions): a ``FeatureCollection``; one ``Feature`` per object with
a ``Polygon`` geometry (closed exterior ring, ``[x, y]`` pairs) and ``properties``:
``objectType`` ("detection" or "cell"; for cells ``nucleusGeometry`` repeats the outline,
since the model segments nuclei), ``classification`` ``{"name", "color": [r, g, b]}``,
``measurements`` (a name -> number dict: area in um^2 and level-0 px, score, mean
probability, centroid) and ``isLocked`` false; the feature ``id`` is a UUID derived from the
slide and the label.

Coordinates are level-0 pixels with pixel k spanning [k, k+1), as QuPath uses them. QuPath
opens OpenSlide formats cropped to the slide's bounds (``openslide.bounds-x/y``, e.g.
MIRAX), exactly like our readers, so the default coordinates import in place. Pass
``include_offset=True`` to add the bounds offset (``SlideImage.offset``) for tools that use
OpenSlide's uncropped level-0 frame.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

__all__ = ["write_geojson", "write_table", "geojson_features"]

_NS = uuid.UUID("6f1d8a52-2b7e-4c55-9d0e-7a3c2f1e9b10")


def geojson_features(result, object_type: str = "detection", include_offset: bool = False):
    """Yield GeoJSON Feature dicts for every object of ``result`` (a SlideResult)."""
    if object_type not in ("detection", "cell", "annotation"):
        raise ValueError(f"object_type must be 'detection' or 'cell', got {object_type!r}")
    import pyarrow.parquet as pq

    names = result.class_names
    colors = result.class_colors
    oy, ox = result.offset if include_offset else (0, 0)
    src = str(result.params.get("source", {}).get("name", ""))
    # both files hold the same rows in the same row groups (one per instance block): stream
    ft = pq.ParquetFile(result.path / "table.parquet")
    fo = pq.ParquetFile(result.path / "outlines.parquet")
    for g in range(ft.num_row_groups):
        table = ft.read_row_group(g).to_pandas()
        outl = fo.read_row_group(g).to_pandas()
        yield from _features(table, outl, names, colors, oy, ox, src, object_type)


def _features(table, outlines, names, colors, oy, ox, src, object_type):
    by_label = {int(lab): i for i, lab in enumerate(outlines["label"].to_numpy())}
    for row in table.itertuples(index=False):
        i = by_label.get(int(row.label))
        if i is None:
            continue
        ys = np.asarray(outlines["y"].iloc[i], dtype=np.float64) + oy
        xs = np.asarray(outlines["x"].iloc[i], dtype=np.float64) + ox
        if len(ys) < 4:
            continue
        ring = [[round(float(x), 3), round(float(y), 3)] for y, x in zip(ys, xs)]
        ring[-1] = ring[0]
        geom = {"type": "Polygon", "coordinates": [ring]}
        cid = int(row.class_id) - 1
        props = {
            "objectType": object_type,
            "classification": {
                "name": names[cid] if 0 <= cid < len(names) else str(row[1]),
                "color": list(colors[cid]) if 0 <= cid < len(colors) else [128, 128, 128],
            },
            "isLocked": False,
            "measurements": {
                "Area um^2": float(row.area_um2),
                "Area px (level 0)": float(row.area),
                "Score": float(row.score),
                "Mean probability": float(row.mean_prob),
                "Centroid X px": float(row.centroid_x + ox),
                "Centroid Y px": float(row.centroid_y + oy),
                "Label": int(row.label),
            },
        }
        if object_type == "cell":
            props["nucleusGeometry"] = geom
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_NS, f"{src}:{int(row.label)}")),
            "geometry": geom,
            "properties": props,
        }


def write_geojson(result, path, object_type: str = "detection", include_offset: bool = False):
    """Write a QuPath-compatible GeoJSON FeatureCollection; returns the path.

    Streams features to a temporary file and renames it, so a partial file never appears.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        first = True
        for feat in geojson_features(result, object_type, include_offset):
            f.write(("" if first else ",") + "\n" + json.dumps(feat, separators=(",", ":")))
            first = False
        f.write("\n]}\n")
    os.replace(tmp, path)
    return path


def write_table(table, path, fmt: str | None = None):
    """Write a per-object table as CSV or Parquet (by ``fmt`` or the suffix); returns the path."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    if fmt == "csv":
        table.to_csv(tmp, index=False)
    elif fmt in ("parquet", "pq"):
        table.to_parquet(tmp, index=False)
    else:
        raise ValueError(f"unknown table format {fmt!r}: use .csv or .parquet")
    os.replace(tmp, path)
    return path
