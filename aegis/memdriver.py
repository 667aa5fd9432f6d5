"""MemoryDriver: the one reference in-memory driver of the Raft core's Ready cycle.

Theory of operation
-------------------
`RaftNode` does no I/O: it hands its work out in `Ready` batches, and a driver must, for
each batch, in this order (DESIGN.md §2; dissertation §3.4 for why persist comes first):

1. persist: ``rd.persist_to(store)`` — an incoming snapshot (which replaces the log), the
   truncation, the entries, the hard state, the membership — before any message of the
   same batch leaves; an incoming snapshot's bytes become the driver's snapshot bytes and
   are restored into the state machine (checked to cover the snapshot's index; a snapshot
   that arrives without bytes restores nothing, as the seed engine always did);
2. send: hand out the batch's messages (an `InstallSnapshotRequest` the core leaves without
   data gets the driver's latest snapshot bytes attached);
3. apply: feed the committed entries, in log order, to the state machine;
4. read states: hand out the reads that are now safe to serve;
5. ``raft.advance(rd)``; then, if the core asks for one (`should_snapshot`) and the driver
   snapshots automatically, snapshot the state machine at its applied index and compact
   the store (`snapshot_meta_for`, `store.compact`, `raft.compacted`);

and repeat until `has_ready()` is false. `cycle()` does exactly that, synchronously,
against the store the `RaftNode` reads (``raft.log.store``: a `MemoryLogStore` in the tests
and the simulator, whatever the caller passed to the seed's `ReplicationEngine`), and
returns what it produced as a `Cycle`. No field of `Ready` is ignored.

This is the driver of the seed's `ReplicationEngine`, of the deterministic simulator
(tests/sim), of the paper tests' network (tests/unit/raft_net.py) and of the paper tests
themselves. The trio node (aegis/server.py) runs the same cycle with real I/O (one LMDB
transaction per batch, fsync off the event loop) and is not this class.

Hooks
-----
Callers that must look at the cycle while it runs (the simulator's invariant checks, the
engine's role-change log) pass callbacks; each is optional and called at one fixed point:

* ``before_persist(rd)``: each batch, before anything of it is persisted (the simulator
  checks that the hard state's commit index does not go backwards);
* ``on_restored(snapshot, index)``: after an incoming snapshot was restored into the state
  machine (`index` is the applied index the restore reported), before the batch's
  messages are handed out;
* ``before_apply(entry)`` / ``after_apply(entry, results)``: around each committed entry.
  With either set, every entry is applied in its own state-machine transaction, so the
  hooks see the state between entries; without them, a batch's entries are applied in one
  transaction (`StateMachine.apply_entries`). The results are the same either way;
* ``on_read_state(read_state)``: each read state, in order, before `advance`;
* ``after_ready(rd)``: each batch, after ``advance(rd)`` and the snapshot it may have led
  to (the engine notes role changes; the simulator serves waiting reads).

A hook that raises stops the cycle where it is (the batch is not advanced): the simulator
uses that to report a violation.

Ownership: `raft`, `state_machine` and `snapshot_data` are plain attributes. A caller that
"restarts" a node (a new `RaftNode` over the same store, a fresh state machine restored from
the snapshot bytes) rebinds them; the store is always ``raft.log.store``.

This module never imports trio, lmdb, socket or time: it is part of the pure core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .log import LogEntry, LogIndex, LogStore, SnapshotMeta
from .messages import InstallSnapshotRequest, RaftMessage
from .raft import IncomingSnapshot, RaftNode, ReadState, Ready
from .state import CommandResult, StateMachine

__all__ = ["Cycle", "MemoryDriver"]


@dataclass(slots=True)
class Cycle:
    """What one `MemoryDriver.cycle()` produced, in the order it was produced.

    `messages`: to be sent (every one is safe to send: its batch was persisted before it was
    handed out), InstallSnapshot data filled in. `committed`: the committed entries the core
    handed out, in log order (applied to the state machine, when the driver has one).
    `results`: the `CommandResult`s of those entries' commands, in log order (one per
    COMMAND entry, one per command of a BATCH, none for NO_OP and CONFIG_CHANGE entries or
    entries the state machine had already applied). `read_states`: reads now safe to serve
    once the state machine has applied their index. `snapshots`: the snapshots the driver
    took (and compacted the store to). `readies`: how many `Ready` batches it processed.
    """

    messages: list[RaftMessage] = field(default_factory=list)
    committed: list[LogEntry] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    snapshots: list[SnapshotMeta] = field(default_factory=list)
    readies: int = 0

    def __bool__(self) -> bool:
        return self.readies > 0


class MemoryDriver:
    """Runs a `RaftNode`'s Ready cycle in memory, synchronously (see the module docstring).

    >>> from aegis.log import Membership, MemoryLogStore
    >>> from aegis.raft import RaftConfig
    >>> from aegis.state import Command
    >>> raft = RaftNode("n1", RaftConfig(seed=1), MemoryLogStore(Membership.of(["n1"])))
    >>> driver = MemoryDriver(raft, StateMachine())
    >>> _ = raft.campaign(pre_vote=False)
    >>> _ = driver.cycle()
    >>> raft.propose(Command.set("k", b"v"))
    2
    >>> [(r.success, r.applied_index) for r in driver.cycle().results]
    [(True, 2)]
    >>> driver.state_machine.get("k").value
    b'v'

    `state_machine`: where committed entries are applied (None: the driver hands them out
    in `Cycle.committed` and applies nothing; such a driver never snapshots).
    `snapshot_data`: the bytes of the snapshot the store is compacted to, if any (a
    restarted node passes what its previous life left). `auto_snapshot`: snapshot and
    compact whenever the core says `should_snapshot()` (the engine's and the simulator's
    policy); with False, only `take_snapshot()` does (the paper tests' network).
    """

    def __init__(
        self,
        raft: RaftNode,
        state_machine: StateMachine | None = None,
        *,
        snapshot_data: bytes = b"",
        auto_snapshot: bool = True,
        before_persist: Callable[[Ready], None] | None = None,
        on_restored: Callable[[IncomingSnapshot, int], None] | None = None,
        before_apply: Callable[[LogEntry], None] | None = None,
        after_apply: Callable[[LogEntry, list[CommandResult]], None] | None = None,
        on_read_state: Callable[[ReadState], None] | None = None,
        after_ready: Callable[[Ready], None] | None = None,
    ) -> None:
        if not isinstance(raft, RaftNode):
            raise TypeError(f"raft must be a RaftNode, got {type(raft).__name__}")
        self.raft = raft
        self.state_machine = state_machine
        self.snapshot_data = snapshot_data
        self.auto_snapshot = auto_snapshot
        self.before_persist = before_persist
        self.on_restored = on_restored
        self.before_apply = before_apply
        self.after_apply = after_apply
        self.on_read_state = on_read_state
        self.after_ready = after_ready

    @property
    def store(self) -> LogStore:
        """The store the core reads and the driver persists into."""
        return self.raft.log.store

    # ------------------------------------------------------------------ the cycle
    def cycle(self) -> Cycle:
        """Run the Ready cycle until the core has nothing ready; return what it produced."""
        out = Cycle()
        raft = self.raft
        while raft.has_ready():
            rd = raft.ready()
            out.readies += 1
            self._persist(rd)
            self._send(rd, out)
            self._apply(rd, out)
            self._read_states(rd, out)
            raft.advance(rd)
            if self.auto_snapshot and self.state_machine is not None and raft.should_snapshot():
                out.snapshots.append(self.take_snapshot())
            if self.after_ready is not None:
                self.after_ready(rd)
        return out

    def _persist(self, rd: Ready) -> None:
        if self.before_persist is not None:
            self.before_persist(rd)
        rd.persist_to(self.store)
        snap = rd.snapshot
        if snap is None:
            return
        self.snapshot_data = snap.data
        sm = self.state_machine
        # A snapshot without bytes has nothing to restore (the seed engine's behaviour: a
        # leader restarted from a compacted store without its snapshot bytes sends none).
        if sm is not None and snap.data:
            index = sm.restore_chunks([snap.data], expect_index=snap.meta.index)
            if self.on_restored is not None:
                self.on_restored(snap, index)

    def _send(self, rd: Ready, out: Cycle) -> None:
        for m in rd.messages:
            if isinstance(m, InstallSnapshotRequest) and not m.data:
                m = InstallSnapshotRequest(
                    term=m.term, leader_id=m.leader_id, snapshot=m.snapshot,
                    data=self.snapshot_data, receiver=m.receiver,
                )
            out.messages.append(m)

    def _apply(self, rd: Ready, out: Cycle) -> None:
        entries = rd.committed_entries
        if not entries:
            return
        out.committed.extend(entries)
        sm = self.state_machine
        before, after = self.before_apply, self.after_apply
        if before is None and after is None:
            if sm is not None:
                for rs in sm.apply_entries(entries):
                    out.results.extend(rs)
            return
        for e in entries:
            if before is not None:
                before(e)
            results = sm.apply_entries([e])[0] if sm is not None else []
            out.results.extend(results)
            if after is not None:
                after(e, results)

    def _read_states(self, rd: Ready, out: Cycle) -> None:
        out.read_states.extend(rd.read_states)
        if self.on_read_state is not None:
            for rs in rd.read_states:
                self.on_read_state(rs)

    # ------------------------------------------------------------------ snapshots
    def take_snapshot(self) -> SnapshotMeta:
        """Snapshot the state machine at its applied index, compact the store to it, tell
        the core (`compacted`), and keep the bytes for InstallSnapshot. Returns the meta."""
        sm = self.state_machine
        if sm is None:
            raise ValueError("a driver without a state machine has nothing to snapshot")
        raft = self.raft
        meta = raft.snapshot_meta_for(LogIndex(sm.last_applied))
        data = b"".join(sm.snapshot_chunks())
        self.store.compact(meta)
        self.snapshot_data = data
        raft.compacted(meta)
        return meta

    def __repr__(self) -> str:
        return f"MemoryDriver({self.raft!r}, snapshot_bytes={len(self.snapshot_data)})"
