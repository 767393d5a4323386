"""Atomic file writes shared by every writer of ummkd (datasets, predictions, reports, results).

Each file is written to a temporary file in the target's folder, then renamed onto the target
with :func:`os.replace`. A reader sees the old file or the new one, never a partial one, and an
interrupted write leaves the old file as it was. Finished files get the permissions of a normally
created file (``0o666`` minus the umask), not the ``0o600`` that :func:`tempfile.mkstemp` gives.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "NIFTI_SUFFIXES",
    "atomic_write_bytes",
    "save_nifti",
    "strip_nifti_suffix",
    "write_json",
    "write_text_atomic",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of finished files and folders (tempfile creates them 0600 / 0700).
FILE_MODE = 0o666 & ~_current_umask()
DIR_MODE = 0o777 & ~_current_umask()


def strip_nifti_suffix(name: str) -> str:
    """Return a file name without its ``.nii.gz`` / ``.nii`` suffix."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextmanager
def _replacing(path: Path, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on success it replaces ``path``.

    The temporary file is removed if the body raises (``path`` is then left untouched).
    """
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{strip_nifti_suffix(path.name)}-", suffix=suffix
    )
    os.close(fd)
    try:
        yield tmp_name
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (its folder must exist)."""
    with _replacing(Path(path)) as tmp_name, open(tmp_name, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a UTF-8 text file atomically (its folder must exist)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON (2-space indent, trailing newline) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a NIfTI-1 file atomically.

    Both qform and sform are set to ``affine`` (code 1, scanner coordinates) so that nibabel,
    SimpleITK/ITK and MONAI all read the same geometry; units are millimetres. The file is
    gzip-compressed when ``path`` ends in ``.nii.gz``.
    """
    path = Path(path)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with _replacing(path, suffix) as tmp_name:
        nib.save(image, tmp_name)
