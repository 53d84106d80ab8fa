"""Nothing lost, nothing mixed: output naming, source identity, out/src conflicts, one writer
per output, finished results and parameters, temporary files of exports (docs/guarantees.md)."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import napari_biomedparse.inference.loading as loading
from napari_biomedparse.cli import main
from napari_biomedparse.errors import (
    OutputConflictError,
    OutputLockedError,
    ResultExistsError,
    SourceChangedError,
)
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import SlideResult, process_slide
from napari_biomedparse.slide.lock import OutputLock, lock_path
from napari_biomedparse.slide.naming import output_paths, verify_result
from napari_biomedparse.slide.store import RunCancelled, partial_path

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "src/napari_biomedparse/data/cmu_small_region.svs"
SMALL = ROOT / "tests/data/openslide_fixtures/small.svs"
FAST = ["--mpp", "2", "--tile-size", "128", "--overlap", "16", "--instances", "components"]
FAST += ["--prompts", "nuclei", "--no-progress"]


def _quick(src, out, **kw):
    args = dict(
        model=StainPredictor(128),
        prompts=["nuclei"],
        mpp=2.0,
        tile_size=128,
        overlap=16,
        instances="components",
        batch_size=2,
    )
    args.update(kw)
    return process_slide(src, out, **args)


@pytest.fixture
def stain(monkeypatch):
    monkeypatch.setattr(loading, "load_predictor", lambda m, device=None, **kw: StainPredictor(128))


def _tiff(path, seed, shape=(700, 700)):
    import tifffile

    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), 235, np.uint8)
    for _ in range(60):  # dark purple blobs (nuclei for the stain predictor)
        y, x = rng.integers(20, shape[0] - 20), rng.integers(20, shape[1] - 20)
        img[y - 6 : y + 6, x - 6 : x + 6] = (90, 40, 140)
    tifffile.imwrite(
        path, img, tile=(256, 256), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    return img


# 1. two slides with one file name ------------------------------------------------------------


def test_same_file_name_in_two_folders_gives_two_results(tmp_path, stain, capsys):
    for d, src in (("fa", CMU), ("fb", SMALL)):
        (tmp_path / d).mkdir()
        shutil.copy(src, tmp_path / d / "x.svs")
    out = tmp_path / "out"
    a, b = str(tmp_path / "fa/x.svs"), str(tmp_path / "fb/x.svs")
    assert main(["slide", a, b, "-o", str(out), *FAST]) == 0
    stores = sorted(out.glob("*.biomedparse.zarr"))
    assert len(stores) == 2
    paths = {str(Path(SlideResult.open(s).meta["source_path"]).resolve()) for s in stores}
    assert paths == {str(Path(a).resolve()), str(Path(b).resolve())}
    # rerun: both already done, each with its own summary
    assert main(["slide", a, b, "-o", str(out), *FAST]) == 0
    assert capsys.readouterr().err.count("already done") == 2
    # --overwrite: still two results, one per source
    assert main(["slide", a, b, "-o", str(out), *FAST, "--overwrite"]) == 0
    assert sorted(out.glob("*.biomedparse.zarr")) == stores
    shapes = {tuple(SlideResult.open(s).params["source"]["shape"]) for s in stores}
    assert len(shapes) == 2
    # a later run of only the second slide finds its own result, not the first one's
    m = output_paths([Path(b)], out)
    assert Path(SlideResult.open(m[Path(b)]).meta["source_path"]).resolve() == Path(b).resolve()


def test_output_name_taken_by_another_source_gets_a_tag(tmp_path):
    (tmp_path / "fa").mkdir()
    (tmp_path / "fb").mkdir()
    shutil.copy(SMALL, tmp_path / "fa/x.svs")
    shutil.copy(SMALL, tmp_path / "fb/x.svs")
    out = tmp_path / "out"
    first = output_paths([tmp_path / "fa/x.svs"], out)[tmp_path / "fa/x.svs"]
    assert first.name == "x.svs.biomedparse.zarr"
    _quick(tmp_path / "fa/x.svs", first)
    again = output_paths([tmp_path / "fa/x.svs"], out)[tmp_path / "fa/x.svs"]
    other = output_paths([tmp_path / "fb/x.svs"], out)[tmp_path / "fb/x.svs"]
    assert again == first and other != first and other.name.endswith(".svs.biomedparse.zarr")


# 2. the source changed between a cancelled run and its resume --------------------------------


def test_resume_with_a_replaced_tiff_is_refused(tmp_path):
    src = tmp_path / "img.tif"
    _tiff(src, 1)
    out = tmp_path / "run.zarr"
    cancel = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("tiles") and done >= 4:
            cancel.set()

    with pytest.raises(RunCancelled):
        _quick(src, out, mpp=0.5, batch_size=1, tissue_mask=False, progress=progress, cancel=cancel)
    _tiff(src, 2)  # another image of the same shape and type
    with pytest.raises(SourceChangedError, match="another image.*content"):
        _quick(src, out, mpp=0.5, batch_size=1, tissue_mask=False)
    assert partial_path(out).exists()  # nothing was mixed or deleted
    ref = _quick(src, tmp_path / "ref.zarr", mpp=0.5, batch_size=1, tissue_mask=False)
    res = _quick(src, out, mpp=0.5, batch_size=1, tissue_mask=False, overwrite=True)
    np.testing.assert_array_equal(np.asarray(res.probs), np.asarray(ref.probs))


def test_resume_from_a_moved_copy_of_the_same_file_is_accepted(tmp_path):
    src = tmp_path / "a" / "img.tif"
    src.parent.mkdir()
    _tiff(src, 3)
    out = tmp_path / "run.zarr"
    cancel = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("tiles") and done >= 4:
            cancel.set()

    with pytest.raises(RunCancelled):
        _quick(src, out, mpp=0.5, batch_size=1, tissue_mask=False, progress=progress, cancel=cancel)
    moved = tmp_path / "b" / "img.tif"
    moved.parent.mkdir()
    shutil.copy(src, moved)  # new path and mtime, same bytes
    res = _quick(moved, out, mpp=0.5, batch_size=1, tissue_mask=False)
    assert res.summary["tiles_resumed"] >= 4


# 3. out == src ------------------------------------------------------------------------------


def test_output_equal_to_or_around_the_source_is_refused_before_deleting(tmp_path):
    import zarr

    src = tmp_path / "img.zarr"
    z = zarr.open_array(
        str(src), mode="w", shape=(300, 300, 3), dtype="uint8", chunks=(128, 128, 3)
    )
    z[...] = 200
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    for out in (src, tmp_path, src / "inner.zarr"):
        with pytest.raises(OutputConflictError, match="source"):
            _quick(src, out, overwrite=True, slide_mpp=0.5)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    tif = tmp_path / "t.tif"
    _tiff(tif, 4)
    with pytest.raises(OutputConflictError):
        _quick(tif, tif, overwrite=True)
    assert tif.stat().st_size > 0
    with pytest.raises(OutputConflictError, match="names a folder"):
        _quick(tif, ".", overwrite=True)


# 4. one writer per output -------------------------------------------------------------------

_HOLD = """
import sys, time
from napari_biomedparse.slide.lock import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_process_is_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"process {proc.pid}"):
            OutputLock(out).acquire()
        # the engine refuses before writing anything
        with pytest.raises(OutputLockedError):
            _quick(SMALL, out)
        assert not partial_path(out).exists() and not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(out).exists()  # left by the killed holder, but not held
    with OutputLock(out):
        pass
    assert not lock_path(out).exists()
    _quick(SMALL, out)  # and a run goes through


_RUN = """
import sys
from napari_biomedparse.errors import OutputLockedError
from napari_biomedparse.slide._testing import StainPredictor
from napari_biomedparse.slide.engine import process_slide
try:
    process_slide(sys.argv[1], sys.argv[2], model=StainPredictor(128, delay=0.05),
                  prompts=["nuclei"], mpp=2.0, tile_size=128, overlap=16,
                  instances="components", batch_size=1, overwrite=True)
    print("OK")
except OutputLockedError as exc:
    print("LOCKED", exc)
"""


def test_two_processes_writing_one_output_one_wins_cleanly(tmp_path):
    out = tmp_path / "run.zarr"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN, str(CMU), str(out)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=600)[0].split()[0] for p in procs)
    assert outs in (["LOCKED", "OK"], ["OK", "OK"])  # never both failing
    res = SlideResult.open(out)
    assert verify_result(out) == [] and res.summary["objects"] > 0
    assert not partial_path(out).exists() and not lock_path(out).exists()


# 5. finished result, other parameters -------------------------------------------------------


def test_finished_result_with_other_parameters_is_refused(tmp_path, stain, capsys):
    out = tmp_path / "r.zarr"
    first = _quick(SMALL, out)
    assert verify_result(out) == []
    with pytest.raises(ResultExistsError) as info:
        _quick(SMALL, out, tile_size=96)
    assert not info.value.same_parameters and "tile_size" in str(info.value)
    with pytest.raises(ResultExistsError) as info:
        _quick(SMALL, out)
    assert info.value.same_parameters
    assert SlideResult.open(out).summary == first.summary
    # the command line: other parameters -> FAILED with what differs, exit 1
    d = tmp_path / "s"
    d.mkdir()
    shutil.copy(SMALL, d / "s.svs")
    assert main(["slide", str(d / "s.svs"), "-o", str(tmp_path / "o"), *FAST]) == 0
    capsys.readouterr()
    rc = main(["slide", str(d / "s.svs"), "-o", str(tmp_path / "o"), *FAST, "--overlap", "8"])
    printed = capsys.readouterr()
    assert rc == 1 and "FAILED" in printed.out and "overlap" in printed.out
    assert "already done" not in printed.err


def test_verify_result_finds_missing_units(tmp_path):
    out = tmp_path / "r.zarr"
    _quick(CMU, out)
    assert verify_result(out) == []
    next((out / "blocks").glob("b_*.npz")).unlink()
    assert any("block" in p for p in verify_result(out))


# 6. a full disk during export ---------------------------------------------------------------


def test_full_disk_during_export_fails_once_leaves_nothing_and_batch_goes_on(
    tmp_path, stain, monkeypatch, capsys
):
    import builtins

    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(CMU, d / "a.svs")
    shutil.copy(SMALL, d / "b.svs")
    out = tmp_path / "out"
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, s):
            self.n += len(s)
            if self.n > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(s)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def full_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if "w" in mode and ".geojson" in str(file) and "a.svs" in str(file):
            return Full(f)
        return f

    monkeypatch.setattr(builtins, "open", full_open)
    for _ in range(2):  # the first run, then a rerun that only re-exports
        rc = main(["slide", str(d), "-o", str(out), *FAST, "--geojson"])
        printed = capsys.readouterr().out
        assert rc == 1
        lines = [ln for ln in printed.splitlines() if ln.startswith("a.svs:")]
        assert len(lines) == 1 and "FAILED" in lines[0] and "No space left" in lines[0]
        assert any(ln.startswith("b.svs:") and "objects" in ln for ln in printed.splitlines())
        left = [p.name for p in out.iterdir() if ".tmp" in p.name]
        assert left == []
        assert not (out / "a.svs.biomedparse.geojson").exists()
    assert (out / "b.svs.biomedparse.geojson").exists()
    monkeypatch.setattr(builtins, "open", real_open)
    assert main(["slide", str(d), "-o", str(out), *FAST, "--geojson"]) == 0
    assert (out / "a.svs.biomedparse.geojson").exists()


def test_resume_of_a_zarr_whose_pixels_changed_is_refused(tmp_path):
    import zarr

    src = tmp_path / "img.zarr"
    import tifffile

    _tiff(tmp_path / "a.tif", 5)
    data = tifffile.imread(tmp_path / "a.tif")
    z = zarr.open_array(str(src), mode="w", shape=data.shape, dtype="uint8", chunks=(256, 256, 3))
    z[...] = data
    out = tmp_path / "run.zarr"
    cancel = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("tiles") and done >= 4:
            cancel.set()

    kw = dict(mpp=0.5, slide_mpp=0.5, batch_size=1, tissue_mask=False)
    with pytest.raises(RunCancelled):
        _quick(src, out, progress=progress, cancel=cancel, **kw)
    z[300:400, 300:400] = 0  # same metadata, other pixels
    with pytest.raises(SourceChangedError, match="content"):
        _quick(src, out, **kw)
