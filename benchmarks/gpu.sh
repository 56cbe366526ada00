#!/usr/bin/env bash
# The GPU checks, as one short script for a lent accelerator machine (about 5 minutes):
# the CUDA-only tests, then the benchmarks on the GPU. Output goes to $OUT when set.
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scaling-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider tests/test_optim.py tests/test_accumulate.py tests/test_augment.py tests/test_train.py tests/test_steps.py tests/test_views.py \
  -k cuda 2>&1 | tee "$OUT/cuda_tests.txt"
$PY benchmarks/bench_accumulate.py --device cuda --depth 50 --width 1.0 --size 224 --batch 256 2>&1 | tee "$OUT/accumulate_r50.txt"
$PY benchmarks/bench_accumulate.py --device cuda --depth 18 --width 1.0 --size 32 --batch 1024 2>&1 | tee "$OUT/accumulate_r18.txt"
$PY benchmarks/bench_augment.py --device cuda 2>&1 | tee "$OUT/augment.txt"
$PY benchmarks/bench_train.py --device cuda 2>&1 | tee "$OUT/train.txt"
# Image folders: decode on 2 and on 8 CPU cores, flip/colour/grey on the GPU, against the
# peers' DataLoader on the same cores (the CPU-only figure is in BENCHMARKS.md).
$PY benchmarks/bench_imagefolder.py --device cuda --cores 2 2>&1 | tee "$OUT/imagefolder_2cores.txt"
$PY benchmarks/bench_imagefolder.py --device cuda --cores 8 2>&1 | tee "$OUT/imagefolder_8cores.txt"
