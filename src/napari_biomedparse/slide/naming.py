"""Where a slide's result goes, and the checks made before anything is written there.

Naming (:func:`output_paths`): a slide ``<dir>/<name>`` goes to
``<out_dir>/<name>.biomedparse.zarr``. When two slides of one batch share a file name
(``fa/x.svs``, ``fb/x.svs``), or the plain name in ``out_dir`` already holds a result
(finished or unfinished) recorded from another file, the name gets an 8-character tag of
the slide's resolved folder: ``<stem>-<tag><suffix>.biomedparse.zarr`` (e.g.
``x-1a2b3c4d.svs.biomedparse.zarr``), so two inputs never share an output; a slide whose
tagged result exists keeps using it in later runs. Without
``out_dir`` each result lies next to its slide (no clash possible).

Before a run (:func:`check_output_location`, :func:`check_existing_result`): an ``out``
equal to the source, inside it or holding it is refused before anything is deleted; an
existing finished result is the answer only for the same source and the same parameters
(:class:`~napari_biomedparse.errors.ResultExistsError` says which), and
:func:`verify_result` shows that a store marked complete has every unit it records.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from napari_biomedparse.errors import OutputConflictError, ResultExistsError

__all__ = [
    "SUFFIX",
    "output_paths",
    "check_output_location",
    "check_existing_result",
    "verify_result",
    "guard_output",
]

SUFFIX = ".biomedparse.zarr"


def _resolve(p: Path) -> Path:
    """``p.resolve()``, or the absolute path where resolving fails (a loop of links)."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return p.absolute()


def _tag(p: Path) -> str:
    return hashlib.sha1(str(_resolve(p).parent).encode()).hexdigest()[:8]


def _tagged(p: Path) -> str:
    name = p.name
    dot = name.find(".", 1)
    stem, ext = (name, "") if dot < 0 else (name[:dot], name[dot:])
    return f"{stem}-{_tag(p)}{ext}{SUFFIX}"


def _recorded_path(store: Path) -> str | None:
    """The resolved source path recorded in a (finished or partial) store, if readable."""
    from .store import open_group, partial_path, read_meta

    for cand in (store, partial_path(store)):
        if cand.exists():
            try:
                meta = read_meta(open_group(cand, "r"))
            except Exception:
                return None
            return (meta.get("source_info") or {}).get("path") or meta.get("source_path")
    return None


def output_paths(slides, out_dir=None) -> dict[Path, Path]:
    """``{slide: result path}`` for a batch (see the module docstring for the rule)."""
    from .store import partial_path

    slides = [Path(s) for s in slides]
    if out_dir is None:
        return {s: s.parent / f"{s.name}{SUFFIX}" for s in slides}
    out_dir = Path(out_dir)
    count: dict[str, int] = {}
    for s in slides:
        count[s.name] = count.get(s.name, 0) + 1
    res = {}
    for s in slides:
        plain, tagged = out_dir / f"{s.name}{SUFFIX}", out_dir / _tagged(s)
        clash = count[s.name] > 1 or tagged.exists() or partial_path(tagged).exists()
        if not clash:
            rec = _recorded_path(plain)
            if rec is not None:
                clash = _resolve(Path(rec)) != _resolve(s)
        res[s] = out_dir / _tagged(s) if clash else plain
    return res


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def check_output_location(source, out) -> None:
    """Refuse an ``out`` (or its ``.partial`` / ``.lock`` siblings) that is the source, lies
    inside it or holds it (OutputConflictError), before anything is written or deleted."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise OutputConflictError(
            f"the output {str(out)!r} names a folder, not a result: give a new path such as "
            "out/slide.biomedparse.zarr"
        )
    source = getattr(source, "path", source)  # a SlideImage: its file
    if source is None or not isinstance(source, (str, os.PathLike)):
        return
    src = _resolve(Path(os.fspath(source)).expanduser())
    outs = [_resolve(out.expanduser())]
    outs += [o.with_name(o.name + ext) for o in outs[:1] for ext in (".partial", ".lock")]
    for o in outs:
        if _inside(src, o) or _inside(o, src):
            raise OutputConflictError(
                f"the output {out} would {'replace' if o == src else 'overlap'} the source "
                f"{source} (the output is the source, inside it or contains it). Choose an "
                "output path outside the slide."
            )


def check_existing_result(out, params: dict, *, overwrite: bool) -> None:
    """When ``out`` holds a finished result and ``overwrite`` is False: raise
    ResultExistsError, with ``same_parameters`` True when it was made from the same source
    with the same ``params`` (so it is the answer) and otherwise the differences."""
    from .store import _differences, open_group, read_meta

    out = Path(out)
    if overwrite or not out.exists():
        return
    try:
        meta = read_meta(open_group(out, "r"))
    except Exception:
        meta = {}
    if not meta:
        raise ResultExistsError(
            f"{out} exists and is not a slide result of this program; move it away or choose "
            "another output.",
            path=out,
        )
    diffs = _differences(meta.get("params", {}), params)
    if not diffs and meta.get("status") == "complete":
        raise ResultExistsError(
            f"{out} already exists (a finished result of the same source with the same "
            "parameters): open it with SlideResult.open(path), or pass overwrite=True "
            "(command line: --overwrite) to redo it.",
            path=out,
            same_parameters=True,
        )
    what = "; ".join(diffs) if diffs else "it is not complete"
    raise ResultExistsError(
        f"{out} already holds a result made with other parameters or another source ({what}). "
        "Pass overwrite=True (command line: --overwrite) to replace it, or choose another "
        "output.",
        path=out,
        differences=diffs,
    )


def verify_result(path) -> list[str]:
    """What a store marked complete lacks: ``[]`` when every unit it records is present and
    readable (tiles recorded in ``tiles/state``, blended chunks in ``probs_state``, the
    class / label pyramids, one block record per instance block, the tables); else one line
    per problem."""
    import numpy as np

    from .store import open_group, read_meta, read_state

    path = Path(path)
    problems = []
    try:
        g = open_group(path, "r")
        meta = read_meta(g)
    except Exception as exc:
        return [f"not a readable store ({exc})"]
    if meta.get("status") != "complete":
        return [f"status is {meta.get('status')!r}, not 'complete'"]
    params = meta.get("params", {})
    for name in ("tissue_mask", "tiles/state", "probs/0", "probs_state"):
        if name not in g:
            problems.append(f"{name} missing")
    if problems:
        return problems
    ps = read_state(g["probs_state"])
    if not (ps == 1).all():
        problems.append(f"{int((ps != 1).sum())} blended chunks not recorded")
    summary = meta.get("summary", {})
    n_tiles = int(summary.get("tiles_processed", 0))
    st = read_state(g["tiles/state"])
    if int((st == 1).sum()) < n_tiles:
        problems.append(
            f"{n_tiles - int((st == 1).sum())} tiles recorded in the summary are missing"
        )
    if params.get("recognize"):
        for name in ("classes/0", "labels/0"):
            if name not in g:
                problems.append(f"{name} missing")
        blocks = path / "blocks"
        ny, nx = ps.shape
        missing = [b for b in range(ny * nx) if not (blocks / f"b_{b}.npz").is_file()]
        if missing:
            problems.append(f"{len(missing)} instance block records missing")
        for t in ("table.parquet", "outlines.parquet"):
            try:
                import pyarrow.parquet as pq

                n = pq.ParquetFile(path / t).metadata.num_rows
                if n != int(summary.get("objects", n)):
                    problems.append(f"{t} has {n} rows, the summary says {summary['objects']}")
            except Exception as exc:
                problems.append(f"{t} unreadable ({type(exc).__name__})")
        if not problems:
            try:  # every chunk of the pyramids decodes
                for name in ("classes", "labels"):
                    lvl = 0
                    while f"{name}/{lvl}" in g:
                        arr = g[f"{name}/{lvl}"]
                        for y in range(0, arr.shape[0], arr.chunks[0]):
                            np.asarray(arr[y : y + arr.chunks[0], :])
                        lvl += 1
            except Exception as exc:
                problems.append(f"{name}/{lvl} unreadable ({type(exc).__name__}: {exc})")
    return problems


def guard_output(source, out, params: dict, *, resume: bool, overwrite: bool) -> None:
    """The checks of a run before its store is created or reopened: a finished ``out`` is
    the answer only for the same source and ``params`` (:func:`check_existing_result`); an
    unfinished ``<out>.partial`` resumes only from the same source
    (:func:`~napari_biomedparse.slide.identity.check_same_source`)."""
    from .identity import check_same_source
    from .store import open_group, partial_path, read_meta

    check_existing_result(out, params, overwrite=overwrite)
    part = partial_path(out)
    if resume and not overwrite and part.exists():
        try:
            recorded = read_meta(open_group(part, "r")).get("params", {})
        except Exception:
            return  # prepare_store explains an unreadable partial run
        check_same_source(recorded.get("source"), params.get("source") or {}, where=part,
                          source=source)  # fmt: skip
