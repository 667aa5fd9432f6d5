"""storage.lmdb_store: every LogStore operation, its edges, restarts, safety checks, full disks."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import lmdb
import pytest

from aegis.log import (
    CompactedError,
    EntryType,
    HardState,
    LogEntry,
    LogIndex,
    LogInvariantError,
    LogStore,
    Membership,
    MemoryLogStore,
    SnapshotMeta,
    Term,
    UnavailableError,
)
from storage import LmdbStore, codec
from storage.env import is_disk_full
from storage.errors import CorruptionError, DataDirInUseError, DiskFullError, StorageError, WrongNodeError
from storage.meta import K_HARD_STATE, index_key

Opener = Callable[..., LmdbStore]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Opener]:
    """Open stores under tmp_path (default dir "n1", node "n1"); all closed at teardown."""
    opened: list[LmdbStore] = []

    def opener(name: str = "n1", **kw: Any) -> LmdbStore:
        kw.setdefault("node_id", "n1")
        store = LmdbStore.open(tmp_path / name, **kw)
        opened.append(store)
        return store

    yield opener
    for s in opened:
        s.close()


def E(i: int, term: int = 1, data: bytes | None = None, etype: EntryType = EntryType.COMMAND) -> LogEntry:
    payload = data if data is not None else b'{"op":"set","key":"k%d","value":"%s"}' % (i, b"v" * (i % 50))
    return LogEntry(LogIndex(i), Term(term), etype, payload, 1000.0 + i)


def run(lo: int, hi: int, term: int = 1) -> list[LogEntry]:
    return [E(i, term) for i in range(lo, hi + 1)]


def assert_same(store: LogStore, model: LogStore) -> None:
    assert store.first_index() == model.first_index()
    assert store.last_index() == model.last_index()
    assert store.snapshot() == model.snapshot()
    assert store.initial_state() == model.initial_state()
    lo, hi = model.first_index(), model.last_index()
    assert store.entries(lo, LogIndex(hi + 1)) == model.entries(lo, LogIndex(hi + 1))
    for i in range(model.snapshot().index, hi + 1):
        assert store.term(LogIndex(i)) == model.term(LogIndex(i))


def test_satisfies_the_protocol(open_store: Opener) -> None:
    assert isinstance(open_store(), LogStore)


def test_empty_log(open_store: Opener) -> None:
    s = open_store()
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(LogIndex(0)) == 0
    assert s.entries(LogIndex(1), LogIndex(1)) == []
    assert s.snapshot() == SnapshotMeta()
    assert s.initial_state() == (HardState(), Membership())
    assert s.snapshot_info() is None and s.open_snapshot() is None
    with pytest.raises(UnavailableError):
        s.term(LogIndex(1))
    with pytest.raises(UnavailableError):
        s.entries(LogIndex(1), LogIndex(2))
    with pytest.raises(CompactedError):
        s.entries(LogIndex(0), LogIndex(1))
    s.append([])
    s.truncate_suffix(LogIndex(1))
    assert s.last_index() == 0


def test_append_read_and_restart(open_store: Opener) -> None:
    s = open_store()
    entries = run(1, 50) + [E(51, 2, b"", EntryType.NO_OP), E(52, 2, os.urandom(3000), EntryType.CONFIG_CHANGE)]
    s.append(entries[:20])
    s.append(entries[20:])
    hs = HardState(Term(2), "n2", LogIndex(40))
    mem = Membership.of(["n1", "n2", "n3"], ["n4"], {"n1": "127.0.0.1:7001"})
    s.set_hard_state(hs)
    s.set_membership(mem)
    assert s.entries(LogIndex(1), LogIndex(53)) == entries
    s.close()
    s = open_store()
    assert (s.first_index(), s.last_index()) == (1, 52)
    assert s.entries(LogIndex(1), LogIndex(53)) == entries
    assert s.initial_state() == (hs, mem)
    assert [s.term(LogIndex(i)) for i in (0, 1, 51, 52)] == [0, 1, 2, 2]


def test_append_replaces_a_conflicting_suffix(open_store: Opener) -> None:
    s, model = open_store(cache_entries=4), MemoryLogStore()
    for store in (s, model):
        store.append(run(1, 10))
        store.append(run(6, 8, term=2))  # replaces 6..10 with 6..8
    assert_same(s, model)
    assert s.last_index() == 8 and s.term(LogIndex(8)) == 2
    s.append(run(9, 9, term=2))
    model.append(run(9, 9, term=2))
    s.append(run(1, 3, term=3))
    model.append(run(1, 3, term=3))
    assert_same(s, model)


def test_append_refuses_gaps_overlaps_and_holes(open_store: Opener) -> None:
    s = open_store()
    s.append(run(1, 5))
    with pytest.raises(LogInvariantError, match="gap"):
        s.append(run(7, 8))
    with pytest.raises(LogInvariantError, match="contiguous"):
        s.append([E(6), E(8)])
    w = s.begin_snapshot(SnapshotMeta(LogIndex(3), Term(1)))
    w.commit()
    with pytest.raises(LogInvariantError, match="overlaps the snapshot"):
        s.append(run(3, 4))
    with pytest.raises(LogInvariantError, match="into the snapshot"):
        s.truncate_suffix(LogIndex(3))
    assert s.entries(LogIndex(4), LogIndex(6)) == run(4, 5)


def test_truncate_suffix_edges(open_store: Opener) -> None:
    s, model = open_store(cache_entries=3), MemoryLogStore()
    for store in (s, model):
        store.append(run(1, 10))
        store.truncate_suffix(LogIndex(11))  # beyond the end: nothing
        store.truncate_suffix(LogIndex(10))  # the last one
    assert_same(s, model)
    for store in (s, model):
        store.truncate_suffix(LogIndex(4))  # reaches below the cache
    assert_same(s, model)
    for store in (s, model):
        store.truncate_suffix(LogIndex(1))  # everything
    assert_same(s, model)
    assert s.last_index() == 0
    s.close()
    s = open_store()
    assert_same(s, model)


@pytest.mark.parametrize(
    "meta_index, meta_term, expect_first, expect_last",
    [
        (5, 1, 6, 10),  # matching term: later entries kept
        (5, 9, 6, 5),  # term mismatch: the whole log goes
        (10, 1, 11, 10),  # compact to the last entry: empty log
        (15, 3, 16, 15),  # beyond the last entry: empty log after the snapshot
    ],
)
def test_compact_edges_and_restart(
    open_store: Opener, meta_index: int, meta_term: int, expect_first: int, expect_last: int
) -> None:
    s, model = open_store(cache_entries=2), MemoryLogStore()
    meta = SnapshotMeta(LogIndex(meta_index), Term(meta_term), Membership.of(["n1"]))
    for store in (s, model):
        store.append(run(1, 10))
        store.compact(meta)
        store.compact(SnapshotMeta(LogIndex(2), Term(1)))  # older: ignored
    assert (s.first_index(), s.last_index()) == (expect_first, expect_last)
    assert_same(s, model)
    with pytest.raises(CompactedError):
        s.term(LogIndex(meta_index - 1))
    with pytest.raises(CompactedError):
        s.entries(LogIndex(meta_index), LogIndex(meta_index + 1))
    s.close()
    s = open_store()
    assert s.first_index() == meta_index + 1
    assert_same(s, model)
    for store in (s, model):  # and the log goes on from there
        store.append(run(expect_last + 1, expect_last + 3, term=4))
    assert_same(s, model)


def test_write_batch_is_one_atomic_step(open_store: Opener) -> None:
    s, model = open_store(), MemoryLogStore()
    for store in (s, model):
        store.append(run(1, 10))
    hs = HardState(Term(3), "n3", LogIndex(5))
    mem = Membership.of(["n1", "n3"])
    s.write_batch(truncate_from=LogIndex(7), entries=run(7, 12, term=3), hard_state=hs, membership=mem)
    model.truncate_suffix(LogIndex(7))
    model.append(run(7, 12, term=3))
    model.set_hard_state(hs)
    model.set_membership(mem)
    assert_same(s, model)
    # a refused batch changes nothing, not even the hard state that came with it
    with pytest.raises(LogInvariantError):
        s.write_batch(truncate_from=LogIndex(5), entries=run(7, 8), hard_state=HardState(Term(9)))
    assert_same(s, model)
    # truncation point and entries may disagree: the lower one wins
    s.write_batch(truncate_from=LogIndex(11), entries=run(9, 9, term=4))
    model.append(run(9, 9, term=4))
    assert_same(s, model)
    s.write_batch()  # nothing to do
    s.close()
    assert_same(open_store(), model)


@pytest.mark.parametrize("cache_entries", [0, 5, 4096])
def test_entries_max_bytes_matches_the_model(open_store: Opener, cache_entries: int) -> None:
    s, model = open_store(cache_entries=cache_entries), MemoryLogStore()
    rng = random.Random(cache_entries)
    entries = [E(i, data=os.urandom(rng.randrange(0, 300))) for i in range(1, 41)]
    s.append(entries)
    model.append(entries)
    for _ in range(200):
        lo = rng.randrange(1, 41)
        hi = rng.randrange(lo, 42)
        mb = rng.choice([None, 0, 1, 100, 500, 2000])
        assert s.entries(LogIndex(lo), LogIndex(hi), mb) == model.entries(LogIndex(lo), LogIndex(hi), mb)
        recs = s.records(LogIndex(lo), LogIndex(hi), mb)
        assert [codec.unpack_entry(i, r) for i, r in recs] == model.entries(LogIndex(lo), LogIndex(hi), mb)


def test_records_ship_the_stored_bytes(open_store: Opener) -> None:
    s = open_store(cache_entries=0)
    s.append(run(1, 5))
    got = s.records(LogIndex(1), LogIndex(6))
    assert [i for i, _ in got] == [1, 2, 3, 4, 5]
    assert [codec.unpack_entry(i, r) for i, r in got] == run(1, 5)


def test_cache_is_bounded_and_open_does_not_scan(open_store: Opener) -> None:
    s = open_store(cache_entries=100, cache_bytes=1 << 20)
    for lo in range(1, 5001, 500):
        s.append(run(lo, lo + 499))
    stats = s.stats()
    assert 0 < int(stats["cached_entries"]) <= 100  # type: ignore[call-overload]
    assert s.entries(LogIndex(1), LogIndex(5001)) == run(1, 5000)
    s.close()
    s = open_store(cache_entries=10)
    assert s.stats()["cached_entries"] == 10
    assert (s.first_index(), s.last_index()) == (1, 5000)
    assert s.term(LogIndex(17)) == 1


def test_wrong_node_or_cluster_is_refused(open_store: Opener) -> None:
    open_store(node_id="n1", cluster="prod").close()
    with pytest.raises(WrongNodeError) as err:
        open_store(node_id="n2", cluster="prod")
    assert "'n1'" in str(err.value) and "'n2'" in str(err.value)
    with pytest.raises(WrongNodeError, match="'prod'.*'test'"):
        open_store(node_id="n1", cluster="test")
    open_store(node_id="n1", cluster="prod")


def test_a_data_dir_is_opened_once(open_store: Opener, tmp_path: Path) -> None:
    open_store()
    with pytest.raises(DataDirInUseError):
        open_store()
    with pytest.raises(StorageError, match="no data directory"):
        LmdbStore.open(tmp_path / "missing", node_id="n1", create=False)


def test_closed_store_refuses_use(open_store: Opener) -> None:
    s = open_store()
    s.append(run(1, 2))
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.append(run(3, 3))
    with pytest.raises(StorageError, match="closed"):
        s.term(LogIndex(1))


# --- corruption ------------------------------------------------------------------------------------
def flip_in_file(path: Path, needle: bytes, offset: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    pos = raw.find(needle)
    assert pos >= 0 and raw.find(needle, pos + 1) < 0, "needle must occur exactly once"
    raw[pos + offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_a_stored_entry_is_never_served(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    marker = os.urandom(200)  # incompressible: stored raw, so it can be found in the file
    s.append(run(1, 9) + [E(10, data=marker)] + run(11, 20))
    s.close()
    flip_in_file(tmp_path / "n1" / "data.mdb", marker, 100)
    s = open_store(cache_entries=0)  # not in the cache: read from disk
    assert s.entries(LogIndex(1), LogIndex(10)) == run(1, 9)
    for read in (
        lambda: s.entries(LogIndex(10), LogIndex(11)),
        lambda: s.entries(LogIndex(5), LogIndex(21)),
        lambda: s.records(LogIndex(10), LogIndex(11)),
    ):
        with pytest.raises(CorruptionError) as err:
            read()
        assert "log entry 10" in str(err.value) and str(tmp_path / "n1" / "data.mdb") in str(err.value)
    assert s.entries(LogIndex(11), LogIndex(21)) == run(11, 20)
    s.close()
    with pytest.raises(CorruptionError, match="log entry 10"):
        open_store(cache_entries=100)  # the tail is loaded (and verified) on open


def corrupt_via_lmdb(store_dir: Path, db: bytes, key: bytes, change: Callable[[bytes], bytes]) -> None:
    with lmdb.open(str(store_dir), max_dbs=4) as env:
        handle = env.open_db(db)
        with env.begin(write=True, db=handle) as txn:
            old = txn.get(key)
            assert old is not None
            txn.put(key, change(old))


def test_corrupted_compressed_record_and_term_lookup(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    s.append(run(1, 30))
    s.close()

    def flip_last(v: bytes) -> bytes:
        return v[:-1] + bytes([v[-1] ^ 0x80])

    corrupt_via_lmdb(tmp_path / "n1", b"log", index_key(12), flip_last)
    s = open_store(cache_entries=0)
    with pytest.raises(CorruptionError, match="log entry 12"):
        s.term(LogIndex(12))
    with pytest.raises(CorruptionError, match="log entry 12"):
        s.entries(LogIndex(12), LogIndex(13))


def test_corrupted_hard_state_is_reported(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    s.set_hard_state(HardState(Term(5), "n1", LogIndex(0)))
    s.close()
    corrupt_via_lmdb(tmp_path / "n1", b"meta", K_HARD_STATE, lambda v: v[:-1] + b"\x07")
    with pytest.raises(CorruptionError, match="hard state"):
        open_store()


def test_a_hole_in_the_log_is_reported_on_open(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    s.append(run(1, 10))
    s.close()
    with lmdb.open(str(tmp_path / "n1"), max_dbs=4) as env:
        with env.begin(write=True, db=env.open_db(b"log")) as txn:
            txn.delete(index_key(5))
    with pytest.raises(CorruptionError, match="holes"):
        open_store()


def test_log_not_starting_after_the_snapshot_point_is_reported(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    s.append(run(1, 10))
    s.close()
    with lmdb.open(str(tmp_path / "n1"), max_dbs=4) as env:
        with env.begin(write=True, db=env.open_db(b"log")) as txn:
            txn.delete(index_key(1))
    with pytest.raises(CorruptionError, match="starts at index 2"):
        open_store()


def test_commit_index_beyond_the_log_is_reported(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    s.append(run(1, 10))
    s.set_hard_state(HardState(Term(1), None, LogIndex(10)))
    s.close()
    with lmdb.open(str(tmp_path / "n1"), max_dbs=4) as env:
        with env.begin(write=True, db=env.open_db(b"log")) as txn:
            txn.delete(index_key(10))
    with pytest.raises(CorruptionError, match="committed but the log ends at 9"):
        open_store()


# --- map growth and full disks ------------------------------------------------------------------------
def test_map_grows_as_needed(open_store: Opener) -> None:
    s = open_store(map_size=1 << 20)
    big = [E(i, data=os.urandom(4000)) for i in range(1, 1501)]  # ~6 MB, incompressible
    for k in range(0, 1500, 100):
        s.append(big[k : k + 100])
    assert int(s.stats()["map_size"]) > 1 << 20  # type: ignore[call-overload]
    assert s.entries(LogIndex(1), LogIndex(1501)) == big


def test_headroom_falls_with_writes_and_comes_back_after_compaction(open_store: Opener) -> None:
    s = open_store(map_size=1 << 20, max_map_size=8 << 20)
    empty = s.headroom()
    assert 0 < empty <= 8 << 20
    s.append([E(i, data=os.urandom(4000)) for i in range(1, 501)])  # ~2 MB, incompressible
    full = s.headroom()
    assert empty - full > 1 << 20
    s.compact(SnapshotMeta(LogIndex(500), Term(1)))
    # The file's high-water mark stays; the pages in use (what the headroom counts) do not.
    assert s.headroom() > full + (1 << 20)
    assert int(s.stats()["used_bytes"]) > int(s.stats()["live_bytes"])  # type: ignore[call-overload]


def test_disk_full_stops_writes_and_corrupts_nothing(open_store: Opener) -> None:
    s = open_store(map_size=1 << 20, max_map_size=2 << 20)
    acked: list[LogEntry] = []
    i = 1
    with pytest.raises(DiskFullError, match="full") as err:
        while True:
            batch = [E(j, data=os.urandom(1000)) for j in range(i, i + 20)]
            s.append(batch)
            acked += batch
            i += 20
    assert "max_map_size" in str(err.value)
    assert len(acked) > 100
    # every later write is refused with the same clear error; reads still work
    for write in (
        lambda: s.append([E(i)]),
        lambda: s.set_hard_state(HardState(Term(2))),
        lambda: s.begin_snapshot(SnapshotMeta(LogIndex(1), Term(1))),
    ):
        with pytest.raises(DiskFullError, match="full"):
            write()
    assert s.last_index() == len(acked)
    assert s.entries(LogIndex(1), LogIndex(len(acked) + 1)) == acked
    s.close()
    s = open_store(max_map_size=64 << 20)
    assert s.entries(LogIndex(1), LogIndex(len(acked) + 1)) == acked
    s.append([E(len(acked) + 1)])  # reopened with room: writes again


def test_enospc_is_a_disk_full_error(open_store: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_disk_full(lmdb.DiskError("mdb_txn_commit", 28))
    assert not is_disk_full(lmdb.Error("something else"))
    s = open_store()
    s.append(run(1, 3))

    def no_space(body: Any) -> None:
        raise lmdb.DiskError("mdb_txn_commit: No space left on device", 28)

    monkeypatch.setattr(s._e, "_run_txn", no_space)
    with pytest.raises(DiskFullError, match="no space left"):
        s.append(run(4, 4))
    monkeypatch.undo()
    with pytest.raises(DiskFullError):
        s.append(run(4, 4))
    assert s.last_index() == 3


def test_unsafe_no_sync_mode_still_persists_on_close(open_store: Opener) -> None:
    s = open_store(sync=False)
    assert s.sync_writes is False
    s.append(run(1, 100))
    s.sync()
    s.append(run(101, 120))
    s.close()
    assert open_store().entries(LogIndex(1), LogIndex(121)) == run(1, 120)


def test_readers_in_other_threads_while_writing(open_store: Opener) -> None:
    """The driver writes (fsync in a worker thread) while the event loop reads."""
    s = open_store(cache_entries=50, map_size=1 << 20)
    s.append(run(1, 10))
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        rng = random.Random()
        try:
            while not stop.is_set():
                first, last = s.first_index(), s.last_index()
                if last < first:
                    continue
                lo = rng.randrange(first, last + 1)
                try:
                    got = s.entries(LogIndex(lo), LogIndex(min(last, lo + 20) + 1))
                    assert all(e.index == lo + k for k, e in enumerate(got))
                    s.term(LogIndex(rng.randrange(first, last + 1)))
                except CompactedError:
                    pass  # compacted between the two calls: fine
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for lo in range(11, 3000, 50):
            s.append([E(i, data=os.urandom(400)) for i in range(lo, lo + 50)])  # forces map growth too
            if lo % 500 == 11:
                s.compact(SnapshotMeta(LogIndex(lo - 100), Term(1)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]


class CountingCodec(codec.Codec):
    compressions = 0

    def compress_payload(self, data: bytes) -> tuple[int, int, bytes]:
        self.compressions += 1
        return super().compress_payload(data)


def test_replication_ships_stored_bytes_end_to_end(open_store: Opener) -> None:
    """Leader store -> transport payload hooks -> follower store: same records, one compression."""
    leader_codec, follower_codec = codec.Codec(), CountingCodec()
    leader = open_store("leader", codec=leader_codec)
    follower = open_store("follower", node_id="n2", codec=follower_codec)
    entries = [E(i, data=b'{"op": "set", "key": "user:%d", "value": "%s"}' % (i, b"abc" * (i % 40))) for i in range(1, 201)]
    leader.append(entries)
    wire = [(e.index, e.term, e.type, e.timestamp, leader_codec.pack_payload(e)) for e in entries]
    received = [LogEntry(i, t, ty, follower_codec.unpack_payload(p), ts) for i, t, ty, ts, p in wire]
    follower.append(received)
    assert follower_codec.compressions == 0
    assert follower.records(LogIndex(1), LogIndex(201)) == leader.records(LogIndex(1), LogIndex(201))
    assert follower.entries(LogIndex(1), LogIndex(201)) == entries


def test_another_process_cannot_open_the_same_data_dir(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from storage import LmdbStore; "
        "s = LmdbStore.open(sys.argv[1], node_id='n1'); print('open', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "n1")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"open\n"
        with pytest.raises(DataDirInUseError, match="in use"):
            LmdbStore.open(tmp_path / "n1", node_id="n1")
    finally:
        child.kill()
        child.wait()
        for f in (child.stdin, child.stdout):
            if f is not None:
                f.close()
    LmdbStore.open(tmp_path / "n1", node_id="n1").close()  # the lock died with the process
