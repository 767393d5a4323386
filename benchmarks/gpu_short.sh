#!/usr/bin/env bash
# One call on a lent GPU (<= 8 min): the cross-validation's core variants at the gpu-short scale,
# several runs at once on the one GPU. Writes results/abdominal_cv_gpu-short.{json,md,png}; record
# the device name from the report's "Machine" line. Usage: bash benchmarks/gpu_short.sh [PARALLEL]
set -euo pipefail
cd "$(dirname "$0")/.."
parallel="${1:-8}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 470 .venv/bin/ummkd reproduce --scale gpu-short --folds 5 --seeds 0 \
    --variants ummkd separate_norm joint single_ct single_mr --parallel "${parallel}" \
    --runs runs/reproduce_gpu_short || echo "[gpu_short] stopped at the time limit; --report-only lists what finished"
.venv/bin/ummkd reproduce --scale gpu-short --folds 5 --seeds 0 \
    --variants ummkd separate_norm joint single_ct single_mr --runs runs/reproduce_gpu_short --report-only \
    --baselines single_ct single_mr
