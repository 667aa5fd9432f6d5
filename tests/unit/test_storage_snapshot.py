"""storage.snapshot: streamed snapshots in the store, atomic install, restarts, backup files."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import lmdb
import pytest

from aegis.log import HardState, LogEntry, LogIndex, Membership, SnapshotMeta, Term
from storage import (
    CorruptionError,
    LmdbStore,
    SnapshotError,
    SnapshotSupersededError,
    read_snapshot_file,
    read_snapshot_file_info,
    write_snapshot_file,
)
from storage.meta import K_SNAPSHOT, seal, unseal

Opener = Callable[..., LmdbStore]
MEMBERS = Membership.of(["n1", "n2", "n3"], [], {"n2": "10.0.0.2:7002"})


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Opener]:
    opened: list[LmdbStore] = []

    def opener(name: str = "n1", **kw: Any) -> LmdbStore:
        kw.setdefault("node_id", "n1")
        kw.setdefault("snapshot_chunk_size", 4096)  # many chunks from small data
        store = LmdbStore.open(tmp_path / name, **kw)
        opened.append(store)
        return store

    yield opener
    for s in opened:
        s.close()


def E(i: int, term: int = 1) -> LogEntry:
    return LogEntry(LogIndex(i), Term(term), data=b"entry %d" % i)


def state_bytes(seed: int, n: int = 200_000) -> bytes:
    """Compressible but not trivially so: what a KV state machine might serialise."""
    rng = random.Random(seed)
    return b"".join(b"key%06d=%s;" % (k, rng.choice([b"alpha", b"beta", os.urandom(6).hex().encode()])) for k in range(n // 16))


def pieces(data: bytes, size: int = 10_000) -> Iterator[bytes]:
    for k in range(0, len(data), size):
        yield data[k : k + size]


def install(store: LmdbStore, index: int, term: int, data: bytes, **kw: Any) -> None:
    with store.begin_snapshot(SnapshotMeta(LogIndex(index), Term(term), MEMBERS)) as w:
        for p in pieces(data):
            w.write(p)
        w.commit(**kw)


def snap_keys(store: LmdbStore) -> list[tuple[int, int]]:
    with store._env.begin(db=store._snap_db) as txn:
        return [struct.unpack(">QI", k) for k, _ in txn.cursor()]


def test_write_read_roundtrip_in_chunks_and_after_restart(open_store: Opener) -> None:
    s = open_store()
    data = state_bytes(1)
    install(s, 0, 0, data)
    info = s.snapshot_info()
    assert info is not None
    assert (info.index, info.term, info.membership) == (0, 0, MEMBERS)
    assert info.size == len(data) and info.checksum == hashlib.sha256(data).hexdigest()
    assert info.chunks > 3 and info.stored_size < len(data)
    reader = s.open_snapshot()
    assert reader is not None
    got = list(reader)
    assert b"".join(got) == data and max(len(g) for g in got) <= 1 << 18
    s.close()
    s = open_store()
    assert s.snapshot_info() == info
    reader = s.open_snapshot()
    assert reader is not None and reader.read_all() == data


def test_empty_snapshot(open_store: Opener) -> None:
    s = open_store()
    s.begin_snapshot(SnapshotMeta()).commit()
    reader = s.open_snapshot()
    assert reader is not None and reader.read_all() == b"" and reader.info.size == 0


@pytest.mark.parametrize(
    "index, term, first, last",
    [(6, 1, 7, 10), (6, 2, 7, 6), (10, 1, 11, 10), (14, 2, 15, 14)],
)
def test_commit_compacts_the_log(open_store: Opener, index: int, term: int, first: int, last: int) -> None:
    s = open_store()
    s.append([E(i) for i in range(1, 11)])
    install(s, index, term, b"state")
    assert (s.first_index(), s.last_index()) == (first, last)
    assert s.snapshot() == SnapshotMeta(LogIndex(index), Term(term), MEMBERS)
    assert s.term(LogIndex(index)) == term
    s.close()
    s = open_store()
    assert (s.first_index(), s.last_index()) == (first, last)  # snapshot-then-restart
    assert s.entries(LogIndex(first), LogIndex(last + 1)) == [E(i) for i in range(first, last + 1)]


def test_commit_without_compaction_keeps_the_log(open_store: Opener) -> None:
    s = open_store()
    s.append([E(i) for i in range(1, 11)])
    with s.begin_snapshot(SnapshotMeta(LogIndex(8), Term(1)), compact=False) as w:
        w.write(b"x")
        w.commit()
    assert (s.first_index(), s.last_index()) == (1, 10)
    s.compact(SnapshotMeta(LogIndex(5), Term(1)))  # the driver keeps a few entries trailing
    assert (s.first_index(), s.last_index()) == (6, 10)


def test_commit_sets_hard_state_and_membership_in_the_same_step(open_store: Opener) -> None:
    s = open_store()
    hs = HardState(Term(4), "n2", LogIndex(20))
    install(s, 20, 3, b"state", hard_state=hs, membership=MEMBERS)
    assert s.initial_state() == (hs, MEMBERS)
    s.close()
    assert open_store().initial_state() == (hs, MEMBERS)


def test_previous_snapshot_is_kept_until_the_new_one_commits(open_store: Opener) -> None:
    s = open_store()
    old = state_bytes(2)
    install(s, 5, 1, old)
    old_info = s.snapshot_info()
    w = s.begin_snapshot(SnapshotMeta(LogIndex(9), Term(1)))
    for p in pieces(state_bytes(3)):
        w.write(p)
    assert s.snapshot_info() == old_info
    reader = s.open_snapshot()
    assert reader is not None and reader.read_all() == old
    w.cancel()
    w.cancel()
    assert s.snapshot_info() == old_info
    assert {sid for sid, _ in snap_keys(s)} == {old_info.snapshot_id}  # type: ignore[union-attr]
    new = state_bytes(4)
    install(s, 9, 1, new)
    info = s.snapshot_info()
    assert info is not None and info.index == 9
    assert {sid for sid, _ in snap_keys(s)} == {info.snapshot_id}  # the old chunks are gone


def test_writer_cancels_on_error_and_refuses_use_after_commit(open_store: Opener) -> None:
    s = open_store()
    with pytest.raises(RuntimeError):
        with s.begin_snapshot(SnapshotMeta(LogIndex(3), Term(1))) as w:
            w.write(state_bytes(5))
            raise RuntimeError("state machine failed")
    assert s.snapshot_info() is None and snap_keys(s) == []
    w = s.begin_snapshot(SnapshotMeta(LogIndex(3), Term(1)))
    w.commit()
    with pytest.raises(SnapshotError):
        w.write(b"more")
    with pytest.raises(SnapshotError):
        w.commit()


def test_stale_snapshots_are_refused(open_store: Opener) -> None:
    s = open_store()
    slow = s.begin_snapshot(SnapshotMeta(LogIndex(5), Term(1)))
    slow.write(b"old state")
    install(s, 8, 1, b"newer state")
    with pytest.raises(SnapshotError, match="older"):
        slow.commit()
    with pytest.raises(SnapshotError, match="older"):
        s.begin_snapshot(SnapshotMeta(LogIndex(7), Term(1)))
    reader = s.open_snapshot()
    assert reader is not None and reader.read_all() == b"newer state"
    assert {sid for sid, _ in snap_keys(s)} == {reader.info.snapshot_id}


def test_a_reader_of_a_replaced_snapshot_is_told(open_store: Opener) -> None:
    s = open_store()
    install(s, 5, 1, state_bytes(6))
    reader = s.open_snapshot()
    assert reader is not None
    it = iter(reader.raw_chunks())
    next(it)
    install(s, 6, 1, b"newer")
    with pytest.raises(SnapshotSupersededError):
        list(it)


def test_restart_after_every_step_of_installing_a_snapshot(open_store: Opener, tmp_path: Path) -> None:
    """A crash at any step leaves the old snapshot and log, or the new ones: nothing between."""
    base = open_store("base")
    base.append([E(i) for i in range(1, 21)])
    old = state_bytes(7, 20_000)
    install(base, 10, 1, old)
    base.set_hard_state(HardState(Term(1), None, LogIndex(12)))
    base.close()
    new = state_bytes(8, 500_000)
    steps = list(pieces(new, 100_000))
    orphans_seen = 0
    for crash_after in range(len(steps) + 2):  # 0 = right after begin; len+1 = after commit
        name = f"step{crash_after}"
        shutil.copytree(tmp_path / "base", tmp_path / name)
        s = open_store(name)
        w = s.begin_snapshot(SnapshotMeta(LogIndex(15), Term(1), MEMBERS))
        for p in steps[:crash_after]:
            w.write(p)
        if crash_after == len(steps) + 1:
            w.commit(hard_state=HardState(Term(1), None, LogIndex(15)))
        orphans_seen += any(sid == w.snapshot_id for sid, _ in snap_keys(s)) and crash_after <= len(steps)
        s.close()  # a crash: the writer is abandoned, never cancelled
        s = open_store(name)
        reader = s.open_snapshot()
        assert reader is not None
        if crash_after <= len(steps):
            assert (reader.info.index, s.first_index(), s.last_index()) == (10, 11, 20)
            assert reader.read_all() == old
            assert s.initial_state()[0].commit_index == 12
        else:
            assert (reader.info.index, s.first_index(), s.last_index()) == (15, 16, 20)
            assert reader.read_all() == new
            assert s.initial_state()[0].commit_index == 15
        assert s.entries(s.first_index(), LogIndex(21)) == [E(i) for i in range(s.first_index(), 21)]
        assert {sid for sid, _ in snap_keys(s)} == {reader.info.snapshot_id}  # orphans removed
        install(s, 16, 1, b"and it goes on")  # a fresh id does not collide with orphans
        s.close()
    assert orphans_seen >= 2  # crashes did happen with chunks of the new snapshot on disk


# --- corruption ----------------------------------------------------------------------------------------
def _edit_chunk(store_dir: Path, chunk_no: int, change: Callable[[bytes], bytes]) -> None:
    with lmdb.open(str(store_dir), max_dbs=4) as env:
        db = env.open_db(b"snap")
        with env.begin(write=True, db=db) as txn:
            keys = [k for k, _ in txn.cursor()]
            key = [k for k in keys if struct.unpack(">QI", k)[1] == chunk_no][0]
            old = txn.get(key)
            assert old is not None
            txn.put(key, change(old))


def test_flipped_byte_in_a_snapshot_chunk_is_never_served(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    data = state_bytes(9)
    install(s, 3, 1, data)
    info = s.snapshot_info()
    assert info is not None and info.chunks > 4
    s.close()
    _edit_chunk(tmp_path / "n1", 3, lambda v: v[:100] + bytes([v[100] ^ 0x10]) + v[101:])
    s = open_store()
    reader = s.open_snapshot()
    assert reader is not None
    served = bytearray()
    with pytest.raises(CorruptionError) as err:
        for p in reader:
            served += p
    assert "chunk 3" in str(err.value) and str(tmp_path / "n1") in str(err.value)
    assert data.startswith(bytes(served))  # what was handed out before the error is right


def test_wrong_digest_is_caught_at_the_end(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    install(s, 3, 1, b"the state")
    s.close()
    with lmdb.open(str(tmp_path / "n1"), max_dbs=4) as env:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            raw = txn.get(K_SNAPSHOT)
            assert raw is not None
            obj = unseal(raw, "snapshot", None)
            obj["checksum"] = hashlib.sha256(b"another state").hexdigest()
            txn.put(K_SNAPSHOT, seal(obj))
    s = open_store()
    reader = s.open_snapshot()
    assert reader is not None
    with pytest.raises(CorruptionError, match="does not match its checksum"):
        reader.read_all()


def test_a_missing_chunk_is_reported_on_open(open_store: Opener, tmp_path: Path) -> None:
    s = open_store()
    install(s, 3, 1, state_bytes(10))
    s.close()
    with lmdb.open(str(tmp_path / "n1"), max_dbs=4) as env:
        db = env.open_db(b"snap")
        with env.begin(write=True, db=db) as txn:
            cur = txn.cursor()
            assert cur.last()
            cur.delete()
    with pytest.raises(CorruptionError, match="missing chunk"):
        open_store()


def test_write_compressed_verifies_the_stream(open_store: Opener, tmp_path: Path) -> None:
    src = open_store("src")
    data = state_bytes(11)
    install(src, 7, 2, data)
    reader = src.open_snapshot()
    assert reader is not None
    raw = list(reader.raw_chunks())
    dst = open_store("dst")
    with dst.begin_snapshot(reader.info.meta) as w:  # as a follower receiving the leader's stream
        for chunk in raw:
            w.write_compressed(chunk)
        info = w.commit(expect_checksum=reader.info.checksum)
    assert info.checksum == reader.info.checksum and info.size == len(data)
    out = dst.open_snapshot()
    assert out is not None and out.read_all() == data
    # garbage, or a stream that does not match what the sender announced, is refused
    with pytest.raises(CorruptionError):
        with dst.begin_snapshot(SnapshotMeta(LogIndex(9), Term(2))) as w:
            w.write_compressed(b"\x28\xb5\x2f\xfd" + os.urandom(100))
    with pytest.raises(CorruptionError, match="expected checksum"):
        with dst.begin_snapshot(SnapshotMeta(LogIndex(9), Term(2))) as w:
            for chunk in raw:
                w.write_compressed(chunk)
            w.commit(expect_checksum=hashlib.sha256(b"other").hexdigest())
    assert dst.snapshot_info() == info


# --- backup files --------------------------------------------------------------------------------------
def test_snapshot_file_roundtrip(tmp_path: Path) -> None:
    data = state_bytes(12)
    meta = SnapshotMeta(LogIndex(42), Term(7), MEMBERS)
    path = tmp_path / "backup.snap"
    info = write_snapshot_file(path, meta, pieces(data), chunk_size=4096, created=1234.5)
    assert read_snapshot_file_info(path) == info
    assert (info.index, info.term, info.membership, info.size, info.created) == (42, 7, MEMBERS, len(data), 1234.5)
    assert info.checksum == hashlib.sha256(data).hexdigest() and info.chunks > 3
    with read_snapshot_file(path) as f:
        assert f.info == info
        assert f.read_all() == data
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


def test_export_and_install_between_stores(open_store: Opener, tmp_path: Path) -> None:
    src = open_store("src")
    data = state_bytes(13)
    install(src, 30, 4, data)
    path = tmp_path / "backup.snap"
    info = src.export_snapshot(path)
    assert info.checksum == hashlib.sha256(data).hexdigest()
    dst = open_store("dst", node_id="n9")
    dst.append([E(i) for i in range(1, 40)])
    hs = HardState(Term(4), None, LogIndex(30))
    got = dst.install_snapshot_file(path, hard_state=hs, membership=MEMBERS)
    assert (got.index, got.term, got.checksum) == (30, 4, info.checksum)
    assert (dst.first_index(), dst.last_index()) == (31, 30)  # term 4 at 30 does not match: log dropped
    assert dst.initial_state() == (hs, MEMBERS)
    reader = dst.open_snapshot()
    assert reader is not None and reader.read_all() == data
    with pytest.raises(SnapshotError, match="no snapshot"):
        open_store("empty", node_id="n5").export_snapshot(tmp_path / "none.snap")


def test_corrupted_snapshot_files_give_a_clear_error(tmp_path: Path) -> None:
    data = state_bytes(14, 60_000)
    path = tmp_path / "backup.snap"
    write_snapshot_file(path, SnapshotMeta(LogIndex(3), Term(1), MEMBERS), pieces(data), chunk_size=4096)
    good = path.read_bytes()
    rng = random.Random(14)
    positions = list(range(0, 120)) + rng.sample(range(120, len(good)), 60) + list(range(len(good) - 8, len(good)))
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x04
        path.write_bytes(bytes(bad))
        served = bytearray()
        with pytest.raises(CorruptionError) as err:
            with read_snapshot_file(path) as f:
                for p in f:
                    served += p
        assert str(path) in str(err.value)
        assert data.startswith(bytes(served))
    for bad_bytes in (good[:-3], good[:200], good + b"extra", b"", b"NOTASNAP" + good[8:]):
        path.write_bytes(bad_bytes)
        with pytest.raises(CorruptionError):
            with read_snapshot_file(path) as f:
                f.read_all()
