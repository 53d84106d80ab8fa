"""Offline CLIP tokenizer: ids identical to the official tokenizer (clip_token_ids.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from napari_biomedparse.model import ClipTokenizer
from napari_biomedparse.model.tokenizer import default_vocab_path

IDS = json.loads((Path(__file__).parent / "data" / "clip_token_ids.json").read_text())


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def _all_strings():
    out = [(text, e) for text, e in IDS["entries"].items()]
    for entries in IDS["default_text_embedding_prompts"]["per_class"].values():
        out += [(e["text"], e) for e in entries]
    return out


def test_every_reference_string(tok):
    strings = _all_strings()
    assert len(strings) == IDS["tokenizer"]["open_clip_crosscheck"]["strings_checked"] == 1443
    texts = [t for t, _ in strings]
    ids, mask = tok(texts)
    assert ids.shape == mask.shape == (len(texts), 77) and ids.dtype == torch.int64
    for row, (text, e) in enumerate(strings):
        n = e["num_tokens"]
        assert ids[row, :n].tolist() == e["ids"], text
        assert int(mask[row].sum()) == n
        assert (ids[row, n:] == e["pad_id_after"]).all()
        assert int(ids[row].argmax()) == e["eot_index"]


def test_special_tokens_and_cleaning(tok):
    info = IDS["tokenizer"]
    assert tok.vocab_size == info["vocab_size"] == 49408
    assert tok.bos_id == 49406 and tok.eos_id == tok.pad_id == 49407
    ids, mask = tok(["COVID-19  Infection", "covid-19 infection"])
    assert torch.equal(ids[0], ids[1])  # lower-cased, whitespace collapsed
    assert ids[0, : int(mask[0].sum())].tolist() == IDS["entries"]["COVID-19 infection"]["ids"]
    empty, m = tok([""])
    assert empty[0, :2].tolist() == [49406, 49407] and int(m.sum()) == 2
    assert tok.decode(tok.encode("neoplastic cells")) == "neoplastic cells"


def test_truncation_keeps_eos(tok):
    ids, mask = tok(["cell " * 100])
    assert int(mask.sum()) == 77
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert int(ids[0].argmax()) == 76
    short, _ = tok(["cell " * 100], context_length=10)
    assert short.shape == (1, 10) and short[0, -1] == 49407


def test_vocabulary_file_is_packaged_with_licence():
    path = default_vocab_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    licence = (path.parent / "BPE_VOCAB_LICENSE.md").read_text()
    assert "MIT" in licence and "OpenAI" in licence


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab"):
        ClipTokenizer(tmp_path / "missing.txt.gz")
    with pytest.raises(TypeError, match="str"):
        ClipTokenizer().encode(3)
