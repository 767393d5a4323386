"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ummkd.data.synthetic import make_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real research-only datasets live: ``$UMMKD_SHARED_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("UMMKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets; skips the test cleanly where it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic unpaired CT/MR phantoms: 4 + 4 small volumes."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    make_synthetic_dataset(root, n_ct=4, n_mr=4, size=(48, 48, 12), seed=1)
    return root
