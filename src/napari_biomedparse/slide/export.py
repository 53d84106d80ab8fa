"""Exports of a slide result: QuPath-compatible GeoJSON, CSV and Parquet tables.

The GeoJSON encoder and the table writer are the package's single ones
(:mod:`napari_biomedparse.inference.geojson`, :func:`napari_biomedparse.inference.objects.
write_table`); this module only streams a result store's ``table.parquet`` /
``outlines.parquet`` into them, one row group (= one instance block) at a time, so memory
stays bounded whatever the number of objects.

Coordinates are level-0 pixels with pixel k spanning [k, k+1), as QuPath uses them. QuPath
opens OpenSlide formats cropped to the slide's bounds (``openslide.bounds-x/y``, e.g.
MIRAX), exactly like our readers, so the default coordinates import in place. Pass
``include_offset=True`` to add the bounds offset (``SlideImage.offset``) for tools that use
OpenSlide's uncropped level-0 frame.
"""

from __future__ import annotations

from napari_biomedparse.inference import geojson as _geojson
from napari_biomedparse.inference.objects import write_table

__all__ = ["write_geojson", "write_table", "geojson_features"]


def _parts(result):
    """(table, outlines) per row group of a result store (both files hold the same rows in the
    same row groups)."""
    import pyarrow.parquet as pq

    ft = pq.ParquetFile(result.path / "table.parquet")
    fo = pq.ParquetFile(result.path / "outlines.parquet")
    for g in range(ft.num_row_groups):
        yield ft.read_row_group(g).to_pandas(), fo.read_row_group(g).to_pandas()


def _source(result) -> str:
    return str(result.params.get("source", {}).get("name", ""))


def geojson_features(result, object_type: str = "detection", include_offset: bool = False):
    """Yield GeoJSON Feature dicts for every object of ``result`` (a SlideResult)."""
    offset = result.offset if include_offset else (0, 0)
    for table, outlines in _parts(result):
        yield from _geojson.features(
            table, outlines, object_type=object_type, offset=offset, source=_source(result)
        )


def write_geojson(result, path, object_type: str = "detection", include_offset: bool = False):
    """Write a QuPath-compatible GeoJSON FeatureCollection of a SlideResult; returns the path.

    Streams features to a temporary file and renames it, so a partial file never appears.
    """
    return _geojson.write_geojson(
        path,
        _parts(result),
        object_type=object_type,
        offset=result.offset if include_offset else (0, 0),
        source=_source(result),
    )
