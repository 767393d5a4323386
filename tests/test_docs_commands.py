"""Every ``ummkd ...`` command in README.md, docs/*.md, config comments and benchmark scripts
parses (and, for ``reproduce``, is a combination of options that can work).

Commands are only parsed, never run: LightningCLI commands with ``--print_config`` (which
exits after parsing, before anything is instantiated), the plain commands with their
``build_parser().parse_args``.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from ummkd.cli import _PLAIN_COMMANDS, COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```(\w*)\s*$")
_ENV_PREFIX = re.compile(r"^(?:\w+=\S*\s+)+(?=ummkd )")  # CUDA_VISIBLE_DEVICES=2,3 ummkd ...
_PLACEHOLDER = re.compile(r"<[^<>]*>")  # <run>, <MM-WHS 2017 folder>: any one word will do
_COMMAND = r"ummkd (?:" + "|".join(map(re.escape, COMMANDS)) + r")\b.*"
_IN_COMMENT = re.compile(r"(`?)(" + _COMMAND + ")")
_IN_SCRIPT = re.compile(r"(?:^|[\s/])(" + _COMMAND + ")")


def _join_continuations(lines: list[str]) -> list[str]:
    joined: list[str] = []
    pending = ""
    for line in lines:
        text = line.strip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        joined.append(pending + text)
        pending = ""
    return joined


def _markdown_commands(path: Path) -> list[str]:
    """The ``ummkd`` lines of the shell code blocks of a markdown file."""
    commands: list[str] = []
    block: list[str] | None = None
    for line in path.read_text().splitlines():
        fence = _FENCE.match(line.strip())
        if fence and block is None:
            block = [] if fence.group(1) in ("", "bash", "sh", "console", "shell") else None
            if block is None:  # another language: skip to its closing fence
                block = ["<skip>"]
            continue
        if fence and block is not None:
            if block[:1] != ["<skip>"]:
                lines = [_ENV_PREFIX.sub("", c) for c in _join_continuations(block)]
                commands += [c for c in lines if c.startswith("ummkd ")]
            block = None
            continue
        if block is not None:
            block.append(line)
    return commands


def _comment_commands(path: Path) -> list[str]:
    """The ``ummkd`` commands quoted in the ``#`` comments of a config file."""
    comments = [
        line.strip()[1:] for line in path.read_text().splitlines() if line.strip().startswith("#")
    ]
    commands = []
    for text in _join_continuations(comments):
        match = _IN_COMMENT.search(text)
        if match is None:
            continue
        quoted, command = match.groups()
        if quoted:
            command = command.split("`")[0]
        commands.append(command)
    return commands


def _script_commands(path: Path) -> list[str]:
    """The ``ummkd`` commands of a shell script (``.venv/bin/ummkd``, ``timeout N ummkd`` ...),
    with the script's arguments at their defaults (``x="${1:-8}"``)."""
    text = path.read_text()
    for name, default in re.findall(r'^(\w+)="\$\{\d+:-([^}]*)\}"', text, flags=re.MULTILINE):
        text = text.replace(f'"${{{name}}}"', shlex.quote(default))
    commands = []
    for line in _join_continuations(text.splitlines()):
        match = _IN_SCRIPT.search(line)
        if match and not line.startswith("#"):
            commands.append(re.split(r"\s*(?:\|\||&&|;)\s", match.group(1))[0])
    return commands


def _documented_commands() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        found += [(str(path.relative_to(REPO)), c) for c in _markdown_commands(path)]
    configs = REPO / "configs"
    for path in sorted([*configs.rglob("*.yaml"), *configs.rglob("*.sbatch")]):
        found += [(str(path.relative_to(REPO)), c) for c in _comment_commands(path)]
    for path in sorted((REPO / "benchmarks").glob("*.sh")):
        found += [(str(path.relative_to(REPO)), c) for c in _script_commands(path)]
    return found


DOCUMENTED = _documented_commands()


def test_commands_are_found() -> None:
    sources = {source for source, _ in DOCUMENTED}
    assert "README.md" in sources and "configs/abdominal_2d/ummkd.yaml" in sources
    assert "benchmarks/gpu_short.sh" in sources
    named = {shlex.split(c, comments=True)[1] for _, c in DOCUMENTED}
    assert {"fit", "test", "predict", "data", "evaluate", "reproduce", "export"} <= named


@pytest.mark.parametrize(("source", "command"), DOCUMENTED, ids=lambda v: v)
def test_documented_command_parses(
    source: str,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("UMMKD_RUN_VERSION", raising=False)
    tokens = shlex.split(_PLACEHOLDER.sub("X", command), comments=True)
    for redirect in (">", ">>", "|"):
        if redirect in tokens:
            tokens = tokens[: tokens.index(redirect)]
    name, args = tokens[1], tokens[2:]
    assert name in COMMANDS, f"{source}: unknown command in {command!r}"
    if name in _PLAIN_COMMANDS:
        module = importlib.import_module(_PLAIN_COMMANDS[name])
        # `ummkd data` lists the importers as `import` subcommands only when given them
        parser = module.build_parser(module._load_importers()) if name == "data" else None
        parser = parser or module.build_parser()
        try:
            parsed = parser.parse_args(args)
        except SystemExit as exit_:
            pytest.fail(f"{source}: {command!r} does not parse:\n{capsys.readouterr().err}")
            raise AssertionError from exit_
        if name == "reproduce":
            assert module.option_conflict(parsed) is None, f"{source}: {command!r}"
        return
    with pytest.raises(SystemExit) as exit_:
        main([name, *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, f"{source}: {command!r} does not parse:\n{captured.err}"
    assert "trainer:" in captured.out
