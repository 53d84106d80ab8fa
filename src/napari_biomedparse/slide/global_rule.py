"""The official recognition rule over a whole slide: the class map of the blended probabilities.

After blending, ``probs/0`` holds the slide's probabilities at the target pixel size. The
official rule's global part (existence p-value per target over the image the user asked about,
the image-wide suppression and area rule) is computed from per-chunk sums in three passes
(:mod:`napari_biomedparse.inference.chunked_recognition`) and ``classes/0`` is rewritten with
the result; the existence statistics use the slide's RGB read at the same pixels. Equal to
:func:`~napari_biomedparse.inference.recognition.recognize_maps` on the whole slide at once
(``tests/test_slide_global_rule.py``). The class-agnostic ``nuclei`` target beside classes
takes no part in the rule; when it passes the existence test its pixels that no surviving
class holds are written as candidates, and the instance stage keeps those of the objects the
classes claim less than half of (``blockwise.label_block``, as
:func:`~napari_biomedparse.inference.recognition.recognize_maps` does on a whole image).

A model without existence statistics (``metadata["target_dist"]`` absent) gets NaN p-values
(not testable: nothing is filtered, the suppression and area rule still apply).
"""

from __future__ import annotations

import math

import numpy as np

from napari_biomedparse.inference.chunked_recognition import (
    ChunkStats,
    assigned_counts,
    chunk_class_map,
    chunk_stats,
    decide,
    survivors,
)
from napari_biomedparse.inference.recognition import agnostic_index, class_names

from .tiling import TileGrid, read_rgb

__all__ = ["apply_official_rule", "read_output_rgb"]


def read_output_rgb(image, grid: TileGrid, y0, x0, y1, x1, *, fill=255, modality, stats=None):
    """RGB uint8 ``(y1-y0, x1-x0, 3)`` of an output-pixel rectangle (at ``grid.target_mpp``),
    read from the nearest finer level and converted and resampled as tiles are
    (:func:`.tiling.read_rgb`, :func:`~napari_biomedparse.inference.tiled.resize_tile`)."""
    from PIL import Image

    s = grid.scale
    lv = image.level_for_downsample(s)
    f = s / image.downsamples[lv]
    ly0, lx0 = int(math.floor(y0 * f + 1e-6)), int(math.floor(x0 * f + 1e-6))
    lh, lw = max(1, int(round((y1 - y0) * f))), max(1, int(round((x1 - x0) * f)))
    rgb = read_rgb(image, lv, ly0, lx0, lh, lw, fill=fill, modality=modality, stats=stats)
    if rgb.shape[:2] != (y1 - y0, x1 - x0):
        rgb = np.asarray(Image.fromarray(rgb).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    return rgb


def apply_official_rule(
    group,
    image,
    grid: TileGrid,
    prompts,
    *,
    modality,
    target_dist=None,
    p_threshold: float | None = 0.05,
    fill: int = 255,
    intensity=None,
    cancel=None,
) -> dict:
    """Rewrite ``classes/0`` of a blended store with the full official rule.

    Returns ``{"p_values": [P floats, NaN = not testable], "kept": [target names],
    "agnostic": index of the class-agnostic target when its nuclei are classified (it runs
    beside classes and passes the existence test, as in
    :func:`~napari_biomedparse.inference.recognition.recognize_maps`), else None}``.
    ``classes/0`` then holds its candidate pixels (its mask where no class is); the instance
    stage gives every nucleus of its map one class, the unclassified class where the classes
    hold less than half of it
    (:func:`~napari_biomedparse.inference.recognition.classify_nuclei`, per block window).
    """
    from .store import RunCancelled, read_state

    probs, classes = group["probs/0"], group["classes/0"]
    prompts = list(prompts)
    C = probs.chunks[1]
    H, W = grid.shape
    # only the chunks blending wrote: the others hold zeros, which add nothing to any sum of
    # the rule (every statistic counts pixels above a probability threshold) and stay 0
    written = read_state(group["probs_state"]) == 1
    boxes = [(y, x, min(y + C, H), min(x + C, W)) for y in range(0, H, C) for x in range(0, W, C)
             if written[y // C, x // C]]  # fmt: skip
    agn = agnostic_index(prompts)

    def check():
        if cancel is not None and cancel.is_set():
            raise RunCancelled("cancelled while applying the recognition rule")

    stats = ChunkStats.zeros(len(prompts))
    for y0, x0, y1, x1 in boxes:
        check()
        q = np.asarray(probs[:, y0:y1, x0:x1])
        rgb = None
        if target_dist is not None:
            rgb = read_output_rgb(image, grid, y0, x0, y1, x1, fill=fill,
                                  modality=modality, stats=intensity)  # fmt: skip
        stats = stats + chunk_stats(q, rgb)
    pv = None if target_dist is not None else np.full(len(prompts), np.nan)
    dec = decide(stats, prompts, modality=modality, target_dist=target_dist, p_values=pv,
                 p_threshold=p_threshold)  # fmt: skip
    assigned = np.zeros(len(dec.kept), np.int64)
    for y0, x0, y1, x1 in boxes:
        check()
        assigned += assigned_counts(np.asarray(probs[:, y0:y1, x0:x1]), dec.kept)
    surv = survivors(stats, dec.kept, assigned)
    if agn is not None:  # the agnostic target answers only when it passes the existence test
        pa = dec.p_values[agn]
        if p_threshold and not math.isnan(pa) and pa < p_threshold:
            agn = None
    present: set[int] = set()
    for y0, x0, y1, x1 in boxes:
        check()
        q = np.asarray(probs[:, y0:y1, x0:x1])
        cmap = chunk_class_map(q, dec.kept, surv)
        if agn is not None:
            cmap[(cmap == 0) & (q[agn] > 127)] = agn + 1
        present.update(int(v) - 1 for v in np.unique(cmap) if v > 0)
        classes[y0:y1, x0:x1] = cmap.astype(np.uint8)
    names = class_names(prompts)  # the class-agnostic target is "unclassified nuclei"
    kept = [names[i] for i in range(len(prompts)) if i in present]
    return {"p_values": [float(v) for v in dec.p_values], "kept": kept, "agnostic": agn}
