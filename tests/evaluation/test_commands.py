from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from ummkd.evaluation.commands import main, read_labels
from ummkd.evaluation.metrics import case_metrics, empty_mask_penalty

SPACING = (1.5, 1.5, 3.0)
SHAPE = (12, 10, 8)
AFFINE = np.diag([*SPACING, 1.0])


def _save(path, labels, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)


def _reference(case):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2 + case : 7 + case, 2:7, 2:6] = 1
    if case != 1:  # case 1 has no spleen
        labels[8:11, 6:9, 3:7] = 2
    return labels


@pytest.fixture
def dataset(tmp_path):
    ref_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    refs, preds = {}, {}
    for case in range(3):
        refs[f"case_{case}"] = _reference(case)
        preds[f"case_{case}"] = np.roll(refs[f"case_{case}"], case, axis=2)
        _save(ref_dir / f"case_{case}.nii.gz", refs[f"case_{case}"])
        _save(pred_dir / f"case_{case}.nii.gz", preds[f"case_{case}"])
    labels = tmp_path / "dataset.json"
    labels.write_text(
        json.dumps(
            {
                "labels": {"background": 0, "liver": 1, "spleen": 2},
                "cases": [
                    {"id": "case_0", "modality": "ct"},
                    {"id": "case_1", "modality": "mr"},
                ],
            }
        )
    )
    return {"ref": ref_dir, "pred": pred_dir, "labels": labels, "refs": refs, "preds": preds}


def _run(dataset, *extra):
    return main(["--pred", str(dataset["pred"]), "--ref", str(dataset["ref"]), *extra])


def test_end_to_end_with_labels(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        _run(dataset, "--labels", str(dataset["labels"]), "--modality", "pet", "--out", str(out))
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["dice.png", "results.md", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["liver", "spleen"]
    # Modality from the dataset's cases, --modality for the unlisted case.
    assert {m: [c["id"] for c in r["cases"]] for m, r in summary["modalities"].items()} == {
        "ct": ["case_0"],
        "mr": ["case_1"],
        "pet": ["case_2"],
    }
    for modality, case_id in (("ct", "case_0"), ("mr", "case_1"), ("pet", "case_2")):
        expected = case_metrics(
            dataset["preds"][case_id], dataset["refs"][case_id], SPACING, ["bg", "liver", "spleen"]
        )
        got = summary["modalities"][modality]["cases"][0]["metrics"]
        for name in ("liver", "spleen"):
            for metric, value in expected[name].items():
                assert (
                    (got[name][metric] is None)
                    if math.isnan(value)
                    else got[name][metric] == pytest.approx(value)
                )
    assert summary["modalities"]["ct"]["cases"][0]["metrics"]["liver"]["dice"] == 1.0
    assert summary["modalities"]["mr"]["per_class"]["spleen"]["n"] == 0
    printed = capsys.readouterr().out
    assert "liver" in printed and "Report written to" in printed


def test_default_out_dir_and_classes_from_values(dataset):
    assert _run(dataset) == 0
    out = dataset["pred"].parent / "preds_eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["label_1", "label_2"]
    assert list(summary["modalities"]) == ["all"]
    assert summary["modalities"]["all"]["n_cases"] == 3


def test_existing_report_is_replaced_only_with_overwrite(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    assert _run(dataset, "--out", str(out)) == 0
    (out / "results.md").write_text("kept")
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert _run(dataset, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "results.md exists; pass --overwrite" in err
    assert (out / "results.md").read_text() == "kept" and not (out / "summary.json").exists()
    assert _run(dataset, "--out", str(out), "--overwrite") == 0
    assert (out / "summary.json").is_file() and (out / "results.md").read_text() != "kept"


def test_mismatched_shape_is_an_error_naming_the_file(dataset, capsys):
    _save(dataset["pred"] / "case_1.nii.gz", np.zeros((12, 10, 9)))
    assert _run(dataset) == 2
    err = capsys.readouterr().err
    assert "case_1.nii.gz" in err and "shape" in err
    assert not (dataset["pred"].parent / "preds_eval").exists()


def test_mismatched_affine_is_an_error_naming_the_file(dataset, capsys):
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    _save(dataset["pred"] / "case_2.nii.gz", dataset["preds"]["case_2"], shifted)
    assert _run(dataset) == 2
    err = capsys.readouterr().err
    assert "case_2.nii.gz" in err and "affine" in err


def test_missing_prediction_fails_unless_allowed(dataset, tmp_path, capsys):
    (dataset["pred"] / "case_0.nii.gz").unlink()
    assert _run(dataset) == 2
    assert "case_0.nii.gz" in capsys.readouterr().err
    out = tmp_path / "allowed"
    assert (
        _run(dataset, "--allow-missing", "--out", str(out), "--labels", str(dataset["labels"])) == 0
    )
    liver = json.loads((out / "summary.json").read_text())["modalities"]["ct"]["cases"][0][
        "metrics"
    ]["liver"]
    penalty = empty_mask_penalty(SHAPE, SPACING)
    assert liver == {"dice": 0.0, "assd": pytest.approx(penalty), "hd95": pytest.approx(penalty)}


def test_prediction_without_reference_is_an_error(dataset, capsys):
    _save(dataset["pred"] / "extra.nii.gz", np.zeros(SHAPE))
    assert _run(dataset) == 2
    assert "extra.nii.gz" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["ref", "pred"])
def test_refuses_to_write_into_the_inputs(dataset, capsys, where):
    before = sorted(p.name for p in dataset[where].iterdir())
    assert _run(dataset, "--out", str(dataset[where] / "report")) == 2
    assert "refusing" in capsys.readouterr().err
    assert sorted(p.name for p in dataset[where].iterdir()) == before


def test_argument_errors_return_exit_codes(capsys):
    assert main(["--pred", "x"]) == 2
    assert main(["--help"]) == 0
    assert "--allow-missing" in capsys.readouterr().out


def test_read_labels_accepts_nnunet_v1_and_rejects_regions(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    assert read_labels(v1) == ({0: "background", 1: "liver"}, {})
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"labels": {"background": 0, "tumor": [1, 2]}}))
    assert (
        main(
            [
                "--pred",
                str(tmp_path),
                "--ref",
                str(tmp_path),
                "--labels",
                str(regions),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
