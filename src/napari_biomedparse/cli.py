"""The ``napari-biomedparse`` command line.

Each subcommand is registered by the layer that owns the job (``register(subparsers)`` in
``inference/cli.py``, ``slide/cli.py``, ``training/cli.py``); this module only assembles them
and turns known errors into one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_SUBCOMMAND_MODULES = (
    "napari_biomedparse.inference.cli",
    "napari_biomedparse.slide.cli",
    "napari_biomedparse.training.cli",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every optional option's help shows its default: appended as ``(default: ...)``, or, where the
    help explains what an unset option means as ``(None: ...)``, as ``(default: None =
    ...)``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required:  # nothing to default to
            return text
        if action.default is None and "(None: " in text:
            return text.replace("(None: ", "(default: None = ")
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: :class:`HelpFormatter` unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from napari_biomedparse import __version__

    parser = argparse.ArgumentParser(
        prog="napari-biomedparse",
        description="Text-prompted biomedical segmentation, detection and recognition "
        "(BiomedParse) on images and whole slides. --out is always the output folder.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _register_demo(subparsers)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _register_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="recognise every cell type in the bundled H&E slide with the bundled model",
        description="The main job on the sample slide that ships with the package "
        "(cmu_small_region.svs, Aperio, 0.499 um/px) and the bundled default model, offline: "
        "writes the result store, a QuPath GeoJSON and a CSV table into OUT and prints the "
        "objects found per class. Equivalent to `napari-biomedparse slide <sample> -o OUT "
        "--geojson --csv`.",
    )
    p.add_argument("-o", "--out", default="biomedparse-demo", metavar="DIR", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--overwrite", action="store_true", help="redo a finished demo run")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from importlib import resources

    slide = resources.files("napari_biomedparse") / "data" / "cmu_small_region.svs"
    argv = ["slide", str(slide), "-o", args.out, "--geojson", "--csv", "--device", args.device]
    if args.overwrite:
        argv.append("--overwrite")
    code = main(argv)
    if code == 0:
        print(
            f"results in {args.out}/ (open the .geojson in QuPath, or the slide in napari "
            "with the napari-biomedparse plugin)"
        )
    return code


def main(argv: list[str] | None = None) -> int:
    from napari_biomedparse.errors import BiomedParseError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "napari-biomedparse: interrupted; finished work is kept (rerun to resume).",
            file=sys.stderr,
        )
        return 130
    except (BiomedParseError, ValueError, OSError) as exc:
        # the documented failures (errors.BiomedParseError and the built-in types they and the
        # readers / checkpoint loaders use): one line that says what to do, no traceback
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"napari-biomedparse: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
