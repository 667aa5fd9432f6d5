"""The data API's operations in the state machine: what each one writes and replies, read
through the command table exactly as a client's argv would be (parse -> apply -> encode)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.commands import (
    ErrorReply,
    ExistsRequest,
    QueryRequest,
    ReadRequest,
    WriteRequest,
    encode_result,
    glob_matcher,
    glob_prefix,
    parse_command,
    prefix_end,
    queued_command,
)
from aegis.log import EntryType, LogEntry
from aegis.protocol import split_inline
from aegis.state import OPS, Command, CommandResult, CommandType, DictBackend, Snapshot, StateMachine, encode_batch, scan_hash

T0 = 1_800_000_000_000  # ms: the leader's clock in these tests


class Replica:
    """A state machine fed one entry per command, at a chosen leader time."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.index = 0
        self.now = T0

    def entry(self, command: Command, at: int | None = None) -> LogEntry:
        self.index += 1
        when = self.now if at is None else at
        return LogEntry(self.index, 1, EntryType.COMMAND, command.encode(), timestamp=when / 1000)

    def apply(self, command: Command, at: int | None = None) -> CommandResult:
        [[result]] = self.sm.apply_entries([self.entry(command, at)])
        return result

    def run(self, line: str, at: int | None = None) -> bytes:
        """A client's command, the way the node serves it."""
        req = parse_command(split_inline(line.encode()) or [])
        if isinstance(req, ErrorReply):
            return req.encoded()
        if isinstance(req, (ReadRequest, ExistsRequest, QueryRequest)):
            command = req.command
            return encode_result(command, self.sm.read(command, self.now if at is None else at))
        assert isinstance(req, WriteRequest), req
        return encode_result(req.command, self.apply(req.command, at))


@pytest.fixture
def r() -> Replica:
    return Replica()


def test_set_options_follow_redis(r: Replica) -> None:
    assert r.run("SET k v1 NX") == b"+OK\r\n"
    assert r.run("SET k v2 NX") == b"$-1\r\n"
    assert r.run("SET k v2 XX") == b"+OK\r\n"
    assert r.run("SET missing v XX") == b"$-1\r\n"
    assert r.run("SET k v3 GET") == b"$2\r\nv2\r\n"
    assert r.run("SET new v GET") == b"$-1\r\n"
    assert r.run("SET k v4 NX GET") == b"$2\r\nv3\r\n"  # not set, old value back
    assert r.run("GET k") == b"$2\r\nv3\r\n"
    assert r.sm.version("k") == 3


def test_expiry_is_decided_by_the_entries_time(r: Replica) -> None:
    assert r.run("SET s v EX 10") == b"+OK\r\n"
    assert r.run("TTL s") == b":10\r\n"
    assert r.run("PTTL s", at=T0 + 2_500) == b":7500\r\n"
    assert r.run("GET s", at=T0 + 9_999) == b"$1\r\nv\r\n"
    assert r.run("GET s", at=T0 + 10_000) == b"$-1\r\n"  # the deadline itself is expired
    assert r.run("EXISTS s", at=T0 + 10_000) == b":0\r\n"
    assert r.run("TTL s", at=T0 + 10_000) == b":-2\r\n"
    assert r.run("TTL nothing") == b":-2\r\n"
    assert r.run("SET p v") == b"+OK\r\n"
    assert r.run("TTL p") == b":-1\r\n"
    # A write at a later time meets the expired key: it is created anew (version 1).
    assert r.run("INCR s", at=T0 + 11_000) == b":1\r\n"
    assert r.sm.version("s") == 1
    assert len(r.sm) == 2


def test_expire_conditions_persist_and_keepttl(r: Replica) -> None:
    r.run("SET k v")
    assert r.run("EXPIRE k 100 XX") == b":0\r\n"  # no deadline yet
    assert r.run("EXPIRE k 100 NX") == b":1\r\n"
    assert r.run("EXPIRE k 50 GT") == b":0\r\n"
    assert r.run("EXPIRE k 200 GT") == b":1\r\n"
    assert r.run("EXPIRE k 300 LT") == b":0\r\n"
    assert r.run("PEXPIRE k 1500 LT") == b":1\r\n"
    assert r.run("PTTL k") == b":1500\r\n"
    assert r.run("SET k v2 KEEPTTL") == b"+OK\r\n"
    assert r.run("PTTL k") == b":1500\r\n"
    assert r.run("APPEND k !") == b":3\r\n"  # APPEND and INCR keep the deadline
    assert r.run("PTTL k") == b":1500\r\n"
    assert r.run("PERSIST k") == b":1\r\n"
    assert r.run("PERSIST k") == b":0\r\n"
    assert r.run("TTL k") == b":-1\r\n"
    assert r.run("EXPIRE k 10") == b":1\r\n"
    assert r.run("SET k plain") == b"+OK\r\n"  # a plain SET clears it
    assert r.run("TTL k") == b":-1\r\n"
    assert r.run(f"EXPIREAT k {T0 // 1000 + 5}") == b":1\r\n"
    assert r.run("TTL k") == b":5\r\n"
    assert r.run(f"PEXPIREAT k {T0 - 1}") == b":1\r\n"  # the past deletes
    assert r.run("EXISTS k") == b":0\r\n"
    assert r.run("EXPIRE missing 10") == b":0\r\n"
    assert r.run("SET k v") == b"+OK\r\n"
    assert r.run("EXPIRE k 0") == b":1\r\n"
    assert r.run("GET k") == b"$-1\r\n"
    assert len(r.sm) == 0


def test_multi_key_string_commands(r: Replica) -> None:
    assert r.run("MSET a 1 b 2 c 3") == b"+OK\r\n"
    assert r.run("MGET a b nope c") == b"*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n"
    assert r.run("MSETNX c 9 d 4") == b":0\r\n"
    assert r.run("EXISTS d") == b":0\r\n"
    assert r.run("MSETNX d 4 e 5") == b":1\r\n"
    assert r.run("GETSET a 10") == b"$1\r\n1\r\n"
    assert r.run("GETSET fresh x") == b"$-1\r\n"
    assert r.run("GETDEL b") == b"$1\r\n2\r\n"
    assert r.run("GETDEL b") == b"$-1\r\n"
    assert r.run("APPEND log ab") == b":2\r\n"
    assert r.run("APPEND log cd") == b":4\r\n"
    assert r.run("STRLEN log") == b":4\r\n"
    assert r.run("STRLEN nope") == b":0\r\n"
    assert r.run("SETNX a 1") == b":0\r\n"
    assert r.run("SETNX z 1") == b":1\r\n"
    assert r.run("SETEX t 5 v") == b"+OK\r\n"
    assert r.run("PTTL t") == b":5000\r\n"
    assert r.run("PSETEX t 250 v") == b"+OK\r\n"
    assert r.run("PTTL t") == b":250\r\n"
    assert r.run("MSET a") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert r.run("MSET a 1 b") == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert r.run("SETEX t 0 v") == b"-ERR invalid expire time in 'setex' command\r\n"


def test_versions_and_version_cas(r: Replica) -> None:
    assert r.run("GETV k") == b"*-1\r\n"
    assert r.run("CASV k 1 x") == b":0\r\n"
    assert r.run("CASV k 0 first") == b":1\r\n"  # version 0: only if absent
    rev = r.index
    assert r.run("GETV k") == b"*3\r\n$5\r\nfirst\r\n:1\r\n:%d\r\n" % rev
    assert r.run("CASV k 0 again") == b":0\r\n"
    assert r.run("CASV k 1 second") == b":1\r\n"
    assert r.run("DELV k 1") == b":0\r\n"
    assert r.run("DELV k 2") == b":1\r\n"
    assert r.run("GET k") == b"$-1\r\n"
    assert r.run("CASV k -1 x") == b"-ERR version must not be negative\r\n"


def test_transaction_applies_all_in_one_entry_and_watch_aborts(r: Replica) -> None:
    r.run("SET balance 10")
    watched = r.sm.revision("balance")
    txn = Command.transaction(
        [Command.increment("balance", -3), Command.set("audit", b"x"), Command.get("balance"),
         Command.increment("audit", 1)],
        [("balance", watched)],
    )
    reply = encode_result(txn, r.apply(txn))
    assert reply == (b"*4\r\n:7\r\n+OK\r\n$1\r\n7\r\n"
                     b"-ERR value is not an integer or out of range\r\n")  # an error does not undo the rest
    assert r.sm.get("balance").value == b"7"
    stale = Command.transaction([Command.set("balance", b"0")], [("balance", watched)])
    assert encode_result(stale, r.apply(stale)) == b"*-1\r\n"
    assert r.sm.get("balance").value == b"7"
    absent = Command.transaction([Command.set("lock", b"me")], [("lock", 0)])
    assert encode_result(absent, r.apply(absent)) == b"*1\r\n+OK\r\n"
    again = Command.transaction([Command.set("lock", b"you")], [("lock", 0)])
    assert encode_result(again, r.apply(again)) == b"*-1\r\n"


def test_a_watched_key_that_expires_aborts_exec(r: Replica) -> None:
    r.run("SET k v PX 100")
    txn = Command.transaction([Command.set("other", b"1")], [("k", r.sm.revision("k"))])
    assert r.apply(txn, at=T0 + 50).value is not None
    txn2 = Command.transaction([Command.set("other", b"2")], [("k", r.sm.record(b"k", T0 + 50)[2])])  # type: ignore[index]
    assert r.apply(txn2, at=T0 + 100).value is None


def test_purge_only_removes_what_is_expired_at_its_entry(r: Replica) -> None:
    r.run("SET a 1 PX 100")
    r.run("SET b 2 PX 500")
    r.run("SET c 3")
    assert r.sm.backend.expiring(T0 + 100, 10) == [b"a"]
    assert r.sm.backend.expiring(T0 + 1000, 10) == [b"a", b"b"]
    purge = Command.op("PURGE", b"a", b"b", b"c")
    assert r.apply(purge, at=T0 + 200).value == 1  # b is not due yet, c never
    assert r.sm.keys() == ["b", "c"]
    assert r.sm.backend.expiring(T0 + 1000, 10) == [b"b"]
    r.run("SET b 9")  # rewritten without a deadline: no longer expiring
    assert r.sm.backend.expiring(T0 + 1000, 10) == []


def test_ops_round_trip_and_refuse_bad_payloads() -> None:
    for command in (
        Command.op("MSET", "a", b"1", "b", b"2"),
        Command.op("SET", "k", b"v", b"NX", b"GET", b"PX", 10),
        Command.transaction([Command.set("a", b"1"), Command.op("GETDEL", "b")], [("a", 3)]),
    ):
        assert Command.decode(command.encode()) == command
    with pytest.raises(ValueError):
        Command.op("NOPE", b"x")
    with pytest.raises(ValueError):
        Command.op("MSET", b"a")  # pairs
    with pytest.raises(TypeError):
        Command.transaction([Command.transaction([])])
    # A payload that lies (built by hand) fails alone when applied, and changes nothing.
    r = Replica()
    bad = LogEntry(1, 1, EntryType.COMMAND, b"\x93\x06\xa3SET\x96\xa1k\xa1v\xa2ZZ\xa0\xa0\xa10", timestamp=T0 / 1000)
    [[result]] = r.sm.apply_entries([bad])
    assert not result.success and len(r.sm) == 0


def test_every_op_and_every_data_command_can_be_queued_in_multi() -> None:
    for line in ("SET k v", "SET k v NX EX 5", "GET k", "DEL k", "INCR k", "MGET a b", "MSET a 1",
                 "EXISTS a", "TTL k", "EXPIRE k 5", "GETV k", "CASV k 1 x", "APPEND k v", "STRLEN k"):
        req = parse_command(split_inline(line.encode()) or [])
        assert queued_command(req) is not None, line
    for line in ("SCAN 0", "KEYS *", "DBSIZE", "INFO", "MULTI", "PING"):
        assert queued_command(parse_command(split_inline(line.encode()) or [])) is None, line
    assert {"MGET", "STRLEN", "TTL", "PTTL", "GETV", "EXISTS"} == {n for n, s in OPS.items() if s.read_only}


def test_snapshots_carry_deadlines() -> None:
    r = Replica()
    r.run("SET a 1 PX 1000")
    r.run("SET b 2")
    snap = Snapshot.from_state_machine(r.sm, 1)
    other = StateMachine()
    snap.restore_into(other)
    assert other.backend.items().__next__() == (b"a", b"1", 1, 1, T0 + 1000)
    assert other.digest() == r.sm.digest()
    assert other.backend.expiring(T0 + 1000, 5) == [b"a"]


def test_reads_never_write() -> None:
    r = Replica()
    r.run("SET a 1 PX 10")
    assert r.sm.read(Command.get("a"), T0 + 20).value is None
    assert len(r.sm) == 1  # still stored: only a PURGE (or a write) removes it
    with pytest.raises(ValueError):
        r.sm.read(Command.set("a", b"1"))


def test_glob_matching_follows_redis() -> None:
    cases = [
        (b"*", b"anything", True), (b"user:*", b"user:", True), (b"user:*", b"use", False),
        (b"h?llo", b"hello", True), (b"h?llo", b"hllo", False), (b"h[ae]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False), (b"h[a-c]llo", b"hbllo", True), (b"h[c-a]llo", b"hbllo", True),
        (b"a\\*b", b"a*b", True), (b"a\\*b", b"axb", False), (b"[", b"x", False), (b"*.txt", b"a.txt", True),
    ]
    for pattern, key, want in cases:
        assert glob_matcher(pattern)(key) is want, (pattern, key)
    assert glob_prefix(b"user:*:name") == b"user:"
    assert glob_prefix(b"plain") == b"plain"
    assert prefix_end(b"a") == b"b" and prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff\xff") is None
    assert prefix_end(b"") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=60, unique=True), st.integers(1, 7))
def test_dict_backend_scan_visits_every_key_once_and_range_is_ordered(keys: list[bytes], count: int) -> None:
    kv = DictBackend()
    for k in keys:
        kv.put(k, b"v", 1, 1)
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, items = kv.scan(cursor, count)
        seen += [k for k, _ in items]
        if cursor == 0:
            break
    assert sorted(seen) == sorted(keys)
    assert [scan_hash(k) for k in seen] == sorted(scan_hash(k) for k in seen)
    lo, hi = b"\x01", b"\x05"
    assert [k for k, _ in kv.range(lo, hi, 0)] == sorted(k for k in keys if lo <= k < hi)
    assert [k for k, _ in kv.range(b"", None, 3)] == sorted(keys)[:3]


def test_command_helpers_know_the_new_types() -> None:
    txn = Command.transaction([Command.set("a", b"1"), Command.op("MGET", "b", "a")])
    assert txn.all_keys == ("a", "b")
    assert not txn.is_read_only
    assert Command.op("MGET", "x").is_read_only
    assert Command.op("MSET", "x", b"1", "y", b"2").all_keys == ("x", "y")
    assert txn.type is CommandType.TRANSACTION


def test_applying_records_every_change_for_the_feed() -> None:
    r = Replica()
    r.sm.changes = []
    r.run("MSET a 1 b 2")
    r.run("SET e x PX 10")
    r.run("DEL a nope")
    r.run("INCR e", at=T0 + 50)  # meets the expired key: deleted, then created anew
    assert r.sm.changes == [(1, b"a", b"1"), (1, b"b", b"2"), (2, b"e", b"x"), (3, b"a", None),
                            (4, b"e", None), (4, b"e", b"1")]
    r.sm.changes = None  # off: nothing is recorded
    r.run("SET z 1")
    assert r.sm.changes is None


def test_a_plain_set_in_a_batch_records_and_versions_as_the_general_path_does() -> None:
    """A BATCH applies plain SETs straight from their wire form; the changes it records,
    the versions and the results are those of the same SETs applied one by one."""
    one, batched = Replica(), Replica()
    for rep in (one, batched):
        rep.sm.changes = []
        rep.run("SET e x PX 10")
        rep.run("SET k 1")
    sets = [Command.set("e", b"y"), Command.set("k", b"2"), Command.set("n", b"3"), Command.set("n", b"4")]
    at = T0 + 50  # after e's deadline: the SET meets an expired key
    singles = [one.apply(c, at=at) for c in sets]
    batched.index += 1
    entry = LogEntry(batched.index, 1, EntryType.BATCH, encode_batch([c.encode() for c in sets]), timestamp=at / 1000)
    [results] = batched.sm.apply_entries([entry])
    assert [(r.success, r.version) for r in results] == [(r.success, r.version) for r in singles] == \
        [(True, 1), (True, 2), (True, 1), (True, 2)]
    assert batched.sm.changes == [(1, b"e", b"x"), (2, b"k", b"1"), (3, b"e", None), (3, b"e", b"y"),
                                  (3, b"k", b"2"), (3, b"n", b"3"), (3, b"n", b"4")]
    assert [(k, v) for _, k, v in batched.sm.changes] == [(k, v) for _, k, v in one.sm.changes]
    for key in ("e", "k", "n"):
        assert batched.sm.read(Command.get(key), at).version == one.sm.read(Command.get(key), at).version
