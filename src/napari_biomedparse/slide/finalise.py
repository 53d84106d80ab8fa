"""Finalising a slide run: display pyramids, the object table and outlines.

Sequential streaming writes of whole arrays / files, made where the run is finalised
(after the stages of :mod:`.stages`), with bounded memory whatever the slide's size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .blockwise import BlockRecord
from .stages import block_file
from .tiling import TileGrid

__all__ = ["build_pyramid", "write_tables", "trim_memory"]


def build_pyramid(group, name: str, dtype, chunk: int) -> int:
    """Build ``name/1..`` by 2x subsampling (nearest: labels stay labels) until a level fits
    one ``chunk``. Levels already marked complete are kept (resume). Returns levels."""
    lvl = 0
    while True:
        src = group[f"{name}/{lvl}"]
        H, W = src.shape
        if max(H, W) <= chunk:
            return lvl + 1
        h, w = -(-H // 2), -(-W // 2)
        dst_name = f"{name}/{lvl + 1}"
        if dst_name in group and tuple(group[dst_name].shape) == (h, w):
            dst = group[dst_name]
            if group[dst_name].attrs.get("complete"):
                lvl += 1
                continue
        else:
            dst = group.create_array(
                dst_name, shape=(h, w), chunks=(chunk, chunk), dtype=dtype, fill_value=0
            )
        half = chunk // 2
        for y in range(0, h, chunk):
            for x in range(0, w, chunk):
                sub = np.zeros((min(chunk, h - y), min(chunk, w - x)), dtype)
                for dy in range(0, sub.shape[0], half):  # one source chunk at a time
                    for dx in range(0, sub.shape[1], half):
                        sy, sx = 2 * (y + dy), 2 * (x + dx)
                        blk = np.asarray(src[sy : sy + chunk, sx : sx + chunk])[::2, ::2]
                        sub[dy : dy + blk.shape[0], dx : dx + blk.shape[1]] = blk
                if sub.any():
                    dst[y : y + sub.shape[0], x : x + sub.shape[1]] = sub
        dst.attrs["complete"] = True
        lvl += 1
        trim_memory()


def trim_memory() -> None:
    """Give freed heap memory back to the OS between stages (glibc keeps per-thread arenas
    of freed buffers, which otherwise shows up as resident memory)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _table_schemas():
    import pyarrow as pa

    from .blockwise import TABLE_COLUMNS

    ints = {"label", "class_id", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"}
    fields = []
    for c in TABLE_COLUMNS:
        t = pa.int64() if c in ints else pa.string() if c == "class" else pa.float64()
        fields.append(pa.field(c, t))
    table = pa.schema(fields)
    outl = pa.schema(
        [
            pa.field("label", pa.int64()),
            pa.field("y", pa.list_(pa.float32())),
            pa.field("x", pa.list_(pa.float32())),
        ]
    )
    return table, outl


def write_tables(store, n_blocks: int, offsets, grid: TileGrid, prompts, recognize: bool):
    """Stream the table and outlines (level-0 pixel coordinates) from the block records into
    ``table.parquet`` / ``outlines.parquet``, one row group per block (memory stays bounded
    whatever the number of objects). Returns objects per class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .blockwise import TABLE_COLUMNS

    part = Path(store)
    s = grid.scale
    target_mpp = grid.target_mpp
    H0, W0 = grid.level0_shape
    names = np.array(prompts, dtype=object)
    schema_t, schema_o = _table_schemas()
    tmp_t = part / f"table.parquet.tmp-{os.getpid()}"
    tmp_o = part / f"outlines.parquet.tmp-{os.getpid()}"
    counts = np.zeros(len(prompts), np.int64)
    with pq.ParquetWriter(tmp_t, schema_t) as wt, pq.ParquetWriter(tmp_o, schema_o) as wo:
        for b in range(n_blocks if recognize else 0):
            with np.load(block_file(part, b)) as a:
                rec = BlockRecord.from_arrays(a)
            if rec.n == 0:
                continue
            r = rec.rows
            lab = np.arange(1, rec.n + 1, dtype=np.int64) + int(offsets[b])
            cid = r["class_id"].astype(np.int64)
            np.add.at(counts, cid - 1, 1)
            cols = {
                "label": lab,
                "class": names[cid - 1].astype(str),
                "class_id": cid,
                "score": r["mean_prob"].astype(np.float64),
                # areas: output pixels -> level-0 pixels / um^2
                "area": np.rint(r["area"] * s * s).astype(np.int64),
                "area_um2": r["area"] * target_mpp**2,
                # centroid: output pixel centre index -> level-0 pixel centre index
                "centroid_y": (r["centroid_y"] + 0.5) * s - 0.5,
                "centroid_x": (r["centroid_x"] + 0.5) * s - 0.5,
                "bbox_y0": np.floor(r["bbox_y0"] * s).astype(np.int64),
                "bbox_x0": np.floor(r["bbox_x0"] * s).astype(np.int64),
                "bbox_y1": np.minimum(np.ceil(r["bbox_y1"] * s), H0).astype(np.int64),
                "bbox_x1": np.minimum(np.ceil(r["bbox_x1"] * s), W0).astype(np.int64),
            }
            wt.write_table(pa.table([cols[c] for c in TABLE_COLUMNS], schema=schema_t))
            # the last output row / column may reach up to s/2 past the slide edge: clamp
            ys = [np.minimum(o[:, 0] * s, H0).astype(np.float32) for o in rec.outlines]
            xs = [np.minimum(o[:, 1] * s, W0).astype(np.float32) for o in rec.outlines]
            wo.write_table(
                pa.table(
                    [
                        pa.array(lab),
                        pa.array(ys, pa.list_(pa.float32())),
                        pa.array(xs, pa.list_(pa.float32())),
                    ],
                    schema=schema_o,
                )
            )
    os.replace(tmp_t, part / "table.parquet")
    os.replace(tmp_o, part / "outlines.parquet")
    return {p: int(c) for p, c in zip(prompts, counts)}
