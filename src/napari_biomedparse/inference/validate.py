"""The rules that say which inputs can be processed, in one place for every entry point.

- :func:`check_image_kind`: the pixel types and channel counts the model pipeline accepts
  (the Predictor's preprocessing and the slide engine apply the same rules): numeric
  real-valued pixels (not bool, not complex), 1 (grey), 3 (RGB) or 4 (RGBA) channels;
  other channel counts need an explicit choice of channels.
- :func:`check_mpp`: a pixel size is a finite number within ``MPP_RANGE`` um/px, and a
  target resolution at most ``MAX_UPSAMPLE`` times finer than the source.
- :func:`check_work`: the estimated number of tiles is at most ``MAX_TILES``;
  :func:`check_tile_read`: a tile is at most ``MAX_TILE_SIZE`` px and reads at most
  ``MAX_TILE_READ`` source pixels.
- :func:`check_prompt_text`: a prompt is text that can be encoded (no lone surrogates).
- :func:`estimate_in_memory`: seconds and bytes of an in-memory run, with
  :func:`check_in_memory` refusing what cannot fit and advising the slide engine for runs
  estimated to take long.

All raise :class:`~napari_biomedparse.errors.InvalidInputError` (a ``ValueError``) with what
to do.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from napari_biomedparse.errors import InvalidInputError

__all__ = [
    "MPP_RANGE",
    "MAX_UPSAMPLE",
    "MAX_TILES",
    "check_image_kind",
    "check_mpp",
    "check_work",
    "check_prompt_text",
    "estimate_in_memory",
    "check_in_memory",
    "check_tile_read",
]

MPP_RANGE = (0.01, 100.0)  # um/px: from super-resolution microscopy to a 10x-downsampled scan
MAX_UPSAMPLE = 8.0  # target pixels at most 8x finer than the source's
MAX_TILES = 2_000_000  # ~ a 200,000^2 px slide at 256 px tiles: beyond this, a typo
SLOW_SECONDS = 600.0  # in-memory runs estimated longer than this get a warning


def check_image_kind(dtype, channels: int, *, name: str = "the image", channels_given=False):
    """Refuse pixel types and channel counts the pipeline cannot interpret."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        raise InvalidInputError(
            f"{name} is boolean (a mask?), not an image: give the intensity image, or convert "
            "it (e.g. mask.astype('uint8') * 255) if it really is one"
        )
    if np.issubdtype(dt, np.complexfloating):
        raise InvalidInputError(
            f"{name} has complex pixels ({dt}): give the magnitude (np.abs) or another real image"
        )
    if not np.issubdtype(dt, np.number):
        raise InvalidInputError(f"{name} has non-numeric pixels ({dt}); give a numeric image")
    if not channels_given and int(channels) not in (1, 3, 4):
        raise InvalidInputError(
            f"{name} has {int(channels)} channels: it is neither grey (1), RGB (3) nor RGBA (4). "
            "Choose 1 or 3 channels of it (e.g. image[..., [0, 1, 2]], or channels=[...] where "
            "the function offers it) and pass that"
        )


def check_mpp(value, *, name: str = "mpp", source_mpp: float | None = None) -> float:
    """``value`` as a float in ``MPP_RANGE`` (and, with ``source_mpp``, at most
    ``MAX_UPSAMPLE`` times finer than it)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{name} must be a number of microns per pixel, got {value!r}"
        ) from None
    lo, hi = MPP_RANGE
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidInputError(
            f"{name} must be a finite pixel size between {lo:g} and {hi:g} um/px, got {value!r} "
            "(pathology is typically 0.25-1, fluorescence 0.1-2)"
        )
    if source_mpp is not None and v * MAX_UPSAMPLE < float(source_mpp):
        raise InvalidInputError(
            f"{name}={v:g} um/px is more than {MAX_UPSAMPLE:g}x finer than the image's "
            f"{float(source_mpp):g} um/px (upsampling adds no detail, only work): choose "
            f"{name} >= {float(source_mpp) / MAX_UPSAMPLE:g}"
        )
    return v


def check_work(n_tiles: int, *, what: str = "the run", limit: int = MAX_TILES) -> int:
    """Refuse a run of more than ``limit`` tiles (a typo in a size or pixel size)."""
    if int(n_tiles) > limit:
        raise InvalidInputError(
            f"{what} would need {int(n_tiles):,} tiles (the limit is {limit:,}): check the pixel "
            "size (mpp, slide_mpp) and the tile size"
        )
    return int(n_tiles)


def check_prompt_text(prompt: str) -> str:
    """A prompt that is a str and encodes as UTF-8 (no lone surrogate, e.g. from a badly
    decoded file name)."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"a prompt must be text, got {type(prompt).__name__} {prompt!r}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = prompt[exc.start : exc.end]
        raise InvalidInputError(
            f"the prompt {prompt!r} holds characters that are not valid text ({bad!r} at "
            f"position {exc.start}, a lone surrogate from a wrongly decoded string); retype it"
        ) from None
    return prompt


def _available_bytes() -> int:
    """Memory available to a new allocation (Linux ``MemAvailable``: free + reclaimable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def estimate_in_memory(
    height: int, width: int, n_prompts: int, *, tile: int, seconds_per_tile: float = 0.3
) -> dict:
    """Estimated cost of an in-memory run over an ``(height, width)`` image: ``tiles``,
    ``seconds`` (at ``seconds_per_tile`` per model call; 0.3 s is the bundled model on one
    CPU core), ``bytes`` (the float32 probability maps, ``n_prompts * height * width * 4``,
    plus as much again for the blending weights and outputs)."""
    step = max(1, int(tile) - 32)
    tiles = math.ceil(max(1, height) / step) * math.ceil(max(1, width) / step)
    return {
        "tiles": int(tiles),
        "seconds": float(tiles * seconds_per_tile),
        "bytes": int(2 * n_prompts * height * width * 4),
    }


def check_in_memory(
    height: int,
    width: int,
    n_prompts: int,
    *,
    tile: int,
    seconds_per_tile: float = 0.3,
    available: int | None = None,
) -> dict:
    """Refuse an in-memory run whose outputs cannot fit in memory, and warn (``UserWarning``)
    when it is estimated to take longer than ``SLOW_SECONDS``; both messages offer the slide
    engine (``process_slide``: tiled, on disk, resumable, with progress). Returns the
    estimate of :func:`estimate_in_memory`."""
    est = estimate_in_memory(height, width, n_prompts, tile=tile, seconds_per_tile=seconds_per_tile)
    avail = _available_bytes() if available is None else int(available)
    hint = (
        "process it with the slide engine instead (napari_biomedparse.process_slide(image, "
        "'out.zarr', prompts=...) or `napari-biomedparse slide`), which works tile by tile on "
        "disk with progress and resume"
    )
    if est["bytes"] > 0.8 * avail:
        raise InvalidInputError(
            f"{n_prompts} prompt(s) on a {height} x {width} image need about "
            f"{est['bytes'] / 2**30:.1f} GiB in memory ({avail / 2**30:.1f} GiB available): use "
            f"fewer prompts at a time, or {hint}"
        )
    if est["seconds"] > SLOW_SECONDS:
        warnings.warn(
            f"a {height} x {width} image is about {est['tiles']:,} model calls per prompt "
            f"(estimated {est['seconds'] / 60:.0f} min here) in memory; {hint}",
            UserWarning,
            stacklevel=2,
        )
    return est


MAX_TILE_READ = 64_000_000  # source pixels read for one tile (a 8,000^2 region)


MAX_TILE_SIZE = 4096  # output pixels per tile side


def check_tile_read(tile_px: int, scale: float, level_downsample: float) -> None:
    """Refuse a target resolution so much coarser than the best pyramid level that one
    tile of ``tile_px`` output pixels (``scale`` level-0 px per output px) reads more than
    ``MAX_TILE_READ`` pixels of that level (``level_downsample`` level-0 px per px)."""
    if int(tile_px) > MAX_TILE_SIZE:
        raise InvalidInputError(
            f"tile_size {int(tile_px)} is larger than {MAX_TILE_SIZE} px: tiles are resized to "
            "the model's input (256-1024 px), so choose a tile_size of at most that order"
        )
    side = float(tile_px) * float(scale) / max(float(level_downsample), 1e-9)
    if side * side > MAX_TILE_READ:
        raise InvalidInputError(
            f"one {tile_px} px tile at this resolution covers {side:,.0f} x {side:,.0f} pixels "
            "of the finest level available for it (the image has no coarse enough pyramid "
            "level): choose a finer mpp (closer to the image's own pixel size) or a smaller "
            "tile_size"
        )
