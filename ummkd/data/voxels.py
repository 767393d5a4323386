"""Facts read from image files, shared by validation, summary and the format readers."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

# What reading a broken, truncated or foreign file can raise.
READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)
_MAX_LISTED = 8


def fmt_values(values: Sequence[Any]) -> str:
    """``[a, b, ... (n more)]``: a list for a message, at most eight values shown."""
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return f"[{shown}{f', ... ({more} more)' if more > 0 else ''}]"


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton axes after the third (NIfTI time/channel axes of size 1)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def is_2d(shape: Sequence[int]) -> bool:
    """Whether an image of this shape is a single 2D slice (at most two axes longer than 1)."""
    return sum(s > 1 for s in spatial_shape(shape)) <= 2


@functools.lru_cache(maxsize=4096)
def _value_counts_cached(path: Path, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.asanyarray(nib.load(path).dataobj)
    integer = np.issubdtype(data.dtype, np.integer)
    if integer and data.size and data.min() >= 0 and data.max() < 2**16:
        counts = np.bincount(data.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(data, return_counts=True)


def value_counts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an image and their voxel counts (cached per file version)."""
    stat = path.stat()
    return _value_counts_cached(path, stat.st_mtime_ns, stat.st_size)
