"""aegis.space: the leader's write admission against the space still free."""

from __future__ import annotations

from aegis.space import SpaceGuard, frees_space
from aegis.state import Command


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(free: list[int], changes: list[tuple[bool, str]]) -> tuple[SpaceGuard, Clock]:
    clock = Clock()
    g = SpaceGuard(lambda: free[0], 1000, interval=1.0, clock=clock,
                   on_change=lambda full, why: changes.append((full, why)))
    return g, clock


def test_writes_pass_while_the_reserve_stays_free_then_are_refused_with_one_line() -> None:
    free, changes = [10_000], []
    g, _ = guard(free, changes)
    w = Command.set("k", b"v" * 100).encode()
    assert g.refusal([w]) is None
    free[0] = 1_100
    g.forget()
    why = g.refusal([w])
    assert why is not None and why.startswith("DISKFULL") and "nothing was written" in why and "\n" not in why
    for _ in range(50):
        assert g.refusal([w]) is not None
    assert [full for full, _ in changes] == [True]  # one transition, one log line
    assert g.refused == 51


def test_what_was_proposed_since_the_measurement_counts_against_it() -> None:
    free, changes = [100_000], []
    g, _ = guard(free, changes)
    w = Command.set("k", b"v" * 10_000).encode()
    accepted = 0
    while g.refusal([w]) is None:
        accepted += 1
        assert accepted < 100
    assert 1 <= accepted <= 6  # each costs its share in the log and in the state


def test_the_state_share_is_forgotten_only_after_a_later_flush() -> None:
    free, changes = [100_000], []
    g, _ = guard(free, changes)
    w = Command.set("k", b"v" * 10_000).encode()
    assert g.refusal([w]) is None
    after_one = g.room()
    g.flush_taken()
    g.flush_done(True)
    assert g.room() < free[0]  # the flush just done may not have held it
    g.flush_taken()
    g.flush_done(True)
    assert g.room() == free[0] > after_one


def test_deletes_pass_when_full_and_space_coming_back_needs_twice_the_reserve() -> None:
    free, changes = [500], []
    g, clock = guard(free, changes)
    assert g.refusal([Command.set("k", b"v").encode()]) is not None
    assert g.refusal([Command.delete("k").encode()]) is None
    assert g.refusal([Command.op("PURGE", "k").encode()]) is None
    free[0] = 1_500
    clock.now += 2
    assert g.refusal([Command.set("k", b"v").encode()]) is not None  # not yet: 2x the reserve
    free[0] = 5_000
    clock.now += 2
    assert g.refusal([Command.set("k", b"v").encode()]) is None
    assert [full for full, _ in changes] == [True, False]


def test_frees_space() -> None:
    assert frees_space(Command.delete("a").encode())
    assert not frees_space(Command.set("a", b"1").encode())
    assert not frees_space(b"\xc1garbage")
