"""The change feed: every committed change, in commit order, resumable from a revision.

Theory of operation
-------------------
Applying an entry records its changes (`StateMachine.changes`): ``(revision, key, value)``,
value None for a deletion, revision the entry's log index. Every replica applies the same
entries, so every node holds the same feed and a revision means the same on all of them.

`ChangeFeed` keeps the recent changes in memory, whole revisions only, and hands the ones not
yet on disk to the state flush (`take_flush` / `flush_done`), which writes them to the state
database's history in the same transaction as the state they lead to. So after a crash the
history on disk ends exactly where the stored state does, and the entries applied again at
restart publish the rest again: nothing is lost or duplicated.

Readers pull (`read(after)`): changes after a revision, from memory when they are still
there, otherwise from the history on disk (`HistoryStore.read_history`, in a worker thread);
a revision older than both is `Compacted`. Pulling means a slow subscriber costs no memory:
it is simply further behind. `wait(after)` sleeps until there is something newer.

Invariants:

* memory holds every change with revision > `floor`, in order, whole revisions;
* the history on disk holds whole revisions up to `durable` (<= the newest in memory);
* `floor` <= `durable` whenever there is history on disk, so the two ranges meet.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import islice
from operator import itemgetter
from dataclasses import dataclass
from typing import Protocol

import trio

from .state import Change

__all__ = ["ChangeFeed", "Compacted", "HistoryStore"]


class HistoryStore(Protocol):
    """Where flushed changes live (the node's `storage.LmdbKV`)."""

    def read_history(self, after: int, limit: int) -> list[Change]:
        """Changes with revision > `after`, in order, whole revisions, about `limit` of them."""
        ...

    def history_floor(self) -> int:
        """The newest revision the history no longer holds changes after which it can
        serve completely: a reader may resume from any revision >= this."""
        ...


@dataclass(frozen=True, slots=True)
class Compacted:
    """The changes after `after` are no longer held: resume from `oldest` or re-read."""

    after: int
    oldest: int
    current: int


_revision = itemgetter(0)


class ChangeFeed:
    def __init__(self, applied: int, durable: int, history: HistoryStore | None = None,
                 memory_limit: int = 100_000) -> None:
        self._recent: deque[Change] = deque()
        self._revs: deque[int] = deque()  # the revision of each entry in _recent (for bisect)
        self._floor = applied  # memory holds every change after this revision
        self._durable = durable  # the history on disk holds changes up to here
        self._taking = -1  # the revision a flush in flight covers
        self._history = history
        self._limit = memory_limit
        self._current = applied
        self._changed = trio.Event()

    @property
    def current(self) -> int:
        """The newest revision applied (with or without changes)."""
        return self._current

    def publish(self, changes: list[Change], applied: int) -> None:
        """Changes of entries just applied, in order; `applied` is the new applied index."""
        self._recent.extend(changes)
        self._revs.extend(map(_revision, changes))
        self._current = max(self._current, applied)
        if changes:
            self._trim()
        self._changed.set()
        self._changed = trio.Event()

    def reset(self, applied: int) -> None:
        """A snapshot replaced the state: nothing before `applied` can be served from here
        (this node never saw those changes); the store dropped its history too."""
        self._recent.clear()
        self._revs.clear()
        self._floor = self._durable = self._current = applied
        self._taking = -1
        self._changed.set()
        self._changed = trio.Event()

    def _trim(self) -> None:
        # Drop whole revisions from the front, but only those already on disk.
        if len(self._recent) <= self._limit:
            return
        while len(self._recent) > self._limit and self._revs[0] <= self._durable and self._history is not None:
            rev = self._revs[0]
            while self._revs and self._revs[0] == rev:
                self._recent.popleft()
                self._revs.popleft()
            self._floor = rev
        if self._history is None:  # memory only: the oldest go, flushed or not
            while len(self._recent) > self._limit:
                rev = self._revs[0]
                while self._revs and self._revs[0] == rev:
                    self._recent.popleft()
                    self._revs.popleft()
                self._floor = rev

    # --- the state flush ------------------------------------------------------------------
    def take_flush(self, upto: int) -> list[Change]:
        """The changes up to revision `upto` (the applied index a state flush writes) that
        are not on disk yet."""
        i = bisect.bisect_right(self._revs, self._durable)
        j = bisect.bisect_right(self._revs, upto)
        self._taking = upto
        return list(islice(self._recent, i, j))  # one walk: a deque's [k] walks to k each time

    def flush_done(self, ok: bool) -> None:
        if ok and self._taking > self._durable:
            self._durable = self._taking
        self._taking = -1
        self._trim()

    # --- readers --------------------------------------------------------------------------
    async def read(self, after: int, limit: int = 1000) -> list[Change] | Compacted:
        """Changes with revision > `after`, whole revisions, in order (empty: none yet)."""
        if after >= self._floor:
            i = bisect.bisect_right(self._revs, after)
            if i == len(self._recent):
                return []
            end = min(i + limit, len(self._recent))
            last = self._revs[end - 1]
            while end < len(self._recent) and self._revs[end] == last:
                end += 1
            return list(islice(self._recent, i, end))
        history = self._history
        oldest = self._floor
        if history is not None:
            oldest = min(oldest, history.history_floor())
            if after >= oldest:
                got = await trio.to_thread.run_sync(history.read_history, after, limit)
                if got:
                    return got
                # Nothing on disk after `after`: the next changes, if any, are in memory.
                return await self.read(max(after, self._floor), limit)
        return Compacted(after, oldest, self._current)

    async def wait(self, after: int) -> None:
        """Until a revision newer than `after` is applied (or the feed is reset)."""
        while self._current <= after:
            await self._changed.wait()
