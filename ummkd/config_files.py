"""The configs shipped inside the package (``ummkd/configs``), found by name anywhere.

``--config demo``, ``--config abdominal_2d/cpu`` and, outside a clone, the clone-relative
``--config configs/abdominal_2d/cpu.yaml`` all name a packaged config; an existing file is used
as given. In a clone, ``configs/`` is a link to ``ummkd/configs``.
"""

from __future__ import annotations

from pathlib import Path

from ummkd.errors import UsageError

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
_CONFIG_FLAGS = ("--config", "-c")


def packaged_config_names() -> list[str]:
    """Names of the packaged YAML configs, e.g. ``demo``, ``abdominal_2d/cpu``."""
    return sorted(
        path.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
        for path in PACKAGED_CONFIGS.rglob("*.yaml")
    )


def _packaged(value: str) -> Path | None:
    """The packaged file or folder that ``value`` names, if any."""
    name = value.removeprefix("./").removeprefix("configs/").rstrip("/")
    for candidate in (name, f"{name}.yaml"):
        path = PACKAGED_CONFIGS / candidate
        if name and path.exists():
            return path
    return None


def resolve_config(value: str, *, what: str = "--config") -> str:
    """The path of a config given by path or by packaged name.

    Args:
        value: A path, a packaged name (``demo``, ``sweeps/kd_lr``, ``abdominal_2d``) or, for
            ``--config``, inline YAML (returned unchanged).
        what: The option named in the error message ("" for none).

    Returns:
        ``value`` if it exists (or is inline YAML), else the packaged file or folder.

    Raises:
        UsageError: Neither a path nor a packaged name (the message lists the names).
    """
    if Path(value).expanduser().exists() or any(c in value for c in "{}:\n"):
        return value
    packaged = _packaged(value)
    if packaged is not None:
        return str(packaged)
    names = ", ".join(packaged_config_names())
    where = f"{what} {value}" if what else value
    raise UsageError(f"{where}: no such file, and no packaged config of that name ({names})")


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
