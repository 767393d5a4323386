"""Import raw CHAOS MR (T2-SPIR) DICOM series with PNG ground truth as an ummkd dataset.

Layout (``src`` may be the ``MR`` folder itself, or a folder above it holding ``MR/`` or
``Train_Sets/MR/``)::

    <MR>/<patient id>/T2SPIR/DICOM_anon/*.dcm
    <MR>/<patient id>/T2SPIR/Ground/*.png

Slice order and pairing. The CHAOS organisers define the ground truth order by file names: "the
orientation of the slices is determined by order of image names NOT by position tags in DICOM
files" (``CHAOSmetrics.py`` of the official evaluation code, which sorts both the DICOM and the PNG
file lists by name). CHAOS names encode the instance number (``IMG-0004-00001.dcm``), so name order
is instance-number order. This importer therefore pairs the k-th PNG with the k-th DICOM file in
natural name order (a warning is logged if a series' names disagree with its InstanceNumbers), then
stacks the slices sorted by their position along the slice normal (ImagePositionPatient projected on
the normal of ImageOrientationPatient), moving every label slice together with its DICOM slice.

Geometry comes from the DICOM headers: in-plane directions from ImageOrientationPatient, pixel
spacing from PixelSpacing (row spacing, column spacing), the slice step from the first and last
ImagePositionPatient (as the CHAOS evaluation code does), origin = ImagePositionPatient of the first
sorted slice; LPS is converted to the RAS affine of NIfTI. Image and label are written with the
same affine. Arrays are indexed ``[column, row, slice]`` like every NIfTI written by ITK.

Labels: CHAOS PNGs mark the organs with grey values that are ranges after resampling; following the
CHAOS documentation 55-70 -> liver (1), 110-135 -> right kidney (2), 175-200 -> left kidney (3),
240-255 -> spleen (4); everything else is background. Images are stored as int16 after
RescaleSlope/RescaleIntercept.

Split: with exactly the 20 CHAOS MR training patients, the abdominal benchmark split is used (test
1, 13, 32, 38 as published for SIFA by the paper's group, val 15, 20, 37), the same as in
:mod:`ummkd.data.importers.alpnet`; otherwise a seeded 70/10/20 split.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ummkd.data.importers.common import (
    ABDOMINAL_LABELS,
    LPS_TO_RAS,
    DatasetBuilder,
    DatasetImportError,
    Split,
    add_output_arguments,
    natural_key,
    require,
    sanitize_case_id,
    seeded_split,
)

logger = logging.getLogger(__name__)

PNG_RANGES: dict[int, tuple[int, int]] = {1: (55, 70), 2: (110, 135), 3: (175, 200), 4: (240, 255)}
BENCHMARK_SPLIT = Split(
    train=tuple(f"mr_{i}" for i in (2, 3, 5, 8, 10, 19, 21, 22, 31, 33, 34, 36, 39)),
    val=tuple(f"mr_{i}" for i in (15, 20, 37)),
    test=tuple(f"mr_{i}" for i in (1, 13, 32, 38)),
)
_SEQUENCE = Path("T2SPIR")


@dataclass(frozen=True)
class _DicomSlice:
    """One DICOM slice with the header fields the volume geometry needs."""

    path: Path
    pixels: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    thickness: float
    instance: int | None


def png_to_labels(png: np.ndarray) -> np.ndarray:
    """Map CHAOS ground-truth grey values to the shared ids by the documented ranges."""
    lut = np.zeros(256, dtype=np.uint8)
    for label, (lo, hi) in PNG_RANGES.items():
        lut[lo : hi + 1] = label
    return lut[png]


def find_patients(src: Path) -> list[Path]:
    """Return the patient folders (those holding ``T2SPIR/DICOM_anon``) in natural order.

    Raises:
        DatasetImportError: If no patient folder is found.
    """
    for root in (src, src / "MR", src / "Train_Sets" / "MR"):
        if not root.is_dir():
            continue
        patients = [p for p in root.iterdir() if (p / _SEQUENCE / "DICOM_anon").is_dir()]
        if patients:
            return sorted(patients, key=lambda p: natural_key(p.name))
    raise DatasetImportError(
        f"{src}: no CHAOS MR patients found; expected <patient>/T2SPIR/DICOM_anon/*.dcm (and "
        "T2SPIR/Ground/*.png) in it, in MR/ or in Train_Sets/MR/"
    )


def _read_slice(path: Path) -> _DicomSlice:
    """Read one DICOM file's pixels (modality LUT applied) and geometry tags."""
    pydicom = require("pydicom")
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise DatasetImportError(
            f"{path}: cannot read the DICOM file ({type(exc).__name__}: {exc}); it is probably "
            "truncated or not DICOM; re-extract the CHAOS archive"
        ) from exc
    missing = [
        tag
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if tag not in ds
    ]
    if missing:
        raise DatasetImportError(f"{path}: DICOM tags {missing} missing; cannot place the slice")
    if pixels.ndim != 2:
        raise DatasetImportError(f"{path}: expected one 2D frame, got pixel shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        pixels = pixels * slope + intercept
    instance = ds.get("InstanceNumber")
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return _DicomSlice(
        path=path,
        pixels=pixels,
        position=np.asarray([float(v) for v in ds.ImagePositionPatient]),
        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient]),
        spacing=(row_spacing, column_spacing),
        thickness=float(thickness),
        instance=int(instance) if instance is not None else None,
    )


def _read_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth PNG as an 8-bit array of ``shape`` (rows, columns)."""
    try:
        with Image.open(path) as png:
            mode = png.mode
            array = np.asarray(png if mode in ("L", "I", "I;16") else png.convert("L"))
    except Exception as exc:
        raise DatasetImportError(
            f"{path}: cannot read the PNG ({type(exc).__name__}: {exc}); re-extract the archive"
        ) from exc
    if array.shape != shape:
        raise DatasetImportError(
            f"{path}: ground truth has {array.shape} pixels but its DICOM slice has {shape}"
        )
    if array.max() > 255:
        raise DatasetImportError(f"{path}: expected 8-bit grey values, found {array.max()}")
    return array.astype(np.uint8)


def read_chaos_series(
    dicom_dir: Path, ground_dir: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one CHAOS MR series and its PNG ground truth into a volume pair.

    Args:
        dicom_dir: Folder with the series' ``*.dcm`` files.
        ground_dir: Folder with one ``*.png`` per DICOM file.

    Returns:
        ``(image, label, affine)``: image and uint8 shared-id label indexed
        ``[column, row, slice]`` with slices sorted along the slice normal, and the RAS affine.

    Raises:
        DatasetImportError: On missing or unreadable files, count mismatches, inconsistent
            orientation/spacing between slices, or non-uniform slice spacing.
    """
    dicom_files = sorted(dicom_dir.glob("*.dcm"), key=lambda p: natural_key(p.name))
    png_files = sorted(ground_dir.glob("*.png"), key=lambda p: natural_key(p.name))
    if not dicom_files:
        raise DatasetImportError(f"{dicom_dir}: no *.dcm files")
    if len(png_files) != len(dicom_files):
        raise DatasetImportError(
            f"{ground_dir}: {len(png_files)} PNG files for {len(dicom_files)} DICOM files in "
            f"{dicom_dir}; every DICOM slice needs exactly one ground-truth PNG"
        )
    slices = [_read_slice(path) for path in dicom_files]
    instances = [s.instance for s in slices if s.instance is not None]
    if len(instances) == len(slices) and instances != sorted(instances):
        logger.warning(
            "%s: file-name order differs from InstanceNumber order; pairing PNGs by file-name "
            "order as the CHAOS evaluation code does",
            dicom_dir,
        )
    first = slices[0]
    for item in slices[1:]:
        if item.pixels.shape != first.pixels.shape:
            raise DatasetImportError(
                f"{item.path}: {item.pixels.shape} pixels, {first.path} has {first.pixels.shape}"
            )
        if not np.allclose(item.orientation, first.orientation, atol=1e-4):
            raise DatasetImportError(
                f"{item.path}: ImageOrientationPatient differs from {first.path}; "
                "the folder mixes series"
            )
        if not np.allclose(item.spacing, first.spacing, atol=1e-4):
            raise DatasetImportError(f"{item.path}: PixelSpacing differs from {first.path}")
    row_dir, column_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, column_dir)
    order = np.argsort([float(s.position @ normal) for s in slices], kind="stable")
    ordered = [slices[i] for i in order]
    step = _slice_step(ordered, normal)
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * column_spacing  # voxel axis 0 = column index, along the row direction
    lps[:3, 1] = column_dir * row_spacing  # voxel axis 1 = row index, along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = ordered[0].position
    image = np.stack([s.pixels.T for s in ordered], axis=-1)
    label = np.stack(
        [png_to_labels(_read_png(png_files[i], first.pixels.shape)).T for i in order], axis=-1
    )
    return image, label, LPS_TO_RAS @ lps


def _slice_step(ordered: list[_DicomSlice], normal: np.ndarray) -> np.ndarray:
    """World step between consecutive sorted slices; checks that it is uniform."""
    if len(ordered) == 1:
        return normal * ordered[0].thickness
    positions = np.array([s.position for s in ordered])
    gaps = np.diff(positions @ normal)
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    mean_gap = float(np.linalg.norm(step))
    if gaps.min() <= 1e-3 * max(mean_gap, 1.0):
        duplicate = ordered[int(np.argmin(gaps)) + 1].path
        raise DatasetImportError(
            f"{duplicate}: two slices at the same position; the folder mixes series"
        )
    if np.abs(gaps - mean_gap).max() > 0.01 * mean_gap + 1e-3:
        worst = ordered[int(np.argmax(np.abs(gaps - mean_gap))) + 1].path
        raise DatasetImportError(
            f"{worst}: non-uniform slice spacing (gaps {gaps.min():.3f}..{gaps.max():.3f} mm); "
            "missing or extra slices in the series"
        )
    return step


def import_chaos(src: Path, out: Path, *, overwrite: bool = False, seed: int = 0) -> Path:
    """Import CHAOS T2-SPIR MR series with labels (liver, kidneys, spleen) as an ummkd dataset.

    Args:
        src: CHAOS training folder (see the module docstring).
        out: Output dataset folder.
        overwrite: Replace an existing dataset in ``out``.
        seed: Seed of the deterministic split used when the input is not the full training set.

    Returns:
        The output folder.
    """
    src = Path(src)
    patients = find_patients(src)
    ids = [f"mr_{sanitize_case_id(p.name)}" for p in patients]
    with DatasetBuilder(out, overwrite=overwrite, inputs=[src]) as builder:
        for patient, case_id in zip(patients, ids, strict=True):
            ground = patient / _SEQUENCE / "Ground"
            if not ground.is_dir():
                raise DatasetImportError(
                    f"{ground}: missing; CHAOS test patients have no ground truth and cannot be "
                    "imported"
                )
            image, label, affine = read_chaos_series(patient / _SEQUENCE / "DICOM_anon", ground)
            builder.add_case(case_id, "mr", image, label, affine)
        if set(ids) == set(BENCHMARK_SPLIT.ids):
            split, split_note = (
                BENCHMARK_SPLIT,
                "benchmark split (test = CHAOS 1, 13, 32, 38 as published for SIFA; "
                "val = 15, 20, 37)",
            )
        else:
            split, split_note = seeded_split(ids, seed=seed), f"seeded 70/10/20 split (seed {seed})"
        return builder.finish(
            name="chaos_t2spir",
            description=(
                "CHAOS MR T2-SPIR training series with manual labels, imported from "
                f"{src.name or src}. CC BY-NC-SA 4.0 (non-commercial), cite the CHAOS paper. "
                "DICOM slices sorted along the slice normal, geometry from the DICOM headers; "
                "PNG ground truth paired with DICOM files by file-name order (CHAOS convention) "
                "and mapped by grey-value ranges 55-70 liver 1, 110-135 right kidney 2, "
                f"175-200 left kidney 3, 240-255 spleen 4. Split: {split_note}."
            ),
            dim=3,
            labels=ABDOMINAL_LABELS,
            modalities={"mr": {"normalization": "mr"}},
            splits=[split],
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``chaos`` importer's command-line options."""
    parser.add_argument(
        "src", type=Path, help="CHAOS MR folder (<patient>/T2SPIR/{DICOM_anon,Ground})"
    )
    add_output_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback split")


def run(args: argparse.Namespace) -> Path:
    """Run the importer from parsed command-line arguments."""
    return import_chaos(args.src, args.out, overwrite=args.overwrite, seed=args.seed)
