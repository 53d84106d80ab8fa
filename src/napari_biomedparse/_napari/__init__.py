"""The napari plugin: widgets, reader, writer and sample data (the only sub-package that
imports napari, Qt and magicgui).

The widgets' work is available without a viewer (this module imports neither napari nor Qt):
``segment_layer``, ``recognize_layer``, ``slide_layers`` and ``open_result_layers`` return
napari layer data tuples ``(data, kwargs, layer_type)`` (``add_layers(viewer, tuples)`` adds
them as the widgets do); ``sample_path`` locates the bundled
sample images; ``MODEL`` is the model the widgets use (``MODEL.use(model)`` sets it).
"""

from ._functions import (
    Cancelled,
    add_layers,
    open_result_layers,
    recognize_layer,
    segment_layer,
    slide_layers,
)
from ._model_state import MODEL
from ._sample_data import sample_path

__all__ = [
    "MODEL",
    "Cancelled",
    "add_layers",
    "open_result_layers",
    "recognize_layer",
    "sample_path",
    "segment_layer",
    "slide_layers",
]
