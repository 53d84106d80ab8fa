"""Block-wise instance labelling of a blended map equals labelling it whole.

The block-wise result is made by the production path: the instance and painting stages'
units (slide/stages.py) run by the local executor against a zarr store.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_biomedparse.slide import stages
from napari_biomedparse.slide.blockwise import (
    BlockLayout,
    BlockRecord,
    label_window,
    outline,
)
from napari_biomedparse.slide.executors import LocalExecutor
from napari_biomedparse.slide.stitching import class_map


def label_blockwise(store, classes, probs, *, n_classes, block, halo, max_halo=1024,
                    split=None):  # fmt: skip
    """Labels (H, W) and block records of ``classes`` through the engine's stages."""
    import zarr

    H, W = classes.shape
    g = zarr.open_group(str(store), mode="w")
    if probs is None:
        probs = np.zeros((n_classes, H, W), np.uint8)
    for name, a in (("classes/0", classes), ("probs/0", probs)):
        arr = g.create_array(name, shape=a.shape, chunks=a.shape, dtype=a.dtype, fill_value=0)
        arr[...] = a
    g.create_array("labels/0", shape=(H, W), chunks=(block, block), dtype="int32", fill_value=0)
    (store / "blocks").mkdir()
    layout = BlockLayout((H, W), block)
    ex = LocalExecutor()
    units = [
        stages.LabelUnit(str(store), layout, b, n_classes, halo, max_halo, 1, split)
        for b in range(layout.n_blocks)
    ]
    ex.map(stages.label_task, units, label="instances", threads=2)
    counts, boxes, offsets, _ = stages.block_summary(store, layout.n_blocks)
    paint = stages.paint_units(store, layout, counts, boxes, offsets)
    ex.map(stages.paint_task, paint, label="labels")
    recs = []
    for b in range(layout.n_blocks):
        with np.load(stages.block_file(store, b)) as a:
            recs.append(BlockRecord.from_arrays(a))
    return np.asarray(g["labels/0"][...]), recs, offsets


def _synthetic_probs(shape=(700, 900), block=256, seed=0):
    """Blended-like probability maps (P=3, uint8) with objects on every seam and corner."""
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    probs = np.zeros((3, H, W), np.float32)
    centres = []
    for y in range(0, H + 1, block // 2):  # every seam, every corner, and block centres
        for x in range(0, W + 1, block // 2):
            centres.append((y + rng.integers(-4, 5), x + rng.integers(-4, 5)))
    for _ in range(150):  # plus random ones, some touching each other
        centres.append((rng.integers(0, H), rng.integers(0, W)))
    for k, (cy, cx) in enumerate(centres):
        r = rng.uniform(4, 28)
        c = k % 3
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 1.6) ** 2))
        probs[c] = np.maximum(probs[c], blob)
    # an elongated object across three blocks (needs a larger halo) and one across a corner
    probs[1, 100:110, 20:680] = 1.0
    probs[2, 240:275, 240:275] = 1.0
    return np.rint(probs * 255).astype(np.uint8)


def _match(a, b):
    """For every object of a, its best IoU in b; plus the counts."""
    ious = []
    ids_a = np.unique(a[a > 0])
    for i in ids_a:
        m = a == i
        js, counts = np.unique(b[m], return_counts=True)
        counts = counts[js > 0]
        js = js[js > 0]
        if not len(js):
            ious.append(0.0)
            continue
        j = js[np.argmax(counts)]
        mb = b == j
        ious.append((m & mb).sum() / (m | mb).sum())
    return np.array(ious), len(ids_a), len(np.unique(b[b > 0]))


@pytest.mark.parametrize("block,halo", [(256, 32), (128, 16), (300, 64)])
def test_blockwise_equals_whole(block, halo, tmp_path):
    probs = _synthetic_probs(block=block)
    classes = class_map(probs)
    whole = label_window(classes, probs, 3)
    blocks, recs, _ = label_blockwise(
        tmp_path / "s.zarr", classes, probs, n_classes=3, block=block, halo=halo
    )
    ious, n_whole, n_blocks = _match(whole, blocks)
    assert n_whole == n_blocks > 60
    assert (ious >= 0.99).all()
    ious_rev, _, _ = _match(blocks, whole)
    assert (ious_rev >= 0.99).all()
    # each object owned by exactly one block, with consecutive global ids
    assert sorted(np.unique(blocks[blocks > 0])) == list(range(1, n_blocks + 1))
    assert sum(r.n for r in recs) == n_blocks
    assert sum(r.n_cut for r in recs) == 0
    # the stripe needed a grown halo somewhere
    assert max(r.halo for r in recs) > halo
    # every seam is crossed by at least one object
    for s in range(block, classes.shape[0], block):
        assert (blocks[s - 1] > 0)[(blocks[s - 1] == blocks[s])].any()


def test_blockwise_with_split_instances_equals_whole(tmp_path):
    """Touching nuclei split by watershed (fixed radius): same objects block-wise."""
    probs = _synthetic_probs(shape=(400, 520), block=128, seed=3)
    classes = class_map(probs)
    split = {"radius": 6.0}
    whole = label_window(classes, probs, 3, split)
    blocks, _, _ = label_blockwise(
        tmp_path / "s.zarr", classes, probs, n_classes=3, block=128, halo=48, split=split
    )
    ious, n_whole, n_blocks = _match(whole, blocks)
    assert n_whole == n_blocks
    assert n_whole > label_window(classes, probs, 3).max()  # it did split touching objects
    # watershed breaks ties between touching objects by marker order, so a shared border
    # may move by a pixel: nearly every object is identical, none differs by much
    assert (ious >= 0.99).mean() >= 0.99 and ious.min() >= 0.97


def test_objects_larger_than_max_halo_are_reported(tmp_path):
    classes = np.zeros((64, 600), np.uint8)
    classes[10:20, 5:595] = 1  # longer than block + 2 * max_halo
    labels, recs, _ = label_blockwise(
        tmp_path / "s.zarr", classes, None, n_classes=1, block=64, halo=8, max_halo=64
    )
    assert sum(r.n_cut for r in recs) >= 1


def test_outline_is_closed_ring_around_pixels():
    m = np.zeros((12, 12), bool)
    m[3:8, 2:6] = True
    ring = outline(m)
    assert (ring[0] == ring[-1]).all()
    assert ring[:, 0].min() >= 3 and ring[:, 0].max() <= 8
    assert ring[:, 1].min() >= 2 and ring[:, 1].max() <= 6
    x, y = ring[:, 1], ring[:, 0]
    area = abs(0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))
    assert 17 <= area <= 20  # 20 pixels; marching squares cuts the 4 corners by 1/8 each
