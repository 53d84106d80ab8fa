"""Run a job in a napari thread worker, with napari's progress and a Cancel button.

The job is a plain function ``func(*, progress, cancel, **kwargs)`` from the core layers (or
from :mod:`._functions`), the same one a script calls: ``progress(done, total, message)`` is
called from the worker thread, ``cancel`` is a ``threading.Event`` that the job checks
(between tile batches for tiled and slide runs). The worker is a
:func:`napari.qt.threading.create_worker` generator worker: each progress report is handed to
the GUI thread through the worker's own ``yielded`` signal, where it moves the widget's
progress bar and a :class:`napari.utils.cancelable_progress` shown in napari's activity dock
(whose cancel button cancels the run too). The result is handed to ``on_result`` in the GUI
thread only when the job finished and was not cancelled, so a cancelled run adds nothing.
Errors become napari notifications (never tracebacks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QSizePolicy

from ._functions import Cancelled, friendly_error

log = logging.getLogger(__name__)


class _RunProgress(cancelable_progress):
    """The activity dock's entry of a run; its cancel button cancels the run at once."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class _ElidedText:
    """One line of text in a QLabel, elided with "..." to the label's width (re-elided when
    it is resized); the full text is the label's tooltip and :attr:`text`."""

    def __init__(self, label):
        self.label, self.text = label, ""
        label.setWordWrap(False)
        label.setMinimumWidth(1)  # its text sets no width: the dock's width sets the text
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self._filter = _OnResize(label, self._show)

    def set(self, text: str) -> None:
        self.text = str(text)
        self.label.setToolTip(self.text)
        self._show()

    def _show(self) -> None:
        width = max(self.label.contentsRect().width(), 1)
        shown = self.label.fontMetrics().elidedText(self.text, Qt.TextElideMode.ElideRight, width)
        if self.label.text() != shown:
            self.label.setText(shown)


class _OnResize(QObject):
    def __init__(self, widget, callback):
        super().__init__(widget)
        self.callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Resize:
            self.callback()
        return False


class RunControls(Container):
    """Run / Cancel buttons, a progress bar (tiles or steps done) and a status line.

    Signals (GUI thread): ``progressed(done, total, message)`` for every progress report;
    ``finished(outcome)`` with ``"ok"``, ``"cancelled"`` or ``"error"``.
    """

    progressed = Signal(int, int, str)
    finished = Signal(str)

    def __init__(self, run_text: str = "Run", **kwargs):
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        # one line, elided to the dock's width (the full text in its tooltip): a wrapped
        # label in a scroll area gets one line's height and its second line is clipped
        self._status_text = _ElidedText(self.status.native)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[buttons, self.progress_bar, self.status], labels=False, **kwargs)
        self.margins = (0, 0, 0, 0)
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.pbar: cancelable_progress | None = None  # the activity dock's entry of the run
        self.last_outcome: str | None = None  # "ok" | "cancelled" | "error"
        self.last_error: BaseException | None = None
        self.cancel_button.changed.connect(self.cancel)
        self._t0 = 0.0

    # -- state
    @property
    def status_text(self) -> str:
        """The whole status line (the label shows it elided to the dock's width)."""
        return self._status_text.text

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        func: Callable[..., Any],
        *,
        on_result: Callable[[Any], None],
        description: str,
        **kwargs,
    ):
        """Start ``func(progress=..., cancel=..., **kwargs)`` in a thread worker."""
        if self.worker is not None:
            show_warning(f"{description}: a run is already in progress; wait for it or Cancel.")
            return None
        cancel = threading.Event()
        box: dict[str, Any] = {}

        def _job():
            # a generator worker: progress reports travel to the GUI thread on ``yielded``
            def _progress(done, total=None, message=""):
                box["worker"].yielded.emit((int(done or 0), int(total or 0), str(message or "")))

            try:
                return "ok", func(progress=_progress, cancel=cancel, **kwargs)
            except Cancelled:
                return "cancelled", None
            except Exception as exc:  # noqa: BLE001 - reported as a notification
                if cancel.is_set():
                    return "cancelled", None
                log.exception("%s failed", description)
                return "error", exc
            yield  # never reached: makes _job a generator, so the worker has ``yielded``

        worker = create_worker(_job, _start_thread=False)
        box["worker"] = worker
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(
            lambda outcome: self._on_returned(outcome, on_result, cancel, description)
        )
        worker.finished.connect(lambda: self._on_finished(worker))
        self.worker = worker
        self.cancel_event = cancel
        self.last_outcome = None
        self.last_error = None
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress_bar.visible = True
        self.progress_bar.max = 0  # busy indicator until the first progress report
        self.progress_bar.value = 0
        self._status_text.set("starting...")
        self.pbar = _RunProgress(total=0, desc=description, cancel_callback=self.cancel)
        self._description = description
        self._t0 = time.monotonic()
        worker.start()
        return worker

    def cancel(self, *_):
        """Ask the running job to stop (it stops after the current tile batch or step)."""
        if self.cancel_event is not None and self.worker is not None:
            self.cancel_event.set()
            self._status_text.set("cancelling (stops after the current tile batch)...")
            self.cancel_button.enabled = False

    # -- slots (GUI thread)
    def _on_progress(self, report):
        done, total, message = report
        if self.worker is None or (self.cancel_event is not None and self.cancel_event.is_set()):
            return
        if total > 0:
            self.progress_bar.max = total
            self.progress_bar.value = min(done, total)
        text = f"{done}/{total}" if total > 0 else ""
        if message:
            text = message if not text or message.endswith(text) else f"{message} ({text})"
        self._status_text.set(text)
        self.progressed.emit(done, total, message)
        # last: napari's activity dock may process events (and so the next report) here
        pbar = self.pbar
        if pbar is not None:
            if total > 0 and pbar.total != total:
                pbar.total = total
            step = min(done, total) - pbar.n if total > 0 else 0
            if step < 0:  # a new stage (model loading, then tiles, ...) counts from 0 again
                pbar.n, step = 0, min(done, total)
            if step > 0:
                pbar.update(step)
            desc = f"{self._description}: {message}" if message else self._description
            if pbar.desc != desc:
                pbar.set_description(desc)

    def _on_returned(self, outcome, on_result, cancel, description):
        kind, value = outcome
        if kind == "ok" and cancel.is_set():
            kind = "cancelled"
        self.last_outcome = kind
        if kind == "cancelled":
            self._status_text.set("cancelled: nothing was added")
            show_info(f"{description} cancelled: nothing was added.")
            return
        if kind == "error":
            self.last_error = value
            self._status_text.set("failed (see the notification)")
            show_error(f"{description} failed: {friendly_error(value)}")
            return
        try:
            on_result(value)
        except Exception as exc:  # noqa: BLE001
            log.exception("adding the results of %s failed", description)
            self.last_outcome = "error"
            self.last_error = exc
            show_error(f"{description}: could not show the results: {friendly_error(exc)}")
            return
        self._status_text.set(f"done in {time.monotonic() - self._t0:.1f} s")

    def _on_finished(self, worker):
        if self.worker is worker:
            self.worker = None
            self.cancel_event = None
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress_bar.visible = False
        self.finished.emit(self.last_outcome or "error")
