"""The tissue-marking ink rule (``inference.ink``) on real pixels.

* The bundled demo slide (Aperio skin) has teal marking ink along its margins: a 256 px crop
  of it at level-0 (y 1168, x 1744) is mostly ink over torn dermis; the epidermis crop of the
  model card (x 1046, y 1639, 400 px) has none below its keratin flakes.
* ``hgsc_nest`` (H&E, labelled nuclei) and ``stardist_histo`` (H&E) have no ink: their nuclei,
  dark violet-blue, must not be marked.
* ``recognize`` on the ink crop with the rule gives fewer objects on ink than without it, and
  the slide engine applies the same rule (one per-tile step, ``tiled.tile_probabilities``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_biomedparse.inference.ink import ink_mask, suppress_ink

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "napari_biomedparse" / "data"
SLIDE = DATA / "cmu_small_region.svs"
INK_CROP = (1168, 1744, 256)  # y0, x0, size (level 0, 0.499 um/px): teal ink on dermis
CLEAN_CROP = (1639, 1046, 400)  # the model card's epidermis crop: no ink


def _read(y0, x0, size):
    from napari_biomedparse.slide.readers import open_image

    img = open_image(SLIDE)
    return np.ascontiguousarray(np.asarray(img.read_region(y0, x0, size, size, 0, 255))[..., :3])


@pytest.fixture(scope="module")
def ink_crop():
    return _read(*INK_CROP)


def _teal(rgb):
    """Clearly teal pixels (green and blue both well above red): what the eye calls ink."""
    x = rgb.astype(int)
    return (x[..., 1] - x[..., 0] > 40) & (x[..., 2] - x[..., 0] > 40)


def test_marks_the_teal_ink_of_the_demo_slide(ink_crop):
    from scipy import ndimage

    m = ink_mask(ink_crop)
    teal = _teal(ink_crop)
    lab, _ = ndimage.label(teal, structure=np.ones((3, 3), bool))
    blobs = teal & (np.bincount(lab.ravel())[lab] >= 10)  # ink blobs, not 1-4 px flecks
    assert blobs.sum() > 2000  # the crop does hold ink
    assert m[blobs].mean() > 0.99  # every pixel of an ink blob is marked
    assert m[teal].mean() > 0.9  # flecks below MIN_SPECK px may be left (too small for a nucleus)
    # and the mask is the ink with its halo, not the tissue: white and pink stay unmarked
    assert 0.05 < m.mean() < 0.4
    pink = ink_crop[..., 0].astype(int) - ink_crop[..., 1] > 60  # eosin
    assert m[pink].mean() < 0.1


def test_no_ink_on_a_clean_epidermis_crop():
    """The model card's epidermis crop: its top 100 rows hold keratin flakes with a little teal
    ink (marked), the 300 rows below are epidermis with dark nuclei and no ink (none marked)."""
    m = ink_mask(_read(*CLEAN_CROP))
    assert m[:100].sum() > 100
    assert m[100:].sum() == 0


@pytest.mark.parametrize("name", ["hgsc_nest", "stardist_histo"])
def test_nuclei_of_real_he_images_are_not_marked(name):
    path = DATA / "hgsc_nest.jpg" if name == "hgsc_nest" else ROOT / "tests/data/stardist_histo.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    m = ink_mask(rgb)
    assert m.mean() < 1e-4
    if name == "hgsc_nest":
        nuclei = np.load(ROOT / "tests/data/hgsc_nest_inst_mask.npz")["nuc_raster"] > 0
        assert nuclei.sum() > 100_000
        assert (m & nuclei).sum() == 0


def test_colours():
    """Ink colours are marked, the H&E stains are not (hue, saturation and value rules)."""
    colours = {
        "teal": (40, 160, 170),
        "green": (60, 150, 80),
        "blue": (40, 70, 200),
        "black": (25, 25, 28),
        "light teal": (180, 235, 235),
        "haematoxylin": (90, 60, 140),
        "dark blue nucleus": (20, 40, 95),
        "dark violet nucleus": (40, 20, 60),
        "eosin": (230, 120, 170),
        "white": (245, 245, 245),
        "pale nucleus": (150, 140, 190),
    }
    ink = {"teal", "green", "blue", "black", "light teal"}
    for name, c in colours.items():
        tile = np.zeros((16, 16, 3), np.uint8) + np.array(c, np.uint8)
        assert ink_mask(tile).all() == (name in ink), name


def test_suppress_ink_resizes_the_mask_and_keeps_dtype():
    tiles = np.full((2, 32, 32, 3), 240, np.uint8)
    tiles[1, 8:16, 8:16] = (40, 160, 170)  # teal square in the second tile
    probs = np.full((2, 3, 64, 64), 200, np.uint8)  # uint8 maps at twice the tile size
    out = suppress_ink(probs, tiles)
    assert out.dtype == np.uint8 and out.shape == probs.shape
    assert (out[0] == 200).all()  # no ink: untouched
    assert (out[1][:, 16:32, 16:32] == 0).all()  # the square, at twice the size
    assert (out[1][:, :8, :8] == 200).all() and (out[1][:, 48:, 48:] == 200).all()
    assert (probs == 200).all()  # the input is not modified


class _Ones:
    """A predictor whose every pixel is foreground."""

    input_size = 64

    def predict_batch(self, rgb, prompts, joint=False):
        return np.ones((len(rgb), len(prompts), rgb.shape[1], rgb.shape[2]), np.float32)


def test_predict_tiled_and_the_slide_engine_apply_the_rule(ink_crop, tmp_path):
    from napari_biomedparse.inference.tiled import predict_tiled
    from napari_biomedparse.slide.engine import process_slide

    m = ink_mask(ink_crop)
    on = predict_tiled(_Ones(), ink_crop, ["a"], ink=True)[0]
    off = predict_tiled(_Ones(), ink_crop, ["a"], ink=False)[0]
    assert (off == 1).all()
    # 0 on ink (the mask is made per tile: a fleck cut by a tile edge may fall below
    # MIN_SPECK in one tile, so a few ink pixels keep a blended fraction), 1 off it
    assert (on[m] == 0).mean() > 0.9 and on[m].mean() < 0.01  # measured 0.955, 0.002
    assert (on[~m] == 1).all()
    res = process_slide(
        ink_crop,
        tmp_path / "c.biomedparse.zarr",
        model=_Ones(),
        prompts=["a"],
        recognize=False,
        slide_mpp=0.5,
        tile_size=64,
        overlap=16,
        modality="pathology",
        tissue_mask=False,
    )
    probs = np.asarray(res.probs[0]).astype(np.float32) / 255
    assert probs.shape == m.shape
    assert probs[m].mean() < 0.05 and probs[~m].mean() > 0.9
    res = process_slide(
        ink_crop,
        tmp_path / "f.biomedparse.zarr",
        model=_Ones(),
        prompts=["a"],
        recognize=False,
        slide_mpp=0.5,
        tile_size=64,
        overlap=16,
        modality="fluorescence",
        tissue_mask=False,
    )
    assert (np.asarray(res.probs[0]) == 255).all()  # other modalities: no ink rule


def test_recognize_finds_fewer_objects_on_ink_with_the_rule(
    bundled_predictor, ink_crop, monkeypatch
):
    from napari_biomedparse.inference import tasks

    m = ink_mask(ink_crop)

    def on_ink(rec):
        ids = np.unique(rec.labels[rec.labels > 0])
        frac = np.array([m[rec.labels == i].mean() for i in ids])
        return int((frac > 0.5).sum()), len(ids)

    with_rule, n_with = on_ink(bundled_predictor.recognize(ink_crop, modality="pathology", mpp=0.5))
    monkeypatch.setattr(tasks, "masks_ink", lambda modality, site=None: False)
    without, n_without = on_ink(
        bundled_predictor.recognize(ink_crop, modality="pathology", mpp=0.5)
    )
    assert without >= 5, (without, n_without)  # the model does segment the ink
    assert with_rule <= 0.1 * without, (with_rule, without)
    assert n_with < n_without
