#!/usr/bin/env bash
# One call on a lent GPU (<= 8 min): the cross-validation's core variants at the gpu-short scale,
# several runs at once on the one GPU. Writes results/abdominal_cv_gpu-short.{json,md,png} (and
# copies them into $OUT when set); the report names the GPU. Prepare the dataset and the wheels
# here first with benchmarks/device_carry.sh (docs/multi-gpu.md, section 10).
# Usage: bash benchmarks/gpu_short.sh [PARALLEL]   (default 8)
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
parallel="${1:-8}"
mkdir -p data
for part in .device_carry/abdominal_*.tar.xz; do
  if [ -e "$part" ]; then tar -xJf "$part" -C data; fi
done
# The archives hold the images decompressed (see device_carry.sh); dataset.json names .nii.gz.
find data/abdominal_btcv_chaos -name '*.nii' -print0 | xargs -0 -r -P "$(nproc)" -n 4 gzip -1 -f
# Every file that dataset.json names must be here (part 1 may have come in an earlier call).
python3 -m ummkd data check --shallow data/abdominal_btcv_chaos
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 420 python3 -m ummkd reproduce --scale gpu-short --folds 5 --seeds 0 --data data/abdominal_btcv_chaos \
    --variants ummkd separate_norm joint single_ct single_mr --parallel "${parallel}" \
    --runs runs/reproduce_gpu_short || echo "[gpu_short] stopped at the time limit; the report lists what finished"
python3 -m ummkd reproduce --scale gpu-short --folds 5 --seeds 0 --data data/abdominal_btcv_chaos \
    --variants ummkd separate_norm joint single_ct single_mr --runs runs/reproduce_gpu_short --report-only \
    --baselines single_ct single_mr joint
if [ -n "${OUT:-}" ]; then
  cp results/abdominal_cv_gpu-short.* "$OUT"/
  find runs/reproduce_gpu_short -name reproduce.log | tar -czf "$OUT/run_logs.tar.gz" -T -
fi
