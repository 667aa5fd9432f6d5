"""storage.codec: the entry record format, compression choices, checksums, the record cache."""

from __future__ import annotations

import json
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.log import EntryType, LogEntry, LogIndex, Term
from storage import codec as c
from storage.errors import CorruptionError, StorageError


def entry(i: int, data: bytes, term: int = 3, etype: EntryType = EntryType.COMMAND, ts: float = 1.5) -> LogEntry:
    return LogEntry(LogIndex(i), Term(term), etype, data, ts)


def json_value(rng: random.Random, i: int) -> bytes:
    return json.dumps(
        {"user": f"user{rng.randrange(10_000)}", "id": i, "email": f"u{i}@example.com",
         "active": rng.random() < 0.5, "tags": rng.sample(["red", "green", "blue", "gold", "x"], 2)}
    ).encode()


def fresh(level: int = c.DEFAULT_LEVEL, threshold: int = c.DEFAULT_THRESHOLD) -> c.Codec:
    return c.Codec(cache_entries=0, level=level, threshold=threshold)


def test_roundtrip_every_type_and_size() -> None:
    codec = fresh()
    for etype in EntryType:
        for n in (0, 1, 63, 64, 65, 1000, 100_000):
            e = entry(7, (b"ab" * n)[:n], etype=etype, ts=123.25)
            assert codec.unpack_entry(7, codec.pack_entry(e)) == e


def test_small_payloads_are_stored_raw() -> None:
    codec = fresh(threshold=64)
    rec = codec.pack_entry(entry(1, b"a" * 64))
    assert codec.read_header(1, rec).flags == 0
    rec = codec.pack_entry(entry(1, b"a" * 65))
    assert codec.read_header(1, rec).flags == c.FLAG_COMPRESSED


def test_incompressible_payload_is_kept_raw_and_never_grows() -> None:
    codec = fresh()
    data = random.Random(1).randbytes(100)
    rec = codec.pack_entry(entry(1, data))
    h = codec.read_header(1, rec)
    assert h.flags == 0
    assert len(rec) == h.offset + len(data)


def test_compressible_payload_shrinks() -> None:
    codec = fresh()
    data = json.dumps([{"key": f"k{i}", "value": "v" * 20} for i in range(20)]).encode()
    rec = codec.pack_entry(entry(1, data))
    assert len(rec) < len(data) // 3
    assert codec.unpack_entry(1, rec).data == data


def test_adaptive_compression_skips_what_does_not_pay_and_notices_change() -> None:
    codec = fresh()
    rng = random.Random(5)
    size_class = (200).bit_length()
    for i in range(1, 1001):  # incompressible values of ~200 B
        codec.pack_entry(entry(i, rng.randbytes(200)))
    assert codec._class_poor[size_class]
    compressible = b'{"name": "alice", "tags": ["a", "b", "c"], "x": 1}' * 4
    recs = [codec.pack_entry(entry(i, compressible[:200])) for i in range(1, 2001)]
    assert not codec._class_poor[size_class]
    assert all(codec.read_header(i + 1, r).flags for i, r in enumerate(recs[-500:], start=1500))
    # other size classes were never affected, and a non-adaptive codec always tries
    assert not codec._class_poor[(1000).bit_length()]
    plain = c.Codec(cache_entries=0, adaptive=False)
    for i in range(1, 1001):
        plain.pack_entry(entry(i, rng.randbytes(200)))
    assert plain.read_header(1, plain.pack_entry(entry(1, compressible[:200]))).flags == c.FLAG_COMPRESSED


def test_level_and_threshold_are_validated() -> None:
    with pytest.raises(ValueError):
        c.Codec(level=99)
    with pytest.raises(ValueError):
        c.Codec(threshold=-1)


def test_header_fields_survive_and_entry_size_is_known_without_decompressing() -> None:
    codec = fresh()
    e = entry(42, b"x" * 500, term=2**40, etype=EntryType.CONFIG_CHANGE, ts=1.0e9 + 0.5)
    h = codec.read_header(42, codec.pack_entry(e))
    assert (h.term, h.type, h.timestamp, h.length) == (2**40, EntryType.CONFIG_CHANGE, e.timestamp, 500)
    assert h.crc == e.checksum()
    assert h.entry_size == e.size()
    assert codec.record_term(42, codec.pack_entry(e)) == 2**40


@pytest.mark.parametrize("data", [b"short", b"z" * 300, os.urandom(300)])
def test_every_flipped_byte_is_detected(data: bytes) -> None:
    codec = fresh()
    rec = codec.pack_entry(entry(9, data))
    for pos in range(len(rec)):
        bad = bytearray(rec)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptionError) as err:
            codec.unpack_entry(9, bytes(bad), path="/data/n1/data.mdb")
        assert "log entry 9" in str(err.value) and "/data/n1/data.mdb" in str(err.value)
        assert err.value.index == 9


def test_truncated_and_extended_records_are_detected() -> None:
    codec = fresh()
    rec = codec.pack_entry(entry(3, b"q" * 200))
    for bad in (rec[:10], rec[:-1], rec + b"\0", b""):
        with pytest.raises(CorruptionError):
            codec.unpack_entry(3, bad)


def test_record_under_the_wrong_index_is_detected() -> None:
    codec = fresh()
    rec = codec.pack_entry(entry(5, b"payload"))
    with pytest.raises(CorruptionError, match="log entry 6"):
        codec.unpack_entry(6, rec)


def test_consistent_forgery_of_the_payload_is_caught_by_the_entry_checksum() -> None:
    """A record whose record-CRC was recomputed after changing the payload still fails."""
    codec = fresh()
    rec = bytearray(codec.pack_entry(entry(5, b"hello world")))
    off = codec.read_header(5, bytes(rec)).offset
    rec[off] ^= 1
    import zlib

    struct.pack_into(">I", rec, off - 4, zlib.crc32(bytes(rec[off:]), zlib.crc32(bytes(rec[: off - 4]))))
    with pytest.raises(CorruptionError, match="entry CRC"):
        codec.unpack_entry(5, bytes(rec))


def test_dictionary_helps_small_json_and_needs_registration() -> None:
    rng = random.Random(7)
    samples = [json_value(rng, i) for i in range(2000)]
    d = c.train_dictionary(samples, 8 << 10)
    plain, with_dict = fresh(), fresh()
    did = with_dict.add_dictionary(d, activate=True)
    value = json_value(rng, 99_999)
    e = entry(1, value)
    rec_plain, rec_dict = plain.pack_entry(e), with_dict.pack_entry(e)
    assert len(rec_dict) < len(rec_plain)
    h = with_dict.read_header(1, rec_dict)
    assert h.flags == c.FLAG_COMPRESSED | c.FLAG_DICT and h.dict_id == did
    assert with_dict.unpack_entry(1, rec_dict) == e
    with pytest.raises(StorageError, match=f"dictionary {did}"):
        plain.unpack_entry(1, rec_dict)
    # a peer without the dictionary gets a re-encoded record
    assert plain.unpack_entry(1, fresh().repack(1, plain.pack_entry(e))) == e
    other = fresh()
    other.add_dictionary(d)
    assert other.unpack_entry(1, with_dict.repack(1, rec_dict)) == e
    with_dict.use_dictionary(None)
    assert with_dict.read_header(1, with_dict.pack_entry(entry(2, value))).flags == c.FLAG_COMPRESSED


def test_record_cache_compresses_once_and_never_changes_results() -> None:
    codec = c.Codec(cache_entries=4)
    e = entry(1, b"v" * 1000)
    rec = codec.pack_entry(e)
    assert codec.pack_entry(e) is rec  # the transport gets the leader's bytes back
    # an entry with the same index and term but other content is not confused with it
    e2 = entry(1, b"w" * 1000)
    assert codec.unpack_entry(1, codec.pack_entry(e2)) == e2
    # a follower: unpack remembers, pack of the equal entry returns the received record
    received = fresh().pack_entry(entry(2, b"r" * 800))
    got = codec.unpack_entry(2, received)
    assert codec.pack_entry(LogEntry(got.index, got.term, got.type, bytes(got.data), got.timestamp)) is received
    # a corrupted copy of a cached record is still rejected
    bad = bytearray(received)
    bad[-1] ^= 1
    with pytest.raises(CorruptionError):
        codec.unpack_entry(2, bytes(bad))
    # bounded
    for i in range(10, 30):
        codec.pack_entry(entry(i, b"x"))
    assert len(codec._cache) <= 4


def test_module_functions_use_the_default_codec() -> None:
    e = entry(11, b"m" * 200)
    rec = c.pack_entry(e)
    assert c.unpack_entry(11, rec) == e
    assert c.record_term(11, rec) == 3
    flags, did, stored = c.default_codec().compress_payload(b"m" * 200)
    assert c.default_codec().decompress_payload(flags, did, stored, 200) == b"m" * 200
    assert c.unpack_payload(c.pack_payload(e)) == e.data


class CountingCodec(c.Codec):
    def __init__(self) -> None:
        super().__init__()
        self.compressions = 0

    def compress_payload(self, data: bytes) -> tuple[int, int, bytes]:
        self.compressions += 1
        return super().compress_payload(data)


def test_wire_payloads_leader_compresses_once_follower_never() -> None:
    leader, follower = CountingCodec(), CountingCodec()
    rng = random.Random(3)
    entries = [entry(i, json_value(rng, i) * 4) for i in range(1, 50)]
    records = leader.pack_entries(entries)  # the leader's store appends
    assert leader.compressions == len(entries)
    wires = [leader.pack_payload(e) for e in entries for _ in range(4)][::4]  # four followers
    assert leader.compressions == len(entries)
    assert sum(len(w) for w in wires) < sum(len(e.data) for e in entries) // 2
    # the follower: the transport builds entries around the unpacked payloads
    got = [LogEntry(e.index, e.term, e.type, follower.unpack_payload(w), e.timestamp) for e, w in zip(entries, wires)]
    assert got == entries
    assert follower.pack_entries(got) == records  # the leader's bytes, byte for byte
    assert follower.compressions == 0
    assert not follower._wire and follower._wire_bytes == 0  # each received payload used once
    for i in range(1, 20_000):  # and what is never used stays bounded
        follower.unpack_payload(leader.pack_payload(entry(i, b"%d" % i * 50)))
    assert len(follower._wire) <= c.DEFAULT_CACHE_ENTRIES
    # an equal entry built around another bytes object is simply compressed
    copy = LogEntry(got[0].index, got[0].term, got[0].type, bytes(bytearray(got[0].data)), got[0].timestamp)
    c.Codec().pack_entry(copy)


def test_wire_payload_corruption_is_detected_before_decompressing() -> None:
    codec = fresh()
    wire = codec.pack_payload(entry(1, b'{"k": "v"}' * 30))
    for pos in range(len(wire)):
        bad = bytearray(wire)
        bad[pos] ^= 0x08
        try:
            out = codec.unpack_payload(bytes(bad))
        except CorruptionError:
            continue
        raise AssertionError(f"flip at {pos} gave {out[:20]!r}")
    for short in (b"", wire[:5], wire[:-1]):
        with pytest.raises(CorruptionError):
            codec.unpack_payload(short)


def test_per_thread_contexts() -> None:
    import threading

    codec = fresh()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(1, 300):
                e = entry(i, json_value(rng, i) * rng.randrange(1, 4))
                assert codec.unpack_entry(i, codec.pack_entry(e)) == e
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(1, 2**63),
    term=st.integers(0, 2**64 - 1),
    etype=st.sampled_from(list(EntryType)),
    data=st.binary(max_size=2000) | st.text(max_size=500).map(lambda s: s.encode() * 3),
    ts=st.floats(allow_nan=False),
)
def test_roundtrip_property(index: int, term: int, etype: EntryType, data: bytes, ts: float) -> None:
    codec = fresh()
    e = LogEntry(LogIndex(index), Term(term), etype, data, ts)
    assert codec.unpack_entry(index, codec.pack_entry(e)) == e
