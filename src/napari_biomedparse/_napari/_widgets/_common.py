"""Pieces shared by the widgets: image-layer choice, modality / site / vocabulary,
adding result layers (replace or add, never silently).

The dock layout (scrollable forms, dock width, wrapped labels) is in :mod:`._dock`; its names
that the widgets and tests import from here are re-exported.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import create_widget
from napari.layers import Image, Layer
from napari.utils.notifications import show_info, show_warning
from superqt.utils import ensure_main_thread

from .. import _functions as F
from .. import _layers
from .._settings import restore
from ._dock import (  # noqa: F401  (re-exported: the widgets and tests import them from here)
    DOCK_MIN_WIDTH,
    SPIN_BUTTONS_MIN_DOCK,
    ScrollableForm,
    dock_width_limit,
    fit_text_height,
    wrap_text,
)

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
