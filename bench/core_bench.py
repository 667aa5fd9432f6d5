"""Throughput of the Raft core: a simulated 3-node cluster, batched proposals, no faults.

Three `RaftNode`s, each with a `MemoryLogStore`, pass messages to each other directly in
memory (no codec, no transport). Every round the leader proposes a batch of `Command.set`
payloads (~100 bytes each); the network then runs until it is quiet, every node persisting,
sending and applying through its Ready cycle exactly as a driver must. The figure is
entries committed on the leader *and* applied on every node per second of CPU time
(`time.process_time()`), printed as the last line: ``core: N entries/s``.

    python bench/core_bench.py                  # 200,000 entries, batches of 256
    python bench/core_bench.py --entries 50000 --batch 64
    python bench/core_bench.py --state-machine  # also apply to a StateMachine
    python bench/core_bench.py --profile        # cProfile the run, top functions to stderr

Snapshots are off (threshold above the run length): this measures replication, not
compaction.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import deque
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis.log import LogIndex, Membership, MemoryLogStore  # noqa: E402
from aegis.messages import RaftMessage  # noqa: E402
from aegis.raft import RaftConfig, RaftNode  # noqa: E402
from aegis.state import Command, StateMachine  # noqa: E402

IDS = ("n1", "n2", "n3")


class BenchNode:
    """One node and its driver: the Ready cycle of tests/sim/simulator.py, minus faults."""

    def __init__(self, node_id: str, config: RaftConfig, use_sm: bool) -> None:
        self.store = MemoryLogStore(Membership.of(IDS))
        self.raft = RaftNode(node_id, config, self.store)
        self.sm = StateMachine() if use_sm else None
        self.applied = 0

    def cycle(self, out: deque[RaftMessage]) -> None:
        raft, store, sm = self.raft, self.store, self.sm
        while raft.has_ready():
            rd = raft.ready()
            rd.persist_to(store)
            out.extend(rd.messages)
            committed = rd.committed_entries
            if committed:
                if sm is not None:
                    for e in committed:
                        sm.apply_entry(e)
                self.applied = committed[-1].index
            raft.advance(rd)


def payloads(batch: int, size: int = 100) -> list[bytes]:
    """Distinct SET commands whose encoded payload is about `size` bytes."""
    out = []
    for i in range(batch):
        key = f"key:{i:08d}"
        probe = Command.set(key, b"").encode()
        out.append(Command.set(key, b"v" * max(0, size - len(probe))).encode())
    return out


def run(entries: int, batch: int, use_sm: bool) -> tuple[int, float]:
    """Returns (entries applied everywhere, CPU seconds)."""
    config = RaftConfig(
        election_timeout_min=10,
        election_timeout_max=20,
        heartbeat_interval=2,
        snapshot_threshold=1 << 62,
        seed=1,
    )
    nodes = {nid: BenchNode(nid, config, use_sm) for nid in IDS}
    queue: deque[RaftMessage] = deque()

    def pump() -> None:
        for n in nodes.values():
            n.cycle(queue)
        while queue:
            m = queue.popleft()
            target = nodes[m.receiver]
            target.raft.step(m)
            target.cycle(queue)

    leader = nodes["n1"]
    leader.raft.start_election()
    pump()
    assert leader.raft.is_leader(), "n1 did not win the election"
    base = int(leader.raft.commit_index)  # the leader's no-op
    target = base + entries
    data = payloads(batch)

    start = time.process_time()
    proposed = base
    while min(n.applied for n in nodes.values()) < target:
        if proposed < target:
            chunk = data if target - proposed >= batch else data[: target - proposed]
            leader.raft.propose_batch(chunk)
            proposed += len(chunk)
        pump()
    cpu = time.process_time() - start
    done = min(n.applied for n in nodes.values()) - base
    assert leader.raft.commit_index >= LogIndex(target)
    return done, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=200_000, help="entries to commit (default 200000)")
    p.add_argument("--batch", type=int, default=256, help="proposals per batch (default 256)")
    p.add_argument("--state-machine", action="store_true", help="also apply entries to a StateMachine")
    p.add_argument("--profile", action="store_true", help="cProfile the run; top functions to stderr")
    args = p.parse_args(argv)
    if args.entries < 1 or args.batch < 1:
        p.error("--entries and --batch must be positive")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        done, cpu = run(args.entries, args.batch, args.state_machine)
        prof.disable()
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    else:
        done, cpu = run(args.entries, args.batch, args.state_machine)
    rate = done / cpu if cpu > 0 else float("inf")
    print(f"entries={done} batch={args.batch} cpu={cpu:.3f}s state_machine={args.state_machine}")
    print(f"core: {rate:,.0f} entries/s".replace(",", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
