"""`LmdbKV`: the node's key-value state in its LMDB environment (an `aegis.state.KVBackend`).

Theory of operation
-------------------
The state lives in the ``kv`` database of the node's one LMDB environment: key -> record,
ordered by key bytes, so ranges and snapshots walk the B-tree. A record is
``crc32 (4) | version (8) | revision (8) | value``; the CRC covers the key and the rest, and
a record that fails it is `CorruptionError`, never served. ``meta``'s ``applied`` key holds
the index the stored state has applied, written in the same transaction as the records.

Applying needs no transaction of its own. Committed entries are applied on the event loop
into an in-memory overlay (`_live`: key -> record, or None for a deletion), which reads
consult first. The overlay rides to disk inside the next durable write of the log
(`take_flush` hands it to `LmdbStore.write_batch`, `flush_done` retires it), so applying costs
dict operations and no fsync: the log is the durable record, and on restart the entries after
the stored ``applied`` index are applied again (etcd's backend buffer, hashicorp's FSM).
Under load every Ready writes entries, so the overlay stays small; when idle the driver
flushes it after a while (`wants_flush`).

Invariants:

* stored ``applied`` <= the in-memory applied index; both only grow (a snapshot install
  replaces both);
* the log is never compacted past the stored ``applied`` index (`durable_applied`);
* a read sees the overlay, then the overlay being flushed, then the disk: together the state
  as of the in-memory applied index. A snapshot install swaps the disk contents and empties
  the overlays at one instant (`_gen`), so no read mixes the two states;
* `count()` is exact: a record with version 1 is a new key, a deletion of an existing key
  removes one.

Exports (`open_export`) are one consistent read transaction of the stored state at the
stored ``applied`` index, streamed in key order; the map is not resized while one is open.
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import lmdb

from aegis.state import KVView, Record

from .errors import CorruptionError

if TYPE_CHECKING:
    from .lmdb_store import LmdbStore

__all__ = ["LmdbKV", "KVExport", "K_APPLIED", "encode_record", "decode_record"]

K_APPLIED = b"applied"

_HEAD = struct.Struct(">IQQ")
_U64 = struct.Struct(">Q")
_T = TypeVar("_T")
_MISSING = object()


def encode_record(key: bytes, value: bytes, version: int, revision: int) -> bytes:
    body = _HEAD.pack(0, version, revision)[4:] + value
    return struct.pack(">I", zlib.crc32(body, zlib.crc32(key))) + body


def decode_record(key: bytes, raw: bytes, path: str | None = None) -> Record:
    if len(raw) < _HEAD.size:
        raise CorruptionError(f"state record of key {key[:64]!r} is truncated", path=path)
    crc, version, revision = _HEAD.unpack_from(raw, 0)
    if crc != zlib.crc32(memoryview(raw)[4:], zlib.crc32(key)):
        raise CorruptionError(f"checksum mismatch in the state record of key {key[:64]!r}", path=path)
    return bytes(raw[_HEAD.size:]), version, revision


class LmdbKV:
    """The `KVBackend` of a node: LMDB records under an in-memory overlay of recent applies."""

    def __init__(self, store: LmdbStore) -> None:
        e = store._e
        self._store = store
        self._e = e
        self._env = e.env
        self._db = e.kv_db
        self._meta = e.meta_db
        self._lock: threading.Lock = e.lock
        self._path = e.path
        self._live: dict[bytes, Record | None] = {}
        self._flushing: dict[bytes, Record | None] | None = None
        self._gen = 0
        with self._lock:
            with self._env.begin() as txn:
                raw = txn.get(K_APPLIED, db=self._meta)
                self._count = int(txn.stat(self._db)["entries"])
        self._durable = _decode_applied(raw, self._path) if raw is not None else 0
        self._applied = self._durable
        self._flushing_applied = 0

    # --- reads ------------------------------------------------------------------------------
    def get(self, key: bytes) -> Record | None:
        while True:
            gen = self._gen
            rec = self._live.get(key, _MISSING)
            if rec is _MISSING and self._flushing is not None:
                rec = self._flushing.get(key, _MISSING)
            if rec is not _MISSING:
                return rec  # type: ignore[return-value]
            with self._lock:
                with self._env.begin(db=self._db) as txn:
                    raw = txn.get(key)
            if gen == self._gen:
                return decode_record(key, raw, self._path) if raw is not None else None

    def count(self) -> int:
        return self._count

    def applied(self) -> int:
        return self._applied

    @property
    def durable_applied(self) -> int:
        """The applied index of the state on disk: the log may be compacted up to here."""
        return self._durable

    def items(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        """Every record as of now, in key order (the disk merged with the overlays)."""
        overlay: dict[bytes, Record | None] = dict(self._flushing or {})
        overlay.update(self._live)
        with self._lock:
            with self._env.begin(db=self._db) as txn:
                disk = [(bytes(k), decode_record(bytes(k), bytes(v), self._path)) for k, v in txn.cursor()]
        merged: dict[bytes, Record | None] = dict(disk)
        merged.update(overlay)
        out = [(k, *rec) for k, rec in sorted(merged.items()) if rec is not None]
        return iter(out)  # type: ignore[arg-type]

    # --- applying ---------------------------------------------------------------------------
    def transact(self, body: Callable[[KVView], _T], applied: int) -> _T:
        out = body(self)
        self._applied = applied
        return out

    def put(self, key: bytes, value: bytes, version: int, revision: int) -> None:
        self._live[key] = (value, version, revision)
        if version == 1:
            self._count += 1

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        self._live[key] = None
        self._count -= 1
        return True

    def replace(self, records: Iterable[tuple[bytes, bytes, int, int]], applied: int) -> None:
        """Replace the stored state with `records` (key order) in one transaction."""
        self._store.replace_state(records, applied)

    # --- flushing (the driver, on the event loop) -------------------------------------------
    def wants_flush(self, max_keys: int = 10_000) -> bool:
        """Whether the overlay is big enough to write even without entries to persist."""
        return len(self._live) >= max_keys

    def pending(self) -> bool:
        return bool(self._live) or self._applied > self._durable

    def take_flush(self) -> tuple[dict[bytes, Record | None], int] | None:
        """Hand the overlay to a write (`LmdbStore.write_batch(kv=...)`); None if nothing
        changed since the last flush. Call `flush_done` after the write committed."""
        if self._flushing is not None:
            raise RuntimeError("a state flush is already in flight")
        if not self._live and self._applied == self._durable:
            return None
        items, self._live = self._live, {}
        self._flushing = items
        self._flushing_applied = self._applied
        return items, self._applied

    def flush_done(self, ok: bool = True) -> None:
        items = self._flushing
        self._flushing = None
        if items is None:
            return
        if ok:
            self._durable = max(self._durable, self._flushing_applied)
        else:  # the write failed: what it carried is still only in memory
            items.update(self._live)
            self._live = items

    def _installed(self, applied: int, count: int) -> None:
        """Called by the store right after a snapshot install committed (under its lock)."""
        self._live = {}
        self._flushing = None
        self._applied = self._durable = applied
        self._count = count
        self._gen += 1

    # --- exports ----------------------------------------------------------------------------
    def open_export(self) -> KVExport:
        """A consistent read of the stored state (call on the thread that knows the Raft
        log, to name its index and term); stream it anywhere, then close it."""
        return KVExport(self)


class KVExport:
    """One read transaction of the stored state: `index`, `count`, `records()`."""

    def __init__(self, kv: LmdbKV) -> None:
        self._kv = kv
        kv._e.pin()
        try:
            with kv._lock:
                self._txn = kv._env.begin()
                raw = self._txn.get(K_APPLIED, db=kv._meta)
                self.count = int(self._txn.stat(kv._db)["entries"])
        except BaseException:
            kv._e.unpin()
            raise
        self.index = _decode_applied(raw, kv._path) if raw is not None else 0
        self._closed = False

    def records(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        path = self._kv._path
        for k, v in self._txn.cursor(db=self._kv._db):
            key = bytes(k)
            value, version, revision = decode_record(key, bytes(v), path)
            yield key, value, version, revision

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._txn.abort()
            except lmdb.Error:
                pass
            self._kv._e.unpin()

    def __enter__(self) -> KVExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode_applied(raw: bytes, path: str | None) -> int:
    if len(raw) != 12 or struct.unpack_from(">I", raw, 0)[0] != zlib.crc32(raw[4:]):
        raise CorruptionError("the stored applied index is corrupt", path=path)
    return int(_U64.unpack_from(raw, 4)[0])


def encode_applied(index: int) -> bytes:
    body = _U64.pack(index)
    return struct.pack(">I", zlib.crc32(body)) + body
