"""A scriptable in-memory network of RaftNodes for the paper tests (etcd's `network`).

`Net.deliver()` runs every node's Ready cycle (through aegis.memdriver.MemoryDriver, into
its MemoryLogStore) and delivers messages until the network is quiet. `cut`, `isolate`,
`drop_types` and `recover` shape what gets through.
"""

from __future__ import annotations

from typing import Callable, Iterable

from aegis.log import EntryType, LogEntry, LogIndex, Membership, MemoryLogStore, Term
from aegis.memdriver import MemoryDriver
from aegis.messages import RaftMessage
from aegis.raft import RaftConfig, RaftNode
from aegis.state import StateMachine


def make_config(**kw: object) -> RaftConfig:
    base = dict(election_timeout_min=10, election_timeout_max=20, heartbeat_interval=1, seed=1)
    base.update(kw)
    return RaftConfig(**base)  # type: ignore[arg-type]


class Peer:
    """One node of the network: a RaftNode over its MemoryLogStore, driven by the reference
    in-memory driver (aegis.memdriver) with a StateMachine, snapshotting only when told
    (`snapshot_now`). `applied` and `read_states` record what its cycles handed out."""

    def __init__(self, node_id: str, voters: Iterable[str], learners: Iterable[str] = (),
                 config: RaftConfig | None = None, store: MemoryLogStore | None = None) -> None:
        self.id = node_id
        self.store = store or MemoryLogStore(Membership.of(voters, learners))
        self.config = config or make_config()
        self.driver = MemoryDriver(RaftNode(node_id, self.config, self.store), StateMachine(), auto_snapshot=False)
        self.applied: list[LogEntry] = []
        self.read_states: list[tuple[int, int]] = []

    @property
    def raft(self) -> RaftNode:
        return self.driver.raft

    @property
    def sm(self) -> StateMachine:
        sm = self.driver.state_machine
        assert sm is not None
        return sm

    @property
    def snapshot_data(self) -> bytes:
        return self.driver.snapshot_data

    def cycle(self) -> list[RaftMessage]:
        out = self.driver.cycle()
        self.applied.extend(out.committed)
        self.read_states.extend((r.ctx, r.index) for r in out.read_states)
        return out.messages

    def snapshot_now(self) -> None:
        self.driver.take_snapshot()

    def restart(self) -> None:
        """Crash and restart: keep only what was persisted through Ready. Like a real
        process, the new incarnation draws fresh randomness (a new seed)."""
        import dataclasses

        self.incarnation = getattr(self, "incarnation", 0) + 1
        self.config = dataclasses.replace(self.config, seed=(self.config.seed or 0) + 7919 * self.incarnation)
        sm = StateMachine()
        if self.snapshot_data:
            sm.restore_chunks([self.snapshot_data])
        self.driver.raft = RaftNode(self.id, self.config, self.store)
        self.driver.state_machine = sm
        self.applied = []


class Net:
    def __init__(self, ids: Iterable[str], learners: Iterable[str] = (), **config: object) -> None:
        ids = list(ids)
        learners = list(learners)
        self.peers: dict[str, Peer] = {}
        for i, nid in enumerate(ids + learners):
            cfg = make_config(seed=i + 1, **config)
            self.peers[nid] = Peer(nid, ids, learners, cfg)
        self.blocked: set[tuple[str, str]] = set()
        self.dropped_types: set[type] = set()
        self.filter: Callable[[RaftMessage], bool] | None = None
        self.trace: list[RaftMessage] = []

    def __getitem__(self, nid: str) -> RaftNode:
        return self.peers[nid].raft

    def cut(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def isolate(self, a: str) -> None:
        for b in self.peers:
            if b != a:
                self.cut(a, b)

    def recover(self) -> None:
        self.blocked.clear()
        self.dropped_types.clear()
        self.filter = None

    def deliver(self, msgs: Iterable[RaftMessage] = (), max_rounds: int = 10_000) -> None:
        queue = list(msgs)
        for p in self.peers.values():
            queue.extend(p.cycle())
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < max_rounds, "network did not quiesce"
            m = queue.pop(0)
            if (m.sender, m.receiver) in self.blocked or type(m) in self.dropped_types:
                continue
            if self.filter is not None and not self.filter(m):
                continue
            peer = self.peers.get(m.receiver)
            if peer is None:
                continue
            self.trace.append(m)
            peer.raft.step(m)
            queue.extend(peer.cycle())
            for p in self.peers.values():
                if p is not peer:
                    queue.extend(p.cycle())

    def tick(self, nid: str, n: int = 1) -> None:
        for _ in range(n):
            self.peers[nid].raft.tick()
            self.deliver()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for p in self.peers.values():
                p.raft.tick()
            self.deliver()

    def elect(self, nid: str) -> None:
        self.peers[nid].raft.start_election()
        self.deliver()
        assert self.peers[nid].raft.is_leader(), f"{nid} did not win"

    def propose(self, nid: str, data: bytes = b"x") -> LogIndex:
        idx = self.peers[nid].raft.propose(data)
        self.deliver()
        return idx


def entries(*terms: int, start: int = 1) -> list[LogEntry]:
    return [LogEntry(LogIndex(start + i), Term(t), EntryType.COMMAND, b"") for i, t in enumerate(terms)]


def store_with(terms: list[int], voters: Iterable[str], term: int | None = None) -> MemoryLogStore:
    from aegis.log import HardState

    s = MemoryLogStore(Membership.of(voters))
    s.append(entries(*terms))
    s.set_hard_state(HardState(Term(term if term is not None else (terms[-1] if terms else 0)), None, LogIndex(0)))
    return s
