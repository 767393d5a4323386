#!/usr/bin/env bash
# Lightning-vs-bare overhead on a lent GPU machine (< 5 minutes), see benchmarks/overhead.py.
# Runs two benchmarks at once on disjoint cores:
#   * CPU: the demo setting on 2 pinned cores with 2 torch threads (a quiet 2-core machine);
#   * CUDA: the paper's 2D network (DilatedResNet2d base 16, 256x256, batch 8 + 8), bf16-mixed
#     as in configs/trainer/gpu.yaml, and the demo U-Net in fp32.
# Usage:  bash benchmarks/overhead_device.sh OUT_DIR
# Missing pure-Python dependencies can be provided as wheels in .whl/ (no network needed).
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
OUT_DIR="${1:-${OUT:-overhead_out}}"
mkdir -p "$OUT_DIR"
ROOT=/tmp/ummkd-synthetic
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; lscpu | grep -E "Model name|^CPU\(s\)"; } \
  | tee "$OUT_DIR/machine.txt"
# generate the phantoms once, before the two benchmarks start
python3 -c "from ummkd.lightning.datamodule import SyntheticOptions, UnpairedDataModule as D; D(root='$ROOT', synthetic=SyntheticOptions(generate=True), check='shallow')"
taskset -c 2,3 timeout 270 python3 benchmarks/overhead.py --root "$ROOT" --device cpu --threads 2 \
  --network demo --sections ratio fixed --steps 50 --warmup 10 --repeats 6 --json "$OUT_DIR/overhead_cpu.json" \
  > "$OUT_DIR/overhead_cpu.log" 2>&1 &
cpu_pid=$!
taskset -c 4-15 timeout 150 python3 benchmarks/overhead.py --root "$ROOT" --device cuda \
  --network paper --precision bf16-mixed --sections ratio fixed --steps 100 --warmup 20 \
  --repeats 4 --json "$OUT_DIR/overhead_cuda_paper.json" > "$OUT_DIR/overhead_cuda_paper.log" 2>&1 || true
taskset -c 4-15 timeout 110 python3 benchmarks/overhead.py --root "$ROOT" --device cuda \
  --network demo --sections ratio fixed kd --steps 100 --warmup 20 --repeats 4 \
  --json "$OUT_DIR/overhead_cuda_demo.json" > "$OUT_DIR/overhead_cuda_demo.log" 2>&1 || true
wait "$cpu_pid" || true
tail -n 40 "$OUT_DIR"/overhead_*.log
