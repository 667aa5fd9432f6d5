"""RaftNode: the consensus core, a deterministic state machine with no I/O and no clock.

Theory of operation
-------------------
Inputs: `tick()` (the only notion of time), `step(message)`, `propose(...)`,
`propose_config_change(...)`, `read_index(ctx)`, `transfer_leadership(id)`.
Outputs: a `Ready` batch (hard state, truncate point, entries, snapshot to install,
messages, committed entries, read states, soft state). The driver persists what `Ready`
asks, sends the messages, applies the committed entries, then calls `advance(ready)`.

The seed's conveniences sit on top and change nothing for such a driver:
`start_election()` returns the vote request (its copies still go out through `ready()`),
`handle_vote_response()` says whether that vote won, and `take_messages()`/
`apply_committed()` run the same Ready cycle against the node's own store and state
machine, for a caller with no driver of its own. A driver uses one or the other, not both.

Invariants this module keeps (dissertation section in brackets):

* `step` checks the term first, then dispatches on the message class to the current
  role's handler (etcd's stepLeader/stepCandidate/stepFollower) [3.3].
* One vote per term: `voted_for` is in the hard state, and every message that depends on
  a new term or vote leaves in a `Ready` whose hard state the driver persists first [3.4].
* Only entries of the current term commit by counting replicas [3.6.2, Figure 3.7].
* A follower never truncates an entry that matches the leader's, so a reordered, shorter
  AppendEntries cannot undo progress; nothing at or below `commit_index` is ever removed.
* The leader counts itself only for entries its driver has persisted (advance), which lets
  the driver write its own log in parallel with replication [10.2.1].
* Membership changes one server at a time, taking effect when appended; at most one is
  uncommitted, and none before the leader has committed an entry of its term [4.1, 4.4].
* PreVote [9.6], CheckQuorum [6.2], and a leader-lease check on votes so a removed or
  partitioned server cannot disrupt a stable leader [4.2.3].
* Terms stay at or below `MAX_TERM` (2**62 - 1, encodable with room to spare): a message
  whose term is `MAX_TERM` or more, or leads ours by more than `MAX_TERM_JUMP`, is refused
  with `ImpossibleTermError` before anything changes; only the leader of our current term
  can make us campaign with TimeoutNow [3.10].
* ReadIndex [6.4]: a read is safe at the leader's commit index once a quorum confirmed
  leadership after that index was recorded and the leader has committed in its term.

Never imports trio, lmdb, socket or time; randomness comes from a seeded `random.Random`.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Iterable, Sequence

from .errors import AegisError
from .log import (
    CompactedError,
    EntryType,
    HardState,
    LogEntry,
    LogIndex,
    LogInvariantError,
    LogStore,
    Membership,
    MemoryLogStore,
    ReplicatedLog,
    SnapshotMeta,
    Term,
)
from .messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ConfigChange,
    ConfigChangeType,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "RaftConfig",
    "RaftState",
    "Role",
    "SoftState",
    "ReadState",
    "IncomingSnapshot",
    "Ready",
    "Progress",
    "ProgressState",
    "RaftNode",
    "RaftError",
    "NotLeaderError",
    "ProposalDroppedError",
    "ConfigChangeError",
    "ImpossibleTermError",
    "StoredTermError",
    "MAX_TERM",
    "MAX_TERM_JUMP",
    # messages re-exported
    "VoteRequest",
    "VoteResponse",
    "AppendEntriesRequest",
    "AppendEntriesResponse",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "TimeoutNow",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ConfigChange",
    "ConfigChangeType",
    "RaftMessage",
]


class RaftError(AegisError):
    """Root of the core's errors: proposals refused by the core, nothing written."""


class NotLeaderError(RaftError):
    """This node cannot accept the proposal; `leader_id` is a hint (may be None)."""

    def __init__(self, leader_id: str | None, message: str | None = None) -> None:
        self.leader_id = leader_id
        super().__init__(message or f"not the leader (leader: {leader_id or 'unknown'})")


class ProposalDroppedError(RaftError):
    """The leader refused the proposal (transfer in progress, removed, ...): nothing written."""


class ConfigChangeError(RaftError):
    """A membership change that is invalid or not allowed now: nothing written."""


class ImpossibleTermError(RaftError):
    """A peer sent a term no honest peer can hold; the message was refused, nothing changed.

    The remote side broke the protocol (h11's RemoteProtocolError): the driver logs it and
    carries on, as if the message had been lost."""


class StoredTermError(RaftError):
    """The term on disk is `MAX_TERM` or more (written by a version before the limit, under
    attack): the node cannot take part in elections, and lowering a term is only safe for
    the whole cluster at once, so the node refuses to start and says how to repair it."""


#: The highest term a node ever holds. Far below the codec's 2**63 - 1, so every term the
#: core can produce (a candidate's term + 1 included) is encodable; a node at MAX_TERM no
#: longer campaigns rather than reach a term no peer could decode.
MAX_TERM: Term = Term((1 << 62) - 1)
#: The furthest a message may lead this node's term. An honest node gains one term per
#: election timeout while cut off (none with PreVote), so 2**32 is over a century of
#: elections; a forged message cannot push a cluster to MAX_TERM in fewer than 2**30 steps.
MAX_TERM_JUMP: int = 1 << 32


def _inner_term(m: RaftMessage) -> int:
    """The newest term a message carries besides its own: entries, snapshot, log position."""
    if isinstance(m, AppendEntriesRequest):
        return max([m.prev_log_term, *(e.term for e in m.entries)])
    if isinstance(m, VoteRequest):
        return m.last_log_term
    if isinstance(m, InstallSnapshotRequest):
        return m.snapshot.term
    if isinstance(m, AppendEntriesResponse):
        return m.hint_term
    return 0


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


#: How long one tick lasts unless a config says otherwise: the node's default (`aegis serve`).
DEFAULT_TICK = timedelta(milliseconds=50)


def _ticks(value: int | timedelta, tick: timedelta, what: str) -> int:
    """A tick count given as ticks or as a duration (a whole number of ticks)."""
    if isinstance(value, timedelta):
        if value % tick:
            raise ValueError(
                f"{what} ({value.total_seconds() * 1000:g} ms) is not a whole number of ticks "
                f"(one tick is {tick.total_seconds() * 1000:g} ms)"
            )
        return value // tick
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number of ticks (int) or a timedelta, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, init=False)
class RaftConfig:
    """Tunables: election timeout, heartbeat interval, snapshot threshold, flow control.

    The core counts time in ticks (the driver decides how long one is: `tick`). Timeouts may
    be given either way: ``RaftConfig(election_timeout_min=10, heartbeat_interval=2)`` in
    ticks, or ``RaftConfig(election_timeout=timedelta(milliseconds=500),
    heartbeat_interval=timedelta(milliseconds=100), tick=timedelta(milliseconds=50))`` as
    durations, which are converted to ticks when the config is built (a duration must be a
    whole number of ticks). `election_timeout` is the low end of the randomized range; the
    high end is twice that (the dissertation's [T, 2T], §9.3) unless `election_timeout_max`
    says otherwise. Stored fields are always ticks.
    """

    election_timeout_min: int
    election_timeout_max: int
    heartbeat_interval: int
    snapshot_threshold: int
    max_entries_per_message: int
    max_bytes_per_message: int
    max_inflight: int
    max_committed_bytes_per_ready: int
    pre_vote: bool
    check_quorum: bool
    seed: int | None
    tick: timedelta
    defer_commit_notices: bool

    def __init__(
        self,
        election_timeout_min: int | timedelta | None = None,
        election_timeout_max: int | timedelta | None = None,
        heartbeat_interval: int | timedelta = 2,
        snapshot_threshold: int = 10_000,
        max_entries_per_message: int = 4096,
        max_bytes_per_message: int = 1 << 20,
        max_inflight: int = 64,
        max_committed_bytes_per_ready: int = 16 << 20,
        pre_vote: bool = True,
        check_quorum: bool = True,
        seed: int | None = None,
        tick: timedelta = DEFAULT_TICK,
        *,
        election_timeout: int | timedelta | None = None,
        defer_commit_notices: bool = False,
    ) -> None:
        if not isinstance(tick, timedelta) or tick <= timedelta(0):
            raise ValueError(f"tick must be a positive timedelta, got {tick!r}")
        if election_timeout is not None:
            if election_timeout_min is not None:
                raise ValueError("give election_timeout or election_timeout_min, not both")
            election_timeout_min = election_timeout
        lo = 10 if election_timeout_min is None else _ticks(election_timeout_min, tick, "election_timeout_min")
        if election_timeout_max is not None:
            hi = _ticks(election_timeout_max, tick, "election_timeout_max")
        else:
            hi = 20 if election_timeout_min is None else 2 * lo
        hb = _ticks(heartbeat_interval, tick, "heartbeat_interval")
        for name, value in (
            ("snapshot_threshold", snapshot_threshold),
            ("max_entries_per_message", max_entries_per_message),
            ("max_bytes_per_message", max_bytes_per_message),
            ("max_inflight", max_inflight),
            ("max_committed_bytes_per_ready", max_committed_bytes_per_ready),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name, flag in (("pre_vote", pre_vote), ("check_quorum", check_quorum),
                           ("defer_commit_notices", defer_commit_notices)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if hb < 1:
            raise ValueError("heartbeat_interval must be >= 1 tick")
        if lo <= hb:
            raise ValueError("election_timeout_min must exceed heartbeat_interval")
        if hi <= lo:
            raise ValueError("election_timeout_max must exceed election_timeout_min")
        if max_inflight < 1 or max_entries_per_message < 1:
            raise ValueError("max_inflight and max_entries_per_message must be >= 1")
        if snapshot_threshold < 1 or max_bytes_per_message < 1 or max_committed_bytes_per_ready < 1:
            raise ValueError("snapshot_threshold and the byte limits must be >= 1")
        values: dict[str, object] = {
            "election_timeout_min": lo,
            "election_timeout_max": hi,
            "heartbeat_interval": hb,
            "snapshot_threshold": snapshot_threshold,
            "max_entries_per_message": max_entries_per_message,
            "max_bytes_per_message": max_bytes_per_message,
            "max_inflight": max_inflight,
            "max_committed_bytes_per_ready": max_committed_bytes_per_ready,
            "pre_vote": pre_vote,
            "check_quorum": check_quorum,
            "seed": seed,
            "tick": tick,
            "defer_commit_notices": defer_commit_notices,
        }
        for name, setting in values.items():
            object.__setattr__(self, name, setting)

    # --- the same settings as durations ------------------------------------------------------
    def duration(self, ticks: int) -> timedelta:
        """How long `ticks` ticks last."""
        return self.tick * ticks

    @property
    def election_timeout(self) -> timedelta:
        """The low end of the randomized election timeout, as a duration."""
        return self.duration(self.election_timeout_min)

    @property
    def election_timeout_range(self) -> tuple[timedelta, timedelta]:
        return self.duration(self.election_timeout_min), self.duration(self.election_timeout_max)

    @property
    def heartbeat_period(self) -> timedelta:
        """`heartbeat_interval` as a duration."""
        return self.duration(self.heartbeat_interval)


@dataclass(frozen=True, slots=True)
class RaftState:
    """The persistent state of Figure 3.1 plus the volatile commit index."""

    current_term: Term
    voted_for: str | None
    commit_index: LogIndex
    last_applied: LogIndex
    last_log_index: LogIndex
    last_log_term: Term


@dataclass(frozen=True, slots=True)
class SoftState:
    leader_id: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read with context `ctx` may be served once the state machine applied `index`."""

    ctx: int
    index: LogIndex


@dataclass(frozen=True, slots=True)
class IncomingSnapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. Persist first (hard_state, truncate_from, entries,
    snapshot, membership), then send `messages`, then apply `committed_entries`, then call
    `RaftNode.advance(ready)`.

    AppendEntries requests from a leader whose term did not change in this Ready may be sent
    before the leader's own write completes [10.2.1]; `send_before_persist` says whether that
    holds for this batch.
    """

    hard_state: HardState | None = None
    truncate_from: LogIndex | None = None
    entries: tuple[LogEntry, ...] = ()
    snapshot: IncomingSnapshot | None = None
    membership: Membership | None = None
    messages: tuple[RaftMessage, ...] = ()
    committed_entries: tuple[LogEntry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    soft_state: SoftState | None = None
    send_before_persist: bool = False
    # True when `hard_state` differs from what is stored only in its commit index: the
    # commit index can be relearned from the leader, so it needs no fsync of its own and
    # rides along with the next write (etcd's MustSync).
    commit_only: bool = False

    def is_empty(self) -> bool:
        return (
            self.hard_state is None
            and self.truncate_from is None
            and not self.entries
            and self.snapshot is None
            and self.membership is None
            and not self.messages
            and not self.committed_entries
            and not self.read_states
            and self.soft_state is None
        )

    def persist_to(self, store: LogStore) -> None:
        """Write this batch's durable part into `store`, in the order a driver must: the
        snapshot (which replaces the log), the truncation, the entries, then hard state and
        membership. The LMDB node does the same in one transaction (`write_batch`)."""
        if self.snapshot is not None:
            store.compact(self.snapshot.meta)
        if self.truncate_from is not None:
            store.truncate_suffix(self.truncate_from)
        if self.entries:
            store.append(self.entries)
        if self.hard_state is not None:
            store.set_hard_state(self.hard_state)
        if self.membership is not None:
            store.set_membership(self.membership)

    def must_sync(self) -> bool:
        """Whether the driver must fsync before sending: new entries, a truncation, a
        snapshot, or a new term or vote. A change of the commit index alone does not count."""
        return bool(self.entries) or self.truncate_from is not None or self.snapshot is not None or (
            self.hard_state is not None and not self.commit_only
        )


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (match_index/next_index of Figure 3.1, plus flow control)."""

    match_index: LogIndex = LogIndex(0)
    next_index: LogIndex = LogIndex(1)
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: LogIndex = LogIndex(0)
    recent_active: bool = False
    inflight: deque[LogIndex] = field(default_factory=deque)
    stalled_heartbeats: int = 0
    last_heartbeat_match: LogIndex = LogIndex(0)
    sent_commit: LogIndex = LogIndex(0)  # the commit index last sent with entries or empty appends

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next_index = LogIndex(max(self.match_index + 1, self.pending_snapshot + 1))
        else:
            self.next_index = LogIndex(self.match_index + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = LogIndex(0)
        self.inflight.clear()
        self.stalled_heartbeats = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = LogIndex(self.match_index + 1)
        self.probe_sent = False
        self.pending_snapshot = LogIndex(0)
        self.inflight.clear()
        self.stalled_heartbeats = 0

    def become_snapshot(self, index: LogIndex) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflight.clear()

    def maybe_update(self, n: LogIndex) -> bool:
        """A success ack for `n`. Stale acks (n <= match) never move match_index."""
        updated = False
        if n > self.match_index:
            self.match_index = n
            updated = True
            self.probe_sent = False
        if n + 1 > self.next_index:
            self.next_index = LogIndex(n + 1)
        while self.inflight and self.inflight[0] <= n:
            self.inflight.popleft()
        return updated

    def is_paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True


@dataclass(slots=True)
class _PendingRead:
    ctx: int
    index: LogIndex
    origin: str  # node id that asked (self for local reads)
    round: int


def _read_ctx_base(seed: int | None, node_id: str) -> int:
    """Where a node's ReadIndex request numbers start: random per incarnation (from its own
    stream, so election timeouts are unaffected), reproducible for a given seed."""
    rng = random.Random(f"{seed}/reads/{node_id}") if seed is not None else random.Random()
    return rng.getrandbits(62)


class RaftNode:
    """The Raft core. See the module docstring for the contract."""

    def __init__(
        self,
        node_id: str,
        config: RaftConfig | None = None,
        store: LogStore | None = None,
        *,
        peers: Iterable[str] = (),
        state_machine: Any = None,
        applied: int = 0,
    ) -> None:
        self.id = str(node_id)
        self.config = config or RaftConfig()
        self.rng = random.Random(self.config.seed if self.config.seed is not None else None)
        if store is None:
            store = MemoryLogStore(Membership.of([self.id, *peers]))
        self.log = ReplicatedLog(store)
        if applied:
            # The driver's state machine is durable on its own (the node's LMDB state): what it
            # applied was committed, and is not handed out again.
            self.log.restore_applied(LogIndex(applied))
        hs, stored_membership = store.initial_state()
        if hs.term >= MAX_TERM:
            raise StoredTermError(
                f"{node_id}: the stored term {hs.term} is at or past the highest term {MAX_TERM} (written by "
                "an older version, most likely under a forged-peer attack); this node cannot take part in "
                "elections. Stop EVERY node of the cluster, then run `aegis repair-term --data DIR` on each "
                "to see its last log term, and `aegis repair-term --data DIR --term T` on each with the same "
                "T, at least the largest last log term of all of them; then start them all. Never repair "
                "only some nodes of a running cluster: lowering a term there can elect two leaders")
        self.term: Term = hs.term
        self.voted_for: str | None = hs.voted_for
        self._persisted_hs = hs
        if self.log.last_term() > self.term:
            # Terms only grow, and an entry's term never exceeds its writer's current term:
            # a log newer than the stored term means the hard state was lost or rolled back.
            raise LogInvariantError(
                f"{node_id}: stored term {self.term} is behind the log's last term {self.log.last_term()}"
                " (was the hard state lost?)"
            )
        self._bootstrap_membership = stored_membership
        if not stored_membership.members and not self.log.snapshot_meta().membership.members:
            # Nothing stored: form a cluster of this node and `peers`. (A node joining a
            # running cluster stores itself as a learner instead and waits for the leader.)
            self._bootstrap_membership = Membership.of([self.id, *peers])
        self._configs: list[tuple[LogIndex, Membership]] = []
        self._configs_gap = False
        self._rebuild_configs(self.log.last_index())
        self._persisted_membership: Membership | None = stored_membership
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()
        self.votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.pending_conf_index: LogIndex = LogIndex(0)
        self.lead_transferee: str | None = None
        self._transfer_elapsed = 0
        self._msgs: list[RaftMessage] = []
        self._read_states: list[ReadState] = []
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_commit: list[tuple[int, str]] = []
        self._read_round = 0
        self._read_round_wanted = False
        self._follower_reads: list[int] = []
        self._follower_reads_inflight: dict[int, list[int]] = {}
        self._commit_notices_due = False  # see `commit_notices_due`
        self._follower_reads_sent: dict[int, int] = {}  # request seq -> self._ticks when sent
        self._ticks = 0
        # Random start: a response meant for a previous incarnation of this node (same term,
        # delayed in the network) must not match a request of this one. (So a driver must not
        # restart a node with the seed of its previous life; the node's server seeds from
        # system entropy, the simulator draws a new seed per boot.)
        self._follower_read_seq = _read_ctx_base(self.config.seed, self.id)
        self._read_acks: dict[str, int] = {}
        self._incoming_snapshot: IncomingSnapshot | None = None
        self._applying: LogIndex = self.log.last_applied
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._ready_outstanding = False
        self._ready_state: tuple[HardState, SoftState, Membership] = (hs, self._prev_soft, self.membership)
        # Convenience layer (the seed's API): an optional state machine the node applies to,
        # and what its own cycle produced and has not handed out yet.
        self.state_machine = state_machine
        self._outbox: list[RaftMessage] = []
        self._results: list[Any] = []

    # ------------------------------------------------------------------ properties
    @property
    def node_id(self) -> str:
        return self.id

    @property
    def membership(self) -> Membership:
        return self._configs[-1][1]

    @property
    def commit_index(self) -> LogIndex:
        return self.log.commit_index

    @property
    def last_applied(self) -> LogIndex:
        return self.log.last_applied

    @property
    def current_term(self) -> Term:
        return self.term

    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    def is_voter(self) -> bool:
        return self.id in self.membership.voters

    def is_learner(self) -> bool:
        return self.id in self.membership.learners

    def state(self) -> RaftState:
        return RaftState(
            current_term=self.term,
            voted_for=self.voted_for,
            commit_index=self.log.commit_index,
            last_applied=self.log.last_applied,
            last_log_index=self.log.last_index(),
            last_log_term=self.log.last_term(),
        )

    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.log.commit_index)

    def quorum(self) -> int:
        return len(self.membership.voters) // 2 + 1

    # ------------------------------------------------------------------ configuration
    def add_peer(self, peer: str) -> None:
        """Bootstrap helper (the seed's API): add a voter without going through the log.

        Only for forming a cluster before any entry exists; a running cluster changes
        membership with `propose_config_change`.
        """
        if self.log.last_index() > 0:
            raise ConfigChangeError("add_peer is for bootstrap only; use propose_config_change")
        m = self.membership
        new = Membership.of(m.voters | {str(peer)}, m.learners - {str(peer)}, m.address_map())
        self._bootstrap_membership = new
        self._configs = [(LogIndex(0), new)]
        if self.role == Role.LEADER:
            self.progress.setdefault(str(peer), Progress(next_index=LogIndex(self.log.last_index() + 1)))

    def _rebuild_configs(self, upto: LogIndex) -> None:
        """Load the latest configuration in the log at or below `upto` [4.1: a server uses
        the latest configuration in its log, committed or not]. Config entries carry the
        whole membership, so one entry suffices; older ones are read lazily if needed."""
        snap = self.log.snapshot_meta()
        base = snap.membership if snap.index > 0 or snap.membership.voters else self._bootstrap_membership
        self._configs = [(snap.index, base)]
        self._configs_gap = False
        found = self._scan_config(upto)
        if found is not None:
            self._configs.append(found)
            self._configs_gap = True  # configs between the base and `found` were not loaded

    def _scan_config(self, upto: LogIndex) -> tuple[LogIndex, Membership] | None:
        try:
            return self._scan_config_once(upto)
        except CompactedError:
            # The driver compacted meanwhile: the snapshot now holds the configuration.
            snap = self.log.snapshot_meta()
            return snap.index, snap.membership

    def _scan_config_once(self, upto: LogIndex) -> tuple[LogIndex, Membership] | None:
        idx = upto
        first = self.log.first_index()
        while idx >= first:
            lo = LogIndex(max(first, idx - 255))
            for e in reversed(self.log.slice(lo, LogIndex(idx + 1))):
                if e.type == EntryType.CONFIG_CHANGE:
                    try:
                        _, m = ConfigChange.decode(e.data)
                    except ValueError:
                        continue
                    return e.index, m
            idx = LogIndex(lo - 1)
        return None

    def membership_at(self, index: LogIndex) -> Membership:
        """The configuration in force at `index` (for snapshot metadata)."""
        for pos in range(len(self._configs) - 1, -1, -1):
            idx, m = self._configs[pos]
            if idx <= index:
                if pos == 0 and self._configs_gap:
                    found = self._scan_config(index)
                    return found[1] if found is not None else m
                return m
        found = self._scan_config(index)
        return found[1] if found is not None else self._configs[0][1]

    def _note_appended(self, entries: Sequence[LogEntry]) -> None:
        for e in entries:
            if e.type == EntryType.CONFIG_CHANGE:
                try:
                    _, m = ConfigChange.decode(e.data)
                except ValueError:
                    continue  # a malformed config entry changes nothing
                self._configs.append((e.index, m))
                if self.role == Role.LEADER:
                    self._sync_progress()

    def _note_truncated(self, index: LogIndex) -> None:
        """Entries from `index` on are being replaced: fall back to the previous config."""
        if self._configs[-1][0] < index:
            return
        while len(self._configs) > 1 and self._configs[-1][0] >= index:
            self._configs.pop()
        if len(self._configs) == 1 and self._configs_gap:
            self._rebuild_configs(LogIndex(index - 1))

    def _sync_progress(self) -> None:
        members = self.membership.members
        for nid in members:
            if nid not in self.progress:
                self.progress[nid] = Progress(
                    next_index=LogIndex(self.log.last_index() + 1), recent_active=True
                )
        for nid in list(self.progress):
            if nid not in members and nid != self.id:
                del self.progress[nid]

    def _send(self, m: RaftMessage) -> None:
        self._msgs.append(m)

    # ------------------------------------------------------------------ role changes
    def _reset_randomized_timeout(self) -> None:
        self.randomized_timeout = self.rng.randrange(
            self.config.election_timeout_min, self.config.election_timeout_max
        )

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
        self.leader_id = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.lead_transferee = None
        self._transfer_elapsed = 0
        self._fail_pending_reads()

    def become_follower(self, term: Term, leader_id: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.progress = {}

    def _become_pre_candidate(self) -> None:
        # A pre-candidate keeps its term and vote: nothing durable changes [9.6].
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader_id = None
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(Term(self.term + 1))
        self.role = Role.CANDIDATE
        self.voted_for = self.id

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        self.progress = {}
        self._sync_progress()
        stable_last = LogIndex(self.log.unstable_offset - 1)
        for nid, pr in self.progress.items():
            pr.recent_active = True
            if nid == self.id:
                pr.match_index = stable_last
                pr.next_index = LogIndex(self.log.last_index() + 1)
        # No config change until an entry of this term commits [4.4, the no-op-first fix].
        self.pending_conf_index = self.log.last_index()
        self._append_as_leader([(EntryType.NO_OP, b"", 0.0)])
        # Reads this node was waiting on another leader for: it serves them itself now.
        waiting, self._follower_reads = self._follower_reads, []
        for ctx in waiting:
            self._read_index_from(ctx, self.id)

    # ------------------------------------------------------------------ time
    def tick(self) -> None:
        self._ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()
            self._retry_stale_reads()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self._promotable():
            self.election_elapsed = 0
            self.campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_timeout_min:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._check_quorum_active():
                self.become_follower(self.term, None)
                return
            if self.lead_transferee is not None:
                self.lead_transferee = None  # transfer timed out [3.10]
        if self.role != Role.LEADER:
            return
        if self._commit_notices_due:
            self.send_commit_notices()  # the driver did not ask sooner: one tick at most
        if self.heartbeat_elapsed >= self.config.heartbeat_interval:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _promotable(self) -> bool:
        return (self.id in self.membership.voters and self.log.pending_snapshot is None
                and self.term < MAX_TERM)

    def _check_quorum_active(self) -> bool:
        """CheckQuorum [6.2]: a leader that has not heard from a majority steps down."""
        active = 0
        for nid in self.membership.voters:
            if nid == self.id:
                active += 1
                continue
            pr = self.progress.get(nid)
            if pr is not None and pr.recent_active:
                active += 1
        for nid, pr in self.progress.items():
            if nid != self.id:
                pr.recent_active = False
        return active >= self.quorum()

    # ------------------------------------------------------------------ elections
    def start_election(self) -> VoteRequest:
        """Start a real election now at term+1 (the seed's API; skips PreVote).

        Returns the vote request (its `receiver` blank: the same request goes to every
        voter). A cluster of one wins at once. With the seed's in-memory cycle, the
        per-peer copies are in `take_messages()` at once; a driver gets them from `ready()`.
        """
        if self.term >= MAX_TERM:
            raise RaftError(f"{self.id} is at the highest term ({MAX_TERM}) and cannot stand for election")
        if not self._promotable():
            raise ConfigChangeError(f"{self.id} is not a voter and cannot stand for election")
        return self.campaign(pre_vote=False)

    def campaign(self, *, pre_vote: bool, transfer: bool = False) -> VoteRequest:
        """Stand for election (a pre-vote round first if `pre_vote`); returns the request
        sent to each voter (receiver blank), or, when this node won at once, the one it
        would have sent."""
        if self.term >= MAX_TERM:
            raise RaftError(f"{self.id} is at the highest term ({MAX_TERM}) and cannot stand for election")
        if pre_vote:
            self._become_pre_candidate()
            term = Term(self.term + 1)
        else:
            self._become_candidate()
            term = self.term
        request = VoteRequest(
            term=term,
            candidate_id=self.id,
            last_log_index=self.log.last_index(),
            last_log_term=self.log.last_term(),
            pre_vote=pre_vote,
            transfer=transfer,
        )
        self.votes[self.id] = True
        if self._tally() >= self.quorum():
            if pre_vote:
                return self.campaign(pre_vote=False, transfer=transfer)
            self._become_leader()
            return request
        for peer in sorted(self.membership.voters):
            if peer != self.id:
                self._send(replace(request, receiver=peer))
        return request

    def _tally(self) -> int:
        return sum(1 for nid, granted in self.votes.items() if granted and nid in self.membership.voters)

    def _rejections(self) -> int:
        return sum(1 for nid, granted in self.votes.items() if not granted and nid in self.membership.voters)

    def handle_vote_response(self, resp: VoteResponse) -> bool:
        """The seed's API: feed a vote response (as `step` does). Returns whether this
        response made the node leader: true once, on the winning vote; false for a
        rejection, a late vote, or a vote that leaves the election undecided."""
        was_leader = self.role == Role.LEADER
        self.step(resp)
        return not was_leader and self.role == Role.LEADER

    # ------------------------------------------------------------------ step
    def step(self, m: RaftMessage) -> None:
        """Process one message. Term check first, then dispatch to the role's handler."""
        if m.receiver and m.receiver != self.id:
            return  # not for us
        sender = m.sender
        if sender == self.id:
            return
        if m.term >= MAX_TERM or m.term - self.term > MAX_TERM_JUMP:
            # Refused before anything changes, so the term is never persisted: adopting it
            # would let one forged message brick the cluster at a term it cannot pass.
            raise ImpossibleTermError(
                f"refused {type(m).__name__} from {sender!r} with term {m.term}: "
                + ("terms stop below 2**62" if m.term >= MAX_TERM else
                   f"it leads this node's term {self.term} by more than {MAX_TERM_JUMP}"))
        inner = _inner_term(m)
        if inner > m.term:
            # No honest sender holds an entry (or snapshot, or log) newer than its own term;
            # persisting one would leave a log whose last term passes the stored term.
            raise ImpossibleTermError(
                f"refused {type(m).__name__} from {sender!r} with term {m.term}: it carries term {inner}, "
                "newer than its own")
        if isinstance(m, TimeoutNow) and (m.term != self.term or sender != self.leader_id):
            # Only the leader this node follows in its current term may make it campaign
            # [3.10]: that leader sends TimeoutNow once this node caught up with it, so it
            # has heard from it in this term. Anything else is stale or forged; ignoring it
            # is as safe as losing it.
            return
        if (isinstance(m, (VoteRequest, TimeoutNow)) and sender not in self.membership.members
                and self.membership.voters):
            # A stranger, or a server removed from the configuration, cannot make us vote or
            # campaign [4.2.3]. Appends are different: a leader may be missing from a
            # follower's *uncommitted* configuration, and only its appends can repair that.
            # (Strangers never get that far: the transport refuses them at the handshake.)
            return
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                in_lease = (
                    self.config.check_quorum
                    and self.leader_id is not None
                    and self.election_elapsed < self.config.election_timeout_min
                )
                if in_lease and not m.transfer:
                    return  # a leader is alive: ignore the disruptive candidate [4.2.3]
                if not m.pre_vote:
                    self.become_follower(m.term, None)
            elif isinstance(m, VoteResponse) and m.pre_vote:
                if not m.vote_granted:
                    self.become_follower(m.term, None)
                # a granted pre-vote carries our future term: no change
            elif isinstance(m, (AppendEntriesRequest, InstallSnapshotRequest)):
                self.become_follower(m.term, sender)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            if isinstance(m, (AppendEntriesRequest, InstallSnapshotRequest)) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader (e.g. healed from a partition) learns the new term and steps
                # down, instead of disrupting us with elections later.
                self._send(AppendEntriesResponse(term=self.term, success=False, follower_id=self.id, receiver=sender))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(term=self.term, vote_granted=False, voter_id=self.id, pre_vote=True, receiver=sender))
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
            return
        match self.role:
            case Role.LEADER:
                self._step_leader(m)
            case Role.CANDIDATE | Role.PRE_CANDIDATE:
                self._step_candidate(m)
            case Role.FOLLOWER:
                self._step_follower(m)

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.voted_for == m.candidate_id
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        # No membership check here: a learner promoted by an entry it has not received yet
        # must still vote, or the new configuration could never elect a leader. The
        # candidate only counts votes from its own configuration's voters.
        grant = can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if grant and not m.pre_vote:
            self.voted_for = m.candidate_id
            self.election_elapsed = 0
        self._send(
            VoteResponse(
                term=m.term if (m.pre_vote and grant) else self.term,
                vote_granted=grant,
                voter_id=self.id,
                pre_vote=m.pre_vote,
                receiver=m.candidate_id,
            )
        )

    def _step_candidate(self, m: RaftMessage) -> None:
        match m:
            case VoteResponse():
                if m.pre_vote != (self.role == Role.PRE_CANDIDATE):
                    return  # a response to an earlier phase
                self.votes.setdefault(m.voter_id, m.vote_granted)
                if self._tally() >= self.quorum():
                    if self.role == Role.PRE_CANDIDATE:
                        self.campaign(pre_vote=False)
                    else:
                        self._become_leader()
                elif self._rejections() >= self.quorum():
                    self.become_follower(self.term, None)
            case AppendEntriesRequest() | InstallSnapshotRequest():
                self.become_follower(self.term, m.sender)
                self._step_follower(m)
            case TimeoutNow():
                pass
            case ReadIndexResponse():
                pass
            case _:
                pass

    def _step_follower(self, m: RaftMessage) -> None:
        match m:
            case AppendEntriesRequest():
                self.election_elapsed = 0
                self.leader_id = m.leader_id
                self._handle_append(m)
            case InstallSnapshotRequest():
                self.election_elapsed = 0
                self.leader_id = m.leader_id
                self._handle_snapshot(m)
            case TimeoutNow():
                if self._promotable():
                    self.campaign(pre_vote=False, transfer=True)
            case ReadIndexResponse():
                self._follower_reads_sent.pop(m.ctx, None)
                ctxs = self._follower_reads_inflight.pop(m.ctx, [])
                if m.success:
                    for ctx in ctxs:
                        self._read_states.append(ReadState(ctx, m.index))
                else:  # (the leader could not serve it now) ask again with the next batch
                    self._follower_reads[:0] = ctxs
            case ReadIndexRequest():
                # we are not the leader; the asker will time out and retry
                pass
            case _:
                pass

    # ------------------------------------------------------------------ follower side
    def _handle_append(self, m: AppendEntriesRequest) -> None:
        reply_base = dict(term=self.term, follower_id=self.id, receiver=m.leader_id,
                          read_ctx=m.read_ctx, heartbeat=m.heartbeat)
        if m.prev_log_index < self.log.commit_index:
            # Everything up to our commit index matches the leader already (Log Matching);
            # a reordered, older message must not truncate anything.
            self._send(AppendEntriesResponse(success=True, match_index=self.log.commit_index, **reply_base))  # type: ignore[arg-type]
            return
        if self.log.matches(m.prev_log_index, m.prev_log_term):
            last_new = LogIndex(m.prev_log_index + len(m.entries))
            conflict = self.log.find_conflict(m.entries)
            if conflict:
                if conflict <= self.log.commit_index:
                    raise LogInvariantError(
                        f"leader {m.leader_id} conflicts with committed entry {conflict}"
                    )
                new = [e for e in m.entries if e.index >= conflict]
                if conflict <= self.log.last_index():
                    self._note_truncated(conflict)
                self.log.append(new)
                self._note_appended(new)
            self.log.commit(LogIndex(min(m.leader_commit, last_new)))
            self._send(AppendEntriesResponse(success=True, match_index=last_new, **reply_base))  # type: ignore[arg-type]
            return
        hint, hint_term = self.log.find_conflict_by_term(m.prev_log_index, m.prev_log_term)
        self._send(
            AppendEntriesResponse(
                success=False,
                reject_index=m.prev_log_index,
                reject_hint=hint,
                hint_term=hint_term,
                **reply_base,  # type: ignore[arg-type]
            )
        )

    def _handle_snapshot(self, m: InstallSnapshotRequest) -> None:
        meta = m.snapshot
        if meta.index <= self.log.commit_index:
            self._send(InstallSnapshotResponse(term=self.term, follower_id=self.id,
                                               match_index=self.log.commit_index, receiver=m.leader_id))
            return
        if self.log.matches(meta.index, meta.term):
            # We already hold the entries the snapshot covers: just commit them.
            self.log.commit(meta.index)
            self._send(InstallSnapshotResponse(term=self.term, follower_id=self.id,
                                               match_index=meta.index, receiver=m.leader_id))
            return
        self.log.restore(meta)
        self._incoming_snapshot = IncomingSnapshot(meta, m.data)
        self._configs = [(meta.index, meta.membership)]
        self._applying = meta.index
        self._send(InstallSnapshotResponse(term=self.term, follower_id=self.id,
                                           match_index=meta.index, receiver=m.leader_id))

    # ------------------------------------------------------------------ leader side
    def _step_leader(self, m: RaftMessage) -> None:
        match m:
            case AppendEntriesResponse():
                self._handle_append_response(m)
            case InstallSnapshotResponse():
                pr = self.progress.get(m.follower_id)
                if pr is None:
                    return
                pr.recent_active = True
                if m.success:
                    pr.maybe_update(m.match_index)
                pr.become_probe()
                self._send_append(m.follower_id)
            case ReadIndexRequest():
                if m.sender_id not in self.progress:
                    return
                self._read_index_from(m.ctx, m.sender_id)
            case VoteResponse() | TimeoutNow() | ReadIndexResponse():
                pass
            case AppendEntriesRequest() | InstallSnapshotRequest():
                # Same term, two leaders: impossible unless a safety bug.
                raise LogInvariantError(f"two leaders in term {self.term}: {self.id} and {m.sender}")
            case _:
                pass

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self.progress.get(m.follower_id)
        if pr is None:
            return  # not a member (anymore)
        pr.recent_active = True
        if m.read_ctx:
            self._ack_read(m.follower_id, m.read_ctx)
        if not m.success:
            if m.reject_index == 0 and m.reject_hint == 0 and m.match_index == 0 and m.hint_term == 0:
                return  # a stale-term nudge, nothing to do in this term
            self._handle_reject(m, pr)
            return
        old_paused = pr.is_paused(self.config.max_inflight)
        if pr.maybe_update(m.match_index):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match_index >= pr.pending_snapshot:
                pr.become_probe()
            if self._maybe_commit():
                self._broadcast_append(commit_changed=True)
            elif pr.match_index < self.log.last_index() or pr.sent_commit < self.log.commit_index:
                # more to send, or it has not heard the current commit index (etcd's CanBumpCommit)
                self._send_append(m.follower_id, allow_empty=True)
            if m.follower_id == self.lead_transferee and pr.match_index == self.log.last_index():
                self._send(TimeoutNow(term=self.term, leader_id=self.id, receiver=m.follower_id))
        elif m.heartbeat:
            self._heartbeat_ack(pr, m.follower_id)
        elif old_paused and not pr.is_paused(self.config.max_inflight):
            self._send_append(m.follower_id)

    def _heartbeat_ack(self, pr: Progress, peer: str) -> None:
        """A heartbeat ack that shows no progress: resend what may have been lost."""
        if pr.state == ProgressState.PROBE:
            pr.probe_sent = False
        elif pr.state == ProgressState.REPLICATE:
            if pr.next_index > pr.match_index + 1 and pr.match_index == pr.last_heartbeat_match:
                pr.stalled_heartbeats += 1
                if pr.stalled_heartbeats >= 3:
                    pr.become_probe()  # pipelined messages were lost; probe again
            else:
                pr.stalled_heartbeats = 0
            pr.last_heartbeat_match = pr.match_index
        elif pr.state == ProgressState.SNAPSHOT:
            # The follower is alive but the snapshot has not landed: it may have been lost.
            pr.stalled_heartbeats += 1
            if pr.stalled_heartbeats >= 2 * self.config.election_timeout_max // self.config.heartbeat_interval:
                pr.become_probe()
        if pr.match_index < self.log.last_index():
            self._send_append(peer)

    def _handle_reject(self, m: AppendEntriesResponse, pr: Progress) -> None:
        if pr.state == ProgressState.REPLICATE:
            if m.reject_index <= pr.match_index:
                return  # stale
        elif pr.state == ProgressState.PROBE:
            if m.reject_index != pr.next_index - 1:
                return  # stale
        else:
            return
        # Fast back-off: skip every entry of a term the follower does not have.
        next_probe = m.reject_hint
        if m.hint_term > 0:
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
        next_index = max(min(m.reject_index, next_probe + 1), pr.match_index + 1, 1)
        pr.become_probe()
        pr.next_index = LogIndex(next_index)
        self._send_append(m.follower_id)

    def _maybe_commit(self) -> bool:
        voters = self.membership.voters
        matches = sorted(
            (self.progress[nid].match_index if nid in self.progress else LogIndex(0)) for nid in voters
        )
        if not matches:
            return False
        candidate = matches[len(matches) - self.quorum()]
        if candidate <= self.log.commit_index:
            return False
        # Only entries of the current term commit by counting [Figure 3.7].
        if self.log.term_or_none(candidate) != self.term:
            return False
        self.log.commit(candidate)
        self._after_commit()
        return True

    def _after_commit(self) -> None:
        if self._reads_awaiting_commit and self._committed_in_term():
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx, origin in waiting:
                self._read_index_from(ctx, origin)
        # Removing the leader: it steps down once the change commits [4.2.2].
        if self.id not in self.membership.voters and self._configs[-1][0] <= self.log.commit_index:
            self.become_follower(self.term, None)

    def _committed_in_term(self) -> bool:
        return self.log.term_or_none(self.log.commit_index) == self.term

    @property
    def commit_notices_due(self) -> bool:
        """Whether some follower has all the entries but not yet the current commit index
        (`RaftConfig.defer_commit_notices`): the driver calls `send_commit_notices` when no
        new entries come along soon to carry it, and the next tick does it anyway."""
        return self._commit_notices_due

    def send_commit_notices(self) -> None:
        """Send the current commit index to every follower that has all the entries but not
        that index (an empty AppendEntries each)."""
        self._commit_notices_due = False
        if self.role != Role.LEADER:
            return
        commit = self.log.commit_index
        for peer in sorted(self.progress):
            pr = self.progress[peer]
            if peer != self.id and pr.sent_commit < commit:
                self._send_append(peer, allow_empty=True, notice=True)

    def _send_append(self, to: str, *, allow_empty: bool = False, notice: bool = False) -> bool:
        pr = self.progress.get(to)
        if pr is None or to == self.id:
            return False
        if pr.is_paused(self.config.max_inflight):
            return False
        prev = LogIndex(pr.next_index - 1)
        prev_term = self.log.term_or_none(prev)
        entries: list[LogEntry] = []
        if prev_term is not None:
            hi = LogIndex(min(self.log.last_index() + 1, pr.next_index + self.config.max_entries_per_message))
            try:
                entries = self.log.slice(pr.next_index, hi, self.config.max_bytes_per_message)
            except CompactedError:
                prev_term = None
        if prev_term is None:
            return self._send_snapshot(to, pr)
        if not entries and not allow_empty and pr.state == ProgressState.REPLICATE:
            return False
        if (not entries and pr.state == ProgressState.REPLICATE and self.config.defer_commit_notices
                and not notice):
            # Only the commit index to tell: the next entries carry it, or `send_commit_notices`.
            # A follower's acknowledgement of the entries is what commits them; learning the
            # commit index only lets it apply them, so one message per write is enough.
            self._commit_notices_due = True
            return False
        self._send(
            AppendEntriesRequest(
                term=self.term,
                leader_id=self.id,
                prev_log_index=prev,
                prev_log_term=prev_term,
                entries=tuple(entries),
                leader_commit=self.log.commit_index,
                receiver=to,
            )
        )
        pr.sent_commit = self.log.commit_index
        if entries:
            last = entries[-1].index
            if pr.state == ProgressState.REPLICATE:
                pr.next_index = LogIndex(last + 1)
                pr.inflight.append(last)
            else:
                pr.probe_sent = True
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        meta = self.log.store.snapshot()
        if meta.index == 0:
            return False  # nothing to send yet (cannot happen once compacted)
        pr.become_snapshot(meta.index)
        self._send(InstallSnapshotRequest(term=self.term, leader_id=self.id, snapshot=meta, receiver=to))
        return True

    def report_snapshot(self, to: str, success: bool) -> None:
        """The driver tells the core a snapshot send finished (or failed at the transport)."""
        pr = self.progress.get(to)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = LogIndex(0)
        pr.become_probe()
        pr.probe_sent = success  # wait for the follower's answer before probing again

    def report_unreachable(self, to: str) -> None:
        pr = self.progress.get(to)
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def _broadcast_append(self, *, commit_changed: bool = False) -> None:
        # After the commit index moves, send even empty appends so followers learn it
        # promptly (follower reads wait for it).
        for peer in sorted(self.progress):
            if peer != self.id:
                self._send_append(peer, allow_empty=commit_changed)

    def _broadcast_heartbeat(self, read_ctx: int = 0) -> None:
        for peer in sorted(self.progress):
            if peer == self.id:
                continue
            pr = self.progress[peer]
            prev = pr.match_index
            prev_term = self.log.term_or_none(prev)
            commit = LogIndex(min(self.log.commit_index, pr.match_index))
            if prev_term is None:
                prev, prev_term = LogIndex(0), Term(0)
            elif commit > pr.sent_commit:
                pr.sent_commit = commit  # the follower learns it from this heartbeat
            self._send(
                AppendEntriesRequest(
                    term=self.term,
                    leader_id=self.id,
                    prev_log_index=prev,
                    prev_log_term=prev_term,
                    leader_commit=commit,
                    receiver=peer,
                    read_ctx=read_ctx,
                    heartbeat=True,
                )
            )

    # ------------------------------------------------------------------ proposals
    def propose(self, command: Any, *, timestamp: float = 0.0) -> LogIndex:
        """Append a client command (a `Command` or raw bytes). Returns its log index.

        Raises NotLeaderError (with a leader hint) on a non-leader and ProposalDroppedError
        during a leadership transfer: in both cases nothing was written.
        """
        data = command if isinstance(command, (bytes, bytearray)) else command.encode()
        return self.propose_batch([bytes(data)], timestamp=timestamp)[0]

    def propose_batch(self, payloads: Sequence[bytes], *, timestamp: float = 0.0) -> list[LogIndex]:
        """Append each payload as its own COMMAND entry; returns their indexes."""
        self._check_can_propose()
        return self._append_as_leader([(EntryType.COMMAND, bytes(p), timestamp) for p in payloads])

    def propose_commands(self, payloads: Sequence[bytes], *, timestamp: float = 0.0) -> LogIndex:
        """Append several encoded commands as ONE entry (a BATCH, or a plain COMMAND entry
        when there is just one): Raft, storage and the wire pay once for all of them. The
        state machine applies them in order, each with its own result."""
        if not payloads:
            raise ValueError("propose_commands needs at least one command")
        self._check_can_propose()
        if len(payloads) == 1:
            item = (EntryType.COMMAND, bytes(payloads[0]), timestamp)
        else:
            from .state import encode_batch

            item = (EntryType.BATCH, encode_batch(payloads), timestamp)
        return self._append_as_leader([item])[0]

    def propose_entry(self, entry_type: EntryType, data: bytes, *, timestamp: float = 0.0) -> LogIndex:
        """Append one entry of a type the state machine does not interpret (a DICTIONARY:
        storage's zstd dictionary, aegis.zdict). Commands and membership changes have their
        own methods, which keep their rules."""
        if entry_type != EntryType.DICTIONARY:
            raise ValueError(f"propose_entry does not propose {entry_type.name} entries")
        self._check_can_propose()
        return self._append_as_leader([(entry_type, bytes(data), timestamp)])[0]

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.lead_transferee is not None:
            raise ProposalDroppedError(f"leadership is being transferred to {self.lead_transferee}")

    def propose_config_change(self, change: ConfigChange, *, timestamp: float = 0.0) -> LogIndex:
        """One server at a time [4.1]; refused while another change is uncommitted or
        before this leader has committed an entry of its term [4.4]."""
        self._check_can_propose()
        if self.pending_conf_index > self.log.commit_index or not self._committed_in_term():
            raise ConfigChangeError("another membership change is in progress; try again")
        try:
            new = change.apply_to(self.membership)
        except ValueError as exc:
            raise ConfigChangeError(str(exc)) from None
        if not new.voters:
            raise ConfigChangeError("cannot remove the last voter")
        idx = self._append_as_leader([(EntryType.CONFIG_CHANGE, change.encode(new), timestamp)])[0]
        self.pending_conf_index = idx
        return idx

    def _append_as_leader(self, items: Sequence[tuple[EntryType, bytes, float]]) -> list[LogIndex]:
        start = self.log.last_index() + 1
        entries = [
            LogEntry(LogIndex(start + i), self.term, t, data, ts) for i, (t, data, ts) in enumerate(items)
        ]
        self.log.append(entries)
        self._note_appended(entries)
        self._broadcast_append()
        # A single-voter cluster commits once its own write is persisted (advance).
        return [e.index for e in entries]

    # ------------------------------------------------------------------ leadership transfer
    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to `target` [3.10]; proposals are refused until it completes."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        target = str(target)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise ConfigChangeError(f"{target} is not a voter")
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.progress[target]
        if pr.match_index == self.log.last_index():
            self._send(TimeoutNow(term=self.term, leader_id=self.id, receiver=target))
        else:
            self._send_append(target)

    # ------------------------------------------------------------------ ReadIndex
    def read_index(self, ctx: int) -> bool:
        """Ask for a linearizable read point [6.4]. The answer comes as a ReadState with the
        same `ctx` in a later Ready. Returns False if no leader is known (fail fast)."""
        if self.role == Role.LEADER:
            self._read_index_from(ctx, self.id)
            return True
        if self.leader_id is None:
            return False
        # Reads that arrive together share one request to the leader (sent by `ready()`).
        self._follower_reads.append(ctx)
        return True

    def _flush_follower_reads(self) -> None:
        if not self._follower_reads or self.leader_id is None or self.role == Role.LEADER:
            return
        self._follower_read_seq += 1
        self._follower_reads_inflight[self._follower_read_seq] = self._follower_reads
        self._follower_reads_sent[self._follower_read_seq] = self._ticks
        self._follower_reads = []
        self._send(ReadIndexRequest(term=self.term, sender_id=self.id, ctx=self._follower_read_seq,
                                    receiver=self.leader_id))

    def _read_index_from(self, ctx: int, origin: str) -> None:
        if not self._committed_in_term():
            self._reads_awaiting_commit.append((ctx, origin))
            return
        if len(self.membership.voters) == 1 and self.id in self.membership.voters:
            self._release_read(ctx, self.log.commit_index, origin)
            return
        self._pending_reads.append(_PendingRead(ctx, self.log.commit_index, origin, self._read_round + 1))
        self._read_round_wanted = True

    def _release_read(self, ctx: int, index: LogIndex, origin: str) -> None:
        if origin == self.id:
            self._read_states.append(ReadState(ctx, index))
        else:
            pr = self.progress.get(origin)
            if pr is not None and pr.sent_commit < index:
                # The follower serves the read once it applied `index`: tell it the commit
                # index first (a deferred commit notice would make the read wait for it).
                self._send_append(origin, allow_empty=True, notice=True)
            self._send(ReadIndexResponse(term=self.term, sender_id=self.id, ctx=ctx, index=index, receiver=origin))

    def _ack_read(self, peer: str, round_no: int) -> None:
        if round_no > self._read_acks.get(peer, 0):
            self._read_acks[peer] = round_no
        if not self._pending_reads:
            return
        voters = self.membership.voters
        released = 0
        for pr in self._pending_reads:
            acks = sum(1 for v in voters if v == self.id or self._read_acks.get(v, 0) >= pr.round)
            if acks < self.quorum():
                break
            self._release_read(pr.ctx, pr.index, pr.origin)
            released += 1
        del self._pending_reads[:released]

    def retry_reads(self) -> None:
        """Ask the leader again for every read point this node is waiting for (the driver
        calls this when a connection to or from the leader dropped: the request or its
        answer may be lost with it). Asking twice is harmless: the first answer serves the
        read, the other is ignored, and a later answer's index is only higher."""
        inflight = self._follower_reads_inflight
        if not inflight:
            return
        waiting = [ctx for seq in sorted(inflight) for ctx in inflight[seq]]
        self._follower_reads_inflight = {}
        self._follower_reads_sent = {}
        self._follower_reads[:0] = waiting

    def _retry_stale_reads(self) -> None:
        # A request (or its answer) lost without a dropped connection to show for it: ask
        # again after an election timeout's worth of ticks.
        sent = self._follower_reads_sent
        if sent and self._ticks - min(sent.values()) >= self.config.election_timeout_min:
            self.retry_reads()

    def _fail_pending_reads(self) -> None:
        # A change of role or term ends the read rounds this node ran as leader; reads that
        # other nodes asked it for are dropped (they ask their new leader themselves). This
        # node's own reads are not: they wait, queued, for the next leader it learns of, who
        # confirms a read point no earlier than any the old leader could have given
        # [6.4: a read is safe at any index at or after the commit index when it started].
        own = [pr.ctx for pr in self._pending_reads if pr.origin == self.id]
        own += [ctx for ctx, origin in self._reads_awaiting_commit if origin == self.id]
        self.retry_reads()
        self._follower_reads[:0] = own
        self._read_round_wanted = False
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_acks = {}

    # ------------------------------------------------------------------ Ready / advance
    def has_ready(self) -> bool:
        if self._ready_outstanding:
            return False
        if self._msgs or self._read_states or self._read_round_wanted or self._incoming_snapshot:
            return True
        if self._follower_reads and self.leader_id is not None and self.role != Role.LEADER:
            return True
        if self.log.unstable or self.log.truncated_from is not None:
            return True
        if self.hard_state() != self._persisted_hs:
            return True
        if self.membership != self._persisted_membership:
            return True
        if self._soft_state() != self._prev_soft:
            return True
        return self.log.commit_index > self._applying

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader_id, self.role)

    def ready(self) -> Ready:
        """Collect the work for the driver. Call `advance(ready)` when done with it."""
        if self._read_round_wanted and self.role == Role.LEADER:
            self._read_round += 1
            self._read_round_wanted = False
            self._broadcast_heartbeat(read_ctx=self._read_round)
            self._ack_read(self.id, self._read_round)
        self._flush_follower_reads()
        hs = self.hard_state()
        truncate_from, entries = self.log.take_unstable()
        committed: list[LogEntry] = []
        if self.log.commit_index > self._applying:
            committed = self.log.slice(
                LogIndex(self._applying + 1),
                LogIndex(self.log.commit_index + 1),
                self.config.max_committed_bytes_per_ready,
            )
        soft = self._soft_state()
        membership = self.membership if self.membership != self._persisted_membership else None
        leader_unchanged_term = hs.term == self._persisted_hs.term and hs.voted_for == self._persisted_hs.voted_for
        rd = Ready(
            hard_state=hs if hs != self._persisted_hs else None,
            truncate_from=truncate_from,
            entries=tuple(entries),
            snapshot=self._incoming_snapshot,
            membership=membership,
            messages=tuple(self._msgs),
            committed_entries=tuple(committed),
            read_states=tuple(self._read_states),
            soft_state=soft if soft != self._prev_soft else None,
            send_before_persist=self.role == Role.LEADER and leader_unchanged_term and self._incoming_snapshot is None,
            commit_only=leader_unchanged_term,
        )
        self._msgs = []
        self._read_states = []
        if committed:
            self._applying = committed[-1].index
        self._ready_outstanding = True
        self._ready_state = (hs, soft, self.membership)
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied `rd`."""
        self._ready_outstanding = False
        hs, soft, membership = self._ready_state
        self._persisted_hs = hs
        self._prev_soft = soft
        self._persisted_membership = membership
        if rd.snapshot is not None:
            self.log.snapshot_installed(rd.snapshot.meta)
            if self._incoming_snapshot is rd.snapshot:
                self._incoming_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role == Role.LEADER:
                me = self.progress.get(self.id)
                if me is not None and self.log.term_or_none(last.index) == last.term:
                    me.maybe_update(LogIndex(min(last.index, self.log.unstable_offset - 1)))
                    if self._maybe_commit():
                        self._broadcast_append(commit_changed=True)
        elif rd.truncate_from is not None:
            self.log.truncated_from = None
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    # ------------------------------------------------------------------ snapshots (driver)
    def snapshot_meta_for(self, index: LogIndex) -> SnapshotMeta:
        """Metadata for a snapshot of the state machine at applied index `index`."""
        if index > self.log.last_applied:
            raise LogInvariantError(f"cannot snapshot at {index}: only {self.log.last_applied} applied")
        return SnapshotMeta(index, self.log.term_at(index), self.membership_at(index))

    def compacted(self, meta: SnapshotMeta) -> None:
        """The driver compacted its store up to meta.index (after taking a snapshot)."""
        self.log.compacted(meta)
        if self._configs[0][0] < meta.index:
            keep = [(i, m) for i, m in self._configs if i > meta.index]
            self._configs = [(meta.index, meta.membership)] + keep

    def should_snapshot(self) -> bool:
        return self.log.last_applied - self.log.snapshot_meta().index >= self.config.snapshot_threshold

    # ------------------------------------------------------------------ seed convenience
    # The seed's API drives the node itself: `apply_committed()` and `take_messages()` run
    # the Ready cycle against the node's own store and `state_machine`, exactly as a driver
    # must (persist, then hand out messages, then apply, then advance). Whichever of the two
    # runs the cycle, messages wait for `take_messages()` and results for `apply_committed()`.
    # A production driver uses `ready()`/`advance()` instead and never calls these.
    def _run_own_cycle(self) -> None:
        if self.state_machine is None:
            from .state import StateMachine

            self.state_machine = StateMachine()
        sm = self.state_machine
        while self.has_ready():
            rd = self.ready()
            rd.persist_to(self.log.store)
            if rd.snapshot is not None and rd.snapshot.data:
                sm.restore_chunks([rd.snapshot.data], expect_index=rd.snapshot.meta.index)
            self._outbox.extend(rd.messages)
            for rs in sm.apply_entries(rd.committed_entries):
                self._results.extend(rs)
            self.advance(rd)

    def apply_committed(self) -> list[Any]:
        """Run the in-memory cycle (the seed's API): persist to the node's own store, apply
        committed entries to `state_machine`, and return every result not returned yet."""
        self._run_own_cycle()
        out, self._results = self._results, []
        return out

    def take_messages(self) -> list[RaftMessage]:
        """Run the in-memory cycle, then hand out every message waiting to be sent: right
        after `start_election()`, the vote request for each peer (its term and vote are in
        the store by then: persist before send)."""
        self._run_own_cycle()
        out, self._outbox = self._outbox, []
        return out

    def __repr__(self) -> str:
        return (
            f"RaftNode({self.id!r}, role={self.role.value}, term={self.term}, "
            f"commit={self.log.commit_index}, last={self.log.last_index()})"
        )

