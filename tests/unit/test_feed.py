"""The change feed's memory and history: whole revisions, in order, nothing lost at the seams."""

from __future__ import annotations

import trio

from aegis.feed import ChangeFeed, Compacted
from aegis.state import Change


class ListHistory:
    """A history store in a list (the node's is LMDB): holds what flushes wrote."""

    def __init__(self, floor: int = 0) -> None:
        self.items: list[Change] = []
        self.floor = floor

    def write(self, changes: list[Change]) -> None:
        self.items += changes

    def prune(self, keep: int) -> None:
        while len(self.items) > keep:
            rev = self.items[0][0]
            while self.items and self.items[0][0] == rev:
                self.items.pop(0)
            self.floor = rev

    def read_history(self, after: int, limit: int) -> list[Change]:
        out = [c for c in self.items if c[0] > after]
        if len(out) > limit:
            last = out[limit - 1][0]
            out = [c for c in out if c[0] <= last]
        return out

    def history_floor(self) -> int:
        return self.floor


def changes(rev: int, n: int = 2) -> list[Change]:
    return [(rev, f"k{rev}.{i}".encode(), b"v") for i in range(n)]


async def read_all(feed: ChangeFeed, after: int, limit: int = 3) -> list[Change] | Compacted:
    out: list[Change] = []
    while True:
        got = await feed.read(after, limit)
        if isinstance(got, Compacted):
            return got
        if not got:
            return out
        revs = [c[0] for c in got]
        assert revs == sorted(revs) and revs[0] > after
        out += got
        after = got[-1][0]


async def test_memory_only_feed_serves_whole_revisions_and_reports_compaction() -> None:
    feed = ChangeFeed(applied=0, durable=0, history=None, memory_limit=5)
    for rev in range(1, 6):
        feed.publish(changes(rev), rev)
    assert feed.current == 5
    # Memory holds at most 5 changes, whole revisions: revisions 4 and 5 (and 3 dropped).
    got = await read_all(feed, 3)
    assert got == changes(4) + changes(5)
    compacted = await feed.read(1)
    assert isinstance(compacted, Compacted) and compacted.current == 5 and compacted.oldest == 3


async def test_flushed_changes_come_back_from_history_seamlessly() -> None:
    history = ListHistory()
    feed = ChangeFeed(applied=0, durable=0, history=history, memory_limit=4)
    everything: list[Change] = []
    for rev in range(1, 21):
        batch = changes(rev, 1 + rev % 3)
        everything += batch
        feed.publish(batch, rev)
        if rev % 4 == 0:  # a state flush: the changes go to disk with the state
            taken = feed.take_flush(rev)
            history.write(taken)
            feed.flush_done(True)
    # Unflushed changes are never dropped from memory, flushed ones may be.
    assert await read_all(feed, 0) == everything
    assert await read_all(feed, 7) == [c for c in everything if c[0] > 7]
    history.prune(10)
    got = await read_all(feed, 0)
    assert isinstance(got, Compacted)
    tail = [c for c in everything if c[0] > history.floor]
    assert await read_all(feed, history.floor) == tail


async def test_a_failed_flush_keeps_the_changes_for_the_next_one() -> None:
    history = ListHistory()
    feed = ChangeFeed(applied=0, durable=0, history=history, memory_limit=1)
    feed.publish(changes(1), 1)
    first = feed.take_flush(1)
    feed.flush_done(False)
    assert feed.take_flush(1) == first
    feed.flush_done(True)
    assert feed.take_flush(1) == []


async def test_reset_after_a_snapshot_install_refuses_what_this_node_never_saw() -> None:
    feed = ChangeFeed(applied=0, durable=0, history=None)
    feed.publish(changes(1), 1)
    feed.reset(50)
    assert isinstance(await feed.read(10), Compacted)
    assert await feed.read(50) == []
    feed.publish(changes(51), 51)
    assert await feed.read(50) == changes(51)


async def test_wait_wakes_on_the_next_revision() -> None:
    feed = ChangeFeed(applied=0, durable=0, history=None)
    woke = []

    async def waiter() -> None:
        await feed.wait(0)
        woke.append(feed.current)

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.01)
        assert woke == []
        feed.publish([], 1)  # an entry without changes still moves the revision on
    assert woke == [1]
