"""Model construction."""

from __future__ import annotations

import torch

from .biomedparse import BiomedParse
from .config import BiomedParseConfig

__all__ = ["build_model"]


def build_model(
    cfg: BiomedParseConfig | None = None, device: torch.device | str | None = None
) -> BiomedParse:
    """Build a randomly initialised :class:`BiomedParse` in eval mode.

    ``device="meta"`` builds it without allocating weights (load them with
    :func:`~napari_biomedparse.model.checkpoint.load_checkpoint`, which assigns the tensors).
    """
    cfg = cfg or BiomedParseConfig.biomedparse_v1()
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = BiomedParse(cfg)
    else:
        model = BiomedParse(cfg)
        if device is not None:
            model = model.to(device)
    return model.eval()
