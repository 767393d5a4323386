"""Tests of the importer helpers (common.py), the `pairs` importer and the registry/CLI wiring."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK

from ummkd.data.dataset_spec import check_dataset, load_dataset
from ummkd.data.importers import IMPORTERS
from ummkd.data.importers.common import (
    DatasetBuilder,
    DatasetImportError,
    natural_key,
    read_volume,
    remap_labels,
    seeded_split,
    split_counts,
)
from ummkd.data.importers.pairs import import_pairs, match_pairs, parse_label_map

ABDOMEN = ["liver", "kidney_right", "kidney_left", "spleen"]


# ------------------------------------------------------------------------------ shared helpers
def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below ``root`` (to prove inputs stay untouched)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_valid_dataset(out: Path) -> tuple[dict, dict]:
    """Check the output contract and return (dataset.json, splits.json)."""
    dataset = json.loads((out / "dataset.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert set(dataset) == {
        "name",
        "description",
        "dim",
        "labels",
        "modalities",
        "cases",
        "splits",
    }
    assert dataset["splits"] == "splits.json"
    ids = [case["id"] for case in dataset["cases"]]
    assert len(ids) == len(set(ids))
    assert len(splits["folds"]) == 1
    listed = splits["folds"][0]["train"] + splits["folds"][0]["val"] + splits["test"]
    assert sorted(listed) == sorted(ids)
    for case in dataset["cases"]:
        assert case["image"] == f"{case['modality']}/{case['id']}_image.nii.gz"
        assert case["label"] == f"{case['modality']}/{case['id']}_label.nii.gz"
        image, label = nib.load(out / case["image"]), nib.load(out / case["label"])
        assert label.get_data_dtype() == np.uint8
        assert image.get_data_dtype() in (np.uint8, np.int16, np.float32)
        assert image.shape == label.shape
        np.testing.assert_array_equal(image.affine, label.affine)
    check_dataset(load_dataset(out))  # the loader/validator of the dataset format agrees
    leftovers = [p.name for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    return dataset, splits


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


# ------------------------------------------------------------------------------------- common
def test_natural_key_orders_embedded_numbers() -> None:
    names = ["img10.nii.gz", "img2.nii.gz", "img1.nii.gz", "a.nii.gz"]
    assert sorted(names, key=natural_key) == [
        "a.nii.gz",
        "img1.nii.gz",
        "img2.nii.gz",
        "img10.nii.gz",
    ]


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, (0, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (10, (7, 1, 2)), (20, (14, 2, 4))],
)
def test_split_counts(n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n) == expected


def test_seeded_split_is_a_deterministic_partition() -> None:
    ids = [f"ct_{i}" for i in range(20)]
    first = seeded_split(ids, seed=3)
    assert first == seeded_split(list(reversed(ids)), seed=3)
    assert sorted(first.ids) == sorted(ids)
    assert (len(first.train), len(first.val), len(first.test)) == (14, 2, 4)
    assert seeded_split(ids, seed=4) != first
    assert seeded_split(ids, counts=(16, 4, 0)).test == ()
    with pytest.raises(DatasetImportError, match="do not add up"):
        seeded_split(ids, counts=(1, 1, 1))


def test_remap_labels_lookup_table_and_errors() -> None:
    label = np.array([[0, 1, 2], [3, 6, 7]], dtype=np.int16)
    out = remap_labels(label, {6: 1, 2: 2, 3: 3, 1: 4}, path="x")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 4, 2], [3, 1, 0]])
    # values outside the lookup-table range take the np.unique path
    wide = np.array([-5, 70000, 6], dtype=np.int32)
    np.testing.assert_array_equal(remap_labels(wide, {70000: 2, 6: 1}, path="x"), [0, 2, 1])
    np.testing.assert_array_equal(remap_labels(np.array([0.0, 2.0]), {2: 1}, path="x"), [0, 1])
    with pytest.raises(DatasetImportError, match=r"lab\.nii\.gz.*non-integer"):
        remap_labels(np.array([0.5]), {0: 0}, path="lab.nii.gz")
    with pytest.raises(DatasetImportError, match=r"unexpected label values \[7\]"):
        remap_labels(label, {i: i for i in range(7)}, path="x", strict=True)


def test_read_volume_simpleitk_geometry_matches_nibabel(tmp_path: Path) -> None:
    """Non-NIfTI files (SimpleITK, LPS) get the same RAS affine as NIfTI read by nibabel."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # SimpleITK order [z, y, x]
    image = SimpleITK.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    angle = np.deg2rad(20)
    image.SetDirection(
        (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    )
    SimpleITK.WriteImage(image, str(tmp_path / "a.mha"))
    SimpleITK.WriteImage(image, str(tmp_path / "a.nii.gz"))
    mha, mha_affine = read_volume(tmp_path / "a.mha")
    nii, nii_affine = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(mha, nii)
    assert mha.shape == (4, 5, 6)
    np.testing.assert_allclose(mha_affine, nii_affine, atol=1e-4)


def test_read_volume_names_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08 this is not a volume")
    with pytest.raises(DatasetImportError, match=r"broken\.nii\.gz: cannot read"):
        read_volume(bad)


def _one_case_dataset(out: Path, *, overwrite: bool = False, value: int = 1) -> Path:
    with DatasetBuilder(out, overwrite=overwrite) as builder:
        label = np.full((3, 3, 3), value, dtype=np.uint8)
        builder.add_case("ct_a", "ct", np.zeros((3, 3, 3), np.int16), label, np.eye(4))
        return builder.finish(
            name="t",
            description="test",
            dim=3,
            labels={"background": 0, "liver": 1, "spleen": 2},
            modalities={"ct": {"normalization": "ct"}},
            splits=[seeded_split(["ct_a"])],
        )


def _label_value(out: Path) -> int:
    return int(np.asarray(nib.load(out / "ct" / "ct_a_label.nii.gz").dataobj).max())


def test_builder_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _one_case_dataset(out)
    assert_valid_dataset(out)
    with pytest.raises(DatasetImportError, match="not empty; pass --overwrite"):
        _one_case_dataset(out, value=2)
    assert _label_value(out) == 1
    _one_case_dataset(out, overwrite=True, value=2)
    assert _label_value(out) == 2
    # a folder that is not an ummkd dataset is never deleted, not even with overwrite
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DatasetImportError, match="not an ummkd dataset"):
        _one_case_dataset(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetImportError, match="not a folder"):
        _one_case_dataset(tmp_path / "file")
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    assert_valid_dataset(_one_case_dataset(tmp_path / "empty"))


def test_builder_failure_keeps_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _one_case_dataset(out)
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="boom"), DatasetBuilder(out, overwrite=True) as builder:
        builder.add_case(
            "ct_b", "ct", np.zeros((2, 2, 2)), np.zeros((2, 2, 2), np.uint8), np.eye(4)
        )
        raise RuntimeError("boom")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_builder_refuses_inputs_inside_the_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _one_case_dataset(out)
    with (
        pytest.raises(DatasetImportError, match="inside the output folder"),
        DatasetBuilder(out, overwrite=True, inputs=[out / "ct" / "ct_a_image.nii.gz"]),
    ):
        pass


def test_builder_validates_cases(tmp_path: Path) -> None:
    with DatasetBuilder(tmp_path / "ds") as builder:
        image = np.zeros((2, 2, 2), np.int16)
        with pytest.raises(DatasetImportError, match="label must be uint8"):
            builder.add_case("ct_a", "ct", image, image, np.eye(4))
        with pytest.raises(DatasetImportError, match="invalid case id"):
            builder.add_case("../x", "ct", image, image.astype(np.uint8), np.eye(4))
        with pytest.raises(DatasetImportError, match="image shape"):
            builder.add_case("ct_a", "ct", image, np.zeros((2, 2), np.uint8), np.eye(4))
        builder.add_case("ct_a", "ct", image, image.astype(np.uint8), np.eye(4))
        with pytest.raises(DatasetImportError, match="occurs twice"):
            builder.add_case("ct_a", "ct", image, image.astype(np.uint8), np.eye(4))
        with pytest.raises(DatasetImportError, match="normalization 'hu' is not one of"):
            builder.finish(
                name="t",
                description="",
                dim=3,
                labels={"background": 0, "x": 1},
                modalities={"ct": {"normalization": "hu"}},
                splits=[seeded_split(["ct_a"])],
            )
    assert not (tmp_path / "ds").exists()


# -------------------------------------------------------------------------------------- pairs
def _make_pairs(root: Path, prefix: str, values: list[int], n: int = 3) -> None:
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-40.0, 12.0, 7.0]
    for i in range(1, n + 1):
        label = np.zeros((6, 5, 4), dtype=np.int16)
        for k, value in enumerate(values):
            label[k, :, i % 4] = value
        write_nifti(
            root / "imgs" / f"{prefix}{i:03d}.nii.gz",
            rng.normal(size=(6, 5, 4)).astype(np.float32),
            affine,
        )
        write_nifti(root / "labs" / f"{prefix}{i:03d}_seg.nii.gz", label, affine)


def test_pairs_two_modalities_with_append(tmp_path: Path) -> None:
    _make_pairs(tmp_path / "ct_src", "case", [6, 2, 3, 1, 7])
    _make_pairs(tmp_path / "mr_src", "pat", [1, 2, 3, 4])
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    import_pairs(
        tmp_path / "ct_src",
        out,
        images="imgs/*.nii.gz",
        labels="labs/*.nii.gz",
        modality="ct",
        label_names=ABDOMEN,
        label_map=parse_label_map("6:1,2:2,3:3,1:4"),
        case_id_regex=r"(\d+)",
        window=(-125, 275),
    )
    import_pairs(
        tmp_path / "mr_src",
        out,
        images="imgs/*.nii.gz",
        labels="labs/*.nii.gz",
        modality="mr",
        append=True,
    )
    assert snapshot(tmp_path / "ct_src") == {
        k[len("ct_src/") :]: v for k, v in before.items() if k.startswith("ct_src/")
    }
    dataset, splits = assert_valid_dataset(out)
    assert dataset["labels"] == {
        "background": 0,
        "liver": 1,
        "kidney_right": 2,
        "kidney_left": 3,
        "spleen": 4,
    }
    assert dataset["modalities"] == {
        "ct": {"normalization": "ct", "window": [-125.0, 275.0]},
        "mr": {"normalization": "mr"},
    }
    ids = [c["id"] for c in dataset["cases"]]
    assert ids == ["ct_001", "ct_002", "ct_003", "mr_pat001", "mr_pat002", "mr_pat003"]
    assert "Appended" in dataset["description"]
    ct_label = np.asarray(nib.load(out / "ct" / "ct_001_label.nii.gz").dataobj)
    np.testing.assert_array_equal(ct_label[:5, 0, 1], [1, 2, 3, 4, 0])  # 6,2,3,1,7 remapped
    mr_label = np.asarray(nib.load(out / "mr" / "mr_pat002_label.nii.gz").dataobj)
    np.testing.assert_array_equal(mr_label[:4, 0, 2], [1, 2, 3, 4])
    source = nib.load(tmp_path / "ct_src" / "imgs" / "case001.nii.gz")
    written = nib.load(out / "ct" / "ct_001_image.nii.gz")
    np.testing.assert_array_equal(written.get_fdata(), source.get_fdata())
    np.testing.assert_allclose(written.affine, source.affine)
    for subset in (splits["folds"][0]["train"], splits["folds"][0]["val"], splits["test"]):
        assert sorted(i[:2] for i in subset) == ["ct", "mr"]  # 3 cases per modality: 1/1/1

    # appending with other label names or the same cases again is refused, output unchanged
    after = snapshot(out)
    with pytest.raises(DatasetImportError, match=r"labels .* differ"):
        import_pairs(
            tmp_path / "mr_src",
            out,
            images="imgs/*.nii.gz",
            labels="labs/*.nii.gz",
            modality="t1",
            label_names=["liver", "spleen", "kidney_left", "kidney_right"],
            append=True,
        )
    with pytest.raises(DatasetImportError, match="occurs twice"):
        import_pairs(
            tmp_path / "mr_src",
            out,
            images="imgs/*.nii.gz",
            labels="labs/*.nii.gz",
            modality="mr",
            append=True,
        )
    assert snapshot(out) == after


def test_pairs_pairing_errors_name_the_files(tmp_path: Path) -> None:
    _make_pairs(tmp_path, "case", [1, 2])
    (tmp_path / "labs" / "case002_seg.nii.gz").rename(tmp_path / "labs" / "case004_seg.nii.gz")
    images = sorted((tmp_path / "imgs").glob("*"))
    labels = sorted((tmp_path / "labs").glob("*"))
    with pytest.raises(
        DatasetImportError, match=r"case002\.nii\.gz with .*case003_seg.*numbers differ"
    ):
        match_pairs(images, labels)
    with pytest.raises(DatasetImportError, match=r"without a partner.*'002'.*'004'"):
        match_pairs(images, labels, r"case(\d+)")
    with pytest.raises(DatasetImportError, match="matched 3 files but --labels 2"):
        match_pairs(images, labels[:2])
    with pytest.raises(DatasetImportError, match=r"case001\.nii\.gz: --case-id-regex"):
        match_pairs(images, labels, r"pat(\d+)")


def test_pairs_without_label_map_requires_shared_ids(tmp_path: Path) -> None:
    _make_pairs(tmp_path, "case", [1, 7])
    with pytest.raises(
        DatasetImportError, match=r"case001_seg\.nii\.gz: unexpected label values \[7\]"
    ):
        import_pairs(
            tmp_path,
            tmp_path / "out",
            images="imgs/*.nii.gz",
            labels="labs/*.nii.gz",
            modality="ct",
            label_names=["liver"],
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetImportError, match="--labels-names is required"):
        import_pairs(tmp_path, tmp_path / "o2", images="imgs/*", labels="labs/*", modality="ct")


# ------------------------------------------------------------------------------ registry / CLI
def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ummkd data import")
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, module in IMPORTERS.items():
        module.add_arguments(kinds.add_parser(kind))
    return parser


def test_registry_lists_every_importer() -> None:
    assert set(IMPORTERS) == {"pairs", "mmwhs", "btcv", "chaos", "pnpadanet", "alpnet"}
    parser = _cli()
    for kind in IMPORTERS:
        args = parser.parse_args(
            [kind, "src", "--out", "o", "--overwrite"]
            + (["--images", "a", "--labels", "b", "--modality", "ct"] if kind == "pairs" else [])
        )
        assert args.out == Path("o") and args.overwrite and args.src == Path("src")


def test_cli_pairs_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _make_pairs(tmp_path, "case", [6, 1])
    args = _cli().parse_args(
        [
            "pairs",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--images",
            "imgs/*.nii.gz",
            "--labels",
            "labs/*_seg.nii.gz",
            "--modality",
            "ct",
            "--labels-names",
            "liver,spleen",
            "--label-map",
            "6:1,1:2",
            "--window=-100,200",
        ]
    )
    assert IMPORTERS[args.kind].run(args) == (tmp_path / "out").absolute()
    dataset, _ = assert_valid_dataset(tmp_path / "out")
    assert dataset["modalities"]["ct"]["window"] == [-100.0, 200.0]
    with pytest.raises(SystemExit):
        _cli().parse_args(
            [
                "pairs",
                "--out",
                "o",
                "--images",
                "a",
                "--labels",
                "b",
                "--modality",
                "ct",
                "--label-map",
                "6-1",
            ]
        )
    assert "expected source:target integers" in capsys.readouterr().err


# ------------------------------------------------------------------- optional libraries (extra)
def test_importer_libraries_are_not_imported_by_the_package() -> None:
    """pydicom, SimpleITK and tfrecord (``ummkd[import]``) load only when an importer runs."""
    code = (
        "import importlib, pkgutil, sys\n"
        "for name in ('pydicom', 'SimpleITK', 'tfrecord'):\n"
        "    sys.modules[name] = None\n"
        "import ummkd\n"
        "for info in pkgutil.walk_packages(ummkd.__path__, 'ummkd.'):\n"
        "    importlib.import_module(info.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("library", ["pydicom", "SimpleITK", "tfrecord.reader"])
def test_a_missing_importer_library_names_the_extra(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ummkd.data.importers.common import require

    monkeypatch.setitem(sys.modules, library.split(".")[0], None)
    with pytest.raises(DatasetImportError, match=r"pip install 'ummkd\[import\]'"):
        require(library)


def test_the_chaos_importer_without_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ummkd.data.importers.chaos import _read_slice

    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DatasetImportError, match=r"needs pydicom: pip install 'ummkd\[import\]'"):
        _read_slice(tmp_path / "x.dcm")
