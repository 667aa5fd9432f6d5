"""storage.kv: the node's key-value state in LMDB (`LmdbKV`) against its in-memory twin.

Every test runs real LMDB environments under tmp_path. A `Node` feeds the same committed
entries to ``StateMachine(backend=store.state())`` and to a ``StateMachine()`` over a
`DictBackend` (appending them to the store's log too, as the driver does, so a reopened
store can replay them), and `assert_same` compares everything a reader can see: digest,
len, keys, get/version/revision, the backend's records, the snapshot stream, and the
backend's range reads, SCAN pages (`full_scan`) and expiring keys. Entries carry the
leader's clock (`clock_of`: 100 ms apart), which is "now" for deadlines.

Covered: the overlay and its flushes (take_flush / write_flush / flush_done, in flight,
failed), durability across reopen, exact counts, CRC-checked records, consistent exports
and map growth around them, snapshot installs (install_state_file, restore_chunks), the
repair of a crash between an install's two commits, the migration of a stored snapshot
into the state database, BATCH entries, keys of any length (the empty key, keys stored by
their SHA-256) and snapshots that name a key twice; deadlines in records (the previous
record format still reads), the scan and deadline indexes (kept by flushes, rebuilt by
installs and, once, for a state written without them), damaged index entries, and SCAN
loops that run while the state changes.

Stored LMDB keys are `db_key(key)` (a tag byte, then the key or its hash); `disk_records`
and `disk_indexes` decode them independently of storage.kv. The storage order of the kv
database and of an export (`storage_order`) is not the byte order of
`DictBackend.items()` once keys are long.

A bug found here is pinned first as a strict xfail naming it, then fixed.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import lmdb
import msgpack
import pytest
import zstandard as zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.log import EntryType, LogEntry, LogIndex, Membership, SnapshotMeta, Term
from aegis.state import Item as KVItem
from aegis.state import (
    NOT_AN_INTEGER,
    Command,
    CommandResult,
    Handler,
    KVBackend,
    Record,
    StateMachine,
    StateView,
    encode_batch,
    scan_hash,
    stream_snapshot,
)
from storage import (
    CorruptionError,
    DiskFullError,
    LmdbKV,
    LmdbStore,
    SnapshotError,
    write_snapshot_file,
)
import storage.kv as kvmod
from storage.codec import Codec
from storage.env import Env
from storage.kv import (
    K_APPLIED,
    K_INDEXES,
    MAX_INLINE_KEY,
    STATE_DIR,
    _encode_change,
    _HIST_KEY,
    db_key,
    decode_record,
    encode_applied,
    encode_record,
)
from storage.meta import encode_snapshot_meta

MEMBERS = Membership.of(["n1", "n2", "n3"])


# --- the harness ----------------------------------------------------------------------------


def _move(view: StateView, args: tuple[bytes, ...]) -> int:
    """A custom command that reads, writes and deletes (exercises StateView over LMDB)."""
    src, dst = (a.decode("utf-8", "surrogateescape") for a in args)  # ValueError unless 2 args
    value = view.get(src)
    if value is None:
        raise KeyError(src)
    view.delete(src)
    view.set(dst, value)
    return len(value)


HANDLERS: dict[str, Handler] = {"move": _move}

#: What one log entry carries: a Command (COMMAND entry), a list of them (BATCH), raw bytes
#: (a BATCH payload as is), or None (NO_OP).
Item = Union[Command, Sequence[Command], bytes, None]


#: The leader's clock of entry `index` (ms): entries are 100 ms apart, so a deadline a few
#: hundred ms ahead passes a few entries later.
def clock_of(index: int) -> int:
    return T0 + 100 * index


T0 = 1_700_000_000_000


def make_entry(index: int, item: Item, term: int = 1) -> LogEntry:
    i, t, ts = LogIndex(index), Term(term), clock_of(index) / 1000
    if item is None:
        return LogEntry(i, t, EntryType.NO_OP, b"", ts)
    if isinstance(item, Command):
        return LogEntry(i, t, EntryType.COMMAND, item.encode(), ts)
    if isinstance(item, bytes):
        return LogEntry(i, t, EntryType.BATCH, item, ts)
    return LogEntry(i, t, EntryType.BATCH, encode_batch([c.encode() for c in item]), ts)


def kb(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


Records = list[KVItem]


class Frozen:
    """What the dict twin held at one index (to compare with a stored or exported state)."""

    def __init__(self, sm: StateMachine) -> None:
        self.index = sm.last_applied
        self.items: Records = list(sm.backend.items())
        self.digest = sm.digest()
        self.count = len(sm)
        self.stream = b"".join(sm.snapshot_chunks())


class Node:
    """A data directory: its log, the LMDB state machine and the dict twin."""

    def __init__(self, path: Path, *, sync: bool = True, twin: StateMachine | None = None) -> None:
        self.path = path
        self.sync = sync
        self.twin = twin if twin is not None else StateMachine(HANDLERS)
        self.frozen: dict[int, Frozen] = {0: Frozen(self.twin)}
        self.store = LmdbStore.open(path, node_id="n1", sync=sync)
        self.kv: LmdbKV = self.store.state()
        self.sm = StateMachine(HANDLERS, backend=self.kv)
        self.taken: tuple[dict[bytes, Record | None], int, int, int, list[bytes]] | None = None
        self.results: dict[int, list[CommandResult]] = {}  # per entry index, as first applied
        self.written = False
        self.disk_applied = self.kv.durable_applied  # what a successful write_flush stored

    def apply(self, *items: Item, term: int = 1) -> list[list[CommandResult]]:
        """Commit one entry per item (log first, as the driver does) and apply them to both."""
        first = int(self.store.last_index()) + 1
        entries = [make_entry(first + k, it, term) for k, it in enumerate(items)]
        self.store.write_batch(entries=entries)
        got = self.sm.apply_entries(entries)
        want = self.twin.apply_entries(entries)
        assert got == want
        self.results.update((int(e.index), r) for e, r in zip(entries, got))
        self.frozen[self.twin.last_applied] = Frozen(self.twin)
        return got

    # the flush driver, step by step (the node runs write_flush in a worker thread)
    def take(self) -> bool:
        self.taken = self.kv.take_flush()
        self.written = False
        return self.taken is not None

    def write(self) -> None:
        assert self.taken is not None and not self.written
        assert self.kv.write_flush(*self.taken)  # no install since the take: it writes
        self.written = True
        self.disk_applied = self.taken[1]

    def done(self, ok: bool = True) -> None:
        self.kv.flush_done(ok)
        self.taken = None
        self.written = False

    def flush(self) -> int | None:
        """A whole flush; returns the applied index it stored (None if nothing changed)."""
        if not self.take():
            return None
        self.write()
        self.done(True)
        return self.disk_applied

    def close(self) -> None:
        self.store.close()

    def reopen(self, *, replay: bool = True) -> None:
        """Close (a crash as far as the state is concerned: what was not written is gone)
        and open again; with `replay`, apply the log after the stored applied index."""
        self.store.close()
        self.taken, self.written = None, False
        self.store = LmdbStore.open(self.path, node_id="n1", sync=self.sync)
        self.kv = self.store.state()
        self.sm = StateMachine(HANDLERS, backend=self.kv)
        assert self.kv.applied() == self.kv.durable_applied == self.disk_applied
        if replay:
            self.replay()

    def replay(self) -> list[list[CommandResult]]:
        """Apply the log after the stored applied index (as a restarted node does); the
        results must be the ones the first apply gave."""
        lo, hi = self.kv.applied() + 1, int(self.store.last_index()) + 1
        if lo >= hi:
            return []
        entries = self.store.entries(LogIndex(lo), LogIndex(hi))
        out = self.sm.apply_entries(entries)
        for e, r in zip(entries, out):
            if int(e.index) in self.results:
                assert r == self.results[int(e.index)]
        return out


def assert_same(sm: StateMachine, twin: StateMachine, probe: Sequence[str] = ()) -> None:
    """Everything a reader sees of `sm` equals what it sees of `twin`. Reads that depend on
    the time compare at the twin's clock: a reopened state machine has not seen an entry's
    time yet (until it applies the next one)."""
    assert sm.last_applied == twin.last_applied
    assert len(sm) == len(twin)
    assert list(sm.backend.items()) == list(twin.backend.items())
    assert sm.digest() == twin.digest()
    now = twin.clock
    same_clock = sm.clock == now
    if same_clock:
        assert sm.keys() == twin.keys()
    stored = {k for k, *_ in twin.backend.items()}
    for k in {*stored, *(kb(p) for p in probe)}:
        assert sm.backend.get(k) == twin.backend.get(k)
        assert sm.record(k, now) == twin.record(k, now)
        assert sm.get_raw(k, now) == twin.get_raw(k, now)
        if same_clock:
            key = k.decode("utf-8", "surrogateescape")
            assert sm.get(key) == twin.get(key)
            assert sm.version(key) == twin.version(key)
            assert sm.revision(key) == twin.revision(key)
            assert (key in sm) == (key in twin)
    assert b"".join(sm.snapshot_chunks()) == b"".join(twin.snapshot_chunks())
    assert_same_indexes(sm.backend, twin.backend, now)
    if isinstance(sm.backend, LmdbKV):  # every key's deadline, overlays and disk
        assert sm.backend._due == deadlines(twin.backend.items())


#: Range bounds around the keys of `KEYS`: inside, between and past them, and longer than
#: 510 bytes (where the stored order is not the key order).
RANGE_STARTS = [b"", b"b", b"k" * 40, b"k" * 510, b"k" * 511 + b"\x00", b"l"]
RANGE_ENDS: list[bytes | None] = [None, b"b", b"k" * 41, b"k" * 511, b"k" * 600, b"m"]


def full_scan(kv: KVBackend, count: int, twin: KVBackend | None = None, cursor: int = 0) -> list[bytes]:
    """The keys of a SCAN loop from `cursor` until the cursor is 0 again; with `twin`, each
    call must give the twin's page (as a set: keys of one position may come in any order)
    and next cursor."""
    keys: list[bytes] = []
    for _ in range(10_000):
        nxt, page = kv.scan(cursor, count)
        if twin is not None:
            t_nxt, t_page = twin.scan(cursor, count)
            assert (nxt, sorted(page)) == (t_nxt, sorted(t_page)), f"scan({cursor}, {count})"
        assert len(page) >= min(count, 1) or nxt == 0
        assert all(scan_hash(k) >= cursor and (nxt == 0 or scan_hash(k) < nxt) for k, _ in page)
        keys += [k for k, _ in page]
        if nxt == 0:
            return keys
        cursor = nxt
    raise AssertionError("the scan never ended")


def assert_same_indexes(kv: KVBackend, twin: KVBackend, now: int) -> None:
    """range, scan and expiring of `kv` equal the twin's."""
    for start in RANGE_STARTS:
        for end in RANGE_ENDS:
            for limit in (0, 2):
                assert kv.range(start, end, limit) == twin.range(start, end, limit), (start[:12], end, limit)
    stored = sorted(k for k, *_ in twin.items())
    for count in (1, 2, 10):
        got = full_scan(kv, count, twin)
        assert sorted(got) == stored and len(got) == len(stored)  # every key exactly once
    for k in stored[:3]:  # from a key's own position, and just past it
        full_scan(kv, 2, twin, scan_hash(k))
        full_scan(kv, 1, twin, scan_hash(k) + 1)
    for at in (0, now - 300, now, now + 500, 1 << 62):
        for limit in (1, 3, 100):
            assert kv.expiring(at, limit) == twin.expiring(at, limit), (at, limit)


def assert_matches(sm: StateMachine, frozen: Frozen) -> None:
    assert sm.last_applied == frozen.index
    assert len(sm) == frozen.count
    assert list(sm.backend.items()) == frozen.items
    assert sm.digest() == frozen.digest


def stored_key(dbkey: bytes, raw: bytes) -> bytes:
    """The client's key of a stored record, decoded here (not with storage.kv's helpers):
    b"\\x00" + key, or b"\\x01" + sha256(key) with ``crc | version | revision | [deadline] |
    len | key`` at the head of the record (the deadline when the version's top bit is set)."""
    tag, rest = dbkey[:1], dbkey[1:]
    if tag == b"\x00":
        assert len(rest) <= MAX_INLINE_KEY
        return rest
    assert tag == b"\x01" and len(rest) == 32
    off = 28 if raw[4] & 0x80 else 20
    (n,) = struct.unpack_from(">I", raw, off)
    key = raw[off + 4 : off + 4 + n]
    assert len(key) == n > MAX_INLINE_KEY and hashlib.sha256(key).digest() == rest
    return key


def disk_records(kv: LmdbKV) -> Records:
    """The records in the kv database itself (no overlay), decoded, in storage order."""
    out: Records = []
    with kv._e.env.begin(db=kv._e.kv_db) as txn:
        for k, v in txn.cursor():
            key = stored_key(bytes(k), bytes(v))
            assert db_key(key) == bytes(k)
            out.append((key, *decode_record(key, bytes(v))))
    return out


def disk_indexes(kv: LmdbKV) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
    """The stored indexes, decoded here: the scan entries ``(digest, db_key)`` in stored
    order, and the deadline index as key -> deadline (each entry's CRC checked)."""
    with kv._e.env.begin() as txn:
        scan = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=kv._scan_db)]
        dues: dict[bytes, int] = {}
        for k, v in txn.cursor(db=kv._due_db):
            assert struct.unpack_from(">I", v, 0)[0] == zlib.crc32(v[4:], zlib.crc32(k))
            key = k[1:] if k[:1] == b"\x00" else v[12:]
            assert db_key(key) == k and key not in dues
            dues[key] = struct.unpack_from(">Q", v, 4)[0]
    return scan, dues


def deadlines(items: Iterable[KVItem]) -> dict[bytes, int]:
    return {k: exp for k, _v, _ver, _rev, exp in items if exp}


def assert_on_disk(kv: LmdbKV, items: Iterable[KVItem]) -> None:
    """The kv database holds exactly `items`, and the indexes exactly their entries: one
    scan entry per key (under the blake2b digest whose top 63 bits are its SCAN position),
    one deadline entry per key with a deadline."""
    items = list(items)
    assert disk_records(kv) == storage_order(items)
    scan, dues = disk_indexes(kv)
    assert scan == sorted((hashlib.blake2b(k, digest_size=8).digest(), db_key(k)) for k, *_ in items)
    assert all(int.from_bytes(d, "big") >> 1 == scan_hash(k) for (d, _), (k, *_) in
               zip(sorted(scan, key=lambda e: e[1]), sorted(items, key=lambda r: db_key(r[0]))))
    assert dues == deadlines(items) == kv._due_disk


def storage_order(records: Iterable[KVItem]) -> Records:
    """`records` in the order of the kv database and of an export: keys up to 510 bytes in
    byte order, then the longer keys by their hash."""
    return sorted(records, key=lambda r: db_key(r[0]))


def put_raw(kv: LmdbKV, key: bytes, raw: bytes) -> None:
    """Overwrite the stored record of the client's `key` (under `db_key(key)`)."""
    with kv._e.env.begin(write=True, db=kv._e.kv_db) as txn:
        txn.put(db_key(key), raw)


def get_raw(kv: LmdbKV, key: bytes) -> bytes:
    """The stored record of the client's `key`."""
    with kv._e.env.begin(db=kv._e.kv_db) as txn:
        raw = txn.get(db_key(key))
    assert raw is not None
    return bytes(raw)


def v1_stream(records: dict[str, tuple[bytes, int]], index: int) -> bytes:
    """A version 1 snapshot stream as the state machine wrote it before revisions: records
    ``[key, value, version]`` in the order of sorted(str keys), CRC without revisions."""
    packer = msgpack.Packer(use_bin_type=True)
    out = bytearray(packer.pack(["aegis-sm", 1, index, len(records)]))
    crc = 0
    for key in sorted(records):
        value, version = records[key]
        k = kb(key)
        crc = zlib.crc32(version.to_bytes(8, "big"), zlib.crc32(value, zlib.crc32(k, crc)))
        out += packer.pack([k, value, version])
    out += packer.pack(["end", len(records), crc])
    return bytes(out)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "d")
    yield n
    n.close()


def fill(n: Node) -> None:
    """A bit of everything: creates, overwrites, deletes, counters, CAS, a custom command."""
    n.apply(
        Command.set("a", b"1"),
        [Command.set("b", b"x"), Command.set("c", b"y"), Command.increment("a", 4)],
        Command.delete("c", "missing"),
        [Command.compare_and_swap("b", b"x", b"z"), Command.set("\udcff", b"bin"), Command.set("ключ", b"k")],
        None,
        Command.custom("move", b"b", b"moved"),
        term=2,
    )


# --- 1. the same commands give the same state, in the overlay and after flushes --------------


def test_overlay_and_flushed_state_match_the_dict_twin(node: Node) -> None:
    probe = ["a", "b", "c", "moved", "\udcff", "ключ", "missing"]
    fill(node)
    assert node.kv.overlay_keys() > 0 and node.kv.durable_applied == 0
    assert disk_records(node.kv) == []  # nothing on disk yet: every read came from the overlay
    assert_same(node.sm, node.twin, probe)

    assert node.flush() == 6
    assert node.kv.overlay_keys() == 0 and not node.kv.pending()
    assert_on_disk(node.kv, node.twin.backend.items())
    assert_same(node.sm, node.twin, probe)

    # overlay on top of disk: overwrite, delete and re-create flushed keys
    node.apply(
        [Command.set("a", b"again"), Command.delete("moved"), Command.set("moved", b"back")],
        Command.delete("ключ", "\udcff"),
        Command.increment("n", -3),
    )
    assert_same(node.sm, node.twin, probe)
    node.flush()
    assert_same(node.sm, node.twin, probe)
    assert node.sm.version("moved") == 1 and node.sm.revision("moved") == 7


def test_reads_during_a_flush_in_flight_see_both_overlays(node: Node) -> None:
    node.apply(Command.set("a", b"1"), Command.set("b", b"1"))
    node.flush()
    node.apply(Command.set("a", b"2"), Command.set("c", b"2"), Command.delete("b"))
    assert node.take()
    assert node.kv.flushing and node.kv.overlay_keys() == 0
    # newer applies go to a fresh overlay, on top of the one being flushed
    node.apply(Command.set("c", b"3"), Command.delete("a"), Command.set("d", b"3"), Command.increment("b"))
    assert_same(node.sm, node.twin, ["a", "b", "c", "d"])
    node.write()  # on disk, not yet acknowledged: reads must not change
    assert_same(node.sm, node.twin, ["a", "b", "c", "d"])
    node.done(True)
    assert node.kv.durable_applied == 5 and node.kv.applied() == 9
    assert_same(node.sm, node.twin, ["a", "b", "c", "d"])
    assert node.flush() == 9
    assert_same(node.sm, node.twin, ["a", "b", "c", "d"])


#: The empty key, keys stored as they are (up to 510 bytes) and keys stored by their hash.
KEYS = ["", "a", "b", "\udcff", "ключ", "k" * 40, "k" * 510, "k" * 511, "l" * 3000]
VALUES = st.one_of(st.sampled_from([b"", b"0", b"1", b"-7", b"x", b"9223372036854775807"]), st.binary(max_size=6))
key_st = st.sampled_from(KEYS)
DEADLINES = st.integers(1, 60).map(clock_of)  # absolute: past or future, depending on the entry
command_st = st.one_of(
    st.builds(Command.set, key_st, VALUES),
    st.builds(lambda k, more: Command.delete(k, *more), key_st, st.lists(key_st, max_size=2)),
    st.builds(Command.increment, key_st, st.sampled_from([1, -1, 7, 2**62, -(2**63)])),
    st.builds(Command.compare_and_swap, key_st, VALUES, VALUES),
    st.builds(Command.get, key_st),
    st.builds(lambda a, b: Command.custom("move", kb(a), kb(b)), key_st, key_st),
    # deadlines: set, kept, moved, removed, met by writes and purged (entries are 100 ms apart)
    st.builds(lambda k, v, ms: Command.op("SET", k, v, b"", b"", b"PX", ms), key_st, VALUES,
              st.sampled_from([1, 150, 400, 2000])),
    st.builds(lambda k, v, at: Command.op("SET", k, v, b"", b"", b"PXAT", at), key_st, VALUES, DEADLINES),
    st.builds(lambda k, v: Command.op("SET", k, v, b"XX", b"", b"KEEPTTL", b""), key_st, VALUES),
    st.builds(lambda k, ms, c: Command.op("PEXPIRE", k, ms, c), key_st, st.sampled_from([-1, 0, 150, 400, 2000]),
              st.sampled_from([b"", b"NX", b"XX", b"GT", b"LT"])),
    st.builds(lambda k, at: Command.op("PEXPIREAT", k, at, b""), key_st, DEADLINES),
    st.builds(lambda k: Command.op("PERSIST", k), key_st),
    st.builds(lambda k, v: Command.op("APPEND", k, v), key_st, VALUES),
    st.builds(lambda ks: Command.op("PURGE", *ks), st.lists(key_st, min_size=1, max_size=3)),
)
item_st: st.SearchStrategy[Item] = st.one_of(
    command_st, st.lists(command_st, max_size=5), st.none(), st.just(b"\xc1")
)
#: A whole flush with applies while it is in flight, ending in one of four ways.
cycle_st = st.tuples(
    st.just("cycle"),
    st.lists(item_st, min_size=1, max_size=3),
    st.sampled_from(["ok", "fail", "crash before write", "crash after write"]),
)
Step = Union[list[Item], str, tuple[str, list[Item], str]]
step_st: st.SearchStrategy[Step] = st.one_of(
    st.lists(item_st, min_size=1, max_size=4),
    st.sampled_from(["take", "write", "done", "fail", "flush", "reopen"]),
    st.sampled_from(["purge", "install", "scan", "scan"]),
    cycle_st,
)


def _crash(n: Node) -> None:
    n.reopen(replay=False)
    assert_matches(n.sm, n.frozen[n.disk_applied])
    n.replay()


def _cycle(n: Node, mid: list[Item], outcome: str) -> None:
    if n.kv.flushing or not n.take():
        n.apply(*mid)
        return
    n.apply(*mid)  # on top of the overlay being flushed
    assert_same(n.sm, n.twin, KEYS)
    if outcome == "fail":
        n.done(False)
        assert n.kv.durable_applied < n.kv.applied()
    elif outcome == "crash before write":
        _crash(n)
    else:
        n.write()
        n.apply(*mid)  # again, over a flush that is on disk but not acknowledged
        assert_same(n.sm, n.twin, KEYS)
        if outcome == "ok":
            n.done(True)
            assert n.kv.durable_applied == n.disk_applied
        else:
            _crash(n)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(step_st, min_size=1, max_size=25))
def test_random_commands_flushes_and_restarts_match_the_dict_twin(steps: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        n = Node(Path(tmp) / "d", sync=False)  # close() still syncs; crashes are modelled as closes
        # a SCAN loop going on across the steps: (cursor, keys present since it began, keys seen)
        scanning: tuple[int, set[bytes], set[bytes]] | None = None
        try:
            for step in steps:
                if isinstance(step, list):
                    n.apply(*step)
                elif isinstance(step, tuple):
                    _cycle(n, step[1], step[2])
                elif step == "take":
                    if n.kv.flushing:
                        with pytest.raises(RuntimeError):
                            n.kv.take_flush()
                    else:
                        changed = n.kv.pending()
                        assert n.take() == changed
                elif step == "write":
                    if n.taken is not None and not n.written:
                        n.write()
                elif step == "done":
                    if n.taken is None:
                        n.kv.flush_done(True)  # nothing in flight: a no-op
                    else:
                        before = n.disk_applied if n.written else n.kv.durable_applied
                        n.done(n.written)
                        assert n.kv.durable_applied == before
                elif step == "fail":
                    if n.taken is not None and not n.written:
                        n.done(False)
                elif step == "flush":
                    if not n.kv.flushing:
                        n.flush()
                        assert not n.kv.pending()
                        assert_on_disk(n.kv, n.twin.backend.items())
                elif step == "purge":  # the leader's expiry sweep: a PURGE of what expiring() names
                    at = clock_of(int(n.store.last_index()) + 1)
                    due = n.twin.backend.expiring(at, 4)
                    assert n.kv.expiring(at, 4) == due
                    if due:
                        assert n.apply(Command.op("PURGE", *due))[0][0].value == len(due)
                        assert all(n.kv.get(k) is None for k in due)
                elif step == "install":  # a snapshot of the same state: everything rebuilt
                    if not n.kv.flushing:
                        applied = n.twin.last_applied
                        term = int(n.store.term(LogIndex(applied))) if applied else 0
                        items = list(n.twin.backend.items())
                        assert n.kv.install(lambda: iter(items), applied, term, None) == len(items)
                        n.sm.reset(applied)
                        n.disk_applied = applied
                        assert not n.kv.pending()
                elif step == "scan":  # one call of a SCAN loop that spans the other steps
                    cursor, throughout, seen = scanning or (0, {k for k, *_ in n.twin.backend.items()}, set())
                    nxt, page = n.kv.scan(cursor, 2)
                    t_nxt, t_page = n.twin.backend.scan(cursor, 2)
                    assert (nxt, sorted(page)) == (t_nxt, sorted(t_page))
                    seen |= {k for k, _ in page}
                    if nxt == 0:
                        assert throughout <= seen  # every key there all along was returned
                        scanning = None
                    else:
                        scanning = (nxt, throughout, seen)
                else:  # reopen: only what write_flush stored survives; the log has the rest
                    _crash(n)
                if scanning is not None:
                    scanning[1].intersection_update(k for k, *_ in n.twin.backend.items())
                assert n.kv.durable_applied <= n.kv.applied() == n.twin.last_applied
                assert n.kv.count() == len(n.twin)
                assert_same(n.sm, n.twin, KEYS)
            # finally everything reaches the disk and survives a restart
            if n.taken is not None:
                if not n.written:
                    n.write()
                n.done(True)
            n.flush()
            assert_on_disk(n.kv, n.twin.backend.items())
            n.reopen(replay=False)
            assert_same(n.sm, n.twin, KEYS)
        finally:
            n.close()


# --- 2. durability ----------------------------------------------------------------------------


def test_flushed_state_survives_a_reopen(node: Node) -> None:
    fill(node)
    assert node.flush() == 6
    assert node.kv.durable_applied == 6 and node.kv.durable_applied_term == 2
    node.reopen(replay=False)
    assert node.kv.applied() == node.kv.durable_applied == 6
    assert node.kv.durable_applied_term == 2
    assert node.sm.last_applied == 6
    assert not node.kv.pending() and node.kv.take_flush() is None
    assert_same(node.sm, node.twin, ["a", "b", "c", "moved", "missing"])


def test_unflushed_applies_are_gone_after_a_reopen_and_the_log_replays_them(node: Node) -> None:
    node.apply(Command.set("a", b"1"), Command.set("b", b"1"), term=1)
    assert node.flush() == 2
    at2 = node.frozen[2]
    node.apply(Command.set("a", b"2"), Command.delete("b"), Command.set("c", b"3"), term=3)
    replayed = node.twin.last_applied
    node.reopen(replay=False)
    assert node.kv.applied() == node.kv.durable_applied == 2
    assert node.kv.durable_applied_term == 1
    assert_matches(node.sm, at2)
    assert node.sm.get("a").value == b"1" and "c" not in node.sm and "b" in node.sm
    # the log still has 3..5: applying them again gives the same state as before the restart
    results = node.replay()
    assert [len(r) for r in results] == [1, 1, 1] and node.sm.last_applied == replayed
    assert_same(node.sm, node.twin, ["a", "b", "c"])
    node.flush()
    node.reopen(replay=False)
    assert node.kv.applied() == replayed
    assert_same(node.sm, node.twin, ["a", "b", "c"])


def test_a_flush_taken_but_never_written_is_lost_and_one_written_but_not_done_is_kept(node: Node) -> None:
    node.apply(Command.set("a", b"1"))
    node.flush()
    node.apply(Command.set("a", b"2"))
    assert node.take()
    node.reopen(replay=False)  # the worker never wrote it
    assert node.kv.applied() == 1 and node.sm.get("a").value == b"1"
    node.replay()
    assert node.take()
    node.write()
    node.reopen(replay=False)  # written, then a crash before flush_done
    assert node.kv.applied() == 2 and node.sm.get("a").value == b"2"
    assert_same(node.sm, node.twin, ["a"])


def test_a_state_ahead_of_the_log_is_refused_on_open(tmp_path: Path) -> None:
    store = LmdbStore.open(tmp_path / "d", node_id="n1")
    kv = store.state()
    sm = StateMachine(backend=kv)
    store.write_batch(entries=[make_entry(1, Command.set("a", b"1"))])
    sm.apply_entries([make_entry(1, Command.set("a", b"1")), make_entry(2, Command.set("b", b"2"))])
    flush = kv.take_flush()
    assert flush is not None
    assert kv.write_flush(*flush)
    kv.flush_done(True)
    store.close()
    store = LmdbStore.open(tmp_path / "d", node_id="n1")
    try:
        with pytest.raises(CorruptionError, match="applied index 2"):
            store.state()
    finally:
        store.close()


# --- 3. a failed flush ---------------------------------------------------------------------------


def test_a_failed_flush_puts_the_overlay_back(node: Node) -> None:
    node.apply(Command.set("keep", b"disk"), Command.set("gone", b"disk"))
    node.flush()
    node.apply(Command.set("a", b"1"), Command.set("b", b"1"), Command.delete("gone"), Command.set("c", b"1"))
    assert node.take()
    # newer applies while the doomed write runs: they must win over what it carried
    node.apply(Command.set("a", b"2"), Command.delete("b"), Command.increment("n"))
    node.done(False)
    assert not node.kv.flushing
    assert node.kv.durable_applied == 2 and node.kv.applied() == 9 and node.kv.pending()
    assert node.kv.overlay_keys() == 5  # a, b, gone, c, n
    assert_on_disk(node.kv, node.frozen[2].items)
    assert_same(node.sm, node.twin, ["a", "b", "c", "gone", "keep", "n"])
    # a later flush writes all of it
    assert node.take()
    assert node.taken is not None
    assert node.taken[1] == 9 and set(node.taken[0]) == {b"a", b"b", b"gone", b"c", b"n"}
    assert node.taken[0][b"a"] == (b"2", 2, 7, 0) and node.taken[0][b"b"] is None
    assert set(node.taken[4]) == {b"a", b"b", b"c", b"n"}  # created since the last flush that landed
    node.write()
    node.done(True)
    assert node.kv.durable_applied == 9
    assert_on_disk(node.kv, node.twin.backend.items())
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["a", "b", "c", "gone", "keep", "n"])


def test_a_failed_flush_of_only_the_applied_index_is_retried(node: Node) -> None:
    node.apply(Command.set("a", b"1"))
    node.flush()
    node.apply(None, Command.get("a"))  # no key changes, the applied index moves
    assert node.take()
    node.done(False)
    assert node.kv.pending() and node.kv.overlay_keys() == 0
    assert node.flush() == 3
    node.reopen(replay=False)
    assert node.kv.applied() == 3


# --- 4. take_flush ---------------------------------------------------------------------------------


def test_take_flush_returns_none_when_nothing_changed_and_refuses_a_second_one(node: Node) -> None:
    kv = node.kv
    assert not kv.pending() and kv.take_flush() is None
    assert not kv.flushing
    kv.flush_done(True)  # nothing in flight: harmless
    kv.flush_done(False)
    assert kv.take_flush() is None and kv.durable_applied == 0

    node.apply(Command.set("a", b"1"))
    flush = kv.take_flush()
    assert flush is not None
    items, applied, term, gen, created, sessions = flush
    assert items == {b"a": (b"1", 1, 1, 0)} and (applied, term) == (1, 1) and created == [b"a"]
    assert sessions == {}
    with pytest.raises(RuntimeError, match="in flight"):
        kv.take_flush()
    node.apply(Command.set("b", b"2"))
    with pytest.raises(RuntimeError):
        kv.take_flush()
    assert kv.write_flush(*flush) is True
    kv.flush_done(True)
    assert kv.durable_applied == 1 and kv.pending()
    assert node.flush() == 2
    assert kv.take_flush() is None and not kv.pending()
    # no install happened in between: every flush carries the same generation
    node.apply(Command.set("c", b"3"))
    later = kv.take_flush()
    assert later is not None and later[3] == gen
    assert kv.write_flush(*later) is True
    kv.flush_done(True)
    assert kv.durable_applied == 3


def test_take_flush_after_only_failed_or_read_commands(node: Node) -> None:
    node.apply(Command.set("s", b"text"))
    node.flush()
    results = node.apply(Command.increment("s"), Command.get("s"), Command.delete("nope"), None)
    assert results[0][0].error == NOT_AN_INTEGER
    assert node.kv.overlay_keys() == 0 and node.kv.pending()
    flush = node.kv.take_flush()
    assert flush is not None and flush[0] == {} and flush[1] == 5
    assert node.kv.write_flush(*flush)
    node.kv.flush_done(True)
    node.disk_applied = 5
    assert node.kv.take_flush() is None
    node.reopen(replay=False)
    assert node.kv.applied() == 5
    assert_same(node.sm, node.twin, ["s", "nope"])


# --- 5. count() ---------------------------------------------------------------------------------


def test_count_is_exact_across_creates_overwrites_deletes_flushes_and_reopen(node: Node) -> None:
    def check() -> None:
        assert node.kv.count() == len(node.sm) == len(node.twin)

    steps: list[Item] = [
        Command.set("a", b"1"),
        Command.set("a", b"2"),  # overwrite
        Command.delete("missing"),  # delete of a missing key
        [Command.set("b", b"1"), Command.set("c", b"1"), Command.delete("b"), Command.delete("b")],
        Command.delete("a", "a", "c", "zz"),  # DEL k k counts once
        [Command.set("a", b"x"), Command.delete("a"), Command.set("a", b"y")],  # delete and re-create
        Command.increment("n", 3),
        Command.compare_and_swap("n", b"3", b"4"),
        Command.compare_and_swap("absent", b"", b"4"),  # no swap, no key
        Command.custom("move", b"n", b"m"),
        Command.custom("move", b"nope", b"m"),  # fails: nothing changes
    ]
    for k, item in enumerate(steps):
        node.apply(item)
        check()
        if k % 3 == 2:
            node.flush()
            check()
    node.flush()
    for k, item in enumerate(steps):  # the same again, now over keys that are on disk
        node.apply(item)
        check()
        if k == 4:
            assert node.take()
            check()
        if k == 6:
            node.write()
            node.done(True)
            check()
    node.reopen(replay=False)  # the count comes from the database on open
    assert node.kv.count() == len(node.sm) == node.frozen[node.disk_applied].count
    node.replay()
    check()
    assert_same(node.sm, node.twin, ["a", "b", "c", "m", "n", "absent"])
    node.flush()
    with node.kv._e.env.begin() as txn:
        assert txn.stat(node.kv._e.kv_db)["entries"] == len(node.twin)


# --- 6. corrupt records -----------------------------------------------------------------------


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x10
    return bytes(b)


#: How a stored record is damaged: (its raw bytes, the raw record of another key) -> bytes.
CORRUPTIONS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "value byte": lambda raw, other: _flip(raw, len(raw) - 1),
    "crc byte": lambda raw, other: _flip(raw, 0),
    "version byte": lambda raw, other: _flip(raw, 11),
    "revision byte": lambda raw, other: _flip(raw, 19),
    "truncated": lambda raw, other: raw[:10],
    "empty": lambda raw, other: b"",
    "another key's record": lambda raw, other: other,
    # a long key's record carries the key (after the 20-byte head and its 4-byte length)
    "embedded key byte": lambda raw, other: _flip(raw, 30),
    "embedded key length": lambda raw, other: _flip(raw, 23),
}

#: A victim stored under its own bytes, and one stored under its hash.
VICTIMS = {"short": "victim", "long": "victim" + "#" * 600}


@pytest.mark.parametrize(
    "how,kind",
    # (the record of a short key does not carry the key)
    [(how, kind) for how in sorted(CORRUPTIONS) for kind in sorted(VICTIMS) if kind == "long" or "embedded" not in how],
)
def test_a_corrupt_record_is_never_served(node: Node, how: str, kind: str) -> None:
    victim = VICTIMS[kind]
    node.apply(Command.set(victim, b"precious value"), Command.set("other", b"precious value"))
    node.apply(Command.set("fine", b"ok"), Command.set("o" * 700, b"long but fine"))
    node.flush()
    bad = CORRUPTIONS[how](get_raw(node.kv, kb(victim)), get_raw(node.kv, b"other"))
    put_raw(node.kv, kb(victim), bad)

    with pytest.raises(CorruptionError, match="victim") as info:
        node.kv.get(kb(victim))
    assert info.value.path is not None and STATE_DIR in info.value.path
    with pytest.raises(CorruptionError):
        node.sm.get(victim)
    with pytest.raises(CorruptionError):
        node.sm.version(victim)
    with pytest.raises(CorruptionError):
        node.sm.digest()
    with pytest.raises(CorruptionError):
        list(node.kv.items())
    with pytest.raises(CorruptionError):
        node.kv.range(b"", None, 0)
    with pytest.raises(CorruptionError):
        full_scan(node.kv, 100)
    # a command that reads the key cannot apply over garbage either
    with pytest.raises(CorruptionError):
        node.sm.apply_entries([make_entry(5, Command.increment(victim))])
    with node.kv.open_export() as export:
        with pytest.raises(CorruptionError):
            list(export.records())
    # the other records are fine
    assert node.sm.get("fine").value == b"ok" and node.sm.get("other").value == b"precious value"
    assert node.sm.get("o" * 700).value == b"long but fine"
    # the same after a restart
    node.reopen(replay=False)
    with pytest.raises(CorruptionError):
        node.sm.get(victim)
    assert node.sm.get("fine").value == b"ok"


def test_record_codec_round_trips_and_checks_the_key() -> None:
    raw = encode_record(b"k", b"v" * 10, 3, 99)
    assert decode_record(b"k", raw) == (b"v" * 10, 3, 99, 0)
    assert decode_record(b"k", encode_record(b"k", b"", 1, 0)) == (b"", 1, 0, 0)
    assert decode_record(b"", encode_record(b"", b"e", 2, 5)) == (b"e", 2, 5, 0)
    assert decode_record(b"k", encode_record(b"k", b"t", 2, 5, T0)) == (b"t", 2, 5, T0)
    with pytest.raises(CorruptionError):
        decode_record(b"K", raw)
    with pytest.raises(ValueError):
        encode_record(b"k", b"v", 1 << 63, 1)  # the top bit of the stored version is a flag
    # a long key's record carries the key; the value is still only the value
    long = b"L" * (MAX_INLINE_KEY + 1)
    raw = encode_record(long, b"val", 4, 7)
    assert decode_record(long, raw) == (b"val", 4, 7, 0)
    timed = encode_record(long, b"val", 4, 7, T0)
    assert decode_record(long, timed) == (b"val", 4, 7, T0)
    assert stored_key(db_key(long), timed) == long
    assert stored_key(db_key(long), raw) == long
    assert raw[20:24] == struct.pack(">I", len(long)) and raw[24 : 24 + len(long)] == long
    with pytest.raises(CorruptionError):
        decode_record(long[:-1] + b"M", raw)


_FLUSH_RECORDS = st.dictionaries(
    st.one_of(st.binary(max_size=12), st.binary(min_size=MAX_INLINE_KEY - 1, max_size=MAX_INLINE_KEY + 2)),
    st.tuples(
        st.one_of(st.binary(max_size=80), st.integers(min_value=0, max_value=300).map(lambda n: b"v" * n)),
        st.integers(min_value=1, max_value=(1 << 62) - 1),
        st.integers(min_value=0, max_value=1 << 40),
        st.sampled_from([0, T0, T0 + 1]),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_FLUSH_RECORDS, dictionary=st.booleans())
def test_a_flush_stores_exactly_the_records_encode_record_makes(
        tmp_path: Path, records: dict[bytes, Record], dictionary: bool) -> None:
    """write_flush encodes the common record and every history change inline; byte for
    byte what encode_record and _encode_change give."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        store = LmdbStore.open(d, node_id="n1", codec=Codec())  # not the shared default codec
        try:
            if dictionary:
                samples = [b"v%05d" % i + b"v" * (i % 200) for i in range(400)]
                store.codec.add_dictionary(zstd.train_dictionary(2048, samples).as_bytes(), activate=True)
            kv = store.state()
            kv.history_keep = 10_000
            # The history: each record's value (the same object, as a flush has it) and a
            # copy of it (another object), then two deletions sharing one revision.
            history: list[tuple[int, bytes, bytes | None]] = []
            for i, (k, rec) in enumerate(records.items()):
                history += [(2 * i + 1, k, rec[0]), (2 * i + 2, k, bytes(bytearray(rec[0])))]
            history += [(2 * len(records) + 1, b"gone", None), (2 * len(records) + 1, b"", None)]
            assert kv.write_flush(dict(records), applied=1, term=1, history=history)
            with kv._env.begin(db=kv._db) as txn:
                for k, rec in records.items():
                    assert txn.get(db_key(k)) == encode_record(k, *rec, codec=store.codec)
            with kv._env.begin(db=kv._hist_db) as txn:
                stored = list(txn.cursor())
            seqs = [0] * (len(history) - 1) + [1]
            assert stored == [(_HIST_KEY.pack(rev, seq), _encode_change(k, v, store.codec))
                              for (rev, k, v), seq in zip(history, seqs)]
        finally:
            store.close()


@pytest.mark.parametrize("size", [0, 1, MAX_INLINE_KEY, MAX_INLINE_KEY + 1, 64 * 1024])
def test_db_key_tags_short_keys_and_hashes_long_ones(size: int) -> None:
    key = b"\xff" * size
    if size <= MAX_INLINE_KEY:
        assert db_key(key) == b"\x00" + key
    else:
        assert db_key(key) == b"\x01" + hashlib.sha256(key).digest()
    assert 1 <= len(db_key(key)) <= 511  # what LMDB accepts
    # short keys keep their byte order and all come before the long ones
    assert db_key(b"") < db_key(b"\x00") < db_key(b"a") < db_key(b"\xff" * MAX_INLINE_KEY) < db_key(b"\x00" * 600)


def test_a_corrupt_applied_index_refuses_to_open(node: Node) -> None:
    node.apply(Command.set("a", b"1"))
    node.flush()
    env, meta = node.kv._e.env, node.kv._e.meta_db
    with env.begin(write=True, db=meta) as txn:
        raw = txn.get(K_APPLIED)
        assert raw is not None
        txn.put(K_APPLIED, _flip(bytes(raw), 10))
    node.close()
    store = LmdbStore.open(node.path, node_id="n1")
    try:
        with pytest.raises(CorruptionError, match="applied index"):
            store.state()
    finally:
        store.close()
    node.store = LmdbStore.open(node.path, node_id="n1")  # for the fixture's close


# --- 7. exports -----------------------------------------------------------------------------------


def test_an_export_is_a_consistent_view_of_the_stored_state(node: Node) -> None:
    fill(node)
    node.apply(*[Command.set(f"k{i:03}", b"v%d" % i) for i in range(40)], term=2)
    stored = node.flush()
    assert stored is not None
    at = node.frozen[stored]
    export = node.kv.open_export()
    try:
        # everything moves on: overwrites, deletes, new keys, flushed and not
        node.apply(
            [Command.delete(f"k{i:03}") for i in range(0, 40, 2)],
            [Command.set(f"k{i:03}", b"new") for i in range(1, 40, 2)],
            Command.set("zzz", b"late"),
            term=3,
        )
        node.flush()
        node.apply(Command.set("a", b"overlay only"), Command.delete("ключ"))
        assert node.kv.durable_applied > export.index

        assert (export.index, export.term, export.count) == (stored, 2, at.count)
        assert list(export.records()) == storage_order(at.items)
        assert list(export.records()) == storage_order(at.items)  # a second pass reads the same
        # (short keys only: the storage order is the byte order, so the streams are equal)
        chunks = list(stream_snapshot(export.records(), export.index, export.count, 1000))
        assert b"".join(chunks) == at.stream
        restored = StateMachine()
        assert restored.restore_chunks(chunks, expect_index=stored) == stored
        assert restored.digest() == at.digest and len(restored) == at.count
    finally:
        export.close()
    export.close()  # idempotent
    assert_same(node.sm, node.twin, ["a", "zzz", "k000", "k001"])


def test_an_export_sees_the_stored_state_not_the_overlay(node: Node) -> None:
    with node.kv.open_export() as empty:
        assert (empty.index, empty.term, empty.count) == (0, 0, 0)
        assert list(empty.records()) == []
    node.apply(Command.set("a", b"1"), Command.set("b", b"1"))
    node.flush()
    node.apply(Command.set("a", b"2"), Command.delete("b"), Command.set("c", b"3"))
    assert node.take()  # even a flush in flight is not the stored state yet
    with node.kv.open_export() as export:
        assert (export.index, export.count) == (2, 2)
        assert list(export.records()) == storage_order(node.frozen[2].items)
        node.write()
        node.done(True)
        assert list(export.records()) == storage_order(node.frozen[2].items)
    with node.kv.open_export() as export:
        assert (export.index, export.count) == (5, 2)
        assert list(export.records()) == storage_order(node.frozen[5].items)


def test_map_growth_waits_for_an_open_export_and_works_once_it_is_closed(node: Node) -> None:
    kv = node.kv
    kv._e.env.set_mapsize(1 << 20)  # the state environment starts small (no transaction is open)
    small = kv._e.env.info()["map_size"]
    assert small < 2 << 20
    node.apply(Command.set("first", b"1"))
    node.flush()
    export = kv.open_export()
    big = b"x" * 8000
    node.apply(*[[Command.set(f"big{i:04}-{j}", big) for j in range(10)] for i in range(40)])  # ~3 MB
    flush = kv.take_flush()
    assert flush is not None
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            kv.write_flush(*flush)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        t.join(0.3)
        assert t.is_alive(), "the map was resized under an open export"
        assert kv._e.env.info()["map_size"] == small
        # the export still reads its consistent view, and the event loop still reads
        assert list(export.records()) == storage_order(node.frozen[1].items)
        assert node.sm.get("big0001-3").value == big and node.sm.get("first").value == b"1"
    finally:
        export.close()
    t.join(20)
    assert not t.is_alive() and errors == []
    kv.flush_done(True)
    node.disk_applied = flush[1]
    assert kv._e.env.info()["map_size"] > small
    assert kv.durable_applied == node.twin.last_applied == flush[1]
    with kv.open_export() as export:  # exports work after a resize
        assert export.count == len(node.twin)
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["first", "big0000-0"])


def test_reads_on_the_loop_while_a_worker_writes_the_flush(node: Node) -> None:
    node.apply(*[Command.set(f"k{i}", b"%d" % i) for i in range(200)])
    for rnd in range(5):
        node.apply(*[Command.increment(f"k{i}") for i in range(rnd, 200, 5)])
        flush = node.kv.take_flush()
        assert flush is not None
        t = threading.Thread(target=node.kv.write_flush, args=flush)
        t.start()
        while t.is_alive():  # the event loop keeps reading while the worker writes
            for i in range(0, 200, 17):
                assert node.sm.get(f"k{i}") == node.twin.get(f"k{i}")
        t.join()
        node.kv.flush_done(True)
        assert_same(node.sm, node.twin, ["k0", "k199"])


# --- 8. installing a leader's snapshot file ----------------------------------------------------


def _source(upto: int, term: int = 3) -> tuple[StateMachine, SnapshotMeta]:
    """A dict state machine at index `upto` with some keys, and the meta of its snapshot."""
    src = StateMachine(HANDLERS)
    entries = [make_entry(i, Command.set(f"s{i % 13}", b"src%d" % i), term) for i in range(1, upto + 1)]
    src.apply_entries(entries)
    return src, SnapshotMeta(LogIndex(upto), Term(term), MEMBERS)


def test_install_state_file_replaces_the_state_and_compacts_the_log(node: Node, tmp_path: Path) -> None:
    src, meta = _source(50)
    path = tmp_path / "snap.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks(chunk_size=512), chunk_size=4096)
    fill(node)
    node.flush()
    node.apply(Command.set("overlay", b"only"), Command.delete("a"))  # unflushed applies
    assert node.kv.overlay_keys() == 2 and node.store.last_index() == 8

    assert node.store.install_state_file(path, meta, membership=MEMBERS) == len(src)
    kv = node.kv
    assert kv.applied() == kv.durable_applied == 50 and kv.durable_applied_term == 3
    assert kv.overlay_keys() == 0 and not kv.flushing and not kv.pending()
    assert kv.take_flush() is None
    assert node.store.snapshot() == meta
    assert (node.store.first_index(), node.store.last_index()) == (51, 50)
    assert node.store.initial_state()[1] == MEMBERS
    node.sm.reset(50)
    assert_same(node.sm, src, ["a", "overlay", "s1"])
    assert_on_disk(kv, src.backend.items())

    # the node carries on from there, and a restart keeps it all
    node.twin = src
    node.apply(Command.set("after", b"1"), Command.delete("s1"), term=4)
    node.flush()
    node.reopen(replay=False)
    assert node.kv.applied() == 52 and node.store.snapshot() == meta
    assert node.store.initial_state()[1] == MEMBERS
    assert_same(node.sm, src, ["a", "after", "s1"])


def test_install_state_file_inside_the_log_keeps_the_entries_after_it(node: Node, tmp_path: Path) -> None:
    items: list[Item] = [Command.set(f"k{i % 4}", b"%d" % i) for i in range(1, 9)]
    node.apply(*items[:3])
    node.flush()
    node.store.write_batch(entries=[make_entry(i, items[i - 1]) for i in range(4, 9)])  # not applied yet
    src = StateMachine(HANDLERS)
    src.apply_entries([make_entry(i, items[i - 1]) for i in range(1, 6)])
    meta = SnapshotMeta(LogIndex(5), Term(1), MEMBERS)
    path = tmp_path / "snap5.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks())

    node.store.install_state_file(path, meta)
    assert node.kv.applied() == 5 and node.store.snapshot() == meta
    assert (node.store.first_index(), node.store.last_index()) == (6, 8)
    node.sm.reset(5)
    assert_same(node.sm, src, ["k0", "k1"])
    node.replay()  # 6..8 from the kept log
    full = StateMachine(HANDLERS)
    full.apply_entries([make_entry(i, items[i - 1]) for i in range(1, 9)])
    assert_same(node.sm, full, ["k0", "k1", "k2", "k3"])


def test_a_corrupt_or_mismatched_state_file_changes_nothing(node: Node, tmp_path: Path) -> None:
    src, meta = _source(40)
    good = tmp_path / "good.aegis"
    write_snapshot_file(good, meta, src.snapshot_chunks())
    raw = good.read_bytes()
    bad = tmp_path / "bad.aegis"
    bad.write_bytes(_flip(raw, len(raw) // 2))
    fill(node)
    node.flush()
    node.apply(Command.set("overlay", b"1"))
    node.store.set_membership(MEMBERS)

    def observed() -> tuple[object, ...]:
        s, kv = node.store, node.kv
        lo, hi = s.first_index(), LogIndex(s.last_index() + 1)
        return (
            kv.applied(), kv.durable_applied, kv.overlay_keys(), kv.count(), disk_records(kv),
            list(kv.items()), s.snapshot(), s.first_index(), s.last_index(), s.entries(lo, hi),
            s.initial_state(),
        )

    before = observed()
    # the file's own CorruptionError passes through SnapshotParser unwrapped
    with pytest.raises(CorruptionError) as info:
        node.store.install_state_file(bad, meta, membership=Membership.of(["x"]))
    assert not isinstance(info.value, ValueError)
    assert observed() == before
    with pytest.raises(SnapshotError):  # a file of another index than Raft expects
        node.store.install_state_file(good, SnapshotMeta(LogIndex(41), Term(3), MEMBERS))
    assert observed() == before
    assert_same(node.sm, node.twin, ["overlay", "a"])
    # the store still writes
    node.apply(Command.set("later", b"1"))
    assert node.flush() == node.twin.last_applied
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["overlay", "later"])


def test_restore_chunks_into_lmdb_replaces_everything_or_nothing(node: Node) -> None:
    src, _ = _source(30)
    fill(node)
    node.flush()
    node.apply(Command.set("overlay", b"1"))
    good = b"".join(src.snapshot_chunks())
    before = list(node.kv.items())
    with pytest.raises(ValueError):
        node.sm.restore_chunks([good[:-3] + b"\x00\x00\x00"])
    with pytest.raises(ValueError):
        node.sm.restore_chunks([_flip(good, len(good) // 2)])
    assert list(node.kv.items()) == before and node.kv.applied() == 7
    assert node.sm.restore_chunks([good[:100], good[100:]], expect_index=30) == 30
    assert node.kv.overlay_keys() == 0 and node.kv.durable_applied == 30
    assert_same(node.sm, src, ["overlay", "a", "s0"])


def test_a_crash_between_the_state_install_and_the_log_compaction_is_repaired(node: Node) -> None:
    src, meta = _source(20, term=5)
    fill(node)
    node.flush()
    # the first of install_state_file's two commits (the state), then a crash
    count = node.kv.install(src.backend.items, 20, 5, encode_snapshot_meta(meta))
    assert count == len(src)
    node.close()
    store = LmdbStore.open(node.path, node_id="n1")
    assert store.last_index() == 6 and store.snapshot().index == 0  # the log is behind the state
    kv = store.state()  # ... and opening the state compacts it
    assert store.snapshot() == meta and (store.first_index(), store.last_index()) == (21, 20)
    assert store.initial_state()[1] == MEMBERS
    assert kv.applied() == 20
    assert_same(StateMachine(backend=kv), src, ["s0", "a"])
    store.close()
    store = LmdbStore.open(node.path, node_id="n1")
    assert store.snapshot() == meta and store.state().applied() == 20
    node.store = store


# --- 9. migration of a stored snapshot ----------------------------------------------------------


def test_a_stored_snapshot_is_moved_into_the_state_database(tmp_path: Path) -> None:
    src, meta = _source(30, term=2)
    backup = tmp_path / "backup.aegis"
    write_snapshot_file(backup, meta, src.snapshot_chunks())
    data = tmp_path / "restored"
    store = LmdbStore.open(data, node_id="n1")
    info = store.install_snapshot_file(backup)  # what `aegis snapshot restore` leaves behind
    assert info.index == 30 and store.snapshot_info() is not None
    store.close()
    assert not (data / STATE_DIR).exists()  # the state database is created on first use

    store = LmdbStore.open(data, node_id="n1")
    try:
        assert store.snapshot_info() is not None
        kv = store.state()
        assert kv.applied() == kv.durable_applied == 30 and kv.durable_applied_term == 2
        assert store.snapshot_info() is None
        assert store.snapshot().index == 30
        sm = StateMachine(HANDLERS, backend=kv)
        assert_same(sm, src, ["s0", "s12", "nope"])
    finally:
        store.close()

    store = LmdbStore.open(data, node_id="n1")  # once: the next open finds it in place
    try:
        assert store.snapshot_info() is None
        kv = store.state()
        assert kv.applied() == 30 and kv.count() == len(src)
        assert_same(StateMachine(HANDLERS, backend=kv), src, ["s0"])
        # and the node goes on from the snapshot
        e = make_entry(31, Command.set("s0", b"after"), 2)
        store.write_batch(entries=[e])
        sm = StateMachine(HANDLERS, backend=kv)
        src.apply_entries([e])
        sm.apply_entries([e])
        assert_same(sm, src, ["s0"])
    finally:
        store.close()


# --- 10. BATCH entries ----------------------------------------------------------------------------


def test_batch_entries_give_the_dict_twins_results(node: Node) -> None:
    bad_command = msgpack.packb([99, b"k"], use_bin_type=True)
    results = node.apply(
        [
            Command.set("a", b"1"),
            Command.set("b", b"x"),
            Command.increment("a", 5),
            Command.increment("b"),  # not an integer: fails, changes nothing
            Command.compare_and_swap("a", b"6", b"7"),
            Command.compare_and_swap("a", b"0", b"9"),
            Command.delete("a", "zz"),
            Command.get("b"),
            Command.custom("move", b"b", b"c"),
            Command.custom("move", b"b", b"c"),  # b is gone now: fails
        ],
        Command.set("d", b"single"),
        None,
        b"\xc1",  # a BATCH payload that does not decode
        encode_batch([Command.set("e", b"1").encode(), bad_command, Command.increment("e").encode()]),
        [],
        [Command.delete("c"), Command.set("c", b"v"), Command.set("c", b"w")],
    )
    batch = results[0]
    assert [r.success for r in batch] == [True, True, True, False, True, True, True, True, True, False]
    assert batch[2].value == 6 and batch[4].value == 1 and batch[5].value == 0 and batch[6].value == 1
    assert batch[7].value == b"x" and batch[8].value == 1
    assert all(r.applied_index == 1 for r in batch)
    assert len(results[1]) == 1 and results[2] == [] and results[5] == []
    assert len(results[3]) == 1 and not results[3][0].success
    assert [r.success for r in results[4]] == [True, False, True] and results[4][2].value == 2
    assert [r.version for r in results[6]] == [0, 1, 2]
    assert_same(node.sm, node.twin, ["a", "b", "c", "d", "e"])

    node.flush()
    more = node.apply([Command.increment("e", 10), Command.compare_and_swap("c", b"w", b"z"), Command.get("d")])
    assert more[0][0].value == 12 and more[0][1].value == 1 and more[0][2].value == b"single"
    assert_same(node.sm, node.twin, ["a", "b", "c", "d", "e"])
    # the same entries applied again from the log after a restart give the same results
    node.reopen(replay=False)
    replayed = node.replay()
    assert replayed == more
    again = node.sm.apply_entries(node.store.entries(LogIndex(1), LogIndex(3)))
    assert again == [[], []]  # at or below last_applied: no-ops
    assert_same(node.sm, node.twin, ["a", "b", "c", "d", "e"])


# --- 11. keys of any length, and snapshots that name a key twice ------------------------------
# (these pinned bugs as strict xfails: LMDB's 1..511-byte key limit, append=True installs, ...)


@pytest.mark.parametrize("size", [1, 100, MAX_INLINE_KEY, MAX_INLINE_KEY + 1, 512])
def test_keys_around_the_inline_limit_are_stored(node: Node, size: int) -> None:
    key = "k" * size
    node.apply(Command.set(key, b"v"), Command.get(key), Command.set("k" * (size - 1) + "j", b"w"))
    node.flush()
    assert len(db_key(kb(key))) == (1 + size if size <= MAX_INLINE_KEY else 33)
    assert decode_record(kb(key), get_raw(node.kv, kb(key))) == (b"v", 1, 1, 0)
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, [key, "k" * (size - 1) + "j"])
    assert_on_disk(node.kv, node.twin.backend.items())


def test_the_empty_key_is_an_ordinary_key(node: Node) -> None:
    results = node.apply(Command.get(""), Command.set("", b"v"), Command.increment("", 0))
    assert results[0][0].value is None and results[1][0].version == 1
    assert results[2][0].error == NOT_AN_INTEGER
    node.apply(Command.set("", b"5"), Command.increment("", 2), Command.set("a", b"1"))
    assert node.sm.get("").value == b"7" and node.sm.version("") == 3
    node.flush()
    assert get_raw(node.kv, b"") and disk_records(node.kv)[0][:2] == (b"", b"7")  # first in order
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["", "a"])
    node.apply(Command.delete(""))
    node.flush()
    node.reopen(replay=False)
    assert "" not in node.sm and node.kv.count() == 1
    assert_same(node.sm, node.twin, ["", "a"])


@pytest.mark.parametrize("size", [512, 64 * 1024])
def test_long_keys_are_flushed(node: Node, size: int) -> None:
    key = "k" * size
    twin_key = "k" * (size - 1) + "j"  # the same first 510 bytes: only the hash tells them apart
    node.apply(Command.set(key, b"v"), Command.set("short", b"v"), Command.set(twin_key, b"other"))
    node.flush()
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, [key, twin_key, "short"])
    # overwrite, count, delete and re-create a long key that is on disk
    node.apply(Command.increment(key), Command.set(key, b"9"), Command.increment(key, 1))
    assert node.sm.get(key).value == b"10" and node.sm.version(key) == 3
    node.apply(Command.delete(twin_key))
    assert node.kv.count() == 2
    node.flush()
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, [key, twin_key, "short"])
    node.apply(Command.set(twin_key, b"again"), Command.custom("move", kb(key), b"moved"))
    node.flush()
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, [key, twin_key, "short", "moved"])
    assert_on_disk(node.kv, node.twin.backend.items())


def test_an_export_streams_long_keys_after_the_short_ones_and_restores_anywhere(node: Node) -> None:
    keys = ["b", "z" * MAX_INLINE_KEY, "a" * 600, "", "m" * 5000, "a"]
    node.apply(*[Command.set(k, b"%d" % i) for i, k in enumerate(keys)])
    node.flush()
    at = node.frozen[node.twin.last_applied]
    with node.kv.open_export() as export:
        got = list(export.records())
        chunks = list(stream_snapshot(export.records(), export.index, export.count, 700))
    short = sorted(kb(k) for k in keys if len(kb(k)) <= MAX_INLINE_KEY)
    long = sorted((kb(k) for k in keys if len(kb(k)) > MAX_INLINE_KEY), key=lambda k: hashlib.sha256(k).digest())
    assert [k for k, *_ in got] == short + long
    assert sorted(got) == at.items
    # the digest does not depend on the order: the stream restores into a dict and into LMDB
    restored = StateMachine()
    assert restored.restore_chunks(chunks) == at.index
    assert restored.digest() == at.digest == node.sm.digest()
    assert list(restored.backend.items()) == at.items
    other = Node(node.path.parent / "other")
    try:
        assert other.sm.restore_chunks(chunks) == at.index
        assert_same(other.sm, node.twin, keys)
        assert disk_records(other.kv) == got and other.kv.durable_applied == at.index
    finally:
        other.close()


def _dup_stream(index: int, key: bytes) -> bytes:
    """A well-formed stream (header count, CRC) that names `key` twice."""
    records = [(key, b"first", 1, 1, 0), (b"m", b"x", 1, 2, 0), (key, b"second", 2, 3, 0)]
    return b"".join(stream_snapshot(iter(records), index, len(records)))


@pytest.mark.parametrize("key", [b"a", b"L" * 700], ids=["short", "long"])
def test_a_snapshot_naming_a_key_twice_is_refused_and_changes_nothing(node: Node, tmp_path: Path, key: bytes) -> None:
    stream = _dup_stream(40, key)
    twin = StateMachine()
    twin.apply_entries([make_entry(1, Command.set("t", b"1"))])
    with pytest.raises(ValueError, match="duplicate"):
        twin.restore_chunks([stream])
    assert twin.last_applied == 1 and twin.keys() == ["t"]

    fill(node)
    node.flush()
    node.apply(Command.set("overlay", b"1"))
    meta = SnapshotMeta(LogIndex(40), Term(3), MEMBERS)
    path = tmp_path / "dup.aegis"
    write_snapshot_file(path, meta, [stream])

    def observed() -> tuple[object, ...]:
        s, kv = node.store, node.kv
        return (kv.applied(), kv.durable_applied, kv.overlay_keys(), kv.count(), disk_records(kv),
                list(kv.items()), s.snapshot(), s.first_index(), s.last_index(), kv.stored_base())

    before = observed()
    with pytest.raises(CorruptionError, match="twice"):
        node.sm.restore_chunks([stream])
    assert observed() == before
    with pytest.raises(CorruptionError, match="twice"):
        node.store.install_state_file(path, meta, membership=MEMBERS)
    assert observed() == before
    assert_same(node.sm, node.twin, ["overlay", "a", "m"])
    node.apply(Command.set("later", b"1"))
    assert node.flush() == node.twin.last_applied
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["overlay", "later", "a", "m"])


# Keys whose str order (how version 1 streams were sorted) is not their byte order:
# "é" is U+00E9 (b"\xc3\xa9"), "\udc80" is the escaped byte b"\x80".
V1_RECORDS = {"a": (b"1", 1), "é": (b"2", 2), "\udc80": (b"3", 1), "z": (b"4", 3)}


@pytest.mark.parametrize("how", ["restore_chunks", "install_state_file", "migration"])
def test_a_version_1_snapshot_installs_every_key(tmp_path: Path, how: str) -> None:
    stream = v1_stream(V1_RECORDS, 4)
    assert [k for k, _ in sorted(V1_RECORDS.items())] != sorted(V1_RECORDS, key=kb)  # not in byte order
    twin = StateMachine()
    assert twin.restore_chunks([stream]) == 4 and len(twin) == 4
    meta = SnapshotMeta(LogIndex(4), Term(1), MEMBERS)
    path = tmp_path / "v1.aegis"
    write_snapshot_file(path, meta, [stream])
    data = tmp_path / "d"
    store = LmdbStore.open(data, node_id="n1")
    try:
        if how == "restore_chunks":
            sm = StateMachine(backend=store.state())
            sm.restore_chunks([stream])
        elif how == "install_state_file":
            store.install_state_file(path, meta)
            sm = StateMachine(backend=store.state())
        else:
            store.install_snapshot_file(path)
            store.close()
            store = LmdbStore.open(data, node_id="n1")
            sm = StateMachine(backend=store.state())
        assert sm.last_applied == 4 and store.state().count() == 4
        assert [k for k, *_ in disk_records(store.state())] == sorted(kb(k) for k in V1_RECORDS)
        assert_same(sm, twin, list(V1_RECORDS))
    finally:
        store.close()


def test_a_flush_taken_before_an_install_cannot_overwrite_it(node: Node, tmp_path: Path) -> None:
    src, meta = _source(30)
    path = tmp_path / "snap.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks())
    node.apply(Command.set("old", b"1"), Command.set("s1", b"stale"))
    flush = node.kv.take_flush()  # the worker is about to write it ...
    assert flush is not None
    node.store.install_state_file(path, meta, membership=MEMBERS)  # ... but the install goes first
    assert not node.kv.flushing  # the install dropped the overlay being flushed
    assert node.kv.write_flush(*flush) is False  # a stale generation: nothing written
    node.kv.flush_done(True)
    assert node.kv.applied() == node.kv.durable_applied == 30 and not node.kv.pending()
    node.sm.reset(30)
    assert "old" not in node.sm and node.sm.get("s1") == src.get("s1")
    assert_on_disk(node.kv, src.backend.items())
    node.close()
    node.store = LmdbStore.open(node.path, node_id="n1")
    kv = node.store.state()
    assert kv.applied() == 30
    assert_same(StateMachine(HANDLERS, backend=kv), src, ["old", "s1"])


def test_the_state_environment_honours_the_store_map_limit(tmp_path: Path) -> None:
    store = LmdbStore.open(tmp_path / "d", node_id="n1", map_size=1 << 20, max_map_size=2 << 20)
    try:
        kv = store.state()
        assert kv._e.env.info()["map_size"] <= 2 << 20
        sm = StateMachine(backend=kv)
        entries = [make_entry(i, Command.set(f"k{i}", b"x" * 60_000)) for i in range(1, 81)]  # ~5 MB
        store.write_batch(entries=entries[:1])
        sm.apply_entries(entries)
        flush = kv.take_flush()
        assert flush is not None
        with pytest.raises(DiskFullError):
            kv.write_flush(*flush)
        kv.flush_done(False)
        assert kv.durable_applied == 0 and sm.get("k80").value == b"x" * 60_000  # still in memory
    finally:
        store.close()


def test_the_done_of_a_flush_taken_before_an_install_leaves_a_newer_flush_alone(node: Node, tmp_path: Path) -> None:
    src, meta = _source(30)
    path = tmp_path / "snap.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks())
    node.apply(Command.set("old", b"1"))
    old = node.kv.take_flush()  # a worker is about to write it ...
    assert old is not None
    node.store.install_state_file(path, meta, membership=MEMBERS)  # ... the install goes first
    node.sm.reset(30)
    node.twin = src
    node.disk_applied = 30
    node.apply(Command.set("new", b"2"), term=4)
    try:
        early = node.take()  # today: allowed, the install ended the old flush
    except RuntimeError:  # (a fix may refuse until the old flush has reported)
        early = False
    assert node.kv.write_flush(*old) is False  # the old worker writes nothing ...
    node.kv.flush_done(True)  # ... and reports
    if early:
        assert node.kv.flushing  # the newer flush is still in flight
    else:
        assert node.take()
    assert node.kv.durable_applied == 30  # and the newer flush is not on disk yet
    assert_same(node.sm, node.twin, ["new", "old"])
    node.write()
    node.done(True)
    assert node.kv.durable_applied == 31
    node.reopen(replay=False)
    assert_same(node.sm, node.twin, ["new", "old"])


# --- 12. deadlines, range reads, scans and their indexes ------------------------------------


def old_record(key: bytes, value: bytes, version: int, revision: int) -> bytes:
    """A record as the version before deadlines wrote it: ``crc | version | revision |
    [len | key] | value``, the CRC over the key and the rest."""
    body = struct.pack(">QQ", version, revision)
    if len(key) > MAX_INLINE_KEY:
        body += struct.pack(">I", len(key)) + key
    body += value
    return struct.pack(">I", zlib.crc32(body, zlib.crc32(key))) + body


def write_previous_version(path: Path, items: Iterable[KVItem], applied: int, term: int) -> None:
    """A state environment as the previous version left it: old-format records and the
    applied index; no scan or deadline index, no ``indexes`` marker."""
    env = Env.open(path / STATE_DIR)
    try:
        with env.env.begin(write=True) as txn:
            for k, v, ver, rev, exp in items:
                assert exp == 0  # the previous version had no deadlines
                txn.put(db_key(k), old_record(k, v, ver, rev), db=env.kv_db)
            txn.put(K_APPLIED, encode_applied(applied, term), db=env.meta_db)
    finally:
        env.close()


#: Keys of every kind, some sharing their first 510 bytes (only the hash tells them apart).
MIXED_KEYS = ["", "a", "b", "ключ", "k" * 509, "k" * 510, "k" * 510 + "a", "k" * 511, "k" * 600,
              "k" * 599 + "j", "j" * 700, "z"]


def test_a_record_without_a_deadline_is_stored_in_the_previous_format() -> None:
    long = b"L" * 600
    for key in (b"k", b"", long):
        old = old_record(key, b"value", 7, 42)
        assert encode_record(key, b"value", 7, 42) == old  # byte for byte: old records stay valid
        assert decode_record(key, old) == (b"value", 7, 42, 0)
        timed = encode_record(key, b"value", 7, 42, T0 + 5)
        assert struct.unpack_from(">Q", timed, 4)[0] == 7 | 1 << 63  # the flag: a deadline follows
        assert struct.unpack_from(">Q", timed, 20)[0] == T0 + 5
        assert decode_record(key, timed) == (b"value", 7, 42, T0 + 5)
        assert len(timed) == len(old) + 8
    # the CRC covers the deadline (and the flag)
    timed = encode_record(b"k", b"v", 1, 1, T0)
    for at in (4, 27):  # the flag bit's byte, a deadline byte
        with pytest.raises(CorruptionError):
            decode_record(b"k", _flip(timed, at))


def test_the_scan_index_key_is_the_digest_whose_top_63_bits_are_scan_hash() -> None:
    for key in (b"", b"a", b"k" * 511, "ключ".encode()):
        digest = kvmod._digest(key)
        assert len(digest) == 8 and int.from_bytes(digest, "big") >> 1 == scan_hash(key)


def test_an_environment_of_the_previous_version_gets_its_indexes_built_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d"
    twin = StateMachine(HANDLERS)
    entries = [make_entry(i, Command.set(k, b"%d" % i)) for i, k in enumerate(MIXED_KEYS, start=1)]
    entries.append(make_entry(len(entries) + 1, [Command.delete("b"), Command.increment("z2", 5)]))
    twin.apply_entries(entries)
    store = LmdbStore.open(data, node_id="n1")
    store.write_batch(entries=entries)
    store.close()
    write_previous_version(data, twin.backend.items(), twin.last_applied, 1)
    env = Env.open(data / STATE_DIR)
    try:
        with pytest.raises(lmdb.NotFoundError):
            env.env.open_db(b"scan", create=False)
    finally:
        env.close()

    node = Node(data, twin=twin)  # opens the state: the indexes are built here, in one transaction
    try:
        assert node.kv.applied() == twin.last_applied and node.kv.count() == len(twin)
        assert_on_disk(node.kv, twin.backend.items())
        assert_same(node.sm, twin, MIXED_KEYS)
        with node.kv._e.env.begin(db=node.kv._e.meta_db) as txn:
            assert txn.get(K_INDEXES) is not None
        # old records are rewritten only when their key is written again; both read alike
        node.apply(Command.op("SET", "a", b"ttl", b"", b"", b"PX", 1000), Command.set("c", b"new"))
        node.flush()
        assert_on_disk(node.kv, twin.backend.items())
        assert get_raw(node.kv, b"z") == old_record(b"z", b"12", 1, 12)

        def no_rebuild(self: LmdbKV, applied_raw: bytes | None) -> None:
            raise AssertionError("the indexes were rebuilt again")

        monkeypatch.setattr(LmdbKV, "_rebuild_indexes", no_rebuild)
        node.reopen(replay=False)
        assert_same(node.sm, twin, MIXED_KEYS)
        assert node.kv.expiring(clock_of(node.twin.last_applied) + 1000, 10) == [b"a"]
    finally:
        node.close()


def test_a_state_written_without_the_indexes_after_the_upgrade_is_indexed_again(tmp_path: Path) -> None:
    """A downgrade (the previous version writes the state, knowing nothing of the indexes)
    then an upgrade: the marker no longer matches the applied index, so open rebuilds."""
    node = Node(tmp_path / "d")
    try:
        node.apply(*[Command.set(k, b"v") for k in MIXED_KEYS])
        node.flush()
        # what the previous version's flush of the next entry would write
        entry = [Command.delete("a"), Command.delete("k" * 600), Command.set("new", b"1")]
        node.store.write_batch(entries=[make_entry(node.twin.last_applied + 1, entry)])
        node.twin.apply_entries([make_entry(node.twin.last_applied + 1, entry)])
        applied = node.twin.last_applied
        node.close()
        env = Env.open(node.path / STATE_DIR)
        try:
            with env.env.begin(write=True) as txn:
                txn.delete(db_key(b"a"), db=env.kv_db)
                txn.delete(db_key(b"k" * 600), db=env.kv_db)
                txn.put(db_key(b"new"), old_record(b"new", b"1", 1, applied), db=env.kv_db)
                txn.put(K_APPLIED, encode_applied(applied, 1), db=env.meta_db)
        finally:
            env.close()
        node.disk_applied = applied
        node.store = LmdbStore.open(node.path, node_id="n1")
        node.kv = node.store.state()
        node.sm = StateMachine(HANDLERS, backend=node.kv)
        assert_on_disk(node.kv, node.twin.backend.items())
        assert_same(node.sm, node.twin, MIXED_KEYS + ["new"])
    finally:
        node.close()


def test_the_indexes_are_filled_in_chunks_by_installs_and_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvmod, "_LOAD_CHUNK", 3)  # several chunks while the records stream in
    src = StateMachine(HANDLERS)
    expiry: Callable[[int], tuple[bytes | int, ...]] = lambda i: (b"PX", 1000 * i) if i % 2 else (b"", b"")
    src.apply_entries([make_entry(i, Command.op("SET", k, b"s", b"", b"", *expiry(i)))
                       for i, k in enumerate(MIXED_KEYS, start=1)])
    assert len(src) == len(MIXED_KEYS) and 0 < len(deadlines(src.backend.items())) < len(src)
    node = Node(tmp_path / "d")
    try:
        node.kv.install(src.backend.items, src.last_applied, 1, None)
        node.sm.reset(src.last_applied)
        assert_on_disk(node.kv, src.backend.items())
        assert_same_indexes(node.kv, src.backend, src.clock)
    finally:
        node.close()
    data = tmp_path / "old"
    plain = StateMachine(HANDLERS)
    entries = [make_entry(i, Command.set(k, b"p")) for i, k in enumerate(MIXED_KEYS, start=1)]
    plain.apply_entries(entries)
    store = LmdbStore.open(data, node_id="n1")
    store.write_batch(entries=entries)
    store.close()
    write_previous_version(data, plain.backend.items(), plain.last_applied, 1)
    old = Node(data, twin=plain)
    try:
        assert_on_disk(old.kv, plain.backend.items())
        assert_same(old.sm, plain, MIXED_KEYS)
    finally:
        old.close()


def test_range_and_scan_over_long_keys_on_disk_and_in_the_overlays(node: Node) -> None:
    node.apply(*[Command.set(k, b"%d" % i) for i, k in enumerate(MIXED_KEYS)])
    node.flush()
    # the overlay being flushed and the live one: overwrite, delete, re-create, create
    node.apply(Command.delete("k" * 511, "k" * 510), Command.set("k" * 599 + "j", b"over"),
               Command.set("k" * 700, b"new long"))
    assert node.take()
    node.apply(Command.set("k" * 511, b"back"), Command.delete("j" * 700), Command.set("k" * 512, b"live"))
    keys = sorted(k for k, *_ in node.twin.backend.items())
    bounds = sorted({b"", b"\xff" * 600, *keys, *(k + b"\x00" for k in keys), *(k[:-1] for k in keys if k)})

    def check() -> None:
        kv, twin = node.kv, node.twin.backend
        for start in bounds:
            for end in [None, *bounds]:
                assert kv.range(start, end, 0) == twin.range(start, end, 0), (start[:8], len(start), end)
            assert kv.range(start, None, 1) == twin.range(start, None, 1)
        for count in (1, 3, 100):
            got = full_scan(kv, count, twin)
            assert sorted(got) == keys

    check()
    node.write()
    check()
    node.done(True)
    check()
    node.flush()
    check()
    node.reopen(replay=False)
    check()


def test_deadlines_are_indexed_across_flushes_installs_and_reopen(node: Node, tmp_path: Path) -> None:
    node.apply(
        Command.op("SET", "a", b"1", b"", b"", b"PX", 3000),  # entry 1: expires at clock_of(31)
        Command.op("SET", "b", b"1", b"", b"", b"PXAT", clock_of(40)),
        Command.op("SET", "c", b"1", b"", b"", b"PXAT", clock_of(40)),  # the same deadline as b
        Command.op("SET", "k" * 600, b"1", b"", b"", b"PX", 1000),  # clock_of(14)
        Command.set("plain", b"1"),
    )
    at = clock_of(50)
    assert node.kv.expiring(at, 10) == [b"k" * 600, b"a", b"b", b"c"]  # soonest first, ties by key
    assert node.kv.expiring(at, 2) == [b"k" * 600, b"a"] and node.kv.expiring(clock_of(3), 10) == []
    node.flush()
    assert_on_disk(node.kv, node.twin.backend.items())
    # deadlines go away, move, are kept by a rewrite, go with their key, are set anew
    node.apply(
        Command.op("PERSIST", "a"),
        Command.op("PEXPIREAT", "b", clock_of(60), b""),
        Command.op("APPEND", "c", b"+"),
        Command.delete("k" * 600),
        Command.op("PEXPIRE", "plain", 50, b""),  # entry 10
    )
    assert_same(node.sm, node.twin, ["a", "b", "c", "plain"])
    node.flush()
    assert_on_disk(node.kv, node.twin.backend.items())
    node.reopen(replay=False)
    assert node.kv._due == {b"b": clock_of(60), b"c": clock_of(40), b"plain": clock_of(10) + 50}
    assert_same(node.sm, node.twin, ["a", "b", "c", "plain"])
    assert node.kv.expiring(clock_of(45), 10) == [b"plain", b"c"]
    due = node.kv.expiring(clock_of(11), 10)  # the leader's sweep at the time of entry 11
    assert due == [b"plain"]
    assert node.apply(Command.op("PURGE", *due))[0][0].value == 1
    assert node.kv.expiring(clock_of(45), 10) == [b"c"] and node.kv.count() == 3
    # an install of another state replaces every deadline
    src = StateMachine(HANDLERS)
    src.apply_entries([make_entry(i, Command.op("SET", f"s{i}", b"s", b"", b"", b"PX", 1000 - 150 * i))
                       for i in range(1, 6)])
    src.apply_entries([make_entry(i, Command.set(f"t{i}", b"t")) for i in range(6, 40)])
    meta = SnapshotMeta(LogIndex(src.last_applied), Term(3), MEMBERS)
    path = tmp_path / "snap.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks())
    node.apply(Command.op("SET", "overlay", b"1", b"", b"", b"PX", 10))  # dropped by the install
    node.store.install_state_file(path, meta, membership=MEMBERS)
    node.sm.reset(src.last_applied)
    assert node.kv._due == deadlines(src.backend.items())
    assert_on_disk(node.kv, src.backend.items())
    assert_same_indexes(node.kv, src.backend, src.clock)
    assert node.kv.expiring(1 << 62, 10) == [b"s5", b"s4", b"s3", b"s2", b"s1"]
    node.close()
    node.store = LmdbStore.open(node.path, node_id="n1")
    kv = node.store.state()
    assert_on_disk(kv, src.backend.items())
    assert_same_indexes(kv, src.backend, src.clock)


def test_a_state_without_deadlines_never_touches_the_deadline_index(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_deadlines(*args: object) -> bytes:
        raise AssertionError("a deadline index entry was encoded")

    monkeypatch.setattr(kvmod, "_encode_due", no_deadlines)
    fill(node)
    node.flush()
    node.apply(*[[Command.set(f"k{i}", b"v"), Command.delete(f"k{i - 1}")] for i in range(1, 50)])
    node.flush()
    assert node.kv._due == {} and node.kv._due_disk == {} and node.kv._heap == []
    with node.kv._e.env.begin() as txn:
        assert txn.stat(node.kv._due_db)["entries"] == 0
        assert txn.stat(node.kv._scan_db)["entries"] == len(node.twin)


def test_the_deadline_heap_does_not_grow_with_rewrites(node: Node) -> None:
    for rnd in range(3):
        node.apply(*[[Command.op("PEXPIRE", "k", 10_000 + j, b"") for j in range(400)] for _ in range(3)]
                   if rnd else [Command.op("SET", "k", b"v", b"", b"", b"PX", 10_000)])
    assert len(node.kv._heap) <= 2 * len(node.kv._due) + 1024
    assert node.kv.expiring(1 << 62, 10) == [b"k"] == node.twin.backend.expiring(1 << 62, 10)


#: How a scan index entry is damaged: (a write transaction, the state, the victim's entry
#: ``(digest, db_key)``) -> anything.
SCAN_CORRUPTIONS: dict[str, Callable[[lmdb.Transaction[bytes], LmdbKV, tuple[bytes, bytes]], object]] = {
    # an entry for a key that is not stored
    "names a missing key": lambda txn, kv, e: txn.put(kvmod._digest(b"ghost"), db_key(b"ghost"), db=kv._scan_db),
    # the entry moved to another position (a flipped bit in its key)
    "wrong position": lambda txn, kv, e: (txn.delete(e[0], e[1], db=kv._scan_db),
                                          txn.put(_flip(e[0], 7), e[1], db=kv._scan_db)),
    # the entry names another stored key
    "names another key": lambda txn, kv, e: (txn.delete(e[0], e[1], db=kv._scan_db),
                                             txn.put(e[0], db_key(b"other"), db=kv._scan_db)),
}


@pytest.mark.parametrize("how", sorted(SCAN_CORRUPTIONS))
@pytest.mark.parametrize("victim", [b"victim", b"victim" + b"#" * 600], ids=["short", "long"])
def test_a_corrupt_scan_index_entry_is_detected(node: Node, how: str, victim: bytes) -> None:
    node.apply(Command.set(victim.decode(), b"v"), Command.set("other", b"o"),
               *[Command.set(f"k{i}", b"x") for i in range(20)])
    node.flush()
    with node.kv._e.env.begin(write=True) as txn:
        SCAN_CORRUPTIONS[how](txn, node.kv, (kvmod._digest(victim), db_key(victim)))
    with node.kv._e.lock:
        node.kv._drop_reader()
    with pytest.raises(CorruptionError, match="scan index") as info:
        full_scan(node.kv, 5)
    assert info.value.path is not None and STATE_DIR in info.value.path
    # everything else still reads
    assert node.sm.get(victim.decode()).value == b"v"
    assert [k for k, _ in node.kv.range(b"", None, 0)] == sorted(k for k, *_ in node.twin.backend.items())


def test_a_corrupt_deadline_index_entry_refuses_to_open(node: Node) -> None:
    node.apply(Command.op("SET", "a", b"1", b"", b"", b"PX", 1000), Command.set("b", b"1"))
    node.flush()
    with node.kv._e.env.begin(write=True, db=node.kv._due_db) as txn:
        raw = txn.get(db_key(b"a"))
        assert raw is not None
        txn.put(db_key(b"a"), _flip(bytes(raw), 8))
    node.close()
    store = LmdbStore.open(node.path, node_id="n1")
    try:
        with pytest.raises(CorruptionError, match="deadline index"):
            store.state()
    finally:
        store.close()
    node.store = LmdbStore.open(node.path, node_id="n1")  # for the fixture's close


@pytest.mark.parametrize("marker", [b"", b"\x02" + b"x" * 20, None])
def test_a_damaged_or_missing_index_marker_only_rebuilds_the_indexes(node: Node, marker: bytes | None) -> None:
    node.apply(*[Command.set(k, b"v") for k in MIXED_KEYS], Command.op("SET", "ttl", b"1", b"", b"", b"PX", 1000))
    node.flush()
    assert node.kv._due_disk
    with node.kv._e.env.begin(write=True) as txn:
        txn.drop(node.kv._scan_db, delete=False)  # stale indexes, which the rebuild replaces
        txn.put(kvmod._digest(b"ghost"), db_key(b"ghost"), db=node.kv._scan_db)
        txn.drop(node.kv._due_db, delete=False)
        if marker is None:
            txn.delete(K_INDEXES, db=node.kv._e.meta_db)
        else:
            txn.put(K_INDEXES, marker, db=node.kv._e.meta_db)
    node.reopen(replay=False)
    assert_on_disk(node.kv, node.twin.backend.items())
    assert_same(node.sm, node.twin, MIXED_KEYS + ["ttl"])


def test_the_change_history_is_written_with_the_state_pruned_and_reset_by_installs(tmp_path: Path) -> None:
    from aegis.state import Change

    store = LmdbStore.open(tmp_path / "h", node_id="n1", sync=False)
    kv = store.state()
    kv.history_keep = 5
    assert kv.history_floor() == 0 and kv.read_history(0, 10) == []

    def flush(upto: int, history: list[Change]) -> None:
        from aegis.log import EntryType, LogEntry

        first = int(store.last_index()) + 1
        store.write_batch(entries=[LogEntry(i, 1, EntryType.NO_OP) for i in range(first, upto + 1)])
        kv.put(b"k%d" % upto, b"v", 1, upto)
        kv.transact(lambda v: None, upto, 1)
        taken = kv.take_flush()
        assert taken is not None
        assert kv.write_flush(*taken, history=history)
        kv.flush_done(True)

    flush(2, [(1, b"a", b"1"), (1, b"b", None), (2, b"c", b"3")])
    assert kv.read_history(0, 10) == [(1, b"a", b"1"), (1, b"b", None), (2, b"c", b"3")]
    assert kv.read_history(1, 10) == [(2, b"c", b"3")]
    assert kv.read_history(0, 1) == [(1, b"a", b"1"), (1, b"b", None)]  # whole revisions
    flush(4, [(3, b"d", b"4"), (3, b"e", b"5"), (4, b"f", b"6")])
    # 6 changes, 5 kept: revision 1 goes whole (both its changes), the floor moves to it.
    assert kv.history_floor() == 1
    assert [c[0] for c in kv.read_history(0, 100)] == [2, 3, 3, 4]
    kv.close()
    store.close()
    store = LmdbStore.open(tmp_path / "h", node_id="n1", sync=False)
    kv = store.state()
    assert kv.history_floor() == 1 and len(kv.read_history(1, 100)) == 4  # durable, floor too
    kv.install(lambda: iter([(b"x", b"1", 1, 9, 0)]), 9, 2, None)
    assert kv.history_floor() == 9 and kv.read_history(0, 100) == []
    kv.close()
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=5), min_size=1, max_size=4),
       keep=st.integers(min_value=1, max_value=12))
def test_history_pruning_drops_the_oldest_whole_revisions_past_the_limit(
        tmp_path: Path, sizes: list[list[int]], keep: int) -> None:
    """Each flush writes revisions of the given sizes; the history then keeps the newest
    changes, at least `keep` of them, and drops only whole revisions (the model below)."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        store = LmdbStore.open(d, node_id="n1", sync=False, codec=Codec())
        try:
            kv = store.state()
            kv.history_keep = keep
            model: list[int] = []  # the revision of every change kept, oldest first
            floor = 0
            rev = 0
            for flush in sizes:
                history = []
                for n in flush:
                    rev += 1
                    history += [(rev, b"k%d" % i, b"v") for i in range(n)]
                model += [c[0] for c in history]
                kv.put(b"k", b"v", 1, rev)
                kv.transact(lambda v: None, rev, 1)
                taken = kv.take_flush()
                assert taken is not None and kv.write_flush(*taken, history=history)
                kv.flush_done(True)
                if len(model) > keep:
                    dropped = model[len(model) - keep - 1]
                    model = [r for r in model if r > dropped]
                    floor = dropped
                assert [c[0] for c in kv.read_history(0, 1000)] == model
                assert kv.history_floor() == floor
        finally:
            store.close()
