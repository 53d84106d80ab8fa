"""Configuration of the BiomedParse v1 architecture (all sizes, from the released one to tiny)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BiomedParseConfig"]

_TUPLE_FIELDS = ("depths", "focal_levels", "focal_windows", "pixel_mean", "pixel_std")


@dataclass
class BiomedParseConfig:
    """Every hyper-parameter of the BiomedParse v1 (SEEM / X-Decoder) architecture.

    The defaults are the released configuration (``configs/biomedparse_inference.yaml`` of
    microsoft/BiomedParse); :meth:`biomedparse_v1` returns it explicitly. Official YAML names are
    given in brackets.

    Backbone (FocalNet, ``MODEL.BACKBONE.FOCAL``):
        embed_dim [EMBED_DIM], depths [DEPTHS], focal_levels [FOCAL_LEVELS], focal_windows
        [FOCAL_WINDOWS], mlp_ratio [MLP_RATIO], patch_size [PATCH_SIZE], use_conv_embed,
        use_postln, use_postln_in_modulation, use_layerscale (+ layerscale_value), scaling_modulator.
    Pixel decoder (``MODEL.ENCODER``): convs_dim [CONVS_DIM], mask_dim [MASK_DIM],
        encoder_layers [TRANSFORMER_ENC_LAYERS], norm_groups (GroupNorm groups). Its transformer
        takes heads / feed-forward width from the decoder, as the official code does.
    Text encoder (``MODEL.TEXT``): vocab_size, context_length, text_width [WIDTH], text_heads
        [HEADS], text_layers [LAYERS], dim_proj [MODEL.DIM_PROJ] (must equal hidden_dim).
    Decoder (``MODEL.DECODER``): hidden_dim, num_queries [NUM_OBJECT_QUERIES], nheads,
        dim_feedforward, decoder_layers = DEC_LAYERS - 1 (number of transformer layers),
        num_feature_levels (3), enforce_input_proj [ENFORCE_INPUT_PROJ] (1x1 convs from the
        pixel decoder to the decoder, also built when convs_dim != hidden_dim), spatial_memories [ATTENTION_ARCH.SPATIAL_MEMORIES] (only the size
        of an unused parameter, kept for checkpoint compatibility).
    Input: input_size (square side in pixels the model runs at; masks come out at
        input_size / 4), pixel_mean / pixel_std (RGB, 0-255 scale), size_divisibility.
    """

    # backbone
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    focal_levels: tuple[int, ...] = (4, 4, 4, 4)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    mlp_ratio: float = 4.0
    patch_size: int = 4
    use_conv_embed: bool = True
    use_postln: bool = True
    use_postln_in_modulation: bool = False
    use_layerscale: bool = True
    layerscale_value: float = 1e-4
    scaling_modulator: bool = True
    # pixel decoder
    convs_dim: int = 512
    mask_dim: int = 512
    encoder_layers: int = 6
    norm_groups: int = 32
    # text encoder
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    dim_proj: int = 512
    # decoder
    hidden_dim: int = 512
    num_queries: int = 101
    nheads: int = 8
    dim_feedforward: int = 2048
    decoder_layers: int = 9
    num_feature_levels: int = 3
    enforce_input_proj: bool = False
    spatial_memories: int = 32
    # input
    input_size: int = 1024
    pixel_mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, ...] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` with a hint when the hyper-parameters cannot form a model."""
        problems = []
        if not (len(self.depths) == len(self.focal_levels) == len(self.focal_windows) == 4):
            problems.append("depths, focal_levels and focal_windows need 4 entries (4 stages)")
        if self.dim_proj != self.hidden_dim:
            problems.append(
                f"dim_proj ({self.dim_proj}) must equal hidden_dim ({self.hidden_dim}): text "
                "tokens are concatenated with the object queries"
            )
        if self.hidden_dim % self.nheads or self.text_width % self.text_heads:
            problems.append("hidden_dim / text_width must be divisible by their number of heads")
        if self.convs_dim % self.norm_groups:
            problems.append(f"convs_dim ({self.convs_dim}) must be divisible by norm_groups")
        if self.hidden_dim % 2:
            problems.append("hidden_dim must be even (sine position embedding)")
        if self.input_size <= 0 or self.input_size % 32:
            problems.append(f"input_size ({self.input_size}) must be a positive multiple of 32")
        if self.num_feature_levels != 3:
            problems.append("num_feature_levels must be 3 (strides 32, 16, 8)")
        if self.decoder_layers < 1:
            problems.append("decoder_layers must be >= 1")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            problems.append("pixel_mean and pixel_std need 3 values (RGB)")
        if problems:
            raise ValueError("Invalid BiomedParseConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def mask_size(self) -> int:
        """Side of the mask logits, ``input_size // 4``."""
        return self.input_size // 4

    def describe(self) -> str:
        """One line naming the architecture size (used in error messages)."""
        return (
            f"FocalNet embed_dim={self.embed_dim} depths={list(self.depths)}, pixel decoder "
            f"{self.convs_dim} wide x {self.encoder_layers} encoder layers, text {self.text_width} "
            f"wide x {self.text_layers} layers, decoder {self.hidden_dim} wide x "
            f"{self.decoder_layers} layers with {self.num_queries} queries, input {self.input_size}"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def biomedparse_v1(cls) -> BiomedParseConfig:
        """The released BiomedParse v1 configuration (FocalNet-L, about 341 M parameters)."""
        return cls()

    @classmethod
    def tiny(cls, input_size: int = 256) -> BiomedParseConfig:
        """A very small random-init configuration (for tests and quick experiments)."""
        return cls(
            embed_dim=16,
            depths=(1, 1, 2, 1),
            convs_dim=32,
            mask_dim=32,
            encoder_layers=2,
            text_width=32,
            text_heads=4,
            text_layers=2,
            dim_proj=32,
            hidden_dim=32,
            num_queries=11,
            nheads=4,
            dim_feedforward=64,
            decoder_layers=3,
            input_size=input_size,
        )

    @classmethod
    def from_reference_json(cls, path: str | Path) -> BiomedParseConfig:
        """Read the ``config.json`` written next to an official reference fixture.

        The file holds the resolved official config sections (``backbone``, ``pixel_decoder``,
        ``text``, ``decoder``) with the official upper-case key names.
        """
        path = Path(path)
        try:
            ref = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read reference config {path}: {exc}") from exc
        try:
            bb, pd, tx, dec = ref["backbone"], ref["pixel_decoder"], ref["text"], ref["decoder"]
        except KeyError as exc:
            raise ValueError(
                f"{path} is not a reference config.json: missing section {exc}; expected the "
                "sections backbone, pixel_decoder, text and decoder"
            ) from exc
        nheads = dec["NHEADS"]
        dim_ff = dec["DIM_FEEDFORWARD"]
        input_size = ref.get("input_size", 1024)
        if isinstance(input_size, (list, tuple)):
            if len(set(input_size)) != 1:
                raise ValueError(f"Only square inputs are supported, got {input_size}")
            input_size = input_size[0]
        spatial = ref.get("attention_arch", {}).get("SPATIAL_MEMORIES", 32)
        return cls(
            embed_dim=bb["EMBED_DIM"],
            depths=tuple(bb["DEPTHS"]),
            focal_levels=tuple(bb["FOCAL_LEVELS"]),
            focal_windows=tuple(bb["FOCAL_WINDOWS"]),
            mlp_ratio=float(bb.get("MLP_RATIO", 4.0)),
            patch_size=bb.get("PATCH_SIZE", 4),
            use_conv_embed=bool(bb.get("USE_CONV_EMBED", True)),
            use_postln=bool(bb.get("USE_POSTLN", True)),
            use_postln_in_modulation=bool(bb.get("USE_POSTLN_IN_MODULATION", False)),
            use_layerscale=bool(bb.get("USE_LAYERSCALE", True)),
            scaling_modulator=bool(bb.get("SCALING_MODULATOR", True)),
            convs_dim=pd["CONVS_DIM"],
            mask_dim=pd["MASK_DIM"],
            encoder_layers=pd["TRANSFORMER_ENC_LAYERS"],
            norm_groups=pd.get("GROUPNORM_GROUPS", 32),
            vocab_size=tx.get("VOCAB_SIZE", 49408),
            context_length=tx.get("CONTEXT_LENGTH", 77),
            text_width=tx["WIDTH"],
            text_heads=tx["HEADS"],
            text_layers=tx["LAYERS"],
            dim_proj=tx.get("DIM_PROJ", ref.get("overrides", {}).get("MODEL.DIM_PROJ", 512)),
            hidden_dim=dec["HIDDEN_DIM"],
            num_queries=dec["NUM_OBJECT_QUERIES"],
            nheads=nheads,
            dim_feedforward=dim_ff,
            decoder_layers=dec["DEC_LAYERS"] - 1,
            enforce_input_proj=bool(dec.get("ENFORCE_INPUT_PROJ", False)),
            spatial_memories=spatial,
            input_size=int(input_size),
            pixel_mean=tuple(ref.get("pixel_mean", (123.675, 116.28, 103.53))),
            pixel_std=tuple(ref.get("pixel_std", (58.395, 57.12, 57.375))),
            size_divisibility=dec.get("SIZE_DIVISIBILITY", 32) or 32,
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BiomedParseConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"Unknown BiomedParseConfig fields {unknown}; this checkpoint may come from a "
                "newer napari-biomedparse: upgrade the package"
            )
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BiomedParseConfig:
        return cls.from_dict(json.loads(text))
