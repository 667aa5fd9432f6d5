"""Aegis next to etcd on this machine: the same workloads, one table, one run.

    python bench/compare.py [--seconds 5] [--quick] [--clients 1,16,64] [--requests N]
                            [--etcd-endpoints leader|all] [--etcdbench PATH] [--only etcd|aegis]
                            [--json FILE|-]

First a 3-member etcd cluster (if `etcd` is on PATH and the etcdbench load generator exists
or can be built offline from ../shared/tools/etcdbench), then a 3-node Aegis cluster (fsync
on), each on free 127.0.0.1 ports with its data in one temporary directory; each system runs
alone, the other one is stopped. Both get the same workloads: writes, then linearizable
reads, 100-byte values, 16-byte keys, a key space of 1,000,000, with 1, 16 and 64 unpipelined
clients; Aegis also gets redis-benchmark's pipelined `-c 50 -P 16` SET and GET at the leader
and SET at a follower (forwarded to the leader).

- etcd: `etcdbench -op put|get -clients C -conns min(C,8) -d Ts` (gRPC clientv3; `get` is a
  linearizable range read), against the leader's client URL (`--etcd-endpoints all`: all
  three, as etcd's client balances them round-robin).
- Aegis: `redis-benchmark -t set|get -c C -P 1 -d 100 -r 1000000 -n N --csv -q` against the
  leader. N is sized from a short probe run so each run lasts about --seconds (or --requests).

CPU per operation is the utime+stime (/proc/PID/stat) of the three server processes over
the run, summed, divided by the acknowledged operations (redis-benchmark's -n: it exits at the
first error reply; etcdbench's n, which already leaves out its errs); the load generator's
own CPU is not counted (it is reported separately), but background work (heartbeats,
snapshots, compaction) during the run is. The table, printed at the end, has for each system
ops/s, p50 and p99 latency in ms and CPU µs/op, then Aegis/etcd ratios of ops/s and of p50;
the exact commands follow it, so every figure can be reproduced. A row marked (!) ran while
other processes kept this machine busy, or had errors; the notes under the table say which.

Caveats printed with the table: etcdbench reads keys 1, 2, 3, ... (the keys its writes wrote
first, so most reads hit), redis-benchmark -r picks random keys (most GETs miss); the load
generator shares the machine's cores with the servers. Compare the columns with each other,
not with other machines. This is a benchmark for people, not for CI.

Every process this script starts is stopped by PID (SIGTERM, then SIGKILL after 10 s) and the
temporary directory removed, also on Ctrl-C or SIGTERM. Set TMPDIR to put the data on another
file system. If the Aegis cluster does not elect a leader it is retried twice, --retry-wait
seconds apart.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
ETCDBENCH_SRC = REPO.parent / "shared" / "tools" / "etcdbench"
DEFAULT_ETCDBENCH = Path("/tmp/etcdbench")
KEY_SPACE = 1_000_000
VALUE_SIZE = 100
PIPELINE_CLIENTS = 50
PIPELINE_DEPTH = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 10.0
OTHER_LOAD_WARN = 10.0  # % of one core used by other processes during a run that earns a warning


class BenchError(Exception):
    """A cluster did not come up or a load generator failed; the message says which."""


# ---------------------------------------------------------------------------- results

@dataclass
class Result:
    ops_s: float
    p50_ms: float
    p99_ms: float
    acked: int
    errors: int
    wall_s: float
    cpu_s: float | None
    command: str
    warning: str = ""
    loadgen_cpu_s: float | None = None  # the load generator's own CPU time (not in cpu_us_op)
    other_cpu_pct: float | None = None  # CPU used by everything else on the machine, % of one core

    @property
    def cpu_us_op(self) -> float | None:
        if self.cpu_s is None or self.acked <= 0:
            return None
        return self.cpu_s / self.acked * 1e6


@dataclass
class Workload:
    name: str
    op: str  # "write" or "read"
    clients: int
    pipeline: int = 1
    target: str = "leader"  # which Aegis node redis-benchmark talks to
    etcd: bool = True  # has an etcd equivalent
    results: dict[str, Result] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # system -> why its run failed


def workloads(clients: Sequence[int]) -> list[Workload]:
    out: list[Workload] = []
    for op in ("write", "read"):
        for c in clients:
            out.append(Workload(f"{op} {c} client{'s' if c != 1 else ''}", op, c))
    pc, pp = PIPELINE_CLIENTS, PIPELINE_DEPTH
    out.append(Workload(f"SET -c {pc} -P {pp} leader", "write", pc, pp, "leader", etcd=False))
    out.append(Workload(f"SET -c {pc} -P {pp} follower", "write", pc, pp, "follower", etcd=False))
    out.append(Workload(f"GET -c {pc} -P {pp} leader", "read", pc, pp, "leader", etcd=False))
    return out


# ---------------------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this script dies without cleaning up."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15; `rest` starts at field 3


class Cluster:
    """Three server processes started by this script, stopped by PID."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._files: list[IO[bytes]] = []

    def spawn(self, node: str, cmd: list[str], *, cwd: Path | None = None) -> None:
        log = self.root / f"{node}.stderr"
        f = open(log, "wb")
        self._files.append(f)
        self.logs[node] = log
        self.procs[node] = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)

    def check_alive(self) -> None:
        dead = [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise BenchError(f"{self.name}: {', '.join(dead)} exited\n{self.log_tails()}")

    def cpu_seconds(self) -> float:
        self.check_alive()
        return sum(cpu_ticks(p.pid) for p in self.procs.values()) / CLK_TCK

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for node, log in self.logs.items():
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            out.append(f"--- {log} (last {len(tail)} lines)")
            out.extend(tail)
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT, one process after the other: etcd members all
        stopped at once take 7 s (a stopping leader tries to hand over to a stopping follower)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"{self.name}: pid {p.pid} ignored SIGTERM for {STOP_TIMEOUT:g} s; killing it",
                          file=sys.stderr)
                    p.kill()
                    p.wait(timeout=STOP_TIMEOUT)
        for f in self._files:
            f.close()
        self._files.clear()


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A bounded child process; subprocess.run kills it on timeout or on any exception."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def machine_busy_seconds() -> float:
    """CPU time all processes on this machine spent, from /proc/stat (guest time is in user)."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (t + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_seconds() -> float:
    """CPU time of this script and of its reaped children (the load generators, not the servers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(cluster: Cluster, fn: Callable[[], Result]) -> Result:
    """Run `fn` and add the servers' CPU time to its result, and what the rest of the machine did."""
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, own0, before = machine_busy_seconds(), own_seconds(), cluster.cpu_seconds()
    res = fn()
    res.cpu_s = cluster.cpu_seconds() - before
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res.loadgen_cpu_s = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    other = machine_busy_seconds() - busy0 - res.cpu_s - (own_seconds() - own0)
    res.other_cpu_pct = max(0.0, other) / max(res.wall_s, 1e-3) * 100
    return res


def idle_cpu_percent(cluster: Cluster, seconds: float) -> float:
    before = cluster.cpu_seconds()
    time.sleep(seconds)
    return (cluster.cpu_seconds() - before) / seconds * 100


# ---------------------------------------------------------------------------- etcd

def etcdctl(endpoints: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ETCDCTL_API="3")
    return run(["etcdctl", "--endpoints", endpoints, "--command-timeout=3s", *args], timeout, env)


def ensure_etcdbench(path: Path) -> str | None:
    """The load generator's path, built offline if need be, or None with a note printed."""
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    if shutil.which("go") is None or not (ETCDBENCH_SRC / "main.go").is_file():
        print(f"note: {path} not found and cannot be built (needs `go` and {ETCDBENCH_SRC}); "
              "running the Aegis half only", file=sys.stderr)
        return None
    print(f"building {path} from {ETCDBENCH_SRC} (offline, Debian's Go packages) ...", file=sys.stderr)
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOCACHE="/tmp/gocache")
    out = subprocess.run(["go", "build", "-o", str(path), "."], cwd=ETCDBENCH_SRC, env=env,
                         capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        print(f"note: building etcdbench failed; running the Aegis half only\n{out.stderr[-2000:]}",
              file=sys.stderr)
        return None
    return str(path)


def start_etcd(root: Path) -> tuple[Cluster, dict[str, str]]:
    """A 3-member etcd cluster; returns it and each member's client endpoint."""
    ports = free_ports(6)
    names = ["e1", "e2", "e3"]
    client = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(names)}
    peer = {n: f"http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names)}
    initial = ",".join(f"{n}={peer[n]}" for n in names)
    cluster = Cluster("etcd", root)
    for n in names:
        cluster.spawn(n, [
            "etcd", "--name", n, "--data-dir", str(root / n),
            "--listen-client-urls", f"http://{client[n]}", "--advertise-client-urls", f"http://{client[n]}",
            "--listen-peer-urls", peer[n], "--initial-advertise-peer-urls", peer[n],
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"compare-{os.getpid()}",
            "--logger", "zap", "--log-outputs", str(root / f"{n}.log")])
    return cluster, client


def wait_etcd(cluster: Cluster, client: dict[str, str], timeout: float = 30) -> str:
    """Wait until every member is healthy; return the leader's name."""
    eps = ",".join(client.values())
    deadline = time.monotonic() + timeout
    while True:
        cluster.check_alive()
        try:
            if etcdctl(eps, "endpoint", "health").returncode == 0:
                st = etcdctl(eps, "endpoint", "status", "-w", "json")
                if st.returncode == 0:
                    for item in json.loads(st.stdout):
                        s = item["Status"]
                        if s["header"]["member_id"] == s["leader"]:
                            ep = item["Endpoint"].removeprefix("http://")
                            return next(n for n, e in client.items() if e == ep)
        except (subprocess.SubprocessError, ValueError, KeyError, StopIteration):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"etcd not healthy after {timeout:.0f} s\n{cluster.log_tails()}")
        time.sleep(0.3)


def etcd_key_count(endpoint: str) -> int | None:
    try:
        # a range response's "count" is the number of keys in the whole range, whatever the limit
        out = etcdctl(endpoint, "get", "", "--prefix", "--keys-only", "--limit", "1", "-w", "json")
        return int(json.loads(out.stdout).get("count", 0)) if out.returncode == 0 else None
    except (subprocess.SubprocessError, ValueError):
        return None


def etcdbench_run(exe: str, endpoints: str, w: Workload, seconds: float) -> Result:
    op = "put" if w.op == "write" else "get"
    cmd = [exe, "-endpoints", endpoints, "-op", op, "-clients", str(w.clients),
           "-conns", str(min(w.clients, 8)), "-d", f"{seconds:g}s", "-n", "100000000",
           "-val-size", str(VALUE_SIZE), "-key-size", "16", "-key-space", str(KEY_SPACE)]
    t0 = time.monotonic()
    out = run(cmd, timeout=seconds + 60)
    wall = time.monotonic() - t0
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise BenchError(f"etcdbench failed (exit {out.returncode}): {shlex.join(cmd)}\n{out.stderr[-2000:]}")
    f = dict(tok.split("=", 1) for tok in lines[-1].split() if "=" in tok)
    ok, errs = int(f["n"]), int(f["errs"])  # n counts successes only; errs the failures
    return Result(ops_s=float(f["rps"]), p50_ms=float(f["p50"].removesuffix("ms")),
                  p99_ms=float(f["p99"].removesuffix("ms")), acked=ok, errors=errs, wall_s=wall,
                  cpu_s=None, command=shlex.join(cmd),
                  warning=f"{errs} errors" if errs else "")


def run_etcd(args: argparse.Namespace, exe: str, root: Path, ws: list[Workload], notes: list[str],
             clusters: list[Cluster]) -> None:
    print("etcd: starting 3 members ...", file=sys.stderr)
    cluster, client = start_etcd(root)
    clusters.append(cluster)
    try:
        leader = wait_etcd(cluster, client)
        eps = client[leader] if args.etcd_endpoints == "leader" else ",".join(client.values())
        print(f"etcd: leader {leader} at {client[leader]}; load to {eps}", file=sys.stderr)
        notes.append(f"etcd {etcd_version()}: members {', '.join(f'{n}={e}' for n, e in client.items())}, "
                     f"leader {leader}; etcdbench endpoints: {eps}")
        idle = idle_cpu_percent(cluster, args.idle_seconds)
        notes.append(f"etcd idle: its 3 members used {idle:.1f}% of one core together")
        keys: int | None = None
        for w in ws:
            if not w.etcd:
                continue
            if w.op == "read" and keys is None:
                keys = etcd_key_count(client[leader]) or 0
            print(f"etcd: {w.name} ...", file=sys.stderr)
            try:
                w.results["etcd"] = measure(cluster, lambda: etcdbench_run(exe, eps, w, args.seconds))
            except (BenchError, subprocess.TimeoutExpired) as e:
                cluster.check_alive()  # a dead member ends this half; a failed run only this row
                w.failed["etcd"] = str(e)
                print(f"etcd: {w.name} failed: {e}", file=sys.stderr)
        if keys is not None:
            # etcdbench's i-th request uses key i (mod the key space): the writes wrote keys 1..K, and
            # a read run of n requests reads keys 1..n, so min(K, n) of its n reads hit.
            hits = [f"{w.name} {min(keys, r.acked) / r.acked:.0%}" for w in ws
                    if w.op == "read" and (r := w.results.get("etcd")) is not None and r.acked]
            notes.append(f"etcd held {keys:,} keys (keys 1..{keys:,}) before the reads; etcdbench reads keys 1, 2, 3, "
                         f"... in order, so the reads that hit an existing key were: {', '.join(hits)}")
    finally:
        cluster.stop()


def etcd_version() -> str:
    try:
        out = run(["etcd", "--version"], timeout=10).stdout.split()
        return out[2] if len(out) > 2 else "?"
    except subprocess.SubprocessError:
        return "?"


# ---------------------------------------------------------------------------- Aegis

def aegis_info(port: int) -> dict[str, str]:
    out = run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "INFO"], timeout=10)
    return dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)


def start_aegis(root: Path) -> tuple[Cluster, dict[str, int]]:
    ports = dict(zip(("n1", "n2", "n3"), free_ports(3)))
    peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
    cluster = Cluster("aegis", root)
    for n, port in ports.items():
        cluster.spawn(n, [
            sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", n,
            "--listen", f"127.0.0.1:{port}", "--data", str(root / n), "--peers", peers], cwd=REPO)
    return cluster, ports


def wait_aegis(cluster: Cluster, ports: dict[str, int], timeout: float = 30) -> str:
    """Wait until all three nodes name the same leader and it says it leads; return it."""
    deadline = time.monotonic() + timeout
    while True:
        cluster.check_alive()
        try:
            infos = {n: aegis_info(p) for n, p in ports.items()}
            leaders = {i.get("leader_id") for i in infos.values()}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader in infos and infos[leader].get("role") == "leader":
                    return leader
        except subprocess.SubprocessError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"Aegis: no leader agreed on after {timeout:.0f} s\n{cluster.log_tails()}")
        time.sleep(0.3)


def redis_benchmark_cmd(port: int, w: Workload, n: int) -> list[str]:
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set" if w.op == "write" else "get",
            "-c", str(w.clients), "-P", str(w.pipeline), "-d", str(VALUE_SIZE), "-r", str(KEY_SPACE),
            "-n", str(n), "--csv", "-q"]


def redis_benchmark_run(port: int, w: Workload, n: int, timeout: float) -> Result:
    cmd = redis_benchmark_cmd(port, w, n)
    t0 = time.monotonic()
    out = run(cmd, timeout=timeout)
    wall = time.monotonic() - t0
    rows = [r for r in csv.reader(out.stdout.splitlines()) if r and r[0] in ("SET", "GET")]
    if out.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed (exit {out.returncode}): {shlex.join(cmd)}\n"
                         f"{out.stdout[-1000:]}{out.stderr[-2000:]}")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max…"
    # redis-benchmark 7 exits 1 at the first error reply, so a clean exit means n acknowledged replies.
    r = rows[-1]
    return Result(ops_s=float(r[1]), p50_ms=float(r[4]), p99_ms=float(r[6]), acked=n, errors=0,
                  wall_s=wall, cpu_s=None, command=shlex.join(cmd))


def size_run(port: int, w: Workload, seconds: float) -> int:
    """-n so that the run lasts about `seconds`, from probe runs grown until one lasts 0.4 s."""
    n = max(100, 4 * w.clients * w.pipeline)
    probe = None
    for _ in range(6):  # bounded: at most six probes, each at most 20x the previous one
        probe = redis_benchmark_run(port, w, n, timeout=60)
        if probe.wall_s >= 0.4:
            break
        n = int(n * min(20.0, max(2.0, 0.5 / max(probe.wall_s, 0.02))))
    assert probe is not None
    return max(10 * w.clients * w.pipeline, min(20_000_000, int(probe.ops_s * seconds)))


def run_aegis(args: argparse.Namespace, root: Path, ws: list[Workload], notes: list[str],
              clusters: list[Cluster]) -> None:
    cluster = ports = leader = None
    for attempt in (1, 2, 3):
        print(f"Aegis: starting 3 nodes (attempt {attempt}) ...", file=sys.stderr)
        d = root / f"aegis{attempt}"
        d.mkdir()
        cluster, ports = start_aegis(d)
        clusters.append(cluster)
        try:
            leader = wait_aegis(cluster, ports)
            break
        except BenchError as e:
            cluster.stop()
            if attempt == 3:
                raise
            print(f"Aegis did not start; retrying in {args.retry_wait:g} s:\n{e}", file=sys.stderr)
            time.sleep(args.retry_wait)
    assert cluster is not None and ports is not None and leader is not None
    try:
        follower = next(n for n in ports if n != leader)
        print(f"Aegis: leader {leader} at 127.0.0.1:{ports[leader]}", file=sys.stderr)
        info = aegis_info(ports[leader])
        notes.append(f"Aegis: nodes {', '.join(f'{n}=127.0.0.1:{p}' for n, p in ports.items())}, leader "
                     f"{leader}, follower used {follower}; fsync {info.get('fsync', '?')}; {sys.executable}")
        idle = idle_cpu_percent(cluster, args.idle_seconds)
        notes.append(f"Aegis idle: its 3 nodes used {idle:.1f}% of one core together")
        keys_noted = False
        for w in ws:
            port = ports[leader if w.target == "leader" else follower]
            if w.op == "read" and not keys_noted:
                keys_noted = True
                k = int(aegis_info(ports[leader]).get("keys", "0"))
                notes.append(f"Aegis held {k:,} keys before the reads (redis-benchmark -r picks random keys "
                             f"of 1,000,000, so about {k / KEY_SPACE:.0%} of GETs hit)")
            try:
                if args.requests:
                    n = args.requests * w.pipeline
                else:
                    print(f"Aegis: {w.name}: sizing ...", file=sys.stderr)
                    n = size_run(port, w, args.seconds)
                print(f"Aegis: {w.name}: -n {n} ...", file=sys.stderr)
                w.results["aegis"] = measure(
                    cluster, lambda: redis_benchmark_run(port, w, n, timeout=max(120, 20 * args.seconds)))
            except (BenchError, subprocess.TimeoutExpired) as e:
                cluster.check_alive()  # a dead node ends this half; a failed run only this row
                w.failed["aegis"] = str(e)
                print(f"Aegis: {w.name} failed: {e}", file=sys.stderr)
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------- output

def fmt_ops(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    return "" if x is None else (f"{x:.3f}" if x < 0.1 else f"{x:.2f}")


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or not b else f"{a / b:.2f}x"


def table(ws: list[Workload]) -> str:
    head = ["workload", "etcd ops/s", "p50 ms", "p99 ms", "CPU µs/op",
            "Aegis ops/s", "p50 ms", "p99 ms", "CPU µs/op", "ops/s A/E", "p50 A/E"]
    rows = [head]
    for w in ws:
        e, a = w.results.get("etcd"), w.results.get("aegis")
        cells = [w.name]
        for system, r in (("etcd", e), ("aegis", a)):
            first = "failed" if system in w.failed else fmt_ops(r.ops_s if r else None)
            cells += [first, fmt_ms(r.p50_ms if r else None),
                      fmt_ms(r.p99_ms if r else None), fmt_ops(r.cpu_us_op if r else None)]
        cells += [fmt_ratio(a.ops_s if a else None, e.ops_s if e else None),
                  fmt_ratio(a.p50_ms if a else None, e.p50_ms if e else None)]
        if any(r is not None and (r.warning or (r.other_cpu_pct or 0) > OTHER_LOAD_WARN) for r in (e, a)):
            cells[0] += " (!)"
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    groups = {4, 8}  # a separator after the etcd and after the Aegis columns

    def line(r: list[str]) -> str:
        parts = []
        for i, c in enumerate(r):
            parts.append(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]))
            if i in groups:
                parts.append("|")
        return "  ".join(parts)

    out = [line(rows[0]), "-" * len(line(rows[0]))]
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


def report(args: argparse.Namespace, ws: list[Workload], notes: list[str], elapsed: float) -> None:
    print()
    print(table(ws))
    print()
    length = (f"etcd runs {args.seconds:g} s, Aegis runs -n {args.requests} (x{PIPELINE_DEPTH} pipelined)"
              if args.requests else f"Each run ~{args.seconds:g} s")
    print(f"{length}; 100-byte values, 16-byte keys, key space {KEY_SPACE:,}; "
          f"{os.cpu_count()} CPUs; total {elapsed:.0f} s. CPU µs/op = utime+stime of the 3 server processes "
          "over the run / acknowledged ops (load generator excluded).")
    for n in notes:
        print(f"- {n}")
    busy: list[str] = []
    for w in ws:
        for system, res in w.results.items():
            if res.warning:
                print(f"- (!) {system} {w.name}: {res.warning}")
            if res.other_cpu_pct is not None and res.other_cpu_pct > OTHER_LOAD_WARN:
                busy.append(f"{system} {w.name} {res.other_cpu_pct:.0f}%")
        for system, why in w.failed.items():
            print(f"- {system} {w.name} failed: {why.splitlines()[0] if why else '?'}")
    for system, tool in (("etcd", "etcdbench"), ("aegis", "redis-benchmark")):
        rs = [w.results[system] for w in ws if system in w.results]
        if rs:
            share = sum(r.loadgen_cpu_s or 0 for r in rs) / sum(r.wall_s for r in rs) * 100
            most = max((r.loadgen_cpu_s or 0) / r.wall_s * 100 for r in rs)
            print(f"- {tool} itself used {share:.0f}% of one core on average (at most {most:.0f}%), "
                  f"on the same {os.cpu_count()} CPUs as the servers")
    if busy:
        print(f"- (!) other processes on this machine were busy during some runs (% of one core, besides "
              f"the servers, the load generator and this script): {', '.join(busy)}; "
              "those figures are low, rerun on a quiet machine")
    sized = "" if args.requests else " (each Aegis run after short probe runs with a smaller -n that sized it)"
    print(f"\nCommands{sized}:")
    for w in ws:
        for system, r in w.results.items():
            print(f"  {system:5} {w.name:26} {r.command}")
    if args.json:
        doc: dict[str, Any] = {
            "params": {"seconds": args.seconds, "clients": args.clients, "requests": args.requests,
                       "etcd_endpoints": args.etcd_endpoints, "key_space": KEY_SPACE, "value_size": VALUE_SIZE,
                       "cpus": os.cpu_count(), "elapsed_s": elapsed},
            "notes": notes,
            "rows": [{"workload": w.name, "failed": w.failed,
                      **{s: {**asdict(r), "cpu_us_op": r.cpu_us_op} for s, r in w.results.items()}}
                     for w in ws],
        }
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")


# ---------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    p.add_argument("--quick", action="store_true", help="1.5 s runs and a shorter idle measurement")
    p.add_argument("--clients", default="1,16,64", help="unpipelined client counts (default 1,16,64)")
    p.add_argument("--requests", type=int, default=0,
                   help="fixed redis-benchmark -n per unpipelined run (x16 when pipelined) instead of sizing it")
    p.add_argument("--etcd-endpoints", choices=["leader", "all"], default="leader",
                   help="etcdbench talks to the leader only (like the Aegis runs; default) or to all three")
    p.add_argument("--etcdbench", type=Path, default=DEFAULT_ETCDBENCH,
                   help=f"the etcd load generator (default {DEFAULT_ETCDBENCH}; built if missing)")
    p.add_argument("--only", choices=["etcd", "aegis"], help="run one half only")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    p.add_argument("--retry-wait", type=float, default=30.0,
                   help="seconds to wait before retrying when the Aegis cluster does not start (default 30)")
    args = p.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients: comma-separated integers")
    if not args.clients or min(args.clients) < 1 or args.seconds <= 0:
        p.error("--clients and --seconds must be positive")
    if args.quick:
        args.seconds = min(args.seconds, 1.5)
    args.idle_seconds = 1.0 if args.quick else 2.0
    return args


def run_halves(args: argparse.Namespace, root: Path, ws: list[Workload], notes: list[str],
               clusters: list[Cluster]) -> int:
    status = 0
    if args.only != "aegis":
        exe = None
        if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
            print("note: etcd/etcdctl not on PATH (apt-get install etcd-server etcd-client); "
                  "running the Aegis half only", file=sys.stderr)
        else:
            exe = ensure_etcdbench(args.etcdbench)
        if exe is None:
            notes.append("etcd not run (etcd, etcdctl or the etcdbench load generator missing)")
        else:
            (root / "etcd").mkdir()
            try:
                run_etcd(args, exe, root / "etcd", ws, notes, clusters)
            except BenchError as e:
                print(f"etcd half failed: {e}", file=sys.stderr)
                notes.append(f"etcd half failed: {str(e).splitlines()[0]}")
                status = 1
    if args.only != "etcd":
        try:
            run_aegis(args, root, ws, notes, clusters)
        except BenchError as e:
            print(f"Aegis half failed: {e}", file=sys.stderr)
            notes.append(f"Aegis half failed: {str(e).splitlines()[0]}")
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only != "etcd" and (shutil.which("redis-benchmark") is None or shutil.which("redis-cli") is None):
        print("redis-benchmark/redis-cli not found: apt-get install redis-tools", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM = Ctrl-C: clean up, then report
    ws = workloads(args.clients)
    notes: list[str] = []
    clusters: list[Cluster] = []
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="aegis-compare-"))
    try:
        try:
            status = run_halves(args, root, ws, notes, clusters)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr)
            notes.append("interrupted: the table holds the runs that finished")
            status = 130
            for c in clusters:
                c.stop()
        report(args, ws, notes, time.monotonic() - started)
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(root, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
