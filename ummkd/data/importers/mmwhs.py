"""Import the raw MM-WHS 2017 cardiac training volumes (CT and MR) as one ummkd dataset.

Files are found anywhere below ``src`` (``ct_train/`` and ``mr_train/`` folders or flat)::

    ct_train_1001_image.nii.gz   ct_train_1001_label.nii.gz
    mr_train_1001_image.nii.gz   mr_train_1001_label.nii.gz

Labels follow the paper's four cardiac classes: 205 myocardium -> 1, 420 left atrium -> 2,
500 left ventricle -> 3, 820 ascending aorta -> 4; the other MM-WHS structures (550 right atrium,
600 right ventricle, 850 pulmonary artery) become background. Values that are not MM-WHS codes
also become background, with a warning naming the file. Each label is written on its image's grid
(the affines must agree within 1e-3 mm).

Split: with 20 cases of a modality, the sizes of the PnP-AdaNet / paper split are used - CT 14
train / 2 val / 4 test, MR 16 train / 4 val / 0 test (MR was the labelled source domain there, so
it has no test subset). Which volumes fall in which subset is not published with that release,
so the cases are assigned by the seeded hash order of
:func:`~ummkd.data.importers.common.seeded_split`. Other case counts get the seeded 70/10/20 split.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from ummkd.data.importers.common import (
    CARDIAC_LABELS,
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    check_same_grid,
    read_volume,
    remap_labels,
    seeded_split,
    unique_values,
)

logger = logging.getLogger(__name__)

MMWHS_TO_SHARED: dict[int, int] = {205: 1, 420: 2, 500: 3, 820: 4}
MMWHS_CODES = frozenset({0, 205, 420, 500, 550, 600, 820, 850})
PAPER_SPLIT_COUNTS: dict[str, tuple[int, int, int]] = {"ct": (14, 2, 4), "mr": (16, 4, 0)}
_FILE = re.compile(r"^(?P<modality>ct|mr)_train_(?P<number>\d+)_(?P<kind>image|label)\.nii(\.gz)?$")


def find_mmwhs_files(src: Path) -> dict[tuple[str, int], dict[str, Path]]:
    """Find MM-WHS training files below ``src``.

    Returns:
        ``{(modality, number): {"image": path, "label": path}}``.

    Raises:
        DatasetImportError: If nothing is found, a case lacks its image or label, or a file
            occurs twice.
    """
    found: dict[tuple[str, int], dict[str, Path]] = {}
    for path in sorted(src.rglob("*_train_*")):
        match = _FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        key = (match["modality"], int(match["number"]))
        entry = found.setdefault(key, {})
        if match["kind"] in entry:
            raise DatasetImportError(f"{path}: duplicate of {entry[match['kind']]}; keep one")
        entry[match["kind"]] = path
    if not found:
        raise DatasetImportError(
            f"{src}: no MM-WHS training files (ct_train_1001_image.nii.gz, "
            "mr_train_1001_label.nii.gz, ...) found"
        )
    incomplete = [f"{m}_train_{n}" for (m, n), e in sorted(found.items()) if len(e) != 2]
    if incomplete:
        raise DatasetImportError(f"{src}: cases without both image and label: {incomplete}")
    return found


def _split(modality: str, ids: list[str], seed: int) -> tuple[Split, str]:
    """Paper split sizes for 20 cases, seeded 70/10/20 otherwise."""
    if len(ids) == 20:
        counts = PAPER_SPLIT_COUNTS[modality]
        return seeded_split(ids, seed=seed, counts=counts), (
            f"{modality.upper()} {counts[0]}/{counts[1]}/{counts[2]} (paper split sizes)"
        )
    return seeded_split(ids, seed=seed), f"{modality.upper()} seeded 70/10/20"


def import_mmwhs(src: Path, out: Path, *, overwrite: bool = False, seed: int = 0) -> Path:
    """Import MM-WHS 2017 CT and MR training volumes with the four cardiac classes.

    Args:
        src: Folder holding the MM-WHS files (searched recursively).
        out: Output dataset folder.
        overwrite: Replace an existing dataset in ``out``.
        seed: Seed of the case assignment to train/val/test.

    Returns:
        The output folder.
    """
    src = Path(src)
    files = find_mmwhs_files(src)
    with DatasetBuilder(out, overwrite=overwrite, inputs=[src]) as builder:
        for (modality, number), pair in sorted(files.items()):
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
            remapped = remap_labels(label, MMWHS_TO_SHARED, path=pair["label"])
            unknown = sorted(set(unique_values(label)) - MMWHS_CODES)
            if unknown:
                logger.warning(
                    "%s: values %s are not MM-WHS codes; mapped to background",
                    pair["label"],
                    unknown[:10],
                )
            builder.add_case(f"{modality}_{number}", modality, image, remapped, affine)
        splits: list[Split] = []
        notes: list[str] = []
        for modality in ("ct", "mr"):
            ids = [f"{m}_{n}" for m, n in sorted(files) if m == modality]
            if ids:
                split, note = _split(modality, ids, seed)
                splits.append(split)
                notes.append(note)
        modalities = {"ct": {"normalization": "ct"}, "mr": {"normalization": "mr"}}
        return builder.finish(
            name="mmwhs",
            description=(
                f"MM-WHS 2017 cardiac training volumes imported from {src.name or src}. Research "
                "use under the MM-WHS data terms (registration with the organisers); do not "
                "redistribute. Labels: 205 myocardium->1, 420 left atrium->2, 500 left "
                "ventricle->3, 820 ascending aorta->4, all other structures -> background; "
                "images and geometry unchanged (CT in HU, window from dataset percentiles). "
                f"Split (seed {seed}, case assignment not the paper's, which is unpublished): "
                f"{'; '.join(notes)}."
            ),
            dim=3,
            labels=CARDIAC_LABELS,
            modalities={m: modalities[m] for m in sorted({m for m, _ in files})},
            splits=splits,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mmwhs`` importer's command-line options."""
    parser.add_argument("src", type=Path, help="folder with the MM-WHS ct_train/mr_train files")
    add_output_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the case assignment")


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_mmwhs(args.src, args.out, overwrite=args.overwrite, seed=args.seed)
