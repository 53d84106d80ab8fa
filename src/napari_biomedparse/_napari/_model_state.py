"""The plugin's current model, shared by the widgets (one per napari process).

The Model widget configures it; the other widgets ask for :meth:`ModelState.predictor`
inside their worker thread, which loads the configured model on first use (so loading never
blocks the GUI). The state is evented: :attr:`ModelState.changed` (a psygnal signal) is emitted
with the loaded :class:`ModelSpec` (or None) whenever the current model changes, from the
thread that changed it. No napari / Qt import here.
"""

from __future__ import annotations

import inspect
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from psygnal import Signal

SOURCES = ("default", "biomedparse-v1", "checkpoint")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how."""

    source: str = "default"  # "default" | "biomedparse-v1" | "checkpoint"
    checkpoint: str = ""  # the file for source "checkpoint" (or a local v1 file)
    device: str = "auto"
    precision: str = "float32"
    cache_dir: str = ""

    def load_arg(self) -> str:
        if self.source == "checkpoint":
            if not self.checkpoint:
                raise FileNotFoundError(
                    "no checkpoint file chosen; pick a .pt / .safetensors file in the Model widget"
                )
            path = Path(self.checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint file not found: {path}")
            return str(path)
        if self.source not in SOURCES:
            raise ValueError(f"unknown model source {self.source!r}; one of {SOURCES}")
        return self.source


def check_device(device: str) -> None:
    """Raise a clear error when the chosen device does not exist on this machine."""
    from napari_biomedparse.inference.devices import resolve_device

    resolve_device(device)


def load_predictor(spec: ModelSpec, progress=None):
    """Load the model of ``spec`` and wrap it in a Predictor (slow: call it in a worker)."""
    arg = spec.load_arg()  # checks the file first: a bad path fails fast with a clear message
    check_device(spec.device)

    from napari_biomedparse.hub import load_model
    from napari_biomedparse.inference.devices import resolve_dtype
    from napari_biomedparse.inference.predictor import Predictor

    if progress is not None:
        progress(0, 2, f"loading model '{Path(arg).name}'")
    kwargs = {}
    params = inspect.signature(load_model).parameters
    if spec.cache_dir:
        if "cache_dir" in params:
            kwargs["cache_dir"] = spec.cache_dir
        else:
            os.environ["NAPARI_BIOMEDPARSE_CACHE"] = spec.cache_dir  # read by hub.cache_dir()
    if spec.source == "biomedparse-v1" and spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BiomedParse v1 file not found: {path}")
        kwargs["path"] = str(path)  # a local copy of biomedparse_v1.pt (no download)
    model = load_model(arg, **kwargs)
    if progress is not None:
        progress(1, 2, f"moving model to {spec.device}")
    dtype = resolve_dtype(spec.precision)  # None = float32
    pred = Predictor(model, device=spec.device, dtype=dtype)
    if progress is not None:
        progress(2, 2, "model ready")
    return pred


class ModelState:
    """The current model spec and, once loaded, its Predictor (thread-safe).

    ``changed(spec)``: emitted after a model was loaded or set (``spec`` = the loaded
    :class:`ModelSpec`) or cleared (None).
    """

    changed = Signal(object)

    def __init__(self):
        self.spec = ModelSpec()
        self._predictor = None
        self._loaded: ModelSpec | None = None
        self._lock = threading.RLock()

    def configure(self, **changes) -> ModelSpec:
        with self._lock:
            self.spec = replace(self.spec, **changes)
            return self.spec

    @property
    def loaded_spec(self) -> ModelSpec | None:
        return self._loaded

    def load(self, spec: ModelSpec | None = None, progress=None, cancel=None):
        """Load ``spec`` (default: the configured one) now and make it current."""
        spec = spec or self.spec
        pred = load_predictor(spec, progress=progress)
        if cancel is not None and cancel.is_set():
            from ._functions import Cancelled

            raise Cancelled()
        with self._lock:
            self.spec = spec
            self._predictor = pred
            self._loaded = spec
        self.changed.emit(spec)
        return pred

    def use(self, model, *, name: str = "custom", device: str = "auto") -> None:
        """Make an already built model (or Predictor) the current one (scripts, tests)."""
        from napari_biomedparse.inference.predictor import Predictor

        pred = model if isinstance(model, Predictor) else Predictor(model, device=device)
        with self._lock:
            self.spec = ModelSpec(source="checkpoint", checkpoint=name, device=device)
            self._predictor = pred
            self._loaded = self.spec
        self.changed.emit(self.spec)

    @property
    def model(self):
        """The loaded model (None before the first load)."""
        pred = self._predictor
        return None if pred is None else getattr(pred, "model", None)

    def metadata(self) -> dict:
        """The current model's metadata (``vocabulary``, ``inference``, ...) without loading it:
        the loaded model's, else read from the configured checkpoint's header (cheap; {} when
        the file has none, e.g. official ``.pt`` files)."""
        model = self.model
        if model is not None and self._loaded == self.spec:
            return dict(getattr(model, "metadata", None) or {})
        try:
            if self.spec.source == "default":
                from napari_biomedparse.hub import DEFAULT_WEIGHTS as path
            elif self.spec.source == "checkpoint":
                path = Path(self.spec.load_arg())
            else:
                return {}
            from napari_biomedparse.model.checkpoint import read_checkpoint_metadata

            return {k: v for k, v in read_checkpoint_metadata(path).items() if v is not None}
        except Exception:  # noqa: BLE001 - no file yet / unreadable: nothing known
            return {}

    def predictor(self, progress=None):
        """The Predictor of the configured model, loading it on first use."""
        with self._lock:
            if self._predictor is not None and self._loaded == self.spec:
                return self._predictor
            return self.load(self.spec, progress=progress)

    def model_for_engine(self):
        """What to pass as ``model=`` to the slide engine: the configured model's Predictor
        (loaded now if needed; call it in a worker)."""
        return self.predictor()

    def clear(self):
        with self._lock:
            self._predictor = None
            self._loaded = None
            self.spec = ModelSpec()
        self.changed.emit(None)


MODEL = ModelState()
