"""Atomic file writes shared by every writer of ummkd (datasets, predictions, reports, results).

Each file is written to a temporary file in the target's folder, then renamed onto the target
with :func:`os.replace`. A reader sees the old file or the new one, never a partial one, and a
process interrupted while writing leaves the old file as it was (the data are not fsync'ed, so
this does not cover a power loss, except with :func:`atomic_write`, used for checkpoints).
Files and folders get the permissions of normally created ones (``0o666`` / ``0o777`` minus the
current umask), not the ``0o600`` / ``0o700`` of :mod:`tempfile`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np

__all__ = [
    "NIFTI_SUFFIXES",
    "atomic_write",
    "atomic_write_bytes",
    "make_temporary_dir",
    "save_nifti",
    "strip_nifti_suffix",
    "write_json",
    "write_text_atomic",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(name: str) -> str:
    """Return a file name without its ``.nii.gz`` / ``.nii`` suffix."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _create_exclusively(path: Path) -> None:
    """Create an empty file; its permissions are 0o666 minus the process's current umask."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextmanager
def _replacing(path: Path, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a new temporary file name next to ``path``; on success it replaces ``path``.

    The temporary file is removed if the body raises (``path`` is then left untouched).
    """
    stem = strip_nifti_suffix(path.name)
    while True:
        tmp = path.parent / f".{stem}-{uuid.uuid4().hex[:12]}{suffix}"
        try:
            _create_exclusively(tmp)
            break
        except FileExistsError:
            continue
    try:
        yield str(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_temporary_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """Create a new, empty, uniquely named folder in ``parent`` (to be renamed when complete).

    Unlike :func:`tempfile.mkdtemp` (mode 0o700), the folder gets ordinary permissions: 0o777
    minus the process's current umask.
    """
    while True:
        candidate = Path(parent) / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            os.mkdir(candidate, 0o777)
            return candidate
        except FileExistsError:
            continue


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a new file beside ``path`` for writing; once written and fsynced it replaces ``path``.

    Until then ``path`` keeps its previous content; if the body raises, the temporary file is
    removed and ``path`` is left untouched. The folder of ``path`` must exist.

    Yields:
        The binary handle to write to.
    """
    with _replacing(Path(path)) as tmp_name, open(tmp_name, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


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


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    *,
    scaling: tuple[float, float] | None = None,
) -> None:
    """Write a NIfTI-1 file atomically.

    Both qform and sform are set to ``affine`` (code 1, scanner coordinates) so that nibabel,
    SimpleITK/ITK and MONAI all read the same geometry; units are millimetres. The file is
    gzip-compressed when ``path`` ends in ``.nii.gz``. ``scaling`` = ``(slope, intercept)`` is
    written as ``scl_slope``/``scl_inter`` (the stored array is kept as it is).
    """
    path = Path(path)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    if scaling is not None:
        image.header.set_slope_inter(*scaling)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with _replacing(path, suffix) as tmp_name:
        nib.save(image, tmp_name)
