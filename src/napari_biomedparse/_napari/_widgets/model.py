"""Model widget: which model (bundled default, official v1, or a checkpoint file), device,
precision and weights cache; loads in the background with progress. The "current" line
follows the shared model state's ``changed`` signal (a model loaded by another widget's first
run or by a script shows up too)."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FileEdit, Label
from napari.utils.notifications import show_error

from .._functions import friendly_error
from .._model_state import DEVICES, MODEL, PRECISIONS, describe, model_spec
from .._runner import RunControls
from .._settings import remember, restore
from ._common import ScrollableForm, on_main_thread, wrap_text

SOURCE_CHOICES = [
    ("default (bundled, offline)", "default"),
    ("BiomedParse v1", "biomedparse-v1"),
    ("checkpoint file", "checkpoint"),
]


class ModelWidget(ScrollableForm, Container):
    """Choose and load the model the other widgets use."""

    settings_key = "model"

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.source = ComboBox(choices=SOURCE_CHOICES, value="default", label="model")
        self.source.tooltip = (
            "default: the small model inside the package (offline); BiomedParse v1: the "
            "official weights from the cache, a local file or the Hugging Face hub; "
            "checkpoint file: any .safetensors / .pt"
        )
        self.checkpoint = FileEdit(
            mode="r", value="", filter="*.pt *.pth *.ckpt *.safetensors", label="checkpoint"
        )
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.precision = ComboBox(choices=list(PRECISIONS), value="float32", label="precision")
        self.cache_dir = FileEdit(mode="d", value="", label="weights cache")
        self.cache_dir.tooltip = "Where downloaded official weights are kept (empty = default)."
        for edit in (self.checkpoint, self.cache_dir):
            edit.choose_btn.text = "..."  # narrow: the dock must leave room for the canvas
        self.loaded = Label(value="not loaded yet (loads on first run)", label="current")
        wrap_text(self.loaded)  # the whole text, on several lines
        self.run = RunControls("Load model")
        super().__init__(
            scrollable=True,
            widgets=[
                self.source,
                self.checkpoint,
                self.device,
                self.precision,
                self.cache_dir,
                self.loaded,
                self.run,
            ],
        )
        persisted = {
            "source": self.source,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "precision": self.precision,
            "cache_dir": self.cache_dir,
        }
        restore(persisted, self.settings_key)
        remember(persisted, self.settings_key)
        for w in persisted.values():
            w.changed.connect(self._sync)
        self.run.run_button.changed.connect(self.start)
        self._sync()
        self._show_loaded()
        self._fit_dock()
        # another widget's run (or a script) may load the model: the shared state is evented
        self._on_model_changed = on_main_thread(lambda *_: self._show_loaded())
        MODEL.changed.connect(self._on_model_changed)
        self.native.destroyed.connect(lambda *_: MODEL.changed.disconnect(self._on_model_changed))

    @staticmethod
    def _path(value) -> str:
        text = str(value) if value is not None else ""
        return "" if text in ("", ".") else text

    def spec(self):
        """The chosen model's :class:`~napari_biomedparse.inference.loading.ModelSpec`
        (FileNotFoundError for a missing file)."""
        return model_spec(
            self.source.value,
            self._path(self.checkpoint.value),
            self.device.value,
            self.precision.value,
        )

    def _sync(self, *_):
        self.checkpoint.visible = self.source.value in ("checkpoint", "biomedparse-v1")
        self.checkpoint.label = (
            "checkpoint" if self.source.value == "checkpoint" else "local v1 file"
        )

    def _show_loaded(self):
        spec = MODEL.loaded_spec
        text = "not loaded yet (loads on first run)" if spec is None else describe(spec)
        if self.loaded.value != text:
            self.loaded.value = text

    def start(self, *_):
        try:
            spec = self.spec()
        except (FileNotFoundError, ValueError) as exc:
            show_error(f"Loading the model failed: {friendly_error(exc)}")
            self.run.last_outcome, self.run.last_error = "error", exc
            return None
        return self.run.start(
            MODEL.load,
            on_result=lambda _pred: self._show_loaded(),
            description="Loading the model",
            spec=spec,
            cache_dir=self._path(self.cache_dir.value),
        )
