"""The one prompt parser and the one device / precision parser, and their CLI messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_biomedparse.errors import InvalidInputError
from napari_biomedparse.inference.devices import dtype_name, resolve_device, resolve_dtype
from napari_biomedparse.inference.prompts import parse_prompts, split_prompts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "napari_biomedparse" / "data"


def test_parse_prompts_strings_lists_dedupe_and_errors():
    assert parse_prompts("neoplastic cells") == ["neoplastic cells"]
    assert parse_prompts(" neoplastic cells ; inflammatory cells,\nnuclei ") == [
        "neoplastic cells",
        "inflammatory cells",
        "nuclei",
    ]
    # lists: items stripped (and split), duplicates dropped (case / spacing insensitive)
    assert parse_prompts(["a b", "A  b", " c ", "d, a b"]) == ["a b", "c", "d"]
    assert split_prompts(" , ;") == []
    for bad, match in [
        (None, "no prompts given"),
        ([], "prompt list is empty"),
        (" ,; ", "prompt list is empty"),
        (["ok", 3], "must be"),
        (5, "string or a list"),
        (["cells\ud800"], "not valid text"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            parse_prompts(bad)
    with pytest.raises(ValueError, match="target list is empty"):
        parse_prompts("", what="target")
    # strict (model-level calls, one map per prompt given): no splitting, no dedupe
    assert parse_prompts(["a, b", "a, b"], strict=True) == ["a, b", "a, b"]
    with pytest.raises(ValueError, match="non-empty strings"):
        parse_prompts(["liver", ""], strict=True)


def test_tasks_use_the_parser(bundled_predictor):
    import numpy as np

    img = np.full((64, 64, 3), 200, np.uint8)
    probs = bundled_predictor.segment(img, "nuclei; nuclei", modality="pathology")
    assert probs.shape == (1, 64, 64)


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InvalidInputError, match="unknown device 'bogus'.*auto, cpu, cuda"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(
            InvalidInputError, match="no usable CUDA GPU: use the device cpu or auto"
        ):
            resolve_device("cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(InvalidInputError, match=f"only {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")
    assert resolve_dtype(None) is None and resolve_dtype("fp32") is None
    assert resolve_dtype(torch.float32) is None
    assert resolve_dtype("BF16") is torch.bfloat16 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype(torch.float16) is torch.float16
    assert [dtype_name(d) for d in (None, "bfloat16", torch.float16)] == ["fp32", "bf16", "fp16"]
    for bad in ("int8", torch.int8, 16):
        with pytest.raises(InvalidInputError, match="fp32.*bf16.*fp16"):
            resolve_dtype(bad)


@pytest.mark.parametrize("device", ["bogus", "cuda"])
@pytest.mark.parametrize("command", ["segment", "slide"])
def test_cli_bad_device_is_one_line(command, device, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"
    from napari_biomedparse.cli import main

    if command == "segment":
        argv = ["segment", str(DATA / "hgsc_nest.jpg"), "--prompt", "nuclei"]
        argv += ["--modality", "pathology", "--out", str(tmp_path / "p.npy")]
    else:
        argv = ["slide", str(DATA / "cmu_small_region.svs"), "-o", str(tmp_path / "out")]
    code = main([*argv, "--device", device])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("napari-biomedparse: error:"), err
    assert "Traceback" not in err[0]
    assert "--device cpu" in err[0] or "auto, cpu" in err[0]  # says what to use
    assert not any(tmp_path.iterdir())  # nothing written
