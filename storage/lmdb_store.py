"""`LmdbStore`: the durable `LogStore` — log, hard state, membership and snapshot in LMDB.

Theory of operation
-------------------
One LMDB environment per data directory, with three named databases:

* ``log``:  8-byte big-endian index -> entry record (`storage.codec`: header + zstd payload);
* ``meta``: format, identity, hard state, membership, the log's snapshot point ("log base"),
  the stored snapshot's `SnapshotInfo`, the zstd dictionaries (`storage.meta`);
* ``snap``: snapshot chunks (`storage.snapshot`).

Invariants, checked on open (a violation is `CorruptionError`, the node refuses to start):

* the log is dense and starts right after the log base: keys are exactly
  ``log_base.index + 1 .. last`` (checked with cursor first/last and the entry count, so
  open costs O(log n), not a scan);
* the hard state's commit index is <= the last index: the log is never behind what the
  metadata claims was committed;
* the stored snapshot's first and last chunks exist.

Every mutation is ONE write transaction, committed with fsync when ``sync=True`` (the
default): `write_batch` truncates, appends, sets hard state and membership together, which
is what the driver does once per Ready; a snapshot install (`SnapshotWriter.commit`) swaps
the snapshot, compacts the log and deletes the old chunks together. In-memory state (last
index, cache, hard state) is updated only after the commit succeeded, so a failed write
leaves memory and disk as they were.

Concurrency, map growth and the full-disk fail-stop live in `storage.env`: one writer at a
time, readers in any thread; a pure append commits without blocking readers, a destructive
write holds the read lock across its commit so nobody sees half of it.

A cache of the last ``cache_entries`` entries (bounded also by ``cache_bytes``) answers
replication reads and `term()` for recent indexes without a transaction; older entries are
read with a cursor and verified (`CorruptionError` names the index and the file).

zstd dictionaries (aegis.zdict): a DICTIONARY entry's dictionary is stored (``zdict/<id>``,
with the entry's index) in the transaction that appends the entry, and registered with the
codec once it commits, so a follower can decode the records that use it as soon as it has
acknowledged the entry. All of them are registered on open, before any record is read.
Truncating the entry forgets its dictionary (no record can use it: only committed
dictionaries are compressed with). A snapshot carries the dictionaries up to its index;
installing one stores them first, then (when the log is dropped) forgets those it does not
name above the old commit index. `activate_committed` picks, after a restart, the newest
dictionary known to be committed.

``sync=False`` is UNSAFE and meant for benchmarks: a power failure may lose acknowledged
batches (a killed process does not, the OS still has the pages).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import Callable, Iterable, Iterator, Sequence

import lmdb

from aegis import failpoints
from aegis.log import (
    CompactedError,
    EntryType,
    HardState,
    LogEntry,
    LogIndex,
    LogInvariantError,
    Membership,
    SnapshotMeta,
    Term,
    UnavailableError,
)

from . import meta as m
from .codec import Codec, decode_dictionary_entry, default_codec
from .env import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, Body, Env
from aegis.state import Item, SnapshotParser

from .errors import CorruptionError, SnapshotError, StorageError, WrongNodeError
from .kv import STATE_DIR, LmdbKV
from .snapshot import (
    CHUNK_SIZE,
    DEFAULT_SNAPSHOT_LEVEL,
    MAX_DICTIONARIES,
    SnapshotInfo,
    SnapshotReader,
    SnapshotWriter,
    read_snapshot_file,
    write_snapshot_file_raw,
)

__all__ = ["LmdbStore", "DEFAULT_MAP_SIZE", "DEFAULT_MAX_MAP_SIZE"]

log = logging.getLogger("aegis.storage")

DEFAULT_CACHE_ENTRIES = 4096
DEFAULT_CACHE_BYTES = 32 << 20

_LEN = struct.Struct(">I")  # the payload length field of a record header, at offset 19
_SNAP_KEY = struct.Struct(">QI")
_U64 = struct.Struct(">Q")  # log keys (storage.meta.index_key, inlined on the hot path)


def _limit_size(entries: list[LogEntry], max_bytes: int | None) -> list[LogEntry]:
    """Same rule as aegis.log: at least one entry, then stop before exceeding max_bytes."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


def _no_change() -> None:
    pass


def _record_size(record: bytes) -> int:
    """`LogEntry.size()` from an unverified header (only a budget estimate)."""
    if len(record) < 23:
        return 32
    return int(_LEN.unpack_from(record, 19)[0]) + 32


class LmdbStore:
    """A `LogStore` in an LMDB environment. Build it with `LmdbStore.open(...)`."""

    # ------------------------------------------------------------------------------------------
    # opening and closing
    # ------------------------------------------------------------------------------------------
    def __init__(
        self,
        env: Env,
        *,
        cache_entries: int,
        cache_bytes: int,
        codec: Codec,
        snapshot_level: int,
        snapshot_chunk_size: int,
    ) -> None:
        self._e = env
        self.directory = env.directory
        self._path = env.path
        self._env = env.env
        self._log_db, self._meta_db, self._snap_db = env.log_db, env.meta_db, env.snap_db
        self._lock = env.lock
        self._write_lock = env.write_lock
        self._cache_max = cache_entries
        self._cache_max_bytes = cache_bytes
        self.codec = codec
        self._snapshot_level = snapshot_level
        self._snapshot_chunk_size = snapshot_chunk_size
        # in-memory view, replaced only after a commit
        self._base = SnapshotMeta()
        self._last = 0
        self._hard = HardState()
        self._membership = Membership()
        self._snap_info: SnapshotInfo | None = None
        self._next_snap_id = 1
        self._cache: list[LogEntry] = []
        self._cache_lo = 1
        self._cache_bytes = 0
        self._kv: LmdbKV | None = None
        self._zdicts: dict[int, tuple[int, bytes]] = {}  # dictionary id -> (log index, bytes)
        self._map_size = DEFAULT_MAP_SIZE
        self._max_map_size = env.max_map_size

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        node_id: str,
        cluster: str = "aegis",
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        create: bool = True,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        codec: Codec | None = None,
        snapshot_level: int = DEFAULT_SNAPSHOT_LEVEL,
        snapshot_chunk_size: int = CHUNK_SIZE,
    ) -> LmdbStore:
        """Open (or with `create`, initialise) the data directory of node `node_id`.

        Raises WrongNodeError if the directory belongs to another node or cluster,
        CorruptionError if its structure is inconsistent, DataDirInUseError if another
        process has it open. ``sync=False`` is UNSAFE (benchmarks only).
        """
        if not node_id:
            raise ValueError("node_id must not be empty")
        env = Env.open(path, sync=sync, map_size=map_size, max_map_size=max_map_size, create=create)
        try:
            store = cls(
                env,
                cache_entries=cache_entries,
                cache_bytes=cache_bytes,
                codec=codec if codec is not None else default_codec(),
                snapshot_level=snapshot_level,
                snapshot_chunk_size=snapshot_chunk_size,
            )
            store._map_size = map_size
            store._load(node_id, cluster)
        except BaseException:
            env.close()
            raise
        return store

    def _load(self, node_id: str, cluster: str) -> None:
        path = self._path
        with self._env.begin() as txn:
            fmt_raw, ident_raw, hs_raw, mem_raw, base_raw, snap_raw, dict_raw = (
                txn.get(k, db=self._meta_db)
                for k in (m.K_FORMAT, m.K_IDENTITY, m.K_HARD_STATE, m.K_MEMBERSHIP, m.K_LOG_BASE, m.K_SNAPSHOT, m.K_DICT)
            )
            count = txn.stat(self._log_db)["entries"]
            cur = txn.cursor(self._log_db)
            first_key = cur.key() if cur.first() else None
            last_key = cur.key() if cur.last() else None
            zdicts_raw: list[tuple[bytes, bytes]] = []
            mcur = txn.cursor(self._meta_db)
            if mcur.set_range(m.K_ZDICT_PREFIX):
                for k, v in mcur:
                    if not k.startswith(m.K_ZDICT_PREFIX):
                        break
                    zdicts_raw.append((bytes(k), bytes(v)))

        if ident_raw is None:
            if count or fmt_raw is not None or hs_raw is not None:
                raise CorruptionError("data directory has a log but no identity", path=path)
            self._init_identity(node_id, cluster)
        else:
            ident = m.unseal(ident_raw, "identity", path)
            if not isinstance(ident, dict):
                raise CorruptionError("stored identity has an unexpected shape", path=path)
            owner, owner_cluster = ident.get("node_id"), ident.get("cluster")
            if owner != node_id or owner_cluster != cluster:
                raise WrongNodeError(
                    f"data directory {self.directory} belongs to node {owner!r} of cluster "
                    f"{owner_cluster!r}; refusing to open it as node {node_id!r} of cluster {cluster!r}"
                )
            fmt = m.unseal(fmt_raw, "format", path) if fmt_raw is not None else None
            if fmt != m.DATA_FORMAT:
                raise StorageError(
                    f"data directory {self.directory} has format {fmt!r}; this version reads format {m.DATA_FORMAT}"
                )

        if hs_raw is not None:
            self._hard = m.decode_hard_state(hs_raw, path)
        if mem_raw is not None:
            self._membership = m.decode_membership(mem_raw, path)
        if base_raw is not None:
            self._base = m.decode_snapshot_meta(base_raw, path)
        if snap_raw is not None:
            try:
                self._snap_info = SnapshotInfo.from_obj(m.unseal(snap_raw, "snapshot info", path))
            except (KeyError, ValueError, TypeError) as e:
                raise CorruptionError(f"stored snapshot info is invalid ({e})", path=path) from None
        if dict_raw is not None:
            d = m.unseal(dict_raw, "zstd dictionary", path)
            if not isinstance(d, bytes):
                raise CorruptionError("stored zstd dictionary has an unexpected shape", path=path)
            self.codec.add_dictionary(d, activate=self.codec.active_dictionary is None)
        for k, v in zdicts_raw:  # before any record is read: the log's tail may need them
            obj = m.unseal(v, "zstd dictionary", path)
            if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], bytes)):
                raise CorruptionError("stored zstd dictionary has an unexpected shape", path=path)
            try:
                dict_id = self.codec.add_dictionary(obj[1], replace=True)
            except ValueError as e:
                raise CorruptionError(f"stored zstd dictionary is invalid ({e})", path=path) from None
            if m.zdict_key(dict_id) != k:
                raise CorruptionError(f"stored zstd dictionary {dict_id} is filed under another id", path=path)
            self._zdicts[dict_id] = (int(obj[0]), obj[1])

        base = self._base.index
        if count == 0:
            self._last = base
        else:
            assert first_key is not None and last_key is not None
            first, last = m.key_index(first_key), m.key_index(last_key)
            if first != base + 1:
                raise CorruptionError(
                    f"the log starts at index {first} but its snapshot point is {base}", path=path
                )
            if last - first + 1 != count:
                raise CorruptionError(
                    f"the log has holes: {count} entries between index {first} and {last}", path=path
                )
            self._last = last
        if self._hard.commit_index > self._last:
            raise CorruptionError(
                f"the hard state says index {self._hard.commit_index} is committed but the log ends "
                f"at {self._last}",
                path=path,
            )
        self._cache_lo = self._last + 1
        self._load_cache_tail(count)
        self._check_snapshot_chunks()
        self._remove_orphan_chunks()

    def _init_identity(self, node_id: str, cluster: str) -> None:
        ident = {"node_id": node_id, "cluster": cluster, "created": time.time()}

        def body(txn: lmdb.Transaction[bytes]) -> None:
            txn.put(m.K_FORMAT, m.seal(m.DATA_FORMAT), db=self._meta_db)
            txn.put(m.K_IDENTITY, m.seal(ident), db=self._meta_db)

        self._commit(body, _no_change, destructive=False)

    def _load_cache_tail(self, count: int) -> None:
        n = min(count, self._cache_max)
        if n <= 0:
            return
        lo = self._last - n + 1
        records = self._read_records(lo, self._last + 1, None)[0]
        entries = [self.codec.unpack_entry(i, r, path=self._path) for i, r in records]
        self._cache_lo = lo
        self._cache = []
        self._cache_bytes = 0
        self._cache_extend(entries)

    def _check_snapshot_chunks(self) -> None:
        info = self._snap_info
        if info is None:
            return
        for no in {0, info.chunks - 1} if info.chunks else set():
            if self._snapshot_get_chunk(info.snapshot_id, no) is None:
                raise CorruptionError(
                    f"snapshot at index {info.index} is missing chunk {no} of {info.chunks}", path=self._path
                )

    def _remove_orphan_chunks(self) -> None:
        """Delete chunks of snapshots that were never committed (a crash or a cancel)."""
        keep = self._snap_info.snapshot_id if self._snap_info is not None else None
        orphans = False
        max_id = keep or 0
        with self._env.begin(db=self._snap_db) as txn:
            cur = txn.cursor()
            if cur.first():
                sid = _SNAP_KEY.unpack(cur.key())[0]
                orphans = sid != keep
            if cur.last():
                sid = _SNAP_KEY.unpack(cur.key())[0]
                orphans = orphans or sid != keep
                max_id = max(max_id, sid)
        self._next_snap_id = max_id + 1
        if not orphans:
            return

        def body(txn: lmdb.Transaction[bytes]) -> None:
            cur = txn.cursor(self._snap_db)
            ok = cur.first()
            while ok:
                if _SNAP_KEY.unpack(cur.key())[0] != keep:
                    ok = cur.delete()
                    ok = ok and cur.key() != b""
                else:
                    ok = cur.next()

        self._commit(body, _no_change, destructive=False)

    def close(self) -> None:
        """Flush (if the unsafe sync=False was used), close, release the directory. Idempotent."""
        if self._kv is not None:
            self._kv.close()
        self._e.close()

    @property
    def sync_writes(self) -> bool:
        """False only for the UNSAFE benchmark mode."""
        return self._e.sync_writes

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The LMDB data file, as named in error messages."""
        return self._path

    # ------------------------------------------------------------------------------------------
    # LogStore: reads
    # ------------------------------------------------------------------------------------------
    def first_index(self) -> LogIndex:
        return LogIndex(self._base.index + 1)

    def last_index(self) -> LogIndex:
        return LogIndex(self._last)

    def snapshot(self) -> SnapshotMeta:
        return self._base

    def initial_state(self) -> tuple[HardState, Membership]:
        with self._lock:
            return self._hard, self._membership

    def term(self, index: LogIndex) -> Term:
        with self._lock:
            self._check_open()
            base = self._base
            if index == base.index:
                return base.term
            if index < base.index:
                raise CompactedError(f"index {index} is compacted (snapshot at {base.index})")
            if index > self._last:
                raise UnavailableError(f"index {index} is beyond the last index {self._last}")
            if index >= self._cache_lo:
                return self._cache[index - self._cache_lo].term
            record = self._get_record(index)
        return self.codec.record_term(index, record, path=self._path)

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[LogEntry]:
        records, cached = self._collect(lo, hi, max_bytes)
        out = [self.codec.unpack_entry(i, r, path=self._path) for i, r in records]
        return _limit_size(out + cached if cached else out, max_bytes)

    def records(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[tuple[LogIndex, bytes]]:
        """Like `entries`, but the stored (compressed) records, for the transport to ship.

        Records read from disk are CRC-checked; cached entries are packed through the codec's
        record cache, so the leader does not compress an entry again for each follower.
        """
        records, cached = self._collect(lo, hi, max_bytes)
        for i, r in records:
            self.codec.read_header(i, r, path=self._path)
        out = [(LogIndex(i), r) for i, r in records] + [(e.index, self.codec.pack_entry(e)) for e in cached]
        if max_bytes is None or len(out) <= 1:
            return out
        total = 0
        for k, (_, r) in enumerate(out):
            total += _record_size(r)
            if total > max_bytes and k > 0:
                return out[:k]
        return out

    def _collect(
        self, lo: LogIndex, hi: LogIndex, max_bytes: int | None
    ) -> tuple[list[tuple[int, bytes]], list[LogEntry]]:
        with self._lock:
            self._check_open()
            base = self._base.index
            if lo <= base:
                raise CompactedError(f"index {lo} is compacted (snapshot at {base})")
            if hi > self._last + 1:
                raise UnavailableError(f"index {hi - 1} is beyond the last index {self._last}")
            if lo >= hi:
                return [], []
            records: list[tuple[int, bytes]] = []
            stopped = False
            disk_hi = min(hi, self._cache_lo)
            if lo < disk_hi:
                records, stopped = self._read_records(lo, disk_hi, max_bytes)
            cached: list[LogEntry] = []
            if not stopped and hi > self._cache_lo:
                start = max(lo, self._cache_lo) - self._cache_lo
                cached = self._cache[start : hi - self._cache_lo]
            return records, cached

    def _get_record(self, index: int) -> bytes:
        """One raw record; caller holds `_lock`."""
        with self._env.begin(db=self._log_db) as txn:
            record = txn.get(m.index_key(index))
        if record is None:
            raise CorruptionError(f"log entry {index} is missing", path=self._path, index=index)
        return record

    def _read_records(self, lo: int, hi: int, max_bytes: int | None) -> tuple[list[tuple[int, bytes]], bool]:
        """Raw records in [lo, hi) by cursor, stopping where `_limit_size` would; holds `_lock`."""
        out: list[tuple[int, bytes]] = []
        total = 0
        expect = lo
        with self._env.begin(db=self._log_db) as txn:
            cur = txn.cursor()
            if cur.set_key(m.index_key(lo)):
                for key, value in cur.iternext():
                    if expect >= hi:
                        break
                    if key != m.index_key(expect):
                        break
                    if max_bytes is not None:
                        total += _record_size(value)
                        if total > max_bytes and out:
                            return out, True
                    out.append((expect, value))
                    expect += 1
        if expect < hi:
            raise CorruptionError(f"log entry {expect} is missing", path=self._path, index=expect)
        return out, False

    # ------------------------------------------------------------------------------------------
    # LogStore: writes
    # ------------------------------------------------------------------------------------------
    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append; any stored entry at or after ``entries[0].index`` is replaced."""
        self.write_batch(entries=entries)

    def truncate_suffix(self, index: LogIndex) -> None:
        """Delete every entry with index >= `index`."""
        self.write_batch(truncate_from=index)

    def set_hard_state(self, hs: HardState) -> None:
        self.write_batch(hard_state=hs)

    def set_membership(self, membership: Membership) -> None:
        self.write_batch(membership=membership)

    def write_batch(
        self,
        truncate_from: LogIndex | None = None,
        entries: Sequence[LogEntry] = (),
        hard_state: HardState | None = None,
        membership: Membership | None = None,
    ) -> None:
        """Truncate, append, set hard state and membership in ONE durable transaction.

        This is what the driver calls once per Ready: the entries and the term/vote that
        depend on each other become durable together, with one fsync.
        """
        entries = list(entries)
        with self._write_lock:
            self._check_writable()
            base, last = self._base.index, self._last
            cut: int | None = None
            if truncate_from is not None:
                if truncate_from <= base:
                    raise LogInvariantError(f"truncate at {truncate_from} reaches into the snapshot at {base}")
                if truncate_from <= last:
                    cut = truncate_from
            if entries:
                first = entries[0].index
                kept_last = last if cut is None else cut - 1
                if first <= base:
                    raise LogInvariantError(f"append at {first} overlaps the snapshot at {base}")
                if first > kept_last + 1:
                    raise LogInvariantError(f"append at {first} leaves a gap after {kept_last}")
                for k, e in enumerate(entries):
                    if e.index != first + k:
                        raise LogInvariantError(f"appended entries are not contiguous at index {e.index}")
                if first <= kept_last:
                    cut = first
            if cut is None and not entries and hard_state is None and membership is None:
                return
            key = _U64.pack
            items = list(zip([key(e.index) for e in entries], self.codec.pack_entries(entries)))
            dicts_in = self._dictionaries_in(entries)
            dicts_out = self._dictionaries_truncated(cut, dicts_in) if cut is not None else []

            def body(txn: lmdb.Transaction[bytes]) -> None:
                if cut is not None:
                    self._delete_log_range(txn, cut, last)
                if items:
                    txn.cursor(self._log_db).putmulti(items, append=True)
                for dict_id in dicts_out:
                    txn.delete(m.zdict_key(dict_id), db=self._meta_db)
                for dict_id, (idx, raw) in dicts_in.items():
                    txn.put(m.zdict_key(dict_id), m.seal([idx, raw]), db=self._meta_db)
                if hard_state is not None:
                    txn.put(m.K_HARD_STATE, m.encode_hard_state(hard_state), db=self._meta_db)
                if membership is not None:
                    txn.put(m.K_MEMBERSHIP, m.encode_membership(membership), db=self._meta_db)
                failpoints.hit("log-before-fsync")  # written into the transaction; its commit fsyncs

            def apply() -> None:
                if cut is not None:
                    self._last = cut - 1
                    self._cache_truncate(cut)
                if entries:
                    self._cache_extend(entries)
                    self._last = entries[-1].index
                if dicts_out or dicts_in:
                    self._dictionaries_changed(dicts_out, dicts_in)
                if hard_state is not None:
                    self._hard = hard_state
                if membership is not None:
                    self._membership = membership

            self._commit(body, apply, destructive=cut is not None)
        failpoints.hit("log-after-fsync")

    # ------------------------------------------------------------------------------------------
    # the key-value state (storage.kv, in its own environment under state/)
    # ------------------------------------------------------------------------------------------
    def state(self) -> LmdbKV:
        """The node's key-value state (one per store), opened on first use.

        Opening checks the state against the log: a snapshot install writes the state first
        and then compacts the log, so a crash between the two leaves a state ahead of the
        log; the log is then compacted to the installed snapshot here. A data directory
        whose state was kept as a stored snapshot (written by ``aegis snapshot restore``)
        has it moved into the state database, once."""
        if self._kv is not None:
            return self._kv
        # WRITEMAP: a big flush dirties pages of the map (page cache) instead of malloc'd
        # copies, so a node's anonymous memory does not grow with the size of a flush.
        env = Env.open(self.directory / STATE_DIR, sync=self.sync_writes, map_size=self._map_size,
                       max_map_size=self._max_map_size, writemap=True)
        try:
            kv = LmdbKV(env, codec=self.codec)
            self._repair_after_install(kv)
        except BaseException:
            env.close()
            raise
        self._kv = kv
        info = self._snap_info
        if info is not None:
            if kv.durable_applied < info.index:
                reader = SnapshotReader(self, info)
                parsers: list[SnapshotParser] = []

                def records() -> Iterator[Item]:
                    parser = SnapshotParser(iter(reader))
                    if parser.index != info.index:
                        raise CorruptionError(
                            f"stored snapshot says index {info.index} but holds index {parser.index}", path=self._path
                        )
                    parsers[:] = [parser]
                    return parser.records()

                kv.install(records, int(info.index), int(info.term), m.encode_snapshot_meta(info.meta),
                           lambda: parsers[0].sessions())
            self._drop_stored_snapshot()
        return kv

    def _repair_after_install(self, kv: LmdbKV) -> None:
        applied, term = kv.durable_applied, kv.durable_applied_term
        if applied == 0 or applied <= self._base.index:
            return
        if applied <= self._last and self.term(LogIndex(applied)) == term:
            return
        raw = kv.stored_base()
        base = m.decode_snapshot_meta(raw, kv._path) if raw is not None else None
        if base is None or base.index != applied or base.term != term:
            raise CorruptionError(
                f"the state has applied index {applied} (term {term}) but the log ends at {self._last}"
                " and no snapshot install explains it",
                path=self._path,
            )
        with self._write_lock:
            body, apply = self._compaction(base)

            def with_membership(txn: lmdb.Transaction[bytes]) -> None:
                body(txn)
                txn.put(m.K_MEMBERSHIP, m.encode_membership(base.membership), db=self._meta_db)

            def apply_all() -> None:
                apply()
                self._membership = base.membership

            self._commit(with_membership, apply_all, destructive=True)

    def _drop_stored_snapshot(self) -> None:
        info = self._snap_info
        if info is None:
            return
        with self._write_lock:
            self._check_writable()

            def body(txn: lmdb.Transaction[bytes]) -> None:
                txn.delete(m.K_SNAPSHOT, db=self._meta_db)
                self._delete_chunks(txn, info.snapshot_id)

            def apply() -> None:
                self._snap_info = None

            self._commit(body, apply, destructive=True)

    def install_state_file(
        self, path: str | os.PathLike[str], meta: SnapshotMeta, *, membership: Membership | None = None
    ) -> int:
        """Install a snapshot file (a leader's InstallSnapshot, verified beforehand) as the
        state, then compact the log to it (keeping the log after it if the entry there has
        its term, dropping it otherwise). Returns the number of keys. A corrupt file raises
        and changes nothing."""

        parsers: list[SnapshotParser] = []

        def records() -> Iterator[Item]:
            with read_snapshot_file(path) as f:
                if f.info.index != meta.index:
                    raise SnapshotError(f"snapshot file holds index {f.info.index}, expected {meta.index}")
                parser = SnapshotParser(iter(f))
                if parser.index != meta.index:
                    raise SnapshotError(f"snapshot stream holds index {parser.index}, expected {meta.index}")
                parsers[:] = [parser]
                yield from parser.records()

        with read_snapshot_file(path) as f:
            dictionaries = f.info.dictionaries
        # First, durably: what the leader sends after the snapshot may use them.
        self.add_dictionaries(dictionaries)
        kv = self.state()
        commit_before = self._hard.commit_index
        count = kv.install(records, int(meta.index), int(meta.term), m.encode_snapshot_meta(meta),
                           lambda: parsers[0].sessions())
        failpoints.hit("snapshot-mid-install")  # the state is the snapshot's; the log is not compacted yet
        with self._write_lock:
            self._check_writable()
            compaction = self._compaction(meta) if meta.index > self._base.index else None
            kept_log = meta.index <= self._base.index or (
                meta.index <= self._last and self.term(meta.index) == meta.term)
            named = {raw for _, raw in dictionaries}
            active = self.codec.active_dictionary
            # The log is dropped: a dictionary of an entry in it that the snapshot does not
            # name was never committed (and no record uses it).
            stale = [] if kept_log else [d for d, (idx, raw) in self._zdicts.items()
                                         if idx > commit_before and raw not in named and d != active]

            def body(txn: lmdb.Transaction[bytes]) -> None:
                if compaction is not None:
                    compaction[0](txn)
                if membership is not None:
                    txn.put(m.K_MEMBERSHIP, m.encode_membership(membership), db=self._meta_db)
                for dict_id in stale:
                    txn.delete(m.zdict_key(dict_id), db=self._meta_db)

            def apply() -> None:
                if compaction is not None:
                    compaction[1]()
                if membership is not None:
                    self._membership = membership
                if stale:
                    self._dictionaries_changed(stale, {})

            self._commit(body, apply, destructive=True)
        return count

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries <= meta.index and make meta the snapshot point (as MemoryLogStore).

        The store does not check that a stored snapshot covers meta.index: the driver
        should compact only up to `snapshot_info().index` (installing a snapshot with
        `begin_snapshot(...).commit()` compacts by itself).
        """
        with self._write_lock:
            self._check_writable()
            if meta.index <= self._base.index:
                return
            body, apply = self._compaction(meta)
            failpoints.hit("compact-before")
            self._commit(body, apply, destructive=True)

    def _compaction(
        self, meta: SnapshotMeta
    ) -> tuple[Callable[[lmdb.Transaction[bytes]], None], Callable[[], None]]:
        """The transaction body and memory update that compact the log to `meta`."""
        idx, first, last = meta.index, self._base.index + 1, self._last
        keep = idx <= last and self.term(idx) == meta.term

        def body(txn: lmdb.Transaction[bytes]) -> None:
            if keep:
                self._delete_log_range(txn, first, idx)
            else:
                txn.drop(self._log_db, delete=False)
            txn.put(m.K_LOG_BASE, m.encode_snapshot_meta(meta), db=self._meta_db)

        def apply() -> None:
            if keep:
                if idx >= self._cache_lo:
                    drop = idx - self._cache_lo + 1
                    self._cache_bytes -= sum(e.size() for e in self._cache[:drop])
                    del self._cache[:drop]
                    self._cache_lo = idx + 1
            else:
                self._cache, self._cache_bytes = [], 0
                self._cache_lo = idx + 1
                self._last = idx
            self._base = meta

        return body, apply

    def _delete_log_range(self, txn: lmdb.Transaction[bytes], lo: int, hi: int) -> None:
        """Delete keys lo..hi inclusive (the whole db at once when that is all of it)."""
        if lo <= self._base.index + 1 and hi >= self._last:
            txn.drop(self._log_db, delete=False)
            return
        cur = txn.cursor(self._log_db)
        end = m.index_key(hi)
        if not cur.set_range(m.index_key(lo)):
            return
        while cur.key() and cur.key() <= end:
            if not cur.delete():
                break

    def write_locked(self) -> bool:
        """Whether another thread is writing to this environment now (compaction, a
        snapshot install): a writer that must not wait should hand its write to a worker."""
        return self._write_lock.locked()

    def sync(self) -> None:
        """Force everything written so far to disk (only needed with the unsafe sync=False)."""
        self._e.sync()

    def _check_open(self) -> None:
        self._e.check_open()

    def _check_writable(self) -> None:
        self._e.check_writable()

    def _commit(self, body: Body, apply: Callable[[], None], *, destructive: bool) -> None:
        self._e.commit(body, apply, destructive=destructive)

    # ------------------------------------------------------------------------------------------
    # the entry cache: a suffix [cache_lo, last] of the log
    # ------------------------------------------------------------------------------------------
    def _cache_truncate(self, cut: int) -> None:
        if cut <= self._cache_lo:
            self._cache, self._cache_bytes = [], 0
            self._cache_lo = cut
            return
        k = cut - self._cache_lo
        self._cache_bytes -= sum(e.size() for e in self._cache[k:])
        del self._cache[k:]

    def _cache_extend(self, entries: Iterable[LogEntry]) -> None:
        for e in entries:
            self._cache.append(e)
            self._cache_bytes += e.size()
        if len(self._cache) > self._cache_max or self._cache_bytes > self._cache_max_bytes:
            # Trim to 3/4 of the limits at once, so trimming costs O(1) per entry.
            n_lim, b_lim = self._cache_max * 3 // 4, self._cache_max_bytes * 3 // 4
            drop, nbytes, n = 0, self._cache_bytes, len(self._cache)
            while drop < n and (n - drop > n_lim or nbytes > b_lim):
                nbytes -= self._cache[drop].size()
                drop += 1
            del self._cache[:drop]
            self._cache_bytes = nbytes
            self._cache_lo += drop

    # ------------------------------------------------------------------------------------------
    # snapshots (see storage.snapshot)
    # ------------------------------------------------------------------------------------------
    def begin_snapshot(self, meta: SnapshotMeta, *, compact: bool = True) -> SnapshotWriter:
        """Start writing a snapshot covering the log up to meta.index.

        `commit()` makes it the stored snapshot and (with `compact`) compacts the log to
        meta.index — keeping later entries if the entry at meta.index has meta.term,
        dropping the whole log otherwise — in one transaction.
        """
        self._check_writable()
        current = self._snap_info
        if current is not None and meta.index < current.index:
            raise SnapshotError(
                f"snapshot at index {meta.index} is older than the stored one at {current.index}"
            )
        with self._lock:
            sid = self._next_snap_id
            self._next_snap_id += 1
        return SnapshotWriter(
            self, meta, sid, compact=compact, level=self._snapshot_level, chunk_size=self._snapshot_chunk_size
        )

    def snapshot_info(self) -> SnapshotInfo | None:
        """The stored snapshot: index, term, membership, size, checksum, created; or None."""
        return self._snap_info

    def open_snapshot(self) -> SnapshotReader | None:
        """A reader of the stored snapshot (None if there is none)."""
        info = self._snap_info
        return SnapshotReader(self, info) if info is not None else None

    def export_snapshot(self, path: str | os.PathLike[str]) -> SnapshotInfo:
        """Write the stored snapshot to a backup file (compressed chunks copied, verified)."""
        reader = self.open_snapshot()
        if reader is None:
            raise SnapshotError(f"the data directory {self.directory} holds no snapshot")
        return write_snapshot_file_raw(path, reader.info, reader.raw_chunks())

    def install_snapshot_file(
        self,
        path: str | os.PathLike[str],
        *,
        hard_state: HardState | None = None,
        membership: Membership | None = None,
    ) -> SnapshotInfo:
        """Install a backup file as this store's snapshot (verified, not recompressed)."""
        with read_snapshot_file(path) as f:
            with self.begin_snapshot(f.info.meta) as w:
                for raw in f.raw_chunks():
                    w.write_compressed(raw)
                return w.commit(hard_state=hard_state, membership=membership, expect_checksum=f.info.checksum,
                                dictionaries=f.info.dictionaries)

    def _snapshot_put_chunk(self, snapshot_id: int, chunk_no: int, value: bytes) -> None:
        key = _SNAP_KEY.pack(snapshot_id, chunk_no)
        with self._write_lock:
            self._check_writable()
            self._commit(self._putter(self._snap_db, key, value), _no_change, destructive=False)

    @staticmethod
    def _putter(db: lmdb._Database, key: bytes, value: bytes) -> Callable[[lmdb.Transaction[bytes]], None]:
        def body(txn: lmdb.Transaction[bytes]) -> None:
            txn.put(key, value, db=db)

        return body

    def _snapshot_get_chunk(self, snapshot_id: int, chunk_no: int) -> bytes | None:
        with self._lock:
            self._check_open()
            with self._env.begin(db=self._snap_db) as txn:
                return txn.get(_SNAP_KEY.pack(snapshot_id, chunk_no))

    def _delete_chunks(self, txn: lmdb.Transaction[bytes], snapshot_id: int) -> None:
        cur = txn.cursor(self._snap_db)
        prefix = _SNAP_KEY.pack(snapshot_id, 0)[:8]
        if not cur.set_range(prefix):
            return
        while cur.key()[:8] == prefix:
            if not cur.delete():
                break

    def _snapshot_discard(self, snapshot_id: int) -> None:
        with self._write_lock:
            if self._e.closed or self._e.failed is not None:
                return  # the orphan chunks are removed when the store is next opened
            self._commit(lambda txn: self._delete_chunks(txn, snapshot_id), _no_change, destructive=False)

    def _snapshot_commit(
        self,
        info: SnapshotInfo,
        *,
        compact: bool,
        hard_state: HardState | None,
        membership: Membership | None,
    ) -> None:
        with self._write_lock:
            self._check_writable()
            current = self._snap_info
            if current is not None and info.index < current.index:
                raise SnapshotError(
                    f"snapshot at index {info.index} is older than the stored one at {current.index}"
                )
            old_id = current.snapshot_id if current is not None else None
            compaction = self._compaction(info.meta) if compact and info.index > self._base.index else None

            added = {decode_dictionary_entry(b"\x01" + raw)[0]: (idx, raw) for idx, raw in info.dictionaries}

            def body(txn: lmdb.Transaction[bytes]) -> None:
                txn.put(m.K_SNAPSHOT, m.seal(info.to_obj()), db=self._meta_db)
                for dict_id, (idx, raw) in added.items():
                    txn.put(m.zdict_key(dict_id), m.seal([idx, raw]), db=self._meta_db)
                if compaction is not None:
                    compaction[0](txn)
                if old_id is not None and old_id != info.snapshot_id:
                    self._delete_chunks(txn, old_id)
                if hard_state is not None:
                    txn.put(m.K_HARD_STATE, m.encode_hard_state(hard_state), db=self._meta_db)
                if membership is not None:
                    txn.put(m.K_MEMBERSHIP, m.encode_membership(membership), db=self._meta_db)

            def apply() -> None:
                self._snap_info = info
                if added:
                    self._dictionaries_changed((), added)
                if compaction is not None:
                    compaction[1]()
                if hard_state is not None:
                    self._hard = hard_state
                if membership is not None:
                    self._membership = membership

            self._commit(body, apply, destructive=True)

    # ------------------------------------------------------------------------------------------
    # zstd dictionaries from the log (aegis.zdict)
    # ------------------------------------------------------------------------------------------
    def _dictionaries_in(self, entries: Sequence[LogEntry]) -> dict[int, tuple[int, bytes]]:
        """The dictionaries of the DICTIONARY entries among `entries` (a payload that is no
        dictionary is left alone: the entry stays, meaning nothing)."""
        out: dict[int, tuple[int, bytes]] = {}
        for e in entries:
            if e.type != EntryType.DICTIONARY:
                continue
            try:
                dict_id, raw = decode_dictionary_entry(e.data)
            except ValueError:
                continue
            if len(self._zdicts) + len(out) >= MAX_DICTIONARIES and dict_id not in self._zdicts:
                continue
            out[dict_id] = (int(e.index), raw)
        return out

    def _dictionaries_truncated(self, cut: int, kept: dict[int, tuple[int, bytes]]) -> list[int]:
        """The dictionaries whose entries a truncation at `cut` deletes (never committed)."""
        active = self.codec.active_dictionary
        return [d for d, (idx, _) in self._zdicts.items() if idx >= cut and d != active and d not in kept]

    def _dictionaries_changed(self, removed: Iterable[int], added: dict[int, tuple[int, bytes]]) -> None:
        """After the commit that stored the change."""
        for dict_id in removed:
            self._zdicts.pop(dict_id, None)
            self.codec.remove_dictionary(dict_id)
        for dict_id, (idx, raw) in added.items():
            try:
                self.codec.add_dictionary(raw, replace=True)
            except ValueError:  # the id of the dictionary in use (a leader never does this)
                log.error("ignoring a zstd dictionary that reuses the id %d of the one in use", dict_id)
                continue
            self._zdicts[dict_id] = (idx, raw)

    def add_dictionaries(self, dictionaries: Iterable[tuple[int, bytes]]) -> None:
        """Store and register committed dictionaries (a snapshot's), in one transaction."""
        added: dict[int, tuple[int, bytes]] = {}
        for idx, raw in dictionaries:
            dict_id = decode_dictionary_entry(b"\x01" + bytes(raw))[0]
            if self._zdicts.get(dict_id) != (idx, bytes(raw)):
                added[dict_id] = (int(idx), bytes(raw))
        if not added:
            return
        with self._write_lock:
            self._check_writable()

            def body(txn: lmdb.Transaction[bytes]) -> None:
                for dict_id, (idx, raw) in added.items():
                    txn.put(m.zdict_key(dict_id), m.seal([idx, raw]), db=self._meta_db)

            self._commit(body, lambda: self._dictionaries_changed((), added), destructive=False)

    def dictionaries(self, upto: int = 0) -> list[tuple[int, bytes]]:
        """``(log index, bytes)`` of the dictionaries known to be committed: at or below
        `upto` (an applied index) or the stored commit index; by index."""
        limit = max(upto, self._hard.commit_index)
        return sorted((idx, raw) for idx, raw in self._zdicts.values() if idx <= limit)

    def dictionary_index(self, dict_id: int) -> int | None:
        """The log index of a dictionary's entry (None: this store does not hold it)."""
        known = self._zdicts.get(dict_id)
        return known[0] if known is not None else None

    def dictionary(self, dict_id: int) -> tuple[int, bytes] | None:
        """``(log index, bytes)`` of a dictionary this store holds."""
        return self._zdicts.get(dict_id)

    def activate_committed(self, upto: int = 0) -> int | None:
        """Compress with the newest dictionary known to be committed (see `dictionaries`);
        returns its id, or None (and changes nothing) when there is none."""
        limit = max(upto, self._hard.commit_index)
        best = max(((idx, d) for d, (idx, _) in self._zdicts.items() if idx <= limit), default=None)
        if best is None:
            return None
        self.codec.use_dictionary(best[1])
        return best[1]

    # ------------------------------------------------------------------------------------------
    # dictionary and introspection
    # ------------------------------------------------------------------------------------------
    def train_dictionary(self, samples: Iterable[bytes], size: int = 16 << 10) -> int:
        """Train a zstd dictionary on sample payloads, store it, and compress with it from now on.

        Followers need the same dictionary to decode records shipped as stored (see
        storage.codec); returns the dictionary id.
        """
        from .codec import train_dictionary

        dict_bytes = train_dictionary(samples, size)
        with self._write_lock:
            self._check_writable()
            self._commit(self._putter(self._meta_db, m.K_DICT, m.seal(dict_bytes)), _no_change, destructive=False)
        return self.codec.add_dictionary(dict_bytes, activate=True)

    def headroom(self) -> int:
        """Bytes that can still be written before an LMDB map limit: the smaller of the log
        environment's and (once opened) the state environment's."""
        with self._lock:
            self._check_open()
            room = self._e.headroom()
        kv = self._kv
        if kv is not None:
            room = min(room, kv.headroom())
        return room

    def stats(self) -> dict[str, object]:
        """Figures for INFO: sizes, bounds, cache, snapshot."""
        with self._lock:
            self._check_open()
            out = self._e.stats()
            snap = self._snap_info
            out.update(
                first_index=self._base.index + 1,
                last_index=self._last,
                cached_entries=len(self._cache),
                cached_bytes=self._cache_bytes,
                snapshot_index=snap.index if snap is not None else None,
                snapshot_size=snap.size if snap is not None else None,
                zstd_dictionaries=len(self._zdicts),
            )
            return out


def read_identity(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The node id and cluster a data directory belongs to (for offline tools that must
    open it as its own node). StorageError if there is no Aegis data there;
    DataDirInUseError if a node has it open."""
    env = Env.open(path, create=False)
    try:
        with env.env.begin() as txn:
            raw = txn.get(m.K_IDENTITY, db=env.meta_db)
    finally:
        env.close()
    if raw is None:
        raise StorageError(f"no aegis data in {path}")
    ident = m.unseal(raw, "identity", str(path))
    if not isinstance(ident, dict) or not isinstance(ident.get("node_id"), str) \
            or not isinstance(ident.get("cluster"), str):
        raise CorruptionError("stored identity has an unexpected shape", path=str(path))
    return ident["node_id"], ident["cluster"]
