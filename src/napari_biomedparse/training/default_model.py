"""The bundled default model: its configuration, training data and held-out regions.

Shared by ``scripts/train_default_model.py`` (training), ``scripts/evaluate_default_model.py``
(model-card figures) and the tests.

Data (all public, BSD-3-Clause; see ``tests/data/README.md``):

* ``hgsc_nest.jpg`` (1500 x 1500 H&E, high-grade serous ovarian carcinoma, histolytics 0.3.0)
  with nucleus instance labels and per-pixel classes (1 connective, 2 inflammatory,
  3 neoplastic). Pixel size not stated by the source; the nuclei (median area 245 px, i.e.
  17.7 px equivalent diameter) match ~0.5 um/px (20x), the scale assumed here.
* ``stardist_img2d.tif`` (512 x 512 uint16 fluorescence nuclei, 2018 Data Science Bowl, from
  stardist 0.9.2) with instance labels ``stardist_mask2d.tif``.

Held out: the bottom-right quarter of each image (``HOLDOUT_REGION``), never shown to training
(the training tiles are drawn only from the other three quarters; the fluorescence intensity
scaling of the training part is computed without the held-out pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import AnnotatedImage, holdout_region, split_holdout, to_rgb_uint8

NAME = "napari-biomedparse-default"
HOLDOUT_REGION = "bottom-right"
PATHOLOGY_PROMPTS = {1: "connective tissue cells", 2: "inflammatory cells", 3: "neoplastic cells"}
FLUORESCENCE_PROMPTS = {1: "nuclei"}
#: Assumed pixel size of the pathology training data (microns per pixel).
PATHOLOGY_MPP = 0.5
#: Share of training tiles drawn from the fluorescence image.
FLUORESCENCE_WEIGHT = 0.25


def default_config():
    """The small BiomedParse configuration of the bundled model (input 256 px)."""
    from napari_biomedparse.model.config import BiomedParseConfig

    return BiomedParseConfig(
        embed_dim=32,
        depths=(1, 1, 3, 1),
        convs_dim=64,
        mask_dim=64,
        encoder_layers=1,
        norm_groups=32,
        text_width=64,
        text_heads=4,
        text_layers=2,
        dim_proj=64,
        hidden_dim=64,
        num_queries=16,
        nheads=4,
        dim_feedforward=256,
        decoder_layers=4,
        input_size=256,
    )


def repo_root() -> Path:
    """The source checkout (the test labels live in ``tests/data``, not in the package)."""
    return Path(__file__).resolve().parents[3]


def _paths(root: Path | None = None) -> dict[str, Path]:
    root = Path(root) if root is not None else repo_root()
    pkg = root / "src" / "napari_biomedparse" / "data"
    tests = root / "tests" / "data"
    paths = {
        "he": pkg / "hgsc_nest.jpg",
        "he_types": tests / "hgsc_nest_type_mask.npz",
        "he_instances": tests / "hgsc_nest_inst_mask.npz",
        "fl": pkg / "stardist_img2d.tif",
        "fl_instances": tests / "stardist_mask2d.tif",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"default-model data not found: {missing}; run from a source checkout of "
            "napari-biomedparse (the labels live in tests/data)."
        )
    return paths


def load_pathology(root: Path | None = None) -> AnnotatedImage:
    """The whole annotated H&E image (1500 x 1500), three classes with instances."""
    from skimage import io

    p = _paths(root)
    return AnnotatedImage(
        image=io.imread(p["he"])[..., :3],
        classes=np.load(p["he_types"])["nuc_raster"],
        prompts=dict(PATHOLOGY_PROMPTS),
        instances=np.load(p["he_instances"])["nuc_raster"],
        modality="pathology",
        name="hgsc_nest",
    )


def load_fluorescence_raw(root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw fluorescence image (512 x 512 uint16) and its instance labels."""
    import tifffile

    p = _paths(root)
    return tifffile.imread(p["fl"]), tifffile.imread(p["fl_instances"])


def datasets(root: Path | None = None) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """(training images with the held-out quarter ignored, held-out crops).

    The fluorescence training image is converted to RGB from its training pixels only
    (held-out pixels set to 0, which the preset's percentiles skip); the held-out crop is
    converted on its own, as a user would convert that image.
    """
    he_train, he_hold = split_holdout(load_pathology(root), HOLDOUT_REGION)
    raw, inst = load_fluorescence_raw(root)
    ys, xs = holdout_region(raw.shape, HOLDOUT_REGION)
    masked = raw.copy()
    masked[ys, xs] = 0
    ignore = np.zeros(raw.shape, bool)
    ignore[ys, xs] = True
    fl_train = AnnotatedImage(
        image=to_rgb_uint8(masked, "fluorescence"),
        classes=(inst > 0).astype(np.int32),
        prompts=dict(FLUORESCENCE_PROMPTS),
        instances=inst,
        ignore=ignore,
        modality="fluorescence",
        weight=FLUORESCENCE_WEIGHT / (1 - FLUORESCENCE_WEIGHT),
        name="stardist_img2d (train)",
    )
    fl_hold = AnnotatedImage(
        image=to_rgb_uint8(raw[ys, xs], "fluorescence"),
        classes=(inst[ys, xs] > 0).astype(np.int32),
        prompts=dict(FLUORESCENCE_PROMPTS),
        instances=inst[ys, xs],
        modality="fluorescence",
        name=f"stardist_img2d (held-out {HOLDOUT_REGION})",
    )
    return [he_train, fl_train], [he_hold, fl_hold]
