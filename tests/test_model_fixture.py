"""Intermediate-by-intermediate equivalence with the official BiomedParse v1 code (tiny fixture).

Reference tensors: tests/data/v1_tiny (see its README: produced by the official code on CPU).
Tolerances are the README's: text/backbone 1e-4, pixel decoder 1e-3, decoder mask logits and
captions 2e-3, token ids and selected queries exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

DATA = Path(__file__).parent / "data" / "v1_tiny"


def max_err(x: torch.Tensor, ref) -> float:
    """Max abs difference of a full tensor ``x`` against a full or SUBSET reference."""
    x = x.detach().float().cpu()
    if torch.is_tensor(ref):
        assert tuple(x.shape) == tuple(ref.shape), (x.shape, ref.shape)
        return (x - ref).abs().max().item()
    assert ref["format"] == "subset"
    assert list(x.shape) == list(ref["full_shape"]), (x.shape, ref["full_shape"])
    c = ref["crop"]
    grid = x.index_select(-2, ref["rows"]).index_select(-1, ref["cols"])
    return max(
        (grid - ref["grid"]).abs().max().item(),
        (x[..., :c, :c] - ref["crop_tl"]).abs().max().item(),
        (x[..., -c:, -c:] - ref["crop_br"]).abs().max().item(),
    )


@pytest.fixture(scope="module")
def model():
    cfg = BiomedParseConfig.from_reference_json(DATA / "config.json")
    m = build_model(cfg, device="meta")
    load_checkpoint(m, DATA / "state_dict.pt")
    m.compute_default_text_embeddings()
    return m


@pytest.fixture(scope="module")
def ref_text():
    return torch.load(DATA / "text.pt", weights_only=True)


@pytest.fixture(scope="module")
def ref_inter():
    return torch.load(DATA / "intermediates_image_a.pt", weights_only=True)


@pytest.fixture(scope="module")
def image_a_run(model, ref_inter):
    img = np.load(DATA / "image_a.npy")
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    trace: list = []
    with torch.inference_mode():
        feats = model.encode_image(x, return_backbone=True)
        text = model.encode_text(ref_inter["prompts"])
        out = model.decode(feats, text, all_masks=True, trace=trace)
        normalized = model.normalize(x)
    return {"x": normalized, "feats": feats, "out": out, "trace": trace, "text": text}


def test_config_from_reference_json():
    cfg = BiomedParseConfig.from_reference_json(DATA / "config.json")
    raw = json.loads((DATA / "config.json").read_text())
    assert cfg.embed_dim == raw["backbone"]["EMBED_DIM"] == 16
    assert cfg.depths == (1, 1, 2, 1)
    assert cfg.decoder_layers == raw["decoder"]["DEC_LAYERS"] - 1 == 3
    assert cfg.num_queries == 11 and cfg.hidden_dim == 32 and cfg.text_layers == 2
    assert cfg.input_size == 1024 and cfg.mask_size == 256
    assert BiomedParseConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="dim_proj"):
        BiomedParseConfig(dim_proj=256)
    with pytest.raises(ValueError, match="multiple of 32"):
        BiomedParseConfig(input_size=1000)
    with pytest.raises(ValueError, match="Unknown BiomedParseConfig fields"):
        BiomedParseConfig.from_dict({"embed_dims": 3})
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"backbone": {}}))
    with pytest.raises(ValueError, match="missing section"):
        BiomedParseConfig.from_reference_json(bad)


def test_text_encoder_matches(model, ref_text):
    assert abs(model.text_encoder.logit_scale.item() - ref_text["logit_scale"]) < 1e-6
    with torch.inference_mode():
        for call in ref_text["calls"]:
            full = model.encode_text(call["prompts"], full_context=True)
            assert torch.equal(full["input_ids"], call["input_ids"])
            assert torch.equal(full["attention_mask"].long(), call["attention_mask"])
            assert torch.equal(full["input_ids"].argmax(-1), call["eot_index"])
            assert max_err(full["token_emb"], call["token_emb"]) < 1e-4
            grounding = full["token_emb"][full["attention_mask"]]
            assert max_err(grounding, call["grounding_tokens"]) < 1e-4
            assert max_err(full["class_emb"], call["class_emb"]) < 1e-4
            normed = full["class_emb"] / (full["class_emb"].norm(dim=-1, keepdim=True) + 1e-7)
            assert max_err(normed, call["class_emb_normed"]) < 1e-4
            # the default (trimmed) encoding gives the same real-token states
            short = model.encode_text(call["prompts"])
            assert max_err(short["class_emb"], call["class_emb"]) < 1e-4
            n = short["token_emb"].shape[1]
            assert n == int(call["attention_mask"].sum(1).max())
            assert max_err(short["token_emb"], call["token_emb"][:, :n]) < 1e-4


def test_default_text_embeddings(model, ref_text):
    from napari_biomedparse.model.text_encoder import DEFAULT_TEXT_CLASSES

    assert list(DEFAULT_TEXT_CLASSES) == list(ref_text["default_text_classes"])
    dte = model.text_encoder.default_text_embeddings
    assert max_err(dte, ref_text["default_text_embeddings"]) < 1e-4


def test_model_input(image_a_run, ref_inter):
    x = image_a_run["x"]
    assert list(x.shape) == list(ref_inter["model_input_shape"])
    assert max_err(x[0, :, :16, :16], ref_inter["model_input_crop_tl"]) < 1e-5


def test_backbone_levels(image_a_run, ref_inter):
    bb = image_a_run["feats"]["backbone"]
    for name in ("res2", "res3", "res4", "res5"):
        assert max_err(bb[name][0], ref_inter["backbone"][name]) < 1e-4, name


def test_pixel_decoder(image_a_run, ref_inter):
    f, ref = image_a_run["feats"], ref_inter["pixel_decoder"]
    assert max_err(f["mask_features"][0], ref["mask_features"]) < 1e-3
    assert max_err(f["transformer_encoder_features"][0], ref["transformer_encoder_features"]) < 1e-3
    assert len(f["multi_scale_features"]) == 3
    for mine, theirs in zip(f["multi_scale_features"], ref["multi_scale_features"]):
        assert max_err(mine[0], theirs) < 1e-3


def test_decoder_predictions_every_layer(image_a_run, ref_inter):
    out = image_a_run["out"]
    preds = out["aux_outputs"] + [out]
    assert len(preds) == len(ref_inter["predictions"]) == 4
    for j, (p, r) in enumerate(zip(preds, ref_inter["predictions"])):
        assert max_err(p["pred_masks"][0, 0], r["pred_masks"]) < 2e-3, j
        assert max_err(p["pred_captions"][0, 0], r["pred_captions"]) < 2e-3, j
        assert max_err(p["pred_logits"][0, 0], r["pred_logits"]) < 2e-3, j


def test_decoder_layer_states_and_attention_masks(image_a_run, ref_inter):
    trace = image_a_run["trace"]
    assert len(trace) == len(ref_inter["layers"])
    for i, (t, r) in enumerate(zip(trace, ref_inter["layers"])):
        h, w = r["level_hw"]
        allowed = t["attn_mask"][0, 0]
        assert list(allowed.shape) == [11, h * w]
        bits = np.unpackbits(r["cross_attn_mask_head0_packbits"].numpy(), axis=-1)[:, : h * w]
        blocked = (~allowed).numpy().astype(np.uint8)
        assert (bits != blocked).sum() == 0, f"layer {i}: cross-attention mask bits differ"
        assert abs(blocked.mean() - r["cross_attn_mask_true_fraction"]) < 1e-6
        assert max_err(t["after_cross_attn"][0, 0], r["after_cross_attn"]) < 2e-3
        assert max_err(t["after_self_attn"][0, 0], r["after_self_attn"]) < 2e-3
        assert max_err(t["after_ffn"][0, 0], r["after_ffn"]) < 2e-3
    pos = trace[0]["self_attn_pos"][0, 0]
    assert max_err(pos, ref_inter["layers"][0]["self_attn_query_pos"]) < 1e-4


def test_sampled_attention_masks_equal_full_resize(model, image_a_run):
    """The inference path evaluates mask logits only where the attention-mask resize samples
    them; it must give the same decoder as resizing full maps (the official way)."""
    feats, text = image_a_run["feats"], image_a_run["text"]
    trace: list = []
    with torch.inference_mode():
        out = model.decode(feats, text, all_masks=False, trace=trace)
    for t_fast, t_full in zip(trace, image_a_run["trace"]):
        assert torch.equal(t_fast["attn_mask"], t_full["attn_mask"])
    full = image_a_run["out"]
    assert torch.equal(out["matched"], full["matched"])
    assert (out["matched_masks"] - full["matched_masks"]).abs().max() < 1e-5
    assert out["pred_masks"] is None
