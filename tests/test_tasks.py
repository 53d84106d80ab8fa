"""segment / detect / recognize end to end: a deterministic stand-in predictor for the plumbing,
the real tiny BiomedParse fixture for the model path (official outputs in v1_tiny/final.pt)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_biomedparse.inference.existence import existence_p_values
from napari_biomedparse.inference.preprocessing import preprocess, unpad
from napari_biomedparse.inference.recognition import recognize_maps
from napari_biomedparse.inference.tasks import detect, recognize, segment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "v1_tiny"


@pytest.fixture(scope="module")
def hne():
    """A non-square crop of the real H&E sample (exercises the official padding)."""
    img = np.asarray(Image.open(ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"))
    return np.ascontiguousarray(img[300:560, 500:700])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class StandIn:
    """Deterministic predictor: maps derived from the image's colours, per prompt.

    "neoplastic cells": dark (haematoxylin) pixels; "inflammatory cells": very dark pixels;
    "connective tissue cells": pink (eosin) pixels; "epithelial cells" and "bright": the white
    background; anything else: near-zero maps.
    """

    def __init__(self, size=128, vocabulary=None, target_dist=None):
        meta = {"name": "stand-in", "target_dist": target_dist, "vocabulary": vocabulary}
        self.model = SimpleNamespace(config=SimpleNamespace(input_size=size), metadata=meta)
        self.size = size
        self.calls: list[tuple] = []

    def predict(self, rgb, prompts, joint=False):
        assert rgb.dtype == np.uint8 and rgb.shape == (self.size, self.size, 3)
        self.calls.append((tuple(prompts), joint))
        f = rgb.astype(np.float32) / 255.0
        grey = f.mean(-1)
        maps = []
        for p in prompts:
            if p == "neoplastic cells":
                m = _sigmoid((0.45 - grey) * 25)
            elif p == "inflammatory cells":
                m = _sigmoid((0.3 - grey) * 30)
            elif p == "connective tissue cells":
                m = _sigmoid((f[..., 0] - f[..., 2] - 0.05) * 30) * (grey < 0.8)
            elif p in ("epithelial cells", "bright"):
                m = _sigmoid((grey - 0.75) * 30)
            else:
                m = np.full(grey.shape, 0.01)
            maps.append(m)
        return np.stack(maps).astype(np.float32)


def _by_hand(pred, image, prompts, modality="pathology"):
    rgb, info = preprocess(image, modality, size=pred.size)
    sq = pred.predict(rgb, prompts)
    return rgb, sq, unpad(sq, info)


# ------------------------------------------------------------------ segment
def test_segment_equals_the_manual_pipeline(hne):
    pred = StandIn()
    prompts = ["neoplastic cells", "bright"]
    probs = segment(pred, hne, prompts, modality="pathology")
    assert probs.dtype == np.float32 and probs.shape == (2, *hne.shape[:2])
    _, _, ref = _by_hand(StandIn(), hne, prompts)
    np.testing.assert_array_equal(probs, ref)
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    # dark nuclei are found where the image is dark, at the input's own pixel grid
    dark = hne.mean(-1) < 90
    assert probs[0][dark].mean() > 0.7 and probs[0][hne.mean(-1) > 200].mean() < 0.1
    assert pred.calls == [(tuple(prompts), False)]  # one call: encoded once


def test_segment_3d_numpy_and_dask_equal_looping_by_hand(hne):
    import dask.array as da

    stack = np.stack([hne, hne[:, ::-1], np.ascontiguousarray(hne[::-1])])  # (Z, H, W, 3)
    pred = StandIn()
    out = segment(pred, stack, ["neoplastic cells"], modality="pathology")
    assert out.shape == (1, 3, *hne.shape[:2])
    for z in range(3):
        np.testing.assert_array_equal(
            out[:, z], segment(StandIn(), stack[z], ["neoplastic cells"], modality="pathology")
        )
    lazy_pred = StandIn()
    lazy = segment(
        lazy_pred,
        da.from_array(stack, chunks=(1, 100, 100, 3)),
        ["neoplastic cells"],
        modality="pathology",
    )
    assert isinstance(lazy, da.Array) and lazy_pred.calls == []  # nothing ran yet
    np.testing.assert_array_equal(lazy[:, 1].compute(), out[:, 1])
    assert len(lazy_pred.calls) == 1  # only the slice asked for
    np.testing.assert_array_equal(lazy.compute(), out)


def test_segment_grey_fluorescence_stack_with_channels():
    import dask.array as da
    import tifffile

    img = tifffile.imread(ROOT / "src" / "napari_biomedparse" / "data" / "stardist_img2d.tif")
    stack = np.stack([img[:128, :160], img[128:256, :160], img[256:384, 100:260]])  # (3, 128, 160)
    out = segment(StandIn(), stack, ["bright"], modality="fluorescence")
    by_hand = np.stack(
        [segment(StandIn(), s, ["bright"], modality="fluorescence") for s in stack], 1
    )
    np.testing.assert_array_equal(out, by_hand)
    lazy = segment(StandIn(), da.from_array(stack, chunks=(1, 64, 64)), ["bright"], modality="fluo")
    np.testing.assert_array_equal(lazy.compute(), by_hand)
    # a (C, Z, H, W) multichannel stack: channel 1 picked along axis 0
    multi = np.stack([np.zeros_like(stack), stack])
    picked = segment(
        StandIn(),
        multi,
        ["bright"],
        modality="fluorescence",
        channels=[1],
        channel_axis=0,
        is_3d=True,
    )
    np.testing.assert_array_equal(picked, by_hand)


# ------------------------------------------------------------------ detect
def test_detect_p_values_instances_and_flags(hne):
    pred = StandIn()
    prompts = ["neoplastic cells", "epithelial cells", "tumour buds", "inflammatory cells"]
    det = detect(pred, hne, prompts, modality="pathology", mpp=0.5)
    rgb, sq, probs = _by_hand(StandIn(), hne, prompts)
    np.testing.assert_array_equal(det.probs, probs)
    # the official test on the preprocessed square image, exactly as the notebooks call it
    np.testing.assert_array_equal(det.p_values, existence_p_values(rgb, sq, "Pathology", prompts))
    assert det.testable.tolist() == [True, True, False, True]
    assert np.isnan(det.p_values[2])
    assert det.in_vocabulary.tolist() == [True, True, False, True]
    # nuclei look like nuclei; the white background called "epithelial cells" does not
    assert det.p_values[0] > 0.05 and det.p_values[1] < 0.05
    assert det.present.tolist()[:2] == [True, False]
    assert not det.present[2]  # not testable is run and kept, but its map is empty
    assert (det.labels[1] == 0).all()
    t = det.table
    assert set(t["prompt"]) <= {"neoplastic cells", "inflammatory cells"}
    assert (t["class"] == t["prompt"]).all()
    n0 = len(np.unique(det.labels[0])) - 1
    assert n0 > 10 and (t["prompt"] == "neoplastic cells").sum() == n0
    assert t["label"].is_unique and set(t["label"]) == set(np.unique(det.labels[det.labels > 0]))
    assert (t["area_um2"] == t["area"] * 0.25).all()
    assert (t["bbox_y1"] <= hne.shape[0]).all() and (t["bbox_x1"] <= hne.shape[1]).all()
    outlines = det.outlines()
    assert set(outlines) == set(t["label"])
    summary = det.summary()
    assert summary["n_instances"].tolist()[0] == n0 and summary["testable"].tolist()[2] is False


def test_detect_free_text_prompt_is_testable_with_model_statistics(hne):
    td = {"Pathology": {"tumour buds": [[20, 3], [5, 8], [3, 10], [6, 7]]}}
    det = detect(StandIn(target_dist=td), hne, ["tumour buds"], modality="pathology")
    assert det.testable.tolist() == [True] and det.in_vocabulary.tolist() == [False]
    # explicitly the official statistics instead of the model's: not testable again
    det2 = detect(
        StandIn(target_dist=td), hne, ["tumour buds"], modality="pathology", target_dist="v1"
    )
    assert det2.testable.tolist() == [False]


def test_detect_3d_matches_slices(hne):
    stack = np.stack([hne, np.ascontiguousarray(hne[:, ::-1])])
    det = detect(StandIn(), stack, ["neoplastic cells"], modality="pathology")
    assert det.p_values.shape == (1, 2) and det.labels.shape == (1, 2, *hne.shape[:2])
    for z in range(2):
        d = detect(StandIn(), stack[z], ["neoplastic cells"], modality="pathology")
        assert det.p_values[0, z] == d.p_values[0]
        assert (det.table["z"] == z).sum() == len(d.table)
    assert det.table["label"].is_unique


# ------------------------------------------------------------------ recognize
def test_recognize_3d_dask_equals_slices(hne):
    import dask.array as da

    stack = np.stack([hne, np.ascontiguousarray(hne[::-1])])
    rec = recognize(StandIn(), da.from_array(stack, chunks=(1, 130, 100, 3)), modality="pathology")
    assert rec.labels.shape == rec.classes.shape == stack.shape[:3]
    assert rec.p_values.shape == (4, 2) and rec.probs.shape == (4, *stack.shape[:3])
    offset = 0
    for z in range(2):
        r = recognize(StandIn(), stack[z], modality="pathology")
        np.testing.assert_array_equal(rec.classes[z], r.classes)
        np.testing.assert_array_equal(rec.p_values[:, z], r.p_values)
        np.testing.assert_array_equal(rec.labels[z], np.where(r.labels > 0, r.labels + offset, 0))
        offset += int(r.labels.max())
        assert (rec.table["z"] == z).sum() == len(r.table)
    assert rec.table["label"].is_unique
    assert set(rec.outlines()) == set(rec.table["label"])


def test_recognize_official_rules_and_instances(hne):
    pred = StandIn()
    rec = recognize(pred, hne, modality="pathology", mpp=0.25)
    targets = [
        "connective tissue cells",
        "inflammatory cells",
        "neoplastic cells",
        "epithelial cells",
    ]
    assert rec.class_names == targets
    rgb, sq, probs = _by_hand(StandIn(), hne, targets)
    pv = existence_p_values(rgb, sq, "Pathology", targets)
    np.testing.assert_array_equal(rec.p_values, pv)
    cmap, kept = recognize_maps(probs, targets, pv, 0.05)
    np.testing.assert_array_equal(rec.classes, cmap)
    assert rec.kept == kept and "epithelial cells" not in rec.kept
    # every instance lies in one class region and carries that class in the table
    t = rec.table.set_index("label")
    for lab in np.unique(rec.labels[rec.labels > 0]):
        cls = np.unique(rec.classes[rec.labels == lab])
        assert len(cls) == 1 and t.loc[lab, "class_id"] == cls[0]
        assert t.loc[lab, "class"] == targets[cls[0] - 1]
    # the p-value of each class is reported once per class, not per object
    assert "p_value" not in rec.table.columns
    np.testing.assert_array_equal(rec.summary()["p_value"].to_numpy(), pv)
    assert ((rec.labels > 0) <= (rec.classes > 0)).all()
    assert (rec.table["area_um2"] == rec.table["area"] * 0.0625).all()
    assert rec.counts().sum() == len(rec.table) > 10
    # official batching: one call per target by default (the predictor encodes once)
    assert pred.calls == [(tuple(targets), False)]


def test_recognize_targets_from_model_vocabulary_and_errors(hne):
    pred = StandIn(vocabulary={"fluorescence": ["bright"], "pathology": ["neoplastic cells"]})
    rec = recognize(pred, hne[..., 0], modality="fluorescence")
    assert rec.class_names == ["bright"] and np.isnan(rec.p_values[0])  # not testable, kept
    assert rec.kept == ["bright"]
    assert recognize(pred, hne, modality="pathology").class_names == ["neoplastic cells"]
    with pytest.raises(ValueError, match="no known targets for Fluorescence"):
        recognize(StandIn(), hne[..., 0], modality="fluorescence")
    with pytest.raises(ValueError, match="give site="):
        recognize(StandIn(), hne[..., 0], modality="MRI")
    with pytest.raises(ValueError, match="prompt list is empty"):
        segment(StandIn(), hne, [], modality="pathology")
    with pytest.raises(ValueError, match="unknown modality 'histo-x'.*Pathology"):
        detect(StandIn(), hne, ["nuclei"], modality="histo-x")
    with pytest.raises(ValueError, match="ambiguous image of shape"):
        segment(StandIn(), np.zeros((64, 64, 6), np.uint16), ["x"], modality="fluorescence")
    with pytest.raises(ValueError, match="5 channels"):
        segment(
            StandIn(), np.zeros((32, 32, 5), np.uint16), ["x"], modality="fluorescence", is_3d=False
        )


def test_recognize_ct_in_hounsfield_units():
    """A CT slice in HU through the abdomen window; the stand-in finds bright structures."""
    yy, xx = np.mgrid[:96, :80]
    hu = np.full((96, 80), -1000, np.int16)
    body = np.hypot(yy - 48, xx - 40) < 36
    hu[body] = 40
    hu[np.hypot(yy - 40, xx - 30) < 8] = 200  # contrast-enhanced organ
    rec = recognize(StandIn(), hu, modality="CT-Abdomen", targets=["bright", "liver"])
    assert rec.image_type == "CT-Abdomen" and rec.classes.shape == hu.shape
    assert np.isnan(rec.p_values[0]) and not np.isnan(rec.p_values[1])
    assert rec.classes[40, 30] == 1 and rec.classes[5, 5] == 0


# ------------------------------------------------------------------ CLI
def test_cli_segment_and_recognize(tmp_path, monkeypatch, hne):
    import pandas as pd
    import tifffile

    from napari_biomedparse.cli import main
    from napari_biomedparse.inference import cli as icli

    monkeypatch.setattr(icli, "_predictor", lambda args: StandIn())
    path = tmp_path / "crop.png"
    Image.fromarray(hne).save(path)
    out = tmp_path / "probs.npy"
    rc = main(
        [
            "segment",
            str(path),
            "--prompt",
            "neoplastic cells",
            "--prompt",
            "bright",
            "--modality",
            "pathology",
            "--out",
            str(out),
            "--table",
            str(tmp_path / "d.csv"),
        ]
    )
    assert rc == 0
    np.testing.assert_array_equal(
        np.load(out), segment(StandIn(), hne, ["neoplastic cells", "bright"], modality="pathology")
    )
    assert len(pd.read_csv(tmp_path / "d.csv")) > 0
    assert (
        main(["segment", str(path), "--prompt", "x", "--modality", "pathology", "--out", str(out)])
        == 1
    )  # exists, no --overwrite
    rdir = tmp_path / "rec"
    assert (
        main(
            ["recognize", str(path), "--modality", "pathology", "--out", str(rdir), "--mpp", "0.5"]
        )
        == 0
    )
    labels = tifffile.imread(rdir / "labels.tif")
    table = pd.read_csv(rdir / "table.csv")
    classes = pd.read_csv(rdir / "classes.csv")
    assert labels.shape == hne.shape[:2] and len(table) == len(np.unique(labels)) - 1
    assert classes["class"].tolist()[2] == "neoplastic cells"
    assert main(["recognize", str(path), "--modality", "nope", "--out", str(rdir)]) == 1


# ------------------------------------------------------------------ the real tiny model
@pytest.fixture(scope="module")
def tiny():
    import torch

    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

    m = build_model(BiomedParseConfig.from_reference_json(TINY / "config.json"), device="meta")
    load_checkpoint(m, TINY / "state_dict.pt")
    m.compute_default_text_embeddings()
    torch.manual_seed(0)
    return Predictor(m, device="cpu")


def test_tiny_model_segment_reproduces_official_maps(tiny):
    """A 1024 x 1024 RGB pathology image passes the preset unchanged: segment() must give the
    official interactive_infer_image maps of the fixture."""
    import torch

    final = torch.load(TINY / "final.pt", weights_only=True)
    image = np.load(TINY / "image_a.npy")
    ref = final["image_a"][0]
    probs = segment(tiny, image, ref["prompts"], modality="pathology")
    assert probs.shape == (1, 1024, 1024)
    sub = ref["prob"]
    if isinstance(sub, dict):  # stored as a subset (see v1_tiny/README.md)
        x = torch.from_numpy(probs)
        c = sub["crop"]
        grid = x.index_select(-2, sub["rows"]).index_select(-1, sub["cols"])
        err = max(
            (grid - sub["grid"]).abs().max().item(),
            (x[..., :c, :c] - sub["crop_tl"]).abs().max().item(),
            (x[..., -c:, -c:] - sub["crop_br"]).abs().max().item(),
        )
    else:
        err = np.abs(probs - sub.numpy()).max()
    assert err < 2e-4


def test_tiny_model_detect_and_recognize_end_to_end(tiny, hne):
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.model import build_model

    small_model = build_model(dataclasses.replace(tiny.model.config, input_size=256))
    small_model.load_state_dict(tiny.model.state_dict())
    small_model.compute_default_text_embeddings()
    pred = Predictor(small_model, device="cpu")
    prompts = ["neoplastic cells", "inflammatory cells"]
    det = pred.detect(hne, prompts, modality="pathology")
    assert det.probs.shape == (2, *hne.shape[:2]) and det.testable.all()
    rgb, info = preprocess(hne, "pathology", size=256)
    sq = pred.predict(rgb, prompts)
    np.testing.assert_allclose(det.probs, unpad(sq, info), atol=1e-6)
    np.testing.assert_allclose(det.p_values, existence_p_values(rgb, sq, "pathology", prompts))
    rec = pred.recognize(hne, modality="pathology", p_threshold=None)
    assert rec.probs.shape == (4, *hne.shape[:2])
    cmap, kept = recognize_maps(rec.probs, rec.class_names, rec.p_values, None)
    np.testing.assert_array_equal(rec.classes, cmap)
    assert rec.kept == kept and len(rec.table) == len(np.unique(rec.labels)) - 1
    assert segment(pred, hne, prompts[:1], modality="pathology").shape == (1, *hne.shape[:2])
    # official batches: batch_size prompts coupled in one call (image encoded once)
    rec2 = pred.recognize(hne, modality="pathology", p_threshold=None, batch_size=3)
    names = rec2.class_names
    coupled = np.concatenate(
        [pred.predict(rgb, names[:3], joint=True), pred.predict(rgb, names[3:], joint=True)]
    )
    np.testing.assert_allclose(rec2.probs, unpad(coupled, info), atol=1e-5)
    assert np.abs(rec2.probs[:3] - rec.probs[:3]).max() > 1e-3  # coupling changes the maps


# ------------------------------------------------------------------ strategy, progress, cancel
def test_predictor_methods_have_the_task_signatures():
    import inspect

    from napari_biomedparse.inference import tasks
    from napari_biomedparse.inference.predictor import Predictor

    for name in ("segment", "detect", "recognize"):
        ours = inspect.signature(getattr(Predictor, name)).parameters
        theirs = inspect.signature(getattr(tasks, name)).parameters
        assert list(ours)[1:] == list(theirs)[1:], name
        assert not any(p.kind is p.VAR_KEYWORD for p in ours.values()), name
        assert {"progress", "cancel"} <= set(ours)


def test_strategy_is_chosen_from_the_model_metadata(bundled_predictor):
    from napari_biomedparse.inference.tasks import strategy

    assert strategy(StandIn()).mode == "whole" and strategy(StandIn()).input_size == 128
    st = strategy(bundled_predictor)
    expected = "tiled" if (bundled_predictor.model.metadata or {}).get("inference") else "whole"
    assert st.mode == expected


class _Counting:
    """A predictor wrapper counting model calls (predict_batch / predict)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.model, self.input_size = inner.model, inner.input_size

    def predict_batch(self, tiles, prompts, joint=False):
        self.calls += 1
        return self.inner.predict_batch(tiles, prompts, joint=joint)

    def predict(self, rgb, prompts, joint=False):
        self.calls += 1
        return self.inner.predict(rgb, prompts, joint=joint)


def test_tile_progress_and_cancel_within_one_batch(bundled_predictor):
    import threading

    from napari_biomedparse.inference.progress import Cancelled
    from napari_biomedparse.inference.tasks import strategy

    pred = _Counting(bundled_predictor)
    if strategy(pred).mode != "tiled":
        pytest.skip("the bundled model is not a tiled model")
    img = np.asarray(Image.open(ROOT / "src" / "napari_biomedparse" / "data" / "hgsc_nest.jpg"))
    img = np.ascontiguousarray(img[:700, :700])
    events = []
    probs = segment(
        pred, img, ["nuclei"], modality="pathology", progress=lambda *e: events.append(e)
    )
    assert probs.shape == (1, 700, 700)
    done = [d for d, _, _ in events]
    total = events[-1][1]
    assert total > 4 and done == sorted(done) and done[-1] == total
    assert all(m.startswith("tiles ") and t == total for _, t, m in events)
    assert len(events) == pred.calls  # one report per model call (tile batch)
    # cancel after the second batch: no third model call, Cancelled raised, nothing returned
    stop, pred.calls = threading.Event(), 0

    def on_progress(d, t, m):
        if pred.calls == 2:
            stop.set()

    with pytest.raises(Cancelled):
        recognize(pred, img, modality="pathology", progress=on_progress, cancel=stop)
    assert pred.calls == 2
    # a callable works as well; a stack names its slices
    with pytest.raises(Cancelled):
        segment(pred, img, ["nuclei"], modality="pathology", cancel=lambda: True)
    events.clear()
    segment(
        pred,
        np.stack([img[:300, :300]] * 2),
        ["nuclei"],
        modality="pathology",
        is_3d=True,
        progress=lambda *e: events.append(e),
    )
    assert events[-1][2].startswith("slice 2/2: tiles")


def test_whole_image_progress_and_cancel(hne):
    from napari_biomedparse.inference.progress import Cancelled

    pred = StandIn()
    events = []
    rec = recognize(
        pred, hne, modality="pathology", batch_size=2, progress=lambda *e: events.append(e)
    )
    assert [e[:2] for e in events] == [(1, 2), (2, 2)] and "whole image" in events[-1][2]
    assert len(rec.class_names) == 4
    n = len(pred.calls)
    with pytest.raises(Cancelled):
        detect(pred, hne, ["neoplastic cells"], modality="pathology", cancel=lambda: True)
    assert len(pred.calls) == n  # stopped before the model ran
