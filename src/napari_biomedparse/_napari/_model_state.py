"""The plugin's current model, shared by the widgets (one per napari process).

The Model widget configures it; the other widgets ask for :meth:`ModelState.predictor`
inside their worker thread, which loads the configured model on first use (so loading never
blocks the GUI). A model is described by the package's one
:class:`~napari_biomedparse.inference.loading.ModelSpec` (built by its ``build``, i.e.
``inference.loading.load_predictor``); :func:`model_spec` turns the Model widget's choice into
one. The state is evented: :attr:`ModelState.changed` (a psygnal signal) is emitted with the
loaded spec (or None) whenever the current model changes, from the thread that changed it.
No napari / Qt import here.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

from psygnal import Signal

# the one model specification and the one loader (another process builds the same predictor
# from it); the plugin's state only adds which spec is current
from napari_biomedparse.inference.loading import ModelSpec

#: The Model widget's choices of model (its "checkpoint" is a file the user picks).
SOURCES = ("default", "biomedparse-v1", "checkpoint")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("float32", "bfloat16", "float16")


def model_spec(
    source: str = "default", checkpoint: str = "", device: str = "auto", precision=None
) -> ModelSpec:
    """The :class:`~napari_biomedparse.inference.loading.ModelSpec` (kind ``"path"``) of the
    Model widget's choice: ``source`` one of :data:`SOURCES`; ``checkpoint`` the file of
    ``"checkpoint"``, or a local copy of the official file for ``"biomedparse-v1"`` (then
    loaded from it, no download); ``precision`` one of :data:`PRECISIONS` (None = float32).
    A missing file is a clear FileNotFoundError here, before anything is loaded."""
    from napari_biomedparse.inference.devices import dtype_name

    if source not in SOURCES:
        raise ValueError(f"unknown model source {source!r}; one of {SOURCES}")
    name = source
    if source == "checkpoint" and not checkpoint:
        raise FileNotFoundError(
            "no checkpoint file chosen; pick a .pt / .safetensors file in the Model widget"
        )
    if checkpoint and source != "default":
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            what = "checkpoint" if source == "checkpoint" else "BiomedParse v1"
            raise FileNotFoundError(f"{what} file not found: {path}")
        name = str(path)
    dtype = None if precision is None else dtype_name(precision)
    return ModelSpec("path", name, device=device, dtype=None if dtype == "fp32" else dtype)


def describe(spec: ModelSpec) -> str:
    """One line for a person: ``"<model> on <device>, <precision>"``."""
    what = spec.source or "custom model"
    if what not in SOURCES:
        what = Path(what).name
    precision = {None: "float32", "bf16": "bfloat16", "fp16": "float16"}.get(spec.dtype)
    return f"{what} on {spec.device}, {precision or spec.dtype}"


def check_device(device: str) -> None:
    """Raise a clear error when the chosen device does not exist on this machine."""
    from napari_biomedparse.inference.devices import resolve_device

    resolve_device(device)


class ModelState:
    """The current :class:`ModelSpec` and, once loaded, its Predictor (thread-safe).

    ``changed(spec)``: emitted after a model was loaded or set (``spec`` = the loaded
    :class:`ModelSpec`) or cleared (None).
    """

    changed = Signal(object)

    def __init__(self):
        self.spec = model_spec()
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

    def load(self, spec: ModelSpec | None = None, progress=None, cancel=None, cache_dir=""):
        """Build ``spec`` (default: the configured one) now with :meth:`ModelSpec.build` and
        make it current (slow: call it in a worker). ``cache_dir``: where downloaded official
        weights are kept ("" = the default, :func:`napari_biomedparse.hub.cache_dir`)."""
        spec = spec or self.spec
        check_device(spec.device)  # a missing GPU fails fast with what to choose instead
        if cache_dir:
            from napari_biomedparse.hub import ENV_CACHE

            os.environ[ENV_CACHE] = str(cache_dir)
        if progress is not None:
            progress(0, 1, f"loading model '{Path(spec.source or 'custom').name}'")
        pred = spec.build()
        if progress is not None:
            progress(1, 1, "model ready")
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
        """Make an already built model (or Predictor) the current one (scripts, tests);
        ``name`` is what the Model widget shows (its spec: kind "object", nothing to build)."""
        from napari_biomedparse.inference.predictor import Predictor

        pred = model if isinstance(model, Predictor) else Predictor(model, device=device)
        where = str(getattr(pred, "device", None) or device)  # where it is, not "auto"
        with self._lock:
            self.spec = ModelSpec("object", source=name, device=where)
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
            source = self.spec.source
            if self.spec.kind != "path" or source == "biomedparse-v1":
                return {}
            if source == "default":
                from napari_biomedparse.hub import DEFAULT_WEIGHTS as path
            else:
                path = Path(source)
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
            self.spec = model_spec()
        self.changed.emit(None)


MODEL = ModelState()
