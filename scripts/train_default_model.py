#!/usr/bin/env python
"""Train the small default model that ships with napari-biomedparse.

The shipped file's recipe in one command, from random weights: its three runs in a row
(``training.default_model.RECIPE``; see docs/model-card.md for how the shipped file was made
and for the measured times)::

    python scripts/train_default_model.py --recipe --device cpu --threads 2 \
        --out src/napari_biomedparse/model/weights/default.safetensors

(``--device cuda`` runs the same recipe on a GPU, much faster.) About 2 h 20 min on 2 CPU
cores; its file is below the shipped one on validation (the shipped file's first two stages
were time-budgeted, the first on a GPU; see the model card). Without ``--recipe`` one run
is made with the options given (``--steps``, ``--lr``, ``--warmup``, ``--seed``; every
source, ``STRONG_AUGMENT``), from random weights or, with ``--init default`` / ``--init
PATH``, from those weights.

Data (``napari_biomedparse.training.default_model.datasets``, weighted by ``SHARES``): the
H&E crops ``hgsc_nest`` and ``hgsc_stromal_he`` (three nucleus classes and the class-agnostic
``nuclei`` prompt), the stardist fluorescence image and mnfinder's training split
(``nuclei``). The bottom-right quarter of each of the three images is held out and never
trained on; mnfinder's validation and test splits are never trained on. Augmentation:
``training.augment.STRONG_AUGMENT``. All parts trained. On CPU the run is deterministic
given the seed. Afterwards run ``scripts/evaluate_default_model.py`` for the model-card
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument(
        "--recipe",
        action="store_true",
        help="run the shipped file's three stages (training.default_model.RECIPE) from random "
        "weights; each stage's file is kept next to --out (.stage1, .stage2)",
    )
    p.add_argument("--steps", type=int, default=1875)
    p.add_argument(
        "--out", default=str(ROOT / "src/napari_biomedparse/model/weights/default.safetensors")
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint ('default' or a path) instead of random weights",
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 200)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=0, help="tile-making threads (0: none)")
    p.add_argument("--processes", action="store_true", help="make tiles in worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--val-every", type=int, default=0, help="report held-out Dice every N steps")
    p.add_argument("--log", default=None, help="also write the history as JSON here")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock budget of the optimisation (ends early; schedule follows time)",
    )
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument(
        "--refit-existence",
        action="store_true",
        help="do not train: refit the existence statistics (target_dist) of the checkpoint at "
        "--out on the training tiles and rewrite it (weights unchanged)",
    )
    p.add_argument("--float32", action="store_true", help="store float32 (default float16)")
    p.add_argument(
        "--hold-out-cell-type",
        default=None,
        help="leave this mnfinder source (RPE-1, U2OS, misc) out of training: one "
        "leave-one-source-out fold (score it with evaluate_default_model.py --sets loso)",
    )
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from napari_biomedparse.training.augment import STRONG_AUGMENT
    from napari_biomedparse.training.default_model import (
        NAME,
        PATHOLOGY_MPP,
        RECIPE,
        Stage,
        datasets,
        default_config,
    )
    from napari_biomedparse.training.finetune import finetune

    cfg = default_config()
    t0 = time.time()
    if args.refit_existence:
        return refit_existence(args, datasets(hold_out_cell_type=args.hold_out_cell_type)[0])

    def progress(done, total, message):
        print(f"[{time.time() - t0:7.1f}s] {message}", flush=True)

    if args.recipe:
        if args.init:
            p.error("--recipe starts from random weights: leave out --init")
        stages = RECIPE
    else:
        warmup = args.warmup if args.warmup is not None else min(200, max(args.steps // 5, 1))
        stages = (Stage("all", STRONG_AUGMENT, args.steps, args.lr, warmup, args.seed),)
    init = args.init or cfg
    out = Path(args.out)
    history, val_history, steps, seconds = [], [], 0, 0.0
    for i, stage in enumerate(stages, 1):
        train, held = datasets(hold_out_cell_type=args.hold_out_cell_type, sources=stage.sources)
        stage_out = out if i == len(stages) else out.with_suffix(f".stage{i}{out.suffix}")
        if len(stages) > 1:
            print(f"stage {i} / {len(stages)}: {stage}", flush=True)
        res = finetune(
            init,
            train,
            held if args.val_every else None,
            steps=stage.steps,
            batch_size=args.batch_size,
            lr=stage.lr,
            weight_decay=0.05,
            warmup=stage.warmup,
            freeze=None,
            augment=stage.augment,
            device=args.device,
            seed=stage.seed,
            out=stage_out,
            overwrite=True,
            name=NAME,
            existence_tiles=64,
            val_every=args.val_every,
            workers=args.workers,
            processes=args.processes,
            half=not args.float32,
            max_seconds=args.max_seconds,
            amp=args.amp,
            mpp=PATHOLOGY_MPP,  # metadata["inference"]: tiled, 256 px tiles at 0.5 um/px
            progress=progress,
            log_every=50,
        )
        init = stage_out
        history += res.history
        val_history += res.val_history
        steps += res.steps
        seconds += res.seconds
    size = Path(args.out).stat().st_size / 2**20
    print(
        f"wrote {args.out} ({size:.1f} MiB) after {steps} steps in {seconds:.0f} s on {args.device}"
    )
    if args.log:
        Path(args.log).write_text(
            json.dumps(
                {
                    "steps": steps,
                    "seconds": seconds,
                    "device": args.device,
                    "history": history,
                    "val_history": val_history,
                    "torch": torch.__version__,
                },
                indent=1,
            )
        )
    return 0


def refit_existence(args, train) -> int:
    """Recompute ``target_dist`` of an existing checkpoint with the current fitting code."""
    import torch

    from napari_biomedparse.hub import load_model
    from napari_biomedparse.training.data import TileSampler
    from napari_biomedparse.training.default_model import PATHOLOGY_MPP
    from napari_biomedparse.training.finetune import (
        fit_existence_statistics,
        resolve_device,
        save_model,
        tiled_inference,
    )

    torch.manual_seed(args.seed)
    model = load_model(args.out).to(resolve_device(args.device))
    sampler = TileSampler(train, tile_size=model.config.input_size, seed=args.seed)
    model.metadata["target_dist"] = fit_existence_statistics(model, sampler, n_tiles=64)
    if not model.metadata.get("inference"):
        model.metadata["inference"] = tiled_inference(model.config.input_size, PATHOLOGY_MPP)
    save_model(model.cpu(), args.out, half=not args.float32)
    print(f"refitted target_dist of {args.out}: {sorted(model.metadata['target_dist'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
