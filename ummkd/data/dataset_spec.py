"""Dataset description (``dataset.json``): schema, loading, label maps, validation and summary.

An ummkd dataset root holds a ``dataset.json`` describing one shared label space, the imaging
modalities (with their intensity normalization and an optional map from the modality's own label
values to the shared ids), the cases and a reference to the splits::

    {
      "name": "abdominal_btcv_chaos",
      "dim": 3,
      "labels": {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4},
      "modalities": {
        "ct": {"normalization": "ct", "window": [-125, 275],
               "label_map": {"6": 1, "2": 2, "3": 3, "1": 4}},
        "mr": {"normalization": "mr"}
      },
      "cases": [{"id": "ct_0", "modality": "ct", "image": "ct/image_0.nii.gz",
                 "label": "ct/label_0.nii.gz"}],
      "splits": "splits.json"
    }

``splits.json`` is ``{"folds": [{"train": [...], "val": [...]}, ...], "test": [...]}`` or
nnU-Net's ``splits_final.json`` (a plain list of ``{"train", "val"}`` folds). Source label values
missing from a ``label_map`` become background; without ``label_map`` the values must already be
shared ids. :func:`load_dataset` also reads nnU-Net v2 raw datasets and MONAI / Medical
Segmentation Decathlon datalists. :func:`validate_dataset` finds problems in the files (missing,
unreadable, mismatched geometry, bad label values, overlapping splits, 2D/3D confusion) and
:func:`summarize_dataset` tabulates the data per modality.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from rich.table import Table

from ummkd.data.io import write_json
from ummkd.errors import DataError

__all__ = [
    "DATASET_JSON",
    "FORMATS",
    "NORMALIZATIONS",
    "SPLITS_JSON",
    "Case",
    "DatasetSpec",
    "DatasetSpecError",
    "DatasetValidationError",
    "Fold",
    "ModalitySpec",
    "Problem",
    "Splits",
    "check_dataset",
    "dataset_warnings",
    "load_dataset",
    "read_splits",
    "remap_labels",
    "summarize_dataset",
    "validate_dataset",
    "write_dataset_json",
]

DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits.json"
NNUNET_SPLITS_JSON = "splits_final.json"
NORMALIZATIONS = ("ct", "mr", "zscore", "none")
FORMATS = ("auto", "ummkd", "nnunet", "decathlon")
SPLIT_NAMES = ("train", "val", "test", "all")
Split = Literal["train", "val", "test", "all"]
Format = Literal["auto", "ummkd", "nnunet", "decathlon"]

_TOP_KEYS = ("name", "description", "dim", "labels", "modalities", "cases", "splits")
_MODALITY_KEYS = ("normalization", "window", "label_map")
_CASE_KEYS = ("id", "modality", "image", "label")
_SPLITS_KEYS = ("folds", "test", "description")
_FOLD_KEYS = {"train", "val", "test"}
_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)
_MR_CHANNEL_NAMES = ("mr", "mri", "t1", "t1w", "t2", "t2w", "flair", "adc", "dwi")
_AFFINE_RTOL = 1e-3
_SPACING_RANGE_MM = (0.01, 50.0)
# "<patient with a digit>_<slice number>": ids that look like slices of one patient.
_SLICE_ID = re.compile(r"^(.*\d.*?)[_-](\d+)$")
_MAX_LISTED = 8


class DatasetSpecError(DataError):
    """A dataset description (``dataset.json``, splits file or datalist) is missing or malformed."""


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


@dataclass(frozen=True)
class Case:
    """One image (and its label map, if labeled) of one modality.

    Attributes:
        id: Unique case id.
        modality: Name of the case's modality (a key of :attr:`DatasetSpec.modalities`).
        image: Absolute path of the image.
        label: Absolute path of the label image, ``None`` for unlabeled (predict-only) cases.
    """

    id: str
    modality: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class ModalitySpec:
    """How the images of one modality are normalized and how its labels map to shared ids.

    Attributes:
        name: Modality name (e.g. ``"ct"``).
        normalization: One of :data:`NORMALIZATIONS`.
        window: CT intensity window ``(lo, hi)`` clipped before z-scoring (``"ct"`` only);
            ``None`` lets the data module use the dataset foreground percentiles 0.5 / 99.5.
        label_map: Source label value -> shared id (unlisted values become background);
            ``None`` means the stored values already are shared ids.
    """

    name: str
    normalization: str
    window: tuple[float, float] | None = None
    label_map: dict[int, int] | None = None


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold.

    Attributes:
        train: Case ids used for training.
        val: Case ids used for validation.
        test: This fold's own test case ids (cross-validation); ``None`` uses the splits' common
            ``test``.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Splits:
    """Cross-validation folds and the held-out test cases.

    Attributes:
        folds: The folds (each a train/val partition).
        test: Test case ids (never used for training or model selection).
        source: File the splits were read from (``None`` when given inline).
    """

    folds: tuple[Fold, ...]
    test: tuple[str, ...] = ()
    source: Path | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Return the ``splits.json`` content."""
        folds = []
        for fold in self.folds:
            entry = {"train": list(fold.train), "val": list(fold.val)}
            if fold.test is not None:
                entry["test"] = list(fold.test)
            folds.append(entry)
        return {"folds": folds, "test": list(self.test)}

    def test_of(self, fold: int) -> tuple[str, ...]:
        """The test case ids of ``fold`` (its own, else the common ones)."""
        own = self.folds[fold].test if 0 <= fold < len(self.folds) else None
        return self.test if own is None else own


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset description.

    Attributes:
        root: Dataset root; relative paths in ``dataset.json`` are relative to it.
        name: Dataset name.
        labels: Shared label space, class name -> id (ids ``0..C-1``, 0 = background).
        modalities: Modality name -> :class:`ModalitySpec`, in ``dataset.json`` order.
        cases: All cases, in ``dataset.json`` order.
        splits: Folds and test cases, ``None`` when the dataset defines none.
        dim: 3 for volumes, 2 for single 2D images.
        description: Free text.
        source: The file the description was read from.
    """

    root: Path
    name: str
    labels: dict[str, int]
    modalities: dict[str, ModalitySpec]
    cases: tuple[Case, ...]
    splits: Splits | None = None
    dim: int = 3
    description: str = ""
    source: Path | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of shared classes, background included."""
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by id."""
        return sorted(self.labels, key=self.labels.__getitem__)

    @property
    def modality_names(self) -> list[str]:
        """Modality names in ``dataset.json`` order."""
        return list(self.modalities)

    def cases_for(self, modality: str, split: Split, fold: int = 0) -> list[Case]:
        """Return the cases of one modality in one split, in ``dataset.json`` order.

        Args:
            modality: Modality name.
            split: ``"train"`` or ``"val"`` (of ``fold``), ``"test"``, or ``"all"`` (every case of
                the modality, whether or not it is in a split).
            fold: Fold index for ``"train"`` / ``"val"``.

        Returns:
            The matching cases.

        Raises:
            DatasetSpecError: If the modality is unknown, the dataset has no splits (for
                ``"train"``, ``"val"``, ``"test"``) or ``fold`` does not exist.
            ValueError: If ``split`` is not one of ``train``, ``val``, ``test``, ``all``.
        """
        if modality not in self.modalities:
            raise DatasetSpecError(
                f"{self._where}: unknown modality {modality!r}; the dataset has "
                f"{self.modality_names}"
            )
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        cases = [c for c in self.cases if c.modality == modality]
        if split == "all":
            return cases
        if self.splits is None:
            raise DatasetSpecError(
                f"{self._where}: the dataset defines no splits, so there is no {split!r} split; "
                f'add "splits": "{SPLITS_JSON}" to dataset.json and write {SPLITS_JSON} as '
                '{"folds": [{"train": [...], "val": [...]}], "test": [...]}'
            )
        if split == "test" and not self.splits.folds:
            wanted = set(self.splits.test)
        else:
            if not 0 <= fold < len(self.splits.folds):
                raise DatasetSpecError(
                    f"{self.splits.source or self._where}: fold {fold} does not exist; the splits "
                    f"have {len(self.splits.folds)} fold(s)"
                )
            chosen = self.splits.folds[fold]
            if split == "test":
                wanted = set(self.splits.test_of(fold))
            else:
                wanted = set(chosen.train if split == "train" else chosen.val)
        return [c for c in cases if c.id in wanted]

    def select_modality(self, modality: str) -> DatasetSpec:
        """Return the dataset restricted to one modality (cases, modalities and splits).

        Split ids of other modalities' cases are dropped; ids that match no case are kept so that
        :func:`validate_dataset` still reports them.

        Args:
            modality: Modality to keep.

        Returns:
            A new :class:`DatasetSpec`.

        Raises:
            DatasetSpecError: If the modality is unknown.
        """
        if modality not in self.modalities:
            raise DatasetSpecError(
                f"{self._where}: unknown modality {modality!r}; the dataset has "
                f"{self.modality_names}"
            )
        other = {c.id for c in self.cases if c.modality != modality}
        splits = self.splits
        if splits is not None:
            splits = replace(
                splits,
                folds=tuple(
                    Fold(
                        _without(f.train, other),
                        _without(f.val, other),
                        None if f.test is None else _without(f.test, other),
                    )
                    for f in splits.folds
                ),
                test=_without(splits.test, other),
            )
        return replace(
            self,
            modalities={modality: self.modalities[modality]},
            cases=tuple(c for c in self.cases if c.modality == modality),
            splits=splits,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the ``dataset.json`` content (no ``"splits"``); paths relative to the root."""
        modalities: dict[str, Any] = {}
        for name, m in self.modalities.items():
            entry: dict[str, Any] = {"normalization": m.normalization}
            if m.window is not None:
                entry["window"] = list(m.window)
            if m.label_map is not None:
                entry["label_map"] = {str(k): v for k, v in m.label_map.items()}
            modalities[name] = entry
        cases = []
        for c in self.cases:
            entry = {"id": c.id, "modality": c.modality, "image": _relative(c.image, self.root)}
            if c.label is not None:
                entry["label"] = _relative(c.label, self.root)
            cases.append(entry)
        return {
            "name": self.name,
            "description": self.description,
            "dim": self.dim,
            "labels": dict(self.labels),
            "modalities": modalities,
            "cases": cases,
        }

    @property
    def _where(self) -> Path:
        return self.source or self.root / DATASET_JSON


# ---------------------------------------------------------------------------------------- parsing
def _without(ids: Iterable[str], drop: set[str]) -> tuple[str, ...]:
    return tuple(i for i in ids if i not in drop)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetSpecError(f"{path}: cannot read the file ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetSpecError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err


def _parse_labels(raw: Any, source: Path) -> dict[str, int]:
    example = '{"background": 0, "liver": 1}'
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetSpecError(
            f"{source}: 'labels' must be a non-empty object of class name -> id, e.g. {example}"
        )
    for name, value in raw.items():
        if not _is_int(value):
            raise DatasetSpecError(
                f"{source}: label {name!r} has id {value!r}; ids must be integers "
                "(nnU-Net region-based labels are not supported)"
            )
    ids = sorted(raw.values())
    if ids != list(range(len(ids))):
        raise DatasetSpecError(
            f"{source}: label ids must be unique and contiguous 0..{len(ids) - 1} with "
            f"0 = background; got {ids}"
        )
    return dict(sorted(raw.items(), key=lambda item: item[1]))


def _parse_modality(name: str, raw: Any, num_classes: int, source: Path) -> ModalitySpec:
    where = f"{source}: modality {name!r}"
    if not isinstance(raw, Mapping):
        raise DatasetSpecError(f'{where} must be an object like {{"normalization": "ct"}}')
    unknown = sorted(set(raw) - set(_MODALITY_KEYS))
    if unknown:
        raise DatasetSpecError(
            f"{where}: unknown key(s) {unknown}; allowed: {list(_MODALITY_KEYS)}"
        )
    normalization = raw.get("normalization")
    if normalization not in NORMALIZATIONS:
        raise DatasetSpecError(
            f"{where}: normalization {normalization!r} is not one of {list(NORMALIZATIONS)}"
        )
    window = None
    if raw.get("window") is not None:
        lo_hi = raw["window"]
        if normalization != "ct":
            raise DatasetSpecError(f"{where}: 'window' only applies to normalization 'ct'")
        if (
            not isinstance(lo_hi, Sequence)
            or len(lo_hi) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in lo_hi)
            or not lo_hi[0] < lo_hi[1]
        ):
            raise DatasetSpecError(
                f"{where}: 'window' must be [lo, hi] with lo < hi, got {lo_hi!r}"
            )
        window = (float(lo_hi[0]), float(lo_hi[1]))
    label_map = None
    if raw.get("label_map") is not None:
        label_map = _parse_label_map(raw["label_map"], num_classes, where)
    return ModalitySpec(name, normalization, window, label_map)


def _parse_label_map(raw: Any, num_classes: int, where: str) -> dict[int, int]:
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetSpecError(
            f"{where}: 'label_map' must be a non-empty object like {{\"6\": 1}} "
            "(source value -> shared id)"
        )
    label_map: dict[int, int] = {}
    for key, value in raw.items():
        try:
            source_value = int(key)
        except (TypeError, ValueError):
            raise DatasetSpecError(
                f"{where}: label_map key {key!r} is not an integer label value"
            ) from None
        if not _is_int(value) or not 0 <= value < num_classes:
            raise DatasetSpecError(
                f"{where}: label_map maps {key!r} to {value!r}, which is not a shared label id "
                f"0..{num_classes - 1}"
            )
        label_map[source_value] = value
    return label_map


def _parse_cases(
    raw: Any, root: Path, modalities: Mapping[str, ModalitySpec], source: Path
) -> tuple[Case, ...]:
    if not isinstance(raw, list):
        raise DatasetSpecError(f"{source}: 'cases' must be a list of case objects")
    cases: list[Case] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"{source}: cases[{index}]"
        if not isinstance(entry, Mapping):
            raise DatasetSpecError(f"{where} must be an object with id, modality, image, label")
        unknown = sorted(set(entry) - set(_CASE_KEYS))
        if unknown:
            raise DatasetSpecError(
                f"{where}: unknown key(s) {unknown}; allowed: {list(_CASE_KEYS)}"
            )
        case_id = entry.get("id")
        if not isinstance(case_id, str) or not case_id:
            raise DatasetSpecError(f"{where}: 'id' must be a non-empty string, got {case_id!r}")
        if case_id in seen:
            raise DatasetSpecError(f"{where}: duplicate case id {case_id!r}; ids must be unique")
        seen.add(case_id)
        modality = entry.get("modality")
        if modality not in modalities:
            raise DatasetSpecError(
                f"{where} ({case_id!r}): unknown modality {modality!r}; 'modalities' defines "
                f"{list(modalities)}"
            )
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise DatasetSpecError(f"{where} ({case_id!r}): 'image' must be a path string")
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise DatasetSpecError(f"{where} ({case_id!r}): 'label' must be a path string")
        cases.append(Case(case_id, modality, root / image, root / label if label else None))
    return tuple(cases)


def _parse_ids(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise DatasetSpecError(f"{where} must be a list of case id strings, got {raw!r:.80}")
    return tuple(raw)


def read_splits(path: Path) -> Splits:
    """Read a splits file (``{"folds": [...], "test": [...]}`` or nnU-Net's fold list).

    Raises:
        DatasetSpecError: If the file is missing, not JSON or malformed.
    """
    if not path.is_file():
        raise DatasetSpecError(f"{path}: the splits file does not exist")
    return _parse_splits(_read_json(path), path, path)


def _parse_splits(raw: Any, source: Path, splits_file: Path | None) -> Splits:
    """Parse ``{"folds": [...], "test": [...]}`` or nnU-Net's list of ``{"train", "val"}``."""
    if isinstance(raw, list):
        folds_raw, test_raw = raw, []
    elif isinstance(raw, Mapping):
        unknown = sorted(set(raw) - set(_SPLITS_KEYS))
        if unknown:
            raise DatasetSpecError(
                f"{source}: unknown splits key(s) {unknown}; expected "
                '{"folds": [{"train": [...], "val": [...]}], "test": [...]}'
            )
        folds_raw, test_raw = raw.get("folds", []), raw.get("test", [])
    else:
        raise DatasetSpecError(
            f'{source}: splits must be {{"folds": [...], "test": [...]}} or a list of '
            '{"train": [...], "val": [...]} folds'
        )
    if not isinstance(folds_raw, list):
        raise DatasetSpecError(f"{source}: 'folds' must be a list")
    folds = []
    for k, fold in enumerate(folds_raw):
        if not isinstance(fold, Mapping) or set(fold) not in ({"train", "val"}, _FOLD_KEYS):
            raise DatasetSpecError(
                f"{source}: folds[{k}] must be an object with 'train' and 'val' lists (and "
                "optionally the fold's own 'test' list)"
            )
        folds.append(
            Fold(
                _parse_ids(fold["train"], f"{source}: folds[{k}].train"),
                _parse_ids(fold["val"], f"{source}: folds[{k}].val"),
                _parse_ids(fold["test"], f"{source}: folds[{k}].test") if "test" in fold else None,
            )
        )
    return Splits(tuple(folds), _parse_ids(test_raw, f"{source}: 'test'"), splits_file)


def _parse_ummkd(data: Any, root: Path, source: Path) -> DatasetSpec:
    if not isinstance(data, Mapping):
        raise DatasetSpecError(f"{source}: the top level must be a JSON object")
    missing = [k for k in ("labels", "modalities", "cases") if k not in data]
    if missing:
        raise DatasetSpecError(f"{source}: missing key(s) {missing}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise DatasetSpecError(f"{source}: unknown key(s) {unknown}; allowed: {list(_TOP_KEYS)}")
    dim = data.get("dim", 3)
    if dim not in (2, 3) or not _is_int(dim):
        raise DatasetSpecError(f"{source}: 'dim' must be 2 or 3, got {dim!r}")
    labels = _parse_labels(data["labels"], source)
    raw_modalities = data["modalities"]
    if not isinstance(raw_modalities, Mapping) or not raw_modalities:
        raise DatasetSpecError(
            f"{source}: 'modalities' must be a non-empty object like {{\"ct\": "
            '{"normalization": "ct"}}'
        )
    modalities = {
        name: _parse_modality(name, raw, len(labels), source)
        for name, raw in raw_modalities.items()
    }
    cases = _parse_cases(data["cases"], root, modalities, source)
    splits = None
    raw_splits = data.get("splits")
    if isinstance(raw_splits, str):
        splits_file = root / raw_splits
        if not splits_file.is_file():
            raise DatasetSpecError(
                f"{source}: the splits file {splits_file} does not exist; write it or remove "
                "'splits' from dataset.json"
            )
        splits = read_splits(splits_file)
    elif raw_splits is not None:
        splits = _parse_splits(raw_splits, source, None)
    name = data.get("name", root.name)
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise DatasetSpecError(f"{source}: 'name' and 'description' must be strings")
    return DatasetSpec(
        root=root,
        name=name,
        labels=labels,
        modalities=modalities,
        cases=cases,
        splits=splits,
        dim=dim,
        description=description,
        source=source,
    )


def _normalization_for(channel_name: str) -> str:
    """nnU-Net channel name -> normalization ("CT" -> ct, "noNorm" -> none, MR names -> mr)."""
    lowered = channel_name.lower()
    if lowered == "ct":
        return "ct"
    if lowered == "nonorm":
        return "none"
    return "mr" if lowered in _MR_CHANNEL_NAMES else "zscore"


def _pick_channel(
    channels: Mapping[str, Any], modality: str | None, source: Path
) -> tuple[int, str, str]:
    """Return (channel index, modality name, channel name) chosen from an nnU-Net/MSD header."""
    try:
        names = {int(k): str(v) for k, v in channels.items()}
    except ValueError:
        raise DatasetSpecError(
            f'{source}: channel keys must be channel indices like "0", got {list(channels)}'
        ) from None
    if modality is not None:
        matches = [i for i, n in names.items() if n.lower() == modality.lower()]
        if matches:
            return matches[0], modality, names[matches[0]]
    if len(names) == 1:
        ((index, channel_name),) = names.items()
        return index, modality or channel_name.lower(), channel_name
    raise DatasetSpecError(
        f"{source}: the dataset has channels {names}; choose one with modality=<channel name> "
        "(`--modality` on the command line)"
    )


def _infer_dim(cases: Sequence[Case]) -> int:
    """2 when the first readable image is a single 2D slice, else 3 (reads one header)."""
    for case in cases:
        try:
            shape = nib.load(case.image).shape
        except _READ_ERRORS:
            continue
        return 2 if _is_2d(shape) else 3
    return 3


def _load_nnunet(data: Any, source: Path, modality: str | None) -> DatasetSpec:
    root = source.parent
    if not isinstance(data, Mapping) or not isinstance(data.get("channel_names"), Mapping):
        raise DatasetSpecError(
            f"{source}: not an nnU-Net v2 dataset.json (needs 'channel_names', 'labels', "
            "'file_ending')"
        )
    raw_labels = data.get("labels")
    if isinstance(raw_labels, Mapping) and "ignore" in raw_labels:
        raise DatasetSpecError(f"{source}: nnU-Net 'ignore' labels are not supported")
    labels = _parse_labels(raw_labels, source)
    file_ending = data.get("file_ending", ".nii.gz")
    index, name, channel_name = _pick_channel(data["channel_names"], modality, source)
    suffix = f"_{index:04d}{file_ending}"
    images = sorted((root / "imagesTr").glob(f"*{suffix}"))
    if not images:
        raise DatasetSpecError(
            f"{root / 'imagesTr'}: no training images matching '*{suffix}' (nnU-Net layout: "
            f"imagesTr/CASE{suffix}, labelsTr/CASE{file_ending})"
        )
    cases = []
    for image in images:
        case_id = image.name[: -len(suffix)]
        cases.append(Case(case_id, name, image, root / "labelsTr" / f"{case_id}{file_ending}"))
    splits_file = root / NNUNET_SPLITS_JSON
    splits = None
    if splits_file.is_file():
        splits = _parse_splits(_read_json(splits_file), splits_file, splits_file)
    return DatasetSpec(
        root=root,
        name=str(data.get("name", root.name)),
        labels=labels,
        modalities={name: ModalitySpec(name, _normalization_for(channel_name))},
        cases=tuple(cases),
        splits=splits,
        dim=_infer_dim(cases),
        description=str(data.get("description", f"nnU-Net raw dataset {root.name}")),
        source=source,
    )


def _case_id(image: Path) -> str:
    name = image.name
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return image.stem


def _decathlon_labels(raw: Any, source: Path) -> dict[str, int]:
    """Accept MSD ``{"0": "background"}`` (id -> name) or ``{"background": 0}`` (name -> id)."""
    if isinstance(raw, Mapping) and raw and all(isinstance(v, str) for v in raw.values()):
        try:
            raw = {name: int(key) for key, name in raw.items()}
        except ValueError:
            raise DatasetSpecError(f"{source}: 'labels' keys must be label ids") from None
    return _parse_labels(raw, source)


def _load_decathlon(data: Any, source: Path, modality: str | None) -> DatasetSpec:
    from monai.data import load_decathlon_datalist  # imports torch: only when needed

    if not isinstance(data, Mapping) or not isinstance(data.get("training"), list):
        raise DatasetSpecError(f"{source}: a Decathlon datalist needs a 'training' list")
    if "labels" not in data:
        raise DatasetSpecError(
            f'{source}: the datalist has no \'labels\'; add e.g. "labels": {{"0": "background", '
            '"1": "liver"}'
        )
    labels = _decathlon_labels(data["labels"], source)
    if isinstance(data.get("modality"), Mapping) and data["modality"]:
        _, name, channel_name = _pick_channel(data["modality"], modality, source)
    elif modality is not None:
        name = channel_name = modality
    else:
        raise DatasetSpecError(
            f"{source}: the datalist names no modality; pass modality= (`--modality`)"
        )
    groups: dict[str, list[dict[str, Any]]] = {}
    for key in ("training", "validation", "test"):
        if data.get(key):
            groups[key] = load_decathlon_datalist(source, True, key)
    cases: list[Case] = []
    seen: set[str] = set()
    ids: dict[str, list[str]] = {key: [] for key in groups}
    folds_of: dict[str, Any] = {}
    for key, items in groups.items():
        for index, item in enumerate(items):
            image = item.get("image")
            if not isinstance(image, str):
                raise DatasetSpecError(
                    f"{source}: {key}[{index}].image must be one path (multi-channel images are "
                    "not supported)"
                )
            case_id = _case_id(Path(image))
            if case_id in seen:
                raise DatasetSpecError(
                    f"{source}: {key}[{index}]: two images are named {case_id!r}; case ids come "
                    "from file names and must be unique"
                )
            seen.add(case_id)
            label = item.get("label")
            cases.append(Case(case_id, name, Path(image), Path(label) if label else None))
            ids[key].append(case_id)
            if "fold" in item:
                folds_of[case_id] = item["fold"]
    training = ids.get("training", [])
    if folds_of:
        folds = tuple(
            Fold(
                tuple(i for i in training if folds_of.get(i) != k),
                tuple(i for i in training if folds_of.get(i) == k),
            )
            for k in sorted(set(folds_of.values()))
        )
    else:
        folds = (Fold(tuple(training), tuple(ids.get("validation", []))),)
    return DatasetSpec(
        root=source.parent,
        name=str(data.get("name", source.parent.name)),
        labels=labels,
        modalities={name: ModalitySpec(name, _normalization_for(channel_name))},
        cases=tuple(cases),
        splits=Splits(folds, tuple(ids.get("test", [])), source),
        dim=_infer_dim(cases),
        description=str(data.get("description", "")),
        source=source,
    )


def _detect_format(data: Any, source: Path) -> str:
    if isinstance(data, Mapping):
        if "modalities" in data or "cases" in data:
            return "ummkd"
        if "channel_names" in data:
            return "nnunet"
        if "training" in data:
            return "decathlon"
    raise DatasetSpecError(
        f"{source}: unrecognized dataset description; expected an ummkd dataset.json "
        "('modalities', 'cases'), an nnU-Net v2 dataset.json ('channel_names') or a Decathlon "
        "datalist ('training')"
    )


def load_dataset(
    path: str | os.PathLike[str], *, modality: str | None = None, fmt: Format = "auto"
) -> DatasetSpec:
    """Read a dataset description.

    Args:
        path: Dataset root (holding ``dataset.json``) or the path of the JSON file itself.
        modality: Keep only this modality (ummkd format). For nnU-Net datasets and Decathlon
            datalists it names the modality: it selects the channel of that name when the file
            lists several, and otherwise becomes the name of the single channel (default: the
            channel name, lower-cased).
        fmt: ``"ummkd"``, ``"nnunet"`` (v2 raw dataset: ``imagesTr/CASE_0000.nii.gz``,
            ``labelsTr/CASE.nii.gz``, optional ``splits_final.json`` beside ``dataset.json``),
            ``"decathlon"`` (MONAI/MSD datalist; ``training``/``validation`` give one fold, or
            one fold per ``"fold"`` value when training items carry one; ``test`` = test
            cases) or ``"auto"`` (detect from the keys).

    Returns:
        The parsed dataset, with absolute case paths. Nothing but the JSON files (and, for
        nnU-Net and Decathlon, one image header to tell 2D from 3D) is read.

    Raises:
        DatasetSpecError: If the file is missing, is not valid JSON, or violates the schema.
    """
    path = Path(path).expanduser().absolute()
    source = path / DATASET_JSON if path.is_dir() else path
    if not source.is_file():
        raise DatasetSpecError(
            f"{source}: not found; give a dataset root holding {DATASET_JSON} or the path of a "
            "dataset/datalist JSON file (`ummkd data synth --out DIR` makes a demo dataset)"
        )
    if fmt not in FORMATS:
        raise DatasetSpecError(f"{source}: unknown format {fmt!r}; expected one of {FORMATS}")
    data = _read_json(source)
    kind = _detect_format(data, source) if fmt == "auto" else fmt
    if kind == "nnunet":
        return _load_nnunet(data, source, modality)
    if kind == "decathlon":
        return _load_decathlon(data, source, modality)
    spec = _parse_ummkd(data, source.parent, source)
    return spec if modality is None else spec.select_modality(modality)


# ----------------------------------------------------------------------------------- label maps
def _label_dtype(num_classes: int) -> np.dtype:
    return np.min_scalar_type(max(num_classes - 1, 0))


def _as_integer_labels(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise ValueError(
            "label array has non-integer values (was it resampled with linear interpolation? "
            "use nearest-neighbour for labels)"
        )
    return rounded.astype(np.int64)


def remap_labels(
    array: np.ndarray, label_map: Mapping[int, int] | None, num_classes: int
) -> np.ndarray:
    """Map source label values to shared ids with a vectorized lookup table.

    Args:
        array: Label values (any integer dtype, or floats holding integers).
        label_map: Source value -> shared id. Values not listed (including values below or above
            every key) become background (0). ``None`` keeps the values, which must then already
            be shared ids.
        num_classes: Number of shared classes (ids ``0..num_classes-1``).

    Returns:
        A new array of the same shape with the smallest unsigned dtype that holds the ids.

    Raises:
        ValueError: If the array holds non-integer values, if ``label_map`` is ``None`` and a
            value is not a shared id, or if the map targets an id outside ``0..num_classes-1``.
    """
    labels = _as_integer_labels(np.asarray(array))
    dtype = _label_dtype(num_classes)
    if label_map is None:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = [int(v) for v in np.unique(labels) if not 0 <= v < num_classes]
            raise ValueError(
                f"label values {_fmt_values(bad)} are not shared ids 0..{num_classes - 1} and "
                "there is no label_map; add a label_map for this modality"
            )
        return labels.astype(dtype)
    targets = [v for v in label_map.values() if not 0 <= v < num_classes]
    if targets:
        raise ValueError(f"label_map targets {targets} are not shared ids 0..{num_classes - 1}")
    if not label_map:
        return np.zeros(labels.shape, dtype)
    keys = np.fromiter(label_map.keys(), dtype=np.int64)
    lo, hi = int(keys.min()), int(keys.max())
    # One guard slot below and above the key range catches every value outside it.
    table = np.zeros(hi - lo + 3, dtype)
    table[keys - lo + 1] = np.fromiter(label_map.values(), dtype=np.int64)
    index = np.clip(labels.astype(np.int64, copy=False), lo - 1, hi + 1) - (lo - 1)
    return table[index]


# ----------------------------------------------------------------------------------- validation
def _fmt_values(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return f"[{shown}{f', ... ({more} more)' if more > 0 else ''}]"


def _spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton axes after the third (NIfTI time/channel axes of size 1)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _is_2d(shape: Sequence[int]) -> bool:
    return sum(s > 1 for s in _spatial_shape(shape)) <= 2


@functools.lru_cache(maxsize=4096)
def _value_counts_cached(path: Path, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.asanyarray(nib.load(path).dataobj)
    integer = np.issubdtype(data.dtype, np.integer)
    if integer and data.size and data.min() >= 0 and data.max() < 2**16:
        counts = np.bincount(data.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(data, return_counts=True)


def _value_counts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an image and their voxel counts (cached per file version)."""
    stat = path.stat()
    return _value_counts_cached(path, stat.st_mtime_ns, stat.st_size)


def _read_image(path: Path, role: str, case: Case) -> tuple[Any, Problem | None]:
    """Load header and data; return the image or a problem saying why it cannot be used.

    An image (``role == "image"``) with NaN or infinite voxels is returned with that problem.
    """
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as err:
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
    shape = _spatial_shape(image.shape)[:3]
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
            f"voxel spacing {_fmt_values([round(v, 6) for v in bad])} mm of case {case.id!r} is "
            f"zero, negative or outside {lo}..{hi} mm; fix the image header (pixdim / affine)",
        )
    ]


def _check_geometry(case: Case, image: Any, label: Any) -> list[Problem]:
    problems = []
    image_shape, label_shape = _spatial_shape(image.shape), _spatial_shape(label.shape)
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
    shape = _spatial_shape(image.shape)
    if len(shape) > 3:
        return [
            Problem(
                case.image,
                f"image has shape {shape}: more than 3 spatial axes or several channels; "
                "give one single-channel image per case",
            )
        ]
    if expected_dim == 3 and _is_2d(shape):
        return [
            Problem(
                case.image,
                f"2D image (shape {shape}) but 3D data is expected; use volumes, or declare "
                '"dim": 2 in dataset.json and train in 2D',
            )
        ]
    if expected_dim == 2 and not _is_2d(shape):
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
    values, _ = _value_counts(case.label)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.rint(values)):
        fractional = [float(v) for v in values if v != np.rint(v)]
        return [
            Problem(
                case.label,
                f"non-integer label values {_fmt_values(fractional)} (case {case.id!r}); labels "
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
                    f"label values {_fmt_values(bad)} are not shared ids 0..{num_classes - 1} "
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
                Problem(where, f"{part}: case id(s) {_fmt_values(unknown)} are not in dataset.json")
            )
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            problems.append(Problem(where, f"{part}: case id(s) {_fmt_values(repeated)} repeated"))
        if need_labels:
            unlabeled = [i for i in ids if i in by_id and by_id[i].label is None]
            if unlabeled:
                problems.append(
                    Problem(
                        where,
                        f"{part}: case(s) {_fmt_values(unlabeled)} have no label; training and "
                        "validation cases need labels",
                    )
                )

    def check_overlap(a: Sequence[str], b: Sequence[str], a_name: str, b_name: str) -> None:
        both = sorted(set(a) & set(b))
        if both:
            problems.append(
                Problem(
                    where,
                    f"case(s) {_fmt_values(both)} are in both {a_name} and {b_name}; a case may "
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
                f"{_fmt_values(sorted(present))} to background; fix the label_map",
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
                values, _ = _value_counts(label)
            except _READ_ERRORS:  # reported by validate_dataset
                continue
            present |= {int(v) for v in values if v == np.rint(v)}
        if not present - {0}:
            continue  # reported as a problem by validate_dataset
        label_map = modality.label_map
        shared = {label_map.get(v, 0) for v in present} if label_map is not None else present
        missing = [n for n, i in spec.labels.items() if i > 0 and i not in shared]
        if missing:
            warnings.append(
                f"{source}: modality {name!r}: class(es) {_fmt_values(missing)} occur in none "
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


# -------------------------------------------------------------------------------------- summary
def _fmt_range(rows: Sequence[Sequence[float]], fmt: str) -> str:
    if not rows:
        return "-"
    columns = np.asarray(rows, dtype=float)
    parts = []
    for lo, hi in zip(columns.min(0), columns.max(0), strict=True):
        low, high = format(lo, fmt), format(hi, fmt)
        parts.append(low if low == high else f"{low}-{high}")
    return "x".join(parts)


def _split_counts(spec: DatasetSpec, modality: str) -> str:
    if spec.splits is None:
        return "no splits"
    if spec.splits.folds:
        train = len(spec.cases_for(modality, "train", 0))
        val = len(spec.cases_for(modality, "val", 0))
    else:
        train = val = 0
    return f"{train}/{val}/{len(spec.cases_for(modality, 'test'))}"


def _label_histogram(
    spec: DatasetSpec, modality: ModalitySpec, cases: Sequence[Case]
) -> tuple[np.ndarray, list[int]]:
    """Voxel counts per shared class and the non-zero source values that map to nothing."""
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    unmapped: set[int] = set()
    for case in cases:
        if case.label is None or not case.label.is_file():
            continue
        try:
            values, n = _value_counts(case.label)
        except _READ_ERRORS:
            continue
        for value, count in zip(values.tolist(), n.tolist(), strict=True):
            source_value = round(value)
            if modality.label_map is None:
                shared = source_value if 0 <= source_value < spec.num_classes else None
            else:
                shared = modality.label_map.get(source_value)
            if shared is None and source_value != 0:
                unmapped.add(source_value)
            counts[shared or 0] += count
    return counts, sorted(unmapped)


def summarize_dataset(spec: DatasetSpec, *, deep: bool = True) -> Table:
    """Tabulate the dataset per modality.

    Args:
        spec: The dataset.
        deep: Also read image headers (shape and spacing ranges) and label data (voxel fraction
            per shared class; source values that become background). Unreadable or missing
            files are skipped (:func:`validate_dataset` reports them).

    Returns:
        A :class:`rich.table.Table` with one row per modality.
    """
    notes = []
    if spec.splits is not None and len(spec.splits.folds) > 1:
        notes.append(f"train/val of fold 0 (of {len(spec.splits.folds)})")
    table = Table(title=f"{spec.name} ({spec.root}, dim {spec.dim})", title_justify="left")
    table.add_column("modality", style="bold")
    table.add_column("norm")
    table.add_column("cases (labeled)", justify="right")
    table.add_column("train/val/test", justify="right")
    if deep:
        table.add_column("shape", no_wrap=True)
        table.add_column("spacing (mm)", no_wrap=True)
        for class_name in spec.class_names:
            table.add_column(class_name, justify="right")
        table.add_column("dropped labels")
        notes.append(
            "class columns: % of label voxels; dropped labels: source values that become background"
        )
    table.caption = "; ".join(notes) or None
    table.caption_justify = "left"
    for name, modality in spec.modalities.items():
        cases = [c for c in spec.cases if c.modality == name]
        labeled = sum(c.label is not None for c in cases)
        row = [name, modality.normalization, f"{len(cases)} ({labeled})", _split_counts(spec, name)]
        if deep:
            geometry = []
            for case in cases:
                try:
                    header = nib.load(case.image).header
                except _READ_ERRORS:
                    continue
                shape = _spatial_shape(header.get_data_shape())
                geometry.append((shape, header.get_zooms()[: len(shape)]))
            # Ranges over the images of the most common rank (a stray 2D image would not align).
            rank = Counter(len(s) for s, _ in geometry).most_common(1)[0][0] if geometry else 0
            row += [
                _fmt_range([s for s, _ in geometry if len(s) == rank], ".0f"),
                _fmt_range([z for s, z in geometry if len(s) == rank], ".3g"),
            ]
            counts, unmapped = _label_histogram(spec, modality, cases)
            total = counts.sum()
            row += [f"{100 * c / total:.2f}" if total else "-" for c in counts]
            row.append(_fmt_values(unmapped) if unmapped else "-")
        table.add_row(*row)
    return table


# -------------------------------------------------------------------------------------- writing
def write_dataset_json(
    root: str | os.PathLike[str],
    spec: DatasetSpec | Mapping[str, Any],
    splits: Splits | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``dataset.json`` (and ``splits.json``) atomically after checking the schema.

    Args:
        root: Dataset root (created if missing). Case paths are written relative to it.
        spec: A :class:`DatasetSpec` or the ``dataset.json`` content as a dict (case paths
            relative to ``root``; without ``"splits"``).
        splits: Folds and test ids (:class:`Splits`, a ``{"folds", "test"}`` dict or an nnU-Net
            style list of folds). Defaults to ``spec.splits`` for a :class:`DatasetSpec`;
            ``None`` writes no splits file.
        overwrite: Replace existing ``dataset.json`` / ``splits.json``.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        DatasetSpecError: If the content violates the schema (nothing is written then).
        FileExistsError: If a target file exists and ``overwrite`` is false.
    """
    root = Path(root).expanduser()
    target = root / DATASET_JSON
    splits_target = root / SPLITS_JSON
    if isinstance(spec, DatasetSpec):
        content = replace(spec, root=root).to_json_dict()
        if splits is None:
            splits = spec.splits
    else:
        content = dict(spec)
        if "splits" in content:
            raise DatasetSpecError(
                f"{target}: pass the splits as the `splits` argument, not inside the content"
            )
    if isinstance(splits, Splits):
        splits_content: Any = splits.to_json_dict()
    else:
        splits_content = splits
    if splits_content is not None:
        content["splits"] = SPLITS_JSON
        _parse_splits(splits_content, splits_target, splits_target)
    checked = dict(content)
    checked.pop("splits", None)
    _parse_ummkd(checked, root, target)
    existing = [p for p in (target, splits_target) if p.exists()]
    if splits_content is None:
        existing = [p for p in existing if p == target]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass overwrite=True (`--overwrite`) to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)
    if splits_content is not None:
        write_json(splits_content, splits_target)
    write_json(content, target)
    return target
