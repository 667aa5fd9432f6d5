"""Unit tests for aegis.cluster: config builders, membership, failure detection, state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.cluster import (
    Cluster,
    ClusterConfig,
    ClusterState,
    MembershipChange,
    MembershipChangeType,
    StatusChange,
)
from aegis.log import Membership
from aegis.node import NodeId, NodeInfo, NodeRole, NodeStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def node(nid: str, port: int = 5001, **kw: object) -> NodeInfo:
    return NodeInfo(NodeId(nid), "127.0.0.1", port, **kw)  # type: ignore[arg-type]


def make(n_peers: int = 2, config: ClusterConfig | None = None) -> tuple[Cluster, FakeClock]:
    clock = FakeClock()
    c = Cluster(node("node1", 5000), config or ClusterConfig("test"), clock=clock)
    for i in range(n_peers):
        c.add_node(node(f"node{i + 2}", 5001 + i))
    return c, clock


def beat_all(c: Cluster) -> None:
    for n in c.peers():
        c.heartbeat(n.node_id)


# --- the seed's example -------------------------------------------------------------------


def test_seed_example() -> None:
    clock = FakeClock()
    local = NodeInfo("node1", "127.0.0.1", 5000)  # type: ignore[arg-type]
    cluster = Cluster(
        local,
        ClusterConfig("my-cluster").with_replication_factor(3).with_heartbeat_interval(timedelta(seconds=1)),
        clock=clock,
    )
    cluster.add_node(NodeInfo("node2", "127.0.0.1", 5001))  # type: ignore[arg-type]
    stats = cluster.stats()
    assert stats.total_nodes == 2 and stats.healthy_nodes == 1 and not stats.has_quorum
    cluster.heartbeat(NodeId("node2"))
    stats = cluster.stats()
    assert stats.healthy_nodes == 2 and stats.has_quorum
    assert cluster.check_failures() == []


def test_seed_example_with_the_real_clock() -> None:
    cluster = Cluster(node("node1", 5000), ClusterConfig("my-cluster"))
    cluster.add_node(node("node2"))
    cluster.heartbeat(NodeId("node2"))
    assert cluster.check_failures() == []
    assert cluster.stats().has_quorum


# --- config -------------------------------------------------------------------------------


def test_config_defaults_and_quorum() -> None:
    cfg = ClusterConfig("c")
    assert (cfg.min_nodes, cfg.max_nodes, cfg.replication_factor) == (1, 7, 3)
    assert cfg.heartbeat_interval == timedelta(seconds=1) and cfg.failure_timeout == timedelta(seconds=5)
    assert cfg.suspect_timeout == timedelta(seconds=2)
    assert [cfg.with_replication_factor(n).quorum for n in (1, 2, 3, 4, 5, 7)] == [1, 2, 2, 3, 3, 4]


def test_builders_return_new_configs() -> None:
    base = ClusterConfig("c")
    cfg = (
        base.with_replication_factor(5)
        .with_heartbeat_interval(timedelta(milliseconds=200))
        .with_failure_timeout(timedelta(seconds=2))
        .with_min_nodes(3)
        .with_max_nodes(5)
        .with_suspect_after(0.5)
        .with_name("d")
    )
    assert base.replication_factor == 3 and base.name == "c"
    assert (cfg.name, cfg.replication_factor, cfg.min_nodes, cfg.max_nodes) == ("d", 5, 3, 5)
    assert cfg.heartbeat_interval == timedelta(milliseconds=200)
    assert cfg.failure_timeout == timedelta(seconds=2)
    assert cfg.suspect_timeout == timedelta(seconds=0.5)
    assert base.with_heartbeat_interval(0.25).heartbeat_interval == timedelta(seconds=0.25)


def test_suspect_timeout_is_capped_by_the_failure_timeout() -> None:
    cfg = ClusterConfig("c", heartbeat_interval=timedelta(seconds=3), failure_timeout=timedelta(seconds=5))
    assert cfg.suspect_timeout == timedelta(seconds=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"min_nodes": 0},
        {"max_nodes": 0},
        {"replication_factor": 0},
        {"min_nodes": 8},
        {"replication_factor": 9},
        {"heartbeat_interval": timedelta(0)},
        {"failure_timeout": timedelta(seconds=1)},
        {"suspect_after": timedelta(seconds=6)},
        {"suspect_after": timedelta(0)},
        {"min_nodes": True},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "c", **kwargs}
    with pytest.raises(ValueError):
        ClusterConfig(**args)  # type: ignore[arg-type]


def test_config_rejects_non_durations() -> None:
    with pytest.raises(TypeError):
        ClusterConfig("c").with_heartbeat_interval("1s")  # type: ignore[arg-type]


def test_cluster_state_aliases_and_labels() -> None:
    assert ClusterState.Initializing is ClusterState.INITIALIZING
    assert ClusterState.Forming is ClusterState.FORMING
    assert ClusterState.Healthy is ClusterState.HEALTHY
    assert ClusterState.Degraded is ClusterState.DEGRADED
    assert ClusterState.NoQuorum is ClusterState.NO_QUORUM
    assert [s.label for s in ClusterState] == ["Initializing", "Forming", "Healthy", "Degraded", "NoQuorum"]
    assert ClusterState.DEGRADED.can_serve and not ClusterState.NO_QUORUM.can_serve


# --- membership ---------------------------------------------------------------------------


def test_local_node_counts_as_healthy() -> None:
    c, _ = make(0)
    assert c.local.status is NodeStatus.HEALTHY
    s = c.stats()
    assert (s.total_nodes, s.healthy_nodes, s.has_quorum, s.state) == (1, 1, True, ClusterState.HEALTHY)
    assert s.under_replicated


def test_add_get_update_remove() -> None:
    c, _ = make(0)
    c.add_node(node("node2"))
    assert c.get_node("node2") == node("node2") and "node2" in c and len(c) == 2
    assert [n.node_id for n in c.nodes()] == ["node1", "node2"]
    assert [n.node_id for n in c.peers()] == ["node2"]
    old = c.update_node(node("node2", 6000))
    assert old.port == 5001 and c.get_node("node2").port == 6000  # type: ignore[union-attr]
    removed = c.remove_node(NodeId("node2"))
    assert removed.port == 6000 and c.get_node("node2") is None


def test_membership_errors() -> None:
    c, _ = make(1)
    with pytest.raises(ValueError):
        c.add_node(node("node2"))
    with pytest.raises(KeyError):
        c.remove_node("ghost")
    with pytest.raises(ValueError):
        c.remove_node("node1")
    with pytest.raises(KeyError):
        c.update_node(node("ghost"))


def test_max_nodes_is_enforced() -> None:
    c, _ = make(2, ClusterConfig("c", max_nodes=3))
    with pytest.raises(ValueError, match="full"):
        c.add_node(node("node9"))


def test_a_left_node_can_rejoin() -> None:
    c, _ = make(1)
    c.update_node(c.get_node("node2").with_status(NodeStatus.LEFT))  # type: ignore[union-attr]
    assert c.stats().total_nodes == 1
    c.add_node(node("node2"))
    assert c.get_node("node2").status is NodeStatus.STARTING  # type: ignore[union-attr]


def test_membership_change_objects() -> None:
    add = MembershipChange.add(node("node2"))
    assert add.type is MembershipChangeType.ADD and add.node_id == "node2"
    assert MembershipChangeType.Add is MembershipChangeType.ADD
    assert MembershipChange.remove("node2").node is None
    with pytest.raises(ValueError):
        MembershipChange(MembershipChangeType.ADD, NodeId("node2"))
    with pytest.raises(ValueError):
        MembershipChange(MembershipChangeType.UPDATE, NodeId("other"), node("node2"))


def test_apply_change() -> None:
    c, _ = make(0)
    c.apply_change(MembershipChange.add(node("node2")))
    c.apply_change(MembershipChange.update(node("node2", 7000)))
    assert c.get_node("node2").port == 7000  # type: ignore[union-attr]
    c.apply_change(MembershipChange.remove("node2"))
    assert "node2" not in c


def test_sync_membership_follows_raft() -> None:
    c, _ = make(1)
    m = Membership.of(["node1", "node3"], ["node4"], {"node3": "10.0.0.3:7003", "node4": "10.0.0.4:7004"})
    changes = c.sync_membership(m, addresses={"node3": "127.0.0.1:9003"})
    assert [(ch.type, ch.node_id) for ch in changes] == [
        (MembershipChangeType.ADD, "node3"),
        (MembershipChangeType.ADD, "node4"),
        (MembershipChangeType.REMOVE, "node2"),
    ]
    assert c.get_node("node3").addr == "127.0.0.1:9003"  # type: ignore[union-attr]  # --peers wins
    assert c.get_node("node4").role is NodeRole.LEARNER  # type: ignore[union-attr]
    promoted = c.sync_membership(Membership.of(["node1", "node3", "node4"]))
    assert [(ch.type, ch.node_id) for ch in promoted] == [(MembershipChangeType.UPDATE, "node4")]
    assert c.get_node("node4").role is NodeRole.FOLLOWER  # type: ignore[union-attr]
    assert c.sync_membership(Membership.of(["node1", "node3", "node4"])) == []


def test_sync_membership_needs_an_address_for_new_members() -> None:
    c, _ = make(0)
    with pytest.raises(ValueError, match="no address"):
        c.sync_membership(Membership.of(["node1", "node9"]))
    assert "node9" not in c


# --- failure detection --------------------------------------------------------------------


def test_heartbeat_makes_a_node_healthy_and_reports_it() -> None:
    c, clock = make(1)
    clock.advance(0.5)
    change = c.heartbeat("node2", latency_ms=2.0, metrics={"lag": 1.0})
    assert change == StatusChange(NodeId("node2"), NodeStatus.STARTING, NodeStatus.HEALTHY, 0.5)
    assert c.heartbeat("node2") is None  # already healthy
    h = c.health("node2")
    assert h.last_heard == 0.5 and h.latency_ms == 2.0 and h.metrics == {"lag": 1.0} and h.is_healthy


def test_heartbeat_from_an_unknown_node_changes_nothing() -> None:
    c, _ = make(1)
    before = c.stats()
    with pytest.raises(KeyError):
        c.heartbeat("ghost")
    assert c.stats() == before and "ghost" not in c


def test_suspect_then_down_then_back() -> None:
    c, clock = make(2)
    beat_all(c)
    clock.advance(1.5)
    c.heartbeat("node3")
    assert c.check_failures() == []
    clock.advance(0.6)  # node2 silent for 2.1 s > 2 heartbeat intervals
    assert c.check_status_changes() == [StatusChange(NodeId("node2"), NodeStatus.HEALTHY, NodeStatus.SUSPECT, 2.1)]
    assert c.check_status_changes() == []  # reported once
    assert c.stats().suspect_nodes == 1 and c.state is ClusterState.DEGRADED
    clock.advance(3.0)  # node2 silent 5.1 s; node3 silent 3.6 s
    changes = c.check_status_changes()
    assert [(ch.node_id, ch.old, ch.new) for ch in changes] == [
        ("node2", NodeStatus.SUSPECT, NodeStatus.DOWN),
        ("node3", NodeStatus.HEALTHY, NodeStatus.SUSPECT),
    ]
    s = c.stats()
    assert (s.healthy_nodes, s.suspect_nodes, s.down_nodes, s.has_quorum) == (1, 1, 1, False)
    assert s.state is ClusterState.NO_QUORUM
    back = c.heartbeat("node2")
    assert back is not None and (back.old, back.new) == (NodeStatus.DOWN, NodeStatus.HEALTHY)
    assert c.stats().has_quorum and c.state is ClusterState.DEGRADED


def test_check_failures_returns_the_nodes_that_failed() -> None:
    """The seed's `let failed = cluster.check_failures();`: the nodes that went DOWN."""
    c, clock = make(3)
    beat_all(c)
    clock.advance(1.5)
    c.heartbeat("node3")
    clock.advance(0.6)  # node2 and node4 silent 2.1 s: SUSPECT, not failed
    failed = c.check_failures()
    assert failed == []
    assert [n.status for n in c.nodes()] == [NodeStatus.HEALTHY, NodeStatus.SUSPECT, NodeStatus.HEALTHY,
                                             NodeStatus.SUSPECT]
    clock.advance(3.0)  # node2 and node4 silent 5.1 s: DOWN; node3 silent 3.6 s: SUSPECT
    failed = c.check_failures()
    assert failed == [NodeId("node2"), NodeId("node4")]
    assert c.get_node("node3").status is NodeStatus.SUSPECT  # type: ignore[union-attr]
    assert c.check_failures() == []  # each failure is reported once...
    assert c.failed_nodes() == ["node2", "node4"]  # ...and the failed nodes stay listed
    c.heartbeat("node2")
    assert c.failed_nodes() == ["node4"]


def test_a_long_silence_goes_straight_to_down() -> None:
    c, clock = make(1)
    c.heartbeat("node2")
    clock.advance(10)
    assert [(ch.old, ch.new) for ch in c.check_status_changes()] == [(NodeStatus.HEALTHY, NodeStatus.DOWN)]


def test_a_node_never_heard_from_goes_down_after_the_failure_timeout() -> None:
    c, clock = make(1)
    clock.advance(4.9)
    assert c.check_failures() == []  # STARTING is not SUSPECT: it was never healthy
    clock.advance(0.2)
    assert c.check_failures() == ["node2"]
    assert c.get_node("node2").status is NodeStatus.DOWN  # type: ignore[union-attr]


def test_leaving_nodes_are_left_to_membership() -> None:
    c, clock = make(1)
    c.update_node(node("node2", status=NodeStatus.LEAVING))
    clock.advance(100)
    assert c.check_failures() == []
    assert c.heartbeat("node2") is None
    assert c.get_node("node2").status is NodeStatus.LEAVING  # type: ignore[union-attr]


def test_the_local_node_is_never_failed() -> None:
    c, clock = make(0)
    clock.advance(1000)
    assert c.check_failures() == []
    assert c.local.status is NodeStatus.HEALTHY and c.health("node1").last_heard == 1000


def test_report_error_shows_in_health() -> None:
    c, _ = make(1)
    c.report_error("node2", "connection refused")
    assert c.health("node2").error == "connection refused"
    c.heartbeat("node2")
    assert c.health("node2").error is None
    assert [h.node_id for h in c.health_report()] == ["node1", "node2"]
    with pytest.raises(KeyError):
        c.report_error("ghost", "x")
    with pytest.raises(KeyError):
        c.health("ghost")


def test_custom_suspect_after() -> None:
    c, clock = make(1, ClusterConfig("c").with_suspect_after(timedelta(seconds=0.5)))
    c.heartbeat("node2")
    clock.advance(0.6)
    assert [ch.new for ch in c.check_status_changes()] == [NodeStatus.SUSPECT]


# --- state and stats ----------------------------------------------------------------------


def test_initializing_while_starting_nodes_could_still_form_a_quorum() -> None:
    c, _ = make(2)
    s = c.stats()
    assert s.state is ClusterState.INITIALIZING and s.starting_nodes == 2 and not s.has_quorum
    c.heartbeat("node2")
    assert c.state is ClusterState.DEGRADED  # quorum, node3 not heard from yet
    c.heartbeat("node3")
    assert c.state is ClusterState.HEALTHY and not c.stats().under_replicated


def test_forming_below_min_nodes() -> None:
    c, _ = make(1, ClusterConfig("c", min_nodes=3))
    beat_all(c)
    assert c.state is ClusterState.FORMING
    c.add_node(node("node3", 5002))
    c.heartbeat("node3")
    assert c.state is ClusterState.HEALTHY


def test_learners_do_not_count_toward_quorum() -> None:
    c, clock = make(2)
    c.add_node(node("node4", 5004, role=NodeRole.LEARNER))
    c.add_node(node("node5", 5005, role=NodeRole.LEARNER))
    beat_all(c)
    s = c.stats()
    assert (s.voters, s.learners, s.quorum) == (3, 2, 2)
    clock.advance(10)
    c.heartbeat("node4")
    c.heartbeat("node5")
    c.check_failures()
    # 3 healthy nodes, but only 1 of 3 voters: no quorum.
    s = c.stats()
    assert s.healthy_nodes == 3 and not s.has_quorum and s.state is ClusterState.NO_QUORUM


def test_a_down_learner_degrades_but_keeps_quorum() -> None:
    c, clock = make(2)
    c.add_node(node("node4", 5004, role=NodeRole.LEARNER))
    clock.advance(10)
    c.heartbeat("node2")
    c.heartbeat("node3")
    c.check_failures()
    assert c.stats().has_quorum and c.state is ClusterState.DEGRADED


def test_leader_tracking_updates_roles() -> None:
    c, _ = make(2)
    assert c.leader is None and c.stats().leader is None
    c.set_leader("node2")
    assert c.leader == "node2" and c.get_node("node2").role is NodeRole.LEADER  # type: ignore[union-attr]
    c.set_leader(NodeId("node3"))
    assert c.get_node("node2").role is NodeRole.FOLLOWER  # type: ignore[union-attr]
    assert c.stats().leader == "node3"
    c.set_leader(None)
    assert c.leader is None
    with pytest.raises(KeyError):
        c.set_leader("ghost")


def test_removing_the_leader_forgets_it() -> None:
    c, _ = make(2)
    c.set_leader("node3")
    c.remove_node("node3")
    assert c.leader is None


def test_set_role() -> None:
    c, _ = make(2)
    c.set_role("node2", NodeRole.LEADER)
    assert c.leader == "node2"
    c.set_role("node2", NodeRole.CANDIDATE)
    assert c.leader is None and c.get_node("node2").role is NodeRole.CANDIDATE  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        c.set_role("ghost", NodeRole.FOLLOWER)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["beat", "wait", "check"]), st.sampled_from(["node2", "node3", "node4", "node5"]),
                  st.floats(0, 3)),
        max_size=40,
    )
)
def test_stats_are_consistent_under_any_schedule(ops: list[tuple[str, str, float]]) -> None:
    c, clock = make(4)
    for op, nid, dt in ops:
        if op == "beat":
            c.heartbeat(nid)
        elif op == "wait":
            clock.advance(dt)
        else:
            for ch in c.check_status_changes():
                assert ch.old is not ch.new and ch.new in (NodeStatus.SUSPECT, NodeStatus.DOWN)
        s = c.stats()
        assert s.total_nodes == 5
        assert s.healthy_nodes + s.suspect_nodes + s.down_nodes + s.starting_nodes == 5
        assert s.has_quorum == (s.healthy_nodes >= 3)
        assert (s.state is ClusterState.HEALTHY) == (s.healthy_nodes == 5)
        assert c.local.status is NodeStatus.HEALTHY
