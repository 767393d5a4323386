"""Dataset checks: problems in the files and things that are allowed but probably not meant.

:func:`validate_dataset` finds problems (missing, unreadable, mismatched geometry, bad label
values, overlapping splits, 2D/3D confusion), :func:`check_dataset` raises on them and
:func:`dataset_warnings` lists the doubtful.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ummkd.data.description import DATASET_JSON, Case, DatasetSpec, ModalitySpec
from ummkd.data.voxels import READ_ERRORS, fmt_values, is_2d, spatial_shape, value_counts
from ummkd.errors import DataError

_AFFINE_RTOL = 1e-3
_SPACING_RANGE_MM = (0.01, 50.0)
# "<patient with a digit>_<slice number>": ids that look like slices of one patient.
_SLICE_ID = re.compile(r"^(.*\d.*?)[_-](\d+)$")


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`validate_dataset`.

    Attributes:
        path: The file the problem is about (image, label, ``dataset.json`` or splits file).
        message: What is wrong and, where possible, what to do about it.
    """

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DatasetValidationError(DataError):
    """Raised by :func:`check_dataset` when the dataset has problems; lists all of them.

    Attributes:
        problems: The problems found.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"the dataset has {len(self.problems)} problem(s); fix them and re-run "
            f"`ummkd data check ROOT`:\n{listing}"
        )


def _read_image(path: Path, role: str, case: Case) -> tuple[Any, Problem | None]:
    """Load header and data; return the image or a problem saying why it cannot be used.

    An image (``role == "image"``) with NaN or infinite voxels is returned with that problem.
    """
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except READ_ERRORS as err:
        return None, Problem(
            path,
            f"cannot read the {role} of case {case.id!r} ({type(err).__name__}: {err}); the file "
            "is corrupt, truncated or not an image nibabel can read: re-export or re-download it",
        )
    if role == "image" and np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            return image, Problem(
                path,
                f"{bad} NaN or infinite voxel(s) in the image of case {case.id!r}; fix or "
                "re-export the image (replace them by a background value)",
            )
    return image, None


def _check_spacing(case: Case, image: Any) -> list[Problem]:
    """Voxel spacing (from the affine and the header) must be positive and plausible in mm."""
    shape = spatial_shape(image.shape)[:3]
    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    zooms = image.header.get_zooms()[:3]
    lo, hi = _SPACING_RANGE_MM
    bad = [
        float(min(s, z))
        for n, s, z in zip(shape, spacing, zooms, strict=False)
        if n > 1 and not lo <= min(s, z) <= hi
    ]
    if not bad:
        return []
    return [
        Problem(
            case.image,
            f"voxel spacing {fmt_values([round(v, 6) for v in bad])} mm of case {case.id!r} is "
            f"zero, negative or outside {lo}..{hi} mm; fix the image header (pixdim / affine)",
        )
    ]


def _check_geometry(case: Case, image: Any, label: Any) -> list[Problem]:
    problems = []
    image_shape, label_shape = spatial_shape(image.shape), spatial_shape(label.shape)
    if image_shape != label_shape:
        problems.append(
            Problem(
                case.label or case.image,
                f"label shape {label_shape} differs from the image shape {image_shape} "
                f"(case {case.id!r}); resample the label onto the image grid",
            )
        )
    difference = float(np.abs(image.affine - label.affine).max())
    tolerance = _AFFINE_RTOL * max(1.0, float(np.abs(image.affine).max()))
    if difference > tolerance:
        problems.append(
            Problem(
                case.label or case.image,
                f"label affine differs from the image affine by up to {difference:.4g} "
                f"(tolerance {tolerance:.3g}, case {case.id!r}); image and label must share "
                "one voxel grid",
            )
        )
    return problems


def _check_dim(case: Case, image: Any, expected_dim: int) -> list[Problem]:
    shape = spatial_shape(image.shape)
    if len(shape) > 3:
        return [
            Problem(
                case.image,
                f"image has shape {shape}: more than 3 spatial axes or several channels; "
                "give one single-channel image per case",
            )
        ]
    if expected_dim == 3 and is_2d(shape):
        return [
            Problem(
                case.image,
                f"2D image (shape {shape}) but 3D data is expected; use volumes, or declare "
                '"dim": 2 in dataset.json and train in 2D',
            )
        ]
    if expected_dim == 2 and not is_2d(shape):
        return [
            Problem(
                case.image,
                f"3D volume (shape {shape}) but 2D data (dim 2) is expected; declare "
                '"dim": 3 (2D networks train on slices of volumes)',
            )
        ]
    return []


def _check_label_values(
    case: Case, modality: ModalitySpec, num_classes: int
) -> tuple[list[Problem], set[int]]:
    """Check a label's values; return problems and the integer values present."""
    assert case.label is not None
    values, _ = value_counts(case.label)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.rint(values)):
        fractional = [float(v) for v in values if v != np.rint(v)]
        return [
            Problem(
                case.label,
                f"non-integer label values {fmt_values(fractional)} (case {case.id!r}); labels "
                "must be integers: resample labels with nearest-neighbour interpolation",
            )
        ], set()
    present = {int(v) for v in values}
    if modality.label_map is None:
        bad = sorted(v for v in present if not 0 <= v < num_classes)
        if bad:
            return [
                Problem(
                    case.label,
                    f"label values {fmt_values(bad)} are not shared ids 0..{num_classes - 1} "
                    f"and modality {modality.name!r} has no label_map (case {case.id!r}); add a "
                    "label_map to the modality in dataset.json",
                )
            ], present
    return [], present


def _check_splits(spec: DatasetSpec, source: Path) -> list[Problem]:
    assert spec.splits is not None
    splits = spec.splits
    where = splits.source or source
    by_id = {c.id: c for c in spec.cases}
    problems: list[Problem] = []

    def check_ids(ids: Sequence[str], part: str, need_labels: bool) -> None:
        unknown = [i for i in dict.fromkeys(ids) if i not in by_id]
        if unknown:
            problems.append(
                Problem(where, f"{part}: case id(s) {fmt_values(unknown)} are not in dataset.json")
            )
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            problems.append(Problem(where, f"{part}: case id(s) {fmt_values(repeated)} repeated"))
        if need_labels:
            unlabeled = [i for i in ids if i in by_id and by_id[i].label is None]
            if unlabeled:
                problems.append(
                    Problem(
                        where,
                        f"{part}: case(s) {fmt_values(unlabeled)} have no label; training and "
                        "validation cases need labels",
                    )
                )

    def check_overlap(a: Sequence[str], b: Sequence[str], a_name: str, b_name: str) -> None:
        both = sorted(set(a) & set(b))
        if both:
            problems.append(
                Problem(
                    where,
                    f"case(s) {fmt_values(both)} are in both {a_name} and {b_name}; a case may "
                    "be in only one of train, val and test",
                )
            )

    check_ids(splits.test, "test", need_labels=False)
    for k, fold in enumerate(splits.folds):
        test = splits.test_of(k)
        test_name = "test" if fold.test is None else f"folds[{k}].test"
        if fold.test is not None:
            check_ids(fold.test, test_name, need_labels=False)
        check_ids(fold.train, f"folds[{k}].train", need_labels=True)
        check_ids(fold.val, f"folds[{k}].val", need_labels=True)
        check_overlap(fold.train, fold.val, f"folds[{k}].train", f"folds[{k}].val")
        check_overlap(fold.train, test, f"folds[{k}].train", test_name)
        check_overlap(fold.val, test, f"folds[{k}].val", test_name)
    return problems


def validate_dataset(
    spec: DatasetSpec, *, deep: bool = True, expected_dim: int | None = None
) -> list[Problem]:
    """Find problems in a dataset.

    Args:
        spec: The dataset.
        deep: Read every image and label (header and data) to find unreadable files, shape or
            affine mismatches, bad label values and 2D/3D confusion. ``False`` checks only the
            schema-level facts and that the files exist (cheap).
        expected_dim: Dimensionality the caller needs (2 or 3); defaults to ``spec.dim``.

    Returns:
        The problems found, empty when the dataset is fine. Each names the file concerned.
    """
    source = spec.source or spec.root / DATASET_JSON
    expected = spec.dim if expected_dim is None else expected_dim
    problems: list[Problem] = []
    if expected != spec.dim:
        problems.append(
            Problem(
                source,
                f"the dataset declares dim {spec.dim} but dim {expected} is expected; use data "
                f"of dimension {expected} or a configuration for dim {spec.dim}",
            )
        )
    for name in spec.modalities:
        if not any(c.modality == name for c in spec.cases):
            problems.append(Problem(source, f"modality {name!r} has no cases"))
    if spec.splits is not None:
        problems.extend(_check_splits(spec, source))
    seen_values: dict[str, set[int]] = {name: set() for name in spec.modalities}
    labels_read: Counter[str] = Counter()
    for case in spec.cases:
        files = [("image", case.image)] + ([("label", case.label)] if case.label else [])
        missing = [(role, path) for role, path in files if not path.is_file()]
        for role, path in missing:
            problems.append(Problem(path, f"{role} of case {case.id!r} not found"))
        if missing or not deep:
            continue
        image, image_problem = _read_image(case.image, "image", case)
        label, label_problem = (
            _read_image(case.label, "label", case) if case.label else (None, None)
        )
        problems.extend(p for p in (image_problem, label_problem) if p is not None)
        if image is None:
            continue
        problems.extend(_check_dim(case, image, expected))
        problems.extend(_check_spacing(case, image))
        if label is None:
            continue
        problems.extend(_check_geometry(case, image, label))
        modality = spec.modalities[case.modality]
        value_problems, present = _check_label_values(case, modality, spec.num_classes)
        problems.extend(value_problems)
        seen_values[case.modality] |= present
        labels_read[case.modality] += 1
    for name, modality in spec.modalities.items():
        if labels_read[name]:
            problems.extend(_check_foreground(spec, modality, seen_values[name], labels_read[name]))
        if modality.label_map is None or not labels_read[name]:
            continue
        never = sorted(set(modality.label_map) - seen_values[name])
        if never:
            problems.append(
                Problem(
                    source,
                    f"modality {name!r}: label_map source value(s) {never} occur in none of its "
                    f"{labels_read[name]} label file(s); check the label_map",
                )
            )
    return problems


def _check_foreground(
    spec: DatasetSpec, modality: ModalitySpec, present: set[int], files: int
) -> list[Problem]:
    """A modality whose labels hold no foreground (as stored, or after its label_map)."""
    source = spec.source or spec.root / DATASET_JSON
    label_map = modality.label_map
    if not present - {0}:
        return [
            Problem(
                source,
                f"modality {modality.name!r}: all {files} label file(s) are background only; "
                "training on them teaches nothing (Dice 0): check the label files",
            )
        ]
    if label_map is not None and not any(label_map.get(v, 0) for v in present):
        return [
            Problem(
                source,
                f"modality {modality.name!r}: the label_map maps every label value present "
                f"{fmt_values(sorted(present))} to background; fix the label_map",
            )
        ]
    return []


def dataset_warnings(spec: DatasetSpec, *, deep: bool = True) -> list[str]:
    """Things that are allowed but probably not meant; one line each, naming the file.

    * a case file outside the dataset folder (``..``, an absolute path or a symlink leading
      out): allowed, but the dataset is then not self-contained;
    * case ids that look like slices of one patient (``<patient>_<slice>``) with slices of one
      patient in two parts of a split (train / val / test): the split should be by patient;
    * (``deep``) a shared class that no label of a modality holds after its label_map.

    Args:
        spec: The dataset.
        deep: Also read the label files (cached) for the class check.

    Returns:
        The warnings (empty when there is nothing to say).
    """
    warnings: list[str] = []
    root = spec.root.resolve()
    for case in spec.cases:
        for role, path in (("image", case.image), ("label", case.label)):
            if path is not None and not path.resolve().is_relative_to(root):
                warnings.append(
                    f"{path}: the {role} of case {case.id!r} lies outside the dataset folder "
                    f"{spec.root} (resolves to {path.resolve()}); allowed, but the dataset is "
                    "not self-contained"
                )
    warnings.extend(_slice_split_warnings(spec))
    if deep:
        warnings.extend(_missing_class_warnings(spec))
    return warnings


def _slice_split_warnings(spec: DatasetSpec) -> list[str]:
    if spec.splits is None:
        return []
    source = spec.splits.source or spec.source or spec.root / DATASET_JSON
    warnings = []
    for k, fold in enumerate(spec.splits.folds):
        parts = {"train": fold.train, "val": fold.val, "test": spec.splits.test_of(k)}
        where: dict[str, dict[str, str]] = {}
        for part, ids in parts.items():
            for case_id in ids:
                match = _SLICE_ID.match(case_id)
                if match:
                    where.setdefault(match.group(1), {}).setdefault(part, case_id)
        mixed = {group: seen for group, seen in where.items() if len(seen) > 1}
        if mixed:
            group, seen = next(iter(mixed.items()))
            example = " and ".join(f"{case_id} in {part}" for part, case_id in seen.items())
            warnings.append(
                f"{source}: fold {k}: case ids look like slices of one patient and "
                f"{len(mixed)} patient(s) are in several parts (e.g. {group}: {example}); split "
                "by patient (`ummkd data import pairs --group-regex`)"
            )
    return warnings


def _missing_class_warnings(spec: DatasetSpec) -> list[str]:
    warnings = []
    source = spec.source or spec.root / DATASET_JSON
    for name, modality in spec.modalities.items():
        present: set[int] = set()
        labels = [c.label for c in spec.cases if c.modality == name and c.label is not None]
        for label in labels:
            try:
                values, _ = value_counts(label)
            except READ_ERRORS:  # reported by validate_dataset
                continue
            present |= {int(v) for v in values if v == np.rint(v)}
        if not present - {0}:
            continue  # reported as a problem by validate_dataset
        label_map = modality.label_map
        shared = {label_map.get(v, 0) for v in present} if label_map is not None else present
        missing = [n for n, i in spec.labels.items() if i > 0 and i not in shared]
        if missing:
            warnings.append(
                f"{source}: modality {name!r}: class(es) {fmt_values(missing)} occur in none "
                f"of its {len(labels)} label file(s) (after its label_map); check the label_map"
            )
    return warnings


def check_dataset(spec: DatasetSpec, *, deep: bool = True, expected_dim: int | None = None) -> None:
    """Validate a dataset and raise if it has problems.

    Args:
        spec: The dataset.
        deep: See :func:`validate_dataset`.
        expected_dim: See :func:`validate_dataset`.

    Raises:
        DatasetValidationError: Listing every problem found.
    """
    problems = validate_dataset(spec, deep=deep, expected_dim=expected_dim)
    if problems:
        raise DatasetValidationError(problems)
