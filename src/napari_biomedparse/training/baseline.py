"""Classical nucleus segmentation baselines, to judge the learned model against.

* H&E: haematoxylin channel by colour deconvolution (``skimage.color.rgb2hed``), Gaussian
  smoothing, Otsu threshold, small-object removal and hole filling, then a distance-transform
  watershed to split touching nuclei.
* Fluorescence: the same on the (smoothed) grey intensity.

Both return a binary mask and instance labels at the input size. No training, no parameters
fitted on the evaluation data (the only tuned numbers are the smoothing sigma, the minimal
object size and the minimal peak distance, set once for ~0.5 um/px pathology and for the
stardist / Data Science Bowl fluorescence scale).
"""

from __future__ import annotations

import numpy as np


def _watershed_split(mask: np.ndarray, min_distance: int) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask)
    dist = ndi.gaussian_filter(dist, 1.0)
    cc = ndi.label(mask)[0]
    peaks = peak_local_max(dist, min_distance=min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=mask)
    # components without a peak keep their own label
    missing = mask & (labels == 0)
    if missing.any():
        extra = ndi.label(missing)[0]
        labels = np.where(missing, extra + labels.max(), labels)
    return labels.astype(np.int32)


def _threshold_clean(x: np.ndarray, sigma: float, min_size: int) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk

    s = gaussian(x, sigma)
    mask = s > threshold_otsu(s)
    mask = ndi.binary_opening(mask, disk(1))
    cc, n = ndi.label(mask)
    sizes = np.bincount(cc.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return ndi.binary_fill_holes(keep[cc])


def he_nuclei_baseline(
    rgb: np.ndarray, sigma: float = 1.0, min_size: int = 30, min_distance: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Otsu + watershed on the haematoxylin channel.

    Args:
        rgb: (H, W, 3) uint8 H&E image (~0.5 um/px; scale ``min_size`` / ``min_distance``
            for other pixel sizes).

    Returns:
        mask (H, W) bool, labels (H, W) int32.
    """
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"he_nuclei_baseline needs an (H, W, 3) RGB image, got {rgb.shape}")
    h = rgb2hed(rgb[..., :3])[..., 0]
    mask = _threshold_clean(h, sigma, min_size)
    return mask, _watershed_split(mask, min_distance)


def fluorescence_nuclei_baseline(
    image: np.ndarray, sigma: float = 1.0, min_size: int = 30, min_distance: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Otsu + watershed on a fluorescence nuclear stain.

    Args:
        image: (H, W) grey image of any dtype, or (H, W, 3) (channels averaged).

    Returns:
        mask (H, W) bool, labels (H, W) int32.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3:
        x = x.mean(axis=2)
    if x.ndim != 2:
        raise ValueError(f"fluorescence_nuclei_baseline needs a 2-D image, got {x.shape}")
    mask = _threshold_clean(x, sigma, min_size)
    return mask, _watershed_split(mask, min_distance)
