"""Named fault scenarios for the simulator; `SCENARIOS[name](seed)` builds a Simulation."""

from __future__ import annotations

from typing import Callable

from .simulator import FaultRates, SafetyViolation, Simulation

SCENARIOS: dict[str, Callable[[int], Simulation]] = {
    # three voters, moderate faults, frequent snapshots
    "default": lambda seed: Simulation(seed, n=3),
    # five voters, more loss, partitions and crashes
    "five": lambda seed: Simulation(
        seed, n=5, faults=FaultRates(drop=0.05, duplicate=0.05, max_delay=5, partition_every=60, crash_every=80)
    ),
    # heavy loss, long delays, constant crashes, snapshots every 15 entries
    "harsh": lambda seed: Simulation(
        seed,
        n=3,
        faults=FaultRates(drop=0.1, duplicate=0.1, max_delay=8, partition_every=40, crash_every=50, snapshot_threshold=15),
    ),
    # leader churn: partitions and crashes every few dozen ticks under a heavy write load,
    # so logs diverge across many terms (the ground Figure 8 of the paper grows on); the
    # seed's commands only, one per entry, so the Raft-level schedule stays what it was
    "churn": lambda seed: Simulation(
        seed,
        n=3,
        faults=FaultRates(drop=0.05, duplicate=0.02, max_delay=4, partition_every=12, crash_every=25,
                          restart_after=(5, 30), propose_rate=0.9, snapshot_threshold=1000, read_rate=0.0,
                          batch_rate=0.0, op_rate=0.0),
    ),
    # churn with many linearizable reads on every node: crashes and restarts in one term
    # put delayed ReadIndex answers in front of new incarnations (the seed's commands only)
    "reads": lambda seed: Simulation(
        seed,
        n=3,
        faults=FaultRates(drop=0.05, duplicate=0.02, max_delay=4, partition_every=12, crash_every=25,
                          restart_after=(5, 30), propose_rate=0.5, snapshot_threshold=200, read_rate=0.6,
                          batch_rate=0.0, op_rate=0.0),
    ),
    # expiry under leader churn: most commands are data ops with deadlines of a few dozen
    # ticks, every node's clock is off by up to 30 ms (well within the 100 ms election
    # timeout, as the README assumes), reads on every node, sweeps every 5 ticks
    "ttl": lambda seed: Simulation(
        seed,
        n=3,
        faults=FaultRates(drop=0.05, duplicate=0.02, max_delay=4, partition_every=30, crash_every=40,
                          restart_after=(5, 40), propose_rate=0.5, snapshot_threshold=60, read_rate=0.6,
                          op_rate=0.7, ttl_ms=300, clock_skew=30, purge_every=5, purge_limit=3),
    ),
    # learners, promotions, removals and re-adds while faults happen
    "members": lambda seed: Simulation(seed, n=3, learners=2, faults=FaultRates(membership_changes=True)),
}


def replay_line(name: str, seed: int, ticks: int = 800) -> str:
    extra = "" if ticks == 800 else f" --ticks {ticks}"
    return f"python -m tests.sim.run --scenario {name} --seed {seed}{extra}"


def run(name: str, seed: int, ticks: int = 800) -> Simulation:
    """Run one seed of a scenario. Any failure, a safety check or an exception from the code
    under test (a `LogInvariantError`, a `KeyError` in the core, ...), raises `SafetyViolation`
    naming the scenario, the seed, the tick and the line that replays it."""
    sim = SCENARIOS[name](seed)
    try:
        sim.run(ticks)
        sim.stabilise()
        sim.final_check()
    except SafetyViolation as exc:
        raise SafetyViolation(f"{name}: {exc}\n  replay: {replay_line(name, seed, ticks)}") from exc
    except Exception as exc:
        raise SafetyViolation(
            f"{name}: seed {seed}, tick {sim.now}: {type(exc).__name__}: {exc}\n"
            f"  replay: {replay_line(name, seed, ticks)}") from exc
    return sim
