"""Persistent history that never keeps a secret.

Theory of operation
-------------------
The history file lives in the user's home (``~/.aegis_history``; ``AEGIS_HISTFILE`` or
``--history`` move it, ``--history ''`` keeps history in memory only). prompt-toolkit
appends each accepted line to it and reads it back for Up/Down, Ctrl-R search and the
grey auto-suggestions.

A line that carries a token (``AUTH …``, ``HELLO … AUTH user token``) is dropped before it
reaches either the file or the in-memory list: it cannot be recalled, searched or suggested,
and a later shell never sees it. The same filter is applied when the file is loaded, so a
secret written by some older tool is not brought back either. The file is created with mode
0600 because even ordinary commands may name sensitive keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from .grammar import is_sensitive

__all__ = ["FilteredFileHistory", "FilteredMemoryHistory", "default_history_path", "make_history"]

HISTORY_ENV: Final = "AEGIS_HISTFILE"
HISTORY_NAME: Final = ".aegis_history"


def default_history_path() -> Path:
    """``$AEGIS_HISTFILE`` if set, else ``~/.aegis_history``."""
    override = os.environ.get(HISTORY_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / HISTORY_NAME


class FilteredFileHistory(FileHistory):
    """`FileHistory` that drops sensitive lines on the way in and on the way out."""

    def __init__(self, filename: str | os.PathLike[str]) -> None:
        path = Path(filename)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
        super().__init__(str(path))

    def load_history_strings(self) -> Iterable[str]:
        for line in super().load_history_strings():
            if not is_sensitive(line):
                yield line

    def append_string(self, string: str) -> None:
        if is_sensitive(string):
            return
        super().append_string(string)

    def store_string(self, string: str) -> None:
        if is_sensitive(string):
            return
        super().store_string(string)


class FilteredMemoryHistory(InMemoryHistory):
    """History for ``--history ''``: this session only, same filter."""

    def append_string(self, string: str) -> None:
        if is_sensitive(string):
            return
        super().append_string(string)


def make_history(path: str | os.PathLike[str] | None) -> History:
    """The history for `path` (None: the default file; empty string: memory only).

    An unwritable location falls back to memory rather than stopping the shell.
    """
    if path is not None and str(path) == "":
        return FilteredMemoryHistory()
    target = Path(path).expanduser() if path is not None else default_history_path()
    try:
        return FilteredFileHistory(target)
    except OSError:
        return FilteredMemoryHistory()
