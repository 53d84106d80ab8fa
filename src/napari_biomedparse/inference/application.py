"""How a model wants to be applied: pixel size, tile size, overlap, whole image or tiles.

One function, :func:`application_defaults` ``(model_or_metadata, modality)``, gives the
defaults that the slide engine, the tasks (``segment`` / ``recognize``) and the widgets use
when the caller does not set them: **the model first, the modality second**.

A model declares them in ``model.metadata["inference"]`` (stored in our safetensors header)::

    {"mode": "tiled", "tile_size": 256, "overlap": 32, "mpp": 0.5,      # the model as a whole
     "modalities": {"pathology": {"mpp": 0.25, "tile_size": 256, "overlap": 32}}}

- ``mode``: "whole" (official BiomedParse v1 semantics: an image small enough is padded to a
  square and resized to the model input, see :func:`.tiled.inference_spec`) or "tiled".
- ``mpp`` (um/px), ``tile_size`` and ``overlap`` (px at that pixel size): the tile grid. Each
  tile of ``tile_size`` px is resized to the model input size (``config.input_size``), so
  the model sees a field of view of ``mpp * tile_size`` um at ``mpp * tile_size /
  input_size`` um per input pixel.
- ``modalities``: per-modality entries (same keys) that override the model-wide ones for that
  modality. The official v1 checkpoint gets :data:`V1_INFERENCE` (``hub.load_model``):
  whole-image semantics, and for pathology the field of view of its pathology training data
  (PanNuke: 256 px crops at 40x = 0.25 um/px, each resized to 1024 px); the evidence is in
  ``docs/slides.md``.

Order of precedence for a modality: the model's ``modalities`` entry, then the model-wide
tiled spec (its ``tile_size`` / ``overlap``; its ``mpp`` only for the modalities that have a
physical default pixel size, i.e. brightfield pathology, because a model's ``mpp`` is the
pixel size of its brightfield training tiles and fluorescence images often have none), then
:data:`MODALITY_DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = [
    "ApplicationSpec",
    "MODALITY_DEFAULTS",
    "V1_INFERENCE",
    "application_defaults",
    "modality_key",
]

#: Defaults per modality when the model says nothing: target um/px (None = the image's own
#: resolution, no resampling), tile edge and overlap in px at that resolution. Pathology:
#: 0.5 um/px (20x), 256 px tiles (128 um), the scale the bundled default model was trained
#: at (see the pixel-size sweep in docs/benchmarks.md). Fluorescence and the other modalities
#: have no standard scale and run at the image's own resolution.
MODALITY_DEFAULTS: dict[str, dict] = {
    "pathology": {"mpp": 0.5, "tile_size": 256, "overlap": 32},
    "brightfield": {"mpp": 0.5, "tile_size": 256, "overlap": 32},
    "fluorescence": {"mpp": None, "tile_size": 256, "overlap": 32},
    "default": {"mpp": None, "tile_size": 512, "overlap": 64},
}

#: How the official BiomedParse v1 checkpoint is applied: whole images as the official code;
#: on pathology the field of view of its PanNuke training crops (256 px at 0.25 um/px = 64 um,
#: resized to the 1024 px input: 0.0625 um per input pixel). Sources in docs/slides.md.
V1_INFERENCE: dict = {
    "mode": "whole",
    "modalities": {"pathology": {"mode": "tiled", "mpp": 0.25, "tile_size": 256, "overlap": 32}},
}


@dataclass(frozen=True)
class ApplicationSpec:
    """Resolved application defaults of one model for one modality.

    Attributes:
        mode: "whole" (images that fit are run whole, official semantics) or "tiled".
        mpp: um/px of the tile grid; None = the image's own resolution.
        tile_size: tile edge in px at ``mpp``.
        overlap: overlap of neighbouring tiles in px at ``mpp``.
        input_size: the model's input edge in px (None when only metadata was given); each
            tile is resized from ``tile_size`` to it.
        source: where the geometry came from: "model:<modality>" (the model's per-modality
            entry), "model" (its model-wide tiled spec) or "modality" (:data:`MODALITY_DEFAULTS`).
    """

    mode: str
    mpp: float | None
    tile_size: int
    overlap: int
    input_size: int | None = None
    source: str = "modality"

    @property
    def resize_factor(self) -> float | None:
        """Model input px per tile px (``input_size / tile_size``; 4.0 for v1 on pathology)."""
        return None if not self.input_size else self.input_size / self.tile_size

    @property
    def field_of_view_um(self) -> float | None:
        """Edge of one tile in microns (None at the image's own resolution)."""
        return None if self.mpp is None else self.mpp * self.tile_size

    @property
    def input_mpp(self) -> float | None:
        """um per model-input pixel (``mpp * tile_size / input_size``)."""
        if self.mpp is None or not self.input_size:
            return None
        return self.mpp * self.tile_size / self.input_size

    def to_dict(self) -> dict:
        return asdict(self)


def modality_key(modality: str | None) -> str:
    """The :data:`MODALITY_DEFAULTS` key of a modality name ("Pathology" and "pathology-breast"
    -> "pathology"; names without an entry -> "default")."""
    key = str(modality or "default").lower().replace("_", "-").replace(" ", "-")
    for k in MODALITY_DEFAULTS:
        if key.startswith(k):
            return k
    return "default"


def _metadata(model_or_metadata) -> Mapping:
    meta = model_or_metadata
    if not isinstance(meta, Mapping):
        meta = getattr(model_or_metadata, "metadata", None)
        if meta is None and hasattr(model_or_metadata, "model"):  # a Predictor
            meta = getattr(model_or_metadata.model, "metadata", None)
    return meta if isinstance(meta, Mapping) else {}


def _input_size(model_or_metadata) -> int | None:
    obj = model_or_metadata
    if isinstance(obj, Mapping):
        v = obj.get("input_size")
        return int(v) if v else None
    for o in (obj, getattr(obj, "model", None)):
        cfg = getattr(o, "config", None)
        if cfg is not None and getattr(cfg, "input_size", None):
            return int(cfg.input_size)
    v = getattr(obj, "input_size", None)  # a Predictor-like object
    return int(v) if v else None


def _check_entry(entry, where: str) -> Mapping:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict (mode, mpp, tile_size, overlap); got {entry!r}")
    mode = str(entry.get("mode", "tiled")).lower()
    if mode not in ("whole", "tiled"):
        raise ValueError(f"unknown inference mode {mode!r} in {where}: use 'whole' or 'tiled'")
    return entry


def application_defaults(model_or_metadata, modality: str | None = "pathology") -> ApplicationSpec:
    """How ``model_or_metadata`` is applied to images of ``modality`` (model first, modality
    second; see the module docstring).

    Args:
        model_or_metadata: a model (``.metadata``, ``.config.input_size``), a Predictor
            (``.model``), or a metadata dict (optionally with ``input_size``).
        modality: modality name (case-insensitive; "pathology", "Fluorescence", ...).

    Returns:
        :class:`ApplicationSpec`.

    Raises:
        ValueError: malformed ``metadata["inference"]`` (not a dict, unknown mode, or a tile
            geometry that is not positive).
    """
    meta = _metadata(model_or_metadata)
    key = modality_key(modality)
    base = dict(MODALITY_DEFAULTS[key])
    spec = meta.get("inference") or {}
    spec = _check_entry(spec, "metadata['inference']") if spec else {}
    model_mode = str(spec.get("mode", "whole")).lower() if spec else "whole"
    mode, source = model_mode, "modality"
    if model_mode == "tiled":
        source = "model"
        for k in ("tile_size", "overlap"):
            if spec.get(k) is not None:
                base[k] = spec[k]
        if spec.get("mpp") and base["mpp"] is not None:
            base["mpp"] = spec["mpp"]
    per = spec.get("modalities") or {}
    if not isinstance(per, Mapping):
        raise ValueError(f"metadata['inference']['modalities'] must be a dict; got {per!r}")
    entry = None
    for name, e in per.items():
        if modality_key(name) == key:
            entry = _check_entry(e, f"metadata['inference']['modalities'][{name!r}]")
            break
    if entry is not None:
        source = f"model:{key}"
        mode = str(entry.get("mode", mode)).lower()
        for k in ("mpp", "tile_size", "overlap"):
            if k in entry:
                base[k] = entry[k]
    input_size = _input_size(model_or_metadata)
    tile = base["tile_size"] or input_size
    if not tile:
        raise ValueError(
            "the model declares no tile_size and its input size is unknown; give tile_size="
        )
    mpp = None if base["mpp"] is None else float(base["mpp"])
    tile, overlap = int(tile), int(base["overlap"] or 0)
    if tile < 1 or overlap < 0 or (mpp is not None and not mpp > 0):
        raise ValueError(
            f"invalid application geometry (mpp={mpp}, tile_size={tile}, overlap={overlap}) "
            "in the model's metadata['inference']"
        )
    return ApplicationSpec(mode, mpp, tile, overlap, input_size, source)
