"""One writer per output: an advisory lock file ``<out>.lock`` next to the result.

The lock is an ``fcntl.flock`` on ``<out>.lock``, held by an open file descriptor: the
operating system releases it when the process ends in any way (SIGKILL included), so a
crashed run never leaves it stuck. The file holds ``pid``, ``host`` and ``started`` of the
holder, for the message a second writer gets (:class:`~napari_biomedparse.errors.
OutputLockedError`). A holder removes the file when it releases the lock; a file left by a
crashed run is simply locked again by the next one. Where ``fcntl`` does not exist
(Windows), the file is created with ``O_EXCL`` and counts as stale when its process on this
host is gone.

The lock protects against a second run on the same machine or on a file system whose
``flock`` is shared (local disks; NFS v4). Threads of one process also exclude each other.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
from pathlib import Path

from napari_biomedparse.errors import OutputLockedError

__all__ = ["OutputLock", "lock_path", "hold_output_lock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"process {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
    except (OSError, ValueError):
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """``with OutputLock(out): ...`` holds the lock of ``out`` (raises OutputLockedError when
    another live writer holds it)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def _holder_error(self) -> OutputLockedError:
        return OutputLockedError(
            f"{self.out} is being written by {_describe(self.path)} (lock {self.path}). Wait "
            "for that run to finish or stop it, or choose another output; a run that crashed "
            "leaves no lock behind."
        )

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            raise RuntimeError("lock already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_excl(info)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._holder_error() from None
            except OSError:
                os.close(fd)
                raise
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file; start again on the current one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, info.encode())
            self._fd = fd
            return self
        raise self._holder_error()  # pragma: no cover - lock file churning

    def _acquire_excl(self, info: str) -> OutputLock:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    old = json.loads(self.path.read_text())
                    stale = old.get("host") == socket.gethostname() and not _pid_alive(
                        int(old.get("pid", -1))
                    )
                except (OSError, ValueError):
                    stale = False
                if not stale:
                    raise self._holder_error() from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, info.encode())
            self._fd = fd
            return self
        raise self._holder_error()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it (see acquire)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a lock object dropped without release (never leaks the descriptor)
        try:
            self.release()
        except Exception:
            pass


def hold_output_lock(func):
    """Decorator of ``func(source, out, ...)``: refuse an ``out`` that is or overlaps the
    ``source`` (:func:`~napari_biomedparse.slide.naming.check_output_location`), then hold
    the output lock of ``out`` during the call."""
    from .naming import check_output_location

    sig = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        bound = sig.bind_partial(*args, **kwargs).arguments
        out = bound.get("out")
        if out is None:
            return func(*args, **kwargs)
        check_output_location(bound.get("source"), out)
        with OutputLock(out):
            return func(*args, **kwargs)

    return wrapper
