"""``ummkd sweep-dry-run FILE [--count N] [--seed S]``: check a W&B sweep file offline.

Renders the command a ``wandb agent`` would run for ``--count`` parameter sets, parses it with
the real ``ummkd`` CLI (``--print_config``; nothing is instantiated) and checks that the values
reach the resolved config, the W&B logger, the metric, the command template and ``None`` values.
Values are drawn simply (``grid``: W&B's order): from ``value``, ``values`` or ``min``/``max``.
W&B's distribution schema is not validated: its validator is in the ``sweeps`` package, which
``wandb`` does not install; W&B validates it when the sweep is created. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import math
import os
import platform
import random
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import yaml

from ummkd.config_files import config_argument
from ummkd.errors import CommandParser, UsageError

METHODS = ("grid", "random", "bayes")
#: Metrics the module logs that a sweep can maximize (``val/dice_<modality>`` besides these).
LOGGED_METRICS = ("val/dice_best", "val/dice")
#: W&B's default command when the sweep has none.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
_ARGS_MACROS = {"args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json"}
_ARGS_MACROS |= {"args_json_file", "args_append_hydra", "args_override_hydra"}
_MACROS = _ARGS_MACROS | {"env", "interpreter", "program"}


class SweepError(UsageError):
    """A problem in a sweep definition."""


# ------------------------------------------------------------------------------ search space
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _contains_none(value: Any) -> bool:
    if isinstance(value, Mapping | list):
        return any(map(_contains_none, value.values() if isinstance(value, Mapping) else value))
    return value is None


def _countable(spec: Mapping[str, Any]) -> bool:
    """Whether a ``min``/``max`` parameter has finitely many values (integers or ``q`` steps)."""
    default = "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else ""
    return "q" in spec or spec.get("distribution", default) == "int_uniform"


def check_parameter(name: str, spec: Any, method: str = "random") -> None:
    """Check that the dry run can draw parameter ``name`` (``spec``; ``grid``: countable).

    Raises:
        SweepError: Naming the parameter and the problem (e.g. ``None`` values).
    """
    where = f"parameter {name!r}"
    if not isinstance(spec, Mapping):
        raise SweepError(f"{where}: expected a mapping such as {{values: [...]}}")
    if "parameters" in spec:
        if not isinstance(spec["parameters"], Mapping) or not spec["parameters"]:
            raise SweepError(f"{where}: `parameters` of a group must be a mapping")
        for key, child in spec["parameters"].items():
            check_parameter(f"{name}.{key}", child, method)
        return
    if _contains_none(spec):
        raise SweepError(
            f"{where}: None/null reaches the CLI as the text 'None' (`--key=None`); use a "
            "sentinel value or leave the parameter out"
        )
    if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
        raise SweepError(f"{where}: `values` must be a non-empty list")
    if "value" in spec or "values" in spec:
        return
    if "min" not in spec or "max" not in spec:
        raise SweepError(f"{where}: the dry run needs `value`, `values` or `min`+`max`")
    for key in ("min", "max", "q"):
        if not _is_number(spec.get(key, 1)):
            hint = " (YAML reads 1e-4 as a string: write 1.0e-4)"
            raise SweepError(
                f"{where}: `{key}` must be a number" + (hint if isinstance(spec[key], str) else "")
            )
    if spec["min"] > spec["max"]:
        raise SweepError(f"{where}: `min` is larger than `max`")
    if str(spec.get("distribution")).endswith("log_uniform_values") and spec["min"] <= 0:
        raise SweepError(f"{where}: log-uniform bounds must be positive")
    if method == "grid" and not _countable(spec):
        raise SweepError(f"{where}: grid search takes `value(s)`, integer `min`/`max` or `q`")


def _choices(spec: Mapping[str, Any]) -> Iterable[Any]:
    """Every value of a countable parameter in W&B's grid order (``q`` steps: ``max`` excluded)."""
    if "parameters" in spec:
        names = sorted(spec["parameters"])
        combos = itertools.product(*(_choices(spec["parameters"][n]) for n in names))
        return (dict(zip(names, combo, strict=True)) for combo in combos)
    if "value" in spec or "values" in spec:
        return [spec["value"]] if "value" in spec else spec["values"]
    if "q" in spec:
        steps = max(0, math.ceil((spec["max"] - spec["min"]) / spec["q"]))
        return [spec["min"] + i * spec["q"] for i in range(steps)]
    return range(spec["min"], spec["max"] + 1)


def _draw(spec: Mapping[str, Any], rng: random.Random) -> Any:
    """One random value of a parameter (a group: a dict of its children's values)."""
    if "parameters" in spec:
        return {n: _draw(spec["parameters"][n], rng) for n in sorted(spec["parameters"])}
    if "value" in spec or "values" in spec:
        return rng.choice(list(_choices(spec)))
    low, high, dist = spec["min"], spec["max"], str(spec.get("distribution", ""))
    if "q" not in spec and _countable(spec):
        return rng.randint(low, high)
    if "log_uniform" not in dist:
        value = rng.uniform(low, high)
    elif dist.endswith("_values"):  # log-uniform between the bounds
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:  # (inv_)log_uniform: the bounds are natural-log exponents
        value = math.exp(rng.uniform(low, high) * (-1 if dist.startswith("inv_") else 1))
    if "q" not in spec:
        return value
    value = round(value / spec["q"]) * spec["q"]
    return int(value) if isinstance(spec["q"], int) else float(value)


def draw(method: str, parameters: Mapping[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` sets of the checked ``parameters`` (groups as nested dicts) for ``method``.

    ``grid``: the first ``count`` grid points in W&B's order (names sorted, the last varies
    fastest); ``random``/``bayes``: random draws seeded with ``seed``.
    """
    if method == "grid":
        return list(itertools.islice(_choices({"parameters": parameters}), count))
    rng = random.Random(seed)
    return [_draw({"parameters": parameters}, rng) for _ in range(count)]


# ---------------------------------------------------------------------------------- command
def render_command(sweep: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """The command line ``wandb agent`` runs for one parameter set.

    As ``wandb.wandb_agent.Agent._command_run``: ``${envvar:NAME}`` is expanded anywhere, a
    whole-element ``${macro}`` becomes its list (``${args}`` by W&B's
    ``create_sweep_command_args``; ``${args_json_file}`` is shown as ``<args.json>``) and an
    unknown one disappears.

    Args:
        sweep: The sweep definition (``command``, ``program``).
        values: One parameter set (name -> value).

    Returns:
        The argv list.
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    template = [str(c) for c in sweep.get("command") or DEFAULT_COMMAND]
    args = {"args": {name: {"value": value} for name, value in values.items()}}
    macros: dict[str, list[str]] = sweep_utils.create_sweep_command_args(args)
    program = [str(sweep.get("program", ""))]
    macros.update(interpreter=["python"], program=program, args_json_file=["<args.json>"])
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, sweep_utils.create_sweep_command(template)):
        whole = chunk.startswith("${") and chunk.endswith("}")
        argv += (macros.get(chunk[2:-1]) or []) if whole else [chunk]
    return argv


def check_command_template(sweep: Mapping[str, Any]) -> list[str]:
    """Error messages for the sweep's ``command`` template (empty when fine)."""
    command = sweep.get("command")
    if command is None:
        return [
            "no `command`: W&B's default `${env} ${interpreter} ${program} ${args}` runs "
            "`python ummkd ...`; use [${env}, ummkd, fit, --config, <experiment.yaml>, "
            "--config, configs/logger/wandb.yaml, ${args}]"
        ]
    if not isinstance(command, list) or not command:
        return ["`command` must be a non-empty list"]
    template = [str(c) for c in command]
    errors: list[str] = []
    args_at = []
    for i, chunk in enumerate(template):
        if chunk.startswith("${") and chunk.endswith("}") and not chunk.startswith("${envvar:"):
            if chunk[2:-1] not in _MACROS:
                errors.append(f"unknown macro {chunk} (the agent drops it silently)")
            elif chunk[2:-1] in _ARGS_MACROS:
                args_at.append(i)
        elif "${" in re.sub(r"\$\{envvar:[A-Z0-9_]*\}", "", chunk):
            errors.append(f"{chunk!r}: the agent expands a macro only as a whole command element")
    if "${program}" in template and not sweep.get("program"):
        errors.append("the command uses ${program} but the sweep has no `program`")
    if len(args_at) != 1:
        found = [template[i] for i in args_at] or "none"
        errors.append(
            f"the command needs exactly one ${{args}} macro for the values (found {found})"
        )
    elif any(c.split("=")[0] == "--config" for c in template[args_at[0] + 1 :]):
        errors.append("--config after ${args} overrides the sweep's values; put ${args} last")
    return errors


def cli_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``ummkd`` in a rendered command, or ``None`` if it does not run ummkd.

    Recognized: ``[/usr/bin/env [VAR=value ...]] [.../]ummkd ...`` and ``... python -m ummkd``.
    """
    rest = list(argv)
    if rest and Path(rest[0]).name == "env":  # env [VAR=value ...] command
        rest = list(itertools.dropwhile(lambda a: "=" in a and not a.startswith("-"), rest[1:]))
    if rest and Path(rest[0]).name == "ummkd":
        return rest[1:]
    if rest and Path(rest[0]).name.startswith("python") and rest[1:3] == ["-m", "ummkd"]:
        return rest[3:]
    return None


# ------------------------------------------------------------------------------ CLI parsing
def resolve_cli_config(args: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """Parse CLI arguments with the real ``ummkd`` parser (``--print_config``; no training).

    Args:
        args: Arguments after ``ummkd`` (e.g. ``["fit", "--config", ...]``).

    Returns:
        ``(resolved config, "")``, or ``(None, the CLI's error output)``.
    """
    from ummkd import cli

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    environ = dict(os.environ)  # the CLI sets UMMKD_RUN_VERSION (and more): restored below
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main([*args, "--print_config"])
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # the CLI raised instead of exiting: report it as a parse error
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        os.environ.clear()
        os.environ.update(environ)
    if code not in (0, None):
        lines = (err.getvalue() or out.getvalue()).strip().splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
        # the error without the usage text and warnings printed before it
        return None, "\n".join(lines[starts[0] :] if starts else lines[-20:]) or f"exit code {code}"
    config = None
    with contextlib.suppress(yaml.YAMLError):
        config = yaml.safe_load(out.getvalue())
    if not isinstance(config, dict):
        return None, "the CLI printed no config (is the first argument a subcommand like fit?)"
    return config, ""


def _lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for key in dotted.split("."):
        if isinstance(node, Mapping) and "init_args" in node and key not in node:
            node = node["init_args"]  # --model.network.base_channels style (no init_args)
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _same(expected: Any, actual: Any) -> bool:
    if _is_number(expected) and _is_number(actual):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(map(_same, expected, actual))
    if isinstance(expected, str) and isinstance(actual, Mapping) and "class_path" in actual:
        return f".{actual['class_path']}".endswith(f".{expected}")
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return all(k in actual and _same(v, actual[k]) for k, v in expected.items())
    return expected == actual


def _flat_values(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _flat_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_values_applied(config: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Error messages for sampled ``values`` that the resolved ``config`` lacks or overrides."""
    errors = []
    for key, value in _flat_values(values):
        found, actual = _lookup(config, key)
        if not found:
            errors.append(f"{key}: not in the resolved config (the run would ignore it)")
        elif not _same(value, actual):
            errors.append(
                f"{key}: sweep value {value!r} but the resolved config has {actual!r} "
                "(overridden by a later --config or argument?)"
            )
    return errors


def check_wandb_logger(config: Mapping[str, Any]) -> list[str]:
    """Error messages unless the resolved ``config``'s trainer logs unprefixed metrics to W&B."""
    from lightning.pytorch.loggers import WandbLogger

    trainer = config.get("trainer") or {}
    loggers = trainer.get("logger")
    found = []
    for item in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(item, Mapping) and "class_path" in item:
            module, _, name = str(item["class_path"]).rpartition(".")
            with contextlib.suppress(ImportError, AttributeError, ValueError):
                cls = getattr(importlib.import_module(module), name)
                if isinstance(cls, type) and issubclass(cls, WandbLogger):
                    found.append(item)
    errors = [
        f"WandbLogger prefix {prefix!r} renames every metric the sweep reads"
        for item in found
        if (prefix := (item.get("init_args") or {}).get("prefix"))
    ]
    if not found:
        errors.append(
            "trainer.logger has no WandbLogger: runs would never report the metric to W&B "
            "(add --config configs/logger/wandb.yaml before ${args})"
        )
    if trainer.get("fast_dev_run"):
        errors.append("trainer.fast_dev_run replaces the loggers: nothing reaches W&B")
    return errors


def _modalities(config: Mapping[str, Any]) -> list[str] | None:
    data = config.get("data") or {}
    if data.get("modalities"):
        return [str(m) for m in data["modalities"]]
    if data.get("root") and Path(data["root"]).is_dir():
        from ummkd.data.dataset_spec import load_dataset

        with contextlib.suppress(ValueError, OSError):  # unreadable: check the name's form only
            return load_dataset(data["root"]).modality_names
    return None


def check_metric(sweep: Mapping[str, Any], config: Mapping[str, Any] | None) -> list[str]:
    """Error messages unless the sweep maximizes a metric the module logs.

    ``config`` is a resolved config (for the modality names) or ``None``.
    """
    metric = sweep.get("metric")
    if not isinstance(metric, Mapping) or not metric.get("name"):
        return ["`metric` with a `name` (and goal: maximize) is required (bayes needs it)"]
    name, errors = str(metric["name"]), []
    modalities = _modalities(config or {})
    names = [*LOGGED_METRICS, *(f"val/dice_{m}" for m in modalities or [])]
    if name not in names and (modalities or not re.fullmatch(r"val/dice_[A-Za-z0-9]+", name)):
        names += [] if modalities else ["val/dice_<modality>"]
        errors.append(f"metric {name!r} is not logged by the module; use one of {names}")
    if metric.get("goal") != "maximize":
        errors.append(
            f"metric goal is {metric.get('goal', 'unset (W&B default: minimize)')!r}; "
            "Dice must be maximized: goal: maximize"
        )
    return errors


def check_sweep(sweep: Any) -> list[str]:
    """Error messages of a loaded sweep file that need no CLI (method, parameters, command)."""
    if not isinstance(sweep, Mapping):
        return ["the sweep file must hold a mapping"]
    errors: list[str] = []
    method = sweep.get("method")
    if method not in METHODS:
        errors.append(f"`method` must be one of {list(METHODS)}, got {method!r}")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        errors.append("`parameters` must be a non-empty mapping of name -> definition")
    else:
        for name, spec in parameters.items():
            try:
                check_parameter(str(name), spec, str(method))
            except SweepError as exc:
                errors.append(str(exc))
    return errors + check_command_template(sweep)


# ------------------------------------------------------------------------------------- main
def _print_all(messages: Iterable[str], prefix: str = "error") -> None:
    for message in messages:
        print(f"{prefix}: {message}", file=sys.stderr)


def _check_command(argv: Sequence[str], values: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """``(resolved config or None, problems)`` of one rendered command."""
    args = cli_arguments(argv)
    if args is None:
        return None, ["the command does not run the ummkd CLI (`ummkd ...`, `python -m ummkd`)"]
    if not args or args[0] != "fit":
        _print_all(["the subcommand is not `fit`"], "  warning")
    config, error = resolve_cli_config(args)
    if config is None:
        indented = "\n".join(f"    {line}" for line in error.splitlines())
        return None, [f"the ummkd CLI rejects this command:\n{indented}"]
    return config, check_values_applied(config, values) + check_wandb_logger(config)


def dry_run(path: str | os.PathLike[str], count: int = 3, seed: int = 0) -> int:
    """Check the sweep file ``path`` on ``count`` parameter sets (random draws: ``seed``).

    Prints the commands an agent would run and the problems; returns 0 when all is well, 1 when
    the sweep has problems, 2 when the file cannot be read.
    """
    text = ""
    try:
        text = Path(path).read_text()
        sweep = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        hint = "\nhint: in a [flow, list] quote the macros ('${env}') or use a block list"
        _print_all([f"cannot read {path}: {exc}" + (hint if "${" in text else "")])
        return 2
    if isinstance(sweep, Mapping) and not sweep.get("program"):
        _print_all(["no `program` (W&B documents it as required; use `program: ummkd`)"], "warning")
    if errors := check_sweep(sweep):
        _print_all(errors)
        _print_all([f"{len(errors)} problem(s)"], str(path))
        return 1
    metric = sweep["metric"] if isinstance(sweep.get("metric"), Mapping) else {}
    print(
        f"{path}: method {sweep['method']}, metric {metric.get('name')!r} "
        f"({metric.get('goal', 'minimize')}), {len(sweep['parameters'])} parameter(s)"
    )
    failures = 0
    resolved = None
    samples = draw(sweep["method"], sweep["parameters"], count, seed)
    for i, values in enumerate(samples, 1):
        argv = render_command(sweep, values)
        print(f"[{i}/{len(samples)}] " + " ".join(f"{k}={v!r}" for k, v in _flat_values(values)))
        print(f"  {shlex.join(argv)}")
        config, problems = _check_command(argv, values)
        resolved = resolved or config
        _print_all(problems, "  error")
        failures += bool(problems)
        if not problems:
            print("  ok: parsed by the ummkd CLI, values applied")
    metric_errors = check_metric(sweep, resolved)
    _print_all(metric_errors)
    if failures or metric_errors:
        metric_note = f", {len(metric_errors)} metric problem(s)" if metric_errors else ""
        _print_all([f"{failures} of {len(samples)} command(s) failed{metric_note}"], str(path))
        return 1
    print(f"{path}: OK ({len(samples)} command(s) checked)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ummkd sweep-dry-run``."""
    parser = CommandParser(
        prog="ummkd sweep-dry-run",
        description="Render and parse the commands a W&B sweep agent would run (no training).",
    )
    parser.add_argument(
        "file",
        type=config_argument("sweep"),
        help="sweep definition (YAML): a file or a packaged name, e.g. sweeps/kd_lr",
    )
    parser.add_argument("--count", type=int, default=3, help="parameter sets to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ummkd sweep-dry-run FILE [--count N] [--seed S]``; exit 0 (ok), 1 (problems), 2 (input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return dry_run(args.file, count=args.count, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
