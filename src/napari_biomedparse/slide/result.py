"""The result of a slide run: :class:`SlideResult`, a finished zarr store opened lazily."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import open_group, partial_path, read_meta

__all__ = ["SlideResult"]


@dataclass
class SlideResult:
    """A finished slide run (a zarr store directory).

    ``table``: one row per object, level-0 pixel coordinates (pixel centres at integers;
    bbox as [y0, y1) x [x0, x1) in level-0 pixels), ``area`` in level-0 pixels,
    ``area_um2`` in square microns, ``score`` = mean probability of the object's class over
    its pixels (the schema of :mod:`napari_biomedparse.inference.objects`; no per-object
    p-value: the existence test is image-level and does not tile, see ``stitching`` for the
    class rule). ``labels`` / ``classes``: multiscale lists of lazy dask
    arrays ``(H_l, W_l)`` at the target resolution subsampled by ``2**l``; to overlay them on
    the slide in napari use ``scale = (result.scale * 2**l,) * 2`` in level-0 pixels.
    """

    path: Path
    meta: dict = field(repr=False)

    @classmethod
    def open(cls, path) -> SlideResult:
        """Reopen an earlier run's result directory."""
        path = Path(path)
        if not path.exists():
            part = partial_path(path)
            hint = (
                f" An unfinished run exists at {part}; rerun to resume it." if part.exists() else ""
            )
            raise FileNotFoundError(f"no slide result at {path}.{hint}")
        try:
            meta = read_meta(open_group(path, "r"))
        except Exception as exc:
            raise ValueError(f"{path} is not a slide result store ({exc})") from exc
        if meta.get("status") != "complete":
            raise ValueError(f"{path} is not a complete slide result (status {meta.get('status')})")
        return cls(path=path, meta=meta)

    # metadata -----------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return dict(self.meta.get("params", {}))

    @property
    def summary(self) -> dict:
        return dict(self.meta.get("summary", {}))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.meta.get("class_colors", [])]

    @property
    def scale(self) -> float:
        """Level-0 slide pixels per output pixel."""
        return float(self.meta["scale"])

    @property
    def mpp(self) -> float:
        """Microns per output pixel (the target resolution)."""
        return float(self.params["mpp"])

    @property
    def offset(self) -> tuple[int, int]:
        return tuple(self.meta.get("offset", (0, 0)))

    # data ---------------------------------------------------------------------------------
    def _multiscale(self, name):
        import dask.array as da

        g = open_group(self.path, "r")
        if name not in g:
            return []
        out, lvl = [], 0
        while f"{lvl}" in g[name]:
            out.append(da.from_zarr(g[name][f"{lvl}"]))
            lvl += 1
        return out

    @property
    def labels(self) -> list:
        return self._multiscale("labels")

    @property
    def classes(self) -> list:
        return self._multiscale("classes")

    @property
    def probs(self):
        """Blended probabilities, dask ``(P, H, W)`` uint8 (x 255) at the target mpp."""
        import dask.array as da

        return da.from_zarr(open_group(self.path, "r")["probs/0"])

    @property
    def tissue_mask(self) -> np.ndarray:
        return np.asarray(open_group(self.path, "r")["tissue_mask"][...]).astype(bool)

    @property
    def table(self):
        import pandas as pd

        return pd.read_parquet(self.path / "table.parquet")

    @property
    def outlines(self):
        """DataFrame label, y, x: closed rings in level-0 continuous pixel coordinates."""
        import pandas as pd

        return pd.read_parquet(self.path / "outlines.parquet")

    # exports ------------------------------------------------------------------------------
    def to_geojson(self, path, object_type: str = "detection", include_offset: bool = False):
        from .export import write_geojson

        return write_geojson(self, path, object_type=object_type, include_offset=include_offset)

    def to_csv(self, path):
        from .export import write_table

        return write_table(self.table, path, "csv")

    def to_parquet(self, path):
        from .export import write_table

        return write_table(self.table, path, "parquet")
