"""The BiomedParse v1 model: FocalNet -> FPN pixel decoder -> SEEM decoder with the text encoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FocalNet
from .config import BiomedParseConfig
from .decoder import SEEMDecoder
from .pixel_decoder import PixelDecoder
from .tokenizer import get_tokenizer

__all__ = ["BiomedParse"]


class _SemSegHead(nn.Module):
    """Container giving the official key names ``sem_seg_head.{pixel_decoder,predictor}``."""

    def __init__(self, cfg: BiomedParseConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(cfg)
        self.predictor = SEEMDecoder(cfg)


class BiomedParse(nn.Module):
    """BiomedParse v1 (SEEM / X-Decoder with a FocalNet backbone) in plain PyTorch.

    State-dict keys are those of the official ``GeneralizedSEEM`` (``backbone.*``,
    ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*`` incl. ``lang_encoder.*``,
    and the unused persistent buffer ``dilation_kernel``).

    Attributes:
        config: the :class:`BiomedParseConfig`.
        metadata: dict with ``name`` (str), ``target_dist`` (dict modality -> target -> 4 x
            [a, b], or None), ``vocabulary`` (dict modality -> list of prompts, or None),
            optionally ``inference`` (how to apply the model, e.g. ``{"mode": "tiled",
            "tile_size": 256, "overlap": 32, "mpp": 0.5}``; absent = whole-image, as v1).

    Typical use: ``feats = model.encode_image(images)``; ``text = model.encode_text(prompts)``;
    ``out = model.decode(feats, text)``; the :class:`~napari_biomedparse.inference.predictor.
    Predictor` wraps this for numpy images.
    """

    def __init__(self, cfg: BiomedParseConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or BiomedParseConfig.biomedparse_v1()
        self.config = cfg
        self.metadata: dict[str, Any] = {"name": None, "target_dist": None, "vocabulary": None}
        self.backbone = FocalNet(cfg)
        self.sem_seg_head = _SemSegHead(cfg)
        self.register_buffer("dilation_kernel", torch.ones((1, 1, 3, 3)), persistent=True)
        self.register_buffer(
            "pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False
        )

    # ------------------------------------------------------------------ parts
    @property
    def pixel_decoder(self) -> PixelDecoder:
        return self.sem_seg_head.pixel_decoder

    @property
    def decoder(self) -> SEEMDecoder:
        return self.sem_seg_head.predictor

    @property
    def text_encoder(self):
        return self.sem_seg_head.predictor.lang_encoder

    @property
    def device(self) -> torch.device:
        return self.dilation_kernel.device

    def reset_non_persistent_buffers(self) -> None:
        """Recreate ``pixel_mean`` / ``pixel_std`` (e.g. after building on the meta device)."""
        dev = self.dilation_kernel.device
        self.pixel_mean = torch.tensor(self.config.pixel_mean, device=dev).view(3, 1, 1)
        self.pixel_std = torch.tensor(self.config.pixel_std, device=dev).view(3, 1, 1)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        dte = self.text_encoder.default_text_embeddings
        if dte is not None:
            self.text_encoder.default_text_embeddings = fn(dte)
        return out

    # ------------------------------------------------------------------ image
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> normalised, right/bottom zero-padded to a multiple of
        ``size_divisibility`` (official ``ImageList.from_tensors``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W) RGB in 0..255, got shape {tuple(images.shape)}"
            )
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        d = self.config.size_divisibility
        h, w = x.shape[-2:]
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return x

    def encode_image(self, images: torch.Tensor, *, return_backbone: bool = False) -> dict:
        """Image encoder (backbone + pixel decoder).

        Args:
            images: (B, 3, S, S) float RGB in the 0..255 range (normalised inside).
        Returns dict: ``mask_features`` (B, C, S/4, S/4), ``multi_scale_features`` list of 3
        (B, C, S/32 | S/16 | S/8), ``transformer_encoder_features`` (B, C, S/32, S/32), and with
        ``return_backbone`` the backbone maps ``res2..res5``.
        """
        x = self.normalize(images)
        feats = self.backbone(x)
        out = self.pixel_decoder(feats)
        if return_backbone:
            out["backbone"] = feats
        return out

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP token ids and attention masks, (P, context_length) int64 each."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("Give at least one prompt (a list of strings)")
        return get_tokenizer(self.config.context_length)(list(prompts))

    def encode_text(self, prompts: list[str], *, full_context: bool = False) -> dict:
        """Text encoder on P prompts.

        Returns dict: ``token_emb`` (P, L, D) projected token states (not normalised),
        ``attention_mask`` (P, L) bool (real tokens incl. BOS/EOS), ``class_emb`` (P, D) (state
        at the first EOS), ``input_ids`` (P, L). L = the longest prompt's token count, or
        ``context_length`` with ``full_context`` (causal attention makes both equal on the
        real tokens).
        """
        ids, mask = self.tokenize(prompts)
        if not full_context:
            n = int(mask.sum(1).max())
            ids, mask = ids[:, :n], mask[:, :n]
        dev = self.dilation_kernel.device
        return self.text_encoder(ids.to(dev), mask.to(dev))

    def compute_default_text_embeddings(self) -> torch.Tensor:
        """Compute the (17, D) class embeddings behind ``pred_logits`` (official
        ``get_text_embeddings(BIOMED_CLASSES + ['background'], is_eval=True)``)."""
        return self.text_encoder.compute_default_text_embeddings(
            get_tokenizer(self.config.context_length)
        )

    # ------------------------------------------------------------------ decoder
    def decode(
        self,
        features: dict,
        text: dict,
        *,
        joint: bool = False,
        all_masks: bool = False,
        trace: list | None = None,
        cache: dict | None = None,
    ) -> dict:
        """Masked-attention decoder; see :meth:`SEEMDecoder.forward` for shapes.

        ``features`` from :meth:`encode_image` (B images), ``text`` from :meth:`encode_text`
        (P prompts). Every image is decoded with every prompt: ``matched_masks`` (B, P, S/4,
        S/4) mask logits of the query each prompt picks, ``matched`` (B, P),
        ``pred_similarity`` (B, P, Q); with ``all_masks`` also ``pred_masks`` (B, S', Q, S/4,
        S/4) of all queries (S' = P, or 1 when ``joint``) and the same per aux layer.
        ``cache``: a dict kept with one image encoding to reuse its prompt-independent decoder
        tensors across calls (see :meth:`SEEMDecoder.forward`).
        """
        return self.decoder(
            features["mask_features"],
            features["multi_scale_features"],
            text,
            joint=joint,
            all_masks=all_masks,
            trace=trace,
            cache=cache,
        )

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor, prompts: list[str] | list[list[str]]) -> dict:
        """Differentiable training forward.

        Args:
            images: (B, 3, S, S) float RGB in 0..255.
            prompts: one list of prompts shared by all images, or one list per image (ragged
                lists allowed; shorter lists are padded and flagged in ``prompt_valid``).
        Returns dict (P = number of prompts, max over images when ragged; Q = num_queries;
        M = S / 4):
            ``pred_masks`` (B, P, Q, M, M) mask logits of every query of the final layer,
            decoded separately for each prompt (as ``joint=False`` inference);
            ``pred_similarity`` (B, P, Q) grounding logits (scaled cosine of query captions vs
            prompt embedding; the query a prompt picks is the argmax over Q);
            ``aux_outputs`` list (decoder_layers entries: prediction 0 from the learnable
            queries, then after each layer but the last) of dicts with the same two keys;
            ``prompt_valid`` (B, P) bool; ``prompts`` the (padded) list of prompt lists.
        """
        b = images.shape[0]
        if prompts and isinstance(prompts[0], str):
            per_image = [list(prompts)] * b
        else:
            per_image = [list(p) for p in prompts]
        if len(per_image) != b:
            raise ValueError(f"{len(per_image)} prompt lists for {b} images")
        if any(len(p) == 0 for p in per_image):
            raise ValueError("every image needs at least one prompt")
        feats = self.encode_image(images)
        shared = all(p == per_image[0] for p in per_image)
        if shared:
            text = self.encode_text(per_image[0])
            out = self.decode(feats, text, all_masks=True)
            valid = torch.ones(b, len(per_image[0]), dtype=torch.bool, device=images.device)
            padded = per_image
        else:
            pmax = max(len(p) for p in per_image)
            padded = [p + [p[-1]] * (pmax - len(p)) for p in per_image]
            valid = torch.tensor(
                [[j < len(p) for j in range(pmax)] for p in per_image], device=images.device
            )
            outs = []
            for i in range(b):
                one = {k: v[i : i + 1] for k, v in feats.items() if torch.is_tensor(v)}
                one["multi_scale_features"] = [f[i : i + 1] for f in feats["multi_scale_features"]]
                outs.append(self.decode(one, self.encode_text(padded[i]), all_masks=True))
            out = _cat_outputs(outs)

        def pick(d):
            return {"pred_masks": d["pred_masks"], "pred_similarity": d["pred_similarity"]}

        res = pick(out)
        res["aux_outputs"] = [pick(a) for a in out["aux_outputs"]]
        res["prompt_valid"] = valid
        res["prompts"] = padded
        return res


def _cat_outputs(outs: list[dict]) -> dict:
    def cat(key, items):
        return torch.cat([o[key] for o in items], 0)

    res = {k: cat(k, outs) for k in ("pred_masks", "pred_similarity")}
    res["aux_outputs"] = [
        {k: cat(k, [o["aux_outputs"][j] for o in outs]) for k in ("pred_masks", "pred_similarity")}
        for j in range(len(outs[0]["aux_outputs"]))
    ]
    return res
