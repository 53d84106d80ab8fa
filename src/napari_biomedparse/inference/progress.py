"""Progress reports and cancellation of long in-memory runs (tasks, tiled prediction).

Every long function of :mod:`.tasks` and :func:`.tiled.predict_tiled` takes

- ``progress``: None or a callable ``progress(done: int, total: int, message: str)``, called
  after each unit of work (a tile batch, a prompt batch of a whole-image model, a slice of a
  stack); ``done`` grows to ``total`` within one message stream;
- ``cancel``: None, a ``threading.Event`` (or anything with ``is_set()``), or a callable
  returning True to stop. It is checked before every tile batch (and every model call of a
  whole-image model), so a run stops within one batch by raising :class:`Cancelled`; nothing
  is returned and no partial result is kept.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Cancelled", "check_cancel", "is_cancelled", "report", "with_prefix"]

Progress = Callable[[int, int, str], None]


class Cancelled(Exception):
    """The run was cancelled through its ``cancel`` argument; it produced nothing."""


def is_cancelled(cancel) -> bool:
    """Whether ``cancel`` (None, an Event-like with ``is_set()`` or a callable) asks to stop."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if is_set is not None:
        return bool(is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(
        f"cancel must be None, a threading.Event or a callable returning bool; got {cancel!r}"
    )


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` when ``cancel`` asks to stop."""
    if is_cancelled(cancel):
        raise Cancelled("cancelled")


def report(progress: Progress | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress(done, total, message)`` when a callback is given."""
    if progress is not None:
        progress(int(done), int(total), message)


def with_prefix(progress: Progress | None, prefix: str) -> Progress | None:
    """``progress`` with ``prefix`` put before every message (e.g. "slice 2/5: ")."""
    if progress is None or not prefix:
        return progress

    def f(done, total, message=""):
        progress(done, total, prefix + message)

    return f
