"""Fine-tune BiomedParse on annotated images: ``napari_biomedparse.finetune``.

One plain function, :func:`finetune`, shared by scripts, the command line
(``napari-biomedparse finetune``) and the napari widget. It reports progress through a callback
``progress(done, total, message)`` and stops cleanly (returning what it has) when ``cancel`` (a
``threading.Event``-like object) is set.

What it does, per step: draw ``batch_size`` augmented tiles (:class:`~.data.TileSampler`),
encode them once, decode each prompt that the tiles' images know (one prompt per decoder pass,
as the Predictor's default ``joint=False``), and minimise the grounding + BCE + Dice loss of
:mod:`.losses` over all decoder layers. Frozen parts (``freeze``) get no gradient and keep
their values. Every ``val_every`` steps (and at the end) the Dice per prompt is measured on the
held-out images by tiled prediction. At the end the existence-test statistics are fitted on
the model's predictions for training tiles (:mod:`.target_dist`), and the checkpoint is
written as safetensors with its configuration, vocabulary and ``target_dist``: a complete
drop-in for :func:`napari_biomedparse.hub.load_model`.

(Longer than 400 lines on purpose: :func:`finetune` is one function, some 50 lines of it
argument documentation, and each helper here serves one of its steps: parameter groups and
``freeze``, differentiable decoding and the loss of one batch, tiled prediction and Dice for
validation, the existence-statistics fit, saving. The natural next split is the evaluation
helpers (``predict_tiles``, ``evaluate_dice``, ``fit_existence_statistics``) into their own
module.)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_biomedparse.inference.devices import resolve_device

from .augment import AugmentConfig
from .data import AnnotatedImage, TileSampler, as_annotated
from .losses import LossWeights, grounded_mask_loss
from .target_dist import fit_target_dist, mask_stats

ProgressFn = Callable[[int, int, str], Any]

#: Parameter groups that ``freeze`` can name, with the module-name prefixes they cover.
FREEZE_GROUPS = ("backbone", "pixel_decoder", "text_encoder", "decoder")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned model (eval mode, on the training device, with ``metadata``).
        path: the checkpoint written (None when ``out`` was None).
        steps: optimisation steps done (fewer than asked if cancelled).
        cancelled: True if ``cancel`` stopped the run.
        history: one dict per logged step: ``step``, ``loss``, ``grounding``, ``bce``, ``dice``,
            ``query_acc``, ``lr``, ``seconds``.
        val_dice: prompt -> Dice on the validation images at the end (empty without ``val``).
        val_history: list of (step, {prompt: Dice}).
        target_dist: modality -> target -> 4 x [a, b] fitted on training tiles.
        trainable: names of the parameters that were trained.
        seconds: wall time of the run.
    """

    model: torch.nn.Module
    path: Path | None
    steps: int
    cancelled: bool
    history: list[dict] = field(default_factory=list)
    val_dice: dict[str, float] = field(default_factory=dict)
    val_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    target_dist: dict = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# model access


def resolve_model(model) -> torch.nn.Module:
    """A model to start from: a BiomedParse module (used as is), a ``BiomedParseConfig``
    (random initialisation: training from scratch), or anything ``load_model`` accepts
    ("default", "biomedparse-v1", a checkpoint path)."""
    if isinstance(model, torch.nn.Module):
        return model
    from napari_biomedparse.model.config import BiomedParseConfig

    if isinstance(model, BiomedParseConfig):
        from napari_biomedparse.model.build import build_model

        m = build_model(model)
        m.metadata = {"name": "scratch", "target_dist": None, "vocabulary": {}}
        return m
    from napari_biomedparse.hub import load_model

    return load_model(str(model))


def _param_group(name: str) -> str:
    if name.startswith("backbone."):
        return "backbone"
    if ".pixel_decoder." in f".{name}" or name.startswith("pixel_decoder."):
        return "pixel_decoder"
    if "lang_encoder." in name or name.startswith("text_encoder."):
        return "text_encoder"
    return "decoder"


def parameter_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Group name -> parameter names (groups: backbone, pixel_decoder, text_encoder, decoder)."""
    out: dict[str, list[str]] = {g: [] for g in FREEZE_GROUPS}
    for name, _ in model.named_parameters():
        out[_param_group(name)].append(name)
    return out


def _parse_freeze(freeze) -> set[str]:
    if freeze is None:
        return set()
    if isinstance(freeze, str):
        freeze = [f for f in freeze.replace(";", ",").split(",") if f.strip()]
    groups = {str(f).strip().lower().replace("-", "_") for f in freeze}
    groups.discard("none")
    aliases = {"text": "text_encoder", "language": "text_encoder", "image_encoder": "backbone"}
    groups = {aliases.get(g, g) for g in groups}
    bad = sorted(groups - set(FREEZE_GROUPS))
    if bad:
        raise ValueError(f"cannot freeze {bad}: choose among {list(FREEZE_GROUPS)} (or none).")
    if groups == set(FREEZE_GROUPS):
        raise ValueError("everything is frozen: nothing would be trained; unfreeze one group.")
    return groups


def decoder_layers(
    model: torch.nn.Module, features: dict, prompts: Sequence[str]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Decode prompts on a batch of encoded images, differentiably, each prompt alone (as
    ``Predictor.predict(joint=False)``).

    Args:
        features: output of ``model.encode_image`` for B images.
        prompts: P text prompts, every image is decoded with every prompt.

    Returns:
        per decoder prediction (first = from the learnable queries, last = final), for the
        N = B * P (image, prompt) pairs in image-major order: (mask logits (N, Q, S/4, S/4),
        similarity logits (N, Q)).
    """
    text = model.encode_text(list(prompts))
    out = model.decode(features, text, all_masks=True)
    res = []
    for lay in list(out.get("aux_outputs", [])) + [out]:
        masks = lay["pred_masks"]  # (B, P, Q, M, M)
        sim = lay["pred_similarity"]  # (B, P, Q)
        res.append((masks.flatten(0, 1), sim.flatten(0, 1)))
    return res


def _to_input(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 0..255 on device."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(0, 3, 1, 2).float()


def predict_tiles(
    model: torch.nn.Module,
    rgb: np.ndarray,
    prompts: Sequence[str],
    *,
    tile_size: int | None = None,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Tiled prediction at the image's own pixel size (no resizing of the image).

    :func:`napari_biomedparse.inference.tiled.predict_tiled` (the inference layer's tiling,
    also used by ``Predictor.segment`` for tiled models) on a model in any mode: each prompt
    is decoded alone, the query with the highest similarity gives the mask (the official
    selection), its logits are upsampled bilinearly to the tile and passed through a sigmoid;
    overlapping tiles are blended with weights falling off over ``overlap`` px towards the
    tile edges. The model's train/eval mode is restored afterwards.

    Args:
        rgb: (H, W, 3) uint8 (smaller images are zero-padded to one tile).
        prompts: P prompts.
        tile_size: tile side (default: the model's ``input_size``).

    Returns:
        (P, H, W) float32 probabilities.
    """
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.inference.tiled import predict_tiled

    dev = next(model.parameters()).device if device is None else resolve_device(device)
    was_training = model.training
    try:
        pred = Predictor(model, device=dev)
        # the network is fully convolutional: tiles of the training tile size are accepted
        pred.input_size = int(tile_size or model.config.input_size)
        return predict_tiled(
            pred, np.asarray(rgb), list(prompts), overlap=overlap, batch_size=batch_size
        )
    finally:
        model.train(was_training)


def evaluate_dice(
    model: torch.nn.Module,
    images: Sequence[AnnotatedImage],
    *,
    tile_size: int | None = None,
    device=None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Dice per prompt on whole images (pixels pooled over the images): prompt -> Dice."""
    inter: dict[str, float] = {}
    total: dict[str, float] = {}
    for a in images:
        prompts = list(a.prompts.values())
        probs = predict_tiles(model, a.image, prompts, tile_size=tile_size, device=device)
        valid = np.ones(a.shape, bool) if a.ignore is None else ~a.ignore
        for (v, p), pr in zip(a.prompts.items(), probs):
            pm = (pr > threshold) & valid
            gt = (a.classes == v) & valid
            inter[p] = inter.get(p, 0.0) + float((pm & gt).sum())
            total[p] = total.get(p, 0.0) + float(pm.sum() + gt.sum())
    return {p: (2 * inter[p] / total[p] if total[p] else 1.0) for p in inter}


#: Photometric variation used when fitting the existence statistics: stronger than the
#: training augmentation, to stand in for the variation between images (stain, scanner,
#: exposure) that a few training images do not show.
EXISTENCE_AUGMENT = AugmentConfig(
    scale_range=None,
    stain_sigma=0.1,
    stain_bias=0.03,
    brightness=0.08,
    contrast=0.2,
    saturation=0.15,
    gamma=0.35,
    noise=0.01,
)


#: Floors of the fitted standard deviations (probability, R, G, B): a few training images
#: under-state how much the mean colour of an object varies between images (e.g. per-image
#: percentile scaling of fluorescence moves it by 0.2 between two quarters of one image).
EXISTENCE_MIN_SD = (0.05, 0.1, 0.1, 0.1)


@torch.no_grad()
def fit_existence_statistics(
    model: torch.nn.Module,
    sampler: TileSampler,
    n_tiles: int = 32,
    batch_size: int = 4,
    augment: AugmentConfig | None = EXISTENCE_AUGMENT,
    min_sd: float | tuple[float, float, float, float] = EXISTENCE_MIN_SD,
) -> dict:
    """Fit ``target_dist`` on the model's predictions for training tiles.

    For every tile and every prompt present in its ground truth, the four official mask
    statistics of the predicted probability map (x 255) are collected; each is fitted with a
    Beta distribution per (modality, prompt) (method of moments, standard deviation at least
    ``min_sd`` per statistic). The tiles get the photometric changes of ``augment`` (default
    :data:`EXISTENCE_AUGMENT`) so that the fitted colour statistics allow for other images'
    staining and exposure. Deterministic given the sampler's seed.
    """
    plain = TileSampler(
        sampler.images, tile_size=sampler.tile_size, augment=augment, seed=sampler.seed + 1
    )
    stats: dict[str, dict[str, list[list[float]]]] = {}
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    done = 0
    while done < n_tiles:
        n = min(batch_size, n_tiles - done)
        rgb, masks, known, src = plain.batch(n)
        feats = model.encode_image(_to_input(rgb, dev))
        out = model.decode(feats, model.encode_text(plain.prompts))
        S = plain.tile_size
        prob = torch.sigmoid(F.interpolate(out["matched_masks"].float(), (S, S), mode="bilinear"))
        prob = prob.cpu().numpy()  # (n, P, S, S)
        for k in range(n):
            modality = plain.images[int(src[k])].modality
            for j, p in enumerate(plain.prompts):
                if known[k, j] and masks[k, j].any():
                    stats.setdefault(modality, {}).setdefault(p, []).append(
                        mask_stats(prob[k, j] * 255, rgb[k])
                    )
        done += n
    model.train(was_training)
    return fit_target_dist(stats, min_sd=min_sd)


def _index_features(feats: Any, idx: Sequence[int]) -> Any:
    """Select images ``idx`` from the output of ``encode_image`` (nested tensors)."""
    if isinstance(feats, torch.Tensor):
        return feats[list(idx)]
    if isinstance(feats, dict):
        return {k: _index_features(v, idx) for k, v in feats.items()}
    if isinstance(feats, (list, tuple)):
        return type(feats)(_index_features(v, idx) for v in feats)
    return feats


# ----------------------------------------------------------------------------------------------
# the training function


def _vocabulary(images: Sequence[AnnotatedImage], base: dict | None) -> dict[str, list[str]]:
    vocab: dict[str, list[str]] = {k: list(v) for k, v in (base or {}).items()}
    for a in images:
        lst = vocab.setdefault(a.modality, [])
        for p in a.prompts.values():
            if p not in lst:
                lst.append(p)
    return vocab


def _warn_unlabelled(images) -> None:
    """Warn (UserWarning) when the training labels hold no object at all, or a prompt has
    no labelled pixel in any image (it would be trained only as absent)."""
    import warnings

    seen: dict[str, int] = {}
    for a in images:
        values, counts = np.unique(a.classes, return_counts=True)
        n = dict(zip(values.tolist(), counts.tolist()))
        for v, p in a.prompts.items():
            seen[p] = seen.get(p, 0) + int(n.get(v, 0))
    if seen and not any(seen.values()):
        warnings.warn(
            "every training label is 0 (background): the model would learn that nothing is "
            "there. Check that the label images match the images and hold the class values "
            "of the prompts",
            UserWarning,
            stacklevel=3,
        )
    else:
        empty = sorted(p for p, c in seen.items() if c == 0)
        if empty:
            warnings.warn(
                f"no labelled pixel for {empty} in the training data: these prompts would be "
                "trained only as absent",
                UserWarning,
                stacklevel=3,
            )


def finetune(
    model="default",
    train=None,
    val=None,
    *,
    steps: int = 500,
    batch_size: int = 4,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: int = 50,
    freeze: Sequence[str] | str | None = ("text_encoder",),
    tile_size: int | None = None,
    augment: AugmentConfig | None | bool = True,
    loss_weights: LossWeights | None = None,
    modality: str = "pathology",
    val_every: int = 0,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    name: str = "napari-biomedparse-finetuned",
    overwrite: bool = False,
    existence_tiles: int = 32,
    amp: bool = True,
    progress: ProgressFn | None = None,
    cancel=None,
    log_every: int = 10,
    copy_model: bool = False,
    workers: int = 0,
    processes: bool = False,
    half: bool = False,
    max_seconds: float | None = None,
    save_on_cancel: bool = True,
    mpp: float | None = None,
) -> FinetuneResult:
    """Fine-tune a BiomedParse model on annotated images.

    Args:
        model: where to start: "default" (the bundled small model), "biomedparse-v1", a
            checkpoint path, a ``BiomedParseConfig`` (random init: from scratch), or a model.
        train: training data: a folder (layout in ``docs/finetuning.md``), AnnotatedImages, or
            ``(image, mask or labels, prompt)`` triples (see :mod:`.data`).
        val: held-out data in the same forms (Dice per prompt is measured on it).
        steps: optimisation steps; batch_size: tiles per step; lr, weight_decay: AdamW
            (cosine decay after ``warmup`` linear warm-up steps); tile_size: side of the training
            tiles in pixels (default: the model's ``input_size``).
        freeze: parameter groups kept fixed: any of "backbone", "pixel_decoder",
            "text_encoder", "decoder" (list or comma-separated string; None trains everything).
        augment: True (defaults), False/None (none) or an :class:`~.augment.AugmentConfig`.
        modality: modality of triples/arrays given without one.
        val_every: validate every this many steps (0: only at the end).
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", ...
        seed: seeds tile sampling, augmentation and torch (CPU runs are reproducible).
        out: checkpoint path (``.safetensors``); None: not written. An existing file is only
            replaced with ``overwrite=True``.
        name: the checkpoint's ``metadata["name"]``.
        existence_tiles: training tiles used to fit the existence statistics (0: skip, keep the
            starting model's ``target_dist``).
        amp: bfloat16 autocast on CUDA.
        progress: ``progress(done, total, message)`` after every logged step.
        cancel: ``threading.Event``-like; when set, training stops after the current step;
            the model is then still validated, fitted and saved, unless ``save_on_cancel`` is
            False (then it returns at once with ``cancelled=True`` and writes nothing).
        copy_model: train a deep copy (leave a passed-in model untouched).
        workers: threads making tiles; > 0 also prepares the next batch while the model
            trains (same tiles as with 0: each tile has its own seeded generator).
        processes: make tiles in ``workers`` processes instead of threads (faster for big
            batches on many-core machines; uses fork where available).
        half: store the checkpoint's floating-point tensors as float16 (half the file size;
            ``load_checkpoint`` converts them back to the model's dtype).
        max_seconds: wall-clock budget of the optimisation: training ends after ``steps`` or
            this many seconds, whichever comes first, and the learning-rate schedule follows
            whichever is further along (the run is then no longer deterministic).
        mpp: pixel size of the training images in microns, stored in the checkpoint's
            ``metadata["inference"]`` (default: the starting model's, if it declares one).
            A model fine-tuned on tiles is applied in tiles: the checkpoint gets
            ``{"mode": "tiled", "tile_size": <tile_size>, "overlap": 32, "mpp": mpp}``
            (:mod:`napari_biomedparse.inference.tiled`).

    Returns:
        :class:`FinetuneResult`.
    """
    t0 = time.time()
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        if out_path.suffix != ".safetensors":
            raise ValueError(f"checkpoint {out_path} must end in .safetensors")
        if out_path.exists() and not overwrite:
            raise FileExistsError(f"{out_path} exists; choose another path or pass overwrite=True.")
    train_images = as_annotated(train, modality=modality)
    val_images = as_annotated(val, modality=modality) if val is not None else []
    _warn_unlabelled(train_images)
    frozen = _parse_freeze(freeze)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))

    net = resolve_model(model)
    if copy_model:
        net = copy.deepcopy(net)
    if any(p.dtype != torch.float32 for p in net.parameters()):
        net.float()  # train in float32 (a Predictor may hold the model in bf16 / fp16)
    base_meta = dict(getattr(net, "metadata", None) or {})
    S = int(tile_size or net.config.input_size)
    if isinstance(augment, bool):
        augment = AugmentConfig() if augment else None
    sampler = TileSampler(train_images, tile_size=S, augment=augment, seed=seed)
    pool = prefetcher = pending = None
    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        from .data import process_pool

        # processes are forked before the model moves to an accelerator
        pool = process_pool(sampler, workers) if processes else ThreadPoolExecutor(workers)
        prefetcher = ThreadPoolExecutor(1)
    net.to(dev)

    trainable = []
    for pname, p in net.named_parameters():
        req = _param_group(pname) not in frozen
        p.requires_grad_(req)
        if req:
            trainable.append(pname)
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
    )

    t_train = [time.time()]

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / max(warmup, 1)
        t = (step - warmup) / max(steps - warmup, 1)
        if max_seconds:
            t = max(t, (time.time() - t_train[0]) / max_seconds)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    use_amp = bool(amp and dev.type == "cuda")
    weights = loss_weights or LossWeights()
    result = FinetuneResult(model=net, path=None, steps=0, cancelled=False, trainable=trainable)

    def report(done: int, msg: str) -> None:
        if progress is not None:
            progress(done, steps, msg)

    net.train()
    report(0, f"training {len(trainable)} tensors on {dev} for {steps} steps")
    t_train[0] = time.time()
    try:
        for step in range(steps):
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                break
            if max_seconds and time.time() - t_train[0] > max_seconds:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            if pending is not None:
                rgb, masks, known, _ = pending.result()
            else:
                rgb, masks, known, _ = sampler.batch(batch_size, pool)
            if prefetcher is not None and step + 1 < steps:
                pending = prefetcher.submit(sampler.batch, batch_size, pool)
            total, agg, n_pairs = _step_loss(net, sampler, rgb, masks, known, dev, weights, use_amp)
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            result.steps = step + 1
            if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
                rec = {k: v / max(n_pairs, 1) for k, v in agg.items()}
                rec.update(step=step + 1, lr=lr_at(step), seconds=time.time() - t0)
                result.history.append(rec)
                report(
                    step + 1,
                    f"step {step + 1}/{steps} loss {rec['loss']:.3f} (dice {rec['dice']:.3f}, "
                    f"grounding {rec['grounding']:.3f}, query acc {rec['query_acc']:.2f})",
                )
            if val_images and val_every and (step + 1) % val_every == 0 and step + 1 < steps:
                vd = evaluate_dice(net, val_images, tile_size=S)
                result.val_history.append((step + 1, vd))
                report(step + 1, "validation Dice " + _fmt(vd))
                net.train()
    finally:
        if pool is not None:
            prefetcher.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True)

    net.eval()
    if result.cancelled and not save_on_cancel:
        result.seconds = time.time() - t0
        return result
    if val_images:
        report(result.steps, "validating")
        result.val_dice = evaluate_dice(net, val_images, tile_size=S)
        result.val_history.append((result.steps, result.val_dice))
        report(result.steps, "validation Dice " + _fmt(result.val_dice))
    target_dist = base_meta.get("target_dist") or {}
    if existence_tiles > 0:
        report(result.steps, "fitting existence statistics on training tiles")
        fitted = fit_existence_statistics(net, sampler, n_tiles=existence_tiles)
        target_dist = _merge_target_dist(target_dist, fitted)
    result.target_dist = target_dist
    net.metadata = {
        "name": name,
        "target_dist": target_dist or None,
        "vocabulary": _vocabulary(train_images, base_meta.get("vocabulary")),
        "inference": tiled_inference(S, mpp if mpp is not None else _base_mpp(base_meta)),
    }
    if out_path is not None:
        report(result.steps, f"saving {out_path}")
        result.path = save_model(net, out_path, half=half)
        report(result.steps, f"saved {out_path}")
    result.seconds = time.time() - t0
    return result


def tiled_inference(tile_size: int, mpp: float | None = None, overlap: int = 32) -> dict:
    """``metadata["inference"]`` of a model trained on tiles of ``tile_size`` px at ``mpp``."""
    spec: dict[str, Any] = {"mode": "tiled", "tile_size": int(tile_size), "overlap": overlap}
    if mpp:
        spec["mpp"] = float(mpp)
    return spec


def _base_mpp(meta: dict) -> float | None:
    spec = meta.get("inference")
    return spec.get("mpp") if isinstance(spec, dict) and spec.get("mode") == "tiled" else None


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.3f}" for k, v in d.items())


def _step_loss(net, sampler, rgb, masks, known, dev, weights, use_amp):
    """Loss of one batch: tiles that know the same prompts are decoded together, each prompt
    alone. Returns (loss averaged over (tile, prompt) pairs, summed parts, number of pairs)."""
    x = _to_input(rgb, dev)
    tgt = torch.from_numpy(masks).to(dev)
    n_tiles = rgb.shape[0]
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        feats = net.encode_image(x)
        total = x.new_zeros(())
        agg: dict[str, float] = {}
        n_pairs = 0
        for pattern in sorted({tuple(r) for r in known.tolist()}):
            idx = [k for k in range(n_tiles) if tuple(known[k]) == pattern]
            cols = [j for j, on in enumerate(pattern) if on]
            if not cols:
                continue
            sub = feats if len(idx) == n_tiles else _index_features(feats, idx)
            layers = decoder_layers(net, sub, [sampler.prompts[j] for j in cols])
            targets = tgt[idx][:, cols].flatten(0, 1).float()  # (b * p, S, S)
            loss, parts = grounded_mask_loss(layers, targets, weights)
            n = targets.shape[0]
            total = total + loss * n
            n_pairs += n
            for k, v in parts.items():
                agg[k] = agg.get(k, 0.0) + v * n
    return total / max(n_pairs, 1), agg, n_pairs


def save_model(model: torch.nn.Module, path: str | Path, half: bool = False) -> Path:
    """Write a model (with ``model.metadata``) as a safetensors checkpoint.

    ``half`` stores floating-point tensors as float16 (the model itself is not changed);
    :func:`napari_biomedparse.model.checkpoint.load_checkpoint` casts them back on loading.
    """
    from napari_biomedparse.model.checkpoint import save_checkpoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not half:
        return save_checkpoint(model, path, metadata=model.metadata)
    clone = copy.deepcopy(model).to("cpu")
    for t in list(clone.parameters()) + list(clone.buffers()):
        if t.is_floating_point():
            t.data = t.data.half()
    clone.metadata = model.metadata
    return save_checkpoint(clone, path, metadata=model.metadata)


def _merge_target_dist(base: dict, new: dict) -> dict:
    out = {m: dict(t) for m, t in (base or {}).items()}
    for m, targets in new.items():
        out.setdefault(m, {}).update(targets)
    return out
