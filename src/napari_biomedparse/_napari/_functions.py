"""The widgets' work, as plain functions that also run in a script without a viewer.

Each function takes an image (a numpy / dask array, a list of arrays for a pyramid, or a
napari Image layer: only its ``data``, ``scale``, ``translate``, ``name`` and ``metadata``
are read), calls the inference or slide layer, and returns napari layer data tuples
``(data, kwargs, layer_type)`` (see :mod:`._layers`), aligned with the image. They accept
``progress(done, total, message)`` and ``cancel`` (a ``threading.Event``); a cancelled run
raises :class:`Cancelled` and returns nothing. No napari or Qt import here
(:func:`add_layers` imports napari when called).

>>> layers = segment_layer(image, ["neoplastic cells"], modality="pathology")
>>> add_layers(viewer, layers)  # instance outlines over the image

(Longer than 400 lines on purpose: the segment, recognize and slide functions share the
image input (:class:`ImageInput`, :func:`view_region`), the predictor, the progress / cancel
plumbing and the conversion of results to layer tuples, and the widgets use them as one
namespace (``from .. import _functions as F``). The natural next split is the slide section
(:func:`slide_layers` to :func:`open_result_layers`, about 200 lines) into its own module.)
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# one cancellation exception for scripts and widgets (the tasks raise it within a tile batch)
from napari_biomedparse.inference.progress import Cancelled, check_cancel  # noqa: F401

from . import _layers
from ._layers import LayerDataTuple

OUTPUTS = ("instances", "masks", "probabilities")
#: Longest side (pixels) processed by a "current view" preview; larger views are read from a
#: coarser level.
PREVIEW_MAX_SIDE = 2048
#: Images with a side longer than this (or multiscale) offer "whole image" (the slide engine).
LARGE_SIDE = 4096


def friendly_error(exc: BaseException) -> str:
    """A one-line message for a notification, with what to do where we know it."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{msg}. Check the path (Model widget: choose an existing checkpoint file)."
    if isinstance(exc, MemoryError):
        return "out of memory. Use 'current view', a smaller tile size or a coarser pixel size."
    if "CUDA out of memory" in msg or "OutOfMemory" in type(exc).__name__:
        return f"{msg}. Choose a smaller batch / tile size or device 'cpu' in the Model widget."
    return msg


def add_layers(viewer, layer_data: Sequence[LayerDataTuple]) -> list:
    """Add layer data tuples to ``viewer`` as the widgets do (instances drawn as outlines,
    :func:`._layers.apply_display`); returns the layers (napari is imported here only)."""
    from napari.layers import Layer

    return [
        viewer.add_layer(_layers.apply_display(Layer.create(d, dict(kw), kind)))
        for d, kw, kind in layer_data
    ]


def _report(progress, done, total, message=""):
    if progress is not None:
        progress(done, total, message)


def _task_kwargs(task: str, progress, cancel) -> dict:
    """``progress=`` / ``cancel=`` for ``Predictor.<task>`` where the inference task takes
    them (tile-level progress, cancel between tile batches)."""
    import inspect

    from napari_biomedparse.inference import tasks

    params = inspect.signature(getattr(tasks, task)).parameters
    out = {}
    if "progress" in params and progress is not None:
        out["progress"] = progress
    if "cancel" in params and cancel is not None:
        out["cancel"] = cancel
    return out


# --------------------------------------------------------------------------- inputs


@dataclass
class ImageInput:
    """What the functions need from an image or an Image layer."""

    data: Any  # array (H, W[, C]) or list of arrays (pyramid, level 0 first)
    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    name: str = "image"
    mpp: float | None = None
    path: str | None = None
    rgb: bool | None = None
    metadata: dict = field(default_factory=dict)
    units: tuple[str, ...] | None = None  # e.g. ("micrometer", "micrometer"); None = pixels

    @property
    def multiscale(self) -> bool:
        return isinstance(self.data, list | tuple) and len(self.data) > 1

    @property
    def levels(self) -> list:
        return list(self.data) if isinstance(self.data, list | tuple) else [self.data]

    @property
    def is_large(self) -> bool:
        h, w = self.levels[0].shape[:2]
        return self.multiscale or max(h, w) > LARGE_SIDE


def as_image_input(image, *, name=None, scale=None, translate=None, mpp=None) -> ImageInput:
    """Wrap an array, a list of arrays or a napari Image layer."""
    if isinstance(image, ImageInput):
        inp = ImageInput(**vars(image))
    elif hasattr(image, "data") and hasattr(image, "scale") and hasattr(image, "translate"):
        meta = dict(getattr(image, "metadata", {}) or {})
        data = image.data
        if getattr(image, "multiscale", False):
            data = list(data)
        inp = ImageInput(
            data=data,
            scale=tuple(float(s) for s in image.scale),
            translate=tuple(float(t) for t in image.translate),
            name=str(image.name),
            mpp=meta.get("mpp"),
            # only a file this plugin's reader opened (and whose pixels the layer still
            # shows) is handed to the slide engine by path; anything else goes as arrays
            path=meta.get("path"),
            rgb=bool(getattr(image, "rgb", False)),
            metadata=meta,
            units=_units(image),
        )
    else:
        inp = ImageInput(data=image)
    if name is not None:
        inp.name = name
    if scale is not None:
        inp.scale = tuple(float(s) for s in scale)
    if translate is not None:
        inp.translate = tuple(float(t) for t in translate)
    if mpp is not None:
        inp.mpp = float(mpp)
    return inp


def _units(layer) -> tuple[str, str] | None:
    units = getattr(layer, "units", None)
    if units is None:
        return None
    names = tuple(str(u) for u in units)
    return None if all(n in ("pixel", "px") for n in names) else names


def _to_numpy(arr) -> np.ndarray:
    if hasattr(arr, "compute"):
        arr = arr.compute()
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def preview_level(levels: Sequence, max_side: int = PREVIEW_MAX_SIDE) -> int:
    """The finest level whose longest side is at most ``max_side`` (else the coarsest)."""
    for i, lv in enumerate(levels):
        if max(lv.shape[0], lv.shape[1]) <= max_side:
            return i
    return len(levels) - 1


def view_region(
    inp: ImageInput,
    level: int,
    corner: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    max_side: int = PREVIEW_MAX_SIDE,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Read a region of one level and return ``(pixels, scale, translate)`` in world units.

    ``corner`` / ``size`` are in pixels of that level (the whole level when None). Regions
    longer than ``max_side`` are read from a coarser level (stride) so a preview stays fast.
    """
    levels = inp.levels
    level = int(min(max(level, 0), len(levels) - 1))
    arr = levels[level]
    H, W = arr.shape[:2]
    y0, x0 = (0, 0) if corner is None else (max(int(corner[0]), 0), max(int(corner[1]), 0))
    h, w = (H - y0, W - x0) if size is None else (int(size[0]), int(size[1]))
    y1, x1 = min(y0 + h, H), min(x0 + w, W)
    if y1 <= y0 or x1 <= x0:
        raise ValueError("the current view shows no part of the image; pan or zoom onto it.")
    step = max(1, math.ceil(max(y1 - y0, x1 - x0) / max_side))
    region = _to_numpy(arr[y0:y1:step, x0:x1:step])
    H0, W0 = levels[0].shape[:2]
    ds_y, ds_x = H0 / H, W0 / W
    sy, sx = inp.scale[-2:]
    scale = (sy * ds_y * step, sx * ds_x * step)
    # napari draws pixel k of a level at level-0 data coordinate k * downsample (no
    # half-pixel shift); follow it so that the result overlays what is on screen
    ty = inp.translate[-2] + sy * y0 * ds_y
    tx = inp.translate[-1] + sx * x0 * ds_x
    return region, scale, (ty, tx)


# --------------------------------------------------------------------------- model


def as_predictor(model=None, device: str | None = None):
    """A Predictor from None (the plugin's current model), a name / path, a model or a
    Predictor."""
    if model is None:
        from ._model_state import MODEL

        return MODEL.predictor()
    if hasattr(model, "segment") and hasattr(model, "recognize"):
        return model
    from napari_biomedparse.inference.predictor import Predictor

    if isinstance(model, str | Path):
        from napari_biomedparse.hub import load_model

        model = load_model(str(model))
    return Predictor(model, device=device or "auto")


# --------------------------------------------------------------------------- segment


def _field(inp: ImageInput, level: int | None) -> tuple[np.ndarray, tuple, tuple]:
    if level is None:
        level = preview_level(inp.levels) if inp.multiscale else 0
    if not inp.multiscale and level == 0:
        return _to_numpy(inp.levels[0]), inp.scale, inp.translate
    return view_region(inp, level)


def segment_layer(
    image,
    prompts: Sequence[str] | str,
    *,
    modality: str = "pathology",
    site: str | None = None,
    threshold: float = 0.5,
    existence_test: bool = True,
    p_threshold: float = 0.05,
    output: str = "instances",
    shapes: str = "boxes",
    model=None,
    name: str | None = None,
    level: int | None = None,
    region: tuple[np.ndarray, tuple, tuple] | None = None,
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
) -> list[LayerDataTuple]:
    """Segment ``image`` with text prompts; return layer data tuples.

    ``output``: ``"probabilities"`` (one Image per prompt), ``"masks"`` (a Labels mask per
    prompt, with its p-value and presence in ``features``; a prompt failing the existence test
    gives an empty mask) or
    ``"instances"`` (per prompt, Labels of instances with features; and one Shapes layer of
    every instance with the class as text: ``shapes`` = ``"boxes"``, ``"outlines"`` or
    ``"none"``). ``region`` = ``(pixels, scale, translate)``
    overrides the image (the widget's "current view").
    """
    from napari_biomedparse.inference.prompts import parse_prompts

    prompts = parse_prompts(prompts)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    inp = as_image_input(image, name=name)
    total = 3
    _report(progress, 0, total, "loading model")
    pred = as_predictor(model)
    check_cancel(cancel)
    _report(progress, 1, total, "reading image")
    pixels, scale, translate = region if region is not None else _field(inp, level)
    check_cancel(cancel)
    _report(progress, 2, total, f"segmenting {len(prompts)} prompt(s)")
    producer = "segment"
    if output == "probabilities":
        probs = pred.segment(
            pixels,
            list(prompts),
            modality=modality,
            site=site,
            mpp=_pixel_mpp(inp, scale),
            **_task_kwargs("segment", progress, cancel),
        )
        check_cancel(cancel)
        out = _layers.probability_layers(
            probs, prompts, source=inp.name, producer=producer, scale=scale, translate=translate
        )
    else:
        det = pred.detect(
            pixels,
            list(prompts),
            modality=modality,
            site=site,
            mask_threshold=float(threshold),
            p_threshold=float(p_threshold) if existence_test else None,
            mpp=_pixel_mpp(inp, scale),
            **_task_kwargs("detect", progress, cancel),
        )
        check_cancel(cancel)
        out = _detection_layers(det, inp.name, producer, output, scale, translate, shapes)
    _report(progress, total, total, "done")
    return _tag(out, inp)


def _tag(out: list[LayerDataTuple], inp: ImageInput) -> list[LayerDataTuple]:
    """Record the source image's transform (for the writer's pixel coordinates)."""
    for _data, kw, _kind in out:
        bp = kw.setdefault("metadata", {}).setdefault("biomedparse", {})
        bp["image_scale"] = tuple(inp.scale)
        bp["image_translate"] = tuple(inp.translate)
        if inp.mpp:
            bp["image_mpp"] = float(inp.mpp)
        if inp.units:
            kw["units"] = inp.units
    return out


def _pixel_mpp(inp: ImageInput, scale) -> float | None:
    """Microns per pixel of the processed pixels (None when the image has no pixel size)."""
    if not inp.mpp or not inp.scale[-1]:
        return None
    return float(inp.mpp) * float(scale[-1]) / float(inp.scale[-1])


def _detection_layers(det, source, producer, output, scale, translate, shapes="boxes"):
    """Layers of a :class:`~napari_biomedparse.inference.results.Detection`: per prompt a
    mask (Labels, value 1) or its instances (Labels with features), plus one Shapes layer of
    every instance's outline with its class."""
    import pandas as pd

    summary = det.summary()
    out = []
    for i, prompt in enumerate(det.prompts):
        row = summary.iloc[i]
        if output == "masks":
            mask = np.asarray(det.masks[i]).astype(np.uint8)
            feats = pd.DataFrame(
                {
                    "index": [1],
                    "class": [prompt],
                    "p_value": [float(row["p_value"])],
                    "present": [bool(row["present"])],
                    "testable": [bool(row["testable"])],
                    "in_vocabulary": [bool(row["in_vocabulary"])],
                    "area": [int(mask.sum())],
                }
            )
            data, kw, kind = _layers.class_map_layer(
                mask, [prompt], source=source, producer=producer, scale=scale, translate=translate
            )
            kw["name"] = f"{source} {prompt} mask"
            kw["visible"] = True
            kw["features"] = feats
            out.append((data, kw, kind))
        else:
            table = det.table[det.table["prompt"] == prompt] if len(det.table) else det.table
            data, kw, kind = _layers.instance_labels_layer(
                np.asarray(det.labels[i]),
                table,
                source=source,
                producer=producer,
                scale=scale,
                translate=translate,
                metadata={"p_value": float(row["p_value"]), "present": bool(row["present"])},
            )
            kw["name"] = f"{source} {prompt} instances"
            out.append((data, kw, kind))
    if output == "instances":
        out += _shapes_layers(det, shapes, source, producer, scale, translate)
    return out


def _shapes_layers(result, shapes, source, producer, scale, translate) -> list[LayerDataTuple]:
    """[] or the Shapes layer of a Detection / Recognition's objects ("boxes" or "outlines")."""
    if shapes == "none":
        return []
    layer, _note = _layers.shapes_layer(
        result.table,
        outlines=result.outlines() if shapes == "outlines" else None,
        source=source,
        producer=producer,
        scale=scale,
        translate=translate,
        visible=shapes == "boxes",  # outlines: the instance Labels draw them already
    )
    return [layer]


# --------------------------------------------------------------------------- recognize


def recognize_layer(
    image,
    *,
    modality: str = "pathology",
    site: str | None = None,
    p_threshold: float = 0.05,
    shapes: str = "outlines",
    model=None,
    name: str | None = None,
    level: int | None = None,
    region: tuple[np.ndarray, tuple, tuple] | None = None,
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
) -> list[LayerDataTuple]:
    """Recognise every target of the modality: instances (with features), the class map and
    Shapes of outlines / boxes."""
    inp = as_image_input(image, name=name)
    total = 3
    _report(progress, 0, total, "loading model")
    pred = as_predictor(model)
    check_cancel(cancel)
    _report(progress, 1, total, "reading image")
    pixels, scale, translate = region if region is not None else _field(inp, level)
    check_cancel(cancel)
    _report(progress, 2, total, "recognizing all targets")
    rec = pred.recognize(
        pixels,
        modality=modality,
        site=site,
        p_threshold=float(p_threshold) if p_threshold else None,
        mpp=_pixel_mpp(inp, scale),
        **_task_kwargs("recognize", progress, cancel),
    )
    check_cancel(cancel)
    out = _recognition_layers(rec, inp.name, "recognize", scale, translate, shapes)
    _report(progress, total, total, "done")
    return _tag(out, inp)


def _recognition_layers(rec, source, producer, scale, translate, shapes="outlines"):
    import pandas as pd

    labels = np.asarray(rec.labels)
    names = list(rec.class_names)
    pv = np.asarray(rec.p_values, dtype=np.float64)
    extra = pd.DataFrame(
        {
            "p_value": pv if pv.ndim == 1 else np.full(len(names), np.nan),
            "kept": [n in set(rec.kept) for n in names],
            "count": [int(rec.counts().get(n, 0)) for n in names],
        }
    )
    out = [
        _layers.instance_labels_layer(
            labels, rec.table, source=source, producer=producer, scale=scale, translate=translate
        ),
        _layers.class_map_layer(
            np.asarray(rec.classes),
            names,
            source=source,
            producer=producer,
            extra=extra,
            scale=scale,
            translate=translate,
        ),
    ]
    return out + _shapes_layers(rec, shapes, source, producer, scale, translate)


# --------------------------------------------------------------------------- slides


def slide_layers(
    image,
    out: str | Path,
    *,
    prompts: Sequence[str] | None = None,
    recognize: bool = True,
    modality: str = "pathology",
    mpp: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    tissue_mask: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    model=None,
    scheduler: str | None = None,
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
) -> list[LayerDataTuple]:
    """Run the slide engine on a whole image (a file path, an array / pyramid or an Image
    layer) and return its results as layers (multiscale Labels read lazily from the store).
    ``scheduler``: address of a dask scheduler (``tcp://host:8786``) whose workers process the
    tiles (the store must be on a file system they share); None runs in this process."""
    from napari_biomedparse.slide.engine import process_slide

    inp = as_image_input(image) if not isinstance(image, str | Path) else None
    source = image if inp is None else (inp.path or inp.data)
    kwargs: dict[str, Any] = {
        "prompts": list(prompts) if prompts else None,
        "recognize": recognize,
        "modality": modality,
        "mpp": mpp,
        "tile_size": tile_size,
        "overlap": overlap,
        "tissue_mask": tissue_mask,
        "resume": resume,
        "overwrite": overwrite,
        "progress": _stage_progress(progress),
        "cancel": cancel,
    }
    if inp is not None and not inp.path:
        # an in-memory image: its pixel size comes from the layer (metadata, or a scale in
        # microns), since there is no file to read it from
        slide_mpp = inp.mpp
        if slide_mpp is None and inp.units and "micro" in str(inp.units[-1]):
            slide_mpp = float(inp.scale[-1])
        kwargs["slide_mpp"] = slide_mpp
    kwargs["model"] = model if model is not None else _current_model_or_default()
    client = None
    if scheduler:
        from napari_biomedparse.slide.distributed import make_client

        client = kwargs["client"] = make_client(scheduler)
    try:
        res = process_slide(source, out, **{k: v for k, v in kwargs.items() if v is not None})
    finally:
        if client is not None:
            client.close()
    check_cancel(cancel)
    name = inp.name if inp is not None else Path(str(image)).stem
    return result_layers(res, source_name=name, image=inp)


_STAGE_COUNT = re.compile(r"(\d+)/(\d+)\s*$")


def _stage_progress(progress: Callable | None) -> Callable | None:
    """``progress`` for the slide engine, reporting the stage its message names.

    The engine reports ``(done, total)`` of the whole run (every stage's units together) with
    the stage's own count in the message, ``"<stage> k/N"`` (slide/executors.py); a bar of
    the run's total beside "tiles 4/83" reads "4/110". This reports ``(k, N, message)``
    instead, so that the bar counts the units of the stage it names (it starts again at each
    stage); messages without a count pass unchanged."""
    if progress is None:
        return None

    def f(done, total, message=""):
        m = _STAGE_COUNT.search(str(message or ""))
        if m is not None and int(m.group(2)) > 0:
            done, total = int(m.group(1)), int(m.group(2))
        progress(done, total, message)

    return f


def _current_model_or_default():
    from ._model_state import MODEL

    return MODEL.model_for_engine()


def _store_outlines(res, table, limit: int) -> dict | None:
    """label -> (K, 2) yx ring (level-0 pixel-edge coordinates) from the store, or None
    when there are too many objects to draw outlines."""
    if table is None or len(table) == 0 or len(table) > limit:
        return None
    try:
        df = res.outlines
    except (OSError, KeyError, ValueError):
        return None
    out = {}
    for lab, ys, xs in zip(df["label"], df["y"], df["x"]):
        ring = np.column_stack([np.asarray(ys, np.float64), np.asarray(xs, np.float64)])
        if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        out[int(lab)] = ring
    return out


def result_layers(res, *, source_name: str | None = None, image: ImageInput | None = None):
    """Layers for a :class:`~napari_biomedparse.slide.engine.SlideResult`.

    Labels (instances, with features) and the class map are multiscale and read lazily from
    the store. They sit at the engine's target resolution (``res.scale`` slide pixels per
    pixel), so their napari ``scale`` is the image's times ``res.scale``, shifted by half a
    pixel difference so that pixel centres line up. Shapes use level-0 slide pixels; only
    what napari can draw is drawn (see :func:`._layers.shapes_layer`), the full set is in the
    store and its export (``res.to_geojson``, the writer).
    """
    table = res.table
    labels = list(res.labels or [])
    classes = list(res.classes or [])
    name = source_name or Path(str(res.path)).name.split(".")[0]
    if image is not None:
        S, T = tuple(image.scale[-2:]), tuple(image.translate[-2:])
    else:
        mpp0 = float(res.mpp) / float(res.scale)  # level-0 microns per pixel
        S, T = (mpp0, mpp0), (0.0, 0.0)
    k = float(res.scale)
    lab_scale = (S[0] * k, S[1] * k)
    lab_translate = (T[0] + S[0] * (k - 1) / 2, T[1] + S[1] * (k - 1) / 2)
    names = list(res.class_names)
    meta = {"store": str(res.path), "image_scale": S, "image_translate": T}
    units = image.units[-2:] if image is not None and image.units else None
    if image is None:
        units = ("micrometer", "micrometer")
    out = []
    if not labels and not classes:  # probabilities only (recognize=False)
        probs = res.probs
        for i, prompt in enumerate(res.params.get("prompts") or names):
            if i >= probs.shape[0]:
                break
            data, kw, kind = _layers.probability_layers(
                [probs[i]],
                [prompt],
                source=name,
                producer="slide",
                scale=lab_scale,
                translate=lab_translate,
            )[0]
            kw["contrast_limits"] = (0, 255)  # stored as probability x 255
            kw["metadata"]["biomedparse"].update(meta)
            out.append((data, kw, kind))
    if labels:
        data, kw, kind = _layers.instance_labels_layer(
            labels if len(labels) > 1 else labels[0],
            table,
            source=name,
            producer="slide",
            scale=lab_scale,
            translate=lab_translate,
            multiscale=len(labels) > 1,
            metadata=meta,
        )
        out.append((data, kw, kind))
    if classes:
        data, kw, kind = _layers.class_map_layer(
            classes if len(classes) > 1 else classes[0],
            names,
            source=name,
            producer="slide",
            scale=lab_scale,
            translate=lab_translate,
            multiscale=len(classes) > 1,
        )
        kw["metadata"]["biomedparse"].update(meta)
        out.append((data, kw, kind))
    if table is not None and len(table):
        shapes, _note = _layers.shapes_layer(
            table,
            outlines=_store_outlines(res, table, _layers.MAX_OUTLINES),
            outline_offset=-0.5,
            source=name,
            producer="slide",
            scale=S,
            translate=T,
            metadata=meta,
            visible=False,  # the instance Labels draw the outlines; shown when asked
        )
        out.append(shapes)
    if units:
        for _d, kw, _k in out:
            kw["units"] = units
    return out


def open_result_layers(path: str | Path) -> list[LayerDataTuple]:
    """Layers of an earlier slide run, from its zarr store."""
    from napari_biomedparse.slide.engine import SlideResult

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no result store at {p}")
    return result_layers(SlideResult.open(p))
