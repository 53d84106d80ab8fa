"""Instances made block by block from a blended class map, merged across block borders.

The output grid (the class map ``(H, W)`` at the target resolution) is cut into square
*blocks* (cores) of ``block`` pixels. Each block is labelled on a *window* = its core plus a
``halo`` on each side (clipped to the image):

1. ``label_block`` labels the window (per class: connected components, or the inference
   layer's instance step, :func:`~napari_biomedparse.inference.instances.class_instances`,
   as ``Predictor.recognize`` runs it on a whole image), and keeps the objects it *owns*: those whose
   anchor, the first pixel in raster order (top row, then leftmost column), lies in its
   core. The anchor of an object does not depend on the window as long as the window holds
   the whole object, so every object is owned by exactly one block. If an owned object
   touches an inner edge of the window (it may continue outside), the halo is doubled and
   the block relabelled, up to ``max_halo``; objects still larger than that are kept cut and
   counted (``n_cut``). Owned objects below ``min_area`` pixels are dropped.
   The block's record holds its owned objects as a local label crop, their measurements
   and outlines (output-pixel coordinates).
2. Global ids: blocks in raster order, ids ``offset[b] + 1..n_b``.
3. ``paint_block`` writes one block's core of the label image from the records of every
   block whose owned crop intersects it (each core pixel belongs to at most one object).

So no object is cut or counted twice at a seam, and for connected-component labelling the
result equals labelling the whole map at once (up to the numbering). Each step writes only
its own block, so blocks can be processed by several processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_biomedparse.inference.instances import TABLE_COLUMNS as _INSTANCE_TABLE_COLUMNS

__all__ = [
    "BlockLayout",
    "BlockRecord",
    "label_window",
    "label_block",
    "paint_block",
    "outline",
    "TABLE_COLUMNS",
]

#: Columns of the per-object table: the same as a single image's (one table format).
TABLE_COLUMNS = tuple(_INSTANCE_TABLE_COLUMNS)


@dataclass(frozen=True)
class BlockLayout:
    """Square blocks of ``block`` px over an output grid ``shape`` (H, W)."""

    shape: tuple[int, int]
    block: int

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.shape[0] // self.block), -(-self.shape[1] // self.block)

    @property
    def n_blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    def core(self, b: int) -> tuple[int, int, int, int]:
        bi, bj = divmod(int(b), self.grid[1])
        y0, x0 = bi * self.block, bj * self.block
        return y0, x0, min(y0 + self.block, self.shape[0]), min(x0 + self.block, self.shape[1])


@dataclass
class BlockRecord:
    """Owned objects of one block.

    ``origin`` (y, x) and ``crop`` int32 (h, w): local ids 1..n of the owned objects in
    output pixels; ``rows``: per-object measurements in output pixels (dict of 1D arrays:
    class_id, area, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1, mean_prob);
    ``outlines``: per object a (K, 2) float32 yx polygon in continuous output-pixel
    coordinates (pixel k spans [k, k+1)); ``n_cut``: owned objects cut by ``max_halo``.
    """

    origin: tuple[int, int]
    crop: np.ndarray
    rows: dict[str, np.ndarray]
    outlines: list[np.ndarray] = field(default_factory=list)
    n_cut: int = 0
    halo: int = 0
    # core (h, w) class map after every nucleus took its class (label_block with
    # ``agnostic``; saved beside the record, not in it: see stages.label_task / paint_task)
    classes: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.rows["area"])

    def to_arrays(self) -> dict[str, np.ndarray]:
        lens = np.array([len(o) for o in self.outlines], np.int64)
        pts = (
            np.concatenate(self.outlines).astype(np.float32)
            if self.outlines
            else np.zeros((0, 2), np.float32)
        )
        out = {
            "origin": np.array(self.origin, np.int64),
            "crop": self.crop.astype(np.uint16) if self.n < 65535 else self.crop,
            "n": np.array(self.n, np.int64),
            "n_cut": np.array(self.n_cut, np.int64),
            "halo": np.array(self.halo, np.int64),
            "outline_len": lens,
            "outline_pts": pts,
        }
        for k, v in self.rows.items():
            out["row_" + k] = v
        return out

    @classmethod
    def from_arrays(cls, a) -> BlockRecord:
        rows = {k[4:]: np.asarray(a[k]) for k in a.files if k.startswith("row_")}
        lens = np.asarray(a["outline_len"])
        pts = np.asarray(a["outline_pts"])
        outlines = np.split(pts, np.cumsum(lens)[:-1]) if len(lens) else []
        return cls(
            origin=tuple(int(v) for v in a["origin"]),
            crop=np.asarray(a["crop"]),
            rows=rows,
            outlines=list(outlines),
            n_cut=int(a["n_cut"]),
            halo=int(a["halo"]),
        )


def label_window(
    classes: np.ndarray,
    probs: np.ndarray | None,
    n_classes: int,
    split: dict | None = None,
) -> np.ndarray:
    """Instance labels ``(h, w)`` int32 of a class-map window ``(h, w)`` (0 = background,
    k = class k): :func:`~napari_biomedparse.inference.instances.class_instances`, the
    instance step of ``Predictor.recognize``. ``probs`` ``(P, h, w)`` (uint8 or float) guide
    the splitting; ``split``: None = 8-connected components, else ``split_instances`` keyword
    arguments (pixels)."""
    from napari_biomedparse.inference.instances import class_instances

    return class_instances(classes, probs, n_classes, split=split)


def _classify_nuclei(
    cls: np.ndarray, prob: np.ndarray, value: int, split: dict | None
) -> np.ndarray:
    """The window's class map after every nucleus took its class (the recognition rule,
    :func:`~napari_biomedparse.inference.recognition.classify_nuclei`); ``value`` marks the
    agnostic target's candidate pixels in the stored map, which claim nothing."""
    from napari_biomedparse.inference.recognition import classify_nuclei

    p = prob.astype(np.float32) / 255.0 if prob.dtype == np.uint8 else prob
    base = np.where(cls == value, 0, cls)
    return classify_nuclei(base, p, value, split=split).astype(cls.dtype)


def outline(mask: np.ndarray) -> np.ndarray:
    """Outer boundary of a binary object ``mask`` (h, w) as a closed (K, 2) yx polygon in
    continuous pixel coordinates of the mask (pixel k spans [k, k+1)); collinear vertices
    removed, first vertex repeated at the end. Marching squares on the 0.5 level, so the
    ring is simple (never crosses itself)."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1).astype(np.float32)
    cs = find_contours(padded, 0.5, fully_connected="high")
    if not cs:
        return np.zeros((0, 2), np.float32)
    c = max(cs, key=len)
    c = c - 1 + 0.5  # undo the pad; centre-index -> continuous coordinates
    if not np.allclose(c[0], c[-1]):
        c = np.vstack([c, c[:1]])
    # drop collinear vertices
    ring = c[:-1]
    prev = np.roll(ring, 1, axis=0)
    nxt = np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) - (ring[:, 1] - prev[:, 1]) * (
        nxt[:, 0] - ring[:, 0]
    )
    keep = np.abs(cross) > 1e-9
    if keep.sum() >= 3:
        ring = ring[keep]
    return np.vstack([ring, ring[:1]]).astype(np.float32)


def _anchors(labels: np.ndarray, slices) -> np.ndarray:
    """Raster-first pixel (y, x) in window coordinates of each object 1..n."""
    out = np.full((len(slices), 2), -1, np.int64)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        row = labels[sl[0].start, sl[1]]
        out[i] = sl[0].start, sl[1].start + int(np.argmax(row == i + 1))
    return out


def label_block(
    classes,
    probs,
    layout: BlockLayout,
    b: int,
    *,
    n_classes: int,
    halo: int = 64,
    max_halo: int = 1024,
    min_area: int = 1,
    split: dict | None = None,
    agnostic: int | None = None,
    with_outlines: bool = True,
) -> BlockRecord:
    """Label block ``b``'s window and return the record of the objects it owns.

    ``classes`` (H, W) and ``probs`` (P, H, W) (or None) are array-likes sliced lazily
    (numpy or zarr arrays); coordinates in output pixels. ``agnostic``: index of the
    class-agnostic target: every nucleus of its map in the window takes one class (its
    candidate pixels, class ``agnostic + 1``, claim nothing), as ``Predictor.recognize`` does on
    the whole image
    (:func:`~napari_biomedparse.inference.recognition.classify_nuclei`).
    """
    H, W = layout.shape
    cy0, cx0, cy1, cx1 = layout.core(b)
    h = max(0, int(halo))
    while True:
        wy0, wx0 = max(cy0 - h, 0), max(cx0 - h, 0)
        wy1, wx1 = min(cy1 + h, H), min(cx1 + h, W)
        cls = np.asarray(classes[wy0:wy1, wx0:wx1])
        pw = None if probs is None else np.asarray(probs[:, wy0:wy1, wx0:wx1])
        core_classes = None
        if agnostic is not None and pw is not None:
            cls = _classify_nuclei(cls, pw[agnostic], agnostic + 1, split)
            core_classes = cls[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0]
        lab = label_window(cls, pw, n_classes, split)
        slices = ndi.find_objects(lab)
        anchors = _anchors(lab, slices)
        ay, ax = anchors[:, 0] + wy0, anchors[:, 1] + wx0
        owned = (ay >= cy0) & (ay < cy1) & (ax >= cx0) & (ax < cx1) & (anchors[:, 0] >= 0)
        incomplete = np.zeros(len(slices), bool)
        for i in np.flatnonzero(owned):
            sl = slices[i]
            incomplete[i] = (
                (sl[0].start == 0 and wy0 > 0)
                or (sl[1].start == 0 and wx0 > 0)
                or (sl[0].stop == lab.shape[0] and wy1 < H)
                or (sl[1].stop == lab.shape[1] and wx1 < W)
            )
        n_cut = int(incomplete.sum())
        if n_cut == 0 or h >= max_halo or (wy0 == 0 and wx0 == 0 and wy1 == H and wx1 == W):
            break
        h = min(max(2 * h, 16), max_halo)

    ids = np.flatnonzero(owned) + 1
    areas = ndi.sum_labels(np.ones_like(lab, np.int64), lab, ids) if len(ids) else np.zeros(0)
    ids = ids[np.asarray(areas) >= min_area] if len(ids) else ids
    n = len(ids)
    rows = {
        k: np.zeros(n, dt)
        for k, dt in (
            ("class_id", np.int32),
            ("area", np.int64),
            ("centroid_y", np.float64),
            ("centroid_x", np.float64),
            ("bbox_y0", np.int64),
            ("bbox_x0", np.int64),
            ("bbox_y1", np.int64),
            ("bbox_x1", np.int64),
            ("mean_prob", np.float64),
        )
    }
    outlines: list[np.ndarray] = []
    if n == 0:
        return BlockRecord((cy0, cx0), np.zeros((0, 0), np.int32), rows, [], n_cut, h, core_classes)
    oy0 = min(slices[i - 1][0].start for i in ids)
    ox0 = min(slices[i - 1][1].start for i in ids)
    oy1 = max(slices[i - 1][0].stop for i in ids)
    ox1 = max(slices[i - 1][1].stop for i in ids)
    crop = np.zeros((oy1 - oy0, ox1 - ox0), np.int32)
    for local, i in enumerate(ids, start=1):
        sl = slices[i - 1]
        m = lab[sl] == i
        ys, xs = np.nonzero(m)
        c = int(cls[sl][m][0])
        rows["class_id"][local - 1] = c
        rows["area"][local - 1] = m.sum()
        rows["centroid_y"][local - 1] = ys.mean() + sl[0].start + wy0
        rows["centroid_x"][local - 1] = xs.mean() + sl[1].start + wx0
        rows["bbox_y0"][local - 1] = sl[0].start + wy0
        rows["bbox_x0"][local - 1] = sl[1].start + wx0
        rows["bbox_y1"][local - 1] = sl[0].stop + wy0
        rows["bbox_x1"][local - 1] = sl[1].stop + wx0
        if pw is not None:
            pv = pw[c - 1][sl][m]
            mp = float(pv.mean())
            rows["mean_prob"][local - 1] = mp / 255.0 if pw.dtype == np.uint8 else mp
        else:
            rows["mean_prob"][local - 1] = np.nan
        sub = crop[sl[0].start - oy0 : sl[0].stop - oy0, sl[1].start - ox0 : sl[1].stop - ox0]
        sub[m] = local
        if with_outlines:
            outlines.append(outline(m) + np.array([sl[0].start + wy0, sl[1].start + wx0]))
    return BlockRecord((oy0 + wy0, ox0 + wx0), crop, rows, outlines, n_cut, h, core_classes)


def paint_block(
    layout: BlockLayout, b: int, records: dict[int, BlockRecord], offsets
) -> np.ndarray:
    """Labels of block ``b``'s core ``(h, w)`` int32 with global ids, painted from the
    ``records`` (block index -> record) whose crops intersect the core."""
    cy0, cx0, cy1, cx1 = layout.core(b)
    out = np.zeros((cy1 - cy0, cx1 - cx0), np.int32)
    for nb in sorted(records):
        rec = records[nb]
        if rec.n == 0:
            continue
        oy, ox = rec.origin
        a, bb = max(cy0, oy), min(cy1, oy + rec.crop.shape[0])
        c, d = max(cx0, ox), min(cx1, ox + rec.crop.shape[1])
        if bb <= a or d <= c:
            continue
        sub = rec.crop[a - oy : bb - oy, c - ox : d - ox]
        sel = sub > 0
        out[a - cy0 : bb - cy0, c - cx0 : d - cx0][sel] = sub[sel].astype(np.int64) + int(
            offsets[nb]
        )
    return out
