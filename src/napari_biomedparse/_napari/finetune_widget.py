"""Fine-tune widget: an Image layer + a Labels layer + the prompt of each label value.

The widget only collects the inputs; the work is :func:`napari_biomedparse.training.finetune`
(the same function as scripts and ``napari-biomedparse finetune``), run in a napari thread
worker with a progress bar and a Cancel button (:class:`~._runner.RunControls`). A cancelled
run writes nothing. Optionally the bottom-right quarter of the image is held out: it is never
trained on and the Dice per prompt is measured on it. The fine-tuned model is saved as
safetensors (a drop-in for ``load_model(path)``) and can become the plugin's current model.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
)
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info

from ._runner import RunControls
from ._widgets._common import ScrollableForm, layer_choice, wrap_text

START_CURRENT = "current model"
START_DEFAULT = "default model"
START_CHOICES = (START_CURRENT, START_DEFAULT)
MODALITY_CHOICES = ("pathology", "fluorescence", "brightfield")


def _tile_size(shape: tuple[int, int], input_size: int, holdout: bool) -> int:
    """Largest multiple of 32 (<= the model input, >= 64) that fits the trainable area."""
    h, w = shape
    if holdout:  # the trainable area is the image minus its bottom-right quarter
        fit = max(min(h // 2, w), min(h, w // 2))
    else:
        fit = min(h, w)
    return int(max(64, min(input_size, fit // 32 * 32)))


def run_finetune(
    *,
    image: np.ndarray,
    labels: np.ndarray,
    prompts: str,
    modality: str = "pathology",
    start: str = START_DEFAULT,
    steps: int = 200,
    batch_size: int = 4,
    lr: float = 1e-4,
    freeze: tuple[str, ...] = ("backbone", "text_encoder"),
    holdout: bool = True,
    out: str | Path | None = None,
    device: str = "auto",
    progress=None,
    cancel=None,
):
    """The widget's job (worker thread): build the training data and call ``finetune``.

    Args:
        image: (H, W) or (H, W, 3) array (an Image layer's data).
        labels: (H, W) int array (a Labels layer's data), values keyed in ``prompts``.
        prompts: "1: connective tissue cells, 2: inflammatory cells" (or one prompt for
            instance labels).

    Returns:
        :class:`~napari_biomedparse.training.finetune.FinetuneResult`.
    """
    from napari_biomedparse.training.data import from_arrays, split_holdout
    from napari_biomedparse.training.finetune import finetune

    sample = from_arrays(image, labels, prompts, modality=modality, name="layers")
    val = None
    train = [sample]
    if holdout:
        tr, va = split_holdout(sample)
        train, val = [tr], [va]
    if start == START_CURRENT:
        from ._model_state import MODEL

        model = MODEL.predictor(progress=progress).model
    else:
        model = "default"
    from napari_biomedparse.training.finetune import resolve_model

    model = resolve_model(model)
    tile = _tile_size(sample.shape, model.config.input_size, holdout)
    return finetune(
        model,
        train,
        val,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=min(50, max(steps // 10, 1)),
        freeze=list(freeze) or None,
        tile_size=tile,
        device=device,
        out=out,
        overwrite=True,  # the path was chosen in a save dialog
        name=f"napari-biomedparse-finetuned ({Path(out).stem if out else 'unsaved'})",
        existence_tiles=16,
        progress=progress,
        cancel=cancel,
        save_on_cancel=False,
        copy_model=True,  # the current model stays as it is
        log_every=max(1, min(10, steps // 20)),
    )


class FinetuneWidget(ScrollableForm, Container):
    """Fine-tune the model on an Image layer annotated by a Labels layer."""

    def __init__(self, napari_viewer=None):
        self.viewer = napari_viewer
        self.image = layer_choice(napari_viewer, label="image")
        self.labels_layer = layer_choice(napari_viewer, Labels, label="labels")
        self.prompts = LineEdit(value="1: nuclei", label="label: prompt")
        self.prompts.tooltip = (
            "The prompt of each label value, e.g. '1: connective tissue cells, "
            "2: inflammatory cells, 3: neoplastic cells'. One prompt without a value "
            "(e.g. 'nuclei') treats every labelled object as that prompt."
        )
        self.modality = ComboBox(choices=MODALITY_CHOICES, value="pathology", label="modality")
        self.start_from = ComboBox(choices=START_CHOICES, value=START_DEFAULT, label="start from")
        self.steps = SpinBox(value=200, min=1, max=100_000, label="steps")
        self.batch_size = SpinBox(value=4, min=1, max=256, label="batch size")
        self.lr = FloatSpinBox(value=1e-4, min=1e-6, max=1e-1, step=1e-5, label="learning rate")
        if hasattr(self.lr.native, "setDecimals"):
            self.lr.native.setDecimals(6)
        self.freeze_backbone = CheckBox(value=True, text="freeze image backbone")
        self.freeze_pixel_decoder = CheckBox(value=False, text="freeze pixel decoder")
        self.freeze_text = CheckBox(value=True, text="freeze text encoder")
        self.holdout = CheckBox(value=True, text="hold out a quarter")
        self.holdout.tooltip = "Hold out the bottom-right quarter of the image for validation."
        default_out = Path(tempfile.gettempdir()) / "napari-biomedparse" / "finetuned.safetensors"
        self.output = FileEdit(mode="w", value=default_out, filter="*.safetensors", label="save to")
        self.device = ComboBox(choices=("auto", "cpu", "cuda", "mps"), value="auto", label="device")
        self.use_after = CheckBox(value=True, text="use it afterwards")
        self.use_after.tooltip = "Make the fine-tuned model the current one when it is done."
        self.result = wrap_text(Label(value=""))
        self.run = RunControls("Fine-tune")
        super().__init__(
            scrollable=True,
            widgets=[
                self.image,
                self.labels_layer,
                self.prompts,
                self.modality,
                self.start_from,
                self.steps,
                self.batch_size,
                self.lr,
                self.freeze_backbone,
                self.freeze_pixel_decoder,
                self.freeze_text,
                self.holdout,
                self.output,
                self.device,
                self.use_after,
                self.run,
                self.result,
            ],
        )
        self.last_result = None
        self.run.run_button.changed.connect(self.start)
        self._fit_dock()

    # -- inputs
    def _freeze(self) -> tuple[str, ...]:
        out = []
        if self.freeze_backbone.value:
            out.append("backbone")
        if self.freeze_pixel_decoder.value:
            out.append("pixel_decoder")
        if self.freeze_text.value:
            out.append("text_encoder")
        return tuple(out)

    def _inputs(self) -> dict:
        """Check the layers and prompts in the GUI thread; raise ValueError with a hint."""
        from napari_biomedparse.training.data import parse_prompt_mapping

        img_layer = self.image.value
        if img_layer is None:
            raise ValueError("choose an Image layer to train on")
        lab_layer = self.labels_layer.value
        if lab_layer is None:
            raise ValueError("choose a Labels layer with your annotations (add one and paint)")
        if img_layer.multiscale:
            raise ValueError(
                "the image is multiscale (a slide): fine-tune on a single-resolution crop "
                "(e.g. copy a region into a new Image layer) annotated at the same size"
            )
        if lab_layer.multiscale:
            raise ValueError("the Labels layer is multiscale; annotate a single-resolution layer")
        image = np.asarray(img_layer.data)
        labels = np.asarray(lab_layer.data)
        if labels.ndim != 2 or image.ndim not in (2, 3) or (image.ndim == 3 and not img_layer.rgb):
            raise ValueError(
                f"fine-tuning needs a 2-D image (grey or RGB) and 2-D labels; got image "
                f"{image.shape} and labels {labels.shape}"
            )
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"the Labels layer ({labels.shape}) must have the image's size "
                f"({image.shape[:2]}): annotate on a Labels layer made for this image"
            )
        if not labels.any():
            raise ValueError("the Labels layer is empty: paint some objects first")
        text = self.prompts.value.strip()
        if not text:
            raise ValueError("give the prompt of each label value, e.g. '1: nuclei'")
        if re.search(r"\d+\s*[:=]", text):
            mapping = parse_prompt_mapping(text)
            values = {int(v) for v in np.unique(labels)} - {0}
            missing = sorted(values - set(mapping))
            if missing:
                raise ValueError(
                    f"label values {missing} have no prompt; add e.g. '{missing[0]}: <prompt>', "
                    "or give one prompt without a value (e.g. 'nuclei') for instance labels"
                )
        out = Path(str(self.output.value)).expanduser()
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        return dict(
            image=image,
            labels=labels,
            prompts=text,
            modality=self.modality.value,
            start=self.start_from.value,
            steps=int(self.steps.value),
            batch_size=int(self.batch_size.value),
            lr=float(self.lr.value),
            freeze=self._freeze(),
            holdout=bool(self.holdout.value),
            out=out,
            device=self.device.value,
        )

    # -- run
    def start(self, *_):
        try:
            kwargs = self._inputs()
        except ValueError as exc:
            show_error(f"Fine-tune: {exc}")
            return None
        self.result.value = ""
        return self.run.start(
            run_finetune, on_result=self._on_result, description="Fine-tune", **kwargs
        )

    def _on_result(self, res) -> None:
        self.last_result = res
        parts = [f"{res.steps} steps in {res.seconds:.0f} s"]
        if res.val_dice:
            parts.append(
                "held-out Dice: " + ", ".join(f"{k} {v:.2f}" for k, v in res.val_dice.items())
            )
        if res.path is not None:
            parts.append(f"saved {res.path}")
        self.result.value = "\n".join(parts)
        if self.use_after.value:
            from ._model_state import MODEL

            MODEL.use(res.model, name=str(res.path or "fine-tuned"), device=self.device.value)
            parts.append("now the current model")
        show_info("Fine-tune finished: " + "; ".join(parts))
