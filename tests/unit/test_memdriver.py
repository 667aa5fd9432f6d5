"""The reference in-memory driver of the Ready cycle (aegis.memdriver): one node and three
nodes wired through it elect, commit and apply in order; InstallSnapshot carries the
leader's snapshot bytes; the store is compacted when the core asks; the hooks run at their
points of the cycle."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

import pytest

from aegis.log import EntryType, LogEntry, Membership, MemoryLogStore, SnapshotMeta
from aegis.memdriver import Cycle, MemoryDriver
from aegis.messages import InstallSnapshotRequest, RaftMessage
from aegis.raft import IncomingSnapshot, RaftConfig, RaftNode, ReadState, Ready
from aegis.state import Command, CommandResult, StateMachine


def config(**kw: object) -> RaftConfig:
    base: dict[str, object] = dict(election_timeout_min=10, election_timeout_max=20, heartbeat_interval=1, seed=1)
    base.update(kw)
    return RaftConfig(**base)  # type: ignore[arg-type]


def solo(sm: StateMachine | None = None, **kw: object) -> MemoryDriver:
    """A one-node cluster that has elected itself (its no-op at index 1 applied)."""
    raft = RaftNode("a", config(**kw), MemoryLogStore(Membership.of(["a"])))
    driver = MemoryDriver(raft, sm if sm is not None else StateMachine())
    raft.campaign(pre_vote=False)
    out = driver.cycle()
    assert raft.is_leader() and [(e.index, e.type) for e in out.committed] == [(1, EntryType.NO_OP)]
    return driver


class Wired:
    """Nodes, each with its own MemoryDriver and StateMachine, passing messages in memory.
    Messages to or from a node in `isolated` are dropped."""

    def __init__(self, ids: Iterable[str] = ("a", "b", "c"), **kw: object) -> None:
        ids = list(ids)
        self.drivers = {
            nid: MemoryDriver(RaftNode(nid, config(seed=i + 1, **kw), MemoryLogStore(Membership.of(ids))),
                              StateMachine())
            for i, nid in enumerate(ids)
        }
        self.committed: dict[str, list[LogEntry]] = {nid: [] for nid in ids}
        self.results: dict[str, list[CommandResult]] = {nid: [] for nid in ids}
        self.snapshots: dict[str, list[SnapshotMeta]] = {nid: [] for nid in ids}
        self.isolated: set[str] = set()
        self.delivered: list[RaftMessage] = []

    def __getitem__(self, nid: str) -> MemoryDriver:
        return self.drivers[nid]

    def _cycle(self, nid: str) -> list[RaftMessage]:
        out = self.drivers[nid].cycle()
        self.committed[nid].extend(out.committed)
        self.results[nid].extend(out.results)
        self.snapshots[nid].extend(out.snapshots)
        return out.messages

    def deliver(self) -> None:
        queue: list[RaftMessage] = []
        for nid in self.drivers:
            queue.extend(self._cycle(nid))
        while queue:
            m = queue.pop(0)
            if m.sender in self.isolated or m.receiver in self.isolated:
                continue
            self.delivered.append(m)
            self.drivers[m.receiver].raft.step(m)
            queue.extend(self._cycle(m.receiver))

    def elect(self, nid: str) -> None:
        self.drivers[nid].raft.campaign(pre_vote=False)
        self.deliver()
        assert self.drivers[nid].raft.is_leader()

    def catch_up(self, leader: str, nid: str, max_ticks: int = 50) -> None:
        """Tick the leader (heartbeats) until `nid` has applied what the leader applied."""
        for _ in range(max_ticks):
            if self.drivers[nid].raft.log.last_applied == self.drivers[leader].raft.log.last_applied:
                return
            self.drivers[leader].raft.tick()
            self.deliver()
        raise AssertionError(f"{nid} did not catch up with {leader}")

    def propose(self, nid: str, *commands: Command) -> list[int]:
        idx = [int(self.drivers[nid].raft.propose(c)) for c in commands]
        self.deliver()
        return idx


# ---------------------------------------------------------------- one node
def test_one_node_commits_and_applies_in_order_with_results() -> None:
    d = solo()
    raft = d.raft
    idx = [raft.propose(Command.set("k", b"1")), raft.propose(Command.increment("n", 5)),
           raft.propose(Command.increment("n", 2)), raft.propose(Command.delete("k"))]
    assert idx == [2, 3, 4, 5]
    out = d.cycle()
    assert [int(e.index) for e in out.committed] == [2, 3, 4, 5]
    assert [(r.success, r.applied_index) for r in out.results] == [(True, 2), (True, 3), (True, 4), (True, 5)]
    assert [r.value for r in out.results] == [None, 5, 7, 1]
    sm = d.state_machine
    assert sm is not None and sm.last_applied == 5
    assert sm.get("k").value is None and sm.get("n").value == b"7"
    # Durable before handed out: the store holds every entry, and the commit index.
    assert d.store.last_index() == 5 and d.store.initial_state()[0].commit_index == 5
    assert raft.commit_index == 5 and not raft.has_ready()
    assert d.cycle() == Cycle() and not d.cycle()  # nothing more


def test_a_batch_entry_gives_a_result_per_command() -> None:
    d = solo()
    d.raft.propose_commands([Command.set("x", b"1").encode(), Command.increment("x").encode(),
                             Command.get("x").encode()])
    out = d.cycle()
    assert [e.type for e in out.committed] == [EntryType.BATCH]
    assert [(r.applied_index, r.value) for r in out.results] == [(2, None), (2, 2), (2, b"2")]


def test_without_a_state_machine_entries_are_handed_out_and_nothing_is_snapshotted() -> None:
    raft = RaftNode("a", config(snapshot_threshold=2), MemoryLogStore(Membership.of(["a"])))
    d = MemoryDriver(raft)
    raft.campaign(pre_vote=False)
    d.cycle()
    for i in range(4):
        raft.propose(b"%d" % i)
    out = d.cycle()
    assert [bytes(e.data) for e in out.committed] == [b"0", b"1", b"2", b"3"] and out.results == []
    assert raft.should_snapshot() and out.snapshots == [] and d.store.first_index() == 1
    with pytest.raises(ValueError, match="nothing to snapshot"):
        d.take_snapshot()


# ---------------------------------------------------------------- snapshots
def test_compacts_when_the_core_asks_and_the_bytes_restore_the_state() -> None:
    d = solo(snapshot_threshold=4)
    raft, sm = d.raft, d.state_machine
    assert sm is not None
    for i in range(2):
        raft.propose(Command.set(f"k{i}", b"v%d" % i))
    out = d.cycle()
    assert sm.last_applied == 3 and out.snapshots == [] and d.store.first_index() == 1  # 3 applied: not yet
    raft.propose(Command.set("k2", b"v2"))
    out = d.cycle()
    [meta] = out.snapshots  # 4 applied since the last snapshot (none): the core asks
    assert meta.index == 4 == sm.last_applied and meta.term == raft.term
    assert d.store.snapshot() == meta == raft.log.snapshot_meta() and d.store.first_index() == 5
    assert not raft.should_snapshot()
    fresh = StateMachine()
    assert fresh.restore_chunks([d.snapshot_data]) == 4
    assert fresh.digest() == sm.digest() and fresh.get("k2").value == b"v2"
    # Not again until another threshold's worth of entries is applied.
    for i in range(3):
        raft.propose(Command.set("k", b"%d" % i))
    assert d.cycle().snapshots == [] and d.store.first_index() == 5
    raft.propose(Command.set("k", b"last"))
    assert [m.index for m in d.cycle().snapshots] == [8] and d.store.first_index() == 9


def test_auto_snapshot_off_snapshots_only_when_told() -> None:
    d = solo(snapshot_threshold=2)
    d.auto_snapshot = False
    for i in range(3):
        d.raft.propose(Command.set("k", b"%d" % i))
    assert d.cycle().snapshots == [] and d.store.first_index() == 1 and d.snapshot_data == b""
    meta = d.take_snapshot()
    assert meta.index == 4 and d.store.first_index() == 5 and d.raft.log.first_index() == 5
    assert StateMachine().restore_chunks([d.snapshot_data]) == 4


def test_a_restarted_node_continues_from_its_store_and_snapshot() -> None:
    d = solo(snapshot_threshold=3)
    for _ in range(2):
        d.raft.propose(Command.increment("n"))
    assert [m.index for m in d.cycle().snapshots] == [3]
    d.raft.propose(Command.increment("n"))
    d.cycle()
    store = d.store
    assert store.snapshot().index == 3 and store.last_index() == 4
    # A new life: a RaftNode over the same store, a state machine from the snapshot bytes.
    sm = StateMachine()
    assert sm.restore_chunks([d.snapshot_data]) == 3 and sm.get("n").value == b"2"
    d.raft, d.state_machine = RaftNode("a", config(seed=9, snapshot_threshold=3), store), sm
    assert d.store is store
    d.raft.campaign(pre_vote=False)
    out = d.cycle()
    assert [int(e.index) for e in out.committed] == [4, 5]  # the entry after the snapshot, the new no-op
    assert [(r.applied_index, r.value) for r in out.results] == [(4, 3)]
    d.raft.propose(Command.increment("n"))
    out = d.cycle()
    assert [(r.applied_index, r.value) for r in out.results] == [(6, 4)]
    assert [m.index for m in out.snapshots] == [6] and sm.last_applied == 6


# ---------------------------------------------------------------- three nodes
def test_three_nodes_elect_commit_and_apply_the_same_entries_in_order() -> None:
    w = Wired()
    w.elect("a")
    idx = w.propose("a", *(Command.increment("n", i) for i in range(1, 6)))
    assert idx == [2, 3, 4, 5, 6]
    for nid in "abc":
        assert [int(e.index) for e in w.committed[nid]] == [1, 2, 3, 4, 5, 6], nid
        assert w[nid].raft.commit_index == 6
        sm = w[nid].state_machine
        assert sm is not None and sm.last_applied == 6 and sm.get("n").value == b"15"
    # Each replica computed the same results (the leader's clients see them).
    assert [r.value for r in w.results["a"]] == [1, 3, 6, 10, 15]
    assert w.results["b"] == w.results["c"] == w.results["a"]
    assert w.committed["b"] == w.committed["a"] == w.committed["c"]


def test_install_snapshot_carries_the_leaders_snapshot_bytes() -> None:
    w = Wired(snapshot_threshold=5)
    w.elect("a")
    w.isolated.add("c")
    w.propose("a", *(Command.set(f"k{i}", b"v%d" % i) for i in range(8)))
    assert w["a"].raft.log.last_applied == 9
    [meta] = w.snapshots["a"]  # once 5 entries were applied
    assert meta.index == 5 and w["a"].store.first_index() == 6 and w["b"].store.snapshot().index == 5
    leader_bytes = w["a"].snapshot_data
    assert leader_bytes and StateMachine().restore_chunks([leader_bytes]) == 5
    assert w["c"].raft.log.last_index() == 1  # c missed everything after the no-op
    w.isolated.clear()
    w.catch_up("a", "c")
    sent = [m for m in w.delivered if isinstance(m, InstallSnapshotRequest)]
    assert [(m.receiver, m.snapshot.index) for m in sent] == [("c", 5)]
    assert sent[0].data == leader_bytes  # the core left it empty; the driver attached the bytes
    c = w["c"]
    assert c.snapshot_data == leader_bytes and c.store.snapshot().index == 5
    assert c.state_machine is not None and c.state_machine.last_applied == 9
    assert c.state_machine.digest() == w["a"].state_machine.digest()  # type: ignore[union-attr]
    # 2..5 came in the snapshot, 6..9 as entries
    assert [int(e.index) for e in w.committed["c"]] == [1, 6, 7, 8, 9]
    w.propose("a", Command.set("after", b"x"))
    assert [int(e.index) for e in w.committed["c"]][-1] == 10 and c.state_machine.get("after").value == b"x"


# ---------------------------------------------------------------- hooks
def test_hooks_run_at_their_points_of_the_cycle() -> None:
    events: list[tuple[object, ...]] = []
    store = MemoryLogStore(Membership.of(["a"]))
    raft = RaftNode("a", config(snapshot_threshold=3), store)
    sm = StateMachine()

    def before_persist(rd: Ready) -> None:
        # nothing of the batch is in the store yet
        if rd.entries:
            assert store.last_index() < rd.entries[-1].index
        if rd.hard_state is not None:
            assert store.initial_state()[0] != rd.hard_state
        events.append(("persist", tuple(int(e.index) for e in rd.entries)))

    def before_apply(e: LogEntry) -> None:
        assert sm.last_applied == e.index - 1  # the state between entries
        assert store.last_index() >= e.index  # persisted before applied
        events.append(("apply", int(e.index)))

    def after_apply(e: LogEntry, results: list[CommandResult]) -> None:
        assert sm.last_applied == e.index
        events.append(("applied", int(e.index), tuple(r.value for r in results)))

    def on_read_state(rs: ReadState) -> None:
        assert raft.has_ready() is False  # its batch is not advanced yet
        events.append(("read", rs.ctx, int(rs.index)))

    def after_ready(rd: Ready) -> None:
        events.append(("ready", store.snapshot().index))

    d = MemoryDriver(raft, sm, before_persist=before_persist, before_apply=before_apply, after_apply=after_apply,
                     on_read_state=on_read_state, after_ready=after_ready)
    raft.campaign(pre_vote=False)
    first = d.cycle()
    # the vote and the no-op, then (the leader counts its own write once persisted) the
    # commit of the no-op
    assert events == [("persist", (1,)), ("ready", 0), ("persist", ()), ("apply", 1), ("applied", 1, ()), ("ready", 0)]
    assert first.readies == 2
    events.clear()
    raft.propose(Command.increment("n", 2))
    raft.propose(Command.increment("n", 3))
    assert raft.read_index(7)  # the read point is the commit index now: 1
    out = d.cycle()
    assert events == [
        ("persist", (2, 3)), ("read", 7, 1), ("ready", 0),
        # each entry applied on its own, the state in between; then the end of the batch,
        # after advance and the snapshot at 3 (threshold 3)
        ("persist", ()), ("apply", 2), ("applied", 2, (2,)), ("apply", 3), ("applied", 3, (5,)), ("ready", 3),
    ]
    assert out.readies == 2 and [m.index for m in out.snapshots] == [3]
    assert [(r.ctx, r.index) for r in out.read_states] == [(7, 1)]
    assert [r.value for r in out.results] == [2, 5] and [int(e.index) for e in out.committed] == [2, 3]


def test_per_entry_hooks_give_the_same_results_as_one_transaction() -> None:
    cmds = [Command.set("a", b"1"), Command.increment("n"), Command.compare_and_swap("a", b"1", b"2"),
            Command.delete("a", "b"), Command.increment("n", 4)]
    got = []
    for hooked in (False, True):
        seen: list[int] = []
        d = solo()
        if hooked:
            d.after_apply = lambda e, results: seen.append(int(e.index))
        for c in cmds:
            d.raft.propose(c)
        got.append([(r.success, r.value, r.version, r.applied_index) for r in d.cycle().results])
        assert seen == ([2, 3, 4, 5, 6] if hooked else [])
    assert got[0] == got[1] and len(got[0]) == 5


def test_on_restored_sees_the_incoming_snapshot_and_its_index() -> None:
    w = Wired(snapshot_threshold=5)
    restored: list[tuple[int, int]] = []

    def on_restored(snap: IncomingSnapshot, index: int) -> None:
        sm = w["c"].state_machine
        assert sm is not None and sm.last_applied == index  # already restored
        restored.append((int(snap.meta.index), index))

    w["c"].on_restored = on_restored
    w.elect("a")
    w.isolated.add("c")
    w.propose("a", *(Command.set("k", b"%d" % i) for i in range(8)))
    w.isolated.clear()
    w.catch_up("a", "c")
    assert restored == [(5, 5)]
    assert w["c"].state_machine.get("k").value == b"7"  # type: ignore[union-attr]


def test_a_hook_that_raises_stops_the_cycle_before_anything_is_persisted() -> None:
    store = MemoryLogStore(Membership.of(["a"]))
    raft = RaftNode("a", config(), store)

    def refuse(rd: Ready) -> None:
        raise RuntimeError("no")

    d = MemoryDriver(raft, StateMachine(), before_persist=refuse)
    raft.campaign(pre_vote=False)
    with pytest.raises(RuntimeError):
        d.cycle()
    assert store.initial_state()[0].term == 0 and store.last_index() == 0


# ---------------------------------------------------------------- the pure core
def test_the_driver_imports_only_the_pure_core() -> None:
    """Like raft.py, log.py and state.py: no trio, lmdb, socket or clock."""
    tree = ast.parse(Path(__file__).resolve().parents[2].joinpath("aegis", "memdriver.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "dataclasses", "typing", ".log", ".messages", ".raft", ".state"}, imported


def test_importing_the_driver_loads_no_trio_or_lmdb() -> None:
    import subprocess
    import sys

    code = "import sys, aegis.memdriver; print(sorted(m for m in ('trio', 'lmdb') if m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_docstring_example_runs() -> None:
    import doctest

    import aegis.memdriver

    failures, tried = doctest.testmod(aegis.memdriver)
    assert tried > 0 and failures == 0
