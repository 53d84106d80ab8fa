"""The one set of post-processing defaults (objects from probability maps), in microns.

Used by :func:`.tasks.recognize` / :func:`.tasks.detect` on arrays, by the slide engine
(``slide/plan.py``) and, through them, by the widgets, so that one image with one set of
parameters gives the same objects from every entry point.

- :data:`MIN_AREA_UM2`: objects smaller than this many square microns are dropped.
- :data:`NUCLEUS_RADIUS_UM`: the radius used to split touching nuclei.
- :data:`TISSUE_MASK`: whole slides skip tiles without tissue by default (an in-memory image
  is processed whole).

Without a pixel size the defaults cannot be converted to pixels: the instance splitting then
estimates the object size from the mask itself (:func:`.instances.split_instances`).
"""

from __future__ import annotations

__all__ = ["MIN_AREA_UM2", "NUCLEUS_RADIUS_UM", "TISSUE_MASK", "instance_defaults", "min_area_px"]

MIN_AREA_UM2 = 8.0
NUCLEUS_RADIUS_UM = 3.5
TISSUE_MASK = True


def min_area_px(mpp: float, min_area_um2: float = MIN_AREA_UM2) -> int:
    """The minimum object area in pixels of ``mpp`` um/px (at least 1)."""
    return max(1, int(round(float(min_area_um2) / float(mpp) ** 2)))


def instance_defaults(mpp: float | None, min_area_um2: float = MIN_AREA_UM2) -> dict:
    """``split_instances`` keyword defaults for an image of ``mpp`` um/px: ``min_size`` and
    ``radius`` in pixels; empty without a pixel size (size-aware defaults)."""
    if mpp is None:
        return {}
    return {"min_size": min_area_px(mpp, min_area_um2), "radius": NUCLEUS_RADIUS_UM / float(mpp)}
