"""Results -> napari layer data tuples.

Pure functions (numpy / pandas only, no napari import): each returns ``(data, kwargs,
layer_type)`` tuples that ``napari.layers.Layer.create(*t)`` turns into layers, then
:func:`apply_display` sets what napari takes only on a made layer (instance outlines), so
that the widgets, scripts and tests share one conversion (``_functions.add_layers`` does
both).

Coordinates: every result is computed on an array whose pixel ``(0, 0)`` sits at world
position ``translate`` with pixel size ``scale`` (the image layer's own transform, or the
transform of the level / region that was processed). Labels and Shapes get the same
``scale`` / ``translate``, so they overlay the image exactly. Shapes vertices are in pixel
coordinates of that array (for a whole slide: level-0 pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# the colour of a class name, the same in napari and every export (GeoJSON, CSV)
from napari_biomedparse.inference.objects import class_color as class_color_rgb

LayerDataTuple = tuple[Any, dict, str]

#: Most shapes drawn in one Shapes layer; beyond this, the highest-scoring are drawn and the
#: full set stays available through export (GeoJSON / CSV).
MAX_SHAPES = 5000
#: Outlines are drawn up to this many objects; beyond, boxes (4 vertices each) are drawn.
MAX_OUTLINES = 2000
#: Class text is shown up to this many shapes (it can be switched on in the layer controls).
MAX_TEXT = 100
#: Vertices kept per outline (polygons are subsampled evenly to at most this many).
MAX_VERTICES = 32
#: Instance Labels are drawn as outlines this many pixels thick (napari's ``contour``; 0 in
#: the layer controls fills them), so the nuclei stay visible under them.
CONTOUR_PX = 2
#: What :func:`apply_display` sets on an instance Labels layer (napari takes ``contour``
#: only after the layer is made, not in the layer data tuple).
OUTLINE_DISPLAY = {"contour": CONTOUR_PX, "opacity": 1.0}
#: Opacity of instance Labels drawn filled (a layer made without :func:`apply_display`, e.g.
#: by napari from the reader's tuples): the tissue shows through.
FILLED_OPACITY = 0.5


def class_color(name: str, alpha: float = 1.0) -> np.ndarray:
    """RGBA float colour (0-1) for a class name."""
    r, g, b = class_color_rgb(name)
    return np.array([r / 255, g / 255, b / 255, alpha], dtype=np.float32)


def _transform(scale, translate) -> dict:
    kw: dict = {}
    if scale is not None:
        kw["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        kw["translate"] = tuple(float(t) for t in translate)
    return kw


# --------------------------------------------------------------------------- tables


def _col(table: pd.DataFrame, *names: str):
    for n in names:
        if n in table.columns:
            return table[n].to_numpy()
    return None


def bboxes(table: pd.DataFrame) -> np.ndarray:
    """(N, 4) boxes ``y0, x0, y1, x1`` (pixels, end exclusive) from an instance table.

    Accepts the column layouts produced by the inference and slide layers: ``bbox_y0 ..
    bbox_x1``, skimage's ``bbox-0 .. bbox-3``, ``y0, x0, y1, x1`` or one ``bbox`` column of
    4-tuples.
    """
    n = len(table)
    for cols in (
        ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"),
        ("bbox-0", "bbox-1", "bbox-2", "bbox-3"),
        ("y0", "x0", "y1", "x1"),
        ("min_y", "min_x", "max_y", "max_x"),
    ):
        if all(c in table.columns for c in cols):
            return table[list(cols)].to_numpy(dtype=np.float64).reshape(n, 4)
    if "bbox" in table.columns:
        if n == 0:
            return np.zeros((0, 4))
        return np.asarray([tuple(b) for b in table["bbox"]], dtype=np.float64).reshape(n, 4)
    raise KeyError(f"no bounding-box columns in table (columns: {list(table.columns)})")


def instance_features(table: pd.DataFrame) -> pd.DataFrame:
    """The ``features`` table of an instance Labels layer: one row per instance.

    Columns ``index`` (the label value, which napari uses to match rows), ``class``,
    ``score``, ``p_value``, ``area``, ``centroid_y``, ``centroid_x`` and any further numeric
    measurement of the table (boxes included).
    """
    label = _col(table, "label", "index", "id")
    if label is None:
        label = np.arange(1, len(table) + 1)
    feats = pd.DataFrame({"index": np.asarray(label, dtype=np.int64)})
    cls = _col(table, "class", "class_name", "target")
    feats["class"] = pd.Categorical(
        [str(c) for c in cls] if cls is not None else ["object"] * len(table)
    )
    for name, alts in (
        ("score", ("score", "probability", "mean_probability")),
        ("p_value", ("p_value", "pvalue", "p-value")),
        ("area", ("area", "area_px")),
        ("centroid_y", ("centroid_y", "centroid-0", "y")),
        ("centroid_x", ("centroid_x", "centroid-1", "x")),
    ):
        v = _col(table, *alts)
        feats[name] = np.asarray(v, dtype=np.float64) if v is not None else np.nan
    skip = {"label", "index", "id", "class", "class_name", "target", "bbox"}
    for c in table.columns:
        if c in skip or c in feats.columns:
            continue
        if pd.api.types.is_numeric_dtype(table[c]):
            feats[c] = table[c].to_numpy()
    return feats.reset_index(drop=True)


# --------------------------------------------------------------------------- layers


def probability_layers(
    probs: np.ndarray,
    prompts: Sequence[str],
    *,
    source: str = "image",
    producer: str = "segment",
    scale=None,
    translate=None,
) -> list[LayerDataTuple]:
    """One Image layer per prompt (float32 probabilities 0-1, additive, class colour)."""
    out = []
    for prob, prompt in zip(probs, prompts):
        rgb = class_color_rgb(prompt)
        kw = {
            "name": f"{source} {prompt} probability",
            "colormap": _colormap_for(prompt, rgb),
            "contrast_limits": (0.0, 1.0),
            "blending": "additive",
            "opacity": 0.7,
            "metadata": {"biomedparse": {"producer": producer, "prompt": prompt}},
            **_transform(scale, translate),
        }
        if not hasattr(prob, "compute"):  # keep dask arrays (slide stores) lazy
            prob = np.asarray(prob, dtype=np.float32)
        out.append((prob, kw, "image"))
    return out


def _colormap_for(name: str, rgb) -> dict:
    # A custom linear colormap from black to the class colour (napari accepts a dict with
    # "name" and "colors" -> vispy Colormap via ensure_colormap).
    r, g, b = (c / 255 for c in rgb)
    return {"name": f"biomedparse {name}", "colors": [[0, 0, 0, 1], [r, g, b, 1]]}


def _labels_colormap(values_to_class: dict[int, str]) -> dict:
    # napari >= 0.5 accepts a dict label -> colour (a DirectLabelColormap); None = default.
    cmap: dict = {0: np.array([0, 0, 0, 0], dtype=np.float32)}
    for v, cls in values_to_class.items():
        cmap[int(v)] = class_color(cls)
    cmap[None] = np.array([0.5, 0.5, 0.5, 1.0], dtype=np.float32)
    return cmap


def _can_colour_by_class(max_label: int) -> bool:
    """napari's direct label colormap needs numba for label values above 2**16."""
    if max_label <= 2**16:
        return True
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def class_map_layer(
    class_map,
    class_names: Sequence[str],
    *,
    source: str = "image",
    producer: str = "segment",
    extra: pd.DataFrame | None = None,
    scale=None,
    translate=None,
    multiscale: bool = False,
) -> LayerDataTuple:
    """A Labels layer of classes: value ``k`` (1-based) is ``class_names[k - 1]``.

    ``features`` has one row per class (``index``, ``class`` and, when given, the columns of
    ``extra`` such as ``p_value`` / ``present`` / ``area``, one row per class in order).
    """
    names = [str(c) for c in class_names]
    feats = pd.DataFrame({"index": np.arange(1, len(names) + 1), "class": names})
    if extra is not None and len(extra) == len(names):
        for c in extra.columns:
            if c not in feats.columns:
                feats[c] = extra[c].to_numpy()
    kw = {
        "name": f"{source} classes",
        "features": feats,
        "colormap": _labels_colormap({i + 1: n for i, n in enumerate(names)}),
        "opacity": 0.5,
        "visible": False,  # the instances show the same classes; toggle on when needed
        "metadata": {"biomedparse": {"producer": producer, "kind": "classes", "classes": names}},
        **_transform(scale, translate),
    }
    if multiscale:
        kw["multiscale"] = True
    return (class_map, kw, "labels")


def instance_labels_layer(
    labels,
    table: pd.DataFrame,
    *,
    source: str = "image",
    producer: str = "segment",
    scale=None,
    translate=None,
    multiscale: bool = False,
    metadata: dict | None = None,
) -> LayerDataTuple:
    """Labels of instances with ``features``, each instance in the colour of its class
    (``class_color``); :func:`apply_display` on the layer draws them as outlines
    (:data:`CONTOUR_PX` thick, opaque) so that the tissue under them stays visible."""
    feats = instance_features(table)
    kw = {
        "name": f"{source} instances",
        "features": feats,
        "opacity": FILLED_OPACITY,  # until apply_display draws outlines
        "metadata": {
            "biomedparse": {
                "producer": producer,
                "kind": "instances",
                "display": dict(OUTLINE_DISPLAY),
                **(metadata or {}),
            }
        },
        **_transform(scale, translate),
    }
    if _can_colour_by_class(int(feats["index"].max()) if len(feats) else 0):
        kw["colormap"] = _labels_colormap(dict(zip(feats["index"], feats["class"].astype(str))))
    else:
        kw["metadata"]["biomedparse"]["note"] = (
            "more than 65,536 objects: instances get napari's label colours (install numba "
            "for class colours); the class map layer shows the classes."
        )
    if multiscale:
        kw["multiscale"] = True
    return (labels, kw, "labels")


def apply_display(layer):
    """Set on a layer made from one of these tuples what napari takes only once the layer
    exists (``metadata["biomedparse"]["display"]``: instance outlines, ``contour`` > 0);
    returns the layer."""
    display = (getattr(layer, "metadata", None) or {}).get("biomedparse", {}).get("display")
    for name, value in (display or {}).items():
        setattr(layer, name, value)
    return layer


def _subsample(poly: np.ndarray, k: int = MAX_VERTICES) -> np.ndarray:
    poly = np.asarray(poly, dtype=np.float64)
    if len(poly) <= k:
        return poly
    idx = np.linspace(0, len(poly), k, endpoint=False).astype(int)
    return poly[idx]


def shapes_layer(
    table: pd.DataFrame,
    *,
    outlines: dict | None = None,
    outline_offset: float = 0.0,
    source: str = "image",
    producer: str = "segment",
    scale=None,
    translate=None,
    max_shapes: int = MAX_SHAPES,
    max_outlines: int = MAX_OUTLINES,
    metadata: dict | None = None,
    visible: bool | None = None,
) -> tuple[LayerDataTuple, str | None]:
    """Shapes of instance outlines (or boxes) with the class as text, in the class colour.

    ``visible``: None shows boxes and hides outlines (the instance Labels already draw every
    outline; the hidden layer keeps the class text, the selection and the export).

    What napari can draw is limited: outlines are used up to ``max_outlines`` objects (each
    subsampled to at most ``MAX_VERTICES`` vertices; ``outline_offset`` is added to the
    vertices, -0.5 for outlines in pixel-edge coordinates), boxes beyond that, and at most
    ``max_shapes`` objects (the highest scoring) are drawn. Returns the layer tuple and a
    note saying what was left out (``None`` when everything is drawn); the full set is in the
    instance table and its export.
    """
    feats = instance_features(table)
    n_total = len(feats)
    note = None
    order = np.arange(n_total)
    if n_total > max_shapes:
        score = feats["score"].to_numpy()
        order = np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")[:max_shapes]
        order.sort()
        note = (
            f"{n_total} objects: the {max_shapes} highest-scoring are drawn as boxes; "
            "export the instances layer (GeoJSON / CSV) for the full set."
        )
    use_outlines = outlines is not None and len(order) <= max_outlines
    if outlines is not None and not use_outlines and note is None:
        note = (
            f"{n_total} objects: drawn as boxes (outlines above {max_outlines} objects are "
            "too many to draw); export the instances layer for outlines."
        )
    data, types = [], []
    boxes = bboxes(table) if len(table) else np.zeros((0, 4))
    zs = table["z"].to_numpy(dtype=np.float64) if "z" in table.columns else None
    for i in order:
        label = int(feats["index"].iloc[i])
        poly = outlines.get(label) if use_outlines else None
        if poly is not None and len(poly) >= 3:
            data.append(_subsample(poly) + outline_offset)
            types.append("polygon")
        else:
            # table boxes are half-open pixel index ranges; napari puts pixel centres at
            # integer coordinates, so the box edges are half a pixel out
            y0, x0, y1, x1 = boxes[i] - 0.5
            box = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=np.float64)
            if zs is not None:  # a stack: the box lies in its object's slice
                box = np.column_stack([np.full(4, zs[i]), box])
            data.append(box)
            types.append("rectangle")
    sub = feats.iloc[order].reset_index(drop=True)
    colors = (
        np.stack([class_color(c) for c in sub["class"].astype(str)])
        if len(sub)
        else np.zeros((0, 4))
    )
    kw = {
        "name": f"{source} {'outlines' if use_outlines else 'boxes'}",
        "visible": (not use_outlines) if visible is None else bool(visible),
        "shape_type": types,
        "features": sub,
        "edge_color": colors,
        "face_color": "transparent",
        "edge_width": 2,
        "text": {
            "string": "{class}",
            "size": 8,
            "color": "white",
            "anchor": "upper_left",
            "visible": len(sub) <= MAX_TEXT,  # beyond, text hides the tissue (toggle on)
        },
        "metadata": {
            "biomedparse": {
                "producer": producer,
                "kind": "shapes",
                "n_total": n_total,
                "drawn": len(sub),
                "note": note,
                **(metadata or {}),
            }
        },
        **_transform(scale, translate),
    }
    return (data, kw, "shapes"), note
