"""Per-case, per-class and per-modality segmentation metrics: Dice, ASSD and HD95.

All metrics are computed in 3D (or 2D for 2D inputs) on integer label maps, with surface
distances in millimetres using the voxel spacing. The computations are MONAI's
(:func:`monai.metrics.compute_dice`, :func:`monai.metrics.compute_average_surface_distance`
with ``symmetric=True`` and :func:`monai.metrics.compute_hausdorff_distance` with
``percentile=95``), run for each class on the bounding box of ``pred | ref`` padded by one
voxel, which leaves the surfaces (and hence every distance) unchanged while keeping large
volumes cheap.

Definitions, following MONAI:

* **Dice** ``2 |P ∩ R| / (|P| + |R|)``.
* **ASSD** (average symmetric surface distance): the mean over the surface voxels of both masks
  of the distance to the nearest surface voxel of the other mask.
* **HD95**: the larger of the two directed 95th-percentile surface distances
  (prediction -> reference and reference -> prediction).

Edge cases of a class ``c`` in one case (these are the conventions of every ummkd report):

* present in the reference and in the prediction: the values above;
* present in the reference, absent from the prediction (missed organ), or absent from the
  reference but predicted (false positive): Dice ``0`` and ASSD = HD95 = the **penalty
  distance**, :func:`empty_mask_penalty`, the diagonal of the image extent in millimetres
  ``sqrt(sum_i (shape_i * spacing_i) ** 2)``. It is finite and larger than any distance between
  two voxels of the image, so such a case is never better than any real segmentation;
* absent from both: *not applicable*. Dice, ASSD and HD95 are ``NaN`` (``null`` in JSON) and
  the class is left out of every mean: of the case's mean over classes and of the class's mean
  over cases (:func:`summarize_cases`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
)
from monai.transforms.utils import generate_spatial_bounding_box

METRICS: tuple[str, ...] = ("dice", "assd", "hd95")
"""Names of the metrics reported for every class, in report order."""

ClassNames = Mapping[int, str] | Sequence[str]
"""Class names: a mapping class id -> name, or a sequence whose index is the class id."""

LabelMap = np.ndarray | torch.Tensor
"""An integer label map of shape (H, W, D) or (H, W), as a numpy array or a torch tensor."""


def foreground_class_names(class_names: ClassNames) -> dict[int, str]:
    """Return the foreground classes (id > 0) as an ordered mapping id -> name.

    Args:
        class_names: a mapping class id -> name, or a sequence whose index is the class id.
            Class 0 (background) is skipped in both forms.

    Returns:
        The foreground classes, sorted by id.

    Raises:
        ValueError: if there is no foreground class, an id is negative or names repeat.
    """
    items = class_names.items() if isinstance(class_names, Mapping) else enumerate(class_names)
    classes = {int(class_id): str(name) for class_id, name in items if int(class_id) != 0}
    if not classes:
        raise ValueError("class_names must name at least one foreground class (id > 0)")
    if min(classes) < 0:
        raise ValueError(f"class ids must be non-negative, got {sorted(classes)}")
    if len(set(classes.values())) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes.values())}")
    return dict(sorted(classes.items()))


def empty_mask_penalty(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Return the surface distance assigned when exactly one of prediction and reference is empty.

    Args:
        shape: spatial shape of the image in voxels.
        spacing: voxel spacing in millimetres, one value per spatial axis.

    Returns:
        The diagonal of the image extent in millimetres, ``sqrt(sum_i (shape_i * spacing_i)**2)``.
    """
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def case_metrics(
    pred: LabelMap,
    ref: LabelMap,
    spacing: Sequence[float],
    class_names: ClassNames,
) -> dict[str, dict[str, float]]:
    """Compute Dice, ASSD and HD95 of every foreground class of one case.

    Edge cases (see the module documentation): a class that is empty in exactly one of ``pred``
    and ``ref`` gets Dice ``0.0`` and ASSD = HD95 = :func:`empty_mask_penalty` (the diagonal of
    the image extent in mm); a class absent from both gets ``NaN`` for all three metrics and is
    excluded from means. Label values that are not in ``class_names`` are ignored.

    Args:
        pred: predicted integer label map, shape (H, W, D) or (H, W), numpy or torch (any device).
        ref: reference integer label map of the same shape.
        spacing: voxel spacing in millimetres, one positive value per spatial axis, in the axis
            order of the arrays.
        class_names: a mapping class id -> name, or a sequence whose index is the class id;
            class 0 (background) is skipped.

    Returns:
        ``{class_name: {"dice": float, "assd": float, "hd95": float}}`` in class-id order;
        distances in millimetres.

    Raises:
        ValueError: on mismatched shapes, unsupported dimensionality, non-integer labels or a
            spacing that does not match the dimensionality or is not positive.
    """
    pred_np = _as_label_array(pred, "pred")
    ref_np = _as_label_array(ref, "ref")
    if pred_np.shape != ref_np.shape:
        raise ValueError(f"pred and ref shapes differ: {pred_np.shape} vs {ref_np.shape}")
    if pred_np.ndim not in (2, 3):
        raise ValueError(f"label maps must be 2D or 3D, got shape {pred_np.shape}")
    voxel_spacing = tuple(float(s) for s in spacing)
    if len(voxel_spacing) != pred_np.ndim or min(voxel_spacing) <= 0:
        raise ValueError(
            f"spacing must hold {pred_np.ndim} positive values for shape {pred_np.shape}, "
            f"got {tuple(spacing)}"
        )
    penalty = empty_mask_penalty(pred_np.shape, voxel_spacing)
    return {
        name: _class_metrics(pred_np == class_id, ref_np == class_id, voxel_spacing, penalty)
        for class_id, name in foreground_class_names(class_names).items()
    }


def summarize_cases(cases: Sequence[Mapping[str, Any]], class_names: ClassNames) -> dict[str, Any]:
    """Aggregate per-case metrics into the per-modality summary written by the reports.

    For each modality (in order of first appearance) the summary holds:

    * ``mean`` / ``std``: mean and standard deviation over cases of each case's mean over its
      applicable classes;
    * ``per_class``: for each class, the mean and standard deviation over the cases where the
      class is applicable (``"dice"``, ``"dice_std"``, ``"assd"``, ``"assd_std"``, ``"hd95"``,
      ``"hd95_std"``) and their number ``"n"``;
    * ``n_cases`` and ``cases``: the input cases (``id``, ``metrics``) with their class mean.

    All statistics ignore ``NaN`` (not applicable) values; a statistic with no value is ``NaN``.
    Standard deviations are sample standard deviations (``ddof=1``; NaN for fewer than two
    values), the one convention of every ummkd report.

    Args:
        cases: per-case results ``{"id": str, "modality": str, "metrics": {class_name:
            {"dice": float, "assd": float, "hd95": float}}}``, as from :func:`case_metrics`;
            ``None`` values (from JSON) are read as ``NaN``.
        class_names: a mapping class id -> name, or a sequence whose index is the class id;
            class 0 (background) is skipped.

    Returns:
        ``{"classes": [name, ...], "modalities": {modality: {"n_cases", "mean", "std",
        "per_class", "cases"}}}``.

    Raises:
        ValueError: if a case lacks a class or a metric, or there are no cases.
    """
    if not cases:
        raise ValueError("summarize_cases needs at least one case")
    classes = list(foreground_class_names(class_names).values())
    grouped: dict[str, list[tuple[Mapping[str, Any], np.ndarray]]] = {}
    for case in cases:
        grouped.setdefault(str(case["modality"]), []).append((case, _case_values(case, classes)))

    modalities: dict[str, Any] = {}
    for modality, items in grouped.items():
        stacked = np.stack([values for _, values in items])  # (case, class, metric)
        case_means = np.array(
            [[_nan_mean(values[:, j]) for j in range(len(METRICS))] for _, values in items]
        )  # (case, metric)
        per_class: dict[str, dict[str, float | int]] = {}
        for k, name in enumerate(classes):
            stats: dict[str, float | int] = {}
            for j, metric in enumerate(METRICS):
                stats[metric] = _nan_mean(stacked[:, k, j])
                stats[f"{metric}_std"] = _nan_std(stacked[:, k, j])
            stats["n"] = int(np.count_nonzero(~np.isnan(stacked[:, k, 0])))
            per_class[name] = stats
        modalities[modality] = {
            "n_cases": len(items),
            "mean": {m: _nan_mean(case_means[:, j]) for j, m in enumerate(METRICS)},
            "std": {m: _nan_std(case_means[:, j]) for j, m in enumerate(METRICS)},
            "per_class": per_class,
            "cases": [
                {
                    "id": str(case["id"]),
                    "metrics": {
                        name: dict(zip(METRICS, row.tolist(), strict=True))
                        for name, row in zip(classes, values, strict=True)
                    },
                    "mean": dict(zip(METRICS, means.tolist(), strict=True)),
                }
                for (case, values), means in zip(items, case_means, strict=True)
            ],
        }
    return {"classes": classes, "modalities": modalities}


def _as_label_array(labels: LabelMap, what: str) -> np.ndarray:
    """Return ``labels`` as an integer numpy array (copied to the CPU if it is a tensor)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{what} must hold integer labels, got dtype {array.dtype} with fractions")


def _class_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: tuple[float, ...], penalty: float
) -> dict[str, float]:
    """Dice, ASSD and HD95 of one binary class, with the module's edge-case conventions."""
    in_pred, in_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not in_pred and not in_ref:
        return dict.fromkeys(METRICS, math.nan)
    if not (in_pred and in_ref):
        return {"dice": 0.0, "assd": penalty, "hd95": penalty}
    # One voxel of background around the union keeps every surface voxel a surface voxel.
    start, end = generate_spatial_bounding_box(
        (pred_mask | ref_mask)[None], margin=1, allow_smaller=True
    )
    box = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
    y_pred = torch.from_numpy(np.ascontiguousarray(pred_mask[box]))[None, None].float()
    y_ref = torch.from_numpy(np.ascontiguousarray(ref_mask[box]))[None, None].float()
    dice = compute_dice(y_pred, y_ref, include_background=True)
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated `always_return_as_numpy` argument internally.
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        assd = compute_average_surface_distance(
            y_pred, y_ref, include_background=True, symmetric=True, spacing=list(spacing)
        )
        hd95 = compute_hausdorff_distance(
            y_pred, y_ref, include_background=True, percentile=95, spacing=list(spacing)
        )
    return {"dice": float(dice.item()), "assd": float(assd.item()), "hd95": float(hd95.item())}


def _case_values(case: Mapping[str, Any], classes: Sequence[str]) -> np.ndarray:
    """Return one case's metrics as a float array of shape (class, metric), ``None`` -> NaN."""
    metrics = case["metrics"]
    values = np.full((len(classes), len(METRICS)), np.nan)
    for k, name in enumerate(classes):
        if name not in metrics:
            raise ValueError(f"case {case.get('id')!r} has no metrics for class {name!r}")
        for j, metric in enumerate(METRICS):
            if metric not in metrics[name]:
                raise ValueError(f"case {case.get('id')!r} class {name!r} lacks {metric!r}")
            value = metrics[name][metric]
            values[k, j] = math.nan if value is None else float(value)
    return values


def _nan_mean(values: np.ndarray) -> float:
    """Mean of the non-NaN values, NaN when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _nan_std(values: np.ndarray) -> float:
    """Sample standard deviation (``ddof=1``) of the non-NaN values, NaN for fewer than two."""
    finite = values[~np.isnan(values)]
    return float(finite.std(ddof=1)) if finite.size > 1 else math.nan
