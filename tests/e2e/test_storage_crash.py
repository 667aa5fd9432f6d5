"""Crash test with real processes: kill -9 a writer at random moments, reopen, check.

A child (storage_crash_child.py) appends batches, rewrites uncommitted tails with a higher
term, and installs snapshots, printing each write before it starts and after the store
acknowledged it. The parent kills it with SIGKILL at seeded random moments (during start-up
and open, during compression, during fsync, during a snapshot), then reopens the store
and checks:

* every acknowledged entry is present and byte-identical (or covered by the snapshot);
* the write in flight at the kill is there entirely or not at all;
* the hard state is the acknowledged one or the in-flight one, and never goes backwards;
* the snapshot is at least the last acknowledged one, and its bytes verify.

Replay a failure with AEGIS_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aegis.log import LogIndex
from storage import LmdbStore

sys.path.insert(0, str(Path(__file__).parent))
from storage_crash_child import NODE, make_entry, snapshot_data  # noqa: E402

CHILD = Path(__file__).with_name("storage_crash_child.py")
REPO = Path(__file__).resolve().parents[2]
KILLS = 50


@dataclass
class Expected:
    """What the store must hold: acknowledged state, plus what was in flight at the kill."""

    terms: dict[int, int] = field(default_factory=dict)  # index -> term of acknowledged entries
    hard: tuple[int, int] = (0, 0)  # (term, commit) acknowledged
    snap: int = 0  # acknowledged snapshot index
    acked_writes: int = 0

    def apply_batch(self, lo: int, hi: int, term: int, commit: int) -> None:
        for i in [i for i in self.terms if i >= lo]:
            del self.terms[i]
        self.terms.update((i, term) for i in range(lo, hi + 1))
        self.hard = (term, commit)


def parse(out: str) -> list[list[str]]:
    lines = out.split("\n")
    return [ln.split() for ln in lines[:-1] if ln]  # the last piece may be a torn line


def run_child(directory: Path, seed: int, delay: float, wait_ready: bool, log: Path) -> list[list[str]]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(directory), str(seed)],
            stdout=out,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        if wait_ready:
            deadline = time.monotonic() + 20
            while b"READY" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"child did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is not None:
            raise AssertionError(f"child died by itself: {proc.stderr.read().decode() if proc.stderr else ''}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    return parse(log.read_text())


def check(directory: Path, events: list[list[str]], exp: Expected) -> tuple[Expected, str]:
    """Check the reopened store against the acknowledged writes; return the new baseline."""
    inflight: list[str] | None = None
    for ev in events:
        kind, args = ev[0], [int(x) for x in ev[1:]]
        if kind in ("B", "P"):
            inflight = ev
        elif kind == "A":
            exp.apply_batch(args[0], args[1], args[2], args[3])
            exp.acked_writes += 1
            inflight = None
        elif kind == "S":
            exp.snap = args[0]
            exp.acked_writes += 1
            inflight = None

    with LmdbStore.open(directory, node_id=NODE, create=False) as store:
        hs, _ = store.initial_state()
        first, last = store.first_index(), store.last_index()
        info = store.snapshot_info()
        snap_index = info.index if info is not None else 0

        # the snapshot: at least the acknowledged one, exactly its bytes
        assert snap_index >= exp.snap
        if snap_index > exp.snap:
            assert inflight is not None and inflight[0] == "P" and int(inflight[1]) == snap_index
        if info is not None:
            reader = store.open_snapshot()
            assert reader is not None and reader.read_all() == snapshot_data(snap_index)
            assert store.snapshot().index == snap_index and first == snap_index + 1

        # the log: the acknowledged entries, or those plus the whole in-flight batch
        landed = False
        if inflight is not None and inflight[0] == "B":
            lo, hi, term, commit = (int(x) for x in inflight[1:5])
            # the batch's first entry is new (a new index, or a higher term): it landed, and
            # then the checks below demand all of it
            landed = last >= lo and store.term(LogIndex(lo)) == term and exp.terms.get(lo) != term
            if landed:
                exp.apply_batch(lo, hi, term, commit)
        want_last = max(exp.terms) if exp.terms else 0
        assert last == max(want_last, snap_index), f"last index {last}, expected {want_last} (landed={landed})"
        got = store.entries(first, LogIndex(last + 1))
        assert got == [make_entry(i, exp.terms[i]) for i in range(first, last + 1)]

        # the hard state: acknowledged (or in flight), never backwards
        assert (hs.term, hs.commit_index) == exp.hard, (hs, exp.hard, landed)

        # new baseline: what the store holds now
        exp.terms = {i: t for i, t in exp.terms.items() if i >= first}
        exp.snap = snap_index
    if inflight is None:
        return exp, "between writes"
    if inflight[0] == "P":
        return exp, "snapshot " + ("landed" if snap_index == int(inflight[1]) else "lost")
    return exp, "batch " + ("landed" if landed else "lost")


@pytest.mark.slow
def test_kill_9_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    seed = int(os.environ.get("AEGIS_CRASH_SEED", "20240917"))
    rng = random.Random(seed)
    directory = tmp_path / "store"
    exp = Expected()
    outcomes: dict[str, int] = {}
    prev_hard = (0, 0)
    started = time.monotonic()
    for kill in range(KILLS):
        during_startup = rng.random() < 0.15
        delay = rng.uniform(0.0, 0.15) if during_startup else rng.uniform(0.0, 0.12)
        events = run_child(directory, rng.randrange(1 << 30), delay, not during_startup, tmp_path / "out.txt")
        if not events and not directory.exists():
            continue  # killed before the store was even created
        try:
            exp, outcome = check(directory, events, exp)
        except AssertionError as e:
            raise AssertionError(f"kill {kill} (AEGIS_CRASH_SEED={seed}): {e}") from None
        assert exp.hard >= prev_hard, "hard state went backwards"
        prev_hard = exp.hard
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    elapsed = time.monotonic() - started
    print(f"crash test: {KILLS} kills in {elapsed:.1f}s, {exp.acked_writes} acknowledged writes, {outcomes}")
    assert exp.acked_writes > 5 * KILLS  # the kills did land in the middle of real work
