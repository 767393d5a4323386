from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ummkd.data.dataset_spec import load_dataset, validate_dataset
from ummkd.data.synthetic import LABELS, make_synthetic_dataset

SMALL = {"n_ct": 3, "n_mr": 3, "size": (48, 48, 12)}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _world_centroid(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    voxels = np.argwhere(label == value)
    assert len(voxels), f"label {value} missing"
    return affine[:3, :3] @ voxels.mean(0) + affine[:3, 3]


def test_default_dataset_is_valid_and_fast(default_synthetic: tuple[Path, float]) -> None:
    root, seconds = default_synthetic
    assert seconds < 20, f"generating the default synthetic dataset took {seconds:.1f} s"
    spec = load_dataset(root)
    assert validate_dataset(spec) == []
    assert spec.labels == LABELS and spec.dim == 3
    assert spec.modalities["ct"].normalization == "ct"
    assert spec.modalities["ct"].window == (-160.0, 240.0)
    assert spec.modalities["mr"].normalization == "mr"
    assert [len(spec.cases_for("ct", s)) for s in ("train", "val", "test")] == [11, 2, 3]
    assert [len(spec.cases_for("mr", s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    assert "not for research claims" in spec.description


def test_geometry_differs_between_modalities(default_synthetic: tuple[Path, float]) -> None:
    root, _ = default_synthetic
    ct = nib.load(root / "ct/image_000.nii.gz")
    mr = nib.load(root / "mr/image_000.nii.gz")
    assert nib.aff2axcodes(ct.affine) == ("L", "P", "S")
    assert nib.aff2axcodes(mr.affine) == ("R", "A", "S")
    assert ct.shape == (96, 96, 32) and mr.shape == (96, 96, 13)
    np.testing.assert_allclose(ct.header.get_zooms(), (1.5, 1.5, 2.5))
    np.testing.assert_allclose(mr.header.get_zooms(), (1.8, 1.8, 6.0))
    assert np.abs(ct.affine[:3, 3]).max() > 1  # a real translation
    assert ct.get_data_dtype() == np.int16 and mr.get_data_dtype() == np.int16


def test_anatomy_in_world_coordinates(default_synthetic: tuple[Path, float]) -> None:
    """RAS+ world: +x is the patient's LEFT-to-RIGHT direction (x grows towards the patient's
    right), +y is anterior. So the liver (patient's right) has a larger x than the spleen, the
    right kidney a larger x than the left one, and the kidneys a smaller y than the liver."""
    root, _ = default_synthetic
    spec = load_dataset(root)
    for case in spec.cases:
        assert case.label is not None
        image = nib.load(case.label)
        label = np.asarray(image.dataobj)
        liver, kidney_r, kidney_l, spleen = (
            _world_centroid(label, image.affine, k) for k in (1, 2, 3, 4)
        )
        assert liver[0] > spleen[0] + 20, case.id
        assert kidney_r[0] > kidney_l[0] + 20, case.id
        assert kidney_r[1] < liver[1] and kidney_l[1] < liver[1], case.id
        assert kidney_r[2] < liver[2], case.id  # the liver sits above the right kidney


def test_intensities_look_like_ct_and_t2(default_synthetic: tuple[Path, float]) -> None:
    root, _ = default_synthetic
    spec = load_dataset(root)
    means: dict[str, dict[int, list[float]]] = {"ct": {}, "mr": {}}
    for case in spec.cases:
        assert case.label is not None
        image = np.asarray(nib.load(case.image).dataobj)
        label = np.asarray(nib.load(case.label).dataobj)
        for k in (1, 2, 4):
            means[case.modality].setdefault(k, []).append(float(image[label == k].mean()))
        if case.modality == "ct":
            assert abs(np.median(image[:4, :4]) + 1000) < 50  # air in the corner
        else:
            assert image.min() >= 0
    ct = {k: np.mean(v) for k, v in means["ct"].items()}
    mr = {k: np.mean(v) for k, v in means["mr"].items()}
    assert 40 < ct[1] < 90 and ct[2] > ct[1] + 50  # liver ~65 HU, enhanced kidneys brighter
    assert mr[2] > mr[4] > mr[1]  # T2: kidneys > spleen > liver


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    second = make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    assert _files(first) == _files(second)
    other = make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL)
    for name in ("ct/image_000.nii.gz", "mr/label_001.nii.gz"):
        a = np.asarray(nib.load(first / name).dataobj)
        c = np.asarray(nib.load(other / name).dataobj)
        assert a.shape == c.shape and not np.array_equal(a, c)
    cases = json.loads((first / "dataset.json").read_text())["cases"]
    assert [c["id"] for c in cases] == ["ct_000", "ct_001", "ct_002", "mr_000", "mr_001", "mr_002"]


def test_two_dimensional_dataset(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d2", dim=2, **SMALL)
    spec = load_dataset(root)
    assert spec.dim == 2
    image = nib.load(spec.cases[0].image)
    assert image.shape == (48, 48)
    assert validate_dataset(spec) == []
    problems = validate_dataset(spec, expected_dim=3)
    assert (
        sum("2D image (shape (48, 48)) but 3D data is expected" in p.message for p in problems) == 6
    )
    labels = [np.asarray(nib.load(c.label).dataobj) for c in spec.cases if c.label]
    assert all(lab.max() > 0 for lab in labels)  # every slice crosses an organ


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty.*--overwrite"):
        make_synthetic_dataset(out, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    make_synthetic_dataset(out, overwrite=True, **SMALL)
    assert (out / "notes.txt").read_text() == "mine"
    assert validate_dataset(load_dataset(out)) == []
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_ct": 2}, "n_ct and n_mr must be >= 3"),
        ({"dim": 4}, "dim must be 2 or 3"),
        ({"size": (16, 16, 8)}, "X, Y >= 32"),
        ({"mr_spacing": (1.0, 0.0, 1.0)}, "mr_spacing must be three positive"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make_synthetic_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
