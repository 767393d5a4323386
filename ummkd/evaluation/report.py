"""Evaluation reports: ``summary.json``, ``results.md``, ``dice.png`` and a terminal table.

All take the summary built by :func:`ummkd.evaluation.metrics.summarize_cases`. Files are
written atomically (a temporary file in the same folder, then :func:`os.replace`), so a reader
never sees a half-written report. Not-applicable values (``NaN``) are written as ``null`` in
JSON and ``n/a`` in tables.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from ummkd.data.io import atomic_write_bytes
from ummkd.evaluation.metrics import METRICS

DEFAULT_TITLE = "ummkd evaluation"

_HEADERS = {"dice": "Dice", "assd": "ASSD (mm)", "hd95": "HD95 (mm)"}
_DECIMALS = {"dice": 3, "assd": 2, "hd95": 2}
MISSING = "—"
"""What report tables show where there is no value (no result, or no mean)."""
NOT_APPLICABLE = "n/a"
"""What the test report shows for a class absent from prediction and reference (NaN)."""
_NOTE = (
    "Mean: over cases of each case's mean over its applicable classes; ± is the sample "
    "standard deviation over cases; n is the number of cases where the class is applicable. "
    "A class absent from both prediction and reference is not applicable (n/a) and excluded "
    "from means. A class empty in exactly one of them scores Dice 0 and ASSD = HD95 = the "
    "diagonal of the image extent in mm."
)


def write_report(
    summary: Mapping[str, Any], out_dir: Path, *, title: str = DEFAULT_TITLE
) -> dict[str, Path]:
    """Write ``summary.json``, ``results.md`` and ``dice.png`` into ``out_dir`` atomically.

    Args:
        summary: the summary from :func:`~ummkd.evaluation.metrics.summarize_cases`.
        out_dir: destination folder, created if needed; existing report files are replaced.
        title: heading of ``results.md`` and of the plot.

    Returns:
        The written paths by file stem: ``"summary"`` (``summary.json``), ``"results"``
        (``results.md``) and ``"dice"`` (``dice.png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out_dir / "summary.json",
        "results": out_dir / "results.md",
        "dice": out_dir / "dice.png",
    }
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(paths["summary"], text.encode())
    atomic_write_bytes(paths["results"], results_markdown(summary, title=title).encode())
    atomic_write_bytes(paths["dice"], dice_plot_png(summary, title=title))
    return paths


def results_markdown(summary: Mapping[str, Any], *, title: str = DEFAULT_TITLE) -> str:
    """Render the summary as markdown: one table per modality (classes x metrics, mean±std).

    Args:
        summary: the summary from :func:`~ummkd.evaluation.metrics.summarize_cases`.
        title: the level-1 heading.

    Returns:
        The markdown document.
    """
    lines = [f"# {title}", ""]
    header = ["Class", *(_HEADERS[m] for m in METRICS), "n"]
    for modality, result in summary["modalities"].items():
        n_cases = result["n_cases"]
        lines += [f"## {modality} ({n_cases} case{'' if n_cases == 1 else 's'})", ""]
        rows = []
        for name in summary["classes"]:
            stats = result["per_class"][name]
            cells = [_mean_std(stats[m], stats[f"{m}_std"], m) for m in METRICS]
            rows.append([name, *cells, str(stats["n"])])
        means = [_mean_std(result["mean"][m], result["std"][m], m) for m in METRICS]
        rows.append(["**Mean**", *means, str(result["n_cases"])])
        lines += [*markdown_table(header, rows), ""]
    lines += [_NOTE, ""]
    return "\n".join(lines)


def results_table(summary: Mapping[str, Any], *, title: str = DEFAULT_TITLE) -> Table:
    """Build a rich table of the summary for the terminal: per modality, per class and mean.

    Args:
        summary: the summary from :func:`~ummkd.evaluation.metrics.summarize_cases`.
        title: the table title.

    Returns:
        The table (print it with ``rich.console.Console().print``).
    """
    table = Table(title=title)
    table.add_column("Modality")
    table.add_column("Class")
    for metric in METRICS:
        table.add_column(_HEADERS[metric], justify="right")
    table.add_column("n", justify="right")
    for modality, result in summary["modalities"].items():
        for name in summary["classes"]:
            stats = result["per_class"][name]
            cells = [_mean_std(stats[m], stats[f"{m}_std"], m) for m in METRICS]
            table.add_row(modality, name, *cells, str(stats["n"]))
        means = [_mean_std(result["mean"][m], result["std"][m], m) for m in METRICS]
        table.add_row(
            modality, "[bold]mean[/bold]", *means, str(result["n_cases"]), end_section=True
        )
    return table


def dice_plot_png(summary: Mapping[str, Any], *, title: str = DEFAULT_TITLE) -> bytes:
    """Plot the Dice per class and modality as grouped bars with standard-deviation error bars.

    Classes with no applicable case have no bar.

    Args:
        summary: the summary from :func:`~ummkd.evaluation.metrics.summarize_cases`.
        title: the plot title.

    Returns:
        The PNG image.
    """
    groups = [*summary["classes"], "mean"]
    series = {}
    for modality, result in summary["modalities"].items():
        means = [result["per_class"][c]["dice"] for c in summary["classes"]]
        stds = [result["per_class"][c]["dice_std"] for c in summary["classes"]]
        series[modality] = ([*means, result["mean"]["dice"]], [*stds, result["std"]["dice"]])
    return grouped_bars_png(
        groups, series, ylabel="Dice", title=title, legend="modality", ymax=1.05
    )


def grouped_bars_png(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]],
    *,
    ylabel: str,
    title: str,
    legend: str,
    ymax: float = 1.0,
) -> bytes:
    """Grouped bar chart with error bars, drawn with matplotlib's Agg canvas directly.

    pyplot's global backend is left untouched. ``None`` or NaN means "no bar" (a mean) or "no
    error bar" (a spread).

    Args:
        groups: the x-axis groups.
        series: bar series name -> (means, spreads), one value per group.
        ylabel: y-axis label.
        title: plot title.
        legend: legend title.
        ymax: upper y limit (the lower one is 0).

    Returns:
        The PNG image.
    """
    figure = Figure(figsize=(max(5.0, 1.5 + 0.6 * len(groups) * len(series)), 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (name, (means, stds)) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        heights = [_nan(m) for m in means]
        errors = [0.0 if not np.isfinite(_nan(e)) else _nan(e) for e in stds]
        axes.bar(positions + offset, heights, width, yerr=errors, capsize=3, label=name)
    axes.set_xticks(positions, groups, rotation=30, ha="right")
    axes.set_ylim(0.0, ymax)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(title=legend)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _mean_std(mean: float | None, std: float | None, metric: str) -> str:
    """``mean ± std`` with the metric's number of decimals; ``n/a`` when not applicable."""
    return format_mean_std(mean, std, _DECIMALS[metric], missing=NOT_APPLICABLE)


def format_mean_std(
    mean: float | None, std: float | None, digits: int, *, missing: str = MISSING
) -> str:
    """Format a mean and its spread for a report table: ``"0.812 ± 0.034"``.

    The one "mean ± std" format of ummkd's reports (``ummkd test``, ``ummkd reproduce``).

    Args:
        mean: the mean; ``None`` or NaN where there is none.
        std: its spread; ``None`` or NaN where there is none (e.g. a single value).
        digits: decimals of both numbers.
        missing: the text where there is no mean (``—``; the test report writes ``n/a``).

    Returns:
        ``"m ± s"``, ``"m"`` without a spread, ``missing`` without a mean.
    """
    mean, std = _nan(mean), _nan(std)
    if math.isnan(mean):
        return missing
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_row(cells: Sequence[str]) -> str:
    """One markdown table row: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: the header, the ``|---|`` rule, then one line per row."""
    return [markdown_row(header), "|" + "---|" * len(header), *map(markdown_row, rows)]


def _nan(value: float | None) -> float:
    """``None`` (JSON null) -> NaN, anything else -> float."""
    return math.nan if value is None else float(value)


def json_safe(value: Any) -> Any:
    """Recursively convert to JSON types: non-finite floats -> ``None``, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
