"""``ummkd segment``: label maps for new scans from one or several exported model packages.

Reads NIfTI files, folders of them and DICOM series folders; writes one NIfTI label map per scan
with the scan's own geometry. Several packages (e.g. the folds of a cross-validation) are
averaged in probability space on the scan's grid.

Examples::

    ummkd segment -i scan.nii.gz -o out/ -m models/abdominal --modality ct
    ummkd segment -i dicom_series/ -o out/ -m fold0.zip fold1.zip fold2.zip --modality mr --tta
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ummkd.data.io import NIFTI_SUFFIXES, save_nifti, strip_nifti_suffix
from ummkd.data.transforms import invert_to_input_space, prediction_transforms
from ummkd.errors import CommandParser, UsageError
from ummkd.model_package import (
    ModelPackage,
    PackageError,
    apply_postprocessing,
    input_warnings,
    load_package,
)


class SegmentError(UsageError):
    """Bad input to ``ummkd segment`` (the message names the file or option)."""


@dataclass(frozen=True)
class Scan:
    """One scan to segment.

    Attributes:
        source: The NIfTI file or the DICOM series folder.
        name: The output file name (``<name>.nii.gz``).
        series_id: The DICOM series id (``None`` for NIfTI).
    """

    source: Path
    name: str
    series_id: str | None = None


def _dicom_series(folder: Path) -> list[str]:
    """The DICOM series ids found in ``folder`` (empty when SimpleITK is missing or none)."""
    try:
        import SimpleITK
    except ImportError as error:
        raise SegmentError(
            f"{folder}: reading DICOM needs SimpleITK (pip install 'ummkd[import]')"
        ) from error
    return list(SimpleITK.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def collect_scans(inputs: Sequence[Path]) -> list[Scan]:
    """Expand files and folders into scans; refuse two scans with the same output name.

    Raises:
        SegmentError: a missing input, a folder with neither NIfTI nor DICOM, or two scans that
            would write the same output file.
    """
    scans: list[Scan] = []
    for path in inputs:
        if path.is_file() and path.name.endswith(NIFTI_SUFFIXES):
            scans.append(Scan(path, strip_nifti_suffix(path.name)))
        elif path.is_dir():
            niftis = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
            if niftis:
                scans += [Scan(p, strip_nifti_suffix(p.name)) for p in niftis]
                continue
            series = _dicom_series(path)
            if not series:
                raise SegmentError(f"{path}: holds no NIfTI file and no DICOM series")
            for k, series_id in enumerate(series):
                name = path.name if len(series) == 1 else f"{path.name}_{k}"
                scans.append(Scan(path, name, series_id))
        elif not path.exists():
            raise SegmentError(f"{path}: no such file or folder")
        else:
            raise SegmentError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a folder")
    seen: dict[str, Scan] = {}
    for scan in scans:
        if scan.name in seen:
            raise SegmentError(
                f"{seen[scan.name].source} and {scan.source} would both be written as "
                f"{scan.name}.nii.gz; segment them into separate output folders"
            )
        seen[scan.name] = scan
    return scans


def _as_nifti(scan: Scan, folder: Path) -> Path:
    """The scan as a NIfTI file (a DICOM series is converted, HU kept, into ``folder``)."""
    if scan.series_id is None:
        return scan.source
    import SimpleITK

    from ummkd.data.importers.common import simpleitk_to_ras

    reader = SimpleITK.ImageSeriesReader()
    reader.SetFileNames(
        SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(str(scan.source), scan.series_id)
    )
    array, affine = simpleitk_to_ras(reader.Execute(), scan.source)
    path = folder / f"{scan.name}.nii.gz"
    save_nifti(np.asarray(array, dtype=np.float32), affine, path)
    return path


def segment_scan(
    path: Path, packages: Sequence[ModelPackage], modality: str, device: torch.device
) -> tuple[np.ndarray, list[str]]:
    """Average the packages' probabilities on the scan's grid; return labels and warnings."""
    total: torch.Tensor | None = None
    stored = nib.load(path)
    for package in packages:
        meta = package.metadata
        transform = prediction_transforms(
            meta.preprocessing(modality), orientation=meta.orientation, spacing=meta.spacing
        )
        image = transform({"image": str(path)})["image"]
        probs = package.module.predict_volume(image.to(device), modality).cpu()
        probs = invert_to_input_space(transform, probs, image)
        total = probs if total is None else total + probs
    assert total is not None
    labels = total.argmax(0)
    keep = set.intersection(
        *(set(p.metadata.inputs[modality].postprocess_largest_component) for p in packages)
    )
    ids = [i for n, i in packages[0].metadata.labels.items() if n in keep]
    labels = apply_postprocessing(labels, ids)
    warnings = input_warnings(
        np.asarray(stored.dataobj, dtype=np.float32),
        stored.header.get_zooms(),
        packages[0].metadata.inputs[modality],
        str(path),
    )
    return labels.numpy().astype(np.uint8).reshape(stored.shape[:3]), warnings


def segment(
    inputs: Sequence[Path],
    out: Path,
    models: Sequence[Path],
    modality: str,
    *,
    device: str = "cpu",
    tta: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Segment every scan of ``inputs`` into ``out``; print what the models expect.

    Raises:
        SegmentError: bad inputs, a modality the models were not trained on, or models with
            different classes.
        PackageError: a model package that cannot be loaded.
    """
    scans = collect_scans(inputs)
    packages = [load_package(m, device) for m in models]
    labels = packages[0].metadata.labels
    for package in packages:
        if modality not in package.metadata.inputs:
            trained = sorted(package.metadata.inputs)
            raise SegmentError(
                f"{package.path} was trained on {trained}; --modality {modality} is not one of them"
            )
        if package.metadata.labels != labels:
            raise SegmentError(f"{package.path}: other classes than {models[0]}; cannot average")
        package.module.tta = tta
        print(package.metadata.describe(), flush=True)
    written = []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as converted:
        for scan in scans:
            target = out / f"{scan.name}.nii.gz"
            if target.exists() and not overwrite:
                print(f"[ummkd] {target} exists, skipped (--overwrite replaces it)", flush=True)
                continue
            path = _as_nifti(scan, Path(converted))
            result, warnings = segment_scan(path, packages, modality, torch.device(device))
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            save_nifti(result, nib.load(path).affine, target)
            print(f"[ummkd] {scan.source} -> {target}", flush=True)
            written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ummkd segment``."""
    parser = CommandParser(
        prog="ummkd segment",
        description="Segment scans with exported model packages (no training config or data "
        "needed). Several -m packages are averaged in probability space.",
    )
    parser.add_argument(
        "-i",
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="NIfTI files, folders of NIfTI files, or DICOM series folders",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "-m", "--model", type=Path, nargs="+", required=True, help="model package(s) (folder/zip)"
    )
    parser.add_argument(
        "--modality", required=True, type=str.lower, help="modality of the scans, e.g. ct or mr"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ummkd segment``; returns the exit code (2: bad input)."""
    args = build_parser().parse_args(argv)
    inputs = {p.resolve() for p in args.input}
    if args.out.resolve() in inputs or any(p.parent == args.out.resolve() for p in inputs):
        print(
            f"ummkd segment: error: --out {args.out} holds inputs; choose another folder",
            file=sys.stderr,
        )
        return 2
    try:
        segment(
            args.input,
            args.out,
            args.model,
            args.modality,
            device=args.device,
            tta=args.tta,
            overwrite=args.overwrite,
        )
    except (SegmentError, PackageError) as error:
        print(f"ummkd segment: error: {error}", file=sys.stderr)
        return 2
    return 0
