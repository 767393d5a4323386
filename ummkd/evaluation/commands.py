"""``ummkd evaluate``: score any folder of predicted label maps against reference label maps.

Predictions and references are NIfTI files (``.nii.gz`` or ``.nii``) paired by case id, the
file name without its extension, so that the outputs of other tools can be compared with
ummkd's on equal terms (same metrics, same edge-case conventions, same report). Spacing comes
from the reference header; class names from ``--labels`` (an ummkd or nnU-Net
``dataset.json``) or, without it, from the label values present (``label_<id>``).

Example::

    ummkd evaluate --pred runs/ummkd/predictions --ref data/labels --labels data/dataset.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.progress import track

from ummkd.errors import CommandParser, UMMKDError
from ummkd.evaluation.metrics import case_metrics, summarize_cases
from ummkd.evaluation.report import DEFAULT_TITLE, results_table, write_report

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""File name endings read as label maps."""

REPORT_FILES = ("summary.json", "results.md", "dice.png")
"""The files of a report (see :func:`~ummkd.evaluation.report.write_report`)."""

_LISTED = 20  # file names listed in an error message before "and N more"


class EvaluationError(UMMKDError):
    """A user-facing problem with the inputs of ``ummkd evaluate`` (printed, exit code 1)."""


def build_parser(prog: str = "ummkd evaluate") -> argparse.ArgumentParser:
    """Return the argument parser of ``ummkd evaluate``.

    Args:
        prog: program name shown in usage and error messages.

    Returns:
        The parser.
    """
    parser = CommandParser(
        prog=prog,
        description="Compute Dice, ASSD and HD95 of predicted label maps against references "
        "and write summary.json, results.md and dice.png.",
    )
    parser.add_argument(
        "--pred", type=Path, required=True, help="folder of predicted label maps (<case>.nii.gz)"
    )
    parser.add_argument(
        "--ref", type=Path, required=True, help="folder of reference label maps (<case>.nii.gz)"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="dataset.json with a 'labels' dict name -> id (ummkd, nnU-Net v2) or id -> name "
        "(nnU-Net v1); an ummkd dataset.json's 'cases' also give each case's modality. "
        "Default: classes are the label values present, named label_<id>",
    )
    parser.add_argument(
        "--modality",
        default="all",
        help="modality of the cases not listed in --labels' cases (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, help="report folder (default: <pred>_eval next to the pred folder)"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score a reference without prediction as an empty prediction instead of failing",
    )
    parser.add_argument("--title", default=DEFAULT_TITLE, help="report title")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report (summary.json, results.md, dice.png) in --out",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ummkd evaluate``.

    Args:
        argv: the arguments after ``evaluate``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 on invalid inputs (one line on stderr) or invalid
        arguments (argparse's usage message); ``--help`` returns 0.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and usage errors
        return int(exit_.code or 0)
    console = Console()
    errors = Console(stderr=True)
    try:
        out_dir = _output_dir(args.pred, args.ref, args.out)
        if not args.overwrite:
            _refuse_existing_report(out_dir)
        class_names, case_modalities = (
            (None, {}) if args.labels is None else read_labels(args.labels)
        )
        summary = evaluate_folders(
            args.pred,
            args.ref,
            class_names=class_names,
            case_modalities=case_modalities,
            default_modality=args.modality,
            allow_missing=args.allow_missing,
            console=errors,
        )
        paths = write_report(summary, out_dir, title=args.title)
    except EvaluationError as error:
        errors.print(
            f"{parser.prog}: error: {error}", markup=False, highlight=False, soft_wrap=True
        )
        return 2
    console.print(results_table(summary, title=args.title))
    console.print(
        f"Report written to {paths['summary'].parent}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    *,
    class_names: Mapping[int, str] | None = None,
    case_modalities: Mapping[str, str] | None = None,
    default_modality: str = "all",
    allow_missing: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score every reference label map in ``ref_dir`` against its prediction in ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps ``<case>.nii.gz`` (or ``.nii``).
        ref_dir: folder of reference label maps with the same case ids.
        class_names: class id -> name; ``None`` uses the foreground values present in any
            prediction or reference, named ``label_<id>``.
        case_modalities: case id -> modality; cases not in it get ``default_modality``.
        default_modality: modality of the cases not in ``case_modalities``.
        allow_missing: score a reference without a prediction as an empty prediction
            (every class present in the reference then gets the empty-prediction penalty).
        console: where to show progress and warnings; ``None`` shows nothing.

    Returns:
        The summary of :func:`~ummkd.evaluation.metrics.summarize_cases`.

    Raises:
        EvaluationError: on missing folders, no references, unmatched files, unreadable files,
            or a prediction whose shape or affine differs from its reference.
    """
    pred_files = find_label_maps(pred_dir)
    ref_files = find_label_maps(ref_dir)
    if not ref_files:
        raise EvaluationError(f"no reference label maps (*.nii.gz, *.nii) in {ref_dir}")
    unmatched_preds = sorted(set(pred_files) - set(ref_files))
    if unmatched_preds:
        raise EvaluationError(
            f"{len(unmatched_preds)} prediction(s) in {pred_dir} have no reference in {ref_dir}: "
            + _listing(pred_files[c].name for c in unmatched_preds)
        )
    missing = sorted(set(ref_files) - set(pred_files))
    if missing and not allow_missing:
        raise EvaluationError(
            f"{len(missing)} reference(s) in {ref_dir} have no prediction in {pred_dir} "
            "(use --allow-missing to score them as empty predictions): "
            + _listing(ref_files[c].name for c in missing)
        )
    if missing and console is not None:
        console.print(
            f"warning: {len(missing)} missing prediction(s) scored as empty: "
            + _listing(ref_files[c].name for c in missing),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    case_modalities = case_modalities or {}
    cases: list[dict[str, Any]] = []
    seen_classes: set[int] = set()
    unknown_classes: set[int] = set()
    case_ids = sorted(ref_files)
    for case_id in track(
        case_ids,
        description="Evaluating",
        console=console,
        disable=console is None,
        transient=True,
    ):
        ref, affine, spacing = load_label_map(ref_files[case_id])
        if case_id in pred_files:
            pred, pred_affine, _ = load_label_map(pred_files[case_id])
            _check_same_grid(pred_files[case_id], pred, pred_affine, ref, affine)
        else:
            pred = np.zeros_like(ref)
        present = {int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0}
        seen_classes |= present
        if class_names is None:
            case_classes = {c: f"label_{c}" for c in present}
        else:
            unknown_classes |= present - set(class_names)
            case_classes = {c: n for c, n in class_names.items() if c in present and c != 0}
        metrics = case_metrics(pred, ref, spacing, case_classes) if case_classes else {}
        cases.append(
            {
                "id": case_id,
                "modality": case_modalities.get(case_id, default_modality),
                "metrics": metrics,
            }
        )

    if class_names is None:
        class_names = {c: f"label_{c}" for c in sorted(seen_classes)}
    if unknown_classes and console is not None:
        console.print(
            f"warning: label values {sorted(unknown_classes)} are not in the class names and "
            "were ignored",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not any(c != 0 for c in class_names):
        raise EvaluationError("no foreground class to evaluate: all label maps are empty")
    # A class missing from a case's metrics was absent from both maps: not applicable.
    not_applicable = {"dice": None, "assd": None, "hd95": None}
    for case in cases:
        for class_id, name in class_names.items():
            if class_id != 0:
                case["metrics"].setdefault(name, dict(not_applicable))
    return summarize_cases(cases, class_names)


def find_label_maps(folder: Path) -> dict[str, Path]:
    """Return the NIfTI files of a folder by case id (file name without ``.nii.gz``/``.nii``).

    Args:
        folder: the folder (not searched recursively).

    Returns:
        Case id -> path, sorted by case id.

    Raises:
        EvaluationError: if the folder does not exist or two files share a case id.
    """
    if not folder.is_dir():
        raise EvaluationError(f"not a folder: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        case_id = path.name[: -len(suffix)]
        if case_id in files:
            raise EvaluationError(f"two files for case {case_id!r}: {files[case_id]} and {path}")
        files[case_id] = path
    return dict(sorted(files.items()))


def load_label_map(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI label map.

    Args:
        path: the file.

    Returns:
        ``(labels, affine, spacing)``: the integer label array (2D or 3D; a trailing singleton
        axis is dropped), the 4x4 affine and the voxel spacing in mm from the header.

    Raises:
        EvaluationError: if the file cannot be read or does not hold a 2D/3D integer label map.
    """
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt or foreign files
        raise EvaluationError(f"cannot read {path}: {error}") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise EvaluationError(f"{path} is not a 2D or 3D label map: shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.array_equal(data, np.round(data)):
            raise EvaluationError(f"{path} holds non-integer values: not a label map")
        data = data.astype(np.int64)
    spacing = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    return data, np.asarray(image.affine, dtype=np.float64), spacing


def read_labels(path: Path) -> tuple[dict[int, str], dict[str, str]]:
    """Read class names and case modalities from an ummkd or nnU-Net ``dataset.json``.

    Args:
        path: the file. Its ``"labels"`` is either name -> id (ummkd, nnU-Net v2) or
            id -> name (nnU-Net v1); its optional ``"cases"`` (ummkd) list entries with
            ``"id"`` and ``"modality"``.

    Returns:
        ``(class_names, case_modalities)``: class id -> name (background included) and
        case id -> modality (empty without ``"cases"``).

    Raises:
        EvaluationError: if the file cannot be read or its labels are not in either form.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read labels file {path}: {error}") from error
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise EvaluationError(f"{path} has no 'labels' dict")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        class_names = {int(v): str(k) for k, v in labels.items()}
    elif all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items()):
        class_names = {int(k): v for k, v in labels.items()}
    else:
        raise EvaluationError(
            f"{path}: 'labels' must map names to integer ids (or ids to names); "
            "region-based labels are not supported"
        )
    if len(class_names) != len(labels):
        raise EvaluationError(f"{path}: 'labels' gives several names to one id")
    case_modalities = {
        str(case["id"]): str(case["modality"])
        for case in data.get("cases", [])
        if isinstance(case, dict) and "id" in case and "modality" in case
    }
    return class_names, case_modalities


def _check_same_grid(
    pred_path: Path,
    pred: np.ndarray,
    pred_affine: np.ndarray,
    ref: np.ndarray,
    ref_affine: np.ndarray,
) -> None:
    """Raise if a prediction is not on its reference's voxel grid."""
    if pred.shape != ref.shape:
        raise EvaluationError(
            f"{pred_path}: shape {pred.shape} differs from the reference's {ref.shape}"
        )
    if not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=1e-3):
        raise EvaluationError(
            f"{pred_path}: affine differs from the reference's "
            f"(max difference {np.abs(pred_affine - ref_affine).max():.4g}):\n"
            f"prediction\n{pred_affine}\nreference\n{ref_affine}"
        )


def _output_dir(pred_dir: Path, ref_dir: Path, out_dir: Path | None) -> Path:
    """Resolve the report folder and refuse one inside the input folders."""
    if out_dir is None:
        pred = pred_dir.resolve()
        out_dir = pred.parent / f"{pred.name}_eval"
    out = out_dir.resolve()
    for kind, folder in (("reference", ref_dir), ("prediction", pred_dir)):
        folder = folder.resolve()
        if out == folder or folder in out.parents:
            raise EvaluationError(
                f"refusing to write the report into the {kind} folder {folder}; choose --out"
            )
    return out


def _refuse_existing_report(out_dir: Path) -> None:
    """Raise if ``out_dir`` already holds a report (it is replaced only with ``--overwrite``)."""
    for name in REPORT_FILES:
        if (out_dir / name).exists():
            raise EvaluationError(
                f"{out_dir / name} exists; pass --overwrite to replace the report or choose "
                "another --out"
            )


def _listing(names: Iterable[str]) -> str:
    """Comma-separated names, the first few only."""
    listed = list(names)
    shown = ", ".join(listed[:_LISTED])
    return shown if len(listed) <= _LISTED else f"{shown} and {len(listed) - _LISTED} more"
