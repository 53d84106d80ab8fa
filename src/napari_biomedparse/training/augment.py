"""Augmentations for pathology (H&E) and fluorescence microscopy tiles.

Geometric: flips, 90-degree rotations (and the scale change done when the tile is cut, see
:class:`~napari_biomedparse.training.data.TileSampler`). Photometric: for pathology, stain
jitter in haematoxylin-eosin-DAB space (``skimage.color.rgb2hed``) plus brightness, contrast
and saturation; for fluorescence (grey stacked to RGB), gamma, gain, offset and noise applied
to the grey values so the three channels stay equal. All functions are numpy-only and draw
their randomness from the given ``numpy.random.Generator`` (deterministic given its seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLUORESCENCE_LIKE = {"fluorescence", "microscopy", "fluorescence microscopy", "brightfield"}


@dataclass
class AugmentConfig:
    """Augmentation strengths (0 or None disables one).

    Attributes:
        flips: random horizontal / vertical flips.
        rot90: random multiples of 90 degrees.
        scale_range: (min, max) zoom factor applied when cutting the tile (log-uniform).
        stain_sigma: pathology: std of the multiplicative jitter of each H, E, D channel.
        stain_bias: pathology: std of the additive jitter of each H, E, D channel.
        brightness: std of the additive brightness change (fraction of 255).
        contrast: std of the multiplicative contrast change around the mean.
        saturation: pathology: std of the saturation change.
        gamma: fluorescence: std of log-gamma.
        noise: std of additive Gaussian noise (fraction of 255).
    """

    flips: bool = True
    rot90: bool = True
    scale_range: tuple[float, float] | None = (0.8, 1.25)
    stain_sigma: float = 0.05
    stain_bias: float = 0.02
    brightness: float = 0.05
    contrast: float = 0.1
    saturation: float = 0.1
    gamma: float = 0.2
    noise: float = 0.01


def geometric(
    img: np.ndarray, labels: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Same random flip / 90-degree rotation on (S, S, 3) image and (S, S) labels."""
    if cfg.flips:
        if rng.random() < 0.5:
            img, labels = img[:, ::-1], labels[:, ::-1]
        if rng.random() < 0.5:
            img, labels = img[::-1], labels[::-1]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        if k:
            img, labels = np.rot90(img, k), np.rot90(labels, k)
    return np.ascontiguousarray(img), np.ascontiguousarray(labels)


def stain_jitter(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """H&E colour augmentation. (S, S, 3) uint8 -> (S, S, 3) float64 in 0..255."""
    from skimage.color import hed2rgb, rgb2hed

    x = img.astype(np.float64) / 255.0
    if cfg.stain_sigma or cfg.stain_bias:
        hed = rgb2hed(x)
        alpha = rng.normal(1.0, cfg.stain_sigma, 3)
        beta = rng.normal(0.0, cfg.stain_bias, 3)
        hed = hed * alpha + beta
        x = np.clip(hed2rgb(hed), 0, 1)
    if cfg.saturation:
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * max(0.0, rng.normal(1.0, cfg.saturation))
    return x * 255.0


def intensity_jitter(grey: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence intensity augmentation on (S, S) grey values 0..255 -> float 0..255."""
    x = grey.astype(np.float64) / 255.0
    if cfg.gamma:
        x = np.clip(x, 0, 1) ** float(np.exp(rng.normal(0.0, cfg.gamma)))
    return x * 255.0


def augment_tile(
    img: np.ndarray,
    labels: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    modality: str = "pathology",
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one tile.

    Args:
        img: (S, S, 3) uint8 RGB.
        labels: (S, S) int class map (moved with the geometric transforms only).
        modality: "pathology" (stain jitter) or a fluorescence-like modality (grey jitter,
            channels stay equal).

    Returns:
        (S, S, 3) uint8 image, (S, S) labels.
    """
    img, labels = geometric(img, labels, cfg, rng)
    fluo = modality.lower() in FLUORESCENCE_LIKE
    if fluo:
        x = intensity_jitter(img.mean(axis=2), cfg, rng)[..., None]
    else:
        x = stain_jitter(img, cfg, rng)
    if cfg.contrast:
        m = x.mean()
        x = m + (x - m) * max(0.2, rng.normal(1.0, cfg.contrast))
    if cfg.brightness:
        x = x + rng.normal(0.0, cfg.brightness) * 255.0
    if cfg.noise:
        shape = x.shape[:2] + ((1,) if fluo else (3,))
        x = x + rng.normal(0.0, cfg.noise * 255.0, shape)
    if fluo:
        x = np.repeat(x, 3, axis=2)
    return np.clip(np.round(x), 0, 255).astype(np.uint8), labels
