"""Import the paper's cardiac 2.5D release (PnP-AdaNet / SIFA TFRecords) without TensorFlow.

Each ``*.tfrecords`` file (found recursively below ``src``) holds ``tf.train.Example`` records with
``data_vol`` and ``label_vol`` (raw little-endian float32, C order) and their shapes
``dsize_dim0..2`` / ``lsize_dim0..2`` (256, 256, 3): three adjacent, already z-normalised slices
and their labels. They are decoded with the ``tfrecord`` package (pure Python + protobuf).

Every record becomes one case: the image is stored as a float32 volume of shape (256, 256, 3) with
the three adjacent slices on the last axis, and the label as the matching uint8 volume, so a 2.5D
trainer can use the three slices as channels and ``label[..., 1]`` as the target (SIFA and
PnP-AdaNet train on the middle slice's label). Label values: 1 myocardium, 2 left atrium, 3 left
ventricle, 4 ascending aorta; value 5 (undocumented, dropped by SIFA's one-hot of depth 5) and 0
are background. Any other value is an error. The records carry no spacing or orientation, so the
affine is the identity. Normalization is ``"none"``: the values are already z-scored.

Modality: ``modality`` if given, else the token ``ct`` or ``mr`` in the file's path below ``src``
(``sifa_training_ct_01.tfrecords``, ``training_mr/image_01.tfrecords``).

Split: if every file's path carries a split token (``train``/``training``, ``val``/``validation``/
``valid``, ``test``/``testing``), it is used - slices of one volume then stay in one subset as the
source intended. Otherwise each modality gets a seeded 70/10/20 split over records; note that
neighbouring slices of one volume may then fall in different subsets.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from ummkd.data.importers.common import (
    CARDIAC_LABELS,
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    natural_key,
    remap_labels,
    require,
    sanitize_case_id,
    seeded_split,
)

LABEL_MAP: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0}
FEATURES: dict[str, str] = {
    "data_vol": "byte",
    "label_vol": "byte",
    **{f"{kind}_dim{i}": "int" for kind in ("dsize", "lsize") for i in range(3)},
}
_SPLIT_TOKENS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _tokens(path: Path, src: Path) -> set[str]:
    """Lower-case alphanumeric tokens of ``path`` relative to ``src`` (suffix removed)."""
    relative = path.relative_to(src).with_suffix("").as_posix().lower()
    return set(re.split(r"[^a-z0-9]+", relative)) - {""}


def detect_modality(path: Path, src: Path) -> str:
    """Modality from the ``ct`` / ``mr`` token of the file's path below ``src``.

    Raises:
        DatasetImportError: If the path has neither or both tokens.
    """
    found = _tokens(path, src) & {"ct", "mr"}
    if len(found) != 1:
        raise DatasetImportError(
            f"{path}: cannot tell the modality from the name (needs exactly one of the tokens "
            "'ct' / 'mr', e.g. sifa_training_ct_01.tfrecords); pass --modality"
        )
    return found.pop()


def read_records(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode all records of one TFRecord file.

    Returns:
        ``[(image, label), ...]`` as float32 arrays of shape (dsize_dim0, dsize_dim1, dsize_dim2).

    Raises:
        DatasetImportError: If the file is not a readable TFRecord file of this layout.
    """
    # imported here: the tfrecord package imports torch, which the CLI avoids until it is needed
    tfrecord_loader = require("tfrecord.reader").tfrecord_loader

    try:
        records = list(tfrecord_loader(str(path), None, FEATURES))
    except Exception as exc:
        raise DatasetImportError(
            f"{path}: cannot read the TFRecord file ({type(exc).__name__}: {exc}); it is probably "
            "truncated or not a PnP-AdaNet/SIFA record file (features data_vol, label_vol, "
            "dsize_dim0..2, lsize_dim0..2); re-download it"
        ) from exc
    if not records:
        raise DatasetImportError(f"{path}: the file holds no records")
    decoded = []
    for index, record in enumerate(records):
        shape = tuple(int(record[f"dsize_dim{i}"][0]) for i in range(3))
        label_shape = tuple(int(record[f"lsize_dim{i}"][0]) for i in range(3))
        if label_shape != shape:
            raise DatasetImportError(
                f"{path}: record {index} has label shape {label_shape} but image shape {shape}; "
                "only records with one label per image slice are supported"
            )
        arrays = []
        for key in ("data_vol", "label_vol"):
            raw = bytes(record[key])
            if len(raw) != 4 * int(np.prod(shape)):
                raise DatasetImportError(
                    f"{path}: record {index} {key} has {len(raw)} bytes, expected "
                    f"{4 * int(np.prod(shape))} for float32 {shape}; the file is damaged"
                )
            arrays.append(np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32))
        decoded.append((arrays[0], arrays[1]))
    return decoded


def _file_split(files: list[Path], src: Path) -> dict[Path, str] | None:
    """Split subset per file from name tokens, or None if some file has no (or two) tokens."""
    subsets: dict[Path, str] = {}
    for path in files:
        found = {_SPLIT_TOKENS[t] for t in _tokens(path, src) if t in _SPLIT_TOKENS}
        if len(found) != 1:
            return None
        subsets[path] = found.pop()
    return subsets


def import_pnpadanet(
    src: Path,
    out: Path,
    *,
    modality: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Import PnP-AdaNet/SIFA cardiac TFRecords as a 3-slice-per-case ummkd dataset.

    Args:
        src: Folder with ``*.tfrecords`` files (searched recursively).
        out: Output dataset folder.
        modality: Modality of all files; default: detected per file from its name.
        overwrite: Replace an existing dataset in ``out``.
        seed: Seed of the split used when the file names carry no split.

    Returns:
        The output folder.
    """
    src = Path(src)
    files = sorted(src.rglob("*.tfrecords"), key=lambda p: natural_key(p.as_posix()))
    if not files:
        raise DatasetImportError(f"{src}: no *.tfrecords files found")
    modalities = {path: modality or detect_modality(path, src) for path in files}
    subsets = _file_split(files, src)
    by_modality: dict[str, list[str]] = {}
    by_subset: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with DatasetBuilder(out, overwrite=overwrite, inputs=[src]) as builder:
        for path in files:
            records = read_records(path)
            stem = sanitize_case_id(path.relative_to(src).with_suffix("").as_posix())
            for index, (image, label) in enumerate(records):
                case_id = stem if len(records) == 1 else f"{stem}_{index:04d}"
                shared = remap_labels(label, LABEL_MAP, path=path, strict=True)
                builder.add_case(case_id, modalities[path], image, shared, np.eye(4))
                by_modality.setdefault(modalities[path], []).append(case_id)
                if subsets is not None:
                    by_subset[subsets[path]].append(case_id)
        if subsets is not None:
            splits = [Split(*(tuple(by_subset[s]) for s in ("train", "val", "test")))]
            split_note = "from the split tokens in the file names"
        else:
            splits = [seeded_split(ids, seed=seed) for ids in by_modality.values()]
            split_note = f"seeded 70/10/20 per modality over records (seed {seed})"
        return builder.finish(
            name="mmwhs_pnpadanet",
            description=(
                f"MM-WHS 2017 cardiac slices in the PnP-AdaNet/SIFA TFRecord format, imported from "
                f"{src.name or src}. Research use under the MM-WHS data terms; do not "
                "redistribute. Each record is one case: 3 adjacent z-normalised 256x256 slices on "
                "the last axis (use them as channels; the target is label[..., 1]), identity "
                "affine (no geometry in the source). Label 5 (undocumented) -> background. "
                f"Split: {split_note}."
            ),
            dim=3,
            labels=CARDIAC_LABELS,
            modalities={m: {"normalization": "none"} for m in sorted(by_modality)},
            splits=splits,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pnpadanet`` importer's command-line options."""
    parser.add_argument("src", type=Path, help="folder with *.tfrecords files")
    add_output_arguments(parser)
    parser.add_argument(
        "--modality",
        choices=["ct", "mr"],
        help="modality of all files (default: from the ct/mr token in each file name)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback split")


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_pnpadanet(
        args.src, args.out, modality=args.modality, overwrite=args.overwrite, seed=args.seed
    )
