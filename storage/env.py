"""The LMDB environment of one data directory, and its write path.

Theory of operation
-------------------
`Env` owns the LMDB environment (databases ``log``, ``meta``, ``snap``, ``kv``; the state
environment's `storage.kv.LmdbKV` opens its indexes ``scan`` and ``due``), an exclusive
``flock`` on ``aegis.lock`` in the data directory (two processes, or two stores in one
process, must never write the same log), and the two locks every store operation uses:

* ``write_lock`` serialises writers (LMDB allows one write transaction; the driver may run
  its fsync in a worker thread while the event loop reads);
* ``lock`` guards the caller's in-memory view and every disk read. A map resize takes it,
  because py-lmdb invalidates all open transactions when the map is remapped.

`commit(body, apply, destructive=...)` runs `body` in ONE write transaction and, only if
the commit succeeded, `apply` to the in-memory view. A non-destructive write (an append
past the last index) commits without ``lock`` so readers are not held up by the fsync; a
destructive one (truncation, compaction, snapshot install) holds ``lock`` across its commit.

Failures: ``MapFullError`` -> double the map (up to ``max_map_size``) and run the whole
transaction again; at the limit, or on ENOSPC/EDQUOT, `DiskFullError`. Any LMDB error in
a write makes the store fail-stop for writes (every later write raises the same error until
it is reopened); since the transaction was aborted, nothing was written and nothing is
corrupted, and reads keep working.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable

import lmdb

from .errors import CorruptionError, DataDirInUseError, DiskFullError, StorageError

__all__ = ["Env", "Body", "DEFAULT_MAP_SIZE", "DEFAULT_MAX_MAP_SIZE", "LOCK_FILE"]

DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40
LOCK_FILE = "aegis.lock"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

Body = Callable[["lmdb.Transaction[bytes]"], None]


def _nothing() -> None:
    pass


def is_disk_full(e: lmdb.Error) -> bool:
    """Whether an LMDB error means "no space" (ENOSPC or EDQUOT)."""
    if isinstance(e, lmdb.DiskError):
        return True
    if getattr(e, "code", None) in _DISK_FULL_ERRNOS:
        return True
    text = str(e)
    return "ENOSPC" in text or any(os.strerror(n) in text for n in _DISK_FULL_ERRNOS)


class Env:
    """An open LMDB environment with a durable, growing, fail-stop write path."""

    def __init__(
        self, directory: Path, env: lmdb.Environment, lock_fd: int, *, sync: bool, max_map_size: int
    ) -> None:
        self.directory = directory
        self.path = str(directory / "data.mdb")
        self.env = env
        self.sync_writes = sync
        self.max_map_size = max_map_size
        self.log_db = env.open_db(b"log")
        self.meta_db = env.open_db(b"meta")
        self.snap_db = env.open_db(b"snap")
        self.kv_db = env.open_db(b"kv")  # used in the state environment (storage.kv)
        #: Every named database, for `live_bytes` (storage.kv adds its indexes).
        self.dbs: list[lmdb._Database] = [self.log_db, self.meta_db, self.snap_db, self.kv_db]
        self.before_remap: list[Callable[[], None]] = []  # called under `lock` before a map resize
        self._pins = 0  # long read transactions (snapshot exports) that a map resize must wait for
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.failed: StorageError | None = None
        self.closed = False
        self._lock_fd = lock_fd

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        create: bool = True,
        writemap: bool = False,
    ) -> Env:
        directory = Path(path)
        if not directory.is_dir():
            if not create:
                raise StorageError(f"no data directory at {directory}")
            directory.mkdir(parents=True, exist_ok=True)
        if not create and not (directory / "data.mdb").exists():
            raise StorageError(f"no aegis data in {directory}")
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise DataDirInUseError(
                f"data directory {directory} is in use by another process (or is already open here)"
            ) from None
        try:
            env = lmdb.open(
                str(directory),
                map_size=max(map_size, 1 << 20),
                subdir=True,
                max_dbs=12,  # 8 in use (see above and storage.kv)
                sync=sync,
                metasync=sync,
                readahead=False,
                writemap=writemap,
                max_spare_txns=2,
                lock=True,
            )
        except lmdb.Error as e:
            os.close(lock_fd)
            if isinstance(e, (lmdb.CorruptedError, lmdb.InvalidError, lmdb.VersionMismatchError)):
                raise CorruptionError(f"not a valid LMDB environment ({e})", path=str(directory)) from None
            raise StorageError(f"cannot open the data directory {directory}: {e}") from None
        try:
            return cls(directory, env, lock_fd, sync=sync, max_map_size=max(max_map_size, map_size))
        except BaseException:
            env.close()
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Flush (if unsafe sync was off), close, release the directory lock. Idempotent."""
        with self.write_lock, self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                if not self.sync_writes and self.failed is None:
                    self.env.sync(True)
            finally:
                self.env.close()
                os.close(self._lock_fd)

    def sync(self) -> None:
        with self.write_lock:
            self.check_open()
            self.env.sync(True)

    def check_open(self) -> None:
        if self.closed:
            raise StorageError(f"the store at {self.directory} is closed")

    def check_writable(self) -> None:
        self.check_open()
        if self.failed is not None:
            raise type(self.failed)(str(self.failed))

    # --- the write path ------------------------------------------------------------------------
    def commit(self, body: Body, apply: Callable[[], None] = _nothing, *, destructive: bool = False) -> None:
        """Run `body` in one write transaction, then `apply`. Caller holds `write_lock`."""
        self.check_writable()
        while True:
            try:
                if destructive:
                    with self.lock:
                        self._run_txn(body)
                        apply()
                else:
                    self._run_txn(body)
                    with self.lock:
                        apply()
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as e:
                raise self._fail(e) from None

    def _run_txn(self, body: Body) -> None:
        txn = self.env.begin(write=True)
        try:
            body(txn)
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except BaseException:
            try:
                txn.abort()
            except lmdb.Error:
                pass
            raise

    def pin(self) -> None:
        """A long read transaction begins (outside `lock`): map resizes wait until `unpin`."""
        with self.lock:
            self._pins += 1

    def unpin(self) -> None:
        with self.lock:
            self._pins -= 1

    def _grow(self) -> None:
        while True:
            with self.lock:
                if self._pins == 0:
                    self._grow_locked()
                    return
            time.sleep(0.001)  # an export holds a read transaction; LMDB cannot remap under it

    def _grow_locked(self) -> None:
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            self.failed = DiskFullError(
                f"data directory {self.directory} is full: the LMDB map reached its limit of "
                f"{self.max_map_size} bytes (max_map_size); the write was not done and no more "
                f"writes are accepted until the store is reopened with a larger limit"
            )
            raise type(self.failed)(str(self.failed))
        for hook in self.before_remap:
            hook()
        self.env.set_mapsize(min(current * 2, self.max_map_size))

    def _fail(self, e: lmdb.Error) -> StorageError:
        if is_disk_full(e):
            self.failed = DiskFullError(
                f"no space left on the device of {self.directory} ({e}); the write was not done and "
                f"no more writes are accepted until the store is reopened"
            )
        else:
            self.failed = StorageError(
                f"writing to {self.path} failed ({e}); no more writes are accepted until the store is reopened"
            )
        return type(self.failed)(str(self.failed))

    def live_bytes(self) -> int:
        """Bytes in the pages the databases use now (caller holds `lock`). Unlike the file's
        high-water mark (``used_bytes``), this falls when entries are deleted: LMDB reuses
        freed pages, so ``max_map_size - live_bytes`` is about what can still be written."""
        with self.env.begin() as txn:
            pages = 4  # two meta pages, the main database's root, the free list's
            for db in self.dbs:
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self.env.stat()["psize"]

    def headroom(self) -> int:
        """Bytes that can still be written before the map limit (caller holds `lock`)."""
        return self.max_map_size - self.live_bytes()

    def stats(self) -> dict[str, object]:
        """Caller holds `lock`."""
        info = self.env.info()
        stat = self.env.stat()
        return {
            "path": self.path,
            "sync": self.sync_writes,
            "map_size": info["map_size"],
            "max_map_size": self.max_map_size,
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "live_bytes": self.live_bytes(),
            "write_error": str(self.failed) if self.failed is not None else None,
        }
