"""The results view shared by the Segment, Recognize and Slide widgets.

Shows the last run's per-class object counts (each class in its colour: the legend of the
canvas) and its objects' features table (the instance
Labels layer's ``features``: one row per object). Selecting a row selects that object in the
canvas (the Labels layer's ``selected_label``, the matching shape of the Shapes layer, the
camera centred on it); clicking an object in the canvas selects its row. Two buttons export
the current result (the instance Labels layer) as QuPath GeoJSON and as CSV through the
plugin's writer (:func:`.._writer.write_labels`), into the chosen folder.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Table
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt

from napari_biomedparse.inference.objects import class_color

from .. import _functions as F
from ._common import fit_text_height, wrap_text

#: Rows shown in the table (all objects are exported; a slide can have millions).
MAX_ROWS = 5000
#: Columns shown (when present), in this order.
COLUMNS = ("index", "class", "score", "p_value", "area", "centroid_y", "centroid_x")


def _swatch(name: str) -> str:
    """A square in the colour of class ``name`` (rich text)."""
    r, g, b = class_color(name)
    return f'<span style="color:#{r:02x}{g:02x}{b:02x}">&#9632;</span>'


class ResultsView(Container):
    """Per-class counts, the objects table (linked to the canvas) and export buttons."""

    def __init__(self, viewer, default_folder: str = ""):
        self.viewer = viewer
        self.counts = Label(value="objects: no results yet")
        wrap_text(self.counts)  # the whole text, on several lines
        self.counts.native.setTextFormat(Qt.TextFormat.RichText)
        self.table = Table(value={"index": [], "class": []})
        self.table.read_only = True
        self.table.native.setMinimumHeight(140)
        self.table.native.setMaximumHeight(260)
        self.table.native.verticalHeader().setVisible(False)  # "index" is the object's label
        self.which = ComboBox(choices=[""], label="table of", visible=False)
        self.folder = FileEdit(mode="d", value=default_folder, label="export to")
        self.folder.choose_btn.text = "..."  # narrow: the dock must leave room for the canvas
        self.export_geojson = PushButton(text="GeoJSON (QuPath)")
        self.export_geojson.tooltip = "Export the objects as QuPath GeoJSON into 'export to'."
        self.export_csv = PushButton(text="CSV")
        self.export_csv.tooltip = "Export the objects table as CSV into 'export to'."
        buttons = Container(
            widgets=[self.export_geojson, self.export_csv], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.folder.tooltip = "Export to this folder."
        self.which.tooltip = "Which instance layer the table shows (one per prompt)."
        # no label column of its own: nested in a labelled form it would widen the dock
        super().__init__(
            widgets=[self.counts, self.which, self.table, self.folder, buttons], labels=False
        )
        self.margins = (0, 0, 0, 0)
        self.labels_layer: Labels | None = None
        self._instances: list[Labels] = []
        self.shapes_layer: Shapes | None = None
        self._rows: np.ndarray = np.zeros(0, dtype=np.int64)  # label of each table row
        self._syncing = False
        self._set_enabled(False)
        self.table.native.itemSelectionChanged.connect(self._row_selected)
        self.export_geojson.changed.connect(lambda *_: self.export(".geojson"))
        self.export_csv.changed.connect(lambda *_: self.export(".csv"))
        self.which.changed.connect(self._show_layer)

    def _set_enabled(self, on: bool) -> None:
        self.export_geojson.enabled = on
        self.export_csv.enabled = on

    # -- showing a result
    def show(self, layers) -> None:
        """Show the result among ``layers`` (the layers a run added): its instance Labels
        layers (features with ``class``; Segment makes one per prompt: the counts cover all,
        the table shows the one chosen in **table of**) and its Shapes layer."""
        self._instances = [
            lay
            for lay in layers
            if isinstance(lay, Labels)
            and lay.metadata.get("biomedparse", {}).get("kind") == "instances"
        ]
        self.shapes_layer = next((lay for lay in layers if isinstance(lay, Shapes)), None)
        names = [lay.name for lay in self._instances]
        self.which.choices = names or [""]
        self.which.visible = len(names) > 1
        if not self._instances:
            self.labels_layer = None
            self.counts.value = "objects: none in this result (probabilities or masks only)"
            self.table.value = {"index": [], "class": []}
            self._rows = np.zeros(0, dtype=np.int64)
            self._set_enabled(False)
            return
        counts = self.counts_by_class
        total = sum(counts.values())
        # a legend: each class in its colour (the one colour table, as drawn in the canvas)
        rows = "".join(
            f"<tr><td>{_swatch(name)}</td><td>{escape(name)} {n}</td></tr>"
            for name, n in counts.items()
        )
        self.counts.value = f"{total} objects" + (
            f":<table cellspacing=0 cellpadding=1>{rows}</table>" if total else ""
        )
        fit_text_height(self.counts)
        for lay in self._instances:
            lay.mouse_drag_callbacks.append(self._canvas_clicked)
            lay.events.selected_label.connect(self._label_selected)
        self.which.value = names[0]
        self._show_layer()
        if self.viewer is not None and self.labels_layer in self.viewer.layers:
            # its controls (outline thickness, opacity) are the ones shown, not those of
            # the last layer added (often the hidden Shapes)
            self.viewer.layers.selection.active = self.labels_layer

    def _show_layer(self, *_) -> None:
        """Fill the table with the objects of the instance layer chosen in **table of**."""
        lab = next((lay for lay in self._instances if lay.name == self.which.value), None)
        self.labels_layer = lab
        if lab is None:
            return
        feats = lab.features
        shown = feats[[c for c in COLUMNS if c in feats.columns]].head(MAX_ROWS)
        self.table.tooltip = (
            f"the first {MAX_ROWS} of {len(feats)} objects (exports have all)"
            if len(feats) > MAX_ROWS
            else ""
        )
        self._rows = shown["index"].to_numpy().astype(np.int64) if len(shown) else self._rows[:0]
        shown = shown.copy()
        for c in shown.columns:
            if shown[c].dtype.kind == "f":
                shown[c] = shown[c].round(3)
        self.table.value = shown.astype({"class": str}) if len(shown) else shown
        self.table.native.resizeColumnsToContents()
        self._set_enabled(True)

    @property
    def counts_by_class(self) -> dict[str, int]:
        """{class: number of objects} of the result shown (all its instance layers)."""
        out: dict[str, int] = {}
        for lay in getattr(self, "_instances", []):
            if len(lay.features):
                for name, n in lay.features["class"].astype(str).value_counts().items():
                    out[name] = out.get(name, 0) + int(n)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # -- table -> canvas
    @property
    def selected_row(self) -> int | None:
        rows = sorted({i.row() for i in self.table.native.selectedIndexes()})
        return rows[0] if rows else None

    def select_row(self, row: int) -> None:
        self.table.native.selectRow(int(row))

    def _row_selected(self) -> None:
        row = self.selected_row
        if self._syncing or row is None or row >= len(self._rows):
            return
        self.select_object(int(self._rows[row]), from_table=True)

    def select_object(self, label: int, *, from_table: bool = False) -> None:
        """Highlight object ``label``: the Labels layer's selected label (shown alone while
        selected from the table), its shape selected, the camera centred on it, its row
        selected in the table."""
        lab = self.labels_layer
        if lab is None:
            return
        self._syncing = True
        try:
            lab.selected_label = int(label)
            lab.show_selected_label = from_table
            feats = lab.features
            hit = np.flatnonzero(feats["index"].to_numpy() == label)
            if len(hit) and {"centroid_y", "centroid_x"} <= set(feats.columns):
                yx = feats.iloc[hit[0]][["centroid_y", "centroid_x"]].to_numpy(float)
                world = lab.data_to_world(yx)
                if from_table and np.all(np.isfinite(world)):
                    scene = getattr(self.viewer, "scene", None)  # napari >= 0.9
                    camera = scene.camera if scene is not None else self.viewer.camera
                    camera.center = tuple(world[-2:])
            shp = self.shapes_layer
            if shp is not None and "index" in shp.features.columns:
                hit_shape = shp.features["index"].to_numpy() == label
                cls = feats["class"].astype(str).to_numpy()[hit] if len(hit) else []
                if len(cls) and "class" in shp.features.columns:  # Segment: labels per prompt
                    hit_shape &= shp.features["class"].astype(str).to_numpy() == cls[0]
                idx = np.flatnonzero(hit_shape)
                shp.selected_data = set(int(i) for i in idx)
                shp.refresh()
            if not from_table:
                rows = np.flatnonzero(self._rows == label)
                if len(rows):
                    self.select_row(int(rows[0]))
        finally:
            self._syncing = False

    # -- canvas -> table
    def _canvas_clicked(self, layer, event):
        value = layer.get_value(
            event.position,
            view_direction=event.view_direction,
            dims_displayed=event.dims_displayed,
            world=True,
        )
        if isinstance(value, tuple):  # multiscale: (level, value)
            value = value[-1]
        if value is not None and int(value) > 0:
            if layer is not self.labels_layer and layer.name in self.which.choices:
                self.which.value = layer.name
            self.select_object(int(value))

    def _label_selected(self, event=None) -> None:
        if not self._syncing and self.labels_layer is not None:
            label = int(self.labels_layer.selected_label)
            if label > 0 and label in set(self._rows.tolist()):
                self.select_object(label)

    # -- export
    def export(self, ext: str) -> list[str]:
        """Write the current result as ``<folder>/<layer name>.geojson`` / ``.csv``."""
        lab = self.labels_layer
        if lab is None:
            show_error("Export: run the widget first; there is no result to export.")
            return []
        folder = Path(str(self.folder.value or ".")).expanduser()
        path = folder / f"{lab.name}{ext}"
        from .._writer import write_labels

        try:
            folder.mkdir(parents=True, exist_ok=True)
            _data, attributes, _kind = lab.as_layer_data_tuple()
            written = write_labels(str(path), lab.data, attributes)
        except Exception as exc:  # noqa: BLE001 - shown as a notification
            show_error(f"Export to {path} failed: {F.friendly_error(exc)}")
            return []
        show_info(f"Exported {', '.join(str(w) for w in written)}")
        return list(written)
