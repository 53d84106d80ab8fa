"""A model-free reference predictor for tests and benchmarks of the slide engine.

``StainPredictor`` follows the Predictor protocol used by the engine
(``input_size``, ``predict_batch(rgb (B,S,S,3) uint8, prompts) -> float32 (B,P,S,S)``)
with a fixed, deterministic rule: the haematoxylin optical density of each pixel (colour
deconvolution, Ruifrok & Johnston) smoothed and passed through a logistic function, so dark
purple nuclei get probabilities near 1. Prompt ``p`` uses threshold ``thresholds[p % n]``,
so several prompts give distinct maps. ``delay`` (s per batch) emulates a slower model.
It is not BiomedParse; it exercises reading, batching, blending and stitching for real.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["StainPredictor"]


class StainPredictor:
    def __init__(self, input_size: int = 256, thresholds=(0.25, 0.35), delay: float = 0.0):
        self.input_size = int(input_size)
        self.thresholds = tuple(thresholds)
        self.delay = float(delay)
        self.fingerprint = f"stain-{self.input_size}-{self.thresholds}"
        self.device = "cpu"

    def predict_batch(self, rgb: np.ndarray, prompts) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.color import rgb2hed

        rgb = np.asarray(rgb)
        B, S = rgb.shape[0], rgb.shape[1]
        out = np.zeros((B, len(prompts), S, S), np.float32)
        for b in range(B):
            hema = rgb2hed(rgb[b])[..., 0]
            hema = ndi.gaussian_filter(hema, 1.0)
            for p in range(len(prompts)):
                t = self.thresholds[p % len(self.thresholds)] * (0.15 + 0.02 * p)
                out[b, p] = 1.0 / (1.0 + np.exp(-(hema - t) * 80.0))
        if self.delay:
            time.sleep(self.delay)
        return out
