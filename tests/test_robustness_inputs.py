"""Bad inputs get one clear error and never a half-written result; a batch goes on with its
other slides (docs/guarantees.md): symlink loops, broken OME-Zarr, NaN / inf / negative
floats, pixel sizes, input kinds, stacks, prompts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import napari_biomedparse.inference.loading as loading
from napari_biomedparse.cli import main
from napari_biomedparse.errors import InvalidInputError
from napari_biomedparse.inference.validate import check_in_memory, estimate_in_memory
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import process_slide
from napari_biomedparse.slide.readers import SlideReadError, open_image
from napari_biomedparse.slide.store import partial_path

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"
SMALL = ROOT / "tests/data/openslide_fixtures/small.svs"
FAST = ["--mpp", "2", "--tile-size", "128", "--overlap", "16", "--instances", "components"]
FAST += ["--prompts", "nuclei", "--no-progress"]


def _quick(src, out, **kw):
    args = dict(model=StainPredictor(128), prompts=["nuclei"], mpp=2.0, tile_size=128)
    args.update(overlap=16, instances="components", batch_size=2)
    args.update(kw)
    return process_slide(src, out, **args)


def _nothing_written(out: Path):
    assert not out.exists() and not partial_path(out).exists()


@pytest.fixture(scope="module")
def he():
    """A 768 x 768 H&E region of the bundled slide (uint8 RGB) at 0.5 um/px."""
    return np.asarray(open_image(CMU).read_region(600, 600, 768, 768))


def _ome_zarr(path: Path, data: np.ndarray, axes=("y", "x", "c"), levels=2):
    import zarr

    g = zarr.open_group(str(path), mode="w")
    datasets = []
    for lv in range(levels):
        a = data[:: 2**lv, :: 2**lv]
        g.create_array(str(lv), shape=a.shape, dtype=a.dtype, chunks=(256, 256, a.shape[2]))[
            ...
        ] = a
        datasets.append({"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [0.5 * 2**lv, 0.5 * 2**lv, 1.0]}]})  # fmt: skip
    g.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": a} for a in axes], "datasets": datasets}
    ]
    return path


# 10. symlink loops and broken OME-Zarr in a batch -----------------------------------------


def test_batch_with_symlink_loop_and_broken_ome_zarr_goes_on(tmp_path, he, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_predictor", lambda m, device=None, **kw: StainPredictor(128))
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(CMU, d / "good.svs")
    os.symlink(d / "loop.svs", d / "loop.svs")  # a link to itself
    z = _ome_zarr(d / "broken.ome.zarr", he)
    shutil.rmtree(z / "1")  # an interrupted copy: level 1 missing
    out = tmp_path / "out"
    for args in ([str(d)], [str(d / "*")], [str(d / "loop.svs"), str(d / "good.svs")]):
        rc = main(["slide", *args, "-o", str(out), *FAST])
        printed = capsys.readouterr()
        assert rc == 1 and "Traceback" not in printed.err + printed.out
        lines = printed.out.splitlines()
        assert any(ln.startswith("good.svs:") and "objects" in ln for ln in lines)
        assert any(ln.startswith("loop.svs: FAILED") and "symbolic link" in ln for ln in lines)
    with pytest.raises(SlideReadError, match="lists levels.*missing"):
        open_image(z)


def test_ome_zarr_without_y_axis_says_which_axes(tmp_path, he):
    z = _ome_zarr(tmp_path / "noy.ome.zarr", he, axes=("a", "x", "c"))
    with pytest.raises(SlideReadError, match="do not name a 'y' and an 'x' axis"):
        open_image(z)


# 11. NaN / inf / negative floats --------------------------------------------------------------


def test_float_tiff_with_nan_inf_and_negative_values(tmp_path, he):
    import tifffile

    ref = _quick(he, tmp_path / "ref.zarr", slide_mpp=0.5).summary["objects"]
    assert ref > 10
    f = he.astype(np.float32) / 255.0
    f[:40, :40] = np.nan
    f[100:120, 700:] = np.inf
    f[700:, :30] = -np.inf
    tifffile.imwrite(tmp_path / "nan.tif", f, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    res = _quick(tmp_path / "nan.tif", tmp_path / "nan.zarr")
    assert 0.8 * ref <= res.summary["objects"] <= 1.2 * ref
    assert not partial_path(tmp_path / "nan.zarr").exists()
    neg = he.astype(np.float32) * 2.0 - 600.0  # every value negative
    res = _quick(neg, tmp_path / "neg.zarr", slide_mpp=0.5)
    assert 0.8 * ref <= res.summary["objects"] <= 1.2 * ref
    allnan = np.full((300, 300, 3), np.nan, np.float32)
    with pytest.raises(InvalidInputError, match="no finite pixel"):
        _quick(allnan, tmp_path / "allnan.zarr", slide_mpp=0.5)


# 12. pixel sizes and work bounded before any work --------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mpp": float("inf")}, "finite pixel size"),
        ({"mpp": float("nan")}, "finite pixel size"),
        ({"mpp": 1000.0}, "between"),
        ({"mpp": 0.001}, "between"),
        ({"mpp": 0.05}, "finer than the image"),
        ({"slide_mpp": float("inf")}, "positive number|finite"),
        ({"tile_size": 100_000}, "tile_size"),
    ],
)
def test_pixel_sizes_are_bounded_before_any_work(tmp_path, kw, match):
    out = tmp_path / "r.zarr"
    with pytest.raises(ValueError, match=match):
        _quick(SMALL, out, **kw)
    _nothing_written(out)


def test_work_estimate_is_bounded(tmp_path):
    big = __import__("dask.array", fromlist=["x"]).zeros((400_000, 400_000, 3), np.uint8)
    out = tmp_path / "r.zarr"
    with pytest.raises(InvalidInputError, match="tiles.*limit"):
        _quick(big, out, slide_mpp=0.25, mpp=0.25)
    _nothing_written(out)


def test_cli_bad_mpp_is_one_line_per_slide(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_predictor", lambda m, device=None, **kw: StainPredictor(128))
    rc = main(["slide", str(SMALL), "-o", str(tmp_path / "o"), *FAST, "--mpp", "inf"])
    printed = capsys.readouterr()
    assert rc == 1 and "Traceback" not in printed.err
    assert "small.svs: FAILED" in printed.out and "finite pixel size" in printed.out
    assert not list((tmp_path / "o").glob("*.partial"))


# 14. input kinds: the same rules for the Predictor and the slide engine ----------------------


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((300, 300), bool), "boolean"),
        (np.zeros((300, 300, 3), np.complex64), "complex"),
        (np.zeros((300, 300, 2), np.uint8), "2 channels"),
        (np.zeros((300, 300, 5), np.uint16), "5 channels"),
    ],
)
def test_input_kinds_refused_alike_by_slide_engine_and_predictor(tmp_path, image, match):
    from napari_biomedparse.inference.preprocessing import preprocess

    out = tmp_path / "r.zarr"
    with pytest.raises(InvalidInputError, match=match):
        _quick(image, out, slide_mpp=0.5)
    _nothing_written(out)
    with pytest.raises(ValueError):  # the Predictor's preprocessing refuses the same kinds
        preprocess(image, "pathology")


def test_tzcyx_stack_is_refused_not_reduced(tmp_path):
    import tifffile

    data = np.random.default_rng(0).integers(0, 255, (2, 3, 1, 200, 200), np.uint8)
    tifffile.imwrite(tmp_path / "stack.ome.tif", data, metadata={"axes": "TZCYX"})
    out = tmp_path / "r.zarr"
    with pytest.raises(SlideReadError, match="stack.*T=2.*Z=3"):
        _quick(tmp_path / "stack.ome.tif", out, slide_mpp=0.5)
    _nothing_written(out)


# 15. in-memory runs: estimate, refuse what cannot fit, advise the slide engine ---------------


def test_in_memory_estimate_refuses_and_warns():
    est = estimate_in_memory(20_000, 20_000, 1, tile=256)
    assert est["tiles"] == (-(-20_000 // 224)) ** 2 and est["bytes"] == 2 * 20_000 * 20_000 * 4
    with pytest.raises(InvalidInputError, match="GiB.*process_slide"):
        check_in_memory(20_000, 20_000, 50, tile=256, available=64 << 30)
    with pytest.warns(UserWarning, match="slide engine"):
        check_in_memory(20_000, 20_000, 1, tile=256, available=64 << 30)
    check_in_memory(512, 512, 3, tile=256, available=1 << 30)  # small: silent


# 17. messages --------------------------------------------------------------------------------


def test_prompt_with_a_lone_surrogate(tmp_path):
    out = tmp_path / "r.zarr"
    with pytest.raises(InvalidInputError, match="not valid text"):
        _quick(SMALL, out, prompts=["nuclei\udcff"])
    _nothing_written(out)


def test_workers_zero_is_refused(tmp_path, capsys):
    rc = main(["slide", str(SMALL), "-o", str(tmp_path / "o"), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "--workers" in err and "Traceback" not in err


def test_cli_speaks_in_options_not_keyword_arguments(tmp_path, monkeypatch, capsys):
    import threading

    from napari_biomedparse.slide.store import RunCancelled

    cancel = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("tiles") and done >= 2:
            cancel.set()

    out_dir = tmp_path / "o"
    with pytest.raises(RunCancelled):
        _quick(CMU, out_dir / "cmu_small_region.svs.biomedparse.zarr", cancel=cancel,
               progress=progress, batch_size=1)  # fmt: skip
    monkeypatch.setattr(loading, "load_predictor", lambda m, device=None, **kw: StainPredictor(128))
    rc = main(["slide", str(CMU), "-o", str(out_dir), *FAST, "--no-resume"])
    printed = capsys.readouterr().out
    assert rc == 1 and "add --overwrite" in printed and "leave out --no-resume" in printed


# 8. a scheduler address where something else answers ----------------------------------------


def _server(reply: bytes | None):
    """A plain TCP service on a loopback port: silent (reply None) or sending ``reply``."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            if reply:
                c.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return srv, f"tcp://127.0.0.1:{srv.getsockname()[1]}"


@pytest.mark.parametrize("reply", [None, b"SSH-2.0-OpenSSH_9.6\r\n", b"\xff" * 64])
def test_scheduler_probe_fails_fast_on_other_services(reply, tmp_path, capsys):
    import time

    from napari_biomedparse.errors import SchedulerUnavailableError
    from napari_biomedparse.slide.validate import probe_scheduler

    srv, addr = _server(reply)
    try:
        t0 = time.perf_counter()
        with pytest.raises(SchedulerUnavailableError, match="not a dask scheduler"):
            probe_scheduler(addr, timeout=2)
        assert time.perf_counter() - t0 < 4
        rc = main(["slide", str(SMALL), "-o", str(tmp_path / "o"), "--scheduler", addr])
        err = capsys.readouterr().err
        assert rc == 1 and "not a dask scheduler" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        srv.close()
    import socket

    free = socket.socket()
    free.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        with pytest.raises(SchedulerUnavailableError, match="no dask scheduler answers"):
            probe_scheduler(f"tcp://127.0.0.1:{free.getsockname()[1]}", timeout=2)
    finally:
        free.close()


def test_scheduler_probe_accepts_a_real_scheduler():
    from distributed import LocalCluster

    from napari_biomedparse.slide.validate import probe_scheduler

    with LocalCluster(
        n_workers=0, processes=False, dashboard_address=None, host="127.0.0.1", protocol="tcp://"
    ) as c:
        probe_scheduler(c.scheduler_address, timeout=5)


def test_segment_in_memory_refuses_what_cannot_fit(monkeypatch):
    import napari_biomedparse.inference.validate as validate
    from napari_biomedparse import Predictor, load_model

    pred = Predictor(load_model("default"), device="cpu")
    monkeypatch.setattr(validate, "_available_bytes", lambda: 4 << 20)  # 4 MiB free
    rgb = np.full((512, 512, 3), 200, np.uint8)
    with pytest.raises(InvalidInputError, match="GiB in memory.*slide engine"):
        pred.segment(rgb, ["nuclei", "stroma", "tumour"], modality="pathology")
