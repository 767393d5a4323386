"""Bad inputs through the real CLI: one clear line, a non-zero exit, and nothing a user has lost.

Every subprocess run asserts the exit code, that the file or option at fault is named, that no
traceback is printed and that the input files are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.lightning.conftest import FAST
from ummkd.cli import find_checkpoint, main
from ummkd.data.dataset_spec import dataset_warnings, load_dataset, validate_dataset
from ummkd.data.synthetic import make_synthetic_dataset
from ummkd.errors import CheckpointError
from ummkd.lightning.checkpoints import AtomicCheckpointIO, read_checkpoint
from ummkd.lightning.datamodule import UnpairedDataModule

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
SMALL_NET = ["--model.network.init_args.channels=[4,8,16,32]", "--data.patch_size=[32,32]"]


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny valid dataset whose files must never change (checked after the module)."""
    root = tmp_path_factory.mktemp("bad_inputs") / "data"
    make_synthetic_dataset(root, n_ct=3, n_mr=3, size=(32, 32, 6))
    before = _digest(root)
    yield root
    assert _digest(root) == before, "an input file was modified or a file was added"


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "UMMKD_CACHE_DIR": str(tmp_path / "cache")}


def _ummkd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ummkd", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _refused(result: subprocess.CompletedProcess[str], code: int, *named: str) -> str:
    """Assert a short refusal; return stderr."""
    err = result.stderr
    assert result.returncode == code, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    for name in named:
        assert name in err, (name, err[-3000:])
    return err


def _fake_checkpoint(path: Path, modalities: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"modalities": modalities}}, path)
    return path


# ---------------------------------------------------------------------------- fit / predict CLI
def test_missing_root_is_an_error_and_nothing_is_generated(dataset: Path, tmp_path: Path) -> None:
    typo = tmp_path / "synthetc"
    result = _ummkd("fit", "--config", DEMO, f"--data.root={typo}", *FAST)
    _refused(result, 2, str(typo), "ummkd data synth", "ummkd fit: error:")
    assert not typo.exists()


def test_usage_error_names_the_option(dataset: Path) -> None:
    result = _ummkd("fit", "--config", DEMO, f"--data.root={dataset}", "--data.batch_size=x")
    err = _refused(result, 2, "data.batch_size", "--help")
    assert len(err.strip().splitlines()) <= 2


def test_predict_refusals(dataset: Path, tmp_path: Path, cache_env: dict[str, str]) -> None:
    inputs = [dataset / "mr" / name for name in sorted(os.listdir(dataset / "mr"))[:1]]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(inputs[0], other / inputs[0].name)
    base = [
        "predict",
        "--config",
        DEMO,
        f"--data.root={dataset}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--data.predict_modality=mr",
        f"--out={tmp_path / 'preds'}",
        *FAST,
        *SMALL_NET,
    ]
    images = f"--data.predict_images={inputs[0]}"
    # no checkpoint: an untrained network would write label maps
    _refused(_ummkd(*base, images, env=cache_env), 2, "--ckpt_path", "untrained")
    # a truncated checkpoint, a file that is no checkpoint, and a missing one
    good = _fake_checkpoint(tmp_path / "good.ckpt", ["ct", "mr"])
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    for bad in (truncated, text, tmp_path / "missing.ckpt"):
        _refused(_ummkd(*base, images, f"--ckpt_path={bad}", env=cache_env), 2, str(bad))
    # a checkpoint trained for CT only cannot predict MR
    ct_only = _fake_checkpoint(tmp_path / "ct_only.ckpt", ["ct"])
    _refused(
        _ummkd(*base, images, f"--ckpt_path={ct_only}", env=cache_env),
        2,
        str(ct_only),
        "this checkpoint has modalities [ct]; --data.predict_modality mr is not one of them",
    )
    # two inputs with one file name would write one output: refused, naming both
    both = f"--data.predict_images=[{inputs[0]},{other / inputs[0].name}]"
    err = _refused(_ummkd(*base, both, f"--ckpt_path={good}", env=cache_env), 2, "same file name")
    assert str(inputs[0]) in err and str(other / inputs[0].name) in err
    assert not (tmp_path / "preds").exists()


def test_traceback_on_request(dataset: Path, tmp_path: Path) -> None:
    typo = tmp_path / "nowhere"
    result = _ummkd("fit", "--config", DEMO, f"--data.root={typo}", "--traceback")
    assert result.returncode == 2 and "Traceback" in result.stderr and "DataError" in result.stderr


# ---------------------------------------------------------------------------------- data check
def _broken_copy(dataset: Path, tmp_path: Path) -> Path:
    """A copy with a NaN image, an absurd-spacing image, background-only MR labels, an outside
    file and slice-like ids."""
    root = tmp_path / "broken"
    shutil.copytree(dataset, root)
    spec = load_dataset(root)
    ct = [c for c in spec.cases if c.modality == "ct"]
    image = nib.load(ct[0].image)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), ct[0].image)
    image = nib.load(ct[1].image)
    affine = image.affine.copy()
    affine[:3, 0] *= 100.0  # 150 mm voxels: a header in cm or m
    flat = nib.Nifti1Image(np.asarray(image.dataobj), affine)
    nib.save(flat, ct[1].image)
    for case in spec.cases:
        if case.modality == "mr" and case.label is not None:
            label = nib.load(case.label)
            nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), case.label)
    outside = tmp_path / "outside_image.nii.gz"
    shutil.move(ct[2].image, outside)
    description = json.loads((root / "dataset.json").read_text())
    for entry in description["cases"]:
        if entry["id"] == ct[2].id:
            entry["image"] = str(outside)
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_data_check_reports_bad_values_spacing_and_empty_labels(
    dataset: Path, tmp_path: Path
) -> None:
    root = _broken_copy(dataset, tmp_path)
    spec = load_dataset(root)
    ct = [c for c in spec.cases if c.modality == "ct"]
    before = _digest(root)
    result = _ummkd("data", "check", str(root))
    out = result.stdout
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{ct[0].image}: 1 NaN or infinite voxel(s)" in out
    assert f"{ct[1].image}: voxel spacing [150.0] mm" in out
    assert "modality 'mr': all 3 label file(s) are background only" in out
    assert f"warning: {ct[2].image}: the image of case {ct[2].id!r} lies outside" in out
    assert _digest(root) == before


def test_label_map_that_erases_everything(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "mapped"
    shutil.copytree(dataset, root)
    description = json.loads((root / "dataset.json").read_text())
    description["modalities"]["ct"]["label_map"] = {"1": 0, "2": 0, "3": 0, "4": 0}
    description["modalities"]["mr"]["label_map"] = {"1": 1, "2": 2, "3": 3}
    (root / "dataset.json").write_text(json.dumps(description))
    spec = load_dataset(root)
    messages = [p.message for p in validate_dataset(spec)]
    assert any("'ct': the label_map maps every label value present" in m for m in messages)
    warnings = dataset_warnings(spec)
    assert any("modality 'mr': class(es) ['spleen'] occur in none" in w for w in warnings)


def test_slices_of_one_patient_split_by_patient(tmp_path: Path) -> None:
    src = tmp_path / "slices"
    for folder in ("img", "lab"):
        (src / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for patient in range(6):
        for z in range(3):
            label = np.zeros((16, 16), np.uint8)
            label[4:9, 4:9] = 1
            affine = np.eye(4)
            nib.save(
                nib.Nifti1Image(rng.normal(size=(16, 16)), affine),
                src / "img" / f"p{patient}_{z}.nii.gz",
            )
            nib.save(nib.Nifti1Image(label, affine), src / "lab" / f"p{patient}_{z}.nii.gz")
    before = _digest(src)
    common = ["data", "import", "pairs", str(src), "--images", "img/*.nii.gz", "--labels"]
    common += ["lab/*.nii.gz", "--modality", "mr", "--labels-names", "organ"]
    by_slice = _ummkd(*common, "--out", str(tmp_path / "by_slice"))
    assert by_slice.returncode == 0, by_slice.stderr
    assert "look like slices of one patient" in by_slice.stdout
    by_patient = _ummkd(
        *common, "--out", str(tmp_path / "by_patient"), "--group-regex", r"^(p\d+)_"
    )
    assert by_patient.returncode == 0, by_patient.stderr
    assert "slices of one patient" not in by_patient.stdout
    splits = json.loads((tmp_path / "by_patient" / "splits.json").read_text())
    parts = [splits["folds"][0]["train"], splits["folds"][0]["val"], splits["test"]]
    patients = [{case.rsplit("_", 1)[0] for case in part} for part in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    bad = _ummkd(*common, "--out", str(tmp_path / "bad"), "--group-regex", "^p")
    _refused(bad, 2, "--group-regex", "has no group")
    assert _digest(src) == before


# --------------------------------------------------------------------------------- checkpoints
def test_find_checkpoint_stays_in_one_run_and_skips_broken_files(tmp_path: Path) -> None:
    old = _fake_checkpoint(tmp_path / "run_a" / "checkpoints" / "last.ckpt", ["ct", "mr"])
    _fake_checkpoint(tmp_path / "run_a" / "checkpoints" / "best-epoch009-dice0.9000.ckpt", ["ct"])
    good = _fake_checkpoint(tmp_path / "run_b" / "checkpoints" / "best-epoch001-dice0.5.ckpt", [])
    newest = tmp_path / "run_b" / "checkpoints" / "best-epoch002-dice0.6.ckpt"
    newest.write_bytes(good.read_bytes()[:100])  # truncated by a full disk
    os.utime(old, (1, 1))
    os.utime(good, (2, 2))
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*best-epoch002"):
        assert find_checkpoint(tmp_path, "best") == good
    # run_b has no last.ckpt: the one of run_a is found only by naming run_a
    assert find_checkpoint(tmp_path / "run_a", "last") == old
    (tmp_path / "run_b" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"latest run .*run_b"):
        find_checkpoint(tmp_path, "last")


def test_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, last)
    before = last.read_bytes()

    def interrupted(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    assert read_checkpoint(find_checkpoint(tmp_path, "last"))["epoch"] == 1


def test_resume_after_an_interrupted_checkpoint_write(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_env: dict[str, str]
) -> None:
    runs = tmp_path / "runs"
    fit = ["fit", "--config", DEMO, f"--data.root={dataset}", f"--trainer.default_root_dir={runs}"]
    fit += [*FAST, *SMALL_NET, "--data.steps_per_epoch=2"]
    main([*fit, "--trainer.max_epochs=1"])
    (last,) = runs.rglob("last.ckpt")
    before = last.read_bytes()
    save = torch.save

    def half_then_fail(obj: object, f: object, *args: object, **kwargs: object) -> None:
        save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        main([*fit, "--trainer.max_epochs=2", "--ckpt_path=last"])
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert not [p for p in runs.rglob("*.tmp")]
    main([*fit, "--trainer.max_epochs=2", "--ckpt_path=last"])
    newest = find_checkpoint(runs, "last")
    assert newest != last and read_checkpoint(newest)["epoch"] == 1


# ---------------------------------------------------------------------------------- disk cache
def test_disk_cache_lives_outside_the_data_and_keeps_the_affine(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UMMKD_CACHE_DIR", str(tmp_path / "cache"))
    affines = []
    for _ in range(2):  # the second run reads the cache
        datamodule = UnpairedDataModule(str(dataset), cache="disk", check="off", num_workers=0)
        datamodule.setup("validate")
        image = datamodule._datasets["val"]["ct"][0]["image"]
        affines.append(np.asarray(image.affine))
    np.testing.assert_allclose(affines[0], affines[1])
    assert any((tmp_path / "cache").rglob("*.pt"))
