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
  is predicted in overlapping tiles on the slide engine's grid (:func:`~.tiled.predict_tiled`,
  needs ``predictor.predict_batch``; geometry from
  :func:`~.application.application_defaults`), read at the model's ``mpp`` when the caller
  gives the image's ``mpp`` (probabilities resized back); the existence test is computed once
  per prompt on the whole image at its native resolution (RGB and probabilities of the input's
  size), not per tile. Recognition then runs the instance step the slide engine runs
  (:func:`~.instances.class_instances`), so ``recognize`` on an array and ``process_slide`` on
  it give the same objects (``tests/test_entry_points.py``).

The strategy is chosen once per call (:func:`strategy`, a :class:`Strategy`); per image the
work goes through small dataclasses (``_Maps``, ``_Detected``, ``_Recognized``). Progress and
cancel reach the tile loop (:mod:`.progress`: ``progress(done, total, message)``, ``cancel`` an
Event or a callable, :class:`~.progress.Cancelled` within one tile batch).

(Longer than 400 lines on purpose: the three tasks share the strategy, the per-image steps and
the stack handling, and each public function carries its full argument documentation.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .application import application_defaults
from .existence import DEFAULT_P_THRESHOLD, TargetDistribution, existence_p_values
from .instances import class_instances, instance_table, split_instances
from .modalities import is_in_vocabulary, normalize_modality, targets_for
from .objects import TABLE_COLUMNS, empty_table
from .postprocess import instance_defaults
from .preprocessing import as_channels_last, masks_ink, preprocess, to_rgb_uint8, unpad
from .progress import Cancelled, check_cancel, report, with_prefix
from .prompts import parse_prompts
from .recognition import class_names as recognition_class_names
from .recognition import recognize_maps
from .results import Detection, Recognition
from .tiled import inference_spec, predict_tiled, rescale_factor
from .validate import check_in_memory

__all__ = ["Cancelled", "Strategy", "detect", "recognize", "segment", "strategy"]


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


@dataclass(frozen=True)
class Strategy:
    """How the model is applied, chosen once per call from its metadata (:mod:`.tiled`).

    ``tiled``: the model's tiled-inference settings (``overlap``, ``mpp``, ...), or None for
    the official whole-image semantics; ``input_size``: the model input side S.
    """

    tiled: dict | None
    input_size: int

    @property
    def mode(self) -> str:
        return "whole" if self.tiled is None else "tiled"


def strategy(predictor) -> Strategy:
    """The :class:`Strategy` of ``predictor``'s model (checks it can run that way)."""
    spec = inference_spec(_model(predictor))
    if spec is not None and not hasattr(predictor, "predict_batch"):
        raise TypeError(
            "the model declares tiled inference (metadata['inference']) but the predictor has no "
            "predict_batch(tiles, prompts); use napari_biomedparse.Predictor"
        )
    return Strategy(spec, _input_size(predictor))


@dataclass
class _Maps:
    """Probabilities of one 2-D image: ``rgb`` and ``test_probs`` are what the existence test
    sees (the preprocessed square for whole-image models, the native image for tiled ones);
    ``probs`` (P, H, W) float32 is at the input's size."""

    rgb: np.ndarray
    test_probs: np.ndarray
    probs: np.ndarray


def _whole_batches(predictor, rgb, prompts, joint, batch_size, progress, cancel) -> np.ndarray:
    """Whole-image model: (P, S, S) for the preprocessed square ``rgb``.

    ``batch_size`` None: all prompts in one ``predict`` call (``joint`` as given; the predictor
    decodes them from one encoding). Otherwise ``batch_size`` coupled prompts per call, as the
    official batches of ``interactive_infer_image_all`` (batch 1 = one call per prompt, all
    from one image encoding when the predictor offers ``encode``/``decode``).
    """
    if batch_size is None or batch_size == 1:
        batches = [(prompts, joint if batch_size is None else False)]
    else:
        batches = [(prompts[i : i + batch_size], True) for i in range(0, len(prompts), batch_size)]
        batches = [(b, j and len(b) > 1) for b, j in batches]
    enc = None
    if len(batches) > 1 and hasattr(predictor, "encode") and hasattr(predictor, "decode"):
        check_cancel(cancel)
        enc = predictor.encode(rgb)
    chunks = []
    for k, (b, j) in enumerate(batches):
        check_cancel(cancel)
        if enc is not None:
            c = predictor.decode(enc, b, joint=j).probabilities(*rgb.shape[:2])
        else:
            c = predictor.predict(rgb, b, joint=j)
        chunks.append(np.asarray(c, dtype=np.float32))
        report(
            progress,
            k + 1,
            len(batches),
            f"prompts {sum(len(x) for x, _ in batches[: k + 1])}/{len(prompts)} (whole image)",
        )
    out = np.concatenate(chunks, axis=0)
    if out.shape != (len(prompts), *rgb.shape[:2]):
        raise RuntimeError(
            f"predictor.predict returned shape {out.shape}; expected {(len(prompts), *rgb.shape[:2])}"
        )
    return out


def _tiled_probs(
    predictor, rgb, prompts, app, joint, mpp, progress, cancel, ink=False
) -> np.ndarray:
    """Tiled mode: (P, H, W) at ``rgb``'s size, on the slide engine's tile grid
    (:func:`~.tiled.predict_tiled`) with the slide engine's geometry ``app``
    (:func:`~.application.application_defaults` of the model and modality): tiles of
    ``app.tile_size`` px at ``app.mpp`` when the image's ``mpp`` is given (and differs by 1 %
    or more, :func:`~.tiled.rescale_factor`), each resized to the model input, probabilities
    resized back to the image; ``ink``: 0 on tissue-marking ink (the preset's
    :func:`~.preprocessing.masks_ink`)."""
    f = rescale_factor(mpp, app.mpp)
    h, w = rgb.shape[:2]
    hh, ww = (h, w) if not f else (max(1, round(h * f)), max(1, round(w * f)))
    # refuse what cannot fit, warn (offering the slide engine) when it will take long
    check_in_memory(hh, ww, len(prompts), tile=int(predictor.input_size))
    return predict_tiled(
        predictor,
        rgb,
        prompts,
        tile_size=app.tile_size,
        overlap=app.overlap,
        joint=joint,
        image_mpp=mpp if f else None,
        target_mpp=app.mpp if f else None,
        ink=ink,
        progress=progress,
        cancel=cancel,
    )


def _predict_2d(
    predictor,
    st: Strategy,
    image2d,
    prompts,
    it,
    channels,
    joint,
    mpp=None,
    *,
    batch_size=None,
    progress=None,
    cancel=None,
) -> _Maps:
    """The probabilities of one 2-D image under strategy ``st``.

    Tiled mode: ``batch_size`` None or 1 runs all prompts in one pass per tile (decoded alone
    unless ``joint``); larger values run that many coupled prompts per pass.
    """
    arr = np.asarray(image2d)
    if st.tiled is None:
        if arr.ndim >= 2:  # (P, H, W) maps at the image's size: refuse what cannot fit
            check_in_memory(arr.shape[0], arr.shape[1], len(prompts), tile=1 << 30)
        rgb, info = preprocess(arr, it, channels=channels, size=st.input_size)
        sq = _whole_batches(predictor, rgb, prompts, joint, batch_size, progress, cancel)
        return _Maps(rgb, sq, unpad(sq, info))
    if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the image is empty: an array of shape {arr.shape}")
    rgb = to_rgb_uint8(arr, it, channels=channels)
    app = application_defaults(predictor, it.modality)  # the slide engine's geometry
    if batch_size is None or batch_size == 1:
        groups = [(prompts, joint)]
    else:
        groups = [(prompts[i : i + batch_size], True) for i in range(0, len(prompts), batch_size)]
    parts = []
    for g, (b, j) in enumerate(groups):
        pre = f"prompts {g + 1}/{len(groups)}: " if len(groups) > 1 else ""
        parts.append(
            _tiled_probs(
                predictor,
                rgb,
                b,
                app,
                j and len(b) > 1,
                mpp,
                with_prefix(progress, pre),
                cancel,
                masks_ink(it.modality),
            )
        )
    probs = np.concatenate(parts, axis=0)
    return _Maps(rgb, probs, probs)


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
    progress=None,
    cancel=None,
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
        progress: ``progress(done, total, message)`` after each tile batch (tiled models) or
            model call (whole-image models); messages name the slice of a stack
            (:mod:`.progress`).
        cancel: a ``threading.Event`` or a callable returning True: checked before every tile
            batch / model call; raises :class:`~.progress.Cancelled` (nothing is returned).

    Returns:
        float32 (P, H, W) probabilities in [0, 1]; (P, Z, H, W) for a stack (a dask array,
        computed slice by slice on demand, if the input is a dask array).
    """
    prompts = parse_prompts(prompts)
    it = normalize_modality(modality, site)
    st = strategy(predictor)
    image, lazy = _prepare(image, channel_axis)
    if not _is_stack(tuple(image.shape), channels, is_3d):
        m = _predict_2d(
            predictor,
            st,
            image,
            prompts,
            it,
            channels,
            joint,
            mpp,
            progress=progress,
            cancel=cancel,
        )
        return m.probs
    z, h, w = image.shape[:3]

    def one(slice2d, i=0):
        pr = with_prefix(progress, f"slice {i + 1}/{z}: ")
        m = _predict_2d(
            predictor, st, slice2d, prompts, it, channels, joint, mpp, progress=pr, cancel=cancel
        )
        return m.probs

    if lazy:
        import dask
        import dask.array as da

        parts = [
            da.from_delayed(
                dask.delayed(one)(image[i], i), shape=(len(prompts), h, w), dtype=np.float32
            )
            for i in range(z)
        ]
        return da.stack(parts, axis=1)
    out = np.empty((len(prompts), z, h, w), dtype=np.float32)
    for i in range(z):
        out[:, i] = one(image[i], i)
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


@dataclass
class _Detected:
    """Detection of one 2-D image (shapes as :class:`~.results.Detection` without Z)."""

    probs: np.ndarray
    p_values: np.ndarray
    present: np.ndarray
    testable: np.ndarray
    labels: np.ndarray
    table: pd.DataFrame
    next_label: int


def _detect_2d(
    predictor, st, arr, prompts, it, channels, opts: dict, start=0, progress=None, cancel=None
) -> _Detected:
    m = _predict_2d(
        predictor,
        st,
        arr,
        prompts,
        it,
        channels,
        opts["joint"],
        opts["mpp"],
        progress=progress,
        cancel=cancel,
    )
    probs, mask_threshold, p_threshold = m.probs, opts["mask_threshold"], opts["p_threshold"]
    pv = existence_p_values(m.rgb, m.test_probs, it, prompts, opts["td"])
    testable = ~np.isnan(pv)
    nonempty = (probs > mask_threshold).reshape(len(prompts), -1).any(1)
    if p_threshold:
        passes = np.where(testable, np.nan_to_num(pv, nan=1.0) >= p_threshold, True)
    else:
        passes = np.ones(len(prompts), dtype=bool)
    present = passes & nonempty
    labels, nxt = _instances_per_map(probs, present, mask_threshold, opts["split"], start)
    tables = []
    for p, prompt in enumerate(prompts):
        if not present[p]:
            continue
        t = instance_table(
            labels[p],
            (labels[p] > 0).astype(np.int32),
            probs[p][None],
            [prompt],
            mpp=opts["mpp"],
        )
        t.insert(0, "prompt", prompt)
        tables.append(t)
    table = _concat(tables, ["prompt", *TABLE_COLUMNS])
    return _Detected(probs, pv, present, testable, labels, table, nxt)


def _concat(tables, columns) -> pd.DataFrame:
    tables = [t for t in tables if len(t)]
    if not tables:
        return empty_table(tuple(c for c in columns if c not in TABLE_COLUMNS))[columns]
    return pd.concat(tables, ignore_index=True)[columns]


def _split_kwargs(min_size, min_distance, split_params, mpp=None) -> dict:
    """Splitting arguments: the shared defaults in microns (:mod:`.postprocess`, when the
    pixel size is known), then ``split_params``, then ``min_size`` / ``min_distance``."""
    kw = {**instance_defaults(mpp), **(split_params or {})}
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
    progress=None,
    cancel=None,
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
        min_size, min_distance: instance splitting parameters in pixels (None: with ``mpp``
            the shared defaults in microns of :mod:`.postprocess`, as in the slide engine,
            else size-aware defaults); ``split_params`` passes any other
            :func:`split_instances` argument.
        mpp: pixel size in microns (fills ``area_um2``; a tiled model with its own ``mpp`` sees
            the image rescaled to it, as in :func:`segment`).
        progress, cancel: as in :func:`segment`.

    Returns:
        :class:`~.results.Detection`.
    """
    prompts = parse_prompts(prompts)
    it = normalize_modality(modality, site)
    td = _resolve_target_dist(predictor, target_dist)
    kw = _split_kwargs(min_size, min_distance, split_params, mpp)
    in_vocab = np.array([is_in_vocabulary(p, it, model=_model(predictor)) for p in prompts])
    st = strategy(predictor)
    image, _ = _prepare(image, channel_axis)
    opts = dict(
        joint=joint,
        td=td,
        p_threshold=p_threshold,
        mask_threshold=mask_threshold,
        split=kw,
        mpp=mpp,
    )
    if not _is_stack(tuple(image.shape), channels, is_3d):
        d = _detect_2d(predictor, st, image, prompts, it, channels, opts, 0, progress, cancel)
        probs, pv, present, testable = d.probs, d.p_values, d.present, d.testable
        labels, table = d.labels, d.table
    else:
        z = image.shape[0]
        res, start = [], 0
        for i in range(z):
            pr = with_prefix(progress, f"slice {i + 1}/{z}: ")
            d = _detect_2d(predictor, st, image[i], prompts, it, channels, opts, start, pr, cancel)
            start = d.next_label
            d.table.insert(1, "z", i)
            res.append(d)
        probs = np.stack([d.probs for d in res], axis=1)
        pv = np.stack([d.p_values for d in res], axis=1)
        present = np.stack([d.present for d in res], axis=1)
        testable = np.stack([d.testable for d in res], axis=1)
        labels = np.stack([d.labels for d in res], axis=1)
        table = _concat([d.table for d in res], ["prompt", "z", *TABLE_COLUMNS])
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
        (labels (H, W) int32, table DataFrame as :func:`~.instances.instance_table`): the
        instances of :func:`~.instances.class_instances` (the slide engine's instance step),
        each inside the region of its class (the class map is left as given).
    """
    class_map = np.asarray(class_map)
    labels = class_instances(class_map, probs, len(class_names), split=split_kwargs)
    labels = np.where(labels > 0, labels + start, 0).astype(np.int32)
    table = instance_table(labels, class_map, probs, class_names, mpp=mpp)
    return labels, table


@dataclass
class _Recognized:
    """Recognition of one 2-D image (shapes as :class:`~.results.Recognition` without Z)."""

    labels: np.ndarray
    classes: np.ndarray
    kept: list
    table: pd.DataFrame
    probs: np.ndarray
    p_values: np.ndarray


def _recognize_2d(
    predictor, st, arr, targets, it, channels, opts: dict, start=0, progress=None, cancel=None
) -> _Recognized:
    # batch_size 1 (official default): every target decoded alone (joint=False), from one
    # image encoding (whole image) or in one pass per tile (tiled)
    m = _predict_2d(
        predictor,
        st,
        arr,
        targets,
        it,
        channels,
        False,
        opts["mpp"],
        batch_size=opts["batch_size"],
        progress=progress,
        cancel=cancel,
    )
    pv = existence_p_values(m.rgb, m.test_probs, it, targets, opts["td"])
    class_map, kept = recognize_maps(m.probs, targets, pv, opts["p_threshold"], opts["split"])
    names = recognition_class_names(targets)  # "nuclei" beside classes: "unclassified nuclei"
    labels, table = instances_from_class_map(
        class_map, m.probs, names, mpp=opts["mpp"], start=start, **opts["split"]
    )
    return _Recognized(labels, class_map, kept, table, m.probs, pv)


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
    progress=None,
    cancel=None,
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
        min_size, min_distance, split_params: instance splitting parameters (pixels); with
            ``mpp`` the defaults are the shared ones in microns (:mod:`.postprocess`:
            ``MIN_AREA_UM2``, ``NUCLEUS_RADIUS_UM``), as in the slide engine.
        mpp: pixel size in microns (fills ``area_um2``; a tiled model with its own ``mpp`` sees
            the image rescaled to it, as in :func:`segment`).
        progress, cancel: as in :func:`segment`.

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
    kw = _split_kwargs(min_size, min_distance, split_params, mpp)
    in_vocab = np.array([is_in_vocabulary(t, it, model=_model(predictor)) for t in targets])
    st = strategy(predictor)
    image, _ = _prepare(image, channel_axis)
    opts = dict(td=td, p_threshold=p_threshold, batch_size=batch_size, split=kw, mpp=mpp)
    if not _is_stack(tuple(image.shape), channels, is_3d):
        r = _recognize_2d(predictor, st, image, targets, it, channels, opts, 0, progress, cancel)
        labels, classes, kept, table, probs, pv = (
            r.labels,
            r.classes,
            r.kept,
            r.table,
            r.probs,
            r.p_values,
        )
    else:
        res, start, z = [], 0, image.shape[0]
        for i in range(z):
            pr = with_prefix(progress, f"slice {i + 1}/{z}: ")
            r = _recognize_2d(
                predictor, st, image[i], targets, it, channels, opts, start, pr, cancel
            )
            start = max(start, int(r.labels.max()))
            r.table.insert(1, "z", i)
            res.append(r)
        labels = np.stack([r.labels for r in res])
        classes = np.stack([r.classes for r in res])
        kept = [t for t in targets if any(t in r.kept for r in res)]
        table = _concat([r.table for r in res], ["label", "z", *TABLE_COLUMNS[1:]])
        probs = np.stack([r.probs for r in res], axis=1)
        pv = np.stack([r.p_values for r in res], axis=1)
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
