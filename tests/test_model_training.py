"""The differentiable training forward (used by fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

DATA = Path(__file__).parent / "data" / "v1_tiny"


@pytest.fixture(scope="module")
def model():
    import dataclasses

    cfg = BiomedParseConfig.from_reference_json(DATA / "config.json")
    m = build_model(dataclasses.replace(cfg, input_size=128))
    return load_checkpoint(m, DATA / "state_dict.pt")


def test_forward_shapes_and_consistency_with_inference(model):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 128, 128) * 255
    prompts = ["neoplastic cells", "liver"]
    model.eval()
    out = model(images, prompts)
    q, layers = model.config.num_queries, model.config.decoder_layers
    assert out["pred_masks"].shape == (2, 2, q, 32, 32)
    assert out["pred_similarity"].shape == (2, 2, q)
    assert len(out["aux_outputs"]) == layers
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == (2, 2, q, 32, 32)
        assert aux["pred_similarity"].shape == (2, 2, q)
    assert out["prompt_valid"].all()
    # the query a prompt picks and its mask equal the inference path
    with torch.inference_mode():
        inf = model.decode(model.encode_image(images), model.encode_text(prompts))
    picked = out["pred_similarity"].argmax(-1)
    assert torch.equal(picked, inf["matched"])
    masks = torch.gather(
        out["pred_masks"], 2, picked[..., None, None, None].expand(2, 2, 1, 32, 32)
    )[:, :, 0]
    assert (masks.detach() - inf["matched_masks"]).abs().max() < 1e-4


def test_gradients_reach_all_trained_parts(model):
    model.train()
    model.zero_grad()
    images = torch.rand(1, 3, 128, 128) * 255
    out = model(images, ["neoplastic cells"])
    target = torch.zeros(1, 32, 32)
    target[:, 8:20, 8:20] = 1
    loss = torch.nn.functional.cross_entropy(out["pred_similarity"][:, 0], torch.tensor([3]))
    for pred in [out] + out["aux_outputs"]:
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
            pred["pred_masks"][:, 0, 3], target
        )
    loss.backward()
    model.eval()
    for name in (
        "backbone.patch_embed.proj.weight",
        "sem_seg_head.pixel_decoder.mask_features.weight",
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.class_embed",
        "sem_seg_head.predictor.lang_encoder.lang_encoder.token_embedding.weight",
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()


def test_ragged_prompt_lists(model):
    model.eval()
    images = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        out = model(images, [["liver"], ["neoplastic cells", "tumor", "vessel"]])
        alone = model(images[:1], ["liver"])
    assert out["pred_similarity"].shape[:2] == (2, 3)
    assert out["prompt_valid"].tolist() == [[True, False, False], [True, True, True]]
    assert (out["pred_masks"][0, 0] - alone["pred_masks"][0, 0]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="prompt lists for 2 images"):
        model(images, [["liver"]])
    with pytest.raises(ValueError, match="at least one prompt"):
        model(images, [["liver"], []])
