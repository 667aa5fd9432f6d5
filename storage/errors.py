"""Errors raised by the storage layer.

Every error is a `StorageError`. They say *which* data directory (and, for corruption, which
entry or snapshot chunk) is at fault, because the operator reading the message has to decide
what to do about a particular disk.

Two kinds matter to the node driver:

* `CorruptionError` and `WrongNodeError` mean the data directory cannot be trusted: the
  node must refuse to serve rather than carry on with wrong data.
* `DiskFullError` means nothing was written by the failing call and nothing is corrupted,
  but the store accepts no more writes until it is reopened (after space was freed or the
  map limit raised). The node must stop acknowledging writes.

Log index errors (`CompactedError`, `UnavailableError`, `LogInvariantError`) come from
`aegis.log`, exactly as the in-memory model raises them.
"""

from __future__ import annotations

__all__ = [
    "StorageError",
    "CorruptionError",
    "WrongNodeError",
    "DiskFullError",
    "DataDirInUseError",
    "SnapshotError",
    "SnapshotSupersededError",
]


class StorageError(Exception):
    """Root of every storage error."""


class CorruptionError(StorageError):
    """Stored bytes do not match their checksum (or the stored structure is inconsistent).

    Never served: a read that hits this raises instead of returning data.
    """

    def __init__(self, message: str, *, path: str | None = None, index: int | None = None) -> None:
        self.path = path
        self.index = index
        where = f" in {path}" if path else ""
        super().__init__(f"{message}{where}")


class WrongNodeError(StorageError):
    """The data directory belongs to another node id or another cluster."""


class DiskFullError(StorageError):
    """The disk or the LMDB map limit is full: the write did not happen; no more are accepted."""


class DataDirInUseError(StorageError):
    """Another process (or another store in this process) has the data directory open."""


class SnapshotError(StorageError):
    """A snapshot operation was refused (stale snapshot, writer already finished, ...)."""


class SnapshotSupersededError(SnapshotError):
    """The snapshot being read was replaced by a newer one; start again from the new one."""
