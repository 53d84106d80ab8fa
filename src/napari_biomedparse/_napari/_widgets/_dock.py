"""Dock layout of the plugin's widgets: scrollable forms whose dock stays narrow.

:class:`ScrollableForm` (the mixin of every docked widget) docks the scroll area itself,
keeps the dock within :func:`dock_width_limit` of the main window (:class:`_DockFitter`, a Qt
event filter), hides spin-box buttons in narrow docks and tabifies the plugin's docks together;
:func:`wrap_text` / :func:`fit_text_height` let labels wrap to the dock's width. Widths are in
screen pixels. Moved out of :mod:`._common`, which re-exports these names.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDockWidget,
    QMainWindow,
    QSizePolicy,
    QWidget,
)

#: The plugin's docks are at most this wide (px) ...
DOCK_MAX_WIDTH = 300
#: ... and at least this wide; narrower than the form, they scroll sideways.
DOCK_MIN_WIDTH = 200
#: Fraction of the main window's width a plugin dock may take (so that an 853 px window keeps
#: most of its width for napari's own docks and the canvas).
DOCK_WINDOW_FRACTION = 0.22
#: Narrowest a choice box or a wrapped text may get (px) in a narrow dock.
COMPACT_FIELD_WIDTH = 60
#: Room (px) for a spin box's number ("0.05", "1024") beside its buttons.
SPIN_TEXT_WIDTH = 45
#: Docks narrower than this (px) show spin boxes without their +/- buttons.
SPIN_BUTTONS_MIN_DOCK = 250


def wrap_text(label):
    """Let a magicgui Label wrap its text over several lines, its length setting no width (at
    least :data:`COMPACT_FIELD_WIDTH`) and its height always that of all its lines (a scroll
    area's form would give it one line's height and clip the rest); returns the label. Call
    :func:`fit_text_height` after changing its text."""
    label.native.setWordWrap(True)
    label.native.setMinimumWidth(COMPACT_FIELD_WIDTH)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    label.native._biomedparse_fit = _FitHeight(label.native)
    return label


def fit_text_height(label) -> None:
    """Make a :func:`wrap_text` label as tall as its wrapped text at its current width."""
    native = label.native
    native.setMinimumHeight(max(native.heightForWidth(max(native.width(), 1)), 0))


class _FitHeight(QObject):
    def __init__(self, label):
        super().__init__(label)
        self.label = label
        label.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Resize:
            height = obj.heightForWidth(obj.width())
            if height > 0 and obj.minimumHeight() != height:
                obj.setMinimumHeight(height)
        return False


def dock_width_limit(window_width: int, max_width: int = DOCK_MAX_WIDTH) -> int:
    """Widest a plugin dock may be (px) in a main window ``window_width`` px wide:
    ``DOCK_WINDOW_FRACTION`` of it, between ``DOCK_MIN_WIDTH`` and ``max_width``."""
    return int(min(max_width, max(DOCK_MIN_WIDTH, DOCK_WINDOW_FRACTION * window_width)))


class ScrollableForm:
    """Mixin of the docked widgets (magicgui Containers built with ``scrollable=True``):
    napari docks a widget's ``native``, which for a scrollable Container is the inner form, so
    the scroll area would be left out; here ``native`` is the scroll area itself, and a form
    taller or wider than the dock scrolls instead of squeezing the canvas."""

    @property
    def native(self):
        return self.root_native_widget

    def _fit_dock(self, width: int = DOCK_MAX_WIDTH) -> None:
        """Call at the end of ``__init__``. The dock is at most ``width`` px and at most
        :data:`DOCK_WINDOW_FRACTION` of the main window wide (followed as the window is
        resized), at least :data:`DOCK_MIN_WIDTH` px; choice boxes shrink to the dock (their
        full text is in the list) so the form is no wider than the dock; the rows sit at the
        top instead of spreading over the height; docked beside another of the plugin's
        docks, it becomes a tab of that dock instead of halving its height."""
        area = self.root_native_widget
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        area.setMinimumWidth(DOCK_MIN_WIDTH)
        area.setMaximumWidth(max(width, DOCK_MIN_WIDTH))
        area.setProperty("napari_biomedparse_dock", True)
        for box in area.findChildren(QComboBox):  # the list shows the full text
            box.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            box.setMinimumContentsLength(6)
            box.setMinimumWidth(COMPACT_FIELD_WIDTH)
        for box in area.findChildren(QAbstractSpinBox):  # napari's style: min-width 70px
            box.setStyleSheet(f"min-width: {SPIN_TEXT_WIDTH}px;")
        for w in self:  # rows without a label (buttons, check boxes, results): full width
            row = w._labeled_widget() if getattr(w, "_labeled_widget", None) else None
            if row is not None and not row._label_widget.value:
                row._label_widget.visible = False
        self._widget._layout.addStretch(1)  # rows at the top
        self.margins = (2, 4, 2, 4)  # narrow docks: the width is for the fields
        self._dock_fitter = _DockFitter(area, max(width, DOCK_MIN_WIDTH))


class _DockFitter(QObject):
    """Keeps a plugin dock's width within :func:`dock_width_limit` of its main window and
    tabifies it with the plugin's other docks in the same dock area (a Qt event filter on
    the scroll area and on the main window; the window is held weakly)."""

    def __init__(self, area, max_width: int):
        super().__init__(area)
        self.area, self.max_width = area, max_width
        self._window = lambda: None
        self.tabified = False
        self._symbols: dict[int, object] = {}  # each spin box's own +/- buttons
        area.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        kind = event.type()
        if obj is self.area and kind in (QEvent.Type.Show, QEvent.Type.ParentChange):
            QTimer.singleShot(0, self.attach)
        elif obj is self.area and kind == QEvent.Type.Resize:
            self.fit_spin_boxes(obj.width())
        elif kind == QEvent.Type.Resize and obj is self._window():
            self.fit(obj)
        return False

    def attach(self):
        try:
            win = self.area.window()
        except RuntimeError:  # deleted
            return
        if not isinstance(win, QMainWindow):
            return
        old = self._window()
        if win is not old:
            if old is not None:
                old.removeEventFilter(self)
            self._window = weakref.ref(win)
            win.installEventFilter(self)
        self.fit(win)
        if not self.tabified:
            self.tabify(win)

    def fit(self, win):
        limit = dock_width_limit(win.width(), self.max_width)
        if self.area.maximumWidth() != limit:
            self.area.setMaximumWidth(limit)

    def fit_spin_boxes(self, width: int) -> None:
        """A dock narrower than :data:`SPIN_BUTTONS_MIN_DOCK` leaves a spin box's number no
        room beside its +/- buttons: the buttons go (arrow keys and the mouse wheel still
        step the value), and come back when the dock is wider."""
        narrow = width < SPIN_BUTTONS_MIN_DOCK
        for box in self.area.findChildren(QAbstractSpinBox):
            own = self._symbols.setdefault(id(box), box.buttonSymbols())  # as it was made
            symbols = QAbstractSpinBox.ButtonSymbols.NoButtons if narrow else own
            if box.buttonSymbols() != symbols:
                box.setButtonSymbols(symbols)

    def _dock(self, widget):
        while widget is not None and not isinstance(widget, QDockWidget):
            widget = widget.parentWidget()
        return widget

    def tabify(self, win):
        mine = self._dock(self.area)
        if mine is None or mine.isFloating():
            return
        self.tabified = True
        area = win.dockWidgetArea(mine)
        for other in win.findChildren(QDockWidget):
            if (
                other is mine
                or other.isFloating()
                or not other.isVisible()
                or win.dockWidgetArea(other) != area
                or not any(w.property("napari_biomedparse_dock") for w in _descendants(other))
            ):
                continue
            if mine not in win.tabifiedDockWidgets(other):
                win.tabifyDockWidget(other, mine)
                QTimer.singleShot(0, mine.raise_)
            break


def _descendants(widget):
    return [widget, *widget.findChildren(QWidget)]
