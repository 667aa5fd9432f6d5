"""`LmdbKV`: the node's key-value state in LMDB (an `aegis.state.KVBackend`).

Theory of operation
-------------------
The state lives in its own LMDB environment, ``state/`` inside the node's data directory,
beside the log's, in three databases written together:

* ``kv``: `db_key(key)` -> record, ordered by key bytes (keys over 510 bytes after the
  others, by their hash), so ranges and snapshots walk the B-tree. A record is
  ``crc32 (4) | version (8) | revision (8) | [deadline (8)] | [len (4) | key] | value``:
  the top bit of the stored version says a deadline (ms since the epoch) follows, so a
  record without one is byte for byte the previous format; a long key's record carries the
  key. The next bit says the value is compressed with a zstd dictionary (aegis.zdict):
  ``dictionary id (4) | length (4) | zstd frame`` instead of the value; a record without it
  is as before. The CRC covers the key and the rest (the stored form); a record that fails
  it is `CorruptionError`, never served.
* ``scan`` (dupsort): the 8-byte blake2b digest of every stored key -> its `db_key`. The
  digest's top 63 bits are the key's `scan_hash`, so the index walks SCAN positions in
  order and the keys of one position sit together (the digest itself is stored because it
  is what hashing gives: no conversion per key in the flush). An entry is checked when it
  is used: its record exists and its key has that digest.
* ``due``: `db_key` -> ``crc32 (4) | deadline (8) | [key]`` for the keys that have a
  deadline; loaded at open into memory (`_due`, a heap for `expiring`).

``meta`` holds ``applied`` (index and term of the last entry the stored state has applied,
written in the same transaction as the records), ``indexes`` (the index format and a copy of
``applied``, written by every write that keeps the indexes: a state written by a version
without them, or by an older one after it, does not match and has its indexes rebuilt at
open) and, after a snapshot install, ``base`` (the installed snapshot's index, term and
membership).

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

What the indexes cost a key without a deadline: nothing in ``due``, and one ``scan`` entry,
written when the key is created and deleted with it. `put` notes the keys it creates
(version 1) in the overlay (`_created`), and the flush indexes exactly those; `_due_disk`
(what ``due`` holds) tells the flush which deletions and rewrites must touch ``due``,
without reading it. A ``scan`` entry lands at a random place in its tree, so for keys
created in key order (a bulk load) the scan index is most of what a flush writes.

Invariants:

* stored ``applied`` <= the in-memory applied index; both only grow (a snapshot install
  replaces both);
* the log is never compacted past the stored ``applied`` index (`durable_applied`);
* a read sees the overlay, then the overlay being flushed, then the disk: together the state
  as of the in-memory applied index. A snapshot install swaps the disk contents and empties
  the overlays at one instant (`_gen`), so no read mixes the two states;
* ``scan`` holds one entry per key in ``kv``, ``due`` one per record with a deadline;
  ``_due`` is every key's deadline as of the in-memory applied index;
* `count()` is exact: a record with version 1 is a new key, a deletion of an existing key
  removes one.

Range reads and scans merge the overlay's keys, kept sorted across calls (`_Order`), with
a walk of the disk from the start point. Exports (`open_export`) are one consistent read
transaction of the stored state at the stored ``applied`` index, streamed in storage order
(keys up to 510 bytes in byte order, then longer keys); the map is not resized while one is
open.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import operator
import struct
import threading
import zlib
from typing import Callable, Iterable, Iterator, Sequence, TypeVar, cast

import lmdb
import zstandard as zstd

from aegis import failpoints
from aegis.state import Change, Item, KVView, Record, scan_hash

from .codec import Codec
from .errors import CorruptionError

from .env import Env

__all__ = [
    "LmdbKV",
    "KVExport",
    "K_APPLIED",
    "K_BASE",
    "K_INDEXES",
    "STATE_DIR",
    "encode_record",
    "decode_record",
]

K_APPLIED = b"applied"
K_BASE = b"base"
K_INDEXES = b"indexes"
K_HISTORY_FLOOR = b"history-floor"
STATE_DIR = "state"

_HEAD = struct.Struct(">IQQ")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_VR = struct.Struct(">QQ")
_VRD = struct.Struct(">QQQ")
_VR_ZSTD = struct.Struct(">II")  # a compressed value: dictionary id, uncompressed length
_HAS_DEADLINE = 1 << 63  # in the stored version: a deadline follows the revision
_ZSTD_VALUE = 1 << 62  # ... and the value is compressed with a zstd dictionary
_VERSION_MAX = _ZSTD_VALUE - 1
_INDEX_FORMAT = b"\x01"  # the first byte of ``indexes``; another value rebuilds them
_LOAD_CHUNK = 65536  # scan entries sorted and written together when (re)building the index
_T = TypeVar("_T")
_MISSING = object()
_AUTO = object()  # encode_record/_encode_change: compress with the codec given
_first = operator.itemgetter(0)
_blake2b = hashlib.blake2b
_POSITION_MAX = (1 << 63) - 1  # SCAN positions are 63 bits


#: LMDB keys are 1 to 511 bytes. A stored key is one tag byte and then the client's key
#: itself (ordered, the empty key included) when it fits, or its SHA-256 for longer keys, whose
#: record then carries the whole key.
MAX_INLINE_KEY = 510
_SHORT, _LONG = b"\x00", b"\x01"


def db_key(key: bytes) -> bytes:
    """The LMDB key under which `key` is stored."""
    if len(key) <= MAX_INLINE_KEY:
        return _SHORT + key
    return _LONG + hashlib.sha256(key).digest()


def encode_record(key: bytes, value: bytes, version: int, revision: int, expires: int = 0,
                  codec: Codec | None = None, *, packed: object = _AUTO) -> bytes:
    """A state record; with a `codec` whose dictionary is active, the value compressed
    with it when that makes it smaller (`packed`: that compression, done already)."""
    if version > _VERSION_MAX:
        raise ValueError(f"version {version} does not fit a state record")
    if packed is _AUTO:
        packed = codec.compress_value(value) if codec is not None else None
    packed = cast("tuple[int, bytes] | None", packed)
    if packed is not None:
        version |= _ZSTD_VALUE
    body = _VRD.pack(version | _HAS_DEADLINE, revision, expires) if expires else _VR.pack(version, revision)
    if len(key) > MAX_INLINE_KEY:
        body += _U32.pack(len(key)) + key
    if packed is not None:
        body += _VR_ZSTD.pack(packed[0], len(value)) + packed[1]
    else:
        body += value
    return _U32.pack(zlib.crc32(body, zlib.crc32(key))) + body


def _unpack_value(key: bytes, stored: bytes, codec: Codec | None, path: str | None) -> bytes:
    """The value of a dictionary-compressed record, from ``dict id | length | frame``."""
    if len(stored) < _VR_ZSTD.size:
        raise CorruptionError(f"state record of key {key[:64]!r} is truncated", path=path)
    dict_id, length = _VR_ZSTD.unpack_from(stored, 0)
    if codec is None or not codec.has_dictionary(dict_id):
        raise CorruptionError(f"the state record of key {key[:64]!r} needs zstd dictionary {dict_id}, "
                              "which this node does not have", path=path)
    try:
        return codec.decompress_value(dict_id, stored[_VR_ZSTD.size:], length)
    except (zstd.ZstdError, ValueError) as e:
        raise CorruptionError(f"the value of key {key[:64]!r} cannot be decompressed ({e})", path=path) from None


def _key_offset(raw: bytes) -> int:
    """Where a record's optional key (or else its value) starts."""
    return _HEAD.size + 8 if raw[4] & 0x80 else _HEAD.size


def decode_record(key: bytes, raw: bytes, path: str | None = None, codec: Codec | None = None) -> Record:
    if len(raw) < _HEAD.size:
        raise CorruptionError(f"state record of key {key[:64]!r} is truncated", path=path)
    crc, version, revision = _HEAD.unpack_from(raw, 0)
    if crc != zlib.crc32(memoryview(raw)[4:], zlib.crc32(key)):
        raise CorruptionError(f"checksum mismatch in the state record of key {key[:64]!r}", path=path)
    off = _HEAD.size
    expires = 0
    if version & _HAS_DEADLINE:
        if len(raw) < off + 8:
            raise CorruptionError(f"state record of key {key[:64]!r} is truncated", path=path)
        (expires,) = _U64.unpack_from(raw, off)
        version &= ~_HAS_DEADLINE
        off += 8
    if len(key) > MAX_INLINE_KEY:
        off += _U32.size + len(key)
    if version & _ZSTD_VALUE:
        return _unpack_value(key, bytes(raw[off:]), codec, path), version & _VERSION_MAX, revision, expires
    return bytes(raw[off:]), version, revision, expires


def _stored_key(dbkey: bytes, raw: bytes, path: str | None) -> bytes:
    """The client's key of a stored record (from the LMDB key, or the record of a long key)."""
    if dbkey[:1] == _SHORT:
        return dbkey[1:]
    off = _key_offset(raw) if len(raw) > 4 else _HEAD.size
    if len(raw) < off + _U32.size:
        raise CorruptionError("state record of a long key is truncated", path=path)
    (n,) = _U32.unpack_from(raw, off)
    key = bytes(raw[off + _U32.size:off + _U32.size + n])
    if len(key) != n or len(key) <= MAX_INLINE_KEY or _LONG + hashlib.sha256(key).digest() != dbkey:
        raise CorruptionError("state record of a long key does not match its key", path=path)
    return key


def _decode_stored(dbkey: bytes, raw: bytes, path: str | None, codec: Codec | None = None) -> Item:
    key = _stored_key(dbkey, raw, path)
    value, version, revision, expires = decode_record(key, raw, path, codec)
    return key, value, version, revision, expires


def _digest(key: bytes) -> bytes:
    """The key of `key`'s entry in the scan index: ``scan_hash(key) == digest >> 1``."""
    return _blake2b(key, digest_size=8).digest()


def _encode_due(key: bytes, dbkey: bytes, deadline: int) -> bytes:
    body = _U64.pack(deadline) + (key if dbkey[:1] == _LONG else b"")
    return _U32.pack(zlib.crc32(body, zlib.crc32(dbkey))) + body


def _decode_due(dbkey: bytes, raw: bytes, path: str | None) -> tuple[bytes, int]:
    """The client's key and deadline of an entry of the deadline index."""
    ok = len(raw) >= 12 and _U32.unpack_from(raw, 0)[0] == zlib.crc32(memoryview(raw)[4:], zlib.crc32(dbkey))
    if ok:
        (deadline,) = _U64.unpack_from(raw, 4)
        key = dbkey[1:] if dbkey[:1] == _SHORT else bytes(raw[12:])
        ok = deadline > 0 and db_key(key) == dbkey
        if ok:
            return key, int(deadline)
    raise CorruptionError(f"the deadline index entry of {dbkey[:64]!r} is corrupt", path=path)


class _ScanLoader:
    """Fills the scan index of a whole state inside one write transaction, a sorted chunk at
    a time (a state of millions of keys is not held in memory at once)."""

    def __init__(self, txn: lmdb.Transaction[bytes], db: lmdb._Database) -> None:
        self._txn = txn
        self._db = db
        self._buf: list[tuple[bytes, bytes]] = []

    def add(self, key: bytes, dbkey: bytes) -> None:
        self._buf.append((_digest(key), dbkey))
        if len(self._buf) >= _LOAD_CHUNK:
            self.finish()

    def finish(self) -> None:
        buf, self._buf = self._buf, []
        if buf:
            buf.sort(key=_first)
            self._txn.cursor(db=self._db).putmulti(buf)


class _Order:
    """The keys of the overlays in one order, as ``(position, key)``: SCAN position, or 0 for
    byte order. Kept sorted across calls: each call sorts only the keys new since the last
    one and merges them in (timsort merges two sorted runs in linear time, in C) instead of
    sorting the whole overlay for every range read or scan. Keys only leave the overlays when
    a flush lands or a snapshot is installed, which `reset` it."""

    __slots__ = ("_by_position", "_seen", "sorted")

    def __init__(self, by_position: bool) -> None:
        self._by_position = by_position
        self._seen: set[bytes] = set()
        self.sorted: list[tuple[int, bytes]] = []

    def reset(self) -> None:
        self._seen = set()
        self.sorted = []

    def refresh(self, live: dict[bytes, Record | None], flushing: dict[bytes, Record | None] | None) -> None:
        fresh = live.keys() - self._seen
        if flushing:
            fresh |= flushing.keys() - self._seen
        if not fresh:
            return
        self._seen |= fresh
        if self._by_position:
            self.sorted += sorted((scan_hash(k), k) for k in fresh)
        else:
            self.sorted += [(0, k) for k in sorted(fresh)]
        self.sorted.sort()


class LmdbKV:
    """The `KVBackend` of a node: LMDB records under an in-memory overlay of recent applies."""

    def headroom(self) -> int:
        """Bytes the state environment can still take before its map limit."""
        with self._lock:
            return self._e.headroom()

    def __init__(self, env: Env, *, codec: Codec | None = None) -> None:
        e = env
        #: Compresses values with its active zstd dictionary and decodes those that were
        #: (None: values stay raw, and a compressed one is corruption).
        self.codec = codec
        #: Called (in the flush's worker thread) with the records of each flush: what the
        #: leader trains a dictionary on (aegis.zdict). None: nobody looks.
        self.sampler: Callable[[Iterable[Record | None]], None] | None = None
        self._e = e
        self._env = e.env
        self._db = e.kv_db
        self._meta = e.meta_db
        self._lock: threading.Lock = e.lock
        self._path = e.path
        with e.write_lock, self._lock:  # no other transaction of this environment is open yet
            self._scan_db = self._env.open_db(b"scan", dupsort=True)
            self._due_db = self._env.open_db(b"due")
            self._hist_db = self._env.open_db(b"history")
            self._sess_db = self._env.open_db(b"sessions")
            e.dbs += [self._scan_db, self._due_db, self._hist_db, self._sess_db]
        # Client sessions (aegis.sessions) changed since the last flush (None: deleted), and
        # those of the flush in flight: written in the flush's transaction, like the keys.
        self._sess_live: dict[int, bytes | None] = {}
        self._sess_flushing: dict[int, bytes | None] | None = None
        self._live: dict[bytes, Record | None] = {}
        self._created: list[bytes] = []  # keys `_live` created (not on disk; a list: cheaper)
        self._flushing: dict[bytes, Record | None] | None = None
        self._flushing_created: list[bytes] = []
        self._cancelled = False  # an install dropped the flush in flight; its done is void
        self._gen = 0
        self._by_key = _Order(False)
        self._by_position = _Order(True)
        # Deadlines: `_due` is every key's (the overlays over the disk), `_heap` the same as
        # (deadline, key) with stale entries dropped lazily. `_due_disk` is what the ``due``
        # database holds; guarded by the write lock (write_flush runs in a worker).
        self._due: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._due_disk: dict[bytes, int] = {}
        with self._lock:
            with self._env.begin() as txn:
                raw = txn.get(K_APPLIED, db=self._meta)
                marker = txn.get(K_INDEXES, db=self._meta)
                self._count = int(txn.stat(self._db)["entries"])
                current = marker == _INDEX_FORMAT + (raw or b"")
                floor_raw = txn.get(K_HISTORY_FLOOR, db=self._meta)
                if current:
                    for k, v in txn.cursor(db=self._due_db):
                        key, deadline = _decode_due(k, v, self._path)
                        self._due_disk[key] = deadline
        self._durable, self._durable_term = _decode_applied(raw, self._path) if raw is not None else (0, 0)
        # The change history begins where this version first opened the state (or a snapshot
        # install, or what pruning left): a feed may resume from any revision at or after it.
        self._hist_floor = _decode_applied(floor_raw, self._path)[0] if floor_raw is not None else self._durable
        self._hist_keep = 100_000
        if not current:
            self._rebuild_indexes(raw)
        self._set_deadlines(self._due_disk)
        self._applied = self._durable
        self._applied_term = self._durable_term
        self._flushing_applied = (0, 0)
        # One read transaction serves the disk reads between two flushes (the overlays hold
        # anything newer); it is dropped when a flush lands, at an install and before the
        # map is resized. Guarded by the environment's lock.
        self._rtxn: lmdb.Transaction[bytes] | None = None
        e.before_remap.append(self._drop_reader)

    def _rebuild_indexes(self, applied_raw: bytes | None) -> None:
        """Build the scan and deadline indexes from the records (a state written without
        them), in one durable transaction."""
        dues: dict[bytes, int] = {}

        def body(txn: lmdb.Transaction[bytes]) -> None:
            dues.clear()
            dues.update(self._index_all(txn))
            txn.put(K_INDEXES, _INDEX_FORMAT + (applied_raw or b""), db=self._meta)

        with self._e.write_lock:
            self._e.commit(body)
            self._due_disk = dues

    def _index_all(self, txn: lmdb.Transaction[bytes]) -> dict[bytes, int]:
        """Replace both indexes with those of the records in ``kv``; returns the deadlines."""
        txn.drop(self._scan_db, delete=False)
        txn.drop(self._due_db, delete=False)
        loader = _ScanLoader(txn, self._scan_db)
        dues: dict[bytes, int] = {}
        due_puts = []
        for dk, raw in txn.cursor(db=self._db):
            key, _value, _ver, _rev, expires = _decode_stored(dk, raw, self._path, self.codec)
            loader.add(key, dk)
            if expires:
                dues[key] = expires
                due_puts.append((dk, _encode_due(key, dk, expires)))
        loader.finish()
        if due_puts:
            txn.cursor(db=self._due_db).putmulti(due_puts)
        return dues

    def _set_deadlines(self, dues: dict[bytes, int]) -> None:
        self._due = dict(dues)
        self._heap = [(d, k) for k, d in dues.items()]
        heapq.heapify(self._heap)

    def _drop_reader(self) -> None:
        """Caller holds the environment's lock."""
        txn, self._rtxn = self._rtxn, None
        if txn is not None:
            try:
                txn.abort()
            except lmdb.Error:
                pass

    def _reader(self) -> lmdb.Transaction[bytes]:
        """The shared read transaction. Caller holds the environment's lock."""
        txn = self._rtxn
        if txn is None:
            txn = self._rtxn = self._env.begin(db=self._db)
        return txn

    def _in_overlay(self, key: bytes) -> bool:
        return key in self._live or (self._flushing is not None and key in self._flushing)

    def _overlay_get(self, key: bytes) -> object:
        """The overlays' record of `key` (None: deleted), or `_MISSING`."""
        rec = self._live.get(key, _MISSING)
        if rec is _MISSING and self._flushing is not None:
            rec = self._flushing.get(key, _MISSING)
        return rec

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
                raw = self._reader().get(db_key(key))
            if gen == self._gen:
                return decode_record(key, raw, self._path, self.codec) if raw is not None else None

    def count(self) -> int:
        return self._count

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        """Every client session as ``(sid, encoded)`` in id order: the disk under the overlays."""
        with self._lock:
            with self._env.begin(db=self._sess_db) as txn:
                merged: dict[int, bytes | None] = {
                    _U64.unpack(k)[0]: _decode_session_value(k, v, self._path) for k, v in txn.cursor()}
        merged.update(self._sess_flushing or {})
        merged.update(self._sess_live)
        return iter([(sid, data) for sid, data in sorted(merged.items()) if data is not None])

    def put_session(self, sid: int, data: bytes) -> None:
        self._sess_live[sid] = data

    def delete_session(self, sid: int) -> bool:
        self._sess_live[sid] = None
        return True

    def applied(self) -> int:
        return self._applied

    @property
    def durable_applied(self) -> int:
        """The applied index of the state on disk: the log may be compacted up to here."""
        return self._durable

    def items(self) -> Iterator[Item]:
        """Every record as of now, in key order (the disk merged with the overlays)."""
        overlay: dict[bytes, Record | None] = dict(self._flushing or {})
        overlay.update(self._live)
        with self._lock:
            with self._env.begin(db=self._db) as txn:
                disk = [_decode_stored(k, v, self._path, self.codec) for k, v in txn.cursor()]
        merged: dict[bytes, Record | None] = {k: (v, ver, rev, exp) for k, v, ver, rev, exp in disk}
        merged.update(overlay)
        out = [(k, *rec) for k, rec in sorted(merged.items()) if rec is not None]
        return iter(out)

    def range(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, Record]]:
        """The records of ``start <= key < end`` in byte order, at most `limit` (<= 0: all)."""
        if end is not None and end <= start:
            return []
        while True:
            gen = self._gen
            self._by_key.refresh(self._live, self._flushing)
            with self._lock:
                txn = self._reader()
                merged = heapq.merge(self._overlay_range(start, end), self._disk_range(txn, start, end), key=_first)
                out: list[tuple[bytes, Record]] = []
                for item in merged:
                    out.append(item)
                    if len(out) == limit:
                        break
            if gen == self._gen:
                return out

    def _overlay_range(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, Record]]:
        entries = self._by_key.sorted
        for i in range(bisect.bisect_left(entries, (0, start)), len(entries)):
            k = entries[i][1]
            if end is not None and k >= end:
                return
            rec = self._overlay_get(k)
            if rec is not None and rec is not _MISSING:
                yield k, rec  # type: ignore[misc]

    def _disk_range(self, txn: lmdb.Transaction[bytes], start: bytes, end: bytes | None
                    ) -> Iterator[tuple[bytes, Record]]:
        """The stored records in the range that the overlays do not hide, in key order.
        Caller holds the lock while iterating."""
        path = self._path
        # Keys over 510 bytes are stored by their hash: take every one, keep those in range.
        longs: list[tuple[bytes, Record]] = []
        cur = txn.cursor(db=self._db)
        if cur.set_range(_LONG):
            for dk, raw in cur:
                key = _stored_key(dk, raw, path)
                if key >= start and (end is None or key < end) and not self._in_overlay(key):
                    longs.append((key, decode_record(key, raw, path, self.codec)))
        longs.sort(key=_first)
        return heapq.merge(self._disk_short_range(txn, start, end), longs, key=_first)

    def _disk_short_range(self, txn: lmdb.Transaction[bytes], start: bytes, end: bytes | None
                          ) -> Iterator[tuple[bytes, Record]]:
        path = self._path
        cur = txn.cursor(db=self._db)
        if not cur.set_range(_SHORT + start[:MAX_INLINE_KEY]):
            return
        for dk, raw in cur:
            if dk[:1] != _SHORT:
                return
            key = dk[1:]
            if key < start:  # (only when `start` itself is longer than 510 bytes)
                continue
            if end is not None and key >= end:
                return
            if not self._in_overlay(key):
                yield key, decode_record(key, raw, path, self.codec)

    def scan(self, cursor: int, count: int) -> tuple[int, list[tuple[bytes, Record]]]:
        """SCAN order: keys at positions >= `cursor`, at least `count` of them unless the state
        ends first, a run of one position never split; the next cursor (0: done)."""
        lo = min(max(cursor, 0), _POSITION_MAX + 1)
        want = max(count, 1)
        while True:
            gen = self._gen
            self._by_position.refresh(self._live, self._flushing)
            out: list[tuple[bytes, Record]] = []
            nxt = 0
            with self._lock:
                txn = self._reader()
                merged = heapq.merge(self._overlay_scan(lo), self._disk_scan(txn, lo), key=_first)
                last = -1
                for pos, item in merged:
                    if len(out) >= want and pos != last:
                        nxt = pos
                        break
                    out.append(item)
                    last = pos
            if gen == self._gen:
                return nxt, out

    def _overlay_scan(self, lo: int) -> Iterator[tuple[int, tuple[bytes, Record]]]:
        entries = self._by_position.sorted
        for i in range(bisect.bisect_left(entries, (lo,)), len(entries)):
            pos, k = entries[i]
            rec = self._overlay_get(k)
            if rec is not None and rec is not _MISSING:
                yield pos, (k, rec)  # type: ignore[misc]

    def _disk_scan(self, txn: lmdb.Transaction[bytes], lo: int) -> Iterator[tuple[int, tuple[bytes, Record]]]:
        """The stored keys at positions >= `lo` that the overlays do not hide, in position
        order, each checked against the index entry that named it. Caller holds the lock."""
        path = self._path
        if lo > _POSITION_MAX:
            return
        cur = txn.cursor(db=self._scan_db)
        if not cur.set_range(_U64.pack(lo << 1)):
            return
        for pk, dk in cur:
            if dk[:1] == _SHORT and self._in_overlay(dk[1:]):
                continue
            raw = txn.get(dk, db=self._db) if len(pk) == 8 else None
            if raw is None:
                raise CorruptionError(f"the scan index names a key that is not stored ({dk[:64]!r})", path=path)
            key, value, version, revision, expires = _decode_stored(dk, raw, path, self.codec)
            if _digest(key) != pk:
                raise CorruptionError(f"the scan index entry of key {key[:64]!r} is corrupt", path=path)
            if dk[:1] == _LONG and self._in_overlay(key):
                continue
            yield int.from_bytes(pk, "big") >> 1, (key, (value, version, revision, expires))

    def expiring(self, now_ms: int, limit: int) -> list[bytes]:
        """Keys whose deadline has passed (``0 < expires <= now_ms``), soonest first."""
        heap, due = self._heap, self._due
        out: list[bytes] = []
        keep: list[tuple[int, bytes]] = []
        seen: set[bytes] = set()
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            deadline, key = heapq.heappop(heap)
            if due.get(key) != deadline or key in seen:
                continue  # stale: deleted, rewritten or given another deadline since
            rec = self.get(key)
            if rec is None or rec[3] != deadline:  # (cannot happen: `_due` follows every put)
                continue
            seen.add(key)
            out.append(key)
            keep.append((deadline, key))
        for entry in keep:  # still stored until a log entry deletes it
            heapq.heappush(heap, entry)
        return out

    # --- applying ---------------------------------------------------------------------------
    @property
    def durable_applied_term(self) -> int:
        return self._durable_term

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T:
        out = body(self)
        self._applied = applied
        self._applied_term = term
        return out

    def put(self, key: bytes, value: bytes, version: int, revision: int, expires: int = 0) -> None:
        self._live[key] = (value, version, revision, expires)
        if version == 1:
            self._count += 1
            self._created.append(key)
        if expires:
            self._due[key] = expires
            heapq.heappush(self._heap, (expires, key))
            if len(self._heap) > 2 * len(self._due) + 1024:  # mostly stale: rebuild
                self._set_deadlines(self._due)
        elif self._due:
            self._due.pop(key, None)

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        self._live[key] = None
        self._count -= 1
        if self._due:
            self._due.pop(key, None)
        return True

    def replace(self, records: Iterable[Item], applied: int,
                sessions: Iterable[tuple[int, bytes]] = ()) -> None:
        """Replace the stored state with `records` (key order) and `sessions` in one transaction."""
        recs = list(records)
        sess = list(sessions)
        self.install(lambda: recs, applied, 0, None, lambda: sess)

    # --- flushing (the driver: take/done on the event loop, the write in a worker) ----------
    def overlay_keys(self) -> int:
        return len(self._live)

    def pending(self) -> bool:
        """Whether there is applied state that is not on disk yet."""
        return bool(self._live) or bool(self._sess_live) or self._applied > self._durable

    @property
    def flushing(self) -> bool:
        return self._flushing is not None

    def take_flush(self) -> tuple[dict[bytes, Record | None], int, int, int, list[bytes],
                                  dict[int, bytes | None]] | None:
        """Hand the overlay over for ``write_flush(*flush)`` (in a worker thread): its
        records, the applied index and term they reach, the install generation, the keys
        the overlay created and the client sessions it changed. None if nothing changed
        since the last flush. Call `flush_done` when the write is over."""
        if self._flushing is not None or self._cancelled:
            raise RuntimeError("a state flush is already in flight")
        if not self._live and self._applied == self._durable:
            return None
        items, self._live = self._live, {}
        created, self._created = self._created, []
        sessions, self._sess_live = self._sess_live, {}
        self._flushing = items
        self._flushing_created = created
        self._sess_flushing = sessions
        self._flushing_applied = (self._applied, self._applied_term)
        return items, self._applied, self._applied_term, self._gen, created, sessions

    def write_flush(
        self,
        items: dict[bytes, Record | None],
        applied: int,
        term: int,
        gen: int = -1,
        created: Sequence[bytes] | None = None,
        sessions: dict[int, bytes | None] | None = None,
        history: Sequence[Change] = (),
    ) -> bool:
        """Write an overlay and the applied index it reaches in ONE durable transaction,
        with the index entries of the keys it creates (`created`; None: any key may be new)
        and deletes, and the change feed's `history` (the changes of the entries up to
        `applied` that are not on disk yet; the oldest are pruned past `history_keep`) and
        the client `sessions` that changed (None: deleted). A
        flush taken before a snapshot install (`gen` is older) writes nothing: the install
        replaced what it would change. Returns whether it wrote."""
        db, meta, scan, due = self._db, self._meta, self._scan_db, self._due_db
        codec = self.codec
        floor = [self._hist_floor]
        packer = codec.value_packer() if codec is not None else None
        # Each value compressed once, for its record and its history entry (the last change
        # of a key is the value of its record: the same object). Keyed by id(): `items` and
        # `history` hold every value until this returns, so no id is reused meanwhile.
        memo: dict[int, tuple[int, bytes] | None] = {}

        def packed_of(value: bytes) -> tuple[int, bytes] | None:
            if packer is None or not value:
                return None
            vid = id(value)
            if vid in memo:
                return memo[vid]
            pk = memo[vid] = packer(value)
            return pk

        blake = _blake2b
        changed: dict[bytes, int] = {}  # the deadlines this write gives `due` (0: removed)

        crc, u32, vr, vr_zstd = zlib.crc32, _U32.pack, _VR.pack, _VR_ZSTD.pack

        def body(txn: lmdb.Transaction[bytes]) -> None:
            changed.clear()
            on_disk = self._due_disk
            puts = []
            positions = []
            dues = []
            for k, rec in items.items():
                dk = _SHORT + k if len(k) <= MAX_INLINE_KEY else db_key(k)
                if rec is None:
                    if txn.delete(dk, db=db):
                        txn.delete(blake(k, digest_size=8).digest(), dk, db=scan)
                        if on_disk and k in on_disk:
                            txn.delete(dk, db=due)
                            changed[k] = 0
                    continue
                value, version, revision, expires = rec
                if expires or dk[0] or version > _VERSION_MAX:
                    puts.append((dk, encode_record(k, *rec, packed=packed_of(value))))
                else:  # encode_record's common case, inline: a short key, no deadline
                    if packer is None or not value:
                        pk = None
                    else:
                        pk = memo[id(value)] = packer(value)
                    raw = vr(version, revision) + value if pk is None else \
                        vr(version | _ZSTD_VALUE, revision) + vr_zstd(pk[0], len(value)) + pk[1]
                    puts.append((dk, u32(crc(raw, crc(k))) + raw))
                if created is None:
                    positions.append((blake(k, digest_size=8).digest(), dk))
                if expires:
                    if on_disk.get(k) != expires:
                        dues.append((dk, _encode_due(k, dk, expires)))
                        changed[k] = expires
                elif on_disk and k in on_disk:
                    txn.delete(dk, db=due)
                    changed[k] = 0
            if puts:
                puts.sort(key=_first)
                txn.cursor(db).putmulti(puts)
            if created is not None:  # (a key deleted since it was created has no record)
                positions = [(blake(k, digest_size=8).digest(), _SHORT + k if len(k) <= MAX_INLINE_KEY else db_key(k))
                             for k in created if items.get(k) is not None]
            if positions:
                positions.sort(key=_first)
                txn.cursor(scan).putmulti(positions)  # a pair already there is kept once
            if dues:
                dues.sort(key=_first)
                txn.cursor(due).putmulti(dues)
            floor[0] = self._write_history(txn, history, packed_of)
            for sid, data in sorted((sessions or {}).items()):
                sk = _U64.pack(sid)
                if data is None:
                    txn.delete(sk, db=self._sess_db)
                else:
                    txn.put(sk, _encode_session_value(sk, data), db=self._sess_db)
            applied_raw = encode_applied(applied, term)
            txn.put(K_APPLIED, applied_raw, db=meta)
            txn.put(K_INDEXES, _INDEX_FORMAT + applied_raw, db=meta)
            txn.put(K_HISTORY_FLOOR, encode_applied(floor[0]), db=meta)
            failpoints.hit("state-before-flush")  # written into the transaction; its commit fsyncs

        sampler = self.sampler
        if sampler is not None:
            sampler(items.values())
        with self._e.write_lock:
            if gen != -1 and gen != self._gen:
                return False
            self._e.commit(body)
            self._hist_floor = floor[0]
            for k, d in changed.items():
                if d:
                    self._due_disk[k] = d
                else:
                    self._due_disk.pop(k, None)
        failpoints.hit("state-after-flush")
        return True

    # --- the change feed's history -------------------------------------------------------
    @property
    def history_keep(self) -> int:
        return self._hist_keep

    @history_keep.setter
    def history_keep(self, n: int) -> None:
        """How many changes the history keeps at least (whole revisions; 0: none)."""
        self._hist_keep = max(0, int(n))

    def _write_history(self, txn: lmdb.Transaction[bytes], history: Sequence[Change],
                       packed_of: Callable[[bytes], tuple[int, bytes] | None]) -> int:
        """Append `history`, prune the oldest revisions beyond `history_keep`; returns the
        new floor. Caller holds the write lock, inside the flush's transaction."""
        hist = self._hist_db
        floor = self._hist_floor
        if history and self._hist_keep:
            puts = []
            seq = 0
            prev = -1
            hk, clen, vr_zstd, crc, u32 = _HIST_KEY.pack, _CLEN.pack, _VR_ZSTD.pack, zlib.crc32, _U32.pack
            for rev, key, value in history:  # _encode_change, inline
                seq = seq + 1 if rev == prev else 0
                prev = rev
                if value is None:
                    body = b"\x00" + clen(len(key)) + key
                else:
                    pk = packed_of(value)
                    body = b"\x01" + clen(len(key)) + key + value if pk is None else \
                        b"\x02" + clen(len(key)) + key + vr_zstd(pk[0], len(value)) + pk[1]
                puts.append((hk(rev, seq), u32(crc(body)) + body))
            cur = txn.cursor(db=hist)
            last = cur.key() if cur.last() else b""
            cur.putmulti(puts, append=bool(last) and puts[0][0] > last or not last)
        elif history:  # no history kept: everything before these is gone
            floor = max(floor, history[-1][0])
        excess = int(txn.stat(hist)["entries"]) - self._hist_keep
        if excess > 0:  # the oldest `excess` go, and the rest of the revision the last is in
            cur = txn.cursor(db=hist)
            cur.first()
            delete = cur.delete  # deletes the current entry and moves to the next
            for _ in range(excess - 1):
                delete()
            dropped = _HIST_KEY.unpack(cur.key())[0]
            delete()
            unpack = _HIST_KEY.unpack
            while (k := cur.key()) and unpack(k)[0] == dropped:
                delete()
            floor = max(floor, dropped)
        return floor

    def history_floor(self) -> int:
        """A feed may resume from any revision at or after this one."""
        return self._hist_floor

    def read_history(self, after: int, limit: int) -> list[Change]:
        """Changes with revision > `after`, in order, whole revisions, about `limit` of them
        (safe from a worker thread)."""
        out: list[Change] = []
        path = self._path
        with self._lock:
            with self._env.begin(db=self._hist_db) as txn:
                cur = txn.cursor()
                if not cur.set_range(_HIST_KEY.pack(after + 1, 0)):
                    return out
                last = -1
                for k, v in cur:
                    rev = _HIST_KEY.unpack(bytes(k))[0]
                    if len(out) >= limit and rev != last:
                        break
                    key, value = _decode_change(bytes(v), path, self.codec)
                    out.append((rev, key, value))
                    last = rev
        return out

    def flush_done(self, ok: bool = True) -> None:
        if self._cancelled:  # the flush this ends was dropped by an install
            self._cancelled = False
            return
        items = self._flushing
        self._flushing = None
        sessions, self._sess_flushing = self._sess_flushing, None
        if items is None:
            return
        with self._lock:
            self._drop_reader()  # the next read sees what the flush wrote
        if ok:
            if self._flushing_applied[0] > self._durable:
                self._durable, self._durable_term = self._flushing_applied
            self._by_key.reset()  # its keys are on disk now
            self._by_position.reset()
        else:  # the write failed: what it carried is still only in memory
            items.update(self._live)
            self._live = items
            if sessions:
                sessions.update(self._sess_live)
                self._sess_live = sessions
            self._created = self._flushing_created + self._created
        self._flushing_created = []

    def _installed(self, applied: int, term: int, count: int, dues: dict[bytes, int]) -> None:
        """Called right after a snapshot install committed (under the environment's lock)."""
        self._drop_reader()
        self._hist_floor = applied
        self._live = {}
        self._created = []
        self._sess_live = {}
        self._sess_flushing = None
        self._cancelled = self._flushing is not None
        self._flushing = None
        self._flushing_created = []
        self._applied = self._durable = applied
        self._applied_term = self._durable_term = term
        self._count = count
        self._due_disk = dues
        self._set_deadlines(dues)
        self._by_key.reset()
        self._by_position.reset()
        self._gen += 1

    def install(
        self,
        records: Callable[[], Iterable[Item]],
        applied: int,
        term: int,
        base: bytes | None,
        sessions: Callable[[], Iterable[tuple[int, bytes]]] | None = None,
    ) -> int:
        """Replace everything with `records` (key order) at `applied` in ONE durable
        transaction (with `base`, the encoded snapshot meta it came from), indexes
        included, and the client sessions `sessions()` gives (called once the records are
        consumed: a snapshot stream carries them after the keys). If the records raise (a
        corrupt stream), nothing changes. Returns the number of keys."""
        db, meta = self._db, self._meta
        count = 0
        dues: dict[bytes, int] = {}

        def body(txn: lmdb.Transaction[bytes]) -> None:
            nonlocal count
            count = 0
            dues.clear()
            txn.drop(db, delete=False)
            txn.drop(self._scan_db, delete=False)
            txn.drop(self._due_db, delete=False)
            txn.drop(self._hist_db, delete=False)  # this node never saw the changes before `applied`
            txn.drop(self._sess_db, delete=False)
            txn.put(K_HISTORY_FLOOR, encode_applied(applied), db=meta)
            loader = _ScanLoader(txn, self._scan_db)
            due_puts = []

            def encoded() -> Iterator[tuple[bytes, bytes]]:
                nonlocal count
                for k, v, ver, rev, exp in records():
                    count += 1
                    dk = db_key(k)
                    loader.add(k, dk)
                    if exp:
                        dues[k] = exp
                        due_puts.append((dk, _encode_due(k, dk, exp)))
                    yield dk, encode_record(k, v, ver, rev, exp, self.codec)

            consumed, added = txn.cursor(db).putmulti(encoded(), overwrite=False)
            if added != consumed:
                raise CorruptionError(f"the snapshot names a key twice ({consumed - added} duplicates)",
                                      path=self._path)
            loader.finish()
            if due_puts:
                due_puts.sort(key=_first)
                txn.cursor(db=self._due_db).putmulti(due_puts)
            for sid, data in (sessions() if sessions is not None else ()):
                sk = _U64.pack(sid)
                txn.put(sk, _encode_session_value(sk, data), db=self._sess_db)
            applied_raw = encode_applied(applied, term)
            txn.put(K_APPLIED, applied_raw, db=meta)
            txn.put(K_INDEXES, _INDEX_FORMAT + applied_raw, db=meta)
            if base is not None:
                txn.put(K_BASE, base, db=meta)

        with self._e.write_lock:
            self._e.commit(body, lambda: self._installed(applied, term, count, dict(dues)), destructive=True)
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

    def records(self) -> Iterator[Item]:
        path = self._kv._path
        codec = self._kv.codec
        for k, v in self._txn.cursor(db=self._kv._db):
            yield _decode_stored(k, v, path, codec)

    def sessions(self) -> list[tuple[int, bytes]]:
        """The client sessions of the same read, in id order."""
        path = self._kv._path
        return [(_U64.unpack(k)[0], _decode_session_value(k, v, path))
                for k, v in self._txn.cursor(db=self._kv._sess_db)]

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
_HIST_KEY = struct.Struct(">QI")  # revision, sequence within it
_CLEN = struct.Struct(">I")


def _encode_change(key: bytes, value: bytes | None, codec: Codec | None = None, *, packed: object = _AUTO) -> bytes:
    """``crc | tag | key length | key | value``: tag 0 deleted, 1 a value, 2 a value
    compressed with a zstd dictionary (``dictionary id | length | frame``)."""
    pk = (codec.compress_value(value) if codec is not None and value else None) if packed is _AUTO else \
        cast("tuple[int, bytes] | None", packed)
    if pk is not None:
        tail = _VR_ZSTD.pack(pk[0], len(value or b"")) + pk[1]
        body = b"\x02" + _CLEN.pack(len(key)) + key + tail
    else:
        body = (b"\x00" if value is None else b"\x01") + _CLEN.pack(len(key)) + key + (value or b"")
    return struct.pack(">I", zlib.crc32(body)) + body


def _decode_change(raw: bytes, path: str | None, codec: Codec | None = None) -> tuple[bytes, bytes | None]:
    if len(raw) < 9 or struct.unpack_from(">I", raw, 0)[0] != zlib.crc32(memoryview(raw)[4:]):
        raise CorruptionError("a change in the feed's history is corrupt", path=path)
    (n,) = _CLEN.unpack_from(raw, 5)
    key = raw[9:9 + n]
    if len(key) != n:
        raise CorruptionError("a change in the feed's history is truncated", path=path)
    if raw[4] == 2:
        return key, _unpack_value(key, raw[9 + n:], codec, path)
    return key, (raw[9 + n:] if raw[4] == 1 else None)


def _encode_session_value(sk: bytes, data: bytes) -> bytes:
    return _U32.pack(zlib.crc32(data, zlib.crc32(sk))) + data


def _decode_session_value(sk: bytes, raw: bytes, path: str | None) -> bytes:
    if len(sk) != 8 or len(raw) < 4 or _U32.unpack_from(raw, 0)[0] != zlib.crc32(memoryview(raw)[4:], zlib.crc32(sk)):
        raise CorruptionError(f"the stored client session {sk.hex()} is corrupt", path=path)
    return bytes(raw[4:])


def _decode_applied(raw: bytes, path: str | None) -> tuple[int, int]:
    if len(raw) != 20 or struct.unpack_from(">I", raw, 0)[0] != zlib.crc32(raw[4:]):
        raise CorruptionError("the stored applied index is corrupt", path=path)
    index, term = _APPLIED.unpack_from(raw, 4)
    return int(index), int(term)


def encode_applied(index: int, term: int = 0) -> bytes:
    body = _APPLIED.pack(index, term)
    return struct.pack(">I", zlib.crc32(body)) + body
