"""`ummkd reproduce`: variant configs, commands, aggregation, reports and an end-to-end run."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.lightning.conftest import FAST
from ummkd.experiments import (
    VARIANTS,
    ReproduceError,
    _minutes,
    aggregate,
    ensure_dataset,
    main,
    restore_records,
    results_markdown,
    run_commands,
    variant_configs,
    write_results,
)
from ummkd.sweeps import resolve_cli_config

REPO = Path(__file__).resolve().parents[1]
ABDOMINAL = REPO / "configs" / "abdominal_2d"
MULTISTREAM_LEVELS = {"x_shape": (2, 2), "y_shape": (2, 0)}


def test_variant_configs_order_and_missing(tmp_path: Path) -> None:
    assert [p.name for p in variant_configs(ABDOMINAL, "ummkd", "full")] == ["ummkd.yaml"]
    assert [p.name for p in variant_configs(ABDOMINAL, "x_shape", "cpu")] == [
        "ummkd.yaml",
        "x_shape.yaml",
        "cpu.yaml",
        "cpu_x_shape.yaml",
    ]
    assert [p.name for p in variant_configs(ABDOMINAL, "joint", "cpu")][-1] == "cpu.yaml"
    with pytest.raises(ReproduceError, match=r"ummkd\.yaml"):
        variant_configs(tmp_path, "joint", "cpu")


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu_scale_gives_every_variant_the_same_unet(variant: str) -> None:
    """Same U-Net widths everywhere; only the variant's own choices (streams, norms, KD) differ."""
    configs = variant_configs(ABDOMINAL, variant, "cpu")
    args = ["fit", *[a for c in configs for a in ("--config", str(c))]]
    config, error = resolve_cli_config(args)
    assert config is not None, error
    network = config["model"]["network"]
    init = network["init_args"]
    assert init["channels"] == [16, 32, 64, 128, 256] and init["strides"] == [2, 2, 2, 2]
    assert init["num_res_units"] == 1 and init["dropout"] == 0.1
    if variant in MULTISTREAM_LEVELS:
        assert network["class_path"] == "ummkd.nn.MultiStreamUNet"
        assert (init["encoder_levels"], init["decoder_levels"]) == MULTISTREAM_LEVELS[variant]
    else:
        assert network["class_path"] == "monai.networks.nets.UNet"
    assert config["trainer"]["max_steps"] == 1200
    assert config["data"]["patch_size"] == [160, 160]
    expected_modalities = {"single_ct": ["ct"], "single_mr": ["mr"]}.get(variant, ["ct", "mr"])
    assert config["data"]["modalities"] == expected_modalities
    assert (config["model"]["kd_weight"] > 0) == (variant == "ummkd")
    expected_norm = "shared" if variant in ("joint", "x_shape", "y_shape") else "modality"
    assert config["model"]["norm"] == expected_norm


def test_run_commands_share_everything_but_the_subcommand(tmp_path: Path) -> None:
    configs = [ABDOMINAL / "ummkd.yaml", ABDOMINAL / "cpu.yaml"]
    fit, test = run_commands(
        configs=configs,
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        seed=3,
        extra=["--trainer.max_steps", "5"],
    )
    assert fit[:2] == ["ummkd", "fit"] and test[:2] == ["ummkd", "test"]
    assert test[2 : len(fit)] == fit[2:]
    assert test[len(fit) :] == ["--ckpt_path", "best", "--verbose", "false"]
    text = shlex.join(fit)
    assert f"--config {configs[0]} --config {configs[1]}" in text
    assert "--seed_everything 3" in text and text.endswith("--trainer.max_steps 5")


def test_ensure_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReproduceError, match=r"dataset\.json missing"):
        ensure_dataset(tmp_path / "nothing", tmp_path / "no_source")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{}")
    assert ensure_dataset(tmp_path / "ds", None) == tmp_path / "ds"

    # an import returns the folder as given (relative stays relative: the recorded commands
    # must not depend on where the reproduction ran)
    imported = []

    def fake_import(source: Path, out: Path) -> Path:
        imported.append((source, out))
        return out.resolve()

    monkeypatch.setattr("ummkd.data.importers.alpnet.import_alpnet", fake_import)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "splits.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert ensure_dataset(Path("data/x"), tmp_path / "src") == Path("data/x")
    assert imported == [(tmp_path / "src", Path("data/x"))]


def _summary(dice: dict[str, float], classes: list[str]) -> dict[str, Any]:
    modalities = {}
    for modality, value in dice.items():
        per_class = {  # a different value per class, so that a mix-up of classes shows
            c: {"dice": value - k / 100, "dice_std": 0.1 + k / 100, "assd": 2.0 + k, "n": 3}
            | {"assd_std": 0.5 + k}
            for k, c in enumerate(classes)
        }
        modalities[modality] = {
            "n_cases": 3,
            "mean": {"dice": value, "assd": 2.0, "hd95": 9.0},
            "std": {"dice": 0.05, "assd": 0.4, "hd95": 1.0},
            "per_class": per_class,
        }
    return {"classes": classes, "modalities": modalities, "parameters": 1234}


def _record(variant: str, seed: int, dice: dict[str, float]) -> dict[str, Any]:
    return {
        "variant": variant,
        "seed": seed,
        "fit_seconds": 60.0 + seed,
        "test_seconds": 5.0,
        "val_dice_best": 0.5,
        "parameters": 1234,
        "commit": "0123456789ab",
        "fit_command": "/opt/venv/bin/python3 -m ummkd fit --config a.yaml",
        "test_command": "ummkd test ...",
        "summary": _summary(dice, ["liver", "spleen"]),
    }


def test_aggregate_one_seed_uses_case_spread_several_seeds_use_seed_spread() -> None:
    one = aggregate({"ummkd": [_record("ummkd", 0, {"ct": 0.8, "mr": 0.7})]})
    ct = one["ummkd"]["modalities"]["ct"]
    assert ct["dice"] == {"mean": 0.8, "std": 0.05, "over": "test cases"}
    assert ct["per_class"]["liver"]["dice"]["std"] == 0.1

    runs = [_record("ummkd", s, {"ct": d, "mr": 0.7}) for s, d in enumerate((0.7, 0.8, 0.9))]
    three = aggregate({"ummkd": runs, "single_ct": [_record("single_ct", 0, {"ct": 0.6})]})
    ct = three["ummkd"]["modalities"]["ct"]["dice"]
    assert ct["mean"] == pytest.approx(0.8) and ct["std"] == pytest.approx(0.1)
    assert ct["over"] == "seeds"
    assert three["ummkd"]["fit_seconds"] == {"median": 61.0, "min": 60.0, "max": 62.0}
    # wall-clock times: median with the range (noise only adds time), no range when equal
    assert _minutes({"median": 700.0, "min": 660.0, "max": 1420.0}) == "11.7 (11.0-23.7)"
    assert _minutes(three["ummkd"]["fit_seconds"]) == "1.0"
    assert set(three["single_ct"]["modalities"]) == {"ct"}


def _header() -> dict[str, Any]:
    """The report fields that describe the run, not its results."""
    return {
        "scale": "cpu",
        "scale_note": "tiny",
        "date": "2026-11-26",
        "report_written_at": "abc",
        "machine": "test",
        "command": "ummkd reproduce",
        "data_root": "data",
        "n_test": 6,
        "seeds": [0],
        "modalities": ["ct", "mr"],
    }


def test_results_files(tmp_path: Path) -> None:
    records = {
        "single_ct": [_record("single_ct", 0, {"ct": 0.6})],
        "ummkd": [_record("ummkd", 0, {"ct": 0.8, "mr": 0.7})],
    }
    report = {
        **_header(),
        "classes": ["liver", "spleen"],
        "variants": aggregate(records),
        "runs": [r for runs in records.values() for r in runs],
    }
    text = results_markdown(report)
    assert "| `ummkd` |" in text and "0.800 ± 0.050" in text
    assert "| 1.0 | 0.500 |" in text  # one seed: train minutes and val Dice without a spread
    single_row = next(line for line in text.splitlines() if line.startswith("| `single_ct` |"))
    assert single_row.count("—") == 2  # no MR Dice, no MR ASSD
    assert "`ummkd fit --config a.yaml`" in text  # shown as typed, not as python -m ummkd
    paths = write_results(report, tmp_path / "results", "abdominal_2d_cpu")
    assert json.loads(paths["json"].read_text())["variants"]["ummkd"]["parameters"] == 1234
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_main_reports_missing_data_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data", str(tmp_path / "none"), "--source", str(tmp_path / "nosrc")])
    assert code == 1
    assert "no dataset at" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_end_to_end_on_phantoms(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two variants, real subprocesses, tiny budget: records, reuse on rerun, results files."""
    argv = [
        "--variants",
        "single_mr",
        "ummkd",
        "--data",
        str(tiny_dataset),
        "--configs",
        str(ABDOMINAL),
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--allow-mixed-commits",  # the tree under test may hold uncommitted changes
        "--parallel",
        "2",
        "--extra",
        *FAST,
        "--data.patch_size=[32,32]",
        "--data.spacing=null",
        "--data.steps_per_epoch=2",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--model.network.init_args.channels=[4,8,16]",
        "--model.network.init_args.strides=[2,2]",
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "results" / "abdominal_2d_cpu.json").read_text())
    assert list(report["variants"]) == ["single_mr", "ummkd"]
    assert set(report["variants"]["single_mr"]["modalities"]) == {"mr"}
    assert set(report["variants"]["ummkd"]["modalities"]) == {"ct", "mr"}
    assert report["variants"]["ummkd"]["parameters"] > 0
    assert report["runs"][0]["fit_seconds"] > 0
    record = tmp_path / "runs" / "cpu" / "ummkd" / "seed0" / "record.json"
    stamp = record.stat().st_mtime_ns
    assert main(argv) == 0  # finished runs are reused, not retrained
    assert record.stat().st_mtime_ns == stamp
    assert "| `ummkd` |" in (tmp_path / "results" / "abdominal_2d_cpu.md").read_text()

    # runs/ gone (a fresh clone): the results file alone brings the runs back, nothing retrains
    results = tmp_path / "results" / "abdominal_2d_cpu.json"
    kept = tmp_path / "kept.json"
    kept.write_bytes(results.read_bytes())
    shutil.rmtree(tmp_path / "runs")
    extra_at = argv.index("--extra")
    assert main([*argv[:extra_at], "--restore", str(kept), *argv[extra_at:]]) == 0
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
    again = json.loads(results.read_text())
    assert again["variants"] == report["variants"]
    assert {r["restored_from"] for r in again["runs"]} == {str(kept)}


@pytest.mark.slow
@pytest.mark.realdata
def test_reproduce_imports_the_real_abdominal_data_and_runs(
    shared_data: Path, tmp_path: Path
) -> None:
    """The real path of `make reproduce`: import BTCV + CHAOS, train, test on real volumes."""
    source = shared_data / "abdominal_btcv_chaos"
    if not (source / "splits.json").is_file():
        pytest.skip(f"{source} not available")
    argv = [
        "--variants",
        "single_mr",
        "--data",
        str(tmp_path / "data"),
        "--source",
        str(source),
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--allow-mixed-commits",  # the tree under test may hold uncommitted changes
        "--extra",
        *FAST,
        "--data.patch_size=[64,64]",
        "--data.steps_per_epoch=2",
        "--data.val_max_cases=1",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--model.network.init_args.channels=[4,8,16]",
        "--model.network.init_args.strides=[2,2]",
    ]
    assert main(argv) == 0
    assert (tmp_path / "data" / "dataset.json").is_file()
    report = json.loads((tmp_path / "results" / "abdominal_2d_cpu.json").read_text())
    mr = report["variants"]["single_mr"]["modalities"]["mr"]
    assert mr["n_cases"] == 4  # the fixed split's CHAOS test cases
    assert report["classes"] == ["liver", "kidney_right", "kidney_left", "spleen"]


def _report(records: dict[str, list[dict[str, Any]]], scale: str = "cpu") -> dict[str, Any]:
    return {
        "scale": scale,
        "classes": ["liver", "spleen"],
        "variants": aggregate(records),
        "runs": [r for runs in records.values() for r in runs],
    }


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_restore_records_from_runs_with_summaries(tmp_path: Path) -> None:
    records = {"ummkd": [_record("ummkd", s, {"ct": 0.7 + s / 10, "mr": 0.6}) for s in (0, 1)]}
    results = _write_json(tmp_path / "r.json", _report(records))
    runs = tmp_path / "runs"
    written = restore_records(results, runs, "cpu")
    assert written == [runs / "cpu" / "ummkd" / f"seed{s}" / "record.json" for s in (0, 1)]
    restored = [json.loads(p.read_text()) for p in written]
    assert [r["summary"] for r in restored] == [r["summary"] for r in records["ummkd"]]
    assert {r["restored_from"] for r in restored} == {str(results)}
    assert aggregate({"ummkd": restored}) == aggregate(records)

    # existing records are never overwritten
    written[0].write_text('{"kept": true}')
    assert restore_records(results, runs, "cpu") == []
    assert json.loads(written[0].read_text()) == {"kept": True}


def test_restore_records_from_an_older_one_seed_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Older files kept no run summaries: a one-seed variant's aggregate is that run's summary."""
    one_seed = {"joint": [_record("joint", 0, {"ct": 0.8, "mr": 0.7})]}
    three_seeds = {"ummkd": [_record("ummkd", s, {"ct": 0.8, "mr": 0.7}) for s in range(3)]}
    report = _report({**one_seed, **three_seeds})
    report["runs"] = [{k: v for k, v in r.items() if k != "summary"} for r in report["runs"]]
    results = _write_json(tmp_path / "old.json", report)
    written = restore_records(results, tmp_path / "runs", "cpu")
    assert [p.parent.parent.name for p in written] == ["joint"]
    assert "keeps only the mean over its seeds" in capsys.readouterr().out
    restored = json.loads(written[0].read_text())
    # the seed-0 run joins new seeds exactly as its own record would
    new = _record("joint", 1, {"ct": 0.9, "mr": 0.5})
    expected = aggregate({"joint": [one_seed["joint"][0], new]})
    assert aggregate({"joint": [restored, new]}) == expected
    assert aggregate({"joint": [restored]}) == aggregate(one_seed)
    assert "(record restored from" in results_markdown({**report, **_header(), "runs": [restored]})


def test_restore_records_rejects_other_scales_and_non_results(tmp_path: Path) -> None:
    results = _write_json(tmp_path / "full.json", _report({}, scale="full"))
    with pytest.raises(ReproduceError, match=r"scale 'full'.*not 'cpu'"):
        restore_records(results, tmp_path / "runs", "cpu")
    with pytest.raises(ReproduceError, match="not a readable results file"):
        restore_records(_write_json(tmp_path / "x.json", {"a": 1}), tmp_path / "runs", "cpu")
    with pytest.raises(ReproduceError, match="not a readable results file"):
        restore_records(tmp_path / "missing.json", tmp_path / "runs", "cpu")
    no_runs = _write_json(tmp_path / "n.json", {"scale": "cpu"})
    with pytest.raises(ReproduceError, match="missing key 'runs'"):
        restore_records(no_runs, tmp_path / "runs", "cpu")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--restore", "r.json", "--rerun"], "--restore reuses finished runs and --rerun trains"),
        (["--train-limit", "mr=4"], "--train-limit needs --folds"),
        (["--only-folds", "1"], "--only-folds needs --folds"),
        (["--baselines", "joint"], "--baselines needs --folds"),
        (["--folds", "5", "--variants", "ummkd", "--baselines", "joint"], "not among --variants"),
        (
            ["--folds", "5", "--all-cases-baselines", "single_mr"],
            "--all-cases-baselines needs --train-limit",
        ),
    ],
)
def test_options_that_cannot_work_together_are_usage_errors(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*options, "--data", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_report_only_writes_the_finished_runs_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = {
        "joint": [_record("joint", 0, {"ct": 0.8, "mr": 0.7})],
        "ummkd": [_record("ummkd", s, {"ct": 0.8 + s / 20, "mr": 0.7}) for s in (0, 1)],
    }
    results = _write_json(tmp_path / "r.json", {**_header(), **_report(records)})
    runs = tmp_path / "runs"
    argv = ["--report-only", "--runs", str(runs), "--results", str(tmp_path / "out")]
    argv += ["--data", str(tmp_path / "no_data"), "--variants", "joint", "ummkd"]
    assert main([*argv, "--seeds", "0", "1", "--restore", str(results)]) == 0
    assert "left out of the report: joint seed 1" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "abdominal_2d_cpu.json").read_text())
    assert report["seeds"] == [0, 1]
    assert report["variants"]["joint"]["seeds"] == [0]
    assert report["variants"]["ummkd"]["seeds"] == [0, 1]
    assert report["variants"]["ummkd"]["modalities"]["ct"]["dice"]["over"] == "seeds"
    text = (tmp_path / "out" / "abdominal_2d_cpu.md").read_text()
    # One spread convention (sample std), stated as such.
    assert "for the variants with several seeds, sample standard deviation over test" in text
    assert "| `joint` | joint training, shared norms, no KD | 0 |" in text
    assert "| `ummkd` | ummkd: shared kernels, modality norms + KD | 0, 1 |" in text
    assert not list(runs.rglob("*.log"))  # nothing was trained

    assert main([*argv, "--seeds", "5"]) == 1
    assert "no finished runs" in capsys.readouterr().err


def _cv_record(
    variant: str, fold: int, cases: dict[str, dict[str, float]], splits: str = "splits_cv2.json"
) -> dict[str, Any]:
    """A finished cross-validation run; ``cases``: modality -> case id -> Dice."""
    modalities = {}
    for modality, values in cases.items():
        modalities[modality] = {
            "n_cases": len(values),
            "cases": [
                {
                    "id": cid,
                    "mean": {"dice": v, "assd": 1 - v, "hd95": 10 * (1 - v)},
                    "metrics": {"liver": {"dice": v, "assd": 1 - v, "hd95": 10 * (1 - v)}},
                }
                for cid, v in values.items()
            ],
        }
    return {
        "variant": variant,
        "seed": 0,
        "fold": fold,
        "splits": splits,
        "commit": "0123456789ab",
        "fit_seconds": 60.0,
        "test_seconds": 5.0,
        "parameters": 1234,
        "fit_command": "ummkd fit --config a.yaml",
        "test_command": "ummkd test ...",
        "summary": {"classes": ["liver"], "modalities": modalities},
    }


def test_cross_validation_report_pools_folds_and_compares_per_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ummkd.experiments import Fold, record_path_of

    folds = {0: {"ct": ["a", "b"], "mr": ["m"]}, 1: {"ct": ["c", "d"], "mr": ["n"]}}
    gain = {"ummkd": 0.05, "joint": 0.0}
    runs = tmp_path / "runs"
    for variant, extra in gain.items():
        for fold, ids in folds.items():
            base = {"a": 0.8, "b": 0.7, "c": 0.9, "d": 0.6, "m": 0.75, "n": 0.85}
            cases = {
                m: {i: base[i] + extra + 0.001 * k for k, i in enumerate(v)} for m, v in ids.items()
            }
            path = record_path_of(runs, "cpu", variant, 0, Fold("splits_cv2.json", fold))
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_cv_record(variant, fold, cases)))
    argv = ["--report-only", "--folds", "2", "--runs", str(runs), "--variants", "joint", "ummkd"]
    argv += ["--results", str(tmp_path / "out"), "--data", str(tmp_path / "data")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "abdominal_cv_cpu.json").read_text())
    assert report["cases"]["ummkd"] == {"ct": ["a", "b", "c", "d"], "mr": ["m", "n"]}
    ct = report["comparisons"]["joint"]["ct"]["dice"]
    assert ct["n"] == 4 and ct["mean_difference"] == pytest.approx(0.05)
    assert report["variants"]["ummkd"]["folds"] == [0, 1]
    text = (tmp_path / "out" / "abdominal_cv_cpu.md").read_text()
    assert "| `joint` | CT | 4 | +0.050 [" in text
    assert "sample standard deviation over test cases" in text
    # one variant alone: no comparison section
    alone_argv = [a for a in argv if a != "joint"]
    assert main([*alone_argv, "--name", "alone"]) == 0
    alone = (tmp_path / "out" / "alone.md").read_text()
    assert "Paired differences" not in alone and "`ummkd`" in alone
    # --baselines: every variant minus each baseline as well (e.g. the label-scarce question)
    assert main([*argv, "--baselines", "joint", "ummkd", "--name", "gains"]) == 0
    gains = json.loads((tmp_path / "out" / "gains.json").read_text())["gains"]
    assert [g["baseline"] for g in gains] == ["joint", "ummkd"]
    assert list(gains[0]["differences"]) == ["ummkd"] and list(gains[1]["differences"]) == ["joint"]
    mr = gains[0]["differences"]["ummkd"]["mr"]["dice"]
    assert mr["n"] == 2 and mr["mean_difference"] == pytest.approx(0.05)
    text = (tmp_path / "out" / "gains.md").read_text()
    assert "## Gain over `joint`" in text and "| minus `joint` |" in text
    assert "| `ummkd` | MR | 2 | +0.050 [" in text.split("## Gain over")[1]
    assert "| `joint` | MR | 2 | -0.050 [" in text.split("## Gain over `ummkd`")[1]
    # a baseline with no finished runs: said so, not left out
    assert main([*alone_argv, "--baselines", "ummkd", "ummkd", "--name", "none"]) == 0
    text = (tmp_path / "out" / "none.md").read_text()
    assert text.count("## Gain over `ummkd`") == 1
    assert "No other variant shares a scored test case with `ummkd`." in text

    # runs of another commit are refused unless asked for, and then listed
    other = record_path_of(runs, "cpu", "joint", 0, Fold("splits_cv2.json", 1))
    other.write_text(other.read_text().replace("0123456789ab", "ba9876543210"))
    assert main(argv) == 1
    assert "one clean commit" in capsys.readouterr().err
    assert main([*argv, "--allow-mixed-commits"]) == 0
    assert "`ba9876543210`" in (tmp_path / "out" / "abdominal_cv_cpu.md").read_text()
    other.write_text(other.read_text().replace("ba9876543210", "0123456789ab"))

    # runs on two device types are refused unless asked for; runs name their machine
    for index, path in enumerate(sorted(runs.rglob("record.json"))):
        record = json.loads(path.read_text())
        device = "NVIDIA H200" if index == 0 else "AMD EPYC (2 cores)"
        record.update(device=device, machine=f"{device}, torch 2.13")
        path.write_text(json.dumps(record))
    assert main(argv) == 1
    assert "one device type" in capsys.readouterr().err
    assert main([*argv, "--allow-mixed-devices"]) == 0
    text = (tmp_path / "out" / "abdominal_cv_cpu.md").read_text()
    assert "Runs trained on: AMD EPYC (2 cores), torch 2.13; NVIDIA H200, torch 2.13" in text


def test_all_cases_baselines_compare_trimmed_runs_with_runs_on_all_training_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ummkd.experiments import Fold, record_path_of

    mr = {0: {"m": 0.70, "n": 0.60}, 1: {"o": 0.80, "p": 0.65}}
    settings = {  # (variant, folds file) -> Dice added to every MR case
        ("single_mr", "splits_cv2_mr1.json"): 0.0,
        ("joint", "splits_cv2_mr1.json"): 0.10,
        ("single_mr", "splits_cv2.json"): 0.04,
    }
    runs = tmp_path / "runs"
    for (variant, splits), gain in settings.items():
        for fold, cases in mr.items():
            shifted = {"mr": {i: v + gain + 0.001 * len(i) * fold for i, v in cases.items()}}
            path = record_path_of(runs, "cpu", variant, 0, Fold(splits, fold))
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_cv_record(variant, fold, shifted, splits)))
    argv = ["--report-only", "--folds", "2", "--train-limit", "mr=1", "--runs", str(runs)]
    argv += ["--variants", "joint", "single_mr", "--baselines", "single_mr"]
    argv += ["--all-cases-baselines", "single_mr"]
    argv += ["--results", str(tmp_path / "out"), "--data", str(tmp_path / "data")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "abdominal_cv_cpu_mr1.json").read_text())
    full = "single_mr (all training cases)"
    assert list(report["variants"]) == ["single_mr", "joint", full]
    assert report["splits"]["all_cases_file"] == "splits_cv2.json"
    gains = {g["baseline"]: g["differences"] for g in report["gains"]}
    assert list(gains) == ["single_mr", full]
    # what cutting the MR training cases costs, and whether CT makes up for it
    assert gains["single_mr"][full]["mr"]["dice"]["mean_difference"] == pytest.approx(0.04)
    assert gains[full]["joint"]["mr"]["dice"]["mean_difference"] == pytest.approx(0.06)
    assert gains[full]["joint"]["mr"]["dice"]["n"] == 4
    text = (tmp_path / "out" / "abdominal_cv_cpu_mr1.md").read_text()
    assert "| `single_mr (all training cases)` | MR only, all of each fold's training" in text
    assert "## Gain over `single_mr (all training cases)`" in text
    assert "(`splits_cv2.json`)" in text
    assert "- `single_mr (all training cases)` fold 1 seed 0: fit" in text
    assert "- `single_mr` fold 1 seed 0: fit" in text
    assert "| `joint` | joint training, shared norms, no KD, training cases cut to MR 1" in text

    # the training path labels the (reused) runs alike; a repeated variant counts once
    from ummkd.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_ct=8, n_mr=8, size=(32, 32, 2))
    trained_argv = [a for a in argv if a != "--report-only"] + ["--name", "trained"]
    assert main([*trained_argv, "--all-cases-baselines", "single_mr", "single_mr"]) == 0
    assert "reusing" in capsys.readouterr().out and (data / "splits_cv2.json").is_file()
    trained = json.loads((tmp_path / "out" / "trained.json").read_text())
    assert trained["gains"] == report["gains"] and trained["variants"] == report["variants"]

    # --restore puts the runs on all training cases back under their own folds
    results = tmp_path / "out" / "abdominal_cv_cpu_mr1.json"
    assert main([*argv, "--runs", str(tmp_path / "restored"), "--restore", str(results)]) == 0
    restored = Fold("splits_cv2.json", 1)
    assert record_path_of(tmp_path / "restored", "cpu", "single_mr", 0, restored).is_file()
    again = json.loads(results.read_text())
    assert again["gains"] == report["gains"] and again["variants"] == report["variants"]

    record_path_of(runs, "cpu", "single_mr", 0, Fold("splits_cv2.json", 1)).unlink()
    assert main(argv) == 0
    assert f"left out of the report: {full} fold 1 seed 0" in capsys.readouterr().out


def test_write_jobs_gives_one_command_per_run_and_trains_nothing(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    from ummkd.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "six", n_ct=6, n_mr=6, size=(32, 32, 2))
    jobs = tmp_path / "jobs.txt"
    argv = ["--folds", "3", "--seeds", "0", "1", "--variants", "joint", "ummkd", "--data"]
    argv += [str(data), "--runs", str(tmp_path / "runs"), "--write-jobs", str(jobs)]
    assert main([*argv, "--extra", "--trainer.max_steps=2"]) == 0
    lines = jobs.read_text().splitlines()
    assert len(lines) == 3 * 2 * 2
    first = shlex.split(lines[0])
    assert first[:2] == ["ummkd", "reproduce"] and "--no-report" in first
    assert first[first.index("--only-folds") + 1] == "0"
    assert first[first.index("--variants") + 1] == "joint"
    assert first[-2:] == ["--extra", "--trainer.max_steps=2"]
    assert (data / "splits_cv3.json").is_file()
    assert not (tmp_path / "runs").exists()

    # label-scarce jobs, and the --all-cases-baselines jobs on the untrimmed folds
    argv = [*argv[:-1], str(tmp_path / "scarce.txt"), "--train-limit", "mr=2"]
    assert main([*argv, "--all-cases-baselines", "single_mr"]) == 0
    lines = [shlex.split(line) for line in (tmp_path / "scarce.txt").read_text().splitlines()]
    assert len(lines) == 3 * 2 * 2 + 3 * 2
    trimmed = [c for c in lines if "--train-limit" in c]
    assert len(trimmed) == 12 and all(c[c.index("--train-limit") + 1] == "mr=2" for c in trimmed)
    all_cases = [c for c in lines if "--train-limit" not in c]
    assert {c[c.index("--variants") + 1] for c in all_cases} == {"single_mr"}
    runs_of = {(c[c.index("--only-folds") + 1], c[c.index("--seeds") + 1]) for c in all_cases}
    assert runs_of == {(fold, seed) for fold in "012" for seed in "01"}
    assert (data / "splits_cv3_mr2.json").is_file()


def test_results_png_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import ummkd.experiments as experiments

    drawn: dict[str, Any] = {}
    monkeypatch.setattr(experiments, "grouped_bars_png", lambda *a, **kw: drawn.update(kw) or b"")
    dice = {"dice": {"mean": 0.8, "std": 0.1}}
    report: dict[str, Any] = {
        "scale": "cpu",
        "modalities": ["mr"],
        "variants": {"single_mr": {"modalities": {"mr": dice}}},
    }
    experiments.results_png(report)
    assert drawn["title"] == "Abdominal 2D proxy, scale cpu"
    assert "sample std" in drawn["ylabel"]
    experiments.results_png({**report, "splits": {"n_folds": 5, "train_limit": {"mr": 4}}})
    assert drawn["title"].endswith("5-fold cross-validation, training cases cut to MR 4 per fold")
