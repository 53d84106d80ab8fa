"""Segment widget: text prompts -> probabilities, masks or instances with boxes."""

from __future__ import annotations

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    LineEdit,
    PushButton,
)
from napari.utils.notifications import show_warning

from napari_biomedparse.inference.modalities import MODALITIES
from napari_biomedparse.inference.prompts import split_prompts

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
)
from .results import ResultsView

OUTPUT_CHOICES = [
    ("instances with boxes", "instances"),
    ("masks", "masks"),
    ("probabilities", "probabilities"),
]


class SegmentWidget(ModalitySiteForm, Container):
    """Segment an image layer with one or more text prompts."""

    settings_key = "segment"

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.image = layer_choice(napari_viewer, label="image")
        self.modality = ComboBox(choices=list(MODALITIES), value="Pathology", label="modality")
        self.site = ComboBox(choices=self._site_choices, label="site", visible=False)
        self.vocabulary = ComboBox(choices=self._vocab_choices, label="targets")
        self.add_prompt = PushButton(text="add target to prompts")
        self.prompts = LineEdit(value="", label="prompts")
        self.prompts.tooltip = "Comma-separated prompts; any free text is allowed."
        self.threshold = FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, label="threshold")
        self.existence_test = CheckBox(value=True, text="existence test")
        self.p_threshold = FloatSpinBox(
            value=0.05, min=0.0001, max=1.0, step=0.01, label="max p-value"
        )
        self.p_threshold.tooltip = (
            "p-value threshold of the existence test: a target with a larger p-value is "
            "taken as absent from the image."
        )
        self.output = ComboBox(choices=OUTPUT_CHOICES, value="instances", label="output")
        self.scope = ComboBox(
            choices=[CURRENT_VIEW, WHOLE_IMAGE], value=CURRENT_VIEW, label="run on", visible=False
        )
        self.shapes = ComboBox(choices=["boxes", "outlines", "none"], value="boxes", label="shapes")
        self.shapes.tooltip = "Shapes layer of the objects, with the class as text."
        self.on_rerun = ComboBox(choices=[REPLACE, ADD], value=REPLACE, label="earlier results")
        self.run = RunControls("Segment")
        self.results = ResultsView(napari_viewer, default_output_folder())
        super().__init__(
            scrollable=True,
            widgets=[
                self.image,
                self.modality,
                self.site,
                self.vocabulary,
                self.add_prompt,
                self.prompts,
                self.threshold,
                self.existence_test,
                self.p_threshold,
                self.output,
                self.shapes,
                self.scope,
                self.on_rerun,
                self.run,
                self.results,
            ],
        )
        self._persisted = {
            "modality": self.modality,
            "prompts": self.prompts,
            "threshold": self.threshold,
            "existence_test": self.existence_test,
            "p_threshold": self.p_threshold,
            "output": self.output,
            "scope": self.scope,
            "shapes": self.shapes,
            "on_rerun": self.on_rerun,
        }
        restore({"modality": self.modality}, self.settings_key)
        self._modality_changed()
        restore(self._persisted, self.settings_key)
        remember({**self._persisted, "site": self.site}, self.settings_key)
        self.modality.changed.connect(self._modality_changed)
        self.site.changed.connect(self._site_changed)
        self.add_prompt.changed.connect(self._add_target)
        self.existence_test.changed.connect(self._sync)
        self.image.changed.connect(self._sync)
        self.run.run_button.changed.connect(self.start)
        self._watch_model()
        self._sync()
        self._fit_dock()

    # -- form logic
    def _vocab_choices(self, *_):
        return vocabulary(self.modality.value, self.site.value or None) or [""]

    def _site_changed(self, *_):
        self.vocabulary.reset_choices()
        voc = self._vocab_choices() != [""]
        self.vocabulary.enabled = bool(voc)
        self.add_prompt.enabled = bool(voc)

    def _add_target(self, *_):
        target = self.vocabulary.value
        if not target:
            return
        current = split_prompts(self.prompts.value)
        if target not in current:
            current.append(target)
        self.prompts.value = ", ".join(current)

    def _sync(self, *_):
        self.p_threshold.enabled = bool(self.existence_test.value)
        self.scope.visible = is_large(self.image.value)

    @property
    def prompt_list(self) -> list[str]:
        return split_prompts(self.prompts.value)

    # -- running
    def start(self, *_):
        layer = self.image.value
        if layer is None:
            show_warning("Segment: open an image first (File > Open, or File > Open Sample).")
            return None
        prompts = self.prompt_list
        if not prompts:
            show_warning("Segment: type at least one prompt, e.g. 'neoplastic cells'.")
            return None
        return self._launch(
            "Segment",
            layer,
            F.segment_layer,
            {"prompts": prompts, "recognize": self.output.value != "probabilities"},
            prompts=prompts,
            threshold=float(self.threshold.value),
            existence_test=bool(self.existence_test.value),
            p_threshold=float(self.p_threshold.value),
            output=self.output.value,
            shapes=self.shapes.value,
        )
