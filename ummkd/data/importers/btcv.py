"""Import raw BTCV (Synapse Multi-Atlas Abdomen Labeling) CT as an ummkd dataset.

Accepted layouts (first match wins)::

    <src>/img/img0001.nii.gz          <src>/label/label0001.nii.gz
    <src>/RawData/Training/img/...    <src>/RawData/Training/label/...
    <src>/Training/img/...            <src>/Training/label/...

BTCV labels are remapped to the four organs shared with CHAOS MR: liver 6 -> 1, right kidney
2 -> 2, left kidney 3 -> 3, spleen 1 -> 4; the other nine organs become background. Images keep
their Hounsfield units (int16) and geometry; CT normalization uses the abdominal window
[-125, 275] HU.

Split: when the input holds exactly the 30 BTCV training cases, the abdominal benchmark split is
used (test BTCV 1, 9, 30, 32, 33, 39, as published for SIFA by the paper's group; val 7, 27, 35, 37)
- the same cases as the fixed split of the preprocessed release imported by
:mod:`ummkd.data.importers.alpnet`. Otherwise a seeded 70/10/20 split
(:func:`~ummkd.data.importers.common.seeded_split`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ummkd.data.importers.common import (
    ABDOMINAL_LABELS,
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    check_same_grid,
    natural_key,
    read_volume,
    remap_labels,
    seeded_split,
)

BTCV_TO_SHARED: dict[int, int] = {6: 1, 2: 2, 3: 3, 1: 4}
CT_WINDOW = (-125, 275)
BENCHMARK_SPLIT = Split(
    train=tuple(
        f"ct_{i:04d}"
        for i in (2, 3, 4, 5, 6, 8, 10, 21, 22, 23, 24, 25, 26, 28, 29, 31, 34, 36, 38, 40)
    ),
    val=tuple(f"ct_{i:04d}" for i in (7, 27, 35, 37)),
    test=tuple(f"ct_{i:04d}" for i in (1, 9, 30, 32, 33, 39)),
)
_IMAGE = re.compile(r"^img(\d+)\.nii(?:\.gz)?$")
_LABEL = re.compile(r"^label(\d+)\.nii(?:\.gz)?$")


def find_btcv_folders(src: Path) -> tuple[Path, Path]:
    """Locate the ``img`` and ``label`` folders of a BTCV download.

    Raises:
        DatasetImportError: If none of the known layouts is found under ``src``.
    """
    candidates = [src, src / "RawData" / "Training", src / "Training"]
    for folder in candidates:
        if (folder / "img").is_dir() and (folder / "label").is_dir():
            return folder / "img", folder / "label"
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetImportError(
        f"{src}: no BTCV layout found; expected folders img/ (img0001.nii.gz, ...) and label/ "
        f"(label0001.nii.gz, ...) in one of: {tried}"
    )


def _index(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Map case numbers to files in ``folder`` whose names match ``pattern``."""
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        match = pattern.match(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise DatasetImportError(f"{path}: case {number} also in {found[number]}; keep one")
        found[number] = path
    return found


def import_btcv(src: Path, out: Path, *, overwrite: bool = False, seed: int = 0) -> Path:
    """Import BTCV training CT volumes with labels remapped to liver, kidneys and spleen.

    Args:
        src: BTCV download folder (see the module docstring for the layouts).
        out: Output dataset folder.
        overwrite: Replace an existing dataset in ``out``.
        seed: Seed of the deterministic split used when the input is not the full training set.

    Returns:
        The output folder.
    """
    src = Path(src)
    image_dir, label_dir = find_btcv_folders(src)
    images = _index(image_dir, _IMAGE)
    labels = _index(label_dir, _LABEL)
    if not images:
        raise DatasetImportError(f"{image_dir}: no img<number>.nii.gz files found")
    unmatched = sorted(set(images) ^ set(labels))
    if unmatched:
        raise DatasetImportError(
            f"{image_dir} / {label_dir}: cases {unmatched} have an image or a label but not both; "
            "BTCV test images (without labels) cannot be imported"
        )
    with DatasetBuilder(out, overwrite=overwrite, inputs=[src]) as builder:
        for number in sorted(images):
            image, affine = read_volume(images[number])
            label, label_affine = read_volume(labels[number])
            check_same_grid(
                image.shape,
                affine,
                label.shape,
                label_affine,
                image_path=images[number],
                label_path=labels[number],
            )
            label = remap_labels(label, BTCV_TO_SHARED, path=labels[number])
            builder.add_case(f"ct_{number:04d}", "ct", image, label, affine)
        ids = [f"ct_{number:04d}" for number in sorted(images)]
        if set(ids) == set(BENCHMARK_SPLIT.ids):
            split, split_note = (
                BENCHMARK_SPLIT,
                "benchmark split (test = BTCV 1, 9, 30, 32, 33, 39 as published for SIFA; "
                "val = 7, 27, 35, 37)",
            )
        else:
            split, split_note = (
                seeded_split(ids, seed=seed),
                f"seeded 70/10/20 split (seed {seed})",
            )
        return builder.finish(
            name="btcv",
            description=(
                "BTCV (Synapse Multi-Atlas Abdomen Labeling) training CT, imported from "
                f"{src.name or src}. Registration-gated challenge data, research use only; do not "
                "redistribute. Labels remapped liver 6->1, right kidney 2->2, left kidney 3->3, "
                "spleen 1->4, other organs -> background; images in HU, geometry unchanged. "
                f"Split: {split_note}."
            ),
            dim=3,
            labels=ABDOMINAL_LABELS,
            modalities={"ct": {"normalization": "ct", "window": list(CT_WINDOW)}},
            splits=[split],
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``btcv`` importer's command-line options."""
    parser.add_argument("src", type=Path, help="BTCV folder (img/ + label/, or RawData/Training)")
    add_output_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback split")


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_btcv(args.src, args.out, overwrite=args.overwrite, seed=args.seed)
