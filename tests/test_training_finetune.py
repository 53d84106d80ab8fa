"""Fine-tuning: loss goes down, frozen parameters stay, checkpoints reload identically, CLI."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_biomedparse.model.build import build_model
from napari_biomedparse.model.config import BiomedParseConfig
from napari_biomedparse.training.data import AnnotatedImage
from napari_biomedparse.training.finetune import finetune, parameter_groups, predict_tiles

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {1: "connective tissue cells", 2: "inflammatory cells", 3: "neoplastic cells"}


@functools.lru_cache(maxsize=1)
def _hgsc():
    from skimage import io

    img = io.imread(ROOT / "src/napari_biomedparse/data/hgsc_nest.jpg")
    typ = np.load(ROOT / "tests/data/hgsc_nest_type_mask.npz")["nuc_raster"]
    inst = np.load(ROOT / "tests/data/hgsc_nest_inst_mask.npz")["nuc_raster"]
    return img, typ, inst


def _crop(y: int, x: int, size: int = 128) -> AnnotatedImage:
    """A real annotated H&E crop of hgsc_nest."""
    img, typ, inst = _hgsc()
    sl = (slice(y, y + size), slice(x, x + size))
    return AnnotatedImage(img[sl], typ[sl], dict(PROMPTS), instances=inst[sl], name="crop")


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(BiomedParseConfig.tiny(input_size=128))
    m.metadata = {"name": "tiny", "target_dist": None, "vocabulary": None}
    return m


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Eight steps on one fixed 128 px tile (no augmentation), backbone and text frozen."""
    torch.set_num_threads(2)
    model = _tiny_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("ft") / "tuned.safetensors"
    res = finetune(
        model,
        [_crop(100, 100)],
        [_crop(500, 100)],
        steps=8,
        batch_size=2,
        lr=3e-3,
        warmup=1,
        freeze=["backbone", "text_encoder"],
        augment=False,
        device="cpu",
        out=out,
        name="tiny-tuned",
        existence_tiles=4,
        log_every=1,
    )
    return model, before, res


def test_loss_decreases(tuned):
    _, _, res = tuned
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2])


def test_frozen_parameters_unchanged_and_trained_ones_changed(tuned):
    model, before, res = tuned
    groups = parameter_groups(model)
    state = model.state_dict()
    for name in groups["backbone"] + groups["text_encoder"]:
        assert torch.equal(state[name], before[name]), name
    changed = [
        n
        for n in groups["decoder"] + groups["pixel_decoder"]
        if not torch.equal(state[n], before[n])
    ]
    # every trainable tensor that gets a gradient moved (spatial-prompt parameters get none)
    assert len(changed) > 0.7 * len(groups["decoder"] + groups["pixel_decoder"])
    assert set(res.trainable) == set(groups["decoder"] + groups["pixel_decoder"])
    assert "sem_seg_head.predictor.query_feat.weight" in changed
    assert "sem_seg_head.pixel_decoder.mask_features.weight" in changed


def test_checkpoint_reloads_identically(tuned):
    from napari_biomedparse.hub import load_model

    model, _, res = tuned
    assert res.path is not None and res.path.exists()
    loaded = load_model(str(res.path))
    assert loaded.metadata["name"] == "tiny-tuned"
    # trained on 128 px tiles: applied in tiles (no mpp given, none inherited)
    assert loaded.metadata["inference"] == {"mode": "tiled", "tile_size": 128, "overlap": 32}
    assert loaded.metadata["vocabulary"]["pathology"] == list(PROMPTS.values())
    td = loaded.metadata["target_dist"]["pathology"]
    assert set(td) <= set(PROMPTS.values()) and td
    assert all(np.asarray(v).shape == (4, 2) for v in td.values())
    rgb = _crop(600, 600).image
    a = predict_tiles(model.eval(), rgb, ["neoplastic cells", "nuclei"], tile_size=128)
    b = predict_tiles(loaded, rgb, ["neoplastic cells", "nuclei"], tile_size=128)
    np.testing.assert_array_equal(a, b)
    assert res.val_dice and set(res.val_dice) == set(PROMPTS.values())


def test_cancel_stops_early_and_nothing_is_written_when_asked(tmp_path):
    cancel = threading.Event()

    def progress(done, total, message):
        if done >= 2:
            cancel.set()

    out = tmp_path / "c.safetensors"
    res = finetune(
        _tiny_model(),
        [_crop(100, 100)],
        steps=50,
        batch_size=1,
        freeze="backbone",
        augment=False,
        device="cpu",
        out=out,
        existence_tiles=0,
        log_every=1,
        progress=progress,
        cancel=cancel,
        save_on_cancel=False,
    )
    assert res.cancelled and res.steps == 2 and res.path is None and not out.exists()


def test_bad_arguments_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot freeze"):
        finetune(_tiny_model(), [_crop(0, 0)], steps=1, freeze="encoder", device="cpu")
    with pytest.raises(ValueError, match="nothing would be trained"):
        finetune(
            _tiny_model(),
            [_crop(0, 0)],
            steps=1,
            device="cpu",
            freeze="backbone,pixel_decoder,text_encoder,decoder",
        )
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite"):
        finetune(
            _tiny_model(), [_crop(0, 0)], steps=1, device="cpu", out=tmp_path / "x.safetensors"
        )
    with pytest.raises(ValueError, match="safetensors"):
        finetune(_tiny_model(), [_crop(0, 0)], steps=1, device="cpu", out=tmp_path / "x.pt")


def test_cli_finetune_from_folder(tmp_path, capsys):
    import json

    import tifffile
    from skimage import io

    from napari_biomedparse.cli import main

    crop = _crop(100, 100)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    io.imsave(tmp_path / "data/images/a.png", crop.image, check_contrast=False)
    tifffile.imwrite(tmp_path / "data/labels/a.tif", crop.classes.astype(np.uint8))
    (tmp_path / "data/dataset.json").write_text(
        json.dumps({"modality": "pathology", "prompts": {str(k): v for k, v in PROMPTS.items()}})
    )
    out = tmp_path / "cli.safetensors"
    rc = main(
        [
            "finetune",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--model",
            "scratch:tiny",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--tile-size",
            "128",
            "--device",
            "cpu",
            "--freeze",
            "none",
        ]
    )
    assert rc == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    # a missing folder is one clear error line, not a traceback
    assert (
        main(
            [
                "finetune",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "n.safetensors"),
                "--model",
                "scratch:tiny",
                "--steps",
                "1",
            ]
        )
        == 1
    )


def test_cpu_training_is_deterministic_given_the_seed():
    def run(workers):
        m = _tiny_model(seed=1)
        finetune(
            m,
            [_crop(300, 300, 160)],
            steps=2,
            batch_size=2,
            tile_size=128,
            lr=1e-3,
            freeze=None,
            device="cpu",
            seed=5,
            existence_tiles=0,
            workers=workers,
        )
        return m.state_dict()

    a, b = run(0), run(2)  # tiles made in threads are the same tiles
    assert all(torch.equal(a[k], b[k]) for k in a)
