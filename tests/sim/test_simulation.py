"""CI runs 500 seeds across the scenarios; `python -m tests.sim.run` runs thousands."""

from __future__ import annotations

import pytest

from aegis.log import LogInvariantError
from aegis.raft import RaftConfig

from .scenarios import run
from .simulator import SafetyViolation, Simulation

# (scenario, first seed, count): 525 seeds in all.
PLAN = [("default", 0, 175), ("five", 0, 50), ("harsh", 0, 75), ("members", 0, 50), ("churn", 0, 100),
        ("reads", 0, 75)]
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


def test_checker_catches_counting_replicas_of_an_old_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figure 8: commit an old-term entry by counting and the churn scenario loses it."""
    from aegis.log import LogIndex
    from aegis.raft import RaftNode

    def naive_commit(self: RaftNode) -> bool:
        voters = self.membership.voters
        matches = sorted(self.progress[n].match_index if n in self.progress else LogIndex(0) for n in voters)
        candidate = matches[len(matches) - self.quorum()]
        if candidate <= self.log.commit_index:
            return False
        self.log.commit(candidate)  # no check that the entry is of the current term
        self._after_commit()
        return True

    monkeypatch.setattr(RaftNode, "_maybe_commit", naive_commit)
    with pytest.raises(SafetyViolation, match="lacks committed entry"):
        for seed in range(40):
            run("churn", seed)


def test_checker_catches_stale_read_answers_across_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """If read request numbers restarted at the same value in every incarnation, a delayed
    ReadIndex answer meant for a node's previous life would serve a stale read."""
    import aegis.raft

    monkeypatch.setattr(aegis.raft, "_read_ctx_base", lambda seed, node_id: 0)
    with pytest.raises(SafetyViolation, match="not linearizable"):
        for seed in range(40):
            run("reads", seed)


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
