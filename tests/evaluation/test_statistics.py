"""Paired statistics and the pooled cross-validation comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from ummkd.evaluation.comparison import (
    comparison_markdown,
    gains_over,
    paired_comparisons,
    pool_cases,
    pooled_statistics,
)
from ummkd.evaluation.statistics import ci_excludes_zero, paired_difference, sample_mean_std


def test_a_consistent_gain_has_a_ci_above_zero() -> None:
    rng = np.random.default_rng(0)
    base = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.6, 0.9, 30))}
    better = {k: v + 0.03 + rng.normal(0, 0.01) for k, v in base.items()}
    result = paired_difference(better, base)
    assert result["n"] == 30
    assert 0.02 < result["ci_low"] < result["mean_difference"] < result["ci_high"] < 0.04
    assert ci_excludes_zero(result)
    diffs = np.array([better[k] - base[k] for k in sorted(base)])
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)


def test_noise_has_a_ci_around_zero_and_missing_cases_are_listed() -> None:
    rng = np.random.default_rng(1)
    a = {f"c{i}": float(v) for i, v in enumerate(rng.normal(0.8, 0.05, 20))}
    b = {f"c{i}": float(v) for i, v in enumerate(rng.normal(0.8, 0.05, 21))}
    result = paired_difference(a, b)
    assert result["n"] == 20 and result["cases_missing"] == ["c20"]
    assert result["ci_low"] < 0 < result["ci_high"]
    assert not ci_excludes_zero(result)
    identical = paired_difference(a, a)
    assert identical["mean_difference"] == 0 and identical["wilcoxon_p"] is None
    with pytest.raises(ValueError, match="no case"):
        paired_difference({"x": 1.0}, {"y": 1.0})


def test_a_degenerate_bootstrap_gives_no_interval_rather_than_nan() -> None:
    # Differences equal up to rounding: BCa cannot be computed (scipy returns NaN bounds).
    dice = {"a": 0.8, "b": 0.701, "c": 0.9, "d": 0.601}
    ours = {k: 10 * (1 - (v + 0.05)) for k, v in dice.items()}
    theirs = {k: 10 * (1 - (v - 0.1)) for k, v in dice.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = paired_difference(ours, theirs)
    assert result["mean_difference"] == pytest.approx(-1.5)
    assert result["ci_low"] is None and result["ci_high"] is None
    per_metric = dict.fromkeys(("dice", "assd", "hd95"), result)
    assert "nan" not in "".join(comparison_markdown({"b": {"ct": per_metric}}, "`m` minus"))


def test_sample_mean_std() -> None:
    assert sample_mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert sample_mean_std([1.0, float("nan")]) == (1.0, None)
    assert sample_mean_std([]) == (None, None)


def _summary(values: dict[str, float], modality: str = "ct") -> dict:
    cases = [
        {
            "id": cid,
            "mean": {"dice": v, "assd": 1 - v, "hd95": 10 * (1 - v)},
            "metrics": {"liver": {"dice": v, "assd": 1 - v, "hd95": 10 * (1 - v)}},
        }
        for cid, v in values.items()
    ]
    return {"modalities": {modality: {"cases": cases}}}


def test_pooled_folds_and_paired_comparison() -> None:
    folds_a = [_summary({"a": 0.9, "b": 0.8}), _summary({"c": 0.7, "d": 0.95})]
    folds_b = [_summary({"a": 0.8, "b": 0.7}), _summary({"c": 0.65, "d": 0.9})]
    pooled = {"ummkd": pool_cases(folds_a), "joint": pool_cases(folds_b)}
    assert sorted(pooled["ummkd"]["ct"]) == ["a", "b", "c", "d"]
    table = pooled_statistics(pooled["ummkd"], ["liver"])
    assert table["ct"]["dice"]["mean"] == pytest.approx(0.8375)
    assert table["ct"]["dice"]["std"] == pytest.approx(np.std([0.9, 0.8, 0.7, 0.95], ddof=1))
    comparisons = paired_comparisons(pooled, "ummkd")
    dice = comparisons["joint"]["ct"]["dice"]
    assert dice["n"] == 4 and dice["mean_difference"] == pytest.approx(0.075)
    lines = comparison_markdown(comparisons, "`ummkd` minus")
    assert lines[0].startswith("| `ummkd` minus |")
    assert lines[2].startswith("| `joint` | CT | 4 | +0.075 [")
    assert lines[2].endswith("| not judged (n < 10) |")  # too few cases for a verdict
    many = {f"c{i}": 0.5 + 0.01 * i for i in range(12)}
    pooled_many = {
        "ummkd": pool_cases(
            [_summary({k: v + 0.04 + 0.01 * (i % 3) for i, (k, v) in enumerate(many.items())})]
        ),
        "joint": pool_cases([_summary(many)]),
    }
    row = comparison_markdown(paired_comparisons(pooled_many, "ummkd"), "m")[2]
    assert row.startswith("| `joint` | CT | 12 | +0.050 [") and row.endswith("| yes, higher |")
    gains = gains_over(pooled, "joint")
    assert list(gains) == ["ummkd"]
    assert gains["ummkd"]["ct"]["dice"]["mean_difference"] == pytest.approx(0.075)
    assert gains_over(pooled, "single_mr") == {}
    # no shared case, or a metric that is NaN on every shared case: left out, no error
    pooled["other"] = pool_cases([_summary({"z": 0.5})])
    assert "other" not in gains_over(pooled, "joint")
    no_distance = {"dice": 0.5, "assd": None, "hd95": None}
    pooled["other"] = {"ct": {"a": {"id": "a", "mean": no_distance, "metrics": {}}}}
    partial = gains_over(pooled, "joint")["other"]["ct"]
    assert list(partial) == ["dice"]
    row = comparison_markdown({"other": {"ct": partial}}, "x")[2]
    assert row.startswith("| `other` | CT | 1 | -0.300 [") and "nan" not in row
    with pytest.raises(ValueError, match="tested twice"):
        pool_cases([_summary({"a": 0.9}), _summary({"a": 0.8})])
