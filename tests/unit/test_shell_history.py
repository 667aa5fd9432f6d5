"""shell.history: persistent history that never stores a token."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shell.history import (
    FilteredFileHistory,
    FilteredMemoryHistory,
    default_history_path,
    make_history,
)


def loaded(history: FilteredFileHistory) -> list[str]:
    return list(history.load_history_strings())


def test_default_path_is_in_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AEGIS_HISTFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_history_path() == tmp_path / ".aegis_history"
    monkeypatch.setenv("AEGIS_HISTFILE", str(tmp_path / "elsewhere"))
    assert default_history_path() == tmp_path / "elsewhere"


def test_auth_lines_never_reach_the_file_or_the_session(tmp_path: Path) -> None:
    path = tmp_path / "hist"
    history = FilteredFileHistory(path)
    for line in ("SET a 1", "AUTH s3cret", "auth user s3cret", "HELLO 3 AUTH default s3cret", "GET a"):
        history.append_string(line)
    assert history.get_strings() == ["SET a 1", "GET a"]
    content = path.read_text()
    assert "s3cret" not in content
    assert "SET a 1" in content and "GET a" in content
    # A new shell reads back only what was kept, newest first.
    assert loaded(FilteredFileHistory(path)) == ["GET a", "SET a 1"]


def test_secrets_already_in_the_file_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "hist"
    path.write_text("\n# 2024-01-01\n+AUTH oldsecret\n\n# 2024-01-01\n+PING\n")
    assert loaded(FilteredFileHistory(path)) == ["PING"]


def test_new_history_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "hist"
    FilteredFileHistory(path)
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_make_history_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_history(""), FilteredMemoryHistory)
    assert isinstance(make_history(tmp_path / "h"), FilteredFileHistory)
    monkeypatch.setenv("AEGIS_HISTFILE", str(tmp_path / "env-hist"))
    assert isinstance(make_history(None), FilteredFileHistory)
    assert (tmp_path / "env-hist").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert isinstance(make_history(blocker / "cannot" / "exist"), FilteredMemoryHistory)


def test_memory_history_filters_too() -> None:
    history = FilteredMemoryHistory()
    history.append_string("AUTH x")
    history.append_string("PING")
    assert history.get_strings() == ["PING"]
