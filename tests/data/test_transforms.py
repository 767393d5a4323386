"""ummkd.data.transforms: building the loader puts no noise in the user's terminal."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_loader_says_nothing_about_dicom_decoders() -> None:
    """MONAI builds its nvImageCodec DICOM reader inside every LoadImage; it stays quiet."""
    code = (
        "from ummkd.data.transforms import ModalityPreprocessing, deterministic_transforms\n"
        "for _ in range(2): deterministic_transforms(ModalityPreprocessing())\n"
        "print('built')"
    )
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "built"
    assert "nvImageCodec" not in result.stderr, result.stderr[-2000:]
