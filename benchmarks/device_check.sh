#!/usr/bin/env bash
# One-command check of the GPU path on a CUDA machine (Python 3.12 + torch with CUDA, no
# package index). Usage, from anywhere:
#
#   bash benchmarks/device_check.sh OUTDIR            # on the GPU machine (about 8 minutes)
#   bash benchmarks/device_check.sh OUTDIR --dry-run  # rehearsal of every step on the CPU
#
# Steps (each with a time limit; a failing step is recorded and the next one still runs):
#   1. install zarr, numcodecs, dask, distributed, OpenSlide (+ their small dependencies) from
#      the wheels in ../shared/device-wheels (or $NBP_WHEELS) into $NBP_SITE (default
#      /tmp/nbp-site), then check the engine imports. --dry-run: resolve every wheel for
#      CPython 3.12 manylinux without installing (pip download --no-index into a temp dir);
#   2. the CUDA tests (tests/test_cuda.py, marker `cuda`; skipped without CUDA);
#   3. benchmarks/bench_model.py: full-size v1 configuration, random weights, 1024 x 1024, fp32,
#      bf16 and compiled (tiles/s, ms per tile, peak memory, encode / decode split)
#      (--dry-run: tiny configuration on the CPU);
#   4. benchmarks/bench_device_slide.py: synthetic pyramidal zlib TIFF with > 2,000 tissue
#      tiles at v1's pathology geometry (GPU busy fraction, tissue MP/s, time split)
#      (--dry-run: tiny model, small slide, CPU);
#   5. benchmarks/render_benchmarks.py: OUTDIR/benchmarks_section.md from the JSON files.
#      Afterwards, where the repository is checked out: python benchmarks/render_benchmarks.py
#      OUTDIR --write-docs (puts the section into docs/benchmarks.md with the card's name).
#
# Results: OUTDIR/{env.json, install.txt, cuda_tests.txt, model.json, slide.json,
# steps.tsv, benchmarks_section.md, log.txt}.
set -uo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash benchmarks/device_check.sh OUTDIR [--dry-run]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
SITE=${NBP_SITE:-/tmp/nbp-site}
WHEELS=${NBP_WHEELS:-}
for d in "$ROOT/../shared/device-wheels" "$ROOT/shared/device-wheels"; do
    if [[ -z "$WHEELS" && -d "$d" ]]; then WHEELS=$(cd "$d" && pwd); fi
done
STEPS="$OUT/steps.tsv"
: >"$STEPS"
log() { echo "[device_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

# step NAME LIMIT_S OUTFILE CMD...: runs CMD under a time limit, records rc and seconds
step() {
    local name=$1 limit=$2 outfile=$3
    shift 3
    log "step $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$outfile" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
    tail -n 3 "$outfile" | sed 's/^/    /' | tee -a "$OUT/log.txt"
    log "step $name: rc=$rc in $((SECONDS - t0))s"
    return 0
}

log "repository $ROOT, python $($PY -c 'import sys; print(sys.version.split()[0])'), dry run: $DRY"
if [[ -z "$WHEELS" ]]; then
    log "no wheel folder: looked for ../shared/device-wheels and shared/device-wheels; set NBP_WHEELS"
    exit 2
fi

# 1. install from the wheels (no index) --------------------------------------------------------
SPECS=()
for w in "$WHEELS"/*.whl; do
    b=$(basename "$w")
    SPECS+=("$(echo "$b" | cut -d- -f1)==$(echo "$b" | cut -d- -f2)")
done
if [[ $DRY == 1 ]]; then
    TMPD=$(mktemp -d)
    step install 60 "$OUT/install.txt" "$PY" -m pip --isolated download --no-index --no-deps \
        --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
        --abi none --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 \
        --find-links "$WHEELS" -d "$TMPD" "${SPECS[@]}"
    ls "$TMPD" >>"$OUT/install.txt"
    rm -rf "$TMPD"
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
else
    step install 60 "$OUT/install.txt" "$PY" -m pip --isolated install --no-index --no-deps --no-compile \
        --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
step imports 60 "$OUT/imports.txt" "$PY" -c "
import zarr, numcodecs, dask, distributed, openslide, torch
import napari_biomedparse.slide.engine, napari_biomedparse.inference.fast
print('zarr', zarr.__version__, 'dask', dask.__version__, 'openslide', openslide.__version__,
      'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

"$PY" - "$OUT/env.json" "$DRY" <<'EOF'
import json, os, platform, subprocess, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__,
       "cuda_available": torch.cuda.is_available(), "dry_run": sys.argv[2] == "1",
       "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            env["cpu"] = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
               cuda=torch.version.cuda, capability=f"{p.major}.{p.minor}")
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,power.limit,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(env)
EOF

# 2. CUDA tests ----------------------------------------------------------------------------------
if "$PY" -c "import pytest" 2>/dev/null; then
    step cuda_tests 90 "$OUT/cuda_tests.txt" "$PY" -m pytest -q -p no:cacheprovider \
        -o addopts="" -m cuda -rs tests/test_cuda.py
else  # no pytest on the machine: the file runs its tests itself
    step cuda_tests 90 "$OUT/cuda_tests.txt" "$PY" tests/test_cuda.py
fi

# 3. model benchmark -----------------------------------------------------------------------------
# (the dry run leaves torch.compile out: compiling on a small CPU takes minutes; the fast
# path's compile is covered by the CPU tests of inference/fast.py; NBP_DRY_COMPILE=1 adds it)
if [[ $DRY == 1 ]]; then
    COMPILE=()
    [[ "${NBP_DRY_COMPILE:-0}" == 1 ]] && COMPILE=(--compile --compile-dtypes bf16)
    step model 240 "$OUT/model.txt" "$PY" benchmarks/bench_model.py --device cpu --config tiny \
        --dtypes fp32,bf16 "${COMPILE[@]}" --repeats 1 --decode-repeats 1 --prompts 1,4 \
        --batch 2 --threads 2 --no-write --json "$OUT/model.json"
else
    step model 180 "$OUT/model.txt" "$PY" benchmarks/bench_model.py --device cuda --config v1 \
        --dtypes fp32,bf16 --compile --compile-dtypes bf16 --repeats 3 --decode-repeats 3 \
        --prompts 1,4 --batch 16 --no-write --json "$OUT/model.json"
fi

# 4. slide benchmark -----------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    step slide 300 "$OUT/slide.txt" "$PY" benchmarks/bench_device_slide.py --device cpu \
        --dry-run --size 384 --dtype fp32 --readers 2 --json "$OUT/slide.json"
else
    step slide 170 "$OUT/slide.txt" "$PY" benchmarks/bench_device_slide.py --device cuda \
        --workdir /tmp/nbp-devslide --json "$OUT/slide.json"
fi

# 5. render --------------------------------------------------------------------------------------
step render 60 "$OUT/render.txt" "$PY" benchmarks/render_benchmarks.py "$OUT"
log "done; results in $OUT (steps: $(tr '\t\n' ':,' <"$STEPS"))"
awk -F'\t' '$2 != 0 {bad = 1} END {exit bad}' "$STEPS"
