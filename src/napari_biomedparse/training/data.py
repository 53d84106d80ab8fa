"""Training data: annotated images, their sources (triples, folders, napari layers) and tiles.

An :class:`AnnotatedImage` is one image with a per-pixel class map and the text prompt of each
class value. Training draws random tiles (``tile_size`` x ``tile_size`` pixels at the image's
own pixel size, optionally rescaled) from the pixels that are not excluded (``ignore``), applies
the augmentations of :mod:`napari_biomedparse.training.augment` and returns, per tile, the RGB
image and one binary mask per prompt.

Sources
-------
* triples ``(image, mask, prompt)``: ``mask`` is a binary mask or instance labels (every
  non-zero pixel belongs to ``prompt``), or a class map when ``prompt`` is a mapping
  ``{class value: prompt}``;
* a folder (see :func:`load_folder` for the layout);
* napari layers: the ``.data`` of an Image and of a Labels layer plus a mapping
  ``{label value: prompt}`` (:func:`from_arrays`; the widget parses text such as
  ``"1: connective tissue cells, 2: inflammatory cells"`` with :func:`parse_prompt_mapping`).

This module does not import napari.

(Longer than 400 lines on purpose: everything here makes or uses :class:`AnnotatedImage`:
its checks, the sources that build one (triples, folders, layers), the held-out split, and
:class:`TileSampler`, which draws the training tiles from a list of them, with the process-pool
helpers that give worker processes a copy of the sampler. The natural next split is the tile
part (``separate_touching`` to the end) into its own module.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment_tile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".npz")


@dataclass
class AnnotatedImage:
    """One training image.

    Attributes:
        image: (H, W, 3) uint8 RGB, already converted from the acquisition (see
            :func:`to_rgb_uint8`).
        classes: (H, W) int class map; 0 is background, value ``v`` belongs to ``prompts[v]``.
        prompts: class value -> text prompt.
        instances: optional (H, W) int32 instance labels (0 background), used to keep touching
            objects apart in the training target and for instance metrics.
        ignore: optional (H, W) bool; True pixels are never shown to training (held-out regions,
            unannotated areas). Tiles are drawn only where ``ignore`` is False.
        modality: modality of the image ("pathology", "fluorescence", ...).
        weight: relative probability of drawing tiles from this image.
        name: a label for messages.
    """

    image: np.ndarray
    classes: np.ndarray
    prompts: dict[int, str]
    instances: np.ndarray | None = None
    ignore: np.ndarray | None = None
    modality: str = "pathology"
    weight: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"AnnotatedImage {self.name!r}: image must be (H, W, 3) uint8 RGB, got "
                f"{img.shape} {img.dtype}; convert it with training.data.to_rgb_uint8(image)."
            )
        cls = np.asarray(self.classes)
        if cls.shape != img.shape[:2]:
            raise ValueError(
                f"AnnotatedImage {self.name!r}: labels shape {cls.shape} differs from image "
                f"shape {img.shape[:2]}; the labels must be drawn on the same pixel grid."
            )
        if not np.issubdtype(cls.dtype, np.integer):
            if np.issubdtype(cls.dtype, np.bool_):
                cls = cls.astype(np.int32)
            else:
                raise ValueError(
                    f"AnnotatedImage {self.name!r}: labels must be integer or bool, got {cls.dtype}."
                )
        values = {int(v) for v in np.unique(cls)} - {0}
        missing = sorted(values - set(self.prompts))
        if missing:
            raise ValueError(
                f"AnnotatedImage {self.name!r}: label values {missing} have no prompt; give a "
                f"prompt for every label value, e.g. {{{missing[0]}: 'nuclei'}}."
            )
        if not self.prompts:
            raise ValueError(f"AnnotatedImage {self.name!r}: no prompts given.")
        from napari_biomedparse.inference.modalities import normalize_modality

        try:  # a misspelt modality would train an unusable vocabulary key
            normalize_modality(self.modality)
        except ValueError as exc:
            raise ValueError(f"AnnotatedImage {self.name!r}: {exc}") from None
        self.image = img
        self.classes = cls.astype(np.int32, copy=False)
        self.prompts = {int(k): str(v).strip() for k, v in self.prompts.items()}
        if self.instances is not None:
            inst = np.asarray(self.instances)
            if inst.shape != cls.shape:
                raise ValueError(
                    f"AnnotatedImage {self.name!r}: instances shape {inst.shape} differs from "
                    f"labels shape {cls.shape}."
                )
            self.instances = inst.astype(np.int32, copy=False)
        if self.ignore is not None:
            ign = np.asarray(self.ignore, dtype=bool)
            if ign.shape != cls.shape:
                raise ValueError(
                    f"AnnotatedImage {self.name!r}: ignore shape {ign.shape} differs from "
                    f"labels shape {cls.shape}."
                )
            self.ignore = ign

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.classes.shape)  # type: ignore[return-value]

    def crop(self, ys: slice, xs: slice, name: str | None = None) -> AnnotatedImage:
        """The sub-image ``[ys, xs]`` (e.g. a held-out region), as a new AnnotatedImage."""
        return AnnotatedImage(
            image=self.image[ys, xs].copy(),
            classes=self.classes[ys, xs].copy(),
            prompts=dict(self.prompts),
            instances=None if self.instances is None else self.instances[ys, xs].copy(),
            ignore=None if self.ignore is None else self.ignore[ys, xs].copy(),
            modality=self.modality,
            weight=self.weight,
            name=name or f"{self.name}[{ys.start}:{ys.stop},{xs.start}:{xs.stop}]",
        )


# ----------------------------------------------------------------------------------------------
# conversion of acquisitions to RGB uint8


def to_rgb_uint8(image: np.ndarray, modality: str = "pathology") -> np.ndarray:
    """Convert an image to (H, W, 3) uint8 RGB with the modality's preset intensity scaling.

    Delegates to :func:`napari_biomedparse.inference.preprocessing.to_rgb_uint8`, so training
    sees exactly what the Predictor feeds the model: uint8 RGB passes unchanged; grey and
    non-uint8 images are clipped to the 0.5th / 99.5th percentiles of their positive pixels,
    scaled to 0..255 and (grey) stacked to three channels (official ``process_intensity_image``).

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype.
        modality: modality name ("pathology", "fluorescence", ...).

    Returns:
        (H, W, 3) uint8.
    """
    from napari_biomedparse.inference.preprocessing import to_rgb_uint8 as preset

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(
            f"expected a 2-D grey or (H, W, 3) RGB image, got shape {a.shape}; for stacks or "
            "multi-channel images pick one plane / channel (or three channels) first."
        )
    if a.dtype == np.uint8 and a.ndim == 3:
        return np.ascontiguousarray(a[..., :3])
    return preset(a, modality)


# ----------------------------------------------------------------------------------------------
# sources


def parse_prompt_mapping(text: str | Mapping) -> dict[int, str]:
    """Parse ``"1: connective tissue cells, 2: inflammatory cells"`` into ``{1: ..., 2: ...}``.

    Entries are separated by commas, semicolons or new lines; each is ``value: prompt`` (``=`` is
    accepted instead of ``:``). A mapping passes through with its keys converted to int.
    """
    if isinstance(text, Mapping):
        out = {int(k): str(v).strip() for k, v in text.items()}
    else:
        out = {}
        for part in re.split(r"[,;\n]", str(text)):
            part = part.strip()
            if not part:
                continue
            m = re.fullmatch(r"(\d+)\s*[:=]\s*(.+)", part)
            if not m:
                raise ValueError(
                    f"cannot read prompt entry {part!r}: write 'label value: prompt', e.g. "
                    "'1: neoplastic cells, 2: inflammatory cells'."
                )
            out[int(m.group(1))] = m.group(2).strip()
    if not out:
        raise ValueError("no prompts given: write e.g. '1: nuclei'.")
    if any(k <= 0 for k in out):
        raise ValueError("label value 0 is background and cannot have a prompt; use values >= 1.")
    if any(not v for v in out.values()):
        raise ValueError("every label value needs a non-empty prompt.")
    return out


def from_arrays(
    image: np.ndarray,
    labels: np.ndarray,
    prompts: str | Mapping[int, str],
    *,
    instances: np.ndarray | None = None,
    modality: str = "pathology",
    ignore: np.ndarray | None = None,
    name: str = "layers",
    labels_are_instances: bool = False,
) -> AnnotatedImage:
    """An AnnotatedImage from arrays, e.g. the ``.data`` of a napari Image and Labels layer.

    Args:
        image: (H, W) grey, (H, W, 3) RGB, any dtype (converted with :func:`to_rgb_uint8`).
        labels: (H, W) int. A class map (values are keys of ``prompts``; every non-zero
            value needs a prompt) or, with ``labels_are_instances=True`` or when ``prompts`` is
            a single prompt without a value (e.g. "nuclei"), instance labels of that prompt.
        prompts: ``{value: prompt}`` or text ``"1: nuclei, 2: ..."``, or a single prompt string
            without a value (then every non-zero label is that prompt).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(
            f"labels must be 2-D (H, W), got shape {lab.shape}; for a 3-D Labels layer pick "
            "the annotated plane first."
        )
    if isinstance(prompts, str) and not re.search(r"\d+\s*[:=]", prompts):
        mapping = {1: prompts.strip()}
        labels_are_instances = True
    else:
        mapping = parse_prompt_mapping(prompts)
    if labels_are_instances:
        if len(mapping) != 1:
            raise ValueError("instance labels need exactly one prompt (e.g. '1: nuclei').")
        value = next(iter(mapping))
        if instances is None and lab.max() > 1:
            instances = lab
        classes = (lab > 0).astype(np.int32) * value
    else:
        classes = lab
    rgb = to_rgb_uint8(image, modality)
    if rgb.shape[:2] != lab.shape:
        raise ValueError(
            f"image shape {rgb.shape[:2]} and labels shape {lab.shape} differ: the Labels layer "
            "must cover the Image layer pixel for pixel (same shape, no scale/translate)."
        )
    return AnnotatedImage(
        image=rgb,
        classes=classes,
        prompts=mapping,
        instances=instances,
        ignore=ignore,
        modality=modality,
        name=name,
    )


def from_triples(
    triples: Iterable[tuple[np.ndarray, np.ndarray, str | Mapping[int, str]]],
    modality: str = "pathology",
) -> list[AnnotatedImage]:
    """AnnotatedImages from ``(image, mask_or_labels, prompt)`` triples.

    ``prompt`` is a string (every non-zero pixel of the mask is that prompt; instance labels
    are kept as instances) or a mapping ``{class value: prompt}`` for a class map. Triples that
    share the same image object are merged into one AnnotatedImage with several prompts.
    """
    out: list[AnnotatedImage] = []
    merged: dict[int, AnnotatedImage] = {}
    for i, item in enumerate(triples):
        if len(item) != 3:
            raise ValueError(
                f"triple {i} has {len(item)} elements; give (image, mask or labels, prompt)."
            )
        image, mask, prompt = item
        if isinstance(prompt, str):
            a = from_arrays(
                image,
                mask,
                prompt,
                modality=modality,
                name=f"triple {i}",
                labels_are_instances=True,
            )
        else:
            a = from_arrays(image, mask, prompt, modality=modality, name=f"triple {i}")
        key = id(image)
        if key in merged and isinstance(prompt, str):
            base = merged[key]
            if base.classes.shape != a.classes.shape:
                raise ValueError(f"triple {i}: mask shape differs from the earlier mask.")
            text = a.prompts[1]
            inv = {v: k for k, v in base.prompts.items()}
            value = inv.get(text, max(base.prompts) + 1)
            base.prompts[value] = text
            base.classes = np.where(a.classes > 0, value, base.classes).astype(np.int32)
            continue
        merged[key] = a
        out.append(a)
    if not out:
        raise ValueError("no training triples given.")
    return out


def _read_image(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix == ".npz":
        with np.load(path) as z:
            return z[z.files[0]]
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from skimage import io

    return io.imread(path)


def _find(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for s in suffixes:
        p = folder / f"{stem}{s}"
        if p.exists():
            return p
    return None


def load_folder(path: str | Path) -> list[AnnotatedImage]:
    """Load a training folder.

    Layout::

        my_dataset/
          dataset.json        {"modality": "pathology",
                               "prompts": {"1": "neoplastic cells", "2": "inflammatory cells"},
                               "labels": "classes"}        # or "instances" (one prompt)
          images/NAME.png     image (png, jpg, tif, npy); RGB or grey (grey/16-bit is percentile-
                              scaled like the presets)
          labels/NAME.png     same size, int: class values (keys of "prompts"), or instance ids
                              when "labels" is "instances"
          instances/NAME.tif  optional instance ids for class-map datasets
          ignore/NAME.png     optional mask: non-zero pixels are never used for training

    Returns:
        one AnnotatedImage per image that has labels.
    """
    root = Path(path)
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: a training folder needs dataset.json with 'prompts' "
            "(see docs/finetuning.md for the layout)."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{meta_path} is not valid JSON ({exc}); fix it, e.g. "
            '{"modality": "pathology", "prompts": {"1": "nuclei"}} (see docs/finetuning.md)'
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{meta_path} must hold a JSON object, e.g. {{'prompts': {{'1': 'nuclei'}}}}"
        )
    if "prompts" not in meta:
        raise ValueError(
            f"{meta_path} has no 'prompts' entry, e.g. {{'prompts': {{'1': 'nuclei'}}}}"
        )
    prompts = parse_prompt_mapping(meta["prompts"])
    modality = str(meta.get("modality", "pathology"))
    as_instances = str(meta.get("labels", "classes")).lower().startswith("inst")
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"{root} needs the sub-folders images/ and labels/.")
    out = []
    for img_path in sorted(img_dir.iterdir()):
        if img_path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        lab_path = _find(lab_dir, img_path.stem, LABEL_SUFFIXES)
        if lab_path is None:
            continue
        inst_path = _find(root / "instances", img_path.stem, LABEL_SUFFIXES)
        ign_path = _find(root / "ignore", img_path.stem, LABEL_SUFFIXES)
        out.append(
            from_arrays(
                _read_image(img_path),
                _read_image(lab_path),
                prompts,
                instances=None if inst_path is None else _read_image(inst_path),
                ignore=None if ign_path is None else _read_image(ign_path) > 0,
                modality=modality,
                name=img_path.name,
                labels_are_instances=as_instances,
            )
        )
    if not out:
        raise ValueError(f"no image in {img_dir} has a label file of the same name in {lab_dir}.")
    return out


def as_annotated(data, modality: str = "pathology") -> list[AnnotatedImage]:
    """Normalise any supported training source to a list of AnnotatedImage.

    Accepts a folder path, an AnnotatedImage, or a sequence of AnnotatedImages and/or
    ``(image, mask, prompt)`` triples.
    """
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        return load_folder(data)
    if isinstance(data, AnnotatedImage):
        return [data]
    items = list(data)
    out: list[AnnotatedImage] = []
    triples = []
    for it in items:
        if isinstance(it, AnnotatedImage):
            out.append(it)
        elif isinstance(it, (tuple, list)) and len(it) == 3:
            triples.append(tuple(it))
        else:
            raise TypeError(
                "training data must be a folder path, AnnotatedImage objects or "
                f"(image, mask, prompt) triples; got {type(it).__name__}."
            )
    if triples:
        out.extend(from_triples(triples, modality=modality))
    if not out:
        raise ValueError("no training data given.")
    return out


# ----------------------------------------------------------------------------------------------
# held-out regions


def holdout_region(shape: tuple[int, int], region: str = "bottom-right") -> tuple[slice, slice]:
    """The fixed held-out region of an image: a quarter (``"bottom-right"`` etc.)."""
    h, w = shape
    hy, hx = h // 2, w // 2
    regions = {
        "bottom-right": (slice(hy, h), slice(hx, w)),
        "bottom-left": (slice(hy, h), slice(0, hx)),
        "top-right": (slice(0, hy), slice(hx, w)),
        "top-left": (slice(0, hy), slice(0, hx)),
    }
    if region not in regions:
        raise ValueError(f"unknown held-out region {region!r}; choose one of {sorted(regions)}.")
    return regions[region]


def split_holdout(
    sample: AnnotatedImage, region: str = "bottom-right"
) -> tuple[AnnotatedImage, AnnotatedImage]:
    """Split into (training image with the region ignored, held-out crop of the region)."""
    ys, xs = holdout_region(sample.shape, region)
    ignore = np.zeros(sample.shape, bool) if sample.ignore is None else sample.ignore.copy()
    ignore[ys, xs] = True
    train = AnnotatedImage(
        image=sample.image,
        classes=sample.classes,
        prompts=dict(sample.prompts),
        instances=sample.instances,
        ignore=ignore,
        modality=sample.modality,
        weight=sample.weight,
        name=f"{sample.name} (train)",
    )
    return train, sample.crop(ys, xs, name=f"{sample.name} (held-out {region})")


# ----------------------------------------------------------------------------------------------
# tiles


def separate_touching(classes: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
    """Class map with a one-pixel gap between touching instances, so that a predicted mask
    splits into the right objects. (H, W) int -> (H, W) int (a copy; unchanged without
    instances). The gap is carved out of the instance with the larger id."""
    if instances is None:
        return classes
    from scipy import ndimage as ndi

    inst = instances
    big = np.iinfo(np.int32).max
    smaller_nb = ndi.minimum_filter(np.where(inst > 0, inst, big).astype(np.int64), size=3)
    touching = (inst > 0) & (smaller_nb < inst)
    out = classes.copy()
    out[touching] = 0
    return out


@dataclass
class TileSampler:
    """Draws augmented training tiles from a list of AnnotatedImages.

    Args:
        images: training images (their ``ignore`` pixels are never drawn).
        tile_size: side S of the tiles given to the model (pixels).
        augment: augmentation settings (None: no augmentation).
        seed: random seed (the sampler is deterministic given the seed).
        separate: remove a one-pixel gap between touching instances in the targets.

    ``prompts`` is the sorted union of all prompts; each tile's targets are indexed by it.
    """

    images: list[AnnotatedImage]
    tile_size: int = 256
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    seed: int = 0
    separate: bool = True

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("TileSampler needs at least one training image.")
        self.rng = np.random.default_rng(self.seed)
        names: list[str] = []
        for a in self.images:
            for p in a.prompts.values():
                if p not in names:
                    names.append(p)
        self.prompts = names
        self._targets = [
            separate_touching(a.classes, a.instances) if self.separate else a.classes
            for a in self.images
        ]
        w = np.array([max(a.weight, 0.0) for a in self.images], float)
        self._p = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
        # integral images of the ignored pixels: O(1) test of a tile origin
        self._ii = [
            None
            if a.ignore is None or not a.ignore.any()
            else np.pad(a.ignore.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            for a in self.images
        ]
        for i, a in enumerate(self.images):
            if self._ii[i] is not None and not self._origins(i, self.tile_size).any():
                raise ValueError(
                    f"{a.name}: no {self.tile_size} x {self.tile_size} tile fits in its "
                    "trainable (not ignored) area; use a smaller tile size or ignore less."
                )

    def _origins(self, i: int, s: int) -> np.ndarray:
        """(H-s+1, W-s+1) bool of the tile origins of image i whose s x s tile has no ignored
        pixel."""
        ii = self._ii[i]
        h, w = self.images[i].shape
        if h < s or w < s:
            return np.zeros((1, 1), bool)
        return (ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]) == 0

    def _draw_origin(self, i: int, s: int, rng: np.random.Generator) -> tuple[int, int] | None:
        h, w = self.images[i].shape
        ii = self._ii[i]
        if ii is None:
            return int(rng.integers(0, max(h - s, 0) + 1)), int(rng.integers(0, max(w - s, 0) + 1))
        if h < s or w < s:
            return None
        for _ in range(200):  # rejection sampling with the integral image
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            if ii[y + s, x + s] - ii[y, x + s] - ii[y + s, x] + ii[y, x] == 0:
                return y, x
        ys, xs = np.nonzero(self._origins(i, s))  # small trainable area: enumerate
        if ys.size == 0:
            return None
        k = int(rng.integers(0, ys.size))
        return int(ys[k]), int(xs[k])

    def tile(self, rng: np.random.Generator | None = None) -> tuple:
        """One augmented tile (drawn with ``rng``, default the sampler's own generator).

        Returns:
            rgb (S, S, 3) uint8, masks (P, S, S) bool (one per ``self.prompts``), known (P,) bool
            (the prompt belongs to this image's vocabulary: its mask is meaningful even if
            empty), index of the source image.
        """
        rng = self.rng if rng is None else rng
        i = int(rng.choice(len(self.images), p=self._p))
        a = self.images[i]
        S = self.tile_size
        aug = self.augment
        scale = 1.0
        if aug is not None and aug.scale_range is not None:
            lo, hi = aug.scale_range
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        src = int(round(S / scale))
        origin = self._draw_origin(i, src, rng) if src != S else None
        if origin is None:
            src = S
            origin = self._draw_origin(i, S, rng)
            if origin is None:
                origin = (0, 0)
        y0, x0 = origin
        img = a.image[y0 : y0 + src, x0 : x0 + src]
        cls = self._targets[i][y0 : y0 + src, x0 : x0 + src]
        if img.shape[:2] != (src, src):  # image smaller than a tile: zero-pad
            ph, pw = src - img.shape[0], src - img.shape[1]
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            cls = np.pad(cls, ((0, ph), (0, pw)))
        if src != S:
            from scipy import ndimage as ndi

            z = S / src
            img = ndi.zoom(
                img.astype(np.float32), (z, z, 1), order=1, grid_mode=True, mode="nearest"
            )[:S, :S]
            img = np.clip(np.round(img), 0, 255).astype(np.uint8)
            cls = ndi.zoom(cls, (z, z), order=0, grid_mode=True, mode="nearest")[:S, :S]
        if aug is not None:
            img, cls = augment_tile(img, cls, aug, rng, modality=a.modality)
        masks = np.zeros((len(self.prompts), S, S), bool)
        known = np.zeros(len(self.prompts), bool)
        for v, p in a.prompts.items():
            j = self.prompts.index(p)
            masks[j] |= cls == v
            known[j] = True
        return img, masks, known, i

    def batch(self, n: int, pool=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """n tiles: rgb (n, S, S, 3) uint8, masks (n, P, S, S) bool, known (n, P) bool,
        source image index (n,).

        Each tile has its own generator seeded from the sampler's, so the result is the same
        whether the tiles are made in order or in parallel (``pool``: an executor with
        ``map``, e.g. ``concurrent.futures.ThreadPoolExecutor``).
        """
        seeds = self.rng.integers(0, 2**63 - 1, size=n)
        gens = [np.random.default_rng(int(sd)) for sd in seeds]
        tiles = (
            list(pool.map(self.tile, gens)) if pool is not None else [self.tile(g) for g in gens]
        )
        return (
            np.stack([t[0] for t in tiles]),
            np.stack([t[1] for t in tiles]),
            np.stack([t[2] for t in tiles]),
            np.array([t[3] for t in tiles]),
        )


_WORKER_SAMPLER: TileSampler | None = None


def _init_worker(sampler: TileSampler) -> None:
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = sampler


def _worker_tile(seed: int):
    return _WORKER_SAMPLER.tile(np.random.default_rng(seed))


def process_pool(sampler: TileSampler, workers: int):
    """A process pool whose workers hold a copy of ``sampler`` (made by fork where available,
    so the images are not pickled per tile); pass it to :meth:`TileSampler.batch`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(sampler,)
    )
    pool._napari_biomedparse_sampler = sampler
    return pool
