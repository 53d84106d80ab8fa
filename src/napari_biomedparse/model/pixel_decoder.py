"""FPN pixel decoder with a transformer encoder on the coarsest level (TransformerEncoderPixelDecoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiheadAttention
from .config import BiomedParseConfig
from .position_encoding import sine_position_embedding

__all__ = ["PixelDecoder"]


class ConvNorm(nn.Conv2d):
    """detectron2-style ``Conv2d``: conv -> optional GroupNorm (``.norm``) -> optional ReLU."""

    def __init__(self, cin, cout, kernel, *, norm_groups=None, relu=False, bias=None):
        if bias is None:
            bias = norm_groups is None
        super().__init__(cin, cout, kernel, stride=1, padding=kernel // 2, bias=bias)
        self.norm = nn.GroupNorm(norm_groups, cout) if norm_groups else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer on (B, L, C): self-attention (pos added to q and k) then ReLU FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.self_attn(qk, qk, src))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class _Encoder(nn.Module):
    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(cfg.convs_dim, cfg.nheads, cfg.dim_feedforward)
            for _ in range(cfg.encoder_layers)
        )


class _Transformer(nn.Module):
    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) with the sine position embedding of the map."""
        b, c, h, w = x.shape
        pos = sine_position_embedding(b, h, w, c // 2, device=x.device, dtype=x.dtype)
        src = x.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        for layer in self.encoder.layers:
            src = layer(src, pos)
        return src.transpose(1, 2).reshape(b, c, h, w)


class PixelDecoder(nn.Module):
    """Top-down FPN over res5..res2.

    Input: backbone dict ``res2..res5`` (B, C_i, H/4..H/32). Output dict:
    ``mask_features`` (B, mask_dim, H/4, W/4), ``multi_scale_features`` list of 3 maps
    (B, convs_dim, .) at strides 32, 16, 8 (this order), and ``transformer_encoder_features``
    (B, convs_dim, H/32, W/32).
    """

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        c = cfg.convs_dim
        g = cfg.norm_groups
        in_ch = [cfg.embed_dim * 2**i for i in range(4)]
        for idx in range(3):  # res2, res3, res4 -> adapter_1..3, layer_1..3
            self.add_module(f"adapter_{idx + 1}", ConvNorm(in_ch[idx], c, 1, norm_groups=g))
            self.add_module(f"layer_{idx + 1}", ConvNorm(c, c, 3, norm_groups=g, relu=True))
        self.mask_features = ConvNorm(c, cfg.mask_dim, 3)
        self.input_proj = nn.Conv2d(in_ch[3], c, kernel_size=1)
        self.transformer = _Transformer(cfg)
        self.layer_4 = ConvNorm(c, c, 3, norm_groups=g, relu=True)
        self.num_levels = cfg.num_feature_levels

    def forward(self, feats: dict[str, torch.Tensor]) -> dict:
        enc = self.transformer(self.input_proj(feats["res5"]))
        y = self.layer_4(enc)
        multi_scale = [y]
        for idx, name in ((3, "res4"), (2, "res3"), (1, "res2")):
            lat = getattr(self, f"adapter_{idx}")(feats[name])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx}")(y)
            if len(multi_scale) < self.num_levels:
                multi_scale.append(y)
        return {
            "mask_features": self.mask_features(y),
            "multi_scale_features": multi_scale,
            "transformer_encoder_features": enc,
        }
