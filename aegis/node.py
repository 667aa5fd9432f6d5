"""Who a node is and how it is doing: ids, addresses, roles, health.

Theory of operation
-------------------
A node is identified by its `NodeId` alone — never by its address: two nodes may know a third
by different addresses (NAT, DNS names, proxies). `NodeInfo` pairs an id with the address
this process uses to reach it, plus the status the failure detector assigned and the Raft
role last reported. `NodeInfo` and `NodeMetadata` are frozen: a status change makes a new
`NodeInfo` (`with_status`), so a snapshot of the cluster view handed to another task cannot
change under it.

`NodeStatus` is the failure detector's verdict (see `aegis.cluster`): STARTING until first
heard from, HEALTHY, SUSPECT after missed heartbeats, DOWN after the failure timeout,
LEAVING/LEFT while and after it is removed. `NodeRole` is Raft's view and is independent.

Nothing here reads the clock by itself: `NodeHealth.observe` takes one as a parameter
(default `time.monotonic`), so tests drive time.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import Callable, Mapping, NewType

__all__ = [
    "NodeId",
    "NodeStatus",
    "NodeRole",
    "NodeMetadata",
    "NodeInfo",
    "NodeHealth",
    "Clock",
    "parse_address",
]

NodeId = NewType("NodeId", str)
Clock = Callable[[], float]

MAX_NODE_ID_LEN = 128


class NodeStatus(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"
    LEAVING = "leaving"
    LEFT = "left"

    # The seed's CamelCase spellings (aliases: same members).
    Starting = "starting"
    Healthy = "healthy"
    Suspect = "suspect"
    Down = "down"
    Leaving = "leaving"
    Left = "left"

    @property
    def label(self) -> str:
        """Human form, e.g. "Healthy"."""
        return self.value.capitalize()

    @property
    def is_alive(self) -> bool:
        """Heard from recently enough to count on (SUSPECT is not counted)."""
        return self is NodeStatus.HEALTHY

    @property
    def is_member(self) -> bool:
        """Still part of the cluster (not LEFT)."""
        return self is not NodeStatus.LEFT

    def __str__(self) -> str:
        return self.label


class NodeRole(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"

    Follower = "follower"
    Candidate = "candidate"
    Leader = "leader"
    Learner = "learner"

    @property
    def label(self) -> str:
        """The lower-case name INFO prints, e.g. "leader"."""
        return self.value

    @property
    def is_voter(self) -> bool:
        return self is not NodeRole.LEARNER

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class NodeMetadata:
    """Placement and descriptive data; opaque to Raft."""

    datacenter: str | None = None
    rack: str | None = None
    zone: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    capacity: int | None = None

    def __post_init__(self) -> None:
        for name in ("datacenter", "rack", "zone"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None")
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise TypeError("tags must map str to str")
        # A private copy: the caller's dict may change later; this object must not.
        object.__setattr__(self, "tags", dict(self.tags))
        if self.capacity is not None and (
            not isinstance(self.capacity, int) or isinstance(self.capacity, bool) or self.capacity < 0
        ):
            raise ValueError(f"capacity must be a non-negative int or None, got {self.capacity!r}")

    def __hash__(self) -> int:
        return hash((self.datacenter, self.rack, self.zone, tuple(sorted(self.tags.items())), self.capacity))


def _format_host(host: str) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]"
    except ValueError:
        pass
    return host


def parse_address(text: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into (host, port). Raises ValueError."""
    if not isinstance(text, str):
        raise TypeError("address must be a str")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [host]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad address {text!r}: put IPv6 hosts in brackets")
    if not host:
        raise ValueError(f"bad address {text!r}: empty host")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"bad address {text!r}: port is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"bad address {text!r}: port out of range")
    return host, port


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as this process knows it: `NodeInfo("node1", "127.0.0.1", 5000)`."""

    node_id: NodeId
    address: str
    port: int
    status: NodeStatus = NodeStatus.STARTING
    role: NodeRole = NodeRole.FOLLOWER
    metadata: NodeMetadata = field(default_factory=NodeMetadata)

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("node id must be a non-empty str")
        if len(self.node_id) > MAX_NODE_ID_LEN or not self.node_id.isprintable() or any(
            c.isspace() or c in ",=" for c in self.node_id
        ):
            raise ValueError(f"node id {self.node_id!r} must be printable, without spaces, ',' or '='")
        if not isinstance(self.address, str) or not self.address:
            raise ValueError("address must be a non-empty str")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {self.port!r}")
        if not isinstance(self.status, NodeStatus):
            raise TypeError("status must be a NodeStatus")
        if not isinstance(self.role, NodeRole):
            raise TypeError("role must be a NodeRole")
        if not isinstance(self.metadata, NodeMetadata):
            raise TypeError("metadata must be a NodeMetadata")

    @classmethod
    def parse(cls, spec: str) -> NodeInfo:
        """From the `--peers` form "id=host:port"."""
        node_id, sep, addr = spec.partition("=")
        if not sep:
            raise ValueError(f"bad peer {spec!r}: expected id=host:port")
        host, port = parse_address(addr)
        return cls(NodeId(node_id), host, port)

    @property
    def id(self) -> NodeId:
        return self.node_id

    @property
    def addr(self) -> str:
        """"host:port", with IPv6 hosts in brackets."""
        return f"{_format_host(self.address)}:{self.port}"

    def with_status(self, status: NodeStatus) -> NodeInfo:
        return self if status is self.status else replace(self, status=status)

    def with_role(self, role: NodeRole) -> NodeInfo:
        return self if role is self.role else replace(self, role=role)

    def __str__(self) -> str:
        return f"{self.node_id}@{self.addr}"


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """One health-check result. `last_heard` is in the clock's seconds (monotonic, not wall)."""

    node_id: NodeId
    status: NodeStatus
    last_heard: float
    latency_ms: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, NodeStatus):
            raise TypeError("status must be a NodeStatus")
        if self.latency_ms is not None and (not math.isfinite(self.latency_ms) or self.latency_ms < 0):
            raise ValueError(f"latency must be a non-negative number, got {self.latency_ms!r}")
        object.__setattr__(self, "metrics", dict(self.metrics))

    @classmethod
    def observe(
        cls,
        node_id: NodeId,
        status: NodeStatus,
        *,
        latency_ms: float | None = None,
        metrics: Mapping[str, float] | None = None,
        error: str | None = None,
        clock: Clock = monotonic,
    ) -> NodeHealth:
        """A result stamped with `clock()` as the time it was heard."""
        return cls(node_id, status, clock(), latency_ms, dict(metrics or {}), error)

    @property
    def is_healthy(self) -> bool:
        return self.status is NodeStatus.HEALTHY and self.error is None

    def age(self, now: float) -> float:
        """Seconds since the node was last heard from, as of `now` (same clock)."""
        return max(0.0, now - self.last_heard)

    def __hash__(self) -> int:
        return hash((self.node_id, self.status, self.last_heard, self.latency_ms, self.error))
