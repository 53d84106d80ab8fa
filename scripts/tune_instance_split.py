#!/usr/bin/env python
"""Choose the instance-splitting defaults on the default model's validation maps.

    python scripts/tune_instance_split.py [--model PATH|default] [--json out.json]

The model predicts each validation image once (the held-out quarters of ``hgsc_nest`` and of
the stroma image with the ``nuclei`` prompt, the held-out quarter of the stardist image,
mnfinder's ``validation`` split; never the test split, the ndev frames or the demo slide);
then :func:`napari_biomedparse.inference.instances.split_instances` splits the ``> 0.5`` masks
with each combination of

* ``h`` (h-maxima depth) = ``H_PER_RADIUS`` x the typical object radius ``r`` of the mask,
* ``smooth_sigma`` = ``SIGMA_PER_RADIUS`` x ``r``,
* ``prob_weight`` (weight of the probability in the seeding landscape),

and prints PQ and F1 (IoU 0.5), pooled per set, with their mean over the four sets, best
first. ``split_instances``' defaults are the best row (docs/model-card.md, "The instance
step"); ``scripts/evaluate_default_model.py`` gives the held-out figures with them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

H_PER_RADIUS = (0.07, 0.1, 0.14, 0.2, 0.3)
SIGMA_PER_RADIUS = (0.1, 0.15)
PROB_WEIGHT = (0.0, 0.25, 0.5)


def validation_maps(model) -> list[tuple[str, object, object, float]]:
    """(set name, (H, W) union probability of the image's prompts, (H, W) true instances,
    typical nucleus radius in pixels of its ``> 0.5`` mask) for every validation image."""
    from napari_biomedparse.inference.instances import estimate_object_radius
    from napari_biomedparse.training.default_model import (
        NUCLEI,
        datasets,
        load_mnfinder,
        nuclei_only,
    )
    from napari_biomedparse.training.finetune import predict_tiles

    _, held = datasets()
    images = [
        ("tumour nest", nuclei_only(held[0], f"{held[0].name}, prompt '{NUCLEI}'")),
        ("stroma", nuclei_only(held[2], f"{held[2].name}, prompt '{NUCLEI}'")),
        ("stardist", held[1]),
    ] + [("mnfinder validation", a) for a in load_mnfinder(("validation",))]
    out = []
    for name, a in images:
        prob = predict_tiles(model, a.image, list(a.prompts.values())).max(0)
        out.append((name, prob, a.instances, estimate_object_radius(prob > 0.5)))
    return out


def score(maps, h_per_radius: float, sigma_per_radius: float, prob_weight: float) -> dict:
    """Pooled PQ and F1 per set of one parameter combination, and their means."""
    from napari_biomedparse.inference.instances import split_instances
    from napari_biomedparse.training.evaluate import nuclei_figures, pooled

    per_set: dict[str, list] = {}
    for name, prob, truth, r in maps:
        mask = prob > 0.5
        labels = split_instances(
            mask,
            prob,
            radius=r,
            h=max(0.5, h_per_radius * r),
            smooth_sigma=max(0.5, sigma_per_radius * r),
            prob_weight=prob_weight,
        )
        per_set.setdefault(name, []).append(nuclei_figures(mask, labels, truth))
    figures = {k: pooled(v) for k, v in per_set.items()}
    return {
        "h_per_radius": h_per_radius,
        "sigma_per_radius": sigma_per_radius,
        "prob_weight": prob_weight,
        "sets": {k: {"pq": f["pq"], "f1": f["f1_iou50"]} for k, f in figures.items()},
        "mean_pq": sum(f["pq"] for f in figures.values()) / len(figures),
        "mean_f1": sum(f["f1_iou50"] for f in figures.values()) / len(figures),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="default", help="'default' or a checkpoint path")
    p.add_argument("--json", default=None, help="write every row as JSON here")
    args = p.parse_args(argv)

    from napari_biomedparse.hub import load_model

    model = load_model(args.model).eval()
    maps = validation_maps(model)
    rows = [
        score(maps, h, s, w)
        for h, s, w in itertools.product(H_PER_RADIUS, SIGMA_PER_RADIUS, PROB_WEIGHT)
    ]
    rows.sort(key=lambda r: -r["mean_pq"])
    sets = list(rows[0]["sets"])
    print("| h / r | sigma / r | prob_weight | mean PQ | mean F1 | " + " | ".join(sets) + " |")
    print("| --- " * (5 + len(sets)) + "|")
    for r in rows:
        cells = " | ".join(f"{r['sets'][k]['pq']:.3f} / {r['sets'][k]['f1']:.3f}" for k in sets)
        print(
            f"| {r['h_per_radius']} | {r['sigma_per_radius']} | {r['prob_weight']} | "
            f"{r['mean_pq']:.4f} | {r['mean_f1']:.4f} | {cells} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
