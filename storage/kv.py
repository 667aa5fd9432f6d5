"""`LmdbKV`: the node's key-value state in LMDB (an `aegis.state.KVBackend`).

Theory of operation
-------------------
The state lives in its own LMDB environment, ``state/`` inside the node's data directory,
beside the log's: key -> record in the ``kv`` database, ordered by key bytes, so ranges and
snapshots walk the B-tree. A record is ``crc32 (4) | version (8) | revision (8) | value``;
the CRC covers the key and the rest, and a record that fails it is `CorruptionError`,
never served. ``meta`` holds ``applied`` (index and term of the last entry the stored state
has applied, written in the same transaction as the records) and, after a snapshot install,
``base`` (the installed snapshot's index, term and membership).

Why a second environment: LMDB has one writer per environment. Writing a batch of random
keys into a large B-tree dirties a page per key, so a state write is much bigger than a log
append; in the log's environment it would hold up the next log fsync, which every write
waits for. Here the two write paths run side by side, each with its own fsync.

Applying needs no transaction at all. Committed entries are applied on the event loop into
an in-memory overlay (`_live`: key -> record, or None for a deletion), which reads consult
first. Now and then (`wants_flush`: enough keys, or enough time) the driver hands the
overlay to a worker thread (`take_flush`, `write_flush`, `flush_done`), which writes it in
one durable transaction while new applies go to a fresh overlay. The log is the durable
record: on restart, the entries after the stored ``applied`` index are applied again
(etcd's backend batches, hashicorp's FSM).

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
stored ``applied`` index, streamed in storage order (keys up to 510 bytes in byte order,
then longer keys); the map is not resized while one is open.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from typing import Callable, Iterable, Iterator, TypeVar

import lmdb

from aegis.state import KVView, Record

from .errors import CorruptionError

from .env import Env

__all__ = ["LmdbKV", "KVExport", "K_APPLIED", "K_BASE", "STATE_DIR", "encode_record", "decode_record"]

K_APPLIED = b"applied"
K_BASE = b"base"
STATE_DIR = "state"

_HEAD = struct.Struct(">IQQ")
_T = TypeVar("_T")
_MISSING = object()


#: LMDB keys are 1 to 511 bytes. A stored key is one tag byte and then the client's key
#: itself (ordered, the empty key included) when it fits, or its SHA-256 for longer keys, whose
#: record then carries the whole key.
MAX_INLINE_KEY = 510
_SHORT, _LONG = b"\x00", b"\x01"
_KLEN = struct.Struct(">I")


def db_key(key: bytes) -> bytes:
    """The LMDB key under which `key` is stored."""
    if len(key) <= MAX_INLINE_KEY:
        return _SHORT + key
    return _LONG + hashlib.sha256(key).digest()


def encode_record(key: bytes, value: bytes, version: int, revision: int) -> bytes:
    body = _HEAD.pack(0, version, revision)[4:]
    if len(key) > MAX_INLINE_KEY:
        body += _KLEN.pack(len(key)) + key
    body += value
    return struct.pack(">I", zlib.crc32(body, zlib.crc32(key))) + body


def decode_record(key: bytes, raw: bytes, path: str | None = None) -> Record:
    if len(raw) < _HEAD.size:
        raise CorruptionError(f"state record of key {key[:64]!r} is truncated", path=path)
    crc, version, revision = _HEAD.unpack_from(raw, 0)
    if crc != zlib.crc32(memoryview(raw)[4:], zlib.crc32(key)):
        raise CorruptionError(f"checksum mismatch in the state record of key {key[:64]!r}", path=path)
    off = _HEAD.size
    if len(key) > MAX_INLINE_KEY:
        off += _KLEN.size + len(key)
    return bytes(raw[off:]), version, revision


def _stored_key(dbkey: bytes, raw: bytes, path: str | None) -> bytes:
    """The client's key of a stored record (from the LMDB key, or the record of a long key)."""
    if dbkey[:1] == _SHORT:
        return dbkey[1:]
    if len(raw) < _HEAD.size + _KLEN.size:
        raise CorruptionError("state record of a long key is truncated", path=path)
    (n,) = _KLEN.unpack_from(raw, _HEAD.size)
    key = bytes(raw[_HEAD.size + _KLEN.size:_HEAD.size + _KLEN.size + n])
    if len(key) != n or len(key) <= MAX_INLINE_KEY or _LONG + hashlib.sha256(key).digest() != dbkey:
        raise CorruptionError("state record of a long key does not match its key", path=path)
    return key


def _decode_stored(dbkey: bytes, raw: bytes, path: str | None) -> tuple[bytes, bytes, int, int]:
    key = _stored_key(dbkey, raw, path)
    value, version, revision = decode_record(key, raw, path)
    return key, value, version, revision


class LmdbKV:
    """The `KVBackend` of a node: LMDB records under an in-memory overlay of recent applies."""

    def __init__(self, env: Env) -> None:
        e = env
        self._e = e
        self._env = e.env
        self._db = e.kv_db
        self._meta = e.meta_db
        self._lock: threading.Lock = e.lock
        self._path = e.path
        self._live: dict[bytes, Record | None] = {}
        self._flushing: dict[bytes, Record | None] | None = None
        self._cancelled = False  # an install dropped the flush in flight; its done is void
        self._gen = 0
        with self._lock:
            with self._env.begin() as txn:
                raw = txn.get(K_APPLIED, db=self._meta)
                self._count = int(txn.stat(self._db)["entries"])
        self._durable, self._durable_term = _decode_applied(raw, self._path) if raw is not None else (0, 0)
        self._applied = self._durable
        self._applied_term = self._durable_term
        self._flushing_applied = (0, 0)
        # One read transaction serves the disk reads between two flushes (the overlays hold
        # anything newer); it is dropped when a flush lands, at an install and before the
        # map is resized. Guarded by the environment's lock.
        self._rtxn: lmdb.Transaction[bytes] | None = None
        e.before_remap.append(self._drop_reader)

    def _drop_reader(self) -> None:
        """Caller holds the environment's lock."""
        txn, self._rtxn = self._rtxn, None
        if txn is not None:
            try:
                txn.abort()
            except lmdb.Error:
                pass

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
                txn = self._rtxn
                if txn is None:
                    txn = self._rtxn = self._env.begin(db=self._db)
                raw = txn.get(db_key(key))
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
                disk = [_decode_stored(bytes(k), bytes(v), self._path) for k, v in txn.cursor()]
        merged: dict[bytes, Record | None] = {k: (v, ver, rev) for k, v, ver, rev in disk}
        merged.update(overlay)
        out = [(k, *rec) for k, rec in sorted(merged.items()) if rec is not None]
        return iter(out)

    # --- applying ---------------------------------------------------------------------------
    @property
    def durable_applied_term(self) -> int:
        return self._durable_term

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T:
        out = body(self)
        self._applied = applied
        self._applied_term = term
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
        recs = list(records)
        self.install(lambda: recs, applied, 0, None)

    # --- flushing (the driver: take/done on the event loop, the write in a worker) ----------
    def overlay_keys(self) -> int:
        return len(self._live)

    def pending(self) -> bool:
        """Whether there is applied state that is not on disk yet."""
        return bool(self._live) or self._applied > self._durable

    @property
    def flushing(self) -> bool:
        return self._flushing is not None

    def take_flush(self) -> tuple[dict[bytes, Record | None], int, int, int] | None:
        """Hand the overlay over for `write_flush` (in a worker thread); None if nothing
        changed since the last flush. Call `flush_done` when the write is over."""
        if self._flushing is not None or self._cancelled:
            raise RuntimeError("a state flush is already in flight")
        if not self._live and self._applied == self._durable:
            return None
        items, self._live = self._live, {}
        self._flushing = items
        self._flushing_applied = (self._applied, self._applied_term)
        return items, self._applied, self._applied_term, self._gen

    def write_flush(self, items: dict[bytes, Record | None], applied: int, term: int, gen: int = -1) -> bool:
        """Write an overlay and the applied index it reaches in ONE durable transaction.
        A flush taken before a snapshot install (`gen` is older) writes nothing: the install
        replaced what it would change. Returns whether it wrote."""
        db, meta = self._db, self._meta

        def body(txn: lmdb.Transaction[bytes]) -> None:
            puts = []
            for k, rec in items.items():
                if rec is None:
                    txn.delete(db_key(k), db=db)
                else:
                    puts.append((db_key(k), encode_record(k, *rec)))
            if puts:
                puts.sort()
                txn.cursor(db).putmulti(puts)
            txn.put(K_APPLIED, encode_applied(applied, term), db=meta)

        with self._e.write_lock:
            if gen != -1 and gen != self._gen:
                return False
            self._e.commit(body)
        return True

    def flush_done(self, ok: bool = True) -> None:
        if self._cancelled:  # the flush this ends was dropped by an install
            self._cancelled = False
            return
        items = self._flushing
        self._flushing = None
        if items is None:
            return
        with self._lock:
            self._drop_reader()  # the next read sees what the flush wrote
        if ok:
            if self._flushing_applied[0] > self._durable:
                self._durable, self._durable_term = self._flushing_applied
        else:  # the write failed: what it carried is still only in memory
            items.update(self._live)
            self._live = items

    def _installed(self, applied: int, term: int, count: int) -> None:
        """Called right after a snapshot install committed (under the environment's lock)."""
        self._drop_reader()
        self._live = {}
        self._cancelled = self._flushing is not None
        self._flushing = None
        self._applied = self._durable = applied
        self._applied_term = self._durable_term = term
        self._count = count
        self._gen += 1

    def install(
        self,
        records: Callable[[], Iterable[tuple[bytes, bytes, int, int]]],
        applied: int,
        term: int,
        base: bytes | None,
    ) -> int:
        """Replace everything with `records` (key order) at `applied` in ONE durable
        transaction (with `base`, the encoded snapshot meta it came from). If the records
        raise (a corrupt stream), nothing changes. Returns the number of keys."""
        db, meta = self._db, self._meta
        count = 0

        def body(txn: lmdb.Transaction[bytes]) -> None:
            nonlocal count
            count = 0
            txn.drop(db, delete=False)

            def encoded() -> Iterator[tuple[bytes, bytes]]:
                nonlocal count
                for k, v, ver, rev in records():
                    count += 1
                    yield db_key(k), encode_record(k, v, ver, rev)

            consumed, added = txn.cursor(db).putmulti(encoded(), overwrite=False)
            if added != consumed:
                raise CorruptionError(f"the snapshot names a key twice ({consumed - added} duplicates)",
                                      path=self._path)
            txn.put(K_APPLIED, encode_applied(applied, term), db=meta)
            if base is not None:
                txn.put(K_BASE, base, db=meta)

        with self._e.write_lock:
            self._e.commit(body, lambda: self._installed(applied, term, count), destructive=True)
        return count

    def stored_base(self) -> bytes | None:
        """The encoded snapshot meta of the last install (None if there was none)."""
        with self._lock:
            with self._env.begin(db=self._meta) as txn:
                return txn.get(K_BASE)

    def close(self) -> None:
        with self._lock:
            self._drop_reader()
        self._e.close()

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
        self.index, self.term = _decode_applied(raw, kv._path) if raw is not None else (0, 0)
        self._closed = False

    def records(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        path = self._kv._path
        for k, v in self._txn.cursor(db=self._kv._db):
            yield _decode_stored(bytes(k), bytes(v), path)

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


_APPLIED = struct.Struct(">QQ")


def _decode_applied(raw: bytes, path: str | None) -> tuple[int, int]:
    if len(raw) != 20 or struct.unpack_from(">I", raw, 0)[0] != zlib.crc32(raw[4:]):
        raise CorruptionError("the stored applied index is corrupt", path=path)
    index, term = _APPLIED.unpack_from(raw, 4)
    return int(index), int(term)


def encode_applied(index: int, term: int = 0) -> bytes:
    body = _APPLIED.pack(index, term)
    return struct.pack(">I", zlib.crc32(body)) + body
