"""``napari-biomedparse segment`` and ``napari-biomedparse recognize`` on single images.

::

    napari-biomedparse segment IMAGE --prompt "neoplastic cells" --prompt "inflammatory cells" \\
        --modality pathology --out DIR [--table]
    napari-biomedparse recognize IMAGE --modality pathology --out DIR [--mpp 0.25]

``segment`` writes float32 probabilities (P, H, W) to ``DIR/probabilities.tif`` and, with
``--table``, the detection table (one row per instance) to ``DIR/table.csv``, and prints the
existence p-value of every prompt. ``recognize`` writes ``DIR/labels.tif`` (instance ids),
``DIR/classes.tif`` (class map),
``DIR/table.csv`` (one row per object) and ``DIR/classes.csv`` (class id, name, p-value, kept).
Images: TIFF (tifffile), ``.npy``, or any format Pillow reads (PNG, JPEG...).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .prompts import parse_prompts

__all__ = ["read_image", "register"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into a numpy array (TIFF, .npy, or any format Pillow reads)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff", ".btf"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as exc:  # PIL raises many types
        raise ValueError(
            f"cannot read {path} as an image ({exc}); use TIFF, .npy, PNG or JPEG "
            "(whole-slide images: `napari-biomedparse slide`)"
        ) from exc


def _write_array(path: Path, arr: np.ndarray, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(tmp, arr, compression="zlib")
    else:
        raise ValueError(f"unsupported output format {path.suffix!r}: use .npy, .tif or .tiff")
    os.replace(tmp, path)


def _write_csv(path: Path, table, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _predictor(args):
    import napari_biomedparse as nbp

    model = nbp.load_model(args.model)
    return nbp.Predictor(model, device=args.device)


def _channels(text: str | None):
    if text is None:
        return None
    try:
        idx = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(
            f"--channels must be comma-separated integers, e.g. 0,2; got {text!r}"
        ) from None
    return idx


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file: TIFF, .npy, PNG, JPEG")
    p.add_argument(
        "--modality",
        required=True,
        help="pathology, CT, MRI, X-Ray, ultrasound, endoscopy, fundus, dermoscopy, OCT, "
        "fluorescence, brightfield, or an official image type such as CT-Abdomen",
    )
    p.add_argument(
        "--site", default=None, help="anatomical site (CT: abdomen, lung, liver...) (None: no site)"
    )
    p.add_argument(
        "--channels", default=None, help="channels to use, e.g. 0 or 0,1,2 (None: the preset's)"
    )
    p.add_argument(
        "--channel-axis", type=int, default=None, help="channel axis (None: the last one)"
    )
    p.add_argument("--model", default="default", help="'default', 'biomedparse-v1' or a path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="pixel size of the image in microns (None: unknown, no rescaling)",
    )
    p.add_argument(
        "--p-threshold",
        type=float,
        default=0.05,
        help="existence p-value threshold (official; 0 disables the test)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def register(subparsers) -> None:
    """Add the ``segment`` and ``recognize`` subcommands."""
    p = subparsers.add_parser(
        "segment",
        help="probability map per text prompt on one image",
        description="Segment an image with text prompts; write float32 probabilities (P, H, W).",
    )
    _common(p)
    p.add_argument(
        "--prompt", action="append", required=True, help="text prompt (repeat for several)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: DIR/probabilities.tif (float32, P x H x W) and, with --table, "
        "DIR/table.csv (a path ending in .npy/.tif/.tiff is used as the probabilities file)",
    )
    p.add_argument(
        "--table",
        nargs="?",
        const=True,
        default=None,
        metavar="CSV",
        help="also write the detection table (one row per object): DIR/table.csv, or CSV",
    )
    p.set_defaults(func=run_segment)

    r = subparsers.add_parser(
        "recognize",
        help="all objects of all targets of a modality on one image",
        description="Recognise every target of the modality (official rules) and write "
        "labels.tif, classes.tif, table.csv and classes.csv into --out.",
    )
    _common(r)
    r.add_argument(
        "--targets", default=None, help="comma-separated targets (None: all of the modality)"
    )
    r.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: DIR/labels.tif, classes.tif, table.csv, classes.csv",
    )
    r.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="smallest object in pixels (None: size-aware default)",
    )
    r.set_defaults(func=run_recognize)


def _segment_outputs(out: str, table) -> tuple[Path, Path | None]:
    """``--out DIR`` -> (DIR/probabilities.tif, DIR/table.csv or the given CSV or None); an
    ``--out`` ending in .npy/.tif/.tiff is the probabilities file itself (its folder holds
    table.csv)."""
    path = Path(out)
    if path.suffix.lower() not in (".npy", ".tif", ".tiff"):
        path = path / "probabilities.tif"
    if table is True:
        return path, path.parent / "table.csv"
    return path, (Path(table) if table else None)


def run_segment(args) -> int:
    from .tasks import detect

    image = read_image(args.image)
    out, table = _segment_outputs(args.out, args.table)
    for path in [out] + ([table] if table else []):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    pred = _predictor(args)
    det = detect(
        pred,
        image,
        parse_prompts(args.prompt),
        modality=args.modality,
        site=args.site,
        channels=_channels(args.channels),
        channel_axis=args.channel_axis,
        p_threshold=args.p_threshold or None,
        mpp=args.mpp,
    )
    _write_array(out, np.asarray(det.probs, dtype=np.float32), args.overwrite)
    if table:
        _write_csv(table, det.table, args.overwrite)
    summary = det.summary()
    print(summary.to_string(index=False))
    print(f"wrote {out} {tuple(det.probs.shape)} float32")
    return 0


def run_recognize(args) -> int:
    import pandas as pd

    from .tasks import recognize

    image = read_image(args.image)
    out = Path(args.out)
    names = ["labels.tif", "classes.tif", "table.csv", "classes.csv"]
    if out.exists() and not args.overwrite and any((out / n).exists() for n in names):
        raise FileExistsError(f"{out} already holds results; pass --overwrite to replace them")
    targets = parse_prompts(args.targets, what="target") if args.targets else None
    pred = _predictor(args)
    rec = recognize(
        pred,
        image,
        modality=args.modality,
        site=args.site,
        targets=targets,
        channels=_channels(args.channels),
        channel_axis=args.channel_axis,
        p_threshold=args.p_threshold or None,
        min_size=args.min_size,
        mpp=args.mpp,
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_array(out / "labels.tif", rec.labels.astype(np.int32), True)
    _write_array(out / "classes.tif", rec.classes.astype(np.int32), True)
    _write_csv(out / "table.csv", rec.table, True)
    pv = np.asarray(rec.p_values)
    classes = pd.DataFrame(
        {
            "class_id": np.arange(1, len(rec.class_names) + 1),
            "class": rec.class_names,
            "p_value": pv if pv.ndim == 1 else np.nanmax(pv, axis=1),
            "kept": [n in rec.kept for n in rec.class_names],
            "count": [int(rec.counts()[n]) for n in rec.class_names],
        }
    )
    _write_csv(out / "classes.csv", classes, True)
    print(classes.to_string(index=False))
    print(f"wrote {len(rec.table)} objects to {out}")
    return 0
