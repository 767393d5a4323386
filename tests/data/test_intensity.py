"""CT intensity units: the HU check and the tissue-peak estimate of a linear HU map."""

from __future__ import annotations

import numpy as np
import pytest

from ummkd.data.intensity import (
    ct_units_warnings,
    fit_linear_map,
    implausible_tissues,
    tissue_peaks,
)


def _phantom_hu(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Air around a fat body holding a liver (label 6) and a spleen (label 1), in HU."""
    image = np.full((40, 40, 6), -1000.0)
    label = np.zeros(image.shape, np.uint8)
    image[5:35, 5:35] = rng.normal(-100, 10, (30, 30, 6))
    image[8:20, 8:20] = rng.normal(100, 10, (12, 12, 6))
    label[8:20, 8:20] = 6
    image[22:30, 22:30] = rng.normal(110, 10, (8, 8, 6))
    label[22:30, 22:30] = 1
    return image, label


def test_hu_images_pass_and_other_units_are_named() -> None:
    image, _ = _phantom_hu(np.random.default_rng(0))
    assert ct_units_warnings(image) == []
    assert ct_units_warnings(np.clip(image, -125, 275)) == []  # windowed HU: a clipping floor
    eight_bit = np.round((np.clip(image, -125, 275) + 125) / 400 * 255)
    (warning,) = ct_units_warnings(eight_bit)
    assert "8-bit" in warning
    shifted = image + 1024  # unsigned storage without the rescale intercept
    assert any("no values below" in w for w in ct_units_warnings(shifted))


def test_fit_recovers_a_known_window_from_tissue_peaks() -> None:
    rng = np.random.default_rng(0)
    peaks = []
    for _ in range(3):
        hu, label = _phantom_hu(rng)
        stored = np.round((np.clip(hu, -125, 275) + 125) / 400 * 255)
        peaks.append(tissue_peaks(stored, label, {"liver": 6, "spleen": 1}))
    slope, intercept = fit_linear_map(peaks)
    assert slope == pytest.approx(400 / 255, rel=0.05)
    assert intercept == pytest.approx(-125, abs=8)
    mapped = tissue_peaks(stored * slope + intercept, label, {"liver": 6, "spleen": 1})
    assert implausible_tissues(mapped) == []
    wrong = tissue_peaks(stored, label, {"liver": 6, "spleen": 1})  # 8-bit units read as HU
    assert any(p.startswith("fat") for p in implausible_tissues(wrong))
