"""The Raft driver: the one task that owns the Raft core, the state machine and the store's
write side, and the waiters through which everything else hears back from it.

Theory of operation
-------------------
Nothing needs a lock: only `RaftDriver.run`'s loop touches the `RaftNode`, the
`StateMachine` and the log's write side. Other tasks talk to it through a bounded memory
channel of typed events (`Tick`, `PeerMessage`, `ReadPoint`, ...; `submit`), and client
reads and writes through one shared list (`client_op`: one wake-up per turn, however many
connections). The loop drains whatever is queued, proposes all waiting writes as one
batch, then runs the Ready cycle (DESIGN.md §2):

1. a leader whose term and vote did not change sends its AppendEntries first, so its own
   fsync runs in parallel with the followers' [dissertation §10.2.1];
2. it persists the Ready (snapshot install, truncation, entries, hard state, membership) in
   ONE LMDB transaction, in a worker thread unless it is small — term and vote are durable
   before any message that depends on them leaves (step 3);
3. it sends the remaining messages, applies committed entries, answers waiting clients,
   and calls `advance`.

While step 2 runs the loop is blocked, so new proposals pile up and become the next batch:
one fsync per batch, however many clients (group commit).

A `Waiter` is a one-shot result slot the loop resolves and a connection task awaits
(`wait`, with --request-timeout; `read_point` for linearizable reads). The driver reaches
the rest of the node only through the three hooks it is built with: sending Raft messages,
a membership or leader change, and a peer link that went down.

The applied state is written in the background (`_maybe_flush_state`), and the log is
compacted up to what that state durably holds (`_start_snapshot`): the state database is
the snapshot, so there is no periodic serialisation.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import trio

from . import failpoints, worker
from .log import EntryType, HardState, LogIndex, SnapshotMeta
from .logs import event
from .messages import ConfigChange, InstallSnapshotRequest, RaftMessage, VoteResponse
from .raft import ConfigChangeError, ImpossibleTermError, NotLeaderError, ProposalDroppedError, RaftNode, Ready, Role
from .space import frees_space
from .state import StateMachine

if TYPE_CHECKING:
    from .config import ServerConfig
    from .feed import ChangeFeed
    from .metrics import NodeMetrics
    from .space import SpaceGuard
    from .zdict import ZDict

log = logging.getLogger("aegis.server")
events = logging.getLogger("aegis.events")

TRIM_AFTER_KEYS = 10_000  # a state flush this big (a bulk load) hands its freed memory back


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Waiter:
    """A one-shot result slot resolved by the Raft loop, awaited by a connection task."""

    __slots__ = ("event", "value", "error", "ctx", "resend", "timed_out", "__weakref__")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: str | None = None
        self.timed_out = False  # woken by `RaftDriver._expire_waits`, not by a result
        self.ctx = 0  # a read's ReadIndex context (or a forwarded batch's id)
        self.resend: list[bytes] | None = None  # a forwarded SESSION CALL: safe to forward again

    def set(self, value: Any) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()

    def fail(self, error: str) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


# ---------------------------------------------------------------------- inbox events
@dataclass(slots=True, frozen=True)
class Tick:
    """A clock tick (election and heartbeat timers); also a nudge to look around."""


@dataclass(slots=True, frozen=True)
class Wake:
    """Client operations are waiting in the driver's shared list."""


TICK = Tick()
WAKE = Wake()


@dataclass(slots=True, frozen=True)
class PeerMessage:
    msg: RaftMessage


@dataclass(slots=True, frozen=True)
class ReadPoint:
    """A linearizable read point (ReadIndex) for one waiter outside the client list."""

    waiter: Waiter


@dataclass(slots=True, frozen=True)
class Reconfigure:
    change: ConfigChange
    waiter: Waiter


@dataclass(slots=True, frozen=True)
class DictionaryEntry:
    """A DICTIONARY entry to propose (aegis.zdict); the waiter gets its index."""

    payload: bytes
    waiter: Waiter


@dataclass(slots=True, frozen=True)
class Transfer:
    """Hand leadership to `node_id`."""

    node_id: str
    waiter: Waiter


@dataclass(slots=True, frozen=True)
class PeerLost:
    """The link to `pid` dropped (`unreachable`: our sends to it failed, tell the core)."""

    pid: str
    unreachable: bool


@dataclass(slots=True, frozen=True)
class SnapshotSent:
    pid: str
    ok: bool


@dataclass(slots=True, frozen=True)
class CompactionDone:
    meta: SnapshotMeta
    ok: bool


@dataclass(slots=True, frozen=True)
class FlushState:
    """Write the applied state now; the waiter hears when it is on disk."""

    waiter: Waiter


@dataclass(slots=True, frozen=True)
class SnapshotReceived:
    """A verified snapshot file from the leader, with the request it answers."""

    msg: InstallSnapshotRequest
    path: Path


Event = Union[Tick, Wake, PeerMessage, ReadPoint, Reconfigure, DictionaryEntry, Transfer, PeerLost,
              SnapshotSent, CompactionDone, FlushState, SnapshotReceived]


class RaftDriver:
    """Drives one `RaftNode` over an LMDB store; see the module docstring."""

    def __init__(self, cfg: ServerConfig, raft: RaftNode, sm: StateMachine, store: Any, kv: Any,
                 feed: ChangeFeed, zdict: ZDict, space: SpaceGuard, metrics: NodeMetrics,
                 stats: dict[str, int], *,
                 send_messages: Callable[[tuple[RaftMessage, ...]], None],
                 changed: Callable[[Ready], None],
                 link_lost: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.raft = raft
        self.sm = sm
        self.store = store
        self.kv = kv
        self.feed = feed
        self.zdict = zdict
        self.space = space
        self.metrics = metrics
        self.stats = stats
        self._send_messages = send_messages
        self._changed = changed
        self._link_lost = link_lost
        self._inbox_send, self._inbox = trio.open_memory_channel[Event](cfg.inbox_depth)
        self._client_ops: list[tuple[bytes | None, Waiter]] = []  # see client_op
        self._pending: dict[int, tuple[int, list[Waiter]]] = {}  # log index -> (term, its commands' waiters)
        self._unsynced_hs: HardState | None = None  # a commit-only hard state not yet written
        self._reads: dict[int, list[Waiter]] = {}  # read ctx -> the reads waiting for that read point
        self._read_ctx = itertools.count(1)
        self._deadlines: collections.deque[tuple[float, weakref.ref[Waiter]]] = collections.deque()  # see wait
        self._apply_waiters: list[tuple[int, Waiter]] = []
        self._last_flush = time.monotonic()
        self._flush_waiters: list[Waiter] = []
        self._flush_done_event = trio.Event()
        self._since_compaction = 0  # commands applied since the last compaction began
        self._snapshotting = False
        self._incoming_snapshot: Path | None = None
        self._leader_event = trio.Event()  # set (and replaced) whenever the known leader changes
        self.log_time = 0.0  # on a leader: the latest timestamp in its log when it took over
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[type, Callable[[Any, list[tuple[bytes, Waiter]]], None]] = {
            Tick: self._on_tick, Wake: self._on_wake, PeerMessage: self._on_message,
            ReadPoint: self._on_read_point, Reconfigure: self._on_reconfigure,
            DictionaryEntry: self._on_dictionary_entry, Transfer: self._on_transfer, PeerLost: self._on_peer_lost,
            SnapshotSent: self._on_snapshot_sent, CompactionDone: self._on_compaction_done,
            FlushState: self._on_flush_state, SnapshotReceived: self._on_snapshot_received,
        }

    # ------------------------------------------------------------------ the interface
    def start(self, nursery: trio.Nursery) -> None:
        """Run the loop, the ticker and the request-timeout sweep in `nursery`."""
        self._nursery = nursery
        nursery.start_soon(self._ticker)
        nursery.start_soon(self._loop)
        nursery.start_soon(self._expire_waits)

    def submit(self, ev: Event) -> bool:
        """Hand an event to the Raft task; False when its inbox is full (the node is
        overloaded). Peer messages and ticks may be dropped: Raft tolerates loss."""
        try:
            self._inbox_send.send_nowait(ev)
            return True
        except trio.WouldBlock:
            return False

    def client_op(self, payload: bytes | None, w: Waiter) -> bool:
        """Queue a client's write (its encoded command) or read (None) for the Raft task:
        one list shared by every connection, one wake-up per turn, not an event per command.
        False when the node is overloaded."""
        if len(self._client_ops) >= self.cfg.inbox_depth:
            return False
        if not self._client_ops:  # the first since the loop drained the list: wake it
            self.submit(WAKE)  # if the inbox is full the loop is busy and drains anyway
        self._client_ops.append((payload, w))
        return True

    async def wait(self, w: Waiter) -> bool:
        """Wait for `w` for --request-timeout at most; False if the time ran out.

        Without a cancel scope per wait: those cost the leader about a tenth of its CPU with
        64 clients writing one command at a time. The deadline goes into one queue, in the
        order the waits began (the timeout is the same for all), and `_expire_waits` wakes
        those past it. The queue holds weak references: a wait that got its result does not
        keep its waiter alive until the deadline."""
        if w.event.is_set():  # common in a pipeline: the whole batch committed together
            return not w.timed_out
        self._deadlines.append((trio.current_time() + self.cfg.request_timeout, weakref.ref(w)))
        await w.event.wait()
        return not w.timed_out

    async def read_point(self, w: Waiter) -> str | None:
        """Wait until a linearizable read may be served (its ReadIndex confirmed and applied
        here): the error (without its dash) if it may not, None when it may."""
        if not await self.wait(w):
            self.forget_read(w)
            return "TIMEOUT no quorum confirmed the read in time"
        if w.error is not None:
            return w.error
        if not await self.wait_applied(int(w.value)):
            return "TIMEOUT this node did not catch up in time"
        return None

    async def wait_applied(self, index: int) -> bool:
        if self.sm.last_applied >= index:
            return True
        w = Waiter()
        self._apply_waiters.append((index, w))
        return await self.wait(w)

    def forget_read(self, w: Waiter) -> None:
        """A read that gave up waiting for its read point (the others of its batch wait on)."""
        ws = self._reads.get(w.ctx)
        if ws is not None and w in ws:
            ws.remove(w)
            if not ws:
                del self._reads[w.ctx]

    async def leader_changed(self, timeout: float) -> None:
        """Return when the known leader changes (or becomes known), or after `timeout`."""
        with trio.move_on_after(timeout):
            await self._leader_event.wait()

    def entry_time(self) -> float:
        """The timestamp a new entry carries: the leader's clock, never behind the latest
        applied entry (so the log's time only moves forward, across leader changes too)."""
        return max(time.time(), self.sm.clock / 1000, self.log_time)

    def disk_error(self, what: str, exc: BaseException) -> None:
        event(events, "disk_error", f"{what} failed: {exc}; the node stops", node=self.id, term=self.raft.term,
              level=logging.ERROR, what=what, error=str(exc))

    async def export_state(self, path: Path) -> tuple[Any, int]:
        """Write the stored state, one consistent read, as a snapshot file; returns its
        `SnapshotInfo` and the number of keys. The read begins here, on the Raft thread,
        so its index can be named with its term and membership."""
        from storage import write_snapshot_file

        from .state import stream_snapshot

        export = self.kv.open_export()
        try:
            meta = self.raft.snapshot_meta_for(LogIndex(export.index))
            chunks = stream_snapshot(export.records(), export.index, export.count, sessions=export.sessions())
            dicts = self.store.dictionaries(export.index)  # a node installed from it needs them
            info = await trio.to_thread.run_sync(
                functools.partial(write_snapshot_file, path, meta, chunks, dictionaries=dicts))
            return info, export.count
        finally:
            export.close()

    # ------------------------------------------------------------------ the loop
    async def _ticker(self) -> None:
        interval = self.cfg.tick_ms / 1000
        while True:
            await trio.sleep(interval)
            self.submit(TICK)

    async def _loop(self) -> None:
        raft = self.raft
        handlers = self._handlers
        notice_after = self.cfg.commit_notice_ms / 1000
        while True:
            if raft.commit_notices_due:
                first = None
                with trio.move_on_after(notice_after):
                    first = await self._inbox.receive()
                if first is None:  # no new entries came along to carry the commit index
                    raft.send_commit_notices()
                    while raft.has_ready():
                        await self._process_ready(raft.ready())
                    continue
            else:
                first = await self._inbox.receive()
            proposals: list[tuple[bytes, Waiter]] = []
            handlers[type(first)](first, proposals)
            for _ in range(self.cfg.max_batch):
                try:
                    ev = self._inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                handlers[type(ev)](ev, proposals)
            if self._client_ops:
                ops, self._client_ops = self._client_ops, []
                reads = []
                for payload, w in ops:
                    if payload is None:
                        reads.append(w)
                    else:
                        proposals.append((payload, w))
                if reads:
                    self._start_reads(reads)
            if proposals:
                self._propose(proposals)
            while raft.has_ready():
                await self._process_ready(raft.ready())
            self._maybe_flush_state()
            if self._should_compact() and not self._snapshotting:
                self._start_snapshot()

    # ------------------------------------------------------------------ inbox events
    def _on_tick(self, ev: Tick, proposals: list[tuple[bytes, Waiter]]) -> None:
        self.raft.tick()

    def _on_wake(self, ev: Wake, proposals: list[tuple[bytes, Waiter]]) -> None:
        pass  # client operations are waiting in _client_ops: the loop takes them after the inbox

    def _on_message(self, ev: PeerMessage, proposals: list[tuple[bytes, Waiter]]) -> None:
        try:
            self.raft.step(ev.msg)
        except ImpossibleTermError as exc:
            log.warning("%s (a forged or broken peer; nothing changed)", exc)
        except Exception:
            log.exception("step failed on %r", ev.msg)
            raise

    def _on_read_point(self, ev: ReadPoint, proposals: list[tuple[bytes, Waiter]]) -> None:
        self._start_reads([ev.waiter])

    def _on_reconfigure(self, ev: Reconfigure, proposals: list[tuple[bytes, Waiter]]) -> None:
        raft = self.raft
        try:
            idx = raft.propose_config_change(ev.change, timestamp=time.time())
        except NotLeaderError as exc:
            ev.waiter.fail(f"NOLEADER {exc}")
        except (ConfigChangeError, ProposalDroppedError) as exc:
            ev.waiter.fail(f"ERR {exc}")
        else:
            self._pending[idx] = (raft.term, [ev.waiter])

    def _on_dictionary_entry(self, ev: DictionaryEntry, proposals: list[tuple[bytes, Waiter]]) -> None:
        try:
            ev.waiter.set(self.raft.propose_entry(EntryType.DICTIONARY, ev.payload, timestamp=self.entry_time()))
        except (NotLeaderError, ProposalDroppedError) as exc:
            ev.waiter.fail(f"NOLEADER {exc}")

    def _on_transfer(self, ev: Transfer, proposals: list[tuple[bytes, Waiter]]) -> None:
        try:
            self.raft.transfer_leadership(ev.node_id)
            ev.waiter.set(None)
        except NotLeaderError as exc:
            ev.waiter.fail(f"NOLEADER {exc}")
        except ConfigChangeError as exc:
            ev.waiter.fail(f"ERR {exc}")

    def _on_peer_lost(self, ev: PeerLost, proposals: list[tuple[bytes, Waiter]]) -> None:
        raft = self.raft
        if ev.unreachable:
            raft.report_unreachable(ev.pid)
        if ev.pid == raft.leader_id:
            raft.retry_reads()  # a read point asked for (or its answer) may be lost with the link
        self._link_lost(ev.pid)

    def _on_snapshot_sent(self, ev: SnapshotSent, proposals: list[tuple[bytes, Waiter]]) -> None:
        self.raft.report_snapshot(ev.pid, ev.ok)

    def _on_compaction_done(self, ev: CompactionDone, proposals: list[tuple[bytes, Waiter]]) -> None:
        self._snapshotting = False
        if not ev.ok:
            return
        meta = ev.meta
        self.raft.compacted(meta)
        self.stats["snapshots_taken"] += 1
        seconds = time.perf_counter() - self.metrics.snapshot_started
        self.metrics.snapshots["taken"].observe(seconds)
        size = self.metrics.state_disk_bytes(self.cfg.data_dir)
        self.metrics.snapshot_bytes["taken"] = size
        event(events, "snapshot_taken", f"{self.id} compacted its log up to a snapshot at index {meta.index} "
              f"(state {size} bytes on disk)", node=self.id, term=self.raft.term, index=int(meta.index),
              bytes=size, seconds=round(seconds, 3))

    def _on_flush_state(self, ev: FlushState, proposals: list[tuple[bytes, Waiter]]) -> None:
        self._flush_waiters.append(ev.waiter)

    def _on_snapshot_received(self, ev: SnapshotReceived, proposals: list[tuple[bytes, Waiter]]) -> None:
        previous, self._incoming_snapshot = self._incoming_snapshot, ev.path
        if previous is not None and previous != ev.path:
            previous.unlink(missing_ok=True)  # received, never installed: superseded
        try:
            self.raft.step(ev.msg)
        except ImpossibleTermError as exc:
            log.warning("%s (a forged or broken peer; nothing changed)", exc)

    # ------------------------------------------------------------------ reads and writes
    def _start_reads(self, ws: list[Waiter]) -> None:
        """One read point for all the reads that reached the Raft task in one turn: each of
        them arrived before it was asked for, so the commit index it confirms covers every
        write acknowledged before any of them began (the core's ReadIndex, paid once)."""
        ctx = next(self._read_ctx)
        for w in ws:
            w.ctx = ctx
        if self.raft.read_index(ctx):
            self._reads[ctx] = ws
        else:
            for w in ws:
                w.fail("NOLEADER no leader is known; try again shortly")

    def _propose(self, proposals: list[tuple[bytes, Waiter]]) -> None:
        """The writes that reached the Raft task in one turn become as few log entries as
        the size limit allows: Raft, LMDB and the wire pay once per batch."""
        raft = self.raft
        limit = self.cfg.max_entry_bytes
        why = self.space.refusal([p for p, _ in proposals])
        if why is not None:  # nothing of a refused write reaches the log: a definite failure
            keep = []
            for p, w in proposals:
                if frees_space(p):
                    keep.append((p, w))
                else:
                    w.fail(why)
            proposals = keep
        start = 0
        n = len(proposals)
        self.metrics.proposals += n
        self.metrics.batch_commands.observe(n)
        while start < n:
            end, size = start, 0
            while end < n and (end == start or size + len(proposals[end][0]) <= limit):
                size += len(proposals[end][0])
                end += 1
            chunk = proposals[start:end]
            try:
                idx = raft.propose_commands([p for p, _ in chunk], timestamp=self.entry_time())
            except NotLeaderError as exc:
                for _, w in proposals[start:]:
                    w.fail(f"TRYAGAIN leadership changed before the write was proposed ({exc}); nothing was written")
                return
            except ProposalDroppedError as exc:
                for _, w in proposals[start:]:
                    w.fail(f"TRYAGAIN {exc}; nothing was written")
                return
            self._pending[idx] = (raft.term, [w for _, w in chunk])
            start = end

    # ------------------------------------------------------------------ the Ready cycle
    async def _process_ready(self, rd: Ready) -> None:
        raft = self.raft
        if rd.send_before_persist:
            self._send_messages(rd.messages)
        if rd.must_sync() or rd.membership is not None:
            hs = rd.hard_state if rd.hard_state is not None else self._unsynced_hs
            self._unsynced_hs = None
            if rd.snapshot is not None:
                await self._state_flush_idle()  # an install replaces the state: no flush may race it
            try:
                if self._persist_inline(rd):
                    took, installed = self._persist(rd, hs)
                else:
                    took, installed = await worker.run_sync(self._persist, rd, hs)
            except Exception as exc:
                self.disk_error("writing the log", exc)
                raise
            if took is not None:
                self.metrics.fsync["log"].observe(took)
            if installed is not None:
                self._snapshot_installed(rd, *installed)
            if rd.snapshot is not None:
                self.sm.reset(int(rd.snapshot.meta.index))
                self.zdict.installed(int(rd.snapshot.meta.index))
                self.feed.reset(int(rd.snapshot.meta.index))
                self._fail_covered_by_snapshot(int(rd.snapshot.meta.index))
        elif rd.hard_state is not None:
            # Only the commit index moved: it can be relearned from the leader, so it waits
            # for the next write instead of costing an fsync of its own.
            self._unsynced_hs = rd.hard_state
        if failpoints.enabled() and any(isinstance(m, VoteResponse) and m.vote_granted and not m.pre_vote
                                        for m in rd.messages):
            failpoints.hit("vote-after-persist")  # the granted vote is durable (just now, or before), unsent
        if not rd.send_before_persist:
            self._send_messages(rd.messages)
        if rd.entries:
            self.stats["entries_persisted"] += len(rd.entries)
            self.stats["batches"] += 1
            self.metrics.batch_entries.observe(len(rd.entries))
        self._apply(rd)
        for rs in rd.read_states:
            for w in self._reads.pop(rs.ctx, ()):
                w.set(rs.index)
        raft.advance(rd)
        if rd.soft_state is not None:
            if rd.soft_state.role == Role.LEADER:
                self.log_time = self._latest_log_time()
            self._leader_event.set()
            self._leader_event = trio.Event()
        if rd.soft_state is not None or rd.membership is not None:
            self._changed(rd)
        if self._should_compact() and not self._snapshotting:
            self._start_snapshot()

    def _persist_inline(self, rd: Ready) -> bool:
        """Whether this Ready's log write is small enough to do on the trio thread."""
        limit = self.cfg.inline_persist_bytes
        if limit <= 0 or rd.snapshot is not None or self.store.write_locked():
            return False
        if rd.send_before_persist and rd.messages:
            return False  # a leader's AppendEntries go out while it syncs: its senders must run
        size = 0
        for e in rd.entries:
            size += len(e.data)
            if size > limit:
                return False
        return True

    def _persist(self, rd: Ready, hard_state: HardState | None
                 ) -> tuple[float | None, tuple[int, int, float] | None]:
        """Runs in a worker thread: everything of one Ready in one durable transaction
        (store I/O only: nothing here touches trio objects or the state machine). Returns
        the seconds the durable write took (None: nothing written) and, after a snapshot
        install, its keys, bytes and seconds."""
        installed = self._install_snapshot(rd) if rd.snapshot is not None else None
        if rd.truncate_from is not None or rd.entries or hard_state is not None or rd.membership is not None:
            t0 = time.perf_counter()
            self.store.write_batch(
                truncate_from=rd.truncate_from,
                entries=rd.entries,
                hard_state=hard_state,
                membership=rd.membership,
            )
            return time.perf_counter() - t0, installed
        return None, installed

    def _install_snapshot(self, rd: Ready) -> tuple[int, int, float]:
        """(In the worker thread.) Returns the keys, the file's bytes and the seconds taken."""
        assert rd.snapshot is not None
        path = self._incoming_snapshot
        if path is None:
            raise RuntimeError("a snapshot was accepted but no snapshot file was received")
        meta = rd.snapshot.meta
        t0 = time.perf_counter()
        size = path.stat().st_size
        keys: int = self.store.install_state_file(path, meta, membership=meta.membership)
        self._incoming_snapshot = None
        try:
            path.unlink()
        except OSError:
            pass
        return keys, size, time.perf_counter() - t0

    def _snapshot_installed(self, rd: Ready, keys: int, size: int, seconds: float) -> None:
        assert rd.snapshot is not None
        index = int(rd.snapshot.meta.index)
        self.stats["snapshots_installed"] += 1
        self.metrics.snapshots["installed"].observe(seconds)
        self.metrics.snapshot_bytes["installed"] = size
        event(events, "snapshot_installed", f"{self.id} installed a snapshot at index {index} ({keys} keys, "
              f"{size} bytes, {seconds:.2f} s)", node=self.id, term=self.raft.term, index=index, keys=keys,
              bytes=size, seconds=round(seconds, 3))

    def _fail_covered_by_snapshot(self, index: int) -> None:
        """Proposals a snapshot install covered: their outcome is unknown to this node. (On
        the trio thread: a waiter is a trio.Event.)"""
        for idx in [i for i in self._pending if i <= index]:
            for w in self._pending.pop(idx)[1]:
                w.fail("TIMEOUT the outcome is unknown (this node installed a snapshot); check before retrying")

    def _apply(self, rd: Ready) -> None:
        entries = rd.committed_entries
        if not entries:
            return
        pending = self._pending
        t0 = time.perf_counter()
        all_results = self.sm.apply_entries(entries)
        self.metrics.apply.observe(time.perf_counter() - t0)
        self.metrics.applied_entries += len(entries)
        self.zdict.applied(entries)
        changes = self.sm.changes
        if changes is not None:
            self.sm.changes = []
            self.feed.publish(changes, self.sm.last_applied)
        self._since_compaction += sum(len(r) for r in all_results)
        if pending:
            for e, results in zip(entries, all_results):
                p = pending.pop(e.index, None)
                if p is None:
                    continue
                term, waiters = p
                if term != e.term:
                    for w in waiters:
                        w.fail("TRYAGAIN the write was lost to a leader change; nothing was written")
                elif e.type == EntryType.CONFIG_CHANGE:
                    for w in waiters:
                        w.set(None)
                else:
                    for w, r in zip(waiters, results):
                        w.set(r)
                    for w in waiters[len(results):]:
                        w.fail("ERR the command's log entry could not be applied")
        if self._apply_waiters:
            applied = self.sm.last_applied
            keep = []
            for idx, w in self._apply_waiters:
                if idx <= applied:
                    w.set(None)
                else:
                    keep.append((idx, w))
            self._apply_waiters = keep

    def _latest_log_time(self) -> float:
        """The latest entry time in the log, applied or not: a new leader stamps nothing
        earlier, so the log's time never goes backwards across leaders (a predecessor's
        entries it has not applied yet may carry a later clock than its own)."""
        log_ = self.raft.log
        lo = max(int(log_.first_index()), self.sm.last_applied + 1)
        hi = int(log_.last_index())
        if lo > hi:
            return 0.0
        try:
            return max((e.timestamp for e in log_.slice(LogIndex(lo), LogIndex(hi + 1))), default=0.0)
        except Exception:  # noqa: BLE001 - a compacted range: the applied clock covers it
            log.exception("reading the log's latest entry times")
            return 0.0

    async def _expire_waits(self) -> None:
        """Wake the waits past their deadline, a few times a second (so a -TIMEOUT comes at
        most this much after --request-timeout)."""
        interval = min(0.05, self.cfg.request_timeout / 10)
        queue = self._deadlines
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            while queue and queue[0][0] <= now:
                w = queue.popleft()[1]()
                if w is not None and not w.event.is_set():
                    w.timed_out = True
                    w.event.set()

    # ------------------------------------------------------------------ state and compaction
    def _maybe_flush_state(self) -> None:
        """Write the applied state in the background (its own LMDB environment, its own
        fsync) when enough has piled up, after a while, or when a backup needs it."""
        kv = self.kv
        if kv.flushing or self._nursery is None:
            return
        due = kv.overlay_keys() >= self.cfg.state_flush_keys or self._flush_waiters or (
            kv.pending() and time.monotonic() - self._last_flush >= self.cfg.state_flush_s)
        if not due:
            return
        flush = kv.take_flush()
        history = self.feed.take_flush(flush[1]) if flush is not None else []
        if flush is not None:
            self.space.flush_taken()
        waiters, self._flush_waiters = self._flush_waiters, []
        self._last_flush = time.monotonic()
        if flush is None:
            for w in waiters:
                w.set(None)
            return
        self._flush_done_event = trio.Event()
        big = len(flush[0]) >= TRIM_AFTER_KEYS

        async def run() -> None:
            nonlocal flush, history
            ok = False
            try:
                t0 = time.perf_counter()
                assert flush is not None
                await trio.to_thread.run_sync(functools.partial(kv.write_flush, *flush, history=history))
                self.metrics.fsync["state"].observe(time.perf_counter() - t0)
                ok = True
            except Exception as exc:
                self.disk_error("writing the state", exc)
                raise
            finally:
                kv.flush_done(ok)
                self.feed.flush_done(ok)
                self.space.flush_done(ok)
                self._flush_done_event.set()
                for w in waiters:
                    if ok:
                        w.set(None)
                    else:
                        w.fail("ERR writing the state failed")
                if ok and self._should_compact() and not self._snapshotting:
                    self.submit(TICK)  # let the loop consider compacting now
            if big:
                flush, history = None, []  # the overlay's records go now: give their memory back
                await trio.to_thread.run_sync(trim_heap)

        self._nursery.start_soon(run)

    async def _state_flush_idle(self) -> None:
        if self.kv.flushing:
            await self._flush_done_event.wait()

    def _should_compact(self) -> bool:
        """`--snapshot-threshold` counts applied writes: an entry may carry hundreds (a
        batch), so entries alone would let the log hold millions of writes."""
        return self.raft.should_snapshot() or self._since_compaction >= self.cfg.snapshot_threshold

    def _start_snapshot(self) -> None:
        """Compact the log: the state database is the snapshot, so this only deletes log
        entries the stored state has durably applied, keeping a margin for slow followers.
        The delete runs in a worker thread; the core hears of it once it is durable."""
        assert self._nursery is not None
        raft = self.raft
        base = raft.log.snapshot_meta().index
        durable = self.kv.durable_applied
        # Entries kept for slow followers: up to 1000, never more than half of what could go
        # (an entry may hold hundreds of writes).
        margin = max(0, min(self.cfg.snapshot_threshold // 4, 1000, (durable - base) // 2))
        target = durable - margin
        if target <= raft.log.snapshot_meta().index:
            return
        meta = raft.snapshot_meta_for(LogIndex(target))
        self._snapshotting = True
        self._since_compaction = 0
        self.metrics.snapshot_started = time.perf_counter()

        async def run() -> None:
            done = False
            try:
                await trio.to_thread.run_sync(self.store.compact, meta)
                done = True
            except Exception as exc:
                self.disk_error("compacting the log", exc)
                raise
            finally:
                ev = CompactionDone(meta, done)
                if not self.submit(ev):
                    await self._inbox_send.send(ev)  # must not be lost

        self._nursery.start_soon(run)
