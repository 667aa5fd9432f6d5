"""ReplicationEngine: the seed's convenience layer: one RaftNode with its own in-memory
driver, and the cluster view it keeps current. It coordinates Raft and the cluster.

Theory of operation
-------------------
An engine owns four things: a `RaftNode` (the sans-IO core), a `StateMachine` it applies
committed entries to, a `LogStore` it persists into (a `MemoryLogStore` unless the caller
passes one), and a `Cluster` (the membership and health view). Whenever the engine *drives*
it runs the core's Ready cycle through `aegis.memdriver.MemoryDriver`, the one reference
in-memory driver (the simulator and the paper tests run theirs through it too), which
does what any production driver must:

1. persist: install an incoming snapshot, truncate, append entries, write the hard state
   and the membership — all before any message of the same Ready leaves (persist-before-send
   is what keeps one vote per term across a crash, dissertation §3.4);
2. send: queue the Ready's messages in the engine's outbox (an InstallSnapshot the core
   leaves empty gets the engine's current snapshot bytes attached);
3. apply: feed committed entries to the state machine, collecting their `CommandResult`s;
4. `advance(ready)`, then take a snapshot and compact the log if the core asks for one;

and repeats until the core has nothing ready. No field of `Ready` is ignored.

Inputs that only change the core — `propose`, `set`, `delete`, `add_peer`,
`start_election`, `request_read` — do not drive: many proposals then share one Ready (one
"fsync", one AppendEntries per follower). The engine drives on `tick()`, `step(message)`,
`apply_committed()`, `take_messages()` and `flush()`.

The cluster view follows the traffic the engine steps, never a clock of its own:

* a message from a peer is a heartbeat from it (a STARTING, SUSPECT or DOWN peer becomes
  HEALTHY);
* the view's time is ticks (``ticks × config.raft.tick``) and every `tick()` runs the failure
  detector, so a peer that stays silent turns SUSPECT, then DOWN;
* the leader this node follows is the view's leader and this node's role is its role there;
  Raft's membership is the view's membership (peers added, removed, learners marked).

A follower hears from the leader (and candidates) only, so its view of the other followers
ages; the leader's view is the one that tracks everybody.

What the engine produces is handed out once:

* messages: by `take_messages()`, or in the `TickResult` of `tick()`/`step()`, whichever
  comes first;
* results: by `apply_committed()`, unless the caller drives with `tick()`/`step()` and
  reads `TickResult.applied`: reading it claims those results, and `apply_committed()`
  returns every result no `TickResult.applied` was read for. So the seed's example (step the
  messages, then `results = engine.apply_committed()`) gets its results, and a driver that
  reads `.applied` never sees one twice;
* role changes, read states and cluster changes (status changes of peers, changes of the
  cluster's state): in the next `TickResult`.

The engine reads no clock and does no I/O: time is `tick()`, the network is whoever moves
messages from `take_messages()`/`TickResult.messages` to another engine's `step()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from .cluster import Cluster, ClusterConfig, ClusterState, ClusterStateChange, StatusChange
from .log import LogIndex, LogStore, Membership, MemoryLogStore, Term
from .memdriver import MemoryDriver
from .messages import RaftMessage, VoteRequest
from .node import NodeId, NodeInfo, NodeRole, NodeStatus, parse_address
from .raft import RaftConfig, RaftNode, ReadState, Ready, Role
from .state import Command, CommandResult, StateMachine

__all__ = [
    "ReplicationConfig",
    "RoleChange",
    "TickResult",
    "ReplicationEngine",
    "DEFAULT_CLUSTER_NAME",
]

#: The cluster name when the config names none (the node's `--cluster` default too).
DEFAULT_CLUSTER_NAME: Final = "aegis"
#: The host shown for a peer added by id alone, whose address nobody told the engine.
UNKNOWN_HOST: Final = "unknown"


def _default_cluster() -> ClusterConfig:
    return ClusterConfig(DEFAULT_CLUSTER_NAME)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """The seed's combined config: Raft's (`raft`: election timeout, heartbeat interval,
    snapshot threshold, in ticks or durations) and the cluster view's (`cluster`: name,
    replication factor, failure detection).

    ``ReplicationConfig()`` is the defaults of both;
    ``ReplicationConfig(RaftConfig(seed=1), ClusterConfig("prod"))`` or the `with_*`
    builders set them. Validated when built: the cluster must not suspect a peer sooner than
    Raft's heartbeats can reach it.
    """

    raft: RaftConfig = field(default_factory=RaftConfig)
    cluster: ClusterConfig = field(default_factory=_default_cluster)

    def __post_init__(self) -> None:
        if not isinstance(self.raft, RaftConfig):
            raise TypeError(f"raft must be a RaftConfig, got {type(self.raft).__name__}")
        if not isinstance(self.cluster, ClusterConfig):
            raise TypeError(f"cluster must be a ClusterConfig, got {type(self.cluster).__name__}")
        if self.cluster.suspect_timeout <= self.raft.heartbeat_period:
            raise ValueError(
                f"the cluster would suspect a peer after {self.cluster.suspect_timeout.total_seconds()}s, "
                f"within Raft's heartbeat period ({self.raft.heartbeat_period.total_seconds()}s)"
            )

    def with_raft(self, raft: RaftConfig) -> ReplicationConfig:
        return replace(self, raft=raft)

    def with_cluster(self, cluster: ClusterConfig) -> ReplicationConfig:
        return replace(self, cluster=cluster)

    def to_raft_config(self) -> RaftConfig:
        return self.raft

    @property
    def snapshot_threshold(self) -> int:
        return self.raft.snapshot_threshold


@dataclass(frozen=True, slots=True)
class RoleChange:
    """The node's role moved from `old` to `new` while its term was `term`."""

    old: NodeRole
    new: NodeRole
    term: Term


class _Applied:
    """The results one `TickResult` carries. Reading `TickResult.applied` claims them, so
    `apply_committed()` does not hand them out again."""

    __slots__ = ("results", "claimed")

    def __init__(self, results: tuple[CommandResult, ...] = ()) -> None:
        self.results = results
        self.claimed = False

    def claim(self) -> tuple[CommandResult, ...]:
        self.claimed = True
        return self.results


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one `tick()` or `step()` produced (plus anything produced earlier and not yet
    handed out by `take_messages()`/`apply_committed()`).

    `messages` must be sent (they are already safe to send: their Ready was persisted);
    `applied` holds the results of COMMAND entries in log order (`applied_index` says which;
    reading it claims them from `apply_committed()`); `role_changes` the role transitions in
    order; `leader` the leader known at the end; `status_changes` the peers' health
    transitions (`failed` and `suspected` pick out the peers that went DOWN and SUSPECT);
    `state_changes` the changes of the cluster's state.
    """

    messages: tuple[RaftMessage, ...] = ()
    role_changes: tuple[RoleChange, ...] = ()
    leader: NodeId | None = None
    read_states: tuple[ReadState, ...] = ()
    status_changes: tuple[StatusChange, ...] = ()
    state_changes: tuple[ClusterStateChange, ...] = ()
    _applied: _Applied = field(default_factory=_Applied, repr=False, compare=False)

    @property
    def applied(self) -> tuple[CommandResult, ...]:
        return self._applied.claim()

    @property
    def failed(self) -> tuple[NodeId, ...]:
        """Peers that went DOWN."""
        return tuple(ch.node_id for ch in self.status_changes if ch.new is NodeStatus.DOWN)

    @property
    def suspected(self) -> tuple[NodeId, ...]:
        """Peers that went SUSPECT."""
        return tuple(ch.node_id for ch in self.status_changes if ch.new is NodeStatus.SUSPECT)

    @property
    def cluster_state(self) -> ClusterState | None:
        """The cluster's state at the end, if it changed."""
        return self.state_changes[-1].new if self.state_changes else None

    @property
    def is_empty(self) -> bool:
        return not (
            self.messages or self._applied.results or self.role_changes or self.read_states
            or self.status_changes or self.state_changes
        )

    def __repr__(self) -> str:
        return (
            f"TickResult(messages={self.messages!r}, applied={self._applied.results!r}, "
            f"role_changes={self.role_changes!r}, leader={self.leader!r}, read_states={self.read_states!r}, "
            f"status_changes={self.status_changes!r}, state_changes={self.state_changes!r})"
        )


class ReplicationEngine:
    """A replicated key-value engine: `RaftNode` + `StateMachine` + `Cluster` + an in-memory
    driver.

    >>> engine = ReplicationEngine(NodeInfo("node1", "127.0.0.1", 5000), ReplicationConfig())
    >>> engine.start_election().term
    1
    >>> engine.set("key", b"value")
    2
    >>> [r.success for r in engine.apply_committed()]
    [True]
    >>> engine.get("key")
    b'value'
    >>> engine.cluster.stats().leader
    'node1'
    """

    def __init__(
        self,
        local: NodeInfo,
        config: ReplicationConfig = ReplicationConfig(),
        store: LogStore | None = None,
        *,
        state_machine: StateMachine | None = None,
        snapshot_data: bytes = b"",
    ) -> None:
        """`store` and (for a compacted store) `state_machine`/`snapshot_data` let an engine
        restart from what an earlier one persisted; by default it starts empty, alone."""
        if not isinstance(local, NodeInfo):
            raise TypeError("local must be a NodeInfo")
        self.local = local
        self.config = config
        store = store if store is not None else MemoryLogStore(Membership.of([local.node_id]))
        sm = state_machine if state_machine is not None else StateMachine()
        snap = store.snapshot()
        if snap.index > sm.last_applied:
            if not snapshot_data:
                raise ValueError(
                    f"the store is compacted to index {snap.index}: pass the state machine "
                    "restored from its snapshot, or the snapshot bytes"
                )
            sm.restore_chunks([snapshot_data], expect_index=snap.index)
        # The Ready cycle runs in the reference in-memory driver (aegis.memdriver); the
        # engine collects what each drive produced and notes role changes after each batch.
        self._driver = MemoryDriver(
            RaftNode(local.node_id, config.raft, store), sm,
            snapshot_data=snapshot_data, auto_snapshot=True, after_ready=self._after_ready,
        )
        self._peers: dict[NodeId, NodeInfo | None] = {}
        self._outbox: list[RaftMessage] = []
        self._results: list[CommandResult] = []
        self._unclaimed: list[_Applied] = []
        self._role_changes: list[RoleChange] = []
        self._read_states: list[ReadState] = []
        self._role = self._current_role()
        # The cluster view's clock is the engine's ticks: no wall clock, replayable.
        self._ticks = 0
        self._tick_seconds = config.raft.tick.total_seconds()
        self.cluster = Cluster(local, config.cluster, clock=self._now)
        self._status_changes: list[StatusChange] = []
        self._state_changes: list[ClusterStateChange] = []
        self._synced_membership: Membership | None = None
        self._sync_view()
        self._cluster_state = self.cluster.stats().state

    # ------------------------------------------------------------------ identity and state
    @property
    def raft(self) -> RaftNode:
        """The sans-IO core."""
        return self._driver.raft

    @property
    def store(self) -> LogStore:
        """The log store the core reads and the driver persists into."""
        return self._driver.store

    @property
    def state_machine(self) -> StateMachine:
        """The state machine committed entries are applied to."""
        sm = self._driver.state_machine
        assert sm is not None
        return sm

    @property
    def node_id(self) -> NodeId:
        return self.local.node_id

    @property
    def peers(self) -> dict[NodeId, NodeInfo | None]:
        """Peers added with `add_peer` (with their address when one was given)."""
        return dict(self._peers)

    @property
    def membership(self) -> Membership:
        return self.raft.membership

    @property
    def leader_id(self) -> NodeId | None:
        leader = self.raft.leader_id
        return NodeId(leader) if leader is not None else None

    @property
    def role(self) -> NodeRole:
        return self._role_of(self.raft.role)

    @property
    def raft_role(self) -> Role:
        """The core's finer-grained role (it distinguishes a pre-candidate)."""
        return self.raft.role

    @property
    def term(self) -> Term:
        return self.raft.term

    @property
    def commit_index(self) -> LogIndex:
        return self.raft.commit_index

    @property
    def last_applied(self) -> LogIndex:
        return LogIndex(self.state_machine.last_applied)

    def is_leader(self) -> bool:
        return self.raft.is_leader()

    def _role_of(self, role: Role) -> NodeRole:
        if role is Role.LEADER:
            return NodeRole.LEADER
        if role is Role.CANDIDATE or role is Role.PRE_CANDIDATE:
            return NodeRole.CANDIDATE
        if self.raft.is_learner():
            return NodeRole.LEARNER
        return NodeRole.FOLLOWER

    def _current_role(self) -> NodeRole:
        return self._role_of(self.raft.role)

    # ------------------------------------------------------------------ inputs (no driving)
    def add_peer(self, peer: NodeId | NodeInfo | str) -> None:
        """Add a voter before the cluster has any log entry (the seed's bootstrap); it joins
        the cluster view too, STARTING until first heard from (with host "unknown" and
        port 0 when added by id alone).

        A running cluster changes membership through the log
        (`engine.raft.propose_config_change`)."""
        if isinstance(peer, NodeInfo):
            nid, info = peer.node_id, peer
        else:
            nid, info = NodeId(str(peer)), None
        if nid == self.node_id:
            raise ValueError("a node cannot be its own peer")
        known = self.cluster.get_node(nid)
        if known is None and len(self.cluster.members()) >= self.config.cluster.max_nodes:
            raise ValueError(f"cluster {self.config.cluster.name!r} is full ({self.config.cluster.max_nodes} nodes)")
        self.raft.add_peer(nid)
        if info is not None or nid not in self._peers:
            self._peers[nid] = info
        if info is not None and known is not None:
            self.cluster.update_node(replace(info, status=known.status, role=known.role))
        self._note_cluster()

    def start_election(self) -> VoteRequest:
        """Start a real election at term+1 now (skipping PreVote) and return the vote
        request. A cluster of one wins at once; otherwise the per-peer copies wait in
        `take_messages()` (which persists the new term and vote before handing them out)."""
        return self.raft.start_election()

    def propose(self, command: Command | bytes) -> LogIndex:
        """Append a command to the log (leader only). Returns its index; the result arrives
        with the entry's `applied_index` once it is applied.

        Raises the core's NotLeaderError (with a leader hint) or ProposalDroppedError; in
        both cases nothing was written."""
        return self.raft.propose(command)

    def propose_batch(self, commands: list[Command | bytes]) -> list[LogIndex]:
        """Append many commands at once: one Ready, one append per follower."""
        payloads = [c if isinstance(c, bytes) else c.encode() for c in commands]
        return self.raft.propose_batch(payloads)

    def set(self, key: str, value: bytes | str) -> LogIndex:
        return self.propose(Command.set(key, value))

    def delete(self, key: str, *more_keys: str) -> LogIndex:
        return self.propose(Command.delete(key, *more_keys))

    def get(self, key: str) -> bytes | None:
        """The value in the *applied* local state (not linearizable: a follower may lag;
        use `request_read` and wait for its ReadState for a linearizable read)."""
        value = self.state_machine.get(key).value
        assert value is None or isinstance(value, bytes)
        return value

    def request_read(self, ctx: int) -> bool:
        """Ask for a ReadIndex (§6.4); the ReadState with `ctx` comes in a later TickResult.
        False when no leader is known."""
        return self.raft.read_index(ctx)

    # ------------------------------------------------------------------ driving
    def tick(self) -> TickResult:
        """One unit of time: election and heartbeat timers, the cluster's failure detector,
        then a drive."""
        self._ticks += 1
        self.raft.tick()
        self._status_changes.extend(self.cluster.check_status_changes())
        return self._result()

    def step(self, message: RaftMessage) -> TickResult:
        """Deliver a message from a peer (a heartbeat from it, for the cluster view), then
        drive."""
        sender = message.sender
        if message.receiver in ("", self.node_id) and sender != self.node_id and sender in self.cluster:
            change = self.cluster.heartbeat(sender)
            if change is not None:
                self._status_changes.append(change)
        self.raft.step(message)
        return self._result()

    def flush(self) -> None:
        """Drive without handing anything out (it waits for take_messages/apply_committed)."""
        self._drive()

    def apply_committed(self) -> list[CommandResult]:
        """Drive, then hand out every result not handed out yet (the seed's API): those of
        this drive, and those of earlier `tick()`/`step()` calls whose `TickResult.applied`
        nobody read."""
        self._drive()
        out = [r for box in self._unclaimed if not box.claimed for r in box.claim()]
        self._unclaimed = []
        out.extend(self._results)
        self._results = []
        return out

    def take_messages(self) -> list[RaftMessage]:
        """Drive, then hand out every message waiting to be sent."""
        self._drive()
        out, self._outbox = self._outbox, []
        return out

    def outbox(self) -> tuple[RaftMessage, ...]:
        """The messages waiting to be sent, without taking them (and without driving)."""
        return tuple(self._outbox)

    def _result(self) -> TickResult:
        self._drive()
        box = _Applied(tuple(self._results))
        if self._unclaimed:
            self._unclaimed = [b for b in self._unclaimed if not b.claimed]
        if box.results:
            self._unclaimed.append(box)
        result = TickResult(
            messages=tuple(self._outbox),
            role_changes=tuple(self._role_changes),
            leader=self.leader_id,
            read_states=tuple(self._read_states),
            status_changes=tuple(self._status_changes),
            state_changes=tuple(self._state_changes),
            _applied=box,
        )
        self._outbox = []
        self._results = []
        self._role_changes = []
        self._read_states = []
        self._status_changes = []
        self._state_changes = []
        return result

    def _drive(self) -> None:
        # The Ready cycle is aegis.memdriver's: persist, send, apply, read states, advance,
        # snapshot on should_snapshot; the role is noted after every batch.
        out = self._driver.cycle()
        self._outbox.extend(out.messages)
        self._results.extend(out.results)
        self._read_states.extend(out.read_states)
        self._note_role()
        self._note_cluster()

    def _after_ready(self, rd: Ready) -> None:
        self._note_role()

    def _note_role(self) -> None:
        role = self._current_role()
        if role is not self._role:
            self._role_changes.append(RoleChange(self._role, role, self.raft.term))
            self._role = role

    # ------------------------------------------------------------------ the cluster view
    def _now(self) -> float:
        return self._ticks * self._tick_seconds

    def _placeholder(self, nid: str, membership: Membership) -> NodeInfo:
        addr = membership.address_of(nid)
        if addr:
            try:
                host, port = parse_address(addr)
                return NodeInfo(NodeId(nid), host, port)
            except ValueError:
                pass
        return NodeInfo(NodeId(nid), UNKNOWN_HOST, 0)

    def _sync_membership(self) -> None:
        """Raft's membership is the view's: add, remove, mark learners."""
        m = self.raft.membership
        if m == self._synced_membership:
            return
        view = self.cluster
        for nid in sorted(m.members):
            role = NodeRole.LEARNER if nid in m.learners else NodeRole.FOLLOWER
            node = view.get_node(nid)
            if node is None or node.status is NodeStatus.LEFT:
                base = self._peers.get(NodeId(nid)) or self._placeholder(nid, m)
                try:
                    view.add_node(base.with_role(role))
                except ValueError:
                    continue  # the view is full (config.cluster.max_nodes); Raft decides anyway
            elif (role is NodeRole.LEARNER) != (node.role is NodeRole.LEARNER) and nid != self.node_id:
                view.update_node(node.with_role(role))
        for node in view.peers():
            if node.node_id not in m.members:
                view.remove_node(node.node_id)
        self._synced_membership = m

    def _sync_view(self) -> None:
        """Bring the view in line with the core: membership, this node's role, the leader."""
        self._sync_membership()
        view = self.cluster
        role = self._current_role()
        if view.local.role is not role:
            view.set_role(self.node_id, role)
        leader = self.raft.leader_id
        view.set_leader(leader if leader is not None and leader in view else None)

    def _note_cluster(self) -> None:
        """Sync the view and record a change of the cluster's state."""
        self._sync_view()
        state = self.cluster.stats().state
        if state is not self._cluster_state:
            self._state_changes.append(ClusterStateChange(self._cluster_state, state))
            self._cluster_state = state

    @property
    def snapshot_data(self) -> bytes:
        """The bytes of the latest snapshot (what a restart passes back as `snapshot_data`)."""
        return self._driver.snapshot_data

    def __repr__(self) -> str:
        return (
            f"ReplicationEngine({self.node_id!r}, role={self.role.value}, term={self.term}, "
            f"commit={self.commit_index}, applied={self.last_applied})"
        )
