"""Recognize-all widget: every target of a modality -> instances, classes, outlines."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label
from napari.utils.notifications import show_warning

from napari_biomedparse.inference.modalities import MODALITIES

from .. import _functions as F
from .._runner import RunControls
from .._settings import remember, restore
from ._common import (
    ADD,
    CURRENT_VIEW,
    REPLACE,
    WHOLE_IMAGE,
    ModalitySiteForm,
    default_output_folder,
    is_large,
    layer_choice,
    vocabulary,
    wrap_text,
)
from .results import ResultsView


class RecognizeWidget(ModalitySiteForm, Container):
    """Recognise every object of every target of the chosen modality."""

    settings_key = "recognize"

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.image = layer_choice(napari_viewer, label="image")
        self.modality = ComboBox(choices=list(MODALITIES), value="Pathology", label="modality")
        self.site = ComboBox(choices=self._site_choices, label="site", visible=False)
        self.targets = Label(value="", label="targets")
        wrap_text(self.targets)  # the whole text, on several lines
        self.p_threshold = FloatSpinBox(
            value=0.05, min=0.0001, max=1.0, step=0.01, label="max p-value"
        )
        self.p_threshold.tooltip = (
            "p-value threshold of the existence test: a target with a larger p-value is "
            "taken as absent from the image."
        )
        self.scope = ComboBox(
            choices=[CURRENT_VIEW, WHOLE_IMAGE], value=CURRENT_VIEW, label="run on", visible=False
        )
        self.shapes = ComboBox(
            choices=["boxes", "outlines", "none"], value="outlines", label="shapes"
        )
        self.shapes.tooltip = "Shapes layer of the objects, with the class as text."
        self.on_rerun = ComboBox(choices=[REPLACE, ADD], value=REPLACE, label="earlier results")
        self.run = RunControls("Recognize all")
        self.results = ResultsView(napari_viewer, default_output_folder())
        super().__init__(
            scrollable=True,
            widgets=[
                self.image,
                self.modality,
                self.site,
                self.targets,
                self.p_threshold,
                self.shapes,
                self.scope,
                self.on_rerun,
                self.run,
                self.results,
            ],
        )
        persisted = {
            "modality": self.modality,
            "p_threshold": self.p_threshold,
            "scope": self.scope,
            "shapes": self.shapes,
            "on_rerun": self.on_rerun,
        }
        restore(persisted, self.settings_key)
        self._modality_changed()
        remember({**persisted, "site": self.site}, self.settings_key)
        self.modality.changed.connect(self._modality_changed)
        self.site.changed.connect(self._site_changed)
        self.image.changed.connect(self._sync)
        self.run.run_button.changed.connect(self.start)
        self._watch_model()
        self._sync()
        self._fit_dock()

    def _site_changed(self, *_):
        voc = vocabulary(self.modality.value, self.site.value or None)
        self.targets.value = (
            ", ".join(voc) if voc else "(none known: choose a site or a model with a vocabulary)"
        )

    def _sync(self, *_):
        self.scope.visible = is_large(self.image.value)

    def start(self, *_):
        layer = self.image.value
        if layer is None:
            show_warning("Recognize all: open an image first (File > Open, or File > Open Sample).")
            return None
        return self._launch(
            "Recognize all",
            layer,
            F.recognize_layer,
            {"recognize": True},
            p_threshold=float(self.p_threshold.value),
            shapes=self.shapes.value,
        )
