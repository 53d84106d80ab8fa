"""napari-biomedparse: BiomedParse for napari, scripts and whole-slide images.

The public scripted API (see ``docs/scripting.md``)::

    import napari_biomedparse as nbp

    model = nbp.load_model("default")
    pred = nbp.Predictor(model, device="auto")
    probs = pred.segment(image, ["neoplastic cells"], modality="pathology")
    rec = pred.recognize(image, modality="pathology")
    res = nbp.process_slide("slide.svs", out="slide.biomedparse.zarr")

Names are imported lazily so that ``import napari_biomedparse`` stays cheap (no torch, no
napari) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "napari_biomedparse.hub",
    "Predictor": "napari_biomedparse.inference.predictor",
    "open_image": "napari_biomedparse.slide.readers",
    "process_slide": "napari_biomedparse.slide.engine",
    "process_slides": "napari_biomedparse.slide.engine",
    "SlideResult": "napari_biomedparse.slide.engine",
    "finetune": "napari_biomedparse.training.finetune",
}

__all__ = [
    "__version__",
    "load_model",
    "Predictor",
    "open_image",
    "process_slide",
    "process_slides",
    "SlideResult",
    "finetune",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_biomedparse.hub import load_model
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.slide.engine import SlideResult, process_slide, process_slides
    from napari_biomedparse.slide.readers import open_image
    from napari_biomedparse.training.finetune import finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_biomedparse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
