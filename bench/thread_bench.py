"""What handing one call to a worker thread costs: trio.to_thread.run_sync against aegis.worker.run_sync.

    python bench/thread_bench.py [--calls 20000] [--rounds 2]

Runs a trivial function in a worker thread `--calls` times in a row with each, alternating,
and prints the wall time and the process's CPU time (user+sys) per call.
"""

from __future__ import annotations

import argparse
import os
import time

import trio

from aegis import worker


def nothing() -> int:
    return 1


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def main(calls: int, rounds: int) -> None:
    for _ in range(rounds):
        for name, run in (("trio.to_thread.run_sync", trio.to_thread.run_sync), ("aegis.worker.run_sync", worker.run_sync)):
            c0, t0 = cpu(), time.perf_counter()
            for _ in range(calls):
                await run(nothing)
            wall, used = time.perf_counter() - t0, cpu() - c0
            print(f"{name:24} {wall / calls * 1e6:6.1f} µs wall, {used / calls * 1e6:6.1f} µs CPU per call")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    trio.run(main, a.calls, a.rounds)
