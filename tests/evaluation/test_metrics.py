from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
)
from scipy import ndimage

from ummkd.evaluation.metrics import (
    METRICS,
    case_metrics,
    empty_mask_penalty,
    foreground_class_names,
    summarize_cases,
)

SPACING = (3.0, 1.0, 2.0)


def _box(shape, lo, hi, value=1):
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
    return labels


def test_shifted_box_matches_hand_computed_dice_assd_hd95():
    # 8x6x6 box shifted by 2 voxels along axis 0, where the spacing is 3 mm.
    ref = _box((20, 16, 16), (4, 5, 5), (12, 11, 11))
    pred = np.roll(ref, 2, axis=0)
    result = case_metrics(pred, ref, SPACING, ["background", "organ"])["organ"]
    # Dice: overlap 6 of 8 layers.
    assert result["dice"] == pytest.approx(0.75)
    # Each mask has 2*36 face + 6*20 side surface voxels = 192. Prediction -> reference: far face
    # (36) at 2 voxels = 6 mm, the side ring next to it (20) at 3 mm, the near face's interior:
    # 8 voxels 1 mm and 8 voxels 2 mm from a side surface (spacing 1 and 2 mm), the rest 0.
    # Symmetric, so ASSD = 2 * (36*6 + 20*3 + 8*1 + 8*2) / (2 * 192).
    assert result["assd"] == pytest.approx((36 * 6 + 20 * 3 + 8 + 16) / 192, rel=1e-5)
    # More than 5 % of the distances are 6 mm, none larger.
    assert result["hd95"] == pytest.approx(6.0, rel=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_plate_shift_distances_use_the_spacing_of_the_shifted_axis(axis):
    shape = (12, 12, 12)
    lo, hi = [2, 2, 2], [10, 10, 10]
    lo[axis], hi[axis] = 4, 5  # a one-voxel plate: every voxel is a surface voxel
    ref = _box(shape, lo, hi)
    pred = np.roll(ref, 2, axis=axis)
    result = case_metrics(pred, ref, SPACING, {1: "plate"})["plate"]
    assert result["dice"] == 0.0
    assert result["assd"] == pytest.approx(2 * SPACING[axis], rel=1e-5)
    assert result["hd95"] == pytest.approx(2 * SPACING[axis], rel=1e-5)


def test_identical_masks_are_perfect():
    ref = _box((10, 10, 6), (2, 3, 1), (7, 8, 5), value=2)
    result = case_metrics(ref, ref.copy(), SPACING, ["bg", "a", "b"])
    assert result["b"] == {"dice": 1.0, "assd": 0.0, "hd95": 0.0}
    assert all(math.isnan(v) for v in result["a"].values())


def test_empty_prediction_and_false_positive_get_the_finite_documented_penalty():
    shape = (20, 16, 10)
    ref = _box(shape, (2, 2, 2), (6, 6, 6), value=1)
    pred = _box(shape, (10, 10, 5), (14, 14, 9), value=2)  # misses class 1, invents class 2
    expected = math.sqrt((20 * 3.0) ** 2 + (16 * 1.0) ** 2 + (10 * 2.0) ** 2)
    assert empty_mask_penalty(shape, SPACING) == pytest.approx(expected)
    result = case_metrics(pred, ref, SPACING, ["bg", "missed", "false_positive"])
    for name in ("missed", "false_positive"):
        assert result[name]["dice"] == 0.0
        assert math.isfinite(result[name]["assd"])
        assert result[name]["assd"] == pytest.approx(expected)
        assert result[name]["hd95"] == pytest.approx(expected)


def _monai_full_volume(pred, ref, spacing):
    y_pred = torch.from_numpy(pred)[None, None].float()
    y = torch.from_numpy(ref)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {
            "dice": compute_dice(y_pred, y).item(),
            "assd": compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=list(spacing)
            ).item(),
            "hd95": compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
            ).item(),
        }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cropping_leaves_metrics_equal_to_monai_on_the_full_volume(seed):
    rng = np.random.default_rng(seed)
    shape = (40, 36, 30)
    # Smooth random blobs; seed 2 puts them against the image border.
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    ref = (noise > 0.05).astype(np.uint8)
    pred = (np.roll(noise, (2, -1, 1), axis=(0, 1, 2)) > 0.03).astype(np.uint8)
    if seed != 2:
        ref[:2], ref[-2:], pred[:2], pred[-2:] = 0, 0, 0, 0
        ref[:, :2], ref[:, -2:], pred[:, :2], pred[:, -2:] = 0, 0, 0, 0
    assert ref.any() and pred.any()
    assert (seed == 2) == bool(ref[0].any() or ref[-1].any() or ref[:, 0].any() or ref[:, -1].any())
    spacing = (0.8, 1.3, 2.5)
    result = case_metrics(pred, ref, spacing, ["bg", "blob"])["blob"]
    expected = _monai_full_volume(pred.astype(bool), ref.astype(bool), spacing)
    for metric in METRICS:
        assert result[metric] == pytest.approx(expected[metric], rel=1e-5, abs=1e-6)


def test_2d_torch_inputs_equal_numpy_and_mapping_equals_list():
    ref = _box((30, 20), (5, 4), (15, 12), value=1)
    ref[20:25, 2:6] = 3
    pred = np.roll(ref, 3, axis=1)
    as_numpy = case_metrics(pred, ref, (0.5, 2.0), ["bg", "a", "b", "c"])
    as_torch = case_metrics(
        torch.from_numpy(pred), torch.from_numpy(ref), (0.5, 2.0), {1: "a", 3: "c", 2: "b"}
    )
    assert list(as_torch) == ["a", "b", "c"]
    assert as_torch["a"] == as_numpy["a"]
    assert as_torch["c"] == as_numpy["c"]
    assert as_numpy["a"]["hd95"] == pytest.approx(6.0)  # shift 3 along an axis of 2 mm


def test_invalid_inputs_raise():
    ref = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(np.zeros((4, 4, 5)), ref, (1, 1, 1), ["bg", "a"])
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(ref, ref, (1, 1), ["bg", "a"])
    with pytest.raises(ValueError, match="integer labels"):
        case_metrics(ref + 0.5, ref, (1, 1, 1), ["bg", "a"])
    with pytest.raises(ValueError, match="foreground"):
        foreground_class_names(["background"])


def _random_cases(rng, classes, modalities, n_cases):
    cases = []
    for i in range(n_cases):
        metrics = {}
        for name in classes:
            if rng.random() < 0.25:
                metrics[name] = {"dice": math.nan, "assd": math.nan, "hd95": math.nan}
            else:
                metrics[name] = {
                    "dice": float(rng.random()),
                    "assd": float(rng.random() * 5),
                    "hd95": float(rng.random() * 20),
                }
        cases.append(
            {"id": f"case_{i}", "modality": modalities[i % len(modalities)], "metrics": metrics}
        )
    return cases


def test_summary_statistics_match_numpy():
    rng = np.random.default_rng(3)
    classes = ["liver", "kidney", "spleen"]
    cases = _random_cases(rng, classes, ["ct", "mr"], 9)
    for name in classes:  # a case with no applicable class has a NaN mean, left out
        cases[2]["metrics"][name] = dict.fromkeys(METRICS, math.nan)
    summary = summarize_cases(cases, ["background", *classes])
    assert summary["classes"] == classes
    assert list(summary["modalities"]) == ["ct", "mr"]
    for modality, result in summary["modalities"].items():
        mine = [c for c in cases if c["modality"] == modality]
        assert result["n_cases"] == len(mine)
        assert [c["id"] for c in result["cases"]] == [c["id"] for c in mine]
        values = np.array([[[c["metrics"][k][m] for m in METRICS] for k in classes] for c in mine])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN case: mean of empty slice
            case_means = np.nanmean(values, axis=1)
        for j, metric in enumerate(METRICS):
            np.testing.assert_allclose(result["mean"][metric], np.nanmean(case_means[:, j]))
            np.testing.assert_allclose(result["std"][metric], _sample_std(case_means[:, j]))
            for k, name in enumerate(classes):
                stats = result["per_class"][name]
                np.testing.assert_allclose(stats[metric], np.nanmean(values[:, k, j]))
                np.testing.assert_allclose(stats[f"{metric}_std"], _sample_std(values[:, k, j]))
        for k, name in enumerate(classes):
            assert result["per_class"][name]["n"] == int((~np.isnan(values[:, k, 0])).sum())


def test_absent_in_both_is_excluded_from_means_and_none_reads_as_nan():
    shape = (12, 12, 12)
    ref = _box(shape, (2, 2, 2), (6, 6, 6), value=1)
    pred = np.roll(ref, 1, axis=0)
    metrics = case_metrics(pred, ref, (1.0, 1.0, 1.0), ["bg", "present", "absent"])
    assert all(math.isnan(v) for v in metrics["absent"].values())
    perfect = {
        "present": {"dice": 1.0, "assd": 0.0, "hd95": 0.0},
        "absent": {"dice": None, "assd": None, "hd95": None},
    }
    cases = [
        {"id": "a", "modality": "ct", "metrics": metrics},
        {"id": "b", "modality": "ct", "metrics": perfect},
    ]
    summary = summarize_cases(cases, {1: "present", 2: "absent"})
    ct = summary["modalities"]["ct"]
    assert ct["cases"][0]["mean"]["dice"] == pytest.approx(metrics["present"]["dice"])
    assert ct["mean"]["dice"] == pytest.approx((metrics["present"]["dice"] + 1.0) / 2)
    assert ct["per_class"]["absent"]["n"] == 0
    assert math.isnan(ct["per_class"]["absent"]["dice"])
    assert ct["per_class"]["present"]["n"] == 2


def test_summary_rejects_cases_without_a_class():
    with pytest.raises(ValueError, match="no metrics for class 'b'"):
        summarize_cases(
            [{"id": "x", "modality": "ct", "metrics": {"a": {"dice": 1, "assd": 0, "hd95": 0}}}],
            ["bg", "a", "b"],
        )


def _sample_std(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
