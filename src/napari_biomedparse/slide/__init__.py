"""Whole-slide engine: lazy readers, tissue mask, tiling, blending, block-wise instances,
resumable zarr store, exports (QuPath GeoJSON, CSV, Parquet) and the ``slide`` command.

Importing this package is cheap; the engine (torch) is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "open_image": "napari_biomedparse.slide.readers",
    "SlideImage": "napari_biomedparse.slide.readers",
    "SlideReadError": "napari_biomedparse.slide.readers",
    "process_slide": "napari_biomedparse.slide.engine",
    "process_slides": "napari_biomedparse.slide.engine",
    "SlideResult": "napari_biomedparse.slide.result",
    "compute_tissue_mask": "napari_biomedparse.slide.tissue",
    "TileGrid": "napari_biomedparse.slide.tiling",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_biomedparse.slide' has no attribute {name!r}")
