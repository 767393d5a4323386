"""CT intensity units: tissue peaks, a linear map from stored values to HU, and an HU check.

A CT model takes Hounsfield units (HU). Sources that store CT in another unit (an 8-bit rendering
of an undocumented window, say) are mapped to HU at import by a linear map estimated from tissue
peaks; :func:`ct_units_warnings` flags CT images that do not look like HU. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

REFERENCE_HU: dict[str, float] = {"fat": -100.0, "liver": 100.0, "spleen": 110.0}
"""Typical tissue values of portal-venous contrast-enhanced abdominal CT (the BTCV phase)."""

PLAUSIBLE_HU: dict[str, tuple[float, float]] = {
    "fat": (-140.0, -60.0),
    "liver": (40.0, 160.0),
    "spleen": (40.0, 170.0),
    "kidney": (60.0, 260.0),
}
"""Ranges a correctly mapped portal-venous abdominal CT's tissue medians fall into."""


@dataclass(frozen=True)
class TissuePeaks:
    """Typical stored values of one CT volume.

    Attributes:
        fat: Most frequent value of unlabeled body voxels in the lower half of the body's range
            (subcutaneous and visceral fat).
        organs: Organ name -> median value inside its label.
    """

    fat: float
    organs: dict[str, float]


def body_mask(image: np.ndarray, floor: float) -> np.ndarray:
    """Voxels inside the body: above ``floor``, holes filled slice by slice (last axis)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = True
    return ndimage.binary_fill_holes(image > floor, structure=structure)


def tissue_peaks(
    image: np.ndarray, label: np.ndarray, organs: Mapping[str, int], *, bins: int = 256
) -> TissuePeaks:
    """Measure the fat peak and the organ medians of one CT volume.

    Args:
        image: The CT volume in its stored units.
        label: Label volume of the same shape.
        organs: Organ name -> label value.
        bins: Histogram bins of the fat search.

    Returns:
        The peaks, in the image's stored units.
    """
    values = np.asarray(image, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    inside = body_mask(values, low) & (label == 0)
    soft = values[inside]
    organ_medians = {
        name: float(np.median(values[label == value]))
        for name, value in organs.items()
        if np.any(label == value)
    }
    reference = min(organ_medians.values()) if organ_medians else (low + high) / 2
    candidates = soft[(soft > low) & (soft < reference - 0.1 * (high - low))]
    if candidates.size == 0:
        candidates = soft
    counts, edges = np.histogram(candidates, bins=bins, range=(low, high))
    peak = int(np.argmax(counts))
    return TissuePeaks(fat=float((edges[peak] + edges[peak + 1]) / 2), organs=organ_medians)


def fit_linear_map(
    peaks: Sequence[TissuePeaks], reference: Mapping[str, float] = REFERENCE_HU
) -> tuple[float, float]:
    """Least-squares ``HU = slope * stored + intercept`` from per-volume tissue peaks.

    Args:
        peaks: The peaks of every volume (each volume contributes its fat peak and the medians of
            the organs named in ``reference``).
        reference: Tissue name -> its typical HU.

    Returns:
        ``(slope, intercept)``.

    Raises:
        ValueError: fewer than two distinct tissues to fit.
    """
    stored, hu = [], []
    for volume in peaks:
        for tissue, value in {"fat": volume.fat, **volume.organs}.items():
            if tissue in reference:
                stored.append(value)
                hu.append(reference[tissue])
    if len(set(hu)) < 2:
        raise ValueError("need at least two distinct tissues to fit a linear HU map")
    slope, intercept = np.polyfit(np.asarray(stored), np.asarray(hu), 1)
    return float(slope), float(intercept)


def implausible_tissues(peaks: TissuePeaks) -> list[str]:
    """Tissue peaks (already in HU) outside :data:`PLAUSIBLE_HU`, as readable phrases."""
    found = {"fat": peaks.fat, **peaks.organs}
    problems = []
    for tissue, value in found.items():
        key = "kidney" if tissue.startswith("kidney") else tissue
        if key in PLAUSIBLE_HU:
            low, high = PLAUSIBLE_HU[key]
            if not low <= value <= high:
                problems.append(f"{tissue} {value:.0f} HU (expected {low:.0f}..{high:.0f})")
    return problems


def ct_units_warnings(image: np.ndarray) -> list[str]:
    """Say why a CT image does not look like Hounsfield units (empty list: it does).

    HU images have air around the body near -1000 HU, or, when already windowed, a clipping floor
    below fat (-100 HU) that many voxels sit on; an 8-bit rendering lies in 0..255.

    Args:
        image: The CT volume as a reader returns it (NIfTI scaling applied).

    Returns:
        Readable reasons, each naming what was seen and what HU would show.
    """
    values = np.asarray(image, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ["no finite values"]
    low, high = float(finite.min()), float(finite.max())
    sample = finite[:: max(1, finite.size // 100_000)]
    if low >= 0 and high <= 255 and np.array_equal(sample.round(), sample):
        return [
            f"values lie in {low:.0f}..{high:.0f}: an 8-bit rendering, not Hounsfield units; "
            "map it to HU at import (see docs/data.md)"
        ]
    reasons = []
    clipped_floor = np.mean(finite == low) >= 0.01
    if low > -500 and not (clipped_floor and low <= -50):
        reasons.append(
            f"no values below {low:.0f}: HU images have air around the body at about -1000 "
            "(or a clipping floor below fat, -100)"
        )
    if high < 50:
        reasons.append(f"no values above {high:.0f}: soft tissue is above 30 HU")
    return reasons
