"""The slide engine on a dask.distributed LocalCluster (2 worker processes, CPU).

A real (small) BiomedParse model with seeded random weights, saved to a checkpoint that the
workers load by path; a synthetic slide written as a TIFF that the workers reopen by path.
Checks: identical results to the single-process run; a worker killed mid-run changes
nothing; several processes writing one store never corrupt it; process_slides over the
cluster; progress reaches the caller; cancel.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from napari_biomedparse.slide.engine import process_slide, process_slides  # noqa: E402
from napari_biomedparse.slide.store import RunCancelled, partial_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/data/v1_tiny"
PROMPTS = ["neoplastic cells", "inflammatory cells"]
RUN = dict(
    prompts=PROMPTS,
    mpp=1.0,
    tile_size=64,
    overlap=8,
    batch_size=2,
    instances="components",
    slide_mpp=0.5,
)


def synthetic_slide(seed: int, shape=(640, 640)) -> np.ndarray:
    """Pink tissue with purple nuclei on a white background (left quarter background)."""
    rng = np.random.default_rng(seed)
    H, W = shape
    img = np.full((H, W, 3), 245, np.uint8)
    yy, xx = np.mgrid[:H, :W]
    tissue = xx > W // 4
    img[tissue] = (230, 160, 200)
    for _ in range(120):
        cy, cx = rng.integers(0, H), rng.integers(W // 4, W)
        r = rng.integers(4, 9)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[m] = (90, 40, 140)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The tiny reference architecture at a 64 px input, seeded random weights."""
    import torch

    from napari_biomedparse.model import BiomedParseConfig, build_model, save_checkpoint

    cfg = BiomedParseConfig.from_reference_json(TINY / "config.json")
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(cfg, input_size=64))
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "tiny64.safetensors")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    import tifffile

    d = tmp_path_factory.mktemp("slides")
    paths = []
    for i in range(2):
        p = d / f"synthetic_{i}.tif"
        tifffile.imwrite(p, synthetic_slide(i))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(model_path, slides, tmp_path_factory):
    """Single-process runs (one torch thread, as on the dask workers)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = tmp_path_factory.mktemp("ref")
        return [
            process_slide(
                s, d / f"{s.name}.zarr", model=str(model_path), device="cpu", keep_tiles=True, **RUN
            )
            for s in slides
        ]
    finally:
        torch.set_num_threads(n)


def assert_same(res, ref):
    a, b = np.asarray(res.probs), np.asarray(ref.probs)
    assert a.shape == b.shape and a.any()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(res.classes[0]), np.asarray(ref.classes[0]))
    np.testing.assert_array_equal(np.asarray(res.labels[0]), np.asarray(ref.labels[0]))
    pd.testing.assert_frame_equal(res.table, ref.table)
    assert res.params == ref.params


def test_two_workers_identical_to_single_process(client, model_path, slides, reference, tmp_path):
    calls, threads = [], set()
    res = process_slide(
        slides[0],
        tmp_path / "d.zarr",
        model=str(model_path),
        device="cpu",
        client=client,
        progress=lambda d, t, m: calls.append((d, t, m)) or threads.add(threading.get_ident()),
        **RUN,
    )
    assert threads == {threading.get_ident()}  # called in the caller's thread (GUI-safe)
    assert_same(res, reference[0])
    assert res.summary["tiles_processed"] > 20 and res.summary["tiles_skipped"] > 0
    # both workers did tiles, each loaded the model once (plugin), progress reached the caller
    tiles = [(d, t) for d, t, m in calls if m.startswith("tiles")]
    assert tiles and tiles[-1][0] == res.summary["tiles_processed"]
    assert all(b[0] >= a[0] for a, b in zip(tiles, tiles[1:]))
    assert len({d for d, _ in tiles}) > 3  # several updates, not just the end
    assert calls[-1][0] == calls[-1][1]
    from napari_biomedparse.slide import distributed as dist

    n_models = client.run(lambda: len(dist._PREDICTORS))
    assert list(n_models.values()) == [1, 1]
    devices = client.run(lambda dask_worker: getattr(dask_worker, "nbp_device", None))
    assert set(devices.values()) == {"cpu"}
    if sys.platform == "linux":  # dask's MALLOC_TRIM_THRESHOLD_ undone (glibc), see distributed.md
        restored = client.run(lambda dask_worker: getattr(dask_worker, "nbp_malloc_restored", None))
        assert set(restored.values()) == {True}


def test_killed_worker_mid_run_gives_identical_results(
    client, model_path, slides, reference, tmp_path
):
    killed = []

    def progress(done, total, message):
        if message.startswith("tiles") and done >= 6 and not killed:
            workers = list(client.scheduler_info()["workers"])
            killed.append(workers[0])
            # hard kill of one worker process (its nanny starts a fresh one)
            pid = client.run(os.getpid, workers=[workers[0]])[workers[0]]
            os.kill(pid, signal.SIGKILL)

    res = process_slide(
        slides[1],
        tmp_path / "k.zarr",
        model=str(model_path),
        device="cpu",
        client=client,
        progress=progress,
        **RUN,
    )
    assert killed
    assert_same(res, reference[1])
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in client.scheduler_info()["workers"]  # replaced by a fresh process


def _write_tiles(store, image_path, grid_dict, model_path, batches):
    import torch

    torch.set_num_threads(1)
    from napari_biomedparse.inference.loading import load_predictor as resolve_predictor
    from napari_biomedparse.slide.readers import open_image
    from napari_biomedparse.slide.stages import run_tiles
    from napari_biomedparse.slide.store import open_group
    from napari_biomedparse.slide.tiling import TileGrid

    grid = TileGrid(**{**grid_dict, "level0_shape": tuple(grid_dict["level0_shape"])})
    run_tiles(
        open_group(store, "r+"),
        open_image(image_path, mpp=0.5),
        grid,
        resolve_predictor(model_path, "cpu"),
        batches,
        PROMPTS,
        readers=1,
    )


def test_processes_writing_one_store_never_corrupt_it(model_path, slides, reference, tmp_path):
    """Two processes write interleaved batches -- plus a batch both of them write -- into the
    tile arrays of one store; the tiles equal those of the sequential run byte for byte."""
    import zarr

    ref = reference[0]
    g_ref = zarr.open_group(str(ref.path), mode="r")
    ny, nx = g_ref["tiles/state"].shape
    done = np.flatnonzero(np.asarray(g_ref["tiles/state"][...]).reshape(-1) == 1).tolist()
    batches = [done[i : i + 2] for i in range(0, len(done), 2)]
    store = tmp_path / "shared.zarr"
    g = zarr.open_group(str(store), mode="w")
    for name in ("tiles/probs", "tiles/state"):
        a = g_ref[name]
        g.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=0)
    shared = batches[len(batches) // 2]
    parts = [batches[0::2] + [shared], batches[1::2] + [shared]]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_write_tiles,
            args=(str(store), str(slides[0]), ref.meta["grid"], str(model_path), p),
        )
        for p in parts
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    np.testing.assert_array_equal(
        np.asarray(g["tiles/state"][...]), np.asarray(g_ref["tiles/state"][...])
    )
    np.testing.assert_array_equal(
        np.asarray(g["tiles/probs"][...]), np.asarray(g_ref["tiles/probs"][...])
    )
    # every chunk file is a complete chunk: no temporary files left behind
    leftovers = [p for p in store.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers


def test_process_slides_whole_slides_on_workers(client, model_path, slides, reference, tmp_path):
    calls, threads = [], set()
    res = process_slides(
        slides,
        tmp_path / "out",
        model=str(model_path),
        device="cpu",
        client=client,
        progress=lambda d, t, m: calls.append((d, t, m)) or threads.add(threading.get_ident()),
        **RUN,
    )
    assert threads == {threading.get_ident()}
    assert list(res) == [str(s) for s in slides]
    for s, ref in zip(slides, reference):
        r = res[str(s)]
        assert r.path == tmp_path / "out" / f"{s.name}.biomedparse.zarr"
        assert_same(r, ref)
    assert calls and calls[-1][0] == calls[-1][1] == 2000
    assert any("slide 2/2" in m for _, _, m in calls)


def test_cancel_stops_the_cluster_run_and_resume_finishes_it(
    client, model_path, slides, reference, tmp_path
):
    out = tmp_path / "c.zarr"
    cancel = threading.Event()

    def progress(done, total, message):
        if message.startswith("tiles") and done >= 4:
            cancel.set()

    t0 = time.perf_counter()
    with pytest.raises(RunCancelled):
        process_slide(
            slides[0],
            out,
            model=str(model_path),
            device="cpu",
            client=client,
            progress=progress,
            cancel=cancel,
            **RUN,
        )
    assert time.perf_counter() - t0 < 120
    assert partial_path(out).exists() and not out.exists()
    time.sleep(1.0)  # let running tasks see the cluster-wide cancel
    res = process_slide(slides[0], out, model=str(model_path), device="cpu", client=client, **RUN)
    assert res.summary["resumed"] and res.summary["tiles_resumed"] >= 4
    assert_same(res, reference[0])


def test_workers_that_cannot_see_the_store_are_refused(client, model_path, slides, tmp_path):
    from napari_biomedparse.slide.distributed import check_visible as _check_visible

    with pytest.raises(ValueError, match="shared by every worker"):
        _check_visible(client, tmp_path / "nowhere", "the output store")


def test_array_source_and_predictor_object_are_shipped_to_the_workers(client, tmp_path):
    """An in-memory slide (scattered) and a predictor object (pickled into the plugin)."""
    from napari_biomedparse.slide._testing import StainPredictor

    img = synthetic_slide(7, (480, 480))
    kw = dict(RUN, prompts=["nuclei"], batch_size=3)
    ref = process_slide(img, tmp_path / "ref.zarr", model=StainPredictor(64), **kw)
    res = process_slide(img, tmp_path / "d.zarr", model=StainPredictor(64), client=client, **kw)
    assert res.summary["objects"] > 10
    assert_same(res, ref)


def test_model_changed_in_memory_is_shipped_not_reloaded_from_its_file(client, model_path):
    """A model loaded from a file is loaded by path on the workers, unless the caller's copy
    was changed since: then the workers detect other weights and get the caller's object."""
    import torch

    from napari_biomedparse.hub import load_model
    from napari_biomedparse.inference.loading import model_fingerprint
    from napari_biomedparse.inference.predictor import Predictor
    from napari_biomedparse.slide import distributed as dist

    same = Predictor(load_model(model_path), device="cpu")
    spec = dist.register_model(client, same, device="cpu")
    assert spec.kind == "path" and spec.source == str(Path(model_path).resolve())
    changed = Predictor(load_model(model_path), device="cpu")
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.5)
    with pytest.warns(UserWarning, match="differs from the caller's model"):
        spec2 = dist.register_model(client, changed, device="cpu")
    assert spec2.kind == "weights"
    fps = client.run(lambda: model_fingerprint(dist.get_predictor(spec2.light())))
    assert set(fps.values()) == {model_fingerprint(changed)} != {model_fingerprint(same)}


def _cli_args(slide, out, model_path):
    return ["slide", str(slide), "-o", str(out), "--model", str(model_path), "--device", "cpu",
            "--prompts", *PROMPTS, "--mpp", "1", "--tile-size", "64", "--overlap", "8",
            "--batch-size", "2", "--instances", "components", "--slide-mpp", "0.5",
            "--no-progress"]  # fmt: skip


def test_cli_scheduler_and_workers(client, model_path, slides, reference, tmp_path):
    from napari_biomedparse.cli import main
    from napari_biomedparse.slide.engine import SlideResult

    addr = client.scheduler.address
    assert main([*_cli_args(slides[0], tmp_path / "a", model_path), "--scheduler", addr]) == 0
    assert_same(SlideResult.open(tmp_path / "a" / f"{slides[0].name}.biomedparse.zarr"),
                reference[0])  # fmt: skip
    assert main([*_cli_args(slides[1], tmp_path / "b", model_path), "--workers", "2"]) == 0
    assert_same(SlideResult.open(tmp_path / "b" / f"{slides[1].name}.biomedparse.zarr"),
                reference[1])  # fmt: skip


def test_engine_runs_the_fast_predictor(model_path, tmp_path):
    """The fast path (inference/fast.py, tested there) is usable by the engine as is: it
    records the tile size as the model input, and uint8 tiles made on the device give the
    same result as float probabilities."""
    from napari_biomedparse.hub import load_model
    from napari_biomedparse.inference.fast import FastPredictor
    from napari_biomedparse.inference.predictor import Predictor

    pred = Predictor(load_model(model_path), device="cpu")
    img = synthetic_slide(5, (256, 256))
    res = process_slide(img, tmp_path / "f.zarr", model=FastPredictor(pred, 64), **RUN)
    assert res.params["input_size"] == 64 and res.summary["tiles_processed"] > 0
    res32 = process_slide(img, tmp_path / "g.zarr", **RUN,
                          model=FastPredictor(pred, 64, output="float32"))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(res.probs), np.asarray(res32.probs))


def test_process_slides_with_fewer_slides_than_workers_spreads_tiles(
    client, model_path, slides, reference, tmp_path
):
    from napari_biomedparse.slide.distributed import choose_granularity

    assert choose_granularity(1, 2) == "tiles" and choose_granularity(2, 2) == "slides"
    with pytest.raises(ValueError, match="granularity"):
        choose_granularity(1, 2, "blocks")
    calls = []
    res = process_slides([slides[0]], tmp_path / "out", model=str(model_path), device="cpu",
                         client=client, progress=lambda d, t, m: calls.append((d, t, m)),
                         **RUN)  # fmt: skip
    assert_same(res[str(slides[0])], reference[0])
    assert any(m.startswith("slide 1/1: tiles") for _, _, m in calls)
    assert calls[-1][0] == calls[-1][1] == 1000


def test_cli_gpu_options_on_the_cluster(client, model_path, slides, tmp_path):
    """--precision/--fast-gpu reach the workers (here on the CPU): the run records the tile
    size as the model input (FastPredictor), and the workers built the same predictor."""
    from napari_biomedparse.cli import main
    from napari_biomedparse.inference.fast import configure_predictor
    from napari_biomedparse.slide import distributed as dist
    from napari_biomedparse.slide._testing import StainPredictor
    from napari_biomedparse.slide.engine import SlideResult

    args = [*_cli_args(slides[0], tmp_path / "f", model_path), "--fast-gpu", "--precision",
            "bf16", "--tile-size", "128", "--scheduler", client.scheduler.address]  # fmt: skip
    assert main(args) == 0
    res = SlideResult.open(tmp_path / "f" / f"{slides[0].name}.biomedparse.zarr")
    assert res.params["input_size"] == 128 and res.params["tile_size"] == 128
    assert "fast128" in res.params["model"] and res.summary["tiles_processed"] > 5
    assert np.asarray(res.probs).any()
    # the workers built the same fast bf16 predictor
    kinds = client.run(
        lambda: sorted(
            f"{type(p).__name__}:{p.input_size}:{p.dtype}" for p in dist._PREDICTORS.values()
        )
    )
    for v in kinds.values():
        assert "FastPredictor:128:torch.bfloat16" in v
    with pytest.raises(ValueError, match="need a BiomedParse model"):
        configure_predictor(StainPredictor(64), dtype="bf16")
