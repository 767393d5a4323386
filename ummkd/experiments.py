"""``ummkd reproduce``: the paper's abdominal comparison, trained and tested in one command.

Every variant of ``configs/abdominal_2d/`` (single-modality training, joint training with
shared norms, separate norms without KD, the X- and Y-shape multi-stream networks and ummkd
itself) is trained with ``ummkd fit`` and evaluated with ``ummkd test --ckpt_path best`` on the
same data, split, budget and seeds: the checkpoint is chosen on the validation cases and the
numbers are measured on the test cases. Each run is a separate ``ummkd`` process, so a variant
cannot leak state into the next, and each finished run leaves a ``record.json`` so that an
interrupted reproduction continues where it stopped. The results JSON keeps every run's test
summary, so ``--restore results/abdominal_2d_<scale>.json`` recreates those records where
``runs/`` is gone and a reproduction can add seeds or variants without retraining the rest.

Two scales:

* ``cpu``: each variant's config plus ``configs/abdominal_2d/cpu.yaml`` and, for the
  multi-stream baselines, ``cpu_<variant>.yaml``: a 5-level MONAI U-Net for every variant instead
  of the paper's 39 M-weight dilated ResNet, 2 mm in-plane spacing, 160x160 crops, 1200 steps;
  about 12 minutes per two-modality variant on 2 CPU cores.
* ``full``: the variant configs alone (the paper's 2D settings, 150,000 steps); give a trainer
  profile, e.g. ``--trainer-config configs/trainer/gpu.yaml``.

The results land in ``results/abdominal_2d_<scale>.md``, ``.json`` and ``.png``: Dice and ASSD
per organ and modality (mean ± std over test cases; with several seeds, the mean over seeds of
each run's mean and the standard deviation between seeds), weight count, training time, the
exact commands and the git commit.

Examples::

    ummkd reproduce --scale cpu --seeds 0
    ummkd reproduce --scale cpu --folds 5 --variants ummkd separate_norm joint single_mr single_ct
    ummkd reproduce --scale cpu --folds 5 --train-limit mr=4 --baselines single_mr \
        --all-cases-baselines single_mr --variants ummkd separate_norm joint single_mr
    ummkd reproduce --scale full --seeds 0 1 2 --trainer-config configs/trainer/gpu.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ummkd.config_files import config_argument
from ummkd.data.cross_validation import cross_validation_splits, describe_splits
from ummkd.data.dataset_spec import DatasetSpecError, load_dataset
from ummkd.data.io import atomic_write_bytes, write_json, write_text_atomic
from ummkd.errors import CommandParser, RunError
from ummkd.evaluation.comparison import (
    MIN_CASES_FOR_A_VERDICT,
    comparison_markdown,
    gains_over,
    paired_comparisons,
    pool_cases,
    pooled_statistics,
)
from ummkd.evaluation.report import (
    MISSING,
    format_mean_std,
    grouped_bars_png,
    json_safe,
    markdown_table,
)
from ummkd.evaluation.statistics import sample_mean_std
from ummkd.provenance import device_type, git_commit, machine_description

VARIANTS = ("single_ct", "single_mr", "joint", "separate_norm", "x_shape", "y_shape", "ummkd")
"""Variants in the order of the paper's comparison table (ummkd last)."""

DESCRIPTIONS = {
    "single_ct": "CT only",
    "single_mr": "MR only",
    "joint": "joint training, shared norms, no KD",
    "separate_norm": "shared kernels, modality norms, no KD",
    "x_shape": "X-shape: modality encoders + decoders",
    "y_shape": "Y-shape: modality encoders, shared decoder",
    "ummkd": "ummkd: shared kernels, modality norms + KD",
}
ALL_CASES = " (all training cases)"
"""Marks an ``--all-cases-baselines`` run: trained on every training case of its fold."""
SCALES = ("cpu", "gpu-short", "full")
BASE_CONFIG = "ummkd.yaml"
RECORD = "record.json"
_BEST_DICE = re.compile(r"dice(\d+\.\d+)")


class ReproduceError(RunError):
    """A user-facing problem (printed, exit code 1)."""


def variant_configs(config_dir: Path, variant: str, scale: str) -> list[Path]:
    """The config files of one variant, in the order they are given to the CLI.

    Args:
        config_dir: folder holding ``ummkd.yaml``, the variant overlays and ``cpu.yaml``.
        variant: one of :data:`VARIANTS`.
        scale: ``"cpu"`` adds the ``cpu.yaml`` overlay, then ``cpu_<variant>.yaml`` if present.

    Returns:
        ``ummkd.yaml``, then the variant's overlay (except for ``ummkd``), then the CPU-scale
        overlays.

    Raises:
        ReproduceError: a config file is missing.
    """
    names = [BASE_CONFIG]
    if variant != "ummkd":
        names.append(f"{variant}.yaml")
    if scale in ("cpu", "gpu-short"):
        names.append("cpu.yaml")
        if (config_dir / f"cpu_{variant}.yaml").is_file():
            names.append(f"cpu_{variant}.yaml")
    if scale == "gpu-short":
        names.append("gpu_short.yaml")
    paths = [config_dir / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ReproduceError(
            f"missing config file(s): {', '.join(missing)}; run from the repository root or "
            "pass --configs to the folder with the abdominal_2d configs"
        )
    return paths


def run_commands(
    *,
    configs: Sequence[Path],
    data_root: Path,
    run_dir: Path,
    seed: int,
    fold: Fold | None = None,
    extra: Sequence[str] = (),
    executable: Sequence[str] = ("ummkd",),
) -> tuple[list[str], list[str]]:
    """The ``ummkd fit`` and ``ummkd test`` commands of one run.

    Args:
        configs: config files, in order.
        data_root: dataset folder (``--data.root``).
        run_dir: the run's ``--trainer.default_root_dir``.
        seed: ``--seed_everything``.
        fold: cross-validation fold (``--data.splits``, ``--data.fold``); ``None`` uses the
            dataset's own split.
        extra: further CLI arguments appended to both commands (e.g. a trainer profile).
        executable: how to call ummkd.

    Returns:
        The fit and the test command as argument lists.
    """
    common: list[str] = []
    for config in configs:
        common += ["--config", str(config)]
    common += [
        "--seed_everything",
        str(seed),
        "--data.root",
        str(data_root),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
    ]
    if fold is not None:
        common += ["--data.splits", fold.splits, "--data.fold", str(fold.index)]
    common += list(extra)
    fit = [*executable, "fit", *common]
    test = [*executable, "test", *common, "--ckpt_path", "best", "--verbose", "false"]
    return fit, test


def ensure_dataset(root: Path, source: Path | None) -> Path:
    """Return ``root`` if it holds a dataset; otherwise import it from ``source`` (alpnet).

    Args:
        root: dataset folder (with ``dataset.json``).
        source: the BTCV + CHAOS release (``ct_btcv/``, ``mr_chaos_t2/``, ``splits.json``).

    Returns:
        The dataset folder.

    Raises:
        ReproduceError: neither a dataset nor a source to import it from.
    """
    if (root / "dataset.json").is_file():
        return root
    if source is None or not (source / "splits.json").is_file():
        raise ReproduceError(
            f"no dataset at {root} (dataset.json missing) and no source to import it from "
            f"({source}); give --source with the BTCV + CHAOS release or import it yourself: "
            f"ummkd data import alpnet SRC --out {root}"
        )
    from ummkd.data.importers.alpnet import import_alpnet

    print(f"[ummkd] importing {source} -> {root} (alpnet importer)", flush=True)
    import_alpnet(source, root)
    return root  # as given, so that the recorded commands do not depend on where it was run


def newest_summary(run_dir: Path) -> Path:
    """The newest ``summary.json`` below a run folder (written by ``ummkd test``)."""
    found = sorted(run_dir.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ReproduceError(f"ummkd test wrote no summary.json below {run_dir}")
    return found[-1]


def best_val_dice(run_dir: Path) -> float | None:
    """The validation Dice of the best checkpoint, read from its file name."""
    found = sorted(run_dir.rglob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    match = _BEST_DICE.search(found[-1].name) if found else None
    return float(match.group(1)) if match else None


def _run(command: Sequence[str], log: Path) -> float:
    """Run a command with its output appended to ``log``; return its wall time in seconds."""
    print("[ummkd] $ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    with log.open("a") as stream:
        stream.write("$ " + shlex.join(command) + "\n")
        stream.flush()
        code = subprocess.call(list(command), stdout=stream, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code:
        raise ReproduceError(f"command failed (exit code {code}), see {log}: {shlex.join(command)}")
    return seconds


@dataclass(frozen=True)
class Fold:
    """One fold of a cross-validation splits file.

    Attributes:
        splits: The splits file, relative to the dataset folder (e.g. ``splits_cv5.json``).
        index: The fold.
    """

    splits: str
    index: int


def record_path_of(
    runs_root: Path, scale: str, variant: str, seed: int, fold: Fold | None = None
) -> Path:
    """Where the finished run of ``variant`` with ``seed`` (and ``fold``) keeps its record."""
    if fold is None:
        return runs_root / scale / variant / f"seed{seed}" / RECORD
    stem = fold.splits.removesuffix(".json")
    return runs_root / scale / stem / variant / f"fold{fold.index}" / f"seed{seed}" / RECORD


def run_label(variant: str, splits: str | None, all_cases_splits: str | None) -> str:
    """A run's name in a report.

    Args:
        variant: The run's variant.
        splits: The run's folds file.
        all_cases_splits: The untrimmed folds file of ``--all-cases-baselines`` (or ``None``).

    Returns:
        ``variant (all training cases)`` for a run on ``all_cases_splits``, else ``variant``.
    """
    if all_cases_splits is not None and splits == all_cases_splits:
        return variant + ALL_CASES
    return variant


def _train_limit_suffix(train_limit: Mapping[str, int]) -> str:
    """``{"mr": 4}`` -> ``"_mr4"`` (file names of the folds and the results)."""
    return "".join(f"_{m}{k}" for m, k in sorted(train_limit.items()))


def cv_splits_name(n_folds: int, train_limit: Mapping[str, int]) -> str:
    """The folds file's name in the dataset: ``splits_cv<N>[_<modality><K>...].json``."""
    return f"splits_cv{n_folds}{_train_limit_suffix(train_limit)}.json"


def write_cv_splits(
    data_root: Path, n_folds: int, train_limit: Mapping[str, int], seed: int = 0
) -> str:
    """Write (or reuse) the cross-validation splits file in the dataset folder.

    Returns:
        Its name relative to ``data_root`` (``splits_cv<N>[_<modality><K>...].json``).

    Raises:
        ReproduceError: the dataset cannot give the folds, or a file of that name holds other
            folds (it is never replaced).
    """
    spec = load_dataset(data_root)
    try:
        splits = cross_validation_splits(spec, n_folds, seed=seed, train_limit=train_limit)
    except DatasetSpecError as error:
        raise ReproduceError(str(error)) from error
    name = cv_splits_name(n_folds, train_limit)
    path = data_root / name
    content = {
        **splits.to_json_dict(),
        "description": describe_splits(n_folds, seed, train_limit),
    }
    if path.is_file():
        if json.loads(path.read_text()) != content:
            raise ReproduceError(
                f"{path} exists and holds other folds than the ones to write; move it away"
            )
    else:
        write_json(content, path)
    return path.name


def parse_train_limit(items: Sequence[str]) -> dict[str, int]:
    """``["mr=4"]`` -> ``{"mr": 4}``.

    Raises:
        ReproduceError: an item is not ``MODALITY=COUNT``.
    """
    limits = {}
    for item in items:
        modality, _, count = item.partition("=")
        if not modality or not count.isdigit():
            raise ReproduceError(f"--train-limit {item!r}: expected MODALITY=COUNT, e.g. mr=4")
        limits[modality] = int(count)
    return limits


def run_variant(
    variant: str,
    seed: int,
    *,
    fold: Fold | None = None,
    scale: str,
    config_dir: Path,
    data_root: Path,
    runs_root: Path,
    extra: Sequence[str] = (),
    executable: Sequence[str] = ("ummkd",),
    rerun: bool = False,
) -> dict[str, Any]:
    """Train and test one variant with one seed, or reuse its finished record.

    Returns:
        The record: commands, wall times, best validation Dice, weight count and the test
        summary (as written by ``ummkd test``).
    """
    record_path = record_path_of(runs_root, scale, variant, seed, fold)
    run_dir = record_path.parent
    if record_path.is_file() and not rerun:
        print(f"[ummkd] {variant} seed {seed}: reusing {record_path}", flush=True)
        return json.loads(record_path.read_text())
    if run_dir.exists() and any(run_dir.iterdir()):
        # An unfinished or rerun run: keep it for inspection, start in a fresh folder.
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    configs = variant_configs(config_dir, variant, scale)
    fit, test = run_commands(
        configs=configs,
        data_root=data_root,
        run_dir=run_dir,
        seed=seed,
        fold=fold,
        extra=extra,
        executable=executable,
    )
    log = run_dir / "reproduce.log"
    fit_seconds = _run(fit, log)
    test_seconds = _run(test, log)
    summary_path = newest_summary(run_dir)
    summary = json.loads(summary_path.read_text())
    record = {
        "variant": variant,
        "seed": seed,
        "fold": None if fold is None else fold.index,
        "splits": None if fold is None else fold.splits,
        "scale": scale,
        "commit": git_commit(),
        "device": device_type(),
        "machine": machine_description(),
        "fit_command": shlex.join(fit),
        "test_command": shlex.join(test),
        "fit_seconds": round(fit_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "val_dice_best": best_val_dice(run_dir),
        "parameters": summary.get("parameters"),
        "summary_path": str(summary_path),
        "summary": summary,
    }
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    return record


def _summary_from_one_seed_aggregate(
    report: Mapping[str, Any], variant: str
) -> dict[str, Any] | None:
    """Rebuild a run's test summary from a one-seed entry of an older results file.

    Results files written before runs carried their summary hold, for a variant run with one
    seed, that run's means and spreads over test cases in ``variants``; that is all
    :func:`aggregate` needs of a run (the per-case values and HD95 are not there).

    Args:
        report: the results file's content.
        variant: the variant whose run to rebuild.

    Returns:
        The summary (``classes``, ``modalities``), or ``None`` where the variant has several
        seeds, whose individual results the file does not keep.
    """
    entry = report["variants"][variant]
    if len(entry["seeds"]) != 1:
        return None
    modalities = {}
    for modality, result in entry["modalities"].items():
        per_class = {}
        for name, stats in result["per_class"].items():
            per_class[name] = {}
            for metric in ("dice", "assd"):
                per_class[name][metric] = stats[metric]["mean"]
                per_class[name][f"{metric}_std"] = stats[metric]["std"]
        modalities[modality] = {
            "n_cases": result["n_cases"],
            "mean": {m: result[m]["mean"] for m in ("dice", "assd")},
            "std": {m: result[m]["std"] for m in ("dice", "assd")},
            "per_class": per_class,
        }
    return {"classes": list(report["classes"]), "modalities": modalities}


def restore_records(results_file: Path, runs_root: Path, scale: str) -> list[Path]:
    """Recreate the ``record.json`` of runs that a results file holds but ``runs_root`` lacks.

    A committed ``results/abdominal_2d_<scale>.json`` lists every run it was made from; with
    their records restored, ``ummkd reproduce`` adds seeds or variants to it without training
    the runs it already has (on a fresh clone, say, where ``runs/`` is gone). Records in
    ``runs_root`` are never overwritten. A restored record says where it came from
    (``restored_from``) and keeps the run's own commands, commit and times.

    Args:
        results_file: a results JSON written by ``ummkd reproduce``.
        runs_root: root of the run folders (``--runs``).
        scale: the scale being reproduced; the results file must be of the same scale.

    Returns:
        The record files written.

    Raises:
        ReproduceError: the file is unreadable, not a results file, or of another scale.
    """
    problem = f"cannot restore runs from {results_file}: not a readable results file written by "
    try:
        report = json.loads(results_file.read_text())
        file_scale = report["scale"]
        if file_scale != scale:
            raise ReproduceError(
                f"{results_file} holds scale {file_scale!r} runs, not {scale!r}; give a results "
                "file of the same scale"
            )
        found = []
        for run in report["runs"]:
            fold = Fold(run["splits"], run["fold"]) if run.get("fold") is not None else None
            path = record_path_of(runs_root, scale, run["variant"], run["seed"], fold)
            summary = run.get("summary") or _summary_from_one_seed_aggregate(report, run["variant"])
            found.append((run, path, summary))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        raise ReproduceError(f"{problem}ummkd reproduce ({detail})") from error
    written = []
    for run, record_path, summary in found:
        if record_path.is_file():
            continue
        if summary is None:
            print(
                f"[ummkd] {run['variant']} seed {run['seed']}: {results_file} keeps only the "
                "mean over its seeds, not this run's results; cannot restore it",
                flush=True,
            )
            continue
        record = {k: v for k, v in run.items() if k != "summary_path"}  # that file is gone
        record.update(summary=summary, restored_from=str(results_file))
        record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
        written.append(record_path)
    return written


def _time_range(values: Sequence[float]) -> dict[str, float]:
    """Median, fastest and slowest of wall-clock times.

    Wall-clock noise only ever adds time (another job on the machine), so times are summarised
    by their median and range rather than mean ± std.
    """
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Combine the runs of each variant.

    With one seed the spread is the standard deviation over test cases (as ``ummkd test``
    reports it); with several seeds it is the standard deviation between the seeds' means.

    Args:
        records: variant -> its records (one per seed).

    Returns:
        variant -> ``{"seeds", "parameters", "fit_seconds", "val_dice_best", "modalities"}``
        where ``modalities`` maps each tested modality to ``{"dice", "assd"}`` (overall) and
        ``"per_class"`` (class -> ``{"dice", "assd"}``), each a ``{"mean", "std", "over"}``.
    """
    result: dict[str, Any] = {}
    for variant, runs in records.items():
        if not runs:
            continue
        over = "seeds" if len(runs) > 1 else "test cases"
        modalities: dict[str, Any] = {}
        for modality in runs[0]["summary"]["modalities"]:
            per_run = [r["summary"]["modalities"][modality] for r in runs]
            entry: dict[str, Any] = {"n_cases": per_run[0]["n_cases"], "per_class": {}}
            for metric in ("dice", "assd"):
                if len(runs) > 1:
                    mean, std = sample_mean_std([m["mean"][metric] for m in per_run])
                else:
                    mean, std = per_run[0]["mean"][metric], per_run[0]["std"][metric]
                entry[metric] = {"mean": mean, "std": std, "over": over}
            for name in runs[0]["summary"]["classes"]:
                cls: dict[str, Any] = {}
                for metric in ("dice", "assd"):
                    if len(runs) > 1:
                        mean, std = sample_mean_std([m["per_class"][name][metric] for m in per_run])
                    else:
                        pc = per_run[0]["per_class"][name]
                        mean, std = pc[metric], pc[f"{metric}_std"]
                    cls[metric] = {"mean": mean, "std": std, "over": over}
                entry["per_class"][name] = cls
            modalities[modality] = entry
        result[variant] = {
            "seeds": [r["seed"] for r in runs],
            "parameters": runs[0].get("parameters"),
            "fit_seconds": _time_range([r["fit_seconds"] for r in runs]),
            "val_dice_best": sample_mean_std([r.get("val_dice_best") for r in runs]),
            "modalities": modalities,
        }
    return result


def _fmt(stat: Mapping[str, Any] | None, digits: int) -> str:
    """A ``{"mean", "std"}`` statistic as ``mean ± std``; ``—`` where there is none."""
    return format_mean_std(stat.get("mean"), stat.get("std"), digits) if stat else MISSING


def _minutes(times: Mapping[str, float]) -> str:
    """``median`` minutes, with the ``(fastest-slowest)`` range when the runs differ."""
    text = f"{times['median'] / 60:.1f}"
    low, high = times["min"] / 60, times["max"] / 60
    return text + (f" ({low:.1f}-{high:.1f})" if f"{low:.1f}" != f"{high:.1f}" else "")


def _variant_cells(
    variant: str, entry: Mapping[str, Any], runs: str, train_limit: str = ""
) -> list[str]:
    """The first cells of a variant's row: name, description, its seeds or folds, size, time."""
    params = entry["parameters"]
    return [
        f"`{variant}`",
        _description(variant, train_limit),
        ", ".join(map(str, entry[runs])),
        f"{params / 1e6:.2f} M" if params else MISSING,
        _minutes(entry["fit_seconds"]),
    ]


def _description(name: str, train_limit: str = "") -> str:
    """What a variant (or an ``--all-cases-baselines`` run) is, for the report's first table.

    Args:
        name: The variant's name in the report.
        train_limit: How its training cases were cut (e.g. ``MR 4 per fold``), if they were.
    """
    variant = name.removesuffix(ALL_CASES)
    text = DESCRIPTIONS.get(variant, "")
    if variant != name:
        return text + ", all of each fold's training cases"
    return text + (f", training cases cut to {train_limit}" if train_limit else "")


def _display(command: str) -> str:
    """A recorded command as a user types it (``ummkd ...`` instead of ``python -m ummkd``)."""
    return re.sub(r"^\S*python\S* -m ummkd ", "ummkd ", command)


def _spread_note(variants: Mapping[str, Any]) -> str:
    """What the ± in the report means, given how many seeds each variant has."""
    between = "sample standard deviation between seeds (of each run's mean over test cases)"
    over_cases = "sample standard deviation over test cases"
    several = {len(entry["seeds"]) > 1 for entry in variants.values()}
    if several == {True}:
        return between + "."
    if several == {False}:
        return over_cases + " (one seed)."
    return f"{between} for the variants with several seeds, {over_cases} for those with one."


def results_markdown(report: Mapping[str, Any]) -> str:
    """Render the reproduction report as markdown (overview table, then per-organ tables)."""
    agg = report["variants"]
    modalities = report["modalities"]
    classes = report["classes"]
    lines = [
        f"# Abdominal 2D comparison, scale `{report['scale']}`",
        "",
        f"- Date: {report['date']}; report written at git commit `{report['report_written_at']}` "
        "(each run's own commit is listed under Runs)",
        _machines_line(report),
        f"- Data: `{report['data_root']}` (BTCV CT + CHAOS T2-SPIR MR, fixed split: "
        f"{report['n_test']} test cases); checkpoint chosen on validation Dice, numbers on test.",
        f"- Seeds: {', '.join(map(str, report['seeds']))}. Spread: " + _spread_note(agg),
        f"- Scale: {report['scale_note']}",
        f"- Command: `{report['command']}`",
        "",
    ]
    header = ["variant", "what", "seeds", "weights", "train min (range)", "val Dice"]
    header += [f"{m.upper()} {metric}" for m in modalities for metric in ("Dice", "ASSD mm")]
    rows = []
    for variant, entry in agg.items():
        row = [
            *_variant_cells(variant, entry, "seeds"),
            format_mean_std(*entry["val_dice_best"], 3),
        ]
        for m in modalities:
            result = entry["modalities"].get(m)
            row += [_fmt(result and result["dice"], 3), _fmt(result and result["assd"], 2)]
        rows.append(row)
    lines += markdown_table(header, rows)
    for m in modalities:
        lines += ["", f"## {m.upper()}: Dice (ASSD mm) per organ", ""]
        rows = []
        for variant, entry in agg.items():
            result = entry["modalities"].get(m)
            if not result:
                continue
            per_class = result["per_class"]
            cells = [
                f"{_fmt(per_class[c]['dice'], 3)} ({_fmt(per_class[c]['assd'], 1)})"
                for c in classes
            ]
            rows.append([f"`{variant}`", *cells])
        lines += markdown_table(["variant", *classes], rows)
    lines += ["", "## Runs", ""]
    for record in report["runs"]:
        restored = record.get("restored_from")
        lines += [
            f"- `{record['variant']}` seed {record['seed']}: fit {record['fit_seconds']:.0f} s, "
            f"test {record['test_seconds']:.0f} s, commit `{record.get('commit', 'unknown')}`"
            + (f" (record restored from `{restored}`)" if restored else ""),
            f"  - `{_display(record['fit_command'])}`",
            f"  - `{_display(record['test_command'])}`",
        ]
    return "\n".join(lines) + "\n"


def _machines_line(report: Mapping[str, Any]) -> str:
    machines = report.get("run_machines") or ["not recorded"]
    return f"- Runs trained on: {'; '.join(machines)}; report written on {report['machine']}"


def _train_limit_text(train_limit: Mapping[str, int]) -> str:
    """``{"mr": 4}`` -> ``"MR 4 per fold"``; empty for no limit."""
    if not train_limit:
        return ""
    return ", ".join(f"{m.upper()} {k}" for m, k in sorted(train_limit.items())) + " per fold"


def cv_results_markdown(report: Mapping[str, Any]) -> str:
    """Render a cross-validation report: pooled per-case results and paired differences."""
    variants = report["variants"]
    modalities = report["modalities"]
    classes = report["classes"]
    splits = report["splits"]
    commits = report["run_commits"]
    limit = _train_limit_text(splits["train_limit"])
    all_cases_file = splits.get("all_cases_file")
    lines = [
        f"# Abdominal 2D proxy, {splits['n_folds']}-fold cross-validation, scale "
        f"`{report['scale']}`" + (f", training cases cut to {limit}" if limit else ""),
        "",
        "A 2D proxy of the paper's 3D abdominal experiment (BTCV CT + CHAOS T2-SPIR MR), at the "
        "scale below. Every labelled case is a test case of exactly one fold; the checkpoint is "
        "chosen on each fold's validation cases. Scores: per case, 3D, on the label file as "
        "stored (native grid), mean over the 4 organs.",
        "",
        f"- Date: {report['date']}; runs from commit(s) {', '.join(f'`{c}`' for c in commits)}; "
        f"report written at `{report['report_written_at']}`",
        _machines_line(report),
        f"- Folds: `{report['data_root']}/{splits['file']}`; seeds: "
        + ", ".join(map(str, report["seeds"]))
        + (
            f"; runs marked{ALL_CASES}: the same test folds, all training cases kept "
            f"(`{all_cases_file}`)"
            if all_cases_file
            else ""
        ),
        f"- Scale: {report['scale_note']}",
        f"- Command: `{report['command']}`",
        "- ±: sample standard deviation over test cases.",
    ]
    if report.get("unfinished"):
        lines.append(f"- **Not finished, left out:** {', '.join(report['unfinished'])}")
    header = ["variant", "what", "folds", "weights", "train min (range)"]
    header += [
        f"{m.upper()} {metric}" for m in modalities for metric in ("Dice (n)", "ASSD mm", "HD95 mm")
    ]
    rows = []
    for variant, entry in variants.items():
        row = _variant_cells(variant, entry, "folds", limit)
        for m in modalities:
            result = entry["modalities"].get(m)
            if result is None:
                row += [MISSING] * 3
                continue
            row += [
                f"{_fmt(result['dice'], 3)} ({result['n_cases']})",
                _fmt(result["assd"], 2),
                _fmt(result["hd95"], 1),
            ]
        rows.append(row)
    lines += ["", *markdown_table(header, rows)]
    statistics = (
        "over the test cases both scored; 95 % BCa bootstrap confidence interval over cases; "
        "two-sided Wilcoxon signed-rank p-value. A difference is stated only where the interval "
        f"excludes 0, over at least {MIN_CASES_FOR_A_VERDICT} cases."
    )
    if report["comparisons"]:
        lines += [
            "",
            "## Paired differences",
            "",
            f"Per case, `ummkd` minus the baseline, {statistics}",
            "",
            *comparison_markdown(report["comparisons"], "`ummkd` minus"),
        ]
    for gains in report.get("gains", []):
        baseline = gains["baseline"]
        lines += ["", f"## Gain over `{baseline}`", ""]
        if not gains["differences"]:
            lines.append(f"No other variant shares a scored test case with `{baseline}`.")
            continue
        lines += [
            f"Per case, each variant minus `{baseline}`, {statistics}",
            "",
            *comparison_markdown(gains["differences"], f"minus `{baseline}`"),
        ]
    for m in modalities:
        lines += ["", f"## {m.upper()}: Dice (HD95 mm) per organ", ""]
        rows = []
        for variant, entry in variants.items():
            result = entry["modalities"].get(m)
            if result:
                cells = [
                    f"{_fmt(result['per_class'][c]['dice'], 3)} "
                    f"({_fmt(result['per_class'][c]['hd95'], 1)})"
                    for c in classes
                ]
                rows.append([f"`{variant}`", *cells])
        lines += markdown_table(["variant", *classes], rows)
    lines += ["", "## Runs", ""]
    for record in report["runs"]:
        lines += [
            f"- `{run_label(record['variant'], record['splits'], all_cases_file)}` fold "
            f"{record['fold']} seed {record['seed']}: fit "
            f"{record['fit_seconds']:.0f} s, test {record['test_seconds']:.0f} s, commit "
            f"`{record.get('commit', 'unknown')}`",
            f"  - `{_display(record['fit_command'])}`",
        ]
    return "\n".join(lines) + "\n"


def results_png(report: Mapping[str, Any]) -> bytes:
    """Grouped bars: mean test Dice per variant and modality, with the spread as error bars."""
    variants = list(report["variants"])
    series = {}
    for m in report["modalities"]:
        results = [report["variants"][v]["modalities"].get(m) for v in variants]
        means = [r["dice"]["mean"] if r else None for r in results]
        stds = [r["dice"]["std"] if r else None for r in results]
        series[m.upper()] = (means, stds)
    title = f"Abdominal 2D proxy, scale {report['scale']}"
    splits = report.get("splits")
    if splits:
        title += f", {splits['n_folds']}-fold cross-validation"
        limit = _train_limit_text(splits["train_limit"])
        title += f", training cases cut to {limit}" if limit else ""
    return grouped_bars_png(
        variants,
        series,
        ylabel="mean test Dice (all organs), ± sample std",
        title=title,
        legend="modality",
    )


SCALE_NOTES = {
    "cpu": "a 2D proxy of the paper's 3D abdominal experiment at CPU scale: "
    "configs/abdominal_2d/cpu.yaml overlay (+ cpu_x_shape/cpu_y_shape.yaml); every "
    "variant uses the same 5-level MONAI U-Net (16-256 channels; the multi-stream baselines give "
    "each modality its own copy of the top 2 levels' down layers, and for X-shape also of their "
    "up layers) instead of the paper's 39 M-weight dilated ResNet; images reoriented to RAS, CT "
    "in HU (window -125..275), 2 mm in-plane spacing, 160x160 crops, batch 8 per modality, 1200 "
    "steps (the paper's 2D schedule: 150,000), Adam 2e-3 x0.7 every 300 steps, validation every "
    "300 steps. Far below the paper's budget: compare the variants with each other, not with the "
    "paper's numbers.",
    "gpu-short": "the cpu scale's model, data and schedule (1200 steps) on one GPU in bf16, "
    "several runs at once on the same GPU (ummkd reproduce --parallel); compare its runs with "
    "each other, not with CPU runs.",
    "full": "the variant configs as they are (the paper's 2D network and schedule: base width "
    "16, 256x256, 150,000 steps), a 2D proxy of its 3D abdominal experiment.",
}


def write_results(report: Mapping[str, Any], results_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.md``, ``.json`` and ``.png`` atomically into ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: results_dir / f"{stem}.{ext}" for ext in ("md", "json", "png")}
    text = json.dumps(json_safe(dict(report)), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(paths["json"], text.encode())
    markdown = cv_results_markdown(report) if "splits" in report else results_markdown(report)
    atomic_write_bytes(paths["md"], markdown.encode())
    atomic_write_bytes(paths["png"], results_png(report))
    return paths


def write_job_list(args: argparse.Namespace, jobs: Sequence[tuple[Any, int, str]]) -> Path:
    """Write one ``ummkd reproduce`` command per run, for a job array (``--write-jobs``).

    Each line trains and tests one (variant, fold, seed) and writes its own record; a final
    ``--report-only`` call merges them. The dataset and the folds file must exist first (this
    call writes the folds file).

    Returns:
        The job list file.
    """
    common = ["--scale", args.scale, "--data", str(args.data), "--configs", str(args.configs)]
    common += ["--runs", str(args.runs)]
    if args.folds:
        common += ["--folds", str(args.folds)]
    if args.trainer_config:
        common += ["--trainer-config", str(args.trainer_config)]
    lines = []
    all_cases_splits = cv_splits_name(args.folds, {}) if args.folds else None
    for fold, seed, variant in jobs:
        command = ["ummkd", "reproduce", *common, "--variants", variant, "--seeds", str(seed)]
        if args.train_limit and fold.splits != all_cases_splits:
            command += ["--train-limit", *args.train_limit]
        command.append("--no-report")
        if fold is not None:
            command += ["--only-folds", str(fold.index)]
        if args.extra:
            command += ["--extra", *args.extra]
        lines.append(shlex.join(command))
    write_text_atomic(args.write_jobs, "\n".join(lines) + "\n")
    return args.write_jobs


def check_one_code_version(runs: Sequence[Mapping[str, Any]], allow_mixed: bool) -> list[str]:
    """The commits the runs come from; refuse several or a dirty tree unless allowed.

    Raises:
        ReproduceError: the runs come from several commits or from uncommitted changes and
            ``allow_mixed`` is off (the message lists them).
    """
    commits = sorted({str(r.get("commit", "unknown")) for r in runs})
    mixed = len(commits) > 1 or any(c.endswith("-dirty") or c == "unknown" for c in commits)
    if mixed and not allow_mixed:
        raise ReproduceError(
            f"the runs come from {', '.join(commits)}: a results file holds runs of one clean "
            "commit; rerun the others from that commit (a git worktree), or pass "
            "--allow-mixed-commits to aggregate anyway (the report then lists the commits)"
        )
    return commits


def check_one_device_type(runs: Sequence[Mapping[str, Any]], allow_mixed: bool) -> list[str]:
    """The machines the runs were trained on; refuse several device types unless allowed.

    Runs recorded before devices were recorded count as ``not recorded`` and are not checked.

    Raises:
        ReproduceError: the runs come from several device types and ``allow_mixed`` is off.
    """
    devices = sorted({str(r["device"]) for r in runs if r.get("device")})
    if len(devices) > 1 and not allow_mixed:
        raise ReproduceError(
            f"the runs were trained on {', '.join(devices)}: a results file holds runs of one "
            "device type; pass --allow-mixed-devices to aggregate anyway (the report lists them)"
        )
    machines = sorted({str(r["machine"]) for r in runs if r.get("machine")})
    if any(not r.get("machine") for r in runs):
        machines.append("not recorded (runs made before records named their machine)")
    return machines


def cross_validation_report(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    classes: Sequence[str],
    method: str,
    baselines: Sequence[str] = (),
) -> dict[str, Any]:
    """Pool each variant's folds (one seed at a time) and compare ``method`` with the rest.

    Args:
        records: Variant -> its run records.
        classes: Class names of the summaries.
        method: The variant compared with every other one (``method`` minus each).
        baselines: Distinct variants every other one is also compared with (each minus it).

    Returns:
        ``{"variants": {variant: {"folds", "seeds", "modalities": pooled statistics}},
        "comparisons": paired differences, "cases": {variant: {modality: case ids}}}``, plus
        ``"gains": [{"baseline", "differences"}]`` with ``baselines``; with several seeds, a case's
        value is its mean over the seeds.
    """
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    variants: dict[str, Any] = {}
    for variant, runs in records.items():
        if not runs:
            continue
        by_seed: dict[int, list[Mapping[str, Any]]] = {}
        for run in runs:
            by_seed.setdefault(run["seed"], []).append(run["summary"])
        per_seed = [pool_cases(summaries) for summaries in by_seed.values()]
        pooled[variant] = _mean_over_seeds(per_seed)
        variants[variant] = {
            "folds": sorted({r["fold"] for r in runs}),
            "seeds": sorted(by_seed),
            "parameters": runs[0].get("parameters"),
            "fit_seconds": _time_range([r["fit_seconds"] for r in runs]),
            "modalities": pooled_statistics(pooled[variant], classes),
        }
    report = {
        "variants": variants,
        "comparisons": paired_comparisons(pooled, method),
        "cases": {v: {m: sorted(c) for m, c in p.items()} for v, p in pooled.items()},
    }
    if baselines:
        report["gains"] = [
            {"baseline": baseline, "differences": gains_over(pooled, baseline)}
            for baseline in baselines
        ]
    return report


def _finite_mean(values: Sequence[float | None]) -> float | None:
    return sample_mean_std(values)[0]


def _mean_over_seeds(per_seed: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One pooled case set: each case's values averaged over the seeds that tested it."""
    if len(per_seed) == 1:
        return {m: dict(cases) for m, cases in per_seed[0].items()}
    merged: dict[str, dict[str, Any]] = {}
    for modality in per_seed[0]:
        ids = sorted(set().union(*(p.get(modality, {}).keys() for p in per_seed)))
        merged[modality] = {}
        for case_id in ids:
            copies = [p[modality][case_id] for p in per_seed if case_id in p.get(modality, {})]
            mean = {k: _finite_mean([c["mean"][k] for c in copies]) for k in copies[0]["mean"]}
            metrics = {
                cls: {k: _finite_mean([c["metrics"][cls][k] for c in copies]) for k in values}
                for cls, values in copies[0]["metrics"].items()
            }
            merged[modality][case_id] = {"id": case_id, "mean": mean, "metrics": metrics}
    return merged


def option_conflict(args: argparse.Namespace) -> str | None:
    """The first combination of ``ummkd reproduce`` options that cannot work, if any."""
    if args.restore and args.rerun:
        return "--restore reuses finished runs and --rerun trains them again: give only one"
    if args.only_folds and not args.folds:
        return "--only-folds needs --folds (it picks folds of the cross-validation)"
    if args.train_limit and not args.folds:
        return "--train-limit needs --folds (it cuts each fold's training cases)"
    if args.baselines and not args.folds:
        return "--baselines needs --folds (it adds paired differences per case)"
    if args.all_cases_baselines and not args.train_limit:
        return "--all-cases-baselines needs --train-limit (it adds runs on all training cases)"
    for baseline in args.baselines:
        if baseline not in args.variants:
            return f"--baselines {baseline}: not among --variants; add it there to compare with it"
    return None


def reproduce(args: argparse.Namespace) -> dict[str, Path]:
    """Run (or reuse) every requested variant, fold and seed, then write the results files."""
    train_limit = parse_train_limit(args.train_limit)
    for results_file in args.restore:
        for path in restore_records(results_file, args.runs, args.scale):
            print(f"[ummkd] restored {path} from {results_file}", flush=True)
    data_root = args.data if args.report_only else ensure_dataset(args.data, args.source)

    def folds_file(limit: Mapping[str, int]) -> str:
        """The folds file's name; written (or checked) in the dataset unless only reporting."""
        if args.report_only:
            return cv_splits_name(args.folds, limit)
        return write_cv_splits(data_root, args.folds, limit)

    folds: list[Fold | None] = [None]
    if args.folds:
        name = folds_file(train_limit)
        folds = [Fold(name, k) for k in (args.only_folds or range(args.folds))]
    jobs = [(f, s, v) for f in folds for s in args.seeds for v in args.variants]
    all_cases_splits: str | None = None
    if args.all_cases_baselines:
        all_cases_splits = folds_file({})
        all_cases_folds = [Fold(all_cases_splits, f.index) for f in folds if f is not None]
        jobs += [
            (f, s, v) for f in all_cases_folds for s in args.seeds for v in args.all_cases_baselines
        ]

    def label(fold: Fold | None, variant: str) -> str:
        return run_label(variant, None if fold is None else fold.splits, all_cases_splits)

    extra = list(args.extra)
    if args.trainer_config:
        extra = ["--config", str(args.trainer_config), *extra]
    # Runs go fold by fold, seed by seed, in the variant order given; the report lists the
    # variants in the paper's order.
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS if v in args.variants}
    records.update((v + ALL_CASES, []) for v in VARIANTS if v in args.all_cases_baselines)
    unfinished = []
    if args.write_jobs:
        return {"jobs": write_job_list(args, jobs)}
    if args.report_only:
        for fold, seed, variant in jobs:
            record_path = record_path_of(args.runs, args.scale, variant, seed, fold)
            if record_path.is_file():
                records[label(fold, variant)].append(json.loads(record_path.read_text()))
            else:
                where = "" if fold is None else f" fold {fold.index}"
                unfinished.append(f"{label(fold, variant)}{where} seed {seed}")
    else:

        def run(job: tuple[Fold | None, int, str]) -> dict[str, Any]:
            fold, seed, variant = job
            return run_variant(
                variant,
                seed,
                fold=fold,
                scale=args.scale,
                config_dir=args.configs,
                data_root=data_root,
                runs_root=args.runs,
                extra=extra,
                executable=args.executable,
                rerun=args.rerun,
            )

        # Each run is its own process; --parallel N keeps N of them going (one GPU is
        # launch-bound at this model size, so concurrent runs raise its throughput).
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for (fold, _, variant), record in zip(jobs, pool.map(run, jobs), strict=True):
                records[label(fold, variant)].append(record)
        if args.no_report:
            return {}
    if unfinished:
        print(f"[ummkd] not finished, left out of the report: {', '.join(unfinished)}", flush=True)
    runs = [r for variant_runs in records.values() for r in variant_runs]
    if not runs:
        raise ReproduceError(
            f"no finished runs below {args.runs / args.scale} for the variants and seeds asked for"
        )
    commits = check_one_code_version(runs, args.allow_mixed_commits)
    machines = check_one_device_type(runs, args.allow_mixed_devices)
    tested = [r["summary"]["modalities"] for r in runs]
    modalities = sorted({m for result in tested for m in result})
    command = "ummkd reproduce " + shlex.join(args.argv)
    report: dict[str, Any] = {
        "scale": args.scale,
        "scale_note": SCALE_NOTES[args.scale],
        "date": time.strftime("%Y-%m-%d"),
        "report_written_at": git_commit(),
        "run_commits": commits,
        "run_machines": machines,
        "machine": machine_description(),
        "command": command.strip(),
        "data_root": str(data_root),
        "seeds": sorted({r["seed"] for r in runs}),
        "classes": runs[0]["summary"]["classes"],
        "modalities": modalities,
        "unfinished": unfinished,
    }
    if args.folds:
        splits_path = data_root / folds[0].splits
        report["splits"] = {
            "file": folds[0].splits,
            "n_folds": args.folds,
            "train_limit": train_limit,
            "folds": json.loads(splits_path.read_text())["folds"]
            if splits_path.is_file()
            else None,
        }
        if all_cases_splits:
            report["splits"]["all_cases_file"] = all_cases_splits
        baselines = [*args.baselines, *(v + ALL_CASES for v in args.all_cases_baselines)]
        report.update(cross_validation_report(records, report["classes"], "ummkd", baselines))
        stem = args.name or f"abdominal_cv_{args.scale}{_train_limit_suffix(train_limit)}"
    else:
        report["n_test"] = sum(max(t[m]["n_cases"] for t in tested if m in t) for m in modalities)
        report["variants"] = aggregate(records)
        stem = args.name or f"abdominal_2d_{args.scale}"
    # Each run with its test summary, so that --restore can rebuild its record.
    report["runs"] = runs
    return write_results(report, args.results, stem)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ummkd reproduce``."""
    parser = CommandParser(
        prog="ummkd reproduce",
        description="Train and test every variant of the paper's abdominal comparison and write "
        "results/abdominal_2d_<scale>.{md,json,png}.",
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="cpu",
        help="cpu (default, 2 cores), gpu-short (one GPU, all runs at once) or full (paper)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to run"
    )
    parser.add_argument(
        "--data", type=Path, default=Path("data/abdominal_btcv_chaos"), help="dataset folder"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=Path("../shared/data/abdominal_btcv_chaos"),
        help="BTCV + CHAOS release imported into --data when it holds no dataset yet",
    )
    parser.add_argument(
        "--configs",
        type=config_argument("folder"),
        default="configs/abdominal_2d",
        help="folder of the variant configs (default: the packaged abdominal_2d)",
    )
    parser.add_argument(
        "--trainer-config",
        type=config_argument(),
        help="trainer profile added to every run, e.g. trainer/gpu (packaged) or a file",
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/reproduce"), help="root of the run folders"
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    parser.add_argument("--name", help="results file stem (default: abdominal_2d_<scale>)")
    parser.add_argument(
        "--folds",
        type=int,
        help="N-fold cross-validation over every labelled case (modality-stratified, fold 0 = "
        "the dataset's own split), written to <data>/splits_cv<N>.json; default: the dataset's "
        "own split",
    )
    parser.add_argument(
        "--only-folds",
        type=int,
        nargs="+",
        metavar="K",
        help="with --folds: run (or report) only these folds",
    )
    parser.add_argument(
        "--train-limit",
        nargs="+",
        default=[],
        metavar="MODALITY=COUNT",
        help="with --folds: keep only COUNT training cases of MODALITY per fold (a fixed, "
        "seeded subset), e.g. mr=4 for the label-scarce setting",
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        choices=VARIANTS,
        default=[],
        metavar="VARIANT",
        help="with --folds: also report every variant minus each of these, per case, e.g. "
        "single_ct single_mr (ummkd minus each variant is always reported)",
    )
    parser.add_argument(
        "--all-cases-baselines",
        nargs="+",
        choices=VARIANTS,
        default=[],
        metavar="VARIANT",
        help="with --train-limit: also run these variants on all of each fold's training cases "
        "(the same test folds; the runs of plain --folds N, reused where finished), labelled "
        "'VARIANT (all training cases)', and report every variant minus each, e.g. single_mr",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="run N trainings at once (e.g. several runs on one GPU); default 1",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="train and record the runs but write no results files (one job of a job array)",
    )
    parser.add_argument(
        "--write-jobs",
        type=Path,
        metavar="FILE",
        help="train nothing: write one `ummkd reproduce` command per (variant, fold, seed) run "
        "to FILE, for a job array (see docs/multi-gpu.md); merge with --report-only",
    )
    parser.add_argument(
        "--allow-mixed-commits",
        action="store_true",
        help="aggregate runs from several commits or a dirty tree (the report lists them)",
    )
    parser.add_argument(
        "--allow-mixed-devices",
        action="store_true",
        help="aggregate runs trained on several device types (the report lists them)",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="train again even where a finished record exists"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the results files from the runs already finished (the "
        "missing ones are listed and left out)",
    )
    parser.add_argument(
        "--restore",
        type=Path,
        nargs="+",
        default=[],
        metavar="RESULTS_JSON",
        help="first recreate the records of the runs these results files hold (and --runs "
        "lacks), so that they are reused instead of trained again",
    )
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="remaining arguments go to every ummkd fit/test command (give it last)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ummkd reproduce``.

    Args:
        argv: Arguments after ``reproduce`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on a user-facing problem; usage errors exit with 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # A variant given twice is one variant (a repeat would test its cases twice).
    for option in ("variants", "baselines", "all_cases_baselines"):
        setattr(args, option, list(dict.fromkeys(getattr(args, option))))
    conflict = option_conflict(args)
    if conflict:
        parser.error(conflict)
    args.argv = argv
    args.executable = [sys.executable, "-m", "ummkd"]
    try:
        paths = reproduce(args)
    except ReproduceError as error:
        print(f"ummkd reproduce: error: {error}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(f"[ummkd] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
