# Sourced by the scripts for a lent GPU machine (gpu_check.sh, overhead_device.sh): moves to the
# repository root, installs missing pure-Python dependencies from wheels in .whl/ (that machine
# has no network) into /tmp/ummkd-site, and puts them and the repository on PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ummkd-site .whl/*.whl
  export PYTHONPATH="/tmp/ummkd-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
