"""Predictor: numpy RGB images + text prompts -> probability maps, with the official semantics.

``Predictor.predict`` reproduces ``inference_utils/inference.py::interactive_infer_image`` of
BiomedParse v1: Pillow bicubic resize of the RGB uint8 image to the model's input size (aspect
ratio ignored), one image encoding, mask logits at 1/4 of the input size bilinearly upsampled
straight to the original (H, W), sigmoid. The image is encoded once per call and all prompts are
decoded in one batched decoder pass; with ``joint=False`` (default) each prompt is decoded as if
it were alone (equal to separate single-prompt official calls), with ``joint=True`` all prompts
share the decoder self-attention (the official multi-prompt call).

Numerical tolerance: float32 on CPU matches the official outputs to about 3e-6 in probability
on the reference fixture (tests: 2e-4). With ``dtype=torch.bfloat16`` / ``torch.float16`` the
network runs under autocast (CUDA; bfloat16 also on CPU). Measured with bfloat16 on CPU on the
reference fixture (2 images x 4 prompts): same selected queries, probability differences up to
0.05 (mean 0.004), 99.3 % of pixels on the same side of 0.5. Expect this order of difference, and
occasionally a different selected query where the best two queries are nearly tied; use float32
for reference results.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..model.biomedparse import BiomedParse
from . import tasks
from .devices import resolve_device, resolve_dtype
from .prompts import parse_prompts

__all__ = ["Predictor", "ImageEncoding", "DecodeResult", "resolve_device", "resize_rgb"]


def as_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Validate an RGB uint8 image (H, W, 3); (H, W) grey is stacked to 3 channels and RGBA
    drops alpha, as the official ``read_rgb``. Anything else raises ``ValueError``."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8 RGB (0..255), got dtype {arr.dtype}; scale/convert it first "
            "or use Predictor.segment(image, prompts, modality=...) which preprocesses raw "
            "intensities"
        )
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB) or (H, W), got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pillow bicubic resize to (size, size) (the official ``transforms.Resize`` on a PIL image);
    returned unchanged when already that size."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))


def _check_prompts(prompts) -> list[str]:
    return parse_prompts(prompts, strict=True)  # one map per prompt given


@dataclass
class ImageEncoding:
    """An encoded image, reusable for many :meth:`Predictor.decode` calls.

    ``features``: ``mask_features`` (1, C, S/4, S/4) and ``multi_scale_features`` (3 maps) on
    the predictor's device; ``original_size`` (H, W) of the input; ``input_size`` S;
    ``image`` the uint8 (S, S, 3) image the model saw (after the resize); ``cache``: the
    decoder's prompt-independent tensors, filled by the first :meth:`Predictor.decode` when
    the encoding was made with ``encode(..., cache=True)`` (the default), so that later prompts
    on the same image are cheaper.
    """

    features: dict
    original_size: tuple[int, int]
    input_size: int
    image: np.ndarray = field(repr=False)
    cache: dict | None = field(default=None, repr=False)


@dataclass
class DecodeResult:
    """Decoder output for P prompts on one image.

    ``mask_logits`` (P, S/4, S/4) float32 logits of the selected queries (on the device);
    ``matched`` (P,) int64 selected query per prompt; ``scores`` (P,) float32 grounding score
    of that query (``clamp(exp(logit_scale), 100) * cosine``); ``prompts``; ``joint``.
    """

    mask_logits: torch.Tensor
    matched: torch.Tensor
    scores: torch.Tensor
    prompts: list[str]
    joint: bool = False
    similarity: torch.Tensor | None = field(default=None, repr=False)

    def probabilities(self, height: int, width: int) -> np.ndarray:
        """Sigmoid of the logits bilinearly upsampled to (height, width): float32 (P, H, W)."""
        up = F.interpolate(
            self.mask_logits[None].float(), (height, width), mode="bilinear", align_corners=False
        )[0]
        return up.sigmoid().cpu().numpy().astype(np.float32, copy=False)


def _task_method(fn):
    """``fn(predictor, *args, **kwargs)`` as a :class:`Predictor` method, with ``fn``'s
    signature (less ``predictor``) and docstring."""

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return method


class Predictor:
    """Run a :class:`~napari_biomedparse.model.BiomedParse` model on numpy images.

    Args:
        model: the model (moved to ``device``, put in eval mode).
        device: "auto" (cuda > mps > cpu), or any torch device.
        dtype: None / torch.float32 (reference), or torch.bfloat16 / torch.float16 (autocast;
            see the module docstring for the tolerance).
    """

    def __init__(self, model: BiomedParse, device: str | torch.device = "auto", dtype=None):
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "The model has no weights yet (built on the meta device); load a checkpoint "
                "with load_checkpoint(model, path) first"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = model.to(self.device).eval()
        self.input_size = int(model.config.input_size)
        self._text_cache: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _text(self, prompts: list[str]) -> dict:
        key = tuple(prompts)
        hit = self._text_cache.get(key)
        if hit is None:
            with self._autocast():
                hit = self.model.encode_text(prompts)
            self._text_cache[key] = hit
            while len(self._text_cache) > 64:
                self._text_cache.popitem(last=False)
        else:
            self._text_cache.move_to_end(key)
        return hit

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            if x.device.type == "cpu":
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)
        return x.to(self.device)

    # ------------------------------------------------------------------ API
    @torch.inference_mode()
    def encode(self, rgb_uint8: np.ndarray, cache: bool = True) -> ImageEncoding:
        """Resize (Pillow bicubic) to the input size and run the image encoder once.

        ``cache``: let :meth:`decode` keep the prompt-independent decoder tensors with the
        encoding (faster repeated decodes, more memory held by the encoding)."""
        rgb = as_rgb_uint8(rgb_uint8)
        h, w = rgb.shape[:2]
        resized = resize_rgb(rgb, self.input_size)
        x = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1)[None]
        x = self._to_device(x).float()
        with self._autocast():
            feats = self.model.encode_image(x)
        return ImageEncoding(feats, (h, w), self.input_size, resized, {} if cache else None)

    @torch.inference_mode()
    def decode(self, encoding: ImageEncoding, prompts, joint: bool = False) -> DecodeResult:
        """All prompts in one batched decoder pass on a cached encoding (cheap)."""
        prompts = _check_prompts(prompts)
        text = self._text(prompts)
        with self._autocast():
            out = self.model.decode(encoding.features, text, joint=joint, cache=encoding.cache)
        sim = out["pred_similarity"][0].float()
        matched = out["matched"][0]
        scores = sim.gather(1, matched[:, None])[:, 0]
        return DecodeResult(
            out["matched_masks"][0].float(), matched, scores, prompts, joint, similarity=sim
        )

    def predict(self, rgb_uint8: np.ndarray, prompts, joint: bool = False) -> np.ndarray:
        """Official ``interactive_infer_image``: float32 probabilities (P, H, W) at the input's
        size, one per prompt (``joint=True``: the official coupled multi-prompt call)."""
        prompts = _check_prompts(prompts)
        enc = self.encode(rgb_uint8, cache=False)
        res = self.decode(enc, prompts, joint=joint)
        with torch.inference_mode():
            return res.probabilities(*enc.original_size)

    @torch.inference_mode()
    def predict_batch(
        self, tiles, prompts, joint: bool = False, *, as_numpy: bool = True
    ) -> np.ndarray | torch.Tensor:
        """Tiles already at the input size, in one batch.

        Args:
            tiles: uint8 (B, S, S, 3) numpy array or torch tensor (a torch tensor may also be
                (B, 3, S, S), uint8 or float in 0..255). S must equal ``input_size``.
            prompts: P prompts applied to every tile.
        Returns:
            float32 probabilities (B, P, S, S) (numpy, or a torch tensor on the device with
            ``as_numpy=False``).
        """
        prompts = _check_prompts(prompts)
        s = self.input_size
        if isinstance(tiles, np.ndarray):
            if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
                raise ValueError(
                    f"tiles must be uint8 (B, {s}, {s}, 3), got {tiles.dtype} {tiles.shape}"
                )
            x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
        elif torch.is_tensor(tiles):
            if tiles.ndim != 4:
                raise ValueError(f"tiles must be 4-D (B, S, S, 3), got {tuple(tiles.shape)}")
            x = tiles.permute(0, 3, 1, 2) if tiles.shape[-1] == 3 else tiles
        else:
            raise TypeError(f"tiles must be a numpy array or torch tensor, got {type(tiles)}")
        if tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(
                f"tiles must be {s} x {s} RGB (the model input size), got {tuple(x.shape)}; "
                "resize them or use predict() for single images of any size"
            )
        x = self._to_device(x.contiguous()).float()
        text = self._text(prompts)
        with self._autocast():
            feats = self.model.encode_image(x)
            out = self.model.decode(feats, text, joint=joint)
        logits = out["matched_masks"].float()
        b, p = logits.shape[:2]
        up = F.interpolate(
            logits.reshape(b, p, *logits.shape[-2:]), (s, s), mode="bilinear", align_corners=False
        ).sigmoid()
        return up.cpu().numpy() if as_numpy else up

    # ------------------------------------------------------------------ tasks
    # The task functions of :mod:`.tasks` (one implementation, shared with the plugin, the CLI
    # and the slide engine) as methods: ``predictor.segment(image, prompts, modality=...)`` is
    # ``tasks.segment(predictor, image, prompts, modality=...)``, same signature and docstring.
    segment = _task_method(tasks.segment)
    detect = _task_method(tasks.detect)
    recognize = _task_method(tasks.recognize)
