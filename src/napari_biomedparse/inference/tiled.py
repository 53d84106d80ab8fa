"""Tiled prediction at the image's own resolution, for models trained on tiles.

BiomedParse v1 is applied to a whole image resized to its input size (1024 px), which is how
it was trained. A model trained on tiles at a fixed pixel size (the bundled default model: 256
px tiles at ~0.5 um/px) must instead see the image at that pixel size: resizing a 1500 x 1500
H&E field to 256 px shrinks its nuclei about 6 times. Such a model says so in its metadata::

    model.metadata["inference"] = {"mode": "tiled", "tile_size": 256, "overlap": 32, "mpp": 0.5}

(absent, or ``"mode": "whole"``: the official whole-image semantics; ``tile_size`` is the
tile edge at ``mpp``, the pixel size of the training images in microns; each tile is resized
to the model input, which ``predict_batch`` takes). :func:`inference_spec` reads it;
:mod:`.tasks` (``segment`` / ``detect`` / ``recognize``) then runs :func:`predict_tiled` on the
preprocessed RGB image instead of padding it to a square and resizing it, with the geometry of
``application_defaults`` (model first, modality second), as the slide engine does.

One tile geometry, :class:`TileGrid`, for arrays and slides: :func:`predict_tiled` reads the
tiles of an array with :func:`read_tile` exactly as ``slide.tiling.read_tile`` reads them from
a slide (tiles inside the image, the source window of a tile resized straight to the model
input when the image's pixel size differs from the model's), and blends them with
:func:`blend_weights` in tile order as ``slide.stitching`` does, so that ``recognize`` on an
array and ``process_slide`` on it give the same objects (``tests/test_entry_points.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .progress import check_cancel, report

__all__ = [
    "TileGrid",
    "background_fill",
    "blend_weights",
    "crop_filled",
    "read_tile",
    "resize_tile",
    "inference_spec",
    "predict_tiled",
    "rescale_factor",
    "resize_probs",
    "tile_origins",
    "tile_probabilities",
]

#: Overlap (px) of :func:`predict_tiled` when a model's metadata does not give one.
DEFAULT_OVERLAP = 32


def inference_spec(model_or_metadata) -> dict | None:
    """The tiled-inference settings a model declares, or None for whole-image inference.

    Args:
        model_or_metadata: a model (its ``metadata`` is read) or a metadata dict.

    Returns:
        None when ``metadata["inference"]`` is absent / None or its ``mode`` is "whole";
        else ``{"mode": "tiled", "tile_size": int | None (None: the model's input size),
        "overlap": int, "mpp": float | None}``.

    Raises:
        ValueError: an unknown ``mode``.
    """
    meta = model_or_metadata
    if not isinstance(meta, Mapping):
        meta = getattr(model_or_metadata, "metadata", None)
    if not isinstance(meta, Mapping):
        return None
    spec = meta.get("inference")
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"metadata['inference'] must be a dict; got {spec!r}")
    mode = str(spec.get("mode", "whole")).lower()
    if mode == "whole":
        return None
    if mode != "tiled":
        raise ValueError(f"unknown inference mode {mode!r} in the model's metadata: whole, tiled")
    tile = spec.get("tile_size")
    overlap = spec.get("overlap")
    mpp = spec.get("mpp")
    return {
        "mode": "tiled",
        "tile_size": int(tile) if tile else None,
        "overlap": DEFAULT_OVERLAP if overlap is None else int(overlap),
        "mpp": float(mpp) if mpp else None,
    }


def tile_origins(shape: tuple[int, int], tile: int, overlap: int = 32) -> list[tuple[int, int]]:
    """Origins (y, x) of the :class:`TileGrid` tiles of side ``tile`` that cover an (H, W)
    image with ``overlap`` (made even and below ``tile / 2``, :func:`grid_overlap`): inside
    the image, the last tile of a row / column ending at its edge."""
    grid = TileGrid(tuple(int(v) for v in shape), 1.0, 1.0, int(tile), grid_overlap(tile, overlap))
    return [grid.extent(k)[:2] for k in range(grid.n_tiles)]


@dataclass(frozen=True)
class TileGrid:
    """The one tile geometry of prediction: in-memory images (:func:`predict_tiled`), whole
    slides (``slide.tiling.read_tile``, ``slide.stitching``) and training's evaluation (which
    calls :func:`predict_tiled`).

    All lengths in *output pixels*, i.e. pixels at the target resolution ``target_mpp``:

    - ``scale = target_mpp / slide_mpp`` source (level-0) pixels per output pixel; the output
      grid of a source image ``(H0, W0)`` is ``(round(H0 / scale), round(W0 / scale))``.
    - Tiles of edge ``tile_size`` T with ``overlap`` O (even) and stride ``S = T - O``: row
      ``i`` of tiles starts at output row ``min(i * S, H - T)`` (columns alike), so every
      tile lies inside the image (the last row / column of tiles ends at its edge, as
      :func:`tile_origins`) and the model never sees an invented margin; only an image
      smaller than a tile is padded (bottom / right, with :func:`background_fill`). Tiles
      per axis: 1 when ``H <= T``, else ``1 + ceil((H - T) / S)``.
    - Blending weight of a tile (:func:`blend_weights`): ``w(y, x) = r(y) r(x)``,
      ``r(k) = min(1, (min(k, T-1-k) + 0.5) / O)``; the blended map is
      ``sum_t w_t p_t / sum_t w_t`` over the tiles covering a pixel, summed in tile order.
    """

    level0_shape: tuple[int, int]
    slide_mpp: float
    target_mpp: float
    tile_size: int
    overlap: int

    def __post_init__(self):
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 px, got {self.tile_size}")
        if self.overlap < 0 or self.overlap % 2 or self.overlap >= self.tile_size // 2:
            raise ValueError(
                f"overlap must be an even number of pixels in [0, tile_size/2); got "
                f"{self.overlap} for tile_size {self.tile_size}"
            )

    @property
    def scale(self) -> float:
        return self.target_mpp / self.slide_mpp

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """Output grid ``(H, W)``: ``round(H0 / scale)``, so every output pixel's centre lies
        inside the source (source coordinates never leave ``[0, H0] x [0, W0]`` by more
        than half an output pixel, and exports clamp them to it)."""
        s = self.scale
        return (
            max(1, int(math.floor(self.level0_shape[0] / s + 0.5))),
            max(1, int(math.floor(self.level0_shape[1] / s + 0.5))),
        )

    def _count(self, n: int) -> int:
        T, S = self.tile_size, self.stride
        return 1 if n <= T else 1 + int(math.ceil((n - T) / S))

    def _starts(self, n: int) -> np.ndarray:
        return np.minimum(np.arange(self._count(n)) * self.stride, max(n - self.tile_size, 0))

    @property
    def grid_shape(self) -> tuple[int, int]:
        H, W = self.shape
        return self._count(H), self._count(W)

    @property
    def n_tiles(self) -> int:
        ny, nx = self.grid_shape
        return ny * nx

    def index(self, k: int) -> tuple[int, int]:
        return divmod(int(k), self.grid_shape[1])

    def extent(self, k: int) -> tuple[int, int, int, int]:
        """Output-pixel extent ``(y0, x0, y1, x1)`` of tile ``k`` (past the image's bottom /
        right edge only when the image is smaller than a tile)."""
        i, j = self.index(k)
        H, W = self.shape
        T = self.tile_size
        y0 = min(i * self.stride, max(H - T, 0))
        x0 = min(j * self.stride, max(W - T, 0))
        return y0, x0, y0 + T, x0 + T

    def tiles_in(self, y0: int, x0: int, y1: int, x1: int) -> list[int]:
        """Indices of the tiles whose extent intersects output rectangle [y0,y1) x [x0,x1)."""
        H, W = self.shape
        T = self.tile_size
        ys, xs = self._starts(H), self._starts(W)
        rows = np.flatnonzero((ys < y1) & (ys + T > y0))
        cols = np.flatnonzero((xs < x1) & (xs + T > x0))
        nx = len(xs)
        return [int(i) * nx + int(j) for i in rows for j in cols]

    def source_window(self, k: int, downsample: float = 1.0) -> tuple[int, int, int]:
        """``(y0, x0, side)`` of tile ``k`` in pixels of a source level of ``downsample``
        (level-0 px per level px): the square region :func:`read_tile` reads."""
        y0, x0, _, _ = self.extent(k)
        f = self.scale / downsample  # level pixels per output pixel
        ly0, lx0 = int(math.floor(y0 * f + 1e-6)), int(math.floor(x0 * f + 1e-6))
        return ly0, lx0, max(1, int(round(self.tile_size * f)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level0_shape"] = list(self.level0_shape)
        return d


def background_fill(rgb: np.ndarray) -> int:
    """The value of pixels outside an image (tile margins past its edge): 255 (white) for a
    light background (brightfield: median grey above half the range), else 0. The rule of the
    slide engine's tissue mask (``slide.tissue.compute_tissue_mask``, ``brightfield``)."""
    rgb = np.asarray(rgb)
    step = max(1, int(max(rgb.shape[:2]) // 512))  # a subsample is enough for a median
    grey = rgb[::step, ::step, :3].astype(np.float32).mean(axis=-1) / 255.0
    return 255 if grey.size and float(np.median(grey)) > 0.5 else 0


def resize_tile(rgb: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 tile ``(h, w, 3)`` resized to the model input ``(size, size, 3)`` (PIL
    bilinear with antialiasing; unchanged when it has that size already)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def read_tile(read_region, grid: TileGrid, k: int, out_size: int, downsample: float = 1.0):
    """Tile ``k`` of ``grid`` as model input ``(out_size, out_size, 3)`` uint8.

    ``read_region(y0, x0, h, w)``: RGB uint8 ``(h, w, 3)`` of a source level of
    ``downsample`` (level-0 px per level px), background-filled outside the image. The tile's
    square window (:meth:`TileGrid.source_window`) is read and resized straight to
    ``out_size`` (:func:`resize_tile`)."""
    ly0, lx0, side = grid.source_window(k, downsample)
    return resize_tile(np.asarray(read_region(ly0, lx0, side, side)), out_size)


def crop_filled(rgb: np.ndarray, y0: int, x0: int, h: int, w: int, fill: int) -> np.ndarray:
    """``rgb[y0:y0+h, x0:x0+w]`` with the parts outside the image set to ``fill``."""
    out = np.full((h, w, rgb.shape[2]), fill, dtype=rgb.dtype)
    ys, ye = max(y0, 0), min(y0 + h, rgb.shape[0])
    xs, xe = max(x0, 0), min(x0 + w, rgb.shape[1])
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = rgb[ys:ye, xs:xe]
    return out


def blend_weights(tile_size: int, overlap: int) -> np.ndarray:
    """Blending weights ``(T, T)`` float32 in (0, 1], falling off linearly over ``overlap``
    towards the tile edges (1 everywhere when ``overlap`` <= 0)."""
    k = np.arange(tile_size, dtype=np.float64)
    d = np.minimum(k, tile_size - 1 - k) + 0.5
    r = np.ones(tile_size) if overlap <= 0 else np.minimum(1.0, d / overlap)
    return np.outer(r, r).astype(np.float32)


def grid_overlap(tile_size: int, overlap: int) -> int:
    """``overlap`` made valid for a :class:`TileGrid` of ``tile_size``: even, below half a tile."""
    return max(0, min(int(overlap), tile_size // 2 - 1)) // 2 * 2


def tile_probabilities(predictor, tiles: np.ndarray, prompts, *, ink: bool = False, **kw):
    """The probabilities of a batch of tiles: ``predictor.predict_batch(tiles, prompts, **kw)``
    then, with ``ink``, 0 on the tissue-marking ink of each tile (:func:`.ink.suppress_ink`).
    The one per-tile step of :func:`predict_tiled` (``segment`` / ``detect`` / ``recognize`` in
    tiled mode) and of the slide engine's tile stage (``slide.stages.run_tiles``); callers set
    ``ink`` from the modality preset (:func:`.preprocessing.masks_ink`: pathology).

    Args:
        tiles: (B, S, S, 3) uint8 RGB at the model input size S.
        ink: mask ink (H&E).
        kw: passed to ``predict_batch`` (e.g. ``joint=``).

    Returns:
        what ``predict_batch`` returns, as numpy: float32 (B, P, S, S), or uint8 round(255 p)
        (B, P, T, T) at the tile size for a device-side resizing predictor.
    """
    out = predictor.predict_batch(tiles, prompts, **kw)
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if ink:
        from .ink import suppress_ink

        out = suppress_ink(out, tiles)
    return out


def predict_tiled(
    predictor,
    rgb: np.ndarray,
    prompts: Sequence[str],
    *,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    joint: bool = False,
    image_mpp: float | None = None,
    target_mpp: float | None = None,
    fill: int | None = None,
    ink: bool = False,
    progress=None,
    cancel=None,
) -> np.ndarray:
    """Sliding-window prediction on the :class:`TileGrid` of the image, exactly as the slide
    engine tiles a slide (same tiles, same resizing, same blending; the slide engine stores
    probabilities as uint8, this keeps float32).

    Args:
        predictor: an object with ``input_size`` and ``predict_batch(tiles uint8 (B, S, S, 3),
            prompts, joint=...) -> float32 (B, P, S, S)``
            (:class:`~napari_biomedparse.inference.predictor.Predictor`).
        rgb: (H, W, 3) uint8.
        prompts: P prompts.
        tile_size: tile side T in pixels at ``target_mpp`` (default: ``predictor.input_size``);
            each tile is resized to the input size S.
        overlap: overlap of neighbouring tiles in px (made even and below T/2); the blending
            weights fall off linearly over this many px towards each tile edge.
        batch_size: tiles per ``predict_batch`` call.
        joint: passed to ``predict_batch`` (coupled prompts, the official multi-prompt call).
        image_mpp, target_mpp: the image's pixel size and the one to predict at (both given
            and different: the tiles are read at ``target_mpp`` and the probabilities resized
            back to the image, :func:`resize_probs`); else the image's own resolution.
        fill: the value of tile pixels outside the image (default :func:`background_fill`).
        ink: probabilities 0 on tissue-marking ink (H&E; :func:`tile_probabilities`). The
            tasks pass the modality preset's choice (:func:`.preprocessing.masks_ink`).
        progress: ``progress(done_tiles, n_tiles, "tiles k/N")`` after each batch (:mod:`.progress`).
        cancel: checked before each batch; raises :class:`~.progress.Cancelled`.

    Returns:
        float32 (P, H, W) probabilities: the weighted mean of the overlapping tiles.
    """
    prompts = list(prompts)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3); got {rgb.dtype} {rgb.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    s = int(predictor.input_size)
    t = int(tile_size or s)
    h, w = rgb.shape[:2]
    mpp0 = float(image_mpp) if image_mpp and target_mpp else 1.0
    mpp1 = float(target_mpp) if image_mpp and target_mpp else 1.0
    grid = TileGrid((h, w), mpp0, mpp1, t, grid_overlap(t, overlap))
    fill = background_fill(rgb) if fill is None else int(fill)
    H, W = grid.shape
    weight = blend_weights(t, grid.overlap)
    acc = np.zeros((len(prompts), H, W), np.float32)
    norm = np.zeros((H, W), np.float32)

    def read(y0, x0, hh, ww):
        return crop_filled(rgb, y0, x0, hh, ww, fill)

    n = grid.n_tiles
    for i in range(0, n, batch_size):
        check_cancel(cancel)
        ks = range(i, min(i + batch_size, n))
        tiles = np.stack([read_tile(read, grid, k, s) for k in ks])
        prob = tile_probabilities(predictor, tiles, prompts, ink=ink, joint=joint)
        prob = np.asarray(prob, np.float32)
        prob = resize_probs(prob, (t, t))
        for b, k in enumerate(ks):
            y0, x0, y1, x1 = grid.extent(k)
            a, bb, c, d = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
            ww = weight[a - y0 : bb - y0, c - x0 : d - x0]
            acc[:, a:bb, c:d] += ww * prob[b][:, a - y0 : bb - y0, c - x0 : d - x0]
            norm[a:bb, c:d] += ww
        done = i + len(ks)
        report(progress, done, n, f"tiles {done}/{n}")
    out = acc / norm
    return np.ascontiguousarray(resize_probs(out, (h, w)) if (H, W) != (h, w) else out)


def rescale_factor(image_mpp: float | None, model_mpp: float | None) -> float | None:
    """Zoom that brings an image of ``image_mpp`` um/px to ``model_mpp`` (None: no rescale,
    when either is unknown or they differ by less than 1 %)."""
    if not image_mpp or not model_mpp:
        return None
    f = float(image_mpp) / float(model_mpp)
    return None if abs(f - 1.0) < 0.01 else f


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize probability maps ``(..., h, w)`` to ``(..., H, W)`` float32: bilinear (pixel
    centres aligned), antialiased when shrinking. The one probability resize of the package
    (tasks at another pixel size, slide tiles from the model input to the tile size; the
    device path of ``inference.fast.FastPredictor`` does the same with torch on the device)."""
    probs = np.asarray(probs, np.float32)
    shape = tuple(int(v) for v in shape)
    if probs.shape[-2:] == shape:
        return probs
    import torch

    lead = probs.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(probs.reshape(1, -1, *probs.shape[-2:])))
    shrink = shape[0] < probs.shape[-2] or shape[1] < probs.shape[-1]
    r = torch.nn.functional.interpolate(
        t, size=shape, mode="bilinear", align_corners=False, antialias=shrink
    )
    return r.numpy().reshape(*lead, *shape)
