"""Tissue mask from a low-resolution level of a slide.

The mask is computed at about ``mask_mpp`` microns per pixel (default 8 um/px, coarser when
needed to keep it under 1024 px a side) from the pyramid level
closest to, and not coarser than, that resolution; the remaining integer factor is applied
with a block-wise mean, so memory stays bounded even for a single-level 100k x 100k image.

Rule (brightfield, i.e. a light background as in H&E / IHC slides): a pixel is tissue when its
saturation ``(max - min) / max`` of RGB exceeds ``max(otsu(saturation), 0.05)`` or its
brightness is below ``min(otsu(grey), 0.8)`` (dark pen, dense tissue), followed by a
morphological closing, removal of specks below ``min_area_um2`` and hole filling. Otsu alone
on an all-background slide would split noise; the floors keep a blank slide blank.
Darkfield / fluorescence (dark background): tissue = grey > max(otsu(grey), 0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .readers import SlideImage

__all__ = ["TissueMask", "compute_tissue_mask", "low_resolution"]


@dataclass
class TissueMask:
    """A boolean tissue mask ``(h, w)`` with ``downsample`` level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    brightfield: bool = True

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def region_fraction(self, y0: float, x0: float, y1: float, x1: float) -> float:
        """Tissue fraction of a level-0 rectangle ``[y0, y1) x [x0, x1)`` (pixels)."""
        d = self.downsample
        h, w = self.mask.shape
        a, b = max(int(math.floor(y0 / d)), 0), min(int(math.ceil(y1 / d)), h)
        c, e = max(int(math.floor(x0 / d)), 0), min(int(math.ceil(x1 / d)), w)
        if b <= a or e <= c:
            return 0.0
        return float(self.mask[a:b, c:e].mean())


def low_resolution(image: SlideImage, downsample: float) -> tuple[np.ndarray, float]:
    """The slide at about ``downsample`` (level-0 px per px), as numpy ``(h, w, C)`` float32.

    Reads the best pyramid level tile by tile (about 1024 x 1024 level pixels at a time) and
    averages integer blocks of it, so memory is bounded by the output, not the level.
    Returns the array and its actual downsample.
    """
    lv = image.level_for_downsample(downsample)
    H, W, C = image.levels[lv].shape
    d_lv = image.downsamples[lv]
    f = max(1, int(round(downsample / d_lv)))
    if H // f == 0 or W // f == 0:
        f = 1
    h, w = H // f, W // f
    out = np.empty((h, w, C), np.float32)
    step = max(1, 1024 // f)  # output pixels per read, per side
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        for c0 in range(0, w, step):
            c1 = min(w, c0 + step)
            blk = image.read_region(r0 * f, c0 * f, (r1 - r0) * f, (c1 - c0) * f, level=lv)
            blk = blk.astype(np.float32).reshape(r1 - r0, f, c1 - c0, f, C)
            out[r0:r1, c0:c1] = blk.mean(axis=(1, 3))
    return out, d_lv * f


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) - float(values.min()) < 1e-6:
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values))


def compute_tissue_mask(
    image: SlideImage,
    *,
    mask_mpp: float = 8.0,
    max_side: int = 1024,
    min_area_um2: float = 2000.0,
    brightfield: bool | None = None,
) -> TissueMask:
    """Tissue mask of ``image`` at about ``mask_mpp`` um/px.

    The mask is made coarser than ``mask_mpp`` when needed to keep it at most ``max_side``
    pixels a side. Returns a :class:`TissueMask` (``mask`` bool ``(h, w)``, ``downsample`` in
    level-0 px).
    ``brightfield`` None = decide from the image (light median -> brightfield).
    """
    from scipy import ndimage as ndi

    mpp0 = image.mpp or 0.5
    target_ds = max(1.0, mask_mpp / mpp0)
    # bound the mask's size (memory must not grow with the slide): at most max_side px a side
    target_ds = max(target_ds, max(image.shape) / max_side)
    # keep the mask at a sensible size for tiny images
    h0, w0 = image.shape
    target_ds = min(target_ds, max(1.0, min(h0, w0) / 64))
    low, ds = low_resolution(image, target_ds)
    if low.shape[2] >= 3:
        rgb = low[..., :3]
    else:
        rgb = np.repeat(low[..., :1], 3, axis=2)
    if image.dtype == np.uint8:
        rgb = rgb / 255.0
    else:  # any range (negative floats too); NaN / inf pixels count as the lowest value
        finite = np.isfinite(rgb)
        if not finite.any():
            from napari_biomedparse.errors import InvalidInputError

            raise InvalidInputError(
                f"{image.path or 'the image'} has no finite pixel value at low resolution "
                "(all NaN or infinite): check the file, or replace them (np.nan_to_num)"
            )
        vals = rgb[finite]
        lo = min(0.0, float(vals.min()))
        scale = max(float(vals.max()) - lo, 1e-6)
        rgb = np.where(finite, rgb - lo, 0.0) / scale
    rgb = np.clip(rgb, 0, 1)
    grey = rgb.mean(axis=2)
    if brightfield is None:
        brightfield = bool(np.median(grey) > 0.5)
    if brightfield:
        mx = rgb.max(axis=2)
        sat = (mx - rgb.min(axis=2)) / np.maximum(mx, 1e-6)
        t_sat = max(_otsu(sat), 0.05)
        t_grey = min(_otsu(grey), 0.8)
        mask = (sat > t_sat) | (grey < t_grey)
        mask &= grey < 0.95
    else:
        mask = grey > max(_otsu(grey), 0.05)
    px_area_um2 = (ds * mpp0) ** 2
    min_px = max(1, int(round(min_area_um2 / px_area_um2)))
    # closing erodes at the image border; OR-ing keeps the original pixels there
    mask = mask | ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=2)
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_px
        mask = keep[lab]
    mask = ndi.binary_fill_holes(mask)
    return TissueMask(mask=mask.astype(bool), downsample=float(ds), brightfield=brightfield)
