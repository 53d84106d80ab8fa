#!/usr/bin/env python
"""Held-out figures of the default model (or any checkpoint) vs the classical baseline.

    python scripts/evaluate_default_model.py [--model PATH|default] [--json out.json]
        [--sets he,stroma,dsb,mnfinder-test,mnfinder-validation,ndev] [--demo-crops docs/images]
    python scripts/evaluate_default_model.py --model fold.safetensors --sets loso --cell-type RPE-1

Prints the markdown tables of docs/model-card.md:

* H&E: the held-out bottom-right quarters of ``hgsc_nest`` (``he``) and of the stroma image
  ``hgsc_stroma`` (``stroma``; never trained on): nuclei (the union of the three class
  prompts, and the ``nuclei`` prompt alone) and per class;
* fluorescence: the held-out quarter of the stardist (DSB 2018) image; mnfinder's own test and
  validation splits (whole images never trained on), pooled per cell type; the ndev-sampledata
  scratch assay (a source never trained on; its labels are probably model output);
* ``--sets loso --cell-type X``: one leave-one-source-out fold: every mnfinder image of cell
  type X (all three splits), scored for a model trained without them
  (``train_default_model.py --hold-out-cell-type X``);
* ``--demo-crops DIR``: outlines of ``recognize`` on three 400 x 400 px crops of the bundled
  demo slide (epidermis, basal layer, dermis; never used in training), written as PNGs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETS = ("he", "stroma", "dsb", "mnfinder-test", "mnfinder-validation", "ndev")  # and "loso"
#: Level-0 (0.499 um/px) top-left corners of the 400 x 400 px demo-slide crops.
DEMO_CROPS = {"epidermis": (1046, 1639), "basal-layer": (808, 1402), "dermis": (1461, 1936)}


def demo_crops(model, out_dir: Path, context: int = 64) -> dict:
    """Recognize on each crop of the demo slide (with ``context`` px around it), draw the
    outlines in the class colours of the plugin and the exports (``inference.objects``),
    write ``demo_<crop>.png``; returns objects per class."""
    import numpy as np
    import openslide
    from skimage import io
    from skimage.segmentation import find_boundaries

    from napari_biomedparse.inference.objects import class_color
    from napari_biomedparse.inference.predictor import Predictor

    slide = openslide.OpenSlide(str(ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"))
    mpp = float(slide.properties.get("openslide.mpp-x", 0.5))
    pred = Predictor(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, (x, y) in DEMO_CROPS.items():
        size = 400 + 2 * context
        rgb = np.asarray(slide.read_region((x - context, y - context), 0, (size, size)))[..., :3]
        rec = pred.recognize(rgb, modality="pathology", mpp=mpp)
        lab = rec.labels[context:-context, context:-context]
        cls = rec.classes[context:-context, context:-context]
        img = rgb[context:-context, context:-context].copy()
        edge = find_boundaries(lab, mode="inner")
        for k, cname in enumerate(rec.class_names, start=1):
            img[edge & (cls == k)] = class_color(cname)
        big = np.kron(img, np.ones((2, 2, 1), np.uint8))  # zoomed 2x
        path = out_dir / f"demo_{name}.png"
        io.imsave(path, big, check_contrast=False)
        inside = np.unique(lab[lab > 0])
        per = {}
        for i in inside:
            k = int(np.bincount(cls[lab == i]).argmax())
            per[rec.class_names[k - 1]] = per.get(rec.class_names[k - 1], 0) + 1
        counts[name] = {"png": str(path), "objects": int(inside.size), "per_class": per}
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="default", help="'default' or a checkpoint path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {SETS}")
    p.add_argument("--demo-crops", default=None, help="write the demo-slide crop PNGs here")
    p.add_argument("--cell-type", default=None, help="the held-out mnfinder source of --sets loso")
    args = p.parse_args(argv)

    from napari_biomedparse.hub import load_model
    from napari_biomedparse.training.data import holdout_region
    from napari_biomedparse.training.default_model import (
        HOLDOUT_REGION,
        NUCLEI,
        datasets,
        load_fluorescence_raw,
        load_mnfinder,
        load_ndev,
        mnfinder_info,
        nuclei_only,
    )
    from napari_biomedparse.training.evaluate import (
        class_table,
        evaluate_image,
        markdown_table,
        source_table,
    )
    from napari_biomedparse.training.finetune import resolve_device

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    model = load_model(args.model)
    model.to(resolve_device(args.device)).eval()
    _, held = datasets()
    t0 = time.time()
    out: dict = {}
    quarters = []
    for key, he in (("he", held[0]), ("stroma", held[2])):
        if key not in sets:
            continue
        r = evaluate_image(model, he)
        # the class-agnostic prompt alone against every labelled nucleus
        he_nuc = nuclei_only(he, f"{he.name}, prompt '{NUCLEI}'")
        quarters += [r, evaluate_image(model, he_nuc)]
        out[f"{key}_classes"] = r
        print(class_table(r), "\n")
    if "dsb" in sets:
        raw, _ = load_fluorescence_raw()
        ys, xs = holdout_region(raw.shape, HOLDOUT_REGION)
        quarters.append(evaluate_image(model, held[1], raw=raw[ys, xs]))
    if quarters:
        print(markdown_table(quarters), "\n")
        out["quarters"] = quarters
    groups: dict[str, list] = {}
    info = mnfinder_info()
    for split in ("test", "validation"):
        if f"mnfinder-{split}" not in sets:
            continue
        res = [evaluate_image(model, a) for a in load_mnfinder((split,))]
        for r in res:
            groups.setdefault(f"mnfinder {split}: {info[r['name']]['cell_type']}", []).append(r)
        groups[f"mnfinder {split}: all"] = res
    if "loso" in sets:
        if args.cell_type is None:
            p.error("--sets loso needs --cell-type (the source the model was trained without)")
        names = [k for k, v in info.items() if v["cell_type"] == args.cell_type]
        if not names:
            p.error(f"no mnfinder images of cell type {args.cell_type!r}")
        images = [a for a in load_mnfinder(("training", "validation", "test")) if a.name in names]
        res = [evaluate_image(model, a) for a in images]
        groups[f"LOSO fold: {args.cell_type} held out (all splits)"] = res
        # the images no model of the recipe trained on (for a like-for-like all-data control)
        groups[f"LOSO fold: {args.cell_type} held out (validation + test)"] = [
            r for r in res if info[r["name"]]["split"] != "training"
        ]
    if "ndev" in sets:
        groups["ndev scratch assay (labels probably predicted), 3 frames"] = [
            evaluate_image(model, a) for a in load_ndev((0, 4, 9))
        ]
    if groups:
        print(source_table(groups), "\n")
        out["sources"] = groups
    if args.demo_crops:
        out["demo"] = demo_crops(model, Path(args.demo_crops))
        print(json.dumps(out["demo"], indent=1))
    print(f"\n({time.time() - t0:.1f} s on {args.device})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
