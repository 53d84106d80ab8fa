"""Whole-slide engine: end to end on the real CMU slide, seams, resume, bad inputs, exports."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_biomedparse.inference.ink import ink_mask, suppress_ink
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import SlideResult, process_slide
from napari_biomedparse.slide.readers import SlideReadError, open_image
from napari_biomedparse.slide.store import ResumeMismatch, RunCancelled, partial_path

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"
TINY = ROOT / "tests/data/v1_tiny"


def real_model():
    """The bundled default model; the tiny reference model until the default one ships."""
    from napari_biomedparse.hub import load_model

    try:
        return load_model("default")
    except FileNotFoundError:
        from napari_biomedparse.model import BiomedParseConfig, build_model, load_checkpoint

        m = build_model(BiomedParseConfig.from_reference_json(TINY / "config.json"))
        load_checkpoint(m, TINY / "state_dict.pt")
        return m


# -- polygon checks (QuPath needs valid, closed, simple rings) ---------------------------------


def _orient(a, b, c):
    return np.sign(
        (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
        - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    )


def _on_segment(a, b, c):
    return (
        (np.minimum(a[..., 0], b[..., 0]) <= c[..., 0])
        & (c[..., 0] <= np.maximum(a[..., 0], b[..., 0]))
        & (np.minimum(a[..., 1], b[..., 1]) <= c[..., 1])
        & (c[..., 1] <= np.maximum(a[..., 1], b[..., 1]))
    )


def ring_is_simple(ring: np.ndarray) -> bool:
    """True when a closed ring (K+1, 2) has no self-intersection or self-touching."""
    pts = ring[:-1]
    n = len(pts)
    if n < 3:
        return False
    a, b = pts, np.roll(pts, -1, axis=0)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last segments share a vertex
    i, j = i[keep], j[keep]
    p1, p2, p3, p4 = a[i], b[i], a[j], b[j]
    d1, d2 = _orient(p3, p4, p1), _orient(p3, p4, p2)
    d3, d4 = _orient(p1, p2, p3), _orient(p1, p2, p4)
    hit = (d1 * d2 < 0) & (d3 * d4 < 0)
    hit |= (d1 == 0) & _on_segment(p3, p4, p1)
    hit |= (d2 == 0) & _on_segment(p3, p4, p2)
    hit |= (d3 == 0) & _on_segment(p1, p2, p3)
    hit |= (d4 == 0) & _on_segment(p1, p2, p4)
    return not hit.any()


def shoelace(ring):
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def check_qupath_geojson(path, result, object_type):
    gj = json.loads(Path(path).read_text())
    assert gj["type"] == "FeatureCollection"
    feats = gj["features"]
    assert len(feats) == len(result.table)
    H0, W0 = 2967, 2220
    names = set(result.class_names)
    for f in feats:
        assert f["type"] == "Feature" and isinstance(f["id"], str)
        props = f["properties"]
        assert props["objectType"] == object_type
        cls = props["classification"]
        assert cls["name"] in names
        assert len(cls["color"]) == 3 and all(0 <= c <= 255 for c in cls["color"])
        assert isinstance(props["measurements"], dict)
        assert all(isinstance(v, (int, float)) for v in props["measurements"].values())
        g = f["geometry"]
        assert g["type"] == "Polygon" and len(g["coordinates"]) == 1
        ring = np.asarray(g["coordinates"][0], dtype=float)
        assert len(ring) >= 4 and (ring[0] == ring[-1]).all()
        assert (ring[:, 0] >= 0).all() and (ring[:, 0] <= W0).all()  # x
        assert (ring[:, 1] >= 0).all() and (ring[:, 1] <= H0).all()  # y
        assert abs(shoelace(ring)) > 0
        assert ring_is_simple(ring), f"self-intersecting outline in feature {f['id']}"
        if object_type == "cell":
            assert props["nucleusGeometry"] == g
    return feats


# -- end to end on the real slide with the real model ------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "cmu.biomedparse.zarr"
    # 2 um/px keeps the tiny 1024-input model to ~12 tiles on 2 CPU cores
    res = process_slide(CMU, out, model=real_model(), mpp=2.0, instances="components", batch_size=2)
    return res


def test_cmu_end_to_end_with_model(real_run, tmp_path):
    res = real_run
    img = open_image(CMU)
    assert img.mpp == pytest.approx(0.499)
    assert res.params["slide_mpp"] == pytest.approx(0.499)
    assert res.path.exists() and not partial_path(res.path).exists()
    s = res.summary
    assert s["objects"] > 0 and s["objects"] == len(res.table)
    # at 2 um/px every tile (all inside the slide) holds tissue; skipping is tested below
    assert s["tiles_processed"] + s["tiles_skipped"] == s["tiles_total"]
    assert sum(s["objects_per_class"].values()) == s["objects"]
    t = res.table
    for col in (
        "label",
        "class",
        "score",
        "area",
        "area_um2",
        "centroid_y",
        "centroid_x",
        "bbox_y0",
        "bbox_x0",
        "bbox_y1",
        "bbox_x1",
    ):
        assert col in t.columns
    assert t["label"].is_unique
    # level-0 coordinates: inside the 2967 x 2220 slide, boxes contain centroids
    assert t["centroid_y"].between(0, 2967).all() and t["centroid_x"].between(0, 2220).all()
    assert (t["bbox_y0"] <= t["centroid_y"]).all() and (t["centroid_y"] <= t["bbox_y1"]).all()
    assert np.allclose(t["area_um2"], t["area"] * 0.499**2, rtol=0.05)
    # multiscale lazy labels consistent with the table
    labels = res.labels
    assert len(labels) >= 1 and labels[0].shape == (740, 554)
    lab0 = np.asarray(labels[0])
    ids, counts = np.unique(lab0[lab0 > 0], return_counts=True)
    assert set(ids) == set(t["label"])
    scale = res.scale
    area_px = t.set_index("label")["area"].loc[ids].to_numpy()
    np.testing.assert_allclose(counts * scale**2, area_px, rtol=0.01, atol=1)
    # classes agree with labels
    cls0 = np.asarray(res.classes[0])
    fg = lab0 > 0
    assert (cls0[fg] > 0).all()
    assert (cls0 > 0).sum() - fg.sum() < 0.05 * fg.sum()  # only specks below min area
    class_of = t.set_index("label")["class_id"]
    np.testing.assert_array_equal(cls0[fg], class_of.loc[lab0[fg]].to_numpy())
    # exports
    feats = check_qupath_geojson(res.to_geojson(tmp_path / "d.geojson"), res, "detection")
    check_qupath_geojson(res.to_geojson(tmp_path / "c.geojson", object_type="cell"), res, "cell")
    f0 = feats[0]
    row = t.set_index("label").loc[f0["properties"]["measurements"]["Label"]]
    ring = np.asarray(f0["geometry"]["coordinates"][0])
    assert abs(ring[:, 0].mean() - row["centroid_x"]) < 3 * scale + 2
    pd.testing.assert_frame_equal(pd.read_csv(res.to_csv(tmp_path / "t.csv")), t, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(res.to_parquet(tmp_path / "t.parquet")), t)
    # reopening gives the same result
    again = SlideResult.open(res.path)
    assert again.summary == res.summary and len(again.table) == len(t)


# -- seamless stitching and tissue skipping with a fast deterministic predictor ----------------


def test_blended_tiles_match_whole_image_prediction(tmp_path):
    img = open_image(CMU)
    crop = np.asarray(img.levels[0][600:1400, 300:1100].compute())  # 800 x 800 tissue
    pred = StainPredictor(input_size=256)
    res = process_slide(
        crop,
        tmp_path / "o.zarr",
        model=pred,
        prompts=["nuclei"],
        slide_mpp=0.5,
        mpp=0.5,
        tile_size=256,
        overlap=64,
        tissue_mask=False,
        instances="components",
    )
    # tiles inside the image: rows / columns start at 0, 192, 384 and 800 - 256 = 544
    assert res.summary["tiles_processed"] == res.summary["tiles_total"] == 16
    blended = np.asarray(res.probs[0]).astype(np.float32) / 255
    whole = StainPredictor(input_size=800).predict_batch(crop[None], ["nuclei"])
    # pathology masks tissue-marking ink on every tile (inference.ink): the crop has some
    ink = ink_mask(crop)
    assert 0 < ink.mean() < 0.05
    whole = suppress_ink(whole, crop[None])[0, 0]
    # the image border differs (tiles see white padding, the whole image a reflection)
    diff = np.abs(blended - np.rint(whole * 255) / 255)[4:-4, 4:-4]
    # equal up to uint8 rounding, also on the blended bands (a shifted or misplaced tile
    # would differ by up to 1 on every nucleus edge)
    assert (diff <= 1.01 / 255).mean() > 0.999
    assert diff.max() < 0.02
    # seams: the error on the tile-border rows is not larger than elsewhere
    seam_rows = [224, 416, 592]  # the middles of the overlap bands
    assert diff[seam_rows].mean() < 5 * max(diff.mean(), 1 / 255)


def test_tissue_mask_saved_and_background_tiles_skipped(tmp_path):
    res = process_slide(
        CMU,
        tmp_path / "o.zarr",
        model=StainPredictor(256),
        prompts=["nuclei", "other"],
        mpp=1.0,
        instances="components",
    )
    s = res.summary
    assert 0.2 < s["tissue_fraction"] < 0.7
    assert s["tiles_skipped"] > 0
    m = res.tissue_mask
    assert m.dtype == bool and 0 < m.mean() < 1
    assert s["objects"] > 50
    assert len(res.labels) >= 2  # display pyramid
    lv1 = np.asarray(res.labels[1])
    np.testing.assert_array_equal(lv1, np.asarray(res.labels[0])[::2, ::2])
    # the bounds offset (e.g. MIRAX) is added on request: OpenSlide's uncropped frame
    from napari_biomedparse.slide.store import open_group, read_meta, write_meta

    g = open_group(res.path, "r+")
    meta = read_meta(g)
    meta["offset"] = [100, 250]
    write_meta(g, meta)
    moved = SlideResult.open(res.path)
    a = json.loads(moved.to_geojson(tmp_path / "a.geojson").read_text())["features"][0]
    b = json.loads(moved.to_geojson(tmp_path / "b.geojson", include_offset=True).read_text())
    b = b["features"][0]
    ra, rb = (
        np.asarray(a["geometry"]["coordinates"][0]),
        np.asarray(b["geometry"]["coordinates"][0]),
    )
    np.testing.assert_allclose(rb - ra, np.broadcast_to([250, 100], ra.shape), atol=1e-3)


# -- resume, overwrite, cancel -----------------------------------------------------------------


def _quick(src, out, **kw):
    args = dict(
        model=StainPredictor(128),
        prompts=["nuclei"],
        mpp=2.0,
        tile_size=128,
        overlap=16,
        instances="components",
        batch_size=2,
    )
    args.update(kw)
    return process_slide(src, out, **args)


def test_cancel_then_resume_is_identical_and_parameters_guarded(tmp_path):
    ref = _quick(CMU, tmp_path / "ref.zarr")
    out = tmp_path / "run.zarr"
    cancel = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("tiles") and done >= 8:
            cancel.set()

    with pytest.raises(RunCancelled):
        _quick(CMU, out, progress=progress, cancel=cancel)
    assert partial_path(out).exists() and not out.exists()
    with pytest.raises(FileNotFoundError, match="unfinished run"):
        SlideResult.open(out)
    with pytest.raises(ResumeMismatch, match="tile_size"):
        _quick(CMU, out, tile_size=96)
    with pytest.raises(FileExistsError, match="resume=True"):
        _quick(CMU, out, resume=False)
    res = _quick(CMU, out)
    assert res.summary["resumed"] and res.summary["tiles_resumed"] >= 8
    np.testing.assert_array_equal(np.asarray(res.probs), np.asarray(ref.probs))
    np.testing.assert_array_equal(np.asarray(res.labels[0]), np.asarray(ref.labels[0]))
    pd.testing.assert_frame_equal(res.table, ref.table)
    # a finished result is never overwritten silently
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _quick(CMU, out)
    res2 = _quick(CMU, out, overwrite=True, prompts=["nuclei", "other"])
    # the class-agnostic "nuclei" beside a class target names the unclaimed nuclei
    assert res2.class_names == ["unclassified nuclei", "other"] and res2.path == out
    assert res2.params["prompts"] == ["nuclei", "other"]


def test_cancel_in_later_stages_then_resume_is_identical(tmp_path, monkeypatch):
    import napari_biomedparse.slide.plan as plan

    monkeypatch.setattr(plan, "CHUNK", 256)  # 3 x 3 blocks on this slide
    ref = _quick(CMU, tmp_path / "ref.zarr")
    out = tmp_path / "run.zarr"
    seen = []
    for stage in ("blending 4/", "instances 3/", "labels 5/"):
        cancel = threading.Event()

        def progress(done, total, msg, stage=stage, cancel=cancel):
            seen.append(msg)
            if msg.startswith(stage):
                cancel.set()

        with pytest.raises(RunCancelled):
            _quick(CMU, out, progress=progress, cancel=cancel)
        assert partial_path(out).exists()
    assert any(m.startswith("labels 5/9") for m in seen)
    res = _quick(CMU, out)
    np.testing.assert_array_equal(np.asarray(res.probs), np.asarray(ref.probs))
    for a, b in zip(res.labels, ref.labels, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pd.testing.assert_frame_equal(res.table, ref.table)
    pd.testing.assert_frame_equal(res.outlines, ref.outlines)


def test_process_slides_continues_after_a_bad_slide(tmp_path):
    from napari_biomedparse.slide.engine import process_slides

    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    small = ROOT / "tests/data/openslide_fixtures/small.svs"
    with pytest.warns(UserWarning):
        out = process_slides(
            [bad, small],
            tmp_path / "out",
            on_error="continue",
            model=StainPredictor(128),
            prompts=["nuclei"],
            tile_size=128,
            overlap=16,
            tissue_mask=False,
            instances="components",
        )
    assert isinstance(out[str(bad)], SlideReadError)
    assert isinstance(out[str(small)], SlideResult)
    assert (tmp_path / "out" / "small.svs.biomedparse.zarr").exists()
    with pytest.raises(SlideReadError):
        process_slides([bad], tmp_path / "out2", model=StainPredictor(128))


# -- bad inputs --------------------------------------------------------------------------------


def test_slide_without_pixel_size(tmp_path):
    arr = np.asarray(open_image(CMU).levels[0][600:1200, 300:900].compute())
    with pytest.raises(ValueError, match="slide_mpp"):
        _quick(arr, tmp_path / "a.zarr")
    assert not partial_path(tmp_path / "a.zarr").exists()
    res = _quick(arr, tmp_path / "a.zarr", slide_mpp=0.5)
    assert res.params["slide_mpp"] == 0.5 and res.summary["objects"] > 0


def test_slide_smaller_than_a_tile(tmp_path):
    small = ROOT / "tests/data/openslide_fixtures/small.svs"
    with pytest.warns(UserWarning, match="smaller than one tile"):
        res = _quick(small, tmp_path / "s.zarr", mpp=0.5, tissue_mask=False)
    assert res.summary["tiles_total"] == 1
    assert res.labels[0].shape == (16, 16)
    assert "smaller than one tile" in res.summary["notes"][0]


def test_all_background_slide_gives_valid_empty_outputs(tmp_path):
    rng = np.random.default_rng(0)
    white = np.clip(rng.normal(242, 3, size=(1500, 1200, 3)), 0, 255).astype(np.uint8)
    res = _quick(white, tmp_path / "w.zarr", slide_mpp=0.5)
    s = res.summary
    assert s["objects"] == 0 and s["tiles_processed"] == 0 and s["tiles_skipped"] > 0
    assert len(res.table) == 0 and list(res.table.columns)[:2] == ["label", "class"]
    assert int(np.asarray(res.labels[0]).max()) == 0
    gj = json.loads(res.to_geojson(tmp_path / "w.geojson").read_text())
    assert gj == {"type": "FeatureCollection", "features": []}
    assert pd.read_csv(res.to_csv(tmp_path / "w.csv")).empty


def test_corrupt_and_unsupported_files(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 500)
    with pytest.raises(SlideReadError, match="truncated or corrupt"):
        _quick(bad, tmp_path / "bad.zarr")
    txt = tmp_path / "slide.ndpi"
    txt.write_text("not an image")
    with pytest.raises(SlideReadError):
        _quick(txt, tmp_path / "t.zarr")
    assert not (tmp_path / "bad.zarr").exists() and not partial_path(tmp_path / "bad.zarr").exists()


def test_split_instances_separate_touching_nuclei(tmp_path):
    crop = np.asarray(open_image(CMU).levels[0][700:1212, 400:912].compute())
    kw = dict(
        model=StainPredictor(256), prompts=["nuclei"], slide_mpp=0.5, mpp=0.5, tissue_mask=False
    )
    comp = process_slide(crop, tmp_path / "c.zarr", instances="components", **kw)
    split = process_slide(crop, tmp_path / "s.zarr", **kw)  # default: split_instances
    assert split.params["instances"] == "split"
    assert split.summary["objects"] > comp.summary["objects"] > 20
    # splitting only cuts objects: every split object lies inside one component object
    a, b = np.asarray(split.labels[0]), np.asarray(comp.labels[0])
    for lab in np.unique(a[a > 0]):
        assert len(np.unique(b[a == lab])) == 1


def test_native_resolution_modality_and_probabilities_only(tmp_path):
    import tifffile

    fluo = tifffile.imread(ROOT / "src/napari_biomedparse/data/stardist_img2d.tif")  # uint16
    assert fluo.dtype == np.uint16 and fluo.ndim == 2
    res = process_slide(
        fluo,
        tmp_path / "f.zarr",
        model=StainPredictor(256),
        prompts=["nuclei"],
        modality="fluorescence",
        recognize=False,
    )
    assert res.params["mpp"] == 1.0 and res.scale == 1.0  # own resolution, no pixel size
    assert "no pixel size" in res.summary["notes"][0]
    assert res.probs.shape == (1, 512, 512)
    assert res.labels == [] and len(res.table) == 0
    assert res.summary["tiles_processed"] >= 1


def test_slide_modules_import_one_way():
    """No import cycle among the slide modules (module-level and function-level imports),
    and the dask executor knows the stages only as functions it is handed."""
    import ast

    pkg = ROOT / "src/napari_biomedparse/slide"
    graph = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 1 and mod:
                    deps.add(mod.split(".")[0])
                elif node.level == 1:
                    deps.update(a.name for a in node.names)
                elif mod.startswith("napari_biomedparse.slide."):
                    deps.add(mod.split(".")[2])
        graph[f.stem] = deps & {p.stem for p in pkg.glob("*.py")}
    assert not graph["distributed"] & {"engine", "stages", "plan", "executors"}

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        for d in graph.get(node, ()):
            visit(d, [*path, node])

    for m in graph:
        visit(m, [])
