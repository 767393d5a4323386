"""Shared helpers for the dataset importers.

Every importer writes the same on-disk format (see :mod:`ummkd.data.schema`)::

    <out>/dataset.json
    <out>/splits.json
    <out>/<modality>/<case id>_image.nii.gz
    <out>/<modality>/<case id>_label.nii.gz   (uint8, already remapped to the shared label ids)

and follows the same safety rules, implemented once here by :class:`DatasetBuilder`:

* inputs are only read, never written, moved or deleted; an input that lies inside the output
  folder is refused (``--overwrite`` would delete it);
* an existing non-empty output folder is only replaced with ``overwrite=True``, and only when it
  is an ummkd dataset (it holds ``dataset.json``): an arbitrary folder is never deleted;
* the dataset is built in a temporary sibling folder ``<out>.tmp-XXXX`` (every file itself written
  to a temporary name and moved with :func:`os.replace`) and renamed to ``<out>`` only once it is
  complete, so an interrupted import leaves the previous output untouched.

Deterministic splits (:func:`seeded_split`) are used where a source has no official split: each
modality's cases are ordered by ``sha256(f"{seed}:{case_id}")`` (stable across Python versions
and platforms; the relative order of two cases does not depend on the other cases) and cut into
test, val and train with the sizes of :func:`split_counts` (70/10/20 by default, at least one val
and one test case from three cases on).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import nibabel as nib
import numpy as np

from ummkd.data import labels as label_maps
from ummkd.data.description import DATASET_JSON, SPLITS_JSON, DatasetSpecError
from ummkd.data.io import (
    NIFTI_SUFFIXES,
    make_temporary_dir,
    save_nifti,
    write_json,
)
from ummkd.data.schema import parse_content, parse_dataset, parse_modality
from ummkd.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
ABDOMINAL_LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "spleen": 4,
}
CARDIAC_LABELS: dict[str, int] = {
    "background": 0,
    "myocardium": 1,
    "left_atrium": 2,
    "left_ventricle": 3,
    "ascending_aorta": 4,
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MODALITY = re.compile(r"^[a-z][a-z0-9_]*$")


class DatasetImportError(DataError, RuntimeError):
    """An import cannot go on; the message names the file, what is wrong and what to do."""


def require(module: str) -> ModuleType:
    """Import a library that only the importers use (the ``ummkd[import]`` extra).

    Raises:
        DatasetImportError: If it is not installed, naming the extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise DatasetImportError(
            f"this importer needs {package}: pip install 'ummkd[import]' ({exc})"
        ) from exc


@dataclass(frozen=True)
class Split:
    """Case ids of one modality (or of several) in the train, val and test subsets."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        """All case ids, train then val then test."""
        return self.train + self.val + self.test

    def restricted_to(self, keep: Iterable[str]) -> Split:
        """Return the split with only the case ids in ``keep``."""
        kept = set(keep)
        return Split(
            train=tuple(i for i in self.train if i in kept),
            val=tuple(i for i in self.val if i in kept),
            test=tuple(i for i in self.test if i in kept),
        )


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers numerically (``img2`` before ``img10``)."""
    return tuple(
        (0, int(token)) if token.isdigit() else (1, token)
        for token in re.split(r"(\d+)", text)
        if token
    )


def sanitize_case_id(text: str) -> str:
    """Turn free text (a file stem, a folder name) into a valid case id."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")
    if not cleaned:
        raise DatasetImportError(f"cannot derive a case id from {text!r}: no letters or digits")
    return cleaned


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--out`` and ``--overwrite`` options every importer has."""
    parser.add_argument(
        "--out", type=Path, required=True, help="output dataset folder (created if missing)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing ummkd dataset in --out (a folder without dataset.json is "
        "never deleted)",
    )


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image with its voxel-to-world affine in RAS+ millimetres (nibabel convention).

    NIfTI files are read with nibabel; anything else (``.mha``, ``.nrrd``, ``.mhd``...) with
    SimpleITK, whose LPS geometry is converted to RAS. The array is indexed ``[x, y, z]`` in both
    cases. Trailing singleton dimensions beyond the third are dropped.

    Args:
        path: The image file.

    Returns:
        ``(array, affine)`` with a 2D or 3D array and a 4x4 affine.

    Raises:
        DatasetImportError: If the file cannot be read or has more than three dimensions.
    """
    path = Path(path)
    try:
        if path.name.endswith(NIFTI_SUFFIXES):
            image = nib.load(path)
            array = np.asanyarray(image.dataobj)
            affine = np.asarray(image.affine, dtype=np.float64)
        else:
            array, affine = _read_with_simpleitk(path)
    except DatasetImportError:
        raise
    except Exception as exc:
        raise DatasetImportError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}). The file is probably "
            "truncated or not an image; re-download or re-export it, or remove it from the input."
        ) from exc
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DatasetImportError(
            f"{path}: expected a 2D or 3D image, got shape {array.shape}; split multi-channel or "
            "4D images into separate files first"
        )
    return array, affine


def _read_with_simpleitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a non-NIfTI image with SimpleITK and convert its LPS geometry to a RAS affine."""
    SimpleITK = require("SimpleITK")  # only DICOM/MHD/NRRD sources need it; it loads slowly
    return simpleitk_to_ras(SimpleITK.ReadImage(str(path)), path)


def simpleitk_to_ras(image: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as an ``[x, y, z]`` array and a voxel-to-RAS affine (from its LPS).

    Raises:
        DatasetImportError: if the image is not scalar (``path`` names it).
    """
    SimpleITK = require("SimpleITK")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetImportError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per pixel; "
            "expected a scalar image"
        )
    dim = image.GetDimension()
    array = SimpleITK.GetArrayFromImage(image).transpose()  # [z, y, x] -> [x, y, z]
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :dim] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:dim, 3] = image.GetOrigin()
    return array, LPS_TO_RAS @ lps


def check_same_grid(
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    *,
    image_path: Path,
    label_path: Path,
    atol: float = 1e-3,
) -> None:
    """Check that an image and its label share the voxel grid (shape and affine).

    Raises:
        DatasetImportError: If shapes differ or affines differ by more than ``atol`` (mm).
    """
    if tuple(image_shape) != tuple(label_shape):
        raise DatasetImportError(
            f"{label_path}: label shape {tuple(label_shape)} differs from image shape "
            f"{tuple(image_shape)} of {image_path}; the pair does not belong together"
        )
    if not np.allclose(image_affine, label_affine, atol=atol):
        raise DatasetImportError(
            f"{label_path}: label geometry differs from {image_path}:\nimage affine\n"
            f"{np.round(image_affine, 4)}\nlabel affine\n{np.round(label_affine, 4)}\n"
            "resample the label onto the image grid first"
        )


def as_image_dtype(image: np.ndarray) -> np.ndarray:
    """Keep uint8, int16 and float32; other integers -> int16 where they fit, else float32."""
    array = np.asarray(image)
    if array.dtype in (np.uint8, np.int16, np.float32):
        return array
    if array.dtype.kind in "biu":
        lo, hi = int(array.min()), int(array.max())
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return array.astype(np.int16)
        return array.astype(np.float32)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise DatasetImportError(f"unsupported image data type {array.dtype}")


def unique_values(array: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer array (bincount when small and non-negative)."""
    lo, hi = int(array.min()), int(array.max())
    if array.dtype.kind in "biu" and lo >= 0 and hi < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=hi + 1)).tolist()
    return [int(v) for v in np.unique(array)]


def remap_labels(
    label: np.ndarray, mapping: Mapping[int, int], *, path: Path | str, strict: bool = False
) -> np.ndarray:
    """Map source label values to the shared ids with a lookup table.

    Args:
        label: Integer-valued label array (float arrays must hold whole numbers).
        mapping: Source value -> shared id (0..255). Unlisted values become background (0).
        path: Where the label came from, for error messages.
        strict: Raise instead of mapping unlisted values to background.

    Returns:
        The remapped label as uint8, same shape.

    Raises:
        DatasetImportError: On non-integer values, targets outside 0..255, or (``strict``)
            values that are not in ``mapping``.
    """
    array = np.asarray(label)
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind == "f":
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise DatasetImportError(
                f"{path}: label holds non-integer values (e.g. "
                f"{array[rounded != array].flat[0]!r}); is it an image rather than a label?"
            )
        array = rounded.astype(np.int64)
    elif array.dtype.kind not in "iu":
        raise DatasetImportError(f"{path}: unsupported label data type {array.dtype}")
    if strict:
        unknown = sorted(set(unique_values(array)) - set(mapping))
        if unknown:
            raise DatasetImportError(
                f"{path}: unexpected label values {unknown[:20]} (known: {sorted(mapping)}); "
                "pass a label map that covers them"
            )
    try:  # the lookup table of the dataset format itself; 256 ids -> uint8
        return label_maps.remap_labels(array, mapping, 256).astype(np.uint8, copy=False)
    except ValueError as error:
        raise DatasetImportError(f"{path}: {error}") from error


def split_counts(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """Train/val/test sizes for ``n`` cases: rounded fractions, >= 1 val and test from n = 3.

    With the default 70/10/20: 3 -> 1/1/1, 10 -> 7/1/2, 20 -> 14/2/4, 30 -> 21/3/6; fewer than
    three cases all go to train.
    """
    if n < 3:
        return n, 0, 0
    n_val = max(1, math.floor(n * fractions[1] + 0.5))
    n_test = max(1, math.floor(n * fractions[2] + 0.5))
    return n - n_val - n_test, n_val, n_test


def seeded_split(
    ids: Iterable[str], *, seed: int = 0, counts: tuple[int, int, int] | None = None
) -> Split:
    """Deterministic split of one modality's case ids (see the module docstring).

    Args:
        ids: Case ids (unique).
        seed: Changes the order; the same seed always gives the same split.
        counts: Train/val/test sizes; default :func:`split_counts`.

    Returns:
        The split, each subset in natural order.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise DatasetImportError(f"duplicate case ids in {ids}")
    n_train, n_val, n_test = counts if counts is not None else split_counts(len(ids))
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test != len(ids):
        raise DatasetImportError(f"split sizes {counts} do not add up to {len(ids)} cases")
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return Split(
        train=tuple(sorted(order[n_test + n_val :], key=natural_key)),
        val=tuple(sorted(order[n_test : n_test + n_val], key=natural_key)),
        test=tuple(sorted(order[:n_test], key=natural_key)),
    )


def splits_document(splits: Iterable[Split]) -> dict[str, Any]:
    """Merge per-modality splits into the ``splits.json`` document (one fold + test)."""
    train: list[str] = []
    val: list[str] = []
    test: list[str] = []
    for split in splits:
        train += split.train
        val += split.val
        test += split.test
    return {"folds": [{"train": train, "val": val}], "test": test}


def _is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or lies below it (symlinks resolved)."""
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link a file (instant, no extra space); copy where linking is impossible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _load_json(path: Path) -> Any:
    """Read a JSON file with an error that names it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetImportError(f"{path}: cannot read JSON ({exc}); fix or remove it") from exc


class DatasetBuilder:
    """Builds an ummkd dataset in a temporary sibling folder and moves it into place at the end.

    Use as a context manager: on an exception the temporary folder is removed and the output
    folder is left exactly as it was.

    Example::

        with DatasetBuilder(out, overwrite=args.overwrite, inputs=[src]) as builder:
            builder.add_case("ct_0001", "ct", image, label, affine)
            builder.finish(name=..., description=..., dim=3, labels=..., modalities=...,
                           splits=[seeded_split(["ct_0001"])])

    Args:
        out: Output dataset folder.
        overwrite: Replace an existing dataset in ``out``.
        append: Add cases to the existing dataset in ``out`` (its files are hard-linked into the
            new build, its dataset.json and splits.json are merged with the new cases).
        inputs: Input files or folders; refused if they lie inside ``out``.
    """

    def __init__(
        self,
        out: Path,
        *,
        overwrite: bool = False,
        append: bool = False,
        inputs: Iterable[Path] = (),
    ) -> None:
        self.out = Path(out).absolute()
        self.overwrite = overwrite
        self.append = append
        self.inputs = [Path(p) for p in inputs]
        self.existing: dict[str, Any] | None = None
        self.existing_splits: dict[str, Any] | None = None
        self._tmp: Path | None = None
        self._cases: list[dict[str, str]] = []

    def __enter__(self) -> DatasetBuilder:
        self._check_target()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = make_temporary_dir(self.out.parent, prefix=f"{self.out.name}.tmp-")
        if self.existing is not None:
            shutil.copytree(self.out, self._tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _check_target(self) -> None:
        """Validate the output folder and load the dataset to append to."""
        out = self.out
        if self.append and self.overwrite:
            raise DatasetImportError("--append and --overwrite exclude each other; pick one")
        for source in self.inputs:
            if _is_within(source, out):
                raise DatasetImportError(
                    f"input {source} lies inside the output folder {out}, which the import "
                    "replaces; choose an --out outside the inputs"
                )
        if not out.exists():
            return
        if not out.is_dir():
            raise DatasetImportError(f"--out {out} exists and is not a folder")
        if not any(out.iterdir()):
            return
        dataset_json = out / DATASET_JSON
        if self.append:
            if not dataset_json.is_file():
                raise DatasetImportError(
                    f"cannot append to {out}: it has no {DATASET_JSON}; append only to a "
                    "dataset written by an ummkd importer"
                )
            self.existing = _load_json(dataset_json)
            self.existing_splits = _load_json(out / SPLITS_JSON)
            folds = self.existing_splits.get("folds") if self.existing_splits else None
            if not isinstance(folds, list) or len(folds) != 1:
                raise DatasetImportError(
                    f"{out / SPLITS_JSON}: appending needs exactly one fold, found "
                    f"{len(folds) if isinstance(folds, list) else 'none'}"
                )
            try:
                parse_dataset(self.existing, out, dataset_json)
            except DatasetSpecError as error:
                raise DatasetImportError(f"cannot append: {error}") from error
        elif self.overwrite:
            if not dataset_json.is_file():
                raise DatasetImportError(
                    f"refusing to replace {out}: it is not an ummkd dataset (no {DATASET_JSON}). "
                    "Delete it yourself or choose another --out"
                )
        else:
            raise DatasetImportError(
                f"output folder {out} is not empty; pass --overwrite to replace it or choose "
                "another --out"
            )

    @property
    def existing_case_ids(self) -> set[str]:
        """Case ids already in the dataset being appended to (empty otherwise)."""
        if self.existing is None:
            return set()
        return {case["id"] for case in self.existing["cases"]}

    def add_case(
        self,
        case_id: str,
        modality: str,
        image: np.ndarray,
        label: np.ndarray,
        affine: np.ndarray,
        *,
        scaling: tuple[float, float] | None = None,
    ) -> None:
        """Write one image/label pair (same grid, same affine) into the dataset being built.

        Args:
            case_id: Unique id across all modalities (letters, digits, ``_.-``).
            modality: Modality key, e.g. ``"ct"`` or ``"mr"``; also the sub-folder name.
            image: Image array; stored as uint8, int16 or float32 (:func:`as_image_dtype`).
            label: uint8 label array with the shared ids, same shape as ``image``.
            affine: 4x4 voxel-to-RAS affine written into both files.
            scaling: ``(slope, intercept)`` written into the image header (``scl_slope``,
                ``scl_inter``): readers return ``slope * stored + intercept``.
        """
        if self._tmp is None:
            raise RuntimeError("DatasetBuilder.add_case used outside its `with` block")
        if not _CASE_ID.match(case_id):
            raise DatasetImportError(f"invalid case id {case_id!r}: use letters, digits and _.-")
        if not _MODALITY.match(modality):
            raise DatasetImportError(
                f"invalid modality {modality!r}: use lower-case letters, digits and _"
            )
        if case_id in self.existing_case_ids or any(c["id"] == case_id for c in self._cases):
            raise DatasetImportError(f"case id {case_id!r} occurs twice; case ids must be unique")
        if image.shape != label.shape:
            raise DatasetImportError(
                f"case {case_id}: image shape {image.shape} != label shape {label.shape}"
            )
        if label.dtype != np.uint8:
            raise DatasetImportError(f"case {case_id}: label must be uint8, got {label.dtype}")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise DatasetImportError(f"case {case_id}: invalid affine\n{affine}")
        folder = self._tmp / modality
        folder.mkdir(exist_ok=True)
        record = {
            "id": case_id,
            "modality": modality,
            "image": f"{modality}/{case_id}_image.nii.gz",
            "label": f"{modality}/{case_id}_label.nii.gz",
        }
        save_nifti(as_image_dtype(image), affine, self._tmp / record["image"], scaling=scaling)
        save_nifti(label, affine, self._tmp / record["label"])
        self._cases.append(record)
        logger.info("wrote %s (%s, shape %s)", case_id, modality, image.shape)

    def finish(
        self,
        *,
        name: str,
        description: str,
        dim: int,
        labels: Mapping[str, int],
        modalities: Mapping[str, Mapping[str, Any]],
        splits: Sequence[Split],
    ) -> Path:
        """Write dataset.json and splits.json and move the dataset into place.

        Args:
            name: Dataset name.
            description: Source, license note and what the importer did.
            dim: 3 for volumes, 2 for 2D images.
            labels: Shared label name -> id, with ``"background": 0``.
            modalities: Modality -> ``{"normalization": ..., ["window": [lo, hi]]}``.
            splits: Splits covering every case added, each exactly once.

        Returns:
            The output folder.

        Raises:
            DatasetImportError: If nothing was imported, or the dataset.json / splits.json
                content violates the schema of :mod:`ummkd.data.schema` (checked there).
        """
        if self._tmp is None:
            raise RuntimeError("DatasetBuilder.finish used outside its `with` block")
        labels = dict(labels)
        modalities = {m: dict(cfg) for m, cfg in modalities.items()}
        if not self._cases:
            raise DatasetImportError("no cases were imported; check the input folder")
        split_ids = [i for split in splits for i in split.ids]
        case_ids = [c["id"] for c in self._cases]
        if sorted(split_ids) != sorted(case_ids):
            raise DatasetImportError(
                "internal error: the split does not cover each case exactly once "
                f"(missing {sorted(set(case_ids) - set(split_ids))}, "
                f"extra {sorted(set(split_ids) - set(case_ids))})"
            )
        cases = list(self._cases)
        splits_doc = splits_document(splits)
        if self.existing is not None and self.existing_splits is not None:
            name, description, cases, modalities, splits_doc = self._merge_existing(
                description, dim, labels, modalities, splits_doc
            )
        dataset: dict[str, Any] = {
            "name": name,
            "description": description,
            "dim": dim,
            "labels": labels,
            "modalities": modalities,
            "cases": cases,
        }
        try:
            parse_content(
                dataset,
                splits_doc,
                root=self.out,
                source=self.out / DATASET_JSON,
                splits_source=self.out / SPLITS_JSON,
            )
        except DatasetSpecError as error:
            raise DatasetImportError(str(error)) from error
        dataset["splits"] = SPLITS_JSON
        write_json(dataset, self._tmp / DATASET_JSON)
        write_json(splits_doc, self._tmp / SPLITS_JSON)
        self._publish()
        logger.info("dataset with %d cases written to %s", len(cases), self.out)
        return self.out

    def _merge_existing(
        self,
        description: str,
        dim: int,
        labels: dict[str, int],
        modalities: dict[str, dict[str, Any]],
        splits_doc: dict[str, Any],
    ) -> tuple[str, str, list[dict[str, str]], dict[str, dict[str, Any]], dict[str, Any]]:
        """Merge the new cases into the dataset being appended to."""
        assert self.existing is not None and self.existing_splits is not None
        where = self.out / DATASET_JSON
        if self.existing["labels"] != labels:
            raise DatasetImportError(
                f"{where}: labels {self.existing['labels']} differ from the new labels {labels}; "
                "appended modalities must use the same label names and ids"
            )
        if self.existing.get("dim", 3) != dim:
            raise DatasetImportError(f"{where}: dim {self.existing.get('dim', 3)} != new dim {dim}")
        merged = dict(self.existing["modalities"])
        for modality, config in modalities.items():
            if modality in merged and merged[modality] != config:
                raise DatasetImportError(
                    f"{where}: modality {modality!r} is already configured as "
                    f"{merged[modality]}, the new cases ask for {config}"
                )
            merged[modality] = config
        fold = self.existing_splits["folds"][0]
        merged_splits = {
            "folds": [
                {
                    "train": list(fold.get("train", [])) + splits_doc["folds"][0]["train"],
                    "val": list(fold.get("val", [])) + splits_doc["folds"][0]["val"],
                }
            ],
            "test": list(self.existing_splits.get("test", [])) + splits_doc["test"],
        }
        return (
            self.existing.get("name", self.out.name),
            f"{self.existing.get('description', '')}\n\nAppended: {description}".strip(),
            list(self.existing["cases"]) + self._cases,
            merged,
            merged_splits,
        )

    def _publish(self) -> None:
        """Move the finished build to ``out``, replacing what was there only now."""
        assert self._tmp is not None
        out = self.out
        if out.exists() and any(out.iterdir()):
            backup = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, backup)
            try:
                os.replace(self._tmp, out)
            except BaseException:
                os.replace(backup, out)
                raise
            shutil.rmtree(backup)
            return
        if out.exists():
            out.rmdir()
        os.replace(self._tmp, out)


def check_modality_settings(modality: str, config: Mapping[str, Any], out: Path) -> None:
    """Check one modality's settings with the dataset schema before importing anything.

    Raises:
        DatasetImportError: Saying what is wrong (the message names ``out``'s dataset.json).
    """
    try:
        parse_modality(modality, config, Path(out) / DATASET_JSON)
    except DatasetSpecError as error:
        raise DatasetImportError(str(error)) from error
