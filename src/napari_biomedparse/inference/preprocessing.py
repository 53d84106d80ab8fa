"""Preprocessing presets: any image a napari user has -> the RGB uint8 square the model expects.

The official pipeline (``inference_utils/processing_utils.py`` of microsoft/BiomedParse v1,
``shared/reference/v1_facts.md`` section 1), reproduced step for step:

- intensity images (one channel, not 8-bit, or any CT): clip to the CT window of the site
  (Hounsfield units) or, for other modalities, to the 0.5th..99.5th percentiles of the pixels
  that are > 0; scale to [0, 255] with the clipped image's own min and max;
- pad the short axis with zeros, ``(long - short) // 2`` on both sides (an odd difference leaves
  the result one pixel short of square, as in the official code);
- resize to the model input size with ``skimage.transform.resize(order=3, mode="constant",
  preserve_range=True, anti_aliasing=True)`` (per channel for RGB) and cast to uint8 by
  truncation; grey images are repeated to 3 channels, RGBA drops alpha.

RGB uint8 images (pathology, endoscopy, fundus, dermoscopy, brightfield...) pass through
unchanged apart from padding and resizing: the official notebooks do no clipping for RGB.

Extensions beyond the official code (documented where they act): NaN / +-inf pixels (set to the
lower / upper clipping bound, bounds computed on finite pixels), constant images (mapped to 0
instead of dividing by zero), 16-bit or float RGB (clipped jointly over the channels),
multichannel images (``channels=`` picks 1, 2 or 3 channels, each scaled on its own), RGB
uint8 images with a CT modality (taken as already windowed), images without a pixel > 0
(percentiles over all finite pixels: negative floats are scaled, not blacked out).

:func:`unpad` maps model outputs back to the input's pixel grid: bilinear resize (the official
upsampling, ``align_corners=False``) to the padded shape, then the padding is cropped away.

(Longer than 400 lines on purpose: :func:`preprocess`, :func:`to_rgb_uint8` and
:func:`intensity_stats` are three entry points to one preset and must scale an image the same
way, so they share the input checks (``_classify``, ``_check_dtype``) and the scaling
(``_bounds``, ``_scaled_channels``, :class:`IntensityStats`). The geometry (:class:`PadInfo`,
:func:`pad_to_square`, :func:`resize_like_official`, :func:`unpad`, about 75 lines) could move
out, but would leave the intensity part at about 400 lines.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .modalities import ImageType, normalize_modality

__all__ = [
    "INK_MODALITIES",
    "PadInfo",
    "RGB_MODALITIES",
    "as_channels_last",
    "intensity_scale",
    "masks_ink",
    "pad_to_square",
    "preprocess",
    "resize_like_official",
    "to_rgb_uint8",
    "unpad",
]

#: Modalities whose images are colour photographs / stains; the others are intensity images.
RGB_MODALITIES = frozenset({"Pathology", "Endoscopy", "Fundus", "Dermoscopy", "Brightfield"})

#: Modalities whose preset removes tissue-marking ink from the predictions (H&E slides):
#: probabilities are set to 0 on the ink of every tile (:mod:`.ink`). Other stains,
#: fluorescence and radiology keep their colours as they are.
INK_MODALITIES = frozenset({"Pathology"})


def masks_ink(modality, site: str | None = None) -> bool:
    """Whether the preset of ``modality`` masks tissue-marking ink (:data:`INK_MODALITIES`);
    accepts every name :func:`~.modalities.normalize_modality` accepts."""
    return normalize_modality(modality, site).modality in INK_MODALITIES


@dataclass(frozen=True)
class PadInfo:
    """How an image was padded and resized, to map outputs back (see :func:`unpad`).

    Attributes:
        shape: (H, W) of the input image in pixels.
        padded_shape: (Hp, Wp) after the official padding (square, or one pixel short).
        offset: (top, left) position of the input inside the padded image.
        size: side of the resized square (the model input size), or None if not resized.
    """

    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    offset: tuple[int, int]
    size: int | None


def _describe(image) -> str:
    return f"an array of shape {tuple(image.shape)} and dtype {image.dtype}"


def as_channels_last(image, channel_axis: int | None = None) -> np.ndarray:
    """Move ``channel_axis`` (if given) to the end; returns a numpy view/array."""
    image = np.asarray(image)
    if channel_axis is not None:
        if not -image.ndim <= channel_axis < image.ndim:
            raise ValueError(f"channel_axis={channel_axis} is out of range for {_describe(image)}")
        image = np.moveaxis(image, channel_axis, -1)
    return image


def _replace_nonfinite(x: np.ndarray, lower: float, upper: float) -> np.ndarray:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        x = x.copy()
        x[np.isnan(x) | (x == -np.inf)] = lower
        x[x == np.inf] = upper
    return x


def _bounds(x: np.ndarray, window) -> tuple[float, float, float, float] | None:
    """(lower, upper, lo, hi) of the official rule for ``x``: clipping bounds and the clipped
    image's min and max. An image without a pixel > 0 (which the official rule cannot scale)
    takes its percentiles over every finite pixel; None: no finite pixel and no window, the
    image maps to zeros."""
    finite = np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else None
    if window is not None:
        lower, upper = window
    else:
        vals = x[finite & (x > 0)] if finite is not None else x[x > 0]
        if vals.size == 0:  # no pixel > 0 (e.g. negative floats): from every finite pixel
            vals = x[finite] if finite is not None else x.reshape(-1)
        if vals.size == 0:
            return None
        lower, upper = np.percentile(vals, 0.5), np.percentile(vals, 99.5)
    if finite is not None:
        vals = x[finite]
        lo = max(float(lower), float(vals.min())) if vals.size else float(lower)
        hi = min(float(upper), float(vals.max())) if vals.size else float(upper)
        if not finite.all():  # NaN / -inf take the lower bound, +inf the upper
            if (np.isnan(x) | (x == -np.inf)).any():
                lo = float(lower)
            if (x == np.inf).any():
                hi = float(upper)
    else:
        lo = max(float(lower), float(x.min()))
        hi = min(float(upper), float(x.max()))
    return float(lower), float(upper), lo, hi


def intensity_scale(
    image: np.ndarray,
    window: tuple[float, float] | None = None,
    *,
    bounds: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Official intensity normalisation of a 2-D image to float in [0, 255].

    Args:
        image: (H, W) (or (H, W, C), scaled jointly) numeric array; CT in Hounsfield units.
        window: (lower, upper) clipping bounds (a CT window); None = the 0.5th and 99.5th
            percentiles (numpy's linear interpolation) of the finite pixels that are > 0.

        bounds: precomputed ``(lower, upper, lo, hi)`` (clipping bounds and the clipped
            image's min and max, as :func:`intensity_stats` records them for a whole image):
            used instead of this array's own, so that a tile of an image is scaled exactly as
            the whole image is; values then stay clipped to [0, 255].

    Returns:
        float array, same shape: ``clip(x, lower, upper)`` min-max scaled to [0, 255] with the
        clipped image's own min and max (the official rule). NaN and -inf pixels take the lower
        bound, +inf the upper bound; a constant image gives zeros.
    """
    x = np.asarray(image)
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"expected a numeric intensity image; got {_describe(x)}")
    if bounds is None:
        bounds = _bounds(x, window)
        if bounds is None:
            return np.zeros(x.shape, dtype=np.float64)
    lower, upper, lo, hi = bounds
    x = np.clip(_replace_nonfinite(x, lower, upper), lower, upper)
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float64)
    return np.clip((x - lo) / (hi - lo) * 255.0, 0.0, 255.0)


def pad_to_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Official zero padding of the short axis by ``(long - short) // 2`` on both sides.

    Args:
        image: (H, W) or (H, W, C).

    Returns:
        (padded, (top, left)).
    """
    h, w = image.shape[:2]
    extra = [(0, 0)] * (image.ndim - 2)
    if h > w:
        pad = (h - w) // 2
        return np.pad(image, [(0, 0), (pad, pad), *extra], mode="constant"), (0, pad)
    if w > h:
        pad = (w - h) // 2
        return np.pad(image, [(pad, pad), (0, 0), *extra], mode="constant"), (pad, 0)
    return image, (0, 0)


def resize_like_official(channel: np.ndarray, size: int) -> np.ndarray:
    """``skimage.transform.resize`` with the official arguments, for one (H, W) channel.

    Returns:
        (size, size) float64 (values within the input's min..max, skimage's ``clip=True``).
    """
    from skimage.transform import resize

    return resize(
        channel, (size, size), order=3, mode="constant", preserve_range=True, anti_aliasing=True
    )


def _pick_channels(image: np.ndarray, channels) -> np.ndarray:
    idx = [channels] if np.isscalar(channels) else list(channels)
    if not 1 <= len(idx) <= 3:
        raise ValueError(f"channels must name 1 to 3 channels; got {channels!r}")
    c = image.shape[-1]
    for i in idx:
        if not isinstance(i, (int, np.integer)) or not -c <= i < c:
            raise ValueError(
                f"channel {i!r} does not exist: the image has {c} channels (0..{c - 1})"
            )
    return image[..., idx]


def _classify(image: np.ndarray, channels) -> tuple[np.ndarray, str]:
    """Return (array, kind) with kind in {"grey", "rgb", "multi"}; array (H, W) or (H, W, C)."""
    if image.ndim == 2:
        idx = None if channels is None else ([channels] if np.isscalar(channels) else channels)
        if idx is not None and list(idx) not in ([0], [-1]):
            raise ValueError(f"channels={channels!r} given for a single-channel (H, W) image")
        return image, "grey"
    if image.ndim != 3:
        raise ValueError(
            f"a 2-D image must be (H, W) or (H, W, C); got {_describe(image)}. For a 3-D stack use "
            "segment/detect/recognize, which process (Z, H, W[, C]) slice by slice"
        )
    if channels is not None:
        picked = _pick_channels(image, channels)
        if picked.shape[-1] == 1:
            return picked[..., 0], "grey"
        return picked, "multi"
    c = image.shape[-1]
    if c == 1:
        return image[..., 0], "grey"
    if c == 3:
        return image, "rgb"
    if c == 4:
        return image[..., :3], "rgb"  # RGBA: alpha dropped (official read_rgb)
    raise ValueError(
        f"cannot interpret {_describe(image)} as grey, RGB or RGBA: it has {c} channels. "
        "Pick 1-3 of them with channels=[...] (channels last, or give channel_axis=)"
    )


def _check_dtype(image: np.ndarray, it: ImageType) -> None:
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise ValueError(
            f"expected a numeric image (uint8, uint16, int16, float32...); got {_describe(image)}"
        )
    if np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"complex images are not supported; got {_describe(image)}")
    if it.modality == "CT" and image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.unsignedinteger):
            raise ValueError(
                f"CT expects Hounsfield units (signed integers or floats, air = -1000); got "
                f"{_describe(image)}. Apply the DICOM rescale (pixel * RescaleSlope + "
                "RescaleIntercept) first, or pass an already windowed uint8 image"
            )
        if it.window is None:
            raise ValueError(
                "CT needs a site to choose the intensity window (HU): give site= one of "
                "abdomen, chest (lung), liver, pelvis, colon, pancreas, or modality='CT-Abdomen'"
            )


def _scaled_channels(
    image: np.ndarray, kind: str, it: ImageType, stats: IntensityStats | None = None
) -> tuple[list, bool]:
    """Per output channel: float [0, 255] arrays (intensity path) or uint8 (pass through).

    ``stats``: precomputed bounds per scaled group (:func:`intensity_stats`) or None.
    Returns (list of 3 (H, W) arrays, is_uint8_passthrough).
    """
    window = None
    if it.modality == "CT":
        lo, hi = it.window  # type: ignore[misc]
        window = (int(lo), int(hi))  # official windows are ints: np.clip keeps an int dtype
    groups = iter(stats.bounds) if stats is not None else None

    def scale(x, window):
        if groups is None:
            return intensity_scale(x, window)
        b = next(groups, "missing")
        if b == "missing":
            raise ValueError("stats do not match this image: compute them with intensity_stats")
        return np.zeros(x.shape, np.float64) if b is None else intensity_scale(x, bounds=b)

    if kind == "grey":
        if image.dtype == np.uint8 and it.modality in RGB_MODALITIES | {"CT"}:
            return [image] * 3, True
        return [scale(image, window)] * 3, False
    if kind == "rgb":
        if image.dtype == np.uint8:
            return [image[..., i] for i in range(3)], True
        if it.modality == "CT":
            raise ValueError(
                f"CT expects a single channel in Hounsfield units; got {_describe(image)} "
                "(an RGB CT image must be 8-bit, already windowed)"
            )
        scaled = scale(image, window)  # jointly, keeps the colour balance
        return [scaled[..., i] for i in range(3)], False
    # multichannel selection: each channel scaled on its own (uint8 channels pass through)
    if image.dtype == np.uint8:
        chans = [image[..., i] for i in range(image.shape[-1])]
        while len(chans) < 3:
            chans.append(np.zeros_like(chans[0]))
        return chans, True
    chans = [scale(image[..., i], window) for i in range(image.shape[-1])]
    while len(chans) < 3:
        chans.append(np.zeros_like(chans[0]))
    return chans, False


@dataclass(frozen=True)
class IntensityStats:
    """Per-image statistics of the intensity preset, reusable for any part of the image.

    ``kind``: "grey", "rgb" (scaled jointly) or "multi" (each selected channel on its own);
    ``bounds``: one ``(lower, upper, lo, hi)`` per scaled group (clipping bounds, then the
    clipped image's min and max), None for a group that maps to zeros; empty for uint8 images
    that pass through. Plain floats, so the statistics can be stored with a result.
    """

    kind: str
    bounds: tuple

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bounds": [None if b is None else list(b) for b in self.bounds]}

    @classmethod
    def from_dict(cls, d: dict) -> IntensityStats:
        b = tuple(None if v is None else tuple(float(x) for x in v) for v in d["bounds"])
        return cls(str(d["kind"]), b)


def intensity_stats(
    image,
    modality,
    site: str | None = None,
    channels=None,
    channel_axis: int | None = None,
) -> IntensityStats:
    """The statistics :func:`to_rgb_uint8` computes for ``image`` (the whole image, or a
    representative version of it such as a low-resolution slide level), to pass as ``stats=``
    when converting parts of it (tiles), so that every part is scaled as the whole image."""
    it = normalize_modality(modality, site)
    image = as_channels_last(image, channel_axis)
    arr, kind = _classify(image, channels)
    _check_dtype(arr, it)
    window = None
    if it.modality == "CT":
        window = tuple(int(v) for v in it.window)  # type: ignore[union-attr]
    if arr.dtype == np.uint8 and (kind != "grey" or it.modality in RGB_MODALITIES | {"CT"}):
        return IntensityStats(kind, ())  # uint8 passes through
    if kind == "multi":
        groups = [arr[..., i] for i in range(arr.shape[-1])]
    else:
        groups = [arr]
    return IntensityStats(kind, tuple(_bounds(np.asarray(g), window) for g in groups))


def to_rgb_uint8(
    image,
    modality,
    site: str | None = None,
    channels=None,
    channel_axis: int | None = None,
    *,
    stats: IntensityStats | dict | None = None,
) -> np.ndarray:
    """The intensity part of the preset only (no padding, no resizing).

    For tiles of large images, where padding and resizing are done by the caller.

    Args:
        image: (H, W) or (H, W, C) as for :func:`preprocess`.
        stats: None (the image's own statistics, as :func:`preprocess` uses them), or the
            :func:`intensity_stats` of the image this one is a part of (e.g. per-slide
            statistics for a slide tile): then the tile gets exactly the values that converting
            the whole image would give it.

    Returns:
        (H, W, 3) uint8 RGB (scaled values truncated to uint8).
    """
    it = normalize_modality(modality, site)
    image = as_channels_last(image, channel_axis)
    arr, kind = _classify(image, channels)
    _check_dtype(arr, it)
    if isinstance(stats, dict):
        stats = IntensityStats.from_dict(stats)
    if stats is not None and stats.kind != kind:
        raise ValueError(
            f"stats were computed for a {stats.kind!r} image, this one is {kind!r}: compute them "
            "with intensity_stats on the same kind of image (same channels=)"
        )
    chans, _ = _scaled_channels(arr, kind, it, stats if stats and stats.bounds else None)
    return np.stack([np.asarray(c).astype(np.uint8) for c in chans], axis=-1)


def preprocess(
    image,
    modality,
    site: str | None = None,
    channels=None,
    *,
    size: int | None = 1024,
    channel_axis: int | None = None,
) -> tuple[np.ndarray, PadInfo]:
    """Apply the modality's preset: intensity scaling, padding to square, resizing.

    Args:
        image: one 2-D image: (H, W) grey, (H, W, 3) RGB, (H, W, 4) RGBA, or (H, W, C)
            multichannel with ``channels`` picking 1-3 channels; dtype uint8, uint16, int16
            (CT in Hounsfield units), float32/64 (NaN and inf allowed).
        modality: modality or official image type (see :func:`normalize_modality`).
        site: anatomical site (CT: chooses the HU window).
        channels: int or list of 1-3 channel indices (last axis) to use.
        size: side of the model input (1024 for v1; ``model.config.input_size``); None = pad
            only, do not resize.
        channel_axis: axis holding the channels if it is not the last one.

    Returns:
        (rgb, pad_info): rgb (size, size, 3) uint8 (or the padded shape when ``size`` is None);
        pad_info for :func:`unpad`.

    Raises:
        ValueError: unknown modality/site, or an image the preset cannot interpret (the message
            says what was received and what is expected).
    """
    it = normalize_modality(modality, site)
    image = as_channels_last(image, channel_axis)
    arr, kind = _classify(image, channels)
    _check_dtype(arr, it)
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"the image is empty: {_describe(image)}")
    chans, _ = _scaled_channels(arr, kind, it)
    # pad and resize each distinct channel once (grey images share one array 3 times)
    cache: dict[int, np.ndarray] = {}
    out = []
    offset = (0, 0)
    padded_shape = (h, w)
    for c in chans:
        key = id(c)
        if key not in cache:
            padded, offset = pad_to_square(np.asarray(c))
            padded_shape = padded.shape[:2]
            if size is None:
                res = padded
            else:
                res = resize_like_official(padded, int(size))
            # uint8 cast truncates toward zero (official astype / assignment into uint8)
            cache[key] = np.asarray(res).astype(np.uint8)
        out.append(cache[key])
    rgb = np.stack(out, axis=-1)
    info = PadInfo(
        shape=(int(h), int(w)),
        padded_shape=(int(padded_shape[0]), int(padded_shape[1])),
        offset=(int(offset[0]), int(offset[1])),
        size=None if size is None else int(size),
    )
    return rgb, info


def unpad(probs, pad_info: PadInfo) -> np.ndarray:
    """Map model-input-sized outputs back to the input image's pixel grid.

    Args:
        probs: (..., S, S) float maps at the model input size (or at the padded shape when the
            image was not resized).
        pad_info: from :func:`preprocess`.

    Returns:
        (..., H, W) float32: bilinear resize (``align_corners=False``, the official upsampling)
        to the padded shape, then the padding cropped.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"expected maps (..., S, S); got shape {arr.shape}")
    ph, pw = pad_info.padded_shape
    if arr.shape[-2:] != (ph, pw):
        lead = arr.shape[:-2]
        t = torch.from_numpy(np.ascontiguousarray(arr.reshape(1, -1, *arr.shape[-2:])))
        t = F.interpolate(t, size=(ph, pw), mode="bilinear", align_corners=False)
        arr = t.numpy().reshape(*lead, ph, pw)
    top, left = pad_info.offset
    h, w = pad_info.shape
    return np.ascontiguousarray(arr[..., top : top + h, left : left + w])
