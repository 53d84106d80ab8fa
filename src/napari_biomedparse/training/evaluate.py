"""Held-out evaluation of a model against the classical baseline (model-card figures).

For each held-out image: tiled prediction at the image's own pixel size (tiles of the model's
input size, 32 px overlap, blended with weights falling off towards the tile edges;
:func:`~.finetune.predict_tiles`, i.e. the inference layer's tiling), each prompt decoded
alone, thresholded at 0.5:

* Dice per prompt (the prompt's map vs the pixels of its class);
* nuclei: the union of all prompts' masks vs all labelled nuclei: Dice, panoptic quality of
  the instances (:func:`napari_biomedparse.inference.instances.split_instances` on the union,
  matched to the labelled instances at IoU > 0.5), detection precision / recall / F1 of the
  centroids (matched within 6 px);
* the same nuclei figures for the classical baseline (Otsu + watershed on haematoxylin for
  H&E, on intensity for fluorescence) on the same pixels.
"""

from __future__ import annotations

import numpy as np

from .baseline import fluorescence_nuclei_baseline, he_nuclei_baseline
from .data import AnnotatedImage
from .finetune import predict_tiles
from .metrics import detection_f1, dice, panoptic_quality


def nuclei_figures(mask: np.ndarray, labels: np.ndarray, gt_instances: np.ndarray) -> dict:
    """Dice, PQ (with SQ, RQ = F1 of instances matched at IoU > 0.5) and detection F1 (6 px)
    of nuclei against labelled instances, with the counts that :func:`pooled` sums."""
    pq = panoptic_quality(labels, gt_instances)
    det = detection_f1(labels, gt_instances, radius=6.0)
    truth = gt_instances > 0
    return {
        "tp": pq["tp"],
        "fp": pq["fp"],
        "fn": pq["fn"],
        "iou_sum": pq["sq"] * pq["tp"],
        "inter": int(np.count_nonzero(mask & truth)),
        "area_sum": int(np.count_nonzero(mask)) + int(np.count_nonzero(truth)),
        "dice": dice(mask, truth),
        "pq": pq["pq"],
        "sq": pq["sq"],
        "rq": pq["rq"],
        "det_precision": det["precision"],
        "det_recall": det["recall"],
        "det_f1": det["f1"],
        "n_pred": int(len(np.unique(labels)) - 1),
        "n_true": int(len(np.unique(gt_instances)) - 1),
    }


def evaluate_image(model, a: AnnotatedImage, raw: np.ndarray | None = None, **tile_kw) -> dict:
    """Figures of ``model`` and of the baseline on one held-out image.

    Args:
        a: the held-out image (RGB as the model sees it, classes, instances).
        raw: for fluorescence, the raw grey image the baseline runs on (default: ``a.image``).

    Returns:
        {"name", "modality", "dice_per_prompt": {prompt: Dice}, "model": nuclei figures,
        "baseline": nuclei figures}.
    """
    from napari_biomedparse.inference.instances import split_instances

    if a.instances is None:
        raise ValueError(f"{a.name}: evaluation needs instance labels")
    prompts = list(a.prompts.values())
    probs = predict_tiles(model, a.image, prompts, **tile_kw)
    per_prompt = {p: dice(pr > 0.5, a.classes == v) for (v, p), pr in zip(a.prompts.items(), probs)}
    per_class = {}
    if len(prompts) > 1:  # instances of each class against the labelled nuclei of that class
        for (v, p), pr in zip(a.prompts.items(), probs):
            gt = np.where(a.classes == v, a.instances, 0)
            per_class[p] = nuclei_figures(pr > 0.5, split_instances(pr > 0.5, pr), gt)
    union_prob = probs.max(0)
    mask = union_prob > 0.5
    labels = split_instances(mask, union_prob)
    if a.modality == "pathology":
        bmask, blabels = he_nuclei_baseline(a.image)
    else:
        bmask, blabels = fluorescence_nuclei_baseline(a.image if raw is None else raw)
    return {
        "name": a.name,
        "modality": a.modality,
        "shape": list(a.shape),
        "dice_per_prompt": per_prompt,
        "per_class": per_class,
        "model": nuclei_figures(mask, labels, a.instances),
        "baseline": nuclei_figures(bmask, blabels, a.instances),
    }


def markdown_table(results: list[dict]) -> str:
    """The model-card table of :func:`evaluate_image` results."""
    lines = [
        "| held-out region | method | nuclei Dice | PQ | SQ | RQ | det. precision | det. recall "
        "| det. F1 (6 px) | objects (pred / true) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for method in ("model", "baseline"):
            f = r[method]
            label = "default model" if method == "model" else "Otsu + watershed"
            lines.append(
                f"| {r['name']} | {label} | {f['dice']:.3f} | {f['pq']:.3f} | {f['sq']:.3f} | "
                f"{f['rq']:.3f} | {f['det_precision']:.3f} | {f['det_recall']:.3f} | "
                f"{f['det_f1']:.3f} | {f['n_pred']} / {f['n_true']} |"
            )
    lines += ["", "| held-out region | prompt | Dice |", "| --- | --- | --- |"]
    for r in results:
        for p, d in r["dice_per_prompt"].items():
            lines.append(f"| {r['name']} | {p} | {d:.3f} |")
    return "\n".join(lines)


def pooled(figures: list[dict]) -> dict:
    """Figures of several images pooled (counts summed, not averaged): Dice from the summed
    overlaps, F1 at IoU 0.5 (= RQ) and PQ from the summed matches; ``n_images``."""
    tp = sum(f["tp"] for f in figures)
    fp = sum(f["fp"] for f in figures)
    fn = sum(f["fn"] for f in figures)
    iou = sum(f["iou_sum"] for f in figures)
    inter = sum(f["inter"] for f in figures)
    area = sum(f["area_sum"] for f in figures)
    denom = tp + 0.5 * fp + 0.5 * fn
    return {
        "dice": 2 * inter / area if area else 1.0,
        "f1_iou50": tp / denom if denom else 1.0,
        "pq": iou / denom if denom else 1.0,
        "n_pred": tp + fp,
        "n_true": tp + fn,
        "n_images": len(figures),
    }


def source_table(groups: dict[str, list[dict]]) -> str:
    """Markdown table of :func:`pooled` model and baseline figures per source.

    Args:
        groups: source name -> :func:`evaluate_image` results of its images.
    """
    lines = [
        "| source | images | method | nuclei Dice | F1 (IoU 0.5) | PQ | objects (pred / true) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, results in groups.items():
        for method in ("model", "baseline"):
            f = pooled([r[method] for r in results])
            label = "model" if method == "model" else "Otsu + watershed"
            lines.append(
                f"| {name} | {f['n_images']} | {label} | {f['dice']:.3f} | {f['f1_iou50']:.3f} | "
                f"{f['pq']:.3f} | {f['n_pred']} / {f['n_true']} |"
            )
    return "\n".join(lines)


def class_table(result: dict) -> str:
    """Markdown table of the per-class figures of one :func:`evaluate_image` result."""
    lines = [
        "| class | Dice | PQ | F1 (IoU 0.5) | det. F1 (6 px) | objects (pred / true) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p, f in result["per_class"].items():
        lines.append(
            f"| {p} | {f['dice']:.3f} | {f['pq']:.3f} | {f['rq']:.3f} | {f['det_f1']:.3f} | "
            f"{f['n_pred']} / {f['n_true']} |"
        )
    return "\n".join(lines)
