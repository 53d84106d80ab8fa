"""The one parser of device and precision names (CLI, widgets, Predictor, slides, training).

- :func:`resolve_device`: ``"auto"`` / None (cuda if available, else mps, else cpu),
  ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``. A device this build
  or machine cannot use raises :class:`~napari_biomedparse.errors.InvalidInputError` (a
  ``ValueError``) with one line that says what to use instead.
- :func:`resolve_dtype`: None / ``"fp32"`` / ``"float32"`` / ``torch.float32`` -> None (full
  precision), ``"bf16"`` / ``"bfloat16"``, ``"fp16"`` / ``"float16"`` / ``"half"`` or the torch
  dtype -> that dtype (autocast). :func:`dtype_name` gives the short name back.
"""

from __future__ import annotations

import torch

from napari_biomedparse.errors import InvalidInputError

__all__ = ["DTYPE_NAMES", "dtype_name", "resolve_device", "resolve_dtype"]

#: Precision names accepted everywhere, short form first.
DTYPE_NAMES = ("fp32", "bf16", "fp16")

_DTYPES = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A usable ``torch.device`` for ``device`` (see the module docstring)."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        d = device
    else:
        text = str(device).strip().lower()
        try:
            d = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise InvalidInputError(
                f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
            ) from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {str(device)!r} asked for, but this PyTorch build or machine has no "
                "usable CUDA GPU: use the device cpu or auto (--device cpu), or install a CUDA build of "
                "PyTorch"
            )
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise InvalidInputError(
                f"device {str(device)!r} asked for, but only {n} CUDA GPU(s) exist: use "
                f"cuda:0..cuda:{n - 1}"
            )
    elif d.type == "mps":
        if not _mps_available():
            raise InvalidInputError(
                f"device {str(device)!r} asked for, but Apple's MPS is not available here: "
                "use the device cpu or auto (--device cpu)"
            )
    elif d.type != "cpu":
        raise InvalidInputError(
            f"unsupported device {str(device)!r}: use auto, cpu, cuda[:N] or mps"
        )
    return d


def resolve_dtype(dtype) -> torch.dtype | None:
    """None (full precision, float32) or the autocast dtype for ``dtype``."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype == torch.float32:
            return None
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in _DTYPES:
        return _DTYPES[dtype.strip().lower()]
    raise InvalidInputError(
        f"unknown precision (dtype) {dtype!r}: use fp32 (full precision), bf16 or fp16 (autocast)"
    )


def dtype_name(dtype) -> str:
    """The short name (``"fp32"``, ``"bf16"``, ``"fp16"``) of anything :func:`resolve_dtype`
    accepts."""
    d = resolve_dtype(dtype)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[d]
