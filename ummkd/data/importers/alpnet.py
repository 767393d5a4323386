"""Import the SSL-ALPNet-preprocessed abdominal release (BTCV CT + CHAOS T2-SPIR MR).

Input layout (``/work/shared/data/abdominal_btcv_chaos``-style)::

    <src>/ct_btcv/image_<i>.nii.gz      <src>/ct_btcv/label_<i>.nii.gz       i = 0..29
    <src>/mr_chaos_t2/image_<id>.nii.gz <src>/mr_chaos_t2/label_<id>.nii.gz  CHAOS patient ids
    <src>/splits.json   {"ct": {"train": [i...], "val": [...], "test": [...]}, "mr": {...}}

Output: case ids ``ct_<i>`` / ``mr_<id>``; the source split is kept exactly (one fold + test).

Labels: CT (BTCV classmap) liver 6 -> 1, right kidney 2 -> 2, left kidney 3 -> 3, spleen 1 -> 4,
the other organs -> background; MR labels are already 0..4 (any other value is an error).

Intensities: the CT volumes are 8-bit (0..255) renderings of an undocumented HU window. The
importer writes them in Hounsfield units: the 8-bit values are kept and the NIfTI header's
``scl_slope``/``scl_inter`` map them to HU (``HU = v * 400 / 255 - 125``, the window
:data:`ALPNET_CT_WINDOW_HU` = -125..275 HU), so every reader (nibabel, MONAI, SimpleITK) returns
HU and a model trained on them takes HU. The map was estimated from tissue peaks (fat, liver,
spleen, kidneys; ``benchmarks/ct_hu_estimate.py``, docs/data.md) and every import checks it: the
pooled tissue medians in HU must fall in :data:`ummkd.data.intensity.PLAUSIBLE_HU`. The CT window
in ``dataset.json`` is the same -125..275 HU, so the normalized network input equals that of the
8-bit values with window 0..255. MR: ``"mr"``.

Orientation fix. The voxel arrays of both modalities agree anatomically (axis 0 runs from the
patient's right to left, axis 1 from posterior to anterior, axis 2 from inferior to superior), and
the MR affines say so (``LAS``), but the CT affines say axis 1 runs anterior -> posterior (``LPS``).
Reorienting by affine (MONAI ``Orientationd(axcodes="RAS")``) would therefore mirror CT against
MR in the anterior-posterior direction. With ``fix_ct_orientation`` (default) the importer keeps the
CT voxel arrays and replaces each CT affine ``A`` by ``A @ F``, where ``F`` mirrors the voxel axis
that ``A`` maps mostly onto the anterior-posterior world axis about the centre of the volume
(``j -> n_j - 1 - j``). The volume keeps its world bounding box and spacing; only the A-P direction
of that axis is reversed, so that world coordinates agree with the anatomy.

After the import every case is checked in world (RAS) coordinates with its label centroids: liver
on the patient's right of the spleen, right kidney right of the left kidney, both kidneys posterior
to the liver. A failure stops the import (e.g. if a corrected copy of the data were imported with
the fix still on).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ummkd.data.importers.common import (
    ABDOMINAL_LABELS,
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    check_same_grid,
    read_volume,
    remap_labels,
)
from ummkd.data.intensity import TissuePeaks, implausible_tissues, tissue_peaks

CT_TO_SHARED: dict[int, int] = {6: 1, 2: 2, 3: 3, 1: 4}
MR_TO_SHARED: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
FOLDERS: dict[str, str] = {"ct": "ct_btcv", "mr": "mr_chaos_t2"}
CT_ORGANS: dict[str, int] = {"liver": 6, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
"""Organs of the source CT labels (BTCV classmap) whose medians check the HU map."""
ALPNET_CT_WINDOW_HU: tuple[float, float] = (-125.0, 275.0)
"""The HU window that 8-bit value 0 and 255 stand for (estimated; see the module docstring)."""
_FILE = re.compile(r"^(?P<kind>image|label)_(?P<number>\d+)\.nii\.gz$")


def flip_anterior_posterior(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Mirror the voxel axis closest to world A-P about the volume centre (``A @ F``).

    Args:
        affine: 4x4 voxel-to-RAS affine.
        shape: Volume shape (at least 3 axes).

    Returns:
        The corrected affine: same world bounding box, A-P direction of that axis reversed.
    """
    axis = int(np.argmax(np.abs(affine[1, :3])))
    mirror = np.eye(4)
    mirror[axis, axis] = -1.0
    mirror[axis, 3] = shape[axis] - 1
    return affine @ mirror


def hu_scaling(window: tuple[float, float] = ALPNET_CT_WINDOW_HU) -> tuple[float, float]:
    """``(slope, intercept)`` mapping 8-bit values 0..255 linearly onto ``window`` (HU)."""
    low, high = window
    return (high - low) / 255.0, low


def check_hu_map(peaks: list[TissuePeaks], source: Path) -> None:
    """Refuse an import whose pooled tissue medians (in HU) are implausible.

    Raises:
        DatasetImportError: naming the tissues outside their expected range.
    """
    pooled = TissuePeaks(
        fat=float(np.median([p.fat for p in peaks])),
        organs={
            name: float(np.median([p.organs[name] for p in peaks if name in p.organs]))
            for name in CT_ORGANS
            if any(name in p.organs for p in peaks)
        },
    )
    problems = implausible_tissues(pooled)
    if problems:
        raise DatasetImportError(
            f"{source}: the CT values mapped to HU give implausible tissue medians: "
            f"{'; '.join(problems)}; this copy may not be the 8-bit SSL-ALPNet release"
        )


def organ_centroids(label: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """World (RAS, mm) centroid of every non-zero label value present in ``label``."""
    centroids = {}
    for value in range(1, int(label.max()) + 1):
        voxels = np.argwhere(label == value)
        if len(voxels):
            centroids[value] = affine[:3, :3] @ voxels.mean(axis=0) + affine[:3, 3]
    return centroids


def anatomy_problems(centroids: dict[int, np.ndarray]) -> list[str]:
    """Check the shared abdominal labels' relative positions in RAS world coordinates.

    Returns:
        Human-readable violations (empty when the anatomy is consistent); checks needing an organ
        that is absent are skipped.
    """
    liver, kidney_right, kidney_left, spleen = (centroids.get(i) for i in (1, 2, 3, 4))
    problems = []
    if liver is not None and spleen is not None and not liver[0] > spleen[0]:
        problems.append(f"liver (R={liver[0]:.1f}) is not right of the spleen (R={spleen[0]:.1f})")
    if (
        kidney_right is not None
        and kidney_left is not None
        and not kidney_right[0] > kidney_left[0]
    ):
        problems.append("right kidney is not right of the left kidney")
    for name, kidney in (("right kidney", kidney_right), ("left kidney", kidney_left)):
        if liver is not None and kidney is not None and not kidney[1] < liver[1]:
            problems.append(
                f"{name} (A={kidney[1]:.1f}) is not posterior to the liver (A={liver[1]:.1f})"
            )
    return problems


def _index(folder: Path) -> dict[int, dict[str, Path]]:
    """Map case numbers to their image and label files in ``folder``."""
    if not folder.is_dir():
        raise DatasetImportError(f"{folder}: missing; expected the SSL-ALPNet layout")
    found: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _FILE.match(path.name)
        if match is not None:
            found.setdefault(int(match["number"]), {})[match["kind"]] = path
    incomplete = sorted(n for n, entry in found.items() if len(entry) != 2)
    if incomplete:
        raise DatasetImportError(f"{folder}: cases {incomplete} lack an image or a label file")
    return found


def _read_split(path: Path) -> dict[str, dict[str, list[int]]]:
    """Read the source ``splits.json`` ({modality: {train, val, test: [int]}})."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetImportError(f"{path}: cannot read the split file ({exc})") from exc
    try:
        return {
            modality: {
                subset: [int(i) for i in document[modality][subset]]
                for subset in ("train", "val", "test")
            }
            for modality in FOLDERS
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetImportError(
            f"{path}: expected {{'ct'|'mr': {{'train'|'val'|'test': [case numbers]}}}} ({exc!r})"
        ) from exc


def import_alpnet(
    src: Path,
    out: Path,
    *,
    overwrite: bool = False,
    limit: int | None = None,
    fix_ct_orientation: bool = True,
) -> Path:
    """Import the preprocessed BTCV CT + CHAOS MR abdominal release as one ummkd dataset.

    Args:
        src: Folder with ``ct_btcv/``, ``mr_chaos_t2/`` and ``splits.json``.
        out: Output dataset folder.
        overwrite: Replace an existing dataset in ``out``.
        limit: Import only the first ``limit`` cases (by number) of each modality; the split is
            restricted to them. For quick checks.
        fix_ct_orientation: Correct the CT affines' anterior-posterior direction (see the module
            docstring).

    Returns:
        The output folder.
    """
    src = Path(src)
    source_split = _read_split(src / "splits.json")
    files = {modality: _index(src / folder) for modality, folder in FOLDERS.items()}
    for modality, subsets in source_split.items():
        listed = sorted(i for ids in subsets.values() for i in ids)
        if listed != sorted(files[modality]):
            raise DatasetImportError(
                f"{src / 'splits.json'}: {modality} split lists {listed}, but "
                f"{src / FOLDERS[modality]} holds cases {sorted(files[modality])}"
            )
    if limit is not None and limit < 1:
        raise DatasetImportError(f"--limit must be at least 1, got {limit}")
    selected = {m: sorted(numbers)[:limit] for m, numbers in files.items()}
    splits = []
    slope, intercept = hu_scaling()
    ct_peaks: list[TissuePeaks] = []
    with DatasetBuilder(out, overwrite=overwrite, inputs=[src]) as builder:
        for modality, numbers in selected.items():
            for number in numbers:
                pair = files[modality][number]
                image, affine = read_volume(pair["image"])
                label, label_affine = read_volume(pair["label"])
                check_same_grid(
                    image.shape,
                    affine,
                    label.shape,
                    label_affine,
                    image_path=pair["image"],
                    label_path=pair["label"],
                )
                scaling = None
                if modality == "ct":
                    if image.dtype != np.uint8:
                        raise DatasetImportError(
                            f"{pair['image']}: expected the release's 8-bit CT (uint8), got "
                            f"{image.dtype}"
                        )
                    scaling = (slope, intercept)
                    ct_peaks.append(tissue_peaks(image * slope + intercept, label, CT_ORGANS))
                    label = remap_labels(label, CT_TO_SHARED, path=pair["label"])
                    if fix_ct_orientation:
                        affine = flip_anterior_posterior(affine, image.shape)
                else:
                    label = remap_labels(label, MR_TO_SHARED, path=pair["label"], strict=True)
                problems = anatomy_problems(organ_centroids(label, affine))
                if problems:
                    hint = ""
                    if modality == "ct":
                        hint = (
                            "; this copy's CT affines may already be correct: import with "
                            "--no-ct-orientation-fix"
                            if fix_ct_orientation
                            else "; the CT affines contradict the anatomy: import with the fix"
                        )
                    raise DatasetImportError(
                        f"{pair['label']}: anatomy inconsistent in world coordinates after "
                        f"import: {'; '.join(problems)}{hint}"
                    )
                builder.add_case(
                    f"{modality}_{number}", modality, image, label, affine, scaling=scaling
                )
            if modality == "ct" and ct_peaks:
                check_hu_map(ct_peaks, src / FOLDERS["ct"])
            kept = {f"{modality}_{n}" for n in numbers}
            subsets = source_split[modality]
            splits.append(
                Split(
                    *(
                        tuple(f"{modality}_{i}" for i in subsets[s])
                        for s in ("train", "val", "test")
                    )
                ).restricted_to(kept)
            )
        fix_note = (
            "CT affines corrected: the voxel axis running anterior-posterior is mirrored about the "
            "volume centre (A @ F) so that world coordinates match MR and the anatomy"
            if fix_ct_orientation
            else "CT affines kept as in the source (NOT consistent with MR in A-P)"
        )
        limit_note = f" Only the first {limit} cases per modality (limit)." if limit else ""
        return builder.finish(
            name="abdominal_btcv_chaos",
            description=(
                "BTCV CT (30) + CHAOS T2-SPIR MR (20) in the SSL-ALPNet preprocessing, imported "
                f"from {src.name or src}. Research use only: BTCV is registration-gated, CHAOS is "
                "CC BY-NC-SA 4.0; do not redistribute. CT labels 6->1 liver, 2->2 right kidney, "
                "3->3 left kidney, 1->4 spleen, others -> background; MR labels kept (0..4). CT "
                "in Hounsfield units: the source's 8-bit values are stored with NIfTI scaling "
                f"HU = v * {slope:.6f} {intercept:+.0f} (window {ALPNET_CT_WINDOW_HU[0]:.0f}.."
                f"{ALPNET_CT_WINDOW_HU[1]:.0f} HU, estimated from tissue peaks, see docs/data.md)"
                f"; normalization ct with that window. {fix_note}; verified with label "
                "centroids (liver right of "
                "spleen, kidneys posterior to the liver) for every case. Split: the source's "
                f"fixed splits.json (test follows the SIFA split).{limit_note}"
            ),
            dim=3,
            labels=ABDOMINAL_LABELS,
            modalities={
                "ct": {"normalization": "ct", "window": list(ALPNET_CT_WINDOW_HU)},
                "mr": {"normalization": "mr"},
            },
            splits=splits,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``alpnet`` importer's command-line options."""
    parser.add_argument("src", type=Path, help="folder with ct_btcv/, mr_chaos_t2/ and splits.json")
    add_output_arguments(parser)
    parser.add_argument(
        "--limit", type=int, help="import only the first N cases of each modality (quick checks)"
    )
    parser.add_argument(
        "--no-ct-orientation-fix",
        dest="fix_ct_orientation",
        action="store_false",
        help="keep the CT affines as in the source (their A-P direction contradicts the MR)",
    )


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_alpnet(
        args.src,
        args.out,
        overwrite=args.overwrite,
        limit=args.limit,
        fix_ct_orientation=args.fix_ct_orientation,
    )
