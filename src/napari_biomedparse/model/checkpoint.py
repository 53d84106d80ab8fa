"""Checkpoint reading and writing.

* Official checkpoints (``biomedparse_v1.pt``): a plain state dict with the official key names,
  possibly nested under ``state_dict`` / ``model``. Read with ``torch.load(weights_only=True,
  mmap=True)`` so that the 1.4 GB file is mapped, not copied, and loaded into a model built on
  the meta device by assignment (peak memory about one copy of the weights).
* Our checkpoints: safetensors, with the :class:`BiomedParseConfig` JSON and the model metadata
  (name, target_dist, vocabulary, inference) in the header, so that a file rebuilds its own
  model. ``inference`` says how the model is applied (e.g. ``{"mode": "tiled", "tile_size":
  256, "overlap": 32, "mpp": 0.5}`` for a model trained on tiles; absent = the official
  whole-image semantics), see :mod:`napari_biomedparse.inference.tiled`.

The released file may also hold the weights of an unused BiomedBERT text encoder
(``sem_seg_head.predictor.lang_encoder.biomed_encoder.*``, about 110 M parameters); those keys are
skipped without being read.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .biomedparse import BiomedParse
from .config import BiomedParseConfig

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "read_state_dict",
    "read_checkpoint_metadata",
    "model_from_checkpoint",
    "SKIPPED_PREFIXES",
]

log = logging.getLogger(__name__)

#: Keys with these prefixes are ignored (weights of modules BiomedParse v1 never uses).
SKIPPED_PREFIXES = ("sem_seg_head.predictor.lang_encoder.biomed_encoder.",)
CONFIG_KEY = "napari_biomedparse.config"
_META_KEYS = ("name", "target_dist", "vocabulary", "inference")
_OFFICIAL_HINT = (
    "the official BiomedParse v1 checkpoint (biomedparse_v1.pt from the Hugging Face repository "
    "microsoft/BiomedParse)"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1e8
    except OSError:
        return False


def _skipped(key: str) -> bool:
    return key.startswith(SKIPPED_PREFIXES)


def _unwrap(obj: Any, src: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
            for key in ("state_dict", "model", "module"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{src} does not contain a state dict (found {type(obj).__name__}); expected a dict "
            "of parameter name -> tensor, optionally under a 'state_dict' or 'model' key"
        )
    bad = [k for k, v in obj.items() if not torch.is_tensor(v) and not _skipped(str(k))]
    if bad:
        raise CheckpointError(
            f"{src} is not a plain state dict: entry {bad[0]!r} is a "
            f"{type(obj[bad[0]]).__name__}, not a tensor ({len(bad)} such entries); save "
            "model.state_dict() or use save_checkpoint()"
        )
    sd = dict(obj)
    keys = [k for k in sd if not _skipped(k)]
    for prefix in ("module.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            break
    return sd


def read_checkpoint_metadata(source: str | os.PathLike) -> dict[str, Any]:
    """Header metadata of one of our safetensors files: ``config`` (BiomedParseConfig or None),
    ``name``, ``target_dist``, ``vocabulary``, ``inference`` (decoded JSON or None). Empty for
    other files."""
    path = Path(source)
    if not _is_safetensors(path):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated: "
            "download or save it again"
        ) from exc
    out: dict[str, Any] = {"config": None}
    key = CONFIG_KEY
    try:
        if CONFIG_KEY in raw:
            out["config"] = BiomedParseConfig.from_json(raw[CONFIG_KEY])
        for key in _META_KEYS:
            out[key] = json.loads(raw[key]) if key in raw else None
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{path}: the header entry {key!r} is not valid JSON of this program ({exc}); the "
            "file was edited or written by another tool. Save the model again with "
            "save_checkpoint, or load the tensors of an official .pt file instead"
        ) from exc
    return out


def read_state_dict(source: str | os.PathLike | Mapping) -> tuple[dict[str, torch.Tensor], int]:
    """Read a state dict (official key names) from a ``.pt``/``.pth`` file, a safetensors file
    or a mapping. Returns (state dict without skipped keys, number of skipped keys).

    ``.pt`` files are read with ``weights_only=True`` and memory-mapped when possible; skipped
    keys of a safetensors file are never read.
    """
    if isinstance(source, Mapping):
        sd = _unwrap(source, "the given mapping")
        n0 = len(sd)
        sd = {k: v for k, v in sd.items() if not _skipped(k)}
        return sd, n0 - len(sd)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                keys = list(fh.keys())
                sd = {k: fh.get_tensor(k) for k in keys if not _skipped(k)}
        except Exception as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                "corrupt: download or save it again"
            ) from exc
        return _unwrap(sd, str(path)), len(keys) - len(sd)
    obj = _torch_load(path)
    sd = _unwrap(obj, str(path))
    n0 = len(sd)
    sd = {k: v for k, v in sd.items() if not _skipped(k)}
    return sd, n0 - len(sd)


def _torch_load(path: Path) -> Any:
    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            log.info("%s is in the legacy torch format: read without memory mapping", path)
            return load(mmap=False)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch zip nor pickle
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (neither torch's zip format nor a pickle; "
                f"it starts with {head!r}): the file is damaged or of another kind. Download "
                "or save it again, or give the checkpoint file itself (.pt / .safetensors)"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a plain state dict: it holds pickled Python objects that are not "
            f"allowed with weights_only=True ({first}). Only tensors, dicts, lists and numbers "
            "are accepted; re-save it with torch.save(model.state_dict(), path) or convert it "
            "to safetensors"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        size = path.stat().st_size
        raise CheckpointError(
            f"Cannot read {path} ({size} bytes): the file is truncated or corrupt ({exc}). "
            "Delete it and download it again (or pass the path of a complete copy)"
        ) from exc


def _describe_expectation(cfg: BiomedParseConfig) -> str:
    if cfg == BiomedParseConfig.biomedparse_v1():
        return f"This model is the released configuration and expects {_OFFICIAL_HINT}."
    return (
        f"This model ({cfg.describe()}) expects a checkpoint saved from the same configuration; "
        "use napari_biomedparse.hub.load_model(path) to build the model a safetensors "
        "checkpoint describes, or build_model(BiomedParseConfig.biomedparse_v1()) for "
        f"{_OFFICIAL_HINT}."
    )


def _check_fit(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], src: str, skipped: int
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        (k, tuple(sd[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"Checkpoint {src} does not fit the model (strict loading):"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s), first: {missing[0]!r}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s), first: {unexpected[0]!r}")
    if shapes:
        k, a, b = shapes[0]
        lines.append(
            f"  {len(shapes)} shape mismatch(es), first: {k!r} is {list(a)} in the checkpoint "
            f"but {list(b)} in the model"
        )
    if skipped:
        lines.append(f"  ({skipped} unused BiomedBERT keys {SKIPPED_PREFIXES[0]}* were skipped)")
    cfg = getattr(model, "config", None)
    if isinstance(cfg, BiomedParseConfig):
        lines.append(_describe_expectation(cfg))
        w = sd.get("backbone.patch_embed.proj.weight")
        if w is not None and w.ndim == 4:
            lines.append(
                f"The checkpoint's backbone has embed_dim={w.shape[0]} "
                f"(the model's: {cfg.embed_dim})."
            )
    raise CheckpointError("\n".join(lines))


def load_checkpoint(
    model: BiomedParse, source: str | os.PathLike | Mapping, *, strict: bool = True
) -> BiomedParse:
    """Load weights with official key names into ``model`` (strictly) and return it.

    ``source``: a ``.pt`` state dict (optionally nested under ``state_dict``/``model``), a
    safetensors file (ours or converted), or a mapping. A model built on the meta device
    (``build_model(cfg, device="meta")``) receives the checkpoint tensors by assignment (no
    second copy); otherwise the values are copied into the existing parameters. Keys of the
    unused BiomedBERT encoder are skipped (logged). For our safetensors files the stored
    configuration must equal ``model.config`` and the stored metadata (name, target_dist,
    vocabulary, inference) is copied to ``model.metadata``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable/truncated file, a pickle that is not a plain state dict, or
            missing / unexpected / wrongly shaped keys (the first of each is named).
    """
    src = str(source) if not isinstance(source, Mapping) else "<mapping>"
    meta: dict[str, Any] = {}
    if not isinstance(source, Mapping):
        meta = read_checkpoint_metadata(source)
        stored = meta.get("config")
        cfg = getattr(model, "config", None)
        if stored is not None and isinstance(cfg, BiomedParseConfig) and stored != cfg:
            raise CheckpointError(
                f"Checkpoint {src} was saved for a different configuration ({stored.describe()}) "
                f"than this model ({cfg.describe()}); load it with "
                "napari_biomedparse.hub.load_model(path), which builds the stored configuration"
            )
    sd, skipped = read_state_dict(source)
    if skipped:
        log.info(
            "Skipped %d keys of the unused BiomedBERT text encoder (%s*) in %s",
            skipped,
            SKIPPED_PREFIXES[0],
            src,
        )
    if strict:
        _check_fit(model, sd, src, skipped)
    on_meta = any(p.is_meta for p in model.parameters())
    expected = model.state_dict()
    if on_meta:
        sd = {
            k: (v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v)
            for k, v in sd.items()
        }
        model.load_state_dict(sd, strict=strict, assign=True)
        if isinstance(model, BiomedParse):
            model.reset_non_persistent_buffers()
    else:
        model.load_state_dict(sd, strict=strict)
    if isinstance(model, BiomedParse):
        for key in _META_KEYS:
            if meta.get(key) is not None:
                model.metadata[key] = meta[key]
        model.checkpoint_info = {"source": src, "skipped_keys": skipped}
    return model


def save_checkpoint(
    model: BiomedParse, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` as safetensors with its configuration and metadata in the header.

    ``metadata`` (name, target_dist, vocabulary, inference) overrides ``model.metadata``. The file is
    written atomically (temporary file, then rename). Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = dict(getattr(model, "metadata", {}) or {})
    meta.update(metadata or {})
    unknown = set(meta) - set(_META_KEYS)
    if unknown:
        raise ValueError(f"Unknown metadata keys {sorted(unknown)}; allowed: {_META_KEYS}")
    header = {"format": "pt", CONFIG_KEY: model.config.to_json()}
    for key in _META_KEYS:
        if meta.get(key) is not None:
            header[key] = json.dumps(meta[key])
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)
    return path


def model_from_checkpoint(
    source: str | os.PathLike,
    config: BiomedParseConfig | None = None,
    device: torch.device | str | None = None,
) -> BiomedParse:
    """Build the model a checkpoint describes and load it (eval mode).

    The configuration comes from the safetensors header when present, else ``config``, else
    the released v1 configuration (official ``.pt`` files carry no configuration).
    """
    from .build import build_model

    meta = read_checkpoint_metadata(source)
    cfg = meta.get("config") or config or BiomedParseConfig.biomedparse_v1()
    model = build_model(cfg, device="meta")
    load_checkpoint(model, source)
    if device is not None:
        model = model.to(device)
    return model.eval()
