"""load_model: bundled default, official v1 via path / env / cache / hub (a local stand-in,
never the network), with clear errors when the hub is gated or unreachable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import napari_biomedparse.hub as hub
from napari_biomedparse.hub import ModelUnavailableError, load_model
from napari_biomedparse.model import BiomedParseConfig, build_model, save_checkpoint

DATA = Path(__file__).parent / "data" / "v1_tiny"
CFG = BiomedParseConfig.from_reference_json(DATA / "config.json")
PACKAGED_TD = json.loads(
    (Path(hub.__file__).parent / "inference" / "target_dist_v1.json").read_text()
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty cache, no env overrides, and a hub that fails loudly if reached unexpectedly."""
    monkeypatch.setenv(hub.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.ENV_V1, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used in tests")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # the quick reachability check sees a reachable hub (the stand-ins below answer for it)
    monkeypatch.setattr(hub, "_hub_offline_reason", lambda timeout=3.0: None)
    return tmp_path


def _reference_weights():
    return torch.load(DATA / "state_dict.pt", weights_only=True)


def _check(model, name="biomedparse-v1", target_dist=PACKAGED_TD):
    sd = _reference_weights()
    msd = model.state_dict()
    assert all(torch.equal(msd[k], sd[k]) for k in sd)
    assert not model.training
    assert model.metadata["name"] == name
    assert model.metadata["target_dist"] == target_dist


def test_explicit_path():
    _check(load_model("biomedparse-v1", path=DATA / "state_dict.pt", config=CFG))
    _check(load_model(DATA / "state_dict.pt", config=CFG))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model("biomedparse-v1", path=DATA / "absent.pt", config=CFG)
    with pytest.raises(FileNotFoundError, match="'default', 'biomedparse-v1'"):
        load_model("no/such/model.pt")


def test_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(hub.ENV_V1, str(DATA / "state_dict.pt"))
    _check(load_model("biomedparse-v1", config=CFG))
    monkeypatch.setenv(hub.ENV_V1, str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match=hub.ENV_V1):
        load_model("biomedparse-v1", config=CFG)


def test_cache_directory_with_downloaded_target_dist(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(DATA / "state_dict.pt", cache / hub.V1_FILENAME)
    td = {"Pathology": {"neoplastic cells": [[2.0, 3.0]] * 4}}
    (cache / hub.V1_TARGET_DIST).write_text(json.dumps(td))
    assert hub.cache_dir() == cache
    _check(load_model("biomedparse-v1", config=CFG), target_dist=td)


def test_hub_download_with_local_stand_in(monkeypatch, tmp_path):
    """The hub path: hf_hub_download (replaced by a local stand-in that serves files from a
    folder) fetches biomedparse_v1.pt and target_dist.json into the cache."""
    remote = tmp_path / "remote"
    remote.mkdir()
    shutil.copy(DATA / "state_dict.pt", remote / "biomedparse_v1.pt")
    td = {"Pathology": {"inflammatory cells": [[1.5, 2.5]] * 4}}
    (remote / "target_dist.json").write_text(json.dumps(td))
    calls = []

    def stand_in(repo_id, filename, local_dir=None, token=None, **kwargs):
        calls.append((repo_id, filename, token))
        dest = Path(local_dir) / filename
        shutil.copy(remote / filename, dest)
        return str(dest)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", stand_in)
    model = load_model("biomedparse-v1", config=CFG, token="hf_test")
    _check(model, target_dist=td)
    assert calls == [
        ("microsoft/BiomedParse", "biomedparse_v1.pt", "hf_test"),
        ("microsoft/BiomedParse", "target_dist.json", "hf_test"),
    ]
    cache = tmp_path / "cache"
    assert (cache / "biomedparse_v1.pt").is_file()
    # the second call finds the cache and does not download again
    _check(load_model("biomedparse-v1", config=CFG), target_dist=td)
    assert len(calls) == 2


def _hub_error(cls, message):
    err = cls.__new__(cls)  # the constructors differ between huggingface_hub versions
    Exception.__init__(err, message)
    return err


def test_gated_repository_fails_fast_with_instructions(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise _hub_error(GatedRepoError, "Access to model microsoft/BiomedParse is restricted")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(ModelUnavailableError) as info:
        load_model("biomedparse-v1", config=CFG)
    msg = str(info.value)
    assert "gated" in msg and "accept the licence" in msg and "HF_TOKEN" in msg
    assert hub.ENV_V1 in msg and "path" in msg


def test_unreachable_hub_fails_fast(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot reach https://huggingface.co")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        load_model("biomedparse-v1", config=CFG)

    def connection(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", connection)
    with pytest.raises(ModelUnavailableError, match="ConnectionError.*HF_TOKEN"):
        load_model("biomedparse-v1", config=CFG)
    with pytest.raises(ModelUnavailableError, match="downloading is disabled"):
        load_model("biomedparse-v1", config=CFG, download=False)


def test_default_model(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "DEFAULT_WEIGHTS", tmp_path / "weights" / "default.safetensors")
    with pytest.raises(FileNotFoundError, match="bundled default model"):
        load_model("default")
    tiny = build_model(BiomedParseConfig.tiny())
    vocab = {"Pathology": ["neoplastic cells"]}
    save_checkpoint(tiny, hub.DEFAULT_WEIGHTS, metadata={"name": "default", "vocabulary": vocab})
    model = load_model("default")
    assert model.config == BiomedParseConfig.tiny()
    assert model.metadata == {"name": "default", "target_dist": None, "vocabulary": vocab}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny.parameters()))
    # a saved checkpoint is a complete drop-in through load_model(path)
    again = load_model(hub.DEFAULT_WEIGHTS)
    assert again.config == tiny.config and again.metadata["vocabulary"] == vocab


def test_offline_fails_at_once_with_one_clear_message(monkeypatch, capsys, tmp_path):
    """HF_HUB_OFFLINE, or a hub address where nothing answers: no retries, no traceback."""
    import socket
    import time

    monkeypatch.undo()  # the real reachability check (the hub download stays forbidden)
    monkeypatch.setenv(hub.ENV_CACHE, str(tmp_path / "empty-cache"))
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the download must not be attempted when offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv(hub.ENV_V1, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE.*HF_TOKEN"):
        load_model("biomedparse-v1", config=CFG)
    assert time.perf_counter() - t0 < 2
    # a closed local port as the hub endpoint: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="no connection to 127.0.0.1"):
        load_model("biomedparse-v1", config=CFG)
    assert time.perf_counter() - t0 < 5
    # the command line: one line, exit 1
    from napari_biomedparse.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    slide = Path(__file__).parent / "data" / "openslide_fixtures" / "small.svs"
    rc = main(["slide", str(slide), "-o", str(tmp_path / "o"), "--model", "biomedparse-v1"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE" in err


def test_load_model_on_a_folder_says_what_to_pass(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="is a folder.*weights.safetensors"):
        load_model(tmp_path / "m")
