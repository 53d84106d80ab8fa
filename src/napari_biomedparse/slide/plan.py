"""The plan of a slide run: every decision made before any work, as one frozen value.

:func:`plan_slide` is pure (no model call, no store): from the image's geometry and the
caller's settings it resolves the defaults (one place: :func:`resolve_geometry`), the grid,
the prompts, the batch size, the post-processing parameters and the *resume key*
(:attr:`SlidePlan.params`, stored in the run and compared on resume). Once the tissue mask
is known, :meth:`SlidePlan.with_tissue` adds the selected tiles, their fixed partition into
batches (a resumed run feeds the model exactly the same batches) and the fill value.
Blocks: ``CHUNK`` px output chunks, also the blocks of the instance stage.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# the shared post-processing defaults (minimum area, splitting radius, tissue mask)
from napari_biomedparse.inference.postprocess import (
    MIN_AREA_UM2,
    TISSUE_MASK,
    instance_defaults,
    min_area_px,
)
from napari_biomedparse.inference.tiled import rescale_factor
from napari_biomedparse.inference.validate import (
    check_mpp,
    check_tile_read,
    check_work,
)

from .blockwise import BlockLayout
from .readers import SlideImage, check_processable
from .store import FORMAT_VERSION
from .tiling import TileGrid

__all__ = ["SlidePlan", "plan_slide", "resolve_geometry", "resolve_prompts", "source_identity"]

CHUNK = 1024  # output chunk / instance block edge (output pixels)
HALO_UM = 32.0  # instance halo in microns (grows when an object needs more)
MAX_HALO_UM = 512.0
MIN_TISSUE_FRACTION = 0.01


def resolve_geometry(modality, mpp, tile_size, overlap, image_mpp, model=None):
    """The application defaults, resolved in this one place: ``(target_mpp, tile_size,
    overlap, native, notes)``; ``native`` = processed at the image's own resolution. The
    defaults are the model's first (``model``: a model / predictor, its
    ``metadata["inference"]``), the modality's second
    (:func:`~napari_biomedparse.inference.application.application_defaults`).
    Raises ValueError when a physical resolution is asked of an image without one."""
    from napari_biomedparse.inference.application import application_defaults

    spec = application_defaults(model if model is not None else {}, modality)
    d = {"mpp": spec.mpp, "tile_size": spec.tile_size, "overlap": spec.overlap}
    notes: list[str] = []
    native = mpp is None and d["mpp"] is None
    if image_mpp is None and native:
        # a modality processed at its own resolution needs no physical pixel size
        image_mpp = 1.0
        notes.append(
            "the image has no pixel size; processed at its own resolution "
            "(areas in um^2 assume 1 um/px)"
        )
    if image_mpp is None:
        raise ValueError(
            "the image has no pixel size (microns per pixel) in its metadata. Give it: "
            "process_slide(..., slide_mpp=0.25) or on the command line --slide-mpp 0.25."
        )
    target = float(image_mpp if native else (mpp if mpp is not None else d["mpp"]))
    if rescale_factor(image_mpp, target) is None:  # within 1 %: the image's own pixels, as
        target = float(image_mpp)  # Predictor.segment / recognize do (one rule, inference.tiled)
    # bounded before any work (inference/validate.py): finite, in range, not absurdly fine
    image_mpp = check_mpp(image_mpp, name="the image's pixel size (slide_mpp)")
    target = check_mpp(target, name="mpp", source_mpp=image_mpp)
    T = int(tile_size if tile_size is not None else d["tile_size"])
    O_ = int(overlap if overlap is not None else d["overlap"])
    return float(image_mpp), target, T, O_, native, notes


def resolve_prompts(prompts, modality: str, predictor) -> list[str]:
    """``prompts`` cleaned (:func:`~napari_biomedparse.inference.prompts.parse_prompts`), or
    with None every target of ``modality`` the model knows."""
    if prompts is not None:
        from napari_biomedparse.inference.prompts import parse_prompts

        return parse_prompts(prompts)
    from napari_biomedparse.inference.modalities import targets_for

    model = getattr(predictor, "model", None)
    return list(targets_for(modality, model=model if model is not None else predictor))


def source_identity(image: SlideImage) -> dict:
    """What identifies the slide in the resume key: the name and the identity key of
    :func:`.identity.source_identity` (shape, channels, dtype, levels, OpenSlide's quick
    hash, file size, a content hash of what is read)."""
    from .identity import source_identity as identity

    key, _ = identity(image)
    return {"name": Path(image.path).name if image.path else "array", **key}


@dataclass(frozen=True)
class SlidePlan:
    """Every decision of one run. Lengths in output pixels (at ``grid.target_mpp``)."""

    source: dict
    grid: TileGrid
    prompts: tuple[str, ...]
    modality: str
    recognize: bool
    use_tissue_mask: bool
    batch_size: int
    input_size: int
    model: str  # the predictor's fingerprint
    instances: str
    min_area_um2: float
    physical: bool
    readers: int = 2
    notes: tuple[str, ...] = ()
    # known once the tissue mask is (with_tissue)
    selected: tuple[int, ...] = field(default=(), repr=False)
    batches: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    fill: int = 255
    intensity: dict | None = None  # the slide's preset statistics (tiling.slide_intensity_stats)

    # the resume key ---------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "slide_mpp": float(self.grid.slide_mpp),
            "mpp": float(self.grid.target_mpp),
            "tile_size": self.grid.tile_size,
            "overlap": self.grid.overlap,
            "batch_size": self.batch_size,
            "prompts": list(self.prompts),
            "modality": self.modality,
            "recognize": self.recognize,
            "tissue_mask": self.use_tissue_mask,
            "model": self.model,
            "input_size": self.input_size,
            "instances": self.instances,
            "min_area_um2": float(self.min_area_um2),
        }

    # derived geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def layout(self) -> BlockLayout:
        return BlockLayout(tuple(self.shape), CHUNK)

    @property
    def n_blocks(self) -> int:
        return self.layout.n_blocks

    @property
    def min_area(self) -> int:
        return min_area_px(self.grid.target_mpp, self.min_area_um2)

    @property
    def halo(self) -> int:
        return max(8, int(round(HALO_UM / self.grid.target_mpp)))

    @property
    def max_halo(self) -> int:
        return max(self.halo, int(round(MAX_HALO_UM / self.grid.target_mpp)))

    @property
    def split(self) -> dict | None:
        """The instance step's ``split_instances`` arguments in output pixels, those of
        ``Predictor.recognize`` (:func:`~napari_biomedparse.inference.postprocess.
        instance_defaults`); without a pixel size the radius is estimated from the mask.
        None = connected components (``instances="components"``)."""
        if self.instances != "split":
            return None
        if self.physical:
            return instance_defaults(self.grid.target_mpp, self.min_area_um2)
        return {"min_size": self.min_area}

    def with_tissue(self, tissue, intensity: dict | None) -> SlidePlan:
        """The plan with its tiles: those with at least 1 % tissue (all without the mask),
        cut into fixed batches of ``batch_size``; background fill white for brightfield;
        ``intensity``: the slide's statistics for the modality preset
        (:func:`.tiling.slide_intensity_stats`)."""
        g, s = self.grid, self.grid.scale
        selected = []
        for k in range(g.n_tiles):
            y0, x0, y1, x1 = g.extent(k)
            if (
                not self.use_tissue_mask
                or tissue.region_fraction(y0 * s, x0 * s, y1 * s, x1 * s) >= MIN_TISSUE_FRACTION
            ):
                selected.append(k)
        bs = self.batch_size
        batches = tuple(tuple(selected[i : i + bs]) for i in range(0, len(selected), bs))
        return dataclasses.replace(
            self,
            selected=tuple(selected),
            batches=batches,
            fill=255 if tissue.brightfield else 0,
            intensity=intensity,
        )


def plan_slide(
    image: SlideImage,
    predictor,
    *,
    fingerprint: str,
    prompts=None,
    recognize: bool = True,
    modality: str = "pathology",
    mpp: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tissue_mask: bool = TISSUE_MASK,
    instances: str = "split",
    min_area_um2: float = MIN_AREA_UM2,
    readers: int = 2,
) -> SlidePlan:
    """The plan of a run of ``predictor`` on ``image`` (see the module doc). ``image.mpp``
    None: processed at the image's own resolution when the modality's default is native,
    else a ValueError saying how to give the pixel size."""
    try:
        slide_mpp, target, T, O_, native, notes = resolve_geometry(
            modality, mpp, tile_size, overlap, image.mpp, model=predictor
        )
    except ValueError as exc:
        if image.mpp is None and "pixel size" in str(exc):
            raise ValueError(f"{image.path or 'the image'}: {exc}") from None
        raise
    check_processable(image)  # the pipeline's input rules (readers.check_processable)
    grid = TileGrid(image.shape, slide_mpp, target, T, O_)
    check_work(grid.n_tiles, what=f"{image.path or 'the image'} at {target:g} um/px")
    check_tile_read(T, grid.scale, image.downsamples[image.level_for_downsample(grid.scale)])
    H, W = grid.shape
    if H < T and W < T:
        msg = (
            f"the slide ({H} x {W} px at {target:g} um/px) is smaller than one tile "
            f"({T} px); it is processed as one padded tile"
        )
        warnings.warn(msg, stacklevel=4)  # plan_slide <- process_slide <- lock wrapper <- caller
        notes.append(msg)
    names = resolve_prompts(prompts, modality, predictor)
    if batch_size is None:
        dev = str(getattr(predictor, "device", "cpu"))
        batch_size = 16 if dev.startswith("cuda") else 4
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if instances not in ("split", "components"):
        raise ValueError(f"instances must be 'split' or 'components', got {instances!r}")
    return SlidePlan(
        source=source_identity(image),
        grid=grid,
        prompts=tuple(names),
        modality=str(modality),
        recognize=bool(recognize),
        use_tissue_mask=bool(tissue_mask),
        batch_size=int(batch_size),
        input_size=int(predictor.input_size),
        model=fingerprint,
        instances=instances,
        min_area_um2=float(min_area_um2),
        physical=image.mpp is not None,
        readers=int(readers),
        notes=tuple(notes),
    )
