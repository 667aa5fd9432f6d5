"""A deterministic simulator for the Raft core.

N `RaftNode`s talk over an in-memory network with a fake clock (integer ticks) and a
seeded fault schedule: drops, delays (and so reordering), duplicates, partitions (including
the leader and partial connectivity), crashes and restarts that keep only what a node
persisted through `Ready`. A client workload proposes the seed's commands and, with
`FaultRates.op_rate`, the data API's OP commands (SET with NX/XX/PX/PXAT/KEEPTTL, MSET,
PEXPIRE, PERSIST, CASV, GETDEL, APPEND, ...) and TRANSACTIONs with watches, over the same
eight keys; the leader sweeps expired keys with PURGE entries, as the node does.

Time: the fake clock is integer ticks; a node's clock reads ``EPOCH_MS + ticks * TICK_MS +
its skew`` (`FaultRates.clock_skew`), and every proposal carries the proposer's clock as its
timestamp, never earlier than the latest entry it applied (the node's `_entry_time`).

After every step the simulator checks Raft's safety properties (dissertation Figure 3.2):
election safety, log matching, leader completeness, state-machine safety, commit index
monotonicity, and that every acknowledged proposal is in the committed log. An entry is
its term, payload *and timestamp* (the timestamp decides expiry). Applying is checked
against an independent model of the data commands (`model.py`) at every entry, replicas'
stored records (deadlines included; `len(sm)`) at every index, the log's time never
going backwards, and every ReadIndex read is served and checked: it hides each key whose
deadline is at or before the moment the read began, on the serving node's clock (README,
"The data API", Expiry), and returns what the model holds at the index it was served at.
Any failure raises `SafetyViolation` naming the seed, so `python -m tests.sim.run --seed N`
replays it.

Nothing here reads the wall clock or uses trio: the same seed gives the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from aegis.log import EntryType, LogEntry, LogIndex, MemoryLogStore, Membership
from aegis.memdriver import MemoryDriver
from aegis.messages import ConfigChange, ConfigChangeType
from aegis.raft import (
    ConfigChangeError, NotLeaderError, ProposalDroppedError, RaftConfig, RaftNode, ReadState, Ready, Role,
)
from aegis.state import Command, CommandResult, CommandType, Item, StateMachine, decode_batch, encode_batch
from aegis.transport import InMemoryTransport

from .model import ModelKV

EPOCH_MS = 1_700_000_000_000  # the fake clock's tick 0, in ms since the epoch
TICK_MS = 10  # one tick: election timeouts of 10-20 ticks are 100-200 ms
KEYS = tuple(f"k{i}" for i in range(8))

#: What identifies a log entry: (term, payload, timestamp).
EntryKey = tuple[int, bytes, float]


def _entry_key(e: LogEntry) -> EntryKey:
    return (int(e.term), bytes(e.data), float(e.timestamp))


def _live(items: list[Item], now: int) -> dict[bytes, tuple[bytes, int, int, int]]:
    return {k: (v, ver, rev, exp) for k, v, ver, rev, exp in items if not exp or exp > now}


def _diff(got: dict[bytes, tuple[bytes, int, int, int]], want: dict[bytes, tuple[bytes, int, int, int]]) -> str:
    keys = sorted(got.keys() | want.keys())
    return "; ".join(f"{k!r}: {got.get(k)} != model {want.get(k)}" for k in keys if got.get(k) != want.get(k))


def _commands_of(e: LogEntry) -> list[Command]:
    if e.type == EntryType.COMMAND:
        return [Command.decode(e.data)]
    if e.type == EntryType.BATCH:
        return decode_batch(e.data)
    return []


class SafetyViolation(AssertionError):
    pass


@dataclass
class FaultRates:
    drop: float = 0.02
    duplicate: float = 0.02
    max_delay: int = 3
    partition_every: int = 120  # mean ticks between partition events
    crash_every: int = 200  # mean ticks between crash events
    restart_after: tuple[int, int] = (20, 80)
    propose_rate: float = 0.3  # proposals per tick
    snapshot_threshold: int = 40
    membership_changes: bool = False
    read_rate: float = 0.2  # linearizable reads per tick, on random live nodes
    batch_rate: float = 0.25  # share of proposals that are a BATCH entry of 2-4 commands
    op_rate: float = 0.15  # share of commands that are OP or TRANSACTION commands
    ttl_ms: int = 400  # PX and PEXPIRE times are drawn up to this
    clock_skew: int = 0  # each node's clock is off by up to this many ms either way
    purge_every: int = 10  # ticks between the leader's expiry sweeps (the node: 100 ms)
    purge_limit: int = 4  # keys one PURGE entry removes at most


@dataclass
class SimNode:
    """One node: its "disk" (survives crashes), and the driver of its current (or, while it
    is down, its last) life: the RaftNode, the state machine and the snapshot bytes (which
    survive crashes too, like the disk)."""

    id: str
    disk: MemoryLogStore
    driver: MemoryDriver | None = None  # set at boot
    alive: bool = True
    last_commit: int = 0
    skew: int = 0  # ms this node's clock is ahead of the fake clock (negative: behind)
    waiting_reads: list[tuple[int, int, int]] = field(default_factory=list)  # (ctx, read index, start ms)

    @property
    def raft(self) -> RaftNode | None:
        """The node's RaftNode; None while it is down."""
        return self.driver.raft if self.alive and self.driver is not None else None

    @property
    def sm(self) -> StateMachine:
        assert self.driver is not None and self.driver.state_machine is not None
        return self.driver.state_machine

    @property
    def snapshot_data(self) -> bytes:
        return self.driver.snapshot_data if self.driver is not None else b""


class Simulation:
    def __init__(
        self,
        seed: int,
        n: int = 3,
        faults: FaultRates | None = None,
        *,
        check_every: int = 1,
        learners: int = 0,
        codec_roundtrip: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or FaultRates()
        self.now = 0
        self.check_every = check_every
        ids = [f"n{i + 1}" for i in range(n)]
        learner_ids = [f"l{i + 1}" for i in range(learners)]
        self.membership = Membership.of(ids, learner_ids)
        self.net = InMemoryTransport(seed=self.rng.randrange(1 << 30), reorder=True, codec_roundtrip=codec_roundtrip)
        self.net.delay = (1, max(1, self.faults.max_delay))
        self.net.drop_rate = self.faults.drop
        self.net.duplicate_rate = self.faults.duplicate
        self.nodes: dict[str, SimNode] = {}
        # The data workload, the clocks and the reads draw from their own generators, so
        # that they do not perturb the fault schedule.
        self.cmd_rng = random.Random(f"{seed}/commands")
        clock_rng = random.Random(f"{seed}/clocks")
        # Records of the data checks: the model after each index, the first applier's
        # stored records there (deadlines, revisions, expired-but-unpurged keys and all),
        # each entry's commands, the log's time so far.
        self.model = ModelKV()
        self.model_index = 0
        self.model_at: dict[int, ModelKV] = {0: self.model.copy()}
        self.stored_at: dict[int, list[Item]] = {}
        self.time_at: dict[int, int] = {0: 0}  # index -> the log's time (ms) there
        self.commands_at: dict[int, list[Command]] = {}
        self.log_time = 0
        self.purge_inflight: tuple[str, int] | None = None
        #: Evidence that the data checks bit: see `test_ttl_checks_are_not_vacuous`.
        self.stats: dict[str, int] = dict.fromkeys(
            ("deadlines_set", "keys_expired", "purged", "reads_checked", "expired_hidden", "leader_crashes",
             "txn_aborted", "txn_applied", "shown_late"), 0)
        self.kinds: dict[str, int] = {}  # committed commands by kind (OP: by operation)
        for nid in ids + learner_ids:
            disk = MemoryLogStore(self.membership)
            skew = clock_rng.randint(-self.faults.clock_skew, self.faults.clock_skew)
            self.nodes[nid] = SimNode(nid, disk, skew=skew)
            self._boot(self.nodes[nid])
        # Global records for the safety checks.
        self.leaders_by_term: dict[int, str] = {}
        self.committed: dict[int, EntryKey] = {}  # index -> (term, data, timestamp)
        # index -> an upper bound on the term in which it was committed: the highest term any
        # live node had when the commit was first seen. Leader Completeness speaks of leaders
        # of *later* terms: a stale leader may lack what a newer leader committed.
        self.committed_in: dict[int, int] = {}
        self.applied: dict[int, EntryKey] = {}
        self.acked: dict[int, EntryKey] = {}  # acknowledged proposals
        self.pending: dict[str, list[tuple[int, EntryKey]]] = {nid: [] for nid in self.nodes}
        self.restart_at: dict[str, int] = {}
        self.client_seq = 0
        self.proposed = 0
        self.steps = 0
        self.violation_hooks: list[Callable[[], None]] = []
        self.reads: dict[tuple[str, int], int] = {}  # (node, ctx) -> highest ack when the read began
        self.read_start: dict[tuple[str, int], int] = {}  # (node, ctx) -> its clock (ms) then
        self.read_ctx = 0
        self.read_rng = random.Random(f"{seed}/reads")  # reads do not perturb the fault schedule
        self.notice_rng = random.Random(f"{seed}/notices")  # neither do deferred commit notices
        self.reads_served = 0
        # Whether the entry being applied is the first application of its index anywhere
        # (set by `_check_apply` before the entry is applied, read by `_applied` after).
        self._first_apply = False

    # ------------------------------------------------------------------ lifecycle
    def _config(self, nid: str) -> RaftConfig:
        return RaftConfig(
            election_timeout_min=10,
            election_timeout_max=20,
            heartbeat_interval=2,
            snapshot_threshold=self.faults.snapshot_threshold,
            max_entries_per_message=16,
            max_inflight=8,
            seed=self.rng.randrange(1 << 30),
            # Odd seeds run as the node does: commit-only appends wait for the next entries,
            # the driver's flush (below, at random) or the next tick.
            defer_commit_notices=self.seed % 2 == 1,
        )

    def clock_ms(self, node: SimNode) -> int:
        """The node's own clock."""
        return EPOCH_MS + self.now * TICK_MS + node.skew

    def read_now(self, node: SimNode) -> int:
        """The time a read is served at (the node's `_read_now`): its clock, never earlier
        than the latest entry it applied."""
        return max(self.clock_ms(node), node.sm.clock)

    def _entry_time(self, node: SimNode) -> float:
        """The timestamp a proposal carries (the node's `_entry_time`)."""
        return max(self.clock_ms(node), node.sm.clock) / 1000

    def _boot(self, node: SimNode) -> None:
        data = node.snapshot_data  # what the previous life left
        sm = StateMachine()
        if data:
            self._check_restored(node, sm, sm.restore_chunks([data]))
        raft = RaftNode(node.id, self._config(node.id), node.disk)
        node.driver = MemoryDriver(
            raft, sm, snapshot_data=data, auto_snapshot=True,
            before_persist=lambda rd: self._check_ready(node, rd),
            on_restored=lambda snap, index: self._check_restored(node, node.sm, index),
            before_apply=lambda e: self._check_apply(node, e),
            after_apply=lambda e, results: self._applied(node, e, results),
            on_read_state=lambda rs: self._read_state(node, rs),
            after_ready=lambda rd: self._after_ready(node),
        )
        node.alive = True
        node.last_commit = raft.commit_index

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        if not node.alive:
            return
        node.alive = False  # and so node.raft is None
        node.waiting_reads = []
        self.net.crash(nid)
        self.pending[nid] = []  # clients of a crashed node see an unknown outcome

    def restart(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive:
            return
        self.net.restart(nid)
        self._boot(node)
        self._drain(node)

    # ------------------------------------------------------------------ the driver
    # Every node runs the reference in-memory driver (aegis.memdriver.MemoryDriver):
    # persist, send, apply, read states, advance, snapshot when the core asks. The checks
    # below are its hooks, each at its point of the cycle.
    def _drain(self, node: SimNode) -> None:
        assert node.alive and node.driver is not None
        for m in node.driver.cycle().messages:
            self.net.send(m, self.now)

    def _check_ready(self, node: SimNode, rd: Ready) -> None:
        """Before a batch is persisted."""
        if rd.hard_state is not None and rd.hard_state.commit_index < node.disk.initial_state()[0].commit_index:
            self.fail(f"{node.id}: persisted commit index went backwards")
        if rd.snapshot is not None and not rd.snapshot.data:
            self.fail(f"{node.id}: installs the snapshot at {rd.snapshot.meta.index} without its data")

    def _check_apply(self, node: SimNode, e: LogEntry) -> None:
        """Before `node` applies committed entry `e`."""
        key = _entry_key(e)
        seen = self.applied.get(e.index)
        if seen is None:
            self.applied[e.index] = key
        elif seen != key:
            self.fail(f"state machine safety: {node.id} applied {key} at {e.index}, another node {seen}")
        # Only committed entries are handed out for applying.
        if self.committed.setdefault(e.index, key) != key:
            self.fail(f"{node.id} applies {key} at {e.index}, but {self.committed[e.index]} was committed")
        if e.index not in self.committed_in:
            self.committed_in[e.index] = self._highest_term()
        if e.index <= node.sm.last_applied:
            self.fail(f"{node.id} is handed entry {e.index} again (applied up to {node.sm.last_applied})")
        self._first_apply = seen is None

    def _applied(self, node: SimNode, e: LogEntry, results: list[CommandResult]) -> None:
        """After `node` applied committed entry `e` (in a transaction of its own)."""
        key = _entry_key(e)
        self._check_applied(node, e, self._first_apply, results)
        # Acknowledge the client whose proposal this was, if it was proposed on this node.
        still = []
        for idx, pkey in self.pending[node.id]:
            if idx == e.index:
                if pkey == key:
                    self.acked[idx] = pkey
            elif idx > e.index:
                still.append((idx, pkey))
        self.pending[node.id] = still

    def _after_ready(self, node: SimNode) -> None:
        """After a batch was advanced (and the snapshot it may have led to taken)."""
        if node.waiting_reads:
            self._serve_reads(node)

    def _read_state(self, node: SimNode, rs: ReadState) -> None:
        """A read state, before the batch that carried it is advanced."""
        floor = self.reads.pop((node.id, rs.ctx), None)
        if floor is not None and rs.index < floor:
            self.fail(f"{node.id}: read {rs.ctx} got read index {rs.index}, but a write at {floor} "
                      "was acknowledged before the read began (not linearizable)")
        self.reads_served += floor is not None
        start = self.read_start.pop((node.id, rs.ctx), None)
        if start is not None:
            node.waiting_reads.append((rs.ctx, int(rs.index), start))

    # ------------------------------------------------------------------ the data checks
    def _check_applied(self, node: SimNode, e: LogEntry, first: bool, results: list[CommandResult]) -> None:
        """After `node` applied `e`: the model (advanced by the first replica to apply each
        index, in index order), the replicas' stored state, and the log's time."""
        idx = int(e.index)
        commands = _commands_of(e) if first else self.commands_at[idx]
        now = int(e.timestamp * 1000)
        stored = list(node.sm.backend.items())
        if commands and not now:
            self.fail(f"entry {idx} carries commands but no timestamp")
        if first:
            if idx != self.model_index + 1:
                self.fail(f"entry {idx} applied first, but the model is at {self.model_index}")
            if commands:
                if now < self.log_time:
                    self.fail(f"the log's time went backwards at {idx}: {now} ms after {self.log_time} ms")
                # keys that expired since the previous entry (this entry is the log point
                # at which every replica stops seeing them)
                self.stats["keys_expired"] += len(self.model.live(self.log_time).keys() - self.model.live(now).keys())
                self.log_time = now
                for c in commands:
                    self._count(c, now)
                    self.model.apply(c, idx, now)
            self.model_index = idx
            self.time_at[idx] = self.log_time
            self.model_at[idx] = self.model.copy()
            self.stored_at[idx] = stored
            self.commands_at[idx] = commands
            if commands and commands[0].name == "PURGE" and results:
                removed = results[0].value
                self.stats["purged"] += removed if isinstance(removed, int) else 0
        else:
            # The replicas store the same records (the digest's contents and revisions),
            # expired keys not yet purged included, so they agree on len(sm) too.
            if len(node.sm) != len(self.stored_at[idx]):
                self.fail(f"{node.id}: len(sm) after {idx} is {len(node.sm)}, the first replica's "
                          f"{len(self.stored_at[idx])}")
            if stored != self.stored_at[idx]:
                self.fail(f"{node.id}: stored state after {idx} differs from the first replica's: "
                          f"{sorted(set(stored) ^ set(self.stored_at[idx]))}")
        if commands:
            got = _live(stored, now)
            want = self.model_at[idx].live(now)
            if got != want:
                self.fail(f"{node.id}: live state after {idx} at {now} ms differs from the model: "
                          f"{_diff(got, want)}")

    def _count(self, c: Command, now: int) -> None:
        kind = c.name if c.type == CommandType.OP and c.name else c.type.name
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if c.type == CommandType.TRANSACTION:
            ok = all((rec[2] if (rec := self.model.get(k.encode(), now)) else 0) == r for k, r in c.watches)
            self.stats["txn_applied" if ok else "txn_aborted"] += 1
        elif c.name in ("PEXPIRE", "PEXPIREAT") or (c.name == "SET" and c.args[4] in (b"PX", b"PXAT")):
            self.stats["deadlines_set"] += 1

    def _check_restored(self, node: SimNode, sm: StateMachine, index: int) -> None:
        """After `sm` (`node`'s, or the one it boots with) restored a snapshot at `index`."""
        want = self.stored_at.get(index)
        if want is not None and list(sm.backend.items()) != want:
            self.fail(f"{node.id}: the snapshot at {index} does not hold the state applied there")

    def _serve_reads(self, node: SimNode) -> None:
        """Serve the reads whose read point this node reached, as the node's `_serve_read`
        does, and check each of them."""
        sm = node.sm
        applied = sm.last_applied
        ready = [r for r in node.waiting_reads if r[1] <= applied]
        if not ready:
            return
        node.waiting_reads = [r for r in node.waiting_reads if r[1] > applied]
        now = self.read_now(node)
        model = self.model_at[applied].live(now)
        for ctx, _index, start in ready:
            self.stats["reads_checked"] += 1
            for k in KEYS:
                kb = k.encode()
                rec = sm.record(kb, now)
                res = sm.read(Command.get(k), now)
                if not res.success or (res.value, res.version) != ((rec[0], rec[1]) if rec else (None, 0)):
                    self.fail(f"{node.id}: read {ctx} of {k}: GET answered {res}, the record is {rec}")
                # README, "The data API", Expiry: a read hides every key whose deadline is at
                # or before the moment it is served, on the serving node's clock, and never
                # earlier than the time of the last entry that node applied; on the leader, a
                # key whose deadline passed before the read began is never returned.
                if rec is not None and rec[3] and rec[3] <= self.time_at[applied]:
                    self.fail(f"{node.id}: read {ctx} (served at {now} ms, applied {applied}) returned {k} "
                              f"whose deadline {rec[3]} ms is before the time of the entry applied last, "
                              f"{self.time_at[applied]} ms")
                if rec is not None and rec[3] and rec[3] <= start:
                    self.fail(f"{node.id}: read {ctx} (began at {start} ms, served at {now} ms, applied "
                              f"{applied}) returned {k} whose deadline {rec[3]} ms had passed")
                # ... so a node whose clock is behind shows a key up to that much after its
                # deadline on the fake clock (the README's caveat), and never more.
                if rec is not None and rec[3] and rec[3] <= start - node.skew:
                    self.stats["shown_late"] += 1
                if rec != model.get(kb):
                    self.fail(f"{node.id}: read {ctx} of {k} at {applied} ({now} ms) returned {rec}, "
                              f"the model holds {model.get(kb)}")
                stored = sm.backend.get(kb)
                if rec is None and stored is not None:
                    self.stats["expired_hidden"] += 1

    def _highest_term(self) -> int:
        return max((n.raft.term for n in self.nodes.values() if n.alive and n.raft is not None), default=0)

    def committed_max(self) -> int:
        return max(self.committed) if self.committed else 0

    # ------------------------------------------------------------------ workload
    def leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            if node.alive and node.raft is not None and node.raft.role == Role.LEADER:
                if best is None or node.raft.term > best.raft.term:  # type: ignore[union-attr]
                    best = node
        return best

    def propose(self, node: SimNode | None = None) -> bool:
        node = node or self.leader()
        if node is None or node.raft is None:
            return False
        if self.faults.batch_rate and self.rng.random() < self.faults.batch_rate:
            # A batch of commands in one entry, as the node proposes a turn's writes.
            payloads = [self._command(node).encode() for _ in range(self.rng.randrange(2, 5))]
        else:
            payloads = [self._command(node).encode()]
        return self._propose_payloads(node, payloads) is not None

    def _propose_payloads(self, node: SimNode, payloads: list[bytes]) -> int | None:
        raft = node.raft
        assert raft is not None
        ts = self._entry_time(node)
        try:
            if len(payloads) > 1:
                idx = raft.propose_commands(payloads, timestamp=ts)
                data = encode_batch(payloads)
            else:
                idx = raft.propose(payloads[0], timestamp=ts)
                data = payloads[0]
        except (NotLeaderError, ProposalDroppedError):
            return None
        self.proposed += 1
        self.pending[node.id].append((idx, (raft.term, data, ts)))
        self._drain(node)
        return idx

    def sweep_expired(self) -> None:
        """The leader's expiry sweep (the node's `_expiry_loop`): one PURGE entry in flight
        at a time, for the keys its state holds past their deadline."""
        if self.purge_inflight is not None:
            nid, idx = self.purge_inflight
            owner = self.nodes[nid]
            if (owner.alive and owner.raft is not None and owner.raft.role == Role.LEADER
                    and owner.sm.last_applied < idx):
                return
            self.purge_inflight = None
        lead = self.leader()
        if lead is None or lead.raft is None:
            return
        keys = lead.sm.backend.expiring(self.read_now(lead), self.faults.purge_limit)
        if not keys:
            return
        proposed = self._propose_payloads(lead, [Command.op("PURGE", *keys).encode()])
        if proposed is not None:
            self.purge_inflight = (lead.id, proposed)

    def _command(self, node: SimNode) -> Command:
        self.client_seq += 1
        key = f"k{self.rng.randrange(8)}"
        r = self.rng.random()
        if self.faults.op_rate and self.cmd_rng.random() < self.faults.op_rate:
            return self._data_command(node, key)
        if r < 0.5:
            cmd = Command.set(key, f"v{self.client_seq}".encode())
        elif r < 0.75:
            cmd = Command.increment(key, self.rng.randrange(1, 5))
        elif r < 0.9:
            cmd = Command.delete(key)
        else:
            cmd = Command.compare_and_swap(key, f"v{self.client_seq - 1}".encode(), f"v{self.client_seq}".encode())
        return cmd

    def _data_command(self, node: SimNode, key: str) -> Command:
        """An OP command or a TRANSACTION, as the data API proposes them. Versions and
        revisions come from the proposer's state (a client that just read them), so they
        are sometimes current and sometimes stale."""
        g = self.cmd_rng
        if g.random() < 0.15:
            subs = [self._simple_op(node, f"k{g.randrange(8)}") for _ in range(g.randint(1, 3))]
            watches = []
            for k in g.sample(KEYS, g.randint(0, 2)):
                rev = self._seen(node, k)[2]
                if g.random() < 0.3:
                    rev = max(0, rev - g.randint(1, 3)) if rev and g.random() < 0.7 else g.randrange(0, self.model_index + 2)
                watches.append((k, rev))
            return Command.transaction(subs, watches)
        return self._simple_op(node, key)

    def _seen(self, node: SimNode, key: str) -> tuple[bytes, int, int, int]:
        rec = node.sm.record(key.encode(), self.read_now(node))
        return rec if rec is not None else (b"", 0, 0, 0)

    def _simple_op(self, node: SimNode, key: str) -> Command:
        g = self.cmd_rng
        value = f"v{self.client_seq}".encode()
        ttl = self.faults.ttl_ms
        r = g.random()
        if r < 0.35:
            cond = g.choice((b"", b"", b"NX", b"XX"))
            get = g.choice((b"", b"GET"))
            mode = g.choice((b"", b"PX", b"PX", b"PX", b"PXAT", b"KEEPTTL"))
            when = 0
            if mode == b"PX":
                when = g.randint(1, ttl)
            elif mode == b"PXAT":  # sometimes already past
                when = self.read_now(node) + g.randint(-ttl // 4, ttl)
            return Command.op("SET", key, value, cond, get, mode, when)
        if r < 0.45:
            other = f"k{g.randrange(8)}"
            return Command.op(g.choice(("MSET", "MSET", "MSETNX")), key, value, other, value + b"m")
        if r < 0.57:
            cond = g.choice((b"", b"", b"NX", b"XX", b"GT", b"LT"))
            if g.random() < 0.8:
                return Command.op("PEXPIRE", key, g.randint(-ttl // 8, ttl), cond)
            return Command.op("PEXPIREAT", key, self.read_now(node) + g.randint(-ttl // 8, ttl), cond)
        if r < 0.65:
            return Command.op("PERSIST", key)
        if r < 0.77:
            version = self._seen(node, key)[1]
            if g.random() < 0.3:
                version = max(0, version + g.choice((-1, 1)))
            if g.random() < 0.85:
                return Command.op("CASV", key, version, value)
            return Command.op("DELV", key, version)
        if r < 0.85:
            return Command.op("GETDEL", key)
        if r < 0.95:
            return Command.op("APPEND", key, b"+a")
        if r < 0.98:
            return Command.op("GETSET", key, value)
        return Command.increment(key, g.randint(1, 3))

    def change_membership(self) -> None:
        node = self.leader()
        if node is None or node.raft is None:
            return
        m = node.raft.membership
        candidates = sorted(self.nodes)
        nid = self.rng.choice(candidates)
        if nid in m.voters:
            if len(m.voters) <= 3:
                change = ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id=nid) if False else None
                if self.rng.random() < 0.5 and nid != node.id:
                    change = ConfigChange(type=ConfigChangeType.REMOVE, node_id=nid)
            else:
                change = ConfigChange(type=ConfigChangeType.REMOVE, node_id=nid)
        elif nid in m.learners:
            change = ConfigChange(type=ConfigChangeType.PROMOTE, node_id=nid)
        else:
            change = ConfigChange(type=ConfigChangeType.ADD_LEARNER, node_id=nid)
        if change is None:
            return
        try:
            node.raft.propose_config_change(change, timestamp=self._entry_time(node))
        except (ConfigChangeError, NotLeaderError, ProposalDroppedError):
            return
        self._drain(node)

    # ------------------------------------------------------------------ faults
    def _random_faults(self) -> None:
        f = self.faults
        ids = sorted(self.nodes)
        if f.partition_every and self.rng.random() < 1.0 / f.partition_every:
            kind = self.rng.randrange(4)
            if kind == 0:
                self.net.heal()
            elif kind == 1:
                lead = self.leader()
                if lead is not None:
                    self.net.isolate(lead.id)
            elif kind == 2:
                shuffled = ids[:]
                self.rng.shuffle(shuffled)
                cut = self.rng.randrange(1, len(ids))
                self.net.partition(shuffled[:cut], shuffled[cut:])
            else:
                a, b = self.rng.sample(ids, 2)
                self.net.cut(a, b)  # partial connectivity
        if f.crash_every and self.rng.random() < 1.0 / f.crash_every:
            alive = [nid for nid in ids if self.nodes[nid].alive]
            if len(alive) > 1:
                victim = self.rng.choice(alive)
                lead = self.leader()
                self.stats["leader_crashes"] += lead is not None and lead.id == victim
                self.crash(victim)
                lo, hi = f.restart_after
                self.restart_at[victim] = self.now + self.rng.randint(lo, hi)
        for nid, at in sorted(self.restart_at.items()):
            if at <= self.now:
                del self.restart_at[nid]
                self.restart(nid)
        if f.membership_changes and self.rng.random() < 0.01:
            self.change_membership()

    # ------------------------------------------------------------------ stepping
    def step(self, *, faults: bool = True, workload: bool = True) -> None:
        self.now += 1
        self.steps += 1
        if faults:
            self._random_faults()
        for nid in sorted(self.nodes):
            node = self.nodes[nid]
            if node.alive and node.raft is not None:
                node.raft.tick()
                self._drain(node)
        for m in self.net.deliver(self.now):
            node = self.nodes.get(m.receiver)
            if node is None or not node.alive or node.raft is None:
                continue
            node.raft.step(m)
            self._drain(node)
        for nid in sorted(self.nodes):  # the node's driver flushes deferred commit notices when idle
            node = self.nodes[nid]
            if node.alive and node.raft is not None and node.raft.commit_notices_due and self.notice_rng.random() < 0.5:
                node.raft.send_commit_notices()
                self._drain(node)
        if workload and self.faults.read_rate and self.read_rng.random() < self.faults.read_rate:
            # A linearizable read on any live node: its read point must cover every write
            # acknowledged before it began.
            alive = [n for n in sorted(self.nodes) if self.nodes[n].alive and self.nodes[n].raft is not None]
            if alive:
                reader = self.nodes[self.read_rng.choice(alive)]
                self.read_ctx += 1
                assert reader.raft is not None
                if reader.raft.read_index(self.read_ctx):
                    self.reads[(reader.id, self.read_ctx)] = max(self.acked, default=0)
                    self.read_start[(reader.id, self.read_ctx)] = self.clock_ms(reader)
                    self._drain(reader)
        if self.faults.purge_every and self.steps % self.faults.purge_every == 0:
            self.sweep_expired()
        if workload:
            while self.rng.random() < self.faults.propose_rate:
                self.propose()
                if self.rng.random() < 0.5:
                    break
        if self.steps % self.check_every == 0:
            self.check()

    def run(self, ticks: int, **kw: bool) -> None:
        for _ in range(ticks):
            self.step(**kw)

    def heal(self) -> None:
        self.net.heal()
        for nid in sorted(self.nodes):
            self.restart(nid)
        self.restart_at.clear()

    def stabilise(self, max_ticks: int = 400) -> int:
        """Heal everything; return ticks until a leader commits a fresh proposal everywhere."""
        self.heal()
        self.net.drop_rate = 0.0
        self.net.duplicate_rate = 0.0
        start = self.now
        target: tuple[int, int] | None = None  # (index, term) of our fresh proposal
        while self.now - start < max_ticks:
            self.step(faults=False, workload=False)
            lead = self.leader()
            if lead is None or lead.raft is None:
                continue
            if target is None or target[1] != lead.raft.term:
                # (re)propose to the current leader; a deposed leader's entry may be lost
                before = lead.raft.log.last_index()
                if self.propose(lead):
                    target = (before + 1, lead.raft.term)
                continue
            members = lead.raft.membership.members
            if all(
                self.nodes[nid].alive
                and self.nodes[nid].raft is not None
                and self.nodes[nid].raft.log.last_applied >= target[0]  # type: ignore[union-attr]
                for nid in members
            ):
                self.check(full=True)
                return self.now - start
        self.fail(f"no progress within {max_ticks} ticks after healing")
        return max_ticks

    # ------------------------------------------------------------------ safety checks
    def fail(self, why: str) -> None:
        raise SafetyViolation(f"seed {self.seed}, tick {self.now}: {why}")

    def check(self, full: bool = False) -> None:
        alive = [n for n in self.nodes.values() if n.alive and n.raft is not None]
        highest = self._highest_term()  # no term changes while checking
        for node in alive:
            raft = node.raft
            assert raft is not None
            # Election safety: at most one leader per term.
            if raft.role == Role.LEADER:
                other = self.leaders_by_term.setdefault(raft.term, node.id)
                if other != node.id:
                    self.fail(f"two leaders in term {raft.term}: {other} and {node.id}")
            # Commit index never decreases within a life.
            if raft.commit_index < node.last_commit:
                self.fail(f"{node.id}: commit index fell from {node.last_commit} to {raft.commit_index}")
            node.last_commit = raft.commit_index
            # Record committed entries; they must never change.
            lo = max(raft.log.first_index(), raft.commit_index - 20 if not full else 0, 1)
            for e in raft.log.slice(LogIndex(lo), LogIndex(raft.commit_index + 1)) if lo <= raft.commit_index else []:
                seen = self.committed.get(e.index)
                if seen is None:
                    self.committed[e.index] = _entry_key(e)
                    self.committed_in.setdefault(e.index, highest)
                elif seen[0] != e.term or seen[2] != e.timestamp or seen[1] != e.data:
                    self.fail(f"committed entry {e.index} differs: {node.id} has {_entry_key(e)}, before {seen}")
        # Leader completeness: a leader holds every committed entry (of earlier terms).
        for node in alive:
            raft = node.raft
            assert raft is not None
            if raft.role != Role.LEADER:
                continue
            snap = raft.log.snapshot_meta().index
            hi = min(self.committed_max(), raft.log.last_index())
            lo = snap + 1 if full else max(snap + 1, hi - 40)
            for idx in range(lo, hi + 1):
                t = raft.log.term_or_none(LogIndex(idx))
                c = self.committed.get(idx)
                if c is not None and t != c[0] and self.committed_in.get(idx, raft.term) < raft.term:
                    self.fail(f"leader {node.id} (term {raft.term}) lacks committed entry {idx}")
            if self.committed_max() > raft.log.last_index():
                # the leader may be stale only if a newer term exists
                newest = max(self.leaders_by_term)
                if newest == raft.term and raft.log.last_index() < self.committed_max():
                    self.fail(f"leader {node.id} of the newest term lacks committed entries")
        # Log matching on pairs of live nodes (windowed, full on demand).
        self._check_log_matching(alive, full)
        # Every acknowledged proposal is committed, at its index.
        for idx, key in self.acked.items():
            c = self.committed.get(idx)
            if c is not None and c != key:
                self.fail(f"acknowledged proposal at {idx} was lost: {key} vs committed {c}")

    def _check_log_matching(self, alive: list[SimNode], full: bool) -> None:
        for i in range(len(alive)):
            for j in range(i + 1, len(alive)):
                a, b = alive[i].raft, alive[j].raft
                assert a is not None and b is not None
                lo = max(a.log.first_index(), b.log.first_index())
                hi = min(a.log.last_index(), b.log.last_index())
                if lo > hi:
                    continue
                if not full:
                    lo = max(lo, hi - 30)
                ea = a.log.slice(LogIndex(lo), LogIndex(hi + 1))
                eb = b.log.slice(LogIndex(lo), LogIndex(hi + 1))
                # Find the highest index with equal terms; everything below must be equal.
                top = -1
                for k in range(len(ea) - 1, -1, -1):
                    if ea[k].term == eb[k].term:
                        top = k
                        break
                for k in range(top + 1):
                    x, y = ea[k], eb[k]
                    if x.term != y.term or x.timestamp != y.timestamp or bytes(x.data) != bytes(y.data):
                        self.fail(
                            f"log matching: {alive[i].id} and {alive[j].id} agree at "
                            f"{ea[top].index} but differ at {ea[k].index}"
                        )

    def final_check(self) -> None:
        self.check(full=True)
        for idx, key in self.acked.items():
            if self.committed.get(idx) != key:
                self.fail(f"acknowledged proposal at {idx} is not in the committed log")
        digests = {n.id: n.sm.digest() for n in self.nodes.values() if n.alive and n.raft is not None
                   and n.sm.last_applied == max(x.sm.last_applied for x in self.nodes.values())}
        if len(set(digests.values())) > 1:
            self.fail(f"replicas at the same applied index differ: {digests}")


def run_seed(seed: int, ticks: int = 600, n: int = 3, faults: FaultRates | None = None) -> Simulation:
    sim = Simulation(seed, n=n, faults=faults)
    sim.run(ticks)
    sim.stabilise()
    sim.final_check()
    return sim

