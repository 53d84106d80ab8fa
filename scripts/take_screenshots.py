"""Take the user guide's screenshots from a real napari window.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/take_screenshots.py

Writes ``docs/images/*.png`` (palette PNGs, a few hundred KB at most). Uses the bundled
default model; when the package has no bundled weights yet it says so and uses the tiny
random-weight test fixture (the pictures then show the plumbing, not meaningful results).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images"


def _predictor(name: str):
    from napari_biomedparse import hub
    from napari_biomedparse.inference.predictor import Predictor

    if name == "default" and not hub.DEFAULT_WEIGHTS.is_file():
        print("WARNING: no bundled default weights; using the tiny test fixture", file=sys.stderr)
        from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

        tiny = ROOT / "tests" / "data" / "v1_tiny"
        cfg = BiomedParseConfig.from_reference_json(tiny / "config.json")
        model = build_model(dataclasses.replace(cfg, input_size=256))
        load_checkpoint(model, tiny / "state_dict.pt")
        return Predictor(model, device="cpu"), "tiny test fixture"
    return Predictor(hub.load_model(name), device="cpu"), name


def _wait(app, widget, timeout=900):
    t0 = time.monotonic()
    while widget.run.running:
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the run did not finish")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    if widget.run.last_outcome != "ok":
        raise RuntimeError(f"run failed: {widget.run.last_error}")


def _scroll(widget, top: bool) -> None:
    """Scroll a docked (scrollable) widget to its top or bottom."""
    from qtpy.QtWidgets import QScrollArea

    area = widget.native
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parent()  # magicgui puts the scrollable container inside a QScrollArea
    bar = area.verticalScrollBar()
    bar.setValue(bar.minimum() if top else bar.maximum())


def _settle(app, n=10):
    for _ in range(n):
        app.processEvents()
        time.sleep(0.05)


def _screen(app, window):
    """The window as the screen shows it, floating dialogs (the activity dock) included."""
    import numpy as np

    geo = window.frameGeometry()
    pix = app.primaryScreen().grabWindow(0, geo.x(), geo.y(), geo.width(), geo.height())
    img = pix.toImage().convertToFormat(pix.toImage().Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())
    return arr[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def _class_colors(viewer) -> list:
    """RGB colours of every class in the viewer's layers (and the common ones)."""
    from napari_biomedparse.inference.objects import CLASS_COLORS, class_color

    names = set()
    for lay in viewer.layers:
        feats = getattr(lay, "features", None)
        if feats is not None and "class" in feats.columns:
            names |= set(feats["class"].astype(str))
    return list(dict.fromkeys([*(class_color(n) for n in sorted(names)), *CLASS_COLORS.values()]))


def _quantize(img, colors: int, fixed: list):
    """A palette image of ``colors`` colours in which the ``fixed`` colours are exact: small
    areas (the outlines, the legend's squares) would otherwise take the nearest colour of a
    palette made for the tissue."""
    from PIL import Image

    fixed = fixed[: colors // 2]
    base = img.quantize(colors=colors - len(fixed), dither=Image.Dither.NONE)
    palette = base.getpalette()[: 3 * (colors - len(fixed))]
    palette += [c for rgb in fixed for c in rgb]
    pal = Image.new("P", (1, 1))
    pal.putpalette(palette + [0] * (768 - len(palette)))
    return img.quantize(palette=pal, dither=Image.Dither.NONE)


def _central_row(results) -> int:
    """The results table's row of the object nearest the middle of its layer."""
    import numpy as np

    feats = results.labels_layer.features
    shape = np.asarray(results.labels_layer.data.shape[-2:], dtype=float)
    yx = feats[["centroid_y", "centroid_x"]].to_numpy(float)
    label = int(feats["index"].iloc[int(np.argmin(((yx - shape / 2) ** 2).sum(1)))])
    return int(np.flatnonzero(results._rows == label)[0])


def _save(viewer, app, name: str, colors: int = 128, screen: bool = False):
    from PIL import Image

    _settle(app)
    if screen:
        arr = _screen(app, viewer.window._qt_window)
    else:
        arr = viewer.screenshot(canvas_only=False, flash=False)
    img = _quantize(Image.fromarray(arr[..., :3]), colors, _class_colors(viewer))
    path = OUT / f"{name}.png"
    img.save(path, optimize=True)
    print(
        f"{path.relative_to(ROOT)}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    args = ap.parse_args(argv)

    import os

    tmp = tempfile.mkdtemp()
    os.environ.setdefault("NAPARI_BIOMEDPARSE_CONFIG_DIR", tmp)  # fresh widget settings
    os.environ.setdefault("NAPARI_CONFIG", str(Path(tmp) / "napari.yaml"))  # leave yours alone
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_biomedparse._napari import MODEL

    OUT.mkdir(parents=True, exist_ok=True)
    pred, label = _predictor(args.model)
    MODEL.use(pred, name=label)
    # information toasts ("replaced 3 layers") would hide the layers; warnings still show
    get_settings().application.gui_notification_level = "warning"
    viewer = napari.Viewer(show=True, title="napari-biomedparse")
    viewer.window._qt_window.resize(args.width, args.height)
    app = QApplication.instance()
    name = "napari-biomedparse"

    # 1. Segment: text prompts on the H&E field, instances with outlines
    viewer.open_sample(name, "hgsc_nest")
    he = viewer.layers["hgsc_nest"]
    he.data = he.data[300:1100, 300:1100]
    dock, seg = viewer.window.add_plugin_dock_widget(name, "Segment")
    seg.prompts.value = "neoplastic cells, inflammatory cells"
    seg.output.value = "instances"
    seg.start()
    _wait(app, seg)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.6  # closer, so that outlines and class text are readable
    _save(viewer, app, "segment")

    # 2. Recognize all on the same field
    for lay in [lay for lay in viewer.layers if lay is not he]:
        viewer.layers.remove(lay)
    viewer.window.remove_dock_widget(dock)
    dock, rec = viewer.window.add_plugin_dock_widget(name, "Recognize all")
    rec.start()
    _wait(app, rec)
    viewer.layers.selection.active = viewer.layers["hgsc_nest instances"]
    _scroll(rec, top=True)
    _save(viewer, app, "recognize")
    # the results view: counts, the objects table linked to the canvas, export
    rec.results.select_row(_central_row(rec.results))
    viewer.scene.camera.zoom *= 3
    _scroll(rec, top=False)
    _save(viewer, app, "results")
    viewer.window.remove_dock_widget(dock)
    dock = None

    # 3. Model widget
    dock, mw = viewer.window.add_plugin_dock_widget(name, "Model")
    _save(viewer, app, "model")
    viewer.window.remove_dock_widget(dock)

    # 4. A whole slide: the reader (lazy multiscale, microns) and the slide engine
    viewer.layers.clear()
    for d in list(viewer.window.dock_widgets.values()):
        viewer.window.remove_dock_widget(d)
    viewer.open(str(ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"), plugin=name)
    viewer.canvas.overlays.scale_bar.visible = True
    viewer.reset_view()
    _save(viewer, app, "reader")
    dock, sw = viewer.window.add_plugin_dock_widget(name, "Slide processing")
    sw.output_folder.value = tempfile.mkdtemp()
    reports = []
    sw.run.progressed.connect(lambda d, t, m: reports.append((d, t, m)))
    sw.start()
    # napari's activity dock during the run (tiles done / total, cancel button)
    viewer.window._status_bar._toggle_activity_dock(True)
    t0 = time.monotonic()
    while sw.run.running and not any("tile" in m and 0 < d < t for d, t, m in reports):
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > 600:
            raise TimeoutError("no tile progress")
    _save(viewer, app, "activity", screen=True)
    _wait(app, sw)
    viewer.window._status_bar._toggle_activity_dock(False)
    viewer.scene.camera.center = (1000.0, 560.0)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 4
    _save(viewer, app, "slide")

    # 5. A small window (853 px): the plugin's dock narrows to 200 px, its fields shrink
    viewer.window._qt_window.resize(853, 640)
    _settle(app, 20)
    canvas = viewer.window._qt_viewer.canvas.native.width()
    print(f"853 px window: canvas {canvas} px wide, dock {dock.width()} px")
    _save(viewer, app, "narrow")
    viewer.close()


if __name__ == "__main__":
    main()
