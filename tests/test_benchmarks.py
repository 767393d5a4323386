"""The benchmark scripts still run (smoke test; benchmarks are never timed in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
