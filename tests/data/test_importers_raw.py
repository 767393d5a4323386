"""Importers of raw layouts (BTCV, MM-WHS, CHAOS DICOM, PnP-AdaNet TFRecords) on tiny fakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.data.test_importers import assert_valid_dataset, snapshot, write_nifti
from ummkd.data.importers.btcv import BENCHMARK_SPLIT as BTCV_BENCHMARK
from ummkd.data.importers.btcv import import_btcv
from ummkd.data.importers.chaos import import_chaos
from ummkd.data.importers.common import DatasetImportError
from ummkd.data.importers.mmwhs import import_mmwhs
from ummkd.data.importers.pnpadanet import import_pnpadanet

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 150.0], [0.0, -0.8, 0.0, 170.0], [0.0, 0.0, 2.5, -300.0], [0, 0, 0, 1]]
)


def _label_volume(values: list[int], shape: tuple[int, int, int] = (6, 5, 4)) -> np.ndarray:
    """Label with value ``values[k]`` on row k of every slice (as many values as rows)."""
    label = np.zeros(shape, dtype=np.int16)
    for k, value in enumerate(values[: shape[0]]):
        label[k] = value
    return label


# --------------------------------------------------------------------------------------- BTCV
def _make_btcv(root: Path, numbers: list[int], shape: tuple[int, int, int] = (6, 5, 4)) -> None:
    rng = np.random.default_rng(1)
    for n in numbers:
        image = rng.integers(-1000, 1500, size=shape, dtype=np.int16)
        write_nifti(root / "img" / f"img{n:04d}.nii.gz", image, AFFINE)
        write_nifti(
            root / "label" / f"label{n:04d}.nii.gz",
            _label_volume([6, 2, 3, 1, 7], shape).astype(np.uint8),
            AFFINE,
        )


@pytest.mark.parametrize("layout", [".", "RawData/Training"])
def test_btcv_import(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "btcv"
    _make_btcv(src / layout, [1, 2, 5])
    before = snapshot(src)
    out = import_btcv(src, tmp_path / "out")
    assert snapshot(src) == before
    dataset, splits = assert_valid_dataset(out)
    assert [c["id"] for c in dataset["cases"]] == ["ct_0001", "ct_0002", "ct_0005"]
    assert dataset["modalities"] == {"ct": {"normalization": "ct", "window": [-125, 275]}}
    assert dataset["labels"]["liver"] == 1 and dataset["labels"]["spleen"] == 4
    label = nib.load(out / "ct" / "ct_0002_label.nii.gz")
    np.testing.assert_array_equal(np.asarray(label.dataobj)[:, 0, 0], [1, 2, 3, 4, 0, 0])
    image = nib.load(out / "ct" / "ct_0002_image.nii.gz")
    source = nib.load(src / layout / "img" / "img0002.nii.gz")
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(image.affine, AFFINE)
    assert (len(splits["folds"][0]["train"]), len(splits["folds"][0]["val"])) == (1, 1)


def test_btcv_full_training_set_gets_the_benchmark_split(tmp_path: Path) -> None:
    _make_btcv(tmp_path / "src", [*range(1, 11), *range(21, 41)], shape=(2, 2, 2))
    _, splits = assert_valid_dataset(import_btcv(tmp_path / "src", tmp_path / "out"))
    assert splits["test"] == ["ct_0001", "ct_0009", "ct_0030", "ct_0032", "ct_0033", "ct_0039"]
    assert splits["folds"][0]["val"] == list(BTCV_BENCHMARK.val)
    assert len(splits["folds"][0]["train"]) == 20


def test_btcv_errors_name_the_file_and_keep_the_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_btcv(src, [1, 2, 3])
    out = import_btcv(src, tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(DatasetImportError, match="not empty; pass --overwrite"):
        import_btcv(src, out)
    (src / "img" / "img0002.nii.gz").write_bytes(b"truncated")
    with pytest.raises(DatasetImportError, match=r"img0002\.nii\.gz: cannot read the image"):
        import_btcv(src, out, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    (src / "label" / "label0003.nii.gz").unlink()
    with pytest.raises(DatasetImportError, match=r"cases \[3\] have an image or a label"):
        import_btcv(src, tmp_path / "other")
    with pytest.raises(DatasetImportError, match="no BTCV layout found"):
        import_btcv(tmp_path / "nowhere", tmp_path / "other")


def test_btcv_overwrite_replaces_the_dataset(tmp_path: Path) -> None:
    _make_btcv(tmp_path / "a", [1, 2, 3])
    _make_btcv(tmp_path / "b", [7])
    out = import_btcv(tmp_path / "a", tmp_path / "out")
    import_btcv(tmp_path / "b", out, overwrite=True)
    dataset, _ = assert_valid_dataset(out)
    assert [c["id"] for c in dataset["cases"]] == ["ct_0007"]
    assert sorted(p.name for p in (out / "ct").iterdir()) == [
        "ct_0007_image.nii.gz",
        "ct_0007_label.nii.gz",
    ]


# ------------------------------------------------------------------------------------- MM-WHS
def _make_mmwhs(root: Path, modality: str, numbers: list[int], flat: bool = False) -> None:
    folder = root if flat else root / f"{modality}_train"
    dtype = np.int16 if modality == "ct" else np.float32
    for n in numbers:
        image = np.full((6, 5, 4), n, dtype=dtype)
        write_nifti(folder / f"{modality}_train_{n}_image.nii.gz", image, AFFINE)
        label = _label_volume([205, 420, 500, 550, 820, 850]).astype(np.uint16)
        label[0, 0, 0] = 421  # not an MM-WHS code: background, with a warning
        write_nifti(folder / f"{modality}_train_{n}_label.nii.gz", label, AFFINE)


@pytest.mark.parametrize("flat", [False, True])
def test_mmwhs_import(tmp_path: Path, flat: bool, caplog: pytest.LogCaptureFixture) -> None:
    _make_mmwhs(tmp_path / "src", "ct", [1001, 1002, 1003], flat)
    _make_mmwhs(tmp_path / "src", "mr", [1001, 1002], flat)
    before = snapshot(tmp_path / "src")
    out = import_mmwhs(tmp_path / "src", tmp_path / "out")
    assert snapshot(tmp_path / "src") == before
    dataset, splits = assert_valid_dataset(out)
    assert [c["id"] for c in dataset["cases"]] == [
        "ct_1001",
        "ct_1002",
        "ct_1003",
        "mr_1001",
        "mr_1002",
    ]
    assert dataset["labels"] == {
        "background": 0,
        "myocardium": 1,
        "left_atrium": 2,
        "left_ventricle": 3,
        "ascending_aorta": 4,
    }
    assert dataset["modalities"] == {"ct": {"normalization": "ct"}, "mr": {"normalization": "mr"}}
    label = np.asarray(nib.load(out / "mr" / "mr_1002_label.nii.gz").dataobj)
    np.testing.assert_array_equal(label[:, 1, 1], [1, 2, 3, 0, 4, 0])
    assert label[0, 0, 0] == 0
    assert "421" in caplog.text
    assert nib.load(out / "mr" / "mr_1002_image.nii.gz").get_data_dtype() == np.float32
    assert splits["test"] == [next(i for i in splits["test"] if i.startswith("ct"))]


def test_mmwhs_paper_split_sizes(tmp_path: Path) -> None:
    for modality in ("ct", "mr"):
        _make_mmwhs(tmp_path / "src", modality, list(range(1001, 1021)))
    _, splits = assert_valid_dataset(import_mmwhs(tmp_path / "src", tmp_path / "out"))
    fold = splits["folds"][0]

    def count(ids: list[str], modality: str) -> int:
        return sum(i.startswith(modality) for i in ids)

    assert [count(fold["train"], "ct"), count(fold["val"], "ct"), count(splits["test"], "ct")] == [
        14,
        2,
        4,
    ]
    assert [count(fold["train"], "mr"), count(fold["val"], "mr"), count(splits["test"], "mr")] == [
        16,
        4,
        0,
    ]


def test_mmwhs_missing_label(tmp_path: Path) -> None:
    _make_mmwhs(tmp_path, "ct", [1001])
    (tmp_path / "ct_train" / "ct_train_1001_label.nii.gz").unlink()
    with pytest.raises(
        DatasetImportError, match=r"without both image and label: \['ct_train_1001'\]"
    ):
        import_mmwhs(tmp_path, tmp_path / "out")


# -------------------------------------------------------------------------------------- CHAOS
ROWS, COLS = 16, 12
ROW_SPACING, COL_SPACING, GAP = 1.5, 1.25, 5.0


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    orientation: list[float],
    instance: int,
    series: str,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = "anon"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = generate_uid()
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = GAP
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


# grey value on the ground-truth PNG of instance k (1-based) -> expected shared label
PNG_VALUES = {1: (63, 1), 2: (130, 2), 3: (180, 3), 4: (250, 4)}


def _make_chaos_patient(mr_root: Path, patient: str, angle_deg: float) -> None:
    """4 slices whose instance order runs against the slice normal (instance 1 is the top)."""
    folder = mr_root / patient / "T2SPIR"
    (folder / "DICOM_anon").mkdir(parents=True)
    (folder / "Ground").mkdir()
    angle = np.deg2rad(angle_deg)
    row_dir = np.array([np.cos(angle), np.sin(angle), 0.0])
    col_dir = np.array([-np.sin(angle), np.cos(angle), 0.0])
    normal = np.cross(row_dir, col_dir)
    series = generate_uid()
    for instance in range(1, 5):
        position = np.array([-80.0, -120.0, 40.0]) - (instance - 1) * GAP * normal
        pixels = np.add.outer(np.arange(ROWS), 100 * instance * np.ones(COLS)).astype(np.uint16)
        pixels[0, 1] = 7  # marks row 0 / column 1 (catches a transposition)
        name = f"IMG-0002-{instance:05d}"
        _write_dicom(
            folder / "DICOM_anon" / f"{name}.dcm",
            pixels,
            position,
            [*row_dir, *col_dir],
            instance,
            series,
        )
        ground = np.zeros((ROWS, COLS), dtype=np.uint8)
        ground[2:5, 3:6] = PNG_VALUES[instance][0]
        ground[10, 10] = 90  # between the documented ranges -> background
        Image.fromarray(ground).save(folder / "Ground" / f"{name}.png")


def _sitk_reference(dicom_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Volume and RAS affine as SimpleITK's ImageSeriesReader (sorts by position) reads them."""
    reader = SimpleITK.ImageSeriesReader()
    reader.SetFileNames(SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return SimpleITK.GetArrayFromImage(image).transpose(), np.diag([-1.0, -1, 1, 1]) @ lps


def test_chaos_import_geometry_order_and_labels(tmp_path: Path) -> None:
    mr_root = tmp_path / "CHAOS_Train_Sets" / "Train_Sets" / "MR"
    _make_chaos_patient(mr_root, "5", angle_deg=0.0)
    _make_chaos_patient(mr_root, "8", angle_deg=25.0)
    before = snapshot(tmp_path / "CHAOS_Train_Sets")
    out = import_chaos(tmp_path / "CHAOS_Train_Sets", tmp_path / "out")
    assert snapshot(tmp_path / "CHAOS_Train_Sets") == before
    dataset, _ = assert_valid_dataset(out)
    assert [c["id"] for c in dataset["cases"]] == ["mr_5", "mr_8"]
    assert dataset["modalities"] == {"mr": {"normalization": "mr"}}
    for patient in ("5", "8"):
        image = nib.load(out / "mr" / f"mr_{patient}_image.nii.gz")
        label = nib.load(out / "mr" / f"mr_{patient}_label.nii.gz")
        array = np.asarray(image.dataobj)
        assert array.shape == (COLS, ROWS, 4)
        reference, reference_affine = _sitk_reference(mr_root / patient / "T2SPIR" / "DICOM_anon")
        np.testing.assert_array_equal(array, reference)
        np.testing.assert_allclose(image.affine, reference_affine, atol=1e-4)
        np.testing.assert_allclose(label.affine, image.affine)
        np.testing.assert_allclose(
            nib.affines.voxel_sizes(image.affine), [COL_SPACING, ROW_SPACING, GAP]
        )
        # slices ascend along the normal: instance 4 (lowest) first; origin = its position
        assert [int(array[0, 0, k]) // 100 for k in range(4)] == [4, 3, 2, 1]
        assert array[1, 0, 0] == 7
        first = pydicom.dcmread(mr_root / patient / "T2SPIR" / "DICOM_anon" / "IMG-0002-00004.dcm")
        lps_origin = np.asarray(first.ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(image.affine[:3, 3], lps_origin * [-1, -1, 1], atol=1e-6)
        labels = np.asarray(label.dataobj)
        for k, instance in enumerate([4, 3, 2, 1]):
            expected = np.zeros((COLS, ROWS), dtype=np.uint8)
            expected[3:6, 2:5] = PNG_VALUES[instance][1]
            np.testing.assert_array_equal(labels[:, :, k], expected)


def test_chaos_errors(tmp_path: Path) -> None:
    _make_chaos_patient(tmp_path, "1", angle_deg=0.0)
    ground = tmp_path / "1" / "T2SPIR" / "Ground"
    spare = tmp_path / "spare.png"
    shutil.move(ground / "IMG-0002-00003.png", spare)
    with pytest.raises(DatasetImportError, match="3 PNG files for 4 DICOM files"):
        import_chaos(tmp_path, tmp_path / "out")
    shutil.move(spare, ground / "IMG-0002-00003.png")
    broken = tmp_path / "1" / "T2SPIR" / "DICOM_anon" / "IMG-0002-00002.dcm"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DatasetImportError, match=r"IMG-0002-00002\.dcm: cannot read the DICOM"):
        import_chaos(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetImportError, match="no CHAOS MR patients found"):
        import_chaos(tmp_path / "1", tmp_path / "out")


# --------------------------------------------------------------------------------- PnP-AdaNet
def _write_tfrecord(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    from tfrecord import TFRecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = TFRecordWriter(str(path))
    features = {
        f"{kind}_dim{i}": (image.shape[i], "int") for kind in ("dsize", "lsize") for i in range(3)
    }
    features["data_vol"] = (image.astype("<f4").tobytes(), "byte")
    features["label_vol"] = (label.astype("<f4").tobytes(), "byte")
    writer.write(features)
    writer.close()


def test_pnpadanet_import_from_fake_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    label = np.zeros((8, 8, 3), dtype=np.float32)
    label[1, :, :] = [1, 2, 5]  # value 5 -> background
    label[2, :, :] = 4
    images = {}
    for name in ("training_ct/image_01", "training_mr/image_01", "validation_mr/image_01"):
        images[name] = rng.normal(size=(8, 8, 3)).astype(np.float32)
        _write_tfrecord(tmp_path / "src" / f"{name}.tfrecords", images[name], label)
    out = import_pnpadanet(tmp_path / "src", tmp_path / "out")
    dataset, splits = assert_valid_dataset(out)
    assert {c["id"]: c["modality"] for c in dataset["cases"]} == {
        "training_ct_image_01": "ct",
        "training_mr_image_01": "mr",
        "validation_mr_image_01": "mr",
    }
    assert splits == {
        "folds": [
            {
                "train": ["training_ct_image_01", "training_mr_image_01"],
                "val": ["validation_mr_image_01"],
            }
        ],
        "test": [],
    }
    assert dataset["modalities"] == {
        "ct": {"normalization": "none"},
        "mr": {"normalization": "none"},
    }
    image = nib.load(out / "mr" / "validation_mr_image_01_image.nii.gz")
    np.testing.assert_array_equal(
        image.get_fdata(dtype=np.float32), images["validation_mr/image_01"]
    )
    written = np.asarray(nib.load(out / "ct" / "training_ct_image_01_label.nii.gz").dataobj)
    np.testing.assert_array_equal(written[1, 0], [1, 2, 0])
    assert written.max() == 4 and written.shape == (8, 8, 3)
    # --modality overrides the names; unknown label values and broken files are errors
    out2 = import_pnpadanet(tmp_path / "src" / "training_ct", tmp_path / "out2", modality="mr")
    assert assert_valid_dataset(out2)[0]["cases"][0]["modality"] == "mr"
    _write_tfrecord(
        tmp_path / "bad" / "x_ct_1.tfrecords", images["training_ct/image_01"], label + 7
    )
    with pytest.raises(DatasetImportError, match=r"x_ct_1\.tfrecords: unexpected label values"):
        import_pnpadanet(tmp_path / "bad", tmp_path / "out3")
    (tmp_path / "bad" / "x_ct_1.tfrecords").write_bytes(b"\x00" * 5)
    with pytest.raises(DatasetImportError, match=r"x_ct_1\.tfrecords: cannot read the TFRecord"):
        import_pnpadanet(tmp_path / "bad", tmp_path / "out3")
    (tmp_path / "bad" / "x_ct_1.tfrecords").rename(tmp_path / "bad" / "slice_1.tfrecords")
    with pytest.raises(DatasetImportError, match="pass --modality"):
        import_pnpadanet(tmp_path / "bad", tmp_path / "out3")
