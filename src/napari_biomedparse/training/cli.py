"""``napari-biomedparse finetune``: fine-tune a model on a training folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to the top-level parser's subparsers."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on annotated images (a training folder)",
        description="Fine-tune BiomedParse on a training folder (images/, labels/, "
        "dataset.json; see docs/finetuning.md) and write a safetensors checkpoint that "
        "load_model(path) and every command accept.",
    )
    p.add_argument("data", help="training folder (images/, labels/, dataset.json)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: the checkpoint is written as DIR/<name>.safetensors (a path "
        "ending in .safetensors is used as the file itself)",
    )
    p.add_argument(
        "--val", default=None, help="held-out folder of the same layout (None: no validation)"
    )
    p.add_argument(
        "--model",
        default="default",
        help="start from: 'default', 'biomedparse-v1', a checkpoint path, or random init of "
        "a configuration: 'scratch:tiny', 'scratch:default' (the default model's)",
    )
    p.add_argument("--steps", type=int, default=500, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per step")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW)")
    p.add_argument(
        "--freeze",
        default="text_encoder",
        help="comma-separated groups kept fixed: backbone, pixel_decoder, text_encoder, "
        "decoder, or 'none'",
    )
    p.add_argument(
        "--tile-size", type=int, default=None, help="training tile edge (None: the model's input)"
    )
    p.add_argument("--no-augment", action="store_true", help="disable augmentations")
    p.add_argument(
        "--val-every", type=int, default=0, help="validate every N steps (0: at the end only)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (tiles, augmentations)")
    p.add_argument(
        "--name",
        default="napari-biomedparse-finetuned",
        help="model name (stored in the checkpoint; the file name under --out DIR)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=run)
    return p


def _start_model(spec: str):
    if spec.startswith("scratch"):
        from napari_biomedparse.model.config import BiomedParseConfig

        _, _, size = spec.partition(":")
        if size in ("", "tiny"):
            return BiomedParseConfig.tiny()
        if size == "default":
            from .default_model import default_config

            return default_config()
        raise ValueError(
            f"unknown scratch configuration {size!r}; use 'scratch:tiny' or 'scratch:default'."
        )
    return spec


def _checkpoint_path(out: str, name: str) -> str:
    """``--out`` is a folder (``DIR/<name>.safetensors``), or the file itself."""
    from pathlib import Path

    path = Path(out)
    return str(path if path.suffix.lower() == ".safetensors" else path / f"{name}.safetensors")


def run(args) -> int:
    from .finetune import finetune

    def progress(done: int, total: int, message: str) -> None:
        print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    res = finetune(
        _start_model(args.model),
        args.data,
        args.val,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        freeze=args.freeze,
        tile_size=args.tile_size,
        augment=not args.no_augment,
        val_every=args.val_every,
        device=args.device,
        seed=args.seed,
        out=_checkpoint_path(args.out, args.name),
        name=args.name,
        overwrite=args.overwrite,
        progress=progress,
    )
    print(f"wrote {res.path} after {res.steps} steps in {res.seconds:.0f} s")
    for prompt, d in res.val_dice.items():
        print(f"validation Dice {prompt}: {d:.3f}")
    return 0
