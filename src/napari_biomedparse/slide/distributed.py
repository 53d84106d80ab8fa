"""The dask.distributed executor of the slide stages (see :mod:`.executors` for the interface).

:class:`DaskExecutor` ``(client, retries=3)`` runs the units of any stage on the workers
with ``client.map(task, units, retries=)``; a worker that dies has its units rerun
elsewhere by the scheduler. Progress: workers send ``(unit, done)`` events
(``Worker.log_event``) that the caller's thread turns into ``progress`` calls. Cancel: the
caller's ``cancel`` is mirrored into a ``distributed.Event`` that running units check between
batches / blocks. This module knows the stages only as functions it is handed; it imports
neither the engine nor the stages.

The model is loaded once per worker process by a :class:`ModelPlugin` (a dask
``WorkerPlugin``, also run on workers that join or are restarted later) from a
:class:`~napari_biomedparse.inference.loading.ModelSpec`, and cached in the process; on a
machine with several GPUs each worker takes its own card (``cuda:<n mod count>`` by worker
name, unless ``CUDA_VISIBLE_DEVICES`` already narrows it, as dask-cuda's
``LocalCUDACluster`` does). A spec naming a checkpoint path is checked on each worker
against the caller's fingerprint; when the workers' file holds other weights the caller's
weights are shipped instead (with a warning).

Writes cannot race: every unit writes only its own chunks (:mod:`.stages`) and zarr's local
store writes a chunk to a temporary file and renames it; a unit run twice (its first worker
died after writing) writes identical bytes. The store (on a file system every worker sees,
checked by :func:`check_visible`) is the shared resumable record.

(About 470 lines: the executor, the worker side of a unit and the model plugin belong
together -- they are the whole of what runs on the cluster.)
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import uuid
import warnings
import weakref
import zlib
from pathlib import Path
from typing import Any

from napari_biomedparse.inference.loading import ModelSpec, model_fingerprint, model_spec

from .store import RunCancelled

__all__ = [
    "DaskExecutor",
    "ModelPlugin",
    "ModelMismatch",
    "get_predictor",
    "make_client",
    "check_visible",
    "choose_granularity",
    "restore_malloc_thresholds",
    "worker_device",
]

DEFAULT_RETRIES = 3
_POLL_S = 0.05
_EVENT_S = 0.25  # a worker sends at most one progress event per unit this often

# --------------------------------------------------------------------------------------------
# the model on the workers

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


def get_predictor(spec: ModelSpec):
    """This process's predictor for ``spec`` (built once, then cached; at most two kept).

    A spec without payload (what units carry) must have been registered first (by the
    :class:`ModelPlugin`), except for ``kind="path"`` which loads by path."""
    with _PRED_LOCK:
        pred = _PREDICTORS.get(spec.key)
        if pred is None:
            if spec.payload is None and spec.kind != "path":
                raise RuntimeError(
                    "the model is not loaded on this worker (its ModelPlugin was not "
                    "registered); run through DaskExecutor"
                )
            device = worker_device(spec.device)
            if device.startswith("cuda:"):
                import torch

                torch.cuda.set_device(torch.device(device))
            pred = spec.build(device)
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
        if self.spec.kind == "path" and self.spec.fingerprint:
            got = model_fingerprint(getattr(pred, "predictor", pred))
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


# the specs registered per client (a registry here, nothing stored on the client object)
_REGISTERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _register(client, spec: ModelSpec) -> None:
    done = _REGISTERED.setdefault(client, set())
    if spec.key in done:
        return
    try:
        client.register_plugin(ModelPlugin(spec))
    except Exception as exc:
        if spec.kind == "path" and "ModelMismatch" in f"{type(exc).__name__} {exc}":
            raise ModelMismatch(
                f"the workers' copy of {spec.source} differs from the caller's model ({exc})"
            ) from exc
        raise RuntimeError(f"the workers could not load the model: {exc}") from exc
    done.add(spec.key)


def register_model(client, model, *, source=None, device=None) -> ModelSpec:
    """Load ``model`` on every worker (by path when it came from a file the workers see, else
    its weights shipped); returns the registered spec."""
    spec = model_spec(model, source=source, device=device)
    try:
        _register(client, spec)
    except ModelMismatch as exc:
        if isinstance(model, (str, os.PathLike)):
            raise
        warnings.warn(f"{exc}; shipping the caller's model to the workers", stacklevel=3)
        spec = model_spec(model, device=device, by_path=False)
        _register(client, spec)
    return spec


# --------------------------------------------------------------------------------------------
# the client


def make_client(scheduler: str | None = None, workers: int | None = None, **cluster_kwargs):
    """A ``distributed.Client``: to ``scheduler`` (an address such as ``tcp://host:8786``) or
    to a new ``LocalCluster`` of ``workers`` processes with one thread each (one model per
    process; on a multi-GPU machine one worker per GPU). Raises ``ConnectionError`` with what
    to do when no scheduler answers at ``scheduler`` (``timeout=``, default 20 s)."""
    from distributed import Client, LocalCluster

    if scheduler:
        from .validate import probe_scheduler

        probe_scheduler(scheduler)  # a few seconds, before Client(...) can hang or misread
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


def check_visible(client, path, what: str) -> None:
    """ValueError unless every worker sees ``path`` (the slides and the store must be on a
    file system shared by every worker)."""
    seen = client.run(os.path.exists, str(path))
    blind = [w for w, ok in seen.items() if not ok]
    if blind:
        raise ValueError(
            f"{what} {path} is not visible to the dask worker(s) {', '.join(blind)}: with a "
            "cluster of several machines the slides and the output folder must be on a file "
            "system shared by every worker (same path on all machines)"
        )


def choose_granularity(n_slides: int, n_workers: int, granularity: str = "auto") -> str:
    """``"slides"`` when there are at least as many slides as workers (every stage of a
    slide runs on one worker, nothing crosses the network but paths), else ``"tiles"``
    (every stage's units spread over the workers)."""
    if granularity not in ("auto", "slides", "tiles"):
        raise ValueError(f"granularity must be 'auto', 'slides' or 'tiles', got {granularity!r}")
    if granularity != "auto":
        return granularity
    return "slides" if n_slides >= n_workers else "tiles"


# --------------------------------------------------------------------------------------------
# worker side

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


def _use_device_of(predictor) -> None:
    """Make the predictor's GPU the current one of this thread (units run on the worker's
    executor threads; code that allocates on "cuda" then lands on the worker's own card)."""
    dev = getattr(predictor, "device", None)
    if dev is None or "cuda" not in str(dev):
        return
    import torch

    dev = torch.device(dev)
    if dev.index is not None and torch.cuda.current_device() != dev.index:
        torch.cuda.set_device(dev)


class _WorkerEnv:
    def __init__(self, spec, image_ref, cancel_name, topic, index):
        from distributed import Event

        self._spec, self._image_ref = spec, image_ref
        self._topic, self._index, self._last = topic, index, 0.0
        self.cancel = Event(cancel_name)

    def predictor(self):
        if self._spec is None:
            raise RuntimeError("this stage was not given a model")
        pred = get_predictor(self._spec)
        _use_device_of(pred)
        return pred

    def image(self):
        if self._image_ref is None:
            raise RuntimeError("this stage was not given an image")
        return _open_on_worker(self._image_ref)

    def report(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= _EVENT_S:
            self._last = now
            with contextlib.suppress(ImportError, ValueError):
                from distributed import get_worker

                get_worker().log_event(self._topic, {"unit": self._index, "done": int(done)})


def _run_unit(unit, index, *, task, spec, image_ref, cancel_name, topic):
    env = _WorkerEnv(spec, image_ref, cancel_name, topic, index)
    if env.cancel.is_set():
        raise RunCancelled("cancelled")
    return task(unit, env)


# --------------------------------------------------------------------------------------------
# caller side


class DaskExecutor:
    """Runs stage units on a dask cluster (see the module doc). ``model_source``: the name
    or path the caller's model was loaded from (the workers then load it by that name)."""

    def __init__(self, client, *, retries: int = DEFAULT_RETRIES, device=None, model_source=None):
        self.client, self.retries, self.device = client, int(retries), device
        self.model_source = model_source
        self._specs: dict[int, tuple[Any, ModelSpec]] = {}

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def check_visible(self, path, what: str) -> None:
        check_visible(self.client, path, what)

    def _spec_for(self, model) -> ModelSpec:
        hit = self._specs.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        spec = register_model(self.client, model, source=self.model_source, device=self.device)
        self._specs[id(model)] = (model, spec)
        return spec

    def _image_ref(self, image):
        if image.path and image.format != "array" and Path(image.path).exists():
            check_visible(self.client, Path(image.path), "the slide")
            return ("path", str(image.path), image.mpp)
        return self.client.scatter(image, broadcast=True, hash=False)

    def map(
        self,
        task,
        units,
        *,
        label: str,
        progress=None,
        cancel=None,
        model=None,
        image=None,
        threads: int = 1,
    ) -> list:
        from distributed import Event, as_completed

        units = list(units)
        if not units:
            return []
        client = self.client
        spec = self._spec_for(model).light() if model is not None else None
        image_ref = self._image_ref(image) if image is not None else None
        run = uuid.uuid4().hex[:12]
        topic, cancel_name = f"nbp-progress-{run}", f"nbp-cancel-{run}"
        ev = Event(cancel_name, client=client)
        events: queue.Queue = queue.Queue()
        client.subscribe_topic(topic, lambda e: events.put(e[1]))
        sizes = [int(u.size) for u in units]
        total = sum(sizes)
        done = [0] * len(units)
        last = [-1]

        def report():
            d = sum(done)
            if progress is not None and d != last[0]:
                last[0] = d
                progress(d, total, f"{label} {d}/{total}")

        futs = client.map(
            _run_unit,
            units,
            range(len(units)),
            task=task,
            spec=spec,
            image_ref=image_ref,
            cancel_name=cancel_name,
            topic=topic,
            key=[f"nbp-{label}-{run}-{i}" for i in range(len(units))],
            retries=self.retries,
            pure=False,
        )
        index = {f.key: i for i, f in enumerate(futs)}
        results: list = [None] * len(units)
        cancelled = False
        try:
            ac = as_completed(futs)
            while True:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    ev.set()
                    raise RunCancelled("cancelled")
                while not events.empty():
                    msg = events.get_nowait()
                    i = int(msg["unit"])
                    done[i] = max(done[i], min(int(msg["done"]), sizes[i]))
                report()
                if ac.is_empty():
                    break
                if not ac.has_ready():
                    time.sleep(_POLL_S)
                    continue
                for f in ac.next_batch(block=False):
                    i = index[f.key]
                    if f.status != "finished":
                        exc = f.exception()
                        if type(exc).__name__ == "RunCancelled":
                            cancelled = True
                            raise RunCancelled("cancelled")
                        raise exc
                    results[i] = f.result()
                    done[i] = sizes[i]
            report()
        finally:
            client.cancel(futs)
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic)
            if not cancelled:
                with contextlib.suppress(Exception):
                    ev.clear()
        return results
