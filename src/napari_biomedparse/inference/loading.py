"""One way to turn a model argument into a predictor, and a cheap identity of its weights.

- :func:`load_predictor` ``(model, device, dtype)``: a model name or checkpoint path
  (``hub.load_model``), a ``BiomedParse`` module, a :class:`~.predictor.Predictor`, or any
  object following the predictor protocol (``input_size`` and ``predict_batch(rgb uint8
  (B,S,S,3), prompts) -> float32 (B,P,S,S)``), which is returned as is.
- :func:`model_fingerprint` ``(predictor_or_model) -> str``: what a resumable run records as
  "the model". An object may declare its own (a ``fingerprint`` attribute or method); else
  the architecture (config), the dtype and a strided sample of at most 64 values of every
  tensor (names, shapes and dtypes included). That reads a few kilobytes however large the
  model, and it still changes when any tensor is changed as a whole (fine-tuning, another
  checkpoint, an in-place edit of a layer).
- :class:`ModelSpec`: what another process needs to build the same predictor (by checkpoint
  path when the model came from one of our safetensors files, else its weights as
  safetensors bytes, or a pickled predictor object), plus the options of the fast path.
  :meth:`ModelSpec.build` builds it; the slide's dask executor ships a spec to its workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelSpec", "load_predictor", "model_fingerprint", "model_spec", "is_predictor"]

_SAMPLES = 64  # values sampled per tensor for the fingerprint


def is_predictor(obj) -> bool:
    """True for objects following the predictor protocol (``predict_batch`` + ``input_size``)."""
    return hasattr(obj, "predict_batch") and hasattr(obj, "input_size")


def load_predictor(model: Any = "default", device: str | None = None, dtype=None):
    """A predictor for ``model`` on ``device`` ("auto"/None = cuda > mps > cpu) with
    ``dtype`` (None/"fp32", or "bf16"/"fp16" autocast).

    ``model``: "default", a model name or checkpoint path, a ``BiomedParse`` module, a
    ``Predictor`` (re-wrapped, sharing its module, only when another dtype is asked) or any
    predictor-protocol object (returned as is; ``dtype`` must then be None)."""
    from .devices import resolve_dtype
    from .predictor import Predictor

    want = resolve_dtype(dtype)
    if isinstance(model, Predictor):
        if dtype is None or want == model.dtype:
            return model
        return Predictor(model.model, device=model.device, dtype=want)
    if is_predictor(model):
        if want is not None:
            raise ValueError(
                f"dtype={dtype!r} needs a BiomedParse model (a Predictor), not "
                f"{type(model).__name__}"
            )
        return model
    if isinstance(model, (str, os.PathLike)):
        from napari_biomedparse.hub import load_model

        model = load_model(os.fspath(model))
    if not hasattr(model, "config") or not hasattr(model, "state_dict"):
        raise TypeError(
            f"model must be a name, a checkpoint path, a BiomedParse model or a predictor, got "
            f"{type(model).__name__}"
        )
    return Predictor(model, device=device or "auto", dtype=want)


def _module_of(obj):
    """The torch module behind a predictor (or the module itself), else None."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    m = getattr(obj, "model", None)
    return m if isinstance(m, torch.nn.Module) else None


def model_fingerprint(obj) -> str:
    """A stable, cheap identity of a predictor's (or model's) weights; see the module doc."""
    fp = getattr(obj, "fingerprint", None)
    if fp is not None:
        return str(fp() if callable(fp) else fp)
    module = _module_of(obj)
    h = hashlib.sha256()
    if module is None:  # a protocol object without a fingerprint: its type and state
        h.update(type(obj).__qualname__.encode())
        h.update(repr(sorted(getattr(obj, "__dict__", {}).items())).encode())
        return "sha256:" + h.hexdigest()[:32]
    import torch

    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for k, v in module.state_dict().items():
            flat = v.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES)
            sample = flat[::step][:_SAMPLES].to("cpu", torch.float64).contiguous()
            h.update(f"{k}|{tuple(v.shape)}|{v.dtype}".encode())
            h.update(sample.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _dtype_name(dtype) -> str | None:
    """None for full precision, else "bf16" / "fp16" (:func:`.devices.dtype_name`)."""
    from .devices import dtype_name

    name = dtype_name(dtype)
    return None if name == "fp32" else name


@dataclass(frozen=True)
class ModelSpec:
    """What another process needs to build the same predictor.

    ``kind``: ``"path"`` (``source`` is a model name or checkpoint path for ``load_model``),
    ``"weights"`` (``payload`` = a safetensors checkpoint of a ``BiomedParse``) or
    ``"object"`` (``payload`` = a pickled predictor-protocol object, used as is).
    ``device`` ("auto" or a torch device), ``dtype`` (None, "bf16", "fp16"), ``fast`` /
    ``tile_size`` / ``compile``: the fast path of :mod:`~.fast`. ``fingerprint``: the
    caller's :func:`model_fingerprint` of the predictor (a process loading by path checks
    that it gets the same weights). ``key`` identifies the built predictor in a cache.
    """

    kind: str
    source: str | None = None
    payload: bytes | None = field(default=None, repr=False)
    device: str = "auto"
    dtype: str | None = None
    fast: bool = False
    tile_size: int | None = None
    compile: bool = False
    fingerprint: str | None = None

    @property
    def key(self) -> str:
        ident = self.fingerprint or self.source
        return f"{ident}|{self.device}|{self.dtype}|{self.compile}|{self.fast}|{self.tile_size}"

    def light(self) -> ModelSpec:
        """The spec without its payload (what each task carries)."""
        return dataclasses.replace(self, payload=None)

    def build(self, device: str | None = None):
        """Build the predictor (on ``device`` when given, else ``self.device``)."""
        if self.kind == "object":
            return pickle.loads(self.payload)
        if self.kind == "path":
            module = self.source
        elif self.kind == "weights":
            from napari_biomedparse.model.checkpoint import model_from_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(self.payload)
                module = model_from_checkpoint(path)
        else:
            raise ValueError(f"unknown model spec kind {self.kind!r}")
        pred = load_predictor(module, device or self.device, self.dtype)
        from .fast import configure_predictor

        return configure_predictor(
            pred, compile=self.compile, fast=self.fast, tile_size=self.tile_size
        )


def model_spec(
    model: Any, *, source=None, device: str | None = None, by_path: bool = True
) -> ModelSpec:
    """A :class:`ModelSpec` for ``model`` (a name or path, a module, a Predictor, a
    :class:`~.fast.FastPredictor` or any predictor object). ``source``: the name or path the
    caller loaded ``model`` from, if any (then loaded by that name elsewhere, checked against
    ``model``'s fingerprint). A module loaded from one of our safetensors files is described
    by that path (``by_path``), other modules travel as safetensors bytes, other objects
    pickled."""
    from .fast import FastPredictor

    dev = "auto" if device in (None, "auto") else str(device)
    opts: dict[str, Any] = {"device": dev}
    inner = model
    if isinstance(model, FastPredictor):
        inner = model.predictor
        opts.update(fast=True, tile_size=model.input_size, compile=model.compiled)
    if isinstance(inner, (str, os.PathLike)):
        return ModelSpec("path", os.fspath(inner), **opts)
    opts["compile"] = opts.get("compile", False) or bool(getattr(inner, "compiled", False))
    module = _module_of(inner)
    if module is None:
        payload = pickle.dumps(inner)
        fp = model_fingerprint(inner)
        return ModelSpec("object", None, payload, fingerprint=fp, **opts)
    opts["dtype"] = _dtype_name(getattr(inner, "dtype", None))
    fp = model_fingerprint(module)
    if by_path and isinstance(source, (str, os.PathLike)):
        return ModelSpec("path", os.fspath(source), fingerprint=fp, **opts)
    src = (getattr(module, "checkpoint_info", None) or {}).get("source")
    if by_path and src and str(src).endswith(".safetensors") and Path(src).is_file():
        return ModelSpec("path", str(Path(src).resolve()), fingerprint=fp, **opts)
    # weights travel as our safetensors format (configuration in the header), never as a
    # pickle that the other process would have to unpickle
    from napari_biomedparse.model.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        payload = save_checkpoint(module, Path(tmp) / "model.safetensors").read_bytes()
    return ModelSpec("weights", None, payload, fingerprint=fp, **opts)
