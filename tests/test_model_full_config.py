"""The released configuration (built on the meta device) has exactly the official state dict,
and configurations with the released depths run consistently."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from napari_biomedparse.model import BiomedParseConfig, build_model

SHAPES = json.loads((Path(__file__).parent / "data" / "v1_state_dict_shapes.json").read_text())


def test_released_config_state_dict_keys_and_shapes():
    model = build_model(BiomedParseConfig.biomedparse_v1(), device="meta")
    sd = model.state_dict()
    ref = SHAPES["keys"]
    assert set(sd) == set(ref), (sorted(set(sd) - set(ref))[:5], sorted(set(ref) - set(sd))[:5])
    for key, info in ref.items():
        assert list(sd[key].shape) == info["shape"], key
        assert str(sd[key].dtype).replace("torch.", "") == info["dtype"], key
    params = dict(model.named_parameters())
    buffers = {k for k, _ in model.named_buffers()}
    for key, info in ref.items():
        assert (key in params) == (info["kind"] == "parameter"), key
        assert (key in buffers) == (info["kind"] == "persistent_buffer"), key
    assert len(sd) == SHAPES["num_state_dict_entries_excluding_biomed_encoder"] == 932
    total = sum(v.numel() for v in sd.values())
    assert total == SHAPES["total_numel_excluding_biomed_encoder"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == SHAPES["total_parameter_numel_excluding_biomed_encoder"] == 341181177
    counts = SHAPES["counts_by_prefix"]
    bb = sum(p.numel() for p in model.backbone.parameters())
    assert bb == counts["backbone"]["parameter_numel"]
    pdn = sum(p.numel() for p in model.pixel_decoder.parameters())
    assert pdn == counts["sem_seg_head.pixel_decoder"]["parameter_numel"]
    lang = sum(p.numel() for p in model.text_encoder.parameters())
    assert lang == counts["sem_seg_head.predictor.lang_encoder"]["parameter_numel"]
    for buf in SHAPES["non_persistent_buffers"]:
        val = getattr(model, buf["name"])
        assert list(val.shape) == buf["shape"] and buf["name"] not in sd


def _released_depths_small_widths(input_size=128):
    """Released depths (2-2-18-2, 6 encoder layers, 12 text layers, 9 decoder layers),
    reduced widths."""
    return dataclasses.replace(
        BiomedParseConfig.biomedparse_v1(),
        embed_dim=8,
        convs_dim=32,
        mask_dim=32,
        hidden_dim=32,
        dim_proj=32,
        text_width=32,
        text_heads=4,
        nheads=4,
        dim_feedforward=64,
        num_queries=21,
        input_size=input_size,
    )


def test_released_depths_decode_consistency():
    """9 decoder layers cycle through the 3 levels three times; the fast inference path (mask
    logits evaluated only where the attention masks sample them, selected queries only) must
    equal the full computation, and batched independent prompts equal single calls."""
    torch.manual_seed(0)
    cfg = _released_depths_small_widths()
    model = build_model(cfg)
    assert len(model.backbone.layers[2].blocks) == 18 and model.decoder.num_layers == 9
    images = torch.rand(2, 3, 128, 128) * 255
    prompts = ["neoplastic cells", "liver", "tumor in brain MRI"]
    with torch.inference_mode():
        feats = model.encode_image(images)
        assert feats["mask_features"].shape == (2, 32, 32, 32)
        assert [f.shape[-1] for f in feats["multi_scale_features"]] == [4, 8, 16]
        text = model.encode_text(prompts)
        trace_full, trace_fast = [], []
        full = model.decode(feats, text, all_masks=True, trace=trace_full)
        fast = model.decode(feats, text, trace=trace_fast)
        assert len(full["aux_outputs"]) == 9
        assert full["pred_masks"].shape == (2, 3, 21, 32, 32)
        for a, b in zip(trace_full, trace_fast):
            assert torch.equal(a["attn_mask"], b["attn_mask"])
        assert torch.equal(full["matched"], fast["matched"])
        assert (full["matched_masks"] - fast["matched_masks"]).abs().max() < 1e-4
        # attention-mask logits evaluated a few sequences at a time (bounded memory): same
        model.decoder.attn_mask_chunk_elements = 1
        try:
            trace_chunked: list = []
            chunked = model.decode(feats, text, trace=trace_chunked)
        finally:
            del model.decoder.attn_mask_chunk_elements
        for a, b in zip(trace_fast, trace_chunked):
            assert torch.equal(a["attn_mask"], b["attn_mask"])
        assert torch.equal(chunked["matched_masks"], fast["matched_masks"])
        # the per-encoding cache of prompt-independent tensors gives identical results
        cache: dict = {}
        first = model.decode(feats, text, cache=cache)
        assert any(k[0] == "kv" for k in cache) and len([k for k in cache if k[0] == "kv"]) == 9
        second = model.decode(feats, model.encode_text(prompts[::-1]), cache=cache)
        assert torch.equal(first["matched_masks"], fast["matched_masks"])
        assert torch.equal(second["matched_masks"], fast["matched_masks"].flip(1))
        for j, p in enumerate(prompts):
            one = model.decode(
                {
                    k: v[1:2] if torch.is_tensor(v) else [f[1:2] for f in v]
                    for k, v in feats.items()
                },
                model.encode_text([p]),
            )
            assert one["matched"][0, 0] == fast["matched"][1, j]
            assert (one["matched_masks"][0, 0] - fast["matched_masks"][1, j]).abs().max() < 1e-4


def test_pixel_decoder_wider_than_decoder_gets_input_projections():
    """Official rule: 1x1 input projections exist when CONVS_DIM != HIDDEN_DIM (or
    ENFORCE_INPUT_PROJ); mask_dim may differ from hidden_dim."""
    cfg = dataclasses.replace(BiomedParseConfig.tiny(input_size=128), convs_dim=64, mask_dim=48)
    model = build_model(cfg)
    keys = [k for k in model.state_dict() if k.startswith("sem_seg_head.predictor.input_proj.")]
    assert len(keys) == 6
    assert model.state_dict()["sem_seg_head.predictor.input_proj.0.weight"].shape == (32, 64, 1, 1)
    with torch.inference_mode():
        feats = model.encode_image(torch.rand(1, 3, 128, 128) * 255)
        out = model.decode(feats, model.encode_text(["liver", "tumor"]), all_masks=True)
    assert feats["mask_features"].shape == (1, 48, 32, 32)
    assert out["pred_masks"].shape == (1, 2, 11, 32, 32)
    assert not any(
        k.startswith("sem_seg_head.predictor.input_proj.")
        for k in build_model(BiomedParseConfig.tiny(), device="meta").state_dict()
    )
