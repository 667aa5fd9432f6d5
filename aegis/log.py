"""The replicated log: entries, the storage seam, and the in-memory view the Raft core uses.

Theory of operation
-------------------
A node's log has two parts, as in etcd/raft:

* the *stable* part lives in a `LogStore` (in memory for the simulator, LMDB in production).
  The Raft core only ever *reads* a store; the driver writes to it, after taking the entries
  out of a `Ready` batch, and tells the core with `advance()`.
* the *unstable* part is the tail the core has accepted but the driver has not persisted yet.

`ReplicatedLog` stitches the two together so the core sees one log, and tracks
`commit_index` and `last_applied` (dissertation §3.5).

Invariants (checked, never assumed):

* indexes are dense: entry *i+1* follows entry *i*;
* `snapshot_index < first_index() <= last_index() + 1`;
* `commit_index` never decreases and never exceeds `last_index()`;
* the log never truncates an entry at or below `commit_index` (that would be a safety bug,
  so it raises `LogInvariantError` rather than carrying on).

This module never imports trio, lmdb, socket or time.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from typing import Iterable, NewType, Protocol, Sequence, runtime_checkable

from .errors import AegisError

__all__ = [
    "Term",
    "LogIndex",
    "EntryType",
    "LogEntry",
    "SnapshotMeta",
    "Membership",
    "HardState",
    "LogStore",
    "MemoryLogStore",
    "ReplicatedLog",
    "LogError",
    "LogInvariantError",
    "CompactedError",
    "UnavailableError",
]

Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
NodeIdStr = str  # aegis.node.NodeId is a NewType of str; the log only needs the str.


class LogError(AegisError):
    """Root of log errors."""


class LogInvariantError(LogError):
    """A core invariant would be broken. Never swallow this: it means a bug."""


class CompactedError(LogError):
    """The requested index was compacted into a snapshot."""


class UnavailableError(LogError):
    """The requested index is beyond the last entry."""


class EntryType(enum.IntEnum):
    COMMAND = 0
    CONFIG_CHANGE = 1
    NO_OP = 2
    BATCH = 3  # several client commands in one entry, applied in order (aegis.state.encode_batch)
    DICTIONARY = 4  # a zstd dictionary for storage (aegis.zdict); the state machine ignores it

    # The seed spells these in CamelCase; keep those names working.
    Command = 0
    ConfigChange = 1
    NoOp = 2
    Batch = 3
    Dictionary = 4


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log entry. `data` is the uncompressed payload (storage compresses it)."""

    index: LogIndex
    term: Term
    type: EntryType = EntryType.COMMAND
    data: bytes = b""
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError(f"log index must be >= 1, got {self.index}")
        if self.term < 0:
            raise ValueError(f"term must be >= 0, got {self.term}")
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError("entry data must be bytes")
        if not isinstance(self.type, EntryType):
            raise TypeError(f"entry type must be an EntryType, got {self.type!r}")

    def checksum(self) -> int:
        """CRC32 over term, type and payload: what storage verifies on read."""
        head = self.index.to_bytes(8, "big") + self.term.to_bytes(8, "big") + bytes([self.type])
        return zlib.crc32(bytes(self.data), zlib.crc32(head))

    def size(self) -> int:
        return len(self.data) + 32


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration: voters and learners, with the address each was added with.

    Addresses are opaque strings for the core ("host:port"); a node's own `--peers` may
    override them locally.
    """

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()
    addresses: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(f"a node cannot be voter and learner: {sorted(self.voters & self.learners)}")

    @classmethod
    def of(
        cls,
        voters: Iterable[str],
        learners: Iterable[str] = (),
        addresses: dict[str, str] | None = None,
    ) -> Membership:
        addrs = tuple(sorted((addresses or {}).items()))
        return cls(frozenset(voters), frozenset(learners), addrs)

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def address_of(self, node: str) -> str | None:
        for nid, addr in self.addresses:
            if nid == node:
                return addr
        return None

    def address_map(self) -> dict[str, str]:
        return dict(self.addresses)

    def to_dict(self) -> dict[str, object]:
        return {
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "addresses": [list(a) for a in self.addresses],
        }

    @classmethod
    def from_dict(cls, d: object) -> Membership:
        """Inverse of `to_dict`; any malformed input is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError("malformed membership: not a mapping")
        voters = d.get("voters", [])
        learners = d.get("learners", [])
        addresses = d.get("addresses", [])
        if not isinstance(voters, list) or not isinstance(learners, list) or not isinstance(addresses, list):
            raise ValueError("malformed membership")
        pairs = []
        for a in addresses:
            if not isinstance(a, (list, tuple)) or len(a) != 2 or not all(isinstance(x, str) for x in a):
                raise ValueError(f"malformed membership address {a!r:.60}")
            pairs.append((a[0], a[1]))
        if not all(isinstance(v, str) for v in voters) or not all(isinstance(v, str) for v in learners):
            raise ValueError("malformed membership: node ids must be strings")
        return cls(frozenset(voters), frozenset(learners), tuple(sorted(pairs)))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the last index and term it includes, and the membership then."""

    index: LogIndex = LogIndex(0)
    term: Term = Term(0)
    membership: Membership = field(default_factory=Membership)


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message that depends on it leaves the node."""

    term: Term = Term(0)
    voted_for: str | None = None
    commit_index: LogIndex = LogIndex(0)


@runtime_checkable
class LogStore(Protocol):
    """The storage seam for the stable log. The core reads; the driver writes.

    Index conventions: entries live in ``[first_index(), last_index()]``; when the log is
    empty ``last_index() == first_index() - 1 == snapshot().index``. `term(i)` answers for
    ``snapshot().index <= i <= last_index()`` (term(0) == 0).
    """

    def first_index(self) -> LogIndex: ...
    def last_index(self) -> LogIndex: ...
    def term(self, index: LogIndex) -> Term: ...
    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[LogEntry]:
        """Entries in ``[lo, hi)``; at least one if any, at most `max_bytes` beyond the first."""
        ...
    def snapshot(self) -> SnapshotMeta: ...
    def initial_state(self) -> tuple[HardState, Membership]: ...

    # --- writes: called only by the driver -------------------------------------------------
    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append; any stored entry at or after ``entries[0].index`` is replaced."""
        ...
    def truncate_suffix(self, index: LogIndex) -> None:
        """Delete every entry with index >= `index`."""
        ...
    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries <= meta.index; remember meta as the snapshot point."""
        ...
    def set_hard_state(self, hs: HardState) -> None: ...
    def set_membership(self, membership: Membership) -> None: ...


class MemoryLogStore:
    """An in-memory `LogStore`: the simulator's "disk", and a reference model for storage."""

    def __init__(self, membership: Membership | None = None) -> None:
        self._snap = SnapshotMeta()
        self._entries: list[LogEntry] = []
        self._hard = HardState()
        self._membership = membership or Membership()

    # reads
    def first_index(self) -> LogIndex:
        return LogIndex(self._snap.index + 1)

    def last_index(self) -> LogIndex:
        return LogIndex(self._snap.index + len(self._entries))

    def term(self, index: LogIndex) -> Term:
        if index == self._snap.index:
            return self._snap.term
        if index < self._snap.index:
            raise CompactedError(f"index {index} is compacted (snapshot at {self._snap.index})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self._entries[index - self._snap.index - 1].term

    def entries(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[LogEntry]:
        if lo <= self._snap.index:
            raise CompactedError(f"index {lo} is compacted (snapshot at {self._snap.index})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond the last index {self.last_index()}")
        off = self._snap.index + 1
        out = self._entries[lo - off : hi - off]
        return _limit_size(out, max_bytes)

    def snapshot(self) -> SnapshotMeta:
        return self._snap

    def initial_state(self) -> tuple[HardState, Membership]:
        return self._hard, self._membership

    # writes
    def append(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if first <= self._snap.index:
            raise LogInvariantError(f"append at {first} overlaps the snapshot at {self._snap.index}")
        if first > self.last_index() + 1:
            raise LogInvariantError(f"append at {first} leaves a gap after {self.last_index()}")
        del self._entries[first - self._snap.index - 1 :]
        self._entries.extend(entries)

    def truncate_suffix(self, index: LogIndex) -> None:
        if index <= self._snap.index:
            raise LogInvariantError(f"truncate at {index} reaches into the snapshot at {self._snap.index}")
        del self._entries[max(0, index - self._snap.index - 1) :]

    def compact(self, meta: SnapshotMeta) -> None:
        if meta.index <= self._snap.index:
            return
        if meta.index <= self.last_index() and self.term(meta.index) == meta.term:
            self._entries = self._entries[meta.index - self._snap.index :]
        else:
            self._entries = []
        self._snap = meta

    def set_hard_state(self, hs: HardState) -> None:
        self._hard = hs

    def set_membership(self, membership: Membership) -> None:
        self._membership = membership


def _limit_size(entries: list[LogEntry], max_bytes: int | None) -> list[LogEntry]:
    if max_bytes is None or len(entries) <= 1:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class ReplicatedLog:
    """The core's view of the log: stable entries in a `LogStore` plus an unstable tail.

    `append`, `truncate`, `slice`, `term_at`, `find_conflict` and `commit` are what the Raft
    core needs; `stable_to` is called on `advance()` once the driver has persisted a batch.
    """

    def __init__(self, store: LogStore | None = None) -> None:
        self.store: LogStore = store if store is not None else MemoryLogStore()
        self.unstable: list[LogEntry] = []
        # Index of the first unstable entry; entries below it are in the store.
        self.unstable_offset: LogIndex = LogIndex(self.store.last_index() + 1)
        # A snapshot received from the leader, not yet installed by the driver.
        self.pending_snapshot: SnapshotMeta | None = None
        # Smallest index rewritten since the driver last took entries (truncation point).
        self.truncated_from: LogIndex | None = None
        snap = self.store.snapshot()
        hs, _ = self.store.initial_state()
        self.commit_index: LogIndex = LogIndex(max(hs.commit_index, snap.index))
        self.last_applied: LogIndex = snap.index
        if self.commit_index > self.last_index():
            raise LogInvariantError(
                f"stored commit index {self.commit_index} is ahead of the last entry {self.last_index()}"
            )

    # --- index arithmetic ------------------------------------------------------------------
    def snapshot_meta(self) -> SnapshotMeta:
        if self.pending_snapshot is not None:
            return self.pending_snapshot
        return self.store.snapshot()

    def first_index(self) -> LogIndex:
        if self.pending_snapshot is not None:
            return LogIndex(self.pending_snapshot.index + 1)
        return self.store.first_index()

    def last_index(self) -> LogIndex:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return LogIndex(self.unstable_offset - 1)

    def last_term(self) -> Term:
        return self.term_at(self.last_index())

    def term_at(self, index: LogIndex) -> Term:
        """Term of the entry at `index`; raises CompactedError/UnavailableError outside the log."""
        if index == 0:
            return Term(0)
        if self.unstable and index >= self.unstable_offset:
            if index > self.unstable[-1].index:
                raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
            return self.unstable[index - self.unstable_offset].term
        snap = self.snapshot_meta()
        if index == snap.index:
            return snap.term
        if index < snap.index:
            raise CompactedError(f"index {index} is compacted (snapshot at {snap.index})")
        if self.pending_snapshot is not None or index >= self.unstable_offset:
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self.store.term(index)

    def term_or_none(self, index: LogIndex) -> Term | None:
        try:
            return self.term_at(index)
        except (CompactedError, UnavailableError):
            return None

    def matches(self, index: LogIndex, term: Term) -> bool:
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: LogIndex, last_term: Term) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    # --- reading ---------------------------------------------------------------------------
    def get(self, index: LogIndex) -> LogEntry:
        got = self.slice(index, LogIndex(index + 1))
        return got[0]

    def slice(self, lo: LogIndex, hi: LogIndex, max_bytes: int | None = None) -> list[LogEntry]:
        """Entries in ``[lo, hi)``, limited to about `max_bytes` (always at least one)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond the last index {self.last_index()}")
        out: list[LogEntry] = []
        if lo < self.unstable_offset:
            out = self.store.entries(lo, LogIndex(min(hi, self.unstable_offset)), max_bytes)
            if len(out) < min(hi, self.unstable_offset) - lo:
                return out
        if hi > self.unstable_offset:
            u_lo = max(lo, self.unstable_offset) - self.unstable_offset
            u_hi = hi - self.unstable_offset
            out = out + self.unstable[u_lo:u_hi]
        return _limit_size(out, max_bytes)

    # --- writing (in memory; the driver persists through Ready) -----------------------------
    def append(self, entries: Sequence[LogEntry]) -> LogIndex:
        """Append entries, replacing any conflicting suffix. Returns the new last index."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.commit_index:
            raise LogInvariantError(f"append at {first} would overwrite committed index {self.commit_index}")
        if first > self.last_index() + 1:
            raise LogInvariantError(f"append at {first} leaves a gap after {self.last_index()}")
        self._truncate_from(first)
        self.unstable.extend(entries)
        return self.last_index()

    def truncate(self, index: LogIndex) -> None:
        """Delete entries with index >= `index` (never committed ones)."""
        if index <= self.commit_index:
            raise LogInvariantError(f"truncate at {index} would remove committed index {self.commit_index}")
        if index > self.last_index():
            return
        self._truncate_from(index)

    def _truncate_from(self, first: LogIndex) -> None:
        if first >= self.unstable_offset:
            del self.unstable[first - self.unstable_offset :]
        else:
            # The conflict reaches into stable storage: the driver must truncate there too.
            self.unstable = []
            self.unstable_offset = first
        # Stored entries from `first` on are now garbage: the driver must delete them.
        if first <= self.store.last_index() and (self.truncated_from is None or first < self.truncated_from):
            self.truncated_from = first

    def find_conflict(self, entries: Sequence[LogEntry]) -> LogIndex:
        """Index of the first entry whose term differs from ours (0 if none; §5.3).

        An entry beyond our last index counts as a conflict at that index (it is new).
        """
        for e in entries:
            t = self.term_or_none(e.index)
            if t is None and e.index <= self.snapshot_meta().index:
                continue  # already compacted: it is committed, so it matches
            if t != e.term:
                return e.index
        return LogIndex(0)

    def find_conflict_by_term(self, index: LogIndex, term: Term) -> tuple[LogIndex, Term]:
        """Largest index <= `index` whose term is <= `term` (for fast back-off hints)."""
        index = LogIndex(min(index, self.last_index()))
        while index > self.snapshot_meta().index:
            t = self.term_or_none(index)
            if t is None or t <= term:
                return index, t if t is not None else Term(0)
            index = LogIndex(index - 1)
        return index, self.snapshot_meta().term

    def commit(self, index: LogIndex) -> bool:
        """Raise commit_index to `index` (never lowers it). Returns whether it moved."""
        if index <= self.commit_index:
            return False
        if index > self.last_index():
            raise LogInvariantError(f"commit {index} beyond last index {self.last_index()}")
        self.commit_index = index
        return True

    def restore(self, meta: SnapshotMeta) -> None:
        """Adopt a leader's snapshot: the log becomes empty after meta.index."""
        self.pending_snapshot = meta
        self.unstable = []
        self.unstable_offset = LogIndex(meta.index + 1)
        self.truncated_from = None
        self.commit_index = LogIndex(max(self.commit_index, meta.index))

    def compact(self, meta: SnapshotMeta) -> None:
        """Discard the entries up to meta.index, through the store (the seed's API): after
        it, `first_index()` is ``meta.index + 1`` and `snapshot_meta()` is `meta`.

        Only committed entries the store already holds can go (a snapshot of uncommitted or
        unpersisted entries would be a lie), and `meta.term` must be the entry's term;
        anything else is a LogInvariantError and changes nothing. Compacting to an index
        the snapshot already covers does nothing. A driver that writes its store itself
        (off the core's thread, as the node does) compacts the store and calls `compacted`.
        """
        if meta.index <= self.snapshot_meta().index:
            return
        if self.pending_snapshot is not None:
            raise LogInvariantError("cannot compact while a received snapshot waits to be installed")
        if meta.index > self.commit_index:
            raise LogInvariantError(f"cannot compact to {meta.index}: only {self.commit_index} is committed")
        if meta.index >= self.unstable_offset:
            raise LogInvariantError(
                f"cannot compact to {meta.index}: the store holds entries up to {self.unstable_offset - 1} only"
            )
        if self.term_at(meta.index) != meta.term:
            raise LogInvariantError(
                f"cannot compact to {meta.index} with term {meta.term}: the entry's term is {self.term_at(meta.index)}"
            )
        self.store.compact(meta)
        self.compacted(meta)

    def compacted(self, meta: SnapshotMeta) -> None:
        """The driver compacted the stable store up to meta.index: what it covers counts as
        applied (the snapshot holds it)."""
        self.last_applied = LogIndex(max(self.last_applied, meta.index))

    # --- driver hand-off ---------------------------------------------------------------------
    def take_unstable(self) -> tuple[LogIndex | None, list[LogEntry]]:
        return self.truncated_from, list(self.unstable)

    def stable_to(self, index: LogIndex, term: Term) -> None:
        """The driver persisted entries up to `index` (whose term was `term`)."""
        self.truncated_from = None
        if not self.unstable or index < self.unstable_offset:
            return
        if self.term_or_none(index) != term:
            return  # the tail was replaced meanwhile; those entries stay unstable
        keep = index - self.unstable_offset + 1
        self.unstable = self.unstable[keep:]
        self.unstable_offset = LogIndex(index + 1)

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == meta.index:
            self.pending_snapshot = None
        self.last_applied = LogIndex(max(self.last_applied, meta.index))

    def next_committed(self, max_bytes: int | None = None) -> list[LogEntry]:
        """Committed entries not yet handed out for applying."""
        lo = LogIndex(max(self.last_applied + 1, self.first_index()))
        hi = LogIndex(self.commit_index + 1)
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_bytes)

    def restore_applied(self, index: LogIndex) -> None:
        """At startup: a durable state machine already applied up to `index`. Everything it
        applied was committed, so the commit index is at least that."""
        if index > self.last_index():
            raise LogInvariantError(
                f"the state machine applied index {index} but the log ends at {self.last_index()}"
            )
        self.last_applied = LogIndex(max(self.last_applied, index))
        self.commit_index = LogIndex(max(self.commit_index, index))

    def applied_to(self, index: LogIndex) -> None:
        if index > self.commit_index:
            raise LogInvariantError(f"applied {index} beyond commit {self.commit_index}")
        self.last_applied = LogIndex(max(self.last_applied, index))
