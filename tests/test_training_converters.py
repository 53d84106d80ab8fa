"""The converters that made the default model's data files in tests/data.

Each runs on a small stand-in laid out as the package it reads (mnfinder 1.2.3, ndev-sampledata
0.0.3, histolytics 0.3.0), and the result is read back by the loader the training uses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely  # the testing extras
import tifffile
from skimage import io

from napari_biomedparse.training import default_model as dm
from napari_biomedparse.training.data import to_rgb_uint8


def _rgba_mask(ids: np.ndarray) -> np.ndarray:
    """mnfinder's mask encoding: alpha = foreground, (G, B) = instance id."""
    rgba = np.zeros((*ids.shape, 4), np.uint8)
    rgba[..., 1] = ids // 256
    rgba[..., 2] = ids % 256
    rgba[..., 3] = np.where(ids > 0, 255, 0)
    return rgba


def test_convert_mnfinder_reads_masks_splits_and_cell_types(tmp_path):
    pkg = tmp_path / "mnfinder"
    rng = np.random.default_rng(0)
    ids = np.zeros((64, 80), np.int32)
    ids[5:20, 5:20] = 300  # an id above 255: the G byte carries it
    ids[30:50, 40:70] = 7
    written = {}
    for split, folder, stem in [
        ("training", "20x_U2OS", "a"),
        ("validation", "20x_RPE1", "b"),
        ("test", "misc", "c"),
    ]:
        d = pkg / f"{split}-data" / folder
        (d / "images").mkdir(parents=True)
        (d / "nucleus_masks").mkdir()
        raw = rng.integers(100, 4000, ids.shape).astype(np.uint16)
        tifffile.imwrite(d / "images" / f"{stem}.tif", raw)
        io.imsave(d / "nucleus_masks" / f"{stem}.png", _rgba_mask(ids), check_contrast=False)
        written[f"mnfinder {split}/{folder}/{stem}"] = raw
    # an image without a mask is not annotated: skipped
    tifffile.imwrite(pkg / "test-data" / "misc" / "images" / "unlabelled.tif", raw)
    (pkg / "test-data" / "image-info.csv").write_text(
        "dataset,image,cell_type,dna_stain\nmisc,c.tif,HeLa,Hoechst\n"
    )

    root = tmp_path / "repo"
    (root / "tests" / "data").mkdir(parents=True)
    dm.convert_mnfinder(pkg, root / "tests" / "data" / dm.MNFINDER_FILE)

    images = dm.load_mnfinder(root=root)
    assert [a.name for a in images] == list(written)
    for a in images:
        np.testing.assert_array_equal(
            a.image[..., 0], to_rgb_uint8(written[a.name], "fluorescence")[..., 0]
        )
        assert a.prompts == {1: dm.NUCLEI}
        # two instances, relabelled 1..2, on exactly the masked pixels
        assert sorted(np.unique(a.instances)) == [0, 1, 2]
        np.testing.assert_array_equal(a.instances > 0, ids > 0)
        np.testing.assert_array_equal(a.classes, (ids > 0).astype(a.classes.dtype))
    assert [a.name for a in dm.load_mnfinder(("validation",), root=root)] == [
        "mnfinder validation/20x_RPE1/b"
    ]
    info = dm.mnfinder_info(root=root)
    # the csv row wins where it lists the image; else the folder name (RPE1 -> RPE-1)
    assert info["mnfinder test/misc/c"]["cell_type"] == "HeLa"
    assert info["mnfinder test/misc/c"]["stain"] == "Hoechst"
    assert info["mnfinder validation/20x_RPE1/b"]["cell_type"] == "RPE-1"
    assert info["mnfinder training/20x_U2OS/a"]["cell_type"] == "U2OS"


def test_convert_ndev_takes_the_hoechst_and_label_channels(tmp_path):
    pkg = tmp_path / "ndev_sampledata"
    (pkg / "samples").mkdir(parents=True)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (4, 3, 21, 57)).astype(np.uint16)  # C, T, Y, X
    data[2] = 0
    data[2, :, 3:9, 4:12] = 5
    tifffile.imwrite(
        pkg / "samples" / "scratch-assay-labeled-10T-2Ch.tiff", data, photometric="minisblack"
    )

    root = tmp_path / "repo"
    (root / "tests" / "data").mkdir(parents=True)
    dm.convert_ndev(pkg, root / "tests" / "data" / dm.NDEV_FILE)

    frames = dm.load_ndev(frames=(0, 2), root=root)
    assert [a.name for a in frames] == ["ndev scratch assay t=0", "ndev scratch assay t=2"]
    np.testing.assert_array_equal(
        frames[1].image[..., 0], to_rgb_uint8(data[0, 2], "fluorescence")[..., 0]
    )
    np.testing.assert_array_equal(frames[1].instances > 0, data[2, 2] > 0)


def test_convert_histolytics_stroma_fills_polygons_with_their_class(tmp_path):
    pkg = tmp_path / "histolytics"
    (pkg / "data").mkdir(parents=True)
    polys = [
        shapely.box(10, 20, 30, 60),  # x 10-30, y 20-60
        shapely.Polygon([(100, 100), (140, 100), (120, 130)]),
        shapely.box(25, 50, 45, 70),  # overlaps the first: the later one wins
    ]
    names = ["connective", "inflammatory", "neoplastic"]
    table = pa.table({"geometry": [shapely.to_wkb(p) for p in polys], "class_name": names})
    pq.write_table(table, pkg / "data" / "hgsc_stromal_cells.parquet")

    out = dm.convert_histolytics_stroma(pkg, tmp_path / "stroma.npz")
    with np.load(out) as z:
        instances, classes = z["instances"], z["classes"]
    assert instances.shape == classes.shape == (1500, 1500)
    assert sorted(np.unique(instances)) == [0, 1, 2, 3]
    # (row, col) = (y, x): inside the first box only, inside the overlap, inside the triangle
    assert instances[30, 15] == 1 and classes[30, 15] == dm.HISTOLYTICS_CLASSES["connective"]
    assert instances[55, 28] == 3 and classes[55, 28] == dm.HISTOLYTICS_CLASSES["neoplastic"]
    assert instances[110, 120] == 2 and classes[110, 120] == dm.HISTOLYTICS_CLASSES["inflammatory"]
    assert instances[5, 5] == 0 and instances[35, 60] == 0
    # each polygon covers about its area (a box of 20 x 40 px, a triangle of 600 px)
    assert abs(int((instances == 2).sum()) - 600) < 60


def test_shipped_stroma_labels_are_the_converted_polygons():
    """tests/data/hgsc_stroma_nuclei.npz: 423 polygons of three classes, on the 1500 px image."""
    a = dm.load_stroma()
    assert a.image.shape == (1500, 1500, 3)
    ids = np.unique(a.instances[a.instances > 0])
    assert len(ids) == 423  # none wholly covered by a later polygon
    assert set(np.unique(a.classes)) == {0, *dm.HISTOLYTICS_CLASSES.values()}
    np.testing.assert_array_equal(a.classes > 0, a.instances > 0)
