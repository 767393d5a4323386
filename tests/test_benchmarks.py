"""The benchmark scripts still run (smoke test; benchmarks are never timed in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_report import append_section, results_appended_to, section  # noqa: E402


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.sh")), ids=lambda p: p.name)
def test_device_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
def test_overhead_benchmark_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "overhead.py"),
        "--root",
        str(tmp_path / "synthetic"),
        "--threads",
        "1",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--fixed-steps",
        "10",
        "--json",
        str(out),
        "--append",
        str(tmp_path / "performance.md"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Lightning / bare step time, median over repeats" in result.stdout
    assert "implied ratio" in result.stdout
    payload = json.loads(out.read_text())
    for key in (
        "ratio_step",
        "ratio_step_mean",
        "fixed_overhead",
        "kd_share_alone",
        "bf16_speedup",
    ):
        assert len(payload["per_repeat"][key]) == 2
    assert payload["bf16_finite"] is True
    appended = (tmp_path / "performance.md").read_text()
    assert appended.startswith("## Lightning overhead, KD share and bf16 (overhead.py) (")
    assert "| Lightning `Trainer.fit` |" in appended and "--append" in appended
    assert "repeat 1/2" not in appended  # the progress lines are printed, not appended


def test_results_appended_to_adds_a_dated_section_and_keeps_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nhand-written text")
    with results_appended_to(doc, "Loader"):
        print("| a | b |")
    assert "| a | b |" in capsys.readouterr().out  # still printed
    text = doc.read_text()
    assert text.startswith("# Performance\n\nhand-written text\n\n## Loader (")
    assert "- Command: `python " in text and "- Machine: " in text and "- Commit: `" in text
    assert text.endswith("| a | b |\n")

    with pytest.raises(RuntimeError), results_appended_to(doc, "Failed"):
        print("partial")
        raise RuntimeError("benchmark failed")
    assert doc.read_text() == text  # nothing appended from a failed run

    with results_appended_to(None, "Only printed"):
        print("x")
    assert doc.read_text() == text


def test_append_section_creates_a_missing_file(tmp_path: Path) -> None:
    doc = tmp_path / "new.md"
    append_section(doc, section("Title", "body\n", argv=["benchmarks/x.py", "--a", "b c"]))
    text = doc.read_text()
    assert text.startswith("## Title (") and "`python benchmarks/x.py --a 'b c'`" in text
    assert text.endswith("body\n")
