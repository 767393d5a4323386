"""End-to-end tests of the ``ummkd`` CLI: fit -> test -> predict, configs, print_config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.lightning.conftest import FAST, TINY_2D, TINY_DRN
from ummkd.cli import main
from ummkd.data.dataset_spec import load_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _fit_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={root}",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_epochs=2",
        "--data.steps_per_epoch=3",
        "--trainer.log_every_n_steps=1",
        *FAST,
        *TINY_2D,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short ummkd training on the tiny dataset (shared by the round-trip tests)."""
    run_dir = tmp_path_factory.mktemp("runs") / "demo"
    main(_fit_args(tiny_dataset, run_dir))
    return run_dir


def test_fit_writes_checkpoints_config_and_metrics(trained_run: Path) -> None:
    last = list(trained_run.rglob("last.ckpt"))
    best = list(trained_run.rglob("best*.ckpt"))
    assert len(last) == 1 and len(best) == 1
    (config,) = trained_run.rglob("config.yaml")
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] == [
        "ModelCheckpoint",
        "ModelCheckpoint",
        "LearningRateMonitor",
        "ResultsReport",
        "ValidationImages",
    ]
    metrics = next(trained_run.rglob("metrics.csv")).read_text()
    for key in ("train/loss", "train/seg_ct", "train/seg_mr", "train/kd", "val/dice_ct"):
        assert key in metrics
    assert "val/dice_best" in metrics and "dataloader_idx" not in metrics
    ckpt = torch.load(last[0], map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["modalities"] == ["ct", "mr"] and hparams["num_classes"] == 5
    assert "tta" not in hparams and "sw_overlap" not in hparams
    norm_keys = [k for k in ckpt["state_dict"] if ".branches.mr." in k]
    assert norm_keys, "modality-specific norm parameters must be in the checkpoint"


def test_test_writes_report(trained_run: Path, tiny_dataset: Path) -> None:
    (best,) = trained_run.rglob("best*.ckpt")
    run_folder = best.parent.parent
    runs_before = sorted(p.name for p in trained_run.iterdir())
    fit_metrics = (run_folder / "metrics.csv").read_text()
    main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={trained_run}",
            "--ckpt_path=best",
            *FAST,
            *TINY_2D,
        ]
    )
    summaries = sorted(trained_run.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    summary = json.loads(summaries[-1].read_text())
    assert set(summary["modalities"]) == {"ct", "mr"}
    for stats in summary["modalities"].values():
        assert 0.0 <= stats["mean"]["dice"] <= 1.0
        assert set(stats["per_class"]) == {"liver", "kidney_right", "kidney_left", "spleen"}
        assert [c["id"] for c in stats["cases"]]
    assert (summaries[-1].parent / "results.md").is_file()
    assert (summaries[-1].parent / "dice.png").is_file()
    # the report lands in the run folder of the checkpoint it scored (its test/version_N
    # folder, with the call's metrics and config), no new run folder
    assert summaries[-1].parent == run_folder / "test" / "version_0"
    assert summary["checkpoint"] == str(best.resolve()) and summary["inference"]["tta"] is False
    assert sorted(p.name for p in trained_run.iterdir()) == runs_before
    assert (run_folder / "metrics.csv").read_text() == fit_metrics
    assert "test/" in (summaries[-1].parent / "metrics.csv").read_text()
    assert (run_folder / "config.yaml").is_file()
    assert (summaries[-1].parent / "config.yaml").is_file()


def _oblique_lps_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """An MR-like image with an oblique, non-RAS (LPS-like) affine."""
    angle = np.deg2rad(12.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.7, -1.9, 5.5])
    affine[:3, 3] = [120.0, 90.0, -40.0]
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * 300).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    """``main(args)`` exits with code 2 and one error line matching ``match`` on stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_predict_round_trip_keeps_geometry(
    trained_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    affine = _oblique_lps_image(inputs / "case_a.nii.gz", (45, 50, 9))
    out = tmp_path / "preds"
    args = [
        "predict",
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={tiny_dataset}",
        f"--trainer.default_root_dir={trained_run}",
        "--ckpt_path=last",
        f"--data.predict_images={inputs}/*.nii.gz",
        "--data.predict_modality=mr",
        "--data.orientation=RAS",
        "--data.spacing=[2.5,2.5,4.0]",
        f"--out={out}",
        "--save_probabilities=true",
        *FAST,
        *TINY_2D,
    ]
    main(args)
    written = nib.load(out / "case_a.nii.gz")
    assert written.shape == (45, 50, 9)
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(written.dataobj))) <= set(range(5))
    probs = nib.load(out / "case_a_probs.nii.gz")
    assert probs.shape == (45, 50, 9, 5)
    # an existing output is never replaced without --overwrite
    _refused(args, capsys, "exists; pass --overwrite")
    main([*args, "--overwrite=true"])
    # predictions may not be written next to the inputs
    _refused(
        [a if not a.startswith("--out=") else f"--out={inputs}" for a in args],
        capsys,
        "holds the input",
    )


def _predict_args(run_dir: Path, root: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--config",
        str(CONFIGS / "demo.yaml"),
        f"--data.root={root}",
        f"--trainer.default_root_dir={run_dir}",
        "--ckpt_path=last",
        f"--data.predict_images={inputs}/*.nii.gz",
        "--data.predict_modality=mr",
        "--data.spacing=[2.5,2.5,4.0]",
        f"--out={out}",
        "--save_probabilities=true",
        *FAST,
        *TINY_2D,
        *extra,
    ]


def _probabilities_in(path: Path, reference: nib.Nifti1Image) -> np.ndarray:
    """A probability map written for a reoriented copy, put back in ``reference``'s voxel order."""
    image = nib.load(path)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine),
        nib.orientations.io_orientation(reference.affine),
    )
    return nib.orientations.apply_orientation(np.asarray(image.dataobj), transform)


def test_predictions_do_not_depend_on_the_stored_voxel_order(
    trained_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The canonical orientation (data default RAS) makes LPS/PLI/oblique copies agree."""
    rng = np.random.default_rng(1)
    ras = np.diag([1.6, 1.8, 5.0, 1.0])
    ras[:3, 3] = [-30.0, -40.0, 10.0]
    original = nib.Nifti1Image((rng.random((40, 44, 9)) * 300).astype(np.int16), ras)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(original, inputs / "ras.nii.gz")
    for codes in ("LPS", "PLI"):
        ornt = nib.orientations.axcodes2ornt(codes)
        nib.save(original.as_reoriented(ornt), inputs / f"{codes.lower()}.nii.gz")
    angle = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    nib.save(nib.Nifti1Image(original.dataobj, rotation @ ras), inputs / "oblique.nii.gz")

    out = tmp_path / "canonical"
    main(_predict_args(trained_run, tiny_dataset, inputs, out))
    reference = np.asarray(nib.load(out / "ras_probs.nii.gz").dataobj)
    labels = reference.argmax(-1)
    for name in ("lps", "pli", "oblique"):
        probs = _probabilities_in(out / f"{name}_probs.nii.gz", original)
        assert probs.shape == reference.shape
        np.testing.assert_allclose(probs, reference, atol=1e-5, err_msg=name)
        written = nib.load(out / f"{name}.nii.gz")
        assert written.shape == nib.load(inputs / f"{name}.nii.gz").shape
        assert np.mean(probs.argmax(-1) == labels) >= 0.99
    # Control: without the canonical orientation the network sees another voxel order.
    stored = tmp_path / "as_stored"
    main(_predict_args(trained_run, tiny_dataset, inputs, stored, "--data.orientation=null"))
    differs = _probabilities_in(stored / "pli_probs.nii.gz", original)
    assert np.abs(differs - np.asarray(nib.load(stored / "ras_probs.nii.gz").dataobj)).max() > 1e-3


def test_test_scores_equal_predict_plus_evaluate_on_the_stored_grid(
    trained_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`ummkd test` on a resampled, anisotropic setting = predict + evaluate, per case."""
    resampled = ["--data.spacing=[2.5,2.0,4.0]"]
    main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={trained_run}",
            "--ckpt_path=last",
            *FAST,
            *TINY_2D,
            *resampled,
        ]
    )
    summaries = sorted(trained_run.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    tested = json.loads(summaries[-1].read_text())
    assert tested["grid"] == "native"
    (case,) = tested["modalities"]["mr"]["cases"]  # labels stored with the shared ids
    (mr_test,) = load_dataset(tiny_dataset).cases_for("mr", "test")
    assert case["id"] == mr_test.id
    inputs, refs, preds = tmp_path / "in", tmp_path / "ref", tmp_path / "pred"
    inputs.mkdir()
    refs.mkdir()
    (inputs / "case.nii.gz").write_bytes(mr_test.image.read_bytes())
    (refs / "case.nii.gz").write_bytes(mr_test.label.read_bytes())
    main(
        [
            *_predict_args(trained_run, tiny_dataset, inputs, preds)[:-4],
            *resampled,
            "--save_probabilities=false",
            *FAST,
            *TINY_2D,
        ]
    )
    from ummkd.evaluation.commands import main as evaluate

    assert (
        evaluate(
            [
                "--pred",
                str(preds),
                "--ref",
                str(refs),
                "--out",
                str(tmp_path / "e"),
                "--labels",
                str(tiny_dataset / "dataset.json"),
                "--modality",
                "mr",
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "e" / "summary.json").read_text())
    (other,) = evaluated["modalities"]["mr"]["cases"]
    for name, values in case["metrics"].items():
        for metric, value in values.items():
            theirs = other["metrics"][name][metric]
            if value is None:
                assert theirs is None, (name, metric)
            else:
                assert theirs == pytest.approx(value, abs=1e-9), (name, metric)


def test_fit_resumes_from_last(trained_run: Path, tiny_dataset: Path) -> None:
    main(
        [
            *_fit_args(tiny_dataset, trained_run),
            "--trainer.max_epochs=3",
            "--ckpt_path=last",
        ]
    )
    newest = max(trained_run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    ckpt = torch.load(newest, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2  # resumed after epoch index 1, trained one more


def test_print_config_round_trip(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    args = _fit_args(tiny_dataset, tmp_path / "run", "--model.kd_weight=0.3")
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["kd_weight"] == 0.3
    assert config["data"]["root"] == str(tiny_dataset)
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    again = yaml.safe_load(capsys.readouterr().out)
    assert again == config


def _config_cases() -> list[tuple[str, list[str]]]:
    abd = str(CONFIGS / "abdominal_2d" / "ummkd.yaml")
    cases = [("demo", ["--config", str(CONFIGS / "demo.yaml")])]
    cases.append(("abdominal_2d/ummkd", ["--config", abd, *TINY_DRN]))
    for variant in ("separate_norm", "joint", "single_ct", "single_mr", "x_shape", "y_shape"):
        overlay = str(CONFIGS / "abdominal_2d" / f"{variant}.yaml")
        cases.append((f"abdominal_2d/{variant}", ["--config", abd, "--config", overlay, *TINY_DRN]))
    cpu_scale = str(CONFIGS / "abdominal_2d" / "cpu.yaml")
    cases.append(("abdominal_2d/cpu", ["--config", abd, "--config", cpu_scale]))
    for variant in ("x_shape", "y_shape"):
        overlays = [
            str(CONFIGS / "abdominal_2d" / name)
            for name in (f"{variant}.yaml", f"cpu_{variant}.yaml")
        ]
        args = ["--config", abd, "--config", overlays[0], "--config", cpu_scale]
        cases.append((f"abdominal_2d/cpu_{variant}", [*args, "--config", overlays[1]]))
    gpu_short = str(CONFIGS / "abdominal_2d" / "gpu_short.yaml")  # bf16, accelerator set to cpu
    cases.append(
        ("abdominal_2d/gpu_short", ["--config", abd, "--config", cpu_scale, "--config", gpu_short])
    )
    cardiac = str(CONFIGS / "cardiac_2d" / "ummkd.yaml")
    cases.append(("cardiac_2d/ummkd", ["--config", cardiac, *TINY_DRN]))
    for profile in ("cpu", "debug"):
        cases.append(
            (
                f"trainer/{profile}",
                [
                    "--config",
                    str(CONFIGS / "demo.yaml"),
                    "--config",
                    str(CONFIGS / "trainer" / f"{profile}.yaml"),
                ],
            )
        )
    return cases


@pytest.mark.parametrize(("name", "config_args"), _config_cases(), ids=lambda v: v)
def test_every_2d_config_runs_fast_dev_run(
    name: str, config_args: list[str], tiny_dataset: Path, tmp_path: Path
) -> None:
    main(
        [
            "fit",
            *config_args,
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            *FAST,
            *TINY_2D,
            "--data.augmentation=null",
        ]
    )


def test_abdominal_3d_config_runs_fast_dev_run(tiny_dataset: Path, tmp_path: Path) -> None:
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "abdominal_3d" / "ummkd.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            "--model.network.init_args.base_channels=4",
            "--data.patch_size=[32,32,8]",
            "--data.spacing=null",
            *FAST,
        ]
    )


def test_gpu_profile_runs_bf16_on_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    """configs/trainer/gpu.yaml with the accelerator swapped to CPU: bf16-mixed trains finitely."""
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            "--config",
            str(CONFIGS / "trainer" / "gpu.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            *FAST,
            *TINY_2D,
        ]
    )


def test_bad_modality_is_a_clear_error(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(_fit_args(tiny_dataset, tmp_path, "--data.modalities=[ct,pet]"), capsys, "pet")


def test_validation_images_and_kd_heatmaps_are_logged(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(trained_run.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    tags: set[str] = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["images"])
    for modality in ("ct", "mr"):
        assert f"val_images/{modality}_1" in tags
        assert f"kd_distributions/{modality}" in tags


@pytest.mark.slow
def test_compiled_network_trains_with_modality_switching(tiny_dataset: Path, tmp_path: Path):
    """--model.compile true: torch.compile around the network, both modalities per step."""
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--data.root={tiny_dataset}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=2",
            "--model.compile=true",
            *FAST,
            *TINY_2D,
        ]
    )
