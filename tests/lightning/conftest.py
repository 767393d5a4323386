"""Fixtures for the Lightning layer and CLI tests: fast CLI overrides and one-thread runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# Overrides that make any config run in seconds on a CPU.
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--data.num_workers=0",
    "--data.batch_size=2",
]
TINY_2D = ["--data.patch_size=[48,48]"]
# The paper's DilatedResNet2d at a tiny width (for configs that use it).
TINY_DRN = [
    "--model.network.init_args.base_channels=2",
    "--model.network.init_args.head_channels=4",
]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only cost time (and stall badly on shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
