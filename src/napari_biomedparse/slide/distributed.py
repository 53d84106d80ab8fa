"""The slide engine on a dask.distributed cluster, and the fast single-GPU path.

Work units and why (documented choice)
--------------------------------------
- **One slide** (``process_slide(..., client=client)``): the *tile batches* go to the
  workers. A task is a run of consecutive batches of the engine's fixed batch partition (so
  every worker feeds the model exactly the batches a single process would, and writes the
  same bytes), a few tasks per worker so that a slow or lost worker costs little; inside a
  task :func:`~napari_biomedparse.slide.engine.run_tiles` overlaps reading, the model and
  writing. Blending and instances then run on the caller (they are cheap next to the model).
- **Many slides** (``process_slides(paths, ..., client=client)``): with at least as many
  slides as workers, *whole slides* go to the workers (``granularity="slides"``): every stage
  (tissue, tiles, blending, instances, exports) runs in parallel and no tile crosses the
  network; with fewer slides than workers each slide's tiles are spread instead
  (``granularity="tiles"``). ``granularity`` forces either.

The model is loaded once per worker process by a :class:`ModelPlugin` (a dask
``WorkerPlugin``, also run on workers that join or are restarted later) and cached in the
process; on a machine with several GPUs each worker takes its own card (``cuda:<n mod
count>`` by worker name, unless ``CUDA_VISIBLE_DEVICES`` already narrows it, as dask-cuda's
``LocalCUDACluster`` does).

Writes that cannot race: every tile owns its chunk of ``tiles/probs`` and ``tiles/state``
(chunk ``(1, 1, ...)``) and a task writes whole chunks only (zarr's local store writes a
chunk to a temporary file and renames it, so a reader sees the old or the new chunk, never a
mix). The only way two processes write the same chunk is a task run twice (its first worker
died after writing): both write identical bytes. Blending reads the stored tiles in index
order (:mod:`~napari_biomedparse.slide.stitching`), so the order in which workers finish does
not change a single byte. The store (on a file system every worker sees) is the shared
resumable record: ``tiles/state`` tells any process which tiles are done; a task skips its
batches that are already recorded; a worker that dies has its task rerun elsewhere by the
scheduler (and a task that still fails is resubmitted up to ``retries`` times).

Progress: workers send ``(task, tiles done)`` events (``Worker.log_event``); the caller's
thread turns them into ``progress(done, total, message)`` calls (never from another thread,
so a GUI caller can update widgets). Cancel: the caller's ``cancel`` event is mirrored into a
flag file on the shared file system that running tasks check between batches.

Fast single-GPU path (wrappers around the model engineer's ``Predictor``):
:func:`compile_predictor` (``torch.compile`` of the image encoder), :func:`auto_batch_size`
(batch sized to the card's free memory), :class:`FastPredictor` (tiles go to the GPU as
uint8 through pinned memory with non-blocking copies; resize to the model input and the
normalisation run on the GPU; one decoder pass per tile for all prompts; logits resized on
the GPU straight to the tile size, so 16x fewer bytes come back to the host at 1024 / 256).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import queue
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .store import RunCancelled, open_group, partial_path

__all__ = [
    "ModelSpec",
    "ModelPlugin",
    "model_spec",
    "register_model",
    "get_predictor",
    "make_client",
    "run_tiles_distributed",
    "process_slides_distributed",
    "choose_granularity",
    "FastPredictor",
    "configure_predictor",
    "compile_predictor",
    "auto_batch_size",
    "restore_malloc_thresholds",
]

DEFAULT_RETRIES = 3
TASKS_PER_WORKER = 4  # tasks per worker in tile mode (load balance vs. pipelining)
MAX_BATCHES_PER_TASK = 8
_POLL_S = 0.05
_EVENT_S = 0.25  # a worker sends at most one progress event per task this often

# --------------------------------------------------------------------------------------------
# the model on the workers


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build its predictor, without the client's objects.

    ``kind``: ``"name"`` (``source`` is a model name or checkpoint path for ``load_model``),
    ``"model"`` (``payload`` is the bytes of a safetensors checkpoint of a ``BiomedParse``, loaded onto the CPU and
    then onto the worker's device) or ``"object"`` (``payload`` is any pickled predictor,
    used as is). ``key`` identifies the predictor in the workers' cache.
    """

    key: str
    kind: str
    source: str | None = None
    payload: bytes | None = field(default=None, repr=False)
    device: str = "auto"
    dtype: str | None = None
    compile: bool = False
    fast: bool = False
    tile_size: int | None = None

    fingerprint: str | None = None

    def light(self) -> ModelSpec:
        """The spec without its payload (what tasks carry)."""
        return dataclasses.replace(self, payload=None)


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    s = str(dtype).replace("torch.", "")
    return None if s in ("float32", "fp32") else s


def model_spec(
    model: Any = "default",
    predictor: Any = None,
    *,
    device: str | None = None,
    dtype=None,
    compile: bool = False,
    fast: bool = False,
    tile_size: int | None = None,
    by_path: bool = True,
) -> ModelSpec:
    """A :class:`ModelSpec` for ``model`` (a name or path, a ``BiomedParse`` module, a
    Predictor or any predictor object). ``predictor`` (the caller's resolved predictor, when
    it has one) supplies the fingerprint and dtype. A model loaded from one of our safetensors
    files is loaded from that path on the workers (``by_path``; the workers check that they
    get the same weights), other objects are shipped pickled."""
    from .engine import model_fingerprint

    dev = "auto" if device in (None, "auto") else str(device)
    obj = predictor if predictor is not None else model
    cached = getattr(obj, "_nbp_spec", None)
    if isinstance(cached, ModelSpec) and (cached.device, cached.compile, cached.fast) == (
        dev,
        compile,
        fast,
    ):
        if by_path or cached.kind != "name" or isinstance(model, (str, os.PathLike)):
            return cached
    inner = obj
    if isinstance(obj, FastPredictor):
        inner, fast, tile_size = obj.predictor, True, obj.input_size
        compile = compile or obj.compiled
    compile = compile or bool(getattr(inner, "compiled", False))
    if dtype is None:
        dtype = getattr(inner, "dtype", None)
    dname = _dtype_name(dtype)
    import torch

    from napari_biomedparse.inference.predictor import Predictor

    fp = model_fingerprint(inner) if hasattr(inner, "predict_batch") else None
    module = None
    if isinstance(inner, torch.nn.Module):
        module = inner
    elif isinstance(inner, Predictor):
        module = inner.model
    if fp is None and module is not None:
        from types import SimpleNamespace

        fp = model_fingerprint(SimpleNamespace(model=module))
    source = str(model) if isinstance(model, (str, os.PathLike)) else None
    if source is None and module is not None and by_path:
        # a model loaded from one of our safetensors files (they store their configuration)
        src = (getattr(module, "checkpoint_info", None) or {}).get("source")
        if src and str(src).endswith(".safetensors") and Path(src).is_file():
            source = str(Path(src).resolve())
    opts = dict(device=dev, dtype=dname, compile=compile, fast=fast, tile_size=tile_size)
    if source is not None:
        key = f"{fp or source}|{dev}|{dname}|{compile}|{fast}|{tile_size}"
        spec = ModelSpec(key, "name", source, None, fingerprint=fp, **opts)
    else:
        if module is not None:
            # weights travel as our safetensors format (configuration in the header), never
            # as a pickle that a worker would have to unpickle
            from napari_biomedparse.model.checkpoint import save_checkpoint

            with tempfile.TemporaryDirectory() as tmp:
                path = save_checkpoint(module, Path(tmp) / "model.safetensors")
                payload, kind = path.read_bytes(), "model"
        else:
            payload, kind = pickle.dumps(inner), "object"
            if fp is None:
                fp = "sha256:" + __import__("hashlib").sha256(payload).hexdigest()[:32]
        key = f"{fp}|{dev}|{dname}|{compile}|{fast}|{tile_size}"
        spec = ModelSpec(key, kind, None, payload, fingerprint=fp, **opts)
    with contextlib.suppress(Exception):
        obj._nbp_spec = spec
    return spec


_PREDICTORS: dict[str, Any] = {}
_PRED_LOCK = threading.Lock()
_MAX_CACHED = 2


def _worker_ordinal() -> int:
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    try:
        return int(name)
    except (TypeError, ValueError):
        return zlib.crc32(str(name).encode())


def worker_device(device: str = "auto") -> str:
    """The device a worker process should use: ``device`` when explicit; with "auto" on a
    machine with several visible GPUs, ``cuda:<worker ordinal mod count>``."""
    if device not in (None, "auto"):
        return str(device)
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"cuda:{_worker_ordinal() % n}" if n > 1 else "cuda"
    from napari_biomedparse.inference.predictor import resolve_device

    return str(resolve_device("auto"))


def _build_predictor(spec: ModelSpec):
    if spec.kind == "object":
        return pickle.loads(spec.payload)
    import torch

    from napari_biomedparse.inference.predictor import Predictor

    device = worker_device(spec.device)
    if spec.kind == "name":
        from napari_biomedparse.hub import load_model

        model = load_model(spec.source)
    elif spec.kind == "model":
        from napari_biomedparse.model.checkpoint import model_from_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(spec.payload)
            model = model_from_checkpoint(path)
    else:
        raise ValueError(f"unknown model spec kind {spec.kind!r}")
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    pred = Predictor(model, device=device, dtype=spec.dtype)
    if spec.fast:
        return FastPredictor(pred, spec.tile_size or pred.input_size, compile=spec.compile)
    if spec.compile:
        compile_predictor(pred)
    return pred


def get_predictor(spec: ModelSpec):
    """This process's predictor for ``spec`` (built once, then cached; at most two kept).

    A spec without payload (what tasks carry) must have been registered first (by the
    :class:`ModelPlugin`), except for ``kind="name"`` which loads by name."""
    with _PRED_LOCK:
        pred = _PREDICTORS.get(spec.key)
        if pred is None:
            if spec.payload is None and spec.kind != "name":
                raise RuntimeError(
                    "the model is not loaded on this worker (its ModelPlugin was not "
                    "registered); call register_model(client, spec) first"
                )
            pred = _build_predictor(spec)
            while len(_PREDICTORS) >= _MAX_CACHED:
                _PREDICTORS.pop(next(iter(_PREDICTORS)))
            _PREDICTORS[spec.key] = pred
        return pred


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPluginBase = object


class ModelMismatch(RuntimeError):
    """A worker loaded different weights from the model path than the caller has."""


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def restore_malloc_thresholds(mmap_bytes: int = 32 << 20, trim_bytes: int = 128 << 20) -> bool:
    """Undo the effect of dask's ``MALLOC_TRIM_THRESHOLD_`` on torch in this process.

    A dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (config
    ``distributed.nanny.pre-spawn-environ``). Setting any threshold turns off glibc's dynamic
    mmap threshold, so every allocation over 128 KiB (each activation of the model) becomes an
    ``mmap`` + page faults + ``munmap``: the model ran 1.8x slower in a worker than in the
    caller's process (measured here, tiny model on CPU). This sets the mmap threshold to
    ``mmap_bytes`` and the trim threshold to ``trim_bytes`` (freed memory above that at the top
    of the heap still goes back to the system). Returns False where it cannot (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


class ModelPlugin(_WorkerPluginBase):
    """Loads the model once per worker process (at registration, and on every worker that
    joins or is restarted later) onto the worker's own device."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.name = "napari-biomedparse-model-" + zlib.crc32(spec.key.encode()).to_bytes(4).hex()

    def setup(self, worker):
        worker.nbp_malloc_restored = bool(os.environ.get("MALLOC_TRIM_THRESHOLD_")) and (
            restore_malloc_thresholds()
        )
        pred = get_predictor(self.spec)
        if self.spec.kind == "name" and self.spec.fingerprint:
            from .engine import model_fingerprint

            inner = pred.predictor if isinstance(pred, FastPredictor) else pred
            got = model_fingerprint(inner)
            if got != self.spec.fingerprint:
                with _PRED_LOCK:
                    _PREDICTORS.pop(self.spec.key, None)
                raise ModelMismatch(
                    f"{self.spec.source} on worker {worker.name} has weights {got}, the "
                    f"caller's model has {self.spec.fingerprint}"
                )
        worker.nbp_device = str(getattr(pred, "device", "cpu"))

    def teardown(self, worker):
        with _PRED_LOCK:
            _PREDICTORS.pop(self.spec.key, None)


def register_model(client, spec: ModelSpec) -> None:
    """Register the :class:`ModelPlugin` for ``spec`` on the cluster (once per client)."""
    done = client.__dict__.setdefault("_nbp_registered", set())
    if spec.key in done:
        return
    try:
        client.register_plugin(ModelPlugin(spec))
    except Exception as exc:
        if spec.kind == "name" and "ModelMismatch" in f"{type(exc).__name__} {exc}":
            raise ModelMismatch(
                f"the workers' copy of {spec.source} differs from the caller's model ({exc}); "
                "pass the model object (it is then shipped to the workers) or make the same "
                "file visible to every worker"
            ) from exc
        raise RuntimeError(f"the workers could not load the model: {exc}") from exc
    done.add(spec.key)


def _register_for(client, model, predictor, device) -> ModelSpec:
    """Register ``model`` on the workers: by path when possible, shipped pickled when the
    workers' file turns out to hold other weights than the caller's object."""
    spec = model_spec(model, predictor, device=device)
    try:
        register_model(client, spec)
    except ModelMismatch as exc:
        obj = predictor if predictor is not None else model
        if isinstance(obj, (str, os.PathLike)):
            raise
        import warnings

        warnings.warn(f"{exc}; shipping the caller's model to the workers", stacklevel=3)
        spec = model_spec(obj, predictor, device=device, by_path=False)
        register_model(client, spec)
        with contextlib.suppress(Exception):
            obj._nbp_spec = spec
    return spec


def make_client(scheduler: str | None = None, workers: int | None = None, **cluster_kwargs):
    """A ``distributed.Client``: to ``scheduler`` (an address such as ``tcp://host:8786``) or
    to a new ``LocalCluster`` of ``workers`` processes with one thread each (one model per
    process; on a multi-GPU machine one worker per GPU). Raises ``ConnectionError`` with what
    to do when no scheduler answers at ``scheduler`` (``timeout=``, default 20 s)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=cluster_kwargs.pop("timeout", "20s"))
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"no dask scheduler answers at {scheduler!r} ({exc}). Start one there (`dask "
                "scheduler`, then `dask worker ADDRESS` on each GPU machine; see "
                "docs/distributed.md), check the address and port, or leave the scheduler "
                "empty to run in this process."
            ) from None
    n = int(workers or 1)
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    kw = dict(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    kw.update(cluster_kwargs)
    return Client(LocalCluster(**kw))


def _n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


# --------------------------------------------------------------------------------------------
# worker-side helpers


_IMAGES: dict[tuple, Any] = {}


def _open_on_worker(ref):
    """A SlideImage from a reference ``("path", path, mpp)`` (reopened, cached per process)
    or the image itself (scattered to the workers)."""
    if isinstance(ref, tuple) and ref and ref[0] == "path":
        key = ref[1:]
        img = _IMAGES.get(key)
        if img is None:
            from .readers import open_image

            img = open_image(ref[1], mpp=ref[2])
            if len(_IMAGES) > 8:
                _IMAGES.pop(next(iter(_IMAGES)))
            _IMAGES[key] = img
        return img
    return ref


class _CancelFlag:
    """A cancel flag every worker can see: a file on the shared file system (the store or
    the output folder, which every worker sees anyway). ``set()`` creates it, ``is_set()``
    is one ``stat`` (no scheduler round trip, no client on the workers)."""

    def __init__(self, path):
        self.path = str(path)

    def set(self) -> None:
        Path(self.path).touch()

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            os.remove(self.path)


def _use_device_of(predictor) -> None:
    """Make the predictor's GPU the current one of this thread (tasks run on the worker's
    executor threads; code that allocates on "cuda" then lands on the worker's own card)."""
    dev = getattr(predictor, "device", None)
    if dev is None or "cuda" not in str(dev):
        return
    import torch

    dev = torch.device(dev)
    if dev.index is not None and torch.cuda.current_device() != dev.index:
        torch.cuda.set_device(dev)


def _log(topic: str, msg: dict) -> None:
    try:
        from distributed import get_worker

        get_worker().log_event(topic, msg)
    except (ImportError, ValueError):
        pass


def _tiles_task(store, image_ref, grid, batches, prompts, spec, opts, topic, task_id, cancel):
    """Run ``batches`` (skipping those already recorded) on this worker into ``store``."""
    from .engine import run_tiles

    group = open_group(store, "r+")
    # only the grid rows of this task's tiles: one chunk file per tile, so reading the whole
    # record in every task would cost as much as the tiles themselves for small models
    flat = [k for b in batches for k in b]
    r0, r1 = grid.index(min(flat))[0], grid.index(max(flat))[0] + 1
    rows = np.asarray(group["tiles/state"][r0:r1])
    done = set((np.flatnonzero(rows.reshape(-1) == 1) + r0 * rows.shape[1]).tolist())
    todo = [b for b in batches if not all(k in done for k in b)]
    skipped = sum(len(b) for b in batches) - sum(len(b) for b in todo)
    if not todo:
        _log(topic, {"task": task_id, "done": skipped})
        return skipped
    predictor = get_predictor(spec)
    _use_device_of(predictor)
    image = _open_on_worker(image_ref)

    last = [0.0]

    def progress(done, total, message):
        now = time.monotonic()
        if done >= total or now - last[0] >= _EVENT_S:
            last[0] = now
            _log(topic, {"task": task_id, "done": skipped + int(done)})

    n = run_tiles(
        group,
        image,
        grid,
        predictor,
        todo,
        prompts,
        fill=opts["fill"],
        intensity_range=opts["intensity_range"],
        readers=opts["readers"],
        progress=progress,
        cancel=_CancelFlag(cancel),
    )
    return skipped + n


def _slide_task(source_ref, dest, spec, kwargs, topic, index, cancel):
    """Process one whole slide on this worker; returns the result path."""
    from .engine import process_slide

    predictor = get_predictor(spec)
    _use_device_of(predictor)
    source = _open_on_worker(source_ref) if isinstance(source_ref, tuple) else source_ref

    def progress(done, total, message):
        _log(topic, {"task": index, "done": int(done), "total": int(total), "msg": message})

    res = process_slide(
        source, dest, model=predictor, progress=progress, cancel=_CancelFlag(cancel), **kwargs
    )
    return str(res.path)


# --------------------------------------------------------------------------------------------
# caller side


def _group_batches(batches, n_workers: int, per_task: int | None):
    if per_task is None:
        per_task = math.ceil(len(batches) / (TASKS_PER_WORKER * n_workers))
        per_task = max(1, min(MAX_BATCHES_PER_TASK, per_task))
    return [batches[i : i + per_task] for i in range(0, len(batches), per_task)]


def _check_visible(client, path: Path, what: str) -> None:
    seen = client.run(os.path.exists, str(path))
    blind = [w for w, ok in seen.items() if not ok]
    if blind:
        raise ValueError(
            f"{what} {path} is not visible to the dask worker(s) {', '.join(blind)}: with a "
            "cluster of several machines the slides and the output folder must be on a file "
            "system shared by every worker (same path on all machines)"
        )


def _image_ref(client, image):
    if image.path and image.format != "array" and Path(image.path).exists():
        _check_visible(client, Path(image.path), "the slide")
        return ("path", str(image.path), image.mpp)
    return client.scatter(image, broadcast=True, hash=False)


class _Events:
    """Collects worker events on the client's thread and hands them to the caller's thread."""

    def __init__(self, client, topic):
        self.client, self.topic = client, topic
        self.q: queue.Queue = queue.Queue()
        client.subscribe_topic(topic, self._on)

    def _on(self, event):
        self.q.put(event[1])

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def close(self):
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self.topic)


def _run_futures(client, make, items, *, events, on_event, on_done, cancel, cancel_ev, retries):
    """Submit ``make(i)`` for every item, wait in the caller's thread, feed progress, resubmit
    a task that failed (lost worker) up to ``retries`` times, honour ``cancel``. Closes
    ``events`` at the end, and clears ``cancel_ev`` unless the run was cancelled."""
    from distributed import as_completed

    futs: dict = {}
    errors: dict[int, BaseException] = {}
    try:
        futs.update({make(i): i for i in range(len(items))})
        tries = dict.fromkeys(range(len(items)), 0)
        ac = as_completed(list(futs))
        while True:
            if cancel is not None and cancel.is_set():
                cancel_ev.set()
                client.cancel(list(futs))
                raise RunCancelled("cancelled")
            for msg in events.drain():
                on_event(msg)
            if ac.is_empty():
                break
            if not ac.has_ready():
                time.sleep(_POLL_S)
                continue
            for f in ac.next_batch(block=False):
                i = futs.pop(f)
                if f.status == "finished":
                    on_done(i, f.result())
                    f.release()
                    continue
                try:
                    exc = f.exception()
                except BaseException as e:  # noqa: BLE001 - a cancelled future raises
                    exc = e
                if isinstance(exc, RunCancelled) or type(exc).__name__ == "RunCancelled":
                    raise RunCancelled("cancelled")
                if tries[i] < retries and _retryable(exc):
                    tries[i] += 1
                    nf = make(i)
                    futs[nf] = i
                    ac.add(nf)
                else:
                    errors[i] = exc
                f.release()
        for msg in events.drain():
            on_event(msg)
    finally:
        if futs:
            client.cancel(list(futs))
        events.close()
        if not (cancel is not None and cancel.is_set()):
            cancel_ev.clear()
    return errors


def _retryable(exc) -> bool:
    """Lost workers and connections, not errors of the work itself (bad file, existing
    result...), which would fail the same way again."""
    name = type(exc).__name__
    return name in (
        "KilledWorker",
        "CommClosedError",
        "FutureCancelledError",
        "CancelledError",
        "StreamClosedError",
    ) or isinstance(exc, ConnectionError)


def run_tiles_distributed(
    client,
    out,
    image,
    grid,
    predictor,
    batches,
    prompts,
    *,
    fill: int = 255,
    progress=None,
    cancel=None,
    model=None,
    device: str | None = None,
    intensity_range=None,
    readers: int = 2,
    batches_per_task: int | None = None,
    retries: int = DEFAULT_RETRIES,
) -> int:
    """The tile stage of ``process_slide`` on a dask cluster (same contract as
    :func:`~napari_biomedparse.slide.engine.run_tiles`, into the store at
    ``partial_path(out)``). ``model``: the caller's model argument (a name or path is loaded
    by name on the workers; objects are shipped pickled). Returns the tiles written."""
    from .engine import _intensity_range

    store = partial_path(out)
    if not store.exists():
        raise FileNotFoundError(f"no run store at {store}")
    _check_visible(client, store, "the output store")
    n_workers = _n_workers(client)
    spec = _register_for(client, model if model is not None else predictor, predictor, device)
    light = spec.light()
    if intensity_range is None:
        intensity_range = _intensity_range(image)
    opts = {"fill": int(fill), "intensity_range": intensity_range, "readers": int(readers)}
    image_ref = _image_ref(client, image)
    groups = _group_batches(list(batches), n_workers, batches_per_task)
    sizes = [sum(len(b) for b in g) for g in groups]
    total = sum(sizes)
    run = uuid.uuid4().hex[:12]
    for stale in store.glob(".cancel-*"):  # flags of earlier cancelled runs of this store
        with contextlib.suppress(OSError):
            stale.unlink()
    topic, cancel_name = f"nbp-progress-{run}", str(store / f".cancel-{run}")
    cancel_ev = _CancelFlag(cancel_name)
    events = _Events(client, topic)
    done = [0] * len(groups)
    last = [-1]

    def report():
        d = sum(done)
        if progress is not None and d != last[0]:
            last[0] = d
            progress(d, total, f"tiles {d}/{total}")

    def on_event(msg):
        i = int(msg["task"])
        done[i] = max(done[i], min(int(msg["done"]), sizes[i]))
        report()

    def on_done(i, n):
        done[i] = sizes[i]
        report()

    def make(i):
        return client.submit(
            _tiles_task,
            str(store),
            image_ref,
            grid,
            groups[i],
            prompts,
            light,
            opts,
            topic,
            i,
            cancel_name,
            key=f"nbp-tiles-{run}-{i}-{uuid.uuid4().hex[:6]}",
            pure=False,
        )

    errors = _run_futures(
        client,
        make,
        groups,
        events=events,
        on_event=on_event,
        on_done=on_done,
        cancel=cancel,
        cancel_ev=cancel_ev,
        retries=retries,
    )
    if errors:
        i, exc = next(iter(errors.items()))
        raise RuntimeError(
            f"{len(errors)} tile task(s) failed on the cluster (first: task {i}: {exc!r}); "
            "finished tiles are recorded, rerun to resume"
        ) from exc
    report()
    return total


def choose_granularity(n_slides: int, n_workers: int, granularity: str = "auto") -> str:
    """``"slides"`` when there are at least as many slides as workers (every stage runs in
    parallel, nothing crosses the network but the result path), else ``"tiles"``."""
    if granularity not in ("auto", "slides", "tiles"):
        raise ValueError(f"granularity must be 'auto', 'slides' or 'tiles', got {granularity!r}")
    if granularity != "auto":
        return granularity
    return "slides" if n_slides >= n_workers else "tiles"


def process_slides_distributed(
    client,
    sources,
    out_dir,
    *,
    model: Any = "default",
    device: str | None = None,
    granularity: str = "auto",
    progress=None,
    cancel=None,
    on_error: str = "raise",
    retries: int = DEFAULT_RETRIES,
    **kwargs,
):
    """``process_slides`` on a cluster: ``{source: SlideResult | Exception}``.

    Whole slides per worker or tiles per worker (:func:`choose_granularity`). Results go to
    ``out_dir/<name>.biomedparse.zarr`` exactly as without a cluster."""
    from .engine import SlideResult, process_slide, resolve_predictor
    from .readers import SlideImage

    sources = list(sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = choose_granularity(len(sources), _n_workers(client), granularity)
    names = [
        Path(str(s)).name if not isinstance(s, SlideImage) else f"slide{i}"
        for i, s in enumerate(sources)
    ]
    dests = [out_dir / f"{n}.biomedparse.zarr" for n in names]
    results: dict[str, Any] = {}
    n = len(sources)
    if mode == "tiles":
        predictor = resolve_predictor(model, device)
        spec = model_spec(model, predictor, device=device)
        predictor._nbp_spec = spec
        for k, (src, dest) in enumerate(zip(sources, dests)):

            def prog(done, total, message, k=k):
                if progress is not None:
                    frac = done / max(total, 1)
                    progress(int(1000 * (k + frac)), 1000 * n, f"slide {k + 1}/{n}: {message}")

            try:
                results[str(src)] = process_slide(
                    src,
                    dest,
                    model=predictor,
                    client=client,
                    progress=prog,
                    cancel=cancel,
                    device=device,
                    **kwargs,
                )
            except RunCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded per slide when asked
                if on_error != "continue":
                    raise
                results[str(src)] = exc
        return results

    predictor = None if isinstance(model, (str, os.PathLike)) else model
    light = _register_for(client, model, predictor, device).light()
    refs = []
    for s in sources:
        if isinstance(s, SlideImage):
            refs.append(client.scatter(s, broadcast=True, hash=False))
        else:
            p = Path(str(s)).resolve()
            _check_visible(client, p, "the slide")
            refs.append(str(p))
    _check_visible(client, out_dir.resolve(), "the output folder")
    run = uuid.uuid4().hex[:12]
    topic = f"nbp-progress-{run}"
    cancel_name = str(out_dir.resolve() / f".nbp-cancel-{run}")
    cancel_ev = _CancelFlag(cancel_name)
    events = _Events(client, topic)
    frac = [0.0] * n
    last = [-1]

    def report(msg=""):
        d = int(1000 * sum(frac))
        if progress is not None and d != last[0]:
            last[0] = d
            progress(d, 1000 * n, msg)

    def on_event(msg):
        i = int(msg["task"])
        frac[i] = max(frac[i], min(1.0, msg["done"] / max(msg["total"], 1)))
        report(f"slide {i + 1}/{n} {names[i]}: {msg.get('msg', '')}")

    def on_done(i, path):
        frac[i] = 1.0
        results[str(sources[i])] = SlideResult.open(path)
        report(f"slide {i + 1}/{n} {names[i]}: done")

    def make(i):
        return client.submit(
            _slide_task,
            refs[i],
            str(dests[i].resolve()),
            light,
            kwargs,
            topic,
            i,
            cancel_name,
            key=f"nbp-slide-{run}-{i}-{uuid.uuid4().hex[:6]}",
            pure=False,
        )

    errors = _run_futures(
        client,
        make,
        sources,
        events=events,
        on_event=on_event,
        on_done=on_done,
        cancel=cancel,
        cancel_ev=cancel_ev,
        retries=retries,
    )
    for i, exc in sorted(errors.items()):
        if on_error != "continue":
            raise exc
        results[str(sources[i])] = exc
    return {str(s): results[str(s)] for s in sources}


# --------------------------------------------------------------------------------------------
# the fast single-GPU path (wrappers around inference.predictor.Predictor)


def configure_predictor(
    predictor,
    *,
    dtype=None,
    compile: bool = False,
    fast: bool = False,
    tile_size: int | None = None,
):
    """The GPU options on a resolved predictor: ``dtype`` ("bf16", "fp16"; autocast),
    ``compile`` (``torch.compile``), ``fast`` (:class:`FastPredictor` reading tiles of
    ``tile_size``). Returns a new predictor (the model object is shared); a predictor that is
    not a ``Predictor`` is returned unchanged when no option is asked, else refused."""
    from napari_biomedparse.inference.predictor import Predictor

    if dtype in (None, "fp32", "float32") and not compile and not fast:
        return predictor
    if not isinstance(predictor, Predictor):
        raise ValueError(
            "precision / compile / fast options need a BiomedParse model (a Predictor), "
            f"not {type(predictor).__name__}"
        )
    if dtype not in (None, "fp32", "float32"):
        predictor = Predictor(predictor.model, device=predictor.device, dtype=dtype)
    if fast:
        if not tile_size:
            raise ValueError("fast=True needs the tile size")
        return FastPredictor(predictor, int(tile_size), compile=compile)
    if compile:
        compile_predictor(predictor)
    return predictor


def compile_predictor(predictor, mode: str | None = None):
    """``torch.compile`` the image encoder (backbone + pixel decoder) and the mask decoder of
    a Predictor in place (state-dict keys unchanged, so fingerprints stay the same). The first
    batch of each shape compiles (tens of seconds on the full model). Returns the predictor."""
    model = predictor.model
    for name in ("backbone", "pixel_decoder"):
        mod = getattr(model, name, None)
        if mod is not None:
            mod.compile(mode=mode, dynamic=False)
    predictor.compiled = True
    return predictor


def auto_batch_size(
    predictor, prompts, *, max_batch: int = 64, headroom: float = 0.8, default: int = 4
) -> int:
    """A batch size that fits the card's free memory: one probe batch of 1 measures the peak
    memory per tile; ``floor(headroom * free / per_tile)`` (capped at ``max_batch``). On a
    CPU (or MPS) returns ``default``."""
    import torch

    dev = torch.device(str(getattr(predictor, "device", "cpu")))
    if dev.type != "cuda":
        return int(default)
    S = int(predictor.input_size)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    predictor.predict_batch(np.zeros((1, S, S, 3), np.uint8), prompts)
    torch.cuda.synchronize(dev)
    per_tile = max(1, torch.cuda.max_memory_allocated(dev) - base)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(1, min(max_batch, headroom * free // per_tile)))


class FastPredictor:
    """The GPU path around a ``Predictor``: the engine reads tiles at the tile size
    (``input_size`` here is the *tile* size), they go to the device as uint8 (pinned host
    memory, non-blocking copy), are resized (bilinear, antialiased) to the model input and
    normalised on the device, encoded once, decoded once for all prompts, and the mask
    logits are resized on the device straight to the tile size before the sigmoid, and with
    ``output="uint8"`` (default) quantised there to what the store keeps, ``round(255 p)``
    (the engine's ``run_tiles`` stores uint8 tiles as they are): 4x fewer bytes to copy back
    and no float work on the host. ``output="float32"`` returns probabilities. ``dtype``
    autocast (bf16) and ``compile`` as on the Predictor.

    Results differ slightly from the reference path (PIL resize on the CPU, probabilities at
    the model input then reduced to the tile), so a run records ``input_size`` = the tile
    size and cannot resume a reference run."""

    def __init__(
        self, predictor, tile_size: int, *, compile: bool = False, timer=None, output="uint8"
    ):
        if output not in ("uint8", "float32"):
            raise ValueError(f"output must be 'uint8' or 'float32', got {output!r}")
        self.output = output
        self.predictor = predictor
        self.model = predictor.model
        self.device = predictor.device
        self.dtype = predictor.dtype
        self.input_size = int(tile_size)
        self.model_size = int(predictor.input_size)
        self.compiled = False
        self.timer = timer
        if compile:
            compile_predictor(predictor)
            self.compiled = True

    def fingerprint(self):
        from .engine import model_fingerprint

        return f"{model_fingerprint(self.predictor)}|fast{self.input_size}|{self.dtype}"

    def __getstate__(self):
        raise TypeError("FastPredictor is built on each worker from a ModelSpec; not pickled")

    def _t(self, name):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def predict_batch(self, tiles, prompts, *, as_numpy: bool = True):
        import torch
        import torch.nn.functional as F

        from napari_biomedparse.inference.predictor import _check_prompts

        prompts = _check_prompts(prompts)
        T, S = self.input_size, self.model_size
        tiles = np.asarray(tiles)
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (T, T, 3):
            raise ValueError(
                f"tiles must be uint8 (B, {T}, {T}, 3), got {tiles.dtype} {tiles.shape}"
            )
        p = self.predictor
        cuda = p.device.type == "cuda"
        n_real = tiles.shape[0]
        if self.compiled:  # a smaller last batch would trigger a recompilation: pad it
            self._max_batch = max(getattr(self, "_max_batch", 0), n_real)
            if n_real < self._max_batch:
                pad = np.zeros((self._max_batch - n_real, T, T, 3), np.uint8)
                tiles = np.concatenate([tiles, pad])
        with torch.inference_mode():
            with self._t("h2d"):
                x = torch.from_numpy(tiles)
                if cuda:
                    x = x.pin_memory().to(p.device, non_blocking=True)
                else:
                    x = x.to(p.device)
            with self._t("preprocess"):  # resize + normalisation, on the device
                x = x.permute(0, 3, 1, 2).contiguous().float()
                if T != S:
                    x = F.interpolate(
                        x, size=(S, S), mode="bilinear", align_corners=False, antialias=S < T
                    ).clamp_(0, 255)
                x = self.model.normalize(x)
            text = p._text(prompts)
            with p._autocast():
                with self._t("encode"):  # = model.encode_image without its normalisation
                    feats = self.model.pixel_decoder(self.model.backbone(x))
                with self._t("decode"):  # all prompts in one decoder pass
                    out = self.model.decode(feats, text, joint=False)
            with self._t("postprocess"):
                logits = out["matched_masks"].float()
                b, n = logits.shape[:2]
                up = F.interpolate(
                    logits.reshape(b, n, *logits.shape[-2:]),
                    (T, T),
                    mode="bilinear",
                    align_corners=False,
                ).sigmoid_()[:n_real]
                if self.output == "uint8":  # what the store keeps: round(255 p), 4x fewer bytes
                    up = up.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            if not as_numpy:
                return up
            with self._t("d2h"):
                if cuda:
                    host = torch.empty(up.shape, dtype=up.dtype, pin_memory=True)
                    host.copy_(up, non_blocking=True)
                    torch.cuda.current_stream(p.device).synchronize()
                    return host.numpy()
                return up.cpu().numpy()
