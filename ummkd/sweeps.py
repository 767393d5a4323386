"""``ummkd sweep-dry-run``: check a W&B sweep definition without W&B, a network or training.

For ``--count`` parameter sets drawn from the sweep's ``parameters`` (``grid`` enumerates them
in W&B's order; otherwise each value is drawn from its ``value``, ``values`` or ``min``/``max``),
it renders the exact command a ``wandb agent`` would run for them (W&B's own macro expansion:
``${env}``, ``${interpreter}``, ``${program}``, ``${args}``, ``${args_no_hyphens}``, ... and
``${envvar:NAME}``), prints it, and parses it with the real ``ummkd`` parser (``--print_config``;
nothing is instantiated), so a misspelt parameter name or an unparsable value fails here with
the CLI's own error instead of in every agent run. It also checks what W&B would only notice
much later:

* the search space: no ``None`` values (they reach the CLI as the text ``None``), numeric
  bounds (W&B validates the rest of the schema when the sweep is created);
* the metric: one the module logs (``val/dice_best``, ``val/dice``, ``val/dice_<modality>``),
  ``goal: maximize`` (W&B's default is ``minimize``);
* the command: config files before ``${args}`` (later ``--config`` files override the sweep's
  values), whole-element macros only, and a ``WandbLogger`` in the resolved config (otherwise
  runs never report the metric); each sampled value must reach the resolved config unchanged.

Examples::

    ummkd sweep-dry-run configs/sweeps/kd_lr.yaml
    ummkd sweep-dry-run configs/sweeps/demo_random.yaml --count 5 --seed 1

Relative paths in the command (``--config configs/...``) are resolved against the current
folder, like the agent does: run it where the agents will run (the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ummkd.errors import UsageError

METHODS = ("grid", "random", "bayes")
#: Metrics the module logs that a sweep can maximize (``val/dice_<modality>`` besides these).
LOGGED_METRICS = ("val/dice_best", "val/dice")
#: W&B's default command when the sweep has none.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
_ARGS_MACROS = frozenset(
    {
        "args",
        "args_no_equals",
        "args_no_hyphens",
        "args_no_boolean_flags",
        "args_json",
        "args_json_file",
        "args_append_hydra",
        "args_override_hydra",
    }
)
_MACROS = _ARGS_MACROS | {"env", "interpreter", "program"}
#: W&B distributions whose ``min``/``max`` are natural-log exponents: value from the exponent.
_EXPONENT_BOUNDS = {
    "log_uniform": math.exp,
    "q_log_uniform": math.exp,
    "inv_log_uniform": lambda x: math.exp(-x),
}


class SweepError(UsageError):
    """A problem in a sweep definition."""


# ------------------------------------------------------------------------------ search space
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _contains_none(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_contains_none(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_none(v) for v in value)
    return value is None


def check_parameter(name: str, spec: Any, method: str = "random") -> None:
    """Check that the dry run can draw ``spec`` and that its values can reach the CLI.

    W&B validates the distribution itself when the sweep is created; this checks what the dry
    run needs (``value``, ``values``, numeric ``min``/``max``, nested ``parameters``) and what
    W&B accepts but the CLI cannot use (``None``).

    Args:
        name: The parameter's name.
        spec: Its definition from the sweep file.
        method: The sweep's method (``grid`` takes only countable parameters).

    Raises:
        SweepError: With a message naming the parameter and the problem.
    """
    if not isinstance(spec, Mapping):
        raise SweepError(f"parameter {name!r}: expected a mapping such as {{values: [...]}}")
    if "parameters" in spec:
        if not isinstance(spec["parameters"], Mapping) or not spec["parameters"]:
            raise SweepError(f"parameter {name!r}: `parameters` of a group must be a mapping")
        for key, child in spec["parameters"].items():
            check_parameter(f"{name}.{key}", child, method)
        return
    if _contains_none(spec):
        raise SweepError(
            f"parameter {name!r}: None/null in the search space; W&B passes it as the text "
            "'None' (`--key=None`), which the CLI rejects or takes as a string; use a sentinel "
            "value or leave the parameter out"
        )
    if "value" in spec:
        return
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise SweepError(f"parameter {name!r}: `values` must be a non-empty list")
        return
    if "min" not in spec or "max" not in spec:
        raise SweepError(
            f"parameter {name!r}: the dry run draws from `value`, `values` or `min`+`max` "
            f"(got keys {sorted(spec)})"
        )
    for key in ("min", "max", "q"):
        value = spec.get(key, 1)
        if not isinstance(value, int | float) or isinstance(value, bool):
            hint = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) else ""
            raise SweepError(f"parameter {name!r}: `{key}` must be a number{hint}")
    if spec["min"] > spec["max"]:
        raise SweepError(f"parameter {name!r}: `min` is larger than `max`")
    if method == "grid" and not _countable(spec):
        raise SweepError(
            f"parameter {name!r}: grid search takes `value`, `values`, integer `min`/`max` or "
            "a `q` step"
        )


def _countable(spec: Mapping[str, Any]) -> bool:
    return (
        "q" in spec
        or (_is_int(spec["min"]) and _is_int(spec["max"]) and spec.get("distribution") is None)
        or spec.get("distribution") == "int_uniform"
    )


def _draw_bounded(spec: Mapping[str, Any], rng: random.Random) -> int | float:
    """A value between the bounds: an integer for integer bounds, rounded to ``q`` if given."""
    low, high = spec["min"], spec["max"]
    if "q" not in spec and _countable(spec):
        return rng.randint(low, high)
    value = rng.uniform(low, high)
    value = _EXPONENT_BOUNDS.get(spec.get("distribution", ""), float)(value)
    if "q" in spec:
        value = round(value / spec["q"]) * spec["q"]
        return int(value) if _is_int(spec["q"]) else float(value)
    return value


def _choices(spec: Mapping[str, Any]) -> list[Any]:
    """Every value of a countable parameter, in order (``q`` steps: ``max`` excluded)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "q" in spec:
        count = max(0, math.ceil((spec["max"] - spec["min"]) / spec["q"]))
        return [spec["min"] + i * spec["q"] for i in range(count)]
    return list(range(spec["min"], spec["max"] + 1))


def _leaves(
    parameters: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    for name in sorted(parameters):  # W&B's controller orders the parameters by name
        spec = parameters[name]
        if "parameters" in spec:
            yield from _leaves(spec["parameters"], (*prefix, name))
        else:
            yield (*prefix, name), spec


def _nest(pairs: Iterator[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for path, value in pairs:
        target = point
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = copy.deepcopy(value)
    return point


def draw(method: str, parameters: Mapping[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """Parameter sets for a dry run: the first ``count`` grid points, or random draws.

    Args:
        method: ``grid`` (W&B's order: names sorted, the last one varies fastest), ``random``
            or ``bayes`` (both drawn at random).
        parameters: The checked ``parameters`` section.
        count: How many sets.
        seed: Random seed.

    Returns:
        ``count`` parameter sets (fewer when a grid is smaller), groups as nested dicts.
    """
    leaves = list(_leaves(parameters))
    if method == "grid":
        paths = [path for path, _ in leaves]
        combos = itertools.product(*(_choices(spec) for _, spec in leaves))
        points = (_nest(zip(paths, combo, strict=True)) for combo in combos)
        return list(itertools.islice(points, count))
    rng = random.Random(seed)

    def one(spec: Mapping[str, Any]) -> Any:
        if "min" in spec and "value" not in spec and "values" not in spec:
            return _draw_bounded(spec, rng)
        return rng.choice(_choices(spec))

    return [_nest((path, one(spec)) for path, spec in leaves) for _ in range(count)]


# ---------------------------------------------------------------------------------- command
def render_command(
    sweep: Mapping[str, Any], values: Mapping[str, Any], *, args_json_file: str = "<args.json>"
) -> list[str]:
    """The command line ``wandb agent`` runs for one parameter set.

    Mirrors ``wandb.wandb_agent.Agent._command_run``: ``${envvar:NAME}`` is replaced inside
    any element; an element that is exactly ``${macro}`` is replaced by that macro's list
    (``${args}`` = ``--name=value`` per parameter, values rendered by W&B's
    ``create_sweep_command_args``); unknown whole-element macros disappear, as in the agent.

    Args:
        sweep: The sweep definition (``command``, ``program``).
        values: One parameter set (name -> value).
        args_json_file: Path shown for ``${args_json_file}``.

    Returns:
        The argv list.
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    template = [str(c) for c in (sweep.get("command") or DEFAULT_COMMAND)]
    command = sweep_utils.create_sweep_command(list(template))
    macros: dict[str, list[str]] = sweep_utils.create_sweep_command_args(
        {"args": {name: {"value": value} for name, value in values.items()}}
    )
    macros["interpreter"] = ["python"]
    macros["program"] = [str(sweep.get("program", ""))]
    macros["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def check_command_template(sweep: Mapping[str, Any]) -> list[str]:
    """Problems in the ``command`` template (before any values are filled in).

    Args:
        sweep: The sweep definition.

    Returns:
        Error messages (empty when fine).
    """
    errors: list[str] = []
    command = sweep.get("command")
    if command is None:
        errors.append(
            "no `command`: W&B's default `${env} ${interpreter} ${program} ${args}` runs "
            "`python ummkd ...`; use [${env}, ummkd, fit, --config, <experiment.yaml>, "
            "--config, configs/logger/wandb.yaml, ${args}]"
        )
        return errors
    if not isinstance(command, list) or not command:
        return ["`command` must be a non-empty list"]
    template = [str(c) for c in command]
    args_at = []
    for i, chunk in enumerate(template):
        whole = chunk.startswith("${") and chunk.endswith("}")
        if whole and not chunk.startswith("${envvar:"):
            name = chunk[2:-1]
            if name not in _MACROS:
                errors.append(f"unknown macro {chunk} (the agent drops it silently)")
            elif name in _ARGS_MACROS:
                args_at.append(i)
        elif re.sub(r"\$\{envvar:[A-Z0-9_]*\}", "", chunk).count("${"):
            errors.append(
                f"{chunk!r}: a macro must be a whole command element (the agent does not "
                "expand it inside other text)"
            )
    if "${program}" in template and not sweep.get("program"):
        errors.append("the command uses ${program} but the sweep has no `program`")
    if len(args_at) != 1:
        errors.append(
            "the command needs exactly one ${args} macro (found "
            f"{[template[i] for i in args_at] or 'none'}); without it the sweep's values never "
            "reach the CLI"
        )
    else:
        later = [
            c for c in template[args_at[0] + 1 :] if c == "--config" or c.startswith("--config=")
        ]
        if later:
            errors.append(
                "--config after ${args}: later config files override the sweep's values; put "
                "${args} last"
            )
    return errors


def cli_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments given to the ``ummkd`` CLI in a rendered command, if it runs ummkd.

    Recognizes ``[/usr/bin/env [VAR=value ...]] ummkd ...`` (any path ending in ``ummkd``)
    and ``... python -m ummkd ...``.

    Args:
        argv: A rendered command.

    Returns:
        The CLI arguments, or ``None`` when the command does not run ummkd.
    """
    rest = list(argv)
    if rest and Path(rest[0]).name == "env":
        rest = rest[1:]
        while rest and "=" in rest[0] and not rest[0].startswith("-"):
            rest = rest[1:]
    if not rest:
        return None
    if Path(rest[0]).name == "ummkd":
        return rest[1:]
    if Path(rest[0]).name.startswith("python") and rest[1:3] == ["-m", "ummkd"]:
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

    saved_version = os.environ.get("UMMKD_RUN_VERSION")
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main([*args, "--print_config"])
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # the CLI raised instead of exiting: report it as a parse error
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        if saved_version is None:
            os.environ.pop("UMMKD_RUN_VERSION", None)
        else:
            os.environ["UMMKD_RUN_VERSION"] = saved_version
    if code not in (0, None):
        return None, _cli_error(err.getvalue() or out.getvalue()) or f"exit code {code}"
    try:
        config = yaml.safe_load(out.getvalue())
    except yaml.YAMLError as exc:
        return None, f"could not read the printed config: {exc}"
    if not isinstance(config, dict):
        return None, "the CLI printed no config (is the first argument a subcommand like fit?)"
    return config, ""


def _cli_error(text: str) -> str:
    """The CLI's error message without the usage text and warnings printed before it."""
    lines = text.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    return "\n".join(lines[starts[0] :] if starts else lines[-20:])


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
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (expected, actual)):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(
            _same(e, a) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, str) and isinstance(actual, Mapping) and "class_path" in actual:
        path = str(actual["class_path"])
        return path == expected or path.endswith(f".{expected}")
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
    """Check that every sampled value is what the resolved config holds.

    Args:
        config: The resolved config of the subcommand.
        values: One parameter set (groups as nested dicts).

    Returns:
        Error messages.
    """
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


def _class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_wandb_logger(config: Mapping[str, Any]) -> list[str]:
    """Check that the resolved trainer logs to W&B, with unprefixed metric names.

    Args:
        config: The resolved config of the subcommand.

    Returns:
        Error messages.
    """
    from lightning.pytorch.loggers import WandbLogger

    trainer = config.get("trainer") or {}
    loggers = trainer.get("logger")
    items = loggers if isinstance(loggers, list) else [loggers]
    found = []
    for item in items:
        if isinstance(item, Mapping) and "class_path" in item:
            cls = _class(str(item["class_path"]))
            if cls is not None and issubclass(cls, WandbLogger):
                found.append(item)
    errors = []
    if not found:
        errors.append(
            "trainer.logger has no WandbLogger: runs would never report the metric to W&B "
            "(add --config configs/logger/wandb.yaml before ${args})"
        )
    for item in found:
        prefix = (item.get("init_args") or {}).get("prefix")
        if prefix:
            errors.append(f"WandbLogger prefix {prefix!r} renames every metric the sweep reads")
    if trainer.get("fast_dev_run"):
        errors.append("trainer.fast_dev_run replaces the loggers: nothing reaches W&B")
    return errors


def _modalities(config: Mapping[str, Any]) -> list[str] | None:
    data = config.get("data") or {}
    if data.get("modalities"):
        return [str(m) for m in data["modalities"]]
    root = data.get("root")
    if root and Path(root).is_dir():
        from ummkd.data.dataset_spec import load_dataset

        with contextlib.suppress(ValueError, OSError):  # unreadable: check the name's form only
            return load_dataset(root).modality_names
    return None


def check_metric(sweep: Mapping[str, Any], config: Mapping[str, Any] | None) -> list[str]:
    """Check that the sweep optimizes a metric the module logs, in the right direction.

    Args:
        sweep: The sweep definition.
        config: A resolved config (for the modality names), if available.

    Returns:
        Error messages.
    """
    metric = sweep.get("metric")
    if not isinstance(metric, Mapping) or not metric.get("name"):
        return ["`metric` with a `name` (and goal: maximize) is required (bayes needs it)"]
    name = str(metric["name"])
    errors = []
    modalities = _modalities(config) if config is not None else None
    if modalities is None:
        known = name in LOGGED_METRICS or re.fullmatch(r"val/dice_[A-Za-z0-9]+", name)
    else:
        known = name in (*LOGGED_METRICS, *(f"val/dice_{m}" for m in modalities))
    if not known:
        choices = list(LOGGED_METRICS) + [f"val/dice_{m}" for m in modalities or ["<modality>"]]
        errors.append(f"metric {name!r} is not logged by the module; use one of {choices}")
    if metric.get("goal") != "maximize":
        errors.append(
            f"metric goal is {metric.get('goal', 'unset (W&B default: minimize)')!r}; "
            "Dice must be maximized: goal: maximize"
        )
    extra = set(metric) - {"name", "goal", "target", "impute", "impute_while_running"}
    if extra:
        errors.append(f"unknown metric keys {sorted(extra)}")
    return errors


def check_sweep(sweep: Any) -> tuple[list[str], list[str]]:
    """Static checks of a sweep definition (no CLI).

    Args:
        sweep: The loaded sweep YAML.

    Returns:
        ``(errors, warnings)``.
    """
    if not isinstance(sweep, Mapping):
        return ["the sweep file must hold a mapping"], []
    errors: list[str] = []
    warnings: list[str] = []
    method = sweep.get("method")
    if method not in METHODS:
        errors.append(f"`method` must be one of {list(METHODS)}, got {method!r}")
    if not sweep.get("program"):
        warnings.append("no `program` (W&B documents it as required; use `program: ummkd`)")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        errors.append("`parameters` must be a non-empty mapping of name -> definition")
    else:
        for name, spec in parameters.items():
            try:
                check_parameter(str(name), spec, str(method))
            except SweepError as exc:
                errors.append(str(exc))
    errors += check_command_template(sweep)
    return errors, warnings


# ------------------------------------------------------------------------------------- main
def _format_values(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in _flat_values(values))


def dry_run(path: str | os.PathLike[str], count: int = 3, seed: int = 0) -> int:
    """Check a sweep file and print the commands an agent would run.

    Args:
        path: The sweep YAML.
        count: Parameter sets to render and parse.
        seed: Seed of the random draws.

    Returns:
        0 when everything checks out, 1 otherwise.
    """
    try:
        sweep = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        hint = ""
        if isinstance(exc, yaml.YAMLError) and "${" in Path(path).read_text():
            hint = "\nhint: in a [flow, list] quote the macros ('${env}') or use a block list"
        print(f"error: cannot read {path}: {exc}{hint}", file=sys.stderr)
        return 1
    errors, warnings = check_sweep(sweep)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    if errors:
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        print(f"{path}: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    metric = sweep["metric"] if isinstance(sweep.get("metric"), Mapping) else {}
    print(
        f"{path}: method {sweep['method']}, metric {metric.get('name')!r} "
        f"({metric.get('goal', 'minimize')}), {len(sweep['parameters'])} parameter(s)"
    )
    failures = 0
    resolved: dict[str, Any] | None = None
    samples = draw(sweep["method"], sweep["parameters"], count, seed)
    for i, values in enumerate(samples, 1):
        argv = render_command(sweep, values)
        print(f"[{i}/{len(samples)}] {_format_values(values)}")
        print(f"  {shlex.join(argv)}")
        problems: list[str] = []
        args = cli_arguments(argv)
        if args is None:
            problems.append(
                "the command does not run the ummkd CLI (`ummkd ...` or `python -m ummkd ...`)"
            )
        else:
            if not args or args[0] != "fit":
                print("  warning: the subcommand is not `fit`", file=sys.stderr)
            config, error = resolve_cli_config(args)
            if config is None:
                indented = "\n".join(f"    {line}" for line in error.splitlines())
                problems.append(f"the ummkd CLI rejects this command:\n{indented}")
            else:
                sub = config
                problems += check_values_applied(sub, values)
                problems += check_wandb_logger(sub)
                resolved = resolved or sub
        for message in problems:
            print(f"  error: {message}", file=sys.stderr)
        failures += bool(problems)
        if not problems:
            print("  ok: parsed by the ummkd CLI, values applied")
    metric_errors = check_metric(sweep, resolved)
    for message in metric_errors:
        print(f"error: {message}", file=sys.stderr)
    if failures or metric_errors:
        print(
            f"{path}: {failures} of {len(samples)} command(s) failed"
            + (f", {len(metric_errors)} metric problem(s)" if metric_errors else ""),
            file=sys.stderr,
        )
        return 1
    print(f"{path}: OK ({len(samples)} command(s) checked)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ummkd sweep-dry-run``."""
    parser = argparse.ArgumentParser(
        prog="ummkd sweep-dry-run",
        description="Render and parse the commands a W&B sweep agent would run (no training).",
    )
    parser.add_argument("file", help="sweep definition (YAML), e.g. configs/sweeps/kd_lr.yaml")
    parser.add_argument("--count", type=int, default=3, help="parameter sets to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ummkd sweep-dry-run FILE [--count N] [--seed S]``.

    Args:
        argv: Arguments after ``sweep-dry-run`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 when the sweep checks out, 1 on any problem.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return dry_run(args.file, count=args.count, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
