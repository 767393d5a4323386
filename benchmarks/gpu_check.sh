#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes): see benchmarks/gpu_check.py for what it measures.
# Usage on a GPU machine with PyTorch + Lightning installed:  bash benchmarks/gpu_check.sh OUT_DIR
# Missing pure-Python dependencies can be provided as wheels in .whl/ (no network needed).
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia_smi.txt"
python3 -c "import torch, lightning, monai; print('torch', torch.__version__, 'lightning', lightning.__version__, 'monai', monai.__version__)"
timeout 450 python3 benchmarks/gpu_check.py "$OUT_DIR" 2>&1 | tee "$OUT_DIR/gpu_check.log"
