"""ReplicationEngine: config, the seed API on one node, and engines wired together by hand."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Iterable

import pytest

from aegis.cluster import ClusterConfig, ClusterState, ClusterStateChange, StatusChange
from aegis.engine import DEFAULT_CLUSTER_NAME, ReplicationConfig, ReplicationEngine, RoleChange, TickResult
from aegis.log import CompactedError, LogIndex, Membership, MemoryLogStore, Term
from aegis.messages import (
    AppendEntriesRequest,
    ConfigChange,
    ConfigChangeType,
    InstallSnapshotRequest,
    RaftMessage,
    VoteRequest,
    VoteResponse,
)
from aegis.node import NodeId, NodeInfo, NodeRole, NodeStatus
from aegis.raft import ConfigChangeError, NotLeaderError, RaftConfig, Role
from aegis.state import Command, CommandResult, StateMachine


def info(name: str, port: int = 7000) -> NodeInfo:
    return NodeInfo(NodeId(name), "127.0.0.1", port)


def solo(**config: object) -> ReplicationEngine:
    engine = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1, **config)))  # type: ignore[arg-type]
    engine.start_election()
    return engine


class Wire:
    """Engines wired together in memory (h11's two-connections helper, for Raft).

    `deliver()` carries every message, and every answer, until the network is quiet;
    `blocked` links drop what crosses them. Results each engine handed out are kept.
    """

    def __init__(self, names: Iterable[str] = ("n1", "n2", "n3"), **config: object) -> None:
        names = list(names)
        self.engines: dict[str, ReplicationEngine] = {}
        for i, name in enumerate(names):
            cfg = ReplicationConfig(RaftConfig(seed=i + 1, **config))  # type: ignore[arg-type]
            engine = ReplicationEngine(info(name, 7000 + i), cfg)
            for peer in names:
                if peer != name:
                    engine.add_peer(info(peer, 7000 + names.index(peer)))
            self.engines[name] = engine
        self.blocked: set[tuple[str, str]] = set()
        self.applied: dict[str, list[CommandResult]] = {n: [] for n in names}
        self.roles: dict[str, list[RoleChange]] = {n: [] for n in names}
        self.reads: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
        self.status: dict[str, list[tuple[int, StatusChange]]] = {n: [] for n in names}
        self.states: dict[str, list[ClusterStateChange]] = {n: [] for n in names}
        self.ticks = 0
        self.delivered: list[RaftMessage] = []

    def __getitem__(self, name: str) -> ReplicationEngine:
        return self.engines[name]

    def isolate(self, name: str) -> None:
        for other in self.engines:
            if other != name:
                self.blocked |= {(name, other), (other, name)}

    def heal(self) -> None:
        self.blocked.clear()

    def _note(self, name: str, result: TickResult) -> list[RaftMessage]:
        self.applied[name].extend(result.applied)
        self.roles[name].extend(result.role_changes)
        self.reads[name].extend((r.ctx, r.index) for r in result.read_states)
        self.status[name].extend((self.ticks, ch) for ch in result.status_changes)
        self.states[name].extend(result.state_changes)
        return list(result.messages)

    def deliver(self, queue: list[RaftMessage] | None = None) -> None:
        queue = list(queue or [])
        for name, e in self.engines.items():
            queue.extend(e.take_messages())
            self.applied[name].extend(e.apply_committed())
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < 100_000, "network did not quiesce"
            m = queue.pop(0)
            if (m.sender, m.receiver) in self.blocked:
                continue
            self.delivered.append(m)
            queue.extend(self._note(m.receiver, self.engines[m.receiver].step(m)))

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            self.ticks += 1
            queue: list[RaftMessage] = []
            for name, e in self.engines.items():
                queue.extend(self._note(name, e.tick()))
            self.deliver(queue)

    def elect(self, name: str) -> ReplicationEngine:
        self.engines[name].start_election()
        self.deliver()
        assert self.engines[name].is_leader()
        return self.engines[name]

    def leaders(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.is_leader()]


# --- ReplicationConfig ----------------------------------------------------------------------


def test_config_combines_raft_and_cluster_defaults() -> None:
    cfg = ReplicationConfig()
    assert cfg.raft == RaftConfig() and cfg.to_raft_config() is cfg.raft
    assert cfg.cluster == ClusterConfig(DEFAULT_CLUSTER_NAME)
    assert cfg.snapshot_threshold == cfg.raft.snapshot_threshold


def test_config_carries_both_parts() -> None:
    raft = RaftConfig(election_timeout_min=5, election_timeout_max=9, heartbeat_interval=1, snapshot_threshold=7,
                      seed=42)
    cluster = ClusterConfig("prod").with_replication_factor(5).with_failure_timeout(timedelta(seconds=3))
    cfg = ReplicationConfig(raft, cluster)
    assert (cfg.raft, cfg.cluster) == (raft, cluster)
    assert ReplicationConfig().with_raft(raft).with_cluster(cluster) == cfg
    e = ReplicationEngine(info("n1"), cfg)
    assert e.raft.config is raft and e.cluster.config is cluster


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReplicationConfig().raft = RaftConfig()  # type: ignore[misc]


@pytest.mark.parametrize("kw", [{"raft": {"seed": 1}}, {"cluster": "prod"}])
def test_config_rejects_bad_types(kw: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        ReplicationConfig(**kw)  # type: ignore[arg-type]


def test_config_rejects_a_detector_faster_than_the_heartbeats() -> None:
    slow = RaftConfig(heartbeat_interval=timedelta(seconds=1), election_timeout=timedelta(seconds=5))
    with pytest.raises(ValueError, match="heartbeat"):
        ReplicationConfig(slow, ClusterConfig("c").with_heartbeat_interval(0.4))
    ReplicationConfig(slow, ClusterConfig("c").with_heartbeat_interval(0.6))  # suspects after 1.2 s


# --- one engine -----------------------------------------------------------------------------


def test_new_engine_is_a_follower_with_no_leader() -> None:
    e = ReplicationEngine(info("n1"))
    assert e.node_id == "n1" and e.local == info("n1")
    assert not e.is_leader() and e.leader_id is None
    assert e.role is NodeRole.FOLLOWER and e.raft_role is Role.FOLLOWER
    assert e.term == 0 and e.commit_index == 0 and e.last_applied == 0
    assert e.get("missing") is None
    assert e.membership.voters == {"n1"}


def test_single_node_set_get_delete() -> None:
    e = solo()
    assert e.is_leader() and e.leader_id == "n1" and e.role is NodeRole.LEADER and e.term == 1
    idx = e.set("k", b"v")
    assert idx == 2  # after the leader's no-op
    assert e.get("k") is None  # proposed, not applied: propose does not drive
    [r] = e.apply_committed()
    assert r.success and r.applied_index == idx and r.version == 1
    assert e.get("k") == b"v" and e.commit_index == idx and e.last_applied == idx
    didx = e.delete("k")
    [r] = e.apply_committed()
    assert r.value == 1 and r.applied_index == didx
    assert e.get("k") is None


def test_results_are_handed_out_exactly_once() -> None:
    e = solo()
    e.set("a", b"1")
    e.flush()  # drives; the result waits
    e.set("b", b"2")
    result = e.tick()
    assert [r.applied_index for r in result.applied] == [2, 3]
    assert e.apply_committed() == []
    e.set("c", b"3")
    assert [r.applied_index for r in e.apply_committed()] == [4]
    assert e.tick().applied == ()


def test_propose_command_bytes_and_batch() -> None:
    e = solo()
    i1 = e.propose(Command.increment("n", 5))
    i2 = e.propose(Command.increment("n", 2).encode())
    batch = e.propose_batch([Command.set("x", b"1"), Command.compare_and_swap("x", b"1", b"2").encode()])
    assert [i1, i2, *batch] == [2, 3, 4, 5]
    results = e.apply_committed()
    assert [r.value for r in results] == [5, 7, None, 1]
    assert e.get("n") == b"7" and e.get("x") == b"2"


def test_failed_command_is_a_failed_result_and_changes_nothing() -> None:
    e = solo()
    e.set("s", b"text")
    e.propose(Command.increment("s"))
    ok, bad = e.apply_committed()
    assert ok.success and not bad.success and bad.error
    assert e.get("s") == b"text"


def test_follower_refuses_proposals_and_writes_nothing() -> None:
    e = ReplicationEngine(info("n1"))
    e.add_peer(NodeId("n2"))
    with pytest.raises(NotLeaderError):
        e.set("k", b"v")
    assert e.raft.log.last_index() == 0 and e.take_messages() == []


def test_add_peer_accepts_ids_and_infos() -> None:
    e = ReplicationEngine(info("n1"))
    e.add_peer(NodeId("n2"))
    e.add_peer(info("n3", 7003))
    e.add_peer("n4")
    assert e.membership.voters == {"n1", "n2", "n3", "n4"}
    assert e.peers == {"n2": None, "n3": info("n3", 7003), "n4": None}
    with pytest.raises(ValueError):
        e.add_peer(NodeId("n1"))


def test_add_peer_is_bootstrap_only() -> None:
    e = solo()
    with pytest.raises(ConfigChangeError):
        e.add_peer(NodeId("n2"))


def test_local_must_be_a_node_info() -> None:
    with pytest.raises(TypeError):
        ReplicationEngine("n1")  # type: ignore[arg-type]


def test_outbox_peeks_and_take_messages_drains() -> None:
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)))
    e.add_peer(NodeId("n2"))
    e.start_election()
    assert e.outbox() == ()  # start_election does not drive
    e.flush()
    peek = e.outbox()
    assert [type(m) for m in peek] == [VoteRequest] and e.outbox() == peek
    assert e.take_messages() == list(peek)
    assert e.outbox() == () and e.take_messages() == []


def test_tick_result_drains_what_take_messages_has_not() -> None:
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)))
    e.add_peer(NodeId("n2"))
    e.start_election()
    e.flush()
    result = e.tick()
    assert [type(m) for m in result.messages] == [VoteRequest]
    assert result.role_changes == (RoleChange(NodeRole.FOLLOWER, NodeRole.CANDIDATE, Term(1)),)
    assert result.leader is None and not result.is_empty
    assert e.take_messages() == []


def test_vote_is_persisted_before_the_request_leaves() -> None:
    store = MemoryLogStore(Membership.of(["n1", "n2"]))
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), store)
    e.start_election()
    [req] = e.take_messages()
    assert isinstance(req, VoteRequest) and req.term == 1
    hs, _ = store.initial_state()
    assert (hs.term, hs.voted_for) == (1, "n1")


def test_membership_is_persisted() -> None:
    store = MemoryLogStore(Membership.of(["n1"]))
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), store)
    e.add_peer(NodeId("n2"))
    e.flush()
    assert store.initial_state()[1].voters == {"n1", "n2"}


def test_restart_from_the_store_replays_the_log() -> None:
    e = solo()
    e.set("k", b"v")
    e.set("j", b"w")
    e.apply_committed()
    again = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), e.store)
    assert again.term == 1 and again.commit_index == 3 and again.get("k") is None
    again.apply_committed()
    assert again.get("k") == b"v" and again.get("j") == b"w"
    assert again.state_machine.digest() == e.state_machine.digest()


def test_snapshot_compacts_and_a_restart_needs_the_snapshot() -> None:
    e = solo(snapshot_threshold=5)
    for i in range(12):
        e.set(f"k{i}", str(i).encode())
    e.apply_committed()
    snap = e.store.snapshot()
    assert snap.index >= 5 and e.store.first_index() == snap.index + 1
    with pytest.raises(CompactedError):
        e.store.entries(LogIndex(1), LogIndex(2))
    assert e.snapshot_data
    with pytest.raises(ValueError):
        ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), e.store)
    again = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), e.store, snapshot_data=e.snapshot_data)
    again.apply_committed()
    assert [again.get(f"k{i}") for i in range(12)] == [str(i).encode() for i in range(12)]
    sm = StateMachine()
    sm.restore_chunks([e.snapshot_data])
    third = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), e.store, state_machine=sm)
    third.apply_committed()
    assert third.state_machine.digest() == e.state_machine.digest()


def test_read_index_on_a_single_node() -> None:
    e = solo()
    e.set("k", b"v")
    e.apply_committed()
    assert e.request_read(7)
    result = e.tick()
    assert [(r.ctx, r.index) for r in result.read_states] == [(7, e.commit_index)]


def test_read_index_without_a_leader_fails_fast() -> None:
    e = ReplicationEngine(info("n1"))
    e.add_peer(NodeId("n2"))
    assert not e.request_read(1)


def test_repr_names_the_node() -> None:
    assert "n1" in repr(solo())


# --- engines wired by hand -------------------------------------------------------------------


def test_three_engines_replicate_and_apply_everywhere() -> None:
    w = Wire()
    leader = w.elect("n1")
    assert w.leaders() == ["n1"]
    assert all(e.leader_id == "n1" for e in w.engines.values())
    idx = leader.set("key", b"value")
    w.deliver()
    for name, e in w.engines.items():
        assert e.get("key") == b"value", name
        assert e.commit_index >= idx and e.last_applied >= idx
    # Every engine reported the result of the entry exactly once.
    for name in w.engines:
        assert [r.applied_index for r in w.applied[name]] == [idx]
    assert len({e.state_machine.digest() for e in w.engines.values()}) == 1


def test_role_changes_are_reported() -> None:
    w = Wire()
    w.elect("n1")
    assert RoleChange(NodeRole.CANDIDATE, NodeRole.LEADER, Term(1)) in w.roles["n1"]
    assert w["n2"].role is NodeRole.FOLLOWER and w.roles["n2"] == []


def test_election_by_ticks_then_writes_commit() -> None:
    w = Wire()
    for _ in range(100):
        w.tick_all()
        if w.leaders():
            break
    [name] = w.leaders()
    leader = w[name]
    assert leader.term == 1  # PreVote: no term was burnt on a failed round
    leader.propose_batch([Command.set(f"k{i}", b"x") for i in range(50)])
    w.deliver()
    assert all(e.get("k49") == b"x" for e in w.engines.values())
    # Heartbeats keep the leader in place under check-quorum.
    w.tick_all(60)
    assert w.leaders() == [name] and leader.term == 1


def test_messages_for_another_node_are_ignored() -> None:
    w = Wire()
    w.elect("n1")
    before = w["n3"].raft.state()
    stray = AppendEntriesRequest(term=Term(5), leader_id="n2", prev_log_index=LogIndex(0),
                                 prev_log_term=Term(0), receiver="n1")
    result = w["n3"].step(stray)
    assert result.is_empty and w["n3"].raft.state() == before


def test_isolated_leader_steps_down_and_a_new_one_takes_over() -> None:
    w = Wire()
    w.elect("n1")
    w.isolate("n1")
    w.tick_all(80)
    assert not w["n1"].is_leader()
    assert RoleChange(NodeRole.LEADER, NodeRole.FOLLOWER, Term(1)) in w.roles["n1"]
    [new] = w.leaders()
    w[new].set("after", b"1")
    w.deliver()
    w.heal()
    w.tick_all(10)
    assert all(e.get("after") == b"1" for e in w.engines.values())
    assert all(e.leader_id == new for e in w.engines.values())


def test_uncommitted_entries_of_a_deposed_leader_are_truncated_from_its_store() -> None:
    w = Wire()
    old = w.elect("n1")
    w.isolate("n1")
    for i in range(5):
        old.set(f"lost{i}", b"x")
    old.flush()
    assert old.store.last_index() == 6
    for _ in range(100):  # n2 and n3 wait out the leader's lease, then elect one of them
        w.tick_all()
        if w["n2"].is_leader() or w["n3"].is_leader():
            break
    new = "n2" if w["n2"].is_leader() else "n3"
    w[new].set("kept", b"y")
    w.deliver()
    w.heal()
    w.tick_all(5)
    n1, n2 = w["n1"].store, w[new].store
    assert n1.last_index() == n2.last_index()
    assert [n1.term(LogIndex(i)) for i in range(1, n1.last_index() + 1)] == [
        n2.term(LogIndex(i)) for i in range(1, n2.last_index() + 1)
    ]
    assert w["n1"].get("kept") == b"y" and all(w["n1"].get(f"lost{i}") is None for i in range(5))


def test_lagging_follower_catches_up_by_snapshot() -> None:
    w = Wire(snapshot_threshold=10)
    leader = w.elect("n1")
    w.isolate("n3")
    for i in range(40):
        leader.set(f"k{i}", str(i).encode())
        w.deliver()
    assert leader.store.snapshot().index > 0
    w.heal()
    w.tick_all(10)
    assert any(isinstance(m, InstallSnapshotRequest) and m.data for m in w.delivered)
    assert [w["n3"].get(f"k{i}") for i in range(40)] == [str(i).encode() for i in range(40)]
    assert w["n3"].state_machine.digest() == leader.state_machine.digest()
    assert w["n3"].snapshot_data  # kept, so n3 could restart from its store


def test_read_index_across_engines() -> None:
    w = Wire()
    leader = w.elect("n1")
    leader.set("k", b"v")
    w.deliver()
    assert w["n2"].request_read(11)
    w.tick_all(3)  # the request goes out; the leader confirms its lease with a heartbeat round
    assert w.reads["n2"] == [(11, leader.commit_index)]
    assert w.reads["n1"] == [] and w.reads["n3"] == []


def test_learner_role() -> None:
    store = MemoryLogStore(Membership.of(["n1"], ["n2"]))
    e = ReplicationEngine(info("n2"), ReplicationConfig(RaftConfig(seed=1)), store)
    assert e.role is NodeRole.LEARNER


def test_every_follower_learns_the_commit_index_without_waiting_for_a_heartbeat() -> None:
    w = Wire()
    leader = w.elect("n1")  # the no-op commits on n2's ack; n3's ack arrives after that
    assert leader.commit_index == 1
    assert [w[n].commit_index for n in ("n2", "n3")] == [1, 1]


def test_docstring_example_runs() -> None:
    import doctest

    import aegis.engine

    failures, tried = doctest.testmod(aegis.engine)
    assert tried > 0 and failures == 0


# --- the seed's API: the vote request, results, the cluster view (issue 9) ------------------


def test_start_election_returns_the_vote_request_and_the_copies_wait_in_take_messages() -> None:
    store = MemoryLogStore(Membership.of(["n1", "n2", "n3"]))
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)), store)
    request = e.start_election()
    assert isinstance(request, VoteRequest) and not request.pre_vote
    assert (request.term, request.candidate_id, request.receiver) == (1, "n1", "")
    copies = e.take_messages()
    assert [(m.receiver, m.term) for m in copies] == [("n2", 1), ("n3", 1)]
    assert all(dataclasses.replace(m, receiver="") == request for m in copies)
    assert store.initial_state()[0].voted_for == "n1"  # persisted before they were handed out


def test_a_cluster_of_one_returns_the_request_it_won_with() -> None:
    e = ReplicationEngine(info("n1"))
    request = e.start_election()
    assert e.is_leader() and request.term == e.term == 1 and request.candidate_id == "n1"


def test_results_of_steps_nobody_read_come_from_apply_committed() -> None:
    """The seed's example: carry messages with step(), look only at .messages, then ask."""
    a = ReplicationEngine(info("n1", 7001), ReplicationConfig(RaftConfig(seed=1)))
    b = ReplicationEngine(info("n2", 7002), ReplicationConfig(RaftConfig(seed=2)))
    a.add_peer(info("n2", 7002))
    b.add_peer(info("n1", 7001))
    engines = {"n1": a, "n2": b}

    def carry() -> None:
        queue = a.take_messages() + b.take_messages()
        while queue:
            m = queue.pop(0)
            queue.extend(engines[m.receiver].step(m).messages)

    a.start_election()
    carry()
    assert a.is_leader()
    index = a.set("key1", b"value1")
    a.delete("key2")
    carry()  # the commit, and so the apply, happens inside a.step()
    results = a.apply_committed()
    assert [r.applied_index for r in results] == [index, index + 1] and all(r.success for r in results)
    assert a.get("key1") == b"value1"
    assert a.apply_committed() == []  # once
    assert [r.applied_index for r in b.apply_committed()] == [index, index + 1]


def test_reading_tick_result_applied_claims_the_results() -> None:
    e = solo()
    e.set("a", b"1")
    first = e.tick()
    e.set("b", b"2")
    second = e.tick()
    assert [r.applied_index for r in second.applied] == [3]
    assert [r.applied_index for r in e.apply_committed()] == [2]  # first.applied was never read
    assert [r.applied_index for r in first.applied] == [2]  # the record still says what it holds
    assert e.apply_committed() == []
    assert "applied=(" in repr(second) and not second.is_empty


def test_the_cluster_view_follows_the_traffic() -> None:
    w = Wire()
    leader = w.elect("n1")
    view = leader.cluster
    assert view.config.name == DEFAULT_CLUSTER_NAME
    assert [n.node_id for n in view.nodes()] == ["n1", "n2", "n3"]
    assert view.get_node("n2") == info("n2", 7001).with_status(NodeStatus.HEALTHY)  # the info add_peer was given
    stats = view.stats()
    assert stats.leader == "n1" and stats.healthy_nodes == 3 and stats.has_quorum
    assert stats.state is ClusterState.HEALTHY
    assert view.local.role is NodeRole.LEADER
    follower = w["n2"].cluster
    assert follower.leader == "n1" and follower.get_node("n1").role is NodeRole.LEADER  # type: ignore[union-attr]
    assert follower.local.role is NodeRole.FOLLOWER


def test_tick_result_reports_peers_going_suspect_down_and_back() -> None:
    w = Wire()
    leader = w.elect("n1")
    assert [(ch.node_id, ch.new) for _, ch in w.status["n1"]] == [("n2", NodeStatus.HEALTHY), ("n3", NodeStatus.HEALTHY)]
    # Peers added before the election start unheard; then they answer, one by one.
    assert [(ch.old, ch.new) for ch in w.states["n1"]] == [
        (ClusterState.HEALTHY, ClusterState.INITIALIZING),
        (ClusterState.INITIALIZING, ClusterState.DEGRADED),
        (ClusterState.DEGRADED, ClusterState.HEALTHY),
    ]
    w.status["n1"].clear()
    w.states["n1"].clear()
    w.isolate("n3")
    tick = leader.config.raft.tick.total_seconds()
    suspect_after = leader.config.cluster.suspect_timeout.total_seconds() / tick  # in ticks
    down_after = leader.config.cluster.failure_timeout.total_seconds() / tick
    w.tick_all(int(down_after) + 5)
    changes = [(at, ch.node_id, ch.old, ch.new) for at, ch in w.status["n1"]]
    assert [c[1:] for c in changes] == [
        ("n3", NodeStatus.HEALTHY, NodeStatus.SUSPECT),
        ("n3", NodeStatus.SUSPECT, NodeStatus.DOWN),
    ]
    # Silent since the election (tick 0): SUSPECT once silent longer than suspect_timeout.
    assert [at for at, *_ in changes] == [int(suspect_after) + 1, int(down_after) + 1]
    assert [(ch.old, ch.new) for ch in w.states["n1"]] == [(ClusterState.HEALTHY, ClusterState.DEGRADED)]
    assert leader.cluster.stats().down_nodes == 1 and leader.is_leader()
    assert leader.cluster.failed_nodes() == ["n3"]
    w.heal()
    w.tick_all(3)
    assert [(ch.node_id, ch.new) for _, ch in w.status["n1"][2:]] == [("n3", NodeStatus.HEALTHY)]
    assert [ch.new for ch in w.states["n1"][1:]] == [ClusterState.HEALTHY]


def test_tick_result_names_failed_and_suspected_peers() -> None:
    e = ReplicationEngine(info("n1"), ReplicationConfig(RaftConfig(seed=1)))
    e.add_peer(info("n2", 7002))
    e.step(VoteResponse(term=Term(0), vote_granted=False, voter_id="n2", receiver="n1"))  # heard from n2
    results = [e.tick() for _ in range(150)]  # 7.5 s of 50 ms ticks: n2 goes silent, then down
    [suspect] = [r for r in results if r.suspected]
    [failed] = [r for r in results if r.failed]
    assert suspect.suspected == ("n2",) and suspect.failed == () and failed.failed == ("n2",)
    assert suspect.cluster_state is ClusterState.NO_QUORUM


def test_peers_start_unheard_and_a_peer_added_by_id_has_no_address() -> None:
    e = ReplicationEngine(info("n1"))
    e.add_peer(NodeId("n2"))
    n2 = e.cluster.get_node("n2")
    assert n2 is not None and (n2.address, n2.port, n2.status) == ("unknown", 0, NodeStatus.STARTING)
    assert e.cluster.stats().state is ClusterState.INITIALIZING
    e.add_peer(info("n2", 7002))  # the address, learned later, replaces the placeholder
    assert e.cluster.get_node("n2") == info("n2", 7002)


def test_membership_changes_reach_the_view() -> None:
    w = Wire()
    leader = w.elect("n1")
    w.blocked.add(("n1", "n4"))  # n4 is not running; the view learns of it from the log
    leader.raft.propose_config_change(ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id="n4",
                                                   address="10.0.0.4:7004"))
    w.deliver()
    n4 = leader.cluster.get_node("n4")
    assert n4 is not None and n4.role is NodeRole.LEARNER and n4.addr == "10.0.0.4:7004"
    assert leader.cluster.stats().learners == 1
    leader.raft.propose_config_change(ConfigChange(type=ConfigChangeType.REMOVE, node_id="n3"))
    w.deliver()
    assert "n3" not in leader.cluster and "n3" not in w["n2"].cluster


def test_a_full_view_refuses_a_peer_before_raft_changes() -> None:
    e = ReplicationEngine(info("n1"), ReplicationConfig(cluster=ClusterConfig("c", max_nodes=2, replication_factor=1)))
    e.add_peer(NodeId("n2"))
    with pytest.raises(ValueError, match="full"):
        e.add_peer(NodeId("n3"))
    assert e.membership.voters == {"n1", "n2"}
