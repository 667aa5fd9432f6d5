"""Property test: LmdbStore behaves like MemoryLogStore (the reference model) under random
operation sequences, including restarts, snapshots, write batches and refused operations.

The store runs with sync=False here only to keep the test fast: fsync does not change what
the store answers, and every reopen goes through close(), which flushes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aegis.log import (
    EntryType,
    HardState,
    LogEntry,
    LogError,
    LogIndex,
    Membership,
    MemoryLogStore,
    SnapshotMeta,
    Term,
)
from storage import LmdbStore

T = TypeVar("T")
NODES = ["n1", "n2", "n3", "n4", "n5"]


def outcome(fn: Callable[[], T]) -> tuple[str, T | None]:
    try:
        return "ok", fn()
    except LogError as e:
        return type(e).__name__, None


class StoreVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="aegis-model-"))
        self.model = MemoryLogStore()
        self.cache = 0
        self.store: LmdbStore | None = None

    def open(self) -> LmdbStore:
        return LmdbStore.open(self.dir / "n1", node_id="n1", sync=False, cache_entries=self.cache, snapshot_chunk_size=64)

    @property
    def s(self) -> LmdbStore:
        assert self.store is not None
        return self.store

    @initialize(cache=st.sampled_from([0, 3, 4096]))
    def start(self, cache: int) -> None:
        self.cache = cache
        self.store = self.open()

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit_index(self) -> int:
        return self.model.initial_state()[0].commit_index

    def same(self, a: Callable[[], T], b: Callable[[], T]) -> None:
        assert outcome(a) == outcome(b)

    # --- writes ----------------------------------------------------------------------------------
    def entries_strategy(self, data: st.DataObject, start: int) -> list[LogEntry]:
        n = data.draw(st.integers(1, 6), label="count")
        term = data.draw(st.integers(1, 6), label="term")
        return [
            LogEntry(
                LogIndex(start + k),
                Term(term),
                data.draw(st.sampled_from(list(EntryType)), label="type"),
                data.draw(st.binary(max_size=150) | st.just(b'{"k": "v"}' * 12), label="payload"),
                float(start + k),
            )
            for k in range(n)
        ]

    @rule(data=st.data())
    def append(self, data: st.DataObject) -> None:
        m = self.model
        # Raft never rewrites committed entries; everything else, including refused appends
        # (into the snapshot, after a gap), is fair game.
        lo = max(m.snapshot().index - 1, self.commit_index() + 1, 1)
        start = data.draw(st.integers(lo, m.last_index() + 2), label="start")
        if start <= self.commit_index():
            return
        entries = self.entries_strategy(data, start)
        self.same(lambda: self.s.append(entries), lambda: m.append(entries))

    @rule(data=st.data())
    def truncate_suffix(self, data: st.DataObject) -> None:
        m = self.model
        lo = max(m.snapshot().index - 1, self.commit_index() + 1, 0)
        index = data.draw(st.integers(lo, m.last_index() + 2), label="index")
        if index <= self.commit_index():
            return
        self.same(lambda: self.s.truncate_suffix(LogIndex(index)), lambda: m.truncate_suffix(LogIndex(index)))

    @rule(data=st.data(), via_snapshot=st.booleans(), matching=st.booleans())
    def compact(self, data: st.DataObject, via_snapshot: bool, matching: bool) -> None:
        m = self.model
        info = self.s.snapshot_info()
        lo = max(info.index if info is not None and via_snapshot else 0, m.snapshot().index - 1, 0)
        index = data.draw(st.integers(lo, m.last_index() + 3), label="index")
        term = m.term(LogIndex(index)) if matching and m.snapshot().index <= index <= m.last_index() else 9
        meta = SnapshotMeta(LogIndex(index), Term(term), Membership.of(NODES[: 1 + index % 3]))
        keeps = index <= m.last_index() and index >= m.snapshot().index and m.term(LogIndex(index)) == term
        if not keeps and index > m.snapshot().index and index < self.commit_index():
            return  # dropping committed entries for a stale snapshot: Raft never does that
        if via_snapshot:
            payload = data.draw(st.binary(max_size=400), label="snapshot")
            with self.s.begin_snapshot(meta) as w:
                w.write(payload)
                w.commit()
            reader = self.s.open_snapshot()
            assert reader is not None and reader.read_all() == payload and reader.info.meta == meta
        else:
            self.s.compact(meta)
        m.compact(meta)

    @rule(term=st.integers(0, 9), vote=st.sampled_from([None, *NODES]), data=st.data())
    def set_hard_state(self, term: int, vote: str | None, data: st.DataObject) -> None:
        commit = data.draw(st.integers(self.commit_index(), self.model.last_index()), label="commit")
        hs = HardState(Term(term), vote, LogIndex(commit))
        self.s.set_hard_state(hs)
        self.model.set_hard_state(hs)

    @rule(voters=st.sets(st.sampled_from(NODES), max_size=3))
    def set_membership(self, voters: set[str]) -> None:
        mem = Membership.of(voters, [n for n in NODES[3:] if n not in voters], {n: f"h:{n}" for n in voters})
        self.s.set_membership(mem)
        self.model.set_membership(mem)

    @rule(data=st.data(), with_hs=st.booleans())
    def write_batch(self, data: st.DataObject, with_hs: bool) -> None:
        """What the driver does once per Ready: truncate + append + hard state in one step."""
        m = self.model
        lo = max(m.snapshot().index + 1, self.commit_index() + 1)
        if lo > m.last_index() + 1:
            return
        cut = data.draw(st.integers(lo, m.last_index() + 1), label="truncate_from")
        entries = self.entries_strategy(data, cut)
        hs = HardState(Term(7), "n2", LogIndex(self.commit_index())) if with_hs else None
        self.s.write_batch(truncate_from=LogIndex(cut), entries=entries, hard_state=hs)
        m.truncate_suffix(LogIndex(cut))
        m.append(entries)
        if hs is not None:
            m.set_hard_state(hs)

    @rule()
    def restart(self) -> None:
        self.s.close()
        self.store = self.open()

    # --- reads -----------------------------------------------------------------------------------------
    @rule(data=st.data(), max_bytes=st.sampled_from([None, 0, 50, 200, 1000]))
    def read_range(self, data: st.DataObject, max_bytes: int | None) -> None:
        m = self.model
        lo = data.draw(st.integers(max(0, m.snapshot().index - 1), m.last_index() + 2), label="lo")
        hi = data.draw(st.integers(lo, m.last_index() + 3), label="hi")
        self.same(
            lambda: self.s.entries(LogIndex(lo), LogIndex(hi), max_bytes),
            lambda: m.entries(LogIndex(lo), LogIndex(hi), max_bytes),
        )

    @precondition(lambda self: self.store is not None)
    @invariant()
    def agrees_with_the_model(self) -> None:
        m, s = self.model, self.s
        assert (s.first_index(), s.last_index()) == (m.first_index(), m.last_index())
        assert s.snapshot() == m.snapshot()
        assert s.initial_state() == m.initial_state()
        for i in range(max(0, m.snapshot().index - 1), m.last_index() + 2):
            self.same(lambda: s.term(LogIndex(i)), lambda: m.term(LogIndex(i)))
        lo, hi = m.first_index(), LogIndex(m.last_index() + 1)
        assert s.entries(lo, hi) == m.entries(lo, hi)


StoreVsModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_store_behaves_like_the_model = StoreVsModel.TestCase
