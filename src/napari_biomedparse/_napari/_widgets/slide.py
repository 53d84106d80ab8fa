"""Slide-processing widget: the slide engine's parameters, and opening earlier results.

The pixel size, tile size and overlap fields show what the engine will use: the defaults of
the current model and the chosen modality (:func:`._common.slide_defaults`), refreshed when
either changes; the values shown are the values passed."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_warning

from napari_biomedparse.inference.modalities import MODALITIES
from napari_biomedparse.inference.prompts import split_prompts

from .. import _functions as F
from .._runner import RunControls
from .._settings import remember, restore
from ._common import (
    ADD,
    REPLACE,
    ScrollableForm,
    add_result_layers,
    default_output_folder,
    layer_choice,
    on_main_thread,
    slide_defaults,
)
from .results import ResultsView

RECOGNIZE = "recognize all"
PROMPTS = "prompts"


class SlideWidget(ScrollableForm, Container):
    """Run the tiled slide engine on a whole image and show its results lazily."""

    settings_key = "slide"

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.image = layer_choice(napari_viewer, label="image")
        self.modality = ComboBox(choices=list(MODALITIES), value="Pathology", label="modality")
        self.task = ComboBox(choices=[RECOGNIZE, PROMPTS], value=RECOGNIZE, label="task")
        self.prompts = LineEdit(value="", label="prompts", visible=False)
        self.native_mpp = CheckBox(value=False, text="native pixel size")
        self.native_mpp.tooltip = (
            "At the image's own pixel size: process without resampling (fluorescence and the like)."
        )
        self.mpp = FloatSpinBox(value=0.5, min=0.05, max=100.0, step=0.05, label="pixel size (um)")
        self.mpp.tooltip = "Microns per pixel the tiles are processed at (the slide is resampled)."
        self.tile_size = SpinBox(value=256, min=64, max=8192, step=32, label="tile (px)")
        self.tile_size.tooltip = "Tile edge in pixels at the processing pixel size."
        self.overlap = SpinBox(value=32, min=0, max=2048, step=2, label="overlap (px)")
        self.overlap.tooltip = "Overlap between neighbouring tiles (even, < tile / 2)."
        self.tissue_mask = CheckBox(value=True, text="tissue only")
        self.tissue_mask.tooltip = (
            "Skip background: tiles without tissue (tissue mask) are not run."
        )
        self.output_folder = FileEdit(
            mode="d", value=default_output_folder(), label="output folder"
        )
        self.scheduler = LineEdit(value="", label="dask scheduler")
        self.scheduler.tooltip = (
            "Address of a dask scheduler (tcp://host:8786) whose workers process the tiles, "
            "one model per worker; the output folder must be on a file system they share. "
            "Empty = this process."
        )
        self.resume = CheckBox(value=True, text="resume")
        self.resume.tooltip = "Resume an interrupted run with the same parameters."
        self.overwrite = CheckBox(value=False, text="overwrite")
        self.overwrite.tooltip = "Overwrite an existing result (replaced once the new one is done)."
        self.on_rerun = ComboBox(choices=[REPLACE, ADD], value=REPLACE, label="earlier layers")
        self.run = RunControls("Process slide")
        self.result_view = ResultsView(napari_viewer, default_output_folder())
        self.results = FileEdit(mode="d", value="", label="earlier results")
        self.results.tooltip = "A <name>.biomedparse.zarr folder written by an earlier run."
        for edit in (self.output_folder, self.results):
            edit.choose_btn.text = "..."  # narrow: the dock must leave room for the canvas
        self.open_button = PushButton(text="Open results")
        super().__init__(
            scrollable=True,
            widgets=[
                self.image,
                self.modality,
                self.task,
                self.prompts,
                self.native_mpp,
                self.mpp,
                self.tile_size,
                self.overlap,
                self.tissue_mask,
                self.output_folder,
                self.scheduler,
                self.resume,
                self.overwrite,
                self.on_rerun,
                self.run,
                self.results,
                self.open_button,
                self.result_view,
            ],
        )
        persisted = {
            "modality": self.modality,
            "task": self.task,
            "prompts": self.prompts,
            "tissue_mask": self.tissue_mask,
            "output_folder": self.output_folder,
            "scheduler": self.scheduler,
            "resume": self.resume,
            "overwrite": self.overwrite,
            "on_rerun": self.on_rerun,
        }
        restore(persisted, self.settings_key)
        remember(persisted, self.settings_key)
        self.task.changed.connect(self._sync)
        self.native_mpp.changed.connect(self._sync)
        self.modality.changed.connect(self.show_defaults)
        self.run.run_button.changed.connect(self.start)
        self.open_button.changed.connect(self.open_results)
        # the defaults follow the current model (evented shared state, no polling)
        from .._model_state import MODEL

        self._on_model_changed = on_main_thread(lambda *_: self.show_defaults())
        MODEL.changed.connect(self._on_model_changed)
        self.native.destroyed.connect(lambda *_: MODEL.changed.disconnect(self._on_model_changed))
        self.show_defaults()
        self._fit_dock()

    def show_defaults(self, *_):
        """Fill pixel size, tile size and overlap with the current model's and modality's
        defaults (what the engine would use)."""
        d = slide_defaults(self.modality.value)
        self.native_mpp.value = d["mpp"] is None
        if d["mpp"] is not None:
            self.mpp.value = float(d["mpp"])
        self.tile_size.value = int(d["tile_size"])
        self.overlap.value = int(d["overlap"])
        self._sync()

    def _sync(self, *_):
        self.prompts.visible = self.task.value == PROMPTS
        self.mpp.enabled = not self.native_mpp.value

    def output_path(self, layer) -> Path:
        return Path(self.output_folder.value).expanduser() / f"{layer.name}.biomedparse.zarr"

    def start(self, *_):
        layer = self.image.value
        if layer is None:
            show_warning("Slide processing: open a slide first (File > Open, or Open Sample).")
            return None
        prompts = None
        if self.task.value == PROMPTS:
            prompts = split_prompts(self.prompts.value)
            if not prompts:
                show_warning(
                    "Slide processing: type at least one prompt, or choose 'recognize all'."
                )
                return None
        out = self.output_path(layer)
        if out.exists() and not self.overwrite.value:
            show_warning(
                f"Slide processing: {out} already exists. Tick 'overwrite' to recompute it, "
                "or open it with 'Open results'."
            )
            return None
        mpp = None if self.native_mpp.value else float(self.mpp.value)
        if self.native_mpp.value and slide_defaults(self.modality.value)["mpp"] is not None:
            mpp = F.as_image_input(layer).mpp  # this modality resamples unless told the size
            if not mpp:
                show_warning(
                    "Slide processing: the image has no pixel size to process it at; untick "
                    "'native pixel size' and give the pixel size."
                )
                return None
        policy = self.on_rerun.value
        self.results.value = str(out)
        return self.run.start(
            F.slide_layers,
            on_result=lambda r: self.result_view.show(add_result_layers(self.viewer, r, policy)),
            description="Slide processing",
            image=F.as_image_input(layer),
            out=str(out),
            prompts=prompts,
            recognize=prompts is None,
            modality=self.modality.value,
            mpp=mpp,
            tile_size=int(self.tile_size.value),
            overlap=int(self.overlap.value),
            tissue_mask=bool(self.tissue_mask.value),
            resume=bool(self.resume.value),
            overwrite=bool(self.overwrite.value),
            scheduler=self.scheduler.value.strip() or None,
        )

    def open_results(self, *_):
        path = Path(str(self.results.value)).expanduser()
        if not str(self.results.value) or not path.exists():
            show_error(
                f"Open results: no result store at '{path}'. Choose the <name>.biomedparse.zarr "
                "folder of an earlier run."
            )
            return None
        try:
            layers = F.open_result_layers(path)
        except Exception as exc:  # noqa: BLE001
            show_error(f"Open results: could not read {path}: {F.friendly_error(exc)}")
            return None
        added = add_result_layers(self.viewer, layers, self.on_rerun.value)
        self.result_view.show(added)
        return added
