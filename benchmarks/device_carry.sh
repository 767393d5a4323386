#!/usr/bin/env bash
# Run HERE, before a lent GPU machine runs benchmarks/gpu_short.sh. That machine has no network,
# its image lacks some of ummkd's Python packages, and one call carries at most 64 MiB, so this
# writes (both folders are git-ignored):
#   .whl/                              wheels of the packages its image lacks (Python 3.12, x86-64)
#   .device_carry/abdominal_1.tar.xz   dataset.json, the folds files and ct/ of the imported dataset
#   .device_carry/abdominal_2.tar.xz   mr/
# Two calls then take them over (docs/multi-gpu.md, section 10): the first carries part 1, the
# second, at once while the machine is warm, carries part 2 and .whl/ and runs gpu_short.sh.
# Usage: bash benchmarks/device_carry.sh [DATASET_DIR]   (default data/abdominal_btcv_chaos)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-data/abdominal_btcv_chaos}"
python="${PYTHON:-.venv/bin/python}"
[ -f "$data/dataset.json" ] || {
  echo "device_carry: no dataset at $data (dataset.json missing); import it first (README.md, 'ummkd data import alpnet')" >&2
  exit 2
}
# Not in the lent machine's image (docs/multi-gpu.md lists how this set was found); the versions
# are the ones installed here, so the GPU runs use the code the tests ran with.
packages="monai nibabel pydantic pydantic-core annotated-types typing-inspection jsonargparse docstring-parser typeshed-client"
pins=$("$python" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $packages)
mkdir -p .whl .device_carry
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
# The images are gzip-compressed NIfTI, which xz cannot shrink further: the archives hold them
# decompressed (xz then saves about a quarter), and gpu_short.sh compresses them again there.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
name=$(basename "$data")
mkdir -p "$staging/$name"
cp "$data"/*.json "$staging/$name"/
for modality in ct mr; do
  mkdir -p "$staging/$name/$modality"
  for file in "$data/$modality"/*.nii.gz; do
    gzip -dc "$file" > "$staging/$name/$modality/$(basename "${file%.gz}")"
  done
done
(cd "$staging" && tar -cf - "$name"/*.json "$name/ct") | xz -9 -T0 > .device_carry/abdominal_1.tar.xz.tmp
(cd "$staging" && tar -cf - "$name/mr") | xz -9 -T0 > .device_carry/abdominal_2.tar.xz.tmp
mv .device_carry/abdominal_1.tar.xz.tmp .device_carry/abdominal_1.tar.xz
mv .device_carry/abdominal_2.tar.xz.tmp .device_carry/abdominal_2.tar.xz
du -b .device_carry/*.tar.xz .whl | awk '{printf "%6.1f MiB  %s\n", $1 / 1048576, $2}'
