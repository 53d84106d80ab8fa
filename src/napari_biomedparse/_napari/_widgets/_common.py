"""Pieces shared by the widgets: image-layer choice, modality / site / vocabulary,
adding result layers (replace or add, never silently)."""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import create_widget
from napari.layers import Image, Layer
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDockWidget,
    QMainWindow,
    QSizePolicy,
    QWidget,
)
from superqt.utils import ensure_main_thread

from .. import _functions as F
from .. import _layers
from .._settings import restore

REPLACE = "replace existing"
ADD = "add new"
CURRENT_VIEW = "current view"
WHOLE_IMAGE = "whole image"


def layer_choice(viewer, kind=Image, *, label: str = "image"):
    """magicgui's napari-aware layer ComboBox (``annotation=kind``; its value is the layer).

    Its choices are the viewer's layers of that type; they follow the viewer (layers added,
    removed, moved or renamed) whether or not the widget is docked yet.
    """
    widget = create_widget(annotation=kind, label=label)
    if viewer is not None:

        def _refresh(*_):
            try:
                widget.reset_choices()
            except RuntimeError:  # the Qt widget was deleted
                pass

        def _watch(event=None):
            lay = getattr(event, "value", None)
            if lay is not None:
                lay.events.name.connect(_refresh)
            _refresh()

        viewer.layers.events.inserted.connect(_watch)
        viewer.layers.events.removed.connect(_refresh)
        viewer.layers.events.moved.connect(_refresh)
        for lay in viewer.layers:
            lay.events.name.connect(_refresh)
        widget._biomedparse_refresh = _refresh  # keep the callbacks alive with the widget
        widget._biomedparse_watch = _watch
        _refresh()
    return widget


def on_main_thread(func):
    """``func`` called in the GUI thread whatever thread emits (for :data:`MODEL.changed`);
    a callback whose Qt widget is gone is ignored."""

    @ensure_main_thread
    def _call(*args):
        try:
            func(*args)
        except RuntimeError:  # the widget was deleted
            pass

    return _call


def is_large(layer) -> bool:
    if layer is None:
        return False
    if layer.multiscale:
        return True
    shape = layer.data.shape[:2] if layer.rgb else layer.data.shape[-2:]
    return max(shape) > F.LARGE_SIDE


def current_view_region(layer):
    """(pixels, scale, translate) of the part of ``layer`` on screen, at the level drawn."""
    inp = F.as_image_input(layer)
    level = int(layer.data_level) if layer.multiscale else 0
    corners = getattr(layer, "corner_pixels", None)
    corner = size = None
    if corners is not None:
        c = np.asarray(corners)[:, -2:].astype(int)  # (2, ndim); RGB is not an axis
        if (c[1] - c[0]).min() > 1:
            corner = (int(c[0, 0]), int(c[0, 1]))
            size = (int(c[1, 0] - c[0, 0] + 1), int(c[1, 1] - c[0, 1] + 1))
    return F.view_region(inp, level, corner, size)


def add_result_layers(viewer, layer_data, policy: str = REPLACE) -> list[Layer]:
    """Add result layers; an existing layer of the same name is replaced (policy REPLACE) or
    kept with the new one added beside it (ADD). Either way the user is told."""
    added, replaced, kept = [], [], []
    for data, kwargs, kind in layer_data:
        name = kwargs.get("name")
        if name and name in viewer.layers:
            if policy == REPLACE:
                viewer.layers.remove(name)
                replaced.append(name)
            else:
                kept.append(name)
        layer = _layers.apply_display(Layer.create(data, dict(kwargs), kind))
        added.append(viewer.add_layer(layer))
    if replaced:
        show_info(f"Replaced {len(replaced)} earlier result layer(s): {', '.join(replaced)}.")
    if kept:
        show_info(f"Kept earlier result layer(s) {', '.join(kept)}; the new ones were added.")
    for lay in added:
        note = lay.metadata.get("biomedparse", {}).get("note")
        if note:
            show_info(f"{lay.name}: {note}")
    return added


def default_output_folder() -> str:
    from .._settings import load_settings

    folder = load_settings("slide").get("output_folder")
    if folder:
        return folder
    return str(Path(tempfile.gettempdir()) / "napari-biomedparse")


def vocabulary(modality: str, site: str | None) -> list[str]:
    """The current model's prompts for the modality (its ``vocabulary`` metadata, read from the
    checkpoint before it is loaded), else the official BiomedParse list; [] when none is
    known (e.g. a site is needed)."""
    from napari_biomedparse.inference.modalities import targets_for

    from .._model_state import MODEL

    meta = MODEL.metadata()
    model = SimpleNamespace(metadata=meta) if meta else None
    try:
        return list(targets_for(modality, site or None, model=model))
    except ValueError:
        return []


def slide_defaults(modality: str) -> dict:
    """What the slide engine uses when nothing is given, for the current model and
    ``modality``: ``{"mpp": float | None (None = the image's own resolution), "tile_size",
    "overlap"}`` (pixels at that resolution), from the one resolver of application defaults
    (:func:`napari_biomedparse.inference.application.application_defaults`: the model's
    ``metadata["inference"]`` first, the modality's defaults second)."""
    from napari_biomedparse.inference.application import application_defaults

    from .._model_state import MODEL

    meta = dict(MODEL.metadata())
    cfg = meta.pop("config", None)
    if cfg is not None and getattr(cfg, "input_size", None):
        meta["input_size"] = int(cfg.input_size)
    elif MODEL.model is not None:
        meta["input_size"] = int(MODEL.model.config.input_size)
    try:
        spec = application_defaults(meta, modality)
    except ValueError:  # a checkpoint with malformed metadata: the modality's defaults
        spec = application_defaults({}, modality)
    return {"mpp": spec.mpp, "tile_size": int(spec.tile_size), "overlap": int(spec.overlap)}


def sites(modality: str) -> list[str]:
    from napari_biomedparse.inference.modalities import SITES

    return list(SITES.get(modality, ()))


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


class ModalitySiteForm(ScrollableForm):
    """Mixin of the Segment and Recognize widgets (attributes ``viewer``, ``settings_key`` and
    the fields ``image``, ``modality``, ``site``, ``scope``, ``on_rerun``, ``run``,
    ``results``): the site
    choices follow the modality (hidden when it has none), the remembered site is restored,
    then the subclass's ``_site_changed`` updates what depends on the site; :meth:`_launch`
    runs the work on the right part of the image."""

    def _site_choices(self, *_):
        return sites(self.modality.value) or [""]

    def _modality_changed(self, *_):
        self.site.reset_choices()
        self.site.visible = bool(sites(self.modality.value))
        restore({"site": self.site}, self.settings_key)
        self._site_changed()

    def _show(self, layer_data, policy):
        added = add_result_layers(self.viewer, layer_data, policy)
        self.results.show(added)
        self._site_changed()  # the model is loaded now: offer its vocabulary
        return added

    def _watch_model(self):
        """Follow the shared model (its vocabulary) without polling."""
        from .._model_state import MODEL

        self._on_model_changed = on_main_thread(lambda *_: self._site_changed())
        MODEL.changed.connect(self._on_model_changed)
        self.native.destroyed.connect(lambda *_: MODEL.changed.disconnect(self._on_model_changed))

    def _launch(self, title: str, layer, layer_fn, slide_kwargs: dict, **layer_kwargs):
        """Start the work in the run controls' thread worker.

        A small image, or the current view of a large one (at the level drawn):
        ``layer_fn(image=..., modality=..., site=..., region=..., **layer_kwargs)``. A large
        image with "whole image" chosen: the slide engine (``F.slide_layers`` with
        ``slide_kwargs``) into ``<layer>.<settings_key>.biomedparse.zarr`` in the output folder.
        """
        policy = self.on_rerun.value

        def on_result(layer_data):
            self._show(layer_data, policy)

        image = F.as_image_input(layer)
        if is_large(layer) and self.scope.value == WHOLE_IMAGE:
            out = (
                Path(default_output_folder()) / f"{layer.name}.{self.settings_key}.biomedparse.zarr"
            )
            return self.run.start(
                F.slide_layers,
                on_result=on_result,
                description=f"{title} (whole image)",
                image=image,
                out=str(out),
                modality=self.modality.value,
                overwrite=True,
                resume=False,
                **slide_kwargs,
            )
        region = None
        if is_large(layer):
            try:
                region = current_view_region(layer)
            except ValueError as exc:
                show_warning(f"{title}: {exc}")
                return None
        return self.run.start(
            layer_fn,
            on_result=on_result,
            description=title,
            image=image,
            modality=self.modality.value,
            site=self.site.value or None,
            region=region,
            **layer_kwargs,
        )
