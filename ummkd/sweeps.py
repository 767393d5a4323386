"""``ummkd sweep-dry-run``: check a W&B sweep definition without W&B, a network or training.

For ``--count`` parameter sets drawn from the sweep's ``parameters`` (as W&B's controller draws
them; ``grid`` enumerates, ``random`` and ``bayes`` sample at random), it renders the exact
command a ``wandb agent`` would run (W&B's own macro expansion: ``${env}``, ``${interpreter}``,
``${program}``, ``${args}``, ``${args_no_hyphens}``, ... and ``${envvar:NAME}``), prints it, and
parses it with the real ``ummkd`` parser (``--print_config``; nothing is instantiated), so a
misspelt parameter name or an unparsable value fails here with the CLI's own error instead of
in every agent run. It also checks what W&B would only notice much later:

* the sweep file: required keys, ``method``, parameter names and distributions (W&B's schema),
  no ``None`` values (they reach the CLI as the text ``None``), ``early_terminate``;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ummkd.errors import UsageError

#: Top-level keys of W&B's sweep schema (plus the CLI's ``settings``/``scheduler``).
TOP_LEVEL_KEYS = frozenset(
    {
        "apiVersion",
        "command",
        "controller",
        "description",
        "early_terminate",
        "entity",
        "image_uri",
        "job",
        "kind",
        "method",
        "metric",
        "name",
        "parameters",
        "program",
        "project",
        "run_cap",
        "scheduler",
        "settings",
    }
)
METHODS = ("grid", "random", "bayes")
#: Parameter names W&B accepts (its schema's ``propertyNames`` pattern).
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
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

# distribution -> (required keys, optional keys with W&B's defaults)
_DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform": (("min", "max"), {}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
_POSITIVE_MIN = {"log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"}
_GRID_DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "q_uniform"}


class SweepError(UsageError):
    """A problem in a sweep definition."""


@dataclass
class Parameter:
    """One search-space entry: a distribution with its filled-in settings, or a group.

    Attributes:
        name: Parameter name (a dotted CLI key, e.g. ``model.kd_weight``).
        distribution: W&B distribution name, or ``"group"`` for nested ``parameters``.
        config: The settings (``min``/``max``/``values``/... with W&B's defaults filled in).
        children: The nested parameters of a group.
    """

    name: str
    distribution: str
    config: dict[str, Any] = field(default_factory=dict)
    children: list[Parameter] = field(default_factory=list)


# ------------------------------------------------------------------------------ search space
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _contains_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, Mapping):
        return any(_contains_none(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_none(v) for v in value)
    return False


def _infer_distribution(name: str, spec: Mapping[str, Any]) -> str:
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "min" in spec and "max" in spec:
        return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
    raise SweepError(
        f"parameter {name!r}: give `value`, `values`, `min`+`max` or a `distribution` "
        f"(got keys {sorted(spec)})"
    )


def parse_parameter(name: str, spec: Any) -> Parameter:
    """Validate one entry of ``parameters`` and fill in W&B's defaults.

    Args:
        name: The parameter's name.
        spec: Its definition from the sweep file.

    Returns:
        The parsed parameter.

    Raises:
        SweepError: If the definition does not follow W&B's sweep schema or holds ``None``.
    """
    if not PARAMETER_NAME.match(name):
        raise SweepError(f"parameter {name!r}: W&B names match {PARAMETER_NAME.pattern}")
    if not isinstance(spec, Mapping):
        raise SweepError(
            f"parameter {name!r}: expected a mapping such as {{values: [...]}}, got {spec!r}"
        )
    if "parameters" in spec:
        extra = set(spec) - {"parameters"}
        if extra or not isinstance(spec["parameters"], Mapping) or not spec["parameters"]:
            raise SweepError(f"parameter {name!r}: a group holds only a non-empty `parameters`")
        children = [parse_parameter(str(k), v) for k, v in sorted(spec["parameters"].items())]
        return Parameter(name, "group", children=children)
    dist = spec.get("distribution") or _infer_distribution(name, spec)
    if dist not in _DISTRIBUTIONS:
        raise SweepError(
            f"parameter {name!r}: unknown distribution {dist!r}; W&B knows {sorted(_DISTRIBUTIONS)}"
        )
    required, optional = _DISTRIBUTIONS[dist]
    missing = [k for k in required if k not in spec]
    unknown = set(spec) - set(required) - set(optional) - {"distribution"}
    if missing or unknown:
        raise SweepError(
            f"parameter {name!r} ({dist}): "
            + "; ".join(
                ([f"missing {missing}"] if missing else [])
                + ([f"unknown keys {sorted(unknown)}"] if unknown else [])
            )
        )
    config = {**optional, **{k: v for k, v in spec.items() if k != "distribution"}}
    if _contains_none(config):
        raise SweepError(
            f"parameter {name!r}: None/null in the search space; W&B passes it as the text "
            "'None' (`--key=None`), which the CLI rejects or takes as a string; use a sentinel "
            "value or leave the parameter out"
        )
    _check_values(name, dist, config)
    return Parameter(name, dist, config)


def _check_values(name: str, dist: str, config: dict[str, Any]) -> None:
    if dist in ("categorical", "categorical_w_probabilities"):
        values = config["values"]
        if not isinstance(values, list) or not values:
            raise SweepError(f"parameter {name!r}: `values` must be a non-empty list")
        if dist == "categorical_w_probabilities":
            probs = config["probabilities"]
            if (
                not isinstance(probs, list)
                or len(probs) != len(values)
                or not all(_is_number(p) and p >= 0 for p in probs)
                or not math.isclose(sum(probs), 1.0, abs_tol=1e-6)
            ):
                raise SweepError(
                    f"parameter {name!r}: `probabilities` must be one non-negative number per "
                    "value, summing to 1"
                )
        return
    for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if key in config and not _is_number(config[key]):
            hint = (
                " (YAML reads 1e-4 as a string: write 1.0e-4)"
                if isinstance(config[key], str)
                else ""
            )
            raise SweepError(f"parameter {name!r}: `{key}` must be a number{hint}")
    if dist == "int_uniform" and not (_is_int(config["min"]) and _is_int(config["max"])):
        raise SweepError(f"parameter {name!r}: int_uniform needs integer `min` and `max`")
    if "min" in config and config["min"] > config["max"]:
        raise SweepError(f"parameter {name!r}: `min` is larger than `max`")
    if dist in _POSITIVE_MIN and config["min"] <= 0:
        raise SweepError(f"parameter {name!r}: {dist} needs `min` > 0 (values, not exponents)")
    if "q" in config and config["q"] <= 0:
        raise SweepError(f"parameter {name!r}: `q` must be positive")
    if "sigma" in config and config["sigma"] < 0:
        raise SweepError(f"parameter {name!r}: `sigma` must be non-negative")


def _quantize(value: float, q: int | float) -> int | float:
    rounded = round(value / q) * q
    return int(rounded) if _is_int(q) else float(rounded)


def sample_parameter(param: Parameter, rng: random.Random) -> Any:
    """Draw one value as W&B's random search does (``sweeps.params.HyperParameter.ppf``).

    Args:
        param: A parsed parameter.
        rng: The random generator.

    Returns:
        The value (a dict for a group).
    """
    c = param.config
    dist = param.distribution
    if dist == "group":
        return {child.name: sample_parameter(child, rng) for child in param.children}
    if dist == "constant":
        return copy.deepcopy(c["value"])
    if dist == "categorical":
        return copy.deepcopy(rng.choice(c["values"]))
    if dist == "categorical_w_probabilities":
        return copy.deepcopy(rng.choices(c["values"], weights=c["probabilities"])[0])
    if dist == "int_uniform":
        return rng.randint(c["min"], c["max"])
    if dist in ("uniform", "q_uniform"):
        value = rng.uniform(c["min"], c["max"])
        return _quantize(value, c["q"]) if dist == "q_uniform" else value
    if dist in ("log_uniform", "q_log_uniform"):  # min/max are natural-log exponents
        value = math.exp(rng.uniform(c["min"], c["max"]))
        return _quantize(value, c["q"]) if dist == "q_log_uniform" else value
    if dist in ("log_uniform_values", "q_log_uniform_values"):
        value = math.exp(rng.uniform(math.log(c["min"]), math.log(c["max"])))
        return _quantize(value, c["q"]) if dist == "q_log_uniform_values" else value
    if dist == "inv_log_uniform":
        return math.exp(-rng.uniform(c["min"], c["max"]))
    if dist == "inv_log_uniform_values":
        return math.exp(-rng.uniform(-math.log(c["max"]), -math.log(c["min"])))
    if dist in ("normal", "q_normal"):
        value = rng.gauss(c["mu"], c["sigma"])
        return _quantize(value, c["q"]) if dist == "q_normal" else value
    if dist in ("log_normal", "q_log_normal"):
        value = math.exp(rng.gauss(c["mu"], c["sigma"]))
        return _quantize(value, c["q"]) if dist == "q_log_normal" else value
    if dist in ("beta", "q_beta"):
        value = rng.betavariate(c["a"], c["b"])
        return _quantize(value, c["q"]) if dist == "q_beta" else value
    raise SweepError(f"parameter {param.name!r}: unknown distribution {dist!r}")


def _grid_values(param: Parameter) -> list[Any]:
    c = param.config
    if param.distribution == "constant":
        return [c["value"]]
    if param.distribution == "categorical":
        return list(c["values"])
    if param.distribution == "int_uniform":
        return list(range(c["min"], c["max"] + 1))
    if param.distribution == "q_uniform":  # numpy.arange(min, max, q): max excluded
        count = max(0, math.ceil((c["max"] - c["min"]) / c["q"]))
        return [c["min"] + i * c["q"] for i in range(count)]
    raise SweepError(
        f"parameter {param.name!r}: grid search takes only value, values, int_uniform or "
        f"q_uniform, not {param.distribution}"
    )


def _leaves(params: Sequence[Parameter], prefix: tuple[str, ...] = ()) -> Iterator[Any]:
    for param in params:
        if param.distribution == "group":
            yield from _leaves(param.children, (*prefix, param.name))
        else:
            yield (*prefix, param.name), param


def grid_points(params: Sequence[Parameter]) -> Iterator[dict[str, Any]]:
    """All combinations of a grid search, in W&B's order (names sorted, last varies fastest).

    Args:
        params: Parsed parameters (sorted by name).

    Yields:
        One parameter set (groups as nested dicts) per grid point.
    """
    leaves = list(_leaves(params))
    choices = [_grid_values(param) for _, param in leaves]
    for combo in itertools.product(*choices):
        point: dict[str, Any] = {}
        for (path, _), value in zip(leaves, combo, strict=True):
            target = point
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = copy.deepcopy(value)
        yield point


def parse_parameters(spec: Any) -> list[Parameter]:
    """Parse the ``parameters`` section (sorted by name, as W&B's controller does).

    Args:
        spec: The ``parameters`` mapping.

    Returns:
        The parsed parameters.

    Raises:
        SweepError: On any invalid entry.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise SweepError("`parameters` must be a non-empty mapping of name -> definition")
    return [parse_parameter(str(name), value) for name, value in sorted(spec.items())]


def draw(method: str, params: Sequence[Parameter], count: int, seed: int) -> list[dict[str, Any]]:
    """Parameter sets for a dry run: the first ``count`` grid points, or random draws.

    Args:
        method: ``grid``, ``random`` or ``bayes`` (bayes starts from random draws too).
        params: Parsed parameters.
        count: How many sets.
        seed: Random seed.

    Returns:
        ``count`` parameter sets (fewer when a grid is smaller).
    """
    if method == "grid":
        return list(itertools.islice(grid_points(params), count))
    rng = random.Random(seed)
    return [{p.name: sample_parameter(p, rng) for p in params} for _ in range(count)]


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
    if _is_number(expected) and _is_number(actual):
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


def check_sweep(sweep: Any) -> tuple[list[Parameter], list[str], list[str]]:
    """Static checks of a sweep definition (no CLI).

    Args:
        sweep: The loaded sweep YAML.

    Returns:
        ``(parameters, errors, warnings)``; ``parameters`` is empty when they do not parse.
    """
    if not isinstance(sweep, Mapping):
        return [], ["the sweep file must hold a mapping"], []
    errors: list[str] = []
    warnings: list[str] = []
    unknown = set(sweep) - TOP_LEVEL_KEYS
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)} (W&B rejects them)")
    if sweep.get("method") not in METHODS:
        errors.append(f"`method` must be one of {list(METHODS)}, got {sweep.get('method')!r}")
    if not sweep.get("program"):
        warnings.append("no `program` (W&B documents it as required; use `program: ummkd`)")
    params: list[Parameter] = []
    try:
        params = parse_parameters(sweep.get("parameters"))
    except SweepError as exc:
        errors.append(str(exc))
    if params and sweep.get("method") == "grid":
        try:
            for _, param in _leaves(params):
                _grid_values(param)
        except SweepError as exc:
            errors.append(str(exc))
    if "early_terminate" in sweep:
        errors += _check_early_terminate(sweep["early_terminate"])
    errors += check_command_template(sweep)
    return params, errors, warnings


def _check_early_terminate(spec: Any) -> list[str]:
    if not isinstance(spec, Mapping) or spec.get("type") != "hyperband":
        return ["early_terminate: only {type: hyperband, ...} exists"]
    if "min_iter" not in spec and not ("max_iter" in spec and "s" in spec):
        return ["early_terminate: hyperband needs `min_iter`, or `max_iter` and `s`"]
    unknown = set(spec) - {"type", "min_iter", "max_iter", "s", "eta", "strict"}
    return [f"early_terminate: unknown keys {sorted(unknown)}"] if unknown else []


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
    params, errors, warnings = check_sweep(sweep)
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
        f"({metric.get('goal', 'minimize')}), {len(params)} parameter(s)"
    )
    failures = 0
    resolved: dict[str, Any] | None = None
    samples = draw(sweep["method"], params, count, seed)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ummkd sweep-dry-run FILE [--count N] [--seed S]``.

    Args:
        argv: Arguments after ``sweep-dry-run`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 when the sweep checks out, 1 on any problem.
    """
    parser = argparse.ArgumentParser(
        prog="ummkd sweep-dry-run",
        description="Render and parse the commands a W&B sweep agent would run (no training).",
    )
    parser.add_argument("file", help="sweep definition (YAML), e.g. configs/sweeps/kd_lr.yaml")
    parser.add_argument("--count", type=int, default=3, help="parameter sets to check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return dry_run(args.file, count=args.count, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
