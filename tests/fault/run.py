"""One fault run: a cluster behind proxies, client workers, the nemesis, then the verdict.

    python -m tests.fault [--seconds 60] [--seed N] [--nodes 3] [--faults kill,pause,...]
                          [--clients 6] [--keys 4] [--key-seconds 10] [--keep]

The run starts `--nodes` real `aegis serve` processes with every peer link behind its own
proxy, starts the workers and the nemesis, and after `--seconds` stops the nemesis, heals
everything (resumes, restarts, reconnects, undelays), stops the workers, waits for a
leader and reads every key from every node. The whole history, final reads included, goes
to the linearizability checker. The run fails (exit 1) on a violation, an inconclusive
check, a node that does not recover, a node that crashed on its own, or a traceback in a
node's log. It prints the seed and the command that replays its fault schedule.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.e2e.harness import LocalCluster

from .linearizability import CheckResult, check
from .nemesis import KINDS, Event, Nemesis
from .workload import History, Tally, Worker, final_reads


@dataclasses.dataclass
class Config:
    seconds: float = 60.0
    seed: int | None = None
    nodes: int = 3
    faults: list[str] = dataclasses.field(default_factory=lambda: list(KINDS))
    clients: int = 6
    keys: int = 4
    key_seconds: float = 10.0
    snapshot_threshold: int = 500
    recover_seconds: float = 60.0
    keep: bool = False
    quiet: bool = False

    def replay(self) -> str:
        return (f"python -m tests.fault --seconds {self.seconds:g} --seed {self.seed} --nodes {self.nodes} "
                f"--faults {','.join(self.faults) or 'none'} --clients {self.clients} --keys {self.keys} "
                f"--key-seconds {self.key_seconds:g}")


@dataclasses.dataclass
class Summary:
    config: Config
    tally: Tally
    faults: dict[str, int]
    events: list[Event]
    dropped_connections: int
    check: CheckResult | None
    unrecovered: dict[str, list[str]]
    crashed: list[str]
    log_errors: list[str]
    nemesis_error: str | None
    keys_used: int
    ops_checked: int
    check_seconds: float
    root: Path
    t0: float

    @property
    def verdict(self) -> str:
        return self.check.verdict if self.check is not None else "not checked"

    @property
    def ok(self) -> bool:
        return (self.verdict == "ok" and not self.unrecovered and not self.crashed and not self.log_errors
                and self.nemesis_error is None)

    def text(self) -> str:
        t, c = self.tally, self.config
        lines = [
            f"seed {c.seed}: {c.nodes} nodes, {c.seconds:g} s, {c.clients} clients, {c.keys} keys "
            f"(fresh ones every {c.key_seconds:g} s, {self.keys_used} in all)",
            f"ops: {t.ok} ok, {t.failed} failed, {t.unknown} unknown",
        ]
        for kind, (ok, failed, unknown) in sorted(t.by_kind.items()):
            lines.append(f"  {kind:9} {ok:7} ok {failed:7} failed {unknown:7} unknown")
        if t.errors:
            for side in ("writes", "reads"):
                errs = sorted(((k.split(" ", 1)[1], v) for k, v in t.errors.items() if k.startswith(side)),
                              key=lambda kv: -kv[1])
                if errs:
                    lines.append(f"{side} failed with: " + ", ".join(f"{k} {v}" for k, v in errs))
        for sample in t.unexpected:
            lines.append(f"  unexpected -ERR: {sample}")
        lines.append("faults injected: " + (", ".join(f"{k} {v}" for k, v in self.faults.items()) or "none")
                     + (f" ({self.dropped_connections} peer connections reset)" if self.dropped_connections else ""))
        if self.nemesis_error:
            lines.append(f"NEMESIS FAILED: {self.nemesis_error}")
        for crash in self.crashed:
            lines.append(f"CRASHED: {crash}")
        for nid, keys in sorted(self.unrecovered.items()):
            lines.append(f"NOT RECOVERED: {nid} served no read of {len(keys)} keys (e.g. {keys[0]}) after the heal")
        for excerpt in self.log_errors:
            lines.append("LOG ERROR:\n" + excerpt)
        if self.check is not None:
            lines.append(f"checked {self.ops_checked} ops on {len(self.check.keys)} keys in {self.check_seconds:.1f} s")
            if not self.check.ok:
                lines.append(self.check.report(self.t0))
        lines.append(f"verdict: {self.verdict}" + ("" if self.ok or self.verdict != "ok" else " (but see above)"))
        lines.append(f"replay (same seed, same fault schedule): {c.replay()}")
        if not self.ok or c.keep:
            lines.append(f"data and node logs kept in {self.root}")
        return "\n".join(lines)


_LOG_ERROR = re.compile(r"^Traceback \(most recent call last\):|^\S+ \S+ (ERROR|CRITICAL) ", re.M)


def scan_logs(cluster: LocalCluster, limit: int = 3) -> list[str]:
    """Excerpts of the tracebacks and ERROR/CRITICAL lines in the nodes' logs (a node under
    faults must log neither: they mean a task crashed or an invariant broke)."""
    out: list[str] = []
    for nid, node in sorted(cluster.nodes.items()):
        if not node.log.exists():
            continue
        text = node.log.read_text(errors="replace")
        for m in _LOG_ERROR.finditer(text):
            if len(out) >= limit:
                return out
            start = text.rfind("\n", 0, max(0, m.start() - 1)) + 1
            out.append(f"--- {nid} ({node.log})\n" + text[start:m.start() + 2500].rstrip())
    return out


def run(config: Config) -> Summary:
    if config.seed is None:
        config.seed = random.SystemRandom().randrange(1, 10**6)
    if config.nodes < 1 or config.clients < 1 or config.keys < 1 or config.seconds <= 0:
        raise ValueError("--nodes, --clients, --keys and --seconds must be positive")
    root = Path(tempfile.mkdtemp(prefix=f"aegis-fault-{config.seed}-"))
    say = (lambda text: None) if config.quiet else (lambda text: print(text, flush=True))
    say(f"fault run: seed {config.seed}, {config.nodes} nodes, {config.seconds:g} s, faults "
        f"{','.join(config.faults) or 'none'}; data in {root}")
    cluster = LocalCluster(root, config.nodes, proxies=True, snapshot_threshold=config.snapshot_threshold,
                           fault_seed=config.seed)
    history = History()
    stop_workers, stop_nemesis = threading.Event(), threading.Event()
    nemesis: Nemesis | None = None
    workers: list[Worker] = []
    unrecovered: dict[str, list[str]] = {}
    log_errors: list[str] = []
    t0 = time.monotonic()
    gens = 0
    try:
        cluster.start()
        cluster.leader(timeout=30)
        t0 = time.monotonic()
        ports = {nid: node.port for nid, node in cluster.nodes.items()}
        values = itertools.count(1)
        workers = [Worker(i, ports, history, stop_workers, seed=config.seed, keys=config.keys,
                          key_seconds=config.key_seconds, t0=t0, values=values) for i in range(config.clients)]
        nemesis = Nemesis(cluster, config.faults, config.seed, stop_nemesis, t0, log=not config.quiet)
        for w in workers:
            w.start()
        if config.faults:
            nemesis.start()
        stop_nemesis.wait(config.seconds)
        stop_nemesis.set()
        if nemesis.is_alive():
            nemesis.join()  # the current fault ends, then everything is healed
        else:
            nemesis.heal_all()
        say(f"[{time.monotonic() - t0:7.2f}s] healed; stopping the clients")
        stop_workers.set()
        for w in workers:
            w.join(timeout=30)
        gens = int((time.monotonic() - t0) / config.key_seconds) + 1
        keys = [f"f{g}.{k}" for g in range(gens) for k in range(config.keys)]
        try:
            cluster.leader(timeout=config.recover_seconds)
        except AssertionError:
            pass  # the final reads say which nodes do not serve
        say(f"[{time.monotonic() - t0:7.2f}s] reading {len(keys)} keys from every node")
        unrecovered = final_reads(ports, keys, history, deadline=time.monotonic() + config.recover_seconds)
        nemesis.check_crashed()
    finally:
        stop_nemesis.set()
        stop_workers.set()
        cluster.stop_all()
    log_errors = scan_logs(cluster)
    say(f"checking {len(history.ops)} ops")
    started = time.perf_counter()
    result = check(history.ops)
    summary = Summary(
        config=config, tally=history.tally, faults=dict(nemesis.counts) if nemesis else {},
        events=list(nemesis.events) if nemesis else [], dropped_connections=nemesis.dropped if nemesis else 0,
        check=result, unrecovered=unrecovered, crashed=list(nemesis.crashed) if nemesis else [],
        log_errors=log_errors, nemesis_error=repr(nemesis.error) if nemesis and nemesis.error else None,
        keys_used=gens * config.keys, ops_checked=len(history.ops), check_seconds=time.perf_counter() - started,
        root=root, t0=t0,
    )
    if summary.ok and not config.keep:
        shutil.rmtree(root, ignore_errors=True)
    return summary


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m tests.fault", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="how long the nemesis runs (default 60)")
    p.add_argument("--seed", type=int, default=None, help="the nemesis's and the workers' seed (default: random)")
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--faults", default=",".join(KINDS),
                   help=f"comma list of fault kinds, or 'none' (default: all of {','.join(KINDS)})")
    p.add_argument("--clients", type=int, default=6, help="concurrent client workers (default 6)")
    p.add_argument("--keys", type=int, default=4, help="keys in use at a time (default 4)")
    p.add_argument("--key-seconds", type=float, default=10.0,
                   help="move to fresh keys this often, to keep each key's history short (default 10)")
    p.add_argument("--keep", action="store_true", help="keep the data directories and logs even on success")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    a = p.parse_args(argv)
    faults = [] if a.faults in ("", "none") else [f.strip() for f in a.faults.split(",") if f.strip()]
    bad = sorted(set(faults) - set(KINDS))
    if bad:
        p.error(f"unknown fault kinds {bad}; choose from {', '.join(KINDS)}")
    for name in ("seconds", "nodes", "clients", "keys", "key_seconds"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return Config(seconds=a.seconds, seed=a.seed, nodes=a.nodes, faults=faults, clients=a.clients, keys=a.keys,
                  key_seconds=a.key_seconds, keep=a.keep, quiet=a.quiet)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    summary = run(config)
    print(summary.text(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
