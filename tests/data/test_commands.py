from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

from tests.data.conftest import make_tiny_dataset
from ummkd.data.commands import main

SMALL_SYNTH = ["--n-ct", "3", "--n-mr", "3", "--size", "48", "48", "8"]


def test_check_ok(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "kidney_right" in out and "1/1/1" in out
    assert f"no problems found in {tiny_dataset}" in out


def test_check_reports_problems(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_dataset / "ct/label_1.nii.gz").unlink()
    (tiny_dataset / "splits.json").write_text('{"folds": [{"train": ["ct_0"], "val": ["ct_0"]}]}')
    assert main(["check", str(tiny_dataset)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{tiny_dataset / 'ct/label_1.nii.gz'}: label of case 'ct_1' not found" in lines
    assert any(
        line.startswith(f"{tiny_dataset / 'splits.json'}: case(s) ['ct_0'] are in both")
        for line in lines
    )
    assert lines[-1] == f"2 problem(s) found in {tiny_dataset}"


def test_check_options(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_dataset / "ct/image_0.nii.gz").write_bytes(b"not a gzip file")
    assert main(["check", str(tiny_dataset), "--shallow"]) == 0
    assert main(["check", str(tiny_dataset), "--modality", "mr", "--format", "ummkd"]) == 0
    capsys.readouterr()
    assert main(["check", str(tiny_dataset), "--modality", "ct"]) == 1
    assert "cannot read the image of case 'ct_0'" in capsys.readouterr().out
    assert main(["check", str(tiny_dataset), "--modality", "mr", "--dim", "2"]) == 1
    assert "but 2D data (dim 2) is expected" in capsys.readouterr().out


def test_check_schema_error_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2
    expected = f"ummkd data check: error: {tmp_path / 'dataset.json'}: not found"
    assert expected in capsys.readouterr().err
    assert main(["check"]) == 2
    assert "the following arguments are required: root" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "synth" in capsys.readouterr().out


def test_synth_refuses_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    assert main(["synth", "--out", str(out), *SMALL_SYNTH]) == 0
    printed = capsys.readouterr().out
    assert "not real data" in printed and "no problems found" in printed
    before = (out / "ct/image_000.nii.gz").read_bytes()
    assert main(["synth", "--out", str(out), *SMALL_SYNTH, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ummkd data synth: error:") and "--overwrite" in err
    assert (out / "ct/image_000.nii.gz").read_bytes() == before
    assert main(["synth", "--out", str(out), *SMALL_SYNTH, "--seed", "1", "--overwrite"]) == 0
    assert (out / "ct/image_000.nii.gz").read_bytes() != before
    assert main(["synth", "--out", str(tmp_path / "bad"), "--n-ct", "1"]) == 2
    assert "n_ct and n_mr must be >= 3" in capsys.readouterr().err


def _fake_importer(behaviour: str) -> types.ModuleType:
    module = types.ModuleType("fake_importer", "Import a fake dataset.\n\nMore text.")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("src", type=Path)
        parser.add_argument("--out", type=Path, required=True)

    def run(args: argparse.Namespace) -> Path:
        if behaviour == "fail":
            raise FileNotFoundError(f"{args.src}: no such folder")
        root = make_tiny_dataset(args.out)
        if behaviour == "broken":
            (root / "mr/image_0.nii.gz").unlink()
        return root

    module.add_arguments = add_arguments  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    return module


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("ummkd.data.importers")
    package.IMPORTERS = {  # type: ignore[attr-defined]
        kind: _fake_importer(kind) for kind in ("ok", "fail", "broken")
    }
    monkeypatch.setitem(sys.modules, "ummkd.data.importers", package)


@pytest.mark.usefixtures("fake_registry")
def test_import_dispatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "imported"
    assert main(["import", "ok", "src", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and f"no problems found in {out}" in printed
    assert main(["import", "broken", "src", "--out", str(tmp_path / "b")]) == 1
    assert "image of case 'mr_0' not found" in capsys.readouterr().out
    assert main(["import", "fail", "src", "--out", str(tmp_path / "f")]) == 2
    assert "ummkd data import fail: error: failed: src: no such folder" in capsys.readouterr().err
    assert main(["import", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["import", "--help"]) == 0
    assert "Import a fake dataset." in capsys.readouterr().out


def test_import_without_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ummkd.data.importers", types.ModuleType("empty"))
    assert main(["import", "ok"]) == 1
    assert "no dataset importers are available" in capsys.readouterr().err
