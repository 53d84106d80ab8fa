"""Multi-head attention with ``nn.MultiheadAttention`` parameter names, on SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention whose state dict matches ``torch.nn.MultiheadAttention``
    (``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,), ``out_proj``), computed with
    ``F.scaled_dot_product_attention``.

    Shapes: query (B, Lq, E), key (B, Lk, E), value (B, Lk, E) -> (B, Lq, E).
    ``mask``: bool, True = may attend (SDPA convention, the opposite of nn.MultiheadAttention),
    broadcastable to (B, heads, Lq, Lk).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def project_q(self, query: torch.Tensor) -> torch.Tensor:
        """(B, Lq, E) -> (B, heads, Lq, head_dim)."""
        e = self.embed_dim
        return self._heads(F.linear(query, self.in_proj_weight[:e], self.in_proj_bias[:e]))

    def project_kv(
        self, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lk, E) twice -> two (B, heads, Lk, head_dim) (reusable across queries)."""
        e = self.embed_dim
        k = F.linear(key, self.in_proj_weight[e : 2 * e], self.in_proj_bias[e : 2 * e])
        v = F.linear(value, self.in_proj_weight[2 * e :], self.in_proj_bias[2 * e :])
        return self._heads(k), self._heads(v)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Projected heads in, (B, Lq, E) out (after ``out_proj``)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dim))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        q = self.project_q(query)
        k, v = self.project_kv(key, value)
        return self.attend(q, k, v, mask, is_causal)
