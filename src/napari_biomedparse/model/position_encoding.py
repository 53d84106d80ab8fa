"""Sine position embedding (DETR / Mask2Former ``PositionEmbeddingSine``, normalised)."""

from __future__ import annotations

import math

import torch

__all__ = ["sine_position_embedding"]


def sine_position_embedding(
    batch: int,
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised 2-D sine embedding of an all-valid (height, width) map.

    Returns (batch, 2 * num_pos_feats, height, width): channels [y features, x features]; per
    axis the features interleave sin (even index) and cos (odd index) of
    ``coord / temperature ** (2 * (i // 2) / num_pos_feats)``, where ``coord`` is the cumulative
    position 1..n divided by (n + 1e-6) and scaled by 2 pi. Computed in float32 (as the official
    code) and cast to ``dtype``.
    """
    scale = 2 * math.pi
    eps = 1e-6
    ones = torch.ones((1, height, width), dtype=torch.float32, device=device)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    return pos.to(dtype).expand(batch, -1, -1, -1)
