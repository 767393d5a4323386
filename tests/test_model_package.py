"""`ummkd export` + `ummkd segment`: round trip, refusals, DICOM input, ensembles, warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.lightning.conftest import FAST, TINY_2D
from ummkd.cli import main as cli
from ummkd.data.dataset_spec import load_dataset
from ummkd.model_package import (
    WEIGHTS,
    decide_postprocessing,
    export_model,
    load_package,
)
from ummkd.model_package import main as export
from ummkd.provenance import code_commit
from ummkd.segment import main as segment
from ummkd.segment import segment_scan

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _fit(root: Path, run_dir: Path, seed: int) -> Path:
    cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--data.root={root}",
            f"--trainer.default_root_dir={run_dir}",
            f"--seed_everything={seed}",
            "--trainer.max_epochs=2",
            "--data.steps_per_epoch=3",
            *FAST,
            *TINY_2D,
        ]
    )
    return next(run_dir.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def packages(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained runs (seeds 0, 1) exported; the first also as a zip, with postprocessing."""
    base = tmp_path_factory.mktemp("packages")
    found = {}
    for seed in (0, 1):
        ckpt = _fit(tiny_dataset, base / f"run{seed}", seed)
        found[f"ckpt{seed}"] = ckpt
        found[f"pkg{seed}"] = export_model(ckpt, base / f"pkg{seed}", postprocessing=False)
    found["zip"] = export_model(found["ckpt0"], base / "pkg0_pp", as_zip=True)
    return found


@pytest.fixture
def scan(tiny_dataset: Path, tmp_path: Path) -> Path:
    """An MR test case copied out of the dataset, stored LPS instead of its own voxel order."""
    (case,) = load_dataset(tiny_dataset).cases_for("mr", "test")
    folder = tmp_path / "scans"
    folder.mkdir()
    image = nib.load(case.image)
    nib.save(image.as_reoriented(nib.orientations.axcodes2ornt("LPS")), folder / "mr.nii.gz")
    return folder / "mr.nii.gz"


def test_package_layout_metadata_and_weights_only(
    packages: dict[str, Path], tiny_dataset: Path
) -> None:
    folder = packages["pkg0"]
    meta = json.loads((folder / "configs/metadata.json").read_text())
    assert meta["format"] == "ummkd-model/1" and meta["orientation"] == "RAS"
    assert meta["labels"]["background"] == 0 and len(meta["labels"]) == 5
    ct = meta["inputs"]["ct"]
    dataset = json.loads((tiny_dataset / "dataset.json").read_text())
    assert ct["units"] == "HU" and ct["window"] == dataset["modalities"]["ct"]["window"]
    assert ct["training_cases"] > 0 and len(ct["fingerprint"]["spacing_min"]) == 3
    assert meta["training_steps"] == 6 and meta["ummkd_version"]
    assert meta["training_commits"] == [code_commit()] and meta["export_commit"] == code_commit()
    state = torch.load(folder / WEIGHTS, weights_only=True)
    assert any(k.startswith("network.") for k in state)
    readme = (folder / "docs/README.md").read_text()
    assert readme.startswith("```\nmodel ") and "Test scores: none" in readme


def test_exported_test_scores_are_those_of_the_exported_checkpoint(
    packages: dict[str, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    run = packages["ckpt0"].parent.parent
    (best,) = run.rglob("best*.ckpt")
    args = ["test", "--config", str(CONFIG), f"--data.root={tiny_dataset}", f"--ckpt_path={best}"]
    args += ["--verbose=false", *FAST, *TINY_2D]
    cli(args)
    cli([*args, "--model.tta=true"])
    reports = sorted(run.glob("test/version_*/summary.json"))
    assert len(reports) == 2  # one folder per test call: nothing replaced
    assert all((r.parent / "config.yaml").is_file() for r in reports)
    meta = load_package(export_model(best, tmp_path / "best", postprocessing=False)).metadata
    assert meta.test_metrics is not None
    assert meta.test_metrics["checkpoint"] == str(best.resolve())
    assert meta.test_metrics["inference"]["tta"] is True  # the newest report of these weights
    assert meta.test_metrics["source"] == "test/version_1/summary.json"
    other = load_package(export_model(packages["ckpt0"], tmp_path / "last", postprocessing=False))
    assert other.metadata.test_metrics is None  # last.ckpt was never tested


def test_segment_equals_predict_from_the_checkpoint(
    packages: dict[str, Path], tiny_dataset: Path, scan: Path, tmp_path: Path
) -> None:
    """Dataset folder gone: the package alone gives the checkpoint's predictions."""
    out = tmp_path / "seg"
    assert (
        segment(["-i", str(scan), "-o", str(out), "-m", str(packages["pkg0"]), "--modality", "mr"])
        == 0
    )
    written = nib.load(out / "mr.nii.gz")
    source = nib.load(scan)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    preds = tmp_path / "pred"
    cli(
        [
            "predict",
            "--config",
            str(CONFIG),
            f"--data.root={tiny_dataset}",
            f"--ckpt_path={packages['ckpt0']}",
            f"--data.predict_images={scan}",
            "--data.predict_modality=mr",
            f"--out={preds}",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            *FAST,
            *TINY_2D,
        ]
    )
    expected = np.asarray(nib.load(preds / "mr.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    # existing outputs are kept unless --overwrite
    stamp = (out / "mr.nii.gz").stat().st_mtime_ns
    segment(["-i", str(scan), "-o", str(out), "-m", str(packages["pkg0"]), "--modality", "mr"])
    assert (out / "mr.nii.gz").stat().st_mtime_ns == stamp


def test_ensemble_averages_probabilities(packages: dict[str, Path], scan: Path) -> None:
    first, second = load_package(packages["pkg0"]), load_package(packages["pkg1"])
    ensemble, _ = segment_scan(scan, [first, second], "mr", torch.device("cpu"))
    from ummkd.data.transforms import invert_to_input_space, prediction_transforms

    total = 0
    for package in (first, second):
        meta = package.metadata
        transform = prediction_transforms(
            meta.preprocessing("mr"), orientation=meta.orientation, spacing=meta.spacing
        )
        image = transform({"image": str(scan)})["image"]
        probs = package.module.predict_volume(image, "mr")
        total = total + invert_to_input_space(transform, probs, image)
    np.testing.assert_array_equal(ensemble, total.argmax(0).numpy())


def test_zip_package_and_refusals(
    packages: dict[str, Path], scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seg"
    argv = ["-i", str(scan), "-o", str(out), "--modality", "mr"]
    assert segment([*argv, "-m", str(packages["zip"])]) == 0
    assert (out / "mr.nii.gz").is_file()
    broken = tmp_path / "broken"
    shutil.copytree(packages["pkg0"], broken)
    (broken / WEIGHTS).unlink()
    assert segment([*argv, "-m", str(broken), "--overwrite"]) == 2
    assert "models/model.pt is missing" in capsys.readouterr().err
    assert segment([*argv, "-m", str(tmp_path / "nothing")]) == 2
    assert "no such model package" in capsys.readouterr().err
    assert segment([*argv[:-1], "xr", "-m", str(packages["pkg0"])]) == 2
    assert "--modality xr is not one of them" in capsys.readouterr().err
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(scan, twin / scan.name)
    assert (
        segment(
            [
                "-i",
                str(scan),
                str(twin),
                "-o",
                str(tmp_path / "o2"),
                "-m",
                str(packages["pkg0"]),
                "--modality",
                "mr",
            ]
        )
        == 2
    )
    assert "would both be written as mr.nii.gz" in capsys.readouterr().err
    # an untrained checkpoint is never exported
    state = torch.load(packages["ckpt0"], weights_only=False)
    state["global_step"] = 0
    untrained = packages["ckpt0"].with_name("untrained.ckpt")
    torch.save(state, untrained)
    assert export(["--ckpt", str(untrained), "--out", str(tmp_path / "u")]) == 2
    assert "untrained" in capsys.readouterr().err


def test_scans_far_from_the_training_fingerprint_warn(
    packages: dict[str, Path],
    scan: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = nib.load(scan)
    affine = image.affine.copy()
    affine[:3, :3] *= 8.0  # 8x the voxel spacing: a field of view far beyond training
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), tmp_path / "huge.nii.gz")
    assert (
        segment(
            [
                "-i",
                str(tmp_path / "huge.nii.gz"),
                "-o",
                str(tmp_path / "o"),
                "-m",
                str(packages["pkg0"]),
                "--modality",
                "mr",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "voxel spacing" in err and "far outside the training range" in err
    assert "label map" not in err
    # a label file given as a scan (e.g. a whole dataset folder passed to -i)
    (case,) = load_dataset(tiny_dataset).cases_for("mr", "test")
    argv = ["-i", str(case.label), "-o", str(tmp_path / "l"), "-m", str(packages["pkg0"])]
    assert segment([*argv, "--modality", "mr"]) == 0
    assert "holds only 5 distinct whole values: a label map or mask" in capsys.readouterr().err


def test_dicom_series_input(packages: dict[str, Path], scan: Path, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    volume = sitk.ReadImage(str(scan))
    volume = sitk.Cast(volume, sitk.sitkInt16)
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        piece = volume[:, :, k : k + 1]
        piece.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        piece.SetMetaData("0020|0013", str(k + 1))
        piece.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(series / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    out = tmp_path / "seg"
    assert (
        segment(
            ["-i", str(series), "-o", str(out), "-m", str(packages["pkg0"]), "--modality", "mr"]
        )
        == 0
    )
    written = nib.load(out / "series.nii.gz")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    from ummkd.data.importers.common import simpleitk_to_ras

    array, affine = simpleitk_to_ras(reader.Execute(), series)
    assert written.shape == array.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= set(range(5))


def test_postprocessing_keeps_the_largest_component_where_it_helps() -> None:
    ref = np.zeros((20, 20, 4), np.uint8)
    ref[2:8, 2:8] = 1
    ref[12:18, 12:18] = 2
    pred = ref.copy()
    pred[15:17, 2:4] = 1  # a spurious far-away blob of class 1
    pred[1:3, 15:17] = 2  # ... and of class 2, but class 2's true organ is split in the reference
    ref[1:3, 15:17] = 2
    chosen = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], ["bg", "liver", "spleen"])
    assert chosen == ["liver"]
