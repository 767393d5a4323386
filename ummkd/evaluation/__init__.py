"""Evaluation: whole-volume inference, Dice / ASSD / HD95 metrics and reports.

``ummkd evaluate`` lives in :mod:`ummkd.evaluation.commands` (imported by the CLI only).
"""

from ummkd.evaluation.inference import (
    probabilities_to_labels,
    slicewise_predict,
    sliding_window_predict,
)
from ummkd.evaluation.metrics import (
    METRICS,
    case_metrics,
    empty_mask_penalty,
    foreground_class_names,
    summarize_cases,
)
from ummkd.evaluation.report import results_markdown, results_table, write_report

__all__ = [
    "METRICS",
    "case_metrics",
    "empty_mask_penalty",
    "foreground_class_names",
    "probabilities_to_labels",
    "results_markdown",
    "results_table",
    "slicewise_predict",
    "sliding_window_predict",
    "summarize_cases",
    "write_report",
]
