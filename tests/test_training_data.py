"""Training data sources, held-out split, tiles and augmentations (training layer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_biomedparse.training.augment import AugmentConfig, augment_tile
from napari_biomedparse.training.data import (
    AnnotatedImage,
    TileSampler,
    as_annotated,
    from_arrays,
    load_folder,
    parse_prompt_mapping,
    separate_touching,
    split_holdout,
    to_rgb_uint8,
)

ROOT = Path(__file__).resolve().parents[1]
PKG_DATA = ROOT / "src" / "napari_biomedparse" / "data"
TEST_DATA = ROOT / "tests" / "data"


def test_parse_prompt_mapping():
    m = parse_prompt_mapping("1: connective tissue cells, 2: inflammatory cells;3=neoplastic cells")
    assert m == {1: "connective tissue cells", 2: "inflammatory cells", 3: "neoplastic cells"}
    with pytest.raises(ValueError, match="label value: prompt"):
        parse_prompt_mapping("nuclei, 2: x")
    with pytest.raises(ValueError, match="background"):
        parse_prompt_mapping("0: background")


def test_from_arrays_class_map_and_instances():
    img = np.zeros((32, 32, 3), np.uint8)
    lab = np.zeros((32, 32), np.int32)
    lab[2:8, 2:8] = 1
    lab[10:20, 10:20] = 2
    a = from_arrays(img, lab, "1: nuclei, 2: tumor")
    assert a.prompts == {1: "nuclei", 2: "tumor"} and a.instances is None
    # instance labels of one prompt: every non-zero pixel is that prompt, ids kept as instances
    b = from_arrays(img, lab, "nuclei")
    assert set(np.unique(b.classes)) == {0, 1} and b.instances.max() == 2
    with pytest.raises(ValueError, match="no prompt"):
        from_arrays(img, lab, "1: nuclei, 3: tumor")
    with pytest.raises(ValueError, match="same pixel grid|differ"):
        from_arrays(img[:16], lab, "1: nuclei, 2: tumor")


def test_to_rgb_uint8_fluorescence():
    import tifffile

    img = tifffile.imread(PKG_DATA / "stardist_img2d.tif")
    rgb = to_rgb_uint8(img, "fluorescence")
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.max() == 255
    with pytest.raises(ValueError, match="2-D grey"):
        to_rgb_uint8(np.zeros((3, 4, 5, 6)))


def test_triples_merge_prompts_of_one_image():
    img = np.full((40, 40, 3), 200, np.uint8)
    m1 = np.zeros((40, 40), np.uint8)
    m1[:10] = 1
    m2 = np.zeros((40, 40), np.uint8)
    m2[20:] = 1
    items = as_annotated([(img, m1, "tumor"), (img, m2, "stroma")])
    assert len(items) == 1
    a = items[0]
    assert sorted(a.prompts.values()) == ["stroma", "tumor"]
    inv = {v: k for k, v in a.prompts.items()}
    assert (a.classes[:10] == inv["tumor"]).all() and (a.classes[20:] == inv["stroma"]).all()


def test_load_folder(tmp_path):
    import tifffile
    from skimage import io

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    lab = np.zeros((64, 64), np.uint16)
    lab[5:20, 5:20] = 3
    io.imsave(tmp_path / "images" / "a.png", img, check_contrast=False)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", lab)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_folder(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"prompts": {"3": "tumor"}}))
    (a,) = load_folder(tmp_path)
    assert a.prompts == {3: "tumor"} and (a.image == img).all() and (a.classes == lab).all()


def test_separate_touching_gap():
    inst = np.zeros((10, 20), np.int32)
    inst[2:8, 2:10] = 1
    inst[2:8, 10:18] = 2
    cls = (inst > 0).astype(np.int32)
    sep = separate_touching(cls, inst)
    assert (sep[2:8, 10] == 0).all() and (sep[2:8, 9] == 1).all()  # one-pixel gap
    assert sep.sum() == cls.sum() - 6


def _hgsc():
    from skimage import io

    img = io.imread(PKG_DATA / "hgsc_nest.jpg")
    typ = np.load(TEST_DATA / "hgsc_nest_type_mask.npz")["nuc_raster"]
    inst = np.load(TEST_DATA / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    prompts = {1: "connective tissue cells", 2: "inflammatory cells", 3: "neoplastic cells"}
    return AnnotatedImage(img, typ, prompts, instances=inst, name="hgsc")


def test_tiles_never_touch_heldout_region():
    a = _hgsc()
    train, held = split_holdout(a, "bottom-right")
    assert held.shape == (750, 750) and train.ignore[750:, 750:].all()
    marker = train.image.copy()
    marker[750:, 750:] = (255, 0, 255)  # a colour absent from the H&E
    train.image = marker
    s = TileSampler([train], tile_size=256, augment=None, seed=0)
    for _ in range(30):
        rgb, masks, known, _ = s.tile()
        magenta = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 255)
        assert not magenta.any()
        assert known.all() and masks.shape == (3, 256, 256)


def test_tile_sampler_deterministic_and_targets_follow_image():
    a = _hgsc()
    s1 = TileSampler([a], tile_size=128, seed=3)
    s2 = TileSampler([a], tile_size=128, seed=3)
    r1, m1, _, _ = s1.batch(2)
    r2, m2, _, _ = s2.batch(2)
    assert (r1 == r2).all() and (m1 == m2).all()
    # without photometric changes the masks must sit on dark (haematoxylin) pixels
    cfg = AugmentConfig(
        stain_sigma=0, stain_bias=0, brightness=0, contrast=0, saturation=0, noise=0
    )
    s = TileSampler([a], tile_size=128, augment=cfg, seed=1)
    rgb, masks, _, _ = s.batch(4)
    grey = rgb.mean(-1)
    nuc = masks.any(1)
    assert grey[nuc].mean() < grey[~nuc].mean() - 30


def test_augment_geometry_and_fluorescence_channels():
    rng = np.random.default_rng(0)
    lab = np.zeros((16, 16), np.int32)
    lab[0:4, 0:8] = 1
    img = np.zeros((16, 16, 3), np.uint8)
    img[lab == 1] = 200
    cfg = AugmentConfig(scale_range=None, gamma=0.3, noise=0.02)
    for _ in range(8):
        out, ol = augment_tile(img, lab, cfg, rng, modality="fluorescence")
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert ol.sum() == lab.sum()
        assert out[ol == 1].mean() > out[ol == 0].mean() + 100  # labels moved with the image


def test_cytoplasm_halo_glows_around_nuclei_only():
    """The fluorescence glow is dim, outside the nuclei, fades with the distance to them, and
    leaves the labels alone."""
    from napari_biomedparse.training.augment import cytoplasm_halo

    rng = np.random.default_rng(0)
    lab = np.zeros((96, 96), np.int32)
    lab[40:56, 40:56] = 1
    grey = np.where(lab > 0, 200.0, 10.0)
    cfg = AugmentConfig(halo_prob=1.0, halo_strength=(0.3, 0.3))
    out = cytoplasm_halo(grey, lab > 0, cfg, rng)
    assert (out[lab > 0] == 200).all()  # the nucleus is unchanged
    near, far = out[36:39, 40:56], out[0:4, 0:4]
    assert near.min() > 10 + 5 and near.max() <= 10 + 0.3 * 200 + 1e-6
    assert far.mean() < near.mean()
    assert (cytoplasm_halo(grey, np.zeros_like(lab, bool), cfg, rng) == grey).all()
    # in augment_tile: labels unchanged, channels equal
    img = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    cfg = AugmentConfig(
        scale_range=None,
        flips=False,
        rot90=False,
        gamma=0,
        noise=0,
        contrast=0,
        brightness=0,
        halo_prob=1.0,
    )
    out, ol = augment_tile(img, lab, cfg, rng, modality="fluorescence")
    assert (ol == lab).all() and (out[..., 0] == out[..., 2]).all()
    assert out[36:39, 40:56, 0].mean() > 15
