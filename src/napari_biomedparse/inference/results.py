"""Result containers of the detection and recognition tasks.

Shapes are given for a 2-D image of H x W pixels and P prompts/targets. For a 3-D stack of Z
slices (processed slice by slice) a Z axis follows the prompt axis: probabilities (P, Z, H, W),
p-values (P, Z), label images (Z, H, W), and the tables gain a ``z`` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Detection", "Recognition"]


class _Exports:
    """GeoJSON / CSV export of a result's ``table`` and ``outlines()`` (2-D or 3-D)."""

    def to_geojson(self, path, object_type: str = "detection", *, source: str = "") -> Path:
        """Write the objects as a QuPath GeoJSON FeatureCollection; returns the path.

        Coordinates are pixels of the input image in QuPath's convention (pixel k spans
        [k, k+1)); classes carry the colour napari shows (:func:`.objects.class_color`). For a
        3-D stack every object is one polygon of its slice, measurement "Z slice".
        """
        from .geojson import write_geojson

        rings = {lab: _qupath(r) for lab, r in self.outlines().items()}
        return write_geojson(path, [(self.table, rings)], object_type=object_type, source=source)

    def to_csv(self, path) -> Path:
        """Write ``table`` as CSV (text cells safe for spreadsheets); returns the path."""
        from .objects import write_table

        return write_table(self.table, path, "csv")


def _per_prompt(p_values) -> np.ndarray:
    """(P,) p-values; for 3-D (P, Z) the smallest over the slices (NaN when none is testable)."""
    pv = np.asarray(p_values, dtype=np.float64)
    if pv.ndim > 1:
        pv = np.nanmin(np.where(np.isnan(pv), np.inf, pv), axis=1)
        pv = np.where(np.isinf(pv), np.nan, pv)
    return pv


def _kept(class_name: str, kept) -> bool:
    """Whether the target behind a class survived the official rules (the class-agnostic
    target is named "unclassified nuclei" as a class beside others, :mod:`.recognition`)."""
    from .recognition import CLASS_AGNOSTIC, UNCLASSIFIED

    return class_name in kept or (class_name == UNCLASSIFIED and CLASS_AGNOSTIC in kept)


def _qupath(ring: np.ndarray) -> np.ndarray:
    """Outline vertices (pixel centres at integers) -> QuPath's convention (+0.5 in y, x)."""
    ring = np.array(ring, dtype=np.float64)
    ring[:, -2:] += 0.5
    return ring


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
class Detection(_Exports):
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
            per-object schema (:mod:`.objects`: label, class, class_id, score, area, area_um2,
            centroid_y/x, bbox_y0/x0/y1/x1), in pixels of the input image; the existence
            p-value of each prompt is in :meth:`summary`.
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
        pv = _per_prompt(self.p_values)
        present = np.asarray(self.present)
        testable = np.asarray(self.testable)
        if present.ndim > 1:  # 3-D: a prompt is present if present in any slice
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
class Recognition(_Exports):
    """Every object of every target of a modality, each instance labelled with its class.

    Attributes:
        labels: (H, W) int32 instance labels (0 = background); each instance lies inside one
            class region, its class is ``table.class`` of its row.
        classes: (H, W) int32 class map: 0 = background, k = 1 + index into ``class_names``.
        class_names: the P targets that were run (class id k <-> ``class_names[k - 1]``).
        kept: the targets that survived the official rules (existence filtering, overlap
            suppression, pixel-wise combination).
        table: one row per instance, the per-object schema (:mod:`.objects`): label, class,
            class_id, score, area (pixels), area_um2 (NaN without pixel size), centroid_y/x,
            bbox_y0/x0/y1/x1 (pixels, half-open); the p-value of each class is in
            :meth:`summary`.
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

    def summary(self) -> pd.DataFrame:
        """One row per target: class, p_value, kept, in_vocabulary, n_instances."""
        pv = _per_prompt(self.p_values)
        counts = self.counts()
        voc = self.in_vocabulary
        return pd.DataFrame(
            {
                "class": list(self.class_names),
                "p_value": pv,
                "kept": [_kept(n, self.kept) for n in self.class_names],
                "in_vocabulary": np.asarray(voc if voc is not None else [True] * len(pv), bool),
                "n_instances": [int(counts[n]) for n in self.class_names],
            }
        )
