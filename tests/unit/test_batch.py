"""Batched entries and the commit-only hard state: several commands in one log entry, each
with its own result; and no fsync for a moved commit index alone."""

from __future__ import annotations

import pytest

from aegis.log import EntryType, LogEntry, LogIndex, Term
from aegis.state import (
    Command,
    DictBackend,
    StateMachine,
    decode_batch,
    encode_batch,
)

from aegis.log import HardState, Membership, MemoryLogStore
from aegis.memdriver import MemoryDriver
from aegis.messages import AppendEntriesRequest
from aegis.raft import RaftNode

from .raft_net import Net, make_config


def batch_entry(index: int, *commands: Command) -> LogEntry:
    return LogEntry(LogIndex(index), Term(1), EntryType.BATCH, encode_batch([c.encode() for c in commands]))


def test_a_batch_round_trips() -> None:
    cmds = [Command.set("a", b"1"), Command.increment("n", 5), Command.delete("a", "b"),
            Command.compare_and_swap("x", b"o", b"n"), Command.custom("h", b"arg")]
    assert decode_batch(encode_batch([c.encode() for c in cmds])) == cmds
    assert decode_batch(encode_batch([])) == []


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\x01"])
def test_a_malformed_batch_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_batch(raw)


def test_a_batch_applies_in_order_with_a_result_per_command() -> None:
    sm = StateMachine()
    e = batch_entry(1, Command.set("k", b"1"), Command.increment("k", 2), Command.set("k", b"x"),
                    Command.increment("k"), Command.delete("k", "k"), Command.get("k"))
    [results] = sm.apply_entries([e])
    assert [r.success for r in results] == [True, True, True, False, True, True]
    assert results[1].value == 3 and results[1].version == 2
    assert results[2].version == 3 and results[4].value == 1 and results[5].value is None
    assert all(r.applied_index == 1 for r in results)
    assert "k" not in sm and sm.last_applied == 1
    # The same entry again is a no-op (replay after a restart).
    assert sm.apply_entries([e]) == [[]]


def test_a_batch_is_the_same_as_its_commands_one_by_one() -> None:
    cmds = [Command.set(f"k{i % 7}", str(i).encode()) for i in range(40)] + [Command.delete("k1", "k2")]
    one = StateMachine()
    one.apply_entries([batch_entry(1, *cmds)])
    many = StateMachine()
    for i, c in enumerate(cmds, start=1):
        many.apply(c, i)
    assert one.digest() == many.digest() and one.keys() == many.keys()


def test_a_bad_command_in_a_batch_fails_alone() -> None:
    sm = StateMachine()
    good = Command.set("a", b"1").encode()
    bad = b"\x93\x63\xc4\x01k\x01"  # an unknown command type
    e = LogEntry(LogIndex(1), Term(1), EntryType.BATCH, encode_batch([good, bad, good]))
    [results] = sm.apply_entries([e])
    assert [r.success for r in results] == [True, False, True]
    assert sm.version("a") == 2
    # A payload that is no batch at all is one failed result; the index still advances.
    [results] = sm.apply_entries([LogEntry(LogIndex(2), Term(1), EntryType.BATCH, b"\xc1")])
    assert len(results) == 1 and not results[0].success and sm.last_applied == 2


def test_revisions_are_the_index_of_the_last_write() -> None:
    sm = StateMachine(backend=DictBackend())
    sm.apply_entries([batch_entry(3, Command.set("a", b"1"), Command.set("b", b"1")), batch_entry(4, Command.set("a", b"2"))])
    assert (sm.revision("a"), sm.version("a")) == (4, 2)
    assert (sm.revision("b"), sm.version("b")) == (3, 1)
    assert sm.revision("nope") == 0


def test_propose_commands_makes_one_entry_committed_and_applied_everywhere() -> None:
    net = Net(["a", "b", "c"])
    net.elect("a")
    a = net["a"]
    before = a.log.last_index()
    idx = a.propose_commands([Command.set(f"k{i}", b"v").encode() for i in range(100)])
    assert idx == before + 1
    net.deliver()
    assert a.log.last_index() == idx and a.commit_index == idx
    for p in net.peers.values():
        assert len(p.sm) == 100
    assert a.propose_commands([Command.set("solo", b"v").encode()]) == idx + 1
    assert a.log.slice(LogIndex(idx + 1), LogIndex(idx + 2))[0].type == EntryType.COMMAND  # one: a plain entry
    with pytest.raises(ValueError):
        a.propose_commands([])


def test_a_commit_index_alone_needs_no_fsync() -> None:
    store = MemoryLogStore(Membership.of(["a", "b", "c"]))
    b = RaftNode("b", make_config(), store)
    e1 = LogEntry(LogIndex(1), Term(1), EntryType.COMMAND, Command.set("k", b"v").encode())
    b.step(AppendEntriesRequest(term=Term(1), leader_id="a", prev_log_index=LogIndex(0), prev_log_term=Term(0),
                                entries=(e1,), receiver="b"))
    rd = b.ready()
    assert rd.entries and rd.hard_state is not None and rd.must_sync()  # entries and the new term
    rd.persist_to(store)
    b.advance(rd)
    b.step(AppendEntriesRequest(term=Term(1), leader_id="a", prev_log_index=LogIndex(1), prev_log_term=Term(1),
                                leader_commit=LogIndex(1), receiver="b"))
    rd = b.ready()
    assert rd.hard_state == HardState(Term(1), None, LogIndex(1)) and rd.commit_only
    assert [e.index for e in rd.committed_entries] == [1]
    assert not rd.must_sync()  # the commit index is relearned from the leader after a crash
    rd.persist_to(store)
    b.advance(rd)
    # A new term is never commit-only.
    b.step(AppendEntriesRequest(term=Term(2), leader_id="c", prev_log_index=LogIndex(1), prev_log_term=Term(1),
                                leader_commit=LogIndex(1), receiver="b"))
    rd = b.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 2 and rd.must_sync()


def test_a_restart_with_a_durable_state_machine_does_not_reapply() -> None:
    store = MemoryLogStore(Membership.of(["a"]))
    n = RaftNode("a", make_config(), store)
    n.campaign(pre_vote=False)
    sm = StateMachine()
    driver = MemoryDriver(n, sm)
    driver.cycle()
    n.propose(Command.set("k", b"v"))
    driver.cycle()
    applied = sm.last_applied
    assert applied == store.last_index()
    # The stored commit index may lag (it is written lazily); the applied index says more.
    again = RaftNode("a", make_config(), store, applied=applied)
    assert again.commit_index == applied and not again.ready().committed_entries
