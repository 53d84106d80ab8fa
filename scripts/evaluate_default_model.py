#!/usr/bin/env python
"""Held-out figures of the default model (or any checkpoint) vs the classical baseline.

    python scripts/evaluate_default_model.py [--model PATH|default] [--json out.json]

Prints the markdown tables of docs/model-card.md. The held-out regions are the bottom-right
quarters of hgsc_nest (H&E) and of the stardist fluorescence image, never used in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default", help="'default' or a checkpoint path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    from napari_biomedparse.hub import load_model
    from napari_biomedparse.training.data import holdout_region
    from napari_biomedparse.training.default_model import (
        HOLDOUT_REGION,
        datasets,
        load_fluorescence_raw,
    )
    from napari_biomedparse.training.evaluate import evaluate_image, markdown_table
    from napari_biomedparse.training.finetune import resolve_device

    model = load_model(args.model)
    model.to(resolve_device(args.device)).eval()
    _, held = datasets()
    raw, _ = load_fluorescence_raw()
    ys, xs = holdout_region(raw.shape, HOLDOUT_REGION)
    t0 = time.time()
    results = [evaluate_image(model, held[0]), evaluate_image(model, held[1], raw=raw[ys, xs])]
    print(markdown_table(results))
    print(f"\n({time.time() - t0:.1f} s on {args.device})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
