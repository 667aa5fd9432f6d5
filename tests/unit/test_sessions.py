"""Client sessions (aegis.sessions, Raft dissertation §6.3): exactly-once writes.

Covered: a retried call returns its first result and applies nothing; calls out of order;
the acknowledged floor and the results cap refuse stale sequence numbers; expiry in log time
(entry timestamps, never the wall clock) and the cap on sessions; the codec; snapshots (v4
round trip, v3 still read, a state without sessions still written as v3, corruption
refused); the dict and LMDB backends agree, and the LMDB state keeps the table across a
flush and a restart and through a snapshot install; the command table; the client retrying
a write whose reply was lost, with the same sequence number.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import msgpack
import pytest

from aegis import commands as C
from aegis.client import AegisClient, RetryPolicy
from aegis.log import EntryType, LogEntry, LogIndex, Term
from aegis.protocol import RespError
from aegis.sessions import POSITION_BITS, SessionTable, decode_session, encode_session
from aegis.state import Command, CommandResult, CommandType, Snapshot, StateMachine, encode_batch, stream_snapshot
from storage import LmdbStore

from .test_client import FakeNode, cluster

T0 = 1_700_000_000.0  # entry timestamps (s), as a leader's clock stamps them
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01)


class Log:
    """Entries with timestamps, applied to one or more state machines alike."""

    def __init__(self, *sms: StateMachine, store: LmdbStore | None = None) -> None:
        self.sms = sms
        self.store = store  # the log is written first, as the node's driver does
        self.index = 0

    def entry(self, *commands: Command, at: float = T0) -> LogEntry:
        self.index += 1
        if len(commands) == 1:
            return LogEntry(LogIndex(self.index), Term(1), EntryType.COMMAND, commands[0].encode(), at)
        return LogEntry(LogIndex(self.index), Term(1), EntryType.BATCH, encode_batch([c.encode() for c in commands]), at)

    def apply(self, *commands: Command, at: float = T0) -> list[CommandResult]:
        e = self.entry(*commands, at=at)
        if self.store is not None:
            self.store.write_batch(entries=[e])
        outs = [sm.apply_entries([e])[0] for sm in self.sms]
        for other in outs[1:]:
            assert other == outs[0]
        return outs[0]

    def open(self, *, at: float = T0, timeout_ms: int = 60_000, max_sessions: int = 100, max_results: int = 8) -> int:
        r = self.apply(Command.open_session(timeout_ms, max_sessions, max_results), at=at)[0]
        assert r.success and isinstance(r.value, int)
        return r.value

    def call(self, sid: int, seq: int, command: Command, *, ack: int = 0, at: float = T0) -> CommandResult:
        return self.apply(Command.session_call(sid, seq, ack, command), at=at)[0]


def incr(key: str = "n") -> Command:
    return Command.increment(key)


# --- the state machine --------------------------------------------------------------------


def test_a_retried_call_returns_its_first_result_and_applies_once() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open()
    first = log.call(sid, 1, incr())
    assert first.success and first.value == 1
    again = log.call(sid, 1, incr())  # the same call, retried: a second log entry
    assert again == first  # the first result, its applied index included
    assert sm.get("n").value == b"1" and sm.version("n") == 1
    assert log.call(sid, 2, incr()).value == 2


def test_a_failed_write_is_remembered_as_it_failed() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(Command.set("s", b"text"))
    sid = log.open()
    r = log.call(sid, 1, incr("s"))
    assert not r.success
    log.apply(Command.set("s", b"5"))
    assert log.call(sid, 1, incr("s")) == r  # not applied now that it would succeed
    assert sm.get("s").value == b"5"


def test_calls_out_of_order_each_apply_once() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open()
    assert log.call(sid, 3, incr()).value == 1
    assert log.call(sid, 1, incr()).value == 2
    assert log.call(sid, 3, incr()).value == 1
    assert log.call(sid, 2, incr()).value == 3
    assert log.call(sid, 1, incr()).value == 2
    assert sm.get("n").value == b"3"


def test_seq_below_the_acknowledged_floor_is_refused() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open()
    log.call(sid, 1, incr())
    log.call(sid, 2, incr(), ack=2)  # the client has the reply of 1
    stale = log.call(sid, 1, incr())
    assert not stale.success and stale.error is not None and stale.error.startswith("STALESEQ ")
    assert "below the acknowledged floor 2" in stale.error
    assert sm.get("n").value == b"2"
    assert C.encode_result(Command.session_call(sid, 1, 0, incr()), stale).startswith(b"-STALESEQ session ")
    s = sm.sessions.get(sid)
    assert s is not None and s.floor == 2 and list(s.results) == [2]


def test_results_per_session_are_capped_and_the_floor_moves_past_them() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open(max_results=3)
    for seq in range(1, 6):
        log.call(sid, seq, incr())
    s = sm.sessions.get(sid)
    assert s is not None and sorted(s.results) == [3, 4, 5] and s.floor == 3
    assert log.call(sid, 5, incr()).value == 5  # still held: the first result
    refused = log.call(sid, 2, incr())  # dropped: refused, never applied again
    assert not refused.success and refused.error is not None and refused.error.startswith("STALESEQ")
    assert sm.get("n").value == b"5"


def test_unknown_session_is_refused_and_nothing_applies() -> None:
    sm = StateMachine()
    log = Log(sm)
    r = log.call(12345, 1, incr())
    assert not r.success and r.error is not None and r.error.startswith("NOSESSION session 12345")
    assert sm.get("n").value is None
    assert C.encode_result(Command.session_call(12345, 1, 0, incr()), r).startswith(b"-NOSESSION ")


def test_sessions_expire_in_log_time() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open(at=T0, timeout_ms=10_000)
    assert log.call(sid, 1, incr(), at=T0 + 9.9).value == 1  # a call renews the session
    assert log.call(sid, 2, incr(), at=T0 + 19.8).value == 2
    # Entries without sessions do not expire anything (and cost nothing).
    log.apply(Command.set("other", b"x"), at=T0 + 100)
    assert len(sm.sessions) == 1
    gone = log.call(sid, 2, incr(), at=T0 + 29.8)  # 10 s after the last call: expired
    assert not gone.success and gone.error is not None and gone.error.startswith("NOSESSION")
    assert len(sm.sessions) == 0 and sm.get("n").value == b"2"


def test_expiry_is_decided_by_entry_time_not_the_order_of_replicas() -> None:
    a, b = StateMachine(), StateMachine()
    log = Log(a, b)  # `Log.apply` asserts both replicas give the same results
    sid = log.open(at=T0, timeout_ms=1_000)
    other = log.open(at=T0 + 0.5, timeout_ms=1_000)
    log.call(other, 1, incr(), at=T0 + 1.2)  # `sid` is past its deadline here, and goes
    assert a.sessions.get(sid) is None and b.sessions.get(sid) is None
    assert a.digest() == b.digest()


def test_the_session_cap_expires_the_one_that_would_expire_first() -> None:
    sm = StateMachine()
    log = Log(sm)
    s1 = log.open(at=T0, max_sessions=2)
    s2 = log.open(at=T0 + 1, max_sessions=2)
    log.call(s1, 1, incr(), at=T0 + 2)  # s1 was used last: s2 expires first now
    s3 = log.open(at=T0 + 3, max_sessions=2)
    assert sm.sessions.get(s2) is None and sm.sessions.get(s1) is not None and sm.sessions.get(s3) is not None
    assert len(sm.sessions) == 2


def test_session_ids_are_index_and_position_in_the_entry() -> None:
    sm = StateMachine()
    log = Log(sm)
    log.apply(Command.set("a", b"1"))
    rs = log.apply(Command.open_session(1000, 10, 4), Command.set("b", b"2"), Command.open_session(1000, 10, 4))
    assert rs[0].value == (2 << POSITION_BITS) | 0 and rs[2].value == (2 << POSITION_BITS) | 2
    assert len(sm.sessions) == 2


def test_a_transaction_in_a_session_applies_once() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open()
    txn = Command.transaction([incr("a"), Command.op("MGET", "a", "b")])
    first = log.call(sid, 1, txn)
    assert log.call(sid, 1, txn) == first
    assert sm.get("a").value == b"1"
    reply = C.encode_result(Command.session_call(sid, 1, 0, txn), first)
    assert reply == b"*2\r\n:1\r\n*2\r\n$1\r\n1\r\n$-1\r\n"


# --- commands and the codec -----------------------------------------------------------------


def test_session_commands_round_trip_and_are_validated() -> None:
    c = Command.session_call(7, 3, 2, Command.set("k", b"v"))
    assert Command.decode(c.encode()) == c and c.inner == Command.set("k", b"v") and c.all_keys == ("k",)
    o = Command.open_session(1000, 5, 6)
    assert Command.decode(o.encode()) == o and not o.is_read_only
    with pytest.raises(TypeError):
        Command.session_call(7, 1, 0, Command.get("k"))  # a read has no business in a session
    with pytest.raises(TypeError):
        Command.session_call(7, 1, 0, c)
    with pytest.raises(ValueError):
        Command.session_call(7, 0, 0, Command.set("k", b"v"))
    with pytest.raises(ValueError):
        Command(CommandType.SESSION_OPEN, args=(b"1", b"0", b"1"))
    with pytest.raises(TypeError):
        Command.transaction([o])
    with pytest.raises(ValueError, match="malformed"):
        Command.decode(msgpack.packb([8, 7, 1, 0, [0, b"k"]]))  # a GET inside


def test_the_command_table_parses_session_commands() -> None:
    limits = C.CommandLimits(session_timeout_ms=5000, max_sessions=3, session_results=4)
    assert C.parse_command([b"SESSION", b"OPEN"], limits) == C.WriteRequest(Command.open_session(5000, 3, 4))
    req = C.parse_command([b"session", b"call", b"9", b"2", b"1", b"INCRBY", b"n", b"5"])
    assert req == C.WriteRequest(Command.session_call(9, 2, 1, Command.increment("n", 5)))
    for bad in ([b"SESSION", b"CALL", b"9", b"1", b"0", b"GET", b"n"],
                [b"SESSION", b"CALL", b"x", b"1", b"0", b"SET", b"n", b"1"],
                [b"SESSION", b"CALL", b"9", b"-1", b"0", b"SET", b"n", b"1"],
                [b"SESSION", b"CALL", b"9", b"1", b"0", b"SESSION", b"OPEN"],
                [b"SESSION", b"CALL", b"9", b"1", b"0", b"SET", b"n"]):
        assert isinstance(C.parse_command(bad), C.ErrorReply), bad
    spec = C.lookup("session", "call")
    assert spec is not None and spec.write and spec.retry_safe


def test_session_codec_round_trips_every_result_shape() -> None:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open()
    log.apply(Command.set("g", b"v"))
    log.call(sid, 1, Command.op("GETSET", "g", b"w"))
    log.call(sid, 2, Command.op("MSET", "a", b"1", "b", b"2"))
    log.call(sid, 3, Command.transaction([incr("c"), Command.op("MGET", "a", "zz")]))
    log.call(sid, 4, incr("g"))  # a failure
    s = sm.sessions.get(sid)
    assert s is not None
    back = decode_session(sid, encode_session(s))
    assert back == s
    with pytest.raises(ValueError):
        decode_session(sid, b"\x93garbage")
    with pytest.raises(ValueError):
        decode_session(sid, msgpack.packb([1000, 4, 0, 5, [[3, [True, None, 0, 1, None]]]]))  # below its floor


# --- snapshots --------------------------------------------------------------------------------


def _state_with_sessions() -> StateMachine:
    sm = StateMachine()
    log = Log(sm)
    sid = log.open(timeout_ms=5_000)
    log.call(sid, 1, incr())
    log.call(sid, 2, Command.set("k", b"v"))
    log.open(at=T0 + 1)
    return sm


def test_snapshot_round_trip_keeps_the_sessions() -> None:
    sm = _state_with_sessions()
    snap = Snapshot.from_state_machine(sm, term=1)
    assert snap.data[:16].find(b"\x04") >= 0  # version 4
    copy = StateMachine()
    snap.restore_into(copy)
    assert copy.digest() == sm.digest() and list(copy.sessions.items()) == list(sm.sessions.items())
    sid = min(s for s, _ in sm.sessions.items())
    # The copy dedups a retry just as the original does.
    retry = Command.session_call(sid, 1, 0, incr())
    e = LogEntry(LogIndex(sm.last_applied + 1), Term(1), EntryType.COMMAND, retry.encode(), T0 + 2)
    assert copy.apply_entries([e]) == sm.apply_entries([e])
    assert copy.get("n").value == b"1"


def test_a_state_without_sessions_is_still_written_as_version_3_and_v3_reads() -> None:
    sm = StateMachine()
    Log(sm).apply(Command.set("a", b"1"))
    data = b"".join(sm.snapshot_chunks())
    header = msgpack.Unpacker(raw=False)
    header.feed(data)
    assert next(header)[1] == 3
    copy = StateMachine()
    copy.restore_chunks([data])
    assert copy.get("a").value == b"1" and len(copy.sessions) == 0


def test_a_corrupt_session_in_a_snapshot_is_refused_and_changes_nothing() -> None:
    sm = _state_with_sessions()
    sessions = list(sm.sessions.items())
    bad = [(sessions[0][0], b"\x93nonsense")] + sessions[1:]
    data = b"".join(stream_snapshot(sm.backend.items(), sm.last_applied, sm.backend.count(), sessions=bad))
    target = StateMachine()
    Log(target).apply(Command.set("keep", b"me"))
    with pytest.raises(ValueError, match="corrupt snapshot"):
        target.restore_chunks([data])
    assert target.get("keep").value == b"me" and len(target.sessions) == 0
    # A session record dropped from the stream: the trailer's count catches it.
    good = b"".join(stream_snapshot(sm.backend.items(), sm.last_applied, sm.backend.count(), sessions=sessions[:1]))
    assert StateMachine().restore_chunks([good]) == sm.last_applied  # consistent by itself
    cut = b"".join(stream_snapshot(sm.backend.items(), sm.last_applied, sm.backend.count(), sessions=sessions))
    cut = cut.replace(sessions[1][1], b"")  # remove one session's bytes: no longer parses
    with pytest.raises(ValueError):
        StateMachine().restore_chunks([cut])


# --- the LMDB backend ----------------------------------------------------------------------------


@pytest.fixture
def datadir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aegis-sessions-") as d:
        yield Path(d)


def _flush(kv: object) -> None:
    taken = kv.take_flush()  # type: ignore[attr-defined]
    if taken is not None:
        assert kv.write_flush(*taken)  # type: ignore[attr-defined]
    kv.flush_done(True)  # type: ignore[attr-defined]


def test_dict_and_lmdb_backends_agree_and_lmdb_keeps_the_table_across_restart(datadir: Path) -> None:
    store = LmdbStore.open(datadir / "n1", node_id="n1")
    kv = store.state()
    lm = StateMachine(backend=kv)
    twin = StateMachine()
    log = Log(lm, twin, store=store)
    sid = log.open(max_results=4)
    for seq in range(1, 8):
        log.call(sid, seq, incr(), ack=max(0, seq - 2))
    log.call(sid, 7, incr())  # a retry
    other = log.open(at=T0 + 5, timeout_ms=1)
    _flush(kv)  # the table goes to disk in the flush's transaction
    log.call(sid, 8, Command.set("k", b"v"), at=T0 + 6)  # `other` expires here (not flushed yet)
    assert lm.sessions.get(other) is None
    assert lm.digest() == twin.digest()
    assert list(kv.sessions()) == list(twin.backend.sessions())
    store.close()

    # Restart: the stored state is as of the flush; the log replays the rest.
    store = LmdbStore.open(datadir / "n1", node_id="n1")
    kv = store.state()
    again = StateMachine(backend=kv)
    assert again.sessions.get(other) is not None and again.sessions.get(sid) is not None
    assert again.get("n").value == b"7"
    assert again.last_applied == kv.durable_applied < log.index
    replay = store.entries(LogIndex(again.last_applied + 1), LogIndex(log.index + 1))
    again.apply_entries(replay)
    assert again.digest() == twin.digest() and again.sessions.get(other) is None
    e = LogEntry(LogIndex(log.index + 1), Term(1), EntryType.COMMAND,
                 Command.session_call(sid, 7, 0, incr()).encode(), T0 + 7)
    assert again.apply_entries([e]) == twin.apply_entries([e])
    assert again.get("n").value == b"7"
    store.close()


def test_lmdb_install_and_export_carry_the_sessions(datadir: Path) -> None:
    from aegis.log import SnapshotMeta
    from storage import write_snapshot_file

    src = _state_with_sessions()
    meta = SnapshotMeta(LogIndex(src.last_applied), Term(1))
    path = datadir / "snap.aegis-snapshot"
    write_snapshot_file(path, meta, src.snapshot_chunks())
    store = LmdbStore.open(datadir / "n2", node_id="n2")
    kv = store.state()
    sm = StateMachine(backend=kv)
    Log(sm).apply(Command.set("old", b"1"))
    store.install_state_file(path, meta)
    sm.reset(src.last_applied)
    assert list(sm.sessions.items()) == list(src.sessions.items()) and sm.digest() == src.digest()
    with kv.open_export() as export:
        data = b"".join(stream_snapshot(export.records(), export.index, export.count, sessions=export.sessions()))
    copy = StateMachine()
    copy.restore_chunks([data])
    assert copy.digest() == src.digest()
    store.close()


def test_a_session_table_on_its_own_knows_nothing_of_keys() -> None:
    table = SessionTable()
    writes: dict[int, bytes | None] = {}

    class Out:
        def put_session(self, sid: int, data: bytes) -> None:
            writes[sid] = data

        def delete_session(self, sid: int) -> bool:
            writes[sid] = None
            return True

    table.open(1, 0, 10, 5, 2, Out())
    assert table.call(1, 1, 0, 5, lambda: CommandResult.ok(42), Out())[0] == CommandResult.ok(42)
    assert table.call(1, 1, 0, 6, lambda: CommandResult.ok(99), Out())[0] == CommandResult.ok(42)
    assert table.expire(16, Out()) == 1 and writes[1] is None


# --- the client ----------------------------------------------------------------------------------


async def test_the_client_retries_a_write_whose_reply_was_lost_exactly_once() -> None:
    """The node applies the call and then the connection dies before the reply: the client
    sends the same call again (same session, same seq) and gets the first result."""
    lost = {"n": 0}

    async def apply_then_close(node: FakeNode, argv: list[bytes]) -> object:
        if argv[:2] == [b"SESSION", b"CALL"] and b"INCR" in argv and lost["n"] == 0:
            lost["n"] += 1
            node.reply(argv, True)  # applied...
            return "close"  # ...and the reply lost with the connection
        return None

    node = FakeNode("n1", hook=apply_then_close)  # type: ignore[arg-type]
    async with cluster(node) as addrs:
        client = AegisClient(addrs, retry=FAST)
        assert await client.incr("n") == 1
        assert lost["n"] == 1
        calls = [a for a in node.seen if a[:2] == [b"SESSION", b"CALL"]]
        assert len(calls) == 2 and calls[0] == calls[1]  # resent as it was
        assert node.store.get("n").value == b"1"
        assert await client.incr("n") == 2
        # A plain client (no sessions) would have raised: the write may have applied.
        await client.aclose()


async def test_the_client_retries_timeout_replies_of_session_writes() -> None:
    state = {"n": 0}

    async def timeout_after_applying(node: FakeNode, argv: list[bytes]) -> object:
        if argv[:2] == [b"SESSION", b"CALL"] and state["n"] < 2:
            state["n"] += 1
            node.reply(argv, True)
            return b"-TIMEOUT the write was not committed in time; the outcome is unknown\r\n"
        return None

    node = FakeNode("n1", hook=timeout_after_applying)  # type: ignore[arg-type]
    async with cluster(node) as addrs:
        async with AegisClient(addrs, retry=FAST) as client:
            assert await client.incr("n") == 1
            assert node.store.get("n").value == b"1"


async def test_a_client_reopens_an_expired_session_on_a_first_attempt() -> None:
    node = FakeNode("n1")
    async with cluster(node) as addrs:
        async with AegisClient(addrs, retry=FAST) as client:
            await client.set("a", "1")
            client.session_id = 424242  # as if the cluster had expired ours
            await client.set("b", "2")
            assert client.session_id not in (None, 424242)
            assert node.store.get("b").value == b"2"
            assert node.count(b"SESSION") >= 4  # OPEN, CALL, CALL refused, OPEN, CALL


async def test_a_node_without_sessions_gets_plain_writes() -> None:
    async def no_sessions(node: FakeNode, argv: list[bytes]) -> object:
        if argv[0].upper() == b"SESSION":
            return b"-ERR unknown command 'SESSION', with args beginning with: 'OPEN'\r\n"
        return None

    node = FakeNode("n1", hook=no_sessions)  # type: ignore[arg-type]
    async with cluster(node) as addrs:
        async with AegisClient(addrs, retry=FAST) as client:
            await client.set("a", "1")
            assert not client.sessions and node.count(b"SET") == 1
            reply = await client.pipeline([["SET", "b", "2"]], raise_on_error=False)
            assert not isinstance(reply[0], RespError)
