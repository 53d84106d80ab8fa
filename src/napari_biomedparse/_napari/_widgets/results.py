"""The results view shared by the Segment, Recognize and Slide widgets.

Shows the last run's per-class object counts and its objects' features table (the instance
Labels layer's ``features``: one row per object). Selecting a row selects that object in the
canvas (the Labels layer's ``selected_label``, the matching shape of the Shapes layer, the
camera centred on it); clicking an object in the canvas selects its row. Two buttons export
the current result (the instance Labels layer) as QuPath GeoJSON and as CSV through the
plugin's writer (:func:`.._writer.write_labels`), into the chosen folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton, Table
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error, show_info

from .. import _functions as F

#: Rows shown in the table (all objects are exported; a slide can have millions).
MAX_ROWS = 5000
#: Columns shown (when present), in this order.
COLUMNS = ("index", "class", "score", "p_value", "area", "centroid_y", "centroid_x")


class ResultsView(Container):
    """Per-class counts, the objects table (linked to the canvas) and export buttons."""

    def __init__(self, viewer, default_folder: str = ""):
        self.viewer = viewer
        self.counts = Label(value="no results yet", label="objects")
        self.counts.native.setWordWrap(True)
        self.table = Table(value={"index": [], "class": []})
        self.table.read_only = True
        self.table.native.setMinimumHeight(140)
        self.table.native.setMaximumHeight(260)
        self.table.native.verticalHeader().setVisible(False)  # "index" is the object's label
        self.folder = FileEdit(mode="d", value=default_folder, label="export to")
        self.export_geojson = PushButton(text="Export GeoJSON (QuPath)")
        self.export_csv = PushButton(text="Export CSV")
        buttons = Container(
            widgets=[self.export_geojson, self.export_csv], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self.counts, self.table, self.folder, buttons])
        self.margins = (0, 0, 0, 0)
        self.labels_layer: Labels | None = None
        self.shapes_layer: Shapes | None = None
        self._rows: np.ndarray = np.zeros(0, dtype=np.int64)  # label of each table row
        self._syncing = False
        self._set_enabled(False)
        self.table.native.itemSelectionChanged.connect(self._row_selected)
        self.export_geojson.changed.connect(lambda *_: self.export(".geojson"))
        self.export_csv.changed.connect(lambda *_: self.export(".csv"))

    def _set_enabled(self, on: bool) -> None:
        self.export_geojson.enabled = on
        self.export_csv.enabled = on

    # -- showing a result
    def show(self, layers) -> None:
        """Show the result among ``layers`` (the layers a run added): its instance Labels
        layer (features with ``class``) and Shapes layer."""
        self.labels_layer = next(
            (
                lay
                for lay in layers
                if isinstance(lay, Labels)
                and lay.metadata.get("biomedparse", {}).get("kind") == "instances"
            ),
            None,
        )
        self.shapes_layer = next((lay for lay in layers if isinstance(lay, Shapes)), None)
        lab = self.labels_layer
        if lab is None:
            self.counts.value = "no objects in this result (probabilities or masks only)"
            self.table.value = {"index": [], "class": []}
            self._rows = np.zeros(0, dtype=np.int64)
            self._set_enabled(False)
            return
        feats = lab.features
        if len(feats) == 0:
            self.counts.value = "0 objects"
        else:
            counts = feats["class"].astype(str).value_counts()
            self.counts.value = f"{len(feats)} objects: " + ", ".join(
                f"{name} {n}" for name, n in counts.items()
            )
        shown = feats[[c for c in COLUMNS if c in feats.columns]].head(MAX_ROWS)
        if len(feats) > MAX_ROWS:
            self.counts.value += f" (table shows the first {MAX_ROWS}; exports have all)"
        self._rows = shown["index"].to_numpy().astype(np.int64) if len(shown) else self._rows[:0]
        shown = shown.copy()
        for c in shown.columns:
            if shown[c].dtype.kind == "f":
                shown[c] = shown[c].round(3)
        self.table.value = shown.astype({"class": str}) if len(shown) else shown
        self.table.native.resizeColumnsToContents()
        self._set_enabled(True)
        lab.mouse_drag_callbacks.append(self._canvas_clicked)
        lab.events.selected_label.connect(self._label_selected)

    @property
    def counts_by_class(self) -> dict[str, int]:
        """{class: number of objects} of the result shown."""
        if self.labels_layer is None or len(self.labels_layer.features) == 0:
            return {}
        return self.labels_layer.features["class"].astype(str).value_counts().to_dict()

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
                idx = np.flatnonzero(shp.features["index"].to_numpy() == label)
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
