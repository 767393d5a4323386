"""W&B sweeps: sweep files, `ummkd sweep-dry-run`, and offline W&B runs through the CLI."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lightning.conftest import FAST
from ummkd.sweeps import (
    SweepError,
    check_command_template,
    check_metric,
    check_parameter,
    check_values_applied,
    cli_arguments,
    draw,
    main,
    render_command,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))
BASE_COMMAND = [
    "${env}",
    "ummkd",
    "fit",
    "--config",
    "configs/demo.yaml",
    "--config",
    "configs/logger/wandb.yaml",
]


def _sweep(**overrides: Any) -> dict[str, Any]:
    sweep: dict[str, Any] = {
        "program": "ummkd",
        "method": "random",
        "metric": {"name": "val/dice_best", "goal": "maximize"},
        "parameters": {
            "model.kd_weight": {"values": [0.0, 0.5]},
            "model.optimizer.init_args.lr": {
                "distribution": "log_uniform_values",
                "min": 1e-4,
                "max": 1e-2,
            },
        },
        "command": [*BASE_COMMAND, "${args}"],
    }
    sweep.update(overrides)
    return sweep


def _write(tmp_path: Path, sweep: dict[str, Any], name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return str(path)


# --------------------------------------------------------------------------- command rendering
def test_render_command_matches_the_wandb_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    monkeypatch.setenv("UMMKD_TEST_ROOT", "/data/x")
    values = {
        "data.patch_size": [48, 48],
        "model.compile": True,
        "model.kd_weight": 0.5,
        "model.optimizer.init_args.lr": 1e-05,
    }
    sweep = _sweep(
        command=[
            "${env}",
            "${interpreter}",
            "-m",
            "${program}",
            "fit",
            "--data.root=${envvar:UMMKD_TEST_ROOT}",
            "${args}",
            "${not_a_macro}",
        ]
    )
    argv = render_command(sweep, values)
    expected_args = [
        "--data.patch_size=[48, 48]",
        "--model.compile=True",
        "--model.kd_weight=0.5",
        "--model.optimizer.init_args.lr=1e-05",
    ]
    assert argv == [
        "/usr/bin/env",
        "python",
        "-m",
        "ummkd",
        "fit",
        "--data.root=/data/x",
        *expected_args,
    ]
    # the same strings as wandb's own renderer
    wandb_args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    assert wandb_args["args"] == expected_args
    assert cli_arguments(argv) == ["fit", "--data.root=/data/x", *expected_args]
    hydra = render_command(_sweep(command=["ummkd", "fit", "${args_no_hyphens}"]), values)
    assert hydra[2:] == [a[2:] for a in expected_args]
    assert cli_arguments(["/usr/bin/env", "python", "train.py"]) is None
    assert cli_arguments(["/usr/bin/env", "FOO=1", "/venv/bin/ummkd", "fit"]) == ["fit"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (None, "no `command`"),
        ([*BASE_COMMAND], "exactly one ${args}"),
        (["ummkd", "fit", "${args}", "--config", "x.yaml"], "--config after ${args}"),
        (["ummkd", "fit", "${args}", "--config=x.yaml"], "--config after ${args}"),
        ([*BASE_COMMAND, "${arg}"], "unknown macro ${arg}"),
        ([*BASE_COMMAND, "--x=${args}"], "whole command element"),
        ([*BASE_COMMAND, "${args}", "${args_no_hyphens}"], "exactly one ${args}"),
    ],
)
def test_command_template_problems(command: list[str] | None, message: str) -> None:
    errors = check_command_template(_sweep(command=command))
    assert any(message in e for e in errors), errors


def test_good_command_template_has_no_problems() -> None:
    assert check_command_template(_sweep()) == []


# --------------------------------------------------------------------------------- search space
def test_draws_come_from_values_and_bounds() -> None:
    spec = {
        "cat": {"values": ["a", "b", [1, 2]]},
        "const": {"value": 3},
        "int": {"min": 2, "max": 5},
        "unif": {"min": 0, "max": 1.5},
        "qu": {"distribution": "q_uniform", "min": 1, "max": 4, "q": 0.5},
        "qi": {"distribution": "q_uniform", "min": 0, "max": 100, "q": 8},
        "logv": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "loge": {"distribution": "log_uniform", "min": -2.0, "max": 0.0},
        "group": {"parameters": {"inner": {"values": [1, 2]}}},
    }
    for name, value in spec.items():
        check_parameter(name, value)
    draws = draw("random", spec, 200, seed=3)
    assert draws == draw("random", spec, 200, seed=3)  # seeded
    col = {name: [d[name] for d in draws] for name in spec}
    assert set(map(repr, col["cat"])) == {"'a'", "'b'", "[1, 2]"}
    assert set(col["const"]) == {3}
    assert set(col["int"]) == {2, 3, 4, 5} and all(type(v) is int for v in col["int"])
    assert all(0 <= v <= 1.5 for v in col["unif"])
    assert set(col["qu"]) <= {1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0}
    assert all(type(v) is int and v % 8 == 0 for v in col["qi"])
    assert all(1e-4 <= v <= 1e-2 for v in col["logv"])
    assert all(math.exp(-2) <= v <= 1.0 for v in col["loge"])  # bounds are exponents
    assert {d["group"]["inner"] for d in draws} == {1, 2}
    # W&B renders values with str(): numpy scalars would print differently
    assert all(type(v) is float for v in col["unif"] + col["logv"] + col["loge"])


def test_grid_enumerates_in_wandb_order() -> None:
    spec = {
        "b": {"values": ["x", "y"]},
        "a": {"distribution": "int_uniform", "min": 1, "max": 2},
        "c": {"value": 0},
    }
    assert draw("grid", spec, 10, seed=0) == [
        {"a": 1, "b": "x", "c": 0},
        {"a": 1, "b": "y", "c": 0},
        {"a": 2, "b": "x", "c": 0},
        {"a": 2, "b": "y", "c": 0},
    ]
    assert len(draw("grid", spec, 3, seed=0)) == 3
    grouped = {
        "z": {"values": [1, 2]},
        "g": {"parameters": {"y": {"values": ["p", "q"]}, "x": {"value": 0}}},
    }
    assert draw("grid", grouped, 10, seed=0) == [
        {"g": {"x": 0, "y": "p"}, "z": 1},
        {"g": {"x": 0, "y": "p"}, "z": 2},
        {"g": {"x": 0, "y": "q"}, "z": 1},
        {"g": {"x": 0, "y": "q"}, "z": 2},
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"values": [0.5, None]}, "None"),
        ({"value": None}, "None"),
        ({"min": "1e-4", "max": 1.0e-2}, "1.0e-4"),
        ({"values": []}, "non-empty list"),
        ({"min": 2, "max": 1}, "larger than"),
        ({"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}, "positive"),
        ({"max": 1}, "`min`+`max`"),
        ({"distribution": "normal", "mu": 0.0}, "`min`+`max`"),
        ({"parameters": {"inner": {"value": None}}}, "'model.kd_weight.inner'"),
        (0.5, "expected a mapping"),
    ],
)
def test_invalid_parameters_are_rejected(spec: Any, message: str) -> None:
    with pytest.raises(SweepError, match=re.escape(message)):
        check_parameter("model.kd_weight", spec)


def test_grid_needs_countable_parameters() -> None:
    check_parameter("p", {"min": 1, "max": 3}, method="grid")
    check_parameter("p", {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, "grid")
    with pytest.raises(SweepError, match="grid search"):
        check_parameter("p", {"distribution": "uniform", "min": 0.0, "max": 1.0}, method="grid")


# ----------------------------------------------------------------------------------- metric
@pytest.mark.parametrize(
    ("metric", "config", "message"),
    [
        ({"name": "val/loss", "goal": "maximize"}, None, "not logged"),
        ({"name": "val/dice_best"}, None, "goal"),
        ({"name": "val/dice_best", "goal": "minimize"}, None, "goal"),
        ({"name": "val/dice_pet", "goal": "maximize"}, {"data": {"modalities": ["ct"]}}, "pet"),
        (None, None, "required"),
    ],
)
def test_metric_problems(metric: Any, config: Any, message: str) -> None:
    errors = check_metric(_sweep(metric=metric), config)
    assert any(message in e for e in errors), errors


def test_logged_metrics_are_accepted() -> None:
    config = {"data": {"modalities": ["ct", "mr"]}}
    for name in ("val/dice_best", "val/dice", "val/dice_ct", "val/dice_mr"):
        assert check_metric(_sweep(metric={"name": name, "goal": "maximize"}), config) == []


def test_check_values_applied() -> None:
    config = {
        "model": {
            "kd_weight": 0.5,
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}},
            "network": {"class_path": "ummkd.nn.DilatedResNet2d", "init_args": {"dropout": 0.1}},
        }
    }
    ok = {
        "model.kd_weight": 0.5,
        "model.optimizer.init_args.lr": 0.001,
        "model.optimizer": "Adam",
        "model.network.dropout": 0.1,
    }
    assert check_values_applied(config, ok) == []
    errors = check_values_applied(config, {"model.kd_weight": 0.25, "model.nope": 1})
    assert any("0.25" in e and "0.5" in e for e in errors)
    assert any("model.nope" in e for e in errors)


# ------------------------------------------------------------------------------- dry run (CLI)
@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents run in the repository root: relative config paths resolve there."""
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_pass_the_dry_run(
    sweep_file: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(sweep_file), "--count", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("/usr/bin/env ummkd fit --config") == 2
    assert "OK (2 command(s) checked)" in out
    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["metric"] == {"name": "val/dice_best", "goal": "maximize"}
    assert sweep["command"][-1] == "${args}"


def test_shipped_sweeps_exist() -> None:
    assert {p.name for p in SWEEPS} >= {"kd_lr.yaml", "demo_random.yaml"}
    assert yaml.safe_load((CONFIGS / "sweeps" / "kd_lr.yaml").read_text())["method"] == "bayes"


def test_dry_run_fails_on_a_misspelt_parameter(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(parameters={"model.kd_wieght": {"values": [0.1, 0.2]}})
    assert main([_write(tmp_path, sweep), "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert "the ummkd CLI rejects this command" in err
    assert "kd_wieght" in err


def test_dry_run_fails_on_an_unparsable_value(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(parameters={"model.norm": {"values": ["per_modality"]}})
    assert main([_write(tmp_path, sweep), "--count", "1"]) == 1
    assert "model.norm" in capsys.readouterr().err


def test_dry_run_detects_overridden_values(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(
        parameters={"model.kd_weight": {"value": 0.25}},
        command=[*BASE_COMMAND, "${args}", "--model.kd_weight=0.75"],
    )
    assert main([_write(tmp_path, sweep), "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert "model.kd_weight: sweep value 0.25 but the resolved config has 0.75" in err


def test_dry_run_needs_a_wandb_logger(
    tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(command=["${env}", "ummkd", "fit", "--config", "configs/demo.yaml", "${args}"])
    assert main([_write(tmp_path, sweep), "--count", "1"]) == 1
    assert "no WandbLogger" in capsys.readouterr().err


def test_dry_run_static_problems_stop_before_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(method="hyperopt", metric={"name": "val/dice_best"})
    sweep["parameters"]["model.kd_weight"] = {"values": [0.5, None]}
    sweep["command"] = [*BASE_COMMAND]
    assert main([_write(tmp_path, sweep)]) == 1
    err = capsys.readouterr().err
    for message in ("`method`", "None", "exactly one ${args}"):
        assert message in err
    with pytest.raises(SystemExit) as exit_:  # neither a file nor a packaged sweep
        main([str(tmp_path / "missing.yaml")])
    assert exit_.value.code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("command: [${env}, ummkd\n")
    assert main([str(broken)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_packaged_sweeps_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # outside a clone: the sweep's configs/... resolve too
    assert main(["sweeps/demo_random", "--count", "1"]) == 0
    assert "OK (1 command(s) checked)" in capsys.readouterr().out


def test_dry_run_grid(tmp_path: Path, in_repo: None, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(
        method="grid",
        parameters={
            "model.norm": {"values": ["modality", "shared"]},
            "model.kd_weight": {"values": [0.0, 0.5]},
        },
    )
    assert main([_write(tmp_path, sweep), "--count", "10"]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "--model.kd_weight=0.5 --model.norm=shared" in out


# ------------------------------------------------------------------------ W&B runs (offline)
NET = {
    "model": {
        "network": {
            "class_path": "ummkd.nn.DilatedResNet2d",
            "init_args": {"base_channels": 2, "head_channels": 4, "modalities": None},
        }
    }
}


@pytest.fixture(scope="module")
def sweep_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic CT/MR dataset (one train, one val, one test case per modality)."""
    from ummkd.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("sweep_data") / "synthetic"
    make_synthetic_dataset(root, n_ct=3, n_mr=3, size=(48, 48, 12), seed=1)
    return root


@pytest.fixture
def offline_wandb(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[list[dict[str, Any]]]:
    """W&B offline in tmp_path; records every finished run (config, summary, exit code)."""
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / "wandb_dir").mkdir()
    finished: list[dict[str, Any]] = []
    original = Run.finish

    def finish(self: Run, exit_code: int | None = None) -> None:
        finished.append(
            {
                "id": self.id,
                "project": self.project,
                "dir": Path(self.dir),
                "config": dict(self.config),
                "dice_best": self.summary.get("val/dice_best"),
                "exit_code": exit_code,
            }
        )
        original(self, exit_code=exit_code)

    monkeypatch.setattr(Run, "finish", finish)
    assert wandb.run is None
    yield finished
    if wandb.run is not None:  # leave no run behind for other tests, but fail this one
        wandb.finish()
        pytest.fail("a W&B run was left unfinished")


def _wandb_fit_args(data: Path, root: Path, net: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--config",
        str(CONFIGS / "logger" / "wandb.yaml"),
        "--config",
        str(net),
        f"--data.root={data}",
        f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=1",
        "--data.steps_per_epoch=1",
        "--data.patch_size=[48,48]",
        "--trainer.enable_model_summary=false",
        "--data.augmentation=null",
        *FAST,
        *extra,
    ]


@pytest.fixture
def tiny_net(tmp_path: Path) -> Path:
    """A config overlay with a tiny DilatedResNet2d (independent of demo.yaml's network)."""
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(NET))
    return path


def test_two_wandb_runs_in_one_root(
    offline_wandb: list[dict[str, Any]], sweep_dataset: Path, tiny_net: Path, tmp_path: Path
) -> None:
    import wandb

    from ummkd.cli import main as cli_main

    root = tmp_path / "runs"
    cli_main(_wandb_fit_args(sweep_dataset, root, tiny_net, "--model.kd_weight=0.25"))
    assert wandb.run is None
    cli_main(_wandb_fit_args(sweep_dataset, root, tiny_net, "--model.kd_weight=0.75"))
    assert wandb.run is None

    run_dirs = {p.resolve() for p in root.iterdir() if p.is_dir()}
    assert len(run_dirs) == 2
    assert len(offline_wandb) == 2 and offline_wandb[0]["id"] != offline_wandb[1]["id"]
    # one W&B run per run folder, in call order
    assert {Path(r["config"]["run_dir"]) for r in offline_wandb} == run_dirs
    for record, kd_weight in zip(offline_wandb, (0.25, 0.75), strict=True):
        run_dir = Path(record["config"]["run_dir"])
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["model"]["kd_weight"] == kd_weight
        assert saved["trainer"]["logger"]["class_path"] == "ummkd.lightning.wandb.WandbRunLogger"
        # W&B's files live in the run folder, with the resolved config
        offline = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and record["dir"].parent == offline[0]
        stored = yaml.safe_load((record["dir"] / "ummkd-config.yaml").read_text())
        assert stored["model"]["kd_weight"] == kd_weight
        # the run config uses the CLI's dotted keys (the sweep parameter names)
        config = record["config"]
        assert config["model.kd_weight"] == kd_weight
        assert (
            config["model.optimizer.init_args.lr"] == saved["model"]["optimizer"]["init_args"]["lr"]
        )
        assert config["data.root"] == str(sweep_dataset)
        assert record["project"] == "ummkd" and record["exit_code"] == 0
        assert record["dice_best"] is not None  # the sweep metric is in the summary
        assert len(list(run_dir.rglob("last.ckpt"))) == 1


def test_wandb_run_is_finished_after_an_exception(
    offline_wandb: list[dict[str, Any]],
    sweep_dataset: Path,
    tiny_net: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wandb

    from ummkd.cli import main as cli_main
    from ummkd.lightning.module import UMMKDModule

    def broken_step(self: UMMKDModule, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(UMMKDModule, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="boom in training_step"):
        cli_main(_wandb_fit_args(sweep_dataset, tmp_path / "runs", tiny_net))
    assert wandb.run is None
    assert [r["exit_code"] for r in offline_wandb] == [1]


def test_wandb_run_is_finished_after_keyboard_interrupt(
    offline_wandb: list[dict[str, Any]],
    sweep_dataset: Path,
    tiny_net: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wandb

    from ummkd.cli import main as cli_main
    from ummkd.lightning.module import UMMKDModule

    def interrupted_step(self: UMMKDModule, batch: Any, batch_idx: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(UMMKDModule, "training_step", interrupted_step)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exc:  # Lightning: graceful shutdown, exit(1)
            cli_main(_wandb_fit_args(sweep_dataset, tmp_path / "runs", tiny_net))
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after the first one
    assert exc.value.code == 1
    assert wandb.run is None
    assert [r["exit_code"] for r in offline_wandb] == [1]


def test_wandb_logger_run_dir_binding(tmp_path: Path) -> None:
    from ummkd.lightning.wandb import WandbRunLogger, bind_run_dir, flatten_config

    unbound = WandbRunLogger()
    explicit = WandbRunLogger(save_dir=str(tmp_path / "given"))
    bind_run_dir([unbound, explicit], tmp_path / "run1")
    assert unbound.save_dir == str(tmp_path / "run1")
    assert explicit.save_dir == str(tmp_path / "given")
    bind_run_dir(None, tmp_path / "ignored")
    with pytest.raises(RuntimeError, match="no save_dir"):
        _ = WandbRunLogger().experiment
    assert flatten_config({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "a.d": {},
        "e": None,
    }
