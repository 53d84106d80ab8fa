"""FocalNet backbone (D2FocalNet of BiomedParse v1: conv embedding, post-LN, layer scale)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BiomedParseConfig

__all__ = ["FocalNet"]


class Mlp(nn.Module):
    """``fc1 -> GELU (erf) -> fc2`` on (..., C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalModulation(nn.Module):
    """Focal modulation on channels-last maps (B, H, W, C) -> (B, H, W, C).

    ``f`` projects to [q (C), ctx (C), gates (L + 1)]; L depthwise convolutions (kernel
    ``2 * l + focal_window``) are applied one after the other on ctx, each gated and summed,
    plus a global (mean-pooled) context; ``h`` (1x1 conv) turns the sum into the modulator.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        scaling_modulator: bool = True,
        use_postln_in_modulation: bool = False,
    ) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.scaling_modulator = scaling_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1, bias=True)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel = 2 * k + focal_window
            self.focal_layers.append(
                nn.Sequential(
                    nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2, bias=False),
                    nn.GELU(),
                )
            )
        self.use_postln_in_modulation = use_postln_in_modulation
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2)
        q, ctx, gates = torch.split(x, (c, c, self.focal_level + 1), 1)
        ctx_all = 0
        for level in range(self.focal_level):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.scaling_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        x_out = q * self.h(ctx_all)
        x_out = x_out.permute(0, 2, 3, 1)
        if self.use_postln_in_modulation:
            x_out = self.ln(x_out)
        return self.proj(x_out)


class FocalNetBlock(nn.Module):
    """One FocalNet block on tokens (B, H*W, C); post-LN and layer scale as in BiomedParse."""

    def __init__(self, dim: int, cfg: BiomedParseConfig, focal_level: int, focal_window: int):
        super().__init__()
        self.use_postln = cfg.use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim,
            focal_level,
            focal_window,
            scaling_modulator=cfg.scaling_modulator,
            use_postln_in_modulation=cfg.use_postln_in_modulation,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        if cfg.use_layerscale:
            self.gamma_1 = nn.Parameter(cfg.layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(cfg.layerscale_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        shortcut = x
        if not self.use_postln:
            x = self.norm1(x)
        x = self.modulation(x.view(b, h, w, c)).reshape(b, h * w, c)
        if self.use_postln:
            x = self.norm1(x)
        x = shortcut + (x if self.gamma_1 is None else self.gamma_1 * x)
        y = self.norm2(self.mlp(x)) if self.use_postln else self.mlp(self.norm2(x))
        return x + (y if self.gamma_2 is None else self.gamma_2 * y)


class PatchEmbed(nn.Module):
    """Stem or downsampling: (B, Cin, H, W) -> (B, Cout, H', W') with a channel LayerNorm.

    The input is zero-padded right/bottom to a multiple of ``patch_size`` first. With the conv
    embedding the stem is Conv2d(k=7, stride 4, padding 2) and a downsampling is Conv2d(k=3,
    stride 2, padding 1); otherwise a Conv2d with kernel = stride = patch_size.
    """

    def __init__(self, patch_size: int, cin: int, cout: int, use_conv_embed: bool, is_stem: bool):
        super().__init__()
        self.patch_size = patch_size
        if use_conv_embed:
            k, s, p = (7, 4, 2) if is_stem else (3, 2, 1)
            self.proj = nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)
        else:
            self.proj = nn.Conv2d(cin, cout, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.patch_size, (-w) % self.patch_size
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FocalStage(nn.Module):
    def __init__(self, dim: int, depth: int, cfg: BiomedParseConfig, stage: int, last: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalNetBlock(dim, cfg, cfg.focal_levels[stage], cfg.focal_windows[stage])
            for _ in range(depth)
        )
        self.downsample = (
            None if last else PatchEmbed(2, dim, 2 * dim, cfg.use_conv_embed, is_stem=False)
        )


class FocalNet(nn.Module):
    """FocalNet with 4 stages.

    Input: (B, 3, H, W) normalised image. Output: dict ``res2..res5`` of (B, C_i, H_i, W_i),
    C_i = embed_dim * 2**i, strides 4, 8, 16, 32 (each stage's output after ``norm{i}``,
    before downsampling).
    """

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, c, cfg.use_conv_embed, is_stem=True)
        n = len(cfg.depths)
        self.num_features = [c * 2**i for i in range(n)]
        self.layers = nn.ModuleList(
            FocalStage(self.num_features[i], cfg.depths[i], cfg, i, last=i == n - 1)
            for i in range(n)
        )
        for i in range(n):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        outs = {}
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                x = blk(x, h, w)
            out = getattr(self, f"norm{i}")(x)
            outs[f"res{i + 2}"] = out.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                x = stage.downsample(x.transpose(1, 2).reshape(b, -1, h, w))
                h, w = x.shape[-2:]
                x = x.flatten(2).transpose(1, 2)
        return outs
