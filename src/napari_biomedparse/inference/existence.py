"""The official BiomedParse object-existence test (``check_mask_stats``).

For a predicted probability map of a target, four statistics are computed over the pixels the
model is confident about (probability >= 128/255): the mean probability and the mean R, G, B
of the image there, each divided by 256. Each is compared with the Beta distribution fitted to
that statistic for that target on the training data (``target_dist.json``) by a one-sample,
two-sided Kolmogorov-Smirnov test with one observation; the four p-values are multiplied and
the product is adjusted as ``p ** 0.25``. A low p-value (official threshold 0.05) means the
predicted object is unlike real instances of the target: the object is likely absent.

Source: ``inference_utils/output_processing.py`` (``check_mask_stats``, ``mask_stats``) of
microsoft/BiomedParse v1; see ``shared/reference/v1_facts.md`` section 7. The statistics shipped
here (``target_dist_v1.json``) are the plain-text ``target_dist.json`` of the v1 repository's
git history (see ``README.md`` in this folder).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np

from .modalities import ImageType, normalize_modality

__all__ = [
    "DEFAULT_P_THRESHOLD",
    "TargetDistribution",
    "adjusted_p_value",
    "existence_p_value",
    "existence_p_values",
    "mask_stats",
]

#: Threshold of the official notebooks: an adjusted p-value below it marks the object absent.
DEFAULT_P_THRESHOLD = 0.05

_V1_PATH = Path(__file__).with_name("target_dist_v1.json")


def _norm_target(t: str) -> str:
    return " ".join(str(t).lower().split())


class TargetDistribution:
    """Per image type and target, the Beta parameters of the four mask statistics.

    Args:
        table: ``{image_type: {target: [[a, b] x 4]}}`` in the format of the official
            ``target_dist.json`` (statistics in the order mean probability, R, G, B).
        name: a label for messages (e.g. the file it came from).

    Image-type keys are matched with :func:`~.modalities.normalize_modality`, so "Pathology",
    "pathology" and ``ImageType("Pathology")`` are the same; keys that are not modality names
    are kept and matched literally.
    """

    def __init__(self, table: dict, name: str = "target distribution"):
        if not isinstance(table, dict):
            raise TypeError(
                f"expected a dict image type -> target -> 4 x [a, b]; got {type(table)}"
            )
        self.name = name
        self.table: dict[str, dict[str, np.ndarray]] = {}
        self._keys: list[tuple[ImageType | None, str]] = []
        for key, targets in table.items():
            entries = {}
            for target, params in targets.items():
                arr = np.asarray(params, dtype=np.float64)
                if arr.shape != (4, 2) or not np.all(arr > 0):
                    raise ValueError(
                        f"{name}: {key}/{target} must hold 4 positive [alpha, beta] pairs; "
                        f"got shape {arr.shape}"
                    )
                entries[target] = arr
            self.table[key] = entries
            try:
                it = normalize_modality(key)
            except ValueError:
                it = None
            self._keys.append((it, key))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TargetDistribution:
        """Load a ``target_dist.json``-style file."""
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh), name=str(path))

    @classmethod
    def official_v1(cls) -> TargetDistribution:
        """The statistics of the official v1 release bundled with this package."""
        return _official_v1()

    @classmethod
    def coerce(cls, obj) -> TargetDistribution | None:
        """A TargetDistribution from one, a dict, a path, or None (returned as None)."""
        if obj is None or isinstance(obj, TargetDistribution):
            return obj
        if isinstance(obj, dict):
            return cls(obj)
        if isinstance(obj, (str, os.PathLike)):
            if str(obj) in ("v1", "official", "biomedparse-v1"):
                return cls.official_v1()
            return cls.from_json(obj)
        raise TypeError(
            "target_dist must be a TargetDistribution, a dict like target_dist.json, a path to "
            f"such a JSON file, 'v1' or None; got {type(obj).__name__}"
        )

    def image_types(self) -> list[str]:
        """The image-type keys of the table, in file order."""
        return list(self.table)

    def params(self, modality, target: str, site: str | None = None) -> np.ndarray | None:
        """(4, 2) float64 Beta parameters [[a, b] for mean prob, R, G, B], or None if unknown.

        ``modality`` may be anything :func:`normalize_modality` accepts or a literal key of the
        table. With no site given and several image types of the modality in the table (e.g.
        MRI), the first one (file order) that has the target is used.
        """
        if isinstance(modality, str) and modality in self.table:
            keys = [modality]
        else:
            it = normalize_modality(modality, site)
            keys = [k for t, k in self._keys if t == it]
            if not keys and it.site is None:
                keys = [k for t, k in self._keys if t is not None and t.modality == it.modality]
            if it.modality == "CT" and it.site == "lung":
                keys += [k for t, k in self._keys if t == ImageType("CT", "chest")]
        want = _norm_target(target)
        for key in keys:
            entries = self.table[key]
            if target in entries:
                return entries[target]
            for name, arr in entries.items():
                if _norm_target(name) == want:
                    return arr
        return None

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.table.values())
        return f"TargetDistribution({self.name!r}, {len(self.table)} image types, {n} targets)"


@functools.lru_cache(maxsize=1)
def _official_v1() -> TargetDistribution:
    return TargetDistribution.from_json(_V1_PATH)


def mask_stats(prob255, rgb_uint8) -> list[float]:
    """The four statistics of the official ``mask_stats``.

    Args:
        prob255: (H, W) probability scaled to [0, 255] (the official call passes ``prob * 255``).
        rgb_uint8: (H, W, 3) uint8 RGB image at the same size.

    Returns:
        [mean(prob255), mean(R), mean(G), mean(B)] over the pixels with prob255 >= 128, each
        divided by 256; [0, 0, 0, 0] when max(prob255) <= 127.
    """
    mask = np.asarray(prob255)
    img = np.asarray(rgb_uint8)
    if img.ndim != 3 or img.shape[2] < 3 or img.shape[:2] != mask.shape:
        raise ValueError(
            f"expected an RGB image (H, W, 3) and a mask (H, W) of the same size; got "
            f"{img.shape} and {mask.shape}"
        )
    if mask.max() <= 127:
        return [0, 0, 0, 0]
    sel = mask >= 128
    return [
        mask[sel].mean() / 256,
        img[:, :, 0][sel].mean() / 256,
        img[:, :, 1][sel].mean() / 256,
        img[:, :, 2][sel].mean() / 256,
    ]


def adjusted_p_value(stats, params) -> float:
    """Official combination: per statistic a one-observation two-sided KS test against
    Beta(a, b) (``scipy.stats.ks_1samp``), product of the four p-values, then ``** 0.25``.

    Args:
        stats: the 4 values of :func:`mask_stats`.
        params: (4, 2) Beta parameters.

    Returns:
        The adjusted p-value in [0, 1].
    """
    from scipy import stats as st

    ps = [
        st.ks_1samp([stats[i]], st.beta(a, b).cdf).pvalue
        for i, (a, b) in enumerate(np.asarray(params, dtype=np.float64))
    ]
    return float(np.prod(ps) ** 0.25)


def _prob_to_255(prob) -> np.ndarray:
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"expected a probability map (H, W); got shape {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(
            f"expected float probabilities in [0, 1]; got dtype {prob.dtype} (a uint8 mask "
            "scaled to 0..255? divide it by 255)"
        )
    if prob.dtype != np.float32:
        prob = prob.astype(np.float32)
    return prob * 255  # float32, as the official call (numpy float32 * int)


def existence_p_value(
    rgb_uint8,
    prob,
    modality,
    target: str,
    target_dist=None,
    site: str | None = None,
) -> float:
    """Adjusted existence p-value of ``target`` in the image (official ``check_mask_stats``).

    Args:
        rgb_uint8: (H, W, 3) uint8 RGB image as given to the model (the official notebooks use
            the preprocessed 1024 x 1024 image).
        prob: (H, W) float probability map of ``target`` at the same size, values in [0, 1].
        modality: modality or official image type ("Pathology", "CT-Abdomen", "pathology").
        target: the prompt.
        target_dist: a :class:`TargetDistribution` (or dict / path); None = official v1.
        site: optional site (e.g. "abdomen" for CT).

    Returns:
        The adjusted p-value in [0, 1] (below 0.05: object likely absent), or NaN when there
        are no statistics for this target and image type ("not testable").
    """
    td = TargetDistribution.coerce(target_dist) or TargetDistribution.official_v1()
    params = td.params(modality, target, site=site)
    if params is None:
        return math.nan
    return adjusted_p_value(mask_stats(_prob_to_255(prob), rgb_uint8), params)


def existence_p_values(
    rgb_uint8,
    probs,
    modality,
    targets,
    target_dist=None,
    site: str | None = None,
) -> np.ndarray:
    """:func:`existence_p_value` for each of P maps.

    Args:
        rgb_uint8: (H, W, 3) uint8.
        probs: (P, H, W) float probabilities.
        targets: P prompts.

    Returns:
        (P,) float64 adjusted p-values, NaN where not testable.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(targets):
        raise ValueError(f"expected probs (P, H, W) with P = {len(targets)}; got {probs.shape}")
    td = TargetDistribution.coerce(target_dist) or TargetDistribution.official_v1()
    return np.array(
        [
            existence_p_value(rgb_uint8, probs[i], modality, t, td, site=site)
            for i, t in enumerate(targets)
        ],
        dtype=np.float64,
    )
