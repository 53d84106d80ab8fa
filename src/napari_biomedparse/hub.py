"""Finding and loading model weights: the bundled default model and the official BiomedParse v1.

``load_model("default")`` loads the small model shipped inside the package (offline).
``load_model("biomedparse-v1")`` looks for the official checkpoint, in this order:

1. an explicit ``path=`` argument;
2. the environment variable ``NAPARI_BIOMEDPARSE_V1`` (path of ``biomedparse_v1.pt``);
3. the local cache: ``$NAPARI_BIOMEDPARSE_CACHE`` (default: the user cache directory,
   e.g. ``~/.cache/napari-biomedparse``) holding ``biomedparse_v1.pt`` (and optionally
   ``target_dist.json``);
4. the Hugging Face hub (``microsoft/BiomedParse``: ``biomedparse_v1.pt``,
   ``target_dist.json``) through ``huggingface_hub``, into that cache. The repository is gated
   (licence CC-BY-NC-SA-4.0): accept its terms on the hub and provide a token (``HF_TOKEN`` or
   ``token=``). When the hub is unreachable or access is refused the call fails at once with a
   :class:`ModelUnavailableError` that says what to do.

``load_model(path)`` loads any checkpoint file: our safetensors files rebuild the configuration
stored in them; official ``.pt`` state dicts are taken as the released v1 configuration.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .errors import BiomedParseError
from .model.biomedparse import BiomedParse
from .model.checkpoint import model_from_checkpoint, read_checkpoint_metadata
from .model.config import BiomedParseConfig

__all__ = [
    "load_model",
    "resolve_v1_checkpoint",
    "cache_dir",
    "ModelUnavailableError",
    "DEFAULT_WEIGHTS",
    "V1_REPO_ID",
    "V1_FILENAME",
    "V1_TARGET_DIST",
    "ENV_V1",
    "ENV_CACHE",
]

log = logging.getLogger(__name__)

V1_REPO_ID = "microsoft/BiomedParse"
V1_FILENAME = "biomedparse_v1.pt"
V1_TARGET_DIST = "target_dist.json"
ENV_V1 = "NAPARI_BIOMEDPARSE_V1"
ENV_CACHE = "NAPARI_BIOMEDPARSE_CACHE"
DEFAULT_WEIGHTS = Path(__file__).parent / "model" / "weights" / "default.safetensors"
_PACKAGED_TARGET_DIST = Path(__file__).parent / "inference" / "target_dist_v1.json"
_V1_NAMES = {"biomedparse-v1", "biomedparse_v1", "v1"}

_HELP = (
    "To use the official BiomedParse v1 weights: (1) log in at https://huggingface.co and accept "
    f"the licence of https://huggingface.co/{V1_REPO_ID}; (2) create an access token and set it "
    "as the environment variable HF_TOKEN (or run `hf auth login`, or pass token=...); or "
    f"download {V1_FILENAME} yourself and pass its path (load_model(path) / "
    f"load_model('biomedparse-v1', path=...)), set {ENV_V1}=/path/to/{V1_FILENAME}, or put it in "
    "the cache directory {cache}."
)


class ModelUnavailableError(BiomedParseError, RuntimeError):
    """The requested weights are neither local nor obtainable from the hub."""


def _hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached right now (None: it may be): ``HF_HUB_OFFLINE`` set,
    or no TCP connection to the hub's host within ``timeout`` seconds (one quick try, so
    that an offline machine fails at once instead of after the client's retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"no connection to {host}:{port} ({exc})"
    return None


def cache_dir() -> Path:
    """``$NAPARI_BIOMEDPARSE_CACHE``, else the user cache directory of napari-biomedparse."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("napari-biomedparse", appauthor=False))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "napari-biomedparse"


def _hub_download(filename: str, token, local_dir: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover
        raise ModelUnavailableError(
            "huggingface_hub is not installed, so the weights cannot be downloaded. "
            + _HELP.format(cache=local_dir)
        ) from exc
    try:
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # pragma: no cover - older huggingface_hub
        from huggingface_hub.utils import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    try:
        path = hf_hub_download(
            repo_id=V1_REPO_ID,
            filename=filename,
            local_dir=str(local_dir),
            token=token,
            etag_timeout=10,
        )
    except GatedRepoError as exc:
        raise ModelUnavailableError(
            f"Access to the gated repository {V1_REPO_ID} was refused (licence not accepted or "
            "no/invalid token). " + _HELP.format(cache=local_dir)
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelUnavailableError(
            f"The hub did not give access to {V1_REPO_ID} (gated repository: a token of an "
            "account that accepted the licence is needed). " + _HELP.format(cache=local_dir)
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelUnavailableError(
            f"The Hugging Face hub is unreachable (offline?) and {filename} is not in the "
            "cache. " + _HELP.format(cache=local_dir)
        ) from exc
    except Exception as exc:  # network errors of requests/httpx, HTTP errors, OSError
        raise ModelUnavailableError(
            f"Downloading {filename} from {V1_REPO_ID} failed ({type(exc).__name__}: {exc}). "
            + _HELP.format(cache=local_dir)
        ) from exc
    return Path(path)


def resolve_v1_checkpoint(
    path: str | os.PathLike | None = None, *, token=None, download: bool = True
) -> tuple[Path, Path | None]:
    """Locate ``biomedparse_v1.pt`` (see the module docstring for the order).

    Returns (checkpoint path, target_dist.json path or None when only the packaged copy is
    available). Raises ``FileNotFoundError`` for an explicit path / ``NAPARI_BIOMEDPARSE_V1``
    that does not exist, and :class:`ModelUnavailableError` when the hub cannot provide it.
    """
    cache = cache_dir()
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"BiomedParse v1 checkpoint not found: {p}")
        td = p.with_name(V1_TARGET_DIST)
        return p, td if td.is_file() else None
    env = os.environ.get(ENV_V1)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"{ENV_V1} is set to {p}, which is not a file; point it to {V1_FILENAME} or "
                "unset it"
            )
        td = p.with_name(V1_TARGET_DIST)
        return p, td if td.is_file() else None
    cached = cache / V1_FILENAME
    if cached.is_file():
        td = cache / V1_TARGET_DIST
        return cached, td if td.is_file() else None
    if not download:
        raise ModelUnavailableError(
            f"{V1_FILENAME} is not in the cache and downloading is disabled. "
            + _HELP.format(cache=cache)
        )
    offline = _hub_offline_reason()
    if offline:
        raise ModelUnavailableError(
            f"{V1_FILENAME} is not in the cache and the Hugging Face hub cannot be reached "
            f"({offline}). " + _HELP.format(cache=cache)
        )
    cache.mkdir(parents=True, exist_ok=True)
    ckpt = _hub_download(V1_FILENAME, token, cache)
    try:
        td = _hub_download(V1_TARGET_DIST, token, cache)
    except ModelUnavailableError as exc:
        log.warning("target_dist.json not downloaded (%s); using the packaged copy", exc)
        td = None
    return ckpt, td


def _read_target_dist(path: Path | None) -> dict | None:
    for p in (path, _PACKAGED_TARGET_DIST):
        if p is not None and Path(p).is_file():
            try:
                return json.loads(Path(p).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("Cannot read %s (%s)", p, exc)
    return None


def load_model(
    name_or_path: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    *,
    path: str | os.PathLike | None = None,
    token=None,
    download: bool = True,
    config: BiomedParseConfig | None = None,
) -> BiomedParse:
    """Load a model in eval mode, with ``model.metadata`` (name, target_dist, vocabulary,
    inference).

    Args:
        name_or_path: "default" (the small model bundled with the package), "biomedparse-v1"
            (the official weights; see the module docstring), or a checkpoint path.
        device: where to put the model (None: stay on the CPU; "auto": cuda > mps > cpu).
        path: explicit location of ``biomedparse_v1.pt`` for "biomedparse-v1".
        token: Hugging Face token for the gated repository (default: ``HF_TOKEN`` / login).
        download: allow the hub download (False: local files only).
        config: architecture of an official-format ``.pt`` file (default: the released v1
            configuration); ignored for our safetensors files, which store their own.
    """
    if device is not None and str(device) == "auto":
        from .inference.predictor import resolve_device

        device = resolve_device("auto")
    name = str(name_or_path)
    if name == "default":
        if not DEFAULT_WEIGHTS.is_file():
            raise FileNotFoundError(
                f"The bundled default model is missing ({DEFAULT_WEIGHTS}); reinstall "
                "napari-biomedparse, or load the official weights with "
                "load_model('biomedparse-v1') or a checkpoint path"
            )
        model = model_from_checkpoint(DEFAULT_WEIGHTS, device=device)
        model.metadata["name"] = model.metadata.get("name") or "default"
        return model
    if name.lower() in _V1_NAMES:
        ckpt, td = resolve_v1_checkpoint(path, token=token, download=download)
        model = _load_file(ckpt, device, config)
        if not model.metadata.get("name"):
            model.metadata["name"] = "biomedparse-v1"
        if model.metadata.get("target_dist") is None:
            model.metadata["target_dist"] = _read_target_dist(td)
        return model
    p = Path(name).expanduser()
    if p.is_dir():
        files = sorted(
            str(c.name) for c in p.iterdir() if c.suffix in (".safetensors", ".pt", ".pth")
        )
        hint = f" It holds {', '.join(files[:5])}: pass one of them." if files else ""
        raise IsADirectoryError(
            f"{p} is a folder; load_model needs a checkpoint file (.safetensors or .pt).{hint}"
        )
    if not p.exists():
        raise FileNotFoundError(
            f"No model named or located at {name!r}: use 'default', 'biomedparse-v1' or the "
            "path of a checkpoint file (.safetensors or .pt)"
        )
    return _load_file(p, device, config)


def _load_file(p: Path, device, config: BiomedParseConfig | None = None) -> BiomedParse:
    meta = read_checkpoint_metadata(p)
    model = model_from_checkpoint(p, config=config, device=device)
    if meta.get("config") is None:  # an official state dict: attach the official statistics
        model.metadata["name"] = model.metadata.get("name") or "biomedparse-v1"
        if model.metadata.get("target_dist") is None:
            td = p.with_name(V1_TARGET_DIST)
            model.metadata["target_dist"] = _read_target_dist(td if td.is_file() else None)
        if not model.metadata.get("inference"):  # how v1 is applied (docs/slides.md)
            from .inference.application import V1_INFERENCE

            model.metadata["inference"] = json.loads(json.dumps(V1_INFERENCE))
    elif not model.metadata.get("name"):
        model.metadata["name"] = p.stem
    return model
