"""Slide-processing widget: the slide engine's parameters, and opening earlier results."""

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

from .. import _functions as F
from .._runner import RunControls
from .._settings import remember, restore
from ._common import (
    ADD,
    REPLACE,
    ImageLayerChoice,
    add_result_layers,
    default_output_folder,
)

RECOGNIZE = "recognize all"
PROMPTS = "prompts"


class SlideWidget(Container):
    """Run the tiled slide engine on a whole image and show its results lazily."""

    settings_key = "slide"

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.image = ImageLayerChoice(napari_viewer, label="image")
        self.modality = ComboBox(choices=list(MODALITIES), value="Pathology", label="modality")
        self.task = ComboBox(choices=[RECOGNIZE, PROMPTS], value=RECOGNIZE, label="task")
        self.prompts = LineEdit(value="", label="prompts", visible=False)
        self.mpp = FloatSpinBox(value=0.0, min=0.0, max=100.0, step=0.05, label="pixel size (um)")
        self.mpp.tooltip = (
            "Microns per pixel to process at; 0 = the model's preset for the modality."
        )
        self.tile_size = SpinBox(value=0, min=0, max=8192, step=64, label="tile (px)")
        self.tile_size.tooltip = "Tile edge at the processing pixel size; 0 = the model input size."
        self.overlap = SpinBox(value=-1, min=-1, max=4096, step=16, label="overlap (px)")
        self.overlap.tooltip = "Overlap between tiles; -1 = the engine's default."
        self.tissue_mask = CheckBox(value=True, text="skip background (tissue mask)")
        self.output_folder = FileEdit(
            mode="d", value=default_output_folder(), label="output folder"
        )
        self.scheduler = LineEdit(value="", label="dask scheduler")
        self.scheduler.tooltip = (
            "Address of a dask scheduler (tcp://host:8786) whose workers process the tiles, "
            "one model per worker; the output folder must be on a file system they share. "
            "Empty = this process."
        )
        self.resume = CheckBox(value=True, text="resume an interrupted run")
        self.overwrite = CheckBox(value=False, text="overwrite an existing result")
        self.on_rerun = ComboBox(choices=[REPLACE, ADD], value=REPLACE, label="earlier layers")
        self.run = RunControls("Process slide")
        self.results = FileEdit(mode="d", value="", label="earlier results")
        self.results.tooltip = "A <name>.biomedparse.zarr folder written by an earlier run."
        self.open_button = PushButton(text="Open results")
        super().__init__(
            widgets=[
                self.image,
                self.modality,
                self.task,
                self.prompts,
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
            ]
        )
        persisted = {
            "modality": self.modality,
            "task": self.task,
            "prompts": self.prompts,
            "mpp": self.mpp,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "tissue_mask": self.tissue_mask,
            "output_folder": self.output_folder,
            "scheduler": self.scheduler,
            "resume": self.resume,
            "overwrite": self.overwrite,
            "on_rerun": self.on_rerun,
        }
        self.max_width = 440  # long paths must not squeeze the canvas
        restore(persisted, self.settings_key)
        remember(persisted, self.settings_key)
        self.task.changed.connect(self._sync)
        self.run.run_button.changed.connect(self.start)
        self.open_button.changed.connect(self.open_results)
        self._sync()

    def _sync(self, *_):
        self.prompts.visible = self.task.value == PROMPTS

    def output_path(self, layer) -> Path:
        return Path(self.output_folder.value).expanduser() / f"{layer.name}.biomedparse.zarr"

    def start(self, *_):
        layer = self.image.layer
        if layer is None:
            show_warning("Slide processing: open a slide first (File > Open, or Open Sample).")
            return None
        prompts = None
        if self.task.value == PROMPTS:
            prompts = [p.strip() for p in self.prompts.value.split(",") if p.strip()]
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
        policy = self.on_rerun.value
        self.results.value = str(out)
        return self.run.start(
            F.slide_layers,
            on_result=lambda r: add_result_layers(self.viewer, r, policy),
            description="Slide processing",
            image=F.as_image_input(layer),
            out=str(out),
            prompts=prompts,
            recognize=prompts is None,
            modality=self.modality.value,
            mpp=float(self.mpp.value) or None,
            tile_size=int(self.tile_size.value) or None,
            overlap=None if int(self.overlap.value) < 0 else int(self.overlap.value),
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
        return add_result_layers(self.viewer, layers, self.on_rerun.value)
