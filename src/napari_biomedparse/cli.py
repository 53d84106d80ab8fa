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


def build_parser() -> argparse.ArgumentParser:
    from napari_biomedparse import __version__

    parser = argparse.ArgumentParser(
        prog="napari-biomedparse",
        description="Text-prompted biomedical segmentation, detection and recognition "
        "(BiomedParse) on images and whole slides.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-biomedparse: interrupted; finished work is kept (rerun to resume).",
              file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, PermissionError, OSError) as exc:
        print(f"napari-biomedparse: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
