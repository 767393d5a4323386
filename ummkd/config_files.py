"""The configs shipped inside the package (``ummkd/configs``), found by name anywhere.

``--config demo``, ``--config abdominal_2d/cpu`` and, outside a clone, the clone-relative
``--config configs/abdominal_2d/cpu.yaml`` all name a packaged config; an existing file is used
as given. In a clone, ``configs/`` is a link to ``ummkd/configs``.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ummkd.errors import UsageError

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
_CONFIG_FLAGS = ("--config", "-c")
_SWEEPS = "sweeps/"
Kind = Literal["config", "sweep", "folder"]


def packaged_config_names(kind: Kind = "config") -> list[str]:
    """Names of the packaged configs (``demo``, ``abdominal_2d/cpu``), sweeps or folders."""
    if kind == "folder":
        found = [p for p in PACKAGED_CONFIGS.rglob("*") if p.is_dir()]
    else:
        found = [p.with_suffix("") for p in PACKAGED_CONFIGS.rglob("*.yaml")]
    names = sorted(p.relative_to(PACKAGED_CONFIGS).as_posix() for p in found)
    if kind == "folder":
        return names
    return [n for n in names if n.startswith(_SWEEPS) == (kind == "sweep")]


def _packaged(value: str, kind: Kind) -> Path | None:
    """The packaged file or folder that ``value`` names, if any."""
    name = value.removeprefix("./").removeprefix("configs/").rstrip("/")
    for candidate in (name, f"{name}.yaml"):
        path = PACKAGED_CONFIGS / candidate
        if name and path.exists() and path.is_dir() == (kind == "folder"):
            return path
    return None


def resolve_config(value: str, *, what: str = "--config", kind: Kind = "config") -> str:
    """The path of a config given by path or by packaged name.

    Args:
        value: A path, a packaged name (``demo``, ``sweeps/kd_lr``, ``abdominal_2d``) or, for
            ``--config``, inline YAML (returned unchanged).
        what: The option named in the error message ("" for none).
        kind: A config file, a sweep file or a folder of configs.

    Returns:
        ``value`` if it exists (or is inline YAML), else the packaged file or folder.

    Raises:
        UsageError: Neither a path nor a packaged name (the message suggests close names and
            lists the packaged ones), or a file where a folder is expected.
    """
    where = f"{what} {value}" if what else value
    given = Path(value).expanduser()
    if given.exists():
        if kind == "folder" and not given.is_dir():
            raise UsageError(f"{where}: not a folder; give the folder that holds the configs")
        return value
    if kind == "config" and any(c in value for c in "{}:\n"):
        return value
    packaged = _packaged(value, kind)
    if packaged is not None:
        return str(packaged)
    names = packaged_config_names(kind)
    name = value.removeprefix("configs/").removesuffix(".yaml")
    close = difflib.get_close_matches(name, names, n=3)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    noun = {"config": "config", "sweep": "sweep", "folder": "config folder"}[kind]
    raise UsageError(
        f"{where}: no such file, and no packaged {noun} of that name; {guess}"
        f"packaged: {', '.join(names)}"
    )


def config_argument(kind: Kind = "config") -> Callable[[str], Path]:
    """An argparse ``type`` that resolves a path or packaged name (see :func:`resolve_config`)."""

    def parse(value: str) -> Path:
        try:
            return Path(resolve_config(value, what="", kind=kind))
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def resolve_config_arguments(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config``/``-c`` value resolved by :func:`resolve_config`."""
    resolved = list(argv)
    for index, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name not in _CONFIG_FLAGS:
            continue
        if sep:
            resolved[index] = f"{name}={resolve_config(value)}"
        elif index + 1 < len(argv):
            resolved[index + 1] = resolve_config(argv[index + 1])
    return resolved
