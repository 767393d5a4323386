"""The benchmark scripts still run (smoke test; benchmarks are never timed in tests)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_bench_report() -> ModuleType:
    """The scripts' helper module, loaded from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_report", REPO / "benchmarks" / "bench_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_report = _load_bench_report()


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
    assert appended.startswith("## Benchmark run: Lightning overhead, KD share and bf16 (overhead")
    assert "- Machine: " in appended and "torch threads" in appended
    assert "| Lightning `Trainer.fit` |" in appended and "--append" in appended
    assert "repeat 1/2" not in appended  # the progress lines are printed, not appended


def test_results_appended_to_adds_a_dated_section_and_keeps_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nhand-written text")
    with bench_report.results_appended_to(doc, "Loader", machine="H100"):
        print("| a | b |")
    assert "| a | b |" in capsys.readouterr().out  # still printed
    text = doc.read_text()
    assert text.startswith("# Performance\n\nhand-written text\n\n## Benchmark run: Loader, ")
    assert "- Command: `python " in text and "- Machine: H100\n" in text
    assert "- Commit: `" in text
    assert text.endswith("| a | b |\n")

    with pytest.raises(RuntimeError), bench_report.results_appended_to(doc, "Failed"):
        print("partial")
        raise RuntimeError("benchmark failed")
    assert doc.read_text() == text  # nothing appended from a failed run

    with bench_report.results_appended_to(None, "Only printed"):
        print("x")
    assert doc.read_text() == text


def test_append_section_creates_a_missing_file(tmp_path: Path) -> None:
    doc = tmp_path / "new.md"
    text = bench_report.section(
        "Title", "body\n", machine="m", commit="abc", argv=["benchmarks/x.py", "--a", "b c"]
    )
    bench_report.append_section(doc, text)
    text = doc.read_text()
    assert text.startswith("## Benchmark run: Title, ")
    assert "`python benchmarks/x.py --a 'b c'`" in text and "- Commit: `abc`" in text
    assert text.endswith("body\n")


def test_append_path_is_checked_before_the_benchmark_runs(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_report.add_append_argument(parser)
    assert parser.parse_args(["--append", str(tmp_path / "a.md")]).append == tmp_path / "a.md"
    for bad in (tmp_path, tmp_path / "missing" / "a.md"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--append", str(bad)])


def test_orientation_hu_effect_pairs_cases_over_seeds(tmp_path: Path) -> None:
    before = REPO / "docs" / "archive" / "abdominal_2d_cpu.json"
    results = json.loads(before.read_text())
    for run in results["runs"]:  # "after": every case's Dice 0.01 higher
        for stats in run["summary"]["modalities"].values():
            for case in stats.get("cases", []):
                for metrics in case["metrics"].values():
                    metrics["dice"] += 0.01
            stats["mean"]["dice"] += 0.01
    after = tmp_path / "after.json"
    after.write_text(json.dumps(results))
    script = REPO / "benchmarks" / "orientation_hu_effect.py"
    result = subprocess.run(
        [sys.executable, str(script), "--before", str(before), "--after", str(after)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    assert "ct:" in lines and "mr:" in lines
    paired = "  paired after - before over {} cases (case means over seeds [1, 2]): +0.010 no CI"
    assert paired.format(6) + ", Wilcoxon p = 0.03" in lines
    assert paired.format(4) + ", Wilcoxon p = 0.12" in lines
    assert any(line.startswith("  after  seeds 0: 0.828, 1: 0.844, 2: 0.860") for line in lines)
