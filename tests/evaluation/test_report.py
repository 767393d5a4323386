from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from ummkd.evaluation.metrics import summarize_cases
from ummkd.evaluation.report import (
    format_mean_std,
    markdown_table,
    results_markdown,
    results_table,
    write_report,
)

CLASSES = ["background", "liver", "spleen"]


def _summary():
    nan = math.nan
    cases = [
        {
            "id": "ct_0",
            "modality": "ct",
            "metrics": {
                "liver": {"dice": 0.9, "assd": 1.0, "hd95": 4.0},
                "spleen": {"dice": 0.8, "assd": 2.0, "hd95": 6.0},
            },
        },
        {
            "id": "ct_1",
            "modality": "ct",
            "metrics": {
                "liver": {"dice": 0.7, "assd": 3.0, "hd95": 8.0},
                "spleen": {"dice": nan, "assd": nan, "hd95": nan},
            },
        },
        {
            "id": "mr_0",
            "modality": "mr",
            "metrics": {
                "liver": {"dice": 0.6, "assd": 5.0, "hd95": 9.0},
                "spleen": {"dice": nan, "assd": nan, "hd95": nan},
            },
        },
    ]
    return summarize_cases(cases, CLASSES)


def test_write_report_writes_parseable_files_atomically(tmp_path):
    summary = _summary()
    out = tmp_path / "report"
    paths = write_report(summary, out, title="Demo run")
    assert set(paths) == {"summary", "results", "dice"}
    assert sorted(p.name for p in out.iterdir()) == ["dice.png", "results.md", "summary.json"]

    loaded = json.loads(paths["summary"].read_text())
    assert loaded["classes"] == ["liver", "spleen"]
    ct = loaded["modalities"]["ct"]
    assert ct["per_class"]["liver"]["dice"] == pytest.approx(0.8)
    assert ct["per_class"]["liver"]["dice_std"] == pytest.approx(0.1 * 2**0.5)  # sample std
    assert ct["mean"]["dice"] == pytest.approx((0.85 + 0.7) / 2)
    assert loaded["modalities"]["mr"]["per_class"]["spleen"]["dice"] is None  # NaN -> null
    assert ct["cases"][1]["metrics"]["spleen"]["hd95"] is None
    assert summarize_cases(
        [{**c, "modality": m} for m, r in loaded["modalities"].items() for c in r["cases"]],
        CLASSES,
    )["modalities"]["ct"]["mean"] == pytest.approx(ct["mean"])

    markdown = paths["results"].read_text()
    assert markdown.startswith("# Demo run\n")
    assert "## ct (2 cases)" in markdown and "## mr (1 case)" in markdown
    assert "| liver | 0.800 ± 0.141 | 2.00 ± 1.41 | 6.00 ± 2.83 | 2 |" in markdown
    assert "| spleen | n/a | n/a | n/a | 0 |" in markdown
    assert "| **Mean** | 0.775 ± 0.106 |" in markdown
    assert "± is the sample standard deviation over cases" in markdown  # as computed (ddof=1)

    assert paths["dice"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rewriting replaces the files and leaves no temporary file behind.
    write_report(summary, out)
    assert sorted(p.name for p in out.iterdir()) == ["dice.png", "results.md", "summary.json"]
    assert oct(paths["summary"].stat().st_mode & 0o777) == oct(0o644)


def test_markdown_and_table_agree():
    summary = _summary()
    console = Console(record=True, width=200)
    console.print(results_table(summary, title="T"))
    text = console.export_text()
    for row in ("liver", "spleen", "mean", "0.800 ± 0.141", "0.600 ", "n/a"):
        assert row in text
    assert "| 0.600 |" in results_markdown(summary)  # one case: no spread


def test_format_mean_std() -> None:
    assert format_mean_std(0.81234, 0.0341, 3) == "0.812 ± 0.034"
    assert format_mean_std(2.5, None, 2) == "2.50"  # one value: no spread
    assert format_mean_std(2.5, math.nan, 1) == "2.5"
    assert format_mean_std(None, None, 3) == "—"
    assert format_mean_std(math.nan, 0.1, 3, missing="n/a") == "n/a"


def test_markdown_table() -> None:
    assert markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
        "| 3 | 4 |",
    ]
    assert markdown_table(["a"], []) == ["| a |", "|---|"]
