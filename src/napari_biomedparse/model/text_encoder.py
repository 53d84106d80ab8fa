"""CLIP-style causal text transformer with projection and logit scale (BiomedParse ``vlpencoder``)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .attention import MultiheadAttention
from .config import BiomedParseConfig

__all__ = ["LanguageEncoder", "TextTransformer", "PROMPT_TEMPLATES", "DEFAULT_TEXT_CLASSES"]

#: The 81 templates of ``utilities/prompt_engineering.py::get_prompt_templates`` (official code).
PROMPT_TEMPLATES = (
    "{}.", "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.",
    "a sculpture of a {}.", "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.",
    "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

#: BIOMED_CLASSES + "background" (``default_text_embeddings`` rows, used by ``pred_logits``).
DEFAULT_TEXT_CLASSES = (
    "liver", "lung", "kidney", "pancreas", "heart anatomies", "brain anatomies", "eye anatomies",
    "vessel", "other organ", "tumor", "infection", "other lesion", "fluid disturbance",
    "other abnormality", "histology structure", "other", "background",
)  # fmt: skip


class TFLayerNorm(nn.Module):
    """TF-style LayerNorm (epsilon inside the square root, eps 1e-12), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.variance_epsilon)
        return self.weight * x.to(dtype) + self.bias


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN causal block on (B, L, W): ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = TFLayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = TFLayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, is_causal=True)
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Token + learned position embedding, causal pre-LN blocks, final LayerNorm.

    input_ids (B, L) with L <= context_length -> last hidden state (B, L, width). Causal
    attention makes position i independent of positions > i, so padding can be cut off.
    """

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers)
        )
        self.ln_final = TFLayerNorm(cfg.text_width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]
        for block in self.resblocks:
            x = block(x)
        return self.ln_final(x)


class LanguageEncoder(nn.Module):
    """Text encoder with its projection and logit scale (official ``lang_encoder`` module).

    ``lang_proj`` (width, dim_proj) is applied as ``x @ W``; ``logit_scale`` is a 0-d parameter
    (similarities use ``exp(logit_scale)``, clamped at 100 for grounding).
    ``default_text_embeddings`` (17, dim_proj) is inference state computed by
    :meth:`compute_default_text_embeddings` (not in the state dict); it only feeds the
    ``pred_logits`` of the decoder.
    """

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        self.lang_encoder = TextTransformer(cfg)
        self.lang_proj = nn.Parameter(torch.empty(cfg.text_width, cfg.dim_proj))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.lang_proj, std=cfg.text_width**-0.5)
        self.default_text_embeddings: torch.Tensor | None = None

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> projected token embeddings (B, L, dim_proj), not normalised."""
        return self.lang_encoder(input_ids) @ self.lang_proj

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """input_ids, attention_mask (B, L) -> dict ``token_emb`` (B, L, D), ``class_emb`` (B, D)
        (state of the first EOS token = ``input_ids.argmax(-1)``), ``attention_mask`` (B, L) bool.
        """
        token_emb = self.token_embeddings(input_ids)
        eot = input_ids.argmax(-1)
        class_emb = token_emb[torch.arange(token_emb.shape[0], device=token_emb.device), eot]
        return {
            "token_emb": token_emb,
            "class_emb": class_emb,
            "attention_mask": attention_mask.bool(),
            "input_ids": input_ids,
        }

    @torch.no_grad()
    def compute_default_text_embeddings(
        self, tokenizer, classes=DEFAULT_TEXT_CLASSES, templates=PROMPT_TEMPLATES
    ) -> torch.Tensor:
        """Official ``get_text_embeddings(classes, is_eval=True)``: per class, mean over the
        templates of the L2-normalised EOS embeddings, re-normalised. Sets and returns
        ``default_text_embeddings`` (len(classes), dim_proj)."""
        device = self.lang_proj.device
        rows = []
        for name in classes:
            ids, mask = tokenizer([t.format(name) for t in templates])
            n = int(mask.sum(1).max())
            out = self(ids[:, :n].to(device), mask[:, :n].to(device))["class_emb"]
            out = out / (out.norm(dim=-1, keepdim=True) + 1e-7)
            mean = out.mean(0)
            rows.append(mean / mean.norm())
        self.default_text_embeddings = torch.stack(rows)
        return self.default_text_embeddings
