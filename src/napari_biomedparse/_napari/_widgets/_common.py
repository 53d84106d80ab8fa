"""Pieces shared by the widgets: image-layer choice, modality / site / vocabulary,
adding result layers (replace or add, never silently)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Layer
from napari.utils.notifications import show_info, show_warning

from .. import _functions as F
from .._settings import restore

REPLACE = "replace existing"
ADD = "add new"
CURRENT_VIEW = "current view"
WHOLE_IMAGE = "whole image"


def image_layers(viewer) -> list[str]:
    if viewer is None:
        return []
    return [lay.name for lay in viewer.layers if isinstance(lay, Image)]


class ImageLayerChoice(ComboBox):
    """A ComboBox of the viewer's Image layers (by name), kept up to date."""

    def __init__(self, viewer, **kwargs):
        self._viewer = viewer
        super().__init__(choices=self._names, **kwargs)
        if viewer is not None:
            for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
                ev.connect(self._refresh)
            viewer.layers.events.inserted.connect(self._watch_name)
            for lay in viewer.layers:
                lay.events.name.connect(self._refresh)

    def _names(self, *_):
        return image_layers(self._viewer)

    def _watch_name(self, event=None):
        if event is not None and hasattr(event, "value"):
            event.value.events.name.connect(self._refresh)

    def _refresh(self, *_):
        try:
            self.reset_choices()
        except RuntimeError:  # widget already deleted
            pass

    @property
    def layer(self) -> Image | None:
        name = self.value
        if self._viewer is None or name is None or name not in self._viewer.layers:
            return None
        lay = self._viewer.layers[name]
        return lay if isinstance(lay, Image) else None


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
        layer = Layer.create(data, dict(kwargs), kind)
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
    from napari_biomedparse.inference.modalities import targets_for

    from .._model_state import MODEL

    model = None
    pred = getattr(MODEL, "_predictor", None)
    if pred is not None:
        model = getattr(pred, "model", None)
    try:
        return list(targets_for(modality, site or None, model=model))
    except ValueError:
        return []


def sites(modality: str) -> list[str]:
    from napari_biomedparse.inference.modalities import SITES

    return list(SITES.get(modality, ()))


class ModalitySiteForm:
    """Mixin of the Segment and Recognize widgets (attributes ``viewer``, ``settings_key`` and
    the fields ``image``, ``modality``, ``site``, ``scope``, ``on_rerun``, ``run``): the site
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
        add_result_layers(self.viewer, layer_data, policy)
        self._site_changed()  # the model is loaded now: offer its vocabulary

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
