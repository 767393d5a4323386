#!/usr/bin/env bash
# Use a trained abdominal model on CT in Hounsfield units stored in other voxel orders, without
# the dataset: export the checkpoint, copy the fold's CT test scans out as plain int16 HU NIfTI
# files stored RAS and LPS (the training files are stored LAS), move the dataset away, segment
# the copies with the package, and score them against their labels (reoriented the same way).
# Usage: bash docs/examples/use_a_trained_model.sh CHECKPOINT DATA_ROOT WORK_DIR
# (DATA_ROOT: the dataset the checkpoint was trained on; it is moved back at the end.)
set -euo pipefail
ckpt="$1"; data="$2"; work="$3"
ummkd="${UMMKD:-ummkd}"
mkdir -p "$work"
$ummkd export --ckpt "$ckpt" --data-root "$data" --out "$work/model" --overwrite
python - "$data" "$work" <<'PY'
import json, sys
from pathlib import Path
import nibabel as nib, numpy as np
data, work = Path(sys.argv[1]), Path(sys.argv[2])
spec = json.loads((data / "dataset.json").read_text())
config = json.loads((work / "model/configs/metadata.json").read_text())
splits = json.loads((data / "splits_cv5.json").read_text())
test = [c for c in spec["cases"] if c["id"] in splits["folds"][0]["test"] and c["modality"] == "ct"]
for codes in ("RAS", "LPS"):
    for folder in ("scans", "labels"):
        (work / codes / folder).mkdir(parents=True, exist_ok=True)
    for case in test:
        image, label = nib.load(data / case["image"]), nib.load(data / case["label"])
        ornt = nib.orientations.ornt_transform(
            nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(codes))
        hu = nib.Nifti1Image(np.rint(np.asarray(image.dataobj)).astype(np.int16), image.affine)
        nib.save(hu.as_reoriented(ornt), work / codes / "scans" / f"{case['id']}.nii.gz")
        nib.save(label.as_reoriented(ornt), work / codes / "labels" / f"{case['id']}.nii.gz")
print(f"{len(test)} CT test cases of fold 0 as int16 HU, stored RAS and LPS")
PY
mv "$data" "$data.moved-away"
trap 'mv "$data.moved-away" "$data"' EXIT
for codes in RAS LPS; do
    $ummkd segment -i "$work/$codes/scans" -o "$work/$codes/pred" -m "$work/model" --modality ct --overwrite
    $ummkd evaluate --pred "$work/$codes/pred" --ref "$work/$codes/labels" \
        --labels "$work/model/configs/metadata.json" --modality ct --out "$work/$codes/eval" \
        | tail -n 12
done
