"""The napari plugin: widgets, reader, writer and sample data (the only sub-package that
imports napari, Qt and magicgui).

Script use without a viewer: :mod:`napari_biomedparse._napari._functions`
(``segment_layer``, ``recognize_layer``, ``slide_layers``, ``open_result_layers``) return
napari layer data tuples.
"""
