"""Tile reading and the intensity conversion of slide pixels.

The tile geometry is :class:`~napari_biomedparse.inference.tiled.TileGrid` (one home, also
used by in-memory prediction: ``Predictor.segment`` / ``recognize`` tile an array exactly as
the engine tiles a slide); tiles are read with the same
:func:`~napari_biomedparse.inference.tiled.read_tile`, here from the pyramid level closest to
(not coarser than) the target resolution.

Intensities: every slide pixel goes through the modality preset of ``segment``
(:func:`~napari_biomedparse.inference.preprocessing.to_rgb_uint8`) with per-slide statistics
(:func:`slide_intensity_stats`, computed once on the lowest level), so that a tile gets the
values converting the whole slide at once would give it (an in-memory array, one level, gets
exactly its own statistics, as ``segment`` computes them). RGB uint8 passes through.
"""

from __future__ import annotations

import numpy as np

from napari_biomedparse.inference.application import MODALITY_DEFAULTS, modality_key
from napari_biomedparse.inference.tiled import TileGrid
from napari_biomedparse.inference.tiled import read_tile as _read_tile

from .readers import SlideImage

__all__ = ["TileGrid", "DEFAULTS", "read_tile", "read_rgb", "slide_intensity_stats"]

# Per-modality defaults (target um/px, None = the slide's own resolution; tile edge and
# overlap in output pixels): one table, in inference/application.py, where a model's own
# defaults take precedence (application_defaults).
DEFAULTS: dict[str, dict] = MODALITY_DEFAULTS

#: Pixels of the lowest level read for the intensity statistics (a larger level is subsampled).
STATS_PIXELS = 4096 * 4096


def defaults_for(modality: str | None) -> dict:
    """Default ``mpp`` (None = native), ``tile_size`` and ``overlap`` for a modality
    (without a model: :func:`~napari_biomedparse.inference.application.application_defaults`
    gives a model's)."""
    return dict(DEFAULTS[modality_key(modality)])


def _channels(c: int):
    """``channels=`` of the preset for a slide of ``c`` channels (1 grey, 3 RGB, 4 RGBA pass
    as they are; 2 or more than 4: the first two / three, each scaled on its own)."""
    return None if c in (1, 3, 4) else list(range(min(c, 3)))


def slide_intensity_stats(image: SlideImage, modality: str) -> dict | None:
    """The preset's statistics of the slide (:func:`~napari_biomedparse.inference.
    preprocessing.intensity_stats`, as a dict for the plan) from its lowest level
    (subsampled to at most :data:`STATS_PIXELS`); None for uint8 RGB (passes through)."""
    from napari_biomedparse.inference.preprocessing import intensity_stats

    low = image.levels[-1]
    step = max(1, int(np.ceil(np.sqrt(low.shape[0] * low.shape[1] / STATS_PIXELS))))
    # local threads even when a distributed Client is the default scheduler
    arr = np.asarray(low[::step, ::step].compute(scheduler="threads"))
    st = intensity_stats(arr, modality, channels=_channels(arr.shape[2]))
    return st.to_dict() if st.bounds else None


def read_rgb(
    image: SlideImage,
    level: int,
    y0: int,
    x0: int,
    h: int,
    w: int,
    *,
    fill: int,
    modality: str,
    stats: dict | None,
) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` of ``level`` pixels ``[y0, y0+h) x [x0, x0+w)``: converted with
    the modality preset and the slide's ``stats``, ``fill`` outside the slide."""
    from napari_biomedparse.inference.preprocessing import to_rgb_uint8

    region = image.read_region(y0, x0, h, w, level=level, fill=0)
    rgb = to_rgb_uint8(region, modality, channels=_channels(region.shape[2]), stats=stats)
    H, W = image.levels[level].shape[:2]
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:  # the background, after the conversion
        inside = np.zeros((h, w), bool)
        inside[max(-y0, 0) : max(min(H - y0, h), 0), max(-x0, 0) : max(min(W - x0, w), 0)] = True
        rgb[~inside] = fill
    return rgb


def read_tile(
    image: SlideImage,
    grid: TileGrid,
    k: int,
    out_size: int,
    *,
    fill: int = 255,
    modality: str = "pathology",
    stats: dict | None = None,
) -> np.ndarray:
    """Tile ``k`` at the target resolution, resized to ``(out_size, out_size, 3)`` RGB uint8
    (:func:`~napari_biomedparse.inference.tiled.read_tile` from the pyramid level closest to,
    not coarser than, the target resolution; parts outside the slide are ``fill``)."""
    lv = image.level_for_downsample(grid.scale)

    def region(y0, x0, h, w):
        return read_rgb(image, lv, y0, x0, h, w, fill=fill, modality=modality, stats=stats)

    return _read_tile(region, grid, k, out_size, image.downsamples[lv])
