"""aegis.log: LogEntry, Membership, MemoryLogStore and ReplicatedLog, edge by edge."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.log import (
    CompactedError,
    EntryType,
    HardState,
    LogEntry,
    LogIndex,
    LogInvariantError,
    LogStore,
    Membership,
    MemoryLogStore,
    ReplicatedLog,
    SnapshotMeta,
    Term,
    UnavailableError,
)


def ents(*terms: int, start: int = 1, data: bytes = b"") -> list[LogEntry]:
    return [LogEntry(LogIndex(start + i), Term(t), EntryType.COMMAND, data) for i, t in enumerate(terms)]


def terms_of(entries: list[LogEntry]) -> list[int]:
    return [int(e.term) for e in entries]


def stored(*terms: int, commit: int = 0, membership: Membership | None = None) -> MemoryLogStore:
    s = MemoryLogStore(membership)
    s.append(ents(*terms))
    s.set_hard_state(HardState(Term(max(terms, default=0)), None, LogIndex(commit)))
    return s


def persist(log: ReplicatedLog) -> None:
    """What a driver does with the log part of a Ready, then `advance`'s stable_to."""
    truncate_from, unstable = log.take_unstable()
    if truncate_from is not None:
        log.store.truncate_suffix(truncate_from)
    if unstable:
        log.store.append(unstable)
        log.stable_to(unstable[-1].index, unstable[-1].term)
    else:
        log.truncated_from = None


# --- LogEntry ---------------------------------------------------------------------------------


def test_entry_defaults_and_size() -> None:
    e = LogEntry(LogIndex(1), Term(0))
    assert (e.type, e.data, e.timestamp) == (EntryType.COMMAND, b"", 0.0)
    assert LogEntry(LogIndex(3), Term(2), data=b"x" * 10).size() == 42


@pytest.mark.parametrize("index,term", [(0, 1), (-1, 1), (1, -1)])
def test_entry_rejects_impossible_positions(index: int, term: int) -> None:
    with pytest.raises(ValueError):
        LogEntry(LogIndex(index), Term(term))


def test_entry_data_must_be_bytes_like() -> None:
    with pytest.raises(TypeError):
        LogEntry(LogIndex(1), Term(1), data="text")  # type: ignore[arg-type]
    LogEntry(LogIndex(1), Term(1), data=bytearray(b"ok"))  # type: ignore[arg-type]
    LogEntry(LogIndex(1), Term(1), data=memoryview(b"ok"))  # type: ignore[arg-type]


def test_entry_rejects_a_type_that_is_not_an_entry_type() -> None:
    with pytest.raises((TypeError, ValueError)):
        LogEntry(LogIndex(1), Term(1), 9)  # type: ignore[arg-type]


def test_entry_is_frozen() -> None:
    e = LogEntry(LogIndex(1), Term(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.term = Term(2)  # type: ignore[misc]


def test_entry_checksum_covers_index_term_type_and_data() -> None:
    base = LogEntry(LogIndex(1), Term(1), EntryType.COMMAND, b"abc")
    variants = [
        LogEntry(LogIndex(2), Term(1), EntryType.COMMAND, b"abc"),
        LogEntry(LogIndex(1), Term(2), EntryType.COMMAND, b"abc"),
        LogEntry(LogIndex(1), Term(1), EntryType.NO_OP, b"abc"),
        LogEntry(LogIndex(1), Term(1), EntryType.COMMAND, b"abd"),
    ]
    assert all(v.checksum() != base.checksum() for v in variants)
    assert base.checksum() == LogEntry(LogIndex(1), Term(1), EntryType.COMMAND, b"abc", 9.0).checksum()


def test_entry_type_keeps_the_seed_spellings() -> None:
    aliases = {name: EntryType[name] for name in ("Command", "ConfigChange", "NoOp")}
    assert aliases == {"Command": EntryType.COMMAND, "ConfigChange": EntryType.CONFIG_CHANGE, "NoOp": EntryType.NO_OP}


# --- Membership --------------------------------------------------------------------------------


def test_membership_of_and_queries() -> None:
    m = Membership.of(["a", "b"], ["c"], {"a": "h:1", "c": "h:3"})
    assert m.voters == {"a", "b"} and m.learners == {"c"} and m.members == {"a", "b", "c"}
    assert m.address_of("a") == "h:1" and m.address_of("b") is None
    assert m.address_map() == {"a": "h:1", "c": "h:3"}
    assert Membership() == Membership.of([]) and Membership().members == frozenset()


def test_membership_equality_ignores_input_order() -> None:
    assert Membership.of(["b", "a"], [], {"b": "2", "a": "1"}) == Membership.of(["a", "b"], [], {"a": "1", "b": "2"})


def test_membership_rejects_a_voter_that_is_also_a_learner() -> None:
    with pytest.raises(ValueError, match="voter and learner"):
        Membership.of(["a", "b"], ["b"])


def test_membership_dict_round_trip() -> None:
    m = Membership.of(["a", "b"], ["c"], {"a": "h:1"})
    assert Membership.from_dict(m.to_dict()) == m
    assert Membership.from_dict({}) == Membership()


@pytest.mark.parametrize("bad", [{"voters": "ab"}, {"learners": 3}, {"addresses": {"a": "b"}}, {"voters": ["a"], "learners": ["a"]}])
def test_membership_from_malformed_dict_is_a_value_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Membership.from_dict(bad)


@pytest.mark.parametrize("addresses", [["x"], [["only-one"]], [[]]])
def test_membership_from_dict_with_malformed_address_pairs_is_a_value_error(addresses: list[object]) -> None:
    with pytest.raises(ValueError):
        Membership.from_dict({"voters": ["a"], "addresses": addresses})


# --- MemoryLogStore ----------------------------------------------------------------------------


def test_empty_store() -> None:
    s = MemoryLogStore()
    assert isinstance(s, LogStore)
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(LogIndex(0)) == 0
    assert s.snapshot() == SnapshotMeta()
    assert s.initial_state() == (HardState(), Membership())
    assert s.entries(LogIndex(1), LogIndex(1)) == []
    with pytest.raises(UnavailableError):
        s.term(LogIndex(1))


def test_store_append_read_and_replace_suffix() -> None:
    s = stored(1, 1, 2, 2)
    assert terms_of(s.entries(LogIndex(1), LogIndex(5))) == [1, 1, 2, 2]
    assert terms_of(s.entries(LogIndex(2), LogIndex(4))) == [1, 2]
    s.append(ents(3, start=3))  # replaces 3 and 4
    assert s.last_index() == 3 and s.term(LogIndex(3)) == 3
    s.append([])
    assert s.last_index() == 3


def test_store_append_rejects_gaps_and_snapshot_overlap() -> None:
    s = stored(1, 1)
    with pytest.raises(LogInvariantError):
        s.append(ents(1, start=4))
    s.compact(SnapshotMeta(LogIndex(2), Term(1)))
    with pytest.raises(LogInvariantError):
        s.append(ents(1, start=2))
    s.append(ents(1, start=3))
    assert s.last_index() == 3


def test_store_reads_outside_the_log() -> None:
    s = stored(1, 1, 1)
    s.compact(SnapshotMeta(LogIndex(1), Term(1)))
    with pytest.raises(CompactedError):
        s.term(LogIndex(0))
    with pytest.raises(CompactedError):
        s.entries(LogIndex(1), LogIndex(2))
    with pytest.raises(UnavailableError):
        s.entries(LogIndex(2), LogIndex(5))
    with pytest.raises(UnavailableError):
        s.term(LogIndex(4))
    assert s.term(LogIndex(1)) == 1  # the snapshot point still answers


def test_store_entries_size_limit() -> None:
    s = MemoryLogStore()
    s.append(ents(1, 1, 1, 1, data=b"x" * 68))  # 100 bytes each with overhead
    assert len(s.entries(LogIndex(1), LogIndex(5), max_bytes=1)) == 1  # always at least one
    assert len(s.entries(LogIndex(1), LogIndex(5), max_bytes=200)) == 2  # exactly at the limit
    assert len(s.entries(LogIndex(1), LogIndex(5), max_bytes=299)) == 2
    assert len(s.entries(LogIndex(1), LogIndex(5), max_bytes=None)) == 4


def test_store_truncate_suffix() -> None:
    s = stored(1, 1, 2, 2)
    s.truncate_suffix(LogIndex(9))
    assert s.last_index() == 4
    s.truncate_suffix(LogIndex(3))
    assert s.last_index() == 2
    s.compact(SnapshotMeta(LogIndex(1), Term(1)))
    with pytest.raises(LogInvariantError):
        s.truncate_suffix(LogIndex(1))
    s.truncate_suffix(LogIndex(2))
    assert (s.first_index(), s.last_index()) == (2, 1)


def test_store_compact_keeps_the_matching_suffix() -> None:
    s = stored(1, 1, 2, 2, 3)
    meta = SnapshotMeta(LogIndex(3), Term(2), Membership.of(["a"]))
    s.compact(meta)
    assert s.snapshot() == meta
    assert (s.first_index(), s.last_index()) == (4, 5)
    assert terms_of(s.entries(LogIndex(4), LogIndex(6))) == [2, 3]


def test_store_compact_with_a_different_term_drops_everything() -> None:
    s = stored(1, 1, 2, 2, 3)
    s.compact(SnapshotMeta(LogIndex(3), Term(7)))
    assert (s.first_index(), s.last_index()) == (4, 3)
    assert s.term(LogIndex(3)) == 7


def test_store_compact_beyond_the_log_and_at_its_end() -> None:
    s = stored(1, 1)
    s.compact(SnapshotMeta(LogIndex(2), Term(1)))
    assert (s.first_index(), s.last_index()) == (3, 2)
    s.compact(SnapshotMeta(LogIndex(10), Term(4)))
    assert (s.first_index(), s.last_index()) == (11, 10)
    s.append(ents(4, start=11))
    assert s.last_index() == 11


def test_store_ignores_a_stale_compaction() -> None:
    s = stored(1, 1, 1)
    s.compact(SnapshotMeta(LogIndex(2), Term(1)))
    s.compact(SnapshotMeta(LogIndex(1), Term(1)))
    s.compact(SnapshotMeta(LogIndex(2), Term(9)))
    assert s.snapshot().index == 2 and s.snapshot().term == 1 and s.last_index() == 3


def test_store_hard_state_and_membership() -> None:
    m0 = Membership.of(["a"])
    s = MemoryLogStore(m0)
    assert s.initial_state() == (HardState(), m0)
    hs = HardState(Term(3), "a", LogIndex(0))
    m1 = Membership.of(["a", "b"])
    s.set_hard_state(hs)
    s.set_membership(m1)
    assert s.initial_state() == (hs, m1)


# --- ReplicatedLog: construction ---------------------------------------------------------------


def test_empty_log() -> None:
    log = ReplicatedLog()
    assert isinstance(log.store, MemoryLogStore)
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert (log.commit_index, log.last_applied) == (0, 0)
    assert log.term_at(LogIndex(0)) == 0
    assert log.take_unstable() == (None, [])
    assert log.next_committed() == []
    with pytest.raises(UnavailableError):
        log.term_at(LogIndex(1))


def test_log_over_a_stored_log() -> None:
    log = ReplicatedLog(stored(1, 1, 2, commit=2))
    assert (log.last_index(), log.last_term(), log.commit_index, log.last_applied) == (3, 2, 2, 0)
    assert log.unstable == [] and log.unstable_offset == 4
    assert terms_of(log.next_committed()) == [1, 1]


def test_log_over_a_compacted_store() -> None:
    s = stored(1, 1, 2, 2)
    s.compact(SnapshotMeta(LogIndex(2), Term(1)))
    log = ReplicatedLog(s)
    assert (log.first_index(), log.last_index()) == (3, 4)
    assert log.commit_index == 2 and log.last_applied == 2  # the snapshot is committed and applied
    assert log.term_at(LogIndex(2)) == 1
    with pytest.raises(CompactedError):
        log.term_at(LogIndex(1))
    assert log.term_or_none(LogIndex(1)) is None
    with pytest.raises(CompactedError):
        log.slice(LogIndex(2), LogIndex(4))


def test_log_refuses_a_store_whose_commit_index_is_beyond_its_entries() -> None:
    with pytest.raises(LogInvariantError):
        ReplicatedLog(stored(1, 1, commit=5))


# --- ReplicatedLog: append, slice, stable_to --------------------------------------------------


def test_append_then_persist() -> None:
    log = ReplicatedLog()
    assert log.append(ents(1, 1, 2)) == 3
    assert (log.last_index(), log.last_term()) == (3, 2)
    assert log.store.last_index() == 0  # nothing persisted yet
    assert terms_of(log.slice(LogIndex(1), LogIndex(4))) == [1, 1, 2]
    assert log.take_unstable() == (None, ents(1, 1, 2))
    persist(log)
    assert log.unstable == [] and log.unstable_offset == 4 and log.store.last_index() == 3
    assert log.append([]) == 3


def test_slice_across_stable_and_unstable() -> None:
    log = ReplicatedLog(stored(1, 1))
    log.append(ents(2, 2, start=3))
    assert terms_of(log.slice(LogIndex(1), LogIndex(5))) == [1, 1, 2, 2]
    assert terms_of(log.slice(LogIndex(2), LogIndex(4))) == [1, 2]
    assert log.get(LogIndex(3)).term == 2
    assert log.slice(LogIndex(3), LogIndex(3)) == [] and log.slice(LogIndex(4), LogIndex(2)) == []
    with pytest.raises(UnavailableError):
        log.slice(LogIndex(1), LogIndex(6))
    with pytest.raises(UnavailableError):
        log.get(LogIndex(5))


def test_slice_size_limit_across_the_boundary() -> None:
    s = MemoryLogStore()
    s.append(ents(1, 1, data=b"x" * 68))  # 100 bytes each
    log = ReplicatedLog(s)
    log.append(ents(1, 1, start=3, data=b"x" * 68))
    assert len(log.slice(LogIndex(1), LogIndex(5), max_bytes=150)) == 1  # stops inside the store
    assert len(log.slice(LogIndex(1), LogIndex(5), max_bytes=300)) == 3  # stops in the unstable tail
    assert len(log.slice(LogIndex(3), LogIndex(5), max_bytes=1)) == 1
    assert len(log.slice(LogIndex(1), LogIndex(5))) == 4


def test_append_rejects_gaps_and_committed_rewrites() -> None:
    log = ReplicatedLog(stored(1, 1, 1, commit=2))
    with pytest.raises(LogInvariantError):
        log.append(ents(1, start=5))
    with pytest.raises(LogInvariantError):
        log.append(ents(2, start=2))
    log.append(ents(2, start=3))  # just above the commit index is fine
    assert log.term_at(LogIndex(3)) == 2


def test_conflict_inside_the_unstable_tail_needs_no_store_truncation() -> None:
    log = ReplicatedLog(stored(1))
    log.append(ents(1, 1, 1, start=2))
    log.append(ents(2, start=3))
    assert terms_of(log.slice(LogIndex(1), LogIndex(4))) == [1, 1, 2]
    assert log.take_unstable() == (None, [*ents(1, start=2), *ents(2, start=3)])


def test_conflict_reaching_into_the_store_hides_stale_entries_until_truncated() -> None:
    log = ReplicatedLog(stored(1, 1, 1, 1))
    log.append(ents(2, start=3))
    assert log.last_index() == 3 and log.unstable_offset == 3
    assert log.truncated_from == 3
    with pytest.raises(UnavailableError):
        log.term_at(LogIndex(4))  # still in the store, but no longer in the log
    assert terms_of(log.slice(LogIndex(1), LogIndex(4))) == [1, 1, 2]
    assert log.take_unstable() == (3, ents(2, start=3))
    persist(log)
    assert log.store.last_index() == 3 and log.store.term(LogIndex(3)) == 2
    assert log.truncated_from is None


def test_second_truncation_keeps_the_lowest_point() -> None:
    log = ReplicatedLog(stored(1, 1, 1, 1, 1))
    log.append(ents(2, 2, start=4))
    log.append(ents(3, start=3))
    assert log.truncated_from == 3
    log.append(ents(3, start=4))  # a conflict only in the unstable tail keeps 3
    assert log.truncated_from == 3
    persist(log)
    assert terms_of(log.store.entries(LogIndex(1), LogIndex(5))) == [1, 1, 3, 3]


def test_truncation_during_an_outstanding_write_relies_on_append_replacing_the_suffix() -> None:
    """A conflict that arrives while the driver writes a batch (between Ready and advance):
    `stable_to` then clears the newer truncation point, and the next batch carries none.
    The store still ends right only because `LogStore.append` replaces every stored entry
    at or after its first index, as the protocol says."""
    log = ReplicatedLog(stored(1, 1, 1, 1, 1))
    log.append(ents(2, 2, start=3))
    truncate_from, batch = log.take_unstable()
    assert truncate_from == 3
    log.store.truncate_suffix(LogIndex(3))
    log.store.append(batch)  # the driver's write of the first batch
    log.append(ents(3, start=2))  # meanwhile a newer leader's entries reach back to 2
    assert log.truncated_from == 2
    log.stable_to(batch[-1].index, batch[-1].term)  # advance() for the first batch
    assert log.take_unstable() == (None, ents(3, start=2))  # the point 2 is gone...
    persist(log)
    assert terms_of(log.store.entries(LogIndex(1), LogIndex(log.store.last_index() + 1))) == [1, 3]  # ...harmlessly


def test_stable_to_ignores_a_replaced_tail_and_older_indexes() -> None:
    log = ReplicatedLog()
    log.append(ents(1, 1))
    _, batch = log.take_unstable()
    log.store.append(batch)
    log.append(ents(2, start=2))  # replaced while the driver was writing
    log.stable_to(LogIndex(2), Term(1))
    assert log.unstable_offset == 1 and terms_of(log.unstable) == [1, 2]
    log.stable_to(LogIndex(1), Term(1))
    assert log.unstable_offset == 2 and terms_of(log.unstable) == [2]
    log.stable_to(LogIndex(1), Term(1))  # below the offset: nothing to do
    assert log.unstable_offset == 2


def test_truncate() -> None:
    log = ReplicatedLog(stored(1, 1, 1, commit=1))
    log.append(ents(1, start=4))
    log.truncate(LogIndex(9))  # beyond the end: nothing
    assert log.last_index() == 4
    log.truncate(LogIndex(4))  # only the unstable tail
    assert log.last_index() == 3 and log.truncated_from is None
    log.truncate(LogIndex(3))  # into the store
    assert log.last_index() == 2 and log.truncated_from == 3
    with pytest.raises(LogInvariantError):
        log.truncate(LogIndex(1))
    persist(log)
    assert log.store.last_index() == 2


# --- ReplicatedLog: terms, conflicts, commit, apply ------------------------------------------


def test_term_at_matches_and_up_to_date() -> None:
    log = ReplicatedLog(stored(1, 1, 2))
    log.append(ents(3, start=4))
    assert [log.term_at(LogIndex(i)) for i in range(5)] == [0, 1, 1, 2, 3]
    assert log.matches(LogIndex(3), Term(2)) and not log.matches(LogIndex(3), Term(1))
    assert not log.matches(LogIndex(9), Term(3))
    assert log.is_up_to_date(LogIndex(1), Term(4))  # higher last term wins
    assert log.is_up_to_date(LogIndex(4), Term(3)) and log.is_up_to_date(LogIndex(5), Term(3))
    assert not log.is_up_to_date(LogIndex(3), Term(3))  # same term, shorter
    assert not log.is_up_to_date(LogIndex(9), Term(2))  # lower term, however long


def test_find_conflict() -> None:
    log = ReplicatedLog(stored(1, 1, 2, 2))
    assert log.find_conflict([]) == 0
    assert log.find_conflict(ents(1, 1, 2)) == 0
    assert log.find_conflict(ents(2, 2, start=3)) == 0
    assert log.find_conflict(ents(1, 3, start=2)) == 3
    assert log.find_conflict(ents(2, 2, 5, start=3)) == 5  # new entries start at 5


def test_find_conflict_treats_compacted_entries_as_matching() -> None:
    s = stored(1, 1, 2, 2)
    s.compact(SnapshotMeta(LogIndex(3), Term(2)))
    log = ReplicatedLog(s)
    assert log.find_conflict(ents(1, 1, 2, 2, 3)) == 5
    assert log.find_conflict(ents(9, 9, 2, 2)) == 0  # below the snapshot: committed, so matching
    assert log.find_conflict(ents(9, 9, 7)) == 3  # the snapshot point itself is checked


def test_find_conflict_by_term() -> None:
    log = ReplicatedLog(stored(1, 1, 2, 2, 4, 4))
    assert log.find_conflict_by_term(LogIndex(6), Term(4)) == (6, 4)
    assert log.find_conflict_by_term(LogIndex(6), Term(3)) == (4, 2)
    assert log.find_conflict_by_term(LogIndex(6), Term(1)) == (2, 1)
    assert log.find_conflict_by_term(LogIndex(99), Term(2)) == (4, 2)  # clamped to the last index
    assert log.find_conflict_by_term(LogIndex(6), Term(0)) == (0, 0)


def test_find_conflict_by_term_stops_at_the_snapshot() -> None:
    s = stored(1, 1, 2, 2, 4, 4)
    s.compact(SnapshotMeta(LogIndex(3), Term(2)))
    log = ReplicatedLog(s)
    assert log.find_conflict_by_term(LogIndex(6), Term(2)) == (4, 2)
    assert log.find_conflict_by_term(LogIndex(6), Term(3)) == (4, 2)
    assert log.find_conflict_by_term(LogIndex(6), Term(1))[0] == 3


def test_commit_never_lowers_and_never_passes_the_end() -> None:
    log = ReplicatedLog(stored(1, 1, 1))
    assert log.commit(LogIndex(2)) is True and log.commit_index == 2
    assert log.commit(LogIndex(1)) is False and log.commit(LogIndex(2)) is False
    assert log.commit_index == 2
    with pytest.raises(LogInvariantError):
        log.commit(LogIndex(4))
    assert log.commit_index == 2


def test_next_committed_and_applied_to() -> None:
    log = ReplicatedLog(stored(1, 1, 1, 1))
    log.commit(LogIndex(3))
    assert terms_of(log.next_committed()) == [1, 1, 1]
    log.applied_to(LogIndex(2))
    assert [e.index for e in log.next_committed()] == [3]
    log.applied_to(LogIndex(1))  # never lowers
    assert log.last_applied == 2
    with pytest.raises(LogInvariantError):
        log.applied_to(LogIndex(4))
    log.applied_to(LogIndex(3))
    assert log.next_committed() == []


def test_next_committed_size_limit() -> None:
    s = MemoryLogStore()
    s.append(ents(1, 1, 1, data=b"x" * 68))
    log = ReplicatedLog(s)
    log.commit(LogIndex(3))
    assert len(log.next_committed(max_bytes=150)) == 1


# --- ReplicatedLog: snapshots ------------------------------------------------------------------


def test_restore_from_a_leader_snapshot() -> None:
    log = ReplicatedLog(stored(1, 1, 1, commit=1))
    log.append(ents(1, start=4))
    meta = SnapshotMeta(LogIndex(10), Term(3), Membership.of(["a"]))
    log.restore(meta)
    assert log.snapshot_meta() == meta and log.pending_snapshot == meta
    assert (log.first_index(), log.last_index(), log.last_term()) == (11, 10, 3)
    assert log.commit_index == 10 and log.unstable == [] and log.truncated_from is None
    assert log.term_at(LogIndex(10)) == 3
    with pytest.raises(CompactedError):
        log.term_at(LogIndex(9))
    with pytest.raises(UnavailableError):
        log.term_at(LogIndex(11))
    assert log.next_committed() == []
    # The driver installs the snapshot, then the core hears of it.
    log.store.compact(meta)
    log.snapshot_installed(meta)
    assert log.pending_snapshot is None and log.last_applied == 10
    assert (log.first_index(), log.last_index()) == (11, 10)
    log.append(ents(3, start=11))
    persist(log)
    assert log.store.last_index() == 11


def test_restore_then_append_before_the_snapshot_is_installed() -> None:
    log = ReplicatedLog(stored(1, 1))
    log.restore(SnapshotMeta(LogIndex(5), Term(2)))
    log.append(ents(2, 2, start=6))
    assert (log.first_index(), log.last_index()) == (6, 7)
    assert terms_of(log.slice(LogIndex(6), LogIndex(8))) == [2, 2]
    with pytest.raises(UnavailableError):
        log.term_at(LogIndex(8))


def test_snapshot_installed_for_another_snapshot_keeps_the_pending_one() -> None:
    log = ReplicatedLog()
    log.restore(SnapshotMeta(LogIndex(5), Term(2)))
    log.snapshot_installed(SnapshotMeta(LogIndex(3), Term(1)))
    assert log.pending_snapshot is not None and log.pending_snapshot.index == 5


def test_compacted_after_the_driver_compacted_raises_last_applied() -> None:
    log = ReplicatedLog(stored(1, 1, 1, commit=3))
    meta = SnapshotMeta(LogIndex(2), Term(1))
    log.store.compact(meta)
    log.compacted(meta)
    assert log.last_applied == 2 and log.first_index() == 3
    assert [e.index for e in log.next_committed()] == [3]


def test_compacted_writes_nothing_to_the_store() -> None:
    """The node compacts its LMDB store in a worker thread, then tells the core: the core
    must not write the store itself on that path."""
    log = ReplicatedLog(stored(1, 1, 1, commit=3))
    log.compacted(SnapshotMeta(LogIndex(2), Term(1)))
    assert log.store.first_index() == 1 and log.store.snapshot().index == 0


def test_compact_discards_the_entries_through_the_store() -> None:
    log = ReplicatedLog(stored(1, 1, 2, 2, commit=3, membership=Membership.of(["a"])))
    meta = SnapshotMeta(LogIndex(3), Term(2), Membership.of(["a"]))
    log.compact(meta)
    assert (log.first_index(), log.last_index()) == (4, 4)
    assert log.snapshot_meta() == meta and log.store.snapshot() == meta
    assert log.last_applied == 3 and log.term_at(LogIndex(3)) == 2
    with pytest.raises(CompactedError):
        log.slice(LogIndex(3), LogIndex(4))
    with pytest.raises(CompactedError):
        log.store.entries(LogIndex(1), LogIndex(2))
    assert terms_of(log.slice(LogIndex(4), LogIndex(5))) == [2]
    log.compact(SnapshotMeta(LogIndex(2), Term(1)))  # already covered: nothing happens
    assert log.first_index() == 4 and log.snapshot_meta() == meta


@pytest.mark.parametrize(
    "index,term,why",
    [(5, 3, "only 4 is committed"), (6, 3, "only 4 is committed"), (2, 2, "the entry's term is 1")],
)
def test_compact_refuses_what_it_cannot_vouch_for(index: int, term: int, why: str) -> None:
    log = ReplicatedLog(stored(1, 1, 2, 2, commit=4))
    log.append(ents(3, start=5))
    with pytest.raises(LogInvariantError, match=why):
        log.compact(SnapshotMeta(LogIndex(index), Term(term)))
    assert log.first_index() == 1 and log.store.snapshot().index == 0


def test_compact_waits_for_a_received_snapshot() -> None:
    log = ReplicatedLog(stored(1, 1, commit=2))
    log.restore(SnapshotMeta(LogIndex(5), Term(2)))
    with pytest.raises(LogInvariantError, match="received snapshot"):
        log.compact(SnapshotMeta(LogIndex(6), Term(2)))


def test_compact_refuses_unpersisted_entries() -> None:
    log = ReplicatedLog(stored(1, commit=1))
    log.append(ents(1, start=2))
    log.commit(LogIndex(2))
    with pytest.raises(LogInvariantError, match="store holds entries up to 1"):
        log.compact(SnapshotMeta(LogIndex(2), Term(1)))
    log.compact(SnapshotMeta(LogIndex(1), Term(1)))
    assert log.first_index() == 2 and log.last_index() == 2


# --- a model check ------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 8), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
        st.tuples(st.just("persist"), st.just(0), st.just([])),
        st.tuples(st.just("commit"), st.integers(0, 12), st.just([])),
        st.tuples(st.just("truncate"), st.integers(0, 12), st.just([])),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_log_agrees_with_a_list_model(script: list[tuple[str, int, list[int]]]) -> None:
    """Random appends (with conflicts), truncations, persists and commits: the log's view is
    always the model's list of terms, and after a persist so is the store."""
    log = ReplicatedLog()
    model: list[int] = []  # model[i] is the term of index i + 1
    for op, arg, bumps in script:
        commit = int(log.commit_index)
        if op == "append":
            at = commit + 1 + arg % (len(model) - commit + 1)  # commit < at <= last + 1
            prev = model[at - 2] if at > 1 else 1
            terms = []
            for b in bumps:  # terms never decrease along a log
                prev += b
                terms.append(prev)
            log.append(ents(*terms, start=at))
            model[at - 1 :] = terms
        elif op == "persist":
            persist(log)
            assert terms_of(log.store.entries(LogIndex(1), LogIndex(len(model) + 1))) == model
        elif op == "commit":
            target = min(arg, len(model))
            log.commit(LogIndex(target))
            assert log.commit_index == max(commit, target)
        else:
            if arg <= commit:
                with pytest.raises(LogInvariantError):
                    log.truncate(LogIndex(arg))
            else:
                log.truncate(LogIndex(arg))
                del model[arg - 1 :]
        assert log.last_index() == len(model)
        assert [int(log.term_at(LogIndex(i))) for i in range(1, len(model) + 1)] == model
        if model:
            assert terms_of(log.slice(LogIndex(1), LogIndex(len(model) + 1))) == model
