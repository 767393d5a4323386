"""Atomic writers of `ummkd.data.io`: content, permissions, failure leaves the old file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ummkd.data import io
from ummkd.data.synthetic import make_synthetic_dataset


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_get_the_permissions_of_the_current_umask(
    tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    with _umask(mask):
        io.write_text_atomic(tmp_path / "a.txt", "héllo\n")
        io.write_json({"x": [1, 2]}, tmp_path / "b.json")
        io.atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
        io.save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "d.nii.gz")
        folder = io.make_temporary_dir(tmp_path, prefix="out.tmp-")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.json").read_text().endswith("]\n}\n")
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    for name in ("a.txt", "b.json", "c.bin", "d.nii.gz"):
        assert _mode(tmp_path / name) == file_mode, name
    assert folder.name.startswith("out.tmp-") and _mode(folder) == dir_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.txt",
        "b.json",
        "c.bin",
        "d.nii.gz",
        folder.name,
    ]


def test_a_generated_dataset_is_readable_by_others(tmp_path: Path) -> None:
    """dataset.json and splits.json were written 0600 before the writers were shared."""
    with _umask(0o022):
        root = make_synthetic_dataset(tmp_path / "ds", n_ct=3, n_mr=3, size=(32, 32, 4))
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {"dataset.json", "splits.json", "README.txt"} <= {p.name for p in files}
    assert all(_mode(p) == 0o644 for p in files), [oct(_mode(p)) for p in files]


@pytest.mark.parametrize("writer", ["json", "nifti"])
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    target = tmp_path / ("results.json" if writer == "json" else "label.nii.gz")

    def write(value: int) -> None:
        if writer == "json":
            io.write_json({"value": value}, target)
        else:
            io.save_nifti(np.full((2, 2, 2), value, np.uint8), np.eye(4), target)

    def read() -> int:
        if writer == "json":
            return json.loads(target.read_text())["value"]
        return int(np.asarray(nib.load(target).dataobj)[0, 0, 0])

    write(1)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(2)
    assert read() == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("name", ["label.nii.gz", "label.nii"])
def test_save_nifti_round_trips_array_and_geometry(tmp_path: Path, name: str) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    io.save_nifti(array, affine, tmp_path / name)
    image = nib.load(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(image.dataobj), array)
    np.testing.assert_allclose(image.affine, affine)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert name.endswith(".gz") == ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b")


def test_strip_nifti_suffix() -> None:
    assert io.strip_nifti_suffix("case_01.nii.gz") == "case_01"
    assert io.strip_nifti_suffix("case_01.nii") == "case_01"
    assert io.strip_nifti_suffix("case_01.mha") == "case_01.mha"
