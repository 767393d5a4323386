"""Where a result comes from: the git commit and the machine, for reports and model packages.

One home for both, used by ``ummkd reproduce`` (:mod:`ummkd.experiments`), ``ummkd export``
(:mod:`ummkd.model_package`) and the benchmark scripts (``benchmarks/``). Pure: git is asked
through a subprocess, torch is imported only by :func:`machine_description`.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def _git(*args: str) -> str:
    return subprocess.check_output(["git", *args], text=True, stderr=subprocess.DEVNULL)


def git_commit(*, ignoring: Path | None = None, where: Path | None = None) -> str:
    """The current git commit (12 hex digits), ``-dirty`` for uncommitted changes, or ``unknown``.

    Only tracked files count as changes (untracked files do not make a tree dirty).

    Args:
        ignoring: a tracked file whose changes do not count: ``make bench`` appends each
            benchmark's section to a tracked file, so the scripts after the first must not count
            their predecessors' sections as uncommitted changes.
        where: a folder inside the checkout (default: the current folder).

    Returns:
        ``"<commit>"``, ``"<commit>-dirty"``, or ``"unknown"`` outside a git checkout (or
        without git).
    """
    at = ["-C", str(where)] if where is not None else []
    try:
        commit = _git(*at, "rev-parse", "--short=12", "HEAD").strip()
        changed = _git(*at, "status", "--porcelain", "--untracked-files=no").splitlines()
        if ignoring is not None and changed:
            # Porcelain paths are relative to the top of the work tree.
            top = Path(_git(*at, "rev-parse", "--show-toplevel").strip())
            target = Path(ignoring).resolve()
            changed = [line for line in changed if (top / line[3:]).resolve() != target]
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return commit + ("-dirty" if changed else "")


@functools.cache
def code_commit() -> str:
    """The commit of the ummkd code that is running (:func:`git_commit` of the package's folder).

    Asked once per process (the code imported at the first call); ``unknown`` for an installed
    package outside a git checkout.
    """
    return git_commit(where=Path(__file__).resolve().parent)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (else ``platform.processor()`` or the machine)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def device_type() -> str:
    """The kind of device runs train on: the GPU's name where CUDA is available, else the CPU's.

    Returns:
        e.g. ``"NVIDIA H200"`` or ``"AMD EPYC 7B13 (2 cores)"``.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def machine_description() -> str:
    """GPU (where CUDA is available), CPU model, core count, torch threads, torch and Python."""
    import torch

    gpu = f"{torch.cuda.get_device_name(0)}; " if torch.cuda.is_available() else ""
    return (
        f"{gpu}{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
