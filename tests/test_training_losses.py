"""Grounding + mask losses on plain tensors (training layer)."""

from __future__ import annotations

import torch

from napari_biomedparse.training.losses import (
    LossWeights,
    dice_loss,
    grounded_mask_loss,
    match_cost,
    match_queries,
)


def _disk(n, cy, cx, r):
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float()


def test_dice_loss_bounds():
    t = _disk(32, 16, 16, 6)[None]
    assert dice_loss(t * 40 - 20, t).item() < 0.01
    assert dice_loss(-(t * 40 - 20), t).item() > 0.95


def test_matching_picks_best_mask_and_hungarian_separates_prompts():
    n = 32
    a, b = _disk(n, 8, 8, 5), _disk(n, 24, 24, 5)
    logits = torch.stack([a * 20 - 10, b * 20 - 10, torch.full((n, n), -10.0)])  # 3 queries
    targets = torch.stack([b, b])
    cost = match_cost(logits[None].expand(2, -1, -1, -1), targets)
    assert match_queries(cost).tolist() == [1, 1]
    # two prompts in one decoder pass cannot both take query 1
    assert sorted(match_queries(cost, groups=torch.tensor([0, 0])).tolist()) in ([0, 1], [1, 2])


def test_optimising_the_loss_grounds_the_prompt_and_fits_the_mask():
    torch.manual_seed(0)
    n, q = 16, 5
    targets = torch.stack([_disk(n, 5, 5, 3), _disk(n, 10, 10, 4)])  # 2 pairs
    masks = torch.nn.Parameter(torch.randn(2, q, n // 2, n // 2))
    sims = torch.nn.Parameter(torch.randn(2, q))
    opt = torch.optim.Adam([masks, sims], lr=0.1)
    first = None
    for _ in range(150):
        loss, parts = grounded_mask_loss([(masks, sims)], targets, LossWeights())
        first = first if first is not None else parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["loss"] < 0.3 * first["loss"]
    assert parts["query_acc"] == 1.0  # the argmax-similarity query is the one whose mask fits
    chosen = masks[torch.arange(2), sims.argmax(1)]
    up = torch.nn.functional.interpolate(chosen[:, None], (n, n), mode="bilinear")[:, 0]
    assert 1 - dice_loss((up > 0).float() * 20 - 10, targets).mean().item() > 0.8
