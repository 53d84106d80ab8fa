"""``napari-biomedparse slide``: process one or many slides from the command line.

    napari-biomedparse slide SLIDES... [-o OUT_DIR] [--model default] [--prompts a b]
        [--modality pathology] [--mpp 0.5] [--tile-size 256] [--overlap 32]
        [--batch-size 4] [--device auto] [--no-tissue-mask] [--overwrite] [--no-resume]
        [--slide-mpp 0.25] [--geojson] [--object-type detection|cell] [--csv] [--parquet]
        [--scheduler tcp://host:8786 | --workers N]

SLIDES are files, globs or folders (every readable slide file inside, not recursive).
Each slide goes to ``OUT_DIR/<slide name>.biomedparse.zarr`` (plus exports next to it);
an unfinished run resumes, a finished one is skipped unless ``--overwrite``. A summary per
slide (objects per class, time, tiles skipped) is printed at the end. Exit code 0 when
every slide succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import sys
import threading
from pathlib import Path

__all__ = ["register", "run", "expand_sources"]


def expand_sources(items: list[str]) -> list[Path]:
    """Paths, globs and folders -> a sorted, de-duplicated list of slide paths.

    Raises FileNotFoundError when an item matches nothing.
    """
    from .readers import READABLE_SUFFIXES

    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(p)))]
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            out.extend(matches)
        elif p.is_dir() and not (p.name.lower().endswith(".zarr") or (p / "zarr.json").exists()):
            found = sorted(
                c
                for c in p.iterdir()
                if c.name.lower().endswith(READABLE_SUFFIXES)
                and not c.name.endswith((".biomedparse.zarr", ".partial"))
            )
            if not found:
                raise FileNotFoundError(f"no slide files ({', '.join(READABLE_SUFFIXES)}) in {p}")
            out.extend(found)
        elif p.exists() or p.is_symlink():  # a broken link / loop fails alone, later
            out.append(p)
        else:
            raise FileNotFoundError(f"no such slide: {item}")
    seen, uniq = set(), []
    for p in out:
        try:
            key = p.resolve()
        except (OSError, RuntimeError):  # a loop of symbolic links
            key = p.absolute()
        if key not in seen:
            seen.add(key)
            uniq.append(p)
    # DICOM-WSI: one slide is a folder of .dcm files; keep one file per folder
    dcm_dirs, res = set(), []
    for p in uniq:
        if p.suffix.lower() == ".dcm":
            if p.parent in dcm_dirs:
                continue
            dcm_dirs.add(p.parent)
        res.append(p)
    return res


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "slide",
        help="recognise / segment whole-slide images tile by tile (resumable)",
        description="Process whole-slide images tile by tile with BiomedParse: every "
        "object of every target of the modality (or the given prompts), resumable. Each slide "
        "goes to OUT/<slide name>.biomedparse.zarr (plus the exports next to it); an "
        "unfinished run resumes, a finished one is skipped unless --overwrite. Exit code 0 "
        "when every slide succeeded, 1 otherwise.",
    )
    p.add_argument("slides", nargs="+", help="slide files, globs or folders")
    p.add_argument(
        "-o",
        "--out",
        dest="out_dir",
        default=None,
        metavar="DIR",
        help="output folder (None: next to each slide)",
    )
    p.add_argument("--out-dir", dest="out_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--model", default="default", help="'default', 'biomedparse-v1' or a checkpoint path"
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="text prompts (None: every target of the modality)",
    )
    p.add_argument(
        "--modality", default="pathology", help="pathology, fluorescence, brightfield, ..."
    )
    p.add_argument(
        "--no-recognize", action="store_true", help="probability maps only (no instances / table)"
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel to process at (None: the modality's, 0.5 for pathology)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="tile edge in processing pixels (None: the modality's, 256 for pathology)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="tile overlap in processing pixels (None: the modality's, 32 for pathology)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per model call (None: 16 on CUDA, 4 otherwise)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--instances",
        choices=("split", "components"),
        default="split",
        help="split touching objects (watershed) or keep connected components",
    )
    p.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="level-0 microns per pixel for slides whose file has none (None: from the file)",
    )
    p.add_argument("--no-tissue-mask", action="store_true", help="process background tiles too")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished results and start unfinished runs over",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to continue an unfinished run (use with --overwrite to restart)",
    )
    p.add_argument("--geojson", action="store_true", help="also write <out>.geojson (QuPath)")
    p.add_argument(
        "--object-type",
        choices=("detection", "cell"),
        default="detection",
        help="QuPath object type of the GeoJSON features",
    )
    p.add_argument("--csv", action="store_true", help="also write <out>.csv")
    p.add_argument("--parquet", action="store_true", help="also write <out>.parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast precision of the model (bf16/fp16: GPU speed, ~1e-2 error)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    p.add_argument(
        "--fast-gpu",
        action="store_true",
        help="resize/normalise tiles on the GPU (FastPredictor; see docs/distributed.md)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="dask scheduler (tcp://host:8786): tiles go to its workers (None: this process)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local dask cluster of N worker processes, one per GPU, see docs/distributed.md "
        "(None: this process)",
    )
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """The command: every slide through :func:`~.engine.process_slides` (the one multi-slide
    loop), then the exports and the summary."""
    from napari_biomedparse.inference import loading
    from napari_biomedparse.inference.fast import configure_predictor

    from .engine import process_slides
    from .store import RunCancelled
    from .tiling import defaults_for

    slides = expand_sources(args.slides)
    if args.out_dir and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        from napari_biomedparse.errors import InvalidInputError

        raise InvalidInputError(f"-o {args.out_dir} is a file; give a folder for the results")
    predictor = loading.load_predictor(args.model, args.device)
    if args.precision != "fp32" or args.compile or args.fast_gpu:
        tile = args.tile_size or int(defaults_for(args.modality)["tile_size"])
        predictor = configure_predictor(
            predictor, dtype=args.precision, compile=args.compile, fast=args.fast_gpu,
            tile_size=tile,
        )  # fmt: skip
    client = None
    if args.workers is not None and args.workers < 1:
        from napari_biomedparse.errors import InvalidInputError

        raise InvalidInputError(
            f"--workers must be at least 1 (got {args.workers}); leave it out to run in "
            "this process"
        )
    if args.scheduler or args.workers:
        from .distributed import make_client

        client = make_client(args.scheduler, args.workers)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=1, unit="step", file=sys.stderr, leave=True)

    def progress(done, total, message):
        if "planned: " in message:
            print(message, file=sys.stderr)
        elif "already done" in message:
            print(f"{message}; --overwrite to redo", file=sys.stderr)
        if bar is not None:
            bar.total, bar.n = total, done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

    cancel = threading.Event()
    try:
        results = process_slides(
            slides, args.out_dir, model=predictor, device=args.device, progress=progress,
            cancel=cancel, on_error="continue", client=client, skip_done=True,
            prompts=args.prompts, recognize=not args.no_recognize, modality=args.modality,
            mpp=args.mpp, tile_size=args.tile_size, overlap=args.overlap,
            batch_size=args.batch_size, tissue_mask=not args.no_tissue_mask,
            resume=not args.no_resume, overwrite=args.overwrite, slide_mpp=args.slide_mpp,
            instances=args.instances,
        )  # fmt: skip
    except KeyboardInterrupt:
        cancel.set()
        raise
    except RunCancelled:
        raise KeyboardInterrupt from None
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    summaries, failures = [], 0
    for slide in slides:
        res = results[str(slide)]
        if not isinstance(res, BaseException):
            try:
                _exports(res, res.path, args)
            except (ValueError, OSError) as exc:
                res = exc
        if isinstance(res, BaseException):
            failures += 1
            summaries.append((slide, {}, res))
        else:
            summaries.append((slide, res.summary, None))
    _print_summary(summaries)
    return 1 if failures else 0


def _exports(res, out: Path, args) -> None:
    if args.geojson:
        res.to_geojson(out.with_suffix(".geojson"), object_type=args.object_type)
    if args.csv:
        res.to_csv(out.with_suffix(".csv"))
    if args.parquet:
        res.to_parquet(out.with_suffix(".parquet"))


def _print_summary(summaries) -> None:
    for slide, s, err in summaries:
        if err is not None:
            print(f"{slide.name}: FAILED: {err}")
            continue
        per = ", ".join(f"{k}: {v}" for k, v in (s.get("objects_per_class") or {}).items())
        print(
            f"{slide.name}: {s.get('objects', 0)} objects ({per or 'none'}); "
            f"{s.get('seconds', 0):.1f} s; tiles {s.get('tiles_processed', 0)} processed, "
            f"{s.get('tiles_skipped', 0)} skipped (background), "
            f"{s.get('tiles_resumed', 0)} resumed"
        )
