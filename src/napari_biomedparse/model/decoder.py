"""SEEM text-grounded masked-attention decoder (BiomedParse v1 ``seem_demo`` head).

Object queries cross-attend to one pixel-decoder level per layer (masked by the previous layer's
mask prediction), then self-attend together with the prompt's text tokens, then an FFN; a shared
prediction head gives mask logits and caption embeddings per query.

Batched prompts: the decoder runs ``S`` independent sequences per image. With ``joint=False``
there is one sequence per prompt (each holds the 101 queries plus that prompt's tokens), so the
result for each prompt equals a single-prompt official call; with ``joint=True`` one sequence
holds the tokens of all prompts (the official coupled multi-prompt call). The image memory and
its key/value projections are computed once per image and shared by all sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiheadAttention
from .config import BiomedParseConfig
from .position_encoding import sine_position_embedding
from .text_encoder import LanguageEncoder

__all__ = ["SEEMDecoder", "bilinear_taps"]


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention on (N, L, C); ``q = k = x + pos``, ``v = x``."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, pos, mask=None):
        qk = x + pos
        return self.norm(x + self.self_attn(qk, qk, x, mask))


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention of queries to a memory level (keys/values precomputed)."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, query_pos, k, v, mask=None):
        q = self.multihead_attn.project_q(x + query_pos)
        return self.norm(x + self.multihead_attn.attend(q, k, v, mask))


class FFNLayer(nn.Module):
    """Post-norm ``Linear -> ReLU -> Linear`` with residual."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between (the mask-embedding head)."""

    def __init__(self, din: int, dh: int, dout: int, num_layers: int) -> None:
        super().__init__()
        dims = [din] + [dh] * (num_layers - 1)
        outs = [dh] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Source indices of a bilinear (align_corners=False) resize from ``in_size`` to ``out_size``
    when every output is the mean of two neighbours (an even integer downscale ratio): returns
    (i0, i1) int64 (out_size,), else None. Used to evaluate mask logits only where the attention
    mask samples them (same arithmetic as resizing the full map)."""
    if out_size >= in_size or in_size % out_size:
        return None
    r = in_size // out_size
    if r % 2:
        return None
    i0 = torch.arange(out_size) * r + (r // 2 - 1)
    return i0, i0 + 1


class SEEMDecoder(nn.Module):
    """The decoder (official ``sem_seg_head.predictor``), including the text encoder
    (``lang_encoder``) so that state-dict names match the released checkpoint.

    Parameters that exist only for checkpoint compatibility (spatial / visual prompting, unused
    with text prompts): ``pn_indicator``, ``mask_sptial_embed``, ``spatial_embed``,
    ``spatial_featured``.
    """

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        c = cfg.hidden_dim
        self.cfg = cfg
        self.num_heads = cfg.nheads
        self.num_layers = cfg.decoder_layers
        self.num_queries = cfg.num_queries
        self.num_feature_levels = cfg.num_feature_levels
        self.lang_encoder = LanguageEncoder(cfg)
        self.class_embed = nn.Parameter(torch.empty(c, cfg.dim_proj))
        nn.init.trunc_normal_(self.class_embed, std=0.02)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.nheads) for _ in range(cfg.decoder_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c, cfg.nheads) for _ in range(cfg.decoder_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(c, cfg.dim_feedforward) for _ in range(cfg.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.pn_indicator = nn.Embedding(2, c)
        self.level_embed = nn.Embedding(cfg.num_feature_levels, c)
        # identity (no weights) in the released model; 1x1 convs otherwise (official rule)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(cfg.convs_dim, c, kernel_size=1)
            if cfg.convs_dim != c or cfg.enforce_input_proj
            else nn.Identity()
            for _ in range(cfg.num_feature_levels)
        )
        self.mask_embed = MLP(c, c, cfg.mask_dim, 3)
        self.mask_sptial_embed = nn.ParameterList(nn.Parameter(torch.empty(c, c)) for _ in range(3))
        for p in self.mask_sptial_embed:
            nn.init.trunc_normal_(p, std=0.02)
        self.spatial_embed = nn.Embedding(cfg.spatial_memories, c)
        self.spatial_featured = nn.Embedding(cfg.spatial_memories, c)

    # ------------------------------------------------------------------ heads
    def _heads(self, queries: torch.Tensor):
        """queries (B, S, Q, C) -> captions (B, S, Q, D), mask embeddings (B, S, Q, C),
        pred_logits (B, S, Q, 17) or None."""
        d = self.decoder_norm(queries)
        captions = d @ self.class_embed
        mask_emb = self.mask_embed(d)
        dte = self.lang_encoder.default_text_embeddings
        logits = None
        if dte is not None:
            v = captions / (captions.norm(dim=-1, keepdim=True) + 1e-7)
            logits = self.lang_encoder.logit_scale.exp() * v @ dte.to(v).transpose(0, 1)
        return captions, mask_emb, logits

    @staticmethod
    def _masks(mask_emb: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, S, Q, C) x (B, C, H, W) -> mask logits (B, S, Q, H, W)."""
        b, s, q, c = mask_emb.shape
        h, w = mask_features.shape[-2:]
        out = torch.bmm(mask_emb.reshape(b, s * q, c), mask_features.reshape(b, c, h * w))
        return out.view(b, s, q, h, w)

    @staticmethod
    def _sampled_features(mask_features: torch.Tensor, size) -> torch.Tensor:
        """The rows/columns of ``mask_features`` that a bilinear resize to ``size`` reads
        (interleaved tap pairs: a (2h, 2w) map whose ratio-2 resize equals the full map's
        resize), or the full map when the resize is not an even integer ratio."""
        hm, wm = mask_features.shape[-2:]
        ty, tx = bilinear_taps(hm, size[0]), bilinear_taps(wm, size[1])
        if ty is None or tx is None:
            return mask_features
        feats = mask_features
        if size[0] * 2 != hm:
            r = hm // size[0]
            pair = (feats[..., r // 2 - 1 :: r, :], feats[..., r // 2 :: r, :])
            feats = torch.stack(pair, -2).flatten(-3, -2)
        if size[1] * 2 != wm:
            r = wm // size[1]
            feats = torch.stack((feats[..., r // 2 - 1 :: r], feats[..., r // 2 :: r]), -1)
            feats = feats.flatten(-2)
        return feats

    #: max mask-logit elements evaluated at once for an attention mask (bounds the transient
    #: memory with many prompts / tiles: 2**26 float32 = 256 MiB)
    attn_mask_chunk_elements = 2**26

    def _attn_mask(self, mask_emb, sampled_features, full_masks, size) -> torch.Tensor:
        """Allowed-positions mask (B, S*Q, h*w) bool for the next cross-attention: bilinear
        resize of the mask logits to ``size``, ``sigmoid < 0.5`` blocked, fully blocked rows
        reset to all allowed (official rule). Mask logits are evaluated on
        ``sampled_features`` (see :meth:`_sampled_features`), a few sequences at a time,
        unless ``full_masks`` is given."""
        b, s, q = mask_emb.shape[:3]
        if full_masks is not None:
            return self._threshold(full_masks, size)
        hw = sampled_features.shape[-2] * sampled_features.shape[-1]
        step = max(1, self.attn_mask_chunk_elements // max(1, b * q * hw))
        parts = [
            self._threshold(self._masks(mask_emb[:, i : i + step], sampled_features), size)
            for i in range(0, s, step)
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return out.view(b, s * q, size[0] * size[1])

    @staticmethod
    def _threshold(masks: torch.Tensor, size) -> torch.Tensor:
        """(B, S, Q, h', w') logits -> allowed (B, S, Q, h*w) bool at ``size``."""
        b, s, q, hh, ww = masks.shape
        m = F.interpolate(
            masks.reshape(b * s, q, hh, ww).float(),
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        allowed = ~(m.sigmoid().flatten(2) < 0.5)
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return allowed.view(b, s, q, size[0] * size[1]).detach()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        mask_features: torch.Tensor,
        multi_scale_features: list[torch.Tensor],
        text: dict,
        *,
        joint: bool = False,
        all_masks: bool = False,
        trace: list | None = None,
        cache: dict | None = None,
    ) -> dict:
        """Decode B images x prompts.

        Args:
            mask_features: (B, C, Hm, Wm), Hm = input_size / 4.
            multi_scale_features: 3 maps (B, C, h_l, w_l) at strides 32, 16, 8.
            text: output of ``LanguageEncoder.forward`` for P prompts: ``token_emb`` (P, L, D),
                ``attention_mask`` (P, L) bool, ``class_emb`` (P, D).
            joint: all prompts in one sequence (official multi-prompt call) instead of one
                sequence per prompt.
            all_masks: compute the full-resolution mask logits of every query at every
                prediction (training, tests); otherwise only what the attention masks and the
                selected queries need (inference, cheaper).
            trace: if a list, per-layer states are appended to it (tests).
            cache: optional dict owned by the caller for ONE image encoding: the
                prompt-independent tensors (memory keys/values of every layer, sampled mask
                features) are kept there and reused by later calls with the same features
                (only when gradients are off). Costs about 250 MB for v1 at 1024 in float32.

        Returns dict (S = P, or 1 when ``joint``):
            ``pred_similarity`` (B, P, Q): grounding logits ``clamp(exp(logit_scale), 100) *
            cos(caption_q, class_emb_p)`` of the last prediction;
            ``matched`` (B, P) int64: query picked per prompt (argmax over Q, first on ties);
            ``matched_masks`` (B, P, Hm, Wm): mask logits of the picked queries;
            ``pred_captions`` (B, S, Q, D); ``pred_logits`` (B, S, Q, 17) or None;
            ``pred_masks`` (B, S, Q, Hm, Wm) mask logits (None unless ``all_masks``);
            ``aux_outputs``: list of dicts (``pred_masks``, ``pred_captions``,
            ``pred_similarity``, ``pred_logits``) for predictions 0 .. layers - 1 (0 = from the
            learnable queries before the first layer).
        """
        b = mask_features.shape[0]
        c = self.cfg.hidden_dim
        dev = mask_features.device
        dtype = mask_features.dtype
        token_emb = text["token_emb"].to(dtype)
        tmask = text["attention_mask"].to(dev)
        class_emb = text["class_emb"].to(dtype)
        p = token_emb.shape[0]
        lens = tmask.sum(1).tolist()
        if joint:
            tokens = token_emb[tmask][None]  # (1, T, D) prompt-major
            tok_valid = None
        else:
            t_max = max(lens)
            tokens = token_emb[:, :t_max]
            tok_valid = tmask[:, :t_max]
            if all(n == t_max for n in lens):
                tok_valid = None
            # the official tokens are the masked (real) positions; with right padding those are
            # the leading positions of each row
            if not bool((tmask[:, :t_max].sum(1) == tmask.sum(1)).all()):
                raise ValueError("attention_mask must be right-padded (real tokens first)")
        s = tokens.shape[0]
        t = tokens.shape[1]
        q = self.num_queries

        query_pos = self.query_embed.weight.to(dtype)[None].expand(b * s, q, c)
        queries = self.query_feat.weight.to(dtype)[None, None].expand(b, s, q, c)
        tok_state = tokens[None].expand(b, s, t, c).reshape(b * s, t, c)
        tok_pos = tok_state  # the official "pos" of grounding tokens: a copy of the initial ones
        sa_pos = torch.cat([query_pos, tok_pos], 1)
        sa_mask = None
        if tok_valid is not None:
            valid = torch.cat([torch.ones(s, q, dtype=torch.bool, device=dev), tok_valid], 1)
            sa_mask = valid[None].expand(b, s, q + t).reshape(b * s, 1, 1, q + t)

        cls_n = class_emb / (class_emb.norm(dim=-1, keepdim=True) + 1e-7)
        scale = self.lang_encoder.logit_scale.exp().clamp(max=100)

        # prompt-independent tensors (sampled mask features, per-layer memory keys/values);
        # kept in ``cache`` across calls when the caller provides one (inference only)
        memory_cache: dict = cache if cache is not None else {}

        # memory: per level (B, HW, C) + level embedding, and its sine positions added (keys)
        levels = memory_cache.get(("levels",))
        if levels is None:
            levels = []
            for lvl, feat in enumerate(multi_scale_features[: self.num_feature_levels]):
                h, w = feat.shape[-2:]
                feat = self.input_proj[lvl](feat)
                src = feat.flatten(2).transpose(1, 2) + self.level_embed.weight[lvl].to(dtype)
                pos = sine_position_embedding(1, h, w, c // 2, device=dev, dtype=dtype)
                pos = pos.flatten(2).transpose(1, 2)
                levels.append((src, src + pos, (h, w)))  # value, key input, size
            if cache is not None and not torch.is_grad_enabled():
                memory_cache[("levels",)] = levels

        def predict(queries, next_size):
            captions, mask_emb, logits = self._heads(queries)
            full = self._masks(mask_emb, mask_features) if all_masks else None
            v = captions / (captions.norm(dim=-1, keepdim=True) + 1e-7)
            if joint:
                sim = scale * torch.einsum("bqd,pd->bpq", v[:, 0], cls_n)
            else:
                sim = scale * torch.einsum("bpqd,pd->bpq", v, cls_n)
            attn = None
            if next_size is not None:
                sampled = None
                if full is None:
                    key = ("sampled", next_size)
                    if key not in memory_cache:
                        memory_cache[key] = self._sampled_features(mask_features, next_size)
                    sampled = memory_cache[key]
                attn = self._attn_mask(mask_emb, sampled, full, next_size)
                attn = attn.reshape(b, s * q, -1)
            pred = {
                "pred_masks": full,
                "pred_captions": captions,
                "pred_similarity": sim,
                "pred_logits": logits,
            }
            return pred, mask_emb, attn

        aux = []
        pred, mask_emb, attn = predict(queries, levels[0][2])
        for i in range(self.num_layers):
            src, src_pos, _ = levels[i % self.num_feature_levels]
            ca = self.transformer_cross_attention_layers[i]
            kv = memory_cache.get(("kv", i))
            if kv is None:
                kv = ca.multihead_attn.project_kv(src_pos, src)
                if cache is not None and not torch.is_grad_enabled():
                    memory_cache[("kv", i)] = kv
            k, v = kv
            x = ca(
                queries.reshape(b, s * q, c),
                self.query_embed.weight.to(dtype)[None].expand(b, q, c).repeat(1, s, 1),
                k,
                v,
                attn[:, None],
            )
            after_ca = x
            x = torch.cat([x.reshape(b * s, q, c), tok_state], 1)
            x = self.transformer_self_attention_layers[i](x, sa_pos, sa_mask)
            after_sa = x
            x = self.transformer_ffn_layers[i](x)
            if trace is not None:
                trace.append(
                    {
                        "attn_mask": attn.view(b, s, q, -1),
                        "after_cross_attn": after_ca.view(b, s, q, c),
                        "after_self_attn": after_sa.view(b, s, q + t, c),
                        "after_ffn": x.view(b, s, q + t, c),
                        "self_attn_pos": sa_pos.view(b, s, q + t, c),
                    }
                )
            queries = x[:, :q].reshape(b, s, q, c)
            tok_state = x[:, q:]
            aux.append(pred)
            last = i == self.num_layers - 1
            nxt = None if last else levels[(i + 1) % self.num_feature_levels][2]
            pred, mask_emb, attn = predict(queries, nxt)

        sim = pred["pred_similarity"]
        matched = sim.argmax(-1)  # (B, P)
        if joint:
            emb = torch.gather(mask_emb[:, 0], 1, matched[..., None].expand(b, p, c))
        else:
            emb = torch.gather(mask_emb, 2, matched[..., None, None].expand(b, p, 1, c))[:, :, 0]
        if pred["pred_masks"] is not None:
            src_masks = pred["pred_masks"]
            if joint:
                idx = matched[..., None, None].expand(b, p, *src_masks.shape[-2:])
                matched_masks = torch.gather(src_masks[:, 0], 1, idx)
            else:
                idx = matched[..., None, None, None].expand(b, p, 1, *src_masks.shape[-2:])
                matched_masks = torch.gather(src_masks, 2, idx)[:, :, 0]
        else:
            matched_masks = self._masks(emb[:, None], mask_features)[:, 0]
        pred.update(matched=matched, matched_masks=matched_masks, aux_outputs=aux)
        return pred
