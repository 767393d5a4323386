"""The ``ummkd`` command line itself: top-level help, version, flags per subcommand."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ummkd import __version__
from ummkd.cli import COMMANDS, main
from ummkd.config_files import PACKAGED_CONFIGS

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"]])
def test_top_level_help_lists_every_command(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(args)
    out = capsys.readouterr().out
    for name in (*COMMANDS, "fit", "validate", "test", "predict", "data", "evaluate", "reproduce"):
        assert f"\n  {name} " in out, name
    assert "Lightning Trainer command line tool" not in out
    assert {"export", "segment", "sweep-dry-run"} <= set(COMMANDS)


def test_version_of_the_console_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ummkd", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ummkd {__version__}"


def _printed_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    return yaml.safe_load(captured.out), captured.err


@pytest.mark.parametrize(
    ("flags", "overwrite", "probabilities"),
    [
        (["--overwrite", "--save_probabilities"], True, True),
        (["--overwrite=true", "--save_probabilities", "false"], True, False),
        (["--overwrite", "false"], False, False),
        ([], False, False),
    ],
)
def test_predict_booleans_are_bare_flags_or_take_a_value(
    flags: list[str],
    overwrite: bool,
    probabilities: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UMMKD_RUN_VERSION", raising=False)
    config, _ = _printed_config(["predict", "--config", DEMO, "--out", "preds", *flags], capsys)
    assert config["out"] == "preds"
    assert config["overwrite"] is overwrite
    assert config["save_probabilities"] is probabilities


def test_predict_output_is_a_deprecated_alias_of_out(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UMMKD_RUN_VERSION", raising=False)
    for given in (["--output", "preds"], ["--output=preds"]):
        config, err = _printed_config(["predict", "--config", DEMO, *given], capsys)
        assert config["out"] == "preds" and "output" not in config
        assert err.count("\n") == 1 and "--output is deprecated, use --out" in err


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_prediction_options_only_in_predict(
    subcommand: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UMMKD_RUN_VERSION", raising=False)
    with pytest.raises(SystemExit):
        main([subcommand, "--help"])
    text = capsys.readouterr().out
    assert "--ckpt_path" in text
    assert "packaged config by name" in text and "newest run below" in " ".join(text.split())
    for flag in ("--out ", "--output", "--overwrite", "--save_probabilities"):
        assert flag not in text, (subcommand, flag)
    config, _ = _printed_config([subcommand, "--config", DEMO], capsys)
    assert not {"out", "overwrite", "save_probabilities"} & set(config)


@pytest.mark.parametrize("name", ["demo", "demo.yaml", "configs/demo.yaml"])
def test_packaged_configs_by_name_outside_a_clone(
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UMMKD_RUN_VERSION", raising=False)
    expected, _ = _printed_config(["fit", "--config", DEMO], capsys)
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert not (tmp_path / "configs").exists()
    config, _ = _printed_config(["fit", f"--config={name}"], capsys)
    assert config == expected
    stacked, _ = _printed_config(
        ["fit", "-c", "abdominal_2d/ummkd", "--config", "abdominal_2d/cpu"], capsys
    )
    assert stacked["data"]["root"] == "data/abdominal_btcv_chaos"
    assert stacked["trainer"]["max_steps"] != expected["trainer"]["max_steps"]


def test_an_unknown_config_name_is_one_line_listing_the_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "dmeo"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "--config dmeo: no such file" in err
    assert "did you mean demo?" in err and "demo, logger/wandb" in err
    assert "sweeps/" not in err  # sweeps are not --config files


def test_reproduce_finds_the_packaged_variant_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ummkd.experiments import build_parser

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--trainer-config", "trainer/gpu"])
    assert (args.configs / "ummkd.yaml").is_file()
    assert args.trainer_config == PACKAGED_CONFIGS / "trainer" / "gpu.yaml"
    for bad, message in (
        ("abdominal_9d", "abdominal_9d: no such file, and no packaged config folder"),
        ("demo", "demo: no such file"),  # a packaged file, not a folder
        (str(PACKAGED_CONFIGS / "demo.yaml"), "demo.yaml: not a folder"),
    ):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["--configs", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err  # one line, no usage block
        assert message in err and "see `ummkd reproduce --help`" in err


def test_every_config_file_is_in_the_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ummkd"]
    files = [p.relative_to(REPO / "ummkd").as_posix() for p in PACKAGED_CONFIGS.rglob("*")]
    files = [f for f in files if (REPO / "ummkd" / f).is_file()]
    assert len(files) >= 20
    assert not [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    assert (REPO / "configs").resolve() == PACKAGED_CONFIGS


def test_fit_and_test_print_no_lightning_noise(tiny_dataset: Path, tmp_path: Path) -> None:
    """No advert, no false "logs will be deleted", no "dirpath has changed", no LeafSpec notice."""
    base = ["--config", "demo", f"--data.root={tiny_dataset}", "--data.patch_size=[32,32]"]
    base += ["--model.network.init_args.channels=[4,8,16,32]", "--trainer.default_root_dir=runs"]
    base += ["--trainer.enable_progress_bar=false", "--data.num_workers=0"]
    env = {**os.environ, "UMMKD_CACHE_DIR": str(tmp_path / "cache")}
    output = ""
    for args in (
        ["fit", *base, "--trainer.max_steps=2", "--data.steps_per_epoch=2"],
        ["test", *base, "--ckpt_path=best"],
        ["test", *base, "--ckpt_path=best"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ummkd", *args],
            cwd=tmp_path,  # a relative root, outside the clone
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        output += result.stdout + result.stderr
    for noise in ("💡 Tip", "exists and is not empty", "dirpath has changed", "LeafSpec"):
        assert noise not in output, noise
    assert "DataLoader 0" not in output  # Lightning's per-loader test table: ummkd prints its own
    assert "[ummkd] run folder: " in output and "checkpoints: best " in output
    (run,) = (tmp_path / "runs").iterdir()
    assert len(list((run / "test").rglob("metrics.csv"))) == 2  # one per test, none replaced


def test_segment_modality_is_case_insensitive() -> None:
    from ummkd.segment import build_parser as segment_parser

    args = segment_parser().parse_args(["-i", "x", "-o", "y", "-m", "z", "--modality", "MR"])
    assert args.modality == "mr"
