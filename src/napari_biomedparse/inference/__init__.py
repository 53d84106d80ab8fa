"""Inference layer: preprocessing presets, the Predictor, existence test, recognition, instances.

Public names are imported lazily (``import napari_biomedparse.inference`` stays cheap):

- tasks: :func:`segment`, :func:`detect`, :func:`recognize` (take a predictor first);
- :class:`Predictor` (``predictor.py``);
- modalities: ``MODALITIES``, ``ImageType``, :func:`normalize_modality`, :func:`targets_for`;
- preprocessing: :func:`preprocess`, :func:`unpad`, ``PadInfo``, :func:`to_rgb_uint8`;
- existence: ``TargetDistribution``, :func:`existence_p_value`, :func:`mask_stats`;
- recognition: :func:`recognize_maps`, :func:`non_maxima_suppression`, :func:`combine_masks`;
- instances: :func:`split_instances`, :func:`instance_table`, :func:`instance_outlines`;
- results: ``Detection``, ``Recognition``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "segment": "tasks",
    "detect": "tasks",
    "recognize": "tasks",
    "instances_from_class_map": "tasks",
    "Predictor": "predictor",
    "MODALITIES": "modalities",
    "BIOMED_OBJECTS": "modalities",
    "CT_WINDOWS": "modalities",
    "SITES": "modalities",
    "ImageType": "modalities",
    "normalize_modality": "modalities",
    "targets_for": "modalities",
    "is_in_vocabulary": "modalities",
    "PadInfo": "preprocessing",
    "preprocess": "preprocessing",
    "unpad": "preprocessing",
    "to_rgb_uint8": "preprocessing",
    "TargetDistribution": "existence",
    "DEFAULT_P_THRESHOLD": "existence",
    "existence_p_value": "existence",
    "existence_p_values": "existence",
    "mask_stats": "existence",
    "recognize_maps": "recognition",
    "non_maxima_suppression": "recognition",
    "combine_masks": "recognition",
    "split_instances": "instances",
    "instance_table": "instances",
    "instance_outlines": "instances",
    "Detection": "results",
    "Recognition": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
