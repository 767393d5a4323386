"""Checkpoint files: atomic writes, and reading one back with errors that name the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ummkd.data.io import atomic_write
from ummkd.errors import CheckpointError

__all__ = ["AtomicCheckpointIO", "checkpoint_modalities", "read_checkpoint"]

_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partial checkpoint at the destination.

    Local checkpoints are written to a temporary file in the destination folder, fsynced and
    then renamed onto the destination (:func:`ummkd.data.io.atomic_write`): an interrupted
    write, a full disk or a SIGKILL leave the previous file (e.g. ``last.ckpt``) as it was.
    Remote paths (``s3://``...) go through Lightning's default writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Args:
            checkpoint: The checkpoint dictionary.
            path: Destination file.
            storage_options: Not supported (as in ``TorchCheckpointIO``).

        Raises:
            TypeError: If ``storage_options`` is given.
        """
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as handle:
            torch.save(checkpoint, handle)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (tensors and plain data only, memory-mapped, on CPU).

    Args:
        path: The checkpoint file.

    Returns:
        The checkpoint dictionary (with a ``state_dict``).

    Raises:
        CheckpointError: If the file is missing, truncated, not a checkpoint or holds objects
            other than tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (*_LOAD_ERRORS, zipfile.BadZipFile) as error:
        detail = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:120]
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: it is truncated, not a checkpoint or holds "
            f"more than tensors and plain data ({type(error).__name__}: {detail}); use another "
            "checkpoint"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def checkpoint_modalities(checkpoint: dict[str, Any]) -> list[str] | None:
    """The modalities a checkpoint was trained for (``None`` if it does not say)."""
    modalities = checkpoint.get("hyper_parameters", {}).get("modalities")
    return list(modalities) if isinstance(modalities, (list, tuple)) else None
