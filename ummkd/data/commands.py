"""The ``ummkd data`` subcommands: ``check`` a dataset, ``synth`` the demo data, ``import`` one.

``ummkd/cli.py`` hands everything after ``ummkd data`` to :func:`main`, which returns the exit
code (it never calls ``sys.exit``):

* ``ummkd data check ROOT [--format F] [--modality M] [--dim 2|3] [--shallow]`` prints the
  per-modality summary, one line per problem and the warnings (a CT image that does not look
  like Hounsfield units, files outside the dataset folder, slices of one patient in several
  split parts, classes a modality never has: see
  :func:`~ummkd.data.dataset_spec.dataset_warnings`); exit code 1 when there are problems.
* ``ummkd data synth --out DIR [--n-ct N --n-mr N --size X Y Z --seed S --dim D --overwrite]``
  writes the synthetic phantom dataset.
* ``ummkd data import KIND ...`` runs an importer of :data:`ummkd.data.importers.IMPORTERS`,
  then validates and summarizes what it wrote.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
from rich.console import Console

from ummkd.data.dataset_spec import (
    FORMATS,
    DatasetSpec,
    DatasetSpecError,
    Problem,
    dataset_warnings,
    load_dataset,
    summarize_dataset,
    validate_dataset,
)
from ummkd.data.intensity import ct_units_warnings
from ummkd.data.synthetic import make_synthetic_dataset
from ummkd.errors import CommandParser

__all__ = ["Importer", "build_parser", "main"]

_WIDTH_WHEN_PIPED = 160
_IMPORTERS_MODULE = "ummkd.data.importers"


class Importer(Protocol):
    """What an importer module of ``ummkd.data.importers.IMPORTERS`` provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the importer's command-line arguments to its ``ummkd data import KIND`` parser."""

    def run(self, args: argparse.Namespace) -> Path:
        """Import the dataset described by ``args``; return the output dataset root."""


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = _WIDTH_WHEN_PIPED
    return console


def _print_line(console: Console, text: str) -> None:
    """Print one unwrapped line verbatim (no rich markup: paths may hold brackets)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _error(command: str, message: str, code: int = 2) -> int:
    """Print ``ummkd data <command>: error: <message>``; return the exit code.

    Exit codes: 2 for bad input, 1 for a failure of ours.
    """
    _print_line(_console(stderr=True), f"ummkd data {command}: error: {message}")
    return code


def _report(
    spec: DatasetSpec,
    problems: Sequence[Problem],
    *,
    deep: bool = True,
    warnings: Sequence[str] = (),
) -> int:
    """Print the summary table, the warnings and the problems; return the exit code."""
    console = _console()
    console.print(summarize_dataset(spec, deep=deep))
    for warning in warnings:
        _print_line(console, f"warning: {warning}")
    for problem in problems:
        _print_line(console, str(problem))
    if problems:
        _print_line(console, f"{len(problems)} problem(s) found in {spec.root}")
        return 1
    _print_line(console, f"no problems found in {spec.root}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        spec = load_dataset(args.root, modality=args.modality, fmt=args.format)
    except DatasetSpecError as err:
        return _error("check", str(err))
    deep = not args.shallow
    problems = validate_dataset(spec, deep=deep, expected_dim=args.dim)
    warnings = dataset_warnings(spec, deep=deep) + (ct_unit_warnings(spec) if deep else [])
    return _report(spec, problems, deep=deep, warnings=warnings)


def ct_unit_warnings(spec: DatasetSpec) -> list[str]:
    """One line per image of a ``ct``-normalized modality that does not look like HU."""
    warnings = []
    for case in spec.cases:
        if spec.modalities[case.modality].normalization != "ct" or not case.image.is_file():
            continue
        try:
            image = np.asarray(nib.load(case.image).dataobj, dtype=np.float32)
        except Exception:  # unreadable files are reported by validate_dataset
            continue
        warnings += [
            f"{case.image}: modality {case.modality!r} is CT but {reason}"
            for reason in ct_units_warnings(image)
        ]
    return warnings


def _synth(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        root = make_synthetic_dataset(
            args.out,
            n_ct=args.n_ct,
            n_mr=args.n_mr,
            size=tuple(args.size),
            ct_spacing=tuple(args.ct_spacing),
            mr_spacing=tuple(args.mr_spacing),
            seed=args.seed,
            dim=args.dim,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        return _error("synth", str(err))
    _print_line(
        _console(),
        f"wrote {args.n_ct} CT + {args.n_mr} MR synthetic cases (not real data) to {root} in "
        f"{time.perf_counter() - start:.1f} s",
    )
    spec = load_dataset(root)
    return _report(spec, validate_dataset(spec))


def _import_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean "the import cannot go on" (reported without a traceback)."""
    custom = getattr(importlib.import_module(_IMPORTERS_MODULE), "DatasetImportError", None)
    extra = (custom,) if isinstance(custom, type) and issubclass(custom, Exception) else ()
    return (OSError, ValueError, *extra)


def _import(args: argparse.Namespace) -> int:
    try:
        root = args.importer.run(args)
    except _import_errors() as err:
        return _error(f"import {args.kind}", f"failed: {err}")
    try:
        spec = load_dataset(root)
    except DatasetSpecError as err:
        return _error(
            f"import {args.kind}", f"the importer wrote an invalid dataset description: {err}", 1
        )
    return _report(spec, validate_dataset(spec), warnings=dataset_warnings(spec))


def _load_importers() -> Mapping[str, Importer]:
    """The importer registry, imported only when ``ummkd data import`` runs."""
    module = importlib.import_module(_IMPORTERS_MODULE)
    registry = getattr(module, "IMPORTERS", None)
    if not isinstance(registry, Mapping):
        raise ImportError("ummkd.data.importers defines no IMPORTERS registry")
    return registry


def build_parser(importers: Mapping[str, Importer] | None = None) -> argparse.ArgumentParser:
    """Build the ``ummkd data`` argument parser.

    Args:
        importers: Importer registry (kind -> module) whose kinds become ``import``
            subcommands; ``None`` leaves ``import`` without kinds (it is then only listed).

    Returns:
        The parser; parsed arguments carry the subcommand's handler in ``handler``.
    """
    parser = CommandParser(
        prog="ummkd data", description="Check, synthesize and import ummkd datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate a dataset and print its summary",
        description="Validate a dataset, print a per-modality summary and one line per "
        "problem. Exit code 1 when there are problems.",
    )
    check.add_argument("root", type=Path, help="dataset root or dataset/datalist JSON file")
    check.add_argument("--format", choices=FORMATS, default="auto", help="description format")
    check.add_argument(
        "--modality",
        help="only this modality (ummkd); the modality/channel name (nnU-Net, Decathlon)",
    )
    check.add_argument(
        "--dim", type=int, choices=(2, 3), help="dimension the data must have (default: declared)"
    )
    check.add_argument(
        "--shallow", action="store_true", help="only check the schema and that files exist"
    )
    check.set_defaults(handler=_check)

    synth = commands.add_parser(
        "synth",
        help="write the synthetic CT + MR phantom dataset",
        description="Write synthetic unpaired CT-like and MR-like abdominal phantoms (not real "
        "data; for trying out and testing ummkd).",
    )
    synth.add_argument("--out", type=Path, required=True, help="output dataset root")
    synth.add_argument("--n-ct", type=int, default=16, help="number of CT cases (default 16)")
    synth.add_argument("--n-mr", type=int, default=10, help="number of MR cases (default 10)")
    synth.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=(96, 96, 32),
        metavar=("X", "Y", "Z"),
        help="CT grid in voxels (default 96 96 32)",
    )
    synth.add_argument(
        "--ct-spacing",
        type=float,
        nargs=3,
        default=(1.5, 1.5, 2.5),
        metavar=("DX", "DY", "DZ"),
        help="CT spacing in mm (default 1.5 1.5 2.5)",
    )
    synth.add_argument(
        "--mr-spacing",
        type=float,
        nargs=3,
        default=(1.8, 1.8, 6.0),
        metavar=("DX", "DY", "DZ"),
        help="MR spacing in mm (default 1.8 1.8 6)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--dim", type=int, choices=(2, 3), default=3, help="3: volumes, 2: single slices"
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out, replacing files"
    )
    synth.set_defaults(handler=_synth)

    kinds = ", ".join(importers) if importers else "run `ummkd data import --help`"
    importer = commands.add_parser(
        "import",
        help=f"convert a public dataset into an ummkd dataset ({kinds})",
        description="Convert a public dataset into an ummkd dataset, then validate it.",
    )
    if importers is not None:
        kind_parsers = importer.add_subparsers(dest="kind", required=True, metavar="KIND")
        for kind, module in importers.items():
            kind_parser = kind_parsers.add_parser(
                kind, help=(module.__doc__ or "").strip().split("\n")[0]
            )
            module.add_arguments(kind_parser)
            kind_parser.set_defaults(handler=_import, importer=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ummkd data`` with the arguments that follow ``data``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on dataset problems or errors, 2 on usage errors.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    importers = None
    if args_list[:1] == ["import"]:
        try:
            importers = _load_importers()
        except ImportError as err:
            return _error("import", f"no dataset importers are available ({err})", code=1)
    parser = build_parser(importers)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:  # argparse exits on --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    return args.handler(args)
