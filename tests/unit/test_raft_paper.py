"""One test per claim of the Raft paper and dissertation, against RaftNode with manual ticks.

Section numbers refer to Ongaro & Ousterhout 2014 ("In Search of an Understandable
Consensus Algorithm") unless they say "diss." (Ongaro's dissertation).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from aegis.log import EntryType, HardState, LogEntry, LogIndex, LogInvariantError, Membership, MemoryLogStore, Term
from aegis.memdriver import MemoryDriver
from aegis.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ConfigChange,
    ConfigChangeType,
    InstallSnapshotRequest,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from aegis.raft import ConfigChangeError, NotLeaderError, ProposalDroppedError, RaftConfig, RaftNode, Role

from .raft_net import Net, Peer, entries, make_config, store_with

ABC = ["a", "b", "c"]


def node(nid: str = "a", voters: list[str] = ABC, store: MemoryLogStore | None = None, **kw: object) -> RaftNode:
    return RaftNode(nid, make_config(**kw), store or MemoryLogStore(Membership.of(voters)))


def drain(n: RaftNode) -> list:
    """Run the node's Ready cycle (no state machine); the messages it sent."""
    return MemoryDriver(n).cycle().messages


# ---------------------------------------------------------------- §5.1 terms
@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_higher_term_message_converts_to_follower(role: str) -> None:
    n = node(pre_vote=False)
    if role == "candidate":
        n.start_election()
    elif role == "leader":
        n.start_election()
        n.step(VoteResponse(term=1, vote_granted=True, voter_id="b", receiver="a"))
        assert n.is_leader()
    n.step(AppendEntriesRequest(term=5, leader_id="c", prev_log_index=0, prev_log_term=0, receiver="a"))
    assert n.role == Role.FOLLOWER
    assert n.term == 5
    assert n.leader_id == "c"


def test_stale_term_message_is_rejected_and_changes_nothing() -> None:
    n = node(store=store_with([1, 2], ABC, term=3))
    before = (n.term, n.voted_for, n.log.last_index(), n.commit_index)
    n.step(AppendEntriesRequest(term=2, leader_id="b", prev_log_index=2, prev_log_term=2,
                                entries=tuple(entries(2, start=3)), leader_commit=3, receiver="a"))
    assert (n.term, n.voted_for, n.log.last_index(), n.commit_index) == before
    msgs = drain(n)
    # The stale leader is told the newer term so it steps down.
    assert len(msgs) == 1 and isinstance(msgs[0], AppendEntriesResponse)
    assert msgs[0].term == 3 and not msgs[0].success
    n.step(VoteRequest(term=2, candidate_id="b", last_log_index=9, last_log_term=2, receiver="a"))
    assert n.voted_for is None and drain(n) == []


def test_messages_for_other_nodes_and_votes_from_unknown_nodes_change_nothing() -> None:
    n = node()
    n.step(AppendEntriesRequest(term=5, leader_id="c", prev_log_index=0, prev_log_term=0, receiver="zz"))
    assert n.term == 0
    for m in (
        VoteRequest(term=7, candidate_id="zz", last_log_index=9, last_log_term=7, receiver="a"),
        VoteRequest(term=7, candidate_id="zz", last_log_index=9, last_log_term=7, pre_vote=True, receiver="a"),
        TimeoutNow(term=9, leader_id="zz", receiver="a"),
    ):
        n.step(m)
        assert (n.term, n.voted_for, n.log.last_index(), n.leader_id) == (0, None, 0, None)
        assert not n.has_ready()
    n.start_election()
    n.step(VoteResponse(term=1, vote_granted=True, voter_id="stranger", receiver="a"))
    assert n.role == Role.CANDIDATE  # a vote from a non-member is not counted


def test_leader_missing_from_an_uncommitted_config_still_repairs_the_follower() -> None:
    # b appended (uncommitted) a config that removes a; a, still leader, must be heard.
    n = node("b", store=store_with([1], ABC, term=1))
    change = ConfigChange(type=ConfigChangeType.REMOVE, node_id="a")
    m = change.apply_to(n.membership)
    n.step(AppendEntriesRequest(term=1, leader_id="c", prev_log_index=1, prev_log_term=1, receiver="b",
                                entries=(LogEntry(LogIndex(2), Term(1), EntryType.CONFIG_CHANGE, change.encode(m)),)))
    assert "a" not in n.membership.members
    n.step(AppendEntriesRequest(term=2, leader_id="a", prev_log_index=1, prev_log_term=1, receiver="b",
                                entries=tuple(entries(2, start=2)), leader_commit=2))
    assert n.log.term_at(LogIndex(2)) == 2 and n.commit_index == 2
    assert "a" in n.membership.members  # the uncommitted removal was rolled back


# ---------------------------------------------------------------- §5.2 elections
def test_follower_starts_election_after_timeout() -> None:
    n = node(pre_vote=False)
    for _ in range(n.randomized_timeout):
        n.tick()
    assert n.role == Role.CANDIDATE and n.term == 1 and n.voted_for == "a"
    msgs = drain(n)
    assert sorted(m.receiver for m in msgs if isinstance(m, VoteRequest)) == ["b", "c"]


def test_election_timeouts_are_randomized_within_range() -> None:
    seen = set()
    for seed in range(50):
        n = node(seed=seed)
        assert 10 <= n.randomized_timeout < 20
        seen.add(n.randomized_timeout)
    assert len(seen) > 5


@pytest.mark.parametrize(
    "size,grants,won",
    [(1, [], True), (3, ["b"], True), (3, [], False), (5, ["b", "c"], True), (5, ["b"], False)],
)
def test_election_won_by_majority(size: int, grants: list[str], won: bool) -> None:
    ids = [chr(ord("a") + i) for i in range(size)]
    n = node(voters=ids, pre_vote=False)
    n.start_election()
    for g in grants:
        n.step(VoteResponse(term=1, vote_granted=True, voter_id=g, receiver="a"))
    assert n.is_leader() == won


def test_election_lost_when_majority_rejects() -> None:
    n = node(pre_vote=False)
    n.start_election()
    n.step(VoteResponse(term=1, vote_granted=False, voter_id="b", receiver="a"))
    assert n.role == Role.CANDIDATE
    n.step(VoteResponse(term=1, vote_granted=False, voter_id="c", receiver="a"))
    assert n.role == Role.FOLLOWER


def test_one_vote_per_term() -> None:
    n = node("c")
    n.step(VoteRequest(term=1, candidate_id="a", last_log_index=0, last_log_term=0, receiver="c"))
    n.step(VoteRequest(term=1, candidate_id="b", last_log_index=0, last_log_term=0, receiver="c"))
    n.step(VoteRequest(term=1, candidate_id="a", last_log_index=0, last_log_term=0, receiver="c"))
    votes = [m for m in drain(n) if isinstance(m, VoteResponse)]
    assert [(v.receiver, v.vote_granted) for v in votes] == [("a", True), ("b", False), ("a", True)]
    assert n.voted_for == "a"


def test_vote_is_durable_before_the_response_leaves() -> None:
    n = node("c")
    n.step(VoteRequest(term=1, candidate_id="a", last_log_index=0, last_log_term=0, receiver="c"))
    rd = n.ready()
    assert rd.hard_state == HardState(Term(1), "a", LogIndex(0))
    assert any(isinstance(m, VoteResponse) and m.vote_granted for m in rd.messages)
    assert rd.must_sync()


def test_split_vote_then_a_new_election_succeeds() -> None:
    net = Net(["a", "b", "c", "d"], pre_vote=False)
    net.cut("a", "c"); net.cut("a", "d"); net.cut("b", "c"); net.cut("b", "d")
    net["a"].start_election()
    net["c"].start_election()
    net.deliver()
    assert not any(net[x].is_leader() for x in "abcd")  # 2-2 split
    net.recover()
    for _ in range(60):
        net.tick_all()
        if any(net[x].is_leader() for x in "abcd"):
            break
    leaders = [x for x in "abcd" if net[x].is_leader()]
    assert len(leaders) == 1


def test_candidate_falls_back_to_follower_on_append_from_leader_of_same_term() -> None:
    n = node(pre_vote=False)
    n.start_election()
    n.step(AppendEntriesRequest(term=1, leader_id="b", prev_log_index=0, prev_log_term=0, receiver="a"))
    assert n.role == Role.FOLLOWER and n.leader_id == "b" and n.term == 1


def test_leader_sends_heartbeats() -> None:
    net = Net(ABC)
    net.elect("a")
    net.trace.clear()
    net.tick("a")
    hb = [m for m in net.trace if isinstance(m, AppendEntriesRequest) and m.heartbeat]
    assert sorted(m.receiver for m in hb) == ["b", "c"]


# ---------------------------------------------------------------- §5.3 replication
def test_leader_replicates_and_commits_by_majority() -> None:
    net = Net(ABC)
    net.elect("a")
    net.cut("a", "c")
    idx = net.propose("a", b"x")
    assert net["a"].commit_index == idx  # a + b is a majority
    assert net["b"].log.last_index() == idx
    assert net["c"].log.last_index() < idx


def test_no_commit_without_majority() -> None:
    net = Net(ABC)
    net.elect("a")
    net.isolate("a")
    idx = net.propose("a", b"x")
    assert net["a"].commit_index < idx


def test_commit_of_an_entry_commits_preceding_entries() -> None:
    net = Net(ABC)
    net.elect("a")
    net.isolate("a")
    i1 = net.propose("a", b"1")
    i2 = net.propose("a", b"2")
    assert net["a"].commit_index < i1
    net.recover()
    i3 = net.propose("a", b"3")
    assert net["a"].commit_index == i3 > i2 > i1
    applied = [bytes(e.data) for e in net.peers["b"].applied if e.type == EntryType.COMMAND]
    assert applied == [b"1", b"2", b"3"]


def test_follower_rejects_append_that_fails_consistency_check() -> None:
    n = node("b", store=store_with([1, 1], ABC, term=2))
    n.step(AppendEntriesRequest(term=2, leader_id="a", prev_log_index=2, prev_log_term=2,
                                entries=tuple(entries(2, start=3)), receiver="b"))
    resp = [m for m in drain(n) if isinstance(m, AppendEntriesResponse)][0]
    assert not resp.success and resp.reject_index == 2 and n.log.last_index() == 2


def test_impossible_index_is_rejected_without_change() -> None:
    n = node("b", store=store_with([1, 1], ABC, term=2))
    n.step(AppendEntriesRequest(term=2, leader_id="a", prev_log_index=10_000, prev_log_term=2,
                                entries=tuple(entries(2, start=10_001)), leader_commit=10_001, receiver="b"))
    resp = [m for m in drain(n) if isinstance(m, AppendEntriesResponse)][0]
    assert not resp.success
    assert n.log.last_index() == 2 and n.commit_index == 0
    assert resp.reject_hint == 2  # fast back-off: "my log ends at 2"


def test_follower_truncates_conflicting_suffix() -> None:
    n = node("b", store=store_with([1, 1, 2, 2], ABC, term=2))
    n.step(AppendEntriesRequest(term=3, leader_id="a", prev_log_index=2, prev_log_term=1,
                                entries=tuple(entries(3, start=3)), leader_commit=0, receiver="b"))
    drain(n)
    assert [n.log.term_at(LogIndex(i)) for i in range(1, 4)] == [1, 1, 3]
    assert n.log.last_index() == 3
    assert n.log.store.last_index() == 3  # the driver truncated the store too


def test_reordered_shorter_append_never_truncates_matched_entries() -> None:
    n = node("b", store=store_with([], ABC, term=1))
    long = AppendEntriesRequest(term=1, leader_id="a", prev_log_index=0, prev_log_term=0,
                                entries=tuple(entries(1, 1, 1)), receiver="b")
    short = AppendEntriesRequest(term=1, leader_id="a", prev_log_index=0, prev_log_term=0,
                                 entries=tuple(entries(1)), receiver="b")
    n.step(long)
    n.step(short)  # arrives late
    drain(n)
    assert n.log.last_index() == 3


@pytest.mark.parametrize(
    "follower",
    [
        # Figure 7 of the paper: the leader's log is 1,1,1,4,4,5,5,6,6,6 (term 8 now).
        [1, 1, 1, 4, 4, 5, 5, 6, 6],  # (a) missing entries
        [1, 1, 1, 4],  # (b)
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # (c) extra uncommitted entry
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # (d) extra entries of term 7
        [1, 1, 1, 4, 4, 4, 4],  # (e) missing and extra
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # (f)
    ],
    ids=list("abcdef"),
)
def test_figure7_divergent_follower_logs_are_repaired(follower: list[int]) -> None:
    leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    leader = Peer("L", ["L", "F", "X"], store=store_with(leader_log, ["L", "F", "X"], term=7))
    fol = Peer("F", ["L", "F", "X"], store=store_with(follower, ["L", "F", "X"], term=7))
    net = Net([])
    net.peers = {"L": leader, "F": fol}
    leader.raft.start_election()  # term 8
    net.deliver([VoteResponse(term=8, vote_granted=True, voter_id="X", receiver="L")])
    assert leader.raft.is_leader()
    net.propose("L", b"8")
    L, F = leader.raft, fol.raft
    # 10 entries of Figure 7, the term-8 no-op, and the new proposal.
    assert F.log.last_index() == L.log.last_index() == 12
    for i in range(1, 13):
        assert F.log.term_at(LogIndex(i)) == L.log.term_at(LogIndex(i))
    assert L.commit_index == 12 and F.commit_index == 12
    assert fol.store.last_index() == 12


# ---------------------------------------------------------------- §5.4 safety
@pytest.mark.parametrize(
    "cand_last_index,cand_last_term,granted",
    [(3, 2, True), (2, 2, False), (4, 2, True), (1, 3, True), (9, 1, False)],
)
def test_vote_restriction_by_last_log_term_and_index(cand_last_index: int, cand_last_term: int, granted: bool) -> None:
    n = node("c", store=store_with([1, 2, 2], ABC, term=2))
    n.step(VoteRequest(term=3, candidate_id="a", last_log_index=cand_last_index,
                       last_log_term=cand_last_term, receiver="c"))
    v = [m for m in drain(n) if isinstance(m, VoteResponse)][0]
    assert v.vote_granted == granted


def test_figure8_old_term_entries_are_not_committed_by_counting() -> None:
    # S1 leads term 2 and replicates an entry of term 2 to S2 only; S5 leads term 3 and
    # crashes; S1 leads term 4 and copies its term-2 entry to S3: it is on a majority, but
    # must not be committed by counting until an entry of term 4 commits.
    ids = ["s1", "s2", "s3", "s4", "s5"]
    s1 = Peer("s1", ids, store=store_with([1, 2], ids, term=3))
    s2 = Peer("s2", ids, store=store_with([1, 2], ids, term=3))
    s3 = Peer("s3", ids, store=store_with([1], ids, term=3))
    net = Net([])
    net.peers = {"s1": s1, "s2": s2, "s3": s3}
    # Block proposals from flowing until we check the no-op-less state.
    s1.raft.start_election()  # term 4
    net.dropped_types = {AppendEntriesRequest}
    net.deliver()
    assert s1.raft.is_leader() and s1.raft.term == 4
    # Deliver the old term-2 entry to s3 only, without the term-4 no-op.
    s3.raft.step(AppendEntriesRequest(term=4, leader_id="s1", prev_log_index=1, prev_log_term=1,
                                      entries=(LogEntry(LogIndex(2), Term(2)),), leader_commit=0,
                                      receiver="s1" if False else "s3"))
    for m in s3.cycle():
        if isinstance(m, AppendEntriesResponse):
            s1.raft.step(m)
    s2.raft.step(AppendEntriesRequest(term=4, leader_id="s1", prev_log_index=2, prev_log_term=2,
                                      receiver="s2"))
    for m in s2.cycle():
        if isinstance(m, AppendEntriesResponse):
            s1.raft.step(m)
    s1.cycle()
    # Index 2 (term 2) is stored on s1, s2, s3: a majority of 5, but not committed.
    assert s1.raft.progress["s2"].match_index >= 2 and s1.raft.progress["s3"].match_index >= 2
    assert s1.raft.commit_index < 2
    # Once the term-4 no-op reaches a majority, both commit.
    net.dropped_types = set()
    net.tick("s1", 5)  # lost pipelined appends are detected by heartbeats and resent
    assert s1.raft.commit_index == 3


# ---------------------------------------------------------------- PreVote / CheckQuorum
def test_prevote_does_not_disrupt_a_stable_leader() -> None:
    net = Net(ABC)
    net.elect("a")
    term = net["a"].term
    net.isolate("c")
    for _ in range(100):
        net.tick("c")
    assert net["c"].term == term  # pre-votes never raise its term
    net.recover()
    net.tick_all(3)
    assert net["a"].is_leader() and net["a"].term == term


def test_without_prevote_a_rejoining_node_disrupts() -> None:
    net = Net(ABC, pre_vote=False, check_quorum=False)
    net.elect("a")
    net.isolate("c")
    for _ in range(100):
        net.tick("c")
    assert net["c"].term > net["a"].term  # the problem PreVote solves


def test_check_quorum_makes_isolated_leader_step_down() -> None:
    net = Net(ABC)
    net.elect("a")
    net.isolate("a")
    for _ in range(25):
        net.tick("a")
    assert net["a"].role == Role.FOLLOWER


def test_leader_ignores_disruptive_vote_request_within_lease() -> None:
    net = Net(ABC)
    net.elect("a")
    b = net["b"]
    term = b.term
    b.step(VoteRequest(term=term + 5, candidate_id="c", last_log_index=99, last_log_term=term + 5, receiver="b"))
    assert b.term == term and b.leader_id == "a"


# ---------------------------------------------------------------- flow control
def test_stale_ack_does_not_move_match_index() -> None:
    net = Net(ABC)
    net.elect("a")
    net.propose("a", b"1")
    net.propose("a", b"2")
    pr = net["a"].progress["b"]
    m = pr.match_index
    net["a"].step(AppendEntriesResponse(term=net["a"].term, success=True, follower_id="b",
                                        match_index=LogIndex(1), receiver="a"))
    assert pr.match_index == m


def test_pipelining_respects_inflight_window() -> None:
    net = Net(ABC, max_inflight=2, max_entries_per_message=1)
    net.elect("a")
    net.dropped_types = {AppendEntriesResponse}
    for i in range(5):
        net["a"].propose(b"%d" % i)
    net.trace.clear()
    net.deliver()
    appends_to_b = [m for m in net.trace if isinstance(m, AppendEntriesRequest) and m.receiver == "b" and m.entries]
    assert len(appends_to_b) <= 2


# ---------------------------------------------------------------- snapshots
def test_lagging_follower_catches_up_by_snapshot() -> None:
    net = Net(ABC)
    net.elect("a")
    net.isolate("c")
    for i in range(20):
        net.propose("a", b"v%d" % i)
    net.peers["a"].snapshot_now()
    net.peers["b"].snapshot_now()
    assert net["a"].log.first_index() > net["c"].log.last_index() + 1
    net.recover()
    net.tick_all(5)  # heartbeats reveal the lost appends; the log there is compacted
    assert any(isinstance(m, InstallSnapshotRequest) and m.receiver == "c" for m in net.trace)
    assert net["c"].commit_index == net["a"].commit_index
    assert net.peers["c"].sm.digest() == net.peers["a"].sm.digest()
    net.propose("a", b"after")
    assert net["c"].log.last_index() == net["a"].log.last_index()


def test_restart_keeps_only_what_ready_persisted() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    p = net.peers["b"]
    p.restart()
    assert p.raft.term == net["a"].term
    assert p.raft.log.last_index() == idx
    assert p.raft.commit_index >= idx - 1


# ---------------------------------------------------------------- membership
def test_adding_a_learner_and_promoting_it() -> None:
    net = Net(ABC, learners=["d"])
    net.elect("a")
    net.propose("a", b"x")
    assert net["d"].log.last_index() == net["a"].log.last_index()
    # learners do not vote and do not campaign
    for _ in range(50):
        net["d"].tick()
    assert net["d"].role == Role.FOLLOWER and "d" not in net["a"].membership.voters
    net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.PROMOTE, node_id="d"))
    net.deliver()
    assert "d" in net["a"].membership.voters and "d" in net["d"].membership.voters


def test_add_voter_through_the_log() -> None:
    ids = ABC
    net = Net(ids)
    net.peers["d"] = Peer("d", ids)  # a fresh node that knows the old config
    net.elect("a")
    net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.ADD_VOTER, node_id="d", address="x:1"))
    net.deliver()
    net.tick_all(2)
    assert net["a"].membership.voters == {"a", "b", "c", "d"}
    assert net["d"].membership.address_of("d") == "x:1"
    assert net["d"].log.last_index() == net["a"].log.last_index()


def test_one_membership_change_at_a_time() -> None:
    net = Net(ABC)
    net.elect("a")
    net.isolate("a")
    net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id="d"))
    with pytest.raises(ConfigChangeError):
        net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id="e"))


def test_no_membership_change_before_leader_commits_in_its_term() -> None:
    net = Net(ABC)
    net.isolate("a")
    net["a"].start_election()
    net["a"].step(VoteResponse(term=1, vote_granted=True, voter_id="b", receiver="a"))
    assert net["a"].is_leader()
    with pytest.raises(ConfigChangeError):
        net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id="d"))


def test_removing_the_leader() -> None:
    net = Net(ABC)
    net.elect("a")
    net["a"].propose_config_change(ConfigChange(type=ConfigChangeType.REMOVE, node_id="a"))
    net.deliver()
    net.tick_all(2)
    assert net["a"].role == Role.FOLLOWER
    assert net["b"].membership.voters == {"b", "c"}
    for _ in range(60):
        net.tick_all()
        if net["b"].is_leader() or net["c"].is_leader():
            break
    leader = "b" if net["b"].is_leader() else "c"
    assert net[leader].is_leader()
    net.propose(leader, b"after")
    assert net["a"].role == Role.FOLLOWER  # a removed server does not campaign
    assert net["b"].commit_index == net["c"].commit_index


def test_uncommitted_config_is_rolled_back_on_truncation() -> None:
    n = node("b", store=store_with([1], ABC, term=1))
    change = ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id="d")
    m = change.apply_to(n.membership)
    n.step(AppendEntriesRequest(term=1, leader_id="a", prev_log_index=1, prev_log_term=1, receiver="b",
                                entries=(LogEntry(LogIndex(2), Term(1), EntryType.CONFIG_CHANGE, change.encode(m)),)))
    assert "d" in n.membership.learners
    n.step(AppendEntriesRequest(term=2, leader_id="c", prev_log_index=1, prev_log_term=1, receiver="b",
                                entries=tuple(entries(2, start=2))))
    assert "d" not in n.membership.learners


# ---------------------------------------------------------------- leadership transfer
def test_leadership_transfer() -> None:
    net = Net(ABC)
    net.elect("a")
    net.propose("a", b"x")
    net["a"].transfer_leadership("c")
    net.deliver()
    assert net["c"].is_leader()
    assert net["a"].role == Role.FOLLOWER


def test_proposals_refused_during_transfer() -> None:
    net = Net(ABC)
    net.elect("a")
    net.dropped_types = {TimeoutNow}
    net["a"].transfer_leadership("c")
    with pytest.raises(ProposalDroppedError):
        net["a"].propose(b"x")
    for _ in range(12):
        net.tick("a")  # the transfer times out
    net["a"].propose(b"x")


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Net(ABC)
    net.elect("a")
    net.cut("a", "c")
    net.propose("a", b"x")
    net.recover()
    net["a"].transfer_leadership("c")
    net.tick_all(5)
    assert net["c"].is_leader()
    assert net["c"].log.last_index() >= 2


# ---------------------------------------------------------------- ReadIndex
def test_read_index_on_leader_waits_for_quorum_heartbeat() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.isolate("a")
    assert net["a"].read_index(7)
    net.deliver()
    assert net.peers["a"].read_states == []  # no quorum confirmed leadership
    net.recover()
    net.tick("a")
    net["a"].read_index(8)
    net.deliver()
    ctxs = dict(net.peers["a"].read_states)
    assert ctxs.get(8) == idx


def test_read_index_from_follower() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    assert net["b"].read_index(3)
    net.deliver()
    assert (3, idx) in net.peers["b"].read_states


def test_follower_reads_share_one_request_to_the_leader() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    for ctx in (11, 12, 13):
        assert net["b"].read_index(ctx)
    net.trace.clear()
    net.deliver()
    asks = [m for m in net.trace if isinstance(m, ReadIndexRequest)]
    assert len(asks) == 1
    assert sorted(net.peers["b"].read_states) == [(11, idx), (12, idx), (13, idx)]


def test_a_read_response_meant_for_a_previous_incarnation_is_ignored() -> None:
    net = Net(ABC)
    net.elect("a")
    net.propose("a", b"x")
    b = net.peers["b"]
    assert b.raft.read_index(1)
    asks = [m for m in b.cycle() if isinstance(m, ReadIndexRequest)]
    assert len(asks) == 1
    b.restart()  # same term, a new incarnation; the old request's answer is still coming
    net.tick("a")  # b hears from its leader again
    assert b.raft.read_index(1)
    b.cycle()  # its own request (not delivered here)
    b.raft.step(ReadIndexResponse(term=net["a"].term, sender_id="a", ctx=asks[0].ctx, index=LogIndex(0),
                                  receiver="b"))
    b.cycle()
    assert b.read_states == []


def test_a_follower_read_lost_with_its_link_is_asked_again() -> None:
    """Issue 11: a ReadIndex request (or its answer) lost with a dropped connection used to
    wait out the request timeout; the driver now asks again (`retry_reads`)."""
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.dropped_types = {ReadIndexRequest}
    assert net["b"].read_index(5)
    net.deliver()
    assert net.peers["b"].read_states == []  # lost on the way
    net.recover()
    net["b"].retry_reads()  # the driver saw the link to its leader drop
    net.deliver()
    assert (5, idx) in net.peers["b"].read_states


def test_a_lost_follower_read_is_asked_again_after_an_election_timeout() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.dropped_types = {ReadIndexResponse}
    assert net["b"].read_index(6)
    net.deliver()
    net.recover()
    for _ in range(net["b"].config.election_timeout_min - 1):
        net["b"].tick()
        net.deliver()
        assert net.peers["b"].read_states == [] or (6, idx) not in net.peers["b"].read_states
    net.tick("a")  # keep b from campaigning
    net["b"].tick()
    net.deliver()
    assert (6, idx) in net.peers["b"].read_states


def _elect_among(net: Net, *ids: str) -> str:
    """Tick `ids` (the others are cut off) until one of them leads; its id."""
    for _ in range(200):
        for nid in ids:
            net.peers[nid].raft.tick()
        net.deliver()
        for nid in ids:
            if net[nid].is_leader():
                return nid
    raise AssertionError("no leader elected")


def test_a_follower_read_survives_a_change_of_leader() -> None:
    """The read is asked of the new leader, whose read point is no earlier [6.4]."""
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.isolate("a")
    assert net["b"].read_index(7)
    net.deliver()  # the request to a is lost: a is cut off
    new = _elect_among(net, "b", "c")
    net.tick(new)
    reads = dict(net.peers["b"].read_states)
    assert reads.get(7) is not None and reads[7] >= idx


def test_reads_on_a_deposed_leader_are_served_by_the_next_one() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.isolate("a")
    assert net["a"].read_index(8)  # needs a heartbeat round a cannot win
    net.deliver()
    new = _elect_among(net, "b", "c")
    net.recover()
    net.tick(new)  # a hears the higher term and follows the new leader
    net.tick(new)
    reads = dict(net.peers["a"].read_states)
    assert reads.get(8) is not None and reads[8] >= idx


def test_a_follower_elected_leader_serves_its_waiting_reads_itself() -> None:
    net = Net(ABC)
    net.elect("a")
    idx = net.propose("a", b"x")
    net.isolate("a")
    assert net["b"].read_index(9)
    net.deliver()
    net["c"].election_elapsed = 0  # so that b is the one to stand
    net.peers["b"].raft.tick()
    for _ in range(200):
        if net["b"].is_leader():
            break
        net.peers["b"].raft.tick()
        net.peers["c"].raft.tick()
        net.deliver()
    assert net["b"].is_leader()
    net.tick("b")
    reads = dict(net.peers["b"].read_states)
    assert reads.get(9) is not None and reads[9] >= idx


def test_read_index_without_leader_fails_fast() -> None:
    n = node()
    assert n.read_index(1) is False


def test_read_index_from_non_member_is_ignored() -> None:
    net = Net(ABC)
    net.elect("a")
    net["a"].step(ReadIndexRequest(term=net["a"].term, sender_id="zz", ctx=1, receiver="a"))
    assert not net["a"].has_ready() or all(m.receiver != "zz" for m in net["a"].ready().messages)


# ---------------------------------------------------------------- proposals and bad input
def test_follower_refuses_proposals_with_leader_hint() -> None:
    net = Net(ABC)
    net.elect("a")
    with pytest.raises(NotLeaderError) as exc:
        net["b"].propose(b"x")
    assert exc.value.leader_id == "a"


def test_committed_entries_are_never_truncated() -> None:
    n = node("b", store=store_with([1, 1], ABC, term=1))
    n.step(AppendEntriesRequest(term=1, leader_id="a", prev_log_index=2, prev_log_term=1, leader_commit=2,
                                receiver="b"))
    assert n.commit_index == 2
    # An older, conflicting-looking append below the commit index is acknowledged, not applied.
    n.step(AppendEntriesRequest(term=2, leader_id="c", prev_log_index=0, prev_log_term=0,
                                entries=tuple(entries(2, 2)), receiver="b"))
    assert [n.log.term_at(LogIndex(i)) for i in (1, 2)] == [1, 1]
    with pytest.raises(LogInvariantError):
        n.log.truncate(LogIndex(2))


def test_malformed_config_entry_changes_nothing() -> None:
    n = node("b", store=store_with([1], ABC, term=1))
    before = n.membership
    n.step(AppendEntriesRequest(term=1, leader_id="a", prev_log_index=1, prev_log_term=1, receiver="b",
                                entries=(LogEntry(LogIndex(2), Term(1), EntryType.CONFIG_CHANGE, b"\xff garbage"),)))
    assert n.membership == before


# ---------------------------------------------------------------- the seed's API on the core
# Not claims of the paper: the convenience layer the seed promises (issue 9), and how it
# stays out of the way of a driver that uses ready()/advance().
def test_start_election_returns_the_vote_request() -> None:
    n = node(store=store_with([1, 1], ABC, term=1), pre_vote=False)
    request = n.start_election()
    assert isinstance(request, VoteRequest)
    assert (request.term, request.candidate_id, request.last_log_index, request.last_log_term) == (2, "a", 2, 1)
    assert not request.pre_vote and request.receiver == ""


def test_the_vote_requests_are_in_take_messages_at_once_and_durable_first() -> None:
    n = node()
    request = n.start_election()
    assert n.has_ready()
    copies = n.take_messages()
    assert [m.receiver for m in copies] == ["b", "c"]
    assert all(isinstance(m, VoteRequest) and m.term == request.term for m in copies)
    assert n.log.store.initial_state()[0] == HardState(Term(1), "a", LogIndex(0))  # persisted before
    assert not n.has_ready() and n.take_messages() == []


def test_a_driver_still_gets_the_vote_requests_from_ready() -> None:
    """The node (aegis.server) and the simulator never call take_messages(): for them
    start_election()/campaign() only add a return value."""
    n = node()
    returned = n.campaign(pre_vote=False)
    rd = n.ready()
    assert [m.receiver for m in rd.messages] == ["b", "c"]
    assert rd.hard_state == HardState(Term(1), "a", LogIndex(0))
    assert all(m == VoteRequest(term=returned.term, candidate_id="a", last_log_index=LogIndex(0),
                                last_log_term=Term(0), receiver=m.receiver) for m in rd.messages)
    n.advance(rd)
    assert n.take_messages() == []  # nothing left over for the seed's cycle


def test_campaign_returns_the_pre_vote_request() -> None:
    n = node()
    request = n.campaign(pre_vote=True)
    assert request.pre_vote and request.term == 1 and n.term == 0 and n.role == Role.PRE_CANDIDATE


def test_a_cluster_of_one_wins_and_returns_its_request() -> None:
    n = node(voters=["a"])
    request = n.start_election()
    assert n.is_leader() and request.term == 1 and n.take_messages() == []


@pytest.mark.parametrize(
    "size,votes,made_leader",
    [
        (2, [("b", True)], [True]),
        (3, [("b", False), ("c", True)], [False, True]),
        (5, [("b", True), ("c", True), ("d", True), ("e", False)], [False, True, False, False]),
        (3, [("b", False), ("c", False)], [False, False]),
    ],
)
def test_handle_vote_response_is_true_exactly_on_the_winning_vote(
    size: int, votes: list[tuple[str, bool]], made_leader: list[bool]
) -> None:
    ids = [chr(ord("a") + i) for i in range(size)]
    n = node(voters=ids, pre_vote=False)
    n.start_election()
    got = [n.handle_vote_response(VoteResponse(term=1, vote_granted=granted, voter_id=v, receiver="a"))
           for v, granted in votes]
    assert got == made_leader
    assert n.is_leader() == any(made_leader)


def test_a_vote_for_an_old_term_does_not_make_a_leader() -> None:
    n = node(pre_vote=False)
    n.start_election()
    n.start_election()  # term 2
    assert n.handle_vote_response(VoteResponse(term=1, vote_granted=True, voter_id="b", receiver="a")) is False
    assert n.role == Role.CANDIDATE


def test_take_messages_and_apply_committed_share_one_cycle() -> None:
    """Whichever runs the node's own cycle, messages wait for take_messages() and results
    for apply_committed(): none is lost, none is handed out twice."""
    from aegis.state import Command

    n = node(voters=["a"])
    n.start_election()
    index = n.propose(Command.set("k", b"v"))
    assert n.take_messages() == []  # ran the cycle: persisted, committed, applied
    [result] = n.apply_committed()
    assert result.success and result.applied_index == index
    assert n.apply_committed() == []
    assert n.state_machine is not None and n.state_machine.get("k").value == b"v"


# ---------------------------------------------------------------- RaftConfig: ticks and durations
def test_config_in_ticks_is_unchanged() -> None:
    cfg = RaftConfig()
    assert (cfg.election_timeout_min, cfg.election_timeout_max, cfg.heartbeat_interval) == (10, 20, 2)
    assert cfg.tick == timedelta(milliseconds=50)
    cfg = RaftConfig(election_timeout_min=5, election_timeout_max=9, heartbeat_interval=1, seed=3)
    assert (cfg.election_timeout_min, cfg.election_timeout_max, cfg.heartbeat_interval, cfg.seed) == (5, 9, 1, 3)


def test_config_takes_durations_and_stores_ticks() -> None:
    cfg = RaftConfig(election_timeout=timedelta(milliseconds=300), heartbeat_interval=timedelta(milliseconds=50),
                     tick=timedelta(milliseconds=10))
    assert (cfg.election_timeout_min, cfg.election_timeout_max, cfg.heartbeat_interval) == (30, 60, 5)
    assert cfg.election_timeout == timedelta(milliseconds=300)
    assert cfg.election_timeout_range == (timedelta(milliseconds=300), timedelta(milliseconds=600))
    assert cfg.heartbeat_period == timedelta(milliseconds=50) and cfg.duration(7) == timedelta(milliseconds=70)
    assert cfg == RaftConfig(election_timeout_min=30, election_timeout_max=60, heartbeat_interval=5,
                             tick=timedelta(milliseconds=10))
    both = RaftConfig(election_timeout_min=timedelta(seconds=1), election_timeout_max=timedelta(seconds=3))
    assert (both.election_timeout_min, both.election_timeout_max) == (20, 60)
    assert RaftConfig(election_timeout=8, heartbeat_interval=1).election_timeout_max == 16


def test_a_duration_config_drives_the_core_in_ticks() -> None:
    n = RaftNode("a", RaftConfig(election_timeout=timedelta(milliseconds=100), heartbeat_interval=timedelta(
        milliseconds=20), tick=timedelta(milliseconds=10), seed=1, pre_vote=False),
        MemoryLogStore(Membership.of(ABC)))
    assert 10 <= n.randomized_timeout < 20
    for _ in range(n.randomized_timeout):
        n.tick()
    assert n.role == Role.CANDIDATE


def test_config_survives_replace() -> None:
    import dataclasses

    cfg = RaftConfig(election_timeout=timedelta(milliseconds=500), tick=timedelta(milliseconds=25))
    again = dataclasses.replace(cfg, seed=9)
    assert again.seed == 9 and again.tick == cfg.tick and again.election_timeout_min == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw,error",
    [
        ({"election_timeout": timedelta(milliseconds=125)}, ValueError),  # not a whole number of 50 ms ticks
        ({"heartbeat_interval": timedelta(milliseconds=20)}, ValueError),  # 0.4 ticks
        ({"election_timeout": timedelta(seconds=1), "election_timeout_min": 10}, ValueError),
        ({"tick": timedelta(0)}, ValueError),
        ({"tick": 0.05}, ValueError),
        ({"heartbeat_interval": 1.5}, TypeError),
        ({"heartbeat_interval": True}, TypeError),
        ({"election_timeout": timedelta(milliseconds=100)}, ValueError),  # 2 ticks: not above the heartbeat
        ({"election_timeout_min": 10, "election_timeout_max": 10}, ValueError),
        ({"pre_vote": 1}, TypeError),
        ({"seed": "1"}, TypeError),
        ({"max_inflight": 0}, ValueError),
        ({"snapshot_threshold": 0}, ValueError),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RaftConfig(**kw)  # type: ignore[arg-type]


def test_a_new_leader_serves_no_read_before_an_entry_of_its_term_commits() -> None:
    """diss. §6.4 step 1: a fresh leader's commit index may lag what the old leader
    committed, so it answers ReadIndex only once an entry of its own term (its no-op) has
    committed, even when a quorum has already confirmed its leadership."""
    n = node("a", store=store_with([1, 1], ABC, term=1), pre_vote=False)
    n.start_election()
    n.step(VoteResponse(term=2, vote_granted=True, voter_id="b", receiver="a"))
    assert n.is_leader() and n.log.last_index() == 3 and n.commit_index < 3

    def cycle() -> tuple[list, list]:
        out = MemoryDriver(n).cycle()
        return out.messages, out.read_states

    cycle()
    assert n.read_index(9)
    msgs, reads = cycle()
    assert reads == []
    # b confirms leadership for any read round a broken leader may have started, matching
    # only the old entries: still no read
    for m in msgs:
        if isinstance(m, AppendEntriesRequest) and m.read_ctx and m.receiver == "b":
            n.step(AppendEntriesResponse(term=2, success=True, follower_id="b", match_index=LogIndex(2),
                                         receiver="a", read_ctx=m.read_ctx, heartbeat=True))
    msgs, reads = cycle()
    assert reads == [] and n.commit_index < 3
    # b appends the no-op: it commits, and then a read round confirms the read at index 3
    n.step(AppendEntriesResponse(term=2, success=True, follower_id="b", match_index=LogIndex(3), receiver="a"))
    msgs, reads = cycle()
    assert n.commit_index == 3
    rounds = [m.read_ctx for m in msgs if isinstance(m, AppendEntriesRequest) and m.read_ctx and m.receiver == "b"]
    assert rounds and reads == []
    n.step(AppendEntriesResponse(term=2, success=True, follower_id="b", match_index=LogIndex(3),
                                 receiver="a", read_ctx=rounds[-1], heartbeat=True))
    _, reads = cycle()
    assert [(r.ctx, r.index) for r in reads] == [(9, 3)]
