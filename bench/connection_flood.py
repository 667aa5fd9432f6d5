"""Memory of one node under a flood of connections that each leave an 8 MiB SET unfinished.

    python bench/connection_flood.py                       # 2,000 connections, 64 KiB sent each
    python bench/connection_flood.py --conns 200 --send 1048576

Starts one real `aegis serve` process on 127.0.0.1 (a fresh data directory, the default
--client-buffer-mb 256 unless --budget-mb), raises RLIMIT_NOFILE for itself and the node,
then opens `--conns` connections; each sends ``*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$8388608\\r\\n``
and `--send` bytes of the value, and never the rest. Meanwhile a normal client must get
PING, SET and GET answered. Prints the node's VmRSS and RssAnon (from /proc/PID/status)
before, at the peak (every connection open and sent), and a few seconds after they close,
and how many connections the node refused (its budget) while they were open.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VALUE = 8 << 20
HEADER = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % VALUE


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of `pid`, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(port: int, *args: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        return s.recv(4096)


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if command(port, b"SET", b"ready", b"1") == b"+OK\r\n":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the node did not start")


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 256
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {want} file descriptors needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def flood(port: int, conns: int, send: int) -> tuple[list[socket.socket], int]:
    """Open `conns` connections, each with an unfinished 8 MiB SET; returns the sockets and
    how many the node had closed (refused) by the end."""
    chunk = b"v" * send
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(HEADER + chunk)
        except OSError:
            pass  # refused and closed while we sent
        socks.append(s)
    time.sleep(1.0)  # let the node read what was sent
    refused = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(4096).startswith(b"-"):
                refused += 1
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
    return socks, refused


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--send", type=int, default=64 << 10, help="bytes of the value each connection sends")
    ap.add_argument("--budget-mb", type=int, default=None, help="the node's --client-buffer-mb (default: its default)")
    args = ap.parse_args()
    raise_nofile(args.conns)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", "n1",
               "--listen", f"127.0.0.1:{port}", "--data", f"{tmp}/n1", "--max-clients", str(args.conns + 100)]
        if args.budget_mb is not None:
            cmd += ["--client-buffer-mb", str(args.budget_mb)]
        log = open(Path(tmp) / "n1.log", "wb")
        node = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, time.monotonic() + 30)
            before = status_kb(node.pid)
            t0 = time.monotonic()
            socks, refused = flood(port, args.conns, args.send)
            peak = status_kb(node.pid)
            took = time.monotonic() - t0
            ok = (command(port, b"PING") == b"+PONG\r\n" and command(port, b"SET", b"x", b"y") == b"+OK\r\n"
                  and command(port, b"GET", b"x") == b"$1\r\ny\r\n")
            for s in socks:
                s.close()
            time.sleep(3.0)
            after = status_kb(node.pid)
            alive = node.poll() is None
        finally:
            node.terminate()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
            log.close()
    mb = lambda kb: f"{kb / 1024:.0f} MiB"  # noqa: E731
    print(f"{args.conns} connections, each an unfinished SET of {VALUE} bytes with {args.send} bytes sent "
          f"(opened in {took:.1f} s); refused by the node's budget: {refused}")
    for name, st in (("before", before), ("peak", peak), ("after close", after)):
        print(f"  {name:12} VmRSS {mb(st['VmRSS']):>9}   RssAnon {mb(st['RssAnon']):>9}")
    print(f"  high-water VmHWM {mb(after['VmHWM'])}; a normal client served during the flood: {ok}; "
          f"node alive: {alive}")
    return 0 if ok and alive else 1


if __name__ == "__main__":
    sys.exit(main())
