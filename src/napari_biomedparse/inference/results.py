"""Result containers of the detection and recognition tasks.

Shapes are given for a 2-D image of H x W pixels and P prompts/targets. For a 3-D stack of Z
slices (processed slice by slice) a Z axis follows the prompt axis: probabilities (P, Z, H, W),
p-values (P, Z), label images (Z, H, W), and the tables gain a ``z`` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Detection", "Recognition"]


def _outlines_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    from .instances import instance_outlines

    if labels.ndim == 2:
        return instance_outlines(labels)
    out: dict[int, np.ndarray] = {}
    for z in range(labels.shape[0]):
        for lab, ring in instance_outlines(labels[z]).items():
            out[lab] = np.column_stack([np.full(len(ring), float(z)), ring])
    return out


@dataclass
class Detection:
    """Which prompted objects are present, and their instances.

    Attributes:
        prompts: the P prompts, as given.
        probs: (P, H, W) float32 probability per prompt at the input's size.
        p_values: (P,) float64 adjusted existence p-value per prompt (official test); NaN when
            the target has no statistics ("not testable").
        present: (P,) bool, ``p_value >= p_threshold`` (True when not testable, or when
            ``p_threshold`` is None) and the mask (probs > mask_threshold) is not empty.
        testable: (P,) bool, whether statistics exist for the prompt's target.
        in_vocabulary: (P,) bool, whether the prompt is an official / model-vocabulary target of
            the modality (free text is allowed, only flagged).
        labels: (P, H, W) int32 instance labels per prompt (0 = background); ids are unique
            across prompts, so ``table.label`` identifies an instance. Prompts judged absent
            have no instances.
        table: one row per instance: ``prompt`` (= ``class``), the columns of
            :func:`~.instances.instance_table` (label, class, score, p_value, area, area_um2,
            centroid_y/x, bbox_y0/x0/y1/x1, mean_prob), in pixels of the input image.
        p_threshold: the existence threshold used (None: no filtering).
        mask_threshold: probability threshold of the masks.
        image_type: the image type the preset and the statistics used (e.g. "Pathology").
    """

    prompts: list[str]
    probs: np.ndarray
    p_values: np.ndarray
    present: np.ndarray
    testable: np.ndarray
    in_vocabulary: np.ndarray
    labels: np.ndarray
    table: pd.DataFrame
    p_threshold: float | None = 0.05
    mask_threshold: float = 0.5
    image_type: str = ""
    _outlines: dict | None = field(default=None, repr=False, compare=False)

    @property
    def masks(self) -> np.ndarray:
        """(P, H, W) bool, ``probs > mask_threshold``."""
        return np.asarray(self.probs) > self.mask_threshold

    def outlines(self) -> dict[int, np.ndarray]:
        """Polygon per instance: label -> (K, 2) (y, x) vertices ((K, 3) (z, y, x) in 3-D)."""
        if self._outlines is None:
            out: dict[int, np.ndarray] = {}
            for p in range(self.labels.shape[0]):
                out.update(_outlines_of(np.asarray(self.labels[p])))
            self._outlines = out
        return self._outlines

    def summary(self) -> pd.DataFrame:
        """One row per prompt: prompt, p_value, present, testable, in_vocabulary, n_instances."""
        counts = self.table.groupby("prompt").size() if len(self.table) else pd.Series(dtype=int)
        pv = np.asarray(self.p_values)
        present = np.asarray(self.present)
        testable = np.asarray(self.testable)
        if pv.ndim > 1:  # 3-D: p-values per slice; a prompt is present if present in any slice
            pv = np.nanmin(np.where(np.isnan(pv), np.inf, pv), axis=1)
            pv = np.where(np.isinf(pv), np.nan, pv)
            present = present.any(axis=1)
            testable = testable.all(axis=1) if testable.ndim > 1 else testable
        return pd.DataFrame(
            {
                "prompt": list(self.prompts),
                "p_value": pv,
                "present": present,
                "testable": testable,
                "in_vocabulary": np.asarray(self.in_vocabulary),
                "n_instances": [int(counts.get(p, 0)) for p in self.prompts],
            }
        )


@dataclass
class Recognition:
    """Every object of every target of a modality, each instance labelled with its class.

    Attributes:
        labels: (H, W) int32 instance labels (0 = background); each instance lies inside one
            class region, its class is ``table.class`` of its row.
        classes: (H, W) int32 class map: 0 = background, k = 1 + index into ``class_names``.
        class_names: the P targets that were run (class id k <-> ``class_names[k - 1]``).
        kept: the targets that survived the official rules (existence filtering, overlap
            suppression, pixel-wise combination).
        table: one row per instance: label, class_id, class, score, p_value (of its class),
            area (pixels), area_um2 (NaN without pixel size), centroid_y/x, bbox_y0/x0/y1/x1
            (pixels, half-open), mean_prob.
        probs: (P, H, W) float32 probability per target.
        p_values: (P,) float64 adjusted existence p-value per target (NaN = not testable).
        in_vocabulary: (P,) bool, whether each target is a known target of the modality.
        p_threshold: the existence threshold used.
        image_type: the image type used (e.g. "Pathology").
    """

    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    kept: list[str]
    table: pd.DataFrame
    probs: np.ndarray
    p_values: np.ndarray
    in_vocabulary: np.ndarray | None = None
    p_threshold: float | None = 0.05
    image_type: str = ""
    _outlines: dict | None = field(default=None, repr=False, compare=False)

    def outlines(self) -> dict[int, np.ndarray]:
        """Polygon per instance: label -> (K, 2) (y, x) vertices ((K, 3) (z, y, x) in 3-D)."""
        if self._outlines is None:
            self._outlines = _outlines_of(np.asarray(self.labels))
        return self._outlines

    def counts(self) -> pd.Series:
        """Number of instances per class name (all ``class_names``, zeros included)."""
        c = self.table["class"].value_counts() if len(self.table) else pd.Series(dtype=int)
        return pd.Series({n: int(c.get(n, 0)) for n in self.class_names}, name="count")
