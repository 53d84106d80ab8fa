"""The whole-slide engine: ``process_slide`` (plan -> stages -> finalise) and ``process_slides``.

A run (:func:`process_slide`) is:

1. the plan (:mod:`.plan`, pure): grid, prompts, batches, post-processing, the resume key;
   the store ``<out>.partial`` is created or reopened with that key (:mod:`.store`);
2. the tissue mask on a low-resolution level (saved as ``tissue_mask``), which completes
   the plan with the selected tiles and their fixed batches;
3. the stages (:mod:`.stages`): tiles, blending, instances, painting, each a list of
   independent units run by an executor (:mod:`.executors`: this process, or
   :class:`~.distributed.DaskExecutor` with ``client=``);
4. finalising: display pyramids, the table and outlines, the summary; then
   ``<out>.partial`` is renamed to ``out``.

Batches are a fixed partition of the tissue tiles, and a batch whose tiles are not all
recorded is recomputed whole, so a resumed run feeds the model exactly the same batches as
an uninterrupted one and writes identical bytes, in one process or on a cluster.

(About 440 lines: :func:`process_slide` is the one sequence of steps above, and
:func:`process_slides` is the loop over it, with its whole-slide unit (:class:`SlideUnit`,
:func:`slide_task`, which calls :func:`process_slide` on a worker). The natural next split is
that "many slides" section into its own module.)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_biomedparse.errors import BiomedParseError, ResultExistsError
from napari_biomedparse.inference.loading import load_predictor, model_fingerprint
from napari_biomedparse.inference.postprocess import MIN_AREA_UM2, TISSUE_MASK

from . import finalise, global_rule, stages
from . import plan as _plan
from .executors import LocalExecutor
from .lock import hold_output_lock
from .naming import guard_output, output_paths
from .readers import SlideImage, SlideReadError, open_image
from .result import SlideResult
from .store import (
    RunCancelled,
    finalize_store,
    partial_path,
    prepare_store,
    read_meta,
    read_state,
    write_meta,
)
from .tiling import slide_intensity_stats

__all__ = ["process_slide", "process_slides", "SlideResult", "run_tiles"]

run_tiles = stages.run_tiles  # the tile loop, also used alone (benchmarks, tests)


def _class_names(plan) -> list[str]:
    """The prompts; when recognising, ``nuclei`` beside classes is "unclassified nuclei"."""
    from napari_biomedparse.inference.recognition import class_names

    return class_names(plan.prompts) if plan.recognize else list(plan.prompts)


def _class_colors(prompts) -> list:
    from napari_biomedparse.inference.objects import class_color

    return [list(class_color(p)) for p in prompts]


class _Progress:
    """Maps stage progress onto one overall (done, total)."""

    def __init__(self, callback, total):
        self.cb, self.total, self.base = callback, max(int(total), 1), 0

    def stage(self):
        def f(done, total, message):
            if self.cb is not None:
                self.cb(min(self.base + done, self.total), self.total, message)

        return f

    def advance(self, size):
        self.base += size
        finalise.trim_memory()


def _require(group, name, shape, chunks, dtype):
    if name in group:
        if tuple(group[name].shape) != tuple(shape):
            raise ValueError(f"store array {name} has shape {group[name].shape}, expected {shape}")
        return group[name]
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def _tissue(group, image):
    """The tissue mask, computed once per store (reused on resume)."""
    from .tissue import TissueMask, compute_tissue_mask

    if "tissue_mask" in group and group["tissue_mask"].attrs.get("complete"):
        a = group["tissue_mask"]
        mask = np.asarray(a[...]).astype(bool)
        return TissueMask(mask, float(a.attrs["downsample"]), bool(a.attrs.get("brightfield", 1)))
    import dask

    with dask.config.set(scheduler="threads"):  # not a default distributed Client
        tm = compute_tissue_mask(image)
    a = group.create_array(
        "tissue_mask", shape=tm.mask.shape, chunks=tm.mask.shape, dtype="uint8",
        fill_value=0, overwrite=True,
    )  # fmt: skip
    a[...] = tm.mask.astype(np.uint8)
    a.attrs.update({"downsample": tm.downsample, "brightfield": tm.brightfield, "complete": True})
    return TissueMask(tm.mask, tm.downsample, tm.brightfield)


@hold_output_lock  # one writer per output (slide/lock.py, docs/guarantees.md)
def process_slide(
    source,
    out,
    *,
    model: Any = "default",
    prompts=None,
    recognize: bool = True,
    modality: str = "pathology",
    mpp: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tissue_mask: bool = TISSUE_MASK,
    resume: bool = True,
    overwrite: bool = False,
    progress=None,
    cancel=None,
    client=None,
    executor=None,
    slide_mpp: float | None = None,
    device: str | None = None,
    instances: str = "split",
    min_area_um2: float = MIN_AREA_UM2,
    readers: int = 2,
    keep_tiles: bool = False,
) -> SlideResult:
    """Recognise (or segment) a whole slide tile by tile into a zarr store at ``out``.

    ``source``: slide path, zarr store, array or :class:`SlideImage` (``open_image``).
    ``out``: result directory (zarr v3), written as ``out + ".partial"`` and renamed when
    complete; an existing ``out`` is refused unless ``overwrite``. ``model``: "default", a
    name or path, a model, or a predictor (``load_predictor``). ``prompts``: None = every
    target of ``modality`` the model knows. ``recognize``: also the class map, instances,
    table and outlines. ``mpp`` / ``tile_size`` / ``overlap``: target um/px and tile edge /
    overlap in pixels at that resolution (defaults per modality, :func:`.plan.resolve_geometry`;
    each tile is resized to the model input). ``batch_size``: tiles per model call (4 on CPU,
    16 on CUDA). ``tissue_mask``: skip tiles without tissue. ``resume`` / ``overwrite``:
    resume an unfinished run with the same parameters / start over (an existing result is
    replaced only once the new one is complete). ``progress(done, total, message)``;
    ``cancel`` (``is_set()``) raises :class:`RunCancelled`, the work stays in ``out.partial``.
    ``client``: a dask.distributed client (every stage's units on its workers) or
    ``executor`` (:mod:`.executors`). ``slide_mpp``: level-0 um/px when the file has none.
    ``instances``: "split" (touching nuclei split at 3.5 um) or "components".
    ``min_area_um2``: smaller objects are dropped. ``readers``: threads reading tiles ahead of
    the model (and labelling blocks). ``keep_tiles``: keep the raw tiles (``tiles/probs``).

    Returns a :class:`SlideResult` (table coordinates in level-0 pixels of the slide).
    """
    t_start = time.perf_counter()
    out = Path(out)
    if isinstance(source, SlideImage):
        image = dataclasses.replace(source)  # never change the caller's object
        if slide_mpp is not None:
            image.mpp = float(slide_mpp)
    else:
        image = open_image(source, mpp=slide_mpp)
    if executor is None and client is not None:
        from .distributed import DaskExecutor

        src = model if isinstance(model, (str, os.PathLike)) else None
        executor = DaskExecutor(client, device=device, model_source=src)
    executor = executor or LocalExecutor()
    predictor = load_predictor(model, device)
    plan = _plan.plan_slide(
        image, predictor, fingerprint=model_fingerprint(predictor), prompts=prompts,
        recognize=recognize, modality=modality, mpp=mpp, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, tissue_mask=tissue_mask, instances=instances,
        min_area_um2=min_area_um2, readers=readers,
    )  # fmt: skip
    image.mpp = plan.grid.slide_mpp  # 1 um/px for an image without one processed natively
    guard_output(source, out, plan.params, resume=resume, overwrite=overwrite)  # naming.py
    group, resumed = prepare_store(out, plan.params, resume=resume, overwrite=overwrite)
    store = partial_path(out)
    if not isinstance(executor, LocalExecutor):
        executor.check_visible(store, "the output store")
    meta = read_meta(group)
    meta.update(grid=plan.grid.to_dict(), shape=list(plan.shape), scale=plan.grid.scale,
                offset=list(image.offset), class_names=_class_names(plan),
                class_colors=_class_colors(_class_names(plan)), objective_power=image.objective_power,
                source_path=str(image.path) if image.path else None)  # fmt: skip
    write_meta(group, meta)

    tissue = _tissue(group, image)
    plan = plan.with_tissue(tissue, slide_intensity_stats(image, plan.modality))
    grid, P, T, C = plan.grid, len(plan.prompts), plan.grid.tile_size, _plan.CHUNK
    (H, W), (ny, nx), nb = plan.shape, grid.grid_shape, plan.n_blocks
    _require(group, "tiles/probs", (ny, nx, P, T, T), (1, 1, P, T, T), "uint8")
    done_tiles = read_state(_require(group, "tiles/state", (ny, nx), (1, 1), "uint8")) == 1
    done_tiles = done_tiles.reshape(-1)
    _require(group, "probs/0", (P, H, W), (P, C, C), "uint8")
    _require(group, "probs_state", (-(-H // C), -(-W // C)), (1, 1), "uint8")
    if plan.recognize:
        _require(group, "classes/0", (H, W), (C, C), "uint8")
        _require(group, "labels/0", (H, W), (C, C), "int32")
    todo = [b for b in plan.batches if not all(done_tiles[k] for k in b)]
    n_before = len(plan.selected) - sum(len(b) for b in todo)
    prog = _Progress(progress, len(plan.selected) + nb * (3 if plan.recognize else 1))
    prog.advance(n_before)
    if progress is not None:  # the work, before any of it is done (CLI prints this line)
        mpx = len(plan.selected) * (T * grid.scale) ** 2 / 1e6
        progress(prog.base, prog.total, f"planned: {len(plan.selected)} tissue tiles of {T} px "
                 f"at {grid.target_mpp:.3g} um/px ({mpx:.0f} level-0 megapixels, {n_before} "
                 f"resumed) x {P} prompts, then {nb} blocks")  # fmt: skip
    run = dict(progress=prog.stage(), cancel=cancel)

    t_tiles = time.perf_counter()
    units = stages.tile_units(store, plan, todo, executor.workers)
    executor.map(stages.tile_task, units, label="tiles", model=predictor, image=image, **run)
    prog.advance(len(plan.selected) - n_before)
    t_tiles = time.perf_counter() - t_tiles

    nbx = -(-W // C)
    rows = [tuple(range(r * nbx, min((r + 1) * nbx, nb))) for r in range(0, -(-nb // nbx))]
    blend = [stages.BlendUnit(str(store), grid, r, P, plan.recognize) for r in rows]
    executor.map(stages.blend_task, blend, label="blending", **run)
    prog.advance(nb)
    rule = None
    if plan.recognize:  # the official rule's global part over the whole slide (global_rule.py)
        m_meta = getattr(getattr(predictor, "model", predictor), "metadata", None) or {}
        rule = global_rule.apply_official_rule(
            group, image, grid, plan.prompts, modality=plan.modality,
            target_dist=m_meta.get("target_dist"), fill=plan.fill,
            intensity=plan.intensity, cancel=cancel,
        )  # fmt: skip

    n_cut, n_levels, offsets = 0, 1, None
    if plan.recognize:
        (store / "blocks").mkdir(exist_ok=True)
        label = [
            stages.LabelUnit(
                str(store),
                plan.layout,
                b,
                P,
                plan.halo,
                plan.max_halo,
                plan.min_area,
                plan.split,
                (rule or {}).get("agnostic"),
            )  # fmt: skip
            for b in range(nb)
        ]
        executor.map(stages.label_task, label, label="instances", threads=readers, **run)
        prog.advance(nb)
        counts, boxes, offsets, n_cut = stages.block_summary(store, nb)
        paint = stages.paint_units(store, plan.layout, counts, boxes, offsets)
        executor.map(stages.paint_task, paint, label="labels", **run)
        prog.advance(nb)
        n_levels = finalise.build_pyramid(group, "labels", "int32", C)
        finalise.build_pyramid(group, "classes", "uint8", C)

    if not keep_tiles:  # raw tile outputs are only needed until blending is done
        shutil.rmtree(store / "tiles" / "probs", ignore_errors=True)
    per_class = finalise.write_tables(store, nb, offsets, grid, _class_names(plan), plan.recognize)
    meta = read_meta(group)
    meta["status"] = "complete"
    meta["summary"] = {
        "objects": int(sum(per_class.values())),
        "objects_per_class": per_class,
        "tiles_total": int(grid.n_tiles),
        "tiles_processed": len(plan.selected),
        "tiles_skipped": int(grid.n_tiles - len(plan.selected)),
        "tiles_resumed": int(n_before),
        "tissue_fraction": float(tissue.fraction),
        "objects_cut_at_max_halo": int(n_cut),
        "seconds": round(time.perf_counter() - t_start, 3),
        "seconds_tiles": round(t_tiles, 3),
        "resumed": bool(resumed),
        "notes": list(plan.notes),
        "pyramid_levels": n_levels,
        "recognition": rule,
    }
    write_meta(group, meta)
    final = finalize_store(out, overwrite=overwrite)
    if not isinstance(source, SlideImage):
        image.close()  # a folder of slides must not accumulate open handles and caches
    if progress is not None:
        progress(prog.total, prog.total, "done")
    return SlideResult.open(final)


# --------------------------------------------------------------------------------------------
# many slides


_SLIDE_ERRORS = (
    SlideReadError, BiomedParseError, ValueError, FileExistsError, FileNotFoundError, OSError
)  # fmt: skip


def _done_or_error(exc, dest, skip_done):
    """With ``skip_done``, a finished result of the same source and parameters (the
    :class:`ResultExistsError` of :func:`.naming.check_existing_result`) is the answer."""
    if skip_done and isinstance(exc, ResultExistsError) and exc.same_parameters:
        return SlideResult.open(dest)
    return exc


@dataclasses.dataclass(frozen=True)
class SlideUnit:
    """One whole slide run by one worker (``process_slides`` with whole slides per worker)."""

    source: Any
    out: str
    kwargs: dict
    catch: bool
    size = 1000


def slide_task(unit: SlideUnit, env):
    """Run one slide with ``env``'s model; returns its result path (or, with ``catch``, the
    error of a slide that cannot be processed)."""

    def progress(done, total, message):
        env.report(int(1000 * done / max(total, 1)))

    try:
        res = process_slide(unit.source, unit.out, model=env.predictor(), progress=progress,
                            cancel=env.cancel, **unit.kwargs)  # fmt: skip
    except _SLIDE_ERRORS as exc:
        if not unit.catch:
            raise
        return exc
    return str(res.path)


def process_slides(
    sources,
    out_dir,
    *,
    model: Any = "default",
    device: str | None = None,
    progress=None,
    cancel=None,
    on_error: str = "raise",
    client=None,
    granularity: str = "auto",
    skip_done: bool = False,
    **kwargs,
) -> dict:
    """Process several slides into ``out_dir/<name>.biomedparse.zarr`` (``out_dir`` None:
    next to each slide), loading the model once. Returns ``{source: SlideResult |
    Exception}`` in the order of ``sources``.

    ``on_error="continue"`` records the error of a slide that cannot be read or written and
    goes on; ``skip_done`` returns a complete earlier result as it is (unless ``overwrite``).
    ``progress(done, total, "slide k/n: ...")`` with ``total`` = 1000 per slide. With
    ``client``: whole slides per worker when there are at least as many slides as workers,
    else every stage of each slide spread over the workers (``granularity`` forces
    "slides" or "tiles", :func:`~.distributed.choose_granularity`)."""
    sources = [s if isinstance(s, SlideImage) else Path(str(s)) for s in sources]
    names = [f"slide{i}" if isinstance(s, SlideImage) else s.name for i, s in enumerate(sources)]
    named = output_paths([s for s in sources if not isinstance(s, SlideImage)], out_dir)
    dests = [
        (Path(out_dir) / f"{n}.biomedparse.zarr") if isinstance(s, SlideImage) else named[s]
        for s, n in zip(sources, names)
    ]  # two slides never share an output (naming.output_paths)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    todo = list(range(len(dests)))  # skip_done: see _done_or_error (same parameters only)
    n = len(sources)
    executor = None
    if client is not None:
        from .distributed import DaskExecutor, choose_granularity

        src = model if isinstance(model, (str, os.PathLike)) else None
        executor = DaskExecutor(client, device=device, model_source=src)
        mode = choose_granularity(len(todo), executor.workers, granularity)
    predictor = load_predictor(model, device)  # once for all slides
    if executor is not None and mode == "slides":
        for i in todo:
            if not isinstance(sources[i], SlideImage):
                executor.check_visible(sources[i].resolve(), "the slide")
        executor.check_visible(
            Path(out_dir or dests[todo[0]].parent).resolve(), "the output folder"
        )
        units = [
            SlideUnit(sources[i] if isinstance(sources[i], SlideImage) else str(sources[i].resolve()),
                      str(dests[i].resolve()), kwargs, on_error == "continue")
            for i in todo
        ]  # fmt: skip
        base = 1000 * (n - len(todo))

        def prog(done, total, message):
            if progress is not None:
                k = min(len(todo), 1 + done // 1000)
                progress(base + done, 1000 * n, f"slide {k}/{len(todo)}: {message}")

        out = executor.map(slide_task, units, label="slides", model=predictor, progress=prog,
                           cancel=cancel)  # fmt: skip
        for i, r in zip(todo, out):
            results[str(sources[i])] = (
                _done_or_error(r, dests[i], skip_done) if isinstance(r, BaseException)
                else SlideResult.open(r)
            )  # fmt: skip
        return {str(s): results[str(s)] for s in sources}
    for k, i in enumerate(todo):

        def prog(done, total, message, k=k):
            if progress is not None:
                frac = done / max(total, 1)
                progress(int(1000 * (n - len(todo) + k + frac)), 1000 * n,
                         f"slide {k + 1}/{len(todo)}: {message}")  # fmt: skip

        try:
            results[str(sources[i])] = process_slide(
                sources[i], dests[i], model=predictor, device=device, progress=prog,
                cancel=cancel, executor=executor, **kwargs,
            )  # fmt: skip
        except RunCancelled:
            raise
        except _SLIDE_ERRORS as exc:
            res = _done_or_error(exc, dests[i], skip_done)
            if isinstance(res, BaseException) and on_error != "continue":
                raise
            if not isinstance(res, BaseException) and progress is not None:
                progress(1000 * (n - len(todo) + k + 1), 1000 * n,
                         f"slide {k + 1}/{len(todo)}: already done ({dests[i]})")  # fmt: skip
            results[str(sources[i])] = res
    return {str(s): results[str(s)] for s in sources}
