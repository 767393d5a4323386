"""Output of the benchmark scripts: printed as usual and, with ``--append FILE``, also added to
FILE (``docs/performance.md`` in ``make bench``) as a new dated section that records the date,
the exact command, the git commit and the machine above the printed tables.

The file is rewritten atomically with its old content kept in front, so a failed or interrupted
benchmark never leaves it truncated; nothing is appended when the benchmark raises.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ummkd.data.io import write_text_atomic
from ummkd.provenance import git_commit, machine_description


class _Tee(io.TextIOBase):
    """A text stream that writes to several streams at once."""

    def __init__(self, *streams: TextIO) -> None:
        super().__init__()
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()


def _markdown_file(text: str) -> Path:
    """``--append`` value: a file whose folder exists (checked before the benchmark runs)."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{path}: give a markdown file in an existing folder (e.g. docs/performance.md)"
        )
    return path


def add_append_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``--append MARKDOWN`` option shared by the benchmark scripts."""
    parser.add_argument(
        "--append",
        type=_markdown_file,
        default=None,
        metavar="MARKDOWN",
        help="also append the printed results as a dated section to this markdown file "
        "(e.g. docs/performance.md)",
    )


def section(
    title: str, body: str, *, machine: str, commit: str, argv: list[str] | None = None
) -> str:
    """A markdown section: heading with the date, then command, commit, machine and ``body``."""
    argv = sys.argv if argv is None else argv
    return "\n".join(
        [
            f"## Benchmark run: {title}, {datetime.date.today().isoformat()}",
            "",
            f"- Command: `python {shlex.join(argv)}`",
            f"- Commit: `{commit}`",
            f"- Machine: {machine}",
            "",
            body.strip("\n"),
            "",
        ]
    )


def append_section(path: Path, text: str) -> None:
    """Append ``text`` to the markdown file ``path`` (created if missing), atomically."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing:
        existing = existing.rstrip("\n") + "\n\n"
    write_text_atomic(path, existing + text)


@contextlib.contextmanager
def results_appended_to(
    path: Path | None, title: str, *, machine: str | None = None
) -> Iterator[None]:
    """Print as usual inside the block; afterwards, if ``path`` is given, append what was printed.

    Nothing is appended if the block raises.

    Args:
        path: the markdown file (``--append``), or ``None`` to only print.
        title: the section heading, without the date.
        machine: what ran the benchmark (default: this machine's CPU, cores and torch).
    """
    if path is None:
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    text = section(
        title,
        buffer.getvalue(),
        machine=machine or machine_description(),
        # make bench appends to a tracked file: earlier sections are not code changes
        commit=git_commit(ignoring=path),
    )
    append_section(path, text)
    print(f"appended to {path}")
