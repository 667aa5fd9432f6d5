"""A forged or broken peer against the sans-IO core (issue 11): terms that cannot be real,
and TimeoutNow from anyone but the leader.

Every claim is checked on RaftNode directly: the refused message changes nothing, and
nothing reaches a Ready (so nothing would be persisted or sent).
"""

from __future__ import annotations

import pytest

from aegis.log import LogIndex, Membership, MemoryLogStore, Term
from aegis.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ReadIndexRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from aegis.raft import MAX_TERM, MAX_TERM_JUMP, ImpossibleTermError, RaftError, RaftNode, Role
from aegis.transport import decode, encode

from .raft_net import Net, make_config

ABC = ["a", "b", "c"]


def node(nid: str = "a", term: int = 0, **kw: object) -> RaftNode:
    from aegis.log import HardState

    store = MemoryLogStore(Membership.of(ABC))
    store.set_hard_state(HardState(Term(term), None, LogIndex(0)))
    return RaftNode(nid, make_config(**kw), store)


def durable(n: RaftNode) -> tuple[object, ...]:
    return (n.term, n.voted_for, n.role, n.leader_id, n.log.last_index())


def forged(term: int, receiver: str = "a") -> list[object]:
    """One message of each kind, from member b, carrying `term`."""
    t = Term(term)
    return [
        VoteRequest(term=t, candidate_id="b", last_log_index=LogIndex(9), last_log_term=Term(0),
                    transfer=True, receiver=receiver),
        VoteRequest(term=t, candidate_id="b", last_log_index=LogIndex(9), last_log_term=Term(0),
                    pre_vote=True, receiver=receiver),
        VoteResponse(term=t, vote_granted=False, voter_id="b", receiver=receiver),
        AppendEntriesRequest(term=t, leader_id="b", prev_log_index=LogIndex(0), prev_log_term=Term(0),
                             receiver=receiver),
        AppendEntriesResponse(term=t, success=False, follower_id="b", receiver=receiver),
        ReadIndexRequest(term=t, sender_id="b", ctx=1, receiver=receiver),
    ]


@pytest.mark.parametrize("term", [MAX_TERM, MAX_TERM + 1, (1 << 63) - 1, 4611686018427387906])
@pytest.mark.parametrize("kind", range(6))
def test_a_term_that_cannot_be_incremented_is_refused_and_changes_nothing(term: int, kind: int) -> None:
    n = node(term=3)
    before = durable(n)
    with pytest.raises(ImpossibleTermError, match="terms stop below 2\\*\\*62"):
        n.step(forged(term)[kind])  # type: ignore[arg-type]
    assert durable(n) == before
    assert not n.has_ready()  # no hard state to persist, no reply to send


def test_a_term_absurdly_far_ahead_is_refused_but_a_long_partition_is_not() -> None:
    n = node(term=7, pre_vote=False)
    too_far = forged(7 + MAX_TERM_JUMP + 1)[0]
    with pytest.raises(ImpossibleTermError, match=f"leads this node's term 7 by more than {MAX_TERM_JUMP}"):
        n.step(too_far)  # type: ignore[arg-type]
    assert durable(n)[:2] == (7, None) and not n.has_ready()
    # A node that campaigned alone for ages is far ahead, but within reach: it is heard.
    n.step(AppendEntriesRequest(term=Term(7 + MAX_TERM_JUMP), leader_id="b", prev_log_index=LogIndex(0),
                                prev_log_term=Term(0), receiver="a"))
    assert n.term == 7 + MAX_TERM_JUMP and n.leader_id == "b"


def test_timeout_now_from_a_member_that_is_not_the_leader_is_ignored() -> None:
    net = Net(ABC)
    net.elect("a")
    c = net["c"]
    assert c.leader_id == "a"
    before = durable(c)
    # b is a member, but not c's leader: a forged "transfer to c" must not start an election.
    c.step(TimeoutNow(term=c.term, leader_id="b", receiver="c"))
    assert durable(c) == before and c.role == Role.FOLLOWER
    assert not c.has_ready()


def test_timeout_now_with_another_term_is_ignored_and_its_term_not_adopted() -> None:
    net = Net(ABC)
    net.elect("a")
    c = net["c"]
    before = durable(c)
    for term in (c.term + 1, c.term + 1000, max(c.term - 1, 0)):
        c.step(TimeoutNow(term=Term(term), leader_id="a", receiver="c"))
        assert durable(c) == before
        assert not c.has_ready()


def test_timeout_now_from_the_leader_of_this_term_is_obeyed() -> None:
    net = Net(ABC)
    net.elect("a")
    c = net["c"]
    c.step(TimeoutNow(term=c.term, leader_id="a", receiver="c"))
    assert c.role == Role.CANDIDATE
    net.deliver()
    assert c.is_leader()


def test_the_issue_11_attack_leaves_the_cluster_serving() -> None:
    """A forged peer claiming to be b sends every node a transfer vote request at a huge term
    and then TimeoutNow; the cluster keeps its term and its leader and still commits."""
    net = Net(ABC)
    net.elect("a")
    term = net["a"].term
    for target in ABC:
        if target == "b":
            continue
        with pytest.raises(ImpossibleTermError):
            net[target].step(forged(4611686018427387906, target)[0])  # type: ignore[arg-type]
        net[target].step(TimeoutNow(term=Term(term), leader_id="b", receiver=target))
        net[target].step(TimeoutNow(term=Term(term + 5), leader_id="b", receiver=target))
    net.deliver()
    assert net["a"].is_leader() and {net[x].term for x in ABC} == {term}
    idx = net.propose("a", b"still-works")
    assert all(net[x].commit_index >= idx for x in ABC)


def test_the_highest_term_a_node_can_reach_is_encodable_and_final() -> None:
    n = node(term=MAX_TERM - 1, pre_vote=False)
    request = n.start_election()  # the last election there can be
    assert n.term == MAX_TERM and request.term == MAX_TERM
    # Whatever the core produces, the codec carries: no node reaches an undecodable term.
    copy = n.take_messages()[0]
    assert decode(encode(copy)) == copy
    assert decode(encode(VoteRequest(term=Term(MAX_TERM + 1), candidate_id="a", last_log_index=LogIndex(0),
                                     last_log_term=Term(MAX_TERM), receiver="b"))).term == MAX_TERM + 1
    # At MAX_TERM it stops campaigning rather than produce MAX_TERM + 1.
    n.become_follower(Term(MAX_TERM), None)
    for _ in range(100):
        n.tick()
    assert n.term == MAX_TERM and n.role == Role.FOLLOWER
    with pytest.raises(RaftError, match="highest term"):
        n.start_election()
    with pytest.raises(RaftError, match="highest term"):
        n.campaign(pre_vote=True)


def test_terms_inside_a_message_cannot_be_newer_than_the_message() -> None:
    """A forged message at an honest term can still carry a huge term inside: a log position
    or a snapshot. (Entries newer than their append cannot even be built, nor decoded: see
    AppendEntriesRequest.) A snapshot of a newer term would put it in the log, on disk, past
    the stored term, and a restart would refuse the data directory. Refused before anything
    changes."""
    from aegis.log import LogEntry, SnapshotMeta
    from aegis.messages import InstallSnapshotRequest

    n = node(term=3)
    before = durable(n)
    bad = [
        AppendEntriesRequest(term=Term(4), leader_id="b", prev_log_index=LogIndex(1), prev_log_term=Term(9),
                             receiver="a"),
        VoteRequest(term=Term(4), candidate_id="b", last_log_index=LogIndex(9), last_log_term=Term(1 << 61),
                    receiver="a"),
        InstallSnapshotRequest(term=Term(4), leader_id="b",
                               snapshot=SnapshotMeta(index=LogIndex(5), term=Term(5), membership=Membership.of(ABC)),
                               receiver="a"),
        AppendEntriesResponse(term=Term(3), success=False, follower_id="b", hint_term=Term(50), receiver="a"),
    ]
    for m in bad:
        with pytest.raises(ImpossibleTermError, match="newer than its own"):
            n.step(m)  # type: ignore[arg-type]
        assert durable(n) == before and not n.has_ready()
    # The honest shape of the same append is taken.
    n.step(AppendEntriesRequest(term=Term(4), leader_id="b", prev_log_index=LogIndex(0), prev_log_term=Term(0),
                                entries=(LogEntry(LogIndex(1), Term(4)),), receiver="a"))
    assert n.term == 4 and n.log.last_index() == 1


@pytest.mark.parametrize("term", [MAX_TERM, (1 << 63) - 1])
def test_a_stored_term_past_the_limit_refuses_to_start_and_says_how_to_repair(term: int) -> None:
    from aegis.raft import StoredTermError

    with pytest.raises(StoredTermError, match="aegis repair-term") as info:
        node(term=term)
    assert "Stop EVERY node" in str(info.value) and "same" in str(info.value)
    node(term=MAX_TERM - 1)  # the highest term a node starts with


def test_aegis_repair_term_lowers_a_bricked_term_on_disk(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """A data directory left at term 2**63-1 by an older version (the issue 11 attack): `aegis
    serve` refuses it with the repair command; `aegis repair-term` shows what it holds, refuses
    a term below the log's, and sets the given term with the vote cleared; then it starts."""
    from pathlib import Path

    from aegis.cli import main
    from aegis.log import EntryType, HardState, LogEntry
    from storage import LmdbStore

    data = str(Path(str(tmp_path)) / "n1")
    store = LmdbStore.open(data, node_id="n1")
    store.write_batch(entries=[LogEntry(LogIndex(1), Term(2), EntryType.COMMAND), LogEntry(LogIndex(2), Term(3))],
                      hard_state=HardState(Term((1 << 63) - 1), "n2", LogIndex(2)), membership=Membership.of(["n1"]))
    store.close()

    assert main(["serve", "--id", "n1", "--listen", "127.0.0.1:0", "--data", data]) == 6
    err = capsys.readouterr().err
    assert "stored term 9223372036854775807 is at or past the highest term" in err and "aegis repair-term" in err
    assert "Traceback" not in err

    assert main(["repair-term", "--data", data]) == 0
    out = capsys.readouterr().out
    assert "stored term     9223372036854775807   PAST THE LIMIT" in out
    assert "last log entry  index 2, term 3" in out and "EVERY node" in out

    assert main(["repair-term", "--data", data, "--term", "2"]) == 2
    assert "at least this node's last log term 3" in capsys.readouterr().err
    assert main(["repair-term", "--data", data, "--term", str(MAX_TERM)]) == 2
    assert main(["repair-term", "--data", data, "--term", "5"]) == 0
    assert "set the term to 5 and cleared the vote" in capsys.readouterr().out

    store = LmdbStore.open(data, node_id="n1")
    try:
        hs, _ = store.initial_state()
        assert (hs.term, hs.voted_for, hs.commit_index) == (5, None, 2)
        n = RaftNode("n1", store=store)  # starts
        assert n.term == 5 and n.log.last_index() == 2
    finally:
        store.close()
