"""The fast tile path around a :class:`~.predictor.Predictor`, on any device.

- :class:`FastPredictor`: tiles are read at the *tile* size (its ``input_size``), go to the
  device as uint8, are resized (bilinear, antialiased) to the model input and encoded there,
  decoded once for all prompts, and the mask logits are resized on the device straight to
  the tile size (16x fewer bytes back to the host at 1024 / 256), optionally quantised there
  to ``round(255 p)`` (what the slide store keeps).
- :func:`compile_predictor` (``torch.compile`` of the image encoder, in place),
  :func:`auto_batch_size` (from the device's free memory), :func:`configure_predictor`
  (precision / compile / fast options on a resolved predictor).

Only three things are CUDA-only, each behind one ``if``: pinned host memory with
non-blocking copies, the stream synchronisation before reading a pinned result, and the
free-memory query of :func:`auto_batch_size`. Everything else (autocast in bf16 / fp16,
resize, quantisation, compile) runs the same on the CPU, where it is tested.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

__all__ = ["FastPredictor", "compile_predictor", "auto_batch_size", "configure_predictor"]


def configure_predictor(
    predictor, *, dtype=None, compile: bool = False, fast: bool = False, tile_size=None
):
    """Precision / compile / fast options on a resolved predictor: ``dtype`` ("bf16",
    "fp16"; autocast), ``compile`` (``torch.compile``), ``fast`` (:class:`FastPredictor`
    reading tiles of ``tile_size``). Returns a new predictor (the model object is shared);
    a predictor that is not a ``Predictor`` is returned unchanged when no option is asked,
    else refused with a ValueError."""
    from .loading import load_predictor
    from .predictor import Predictor

    if dtype in (None, "fp32", "float32") and not compile and not fast:
        return predictor
    if not isinstance(predictor, Predictor):
        raise ValueError(
            "precision / compile / fast options need a BiomedParse model (a Predictor), "
            f"not {type(predictor).__name__}"
        )
    predictor = load_predictor(predictor, dtype=dtype)
    if fast:
        if not tile_size:
            raise ValueError("fast=True needs the tile size")
        return FastPredictor(predictor, int(tile_size), compile=compile)
    if compile:
        compile_predictor(predictor)
    return predictor


def compile_predictor(predictor, mode: str | None = None):
    """``torch.compile`` the image encoder (backbone + pixel decoder) of a Predictor's model
    in place (state-dict keys unchanged, so fingerprints stay the same). The first batch of
    each shape compiles (tens of seconds on the full model). Returns the predictor, with
    ``compiled = True``."""
    model = predictor.model
    for name in ("backbone", "pixel_decoder"):
        mod = getattr(model, name, None)
        if mod is not None:
            mod.compile(mode=mode, dynamic=False)
    predictor.compiled = True
    return predictor


def auto_batch_size(
    predictor, prompts, *, max_batch: int = 64, headroom: float = 0.8, default: int = 4
) -> int:
    """A batch size that fits the card's free memory: one probe batch of 1 measures the peak
    memory per tile; ``floor(headroom * free / per_tile)`` (capped at ``max_batch``). Where
    free memory cannot be queried (CPU, MPS) returns ``default``."""
    import torch

    dev = torch.device(str(getattr(predictor, "device", "cpu")))
    if dev.type != "cuda":
        return int(default)
    S = int(predictor.input_size)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    predictor.predict_batch(np.zeros((1, S, S, 3), np.uint8), prompts)
    torch.cuda.synchronize(dev)
    per_tile = max(1, torch.cuda.max_memory_allocated(dev) - base)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(1, min(max_batch, headroom * free // per_tile)))


class FastPredictor:
    """Tiles of ``tile_size`` (``(B, T, T, 3)`` uint8) -> ``(B, P, T, T)`` probabilities,
    resizing to and from the model input on the device (see the module doc).

    ``output="uint8"`` (default) returns ``round(255 p)`` made on the device (the slide
    engine stores uint8 tiles as they are); ``"float32"`` returns probabilities. The dtype
    (autocast) is the wrapped Predictor's; ``compile`` compiles its image encoder.
    ``timer(name)``: an optional context-manager factory timing each phase (profiling).

    Results differ slightly from the reference path (PIL resize on the CPU, probabilities at
    the model input then reduced to the tile), so its fingerprint names the tile size and a
    run with it cannot resume a reference run."""

    def __init__(
        self, predictor, tile_size: int, *, compile: bool = False, timer=None, output="uint8"
    ):
        if output not in ("uint8", "float32"):
            raise ValueError(f"output must be 'uint8' or 'float32', got {output!r}")
        self.output = output
        self.predictor = predictor
        self.model = predictor.model
        self.device = predictor.device
        self.dtype = predictor.dtype
        self.input_size = int(tile_size)
        self.model_size = int(predictor.input_size)
        self.compiled = bool(getattr(predictor, "compiled", False))
        self.timer = timer
        self._max_batch = 0
        self._text_cache: OrderedDict = OrderedDict()
        if compile and not self.compiled:
            compile_predictor(predictor)
            self.compiled = True

    def fingerprint(self) -> str:
        from .loading import model_fingerprint

        return f"{model_fingerprint(self.predictor)}|fast{self.input_size}|{self.dtype}"

    def __getstate__(self):
        raise TypeError("a FastPredictor is built in each process from a ModelSpec; not pickled")

    def _t(self, name):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def _autocast(self):
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _text(self, prompts: list[str]) -> dict:
        key = tuple(prompts)
        if key not in self._text_cache:
            with self._autocast():
                self._text_cache[key] = self.model.encode_text(list(prompts))
            while len(self._text_cache) > 16:
                self._text_cache.popitem(last=False)
        return self._text_cache[key]

    def predict_batch(self, tiles, prompts, *, as_numpy: bool = True):
        """``tiles`` uint8 ``(B, T, T, 3)``, ``prompts`` P strings -> ``(B, P, T, T)``
        uint8 or float32 (numpy; a device tensor with ``as_numpy=False``)."""
        import torch
        import torch.nn.functional as F

        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        if not prompts or not all(p.strip() for p in prompts):
            raise ValueError(f"give non-empty text prompts, got {prompts!r}")
        T, S = self.input_size, self.model_size
        tiles = np.asarray(tiles)
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (T, T, 3):
            raise ValueError(
                f"tiles must be uint8 (B, {T}, {T}, 3), got {tiles.dtype} {tiles.shape}"
            )
        cuda = self.device.type == "cuda"
        n_real = tiles.shape[0]
        if self.compiled:  # a smaller last batch would trigger a recompilation: pad it
            self._max_batch = max(self._max_batch, n_real)
            if n_real < self._max_batch:
                pad = np.zeros((self._max_batch - n_real, T, T, 3), np.uint8)
                tiles = np.concatenate([tiles, pad])
        with torch.inference_mode():
            with self._t("h2d"):
                x = torch.from_numpy(np.ascontiguousarray(tiles))
                if cuda:  # CUDA only: pinned memory, asynchronous copy
                    x = x.pin_memory().to(self.device, non_blocking=True)
                else:
                    x = x.to(self.device)
            with self._t("preprocess"):  # resize on the device; normalised by encode_image
                x = x.permute(0, 3, 1, 2).contiguous().float()
                if T != S:
                    x = F.interpolate(
                        x, size=(S, S), mode="bilinear", align_corners=False, antialias=S < T
                    ).clamp_(0, 255)
            text = self._text(prompts)
            with self._autocast():
                with self._t("encode"):
                    feats = self.model.encode_image(x)
                with self._t("decode"):  # all prompts in one decoder pass
                    out = self.model.decode(feats, text, joint=False)
            with self._t("postprocess"):
                logits = out["matched_masks"].float()
                b, n = logits.shape[:2]
                up = F.interpolate(
                    logits.reshape(b, n, *logits.shape[-2:]),
                    (T, T),
                    mode="bilinear",
                    align_corners=False,
                ).sigmoid_()[:n_real]
                if self.output == "uint8":  # what the store keeps: round(255 p), 4x fewer bytes
                    up = up.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            if not as_numpy:
                return up
            with self._t("d2h"):
                if cuda:  # CUDA only: copy into pinned memory, then wait for the stream
                    host = torch.empty(up.shape, dtype=up.dtype, pin_memory=True)
                    host.copy_(up, non_blocking=True)
                    torch.cuda.current_stream(self.device).synchronize()
                    return host.numpy()
                return up.cpu().numpy()
