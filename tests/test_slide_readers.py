"""Readers: lazy pyramids and metadata from real slide files, TIFF, zarr and arrays."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import openslide
import pytest
import tifffile
import zarr

from napari_biomedparse.slide.readers import SlideReadError, open_image

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"
FIX = ROOT / "tests/data/openslide_fixtures"


def test_cmu_svs_lazy_pyramid_and_metadata():
    img = open_image(CMU)
    assert img.format == "aperio"
    assert img.shape == (2967, 2220) and img.channels == 3
    assert isinstance(img.levels[0], da.Array) and img.levels[0].dtype == np.uint8
    assert img.mpp == pytest.approx(0.499)
    assert img.objective_power == 20
    assert img.offset == (0, 0)
    assert set(img.associated) == {"label", "macro", "thumbnail"}
    assert img.associated["thumbnail"].shape[2] == 3
    # chunked (not one block) and equal to OpenSlide's own read_region
    assert img.levels[0].numblocks[0] > 1
    ref = np.asarray(openslide.OpenSlide(str(CMU)).read_region((100, 200), 0, (300, 250)))
    np.testing.assert_array_equal(img.levels[0][200:450, 100:400].compute(), ref[..., :3])
    # out-of-bounds reads are filled
    r = img.read_region(-5, -5, 10, 10, fill=7)
    assert (r[:5, :5] == 7).all() and not (r[5:, 5:] == 7).all()


def test_generic_tiff_pyramid_and_dicom():
    img = open_image(FIX / "boxes.tiff")
    assert img.format == "generic-tiff"
    assert [lv.shape[:2] for lv in img.levels] == [(250, 300), (125, 150), (62, 75), (31, 37)]
    assert img.downsamples[1] == pytest.approx(2.0)
    assert img.mpp is None  # 72 dpi default resolution is not a pixel size
    assert img.level_for_downsample(4.5) == 2
    dcm = open_image(FIX / "boxes_0.dcm")
    assert dcm.format == "dicom" and dcm.mpp == pytest.approx(0.499)
    assert dcm.levels[0].compute().shape == (16, 16, 3)
    svs = open_image(FIX / "small.svs")
    assert svs.shape == (16, 16) and svs.mpp == pytest.approx(0.499)


def _pyramid_tiff(path, ome=False, mpp=0.25, size=(600, 500)):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    kw = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        meta = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if ome else None
        res = (1e4 / mpp, 1e4 / mpp)
        tw.write(
            levels[0], subifds=2, resolution=res, resolutionunit="CENTIMETER", metadata=meta, **kw
        )
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, **kw)
    return levels


def test_tifffile_pyramids_with_zarr3(tmp_path):
    levels = _pyramid_tiff(tmp_path / "p.ome.tif", ome=True, mpp=0.25)
    img = open_image(tmp_path / "p.ome.tif")
    assert img.format == "ome-tiff"
    assert [lv.shape[:2] for lv in img.levels] == [lv.shape[:2] for lv in levels]
    assert img.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(img.levels[1][10:70, 20:90].compute(), levels[1][10:70, 20:90])
    # a plain tiled pyramidal TIFF goes through OpenSlide (generic-tiff) and keeps its mpp
    levels = _pyramid_tiff(tmp_path / "p.tif", mpp=0.5)
    img = open_image(tmp_path / "p.tif")
    assert img.mpp == pytest.approx(0.5, rel=1e-3)
    assert img.levels[0].shape == (600, 500, 3)
    np.testing.assert_array_equal(img.levels[0][:64, :64].compute(), levels[0][:64, :64])
    # a grey, non-tiled TIFF (tifffile path)
    grey = np.arange(200 * 300, dtype=np.uint16).reshape(200, 300)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    g = open_image(tmp_path / "g.tif")
    assert g.format == "tiff" and g.levels[0].shape == (200, 300, 1)
    np.testing.assert_array_equal(g.levels[0][..., 0].compute(), grey)


def test_ome_zarr_and_arrays(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(3, 256, 320), dtype=np.uint8)  # c, y, x
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    for i, f in enumerate((1, 2)):
        a = root.create_array(
            str(i), shape=base[:, ::f, ::f].shape, chunks=(3, 64, 64), dtype="uint8"
        )
        a[...] = base[:, ::f, ::f]
    root.attrs["multiscales"] = [
        {
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 0.4, 0.4]}],
                },
                {
                    "path": "1",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 0.8, 0.8]}],
                },
            ],
        }
    ]
    img = open_image(tmp_path / "img.ome.zarr")
    assert img.format == "ome-zarr" and img.mpp == pytest.approx(0.4)
    assert [lv.shape for lv in img.levels] == [(256, 320, 3), (128, 160, 3)]
    np.testing.assert_array_equal(img.levels[0].compute(), base.transpose(1, 2, 0))
    # numpy, dask, multiscale list, channel-first
    arr = base.transpose(1, 2, 0)
    assert open_image(arr).levels[0].shape == (256, 320, 3)
    assert open_image(da.from_array(arr, chunks=64)).levels[0].chunksize == (64, 64, 3)
    ms = open_image([arr, arr[::2, ::2]], mpp=0.5)
    assert len(ms.levels) == 2 and ms.mpp == 0.5 and ms.downsamples[1] == pytest.approx(2)
    assert open_image(base).levels[0].shape == (256, 320, 3)
    assert open_image(arr[..., 0]).levels[0].shape == (256, 320, 1)


def test_bad_inputs_have_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such slide"):
        open_image(tmp_path / "missing.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty"):
        open_image(tmp_path / "empty.svs")
    (tmp_path / "notes.svs").write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideReadError, match="not a supported whole-slide format"):
        open_image(tmp_path / "notes.svs")
    (tmp_path / "weird.xyz").write_text("hello")
    with pytest.raises(SlideReadError, match="unsupported file format"):
        open_image(tmp_path / "weird.xyz")
    # a truncated real slide: either refused on open, or a clear error on the first read
    trunc = tmp_path / "trunc.svs"
    data = CMU.read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError, match="truncated|corrupt|could not"):
        img = open_image(trunc)
        img.levels[0][2000:2900, 1500:2200].compute()
    shutil.copy(CMU, tmp_path / "ok.svs")
    with pytest.raises(SlideReadError, match="directory"):
        open_image(tmp_path)
    with pytest.raises(SlideReadError, match="shape"):
        open_image(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="positive"):
        open_image(np.zeros((8, 8), np.uint8), mpp=-1)


def test_tiff_based_slides_without_openslide(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openslide", None)  # as if openslide were not installed
    img = open_image(CMU)
    assert img.format == "tiff" and img.mpp == pytest.approx(0.499)
    assert img.shape == (2967, 2220)
    monkeypatch.undo()
    ref = open_image(CMU).read_region(1000, 800, 200, 200)
    got = img.read_region(1000, 800, 200, 200)
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2  # same JPEG tiles
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(SlideReadError, match="needs openslide-python"):
        open_image(FIX / "boxes_0.dcm")


def test_corrupt_tiles_fail_on_read_with_clear_message(tmp_path):
    _pyramid_tiff(tmp_path / "p.ome.tif", ome=True)
    data = bytearray((tmp_path / "p.ome.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "p.ome.tif") as tif:
        page = tif.pages[0]
        off, n = page.dataoffsets[0], page.databytecounts[0]
    data[off : off + n] = b"\xff" * n  # the first zlib tile no longer decodes
    (tmp_path / "b.ome.tif").write_bytes(bytes(data))
    img = open_image(tmp_path / "b.ome.tif")  # metadata is intact
    img.read_region(300, 300, 64, 64)  # other tiles still read
    with pytest.raises(SlideReadError, match="truncated or corrupt"):
        img.read_region(0, 0, 64, 64)
    # a damaged header is refused on open
    data[8:64] = b"\x00" * 56
    (tmp_path / "h.ome.tif").write_bytes(bytes(data))
    with pytest.raises(SlideReadError, match="corrupt"):
        open_image(tmp_path / "h.ome.tif").read_region(0, 0, 64, 64)
