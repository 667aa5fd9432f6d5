"""ReplicationEngine: the seed's convenience layer, one RaftNode with its own in-memory driver.

Theory of operation
-------------------
An engine owns three things: a `RaftNode` (the sans-IO core), a `StateMachine` it applies
committed entries to, and a `LogStore` it persists into (a `MemoryLogStore` unless the
caller passes one). Whenever the engine *drives* it runs the core's Ready cycle exactly as
the simulator (tests/sim/simulator.py) and any production driver must:

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

Everything the engine produces is handed out exactly once. `tick()` and `step()` return a
`TickResult` holding every message, result, role change and read state not handed out yet;
`take_messages()` hands out the waiting messages, `apply_committed()` the waiting results.

The engine reads no clock and does no I/O: time is `tick()`, the network is whoever moves
messages from `take_messages()`/`TickResult.messages` to another engine's `step()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .log import LogIndex, LogStore, Membership, MemoryLogStore, Term
from .messages import InstallSnapshotRequest, RaftMessage
from .node import NodeId, NodeInfo, NodeRole
from .raft import RaftConfig, RaftNode, ReadState, Ready, Role
from .state import Command, CommandResult, StateMachine

__all__ = [
    "ReplicationConfig",
    "RoleChange",
    "TickResult",
    "ReplicationEngine",
]


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Replication tunables; times are in ticks (the driver decides how long a tick is).

    Validated when built (through the `RaftConfig` it maps to), so a bad config fails at
    construction, not at the first election.
    """

    election_timeout_min: int = 10
    election_timeout_max: int = 20
    heartbeat_interval: int = 2
    #: Applied entries beyond the last snapshot after which the engine snapshots and compacts.
    snapshot_threshold: int = 10_000
    max_entries_per_message: int = 4096
    max_bytes_per_message: int = 1 << 20
    max_inflight: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    #: Seed of the core's `random.Random` (election timeouts); None: seeded from the OS.
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "election_timeout_min",
            "election_timeout_max",
            "heartbeat_interval",
            "snapshot_threshold",
            "max_entries_per_message",
            "max_bytes_per_message",
            "max_inflight",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("pre_vote", "check_quorum"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise TypeError("seed must be an int or None")
        self.to_raft_config()  # the core's own checks (timeout ordering)

    def to_raft_config(self) -> RaftConfig:
        return RaftConfig(
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
            snapshot_threshold=self.snapshot_threshold,
            max_entries_per_message=self.max_entries_per_message,
            max_bytes_per_message=self.max_bytes_per_message,
            max_inflight=self.max_inflight,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class RoleChange:
    """The node's role moved from `old` to `new` while its term was `term`."""

    old: NodeRole
    new: NodeRole
    term: Term


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one `tick()` or `step()` handed out (plus anything produced earlier and not yet
    handed out by `take_messages()`/`apply_committed()`).

    `messages` must be sent (they are already safe to send: their Ready was persisted);
    `applied` holds the results of COMMAND entries in log order (`applied_index` says which);
    `role_changes` the role transitions in order; `leader` the leader known at the end.
    """

    messages: tuple[RaftMessage, ...] = ()
    applied: tuple[CommandResult, ...] = ()
    role_changes: tuple[RoleChange, ...] = ()
    leader: NodeId | None = None
    read_states: tuple[ReadState, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.messages or self.applied or self.role_changes or self.read_states)


class ReplicationEngine:
    """A replicated key-value engine: `RaftNode` + `StateMachine` + an in-memory driver.

    >>> engine = ReplicationEngine(NodeInfo("node1", "127.0.0.1", 5000), ReplicationConfig())
    >>> engine.start_election()
    >>> engine.set("key", b"value")
    2
    >>> [r.success for r in engine.apply_committed()]
    [True]
    >>> engine.get("key")
    b'value'
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
        self.store: LogStore = store if store is not None else MemoryLogStore(Membership.of([local.node_id]))
        self.state_machine = state_machine if state_machine is not None else StateMachine()
        self._snapshot_data = snapshot_data
        snap = self.store.snapshot()
        if snap.index > self.state_machine.last_applied:
            if not snapshot_data:
                raise ValueError(
                    f"the store is compacted to index {snap.index}: pass the state machine "
                    "restored from its snapshot, or the snapshot bytes"
                )
            self.state_machine.restore_chunks([snapshot_data], expect_index=snap.index)
        self.raft = RaftNode(local.node_id, config.to_raft_config(), self.store)
        self._peers: dict[NodeId, NodeInfo | None] = {}
        self._outbox: list[RaftMessage] = []
        self._results: list[CommandResult] = []
        self._role_changes: list[RoleChange] = []
        self._read_states: list[ReadState] = []
        self._role = self._current_role()

    # ------------------------------------------------------------------ identity and state
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
        """Add a voter before the cluster has any log entry (the seed's bootstrap).

        A running cluster changes membership through the log
        (`engine.raft.propose_config_change`)."""
        if isinstance(peer, NodeInfo):
            nid, info = peer.node_id, peer
        else:
            nid, info = NodeId(str(peer)), None
        if nid == self.node_id:
            raise ValueError("a node cannot be its own peer")
        self.raft.add_peer(nid)
        if info is not None or nid not in self._peers:
            self._peers[nid] = info

    def start_election(self) -> None:
        """Start a real election at term+1 now (skipping PreVote). A cluster of one wins at
        once; otherwise the vote requests leave on the next drive."""
        self.raft.start_election()

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

    def set(self, key: str, value: bytes) -> LogIndex:
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
        """One unit of time: election and heartbeat timers, then a drive."""
        self.raft.tick()
        return self._result()

    def step(self, message: RaftMessage) -> TickResult:
        """Deliver a message from a peer, then drive."""
        self.raft.step(message)
        return self._result()

    def flush(self) -> None:
        """Drive without handing anything out (it waits for take_messages/apply_committed)."""
        self._drive()

    def apply_committed(self) -> list[CommandResult]:
        """Drive, then hand out every result not handed out yet (the seed's API)."""
        self._drive()
        out, self._results = self._results, []
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
        result = TickResult(
            messages=tuple(self._outbox),
            applied=tuple(self._results),
            role_changes=tuple(self._role_changes),
            leader=self.leader_id,
            read_states=tuple(self._read_states),
        )
        self._outbox = []
        self._results = []
        self._role_changes = []
        self._read_states = []
        return result

    def _drive(self) -> None:
        raft = self.raft
        while raft.has_ready():
            rd = raft.ready()
            self._persist(rd)
            self._send(rd)
            self._apply(rd)
            if rd.read_states:
                self._read_states.extend(rd.read_states)
            raft.advance(rd)
            self._note_role()
            if raft.should_snapshot():
                self._take_snapshot()
        self._note_role()

    def _persist(self, rd: Ready) -> None:
        rd.persist_to(self.store)
        if rd.snapshot is not None:
            self._snapshot_data = rd.snapshot.data

    def _send(self, rd: Ready) -> None:
        for m in rd.messages:
            if isinstance(m, InstallSnapshotRequest) and not m.data:
                m = InstallSnapshotRequest(
                    term=m.term, leader_id=m.leader_id, snapshot=m.snapshot,
                    data=self._snapshot_data, receiver=m.receiver,
                )
            self._outbox.append(m)

    def _apply(self, rd: Ready) -> None:
        sm = self.state_machine
        if rd.snapshot is not None and rd.snapshot.data:
            sm.restore_chunks([rd.snapshot.data], expect_index=rd.snapshot.meta.index)
        results = self._results
        for rs in sm.apply_entries(rd.committed_entries):
            results.extend(rs)

    def _note_role(self) -> None:
        role = self._current_role()
        if role is not self._role:
            self._role_changes.append(RoleChange(self._role, role, self.raft.term))
            self._role = role

    def _take_snapshot(self) -> None:
        sm = self.state_machine
        meta = self.raft.snapshot_meta_for(LogIndex(sm.last_applied))
        data = b"".join(sm.snapshot_chunks())
        self.store.compact(meta)
        self._snapshot_data = data
        self.raft.compacted(meta)

    @property
    def snapshot_data(self) -> bytes:
        """The bytes of the latest snapshot (what a restart passes back as `snapshot_data`)."""
        return self._snapshot_data

    def __repr__(self) -> str:
        return (
            f"ReplicationEngine({self.node_id!r}, role={self.role.value}, term={self.term}, "
            f"commit={self.commit_index}, applied={self.last_applied})"
        )
