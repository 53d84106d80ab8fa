"""Checkpoint loading (official key names, strict, clear errors) and our safetensors format."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_biomedparse.model import (
    BiomedParseConfig,
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from napari_biomedparse.model.checkpoint import SKIPPED_PREFIXES, model_from_checkpoint

DATA = Path(__file__).parent / "data" / "v1_tiny"
CFG = BiomedParseConfig.from_reference_json(DATA / "config.json")


@pytest.fixture(scope="module")
def official_sd():
    return torch.load(DATA / "state_dict.pt", weights_only=True)


def _same_weights(model, sd):
    msd = model.state_dict()
    assert set(msd) == set(sd)
    return all(torch.equal(msd[k], sd[k]) for k in sd)


def test_load_official_state_dict_onto_meta(official_sd):
    model = build_model(CFG, device="meta")
    assert all(p.is_meta for p in model.parameters())
    out = load_checkpoint(model, DATA / "state_dict.pt")
    assert out is model
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    assert torch.equal(model.pixel_mean.flatten(), torch.tensor(CFG.pixel_mean))
    assert _same_weights(model, official_sd)
    assert len(official_sd) == 276


def test_load_into_materialised_model_copies(official_sd):
    model = build_model(CFG)
    before = model.backbone.patch_embed.proj.weight
    load_checkpoint(model, official_sd)
    assert model.backbone.patch_embed.proj.weight is before  # copied in place
    assert _same_weights(model, official_sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_nested_state_dict(tmp_path, official_sd, wrapper):
    path = tmp_path / "nested.pt"
    torch.save({wrapper: official_sd, "epoch": 3}, path)
    model = load_checkpoint(build_model(CFG, device="meta"), path)
    assert _same_weights(model, official_sd)


def test_plain_safetensors_with_official_keys(tmp_path, official_sd):
    from safetensors.torch import save_file

    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in official_sd.items()}, str(path))
    model = load_checkpoint(build_model(CFG, device="meta"), path)
    assert _same_weights(model, official_sd)


def test_biomed_encoder_keys_are_skipped(tmp_path, official_sd, caplog):
    sd = dict(official_sd)
    prefix = SKIPPED_PREFIXES[0]
    sd[prefix + "embeddings.word_embeddings.weight"] = torch.zeros(30, 8)
    sd[prefix + "encoder.layer.0.output.dense.bias"] = torch.zeros(8)
    path = tmp_path / "with_bert.pt"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="napari_biomedparse.model.checkpoint"):
        model = load_checkpoint(build_model(CFG, device="meta"), path)
    assert model.checkpoint_info["skipped_keys"] == 2
    assert "Skipped 2 keys" in caplog.text and "BiomedBERT" in caplog.text
    assert _same_weights(model, official_sd)


def test_missing_unexpected_and_shape_errors_name_the_keys(official_sd):
    sd = dict(official_sd)
    del sd["sem_seg_head.predictor.query_feat.weight"]
    sd["sem_seg_head.predictor.extra.weight"] = torch.zeros(3)
    sd["backbone.norm0.weight"] = torch.zeros(17)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_model(CFG, device="meta"), sd)
    msg = str(info.value)
    assert "1 missing key(s), first: 'sem_seg_head.predictor.query_feat.weight'" in msg
    assert "1 unexpected key(s), first: 'sem_seg_head.predictor.extra.weight'" in msg
    assert "'backbone.norm0.weight' is [17] in the checkpoint but [16] in the model" in msg
    assert "expects a checkpoint saved from the same configuration" in msg


def test_wrong_configuration_says_which_checkpoint_was_expected():
    v1 = build_model(BiomedParseConfig.biomedparse_v1(), device="meta")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(v1, DATA / "state_dict.pt")
    msg = str(info.value)
    assert "biomedparse_v1.pt" in msg and "microsoft/BiomedParse" in msg
    assert "embed_dim=16" in msg


def test_pickle_that_is_not_a_plain_state_dict(tmp_path, official_sd):
    path = tmp_path / "object.pt"
    torch.save({"args": argparse.Namespace(lr=1), "state_dict": official_sd}, path)
    with pytest.raises(CheckpointError, match="not a plain state dict.*weights_only"):
        load_checkpoint(build_model(CFG, device="meta"), path)
    path2 = tmp_path / "strings.pt"
    torch.save({"backbone.norm0.weight": "not a tensor"}, path2)
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_checkpoint(build_model(CFG, device="meta"), path2)
    path3 = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path3)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        load_checkpoint(build_model(CFG, device="meta"), path3)


def test_truncated_files(tmp_path):
    raw = (DATA / "state_dict.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(build_model(CFG, device="meta"), path)
    model = build_model(CFG)
    full = tmp_path / "ours.safetensors"
    save_checkpoint(model, full)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(build_model(CFG, device="meta"), cut)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, tmp_path / "absent.pt")


def test_save_and_reload_round_trip(tmp_path, official_sd):
    model = load_checkpoint(build_model(CFG, device="meta"), official_sd)
    meta = {
        "name": "tiny-test",
        "target_dist": {"Pathology": {"neoplastic cells": [[1, 2]] * 4}},
        "vocabulary": {"Pathology": ["neoplastic cells", "inflammatory cells"]},
    }
    path = save_checkpoint(model, tmp_path / "tiny.safetensors", metadata=meta)
    header = read_checkpoint_metadata(path)
    assert header["config"] == CFG
    assert header["name"] == "tiny-test" and header["vocabulary"] == meta["vocabulary"]
    again = model_from_checkpoint(path)
    assert again.config == CFG and again.metadata == meta
    assert _same_weights(again, official_sd)
    assert not again.training
    # a stored configuration that differs from the model's is refused with a hint
    other = build_model(BiomedParseConfig.tiny(), device="meta")
    with pytest.raises(CheckpointError, match="different configuration.*load_model"):
        load_checkpoint(other, path)
    with pytest.raises(ValueError, match="Unknown metadata"):
        save_checkpoint(model, tmp_path / "x.safetensors", metadata={"colour": 1})
    json.dumps(header["target_dist"])  # plain JSON types


def test_half_precision_file_loads_as_float32(tmp_path, official_sd):
    model = load_checkpoint(build_model(CFG, device="meta"), official_sd)
    path = save_checkpoint(model.half(), tmp_path / "half.safetensors")
    again = model_from_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    k = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(again.state_dict()[k], official_sd[k].half().float())
    into = load_checkpoint(build_model(CFG), path)  # materialised model: copied and cast
    assert into.state_dict()[k].dtype == torch.float32


_PEAK_SCRIPT = r"""
import resource, sys, torch
from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint
cfg = BiomedParseConfig.from_dict(__import__("json").loads(sys.argv[2]))
build_model(BiomedParseConfig.tiny(), device="meta")  # warm-up: imports meta-device kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = build_model(cfg, device="meta")
load_checkpoint(model, sys.argv[1])
s = sum(float(p.detach().sum()) for p in model.parameters())  # touch every weight
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024)
"""


def test_loading_does_not_need_two_copies(tmp_path):
    """Peak memory of meta-build + load stays near one copy of the weights (mmap + assign)."""
    import dataclasses

    cfg = dataclasses.replace(
        BiomedParseConfig.tiny(), vocab_size=49408, text_width=512, dim_proj=32
    )
    cfg = dataclasses.replace(cfg, text_heads=8)
    model = build_model(cfg)
    path = tmp_path / "big.pt"
    torch.save(model.state_dict(), path)
    size = path.stat().st_size
    assert size > 100e6
    del model
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), json.dumps(cfg.to_dict())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    growth = float(out.stdout.strip().splitlines()[-1])
    assert growth < 1.3 * size, (growth, size)  # a plain load + copy needs about 2x


def test_random_bytes_and_bad_header_json_get_clear_messages(tmp_path, official_sd):
    import numpy as np

    rnd = tmp_path / "random.pt"
    rnd.write_bytes(b"\x13" + np.random.default_rng(0).bytes(4095))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        model_from_checkpoint(rnd, config=CFG)
    assert "weights_only=False" not in str(info.value)
    # a safetensors file whose metadata entry is not JSON
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"name": "{not json"})
    with pytest.raises(CheckpointError, match="'name' is not valid JSON.*save_checkpoint"):
        read_checkpoint_metadata(bad)
