"""The cluster as one node sees it: configuration, members, their health, the leader.

Theory of operation
-------------------
`Cluster` is a *view* for operators and the server (INFO, CLUSTER NODES, the shell's
dashboard); Raft's committed `Membership` remains the truth about who votes, and
`sync_membership` brings this view in line with it. Nothing here decides anything Raft
decides.

Failure detection is heartbeat-based and driven by an injected clock (default
`time.monotonic`), so tests move time by hand:

* `add_node` starts a node's silence timer (a grace period): it is STARTING until its first
  `heartbeat`, which makes it HEALTHY;
* `check_status_changes` marks a HEALTHY node SUSPECT once it has been silent for longer
  than `config.suspect_timeout` (about two heartbeat intervals), and any STARTING, HEALTHY
  or SUSPECT node DOWN once silent for longer than `config.failure_timeout`; it returns the
  changes it made, in node-id order. `check_failures` runs the same detector and returns
  just the nodes that failed (went DOWN), as the seed's API reads;
* a heartbeat brings a SUSPECT or DOWN node straight back to HEALTHY;
* LEAVING and LEFT are set by membership changes only, never by the detector;
* the local node always counts as HEALTHY (it is, by definition, running).

The cluster's state, in order of precedence:

* FORMING      fewer members than `config.min_nodes`;
* HEALTHY      a majority of voters healthy and every member healthy;
* DEGRADED     a majority of voters healthy, some member not;
* INITIALIZING no healthy majority yet, but one is possible once the nodes that have not
               been heard from yet (STARTING) report;
* NO_QUORUM    otherwise.

Quorum is a majority of the *current* voters (Raft's rule); `config.quorum` is the quorum of
a full-strength cluster of `replication_factor` voters, and `ClusterStats.under_replicated`
says when fewer voters than that exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import timedelta
from time import monotonic
from typing import Iterable, Mapping

from .log import Membership
from .node import Clock, NodeHealth, NodeId, NodeInfo, NodeRole, NodeStatus, parse_address

__all__ = [
    "ClusterConfig",
    "ClusterState",
    "ClusterStats",
    "Cluster",
    "MembershipChange",
    "MembershipChangeType",
    "StatusChange",
    "ClusterStateChange",
]


def _as_timedelta(value: timedelta | float, what: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise TypeError(f"{what} must be a timedelta or a number of seconds")


def _positive_int(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Cluster-wide settings. Immutable; the `with_*` builders return new configs."""

    name: str
    min_nodes: int = 1
    max_nodes: int = 7
    replication_factor: int = 3
    heartbeat_interval: timedelta = timedelta(seconds=1)
    failure_timeout: timedelta = timedelta(seconds=5)
    #: Silence after which a node is SUSPECT; None means two heartbeat intervals (capped
    #: at the failure timeout).
    suspect_after: timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("cluster name must be a non-empty str")
        _positive_int(self.min_nodes, "min_nodes")
        _positive_int(self.max_nodes, "max_nodes")
        _positive_int(self.replication_factor, "replication_factor")
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) exceeds max_nodes ({self.max_nodes})")
        if self.replication_factor > self.max_nodes:
            raise ValueError(
                f"replication_factor ({self.replication_factor}) exceeds max_nodes ({self.max_nodes})"
            )
        object.__setattr__(self, "heartbeat_interval", _as_timedelta(self.heartbeat_interval, "heartbeat_interval"))
        object.__setattr__(self, "failure_timeout", _as_timedelta(self.failure_timeout, "failure_timeout"))
        if self.heartbeat_interval <= timedelta(0):
            raise ValueError("heartbeat_interval must be positive")
        if self.failure_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"failure_timeout ({self.failure_timeout.total_seconds()}s) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval.total_seconds()}s)"
            )
        if self.suspect_after is not None:
            object.__setattr__(self, "suspect_after", _as_timedelta(self.suspect_after, "suspect_after"))
            assert self.suspect_after is not None
            if not timedelta(0) < self.suspect_after <= self.failure_timeout:
                raise ValueError("suspect_after must be positive and at most failure_timeout")

    # --- derived ---------------------------------------------------------------------------
    @property
    def quorum(self) -> int:
        """Votes needed in a full-strength cluster: replication_factor // 2 + 1."""
        return self.replication_factor // 2 + 1

    @property
    def suspect_timeout(self) -> timedelta:
        if self.suspect_after is not None:
            return self.suspect_after
        return min(2 * self.heartbeat_interval, self.failure_timeout)

    # --- builders --------------------------------------------------------------------------
    def with_name(self, name: str) -> ClusterConfig:
        return replace(self, name=name)

    def with_min_nodes(self, n: int) -> ClusterConfig:
        return replace(self, min_nodes=n)

    def with_max_nodes(self, n: int) -> ClusterConfig:
        return replace(self, max_nodes=n)

    def with_replication_factor(self, n: int) -> ClusterConfig:
        return replace(self, replication_factor=n)

    def with_heartbeat_interval(self, interval: timedelta | float) -> ClusterConfig:
        return replace(self, heartbeat_interval=_as_timedelta(interval, "heartbeat_interval"))

    def with_failure_timeout(self, timeout: timedelta | float) -> ClusterConfig:
        return replace(self, failure_timeout=_as_timedelta(timeout, "failure_timeout"))

    def with_suspect_after(self, after: timedelta | float | None) -> ClusterConfig:
        return replace(self, suspect_after=None if after is None else _as_timedelta(after, "suspect_after"))


class ClusterState(enum.Enum):
    INITIALIZING = "initializing"
    FORMING = "forming"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    NO_QUORUM = "no_quorum"

    Initializing = "initializing"
    Forming = "forming"
    Healthy = "healthy"
    Degraded = "degraded"
    NoQuorum = "no_quorum"

    @property
    def label(self) -> str:
        """The seed's name, e.g. "NoQuorum"."""
        return "".join(part.capitalize() for part in self.value.split("_"))

    @property
    def can_serve(self) -> bool:
        return self in (ClusterState.HEALTHY, ClusterState.DEGRADED)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True)
class ClusterStats:
    total_nodes: int
    healthy_nodes: int
    suspect_nodes: int
    down_nodes: int
    has_quorum: bool
    leader: NodeId | None
    state: ClusterState
    starting_nodes: int = 0
    voters: int = 0
    learners: int = 0
    quorum: int = 1
    under_replicated: bool = False


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A status transition made by the failure detector (or a heartbeat)."""

    node_id: NodeId
    old: NodeStatus
    new: NodeStatus
    at: float


@dataclass(frozen=True, slots=True)
class ClusterStateChange:
    """The cluster's state moved from `old` to `new` (e.g. HEALTHY to DEGRADED)."""

    old: ClusterState
    new: ClusterState


class MembershipChangeType(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    UPDATE = "update"

    Add = "add"
    Remove = "remove"
    Update = "update"


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """Add, remove or update one node of the view (`Cluster.apply_change`)."""

    type: MembershipChangeType
    node_id: NodeId
    node: NodeInfo | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.type, MembershipChangeType):
            raise TypeError("type must be a MembershipChangeType")
        if self.type is MembershipChangeType.REMOVE:
            if self.node is not None and self.node.node_id != self.node_id:
                raise ValueError("node info does not match node_id")
        elif self.node is None or self.node.node_id != self.node_id:
            raise ValueError(f"{self.type.name} needs the node's info, with the same id")

    @classmethod
    def add(cls, node: NodeInfo) -> MembershipChange:
        return cls(MembershipChangeType.ADD, node.node_id, node)

    @classmethod
    def remove(cls, node_id: NodeId | str) -> MembershipChange:
        return cls(MembershipChangeType.REMOVE, NodeId(node_id))

    @classmethod
    def update(cls, node: NodeInfo) -> MembershipChange:
        return cls(MembershipChangeType.UPDATE, node.node_id, node)


@dataclass(slots=True)
class _Liveness:
    last_heard: float
    latency_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class Cluster:
    """This node's view of the cluster. Single-threaded: one task owns it."""

    def __init__(self, local: NodeInfo, config: ClusterConfig, clock: Clock = monotonic) -> None:
        self.config = config
        self._clock = clock
        if local.status is NodeStatus.STARTING:
            local = local.with_status(NodeStatus.HEALTHY)
        self._local_id = local.node_id
        self._nodes: dict[NodeId, NodeInfo] = {local.node_id: local}
        self._live: dict[NodeId, _Liveness] = {local.node_id: _Liveness(clock())}
        self._leader: NodeId | None = None

    # --- lookup ----------------------------------------------------------------------------
    @property
    def local(self) -> NodeInfo:
        return self._nodes[self._local_id]

    @property
    def local_id(self) -> NodeId:
        return self._local_id

    def get_node(self, node_id: NodeId | str) -> NodeInfo | None:
        return self._nodes.get(NodeId(node_id))

    def nodes(self) -> list[NodeInfo]:
        """Every known node, in id order."""
        return [self._nodes[n] for n in sorted(self._nodes)]

    def peers(self) -> list[NodeInfo]:
        return [n for n in self.nodes() if n.node_id != self._local_id]

    def members(self) -> list[NodeInfo]:
        return [n for n in self.nodes() if n.status is not NodeStatus.LEFT]

    def voters(self) -> list[NodeInfo]:
        return [n for n in self.members() if n.role is not NodeRole.LEARNER]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    # --- membership ------------------------------------------------------------------------
    def add_node(self, node: NodeInfo) -> None:
        """Add a node; its silence timer starts now. A LEFT node may be added again."""
        old = self._nodes.get(node.node_id)
        if old is not None and old.status is not NodeStatus.LEFT:
            raise ValueError(f"node {node.node_id!r} is already a member")
        if node.status is not NodeStatus.LEFT and len(self.members()) >= self.config.max_nodes:
            raise ValueError(f"cluster {self.config.name!r} is full ({self.config.max_nodes} nodes)")
        self._nodes[node.node_id] = node
        self._live[node.node_id] = _Liveness(self._clock())

    def remove_node(self, node_id: NodeId | str) -> NodeInfo:
        """Forget a node entirely. The local node cannot be removed from its own view."""
        nid = NodeId(node_id)
        if nid == self._local_id:
            raise ValueError("cannot remove the local node from its own view")
        node = self._nodes.pop(nid, None)
        if node is None:
            raise KeyError(f"unknown node {nid!r}")
        del self._live[nid]
        if self._leader == nid:
            self._leader = None
        return node

    def update_node(self, node: NodeInfo) -> NodeInfo:
        """Replace a node's info (address, status, role, metadata); returns the old one."""
        old = self._nodes.get(node.node_id)
        if old is None:
            raise KeyError(f"unknown node {node.node_id!r}")
        if node.node_id == self._local_id and node.status is NodeStatus.STARTING:
            node = node.with_status(NodeStatus.HEALTHY)
        self._nodes[node.node_id] = node
        return old

    def apply_change(self, change: MembershipChange) -> None:
        if change.type is MembershipChangeType.ADD:
            assert change.node is not None
            self.add_node(change.node)
        elif change.type is MembershipChangeType.UPDATE:
            assert change.node is not None
            self.update_node(change.node)
        else:
            self.remove_node(change.node_id)

    def sync_membership(
        self, membership: Membership, addresses: Mapping[str, str] | None = None
    ) -> list[MembershipChange]:
        """Bring the view in line with Raft's committed membership; returns what changed.

        Addresses come from `addresses` (this node's own `--peers`, which wins) or else from
        the membership. A node the view lacks and whose address is unknown is a ValueError.
        """
        addresses = addresses or {}
        changes: list[MembershipChange] = []
        for nid in sorted(membership.members):
            role = NodeRole.LEARNER if nid in membership.learners else None
            node = self._nodes.get(NodeId(nid))
            if node is None or node.status is NodeStatus.LEFT:
                addr = addresses.get(nid) or membership.address_of(nid)
                if not addr:
                    raise ValueError(f"no address known for member {nid!r}")
                host, port = parse_address(addr)
                changes.append(MembershipChange.add(NodeInfo(NodeId(nid), host, port, role=role or NodeRole.FOLLOWER)))
            elif role is NodeRole.LEARNER and node.role is not NodeRole.LEARNER:
                changes.append(MembershipChange.update(node.with_role(NodeRole.LEARNER)))
            elif role is None and node.role is NodeRole.LEARNER:
                changes.append(MembershipChange.update(node.with_role(NodeRole.FOLLOWER)))
        for nid in sorted(self._nodes):
            if nid not in membership.members and nid != self._local_id:
                changes.append(MembershipChange.remove(nid))
        for change in changes:
            self.apply_change(change)
        return changes

    # --- health ----------------------------------------------------------------------------
    def heartbeat(
        self,
        node_id: NodeId | str,
        *,
        latency_ms: float | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> StatusChange | None:
        """Record that `node_id` was heard from now. Returns the status change it caused.

        Raises KeyError for a node not in the view (nothing is recorded).
        """
        nid = NodeId(node_id)
        node = self._nodes.get(nid)
        if node is None:
            raise KeyError(f"heartbeat from unknown node {nid!r}")
        now = self._clock()
        live = self._live[nid]
        live.last_heard = now
        live.error = None
        if latency_ms is not None:
            live.latency_ms = latency_ms
        if metrics is not None:
            live.metrics = dict(metrics)
        if node.status in (NodeStatus.LEAVING, NodeStatus.LEFT, NodeStatus.HEALTHY):
            return None
        self._nodes[nid] = node.with_status(NodeStatus.HEALTHY)
        return StatusChange(nid, node.status, NodeStatus.HEALTHY, now)

    def report_error(self, node_id: NodeId | str, error: str) -> None:
        """Remember why the last contact with a node failed (shown by `health`)."""
        nid = NodeId(node_id)
        if nid not in self._live:
            raise KeyError(f"unknown node {nid!r}")
        self._live[nid].error = error

    def check_failures(self) -> list[NodeId]:
        """Apply the failure detector as of now; returns the nodes that failed (went DOWN)
        at this check, in id order. (The seed's ``let failed = cluster.check_failures();``.)

        Every transition it made, HEALTHY→SUSPECT included, is what
        `check_status_changes` returns; the two run the same detector."""
        return [ch.node_id for ch in self.check_status_changes() if ch.new is NodeStatus.DOWN]

    def failed_nodes(self) -> list[NodeId]:
        """Every node now DOWN, in id order (whenever it failed)."""
        return [n.node_id for n in self.nodes() if n.status is NodeStatus.DOWN]

    def check_status_changes(self) -> list[StatusChange]:
        """Apply the failure detector as of now; returns the changes made, in id order."""
        now = self._clock()
        suspect = self.config.suspect_timeout.total_seconds()
        down = self.config.failure_timeout.total_seconds()
        changes: list[StatusChange] = []
        for nid in sorted(self._nodes):
            if nid == self._local_id:
                continue
            node = self._nodes[nid]
            silence = now - self._live[nid].last_heard
            new = node.status
            if node.status in (NodeStatus.STARTING, NodeStatus.HEALTHY, NodeStatus.SUSPECT) and silence > down:
                new = NodeStatus.DOWN
            elif node.status is NodeStatus.HEALTHY and silence > suspect:
                new = NodeStatus.SUSPECT
            if new is not node.status:
                self._nodes[nid] = node.with_status(new)
                changes.append(StatusChange(nid, node.status, new, now))
        return changes

    def health(self, node_id: NodeId | str) -> NodeHealth:
        nid = NodeId(node_id)
        node = self._nodes.get(nid)
        if node is None:
            raise KeyError(f"unknown node {nid!r}")
        live = self._live[nid]
        last = self._clock() if nid == self._local_id else live.last_heard
        return NodeHealth(nid, node.status, last, live.latency_ms, dict(live.metrics), live.error)

    def health_report(self) -> list[NodeHealth]:
        return [self.health(n) for n in sorted(self._nodes)]

    # --- leader and roles ------------------------------------------------------------------
    @property
    def leader(self) -> NodeId | None:
        return self._leader

    def set_leader(self, node_id: NodeId | str | None) -> None:
        """Record who Raft says leads (None: unknown). Updates the LEADER role marks."""
        new = None if node_id is None else NodeId(node_id)
        if new is not None and new not in self._nodes:
            raise KeyError(f"unknown node {new!r}")
        old = self._leader
        if old == new:
            return
        if old is not None and old in self._nodes and self._nodes[old].role is NodeRole.LEADER:
            self._nodes[old] = self._nodes[old].with_role(NodeRole.FOLLOWER)
        if new is not None:
            self._nodes[new] = self._nodes[new].with_role(NodeRole.LEADER)
        self._leader = new

    def set_role(self, node_id: NodeId | str, role: NodeRole) -> None:
        nid = NodeId(node_id)
        node = self._nodes.get(nid)
        if node is None:
            raise KeyError(f"unknown node {nid!r}")
        self._nodes[nid] = node.with_role(role)
        if role is NodeRole.LEADER:
            self.set_leader(nid)
        elif self._leader == nid:
            self._leader = None

    # --- summary ---------------------------------------------------------------------------
    @property
    def quorum_size(self) -> int:
        return len(self.voters()) // 2 + 1

    @property
    def has_quorum(self) -> bool:
        return self.stats().has_quorum

    @property
    def state(self) -> ClusterState:
        return self.stats().state

    def stats(self) -> ClusterStats:
        members = self.members()
        voters = [n for n in members if n.role is not NodeRole.LEARNER]
        count = _count_statuses(members)
        healthy_voters = sum(1 for n in voters if n.status is NodeStatus.HEALTHY)
        starting_voters = sum(1 for n in voters if n.status is NodeStatus.STARTING)
        need = len(voters) // 2 + 1
        has_quorum = healthy_voters >= need
        if len(members) < self.config.min_nodes:
            state = ClusterState.FORMING
        elif has_quorum:
            all_ok = count[NodeStatus.HEALTHY] == len(members)
            state = ClusterState.HEALTHY if all_ok else ClusterState.DEGRADED
        elif healthy_voters + starting_voters >= need:
            state = ClusterState.INITIALIZING
        else:
            state = ClusterState.NO_QUORUM
        return ClusterStats(
            total_nodes=len(members),
            healthy_nodes=count[NodeStatus.HEALTHY],
            suspect_nodes=count[NodeStatus.SUSPECT],
            down_nodes=count[NodeStatus.DOWN],
            has_quorum=has_quorum,
            leader=self._leader,
            state=state,
            starting_nodes=count[NodeStatus.STARTING],
            voters=len(voters),
            learners=len(members) - len(voters),
            quorum=need,
            under_replicated=len(voters) < self.config.replication_factor,
        )


def _count_statuses(nodes: Iterable[NodeInfo]) -> dict[NodeStatus, int]:
    count = {s: 0 for s in NodeStatus}
    for n in nodes:
        count[n.status] += 1
    return count
