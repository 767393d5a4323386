"""Test Dice of the CPU-scale ummkd before and after canonical orientation + CT in HU.

Compares two results files of ``ummkd reproduce`` on the same test cases (the SIFA split = fold 0
of the 5-fold cross-validation, same training and validation cases): the ``ummkd`` runs of
``--before`` (stored voxel order, 8-bit CT units, scored on the resampled grid) and of
``--after`` (RAS, HU, scored on the stored grid). Prints each seed's mean Dice per modality, the
between-seed mean +- sample std, and the paired per-case difference (after - before) of each
case's mean Dice averaged over the seeds both sides have per-case values for, with a 95 %
bootstrap CI and the Wilcoxon p-value. docs/benchmarks/orientation_hu_effect.txt holds its output.

    python benchmarks/orientation_hu_effect.py \
        --before docs/archive/abdominal_2d_cpu.json \
        --after results/abdominal_cv_cpu_fold0_ummkd_seeds.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ummkd.evaluation.statistics import paired_difference, sample_mean_std

VARIANT = "ummkd"


def _runs(path: Path) -> list[dict[str, Any]]:
    runs = json.loads(path.read_text())["runs"]
    return sorted((r for r in runs if r["variant"] == VARIANT), key=lambda r: r["seed"])


def _case_dice(case: dict[str, Any]) -> float:
    values = [m["dice"] for m in case["metrics"].values()]
    return sum(values) / len(values)


def _describe(label: str, runs: list[dict[str, Any]], modality: str) -> None:
    """Print each seed's mean Dice and the between-seed mean +- sample std."""
    means = [r["summary"]["modalities"][modality]["mean"]["dice"] for r in runs]
    mean, std = sample_mean_std(means)
    seeds = ", ".join(f"{r['seed']}: {m:.3f}" for r, m in zip(runs, means, strict=True))
    commits = sorted({r["commit"] for r in runs})
    grid = runs[0]["summary"].get("grid", "preprocessed (resampled)")
    print(f"  {label:<6} seeds {seeds}; mean {mean:.3f} +- {std:.3f} (commits {commits}; {grid})")


def _per_case(runs: list[dict[str, Any]], modality: str, seeds: set[int]) -> dict[str, float]:
    """Each case's mean Dice over the organs, averaged over ``seeds``."""
    per_case: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run["seed"] in seeds:
            for case in run["summary"]["modalities"][modality]["cases"]:
                per_case[case["id"]].append(_case_dice(case))
    return {cid: sum(v) / len(v) for cid, v in per_case.items()}


def _seeds_with_cases(runs: list[dict[str, Any]], modality: str) -> set[int]:
    return {r["seed"] for r in runs if r["summary"]["modalities"][modality].get("cases")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    args = parser.parse_args()
    before, after = _runs(args.before), _runs(args.after)
    print(f"before: {args.before}\nafter:  {args.after}")
    for modality in ("ct", "mr"):
        print(f"{modality}:")
        _describe("before", before, modality)
        _describe("after", after, modality)
        seeds = _seeds_with_cases(before, modality) & _seeds_with_cases(after, modality)
        old, new = _per_case(before, modality, seeds), _per_case(after, modality, seeds)
        diff = paired_difference(new, old)
        low, high, p = diff["ci_low"], diff["ci_high"], diff["wilcoxon_p"]
        interval = "no CI" if low is None else f"[{low:+.3f}, {high:+.3f}]"
        wilcoxon = "" if p is None else f", Wilcoxon p = {p:.2f}"
        print(
            f"  paired after - before over {diff['n']} cases (case means over seeds "
            f"{sorted(seeds)}): {diff['mean_difference']:+.3f} {interval}{wilcoxon}"
        )


if __name__ == "__main__":
    main()
