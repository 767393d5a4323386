from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tests.data.conftest import AFFINE, SHAPE, label_volume, write_nifti
from ummkd.data.dataset_spec import (
    DatasetSpecError,
    DatasetValidationError,
    Problem,
    check_dataset,
    load_dataset,
    remap_labels,
    summarize_dataset,
    validate_dataset,
    write_dataset_json,
)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ ummkd format
def test_load_ummkd_dataset(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    assert spec == load_dataset(tiny_dataset / "dataset.json")
    assert spec.name == "tiny" and spec.dim == 3
    assert spec.num_classes == 5
    assert spec.class_names == ["background", "liver", "kidney_right", "kidney_left", "spleen"]
    assert spec.modality_names == ["ct", "mr"]
    ct = spec.modalities["ct"]
    assert ct.normalization == "ct" and ct.window == (-125.0, 275.0)
    assert ct.label_map == {6: 1, 2: 2, 3: 3, 1: 4}
    assert spec.modalities["mr"].label_map is None and spec.modalities["mr"].window is None
    assert [c.id for c in spec.cases_for("ct", "train")] == ["ct_0"]
    assert [c.id for c in spec.cases_for("mr", "val")] == ["mr_1"]
    assert [c.id for c in spec.cases_for("ct", "test")] == ["ct_2"]
    assert [c.id for c in spec.cases_for("mr", "all")] == ["mr_0", "mr_1", "mr_2"]
    case = spec.cases_for("ct", "train")[0]
    assert case.image == tiny_dataset / "ct" / "image_0.nii.gz"
    assert case.label == tiny_dataset / "ct" / "label_0.nii.gz"
    assert spec.splits is not None and spec.splits.source == tiny_dataset / "splits.json"


def test_cases_for_errors(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    with pytest.raises(DatasetSpecError, match=r"fold 3 does not exist.*1 fold"):
        spec.cases_for("ct", "train", fold=3)
    with pytest.raises(DatasetSpecError, match="unknown modality 'pet'"):
        spec.cases_for("pet", "all")
    with pytest.raises(ValueError, match="unknown split"):
        spec.cases_for("ct", "training")  # type: ignore[arg-type]
    _edit_json(tiny_dataset / "dataset.json", lambda d: d.pop("splits"))
    no_splits = load_dataset(tiny_dataset)
    assert len(no_splits.cases_for("ct", "all")) == 3
    with pytest.raises(DatasetSpecError, match=r"dataset\.json.*defines no splits"):
        no_splits.cases_for("ct", "train")


def test_select_modality_keeps_unknown_split_ids(tiny_dataset: Path) -> None:
    _edit_json(tiny_dataset / "splits.json", lambda d: d["test"].append("typo"))
    spec = load_dataset(tiny_dataset, modality="mr")
    assert spec.modality_names == ["mr"]
    assert {c.modality for c in spec.cases} == {"mr"}
    assert spec.splits is not None
    assert spec.splits.folds[0].train == ("mr_0",)
    assert spec.splits.test == ("mr_2", "typo")
    assert any("'typo'" in str(p) for p in validate_dataset(spec, deep=False))
    with pytest.raises(DatasetSpecError, match="unknown modality 'pet'"):
        load_dataset(tiny_dataset, modality="pet")


def test_inline_and_nnunet_style_splits(tiny_dataset: Path) -> None:
    folds = [{"train": ["ct_0"], "val": ["ct_1"]}, {"train": ["ct_1"], "val": ["ct_0"]}]
    (tiny_dataset / "splits.json").write_text(json.dumps(folds))
    spec = load_dataset(tiny_dataset)
    assert spec.splits is not None and len(spec.splits.folds) == 2 and spec.splits.test == ()
    assert [c.id for c in spec.cases_for("ct", "train", fold=1)] == ["ct_1"]
    _edit_json(tiny_dataset / "dataset.json", lambda d: d.update(splits={"folds": folds}))
    assert load_dataset(tiny_dataset).splits.source is None  # type: ignore[union-attr]


SCHEMA_ERRORS = {
    "normalization": (
        lambda d: d["modalities"]["mr"].update(normalization="minmax"),
        "normalization 'minmax' is not one of",
    ),
    "labels": (
        lambda d: d.update(labels={"background": 0, "liver": 1, "spleen": 3}),
        r"contiguous 0\.\.2.*\[0, 1, 3\]",
    ),
    "case modality": (
        lambda d: d["cases"][0].update(modality="pet"),
        r"cases\[0\] \('ct_0'\): unknown modality 'pet'",
    ),
    "duplicate id": (
        lambda d: d["cases"][1].update(id="ct_0"),
        r"cases\[1\]: duplicate case id 'ct_0'",
    ),
    "case key typo": (lambda d: d["cases"][0].update(lable="x"), r"unknown key\(s\) \['lable'\]"),
    "window on mr": (lambda d: d["modalities"]["mr"].update(window=[0, 1]), "only applies"),
    "bad window": (lambda d: d["modalities"]["ct"].update(window=[5, 1]), "lo < hi"),
    "label map target": (
        lambda d: d["modalities"]["ct"]["label_map"].update({"9": 7}),
        r"maps '9' to 7, which is not a shared label id 0\.\.4",
    ),
    "label map key": (
        lambda d: d["modalities"]["ct"]["label_map"].update({"liver": 1}),
        "label_map key 'liver' is not an integer",
    ),
    "dim": (lambda d: d.update(dim=4), "'dim' must be 2 or 3"),
    "splits file": (lambda d: d.update(splits="nope.json"), r"nope\.json does not exist"),
    "missing key": (lambda d: d.pop("cases"), r"missing key\(s\) \['cases'\]"),
}


@pytest.mark.parametrize("kind", list(SCHEMA_ERRORS))
def test_schema_errors_name_the_file(tiny_dataset: Path, kind: str) -> None:
    edit, pattern = SCHEMA_ERRORS[kind]
    _edit_json(tiny_dataset / "dataset.json", edit)
    with pytest.raises(DatasetSpecError, match=pattern) as info:
        load_dataset(tiny_dataset)
    assert str(info.value).startswith(str(tiny_dataset / "dataset.json"))


def test_bad_json_reports_line_number(tiny_dataset: Path) -> None:
    (tiny_dataset / "dataset.json").write_text('{\n  "name": "x",\n  "labels": {,}\n}\n')
    with pytest.raises(DatasetSpecError, match=r"dataset\.json: invalid JSON at line 3"):
        load_dataset(tiny_dataset)


def test_bad_splits_entries(tiny_dataset: Path) -> None:
    (tiny_dataset / "splits.json").write_text(json.dumps({"folds": [{"train": [1, 2], "val": []}]}))
    with pytest.raises(DatasetSpecError, match=r"splits\.json: folds\[0\]\.train must be a list"):
        load_dataset(tiny_dataset)
    (tiny_dataset / "splits.json").write_text(json.dumps({"folds": [], "tset": []}))
    with pytest.raises(DatasetSpecError, match=r"unknown splits key\(s\) \['tset'\]"):
        load_dataset(tiny_dataset)


def test_missing_and_unrecognized_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetSpecError, match=r"dataset\.json: not found"):
        load_dataset(tmp_path)
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(DatasetSpecError, match="unrecognized dataset description"):
        load_dataset(tmp_path / "other.json")


# ----------------------------------------------------------------------------------- nnU-Net raw
def _nnunet_dataset(root: Path, channels: dict[str, str]) -> Path:
    for case in ("abd_001", "abd_002", "abd_003"):
        for index in range(len(channels)):
            image = np.zeros(SHAPE, np.float32)
            write_nifti(root / "imagesTr" / f"{case}_{index:04d}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label_volume([1, 2]))
    header = {
        "channel_names": channels,
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(header))
    return root


def test_load_nnunet_raw_dataset(tmp_path: Path) -> None:
    root = _nnunet_dataset(tmp_path / "Dataset001_Abd", {"0": "CT"})
    spec = load_dataset(root)
    assert spec.modality_names == ["ct"]
    assert spec.modalities["ct"].normalization == "ct"
    assert spec.class_names == ["background", "liver", "spleen"]
    assert [c.id for c in spec.cases] == ["abd_001", "abd_002", "abd_003"]
    assert spec.cases[0].image == root / "imagesTr" / "abd_001_0000.nii.gz"
    assert spec.cases[0].label == root / "labelsTr" / "abd_001.nii.gz"
    assert spec.splits is None and spec.dim == 3
    assert validate_dataset(spec) == []
    folds = [{"train": ["abd_001", "abd_002"], "val": ["abd_003"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    spec = load_dataset(root, modality="ct_venous", fmt="nnunet")
    assert spec.modality_names == ["ct_venous"]
    assert [c.id for c in spec.cases_for("ct_venous", "val")] == ["abd_003"]


def test_load_nnunet_multichannel_needs_modality(tmp_path: Path) -> None:
    root = _nnunet_dataset(tmp_path / "Dataset002_MR", {"0": "T1", "1": "T2"})
    with pytest.raises(DatasetSpecError, match="choose one with modality="):
        load_dataset(root)
    spec = load_dataset(root, modality="t2")
    assert spec.modalities["t2"].normalization == "mr"
    assert spec.cases[0].image.name == "abd_001_0001.nii.gz"


def test_load_nnunet_rejects_region_labels(tmp_path: Path) -> None:
    root = _nnunet_dataset(tmp_path / "Dataset003", {"0": "CT"})
    _edit_json(root / "dataset.json", lambda d: d["labels"].update(both=[1, 2]))
    with pytest.raises(DatasetSpecError, match="region-based labels are not supported"):
        load_dataset(root)


# ------------------------------------------------------------------------------- Decathlon list
def _decathlon(root: Path, with_folds: bool = False) -> Path:
    items = []
    for i in range(4):
        write_nifti(root / "imagesTr" / f"liver_{i}.nii.gz", np.zeros(SHAPE, np.float32))
        write_nifti(root / "labelsTr" / f"liver_{i}.nii.gz", label_volume([1]))
        item = {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
        if with_folds:
            item["fold"] = i % 2
        items.append(item)
    write_nifti(root / "imagesTs" / "liver_9.nii.gz", np.zeros(SHAPE, np.float32))
    datalist = {
        "name": "Task03_Liver",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "liver"},
        "training": items if with_folds else items[:3],
        "test": ["./imagesTs/liver_9.nii.gz"],
    }
    if not with_folds:
        datalist["validation"] = items[3:]
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root / "datalist.json"


def test_load_decathlon_datalist(tmp_path: Path) -> None:
    path = _decathlon(tmp_path / "task")
    spec = load_dataset(path)
    assert spec.modality_names == ["mri"] and spec.modalities["mri"].normalization == "mr"
    assert spec.labels == {"background": 0, "liver": 1}
    assert [c.id for c in spec.cases_for("mri", "train")] == ["liver_0", "liver_1", "liver_2"]
    assert [c.id for c in spec.cases_for("mri", "val")] == ["liver_3"]
    (test_case,) = spec.cases_for("mri", "test")
    assert test_case.label is None
    assert test_case.image == tmp_path / "task" / "imagesTs" / "liver_9.nii.gz"
    assert validate_dataset(spec) == []
    assert load_dataset(path, modality="MRI").modality_names == ["MRI"]


def test_load_decathlon_folds_and_errors(tmp_path: Path) -> None:
    path = _decathlon(tmp_path / "task", with_folds=True)
    spec = load_dataset(path, fmt="decathlon")
    assert spec.splits is not None and len(spec.splits.folds) == 2
    assert [c.id for c in spec.cases_for("mri", "val", fold=1)] == ["liver_1", "liver_3"]
    _edit_json(path, lambda d: d.pop("labels"))
    with pytest.raises(DatasetSpecError, match=r"datalist\.json: the datalist has no 'labels'"):
        load_dataset(path)


# ---------------------------------------------------------------------------------- label maps
def test_remap_labels_lookup_table() -> None:
    source = np.array([[0, 6, 2, 3], [1, 4, 100, -5]], dtype=np.int16)
    out = remap_labels(source, {6: 1, 2: 2, 3: 3, 1: 4}, 5)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [4, 0, 0, 0]])
    assert out.dtype == np.uint8 and out.shape == source.shape


def test_remap_labels_identity_and_floats() -> None:
    np.testing.assert_array_equal(remap_labels(np.array([0.0, 2.0, 4.0]), None, 5), [0, 2, 4])
    with pytest.raises(ValueError, match=r"label values \[7\] are not shared ids 0\.\.4"):
        remap_labels(np.array([0, 7], np.uint8), None, 5)
    with pytest.raises(ValueError, match="non-integer"):
        remap_labels(np.array([0.0, 0.5]), {1: 1}, 5)
    with pytest.raises(ValueError, match="targets"):
        remap_labels(np.array([0, 1]), {1: 9}, 5)


# ----------------------------------------------------------------------------------- validation
def test_clean_dataset_validates(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    assert validate_dataset(spec) == []
    check_dataset(spec)


def _truncate_gz(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite_label(root: Path, name: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    write_nifti(root / name, array, affine)


SHIFTED = AFFINE.copy()
SHIFTED[0, 3] += 5.0

PROBLEMS = {
    "missing image": (
        lambda r: (r / "ct/image_0.nii.gz").unlink(),
        "ct/image_0.nii.gz",
        "not found",
    ),
    "missing label": (
        lambda r: (r / "mr/label_1.nii.gz").unlink(),
        "mr/label_1.nii.gz",
        "not found",
    ),
    "corrupt image": (
        lambda r: _truncate_gz(r / "ct/image_1.nii.gz"),
        "ct/image_1.nii.gz",
        "cannot read the image of case 'ct_1'",
    ),
    "shape mismatch": (
        lambda r: _overwrite_label(r, "mr/label_0.nii.gz", label_volume([1, 2, 3, 4], (8, 8, 5))),
        "mr/label_0.nii.gz",
        r"label shape \(8, 8, 5\) differs from the image shape \(8, 8, 4\)",
    ),
    "affine mismatch": (
        lambda r: _overwrite_label(r, "mr/label_0.nii.gz", label_volume([1, 2, 3, 4]), SHIFTED),
        "mr/label_0.nii.gz",
        "label affine differs from the image affine by up to 5",
    ),
    "invalid ids": (
        lambda r: _overwrite_label(r, "mr/label_2.nii.gz", label_volume([1, 2, 3, 4, 9])),
        "mr/label_2.nii.gz",
        r"label values \[9\] are not shared ids 0\.\.4 and modality 'mr' has no label_map",
    ),
    "non-integer labels": (
        lambda r: _overwrite_label(
            r, "mr/label_2.nii.gz", label_volume([1, 2, 3, 4]).astype(np.float32) * 0.5
        ),
        "mr/label_2.nii.gz",
        r"non-integer label values \[0\.5, 1\.5\]",
    ),
    "map key never occurs": (
        lambda r: _edit_json(
            r / "dataset.json", lambda d: d["modalities"]["ct"]["label_map"].update({"60": 1})
        ),
        "dataset.json",
        r"label_map source value\(s\) \[60\] occur in none of its 3 label file\(s\)",
    ),
    "modality without cases": (
        lambda r: _edit_json(
            r / "dataset.json", lambda d: d["modalities"].update(pet={"normalization": "none"})
        ),
        "dataset.json",
        "modality 'pet' has no cases",
    ),
    "train/val overlap": (
        lambda r: _edit_json(r / "splits.json", lambda d: d["folds"][0]["val"].append("ct_0")),
        "splits.json",
        r"\['ct_0'\] are in both folds\[0\]\.train and folds\[0\]\.val",
    ),
    "train/test overlap": (
        lambda r: _edit_json(r / "splits.json", lambda d: d["test"].append("mr_0")),
        "splits.json",
        r"\['mr_0'\] are in both folds\[0\]\.train and test",
    ),
    "unknown split id": (
        lambda r: _edit_json(r / "splits.json", lambda d: d["folds"][0]["train"].append("ct_99")),
        "splits.json",
        r"folds\[0\]\.train: case id\(s\) \['ct_99'\] are not in dataset\.json",
    ),
    "unlabeled training case": (
        lambda r: _edit_json(r / "dataset.json", lambda d: d["cases"][0].pop("label")),
        "splits.json",
        r"folds\[0\]\.train: case\(s\) \['ct_0'\] have no label",
    ),
    "2D data in 3D config": (
        lambda r: write_nifti(r / "mr/image_1.nii.gz", np.zeros((8, 8, 1), np.float32)),
        "mr/image_1.nii.gz",
        r"2D image \(shape \(8, 8, 1\)\) but 3D data is expected",
    ),
}


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_each_problem_names_its_file(tiny_dataset: Path, kind: str) -> None:
    break_it, file, pattern = PROBLEMS[kind]
    break_it(tiny_dataset)
    problems = validate_dataset(load_dataset(tiny_dataset))
    matching = [p for p in problems if p.path == tiny_dataset / file]
    assert matching, problems
    messages = [p.message for p in matching]
    assert any(re.search(pattern, m) for m in messages), f"no {pattern!r} in {messages}"
    for problem in problems:
        line = str(problem)
        assert "\n" not in line and line.startswith(f"{problem.path}: ")
    with pytest.raises(DatasetValidationError) as info:
        check_dataset(load_dataset(tiny_dataset))
    assert all(str(p) in str(info.value) for p in problems)


def test_shallow_validation_skips_reading(tiny_dataset: Path) -> None:
    _truncate_gz(tiny_dataset / "ct/image_1.nii.gz")
    (tiny_dataset / "mr/label_0.nii.gz").unlink()
    spec = load_dataset(tiny_dataset)
    shallow = validate_dataset(spec, deep=False)
    assert shallow == [
        Problem(tiny_dataset / "mr/label_0.nii.gz", "label of case 'mr_0' not found")
    ]
    assert len(validate_dataset(spec)) == 2


def test_expected_dim(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    problems = validate_dataset(spec, expected_dim=2)
    assert problems[0].path == tiny_dataset / "dataset.json"
    assert "declares dim 3 but dim 2 is expected" in problems[0].message
    assert sum("3D volume (shape (8, 8, 4)) but 2D data" in p.message for p in problems) == 6


# -------------------------------------------------------------------------------------- summary
def _render(table) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_summary_table(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    text = _render(summarize_dataset(spec))
    ct_row = next(line for line in text.splitlines() if "│ ct " in line)
    assert "3 (3)" in ct_row and "1/1/1" in ct_row and "8x8x4" in ct_row and "1.5x1.5x2.5" in ct_row
    assert "[7]" in ct_row  # the dropped source value
    # CT labels: 5 rows of 8 voxels are non-zero (6, 2, 3, 1 mapped; 7 dropped) out of 256.
    assert f"{100 * 8 / 256:.2f}" in ct_row and f"{100 * 224 / 256:.2f}" in ct_row
    shallow = _render(summarize_dataset(spec, deep=False))
    assert "ct" in shallow and "shape" not in shallow


# -------------------------------------------------------------------------------------- writing
def test_write_dataset_json_refuses_overwrite(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    before = (tiny_dataset / "dataset.json").read_text()
    with pytest.raises(FileExistsError, match=r"dataset\.json already exists.*overwrite=True"):
        write_dataset_json(tiny_dataset, spec)
    assert (tiny_dataset / "dataset.json").read_text() == before
    write_dataset_json(tiny_dataset, spec, overwrite=True)
    assert load_dataset(tiny_dataset) == spec
    assert not list(tiny_dataset.glob(".*tmp"))


def test_write_dataset_json_to_another_root(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = load_dataset(tiny_dataset)
    path = write_dataset_json(tmp_path / "elsewhere", spec)
    copy = load_dataset(path)
    assert [c.image.resolve() for c in copy.cases] == [c.image.resolve() for c in spec.cases]
    assert validate_dataset(copy) == []


def test_write_dataset_json_checks_schema_first(tmp_path: Path) -> None:
    bad = {"labels": {"background": 0}, "modalities": {"ct": {"normalization": "hu"}}, "cases": []}
    with pytest.raises(DatasetSpecError, match="normalization 'hu'"):
        write_dataset_json(tmp_path / "new", bad, {"folds": [], "test": []})
    assert not (tmp_path / "new").exists()
    with pytest.raises(DatasetSpecError, match=r"splits\.json: folds\[0\]"):
        write_dataset_json(tmp_path / "new", bad, [{"train": []}])
