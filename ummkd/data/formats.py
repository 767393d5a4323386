"""Readers of the dataset descriptions ummkd understands, and :func:`load_dataset`.

Besides its own ``dataset.json`` (:mod:`ummkd.data.schema`), ummkd reads nnU-Net v2 raw datasets
(``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, optional ``splits_final.json``) and
MONAI / Medical Segmentation Decathlon datalists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from ummkd.data.description import (
    DATASET_JSON,
    FORMATS,
    NNUNET_SPLITS_JSON,
    Case,
    DatasetSpec,
    DatasetSpecError,
    Fold,
    Format,
    ModalitySpec,
    Splits,
)
from ummkd.data.schema import parse_dataset, parse_labels, parse_splits, read_json
from ummkd.data.voxels import READ_ERRORS, is_2d

_MR_CHANNEL_NAMES = ("mr", "mri", "t1", "t1w", "t2", "t2w", "flair", "adc", "dwi")


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
        except READ_ERRORS:
            continue
        return 2 if is_2d(shape) else 3
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
    labels = parse_labels(raw_labels, source)
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
        splits = parse_splits(read_json(splits_file), splits_file, splits_file)
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
    return parse_labels(raw, source)


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
    data = read_json(source)
    kind = _detect_format(data, source) if fmt == "auto" else fmt
    if kind == "nnunet":
        return _load_nnunet(data, source, modality)
    if kind == "decathlon":
        return _load_decathlon(data, source, modality)
    spec = parse_dataset(data, source.parent, source)
    return spec if modality is None else spec.select_modality(modality)
