"""The one object schema, class colour table and GeoJSON / CSV writer, on real results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_biomedparse.inference.geojson import write_geojson
from napari_biomedparse.inference.objects import (
    COLUMN_DTYPES,
    TABLE_COLUMNS,
    csv_safe,
    empty_table,
    write_table,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hne():
    img = np.asarray(Image.open(ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"))
    return np.ascontiguousarray(img[200:456, 300:556])


@pytest.fixture(scope="module")
def rec(bundled_predictor, hne):
    return bundled_predictor.recognize(hne, modality="pathology", mpp=0.5)


def _shoelace(ring):
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _napari_rgb(layer_tuple, label):
    cmap = layer_tuple[1]["colormap"]
    rgba = cmap[int(label)] if isinstance(cmap, dict) and int(label) in cmap else None
    if rgba is None:  # napari's {"colors": {...}} form of a direct colormap
        rgba = cmap["colors"][int(label)]
    return [int(round(255 * float(c))) for c in np.asarray(rgba)[:3]]


def test_recognition_geojson_is_a_valid_qupath_feature_collection(rec, hne, tmp_path):
    t = rec.table
    assert list(t.columns) == TABLE_COLUMNS and len(t) > 5
    assert all(
        pd.api.types.is_string_dtype(t[c]) if d == "object" else str(t[c].dtype) == d
        for c, d in COLUMN_DTYPES.items()
    )
    gj = json.loads(Path(rec.to_geojson(tmp_path / "r.geojson")).read_text())
    assert gj["type"] == "FeatureCollection"
    feats = gj["features"]
    assert len(feats) == len(t)
    H, W = hne.shape[:2]
    rows = t.set_index("label")
    ids = set()
    for f in feats:
        assert f["type"] == "Feature" and f["id"] not in ids
        ids.add(f["id"])
        g = f["geometry"]
        assert g["type"] == "Polygon" and len(g["coordinates"]) == 1
        ring = np.asarray(g["coordinates"][0], dtype=float)
        assert len(ring) >= 4 and (ring[0] == ring[-1]).all()  # closed
        assert (ring[:, 0] >= 0).all() and (ring[:, 0] <= W).all()
        assert (ring[:, 1] >= 0).all() and (ring[:, 1] <= H).all()
        p = f["properties"]
        assert p["objectType"] == "detection" and p["isLocked"] is False
        cls = p["classification"]
        assert set(cls) == {"name", "color"} and cls["name"] in rec.class_names
        assert len(cls["color"]) == 3 and all(isinstance(c, int) for c in cls["color"])
        m = p["measurements"]
        row = rows.loc[m["Label"]]
        assert cls["name"] == row["class"]
        assert m["Area px"] == row["area"] and m["Score"] == pytest.approx(row["score"])
        # the outline (iso-contour at 0.5) encloses about the object's pixels
        assert abs(_shoelace(ring) - row["area"]) <= 0.5 * np.sqrt(row["area"]) * 4 + 2
        # QuPath's pixel convention: the centroid lies inside the outline's box
        assert ring[:, 0].min() <= m["Centroid X px"] <= ring[:, 0].max()
        assert ring[:, 1].min() <= m["Centroid Y px"] <= ring[:, 1].max()
    cells = json.loads(Path(rec.to_geojson(tmp_path / "c.geojson", "cell")).read_text())
    assert all(f["properties"]["nucleusGeometry"] == f["geometry"] for f in cells["features"])
    with pytest.raises(ValueError, match="object_type"):
        rec.to_geojson(tmp_path / "x.geojson", "polygon")


def test_geojson_colour_of_each_class_is_its_napari_colour(rec, tmp_path):
    from napari_biomedparse._napari._layers import class_map_layer, instance_labels_layer

    gj = json.loads(Path(rec.to_geojson(tmp_path / "r.geojson")).read_text())
    inst = instance_labels_layer(rec.labels, rec.table)
    seen = set()
    for f in gj["features"]:
        lab = f["properties"]["measurements"]["Label"]
        assert f["properties"]["classification"]["color"] == _napari_rgb(inst, lab)
        seen.add(f["properties"]["classification"]["name"])
    assert len(seen) >= 2
    # every class, including ones with no object and free text, in a table of one row each
    names = [*rec.class_names, "nuclei", "cell", "tumor", "glandular structure", "free text x"]
    table = pd.DataFrame({"label": np.arange(1, len(names) + 1), "class": names})
    rings = {i + 1: np.array([[0, 0], [0, 2], [2, 2], [2, 0]], float) for i in range(len(names))}
    gj = json.loads(Path(write_geojson(tmp_path / "n.geojson", [(table, rings)])).read_text())
    classes = class_map_layer(np.zeros((2, 2), np.int32), names)
    for k, f in enumerate(gj["features"], start=1):
        assert f["properties"]["classification"]["name"] == names[k - 1]
        assert f["properties"]["classification"]["color"] == _napari_rgb(classes, k)
    nuclei = gj["features"][names.index("nuclei")]["properties"]["classification"]["color"]
    assert nuclei == [255, 200, 0]


def test_detection_exports_and_summary(bundled_predictor, hne, tmp_path):
    det = bundled_predictor.detect(
        hne, ["neoplastic cells", "inflammatory cells"], modality="pathology"
    )
    assert list(det.table.columns) == ["prompt", *TABLE_COLUMNS]
    gj = json.loads(Path(det.to_geojson(tmp_path / "d.geojson")).read_text())
    assert len(gj["features"]) == len(det.table) > 0
    names = {f["properties"]["classification"]["name"] for f in gj["features"]}
    assert names <= {"neoplastic cells", "inflammatory cells"}
    back = pd.read_csv(det.to_csv(tmp_path / "d.csv"))
    assert list(back.columns) == list(det.table.columns) and len(back) == len(det.table)


def test_recognition_summary_holds_the_per_class_p_values(rec):
    s = rec.summary()
    assert list(s["class"]) == rec.class_names
    np.testing.assert_array_equal(s["p_value"].to_numpy(), np.asarray(rec.p_values))
    assert list(s["n_instances"]) == [int((rec.table["class"] == n).sum()) for n in rec.class_names]


def test_csv_neutralises_formulas(tmp_path):
    names = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tcmd", "cells - ok"]
    t = empty_table()
    t = pd.DataFrame(
        {
            "label": np.arange(1, 7),
            "class": names,
            "class_id": np.arange(1, 7),
            "score": [0.5] * 6,
            "area": [10] * 6,
            "area_um2": [np.nan] * 6,
            "centroid_y": [-0.25, 1, 2, 3, 4, 5],
            "centroid_x": [0.0] * 6,
            "bbox_y0": [0] * 6,
            "bbox_x0": [0] * 6,
            "bbox_y1": [1] * 6,
            "bbox_x1": [1] * 6,
        }
    )
    path = write_table(t, tmp_path / "t.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back["class"]) == ["'" + n for n in names[:5]] + ["cells - ok"]
    assert back["centroid_y"].iloc[0] == -0.25  # numbers untouched
    assert list(csv_safe(t)["class"])[5] == "cells - ok" and list(t["class"]) == names
    # the slide table writer is the same function
    from napari_biomedparse.slide import export

    assert export.write_table is write_table


def test_write_table_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    def full(self, path, *a, **k):
        Path(path).write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError, match="No space"):
        write_table(empty_table(), tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []


def test_napari_writer_exports_from_memory(tmp_path, monkeypatch):
    """A layer export writes the GeoJSON directly (no temporary Parquet files)."""
    from napari_biomedparse._napari._writer import write_labels

    def no_parquet(*a, **k):
        raise AssertionError("the writer must not write Parquet files")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_parquet)
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:8] = 1
    labels[10:15, 10:13] = 2
    feats = pd.DataFrame({"index": [1, 2], "class": ["nuclei", "=bad"], "score": [0.9, 0.8]})
    out = write_labels(str(tmp_path / "x.geojson"), labels, {"features": feats, "name": "x"})
    gj = json.loads(Path(out[0]).read_text())
    assert [f["properties"]["classification"]["name"] for f in gj["features"]] == ["nuclei", "=bad"]
    out = write_labels(str(tmp_path / "x.csv"), labels, {"features": feats, "name": "x"})
    assert pd.read_csv(out[0])["class"].tolist() == ["nuclei", "'=bad"]


def test_summary_keeps_the_unclassified_class_of_a_kept_nuclei_target():
    from napari_biomedparse.inference.results import Recognition

    z = np.zeros((2, 2), np.int32)
    r = Recognition(
        labels=z,
        classes=z,
        class_names=["neoplastic cells", "unclassified nuclei", "dead cells"],
        kept=["neoplastic cells", "nuclei"],
        table=empty_table(),
        probs=np.zeros((3, 2, 2), np.float32),
        p_values=np.array([0.5, np.nan, 0.01]),
    )
    assert r.summary()["kept"].tolist() == [True, True, False]
