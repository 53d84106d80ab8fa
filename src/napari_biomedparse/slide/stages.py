"""The stages of a slide run as lists of independent units, each with one task function.

A *unit* is a small frozen dataclass naming the store (``<out>.partial``, a path every
process sees) and the part of the work it owns; its *task* ``task(unit, env)`` writes only
chunks / files no other unit writes, skips what is already recorded (resume), and returns a
count. ``env`` is given by the executor (:mod:`.executors`, :mod:`.distributed`):
``env.predictor()`` (the run's model, loaded once per process), ``env.image()`` (the slide),
``env.report(done)`` (progress inside the unit) and ``env.cancel`` (``is_set()``).

=========  ================================  ===========================================
stage      unit                              writes
=========  ================================  ===========================================
tiles      :class:`TileUnit` (batches)       ``tiles/probs[i, j]`` then ``tiles/state``
blending   :class:`BlendUnit` (a chunk row)  ``probs/0``, ``classes/0``, ``probs_state``
instances  :class:`LabelUnit` (a block)      ``blocks/b_<b>.npz`` (its objects), ``u_<b>.npz``
painting   :class:`PaintUnit` (a block row)  ``labels/0``, unclassified in ``classes/0``
=========  ================================  ===========================================

(About 440 lines: the four stages' units and tasks are kept together so that the table
above is the whole contract; :func:`run_tiles` is the tile loop with its read-ahead and
writer threads.) Pyramids and tables (:mod:`.finalise`) are sequential streaming writes of whole arrays /
files and run where the run is finalised.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_biomedparse.inference.preprocessing import masks_ink
from napari_biomedparse.inference.tiled import resize_probs, tile_probabilities

from .blockwise import BlockLayout, BlockRecord, label_block, paint_block
from .readers import SlideImage
from .stitching import blend_chunks
from .store import RunCancelled, open_group, save_npz_atomic
from .tiling import TileGrid, read_tile

__all__ = [
    "TileUnit",
    "BlendUnit",
    "LabelUnit",
    "PaintUnit",
    "run_tiles",
    "tile_task",
    "blend_task",
    "label_task",
    "paint_task",
    "tile_units",
]

TASKS_PER_WORKER = 4  # tile units per worker (load balance vs. pipelining inside a unit)
MAX_BATCHES_PER_UNIT = 8


# --------------------------------------------------------------------------------------------
# tiles


def run_tiles(
    group,
    image: SlideImage,
    grid: TileGrid,
    predictor,
    batches,
    prompts,
    *,
    fill: int = 255,
    modality: str = "pathology",
    intensity: dict | None = None,
    readers: int = 2,
    read_ahead: int = 2,
    progress=None,
    cancel=None,
) -> int:
    """Process these tile batches with this predictor and write them into this store.

    ``batches``: lists of flat tile indices (fixed partition; a batch is always run whole).
    Writes ``tiles/probs[i, j]`` (uint8, round(255 p), ``(P, T, T)``) then
    ``tiles/state[i, j] = 1`` for each tile, from a writer thread, while worker threads read
    the next tiles (at most ``read_ahead`` batches ahead). Only the chunks of the given
    tiles are written, so several processes may run disjoint batches on one store.
    ``progress(done_tiles, total_tiles, message)`` is called after tiles are flushed.
    Raises :class:`RunCancelled` when ``cancel`` is set (written tiles stay recorded).
    Returns the number of tiles written.
    """
    S = int(predictor.input_size)
    T = grid.tile_size
    ink = masks_ink(modality)  # the modality preset: ink masked on H&E (inference.ink)
    probs_arr = group["tiles/probs"]
    state_arr = group["tiles/state"]
    total = sum(len(b) for b in batches)
    done = [0]
    errors: list[BaseException] = []
    wq: queue.Queue = queue.Queue(maxsize=max(1, read_ahead))

    def writer():
        while True:
            item = wq.get()
            if item is None:
                return
            if errors:
                continue
            batch, out = item
            try:
                if out.dtype == np.uint8 and out.shape[-1] == T:  # round(255 p) made on the GPU
                    q = out
                else:
                    out = resize_probs(out, (T, T))
                    q = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
                for b, k in enumerate(batch):
                    i, j = grid.index(k)
                    probs_arr[i, j] = q[b]
                for k in batch:  # only after every tile of the batch is stored
                    i, j = grid.index(k)
                    state_arr[i, j] = 1
                done[0] += len(batch)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

    wt = threading.Thread(target=writer, name="nbp-tile-writer", daemon=True)
    wt.start()
    pool = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="nbp-tile-reader")

    def submit(batch):
        return [
            pool.submit(read_tile, image, grid, k, S, fill=fill, modality=modality, stats=intensity)
            for k in batch
        ]

    pending: collections.deque = collections.deque()
    it = iter(batches)
    try:
        for _ in range(max(1, read_ahead) + 1):
            b = next(it, None)
            if b is None:
                break
            pending.append((b, submit(b)))
        last_reported = -1
        while pending:
            if cancel is not None and cancel.is_set():
                raise RunCancelled("cancelled")
            if errors:
                raise errors[0]
            batch, futs = pending.popleft()
            rgb = np.stack([f.result() for f in futs])
            nb = next(it, None)
            if nb is not None:
                pending.append((nb, submit(nb)))
            out = tile_probabilities(predictor, rgb, prompts, ink=ink)
            if out.shape[:2] != (len(batch), len(prompts)):
                raise RuntimeError(
                    f"predictor returned shape {out.shape}, expected ({len(batch)}, "
                    f"{len(prompts)}, {S}, {S})"
                )
            wq.put((batch, out))
            if progress is not None and done[0] != last_reported:
                last_reported = done[0]
                progress(done[0], total, f"tiles {done[0]}/{total}")
    finally:
        for _, futs in pending:
            for f in futs:
                f.cancel()
        pool.shutdown(wait=True)
        wq.put(None)
        wt.join()
    if errors:
        raise errors[0]
    if progress is not None:
        progress(done[0], total, f"tiles {done[0]}/{total}")
    return done[0]


@dataclass(frozen=True)
class TileUnit:
    """Consecutive batches of the plan's fixed batch partition (``batches``: tuples of flat
    tile indices), run whole."""

    store: str
    grid: TileGrid
    batches: tuple
    prompts: tuple
    fill: int
    modality: str
    intensity: dict | None  # the slide's preset statistics (tiling.slide_intensity_stats)
    readers: int

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.batches)


def tile_units(store, plan, batches, workers: int) -> list[TileUnit]:
    """The tile stage's units for ``batches`` (those not yet recorded): one unit for one
    worker (reading, model and writing then overlap across the whole stage), else a few
    units per worker so that a slow or lost worker costs little."""
    if not batches:
        return []
    if workers <= 1:
        per = len(batches)
    else:
        per = max(
            1, min(MAX_BATCHES_PER_UNIT, math.ceil(len(batches) / (TASKS_PER_WORKER * workers)))
        )
    return [
        TileUnit(
            str(store),
            plan.grid,
            tuple(tuple(b) for b in batches[i : i + per]),
            tuple(plan.prompts),
            plan.fill,
            plan.modality,
            plan.intensity,
            plan.readers,
        )
        for i in range(0, len(batches), per)
    ]


def tile_task(unit: TileUnit, env) -> int:
    """Run the unit's batches that are not all recorded yet. Returns the tiles done."""
    group = open_group(unit.store, "r+")
    grid = unit.grid
    # only the grid rows of this unit's tiles: one chunk file per tile, so reading the whole
    # record in every unit would cost as much as the tiles themselves for small models
    flat = [k for b in unit.batches for k in b]
    r0, r1 = grid.index(min(flat))[0], grid.index(max(flat))[0] + 1
    rows = np.asarray(group["tiles/state"][r0:r1])
    done = set((np.flatnonzero(rows.reshape(-1) == 1) + r0 * rows.shape[1]).tolist())
    todo = [list(b) for b in unit.batches if not all(k in done for k in b)]
    skipped = unit.size - sum(len(b) for b in todo)
    env.report(skipped)
    if not todo:
        return skipped
    n = run_tiles(
        group,
        env.image(),
        grid,
        env.predictor(),
        todo,
        list(unit.prompts),
        fill=unit.fill,
        modality=unit.modality,
        intensity=unit.intensity,
        readers=unit.readers,
        progress=lambda d, t, m: env.report(skipped + d),
        cancel=env.cancel,
    )
    return skipped + n


# --------------------------------------------------------------------------------------------
# blending


@dataclass(frozen=True)
class BlendUnit:
    """One row of output chunks (flat chunk ids ``chunks``)."""

    store: str
    grid: TileGrid
    chunks: tuple
    n_prompts: int
    recognize: bool

    @property
    def size(self) -> int:
        return len(self.chunks)


def blend_task(unit: BlendUnit, env) -> int:
    group = open_group(unit.store, "r+")
    blend_chunks(
        group,
        unit.grid,
        unit.chunks,
        n_prompts=unit.n_prompts,
        recognize=unit.recognize,
        progress=lambda d, t, m: env.report(d),
        cancel=env.cancel,
    )
    return unit.size


# --------------------------------------------------------------------------------------------
# instances


def block_file(store, b: int) -> Path:
    return Path(store) / "blocks" / f"b_{b}.npz"


def agnostic_file(store, b: int) -> Path:
    """Block ``b``'s core class map after every nucleus took its class (int) and the value of
    the unclassified class."""
    return Path(store) / "blocks" / f"u_{b}.npz"


@dataclass(frozen=True)
class LabelUnit:
    """Label one block (with its halo) into its record file. ``split``: None = 8-connected
    components, else the ``split_instances`` keyword arguments (output px) of the instance
    step shared with ``Predictor.recognize`` (:attr:`.plan.SlidePlan.split`)."""

    store: str
    layout: BlockLayout
    block: int
    n_classes: int
    halo: int
    max_halo: int
    min_area: int
    split: dict | None
    agnostic: int | None = None  # the class-agnostic target (global_rule.apply_official_rule)

    size = 1


def label_task(unit: LabelUnit, env) -> int:
    f = block_file(unit.store, unit.block)
    if f.exists():
        return 1
    if env.cancel is not None and env.cancel.is_set():
        raise RunCancelled("cancelled")
    group = open_group(unit.store, "r")
    rec = label_block(
        group["classes/0"],
        group["probs/0"],
        unit.layout,
        unit.block,
        n_classes=unit.n_classes,
        halo=unit.halo,
        max_halo=unit.max_halo,
        min_area=unit.min_area,
        split=unit.split,
        agnostic=unit.agnostic,
    )
    f.parent.mkdir(exist_ok=True)
    if rec.classes is not None:  # before the record: resume-safe
        save_npz_atomic(
            agnostic_file(unit.store, unit.block), classes=rec.classes, value=unit.agnostic + 1
        )
    save_npz_atomic(f, **rec.to_arrays())
    return 1


@dataclass(frozen=True)
class PaintUnit:
    """Paint the cores of ``blocks`` (one block row) from the records of their neighbours
    (``near[i]``: the blocks whose owned crop meets ``blocks[i]``) with global ids starting
    at ``offsets[nb] + 1`` for block ``nb``."""

    store: str
    layout: BlockLayout
    blocks: tuple
    near: tuple
    offsets: tuple  # ((block, offset), ...) of every block named in ``near``

    @property
    def size(self) -> int:
        return len(self.blocks)


def paint_task(unit: PaintUnit, env) -> int:
    group = open_group(unit.store, "r+")
    labels = group["labels/0"]
    offsets = dict(unit.offsets)
    # LRU of block records: a 3 x 3 neighbourhood moving along a row needs ~9 of them
    cache: collections.OrderedDict[int, BlockRecord] = collections.OrderedDict()
    for n, (b, near_ids) in enumerate(zip(unit.blocks, unit.near)):
        if env.cancel is not None and env.cancel.is_set():
            raise RunCancelled("cancelled")
        cy0, cx0, cy1, cx1 = unit.layout.core(b)
        near = {}
        for nb in near_ids:
            if nb in cache:
                cache.move_to_end(nb)
            else:
                with np.load(block_file(unit.store, nb)) as a:
                    cache[nb] = BlockRecord.from_arrays(a)
                while len(cache) > 12:
                    cache.popitem(last=False)
            near[nb] = cache[nb]
        core = paint_block(unit.layout, b, near, offsets)
        if core.any():
            labels[cy0:cy1, cx0:cx1] = core
        u = agnostic_file(unit.store, b)
        if u.exists():  # the class map as recognize's has it: every nucleus in its class
            with np.load(u) as a:
                new, value = a["classes"], int(a["value"])
            dtype = group["classes/0"].dtype
            # a painted pixel keeps a class (its owner block saw the whole object; only a
            # nucleus can cover a pixel outside every class region: a filled hole)
            cls = np.where((new == 0) & (core > 0), value, new).astype(dtype)
            group["classes/0"][cy0:cy1, cx0:cx1] = cls
        env.report(n + 1)
    return unit.size


def block_summary(store, n_blocks: int):
    """Objects per block, their owned boxes and cut counts, from the block records:
    ``(counts, boxes, offsets, n_cut)``."""
    counts, boxes, n_cut = [], [], 0
    for b in range(n_blocks):
        with np.load(block_file(store, b)) as a:
            counts.append(int(a["n"]))
            oy, ox = (int(v) for v in a["origin"])
            h, w = a["crop"].shape
            boxes.append((oy, ox, oy + h, ox + w))
            n_cut += int(a["n_cut"])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return counts, boxes, offsets, n_cut


def paint_units(store, layout: BlockLayout, counts, boxes, offsets) -> list[PaintUnit]:
    nby, nbx = layout.grid
    units = []
    for r in range(nby):
        blocks = tuple(range(r * nbx, (r + 1) * nbx))
        near = []
        for b in blocks:
            cy0, cx0, cy1, cx1 = layout.core(b)
            near.append(
                tuple(
                    nb
                    for nb, (y0, x0, y1, x1) in enumerate(boxes)
                    if counts[nb] and y0 < cy1 and y1 > cy0 and x0 < cx1 and x1 > cx0
                )
            )
        used = sorted({nb for ids in near for nb in ids})
        units.append(
            PaintUnit(
                str(store),
                layout,
                blocks,
                tuple(near),
                tuple((nb, int(offsets[nb])) for nb in used),
            )
        )
    return units
