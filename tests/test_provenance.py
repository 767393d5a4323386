"""Provenance: the git commit (``-dirty``, a file ignored) and the machine line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ummkd.provenance import cpu_model, git_commit, machine_description


def _repo(path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q")
    (path / "doc.md").write_text("a\n")
    (path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")


def test_git_commit_is_dirty_for_changed_tracked_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    clean = git_commit()
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "untracked.txt").write_text("u\n")
    assert git_commit() == clean
    (tmp_path / "doc.md").write_text("a\nappended\n")
    assert git_commit() == clean + "-dirty"


def test_the_commit_ignores_the_file_being_appended_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _repo(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # porcelain paths are relative to the top
    (tmp_path / "doc.md").write_text("a\nappended\n")
    clean = git_commit(ignoring=Path("../doc.md"))
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(ignoring=tmp_path / "doc.md") == clean + "-dirty"


def test_git_commit_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert git_commit() == "unknown"
    assert git_commit(ignoring=tmp_path / "doc.md") == "unknown"


def test_git_commit_of_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "code").mkdir()
    _repo(tmp_path / "code")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert git_commit() == "unknown"
    commit = git_commit(where=tmp_path / "code")
    assert len(commit) == 12 and not commit.endswith("-dirty")


def test_machine_description_names_cpu_and_versions() -> None:
    import platform

    import torch

    line = machine_description()
    assert cpu_model() and cpu_model() in line
    assert f"torch {torch.__version__}" in line and platform.python_version() in line
