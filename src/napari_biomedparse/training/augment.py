"""Augmentations for pathology (H&E) and fluorescence microscopy tiles.

Geometric: flips, 90-degree rotations (and the scale change done when the tile is cut, see
:class:`~napari_biomedparse.training.data.TileSampler`). Photometric: for pathology, stain
jitter in haematoxylin-eosin-DAB space (``skimage.color.rgb2hed``) plus brightness, contrast
and saturation; for fluorescence (grey stacked to RGB), gamma, gain, offset and noise applied
to the grey values so the three channels stay equal, and optionally a dim glow around the nuclei
(:func:`cytoplasm_halo`); optionally Gaussian blur and a JPEG round trip
(:data:`STRONG_AUGMENT`, the default model's recipe). All functions are numpy-only and draw
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
        blur_prob: probability of a Gaussian blur (out-of-focus, lower-resolution scanner).
        blur_sigma: (min, max) blur sigma in pixels (uniform).
        jpeg_prob: probability of a JPEG round trip (compressed slides and screenshots).
        jpeg_quality: (min, max) JPEG quality (uniform integer).
        halo_prob: fluorescence: probability of a dim cytoplasm-like glow around the nuclei
            (:func:`cytoplasm_halo`: bleed-through of a cytoplasmic marker, autofluorescence,
            out-of-focus DNA stain), which is not nucleus and keeps its label 0.
        halo_strength: (min, max) brightness of that glow, as a fraction of the mean nucleus
            intensity of the tile (uniform).
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
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)
    halo_prob: float = 0.0
    halo_strength: tuple[float, float] = (0.15, 0.6)


#: The default model's training augmentation: stain, colour and intensity changes well beyond
#: the range of one image (e.g. haematoxylin / eosin amounts x 0.6-1.4 at 2 sd), zoom 0.5-2x
#: (pixel sizes of about 0.25-1 um/px around the assumed 0.5), blur and JPEG artefacts.
STRONG_AUGMENT = AugmentConfig(
    scale_range=(0.5, 2.0),
    stain_sigma=0.2,
    stain_bias=0.04,
    brightness=0.1,
    contrast=0.2,
    saturation=0.25,
    gamma=0.4,
    noise=0.02,
    blur_prob=0.3,
    jpeg_prob=0.3,
    halo_prob=0.3,
)


def blur_and_jpeg(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random Gaussian blur and JPEG round trip of an (S, S, 3) uint8 tile (same shape, uint8)."""
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        from scipy import ndimage as ndi

        sd = float(rng.uniform(*cfg.blur_sigma))
        img = ndi.gaussian_filter(img.astype(np.float32), (sd, sd, 0))
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if cfg.jpeg_prob and rng.random() < cfg.jpeg_prob:
        import io

        from PIL import Image

        buf = io.BytesIO()
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=q)
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img


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


def cytoplasm_halo(
    grey: np.ndarray, nuclei: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """A dim, uneven glow around the nuclei of a fluorescence tile, outside them.

    Args:
        grey: (S, S) float grey values 0..255.
        nuclei: (S, S) bool nucleus pixels (their labels are not changed).

    Returns:
        (S, S) float: ``grey`` plus, outside the nuclei, ``a * m * exp(-d / r)`` where ``d`` is
        the distance (px) to the nearest nucleus, ``r`` uniform in 6-24 px, ``m`` a smooth random
        field in 0.2..1 (cells are not round halos) and ``a`` ``halo_strength`` times the mean
        nucleus intensity. Nothing is added to a tile without nuclei.
    """
    if not nuclei.any():
        return grey
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(~nuclei)
    r = float(rng.uniform(6.0, 24.0))
    field = ndi.gaussian_filter(rng.random(grey.shape), sigma=r)
    lo, hi = field.min(), field.max()
    field = 0.2 + 0.8 * (field - lo) / max(hi - lo, 1e-6)
    a = float(rng.uniform(*cfg.halo_strength)) * float(grey[nuclei].mean())
    return grey + np.where(nuclei, 0.0, a * field * np.exp(-d / r))


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
        grey = img.mean(axis=2)
        if cfg.halo_prob and rng.random() < cfg.halo_prob:
            grey = np.clip(cytoplasm_halo(grey, labels > 0, cfg, rng), 0, 255)
        x = intensity_jitter(grey, cfg, rng)[..., None]
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
    out = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if cfg.blur_prob or cfg.jpeg_prob:
        out = blur_and_jpeg(out, cfg, rng)
        if fluo:  # JPEG chroma rounding: keep the three channels equal
            out = np.repeat(out.mean(axis=2).round().astype(np.uint8)[..., None], 3, axis=2)
    return out, labels
