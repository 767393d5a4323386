"""The root of ummkd's user-facing errors.

A :class:`UMMKDError` is a problem with what the user gave (a file, an option, a dataset, a
checkpoint), not a bug: ``ummkd`` prints its message in one or two lines, without a traceback
(unless ``--traceback`` or ``UMMKD_DEBUG=1``), and exits with :attr:`UMMKDError.exit_code`.
The subclasses that also derive from ``ValueError`` keep ``except ValueError`` callers working.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = [
    "CheckpointError",
    "CommandParser",
    "DataError",
    "RunError",
    "UMMKDError",
    "UsageError",
]


class UMMKDError(Exception):
    """A user error, reported in one line; exit code 2 (bad input) unless a subclass says 1.

    Attributes:
        exit_code: The process exit code for this error.
    """

    exit_code = 2


class UsageError(UMMKDError, ValueError):
    """A command-line option or configuration value is wrong, missing or contradictory."""


class DataError(UMMKDError, ValueError):
    """A dataset, image or label file is missing, malformed or unusable."""


class CheckpointError(UMMKDError, ValueError):
    """A checkpoint is missing, truncated, not a checkpoint or does not fit the command."""


class RunError(UMMKDError):
    """A run could not complete (a child command failed); exit code 1."""

    exit_code = 1


class CommandParser(argparse.ArgumentParser):
    """The parser of ummkd's plain commands: a usage error is one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>; see `<prog> --help``` and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")
