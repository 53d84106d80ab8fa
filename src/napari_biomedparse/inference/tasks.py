"""The three BiomedParse tasks on any image: segmentation, detection, recognition.

Each function takes a predictor: any object with ``predict(rgb_uint8 (S, S, 3), prompts,
joint=False) -> float32 (P, S, S)`` (the official ``interactive_infer_image`` semantics) and a
``model`` attribute carrying ``config.input_size`` and ``metadata`` (``target_dist``,
``vocabulary``); :class:`~napari_biomedparse.inference.predictor.Predictor` delegates its
``segment``/``detect``/``recognize`` methods here.

Images: (H, W) grey, (H, W, 3) RGB, (H, W, 4) RGBA, (H, W, C) multichannel with ``channels=``;
a leading Z axis makes a 3-D stack ((Z, H, W) or (Z, H, W, C)), processed slice by slice
(lazily when it is a dask array, for :func:`segment`). numpy, dask, or anything
``np.asarray`` accepts (a napari layer's data).

How the model is applied depends on what its metadata declares (:mod:`.tiled`):

- whole-image (no ``metadata["inference"]``, or mode "whole": BiomedParse v1): per image the
  modality preset is applied (:func:`~.preprocessing.preprocess`: intensity, pad to square,
  resize to the input size), the model runs at its input size, the existence test is computed
  there exactly as in the official notebooks (on the preprocessed square image), and
  probabilities are mapped back to the input's grid (:func:`~.preprocessing.unpad`).
- tiled (mode "tiled", models trained on tiles such as the bundled default model): only the
  intensity part of the preset is applied (:func:`~.preprocessing.to_rgb_uint8`), the image
  is predicted in overlapping tiles at its own resolution (:func:`~.tiled.predict_tiled`,
  needs ``predictor.predict_batch``), after rescaling it to the model's ``mpp`` when the caller
  gives the image's ``mpp`` (probabilities resized back); the existence test is computed once
  per prompt on the whole image at its native resolution (RGB and probabilities of the input's
  size), not per tile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .existence import DEFAULT_P_THRESHOLD, TargetDistribution, existence_p_values
from .instances import instance_table, relabel_sequential, split_instances
from .modalities import is_in_vocabulary, normalize_modality, targets_for
from .objects import TABLE_COLUMNS, empty_table
from .preprocessing import as_channels_last, preprocess, to_rgb_uint8, unpad
from .prompts import parse_prompts
from .recognition import class_names as recognition_class_names
from .recognition import recognize_maps
from .results import Detection, Recognition
from .tiled import inference_spec, predict_tiled, rescale_factor, rescale_rgb, resize_probs

__all__ = ["detect", "recognize", "segment"]


# --------------------------------------------------------------------------- helpers


def _model(predictor):
    return getattr(predictor, "model", None)


def _input_size(predictor) -> int:
    cfg = getattr(_model(predictor), "config", None)
    size = getattr(cfg, "input_size", None)
    return int(size) if size else 1024


def _metadata(predictor) -> dict:
    meta = getattr(_model(predictor), "metadata", None)
    return meta if isinstance(meta, dict) else {}


def _resolve_target_dist(predictor, target_dist) -> TargetDistribution:
    """ "model" (default): the model's own statistics, else the official v1 statistics."""
    if isinstance(target_dist, str) and target_dist == "model":
        own = _metadata(predictor).get("target_dist")
        td = TargetDistribution.coerce(own) if own else None
        return td or TargetDistribution.official_v1()
    return TargetDistribution.coerce(target_dist) or TargetDistribution.official_v1()


def _is_dask(image) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        return False
    return isinstance(image, da.Array)


def _is_stack(shape: tuple, channels, is_3d: bool | None) -> bool:
    """Whether an image of this (channels-last) shape is a 3-D stack of 2-D images."""
    ndim = len(shape)
    if is_3d is not None:
        if is_3d and ndim not in (3, 4):
            raise ValueError(f"is_3d=True needs (Z, H, W) or (Z, H, W, C); got shape {shape}")
        if not is_3d and ndim not in (2, 3):
            raise ValueError(f"is_3d=False needs (H, W) or (H, W, C); got shape {shape}")
        return bool(is_3d)
    if ndim == 2:
        return False
    if ndim == 4:
        return True
    if ndim == 3:
        if channels is not None:
            return False
        if shape[-1] <= 4:
            return False  # (H, W, 1|3|4): grey, RGB or RGBA
        if shape[-1] <= 32 and shape[-1] * 4 < min(shape[0], shape[1]):
            raise ValueError(
                f"ambiguous image of shape {shape}: a multichannel (H, W, C) image with "
                f"{shape[-1]} channels or a stack of {shape[0]} slices of {shape[1]} x "
                f"{shape[2]} pixels? Pass channels=[...] (multichannel) or is_3d=True (stack)"
            )
        return True  # (Z, H, W)
    raise ValueError(
        f"cannot interpret an image of shape {shape}: expected (H, W), (H, W, C), (Z, H, W) or "
        "(Z, H, W, C) (use channel_axis= if channels are not last)"
    )


def _prepare(image, channel_axis):
    """Channels-last array (dask stays dask) and whether it is lazy."""
    if _is_dask(image):
        if channel_axis is not None:
            import dask.array as da

            image = da.moveaxis(image, channel_axis, -1)
        return image, True
    return as_channels_last(np.asarray(image), channel_axis), False


def _run_2d(predictor, image2d, prompts, it, channels, joint):
    """Preprocess, predict. Returns (rgb (S,S,3) uint8, probs_sq (P,S,S), pad_info)."""
    rgb, info = preprocess(np.asarray(image2d), it, channels=channels, size=_input_size(predictor))
    probs_sq = np.asarray(predictor.predict(rgb, prompts, joint=joint), dtype=np.float32)
    if probs_sq.shape != (len(prompts), *rgb.shape[:2]):
        raise RuntimeError(
            f"predictor.predict returned shape {probs_sq.shape}; expected "
            f"{(len(prompts), *rgb.shape[:2])}"
        )
    return rgb, probs_sq, info


def _tiled_spec(predictor) -> dict | None:
    """The model's tiled-inference settings (None: official whole-image semantics)."""
    spec = inference_spec(_model(predictor))
    if spec is not None and not hasattr(predictor, "predict_batch"):
        raise TypeError(
            "the model declares tiled inference (metadata['inference']) but the predictor has no "
            "predict_batch(tiles, prompts); use napari_biomedparse.Predictor"
        )
    return spec


def _native_rgb(predictor, image2d, it, channels) -> np.ndarray:
    """Tiled mode: the intensity part of the preset only, at the image's own size."""
    arr = np.asarray(image2d)
    if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the image is empty: an array of shape {arr.shape}")
    return to_rgb_uint8(arr, it, channels=channels)


def _tiled_probs(predictor, rgb, prompts, spec, joint, mpp) -> np.ndarray:
    """Tiled mode: (P, H, W) at ``rgb``'s size; rescaled to the model's mpp and back when the
    image's ``mpp`` is given."""
    f = rescale_factor(mpp, spec["mpp"])
    x = rescale_rgb(rgb, f) if f else rgb
    # tiles of the model input size (what predict_batch takes); the declared tile_size records
    # the training tiles, which may differ (the network is fully convolutional)
    probs = predict_tiled(predictor, x, prompts, overlap=spec["overlap"], joint=joint)
    return resize_probs(probs, rgb.shape[:2]) if f else probs


def _predict_2d(predictor, image2d, prompts, it, channels, joint, mpp=None):
    """(rgb, probs the existence test sees, probs (P, H, W) at the input's size)."""
    spec = _tiled_spec(predictor)
    if spec is None:
        rgb, probs_sq, info = _run_2d(predictor, image2d, prompts, it, channels, joint)
        return rgb, probs_sq, unpad(probs_sq, info)
    rgb = _native_rgb(predictor, image2d, it, channels)
    probs = _tiled_probs(predictor, rgb, prompts, spec, joint, mpp)
    return rgb, probs, probs


# --------------------------------------------------------------------------- segment


def segment(
    predictor,
    image,
    prompts,
    *,
    modality,
    site: str | None = None,
    channels=None,
    channel_axis: int | None = None,
    is_3d: bool | None = None,
    joint: bool = False,
    mpp: float | None = None,
):
    """Probability map per text prompt, at the input's size.

    Whole-image models (BiomedParse v1) see the image padded to a square and resized to their
    input size (official semantics); models whose metadata declares tiled inference (the
    bundled default model) see it in overlapping tiles at its own resolution, rescaled to the
    model's pixel size first when ``mpp`` is given (see the module docstring).

    Args:
        predictor: see the module docstring.
        image: (H, W), (H, W, 3|4), (H, W, C) with ``channels``, or a stack (Z, H, W[, C]).
        prompts: list of P text prompts (free text allowed).
        modality: modality or official image type ("pathology", "CT-Abdomen", "fluorescence").
        site: anatomical site (CT: chooses the HU window).
        channels: 1-3 channel indices to use for multichannel images.
        channel_axis: the channel axis if not last.
        is_3d: force (True) or forbid (False) the stack interpretation; None = automatic
            ((Z, H, W) when the last axis is longer than 4 and no ``channels`` are given).
        joint: run all prompts in one coupled call (official ``interactive_infer_image`` with a
            prompt list); default False = one prompt per call, image encoded once.
        mpp: the image's pixel size in microns; used only by tiled models that declare their
            own ``mpp`` (the image is rescaled to it and the probabilities back); ignored by
            whole-image models.

    Returns:
        float32 (P, H, W) probabilities in [0, 1]; (P, Z, H, W) for a stack (a dask array,
        computed slice by slice on demand, if the input is a dask array).
    """
    prompts = parse_prompts(prompts)
    it = normalize_modality(modality, site)
    image, lazy = _prepare(image, channel_axis)
    if not _is_stack(tuple(image.shape), channels, is_3d):
        arr = np.asarray(image)
        return _predict_2d(predictor, arr, prompts, it, channels, joint, mpp)[2]

    def one(slice2d):
        return _predict_2d(predictor, np.asarray(slice2d), prompts, it, channels, joint, mpp)[2]

    z, h, w = image.shape[:3]
    if lazy:
        import dask
        import dask.array as da

        parts = [
            da.from_delayed(
                dask.delayed(one)(image[i]), shape=(len(prompts), h, w), dtype=np.float32
            )
            for i in range(z)
        ]
        return da.stack(parts, axis=1)
    out = np.empty((len(prompts), z, h, w), dtype=np.float32)
    for i in range(z):
        out[:, i] = one(image[i])
    return out


# --------------------------------------------------------------------------- detect


def _instances_per_map(
    probs, masks_on, mask_threshold, split_kwargs, start: int
) -> tuple[np.ndarray, int]:
    """Instance labels per map (P, H, W) with ids unique across maps, starting after ``start``."""
    labels = np.zeros(probs.shape, dtype=np.int32)
    nxt = start
    for p in range(probs.shape[0]):
        if not masks_on[p]:
            continue
        lab = split_instances(probs[p] > mask_threshold, probs[p], **split_kwargs)
        n = int(lab.max())
        if n:
            labels[p] = np.where(lab > 0, lab + nxt, 0)
            nxt += n
    return labels, nxt


def _detect_2d(
    predictor,
    arr,
    prompts,
    it,
    channels,
    joint,
    td,
    p_threshold,
    mask_threshold,
    split_kwargs,
    mpp,
    start=0,
):
    rgb, probs_sq, probs = _predict_2d(predictor, arr, prompts, it, channels, joint, mpp)
    pv = existence_p_values(rgb, probs_sq, it, prompts, td)
    testable = ~np.isnan(pv)
    nonempty = (probs > mask_threshold).reshape(len(prompts), -1).any(1)
    if p_threshold:
        passes = np.where(testable, np.nan_to_num(pv, nan=1.0) >= p_threshold, True)
    else:
        passes = np.ones(len(prompts), dtype=bool)
    present = passes & nonempty
    labels, nxt = _instances_per_map(probs, present, mask_threshold, split_kwargs, start)
    tables = []
    for p, prompt in enumerate(prompts):
        if not present[p]:
            continue
        t = instance_table(
            labels[p],
            (labels[p] > 0).astype(np.int32),
            probs[p][None],
            [prompt],
            mpp=mpp,
        )
        t.insert(0, "prompt", prompt)
        tables.append(t)
    table = _concat(tables, ["prompt", *TABLE_COLUMNS])
    return probs, pv, present, testable, labels, table, nxt


def _concat(tables, columns) -> pd.DataFrame:
    tables = [t for t in tables if len(t)]
    if not tables:
        return empty_table(tuple(c for c in columns if c not in TABLE_COLUMNS))[columns]
    return pd.concat(tables, ignore_index=True)[columns]


def _split_kwargs(min_size, min_distance, split_params) -> dict:
    kw = dict(split_params or {})
    if min_size is not None:
        kw["min_size"] = min_size
    if min_distance is not None:
        kw["min_distance"] = min_distance
    return kw


def detect(
    predictor,
    image,
    prompts,
    *,
    modality,
    site: str | None = None,
    channels=None,
    channel_axis: int | None = None,
    is_3d: bool | None = None,
    joint: bool = False,
    p_threshold: float | None = DEFAULT_P_THRESHOLD,
    mask_threshold: float = 0.5,
    target_dist="model",
    min_size: int | None = None,
    min_distance: int | None = None,
    split_params: dict | None = None,
    mpp: float | None = None,
) -> Detection:
    """Whether each prompted object is present, and its instances.

    Every prompt is segmented (:func:`segment`) and tested with the official existence test
    (adjusted p-value, :func:`~.existence.existence_p_value`) on the preprocessed image, as the
    official notebooks do (tiled models: once per prompt on the whole image at its native
    resolution). A prompt with p-value below ``p_threshold`` is marked absent; a
    prompt whose target has no statistics is run and reported as not testable (p-value NaN,
    kept). Instances of present objects are split from their mask
    (:func:`~.instances.split_instances`) and measured.

    Args:
        predictor, image, prompts, modality, site, channels, channel_axis, is_3d, joint: as in
            :func:`segment`.
        p_threshold: existence threshold (official notebooks: 0.05); None = mark nothing absent.
        mask_threshold: probability threshold of the masks (official: 0.5).
        target_dist: "model" (the model's ``metadata["target_dist"]``, falling back to the
            official v1 statistics), a :class:`~.existence.TargetDistribution`, a dict, a path.
        min_size, min_distance: instance splitting parameters in pixels (None = size-aware
            defaults); ``split_params`` passes any other :func:`split_instances` argument.
        mpp: pixel size in microns (fills ``area_um2``; a tiled model with its own ``mpp`` sees
            the image rescaled to it, as in :func:`segment`).

    Returns:
        :class:`~.results.Detection`.
    """
    prompts = parse_prompts(prompts)
    it = normalize_modality(modality, site)
    td = _resolve_target_dist(predictor, target_dist)
    kw = _split_kwargs(min_size, min_distance, split_params)
    in_vocab = np.array([is_in_vocabulary(p, it, model=_model(predictor)) for p in prompts])
    image, _ = _prepare(image, channel_axis)
    common = (joint, td, p_threshold, mask_threshold, kw, mpp)
    if not _is_stack(tuple(image.shape), channels, is_3d):
        probs, pv, present, testable, labels, table, _ = _detect_2d(
            predictor, np.asarray(image), prompts, it, channels, *common
        )
    else:
        z = image.shape[0]
        res, start, tables = [], 0, []
        for i in range(z):
            r = _detect_2d(predictor, np.asarray(image[i]), prompts, it, channels, *common, start)
            start = r[6]
            t = r[5]
            t.insert(1, "z", i)
            tables.append(t)
            res.append(r)
        probs = np.stack([r[0] for r in res], axis=1)
        pv = np.stack([r[1] for r in res], axis=1)
        present = np.stack([r[2] for r in res], axis=1)
        testable = np.stack([r[3] for r in res], axis=1)
        labels = np.stack([r[4] for r in res], axis=1)
        table = _concat(tables, ["prompt", "z", *TABLE_COLUMNS])
    return Detection(
        prompts=prompts,
        probs=probs,
        p_values=pv,
        present=present,
        testable=testable,
        in_vocabulary=in_vocab,
        labels=labels,
        table=table,
        p_threshold=p_threshold,
        mask_threshold=mask_threshold,
        image_type=str(it),
    )


# --------------------------------------------------------------------------- recognize


def instances_from_class_map(
    class_map, probs, class_names, *, mpp=None, start: int = 0, **split_kwargs
) -> tuple[np.ndarray, pd.DataFrame]:
    """Split every class region of a class map into instances and measure them.

    Args:
        class_map: (H, W) int, 0 background, k = 1 + index into ``class_names``.
        probs: (P, H, W) float32 probabilities of the P classes.
        class_names: P names.
        mpp: microns per pixel or None.
        start: instance ids start at ``start + 1``.
        **split_kwargs: passed to :func:`~.instances.split_instances`.

    Returns:
        (labels (H, W) int32, table DataFrame as :func:`~.instances.instance_table`); every
        instance lies inside the region of its class (the class map is left as given).
    """
    class_map = np.asarray(class_map)
    labels = np.zeros(class_map.shape, dtype=np.int32)
    nxt = start
    for k in np.unique(class_map[class_map > 0]):
        region = class_map == k
        lab = split_instances(region, probs[k - 1], **split_kwargs)
        # holes filled by the splitting may hold another class: keep instances in their region
        lab = relabel_sequential(np.where(region, lab, 0))
        n = int(lab.max())
        if n:
            labels[lab > 0] = lab[lab > 0] + nxt
            nxt += n
    table = instance_table(labels, class_map, probs, class_names, mpp=mpp)
    return labels, table


def _predict_batches(predictor, rgb, targets, batch_size: int) -> np.ndarray:
    """Probabilities (P, S, S) of all targets, ``batch_size`` coupled prompts per call.

    batch_size 1 (official default) equals one call per target; the predictor decodes them from
    one image encoding. Larger batches are coupled (official multi-prompt call); the image is
    encoded once when the predictor offers ``encode``/``decode``.
    """
    if batch_size == 1:
        return np.asarray(predictor.predict(rgb, targets, joint=False), dtype=np.float32)
    batches = [targets[i : i + batch_size] for i in range(0, len(targets), batch_size)]
    if hasattr(predictor, "encode") and hasattr(predictor, "decode"):
        enc = predictor.encode(rgb)
        chunks = [
            predictor.decode(enc, b, joint=len(b) > 1).probabilities(*rgb.shape[:2])
            for b in batches
        ]
    else:
        chunks = [predictor.predict(rgb, b, joint=len(b) > 1) for b in batches]
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks], axis=0)


def _recognize_2d(
    predictor, arr, targets, it, channels, td, p_threshold, batch_size, kw, mpp, start=0
):
    spec = _tiled_spec(predictor)
    if spec is None:
        rgb, info = preprocess(np.asarray(arr), it, channels=channels, size=_input_size(predictor))
        probs_sq = _predict_batches(predictor, rgb, targets, batch_size)
        pv = existence_p_values(rgb, probs_sq, it, targets, td)
        probs = unpad(probs_sq, info)
    else:
        rgb = _native_rgb(predictor, arr, it, channels)
        # batch_size 1: every target decoded alone (joint=False), all in one pass per tile
        step = len(targets) if batch_size == 1 else batch_size
        batches = [targets[i : i + step] for i in range(0, len(targets), step)]
        probs = np.concatenate(
            [
                _tiled_probs(predictor, rgb, b, spec, batch_size > 1 and len(b) > 1, mpp)
                for b in batches
            ],
            axis=0,
        )
        pv = existence_p_values(rgb, probs, it, targets, td)
    class_map, kept = recognize_maps(probs, targets, pv, p_threshold)
    names = recognition_class_names(targets)  # "nuclei" beside classes: "unclassified nuclei"
    labels, table = instances_from_class_map(class_map, probs, names, mpp=mpp, start=start, **kw)
    return labels, class_map, kept, table, probs, pv


def recognize(
    predictor,
    image,
    *,
    modality,
    site: str | None = None,
    targets=None,
    channels=None,
    channel_axis: int | None = None,
    is_3d: bool | None = None,
    p_threshold: float | None = DEFAULT_P_THRESHOLD,
    target_dist="model",
    batch_size: int = 1,
    min_size: int | None = None,
    min_distance: int | None = None,
    split_params: dict | None = None,
    mpp: float | None = None,
) -> Recognition:
    """Every object of every target of the modality, as classified instances.

    The official ``interactive_infer_image_all`` rules: every target is segmented (``batch_size``
    prompts per model call, official default 1; whole image resized to the input size, or in
    tiles at the image's own resolution for models that declare tiled inference, as in
    :func:`segment`; the existence test then uses the whole image at native resolution), targets with existence p-value below
    ``p_threshold`` are dropped, overlapping targets suppressed in p-value order, and the
    remaining maps combined pixel-wise into a class map (:func:`~.recognition.recognize_maps`).
    Each class region is then split into instances (:func:`~.instances.split_instances`).

    Args:
        predictor, image, modality, site, channels, channel_axis, is_3d: as in :func:`segment`.
        targets: the targets to run; None = :func:`~.modalities.targets_for` the modality (the
            model's vocabulary for it if it has one, else the official list).
        p_threshold: existence threshold; None or 0 = no filtering.
        target_dist: as in :func:`detect`.
        batch_size: prompts per model call (coupled in one call, as the official batches).
        min_size, min_distance, split_params: instance splitting parameters (pixels).
        mpp: pixel size in microns (fills ``area_um2``; a tiled model with its own ``mpp`` sees
            the image rescaled to it, as in :func:`segment`).

    Returns:
        :class:`~.results.Recognition` (labels, classes, class_names, kept, table, probs,
        p_values).
    """
    it = normalize_modality(modality, site)
    if targets is None:
        targets = targets_for(it, model=_model(predictor))
    targets = parse_prompts(targets, what="target")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    td = _resolve_target_dist(predictor, target_dist)
    kw = _split_kwargs(min_size, min_distance, split_params)
    in_vocab = np.array([is_in_vocabulary(t, it, model=_model(predictor)) for t in targets])
    image, _ = _prepare(image, channel_axis)
    common = (td, p_threshold, batch_size, kw, mpp)
    if not _is_stack(tuple(image.shape), channels, is_3d):
        labels, classes, kept, table, probs, pv = _recognize_2d(
            predictor, np.asarray(image), targets, it, channels, *common
        )
    else:
        res, tables, start = [], [], 0
        for i in range(image.shape[0]):
            r = _recognize_2d(
                predictor, np.asarray(image[i]), targets, it, channels, *common, start
            )
            start = max(start, int(r[0].max()))
            t = r[3]
            t.insert(1, "z", i)
            tables.append(t)
            res.append(r)
        labels = np.stack([r[0] for r in res])
        classes = np.stack([r[1] for r in res])
        kept = [t for t in targets if any(t in r[2] for r in res)]
        table = _concat(tables, ["label", "z", *TABLE_COLUMNS[1:]])
        probs = np.stack([r[4] for r in res], axis=1)
        pv = np.stack([r[5] for r in res], axis=1)
    return Recognition(
        labels=labels,
        classes=classes,
        class_names=recognition_class_names(targets),
        kept=kept,
        table=table,
        probs=probs,
        p_values=pv,
        in_vocabulary=in_vocab,
        p_threshold=p_threshold,
        image_type=str(it),
    )
