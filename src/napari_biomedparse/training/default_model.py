"""The bundled default model: its configuration, training data and held-out regions.

Shared by ``scripts/train_default_model.py`` (training), ``scripts/evaluate_default_model.py``
(model-card figures) and the tests.

Data (all public, BSD-3-Clause; see ``tests/data/README.md``):

* ``hgsc_nest.jpg`` (1500 x 1500 H&E, high-grade serous ovarian carcinoma, histolytics 0.3.0)
  with nucleus instance labels and per-pixel classes (1 connective, 2 inflammatory,
  3 neoplastic). Pixel size not stated by the source; the nuclei (median area 245 px, i.e.
  17.7 px equivalent diameter) match ~0.5 um/px (20x), the scale assumed here.
* ``hgsc_stromal_he.jpg`` (1500 x 1500 H&E of the stroma of the same tumour type, histolytics
  0.3.0) with its 423 segmented nuclei (polygons with the same three classes, converted to
  rasters by :func:`convert_histolytics_stroma`; mostly connective tissue nuclei).
* ``stardist_img2d.tif`` (512 x 512 uint16 fluorescence nuclei, 2018 Data Science Bowl, from
  stardist 0.9.2) with instance labels ``stardist_mask2d.tif``.

Held out: the bottom-right quarter of each image (``HOLDOUT_REGION``), never shown to training
(the training tiles are drawn only from the other three quarters; the fluorescence intensity
scaling of the training part is computed without the held-out pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import STRONG_AUGMENT, AugmentConfig
from .data import AnnotatedImage, holdout_region, split_holdout, to_rgb_uint8

NAME = "napari-biomedparse-default"
HOLDOUT_REGION = "bottom-right"
PATHOLOGY_PROMPTS = {1: "connective tissue cells", 2: "inflammatory cells", 3: "neoplastic cells"}
FLUORESCENCE_PROMPTS = {1: "nuclei"}  # == NUCLEI
#: Assumed pixel size of the pathology training data (microns per pixel).
PATHOLOGY_MPP = 0.5
#: The class-agnostic prompt, trained on every labelled nucleus of every image.
NUCLEI = "nuclei"
#: Shares of the training tiles: the H&E tumour nest with its three classes, the same image
#: with every nucleus as ``nuclei``, the same two for the H&E stroma image, the stardist image,
#: mnfinder's training split (by area).
SHARES = {
    "pathology classes": 0.3,
    "pathology nuclei": 0.15,
    "stroma classes": 0.05,
    "stroma nuclei": 0.1,
    "stardist": 0.05,
    "mnfinder": 0.35,
}
#: Shares of the first stage of :data:`RECIPE` (the tumour nest's three classes and the
#: stardist image only, as the first weights were trained).
FIRST_STAGE_SHARES = {"pathology classes": 0.75, "stardist": 0.25}


@dataclass(frozen=True)
class Stage:
    """One run of the default model's training recipe (it continues the previous run).

    Attributes:
        sources: ``"first"`` (:data:`FIRST_STAGE_SHARES`) or ``"all"`` (:data:`SHARES`), the
            ``sources`` of :func:`datasets`.
        augment: the tile augmentation.
        steps: optimiser steps of 32 tiles of 256 px.
        lr: peak learning rate (AdamW, warm-up then cosine decay to 5 %).
        warmup: warm-up steps.
        seed: seeds tile sampling, augmentation and torch (CPU runs are reproducible).
    """

    sources: str
    augment: AugmentConfig
    steps: int
    lr: float
    warmup: int
    seed: int


#: The shipped file's recipe, its three runs in a row from random weights
#: (``scripts/train_default_model.py --recipe``; docs/model-card.md, "Training"): the
#: tumour nest and the stardist image with mild augmentation, then every source with
#: :data:`~.augment.STRONG_AUGMENT` twice, at lower learning rates.
RECIPE = (
    Stage("first", AugmentConfig(), steps=1875, lr=1e-3, warmup=200, seed=0),
    Stage("all", STRONG_AUGMENT, steps=538, lr=5e-4, warmup=50, seed=1),
    Stage("all", STRONG_AUGMENT, steps=600, lr=3e-4, warmup=30, seed=2),
)


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
        "stroma": tests / STROMA_IMAGE,
        "stroma_labels": tests / STROMA_FILE,
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"default-model data not found: {missing}; run from a source checkout of "
            "napari-biomedparse (the labels live in tests/data)."
        )
    return paths


def _he_image(image: Path, classes, instances, name: str) -> AnnotatedImage:
    """An H&E image file with its per-pixel classes (the values of :data:`PATHOLOGY_PROMPTS`)
    and nucleus instances (both (H, W) integer; cast by ``AnnotatedImage``)."""
    from skimage import io

    return AnnotatedImage(
        image=io.imread(image)[..., :3],
        classes=classes,
        prompts=dict(PATHOLOGY_PROMPTS),
        instances=instances,
        modality="pathology",
        name=name,
    )


def load_pathology(root: Path | None = None) -> AnnotatedImage:
    """The whole annotated H&E image (1500 x 1500), three classes with instances."""
    p = _paths(root)
    classes = np.load(p["he_types"])["nuc_raster"]
    return _he_image(p["he"], classes, np.load(p["he_instances"])["nuc_raster"], "hgsc_nest")


def load_stroma(root: Path | None = None) -> AnnotatedImage:
    """The whole H&E stroma image (1500 x 1500) with its segmented nuclei, three classes."""
    p = _paths(root)
    with np.load(p["stroma_labels"]) as z:
        classes, instances = z["classes"], z["instances"]
    return _he_image(p["stroma"], classes, instances, "hgsc_stroma")


def nuclei_only(a: AnnotatedImage, name: str) -> AnnotatedImage:
    """The same H&E image with every labelled nucleus as the class-agnostic :data:`NUCLEI`
    (training its prompt; scoring it on a held-out crop)."""
    return AnnotatedImage(
        image=a.image,
        classes=(a.instances > 0).astype(np.int32),
        prompts={1: NUCLEI},
        instances=a.instances,
        ignore=a.ignore,
        modality="pathology",
        name=name,
    )


def load_fluorescence_raw(root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw fluorescence image (512 x 512 uint16) and its instance labels."""
    import tifffile

    p = _paths(root)
    return tifffile.imread(p["fl"]), tifffile.imread(p["fl_instances"])


def datasets(
    root: Path | None = None, hold_out_cell_type: str | None = None, sources: str = "all"
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """(training images with the held-out quarters ignored, held-out crops).

    ``sources="first"`` gives the first stage of :data:`RECIPE` instead: the tumour nest's
    three classes and the stardist image (:data:`FIRST_STAGE_SHARES`), the same held-out crops.

    ``hold_out_cell_type`` (a ``cell_type`` of :func:`mnfinder_info`, e.g. ``"RPE-1"``) leaves
    that source's mnfinder images out of training: one fold of the leave-one-source-out
    validation (``scripts/evaluate_default_model.py --sets loso --cell-type ...`` scores it).

    Training: each H&E image (tumour nest, stroma) twice (the three classes; and every
    labelled nucleus as ``nuclei``, the class-agnostic prompt), the stardist fluorescence image
    and mnfinder's ``training`` split (:func:`load_mnfinder`), drawn with the shares of
    :data:`SHARES`. Held out: ``[hgsc_nest quarter, stardist quarter, hgsc_stroma quarter]``
    (the bottom-right quarter of each); mnfinder's validation / test splits and the ndev
    frames are held out as a whole (:func:`load_mnfinder`, :func:`load_ndev`).

    The fluorescence training image is converted to RGB from its training pixels only
    (held-out pixels set to 0, which the preset's percentiles skip); the held-out crop is
    converted on its own, as a user would convert that image.
    """
    if sources not in ("all", "first"):
        raise ValueError(f"sources must be 'all' or 'first', not {sources!r}")
    he_train, he_hold = split_holdout(load_pathology(root), HOLDOUT_REGION)
    he_nuclei = nuclei_only(he_train, "hgsc_nest nuclei (train)")
    st_train, st_hold = split_holdout(load_stroma(root), HOLDOUT_REGION)
    st_nuclei = nuclei_only(st_train, "hgsc_stroma nuclei (train)")
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
    if sources == "first":
        he_train.weight = FIRST_STAGE_SHARES["pathology classes"]
        fl_train.weight = FIRST_STAGE_SHARES["stardist"]
        return [he_train, fl_train], [he_hold, fl_hold, st_hold]
    mnf = load_mnfinder(("training",), root)
    if hold_out_cell_type is not None:
        info = mnfinder_info(root)
        known = sorted({v["cell_type"] for v in info.values()})
        if hold_out_cell_type not in known:
            raise ValueError(
                f"unknown mnfinder cell type {hold_out_cell_type!r}: choose one of {known}"
            )
        mnf = [a for a in mnf if info[a.name]["cell_type"] != hold_out_cell_type]
    he_train.weight = SHARES["pathology classes"]
    he_nuclei.weight = SHARES["pathology nuclei"]
    st_train.weight = SHARES["stroma classes"]
    st_nuclei.weight = SHARES["stroma nuclei"]
    fl_train.weight = SHARES["stardist"]
    area = np.array([a.shape[0] * a.shape[1] for a in mnf], float)
    for a, w in zip(mnf, area / area.sum()):
        a.weight = SHARES["mnfinder"] * float(w)
    train = [he_train, he_nuclei, st_train, st_nuclei, fl_train, *mnf]
    return train, [he_hold, fl_hold, st_hold]


# ----------------------------------------------------------------------------------------------
# public nucleus data shipped in packages (converted once into tests/data)

#: histolytics 0.3.0 (BSD-3-Clause) H&E stroma image, copied unchanged into tests/data.
STROMA_IMAGE = "hgsc_stromal_he.jpg"
#: its nuclei (polygons in the package), rasterised by :func:`convert_histolytics_stroma`.
STROMA_FILE = "hgsc_stroma_nuclei.npz"
#: The class values of histolytics' ``class_name`` column (as ``hgsc_nest_type_mask``).
HISTOLYTICS_CLASSES = {"connective": 1, "inflammatory": 2, "neoplastic": 3}
#: mnfinder 1.2.3 (MIT) nucleus masks, converted by :func:`convert_mnfinder`.
MNFINDER_FILE = "mnfinder_nuclei.npz"
#: ndev-sampledata 0.0.3 (BSD-3-Clause) scratch assay, converted by :func:`convert_ndev`.
NDEV_FILE = "ndev_scratch_assay.npz"
MNFINDER_SPLITS = ("training", "validation", "test")


def _mnfinder_instances(rgba: np.ndarray) -> np.ndarray:
    """mnfinder nucleus mask (H, W, 4) uint8 -> (H, W) int32 instance ids: the alpha channel
    marks foreground, the (G, B) pair is the instance id."""
    ids = rgba[..., 1].astype(np.int32) * 256 + rgba[..., 2].astype(np.int32)
    ids = np.where(rgba[..., 3] > 0, ids, 0)
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(ids)[0].astype(np.int32)


def convert_mnfinder(package_dir: str | Path, out: str | Path) -> Path:
    """Convert the annotated images inside the mnfinder 1.2.3 package into one ``.npz``.

    ``package_dir`` is the unpacked package (``.../mnfinder``, holding
    ``{training,validation,test}-data/<folder>/{images,nucleus_masks}``). Each image is
    converted as the Predictor converts a grey image (``to_rgb_uint8(image, "fluorescence")``:
    0.5 / 99.5 percentiles of its own positive pixels) and stored as grey uint8 (one channel of
    that RGB), with its instance labels (uint16) and a line of metadata
    ``split/folder/stem|cell type|DNA stain`` (cell type and stain from ``image-info.csv`` where
    it lists the image, else from the folder name).
    """
    import csv

    import tifffile
    from skimage import io

    root = Path(package_dir)
    info = {}
    for csv_path in root.glob("*-data/image-info.csv"):
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                info[(row["dataset"], Path(row["image"]).stem)] = row
    arrays: dict[str, np.ndarray] = {}
    meta = []
    k = 0
    for split in MNFINDER_SPLITS:
        for img_path in sorted((root / f"{split}-data").glob("*/images/*.tif")):
            folder = img_path.parent.parent.name
            mask_path = img_path.parent.parent / "nucleus_masks" / f"{img_path.stem}.png"
            if not mask_path.exists():
                continue
            raw = tifffile.imread(img_path)
            rgb = to_rgb_uint8(raw, "fluorescence")
            row = info.get((folder, img_path.stem), {})
            cell = row.get("cell_type") or folder.split("_", 1)[-1]
            stain = row.get("dna_stain") or ""
            arrays[f"image_{k}"] = rgb[..., 0]
            arrays[f"labels_{k}"] = _mnfinder_instances(io.imread(mask_path)).astype(np.uint16)
            meta.append(f"{split}/{folder}/{img_path.stem}|{cell}|{stain}")
            k += 1
    out = Path(out)
    np.savez_compressed(out, meta=np.array(meta), **arrays)
    return out


def convert_histolytics_stroma(package_dir: str | Path, out: str | Path) -> Path:
    """Rasterise the nuclei of histolytics 0.3.0's stroma image into one ``.npz``.

    ``package_dir`` is the unpacked package (``.../histolytics``); its
    ``data/hgsc_stromal_cells.parquet`` holds 423 nucleus polygons (WKB, pixel coordinates of
    the 1500 x 1500 ``data/hgsc_stromal_he.jpg``) with a ``class_name`` (connective,
    inflammatory, neoplastic). Each polygon is filled (``skimage.draw.polygon``; a later
    polygon wins where two overlap) into ``instances`` (uint16, 1..N in file order) and
    ``classes`` (uint8, :data:`HISTOLYTICS_CLASSES`). Needs ``shapely`` and ``pyarrow`` (only
    for this conversion; the converted file ships in tests/data).
    """
    import pyarrow.parquet as pq
    import shapely
    from skimage.draw import polygon

    data = Path(package_dir) / "data"
    table = pq.read_table(data / "hgsc_stromal_cells.parquet").to_pandas()
    shape = (1500, 1500)
    instances = np.zeros(shape, np.uint16)
    classes = np.zeros(shape, np.uint8)
    for k, (wkb, name) in enumerate(zip(table["geometry"], table["class_name"]), start=1):
        ring = np.asarray(shapely.from_wkb(wkb).exterior.coords)
        rr, cc = polygon(ring[:, 1], ring[:, 0], shape)
        instances[rr, cc] = k
        classes[rr, cc] = HISTOLYTICS_CLASSES[name]
    out = Path(out)
    np.savez_compressed(out, instances=instances, classes=classes)
    return out


def convert_ndev(package_dir: str | Path, out: str | Path) -> Path:
    """Convert ndev-sampledata 0.0.3's scratch assay (OME-TIFF C=4 x T=10 x 210 x 576 uint16,
    0.619 um/px; channel 0 Hoechst 33342, channel 2 nuclei labels) into one ``.npz``: per
    frame the Hoechst image as grey uint8 (the Predictor's fluorescence conversion) and the
    labels (uint16)."""
    import tifffile

    path = Path(package_dir) / "samples" / "scratch-assay-labeled-10T-2Ch.tiff"
    data = tifffile.imread(path)  # (C, T, Y, X)
    images = np.stack(
        [to_rgb_uint8(data[0, t], "fluorescence")[..., 0] for t in range(data.shape[1])]
    )
    labels = data[2].astype(np.uint16)
    out = Path(out)
    np.savez_compressed(out, images=images, labels=labels, mpp=np.float32(0.619))
    return out


def _fluorescence_image(grey: np.ndarray, labels: np.ndarray, name: str, **kw) -> AnnotatedImage:
    lab = np.asarray(labels).astype(np.int32)
    return AnnotatedImage(
        image=np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=2),
        classes=(lab > 0).astype(np.int32),
        prompts=dict(FLUORESCENCE_PROMPTS),
        instances=lab,
        modality="fluorescence",
        name=name,
        **kw,
    )


def load_mnfinder(splits=MNFINDER_SPLITS, root: Path | None = None) -> list[AnnotatedImage]:
    """mnfinder's annotated images of the given splits ("training", "validation", "test"), as
    fluorescence ``nuclei`` AnnotatedImages named ``mnfinder <split>/<folder>/<stem>``.
    Their cell type / stain: :func:`mnfinder_info`."""
    root = Path(root) if root is not None else repo_root()
    path = root / "tests" / "data" / MNFINDER_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run from a source checkout of napari-biomedparse (the converted "
            "mnfinder data live in tests/data)."
        )
    out = []
    with np.load(path) as z:
        for k, line in enumerate(z["meta"]):
            key = str(line).split("|")[0]
            if key.split("/")[0] in splits:
                out.append(
                    _fluorescence_image(z[f"image_{k}"], z[f"labels_{k}"], f"mnfinder {key}")
                )
    return out


def mnfinder_info(root: Path | None = None) -> dict[str, dict[str, str]]:
    """``{"mnfinder <split>/<folder>/<stem>": {"split", "folder", "cell_type", "stain"}}``."""
    root = Path(root) if root is not None else repo_root()
    with np.load(root / "tests" / "data" / MNFINDER_FILE) as z:
        meta = [str(m) for m in z["meta"]]
    out = {}
    for line in meta:
        key, cell, stain = line.split("|")
        split, folder, _ = key.split("/", 2)
        cell = "RPE-1" if cell == "RPE1" else cell  # the folder names say RPE1, the table RPE-1
        out[f"mnfinder {key}"] = {
            "split": split,
            "folder": folder,
            "cell_type": cell,
            "stain": stain,
        }
    return out


def load_ndev(frames=(0,), root: Path | None = None) -> list[AnnotatedImage]:
    """Frames of the ndev-sampledata scratch assay (210 x 576 px, 0.619 um/px, Hoechst) with
    its nuclei labels, which are probably model output: used for evaluation only."""
    root = Path(root) if root is not None else repo_root()
    with np.load(root / "tests" / "data" / NDEV_FILE) as z:
        images, labels = z["images"], z["labels"]
    return [_fluorescence_image(images[t], labels[t], f"ndev scratch assay t={t}") for t in frames]
