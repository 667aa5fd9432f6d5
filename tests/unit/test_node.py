"""Unit tests for aegis.node: ids, statuses, roles, node info and health results."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.node import NodeHealth, NodeId, NodeInfo, NodeMetadata, NodeRole, NodeStatus, parse_address


def test_node_info_positional_as_the_seed_writes_it() -> None:
    n = NodeInfo("node1", "127.0.0.1", 5000)  # type: ignore[arg-type]
    assert n.node_id == "node1" and n.id == NodeId("node1")
    assert n.address == "127.0.0.1" and n.port == 5000
    assert n.status is NodeStatus.STARTING and n.role is NodeRole.FOLLOWER
    assert n.metadata == NodeMetadata()
    assert n.addr == "127.0.0.1:5000"
    assert str(n) == "node1@127.0.0.1:5000"


def test_ipv6_addresses_are_bracketed() -> None:
    assert NodeInfo(NodeId("n"), "::1", 7001).addr == "[::1]:7001"
    assert NodeInfo(NodeId("n"), "db.example", 7001).addr == "db.example:7001"


@pytest.mark.parametrize(
    "args",
    [
        ("", "127.0.0.1", 1),
        ("n", "", 1),
        ("n", "h", -1),
        ("n", "h", 65536),
        ("n", "h", True),
        ("n", "h", "80"),
        ("has space", "h", 1),
        ("a,b", "h", 1),
        ("a=b", "h", 1),
        ("x" * 129, "h", 1),
    ],
)
def test_node_info_validation(args: tuple[object, object, object]) -> None:
    with pytest.raises(ValueError):
        NodeInfo(*args)  # type: ignore[arg-type]


def test_node_info_type_checks() -> None:
    with pytest.raises(TypeError):
        NodeInfo(NodeId("n"), "h", 1, status="healthy")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NodeInfo(NodeId("n"), "h", 1, role="leader")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NodeInfo(NodeId("n"), "h", 1, metadata={})  # type: ignore[arg-type]


def test_ports_at_the_edges_are_fine() -> None:
    assert NodeInfo(NodeId("n"), "h", 0).port == 0
    assert NodeInfo(NodeId("n"), "h", 65535).port == 65535


def test_node_info_is_frozen_and_changes_by_copy() -> None:
    n = NodeInfo(NodeId("n"), "h", 1)
    with pytest.raises(AttributeError):
        n.status = NodeStatus.HEALTHY  # type: ignore[misc]
    h = n.with_status(NodeStatus.HEALTHY)
    assert h.status is NodeStatus.HEALTHY and n.status is NodeStatus.STARTING
    assert h.with_status(NodeStatus.HEALTHY) is h
    assert n.with_role(NodeRole.LEADER).role is NodeRole.LEADER
    assert hash(n) == hash(NodeInfo(NodeId("n"), "h", 1))


def test_parse_peer_spec() -> None:
    n = NodeInfo.parse("n2=127.0.0.1:7002")
    assert (n.node_id, n.address, n.port) == ("n2", "127.0.0.1", 7002)
    assert NodeInfo.parse("n3=[::1]:7003").address == "::1"
    with pytest.raises(ValueError):
        NodeInfo.parse("127.0.0.1:7002")


@pytest.mark.parametrize(
    "text, expected",
    [("h:1", ("h", 1)), ("[::1]:80", ("::1", 80)), ("10.0.0.1:65535", ("10.0.0.1", 65535))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["h", ":1", "h:", "h:x", "h:65536", "::1:80", "[::1]80", "[::1", "h:-1", "h:١"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["127.0.0.1", "::1", "fe80::1", "node-3.local"]), st.integers(0, 65535))
def test_addr_parses_back(host: str, port: int) -> None:
    n = NodeInfo(NodeId("n"), host, port)
    assert parse_address(n.addr) == (host, port)


def test_status_aliases_and_labels() -> None:
    assert NodeStatus.Starting is NodeStatus.STARTING
    assert NodeStatus.Healthy is NodeStatus.HEALTHY
    assert NodeStatus.Suspect is NodeStatus.SUSPECT
    assert NodeStatus.Down is NodeStatus.DOWN
    assert NodeStatus.Leaving is NodeStatus.LEAVING
    assert NodeStatus.Left is NodeStatus.LEFT
    assert [s.label for s in NodeStatus] == ["Starting", "Healthy", "Suspect", "Down", "Leaving", "Left"]
    assert str(NodeStatus.HEALTHY) == "Healthy"
    assert NodeStatus.HEALTHY.is_alive and not NodeStatus.SUSPECT.is_alive
    assert NodeStatus.LEAVING.is_member and not NodeStatus.LEFT.is_member


def test_role_aliases_and_labels() -> None:
    assert NodeRole.Follower is NodeRole.FOLLOWER
    assert NodeRole.Candidate is NodeRole.CANDIDATE
    assert NodeRole.Leader is NodeRole.LEADER
    assert NodeRole.Learner is NodeRole.LEARNER
    assert [r.value for r in NodeRole] == ["follower", "candidate", "leader", "learner"]
    assert NodeRole.LEADER.label == "leader" and str(NodeRole.LEADER) == "leader"
    assert NodeRole("leader") is NodeRole.LEADER
    assert not NodeRole.LEARNER.is_voter and NodeRole.CANDIDATE.is_voter


def test_metadata() -> None:
    tags = {"tier": "gold"}
    m = NodeMetadata(datacenter="eu-1", rack="r7", zone="a", tags=tags, capacity=100)
    tags["tier"] = "changed"
    assert m.tags == {"tier": "gold"}  # a private copy
    assert hash(m) == hash(NodeMetadata(datacenter="eu-1", rack="r7", zone="a", tags={"tier": "gold"}, capacity=100))
    n = NodeInfo(NodeId("n"), "h", 1, metadata=m)
    assert n.metadata.datacenter == "eu-1"


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"capacity": -1}, ValueError),
        ({"capacity": True}, ValueError),
        ({"tags": {"a": 1}}, TypeError),
        ({"tags": ["a"]}, TypeError),
        ({"rack": 3}, TypeError),
    ],
)
def test_metadata_validation(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        NodeMetadata(**kwargs)  # type: ignore[arg-type]


def test_health_observe_uses_the_injected_clock() -> None:
    h = NodeHealth.observe(
        NodeId("n2"), NodeStatus.HEALTHY, latency_ms=1.5, metrics={"lag": 3.0}, clock=lambda: 42.0
    )
    assert h.last_heard == 42.0 and h.latency_ms == 1.5 and h.metrics == {"lag": 3.0}
    assert h.is_healthy
    assert h.age(45.5) == 3.5 and h.age(41.0) == 0.0


def test_health_with_an_error_is_not_healthy() -> None:
    h = NodeHealth(NodeId("n2"), NodeStatus.HEALTHY, 1.0, error="connection refused")
    assert not h.is_healthy
    assert not NodeHealth(NodeId("n2"), NodeStatus.SUSPECT, 1.0).is_healthy


def test_health_validation() -> None:
    with pytest.raises(ValueError):
        NodeHealth(NodeId("n"), NodeStatus.HEALTHY, 0.0, latency_ms=-1.0)
    with pytest.raises(ValueError):
        NodeHealth(NodeId("n"), NodeStatus.HEALTHY, 0.0, latency_ms=float("nan"))
    with pytest.raises(TypeError):
        NodeHealth(NodeId("n"), "healthy", 0.0)  # type: ignore[arg-type]
