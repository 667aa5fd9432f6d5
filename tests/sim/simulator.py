"""A deterministic simulator for the Raft core.

N `RaftNode`s talk over an in-memory network with a fake clock (integer ticks) and a
seeded fault schedule: drops, delays (and so reordering), duplicates, partitions (including
the leader and partial connectivity), crashes and restarts that keep only what a node
persisted through `Ready`. A client workload proposes the seed's commands.

After every step the simulator checks Raft's safety properties (dissertation Figure 3.2):
election safety, log matching, leader completeness, state-machine safety, commit index
monotonicity, and that every acknowledged proposal is in the committed log. Any failure
raises `SafetyViolation` naming the seed, so `python -m tests.sim.run --seed N` replays it.

Nothing here reads the wall clock or uses trio: the same seed gives the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from aegis.log import LogEntry, LogIndex, MemoryLogStore, Membership
from aegis.messages import ConfigChange, ConfigChangeType, InstallSnapshotRequest
from aegis.raft import ConfigChangeError, NotLeaderError, ProposalDroppedError, RaftConfig, RaftNode, Role
from aegis.state import Command, StateMachine, encode_batch
from aegis.transport import InMemoryTransport


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


@dataclass
class SimNode:
    id: str
    disk: MemoryLogStore
    snapshot_data: bytes = b""
    raft: RaftNode | None = None
    sm: StateMachine = field(default_factory=StateMachine)
    alive: bool = True
    last_commit: int = 0


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
        for nid in ids + learner_ids:
            disk = MemoryLogStore(self.membership)
            self.nodes[nid] = SimNode(nid, disk)
            self._boot(self.nodes[nid])
        # Global records for the safety checks.
        self.leaders_by_term: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        # index -> an upper bound on the term in which it was committed: the highest term any
        # live node had when the commit was first seen. Leader Completeness speaks of leaders
        # of *later* terms: a stale leader may lack what a newer leader committed.
        self.committed_in: dict[int, int] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.acked: dict[int, tuple[int, bytes]] = {}  # acknowledged proposals
        self.pending: dict[str, list[tuple[int, int, bytes]]] = {nid: [] for nid in self.nodes}
        self.restart_at: dict[str, int] = {}
        self.client_seq = 0
        self.proposed = 0
        self.steps = 0
        self.violation_hooks: list[Callable[[], None]] = []
        self.reads: dict[tuple[str, int], int] = {}  # (node, ctx) -> highest ack when the read began
        self.read_ctx = 0
        self.read_rng = random.Random(f"{seed}/reads")  # reads do not perturb the fault schedule
        self.reads_served = 0

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
        )

    def _boot(self, node: SimNode) -> None:
        node.sm = StateMachine()
        if node.snapshot_data:
            node.sm.restore_chunks([node.snapshot_data])
        node.raft = RaftNode(node.id, self._config(node.id), node.disk)
        node.alive = True
        node.last_commit = node.raft.commit_index

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        if not node.alive:
            return
        node.alive = False
        node.raft = None
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
    def _drain(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        while raft.has_ready():
            rd = raft.ready()
            if rd.hard_state is not None and rd.hard_state.commit_index < node.disk.initial_state()[0].commit_index:
                self.fail(f"{node.id}: persisted commit index went backwards")
            rd.persist_to(node.disk)
            if rd.snapshot is not None:
                node.snapshot_data = rd.snapshot.data
                node.sm.restore_chunks([rd.snapshot.data])
            for m in rd.messages:
                if isinstance(m, InstallSnapshotRequest) and not m.data:
                    m = InstallSnapshotRequest(
                        term=m.term, leader_id=m.leader_id, snapshot=m.snapshot,
                        data=node.snapshot_data, receiver=m.receiver,
                    )
                self.net.send(m, self.now)
            for e in rd.committed_entries:
                self._apply(node, e)
            for rs in rd.read_states:
                floor = self.reads.pop((node.id, rs.ctx), None)
                if floor is not None and rs.index < floor:
                    self.fail(f"{node.id}: read {rs.ctx} got read index {rs.index}, but a write at {floor} "
                              "was acknowledged before the read began (not linearizable)")
                self.reads_served += floor is not None
            raft.advance(rd)
            if raft.should_snapshot():
                self._take_snapshot(node)

    def _take_snapshot(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        idx = LogIndex(node.sm.last_applied)
        meta = raft.snapshot_meta_for(idx)
        data = b"".join(node.sm.snapshot_chunks())
        node.disk.compact(meta)
        node.snapshot_data = data
        raft.compacted(meta)

    def _apply(self, node: SimNode, e: LogEntry) -> None:
        key = (int(e.term), bytes(e.data))
        seen = self.applied.get(e.index)
        if seen is None:
            self.applied[e.index] = key
        elif seen != key:
            self.fail(f"state machine safety: {node.id} applied {key} at {e.index}, another node {seen}")
        # Only committed entries are handed out for applying.
        if self.committed.setdefault(e.index, key) != key:
            self.fail(f"{node.id} applies {key} at {e.index}, but {self.committed[e.index]} was committed")
        self.committed_in.setdefault(e.index, self._highest_term())
        node.sm.apply_entry(e)
        # Acknowledge the client whose proposal this was, if it was proposed on this node.
        still = []
        for idx, term, data in self.pending[node.id]:
            if idx == e.index:
                if term == e.term and data == bytes(e.data):
                    self.acked[idx] = (term, data)
            elif idx > e.index:
                still.append((idx, term, data))
        self.pending[node.id] = still

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
            payloads = [self._command().encode() for _ in range(self.rng.randrange(2, 5))]
            data = encode_batch(payloads)
            try:
                idx = node.raft.propose_commands(payloads)
            except (NotLeaderError, ProposalDroppedError):
                return False
        else:
            data = self._command().encode()
            try:
                idx = node.raft.propose(data)
            except (NotLeaderError, ProposalDroppedError):
                return False
        self.proposed += 1
        self.pending[node.id].append((idx, node.raft.term, data))
        self._drain(node)
        return True

    def _command(self) -> Command:
        self.client_seq += 1
        key = f"k{self.rng.randrange(8)}"
        r = self.rng.random()
        if r < 0.5:
            cmd = Command.set(key, f"v{self.client_seq}".encode())
        elif r < 0.75:
            cmd = Command.increment(key, self.rng.randrange(1, 5))
        elif r < 0.9:
            cmd = Command.delete(key)
        else:
            cmd = Command.compare_and_swap(key, f"v{self.client_seq - 1}".encode(), f"v{self.client_seq}".encode())
        return cmd

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
            node.raft.propose_config_change(change)
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
                    self._drain(reader)
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
                key = (int(e.term), bytes(e.data))
                seen = self.committed.setdefault(e.index, key)
                self.committed_in.setdefault(e.index, self._highest_term())
                if seen != key:
                    self.fail(f"committed entry {e.index} differs: {node.id} has {key}, before {seen}")
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
                    if ea[k].term != eb[k].term or bytes(ea[k].data) != bytes(eb[k].data):
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

