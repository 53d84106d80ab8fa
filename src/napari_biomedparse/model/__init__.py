"""BiomedParse v1 in plain PyTorch (imports torch only; safetensors for checkpoint files).

>>> from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint
>>> model = build_model(BiomedParseConfig.from_reference_json("tests/data/v1_tiny/config.json"))
>>> load_checkpoint(model, "tests/data/v1_tiny/state_dict.pt")  # doctest: +SKIP
"""

from .biomedparse import BiomedParse
from .build import build_model
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from .config import BiomedParseConfig
from .tokenizer import ClipTokenizer

__all__ = [
    "BiomedParse",
    "BiomedParseConfig",
    "CheckpointError",
    "ClipTokenizer",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
