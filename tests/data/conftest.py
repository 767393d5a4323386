"""Fixtures for the data tests: tiny NIfTI datasets written into tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ummkd.data.dataset_spec import write_dataset_json
from ummkd.data.synthetic import make_synthetic_dataset

SHAPE = (8, 8, 4)
AFFINE = np.array(
    [[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]], dtype=float
)
LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
CT_MAP = {"6": 1, "2": 2, "3": 3, "1": 4}


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def label_volume(values: list[int], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A label volume holding each value of ``values`` in its own block (rest 0)."""
    label = np.zeros(shape, np.uint8)
    for k, value in enumerate(values):
        label[k % shape[0], :, k % shape[2]] = value
    return label


def make_tiny_dataset(root: Path, n: int = 3) -> Path:
    """``n`` CT (label_map, source values 6/2/3/1 and dropped 7) + ``n`` MR (identity) cases."""
    rng = np.random.default_rng(0)
    cases = []
    for modality, values in (("ct", [6, 2, 3, 1, 7]), ("mr", [1, 2, 3, 4])):
        for i in range(n):
            image = rng.normal(size=SHAPE).astype(np.float32)
            write_nifti(root / modality / f"image_{i}.nii.gz", image)
            write_nifti(root / modality / f"label_{i}.nii.gz", label_volume(values))
            cases.append(
                {
                    "id": f"{modality}_{i}",
                    "modality": modality,
                    "image": f"{modality}/image_{i}.nii.gz",
                    "label": f"{modality}/label_{i}.nii.gz",
                }
            )
    content = {
        "name": "tiny",
        "labels": LABELS,
        "modalities": {
            "ct": {"normalization": "ct", "window": [-125, 275], "label_map": CT_MAP},
            "mr": {"normalization": "mr"},
        },
        "cases": cases,
    }
    ids = {m: [f"{m}_{i}" for i in range(n)] for m in ("ct", "mr")}
    splits = {
        "folds": [
            {"train": ids["ct"][:-2] + ids["mr"][:-2], "val": [ids["ct"][-2], ids["mr"][-2]]}
        ],
        "test": [ids["ct"][-1], ids["mr"][-1]],
    }
    write_dataset_json(root, content, splits)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def default_synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default synthetic dataset (written once per session) and the seconds it took."""
    root = tmp_path_factory.mktemp("synthetic") / "default"
    start = time.perf_counter()
    make_synthetic_dataset(root)
    return root, time.perf_counter() - start
