"""Importers on the real research data in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data.test_importers import assert_valid_dataset, snapshot
from ummkd.data.importers.alpnet import import_alpnet
from ummkd.data.importers.common import DatasetImportError
from ummkd.data.importers.pnpadanet import import_pnpadanet
from ummkd.data.intensity import ct_units_warnings

pytestmark = pytest.mark.realdata
ORGANS = {"liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}


@pytest.fixture(scope="module")
def abdominal(shared_data: Path) -> Path:
    root = shared_data / "abdominal_btcv_chaos"
    if not (root / "splits.json").is_file():
        pytest.skip(f"{root} not available")
    return root


def world_centroids(out: Path, case: dict) -> dict[str, np.ndarray]:
    """RAS (mm) centroid of each organ of one imported case."""
    label_image = nib.load(out / case["label"])
    label = np.asarray(label_image.dataobj)
    return {
        name: nib.affines.apply_affine(label_image.affine, np.argwhere(label == value).mean(0))
        for name, value in ORGANS.items()
        if (label == value).any()
    }


def assert_abdominal_anatomy(centroids: dict[str, np.ndarray], case_id: str) -> None:
    """Patient's right = +R: liver right of the spleen, kidneys posterior (-A) to the liver."""
    liver = centroids["liver"]
    assert liver[0] > centroids["spleen"][0] + 50, case_id
    assert centroids["kidney_right"][0] > centroids["kidney_left"][0] + 50, case_id
    assert centroids["kidney_right"][1] < liver[1], case_id
    assert centroids["kidney_left"][1] < liver[1], case_id


def expected_split(src: Path, keep: set[str] | None = None) -> dict:
    source = json.loads((src / "splits.json").read_text())

    def ids(subset: str) -> list[str]:
        found = [f"{m}_{i}" for m in ("ct", "mr") for i in source[m][subset]]
        return [i for i in found if keep is None or i in keep]

    return {"folds": [{"train": ids("train"), "val": ids("val")}], "test": ids("test")}


def test_alpnet_subset_orientation_and_split(abdominal: Path, tmp_path: Path) -> None:
    before = snapshot(abdominal)
    out = import_alpnet(abdominal, tmp_path / "abd", limit=2)
    assert snapshot(abdominal) == before
    dataset, splits = assert_valid_dataset(out)
    ids = [c["id"] for c in dataset["cases"]]
    assert ids == ["ct_0", "ct_1", "mr_1", "mr_2"]
    assert splits == expected_split(abdominal, set(ids))
    assert dataset["modalities"] == {
        "ct": {"normalization": "ct", "window": [-125.0, 275.0]},
        "mr": {"normalization": "mr"},
    }
    for case in dataset["cases"]:
        assert_abdominal_anatomy(world_centroids(out, case), case["id"])
        label = np.asarray(nib.load(out / case["label"]).dataobj)
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 4}
    # voxel arrays are untouched; only the CT affine's A-P direction changed (same bounding box)
    source = nib.load(abdominal / "ct_btcv" / "image_0.nii.gz")
    written = nib.load(out / "ct" / "ct_0_image.nii.gz")
    np.testing.assert_array_equal(written.dataobj.get_unscaled(), np.asarray(source.dataobj))
    # ... and read back in HU: 8-bit 0..255 stands for -125..275 HU
    hu = np.asarray(written.dataobj)
    np.testing.assert_allclose(
        hu, np.asarray(source.dataobj, dtype=np.float64) * 400 / 255 - 125, atol=1e-3
    )
    liver = hu[np.asarray(nib.load(abdominal / "ct_btcv" / "label_0.nii.gz").dataobj) == 6]
    assert 40 < np.median(liver) < 160  # contrast-enhanced liver, in HU
    assert not ct_units_warnings(hu)
    assert nib.aff2axcodes(source.affine) == ("L", "P", "S")
    assert nib.aff2axcodes(written.affine) == ("L", "A", "S")
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in source.shape])).reshape(3, -1).T
    np.testing.assert_allclose(
        np.sort(nib.affines.apply_affine(written.affine, corners), axis=0),
        np.sort(nib.affines.apply_affine(source.affine, corners), axis=0),
    )
    ct_label = np.asarray(nib.load(out / "ct" / "ct_1_label.nii.gz").dataobj)
    source_label = np.asarray(nib.load(abdominal / "ct_btcv" / "label_1.nii.gz").dataobj)
    for source_value, shared in ((6, 1), (2, 2), (3, 3), (1, 4), (7, 0), (11, 0)):
        assert np.all(ct_label[source_label == source_value] == shared)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_alpnet_orientation_after_monai_orientation_to_ras(abdominal: Path, tmp_path: Path) -> None:
    """A loader that reorients by affine sees the same anatomy in CT and MR."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    out = import_alpnet(abdominal, tmp_path / "abd", limit=1)
    load = Compose(
        [
            LoadImaged("label"),
            EnsureChannelFirstd("label"),
            Orientationd("label", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
    )
    for case in ("ct/ct_0_label.nii.gz", "mr/mr_1_label.nii.gz"):
        label = np.asarray(load({"label": str(out / case)})["label"][0])
        liver, kidney_right, kidney_left, spleen = (
            np.argwhere(label == v).mean(0) for v in (1, 2, 3, 4)
        )
        assert liver[0] > spleen[0] and kidney_right[0] > kidney_left[0], case  # axis 0 -> R
        assert kidney_right[1] < liver[1] and kidney_left[1] < liver[1], case  # axis 1 -> A


def test_alpnet_without_the_fix_the_ct_is_flipped(abdominal: Path, tmp_path: Path) -> None:
    with pytest.raises(
        DatasetImportError, match=r"label_0\.nii\.gz: anatomy inconsistent.*posterior"
    ):
        import_alpnet(abdominal, tmp_path / "abd", limit=1, fix_ct_orientation=False)
    assert not (tmp_path / "abd").exists()


@pytest.mark.slow
def test_alpnet_full_import(abdominal: Path, tmp_path: Path) -> None:
    out = import_alpnet(abdominal, tmp_path / "abd")
    dataset, splits = assert_valid_dataset(out)
    assert sum(c["modality"] == "ct" for c in dataset["cases"]) == 30
    assert sum(c["modality"] == "mr" for c in dataset["cases"]) == 20
    assert splits == expected_split(abdominal)
    for case in dataset["cases"]:
        assert_abdominal_anatomy(world_centroids(out, case), case["id"])


def test_pnpadanet_real_records(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "mmwhs_slices"
    if not (root / "tfrecords").is_dir():
        pytest.skip(f"{root} not available")
    before = snapshot(root)
    out = import_pnpadanet(root / "tfrecords", tmp_path / "cardiac")
    assert snapshot(root) == before
    dataset, splits = assert_valid_dataset(out)
    assert len(dataset["cases"]) == 6
    assert splits["test"] == [] and len(splits["folds"][0]["val"]) == 2
    for case in dataset["cases"]:
        assert case["modality"] == ("ct" if "_ct_" in case["id"] else "mr")
        reference = np.load(root / "npz" / f"{case['id']}.npz")
        image = np.asarray(nib.load(out / case["image"]).dataobj)
        label = np.asarray(nib.load(out / case["label"]).dataobj)
        assert image.shape == label.shape == (256, 256, 3)
        np.testing.assert_array_equal(image, reference["image"])
        expected = np.where(reference["label"] == 5, 0, reference["label"]).astype(np.uint8)
        np.testing.assert_array_equal(label, expected)
    assert dataset["labels"]["ascending_aorta"] == 4
