"""Executors: where the units of a stage (:mod:`.stages`) run.

Interface (what :func:`~napari_biomedparse.slide.engine.process_slide` uses)::

    executor.workers -> int           # processes that run units in parallel
    executor.map(task, units, *, label, progress=None, cancel=None,
                 model=None, image=None, threads=1) -> list   # one result per unit, in order

``task(unit, env)`` is a module-level function (so that it can travel to other processes);
``env`` gives it ``predictor()`` (``model``, built once per process), ``image()``
(``image``), ``report(done)`` (progress inside the unit, in the unit's ``size`` units) and
``cancel``. ``progress(done, total, f"{label} {done}/{total}")`` is always called in the
caller's thread (a GUI can update widgets from it); ``total`` = the sum of ``unit.size``.
A set ``cancel`` raises :class:`~.store.RunCancelled`; whatever units finished stays
recorded in the store.

:class:`LocalExecutor` runs units in this process (``threads`` > 1: a bounded thread pool,
for stages whose libraries release the GIL); :class:`~.distributed.DaskExecutor` runs them on
a dask.distributed cluster.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor

from .store import RunCancelled

__all__ = ["LocalExecutor", "LocalEnv"]


class LocalEnv:
    """The task environment in this process."""

    def __init__(self, predictor, image, cancel, report=None):
        self._predictor, self._image, self.cancel = predictor, image, cancel
        self._report = report

    def predictor(self):
        if self._predictor is None:
            raise RuntimeError("this stage was not given a model")
        return self._predictor

    def image(self):
        if self._image is None:
            raise RuntimeError("this stage was not given an image")
        return self._image

    def report(self, done: int) -> None:
        if self._report is not None:
            self._report(int(done))


class LocalExecutor:
    """Runs units in this process: one after the other in the caller's thread, or with
    ``threads`` > 1 in a pool of threads (at most ``2 * threads`` in flight)."""

    workers = 1

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
        units = list(units)
        sizes = [int(u.size) for u in units]
        total = sum(sizes)
        done = [0] * len(units)

        def report():
            if progress is not None:
                d = sum(done)
                progress(d, total, f"{label} {d}/{total}")

        def check():
            if cancel is not None and cancel.is_set():
                raise RunCancelled("cancelled")

        results: list = [None] * len(units)
        if threads <= 1:
            caller = threading.get_ident()
            for i, u in enumerate(units):
                check()

                def inner(d, i=i):
                    done[i] = min(d, sizes[i])
                    if threading.get_ident() == caller:
                        report()

                results[i] = task(u, LocalEnv(model, image, cancel, inner))
                done[i] = sizes[i]
                report()
            return results
        with ThreadPoolExecutor(threads, thread_name_prefix="nbp-units") as pool:
            todo = collections.deque(range(len(units)))
            running: collections.deque = collections.deque()
            try:
                while todo or running:
                    while todo and len(running) < 2 * threads:
                        check()
                        i = todo.popleft()
                        env = LocalEnv(model, image, cancel)
                        running.append((i, pool.submit(task, units[i], env)))
                    i, fut = running.popleft()
                    results[i] = fut.result()
                    done[i] = sizes[i]
                    report()
            finally:
                for _, fut in running:
                    fut.cancel()
        return results
