"""CI runs 500 seeds across the scenarios; `python -m tests.sim.run` runs thousands."""

from __future__ import annotations

import pytest

from aegis.log import LogInvariantError
from aegis.raft import RaftConfig

from .scenarios import run
from .simulator import SafetyViolation, Simulation

# (scenario, first seed, count): 500 seeds in all.
PLAN = [("default", 0, 250), ("five", 0, 80), ("harsh", 0, 100), ("members", 0, 70)]
CHUNK = 25


@pytest.mark.parametrize(
    "name,start",
    [(name, s) for name, first, count in PLAN for s in range(first, first + count, CHUNK)],
)
def test_seeds(name: str, start: int) -> None:
    count = dict((n, c) for n, _, c in PLAN)[name]
    for seed in range(start, min(start + CHUNK, count)):
        sim = run(name, seed)
        assert sim.committed_max() > 0


def test_same_seed_same_run() -> None:
    a = run("harsh", 7)
    b = run("harsh", 7)
    assert a.committed == b.committed and a.now == b.now and a.acked == b.acked


def test_checker_catches_a_vote_restriction_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety checks are not vacuous: break §5.4.1 and the simulator notices."""
    from aegis import log as logmod

    monkeypatch.setattr(logmod.ReplicatedLog, "is_up_to_date", lambda self, i, t: True)
    with pytest.raises(SafetyViolation):
        for seed in range(50):
            run("default", seed)


def test_checker_catches_a_driver_that_ignores_hard_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that drops Ready.hard_state forgets votes across crashes: two leaders."""
    from aegis.log import MemoryLogStore

    monkeypatch.setattr(MemoryLogStore, "set_hard_state", lambda self, hs: None)
    # Either the checker sees two leaders in a term, or a restarting node notices that its
    # log is newer than its stored term.
    with pytest.raises((SafetyViolation, LogInvariantError)):
        for seed in range(200):
            run("harsh", seed)


def test_liveness_after_heal_is_bounded() -> None:
    sim = Simulation(3)
    sim.run(400)
    ticks = sim.stabilise(max_ticks=400)
    assert ticks < 400
    _ = RaftConfig
