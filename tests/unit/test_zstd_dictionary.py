"""zstd dictionaries shipped through the log (aegis.zdict, storage): codec, store, state, snapshot.

Claims: a node without a dictionary never receives a record compressed with it (the
leader's packer repacks); a DICTIONARY entry's own record never needs a dictionary; the
store keeps a dictionary with its entry, forgets it when the entry is truncated, and
registers every dictionary on open before it reads a record; state values and the feed's
history are compressed with the active dictionary, and old raw records still read;
snapshots (files and installs) carry the dictionaries.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import pytest

from aegis.log import EntryType, HardState, LogEntry, LogIndex, Membership, SnapshotMeta, Term
from aegis.messages import AppendEntriesRequest
from aegis.state import StateMachine, encode_batch
from aegis.transport import CodecError, decode, encode
from aegis.zdict import Sampler, ZDict, ZDictConfig, evaluate, train
from storage import (
    Codec,
    CorruptionError,
    LmdbStore,
    StorageError,
    decode_dictionary_entry,
    encode_dictionary_entry,
    read_snapshot_file_info,
    write_snapshot_file,
)
from storage.kv import decode_record, encode_record
from storage.meta import zdict_key

MEMBERS = Membership.of(["n1", "n2", "n3"])


def doc(rng: random.Random, i: int) -> bytes:
    d = {"id": i, "user": f"user{rng.randrange(100_000)}", "email": f"u{rng.randrange(10**6)}@example.com",
         "active": rng.random() < 0.5, "score": round(rng.random() * 1000, 2),
         "tags": rng.sample(["alpha", "beta", "gamma", "delta"], rng.randrange(1, 4)),
         "address": {"city": rng.choice(["Paris", "Berlin", "Oslo"]), "zip": str(rng.randrange(10**4, 10**5))}}
    return json.dumps(d, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    rng = random.Random(1)
    raw = train([doc(rng, i) for i in range(3000)], 16 << 10)
    assert raw is not None
    return raw


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Any]:
    opened: list[LmdbStore] = []

    def opener(name: str = "n1", codec: Codec | None = None) -> LmdbStore:
        s = LmdbStore.open(tmp_path / name, node_id=name, codec=codec if codec is not None else Codec())
        opened.append(s)
        return s

    yield opener
    for s in opened:
        s.close()


def dict_entry(index: int, raw: bytes, term: int = 1) -> LogEntry:
    return LogEntry(LogIndex(index), Term(term), EntryType.DICTIONARY, encode_dictionary_entry(raw), 1.0)


def value_entry(index: int, value: bytes, term: int = 1) -> LogEntry:
    """A small COMMAND entry (one SET): small enough that a dictionary matters."""
    import msgpack

    return LogEntry(LogIndex(index), Term(term), EntryType.COMMAND,
                    msgpack.packb([1, b"k%d" % index, value], use_bin_type=True), 1.0)


# --- the codec and the wire -----------------------------------------------------------------------

def test_a_peer_without_the_dictionary_gets_a_record_it_can_decode(dictionary: bytes) -> None:
    leader = Codec()
    dict_id = leader.add_dictionary(dictionary, activate=True)
    follower = Codec()  # holds no dictionary
    e = value_entry(5, doc(random.Random(2), 5))
    shipped = leader.pack_payload(e)  # as stored: compressed with the dictionary
    assert shipped[0] & 0x02
    with pytest.raises(StorageError, match="dictionary"):
        follower.unpack_payload(shipped)
    asked: list[int] = []
    repacked = leader.pack_payload(e, lambda d: asked.append(d) or False)
    assert asked == [dict_id] and not repacked[0] & 0x02
    assert follower.unpack_payload(repacked) == e.data
    # ... and a peer known to hold it gets the stored bytes as they are.
    assert leader.pack_payload(e, lambda d: True) == shipped


def test_the_transport_packer_per_peer_never_sends_a_dictionary_record_to_a_peer_without_it(
        dictionary: bytes) -> None:
    leader = Codec()
    leader.add_dictionary(dictionary, activate=True)
    entries = tuple(value_entry(i, doc(random.Random(i), i)) for i in range(3, 8))
    msg = AppendEntriesRequest(term=Term(1), leader_id="n1", prev_log_index=LogIndex(2), prev_log_term=Term(1),
                               entries=entries, leader_commit=LogIndex(2), receiver="n2")
    bare = Codec()
    wire = encode(msg, lambda e: leader.pack_payload(e, lambda d: False))
    got = decode(wire, bare.unpack_payload)
    assert isinstance(got, AppendEntriesRequest) and [e.data for e in got.entries] == [e.data for e in entries]
    with pytest.raises(CodecError, match="dictionary"):
        decode(encode(msg, lambda e: leader.pack_payload(e, lambda d: True)), bare.unpack_payload)


def test_a_dictionary_entry_is_never_compressed_with_a_dictionary(dictionary: bytes) -> None:
    c = Codec()
    c.add_dictionary(dictionary, activate=True)
    other = random.Random(3)
    second = train([doc(other, i) + b"x" * 40 for i in range(3000)], 8 << 10)
    assert second is not None
    record = c.pack_entry(dict_entry(9, second))
    assert not record[2] & 0x02  # flags: no dictionary
    assert Codec().unpack_entry(9, record).data == encode_dictionary_entry(second)


def test_dictionary_entry_payloads_are_checked() -> None:
    with pytest.raises(ValueError):
        encode_dictionary_entry(b"not a dictionary")
    with pytest.raises(ValueError):
        decode_dictionary_entry(b"\x01garbage")
    with pytest.raises(ValueError):
        decode_dictionary_entry(b"")


def test_training_pays_on_json_and_refuses_random_bytes() -> None:
    rng = random.Random(4)
    values = [doc(rng, i) for i in range(3000)]
    raw = train(values, 16 << 10)
    assert raw is not None
    c = Codec()
    c.add_dictionary(raw, activate=True)
    held = values[::7]
    assert evaluate(c, held) < 0.45 * sum(map(len, held))  # about a third of the size, or better
    assert train([os.urandom(200) for _ in range(3000)], 16 << 10) is None
    assert train(values[:10], 16 << 10) is None  # too few to train on


def test_the_sampler_is_bounded_and_keeps_recent_small_values() -> None:
    s = Sampler(capacity=100, stride=1)
    s([(b"x" * 100, 1, 1, 0)] * 50 + [None, (b"tiny", 1, 1, 0), (b"y" * 10_000, 1, 1, 0)])
    s([(b"z" * 100, 1, 1, 0)] * 80)
    got = s.samples()
    assert len(got) == 100 and got[-1] == b"z" * 100 and s.seen == 130


# --- the store -----------------------------------------------------------------------------------

def test_the_store_keeps_a_dictionary_with_its_entry_and_loads_it_before_reading_the_log(
        stores: Any, dictionary: bytes) -> None:
    s = stores("n1")
    entries = [dict_entry(1, dictionary)]
    s.write_batch(entries=entries)
    dict_id = decode_dictionary_entry(entries[0].data)[0]
    assert s.dictionary_index(dict_id) == 1 and s.codec.has_dictionary(dict_id)
    s.codec.use_dictionary(dict_id)  # applied: the node compresses with it now
    rng = random.Random(5)
    tail = [value_entry(i, doc(rng, i)) for i in range(2, 40)]
    s.write_batch(entries=tail, hard_state=HardState(Term(1), None, LogIndex(39)))
    assert all(r[2] & 0x02 for _, r in s.records(LogIndex(2), LogIndex(40)))
    s.close()
    # A fresh process (a fresh codec): the dictionary is registered before the tail is read.
    again = stores("n1", Codec())
    assert again.codec.has_dictionary(dict_id)
    assert [e.data for e in again.entries(LogIndex(2), LogIndex(40))] == [e.data for e in tail]
    assert again.codec.active_dictionary is None
    assert again.activate_committed() == dict_id  # the hard state says index 1 is committed


def test_truncating_an_uncommitted_dictionary_entry_forgets_its_dictionary(stores: Any, dictionary: bytes) -> None:
    s = stores("n1")
    s.write_batch(entries=[value_entry(1, b"a" * 60), dict_entry(2, dictionary)])
    dict_id = decode_dictionary_entry(encode_dictionary_entry(dictionary))[0]
    assert s.dictionary_index(dict_id) == 2
    s.write_batch(truncate_from=LogIndex(2), entries=[value_entry(2, b"b" * 60, term=2)])
    assert s.dictionary_index(dict_id) is None and not s.codec.has_dictionary(dict_id)
    assert s.activate_committed(10) is None
    s.close()
    assert not stores("n1", Codec()).codec.has_dictionary(dict_id)


def test_the_dictionary_in_use_survives_a_truncation_after_it(stores: Any, dictionary: bytes) -> None:
    s = stores("n1")
    s.write_batch(entries=[dict_entry(1, dictionary), value_entry(2, b"a" * 60)])
    dict_id = s.activate_committed(1)
    assert dict_id is not None
    s.write_batch(truncate_from=LogIndex(1), entries=[value_entry(1, b"c" * 60, term=2)])
    assert s.codec.has_dictionary(dict_id)  # in use: never dropped (it was committed)


def test_restart_uses_the_newest_committed_dictionary_at_once(stores: Any, dictionary: bytes, tmp_path: Path) -> None:
    s = stores("n1")
    s.write_batch(entries=[dict_entry(1, dictionary), value_entry(2, b"x" * 80)],
                  hard_state=HardState(Term(1), None, LogIndex(2)))
    s.close()
    store = stores("n1", Codec())
    zd = ZDict(ZDictConfig(), store, applied=0)
    assert zd.codec.active_dictionary == decode_dictionary_entry(encode_dictionary_entry(dictionary))[0]
    assert zd.info()["zstd_dict_bytes"] == len(dictionary) and zd.info()["zstd_dict_index"] == 1
    store.close()
    off = ZDict(ZDictConfig(mode="off"), stores("n1", Codec()), applied=2)
    assert off.codec.active_dictionary is None and off.info()["zstd_dict_id"] == 0


def test_applying_a_dictionary_entry_activates_it_only_in_auto_mode(stores: Any, dictionary: bytes) -> None:
    for mode in ("auto", "off"):
        s = stores(f"n-{mode}")
        zd = ZDict(ZDictConfig(mode=mode), s, applied=0)
        e = dict_entry(1, dictionary)
        s.write_batch(entries=[e])
        assert zd.codec.active_dictionary is None  # appended, not applied: not used yet
        zd.applied([e])
        assert (zd.codec.active_dictionary is not None) == (mode == "auto")


# --- the state's values ----------------------------------------------------------------------------

def test_state_values_are_compressed_with_the_dictionary_and_raw_records_still_read(dictionary: bytes) -> None:
    c = Codec()
    value = doc(random.Random(6), 1)
    raw = encode_record(b"k", value, 3, 9)
    assert encode_record(b"k", value, 3, 9, codec=c) == raw  # no dictionary active: as before
    c.add_dictionary(dictionary, activate=True)
    packed = encode_record(b"k", value, 3, 9, 1_700_000_000_000, codec=c)
    assert len(packed) < len(raw) * 0.6
    assert decode_record(b"k", packed, codec=c) == (value, 3, 9, 1_700_000_000_000)
    assert decode_record(b"k", raw, codec=c) == (value, 3, 9, 0)
    with pytest.raises(CorruptionError, match="dictionary"):
        decode_record(b"k", packed)  # a node without it reports, never serves garbage
    flipped = bytearray(packed)
    flipped[-3] ^= 1
    with pytest.raises(CorruptionError):
        decode_record(b"k", bytes(flipped), codec=c)
    assert encode_record(b"k", b"short", 1, 1, codec=c)[-5:] == b"short"  # short values stay raw


def state_with_dictionary(stores: Any, dictionary: bytes) -> tuple[Any, Any, StateMachine]:
    """Node n1's store with `dictionary` committed and active, its state (history kept) and
    a state machine over it."""
    s = stores("n1")
    s.write_batch(entries=[dict_entry(1, dictionary)], hard_state=HardState(Term(1), None, LogIndex(1)))
    s.activate_committed()
    kv = s.state()
    kv.history_keep = 1000
    return s, kv, StateMachine(backend=kv)


def test_the_state_database_stores_compressed_values_and_reads_them_after_a_restart(
        stores: Any, dictionary: bytes) -> None:
    import msgpack

    s, kv, sm = state_with_dictionary(stores, dictionary)
    rng = random.Random(7)
    values = {b"key%d" % i: doc(rng, i) for i in range(300)}
    payloads = [msgpack.packb([1, k, v], use_bin_type=True) for k, v in values.items()]
    entry = LogEntry(LogIndex(2), Term(1), EntryType.BATCH, encode_batch(payloads), 1.0)
    s.write_batch(entries=[entry], hard_state=HardState(Term(1), None, LogIndex(2)))
    sm.apply_entries([entry])
    flush = kv.take_flush()
    assert flush is not None
    assert kv.write_flush(*flush, history=[(2, k, v) for k, v in values.items()])
    kv.flush_done()
    with kv._env.begin(db=kv._db) as txn:
        stored = sum(len(v) for _, v in txn.cursor())
    assert stored < 0.6 * sum(len(v) + 20 for v in values.values())
    s.close()
    again = stores("n1", Codec())
    kv2 = again.state()
    assert all(kv2.get(k) is not None and kv2.get(k)[0] == v for k, v in values.items())  # type: ignore[index]
    assert {k: v for _, k, v in kv2.read_history(0, 1000)} == values
    with kv2.open_export() as export:
        assert {k: v for k, v, *_ in export.records()} == values


def test_a_flush_compresses_each_value_once_for_its_record_and_its_history(
        stores: Any, dictionary: bytes, monkeypatch: Any) -> None:
    """A key set twice before a flush: two history entries, one record, every one of them
    reading back its own value; the record and the history entry of the last value share
    one compression."""
    import msgpack

    s, kv, sm = state_with_dictionary(stores, dictionary)
    rng = random.Random(8)
    first, second = doc(rng, 1), doc(rng, 2)
    sm.changes = []
    for index, value in ((2, first), (3, second)):
        entry = LogEntry(LogIndex(index), Term(1), EntryType.COMMAND,
                         msgpack.packb([1, b"twice", value], use_bin_type=True), 1.0)
        s.write_batch(entries=[entry], hard_state=HardState(Term(1), None, LogIndex(index)))
        sm.apply_entries([entry])
    history = sm.changes
    assert [(rev, v) for rev, _, v in history] == [(2, first), (3, second)]
    calls = []
    real = kv.codec.value_packer

    def counting() -> Any:
        pack = real()
        assert pack is not None

        def counted(value: bytes) -> Any:
            calls.append(value)
            return pack(value)
        return counted

    monkeypatch.setattr(kv.codec, "value_packer", counting)
    flush = kv.take_flush()
    assert flush is not None
    assert kv.write_flush(*flush, history=history)
    kv.flush_done()
    assert sorted(calls) == sorted([first, second])  # not three: the last value once for both
    s.close()
    again = stores("n1", Codec())
    kv2 = again.state()
    assert kv2.get(b"twice")[0] == second  # type: ignore[index]
    assert [(rev, v) for rev, _, v in kv2.read_history(0, 1000)] == [(2, first), (3, second)]


# --- snapshots ---------------------------------------------------------------------------------------

def test_a_snapshot_file_carries_the_dictionaries_and_an_install_registers_them(
        stores: Any, dictionary: bytes, tmp_path: Path) -> None:
    src = StateMachine()
    src.apply_entries([value_entry(i, doc(random.Random(i), i)) for i in range(1, 30)])
    meta = SnapshotMeta(LogIndex(29), Term(1), MEMBERS)
    path = tmp_path / "snap.aegis"
    write_snapshot_file(path, meta, src.snapshot_chunks(), dictionaries=[(7, dictionary)])
    assert read_snapshot_file_info(path).dictionaries == ((7, dictionary),)
    dict_id = decode_dictionary_entry(encode_dictionary_entry(dictionary))[0]
    # InstallSnapshot from a leader
    follower = stores("f1")
    follower.install_state_file(path, meta, membership=MEMBERS)
    assert follower.dictionary_index(dict_id) == 7 and follower.codec.has_dictionary(dict_id)
    zd = ZDict(ZDictConfig(), follower, applied=0)
    zd.installed(29)
    assert zd.codec.active_dictionary == dict_id
    # `aegis snapshot restore` (the stored snapshot, moved into the state when it opens)
    restored = stores("r1")
    restored.install_snapshot_file(path, hard_state=HardState(Term(1), None, LogIndex(29)), membership=MEMBERS)
    assert restored.dictionary_index(dict_id) == 7
    restored.close()
    reopened = stores("r1", Codec())
    assert reopened.codec.has_dictionary(dict_id) and reopened.activate_committed() == dict_id
    assert reopened.state().count() == len(src)
    # ... and what a node exports again names it.
    assert reopened.dictionaries(29) == [(7, dictionary)]


def test_a_file_without_dictionaries_is_byte_for_byte_the_old_format(tmp_path: Path) -> None:
    sm = StateMachine()
    meta = SnapshotMeta(LogIndex(0), Term(0), MEMBERS)
    a, b = tmp_path / "a", tmp_path / "b"
    write_snapshot_file(a, meta, sm.snapshot_chunks(), created=1.0)
    write_snapshot_file(b, meta, sm.snapshot_chunks(), created=1.0, dictionaries=[])
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()[10:12] == b"\x00\x00"  # flags 0


def test_installing_a_snapshot_over_a_dropped_log_forgets_dictionaries_it_does_not_name(
        stores: Any, dictionary: bytes, tmp_path: Path) -> None:
    other = train([doc(random.Random(8), i) + b"tail" * 10 for i in range(3000)], 8 << 10)
    assert other is not None
    s = stores("n1")
    # An uncommitted DICTIONARY entry of an old term, then the leader's snapshot past it.
    s.write_batch(entries=[value_entry(1, b"a" * 60), dict_entry(2, other)])
    stale_id = decode_dictionary_entry(encode_dictionary_entry(other))[0]
    src = StateMachine()
    src.apply_entries([value_entry(i, b"v" * 60, term=3) for i in range(1, 11)])
    meta = SnapshotMeta(LogIndex(10), Term(3), MEMBERS)
    path = tmp_path / "snap"
    write_snapshot_file(path, meta, src.snapshot_chunks(), dictionaries=[(5, dictionary)])
    s.install_state_file(path, meta, membership=MEMBERS)
    assert not s.codec.has_dictionary(stale_id) and s.dictionary_index(stale_id) is None
    assert [i for i, _ in s.dictionaries(10)] == [5]
    with s._env.begin(db=s._meta_db) as txn:
        assert txn.get(zdict_key(stale_id)) is None
