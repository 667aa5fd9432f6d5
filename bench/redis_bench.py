"""Throughput of a local 3-node cluster under redis-benchmark, against the leader and a follower.

    python bench/redis_bench.py [--requests 100000] [--clients 50] [--pipeline 16] [--fsync always]

Starts three `aegis serve` processes on free 127.0.0.1 ports with a fresh data directory,
waits for a leader, runs `redis-benchmark -t set,get -c C -P P -n N` against the leader and
against a follower, prints one line per run, and stops every process it started.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def info(port: int) -> dict[str, str]:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO"], capture_output=True, text=True, timeout=10)
    return dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--fsync", choices=["always", "never"], default="always")
    args = p.parse_args()
    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark not found: apt-get install redis-tools", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    ports = {f"n{i}": free_port() for i in (1, 2, 3)}
    peers = ",".join(f"{n}=127.0.0.1:{port}" for n, port in ports.items())
    procs = []
    try:
        for n, port in ports.items():
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", n,
                 "--listen", f"127.0.0.1:{port}", "--data", str(root / n), "--peers", peers,
                 "--fsync", args.fsync],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        leader = None
        deadline = time.monotonic() + 20
        while leader is None and time.monotonic() < deadline:
            time.sleep(0.2)
            for n, port in ports.items():
                try:
                    if info(port).get("role") == "leader":
                        leader = n
                except (subprocess.SubprocessError, ValueError):
                    pass
        if leader is None:
            print("no leader elected", file=sys.stderr)
            return 1
        follower = next(n for n in ports if n != leader)
        for who, node in (("leader", leader), ("follower", follower)):
            out = subprocess.run(
                ["redis-benchmark", "-p", str(ports[node]), "-t", "set,get", "-c", str(args.clients),
                 "-P", str(args.pipeline), "-n", str(args.requests), "-q", "--csv"],
                capture_output=True, text=True, timeout=600)
            for line in out.stdout.splitlines():
                cells = [c.strip('"') for c in line.split(",")]
                if cells and cells[0] in ("SET", "GET"):
                    print(f"{who:8} {cells[0]}: {float(cells[1]):>10,.0f} requests/s  p50 {cells[5]} ms  "
                          f"(redis-benchmark -t set,get -c {args.clients} -P {args.pipeline} -n {args.requests}, "
                          f"fsync {args.fsync})")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
