"""Compare methods over pooled per-case test results (cross-validation): tables and paired CIs.

Input: per method, the test summaries of its runs (one per fold, as ``ummkd test`` writes them).
Every case is pooled with its per-case values; a method is then compared with each other one on
the cases both scored, per modality, with :func:`ummkd.evaluation.statistics.paired_difference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ummkd.evaluation.report import MISSING, markdown_table
from ummkd.evaluation.statistics import ci_excludes_zero, paired_difference, sample_mean_std

METRICS = ("dice", "assd", "hd95")
MIN_CASES_FOR_A_VERDICT = 10
"""Fewer paired cases than this get no yes/no verdict: a BCa interval over so few cases is
unreliable, and below 6 cases the Wilcoxon test cannot reach p < 0.05 at all."""


def pool_cases(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pool the per-case results of several test summaries (e.g. the folds of one method).

    Args:
        summaries: Test summaries (``modalities -> {"cases": [{"id", "metrics", "mean"}]}``).

    Returns:
        ``{modality: {case_id: case}}``.

    Raises:
        ValueError: a case id appears in two summaries of the same modality (a case must be
            tested once per method and seed).
    """
    pooled: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for modality, result in summary["modalities"].items():
            cases = pooled.setdefault(modality, {})
            for case in result["cases"]:
                if case["id"] in cases:
                    raise ValueError(f"{modality} case {case['id']!r} was tested twice")
                cases[case["id"]] = case
    return pooled


def _value(case: Mapping[str, Any], metric: str, cls: str | None = None) -> float:
    value = case["mean"][metric] if cls is None else case["metrics"][cls][metric]
    return float("nan") if value is None else float(value)


def pooled_statistics(
    pooled: Mapping[str, Mapping[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """Mean and sample std over the pooled cases, overall and per class, for each modality."""
    result: dict[str, Any] = {}
    for modality, cases in pooled.items():
        entry: dict[str, Any] = {"n_cases": len(cases), "per_class": {}}
        for metric in METRICS:
            mean, std = sample_mean_std([_value(c, metric) for c in cases.values()])
            entry[metric] = {"mean": mean, "std": std}
        for cls in classes:
            entry["per_class"][cls] = {}
            for metric in METRICS:
                mean, std = sample_mean_std([_value(c, metric, cls) for c in cases.values()])
                entry["per_class"][cls][metric] = {"mean": mean, "std": std}
        result[modality] = entry
    return result


def _paired_metrics(
    minuend: Mapping[str, Mapping[str, Any]],
    subtrahend: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """``minuend - subtrahend`` per shared modality and metric (pooled cases of two methods).

    A metric with no case scored (finite) by both is left out, a modality with none at all too.
    """
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for modality, cases in minuend.items():
        if modality not in subtrahend:
            continue
        per_metric = {}
        for metric in metrics:
            try:
                per_metric[metric] = paired_difference(
                    {cid: _value(c, metric) for cid, c in cases.items()},
                    {cid: _value(c, metric) for cid, c in subtrahend[modality].items()},
                )
            except ValueError:  # no case scored by both
                continue
        if per_metric:
            result[modality] = per_metric
    return result


def _against_every_other(
    pooled: Mapping[str, Mapping[str, Mapping[str, Any]]],
    name: str,
    metrics: Sequence[str],
    *,
    minuend: bool,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``name`` minus (``minuend``) or subtracted from every other method sharing a modality."""
    if name not in pooled:
        return {}
    result = {}
    for other, cases in pooled.items():
        if other == name:
            continue
        pair = (pooled[name], cases) if minuend else (cases, pooled[name])
        differences = _paired_metrics(*pair, metrics)
        if differences:
            result[other] = differences
    return result


def paired_comparisons(
    pooled: Mapping[str, Mapping[str, Mapping[str, Any]]],
    method: str,
    *,
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``method`` minus every other method, per modality and metric, on their shared cases.

    Args:
        pooled: Method -> :func:`pool_cases` result.
        method: The method compared with all others.
        metrics: Metrics compared (each case's mean over its classes).

    Returns:
        ``{baseline: {modality: {metric: paired_difference(...)}}}`` for the baselines that
        share a modality with ``method``.
    """
    return _against_every_other(pooled, method, metrics, minuend=True)


def gains_over(
    pooled: Mapping[str, Mapping[str, Mapping[str, Any]]],
    baseline: str,
    *,
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every other method minus ``baseline``, per modality and metric, on their shared cases.

    Args:
        pooled: Method -> :func:`pool_cases` result.
        baseline: The method every other one is compared with (e.g. ``single_mr``).
        metrics: Metrics compared (each case's mean over its classes).

    Returns:
        ``{method: {modality: {metric: paired_difference(...)}}}`` for the methods that share
        a modality with ``baseline``.
    """
    return _against_every_other(pooled, baseline, metrics, minuend=False)


def _number(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:+.{digits}f}"


def _verdict(dice: Mapping[str, Any]) -> str:
    """Whether a paired Dice difference is stated, and which way."""
    if dice["n"] < MIN_CASES_FOR_A_VERDICT:
        return f"not judged (n < {MIN_CASES_FOR_A_VERDICT})"
    if not ci_excludes_zero(dice):
        return "no (CI includes 0)"
    return "yes, higher" if dice["mean_difference"] > 0 else "yes, lower"


def comparison_markdown(
    comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]], first_column: str
) -> list[str]:
    """Markdown lines: one row per method and modality of ``comparisons``.

    Args:
        comparisons: :func:`paired_comparisons` or :func:`gains_over` result.
        first_column: Header of the column naming the other method, e.g. "`ummkd` minus".
    """
    header = [
        first_column,
        "modality",
        "n",
        "Dice difference [95 % CI]",
        "Wilcoxon p",
        "ASSD mm difference [95 % CI]",
        "HD95 mm difference [95 % CI]",
        "Dice: a difference?",
    ]
    rows = []
    for other, per_modality in comparisons.items():
        for modality, per_metric in per_modality.items():
            cells = []
            for metric, digits in (("dice", 3), ("assd", 2), ("hd95", 1)):
                c = per_metric.get(metric)
                text = MISSING
                if c is not None:
                    text = f"{_number(c['mean_difference'], digits)} "
                    text += f"[{_number(c['ci_low'], digits)}, {_number(c['ci_high'], digits)}]"
                cells.append(text)
            dice = per_metric.get("dice")
            n = p_text = verdict = MISSING
            if dice is not None:
                n = str(dice["n"])
                p_text = MISSING if dice["wilcoxon_p"] is None else f"{dice['wilcoxon_p']:.3g}"
                verdict = _verdict(dice)
            row = [f"`{other}`", modality.upper(), n, cells[0], p_text, cells[1], cells[2]]
            rows.append([*row, verdict])
    return markdown_table(header, rows)
