"""Label maps: source label values -> shared label ids."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ummkd.data.voxels import fmt_values


def _label_dtype(num_classes: int) -> np.dtype:
    return np.min_scalar_type(max(num_classes - 1, 0))


def _as_integer_labels(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise ValueError(
            "label array has non-integer values (was it resampled with linear interpolation? "
            "use nearest-neighbour for labels)"
        )
    return rounded.astype(np.int64)


def remap_labels(
    array: np.ndarray, label_map: Mapping[int, int] | None, num_classes: int
) -> np.ndarray:
    """Map source label values to shared ids with a vectorized lookup table.

    Args:
        array: Label values (any integer dtype, or floats holding integers).
        label_map: Source value -> shared id. Values not listed (including values below or above
            every key) become background (0). ``None`` keeps the values, which must then already
            be shared ids.
        num_classes: Number of shared classes (ids ``0..num_classes-1``).

    Returns:
        A new array of the same shape with the smallest unsigned dtype that holds the ids.

    Raises:
        ValueError: If the array holds non-integer values, if ``label_map`` is ``None`` and a
            value is not a shared id, or if the map targets an id outside ``0..num_classes-1``.
    """
    labels = _as_integer_labels(np.asarray(array))
    dtype = _label_dtype(num_classes)
    if label_map is None:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = [int(v) for v in np.unique(labels) if not 0 <= v < num_classes]
            raise ValueError(
                f"label values {fmt_values(bad)} are not shared ids 0..{num_classes - 1} and "
                "there is no label_map; add a label_map for this modality"
            )
        return labels.astype(dtype)
    targets = [v for v in label_map.values() if not 0 <= v < num_classes]
    if targets:
        raise ValueError(f"label_map targets {targets} are not shared ids 0..{num_classes - 1}")
    if not label_map:
        return np.zeros(labels.shape, dtype)
    keys = np.fromiter(label_map.keys(), dtype=np.int64)
    lo, hi = int(keys.min()), int(keys.max())
    # One guard slot below and above the key range catches every value outside it.
    table = np.zeros(hi - lo + 3, dtype)
    table[keys - lo + 1] = np.fromiter(label_map.values(), dtype=np.int64)
    index = np.clip(labels.astype(np.int64, copy=False), lo - 1, hi + 1) - (lo - 1)
    return table[index]
