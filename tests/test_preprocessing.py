"""Preprocessing presets against the official pipeline (v1_facts.md section 1).

``_official_*`` below transcribe the official steps (processing_utils.py of BiomedParse v1 as
described in shared/reference/v1_facts.md) literally with numpy/skimage, and the preset must give
the same uint8 numbers; hand-computed values check the arithmetic where no resize is involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import transform

from napari_biomedparse.inference.modalities import CT_WINDOWS
from napari_biomedparse.inference.preprocessing import (
    PadInfo,
    intensity_scale,
    preprocess,
    to_rgb_uint8,
    unpad,
)

DATA = Path(__file__).resolve().parents[1] / "src" / "napari_biomedparse" / "data"


# ---------------------------------------------------------------- literal official transcription
def _official_pad(img):
    h, w = img.shape[:2]
    extra = [(0, 0)] * (img.ndim - 2)
    if h > w:
        pad = (h - w) // 2
        return np.pad(img, [(0, 0), (pad, pad), *extra], "constant", constant_values=0)
    if h < w:
        pad = (w - h) // 2
        return np.pad(img, [(pad, pad), (0, 0), *extra], "constant", constant_values=0)
    return img


def _official_intensity(image_data, is_ct, site=None, size=1024, bounds=None):
    if bounds is not None:  # bounds computed elsewhere (the NaN extension)
        lower_bound, upper_bound = bounds
    elif is_ct:
        lower_bound, upper_bound = {
            "abdomen": [-150, 250],
            "lung": [-1000, 1000],
            "pelvis": [-55, 200],
            "liver": [-25, 230],
            "colon": [-68, 187],
            "pancreas": [-100, 200],
        }[site]
    else:
        lower_bound = np.percentile(image_data[image_data > 0], 0.5)
        upper_bound = np.percentile(image_data[image_data > 0], 99.5)
    pre = np.clip(image_data, lower_bound, upper_bound)
    pre = (pre - pre.min()) / (pre.max() - pre.min()) * 255.0
    pre = _official_pad(pre)
    res = transform.resize(
        pre, (size, size), order=3, mode="constant", preserve_range=True, anti_aliasing=True
    )
    return np.stack([res] * 3, axis=-1).astype(np.uint8)


def _official_rgb(image, size=1024):
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    image = _official_pad(image)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    for i in range(3):
        out[:, :, i] = transform.resize(
            image[:, :, i],
            (size, size),
            order=3,
            mode="constant",
            preserve_range=True,
            anti_aliasing=True,
        )
    return out


def _ct_slice(h=120, w=90, seed=0):
    """A crafted CT slice in HU: air outside a body disc, fat, soft tissue, a bone rim."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h * 0.45), (xx - w / 2) / (w * 0.45))
    hu = np.full((h, w), -1000.0)
    hu[r < 1.0] = -100.0  # fat
    hu[r < 0.8] = 40.0 + 30 * np.sin(yy[r < 0.8] / 7.0)  # soft tissue
    hu[(r > 0.9) & (r < 1.0)] = 900.0  # bone rim
    hu += rng.normal(0, 15, size=hu.shape)
    return np.round(hu).astype(np.int16)


# ---------------------------------------------------------------- CT windows
@pytest.mark.parametrize("site", sorted(CT_WINDOWS))
def test_ct_window_matches_official(site):
    hu = _ct_slice()
    rgb, info = preprocess(hu, "CT", site=site, size=256)
    expected = _official_intensity(hu, True, site, size=256)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    np.testing.assert_array_equal(rgb, expected)
    assert info == PadInfo(
        shape=(120, 90), padded_shape=(120, 90 + 2 * 15), offset=(0, 15), size=256
    )


def test_ct_window_hand_computed_values():
    # no resize (size=None): the values are the windowed, scaled, truncated HU
    hu = np.array([[-1000, -150, 0, 50], [100, 249, 250, 3000]], dtype=np.int16)
    rgb, info = preprocess(hu, "CT-Abdomen", size=None)
    # window [-150, 250]; the clipped image spans the whole window: (x + 150) / 400 * 255
    expected = np.array([[0, 0, 95, 127], [159, 254, 255, 255]], dtype=np.uint8)
    assert info.padded_shape == (4, 4) and info.offset == (1, 0)
    np.testing.assert_array_equal(rgb[1:3, :, 0], expected)
    np.testing.assert_array_equal(rgb[0], 0)  # zero padding rows
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    # lung window via the "chest" site, and the official rule "scale with the clipped image's own
    # min and max": here the image spans [-500, 500] inside [-1000, 1000]
    hu2 = np.array([[-500, 0, 500, 250]], dtype=np.int16)
    rgb2, _ = preprocess(hu2, "CT", site="chest", size=None)
    np.testing.assert_array_equal(rgb2[1, :, 0], [0, 127, 255, 191])  # row 0: padding


def test_ct_float_hu_and_odd_padding():
    hu = _ct_slice(31, 48, seed=3).astype(np.float32)
    rgb, info = preprocess(hu, "CT", site="liver", size=128)
    np.testing.assert_array_equal(rgb, _official_intensity(hu, True, "liver", size=128))
    # odd difference: (48 - 31) // 2 = 8 on both sides -> 47 x 48, as the official code
    assert info.padded_shape == (47, 48) and info.offset == (8, 0)


# ---------------------------------------------------------------- 16-bit fluorescence
def test_uint16_fluorescence_with_outliers():
    rng = np.random.default_rng(1)
    img = rng.gamma(2.0, 300.0, size=(200, 160)).astype(np.uint16)
    img[:40, :40] = 0  # background exactly 0: excluded from the percentiles
    img[100, 100] = 65535  # hot pixels
    img[5, 150] = 60000
    rgb, info = preprocess(img, "fluorescence", size=256)
    np.testing.assert_array_equal(rgb, _official_intensity(img, False, size=256))
    # the outliers do not set the scale: the 99.5th percentile does
    lo, hi = np.percentile(img[img > 0], [0.5, 99.5])
    flat, _ = preprocess(img, "fluorescence", size=None)
    sel = (img > lo) & (img < hi)
    expected = ((img[sel] - lo) / (hi - lo) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(flat[:, 20:180][sel][:, 0], expected)  # columns padded by 20
    assert flat[100, 20 + 100, 0] == 255 and flat[10, 20 + 10, 0] == 0


def test_real_fluorescence_tif():
    import tifffile

    img = tifffile.imread(DATA / "stardist_img2d.tif")
    assert img.dtype == np.uint16 and img.shape == (512, 512)
    rgb, info = preprocess(img, "Fluorescence", size=256)
    np.testing.assert_array_equal(rgb, _official_intensity(img, False, size=256))
    assert info.padded_shape == (512, 512) and rgb[..., 0].std() > 10


# ---------------------------------------------------------------- RGB and RGBA
def test_rgb_passthrough_and_rgba():
    from PIL import Image

    rgb = np.asarray(Image.open(Path(__file__).parent / "data" / "stardist_histo.jpg"))
    assert rgb.shape[2] == 3
    out, info = preprocess(rgb, "pathology", size=None)
    top, left = info.offset
    h, w = rgb.shape[:2]
    np.testing.assert_array_equal(out[top : top + h, left : left + w], rgb)  # no clipping
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=-1)
    out_a, _ = preprocess(rgba, "pathology", size=200)
    np.testing.assert_array_equal(out_a, _official_rgb(rgba, size=200))
    np.testing.assert_array_equal(out_a, preprocess(rgb, "Pathology", size=200)[0])


def test_grey_uint8_rgb_modality_is_stacked():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, size=(40, 30), dtype=np.uint8)
    out, _ = preprocess(grey, "endoscopy", size=64)
    np.testing.assert_array_equal(out, _official_rgb(grey, size=64))


# ---------------------------------------------------------------- NaN / inf
def test_nan_holed_float_image():
    rng = np.random.default_rng(4)
    img = rng.normal(100.0, 20.0, size=(90, 90)).astype(np.float32)
    img[img < 0] = 0
    holes = np.zeros(img.shape, bool)
    holes[10:20, 30:50] = True
    holes[60, :] = True
    img[holes] = np.nan
    img[5, 5] = np.inf
    img[6, 6] = -np.inf
    rgb, info = preprocess(img, "MRI", size=None)
    assert rgb.dtype == np.uint8
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite[finite > 0], [0.5, 99.5])
    filled = np.where(np.isnan(img) | (img == -np.inf), lo, img)
    filled = np.where(filled == np.inf, hi, filled).astype(np.float32)
    # NaN / -inf take the lower bound, +inf the upper one; bounds from the finite pixels > 0
    # (the +inf pixel is checked below: float32 rounding of the upper bound may give 254 there)
    ref = _official_intensity(filled, False, size=90, bounds=(lo, hi))  # same size: no resampling
    ref[5, 5] = rgb[5, 5]
    np.testing.assert_array_equal(rgb, ref)
    resized = preprocess(img, "MRI", size=128)[0].astype(int)
    ref128 = _official_intensity(filled, False, size=128, bounds=(lo, hi)).astype(int)
    assert np.abs(resized - ref128).max() <= 1 and (resized != ref128).mean() < 0.002
    assert (rgb[..., 0][holes] == 0).all() and rgb[5, 5, 0] == 255 and rgb[6, 6, 0] == 0


def test_constant_and_empty_images_do_not_divide_by_zero():
    out, _ = preprocess(np.full((10, 10), 7.0), "ultrasound", size=32)
    assert (out == 0).all()
    out, _ = preprocess(np.zeros((10, 12), np.uint16), "OCT", size=32)
    assert (out == 0).all()
    assert (intensity_scale(np.full((3, 3), np.nan)) == 0).all()


# ---------------------------------------------------------------- multichannel
def test_multichannel_channel_choice():
    rng = np.random.default_rng(5)
    stack = rng.integers(1, 4000, size=(5, 50, 60), dtype=np.uint16)  # (C, H, W)
    with pytest.raises(ValueError, match="5 channels"):
        preprocess(np.moveaxis(stack, 0, -1), "fluorescence")
    one, _ = preprocess(stack, "fluorescence", channels=[3], channel_axis=0, size=64)
    np.testing.assert_array_equal(one, _official_intensity(stack[3], False, size=64))
    two, _ = preprocess(stack, "fluorescence", channels=[1, 4], channel_axis=0, size=64)
    np.testing.assert_array_equal(
        two[..., 0], _official_intensity(stack[1], False, size=64)[..., 0]
    )
    np.testing.assert_array_equal(
        two[..., 1], _official_intensity(stack[4], False, size=64)[..., 0]
    )
    assert (two[..., 2] == 0).all()
    with pytest.raises(ValueError, match="does not exist"):
        preprocess(stack, "fluorescence", channels=[7], channel_axis=0)


# ---------------------------------------------------------------- errors
def test_clear_errors():
    with pytest.raises(ValueError, match="unknown modality 'microscopy'.*Pathology"):
        preprocess(np.zeros((8, 8)), "microscopy")
    with pytest.raises(ValueError, match="valid sites: abdomen"):
        preprocess(np.zeros((8, 8), np.int16), "CT", site="knee")
    with pytest.raises(ValueError, match="needs a site"):
        preprocess(np.zeros((8, 8), np.int16), "CT")
    with pytest.raises(ValueError, match="Hounsfield.*uint16"):
        preprocess(np.zeros((8, 8), np.uint16), "CT", site="abdomen")
    with pytest.raises(ValueError, match="numeric"):
        preprocess(np.zeros((8, 8), bool), "pathology")
    with pytest.raises(ValueError, match=r"slice by slice"):
        preprocess(np.zeros((2, 3, 8, 8)), "MRI")


# ---------------------------------------------------------------- unpad
def test_unpad_inverts_padding_and_resize():
    h, w = 300, 517  # the official odd case: padded to 516 x 517
    yy, xx = np.mgrid[:h, :w]
    img = (100 + 80 * np.sin(yy / 23.0) * np.cos(xx / 31.0)).astype(np.float32)
    rgb, info = preprocess(img, "MRI", size=1024)
    assert info.padded_shape == (516, 517) and info.offset == (108, 0)
    back = unpad(rgb[..., 0].astype(np.float32)[None], info)[0]
    assert back.shape == (h, w) and back.dtype == np.float32
    ref = intensity_scale(img)
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(back[inner] - ref[inner]).mean() < 1.0  # truncation + two resamplings
    # no resize: unpad is an exact crop
    flat, info0 = preprocess(img, "MRI", size=None)
    np.testing.assert_array_equal(unpad(flat[..., 0][None], info0)[0], flat[108:408, :, 0])


def test_to_rgb_uint8_matches_unresized_preprocess():
    hu = _ct_slice(64, 64)
    np.testing.assert_array_equal(
        to_rgb_uint8(hu, "CT", site="abdomen"), preprocess(hu, "CT", site="abdomen", size=None)[0]
    )


# ---------------------------------------------------------------- precomputed (per-slide) statistics
def _kinds():
    """Real and hand-made images of every path of the preset: (image, modality, kwargs)."""
    import tifffile

    fluo = tifffile.imread(DATA / "stardist_img2d.tif")  # uint16, real
    nan = fluo.astype(np.float32)
    nan[10:20, 30:60] = np.nan
    nan[200, 200] = np.inf
    rgb16 = np.stack([fluo, fluo // 2, fluo // 3], axis=-1)
    multi = np.stack([fluo, fluo[::-1], fluo[:, ::-1], fluo.T], axis=-1)
    return [
        (fluo, "fluorescence", {}),
        (nan, "fluorescence", {}),
        (rgb16, "brightfield", {}),
        (multi, "fluorescence", {"channels": [0, 3]}),
        (_ct_slice(96, 80), "CT", {"site": "abdomen"}),
        (
            np.asarray(Image.open(DATA / "hgsc_nest.jpg"))[:300, :300],
            "pathology",
            {},
        ),
    ]


@pytest.mark.parametrize("k", range(6))
def test_stats_of_the_whole_image_give_its_own_conversion_to_every_tile(k):
    from napari_biomedparse.inference.preprocessing import IntensityStats, intensity_stats

    img, modality, kw = _kinds()[k]
    whole = to_rgb_uint8(img, modality, **kw)
    st = intensity_stats(img, modality, **kw)
    # stored as JSON-able plain values (e.g. in a slide store) and read back
    st2 = IntensityStats.from_dict(json.loads(json.dumps(st.to_dict())))
    assert st2 == st
    np.testing.assert_array_equal(to_rgb_uint8(img, modality, stats=st, **kw), whole)
    h, w = img.shape[:2]
    for y0, x0, th, tw in [(0, 0, 40, 50), (h // 2, w // 3, 33, 47), (h - 20, w - 25, 20, 25)]:
        tile = img[y0 : y0 + th, x0 : x0 + tw]
        got = to_rgb_uint8(tile, modality, stats=st2.to_dict(), **kw)
        np.testing.assert_array_equal(got, whole[y0 : y0 + th, x0 : x0 + tw])
    if st.bounds:  # a tile's own statistics differ from the image's (the point of stats=)
        tile = img[: h // 4, : w // 4]
        own = to_rgb_uint8(tile, modality, **kw)
        assert modality == "CT" or not np.array_equal(own, whole[: h // 4, : w // 4])


def test_stats_of_another_kind_are_refused():
    from napari_biomedparse.inference.preprocessing import intensity_stats

    img, modality, kw = _kinds()[0]
    st = intensity_stats(img, modality)
    with pytest.raises(ValueError, match="stats were computed for a 'grey' image"):
        to_rgb_uint8(np.stack([img] * 3, axis=-1), "brightfield", stats=st)
