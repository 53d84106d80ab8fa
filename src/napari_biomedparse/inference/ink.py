"""Tissue-marking ink on H&E (pathology) tiles, and the rule that removes objects on it.

Surgeons and grossing staff paint resection margins with marking ink (teal / green / blue /
black), which survives processing and lies on or beside the tissue of the section. A nucleus
model sees dark, saturated blobs there and segments them; on the bundled demo slide 10-20 % of
the objects of some regions lay on teal ink. Ink colours are far from the two H&E stains in
hue: haematoxylin is purple to dark violet-blue (HSV hue about 215-300 degrees, dark nuclei of
a blue-leaning stain reach down to about 205), eosin pink to red (300-360 and 0-30 degrees);
nothing stained by H&E is green or cyan.

:func:`ink_mask` marks, on an RGB uint8 tile (HSV from ``skimage.color.rgb2hsv``):

- teal / green / cyan ink: hue in [``GREEN_HUE``) (80-200 degrees) with saturation >=
  ``GREEN_SAT`` (0.20) and chroma (max - min of RGB) >= ``GREEN_CHROMA`` (30 levels: the
  hue of a near-black pixel such as (0, 14, 13) inside a dark nucleus means nothing);
- blue ink: hue in [``BLUE_HUE``) (200-235 degrees), saturation >= ``BLUE_SAT`` (0.60) and
  value >= ``BLUE_VALUE`` (0.45): bright, saturated blue, which haematoxylin never is (dark
  blue nuclei have a value below 0.45, pale ones a saturation below 0.6);
- the dark core of thick teal ink: hue in [``DARK_TEAL_HUE``) (200-225 degrees), saturation
  >= ``DARK_TEAL_SAT`` (0.5) and green above red by >= ``DARK_TEAL_G_MINUS_R`` (35 of 255)
  levels (haematoxylin has red at or above green: G - R < 0 on every nucleus pixel of
  ``hgsc_nest``; the bluest nuclei of the demo slide reach G - R = 27 at the 99.9th percentile,
  its ink 65-90), kept only where it touches pixels of the teal / green rule (thick ink
  has a light teal rim; an isolated dark blue speck is a nucleus);
- black ink: value < ``BLACK_VALUE`` (0.16) and saturation < ``BLACK_SAT`` (0.35) (the
  darkest nuclei are saturated violet, not grey);

then drops marked specks smaller than ``MIN_SPECK`` px (stray pixels at stain edges) and
dilates by ``DILATE`` px (the halo of mixed ink / tissue colour around a blob).
:func:`suppress_ink` sets the probabilities of marked pixels to 0. It is applied to every
tile's probabilities right after the model call (:func:`~.tiled.tile_probabilities`: the
in-memory tiled predictor behind ``segment`` / ``detect`` / ``recognize`` and the slide
engine's tile stage) when the modality's preset asks for it
(:func:`~.preprocessing.masks_ink`: Pathology only).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ink_mask", "suppress_ink"]

GREEN_HUE = (80.0, 200.0)  # degrees
GREEN_SAT = 0.20
GREEN_CHROMA = 30  # uint8 levels, max - min of RGB
BLUE_HUE = (200.0, 235.0)
BLUE_SAT = 0.60
BLUE_VALUE = 0.45
DARK_TEAL_HUE = (200.0, 225.0)
DARK_TEAL_G_MINUS_R = 35  # uint8 levels
DARK_TEAL_SAT = 0.5
BLACK_VALUE = 0.16
BLACK_SAT = 0.35
MIN_SPECK = 4  # px
DILATE = 3  # px


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, 0-360), saturation and value (0-1) of an RGB uint8 (..., 3) array.
    (The formula of ``skimage.color.rgb2hsv``, in float32 and without its copy of the input.)"""
    x = rgb.astype(np.float32)
    mx = x.max(-1)
    mn = x.min(-1)
    c = mx - mn
    v = mx / 255.0
    s = np.where(mx > 0, c / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cc = np.maximum(c, 1e-6)
    h = np.where(
        mx == r, ((g - b) / cc) % 6.0, np.where(mx == g, (b - r) / cc + 2.0, (r - g) / cc + 4.0)
    )
    h = np.where(c > 0, h * 60.0, 0.0)
    return h, s, v


def _drop_specks(mask: np.ndarray, ndimage) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``MIN_SPECK`` px."""
    if MIN_SPECK <= 1 or not mask.any():
        return mask
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(lab.ravel(), minlength=n + 1) >= MIN_SPECK
    keep[0] = False
    return keep[lab]


def ink_mask(rgb: np.ndarray, *, dilate: int = DILATE) -> np.ndarray:
    """Pixels of tissue-marking ink (teal / green / blue / black) on an H&E image.

    Args:
        rgb: (H, W, 3) uint8 RGB (alpha, if a 4th channel, is ignored).
        dilate: grow the marked pixels by this many px (a disk); 0 = no dilation.

    Returns:
        (H, W) bool, True on ink.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"rgb must be (H, W, 3); got shape {rgb.shape}")
    h, s, v = _hsv(rgb[..., :3])
    chroma = rgb[..., :3].max(-1).astype(np.int16) - rgb[..., :3].min(-1)
    green = (h >= GREEN_HUE[0]) & (h < GREEN_HUE[1]) & (s >= GREEN_SAT) & (chroma >= GREEN_CHROMA)
    blue = (h >= BLUE_HUE[0]) & (h < BLUE_HUE[1]) & (s >= BLUE_SAT) & (v >= BLUE_VALUE)
    g_r = rgb[..., 1].astype(np.int16) - rgb[..., 0].astype(np.int16)
    dark_teal = (
        (h >= DARK_TEAL_HUE[0])
        & (h < DARK_TEAL_HUE[1])
        & (s >= DARK_TEAL_SAT)
        & (g_r >= DARK_TEAL_G_MINUS_R)
    )
    black = (v < BLACK_VALUE) & (s < BLACK_SAT)
    if not (green.any() or blue.any() or black.any()):
        return np.zeros(rgb.shape[:2], bool)
    from scipy import ndimage

    green = _drop_specks(green, ndimage)
    mask = green | _drop_specks(blue | black, ndimage)
    if dark_teal.any() and green.any():  # dark teal only where it touches teal / green ink
        lab, n = ndimage.label(dark_teal | green)
        seeded = np.zeros(n + 1, bool)
        seeded[lab[green]] = True
        seeded[0] = False
        mask |= seeded[lab]
    if dilate > 0 and mask.any():
        r = int(dilate)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        mask = ndimage.binary_dilation(mask, structure=(yy * yy + xx * xx) <= r * r)
    return mask


def suppress_ink(probs: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """Probabilities with the ink pixels of their tiles set to 0.

    Args:
        probs: (B, P, h, w) probabilities of B tiles and P prompts (float in [0, 1], or uint8
            round(255 p)); any spatial size, the mask is resized to it (nearest neighbour).
        tiles: (B, S, S, 3) uint8 RGB tiles the probabilities were predicted from.

    Returns:
        ``probs`` (same shape and dtype; a numpy copy when anything is marked, else the input).
    """
    probs = np.asarray(probs)
    tiles = np.asarray(tiles)
    if probs.ndim != 4 or tiles.ndim != 4 or probs.shape[0] != tiles.shape[0]:
        raise ValueError(
            f"probs (B, P, h, w) and tiles (B, S, S, 3) expected; got "
            f"{probs.shape} and {tiles.shape}"
        )
    out = probs
    h, w = probs.shape[-2:]
    for b in range(tiles.shape[0]):
        m = ink_mask(tiles[b])
        if not m.any():
            continue
        if m.shape != (h, w):
            ys = (np.arange(h) + 0.5) * m.shape[0] / h
            xs = (np.arange(w) + 0.5) * m.shape[1] / w
            m = m[ys.astype(int)[:, None], xs.astype(int)[None, :]]
        if out is probs:
            out = probs.copy()
        out[b][:, m] = 0
    return out
