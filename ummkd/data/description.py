"""The parsed dataset description: cases, modalities, folds and the dataset as a whole.

These frozen dataclasses are what every reader (:mod:`ummkd.data.schema` for the ummkd format,
:mod:`ummkd.data.formats` for nnU-Net and Decathlon) returns; the file schema itself lives in
:mod:`ummkd.data.schema`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from ummkd.errors import DataError

DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits.json"
NNUNET_SPLITS_JSON = "splits_final.json"
Normalization = Literal["ct", "mr", "zscore", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
FORMATS = ("auto", "ummkd", "nnunet", "decathlon")
SPLIT_NAMES = ("train", "val", "test", "all")
Split = Literal["train", "val", "test", "all"]
Format = Literal["auto", "ummkd", "nnunet", "decathlon"]


class DatasetSpecError(DataError):
    """A dataset description (``dataset.json``, splits file or datalist) is missing or malformed."""


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


def _without(ids: Iterable[str], drop: set[str]) -> tuple[str, ...]:
    return tuple(i for i in ids if i not in drop)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()
