"""Run the simulator over many seeds, or replay one.

    python -m tests.sim.run --seed 1234 --scenario harsh     # replay one seed
    python -m tests.sim.run --seeds 0:5000                   # every scenario, 5000 seeds each
"""

from __future__ import annotations

import argparse
import sys
import time

from .scenarios import SCENARIOS, run
from .simulator import SafetyViolation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="replay a single seed")
    p.add_argument("--seeds", default="0:1000", help="range START:END of seeds (default 0:1000)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                   help="scenario(s) to run (default: all)")
    p.add_argument("--ticks", type=int, default=800)
    args = p.parse_args(argv)
    names = args.scenario or sorted(SCENARIOS)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    else:
        lo, _, hi = args.seeds.partition(":")
        seeds = range(int(lo), int(hi))
    failures = 0
    for name in names:
        t0 = time.process_time()
        ok = 0
        for seed in seeds:
            try:
                sim = run(name, seed, args.ticks)
            except SafetyViolation as exc:
                failures += 1
                print(f"FAIL {exc}", flush=True)
                continue
            ok += 1
            if len(seeds) == 1:
                print(f"{name} seed {seed}: ok, committed {sim.committed_max()} entries, "
                      f"{len(sim.acked)} acknowledged, {max(sim.leaders_by_term)} terms")
                print(f"  data checks: {sim.stats}")
        print(f"{name}: {ok} passed, {len(seeds) - ok} failed in {time.process_time() - t0:.1f}s CPU", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
