#!/usr/bin/env bash
# The GPU checks, as one script for a lent accelerator machine (under 8 minutes):
#   1. the CUDA tests (every test that needs CUDA, -k cuda),
#   2. benchmarks/bench_gpu.py: SimCLR step throughput of ResNet-18 (CIFAR stem, 32 px,
#      batch 512 and 1024) and ResNet-50 (224 px, batch 256) in bf16 and fp32, channels_last
#      on/off, torch.compile on/off; gradient caching against the plain step; MFU from the
#      cost model's FLOPs; the memory model against torch.cuda.max_memory_allocated; the
#      augmentation on the device,
# then prints ONE summary table and writes it to $OUT/summary.md (rows in $OUT/rows.json).
#   OUT=/tmp/gpu bash benchmarks/gpu.sh          # PYTHON=.venv/bin/python to choose python
#   python benchmarks/bench_gpu.py --cpu-smoke    # the same python code, tiny, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scaling-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$(date +%s)

# Fail fast and clearly where there is nothing to measure.
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>"$OUT/no_cuda.txt"; then
  echo "gpu.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False or torch is missing):" \
       "nothing measured. On a CPU machine: $PY benchmarks/bench_gpu.py --cpu-smoke" | tee -a "$OUT/no_cuda.txt" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"

# 1. CUDA tests (about a minute); a hang must not eat the benchmark's time.
timeout 150 $PY -m pytest -q -p no:cacheprovider -k cuda \
  tests/test_optim.py tests/test_accumulate.py tests/test_augment.py tests/test_train.py \
  tests/test_steps.py tests/test_losses.py tests/test_distributed.py tests/test_views.py 2>&1 | tee "$OUT/cuda_tests.txt"

# 2. The benchmark: stops starting configurations after --budget-s, whatever is left
#    (90 s of the 450 are kept for the image-folder figure after it).
left=$(( 360 - ($(date +%s) - start) ))
timeout $(( left > 60 ? left : 60 )) $PY benchmarks/bench_gpu.py --out "$OUT" \
  --tests-log "$OUT/cuda_tests.txt" --budget-s $(( left > 120 ? left - 90 : 30 )) 2>&1 | tee "$OUT/bench_gpu.txt"
# 3. Image folders: decode on 8 CPU cores, flip/colour/grey on the GPU, against the
#    peers' DataLoader on the same cores (the CPU-only figure is in BENCHMARKS.md).
timeout 90 $PY benchmarks/bench_imagefolder.py --device cuda --cores 8 2>&1 | tee "$OUT/imagefolder_8cores.txt"
echo "gpu.sh: $(( $(date +%s) - start )) s in all; summary in $OUT/summary.md"
