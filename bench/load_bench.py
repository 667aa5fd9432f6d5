"""Bulk load, memory and restart time of a local 3-node cluster (for people, not CI).

    python bench/load_bench.py [--keys 1000000] [--value-size 100] [--keep]

Starts three `aegis serve` processes (fsync always, the default) on free 127.0.0.1 ports with
a fresh data directory under a temp dir, waits for a leader, and then:

1. writes N `SET key:000000000123 <value>` commands in RESP form to a file and times
   `redis-cli -p LEADER --pipe < file` (checks its "errors: 0, replies: N"); reports wall
   time, writes/s and the nodes' CPU time (utime+stime from /proc/PID/stat, summed over the
   three nodes) per write;
2. waits until every node's INFO `applied_index` reaches the leader's `commit_index`, then
   reports each node's RssAnon (/proc/PID/status), INFO `keys:` and data directory size;
3. restarts a follower with SIGTERM, then one with SIGKILL, and reports the time from spawn
   until it answers PING and until it answers `GET key:000000000001` with the right value.

Prints a results table with the command line used and stops every process it started (by
PID: SIGTERM, then SIGKILL after a timeout) and removes the temp dir (unless --keep).
A quick check: `python bench/load_bench.py --keys 100000`. Needs redis-cli (redis-tools).
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.02


class BenchError(Exception):
    """The benchmark cannot go on (the message says why)."""


# ---------------------------------------------------------------------- a minimal RESP client
class RespError(Exception):
    """An error reply (-ERR …) from the server."""


def _read_line(f: IO[bytes]) -> bytes:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    return line[:-2]


def _read_reply(f: IO[bytes]) -> object:
    line = _read_line(f)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed mid-reply")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def command(port: int, *args: str | bytes, timeout: float = 5.0) -> object:
    """Send one command on a fresh connection and return the decoded reply (raises OSError,
    ConnectionError, RespError)."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(msg)
        with s.makefile("rb") as f:
            return _read_reply(f)


def info(port: int, timeout: float = 5.0) -> dict[str, str]:
    text = command(port, "INFO", timeout=timeout)
    if not isinstance(text, bytes):
        raise ConnectionError(f"INFO returned {text!r}")
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)


# ---------------------------------------------------------------------- /proc
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_anon_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no RssAnon in /proc/{pid}/status")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ---------------------------------------------------------------------- the cluster
@dataclass
class NodeProc:
    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Cluster:
    root: Path
    nodes: dict[str, NodeProc] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)  # everything we spawned

    def spawn(self, node: NodeProc) -> None:
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(node.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.started.append(node.proc)

    def check_alive(self) -> None:
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is not None:
                raise BenchError(f"{n.name} (pid {n.pid}) exited with code {n.proc.returncode}; "
                                 f"its log ends:\n{tail(n.log)}")

    def leader(self, timeout: float = 30.0) -> NodeProc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            for n in self.nodes.values():
                try:
                    if info(n.port, timeout=2).get("role") == "leader":
                        return n
                except (OSError, ConnectionError, RespError, ValueError):
                    pass
            time.sleep(0.2)
        raise BenchError(f"no leader elected within {timeout:.0f} s")

    def stop_all(self, timeout: float = 10.0) -> None:
        for p in self.started:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.started:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def wait_for(what: str, cond: Callable[[], bool], timeout: float, cluster: Cluster, every: float = 0.2) -> float:
    """Poll `cond` until true; return the seconds it took. Bounded by `timeout`."""
    t0 = time.monotonic()
    while True:
        cluster.check_alive()
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------------- the load
def key(i: int) -> bytes:
    return b"key:%012d" % i


class Values:
    """Each key's value is distinct and known: its 12-digit number, then (unless
    `compressible`) pseudo-random bytes from a seeded pool, so that the storage layer's zstd
    compression does not shrink the load to nothing; with `compressible`, 'x' padding."""

    def __init__(self, size: int, compressible: bool = False, seed: int = 1) -> None:
        self.size = size
        self.rest = max(0, size - 12)
        self.compressible = compressible
        pool_size = max(4 << 20, 8 * self.rest)
        self.pool = b"" if compressible else random.Random(seed).randbytes(pool_size)
        self.span = len(self.pool) - self.rest

    def __call__(self, i: int) -> bytes:
        digits = b"%012d" % i
        if self.size <= 12:
            return digits[12 - self.size:]
        if self.compressible:
            return digits + b"x" * self.rest
        off = (i * 7919) % self.span
        return digits + self.pool[off:off + self.rest]


def write_load(path: Path, n: int, values: Values, chunk: int = 100_000) -> None:
    rec = b"*3\r\n$3\r\nSET\r\n$%d\r\n%%s\r\n$%d\r\n%%s\r\n" % (len(key(0)), values.size)
    with open(path, "wb") as f:
        for start in range(0, n, chunk):
            f.write(b"".join(rec % (key(i), values(i)) for i in range(start, min(n, start + chunk))))


class CpuSampler:
    """Samples the nodes' CPU time every `every` seconds on a thread (keeps the last good
    reading of each PID, so a node that exits mid-run still counts what it used)."""

    def __init__(self, pids: list[int], every: float = 0.5) -> None:
        self.pids = pids
        self.every = every
        self.last: dict[int, float] = {}
        self.peak_pct = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float:
        for pid in self.pids:
            try:
                self.last[pid] = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                pass
        return sum(self.last.values())

    def start(self) -> float:
        first = self._read()
        self._thread.start()
        return first

    def _run(self) -> None:
        prev, t_prev = self._read(), time.monotonic()
        while not self._stop.wait(self.every):
            cur, t = self._read(), time.monotonic()
            self.peak_pct = max(self.peak_pct, 100 * (cur - prev) / max(1e-9, t - t_prev))
            prev, t_prev = cur, t

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        return self._read()


# ---------------------------------------------------------------------- steps
@dataclass
class Restart:
    how: str
    node: str
    stop_s: float
    ping_s: float
    get_s: float
    rss_mb: float


def restart(cluster: Cluster, node: NodeProc, sig: signal.Signals, probe: tuple[bytes, bytes],
            timeout: float) -> Restart:
    assert node.proc is not None
    t0 = time.monotonic()
    node.proc.send_signal(sig)
    try:
        code = node.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{node.name} did not exit within 30 s of {sig.name}") from None
    stop_s = time.monotonic() - t0
    if sig is signal.SIGTERM and code != 0:
        print(f"note: {node.name} exited with code {code} after SIGTERM; log ends:\n{tail(node.log)}",
              file=sys.stderr)
    cluster.spawn(node)
    t_spawn = time.monotonic()
    ping_s: float | None = None
    k, want = probe
    last_err = ""
    while True:
        cluster.check_alive()
        now = time.monotonic()
        if now - t_spawn > timeout:
            raise BenchError(f"{node.name} did not answer GET {k.decode()} correctly within {timeout:.0f} s "
                             f"after restart (last: {last_err}); log ends:\n{tail(node.log)}")
        try:
            if ping_s is None:
                if command(node.port, "PING", timeout=2) == "PONG":
                    ping_s = time.monotonic() - t_spawn
            if ping_s is not None:
                got = command(node.port, "GET", k, timeout=max(2.0, timeout - (now - t_spawn)))
                if got == want:
                    get_s = time.monotonic() - t_spawn
                    break
                last_err = f"GET returned {got!r:.60}"
        except RespError as exc:
            last_err = str(exc)
        except (OSError, ConnectionError) as exc:
            last_err = f"{type(exc).__name__}: {exc}"
        time.sleep(POLL_S)
    return Restart(sig.name, node.name, stop_s, ping_s, get_s, rss_anon_mb(node.pid))


def run(args: argparse.Namespace, root: Path, cluster: Cluster, out: list[str]) -> None:
    names = ("n1", "n2", "n3")
    ports = {n: free_port() for n in names}
    peers = ",".join(f"{n}=127.0.0.1:{ports[n]}" for n in names)
    for name in names:
        argv = [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", name,
                "--listen", f"127.0.0.1:{ports[name]}", "--data", str(root / name), "--peers", peers,
                *args.serve_arg]
        cluster.nodes[name] = NodeProc(name, ports[name], argv, root / f"{name}.log")
    for node in cluster.nodes.values():
        cluster.spawn(node)
    t0 = time.monotonic()
    leader = cluster.leader(timeout=args.start_timeout)
    print(f"leader {leader.name} on port {leader.port} after {time.monotonic() - t0:.1f} s", file=sys.stderr)

    load = root / "load.resp"
    t0 = time.monotonic()
    values = Values(args.value_size, args.compressible)
    write_load(load, args.keys, values)
    gen_s = time.monotonic() - t0
    print(f"generated {args.keys:,} SETs ({load.stat().st_size / 2**20:,.1f} MB) in {gen_s:.1f} s; "
          f"loading via redis-cli --pipe …", file=sys.stderr)

    pids = [n.pid for n in cluster.nodes.values()]
    load_leader = leader.name
    sampler = CpuSampler(pids)
    cpu0 = sampler.start()
    t0 = time.monotonic()
    with open(load, "rb") as stdin:
        try:
            res = subprocess.run(["redis-cli", "-p", str(leader.port), "--pipe"], stdin=stdin,
                                 capture_output=True, text=True, timeout=args.load_timeout)
        except subprocess.TimeoutExpired:
            sampler.stop()
            raise BenchError(f"redis-cli --pipe did not finish within {args.load_timeout:.0f} s") from None
    load_s = time.monotonic() - t0
    cpu_load = sampler.stop() - cpu0
    peak_pct = sampler.peak_pct
    summary = [line for line in res.stdout.splitlines() if line.startswith("errors:")]
    if not summary:
        raise BenchError(f"redis-cli --pipe (exit {res.returncode}) printed no summary:\n"
                         f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
    try:
        errors, replies = (int(part.split(":")[1]) for part in summary[-1].split(","))
    except (ValueError, IndexError):
        raise BenchError(f"cannot parse redis-cli --pipe summary {summary[-1]!r}") from None
    if errors or replies != args.keys or res.returncode != 0:
        raise BenchError(f"redis-cli --pipe: {summary[-1]} (exit {res.returncode}), expected "
                         f"errors: 0, replies: {args.keys}\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    load.unlink()

    # -- catch-up: every node applies up to the leader's commit index
    cpu_c0 = sum(cpu_seconds(p) for p in pids)
    commit = int(info(leader.port)["commit_index"])

    def all_applied() -> bool:
        try:
            return all(int(info(n.port, timeout=5)["applied_index"]) >= commit for n in cluster.nodes.values())
        except (OSError, ConnectionError, RespError, KeyError, ValueError):
            return False

    catchup_s = wait_for(f"every node to apply index {commit}", all_applied, args.catchup_timeout, cluster)
    cpu_catchup = sum(cpu_seconds(p) for p in pids) - cpu_c0
    mem = []
    for n in cluster.nodes.values():
        fields = info(n.port)
        mem.append((n.name, fields.get("role", "?"), rss_anon_mb(n.pid), fields.get("keys", "?"),
                    fields.get("applied_index", "?"), fields.get("snapshot_index", "?"), dir_mb(root / n.name)))

    # -- restarts
    probe = (key(1), values(1))
    restarts: list[Restart] = []
    done: set[str] = set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        leader = cluster.leader(timeout=args.start_timeout)
        followers = [n for n in cluster.nodes.values() if n is not leader]
        target = next((n for n in followers if n.name not in done), followers[0])
        print(f"restarting follower {target.name} with {sig.name} …", file=sys.stderr)
        restarts.append(restart(cluster, target, sig, probe, args.restart_timeout))
        done.add(target.name)

    # -- report
    w = out.append
    w(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    w(f"cluster: 3 nodes on 127.0.0.1, fsync always, data in {root}; {os.cpu_count()} CPUs")
    w("")
    kind = "compressible" if args.compressible else "random"
    w(f"bulk load ({args.keys:,} SETs, {args.value_size}-byte {kind} values, "
      f"redis-cli --pipe to leader {load_leader})")
    w(f"  wall time          {load_s:10.2f} s")
    w(f"  writes/s           {args.keys / load_s:10,.0f}")
    w(f"  node CPU / write   {1e6 * cpu_load / args.keys:10.1f} µs   (utime+stime of all 3 nodes during the load; "
      f"peak {peak_pct:.0f}% of one CPU)")
    w(f"  catch-up after     {catchup_s:10.2f} s   (until every node applied commit index {commit}; "
      f"{1e6 * cpu_catchup / args.keys:.1f} µs node CPU / write more)")
    w(f"  generating input   {gen_s:10.2f} s   (not in the wall time)")
    w("")
    w(f"  {'node':4}  {'role':8}  {'RssAnon MB':>10}  {'keys':>10}  {'applied':>10}  {'snapshot':>10}  {'disk MB':>8}")
    for name, role, rss, keys, applied, snap, disk in mem:
        w(f"  {name:4}  {role:8}  {rss:10.1f}  {keys:>10}  {applied:>10}  {snap:>10}  {disk:8.1f}")
    short = [name for name, _, _, keys, *_ in mem if keys != str(args.keys)]
    if short:
        w(f"  WARNING: {', '.join(short)} do(es) not hold {args.keys} keys")
    w("")
    w(f"follower restart (time from spawn; GET {probe[0].decode()} must return its value)")
    w(f"  {'how':8}  {'node':4}  {'exit s':>7}  {'PING s':>7}  {'GET s':>7}  {'RssAnon MB after':>16}")
    for r in restarts:
        w(f"  {r.how:8}  {r.node:4}  {r.stop_s:7.2f}  {r.ping_s:7.2f}  {r.get_s:7.2f}  {r.rss_mb:16.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000, help="number of SETs to load (default 1,000,000)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--compressible", action="store_true",
                   help="pad values with 'x' (zstd shrinks them to almost nothing) instead of random bytes")
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for a leader (default 30)")
    p.add_argument("--load-timeout", type=float, default=3600.0,
                   help="seconds the redis-cli --pipe load may take (default 3600)")
    p.add_argument("--catchup-timeout", type=float, default=600.0,
                   help="seconds to wait for every node to apply the load (default 600)")
    p.add_argument("--restart-timeout", type=float, default=120.0,
                   help="seconds a restarted follower has to answer the GET (default 120)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="an extra `aegis serve` argument (repeat: --serve-arg=--feed-history --serve-arg=0)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data and node logs) afterwards")
    args = p.parse_args()
    if args.keys < 2:
        p.error("--keys must be at least 2 (the restart probe reads key:000000000001)")
    if args.value_size < 1:
        p.error("--value-size must be at least 1")
    if shutil.which("redis-cli") is None:
        print("redis-cli not found: apt-get install redis-tools", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so that the finally block below still cleans up

    signal.signal(signal.SIGTERM, on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="aegis-load-bench-"))
    cluster = Cluster(root)
    out: list[str] = []
    code = 0
    try:
        run(args, root, cluster, out)
    except BenchError as exc:
        print(f"load_bench: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("load_bench: interrupted", file=sys.stderr)
        code = 130
    finally:
        cluster.stop_all()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if out:
        print("\n".join(out))
    return code


if __name__ == "__main__":
    sys.exit(main())
