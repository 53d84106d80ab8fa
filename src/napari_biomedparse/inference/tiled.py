"""Tiled prediction at the image's own resolution, for models trained on tiles.

BiomedParse v1 is applied to a whole image resized to its input size (1024 px), which is how
it was trained. A model trained on tiles at a fixed pixel size (the bundled default model: 256
px tiles at ~0.5 um/px) must instead see the image at that pixel size: resizing a 1500 x 1500
H&E field to 256 px shrinks its nuclei about 6 times. Such a model says so in its metadata::

    model.metadata["inference"] = {"mode": "tiled", "tile_size": 256, "overlap": 32, "mpp": 0.5}

(absent, or ``"mode": "whole"``: the official whole-image semantics; ``tile_size`` records the
training tile size, the tasks tile at the model's input size, which ``predict_batch`` takes;
``mpp`` is the pixel size of the training images in microns). :func:`inference_spec`
reads it; :mod:`.tasks` (``segment`` / ``detect`` / ``recognize``) then runs
:func:`predict_tiled` on the preprocessed RGB image instead of padding it to a square and
resizing it, after rescaling the image to the model's ``mpp`` when the caller gives the
image's (:func:`rescale_rgb`, :func:`resize_probs`).

:func:`predict_tiled`: overlapping tiles of ``tile_size`` px (images smaller than a tile are
zero-padded, as the official padding), batched through ``predictor.predict_batch``, blended
with weights that fall off linearly over ``overlap`` px towards each tile edge (the slide
engine's blending), so that tile borders, where the model sees least context, count least.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .progress import check_cancel, report

__all__ = [
    "blend_weights",
    "inference_spec",
    "predict_tiled",
    "rescale_factor",
    "rescale_rgb",
    "resize_probs",
    "tile_origins",
]

#: Overlap (px) of :func:`predict_tiled` when a model's metadata does not give one.
DEFAULT_OVERLAP = 32


def inference_spec(model_or_metadata) -> dict | None:
    """The tiled-inference settings a model declares, or None for whole-image inference.

    Args:
        model_or_metadata: a model (its ``metadata`` is read) or a metadata dict.

    Returns:
        None when ``metadata["inference"]`` is absent / None or its ``mode`` is "whole";
        else ``{"mode": "tiled", "tile_size": int | None (None: the model's input size),
        "overlap": int, "mpp": float | None}``.

    Raises:
        ValueError: an unknown ``mode``.
    """
    meta = model_or_metadata
    if not isinstance(meta, Mapping):
        meta = getattr(model_or_metadata, "metadata", None)
    if not isinstance(meta, Mapping):
        return None
    spec = meta.get("inference")
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"metadata['inference'] must be a dict; got {spec!r}")
    mode = str(spec.get("mode", "whole")).lower()
    if mode == "whole":
        return None
    if mode != "tiled":
        raise ValueError(f"unknown inference mode {mode!r} in the model's metadata: whole, tiled")
    tile = spec.get("tile_size")
    overlap = spec.get("overlap")
    mpp = spec.get("mpp")
    return {
        "mode": "tiled",
        "tile_size": int(tile) if tile else None,
        "overlap": DEFAULT_OVERLAP if overlap is None else int(overlap),
        "mpp": float(mpp) if mpp else None,
    }


def tile_origins(shape: tuple[int, int], tile: int, overlap: int = 32) -> list[tuple[int, int]]:
    """Origins (y, x) of tiles of side ``tile`` that cover an (H, W) image with ``overlap``
    (the last tile of a row / column ends at the image edge)."""
    h, w = shape

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        step = max(tile - overlap, 1)
        return sorted(set(range(0, n - tile, step)) | {n - tile})

    return [(y, x) for y in starts(h) for x in starts(w)]


def blend_weights(tile_size: int, overlap: int) -> np.ndarray:
    """Blending weights ``(T, T)`` float32 in (0, 1], falling off linearly over ``overlap``
    towards the tile edges (1 everywhere when ``overlap`` <= 0)."""
    k = np.arange(tile_size, dtype=np.float64)
    d = np.minimum(k, tile_size - 1 - k) + 0.5
    r = np.ones(tile_size) if overlap <= 0 else np.minimum(1.0, d / overlap)
    return np.outer(r, r).astype(np.float32)


def predict_tiled(
    predictor,
    rgb: np.ndarray,
    prompts: Sequence[str],
    *,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    joint: bool = False,
    progress=None,
    cancel=None,
) -> np.ndarray:
    """Sliding-window prediction at the image's own pixel size (the image is not resized).

    Args:
        predictor: an object with ``input_size`` and ``predict_batch(tiles uint8 (B, T, T, 3),
            prompts, joint=...) -> float32 (B, P, T, T)``
            (:class:`~napari_biomedparse.inference.predictor.Predictor`).
        rgb: (H, W, 3) uint8; an image smaller than a tile is zero-padded to one tile.
        prompts: P prompts.
        tile_size: tile side T (default: ``predictor.input_size``; the Predictor accepts
            only its input size).
        overlap: overlap of neighbouring tiles in px; the blending weights fall off linearly
            over this many px towards each tile edge.
        batch_size: tiles per ``predict_batch`` call.
        joint: passed to ``predict_batch`` (coupled prompts, the official multi-prompt call).
        progress: ``progress(done_tiles, n_tiles, "tiles k/N")`` after each batch (:mod:`.progress`).
        cancel: checked before each batch; raises :class:`~.progress.Cancelled`.

    Returns:
        float32 (P, H, W) probabilities: the weighted mean of the overlapping tiles.
    """
    prompts = list(prompts)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3); got {rgb.dtype} {rgb.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    t = int(tile_size or predictor.input_size)
    overlap = max(0, min(int(overlap), t // 2))
    h, w = rgb.shape[:2]
    ph, pw = max(t - h, 0), max(t - w, 0)
    img = np.pad(rgb, ((0, ph), (0, pw), (0, 0))) if (ph or pw) else rgb
    hp, wp = img.shape[:2]
    weight = blend_weights(t, overlap)
    acc = np.zeros((len(prompts), hp, wp), np.float32)
    norm = np.zeros((hp, wp), np.float32)
    origins = tile_origins((hp, wp), t, overlap)
    n = len(origins)
    for i in range(0, n, batch_size):
        check_cancel(cancel)
        chunk = origins[i : i + batch_size]
        tiles = np.stack([img[y : y + t, x : x + t] for y, x in chunk])
        prob = np.asarray(predictor.predict_batch(tiles, prompts, joint=joint), np.float32)
        for k, (y, x) in enumerate(chunk):
            acc[:, y : y + t, x : x + t] += prob[k] * weight
            norm[y : y + t, x : x + t] += weight
        done = min(i + batch_size, n)
        report(progress, done, n, f"tiles {done}/{n}")
    return np.ascontiguousarray((acc / norm)[:, :h, :w])


def rescale_factor(image_mpp: float | None, model_mpp: float | None) -> float | None:
    """Zoom that brings an image of ``image_mpp`` um/px to ``model_mpp`` (None: no rescale,
    when either is unknown or they differ by less than 1 %)."""
    if not image_mpp or not model_mpp:
        return None
    f = float(image_mpp) / float(model_mpp)
    return None if abs(f - 1.0) < 0.01 else f


def rescale_rgb(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Zoom an (H, W, 3) uint8 image by ``factor`` (linear interpolation, anti-aliased when
    shrinking; ``skimage.transform.rescale``)."""
    from skimage.transform import rescale

    out = rescale(
        rgb, factor, order=1, channel_axis=-1, preserve_range=True, anti_aliasing=factor < 1
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize probability maps ``(..., h, w)`` to ``(..., H, W)`` float32: bilinear (pixel
    centres aligned), antialiased when shrinking. The one probability resize of the package
    (tasks at another pixel size, slide tiles from the model input to the tile size; the
    device path of ``inference.fast.FastPredictor`` does the same with torch on the device)."""
    probs = np.asarray(probs, np.float32)
    shape = tuple(int(v) for v in shape)
    if probs.shape[-2:] == shape:
        return probs
    import torch

    lead = probs.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(probs.reshape(1, -1, *probs.shape[-2:])))
    shrink = shape[0] < probs.shape[-2] or shape[1] < probs.shape[-1]
    r = torch.nn.functional.interpolate(
        t, size=shape, mode="bilinear", align_corners=False, antialias=shrink
    )
    return r.numpy().reshape(*lead, *shape)
