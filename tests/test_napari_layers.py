"""Result -> layer data conversion (pure functions, no viewer)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_biomedparse._napari import _layers as L


def _table():
    return pd.DataFrame(
        {
            "label": [1, 2, 3],
            "class_id": [1, 2, 1],
            "class": ["neoplastic cells", "inflammatory cells", "neoplastic cells"],
            "score": [0.9, 0.8, 0.7],
            "p_value": [0.5, 0.3, 0.5],
            "area": [4, 6, 9],
            "area_um2": [1.0, 1.5, 2.25],
            "centroid_y": [1.5, 5.0, 12.0],
            "centroid_x": [1.5, 6.0, 12.0],
            "bbox_y0": [1, 4, 11],
            "bbox_x0": [1, 5, 11],
            "bbox_y1": [3, 6, 14],
            "bbox_x1": [3, 8, 14],
            "mean_prob": [0.9, 0.8, 0.7],
        }
    )


def test_class_colours_are_stable_and_distinct():
    a = L.class_color("neoplastic cells")
    assert np.allclose(a, L.class_color("Neoplastic Cells"))
    assert not np.allclose(a, L.class_color("inflammatory cells"))
    assert a.shape == (4,) and a[3] == 1.0


def test_instance_labels_layer_features_and_colours():
    labels = np.zeros((16, 16), np.int32)
    labels[1:3, 1:3] = 1
    labels[4:6, 5:8] = 2
    labels[11:14, 11:14] = 3
    data, kw, kind = L.instance_labels_layer(
        labels, _table(), source="img", producer="recognize", scale=(0.5, 0.5), translate=(2, 3)
    )
    assert kind == "labels" and data is labels
    f = kw["features"]
    assert list(f["index"]) == [1, 2, 3]
    for col in ("class", "score", "p_value", "area", "centroid_y", "centroid_x", "area_um2"):
        assert col in f.columns
    assert list(f["class"].astype(str)) == [
        "neoplastic cells",
        "inflammatory cells",
        "neoplastic cells",
    ]
    cmap = kw["colormap"]
    assert np.allclose(cmap[1], L.class_color("neoplastic cells"))
    assert np.allclose(cmap[2], L.class_color("inflammatory cells"))
    assert cmap[0][3] == 0
    assert kw["scale"] == (0.5, 0.5) and kw["translate"] == (2.0, 3.0)
    assert kw["name"] == "img instances"


def test_layers_build_real_napari_layers():
    from napari.layers import Layer

    labels = np.zeros((16, 16), np.int32)
    labels[1:3, 1:3] = 1
    labels[4:6, 5:8] = 2
    labels[11:14, 11:14] = 3
    lab = Layer.create(*L.instance_labels_layer(labels, _table()))
    assert lab.features["class"].tolist()[1] == "inflammatory cells"
    # napari colours label 2 with the class colour of "inflammatory cells"
    assert np.allclose(lab.colormap.map(np.array([2]))[0], L.class_color("inflammatory cells"))
    (sdata, skw, skind), note = L.shapes_layer(_table())
    shapes = Layer.create(sdata, skw, skind)
    assert note is None and len(shapes.data) == 3
    assert shapes.shape_type == ["rectangle"] * 3
    assert list(shapes.text.values) == [
        "neoplastic cells",
        "inflammatory cells",
        "neoplastic cells",
    ]
    np.testing.assert_allclose(shapes.edge_color[1], L.class_color("inflammatory cells"))
    probs = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    imgs = [Layer.create(*t) for t in L.probability_layers(probs, ["a", "b"], source="x")]
    assert [i.name for i in imgs] == ["x a probability", "x b probability"]
    cls = Layer.create(*L.class_map_layer(np.eye(4, dtype=np.uint8), ["tumor"], source="x"))
    assert cls.features["class"].tolist() == ["tumor"]


def test_shapes_outlines_are_subsampled_and_limited():
    t = _table()
    ring = np.stack([np.cos(np.linspace(0, 6.2, 100)), np.sin(np.linspace(0, 6.2, 100))], 1)
    outlines = {1: ring * 2 + 5, 2: ring + 3, 3: ring + 10}
    (data, kw, _), note = L.shapes_layer(t, outlines=outlines)
    assert note is None
    assert kw["shape_type"] == ["polygon"] * 3
    assert all(len(d) <= L.MAX_VERTICES for d in data)
    assert "outlines" in kw["name"]
    # more objects than outlines allowed: boxes
    (data, kw, _), note = L.shapes_layer(t, outlines=outlines, max_outlines=2)
    assert kw["shape_type"] == ["rectangle"] * 3 and "boxes" in note
    # more objects than shapes allowed: the highest scoring are drawn, the note says so
    (data, kw, _), note = L.shapes_layer(t, max_shapes=2)
    assert len(data) == 2 and "export" in note
    assert list(kw["features"]["index"]) == [1, 2]
    assert kw["metadata"]["biomedparse"]["n_total"] == 3


def test_bboxes_accepts_several_layouts():
    t = _table()
    expected = t[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(float)
    np.testing.assert_array_equal(L.bboxes(t), expected)
    t2 = pd.DataFrame({"bbox": [tuple(r) for r in expected]})
    np.testing.assert_array_equal(L.bboxes(t2), expected)
    with pytest.raises(KeyError):
        L.bboxes(pd.DataFrame({"label": [1]}))


def test_view_region_transform():
    """A region of a coarser level lands where napari draws it."""
    from napari_biomedparse._napari._functions import ImageInput, view_region

    lv0 = np.arange(100 * 80).reshape(100, 80)
    lv1 = lv0[::2, ::2]
    inp = ImageInput(data=[lv0, lv1], scale=(0.5, 0.5), translate=(10.0, 20.0))
    pixels, scale, translate = view_region(inp, 1, corner=(10, 4), size=(6, 8))
    np.testing.assert_array_equal(pixels, lv1[10:16, 4:12])
    assert scale == (1.0, 1.0)
    # level-1 pixel (10, 4) is level-0 pixel (20, 8): world (10 + 20 * 0.5, 20 + 8 * 0.5)
    assert translate == (20.0, 24.0)
    # a view larger than the preview size is read with a stride
    pixels, scale, translate = view_region(inp, 0, max_side=50)
    assert pixels.shape == (50, 40) and scale == (1.0, 1.0) and translate == (10.0, 20.0)


def test_stack_results_keep_the_z_axis():
    """A (Z, H, W) stack gives 3D labels and 3D shapes with the image's 3D transform."""
    from napari.layers import Layer

    t = _table()
    t["z"] = [0, 1, 2]
    (data, kw, kind), note = L.shapes_layer(t, scale=(2.0, 0.5, 0.5), translate=(0, 1, 1))
    shapes = Layer.create(data, kw, kind)
    assert shapes.ndim == 3 and np.allclose(shapes.scale, [2.0, 0.5, 0.5])
    assert [int(d[0, 0]) for d in shapes.data] == [0, 1, 2]


def test_many_instances_still_make_a_drawable_layer():
    """Label values above 2**16 cannot use a direct colormap without numba: the layer falls
    back to napari's label colours and says so, instead of failing to draw."""
    import importlib.util

    from napari.layers import Layer

    n = 70_000
    t = pd.DataFrame({"label": np.arange(1, n + 1), "class": ["a"] * n, "score": 0.5})
    labels = np.zeros((8, 8), np.int32)
    labels[0, 0] = n
    data, kw, kind = L.instance_labels_layer(labels, t)
    layer = Layer.create(data, kw, kind)
    layer.refresh()
    if importlib.util.find_spec("numba") is None:
        assert "colormap" not in kw and "numba" in kw["metadata"]["biomedparse"]["note"]
    else:
        assert "colormap" in kw


def test_instances_are_drawn_as_outlines_and_outline_shapes_hidden():
    """Instance Labels show each object's outline only (interior as transparent as the
    background), opaque, in its class colour; Shapes of outlines start hidden (the labels
    draw them), Shapes of boxes shown."""
    from napari.layers import Layer

    labels = np.zeros((16, 16), np.int32)
    labels[1:3, 1:3] = 1
    labels[4:6, 5:8] = 2
    labels[8:15, 8:15] = 3
    t = _table()
    t.loc[2, ["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]] = [8, 8, 15, 15]
    tup = L.instance_labels_layer(labels, t)
    filled = Layer.create(*tup)
    assert filled.contour == 0 and filled.opacity < 1  # made by napari alone: see-through
    lab = L.apply_display(Layer.create(*tup))
    assert lab.contour == L.CONTOUR_PX > 0 and lab.opacity == 1.0
    lab.refresh()
    shown = np.asarray(lab._slice.image.view)
    background = shown[0, 0]
    assert shown[11, 11] == background  # inside object 3: the tissue shows
    assert shown[8, 11] != background and shown[11, 8] != background  # its outline is drawn
    assert np.allclose(lab.colormap.map(np.array([3]))[0], L.class_color("neoplastic cells"))
    ring = np.stack([np.cos(np.linspace(0, 6.2, 20)), np.sin(np.linspace(0, 6.2, 20))], 1)
    (_, kw, _), _ = L.shapes_layer(t, outlines={1: ring + 2, 2: ring + 5, 3: ring + 11})
    assert "outlines" in kw["name"] and kw["visible"] is False
    (_, kw, _), _ = L.shapes_layer(t)
    assert "boxes" in kw["name"] and kw["visible"] is True


def test_slide_progress_counts_the_stage_it_names():
    from napari_biomedparse._napari._functions import _stage_progress

    seen = []
    report = _stage_progress(lambda d, t, m: seen.append((d, t, m)))
    report(12, 110, "tiles 12/83")  # the engine's whole-run count, the stage's in the text
    report(90, 110, "blending 7/9")
    report(110, 110, "done")
    assert seen == [(12, 83, "tiles 12/83"), (7, 9, "blending 7/9"), (110, 110, "done")]
    assert _stage_progress(None) is None
