"""Losses for text-grounded mask training (plain tensors; no model import).

BiomedParse answers a prompt with the object query whose caption embedding is most similar to
the prompt's text embedding (``argmax_q sim[q, p]``). Training therefore has two parts, as in
SEEM / X-Decoder:

1. **Matching**: for every (image, prompt) pair and every decoder layer, the query whose mask
   best matches the ground truth (lowest BCE + Dice cost at the mask resolution; one-to-one
   across the prompts of one image, Hungarian) is the target query.
2. **Grounding loss**: cross-entropy over queries of the similarity logits, with the matched
   query as the class, so the prompt picks out that query.
3. **Mask loss**: sigmoid BCE + Dice of the matched query's mask logits, upsampled to the
   target resolution.

Shapes: N pairs, Q queries, mask logits at (h, w), targets at (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    """Relative weights of the loss terms and of the auxiliary (non-final) decoder layers."""

    grounding: float = 1.0
    bce: float = 2.0
    dice: float = 2.0
    aux: float = 0.5


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per mask. logits, targets: (N, H, W) -> (N,)."""
    p = torch.sigmoid(logits).flatten(1)
    t = targets.flatten(1).to(p.dtype)
    inter = (p * t).sum(1)
    return 1.0 - (2.0 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy per mask. (N, H, W) -> (N,)."""
    return (
        F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
        .flatten(1)
        .mean(1)
    )


@torch.no_grad()
def match_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cost of assigning each query to each target: BCE + Dice at the mask resolution.

    Args:
        mask_logits: (N, Q, h, w) query mask logits (N pairs).
        targets: (N, H, W) float / bool ground truth, area-averaged to (h, w).

    Returns:
        (N, Q) cost.
    """
    n, q, h, w = mask_logits.shape
    t = targets.to(torch.float32)
    if t.shape[-2:] != (h, w):
        t = F.adaptive_avg_pool2d(t[:, None], (h, w))[:, 0]
    t = t.flatten(1)  # (N, hw)
    lg = mask_logits.float().flatten(2)  # (N, Q, hw)
    bce = F.softplus(lg).mean(-1) - torch.einsum("nqk,nk->nq", lg, t) / (h * w)
    p = torch.sigmoid(lg)
    inter = torch.einsum("nqk,nk->nq", p, t)
    dice = 1.0 - (2 * inter + 1.0) / (p.sum(-1) + t.sum(-1)[:, None] + 1.0)
    return bce + dice


@torch.no_grad()
def match_queries(cost: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Matched query per pair.

    Args:
        cost: (N, Q) from :func:`match_cost`.
        groups: (N,) int: pairs with the same group id share one decoder pass (joint prompts
            of one image) and get distinct queries (Hungarian). None: independent (argmin).

    Returns:
        (N,) long query index.
    """
    if groups is None:
        return cost.argmin(1)
    from scipy.optimize import linear_sum_assignment

    out = cost.argmin(1).clone()
    c = cost.detach().cpu().numpy()
    g = groups.detach().cpu().numpy()
    for gid in set(g.tolist()):
        idx = (g == gid).nonzero()[0]
        if len(idx) <= 1:
            continue
        r, col = linear_sum_assignment(c[idx])
        out[torch.as_tensor(idx[r])] = torch.as_tensor(col, device=out.device)
    return out


def layer_loss(
    mask_logits: torch.Tensor,
    sim_logits: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Grounding + mask loss of one decoder layer.

    Args:
        mask_logits: (N, Q, h, w) all queries' mask logits, per pair.
        sim_logits: (N, Q) query-vs-prompt similarity logits, per pair.
        targets: (N, H, W) ground truth of each pair's prompt (may be empty).

    Returns:
        total (scalar), parts {"grounding", "bce", "dice"} (scalars, detached), matched (N,).
    """
    matched = match_queries(match_cost(mask_logits, targets), groups)
    ar = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    ground = F.cross_entropy(sim_logits.float(), matched)
    m = mask_logits[ar, matched]  # (N, h, w)
    if m.shape[-2:] != targets.shape[-2:]:
        m = F.interpolate(m[:, None].float(), targets.shape[-2:], mode="bilinear")[:, 0]
    bce = bce_loss(m.float(), targets).mean()
    dl = dice_loss(m.float(), targets).mean()
    total = weights.grounding * ground + weights.bce * bce + weights.dice * dl
    parts = {"grounding": ground.detach(), "bce": bce.detach(), "dice": dl.detach()}
    return total, parts, matched


def grounded_mask_loss(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    targets: torch.Tensor,
    weights: LossWeights | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss summed over decoder layers (the last with weight 1, the others ``weights.aux``).

    Args:
        layers: per decoder layer, (mask_logits (N, Q, h, w), sim_logits (N, Q)); last = final.
        targets: (N, H, W) ground truth per pair.
        groups: see :func:`match_queries`.

    Returns:
        total loss (scalar tensor with grad), dict of floats: "loss", and the final layer's
        "grounding", "bce", "dice" and "query_acc" (fraction of pairs whose argmax-similarity
        query is the matched one).
    """
    weights = weights or LossWeights()
    if not layers:
        raise ValueError("grounded_mask_loss needs at least one decoder layer output.")
    total = targets.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    for i, (ml, sl) in enumerate(layers):
        last = i == len(layers) - 1
        t, p, matched = layer_loss(ml, sl, targets, weights, groups)
        total = total + (1.0 if last else weights.aux) * t
        if last:
            parts = {k: float(v) for k, v in p.items()}
            parts["query_acc"] = float((sl.argmax(1) == matched).float().mean())
    parts["loss"] = float(total.detach())
    return total, parts
