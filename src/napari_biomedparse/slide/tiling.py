"""Tile grid at a target pixel size, and tile reading.

Geometry (all in *output pixels*, i.e. pixels at the target resolution ``target_mpp``):

- ``scale = target_mpp / slide_mpp`` level-0 pixels per output pixel; the output grid of a
  level-0 image ``(H0, W0)`` is ``(round(H0 / scale), round(W0 / scale))``.
- Tile ``(i, j)`` of edge ``tile_size`` T with ``overlap`` O (even) and stride ``S = T - O``
  covers output rows ``[i*S - O/2, i*S - O/2 + T)`` (same for columns): its *core*
  ``[i*S, (i+1)*S)`` plus an O/2 margin on each side. Cores tile the image exactly; two
  neighbouring tiles overlap on a band O wide centred on their common core border.
- Blending weight of a tile (:func:`napari_biomedparse.inference.tiled.blend_weights`): ``w(y, x) = r(y) r(x)``, ``r(k) = min(1, (min(k, T-1-k) + 0.5) / O)``;
  across an overlap band the two neighbours' weights sum to 1 (a linear cross-fade), and the
  blended map is ``sum_t w_t p_t / sum_t w_t`` over the tiles covering a pixel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from napari_biomedparse.inference.application import MODALITY_DEFAULTS, modality_key

from .readers import SlideImage

__all__ = ["TileGrid", "DEFAULTS", "read_tile", "to_rgb_uint8"]

# Per-modality defaults (target um/px, None = the slide's own resolution; tile edge and
# overlap in output pixels): one table, in inference/application.py, where a model's own
# defaults take precedence (application_defaults).
DEFAULTS: dict[str, dict] = MODALITY_DEFAULTS


def defaults_for(modality: str | None) -> dict:
    """Default ``mpp`` (None = native), ``tile_size`` and ``overlap`` for a modality
    (without a model: :func:`~napari_biomedparse.inference.application.application_defaults`
    gives a model's)."""
    return dict(DEFAULTS[modality_key(modality)])


@dataclass(frozen=True)
class TileGrid:
    """The tile layout of one slide at one target resolution.

    ``shape`` = output grid (H, W) at ``target_mpp``; ``scale`` = level-0 px per output px.
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
        inside the slide (level-0 coordinates never leave ``[0, H0] x [0, W0]`` by more
        than half an output pixel, and exports clamp them to it)."""
        s = self.scale
        return (
            max(1, int(math.floor(self.level0_shape[0] / s + 0.5))),
            max(1, int(math.floor(self.level0_shape[1] / s + 0.5))),
        )

    @property
    def grid_shape(self) -> tuple[int, int]:
        H, W = self.shape
        return int(math.ceil(H / self.stride)), int(math.ceil(W / self.stride))

    @property
    def n_tiles(self) -> int:
        ny, nx = self.grid_shape
        return ny * nx

    def index(self, k: int) -> tuple[int, int]:
        return divmod(int(k), self.grid_shape[1])

    def extent(self, k: int) -> tuple[int, int, int, int]:
        """Output-pixel extent ``(y0, x0, y1, x1)`` of tile ``k`` (may extend past the image)."""
        i, j = self.index(k)
        h = self.overlap // 2
        y0, x0 = i * self.stride - h, j * self.stride - h
        return y0, x0, y0 + self.tile_size, x0 + self.tile_size

    def tiles_in(self, y0: int, x0: int, y1: int, x1: int) -> list[int]:
        """Indices of the tiles whose extent intersects output rectangle [y0,y1) x [x0,x1)."""
        ny, nx = self.grid_shape
        h, S, T = self.overlap // 2, self.stride, self.tile_size
        i0 = max(0, int(math.floor((y0 + h - T) / S)) + 1)
        i1 = min(ny - 1, int(math.floor((y1 - 1 + h) / S)))
        j0 = max(0, int(math.floor((x0 + h - T) / S)) + 1)
        j1 = min(nx - 1, int(math.floor((x1 - 1 + h) / S)))
        return [i * nx + j for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level0_shape"] = list(self.level0_shape)
        return d


def to_rgb_uint8(tile: np.ndarray, intensity_range: tuple[float, float] | None) -> np.ndarray:
    """Convert a tile ``(h, w, C)`` of any dtype to RGB uint8 ``(h, w, 3)``.

    uint8 RGB passes through; other dtypes are scaled linearly from ``intensity_range``
    (lo, hi) to 0..255; one channel is repeated, more than three are cut to the first three.
    """
    if tile.dtype != np.uint8 or intensity_range is not None:
        lo, hi = intensity_range if intensity_range is not None else (0.0, 255.0)
        t = (tile.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))
        t = np.nan_to_num(t, nan=0.0, posinf=255.0, neginf=0.0)  # NaN / inf pixels: defined
        tile = np.clip(np.rint(t), 0, 255).astype(np.uint8)
    c = tile.shape[2]
    if c == 1:
        tile = np.repeat(tile, 3, axis=2)
    elif c == 2:
        tile = np.concatenate([tile, tile[..., :1]], axis=2)
    elif c > 3:
        tile = tile[..., :3]
    return np.ascontiguousarray(tile)


def read_tile(
    image: SlideImage,
    grid: TileGrid,
    k: int,
    out_size: int,
    *,
    fill: int = 255,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Read tile ``k`` at the target resolution and resize it to ``(out_size, out_size, 3)``.

    The tile is read from the pyramid level closest to (not coarser than) the target
    resolution and resampled (PIL bilinear with antialiasing) straight to ``out_size``
    (the model input size). Parts outside the slide are filled with ``fill``.
    Returns RGB uint8 ``(out_size, out_size, 3)``.
    """
    from PIL import Image

    y0, x0, y1, x1 = grid.extent(k)
    s = grid.scale
    lv = image.level_for_downsample(s)
    d = image.downsamples[lv]
    f = s / d  # level pixels per output pixel
    ly0, lx0 = int(math.floor(y0 * f + 1e-6)), int(math.floor(x0 * f + 1e-6))
    lh = max(1, int(round(grid.tile_size * f)))
    region = image.read_region(ly0, lx0, lh, lh, level=lv, fill=fill)
    rgb = to_rgb_uint8(region, intensity_range)
    if rgb.shape[0] != out_size or rgb.shape[1] != out_size:
        rgb = np.asarray(
            Image.fromarray(rgb).resize((out_size, out_size), Image.Resampling.BILINEAR)
        )
    return rgb
