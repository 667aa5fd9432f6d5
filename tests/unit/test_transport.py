"""Unit tests for aegis.transport: the wire codec, framing, and InMemoryTransport."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.errors import CodecError, ProtocolError
from aegis.log import EntryType, LogEntry, LogIndex, Membership, SnapshotMeta, Term
from aegis.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from aegis.transport import (
    MAX_FRAME_SIZE,
    ClientBatchRequest,
    ClientBatchResponse,
    ClientRequest,
    ClientResponse,
    FrameDecoder,
    Handshake,
    InMemoryTransport,
    Message,
    MessageType,
    Transport,
    decode,
    decode_message,
    encode,
    encode_frame,
    encode_message,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

packb = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731


def entries(prev: int, n: int, term: int = 2) -> tuple[LogEntry, ...]:
    types = [EntryType.COMMAND, EntryType.NO_OP, EntryType.CONFIG_CHANGE]
    return tuple(
        LogEntry(LogIndex(prev + i + 1), Term(term), types[i % 3], bytes([i]) * i, float(i) / 4) for i in range(n)
    )


def ae(sender: str = "n1", receiver: str = "n2", term: int = 2, prev: int = 3, n: int = 3) -> AppendEntriesRequest:
    return AppendEntriesRequest(
        term=Term(term), leader_id=sender, receiver=receiver, prev_log_index=LogIndex(prev),
        prev_log_term=Term(1), entries=entries(prev, n), leader_commit=LogIndex(prev), read_ctx=7,
    )


def vote(sender: str = "n1", receiver: str = "n2", term: int = 1) -> VoteRequest:
    return VoteRequest(term=Term(term), candidate_id=sender, receiver=receiver, last_log_index=LogIndex(0),
                       last_log_term=Term(0))


EXAMPLES: list[Any] = [
    VoteRequest(term=Term(5), candidate_id="n1", receiver="n2", last_log_index=LogIndex(9),
                last_log_term=Term(4), pre_vote=True, transfer=True),
    VoteResponse(term=Term(5), vote_granted=True, voter_id="n2", pre_vote=True, receiver="n1"),
    ae(),
    ae(n=0),
    AppendEntriesRequest(term=Term(2), leader_id="n1", receiver="n2", prev_log_index=LogIndex(3),
                         prev_log_term=Term(1), leader_commit=LogIndex(3), read_ctx=5, heartbeat=True),
    AppendEntriesResponse(term=Term(2), success=False, follower_id="n2", match_index=LogIndex(0),
                          reject_index=LogIndex(6), reject_hint=LogIndex(4), hint_term=Term(1), receiver="n1",
                          read_ctx=-3),
    InstallSnapshotRequest(term=Term(3), leader_id="n1", receiver="n3",
                           snapshot=SnapshotMeta(LogIndex(40), Term(3),
                                                 Membership.of(["n1", "n2"], ["n3"], {"n1": "a:1", "n3": "[::1]:3"})),
                           data=b"\x00snapshot"),
    InstallSnapshotResponse(term=Term(3), follower_id="n3", match_index=LogIndex(40), success=False, receiver="n1"),
    TimeoutNow(term=Term(3), leader_id="n1", receiver="n2"),
    ReadIndexRequest(term=Term(3), sender_id="n2", ctx=99, receiver="n1"),
    ReadIndexResponse(term=Term(3), sender_id="n1", ctx=99, index=LogIndex(12), success=True, receiver="n2"),
    ClientRequest(7, (b"SET", b"k", b"\xff")),
    ClientRequest(0, ()),
    ClientResponse(7, b"v"),
    ClientResponse(8, [1, None, b"x", "OK", [b"nested", -5]]),
    ClientResponse(9, None, "NOLEADER no leader is known"),
    ClientBatchRequest(10, ((b"SET", b"k", b"v"), (b"DEL", b"a", b"b"))),
    ClientBatchResponse(10, (b"+OK\r\n", b":2\r\n")),
    Handshake("n1", "aegis"),
    Handshake("n2", "prod", 3, b"token"),
]


# --- message types ------------------------------------------------------------------------


def test_every_message_class_has_a_type() -> None:
    assert {MessageType.of(m) for m in EXAMPLES} == set(MessageType)
    assert len(MessageType) == 15  # 14 frame codes, and Heartbeat (an AppendEntries frame)
    with pytest.raises(CodecError):
        MessageType.of("nope")  # type: ignore[arg-type]


def test_codec_error_is_a_protocol_error() -> None:
    assert issubclass(CodecError, ProtocolError)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg: Any) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert data[0] & 0xF0 == 0x90 or data[0] == 0xDC  # an array, never a map
    assert not data.startswith(b"\x80")  # not pickle


@pytest.mark.parametrize("msg", [m for m in EXAMPLES if m.__class__.__module__ == "aegis.messages"],
                         ids=lambda m: type(m).__name__)
def test_raft_roundtrip_through_encode_message(msg: RaftMessage) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_encoding_is_compact() -> None:
    assert len(encode_message(vote())) < 20
    heartbeat = ae(n=0)
    assert len(encode_message(heartbeat)) < 20
    one = ae(n=1)
    assert len(encode_message(one)) - len(encode_message(heartbeat)) < 20  # per-entry overhead


def test_decode_message_rejects_client_frames() -> None:
    with pytest.raises(CodecError):
        decode_message(encode(ClientRequest(1, (b"PING",))))
    with pytest.raises(CodecError):
        encode_message(ClientRequest(1, ()))  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode(object())  # type: ignore[arg-type]


def test_client_message_helpers() -> None:
    req = ClientRequest(3, (b"GET", b"k"))
    assert ClientRequest.decode(req.encode()) == req
    resp = ClientResponse(3, b"v")
    assert ClientResponse.decode(resp.encode()) == resp and resp.ok
    assert not ClientResponse(3, error="ERR x").ok
    with pytest.raises(CodecError):
        ClientRequest.decode(resp.encode())
    with pytest.raises(CodecError):
        ClientResponse.decode(req.encode())


def deep_reply(depth: int) -> Any:
    reply: Any = 1
    for _ in range(depth):
        reply = [reply]
    return reply


@pytest.mark.parametrize(
    "build",
    [
        lambda: ClientRequest(-1, ()),
        lambda: ClientRequest(1, ["x"]),  # type: ignore[arg-type]
        lambda: ClientResponse(1, 1.5),  # type: ignore[arg-type]
        lambda: ClientResponse(1, b"v", "ERR both"),
        lambda: ClientResponse(1, {"a": 1}),  # type: ignore[arg-type]
        lambda: ClientResponse(1, deep_reply(20)),
        lambda: Handshake("", "c"),
        lambda: Handshake("n", ""),
        lambda: Handshake("n", "c", -1),
        lambda: Handshake("n", "c", 1, "tok"),  # type: ignore[arg-type]
    ],
)
def test_client_message_validation(build: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        build()


# --- strict validation --------------------------------------------------------------------


def frame(*fields: object) -> bytes:
    return packb(list(fields))


E = [4, 2, 0, 0.0, b"x"]  # a valid entry following prev_log_index 3

BAD_FRAMES = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "truncated": encode_message(ae())[:-2],
    "trailing": encode_message(vote()) + b"\x00",
    "not an array": packb({"type": 1}),
    "empty array": packb([]),
    "unknown type": frame(99, 1),
    "type zero": frame(0),
    "bool type": frame(True, 1, "n1", "n2", 0, 0, False, False),
    "float type": frame(1.0, 1, "n1", "n2", 0, 0, False, False),
    "too few fields": frame(1, 1, "n1", "n2", 0, 0, False),
    "too many fields": frame(1, 1, "n1", "n2", 0, 0, False, False, 0),
    "negative term": frame(1, -1, "n1", "n2", 0, 0, False, False),
    "negative index": frame(1, 1, "n1", "n2", -4, 0, False, False),
    "huge index": frame(1, 1, "n1", "n2", 2**64 - 1, 0, False, False),
    "int for bool": frame(1, 1, "n1", "n2", 0, 0, 1, False),
    "bool for int": frame(1, True, "n1", "n2", 0, 0, False, False),
    "bytes id": frame(1, 1, b"n1", "n2", 0, 0, False, False),
    "long id": frame(1, 1, "n" * 300, "n2", 0, 0, False, False),
    "entries not a list": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, b"x"),
    "entry shape": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, 2, 0, 0.0]]),
    "entry index zero": frame(3, 2, "n1", "n2", 0, 0, 0, 0, False, [[0, 2, 0, 0.0, b""]]),
    "entry gap": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [E, [6, 2, 0, 0.0, b""]]),
    "entry not after prev": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[5, 2, 0, 0.0, b""]]),
    "entries backwards": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [E, [4, 2, 0, 0.0, b""]]),
    "entry type": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, 2, 7, 0.0, b""]]),
    "entry str data": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, 2, 0, 0.0, "x"]]),
    "entry nan time": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, 2, 0, float("nan"), b""]]),
    "entry negative term": frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, -2, 0, 0.0, b""]]),
    "read ctx too big": frame(3, 2, "n1", "n2", 3, 1, 3, 2**64 - 1, False, []),
    "heartbeat not bool": frame(3, 2, "n1", "n2", 3, 1, 3, 0, 0, []),
    "snapshot shape": frame(5, 1, "n1", "n2", [1, 1], b""),
    "snapshot overlap": frame(5, 1, "n1", "n2", [1, 1, ["a"], ["a"], []], b""),
    "snapshot addresses": frame(5, 1, "n1", "n2", [1, 1, ["a"], [], [["a"]]], b""),
    "snapshot data str": frame(5, 1, "n1", "n2", [1, 1, ["a"], [], []], "data"),
    "client argv": frame(10, 1, ["GET"]),
    "client id": frame(10, -1, []),
    "client response float": frame(11, 1, 1.5, None),
    "client response both": frame(11, 1, b"v", "ERR"),
    "client response map": frame(11, 1, {"a": 1}, None),
    "handshake short": frame(12, "n1", "c", 1),
    "handshake empty id": frame(12, "", "c", 1, b""),
    "ext type": packb([1, msgpack.ExtType(5, b"xx"), "n1", "n2", 0, 0, False, False]),
    "invalid utf-8 str": b"\x92\x01\xa2\xff\xfe",
    "deep nesting": b"\x91" * 5000 + b"\x01",
}


@pytest.mark.parametrize("data", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_frames_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(CodecError, match="not contiguous"):
        decode(BAD_FRAMES["entry gap"])
    with pytest.raises(CodecError, match="unknown message type"):
        decode(BAD_FRAMES["unknown type"])
    with pytest.raises(CodecError, match="needs 7 fields"):
        decode(BAD_FRAMES["too few fields"])
    with pytest.raises(CodecError, match="last_log_index"):
        decode(BAD_FRAMES["negative index"])


def test_decode_rejects_non_bytes_and_oversized_input() -> None:
    with pytest.raises(CodecError):
        decode("text")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="exceeds"):
        decode(b"\x00" * (MAX_FRAME_SIZE + 1))


def test_integer_timestamps_are_accepted() -> None:
    msg = decode_message(frame(3, 2, "n1", "n2", 3, 1, 3, 0, False, [[4, 2, 0, 17, b"x"]]))
    assert isinstance(msg, AppendEntriesRequest) and msg.entries[0].timestamp == 17.0


# --- property tests -----------------------------------------------------------------------

ids = st.text(min_size=0, max_size=6)
u = st.integers(0, 2**63 - 1)
small = st.integers(0, 1000)
i64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntriesRequest:
    prev = draw(small)
    n = draw(st.integers(0, 4))
    # Entry terms never decrease, start at prev_log_term and never exceed the message's term.
    terms = sorted(draw(st.lists(small, min_size=n + 1, max_size=n + 1)))
    prev_term, entry_terms = terms[0], terms[1:]
    es = tuple(
        LogEntry(LogIndex(prev + 1 + i), Term(entry_terms[i]), draw(st.sampled_from(list(EntryType))),
                 draw(st.binary(max_size=8)), draw(st.floats(allow_nan=False, allow_infinity=False)))
        for i in range(n)
    )
    term = draw(st.integers(min_value=terms[-1], max_value=2**63 - 1))
    return AppendEntriesRequest(term=Term(term), leader_id=draw(ids), receiver=draw(ids),
                                prev_log_index=LogIndex(prev), prev_log_term=Term(prev_term), entries=es,
                                leader_commit=LogIndex(draw(u)), read_ctx=draw(i64),
                                heartbeat=draw(st.booleans()))


@st.composite
def snapshots(draw: st.DrawFn) -> InstallSnapshotRequest:
    voters = draw(st.sets(ids, max_size=3))
    learners = draw(st.sets(ids, max_size=2)) - voters
    addrs = {n: draw(st.text(max_size=10)) for n in sorted(voters | learners)}
    meta = SnapshotMeta(LogIndex(draw(u)), Term(draw(u)), Membership.of(voters, learners, addrs))
    return InstallSnapshotRequest(term=Term(draw(u)), leader_id=draw(ids), receiver=draw(ids), snapshot=meta,
                                  data=draw(st.binary(max_size=16)))


raft_messages = st.one_of(
    st.builds(VoteRequest, term=u, candidate_id=ids, receiver=ids, last_log_index=u, last_log_term=u,
              pre_vote=st.booleans(), transfer=st.booleans()),
    st.builds(VoteResponse, term=u, vote_granted=st.booleans(), voter_id=ids, pre_vote=st.booleans(), receiver=ids),
    append_entries(),
    st.builds(AppendEntriesResponse, term=u, success=st.booleans(), follower_id=ids, match_index=u,
              reject_index=u, reject_hint=u, hint_term=u, receiver=ids, read_ctx=i64, heartbeat=st.booleans()),
    snapshots(),
    st.builds(InstallSnapshotResponse, term=u, follower_id=ids, match_index=u, success=st.booleans(),
              receiver=ids),
    st.builds(TimeoutNow, term=u, leader_id=ids, receiver=ids),
    st.builds(ReadIndexRequest, term=u, sender_id=ids, ctx=i64, receiver=ids),
    st.builds(ReadIndexResponse, term=u, sender_id=ids, ctx=i64, index=u, success=st.booleans(), receiver=ids),
)

replies = st.recursive(
    st.one_of(st.none(), i64, st.binary(max_size=8), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=8,
)
wire_messages = st.one_of(
    raft_messages,
    st.builds(ClientRequest, u, st.lists(st.binary(max_size=8), max_size=4).map(tuple)),
    st.builds(ClientResponse, u, replies),
    st.builds(Handshake, st.text(min_size=1, max_size=6), st.text(min_size=1, max_size=6), u,
              st.binary(max_size=8)),
)


@FAST
@given(wire_messages)
def test_any_message_roundtrips(msg: Any) -> None:
    assert decode(encode(msg)) == msg


@FAST
@given(st.binary(max_size=128))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass


@FAST
@given(wire_messages, st.data())
def test_mutated_frames_raise_only_codec_error(msg: Any, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "delete" and len(raw) > 1:
            del raw[pos]
        else:
            raw.insert(pos, data.draw(st.integers(0, 255)))
    try:
        out = decode(bytes(raw))
    except CodecError:
        return
    assert decode(encode(out)) == out  # whatever decodes is a well-formed message


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.floats(), st.text(max_size=4),
              st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=10,
)


@FAST
@given(raft_messages, st.data())
def test_fields_replaced_by_any_value_raise_only_codec_error(msg: RaftMessage, data: st.DataObject) -> None:
    obj = msgpack.unpackb(encode_message(msg), raw=False)
    pos = data.draw(st.integers(0, len(obj) - 1))
    obj[pos] = data.draw(msgpack_values)
    try:
        raw = packb(obj)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        out = decode_message(raw)
    except CodecError:
        return
    assert decode_message(encode_message(out)) == out


def _both_decoders(raw: bytes) -> tuple[object, object]:
    """What decode() and the general schema decoder alone make of a frame: a message or the
    error text."""
    from aegis import transport

    def run(f: Any) -> object:
        try:
            return f()
        except CodecError as exc:
            return f"error: {exc}"

    def general() -> object:
        obj = transport._unpack(raw)
        assert isinstance(obj, list)
        return transport._decode_schema(obj[0], obj, None)

    return run(lambda: decode(raw)), run(general)


hot_messages = st.one_of(
    append_entries(),
    st.builds(AppendEntriesResponse, term=u, success=st.booleans(), follower_id=ids, match_index=u,
              reject_index=u, reject_hint=u, hint_term=u, receiver=ids, read_ctx=i64, heartbeat=st.booleans()),
)


@FAST
@given(hot_messages, st.data())
def test_the_fast_append_decoders_agree_with_the_schema_decoder(msg: RaftMessage, data: st.DataObject) -> None:
    """AppendEntries and its response skip the schema walk; on any frame (one field, or one
    field of one entry, replaced by any value) they give the same message, or the same
    error, as the general decoder."""
    obj = msgpack.unpackb(encode_message(msg), raw=False)
    assert _both_decoders(packb(obj)) == (msg, msg)
    pos = data.draw(st.integers(1, len(obj) - 1))
    if isinstance(msg, AppendEntriesRequest) and msg.entries and data.draw(st.booleans()):
        entry = obj[-1][data.draw(st.integers(0, len(msg.entries) - 1))]
        entry[data.draw(st.integers(0, 4))] = data.draw(msgpack_values)
    else:
        obj[pos] = data.draw(msgpack_values)
    try:
        raw = packb(obj)
    except (OverflowError, ValueError, TypeError):
        return
    fast, general = _both_decoders(raw)
    assert fast == general


# --- payload hooks ------------------------------------------------------------------------


def test_payload_hooks_ship_compressed_payloads() -> None:
    big = AppendEntriesRequest(
        term=Term(1), leader_id="n1", receiver="n2", prev_log_index=LogIndex(0), prev_log_term=Term(0),
        entries=(LogEntry(LogIndex(1), Term(1), EntryType.COMMAND, b"a" * 1000),),
    )
    plain = encode_message(big)
    packed = encode_message(big, pack_payload=lambda e: zlib.compress(e.data))
    assert len(packed) < len(plain) / 5
    assert decode_message(packed, unpack_payload=zlib.decompress) == big
    assert decode_message(packed).entries[0].data == zlib.compress(b"a" * 1000)  # default: as shipped


def test_a_failing_unpacker_is_a_codec_error() -> None:
    data = encode_message(ae())
    with pytest.raises(CodecError, match="payload"):
        decode_message(data, unpack_payload=zlib.decompress)
    with pytest.raises(CodecError):
        decode_message(data, unpack_payload=lambda b: "not bytes")  # type: ignore[arg-type, return-value]


def test_a_failing_packer_is_a_codec_error() -> None:
    def boom(e: LogEntry) -> bytes:
        raise RuntimeError("no")

    with pytest.raises(CodecError):
        encode_message(ae(), pack_payload=boom)
    with pytest.raises(CodecError):
        encode_message(ae(), pack_payload=lambda e: "str")  # type: ignore[arg-type, return-value]


# --- envelope and framing -----------------------------------------------------------------


def test_message_envelope() -> None:
    m = Message.wrap(ae())
    assert (m.type, m.sender, m.receiver) == (MessageType.APPEND_ENTRIES_REQUEST, "n1", "n2")
    back = Message.decode(m.encode())
    assert back == m and back.unwrap() == ae()
    forged = Message(MessageType.APPEND_ENTRIES_REQUEST, "n3", "n2", m.payload)
    with pytest.raises(CodecError, match="envelope"):
        forged.unwrap()
    with pytest.raises(CodecError):
        Message.decode(packb([1, "a", "b"]))
    with pytest.raises(CodecError):
        Message.decode(packb([77, "a", "b", b""]))


def test_frames_reassemble_across_any_split() -> None:
    bodies = [encode(m) for m in EXAMPLES]
    stream = b"".join(encode_frame(b) for b in bodies)
    for step in (1, 2, 3, 7, 64, len(stream)):
        dec = FrameDecoder()
        got: list[bytes] = []
        for i in range(0, len(stream), step):
            got += dec.feed(stream[i : i + step])
        assert got == bodies and dec.buffered == 0


def test_frame_size_limits() -> None:
    with pytest.raises(CodecError):
        encode_frame(b"x" * 11, max_size=10)
    dec = FrameDecoder(max_size=10)
    assert dec.feed((10).to_bytes(4, "big") + b"0123456789") == [b"0123456789"]
    with pytest.raises(CodecError, match="limit"):
        dec.feed((11).to_bytes(4, "big"))  # rejected before the body arrives


# --- InMemoryTransport --------------------------------------------------------------------


def senders(msgs: list[RaftMessage]) -> list[tuple[str, str, int]]:
    return [(m.sender, m.receiver, m.term) for m in msgs]


def test_is_a_transport() -> None:
    assert isinstance(InMemoryTransport(), Transport)


def test_delivers_in_send_order_by_default() -> None:
    net = InMemoryTransport()
    for t in range(1, 4):
        net.send(vote("n1", "n2", t))
    net.send(vote("n3", "n1", 9))
    assert net.pending() == 4 and net.pending("n2") == 3
    assert senders(net.deliver(0)) == [("n1", "n2", 1), ("n1", "n2", 2), ("n1", "n2", 3), ("n3", "n1", 9)]
    assert net.deliver(5) == [] and net.pending() == 0
    assert (net.stats.sent, net.stats.delivered, net.stats.dropped) == (4, 4, 0)


def test_delay_holds_messages_until_due() -> None:
    net = InMemoryTransport(delay=(3, 3))
    net.send(vote(), now=10)
    assert net.next_due() == 13
    assert net.deliver(12) == []
    assert len(net.deliver(13)) == 1
    assert net.next_due() is None


def test_random_delays_stay_in_range_and_reorder_across_ticks() -> None:
    net = InMemoryTransport(seed=1, delay=(1, 5))
    for t in range(50):
        net.send(vote("n1", "n2", t + 1), now=0)
    dues = [d for d, _ in net.in_flight()]
    assert min(dues) >= 1 and max(dues) <= 5 and len(set(dues)) > 1
    got = [m.term for t in range(6) for m in net.deliver(t)]
    assert sorted(got) == list(range(1, 51)) and got != sorted(got)


def test_time_cannot_go_backwards() -> None:
    net = InMemoryTransport()
    net.deliver(5)
    with pytest.raises(ValueError):
        net.deliver(4)
    with pytest.raises(ValueError):
        net.send(vote(), now=3)
    net.send(vote())  # defaults to the current tick
    assert net.in_flight()[0][0] == 5


def test_poll_and_receive_are_per_node() -> None:
    net = InMemoryTransport()
    net.broadcast([vote("n1", "n2"), vote("n1", "n3"), vote("n2", "n3")])
    assert senders(net.poll("n3", 0)) == [("n1", "n3", 1), ("n2", "n3", 1)]
    assert senders(net.receive("n2")) == [("n1", "n2", 1)]
    assert net.pending() == 0


def test_drop_rate() -> None:
    net = InMemoryTransport(seed=3, drop_rate=1.0)
    net.send(vote())
    assert net.deliver(0) == [] and net.stats.dropped == 1
    net = InMemoryTransport(seed=3, drop_rate=0.3)
    for _ in range(1000):
        net.send(vote())
    delivered = len(net.deliver(0))
    assert 600 < delivered < 800 and net.stats.dropped == 1000 - delivered


def test_duplicate_rate() -> None:
    net = InMemoryTransport(seed=4, duplicate_rate=1.0)
    net.send(vote())
    assert len(net.deliver(0)) == 2 and net.stats.duplicated == 1
    net = InMemoryTransport(seed=4, duplicate_rate=0.5)
    for _ in range(400):
        net.send(vote())
    assert 500 < len(net.deliver(0)) < 700


def test_reorder_shuffles_due_messages() -> None:
    net = InMemoryTransport(seed=5, reorder=True)
    for t in range(1, 21):
        net.send(vote("n1", "n2", t))
    got = [m.term for m in net.deliver(0)]
    assert sorted(got) == list(range(1, 21)) and got != sorted(got)


def test_partition_groups() -> None:
    net = InMemoryTransport()
    net.partition(["n1", "n2"], ["n3"])
    for a in ("n1", "n2", "n3", "n4", "n5"):
        for b in ("n1", "n2", "n3", "n4", "n5"):
            if a != b:
                net.send(vote(a, b))
    got = {(m.sender, m.receiver) for m in net.deliver(0)}
    # n4 and n5 are in no group: together they form one more.
    assert got == {("n1", "n2"), ("n2", "n1"), ("n4", "n5"), ("n5", "n4")}
    assert not net.can_reach("n1", "n3") and net.can_reach("n4", "n5")
    net.heal()
    assert net.can_reach("n1", "n3")


def test_a_new_partition_replaces_the_old() -> None:
    net = InMemoryTransport()
    net.partition(["n1"], ["n2", "n3"])
    net.partition(["n1", "n2"], ["n3"])
    assert net.can_reach("n1", "n2") and not net.can_reach("n2", "n3")
    with pytest.raises(ValueError):
        net.partition(["n1"], ["n1"])


def test_a_partition_loses_messages_already_in_flight() -> None:
    net = InMemoryTransport(delay=(2, 2))
    net.send(vote("n1", "n2"), now=0)
    net.partition(["n1"], ["n2"])
    assert net.deliver(2) == [] and net.stats.dropped == 1


def test_isolate() -> None:
    net = InMemoryTransport()
    net.isolate("n1")
    net.broadcast([vote("n1", "n2"), vote("n2", "n1"), vote("n2", "n3")])
    assert senders(net.deliver(0)) == [("n2", "n3", 1)]
    net.heal()
    net.send(vote("n1", "n2"))
    assert len(net.deliver(0)) == 1


def test_cut_one_way_and_both_ways() -> None:
    net = InMemoryTransport()
    net.cut("n1", "n2", both_ways=False)
    assert not net.can_reach("n1", "n2") and net.can_reach("n2", "n1")
    net.cut("n1", "n3")
    assert not net.can_reach("n1", "n3") and not net.can_reach("n3", "n1")
    net.broadcast([vote("n1", "n2"), vote("n2", "n1"), vote("n3", "n1")])
    assert senders(net.deliver(0)) == [("n2", "n1", 1)]
    net.uncut("n1", "n3")
    assert net.can_reach("n3", "n1")
    net.heal()
    assert net.can_reach("n1", "n2")


def test_crash_drops_in_flight_messages_both_ways() -> None:
    net = InMemoryTransport(delay=(1, 1))
    net.broadcast([vote("n1", "n2"), vote("n2", "n1"), vote("n2", "n3"), vote("n3", "n2")], now=0)
    net.crash("n2")
    assert net.is_crashed("n2") and net.pending() == 0 and net.stats.dropped == 4
    net.send(vote("n1", "n2"))  # nothing reaches a crashed node
    net.send(vote("n2", "n1"))  # nor leaves it
    assert net.deliver(5) == []
    net.restart("n2")
    net.send(vote("n1", "n2"))  # sent at tick 5, due at 6
    assert len(net.deliver(6)) == 1


def test_crash_can_keep_outgoing_messages() -> None:
    net = InMemoryTransport(delay=(1, 1))
    net.broadcast([vote("n1", "n2"), vote("n2", "n1")], now=0)
    net.crash("n2", drop_outgoing=False)
    assert senders(net.deliver(1)) == [("n2", "n1", 1)]


def test_heal_keeps_crashes() -> None:
    net = InMemoryTransport()
    net.crash("n1")
    net.heal()
    assert net.is_crashed("n1") and not net.can_reach("n1", "n2")


def test_filter_drops_chosen_messages() -> None:
    net = InMemoryTransport()
    net.filter = lambda m: not isinstance(m, AppendEntriesRequest)
    net.broadcast([ae(), vote()])
    assert [type(m) for m in net.deliver(0)] == [VoteRequest]


def test_codec_roundtrip_mode() -> None:
    net = InMemoryTransport(codec_roundtrip=True)
    for m in EXAMPLES:
        if m.__class__.__module__ == "aegis.messages":
            net.send(m)
    got = net.deliver(0)
    assert got == [m for m in EXAMPLES if m.__class__.__module__ == "aegis.messages"]


def test_messages_need_a_receiver() -> None:
    with pytest.raises(ValueError):
        InMemoryTransport().send(vote("n1", ""))


def test_clear_loses_everything() -> None:
    net = InMemoryTransport()
    net.broadcast([vote(), vote()])
    net.clear()
    assert net.pending() == 0 and net.stats.dropped == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"drop_rate": 1.5}, {"drop_rate": -0.1}, {"duplicate_rate": 2}, {"delay": (3, 1)}, {"delay": (-1, 0)},
     {"drop_rate": True}],
)
def test_knob_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        InMemoryTransport(**kwargs)


def run_chaos(seed: int) -> list[tuple[int, str, str, int]]:
    net = InMemoryTransport(seed=seed, drop_rate=0.2, delay=(0, 4), reorder=True, duplicate_rate=0.2)
    nodes = ["n1", "n2", "n3", "n4"]
    out: list[tuple[int, str, str, int]] = []
    for now in range(30):
        if now == 10:
            net.partition(["n1", "n2"], ["n3", "n4"])
        if now == 20:
            net.heal()
            net.crash("n3")
        for i, a in enumerate(nodes):
            net.send(vote(a, nodes[(i + now) % 4 or 1], now + 1), now=now)
        out += [(now, m.sender, m.receiver, m.term) for m in net.deliver(now)]
    return out


def test_same_seed_same_run() -> None:
    assert run_chaos(11) == run_chaos(11)
    assert run_chaos(11) != run_chaos(12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_determinism_for_any_seed(seed: int) -> None:
    assert run_chaos(seed) == run_chaos(seed)


@pytest.mark.parametrize("raw", [
    [13, 1, []], [13, 1, [[]]], [13, 1, [["SET"]]], [13, -1, [[b"GET", b"k"]]], [13, 1, "x"],
    [14, 1, [b"ok", 5]], [14, 1, b"x"], [13, 1], [14, 1, [], 2],
])
def test_bad_client_batches_are_codec_errors(raw: list[Any]) -> None:
    with pytest.raises(CodecError):
        decode(packb(raw))
