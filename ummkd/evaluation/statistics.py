"""Paired comparison of two methods over the same test cases (bootstrap CI, Wilcoxon test)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import stats


def sample_mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values.

    ummkd's one spread convention: every ± in its reports is this sample standard deviation
    (over test cases, or between seeds), with no spread for a single value. ``None`` and
    non-finite values (NaN: not applicable) are left out.

    Returns:
        ``(mean, std)``; ``std`` is ``None`` for fewer than two values, both ``None`` for none.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return float(np.mean(finite)), std


def paired_difference(
    method: Mapping[str, float],
    baseline: Mapping[str, float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare ``method`` against ``baseline`` on the cases both scored (``method - baseline``).

    Args:
        method: Case id -> value (e.g. the case's mean Dice).
        baseline: Case id -> value for the same kind of cases.
        confidence: Level of the bootstrap confidence interval.
        n_resamples: Bootstrap resamples (over cases).
        seed: Seed of the bootstrap.

    Returns:
        ``{"n", "mean_difference", "ci_low", "ci_high", "wilcoxon_p", "cases_missing"}``: the
        mean of the per-case differences, its BCa bootstrap confidence interval and the two-sided
        Wilcoxon signed-rank p-value (``None`` where undefined, e.g. fewer than two cases or all
        differences zero); ``cases_missing`` lists ids scored by only one of the two.

    Raises:
        ValueError: no case is shared.
    """
    shared = sorted(
        case
        for case in set(method) & set(baseline)
        if math.isfinite(method[case]) and math.isfinite(baseline[case])
    )
    if not shared:
        raise ValueError("no case was scored by both methods")
    differences = np.array([method[c] - baseline[c] for c in shared], dtype=np.float64)
    result: dict[str, Any] = {
        "n": len(shared),
        "mean_difference": float(differences.mean()),
        "ci_low": None,
        "ci_high": None,
        "wilcoxon_p": None,
        "cases_missing": sorted(set(method) ^ set(baseline)),
    }
    if len(shared) >= 2 and np.ptp(differences) > 0:
        interval = stats.bootstrap(
            (differences,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        if math.isfinite(interval.low) and math.isfinite(interval.high):  # NaN: degenerate
            result["ci_low"], result["ci_high"] = float(interval.low), float(interval.high)
    if len(shared) >= 2 and np.any(differences != 0):
        result["wilcoxon_p"] = float(stats.wilcoxon(differences).pvalue)
    return result


def ci_excludes_zero(comparison: Mapping[str, Any]) -> bool:
    """Whether a :func:`paired_difference` result's confidence interval excludes 0."""
    low, high = comparison.get("ci_low"), comparison.get("ci_high")
    return low is not None and high is not None and (low > 0 or high < 0)
