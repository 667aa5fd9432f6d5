"""Real `aegis serve` processes on 127.0.0.1, with optional fault-injecting TCP proxies.

Every node reaches every other one only through the addresses in its own `--peers`; with
`proxies=True` each directed link a→b goes through its own `LinkProxy`, so a test can cut
links (partitions, isolation) or drop their connections (`drop_link`, seeded by
`fault_seed`), delay them (`delay_link`), or split the cluster (`partition`) without touching
the nodes; a proxy drops nothing unless asked. Nodes can be paused (SIGSTOP) and resumed.
Everything started here is stopped by PID in `stop_all()`; ports come from the kernel (bind
to port 0).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import redis

READY_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(n: int) -> int:
    """A first port such that n consecutive ports are free (aegis up uses port, port+1, …)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


def rss_anon_mib(pid: int) -> float:
    """A process's anonymous resident memory (/proc/PID/status RssAnon), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc status")


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "",
               detail: Callable[[], str] | None = None) -> Any:
    """Poll `pred` until it returns something truthy; on timeout fail, adding `detail()` if given."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    message = f"timed out after {timeout}s waiting for {what or pred}: last error {last_exc!r}"
    raise AssertionError(f"{message}\n{detail()}" if detail else message)


def raw_command(port: int, *args: bytes, timeout: float = 5.0) -> bytes:
    """Send one RESP command, return a bulk/simple reply's bytes; raise on an error reply."""
    req = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n" not in buf:
            more = s.recv(65536)
            if not more:
                raise ConnectionError("closed")
            buf += more
        head, _, rest = buf.partition(b"\r\n")
        if head[:1] == b"-":
            raise RuntimeError(head[1:].decode())
        if head[:1] != b"$":
            return head[1:]
        size = int(head[1:])
        while len(rest) < size + 2:
            more = s.recv(65536)
            if not more:
                raise ConnectionError("closed")
            rest += more
        return rest[:size]


def parse_info(text: str) -> dict[str, str]:
    """INFO's `key:value` lines as a dict (section headers and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k] = v
    return out


def info_at(port: int, timeout: float = 5.0) -> dict[str, str]:
    """INFO from the node on `port`, over a plain socket (independent of the code under test)."""
    return parse_info(raw_command(port, b"INFO", timeout=timeout).decode())


class LinkProxy:
    """A one-way TCP relay for the link a→b that can be cut, healed, or dropped on purpose.

    An established connection has no timeout: peer links are one-way, so the direction back
    to the caller is idle for as long as the link lives, and a read timeout there would tear
    every link down on its own. Connection drops happen only when a test asks (`drop`).

    Each direction is a delay line: a reader thread stamps every chunk with the time it
    arrived and a writer thread sends it `delay` seconds later (`set_delay`), in order, so a
    delay adds latency without limiting throughput."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.cut = False
        self.delay = 0.0
        self.accepted = 0  # connections relayed so far: each reconnect of the link counts one
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the 2 s was for connecting only
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                line: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                threading.Thread(target=self._read, args=(a, b, line), daemon=True).start()
                threading.Thread(target=self._write, args=(a, b, line), daemon=True).start()

    def _read(self, src: socket.socket, dst: socket.socket, line: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.cut:
                    break
                line.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        finally:
            line.put(None)
            self._close_pair(src, dst)

    def _write(self, src: socket.socket, dst: socket.socket, line: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while (item := line.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self.cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _close_pair(self, src: socket.socket, dst: socket.socket) -> None:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
        with self._lock:
            self._conns = [c for c in self._conns if c not in (src, dst)]

    def set_delay(self, seconds: float) -> None:
        """Deliver what arrives from now on `seconds` later (0: at once)."""
        self.delay = max(0.0, seconds)

    def drop(self) -> int:
        """Reset the connections now relayed (the link stays up: the caller reconnects).
        Returns how many connections were dropped."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        return len(conns) // 2

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self.drop()

    def close(self) -> None:
        self._closed = True
        self.set_cut(True)
        self.sock.close()


class NodeProc:
    def __init__(self, nid: str, port: int, data: Path, log: Path) -> None:
        self.id = nid
        self.port = port
        self.data = data
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> redis.Redis:
        kw.setdefault("socket_timeout", 10)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    def __init__(self, root: Path, n: int = 3, *, proxies: bool = False, tick_ms: int = 20,
                 snapshot_threshold: int = 10_000, extra: list[str] | None = None, fault_seed: int = 0) -> None:
        self.root = root
        self.faults = random.Random(fault_seed)  # every fault a test injects at random draws from this
        self.tick_ms = tick_ms
        self.snapshot_threshold = snapshot_threshold
        self.extra = extra or []
        self.nodes: dict[str, NodeProc] = {}
        for i in range(n):
            nid = f"n{i + 1}"
            self.nodes[nid] = NodeProc(nid, free_port(), root / nid, root / f"{nid}.log")
        self.links: dict[tuple[str, str], LinkProxy] = {}
        if proxies:
            for a in self.nodes:
                for b in self.nodes:
                    if a != b:
                        self.links[(a, b)] = LinkProxy(self.nodes[b].port)

    def peers_for(self, nid: str) -> str:
        parts = []
        for other, node in self.nodes.items():
            if other == nid or (nid, other) not in self.links:
                parts.append(f"{other}={node.addr}")
            else:
                parts.append(f"{other}=127.0.0.1:{self.links[(nid, other)].port}")
        return ",".join(parts)

    def command(self, nid: str) -> list[str]:
        node = self.nodes[nid]
        return [sys.executable, "-m", "aegis.cli", "--log-level", "info", "serve", "--id", nid,
                "--listen", node.addr, "--data", str(node.data), "--peers", self.peers_for(nid),
                "--tick-ms", str(self.tick_ms), "--snapshot-threshold", str(self.snapshot_threshold),
                "--request-timeout", "3", *self.extra]

    def start(self, nid: str | None = None, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start one node (every node if None); `env` adds to the environment (failpoints)."""
        ids = [nid] if nid else list(self.nodes)
        for i in ids:
            node = self.nodes[i]
            assert not node.alive(), f"{i} is already running"
            logf = open(node.log, "ab")
            node.proc = subprocess.Popen(self.command(i), stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **env} if env else None)
            logf.close()
        if wait:
            for i in ids:
                client = self.nodes[i].client()
                try:
                    wait_until(client.ping, READY_TIMEOUT, what=f"{i} to listen")
                finally:
                    client.close()  # hold no connection a test might count

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[nid]
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, sig)
            node.proc.wait(timeout=10)

    def pause(self, nid: str) -> None:
        """SIGSTOP the node: it holds its sockets open but answers nothing."""
        node = self.nodes[nid]
        if node.alive():
            os.kill(node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.alive():
            os.kill(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(node.proc.pid, signal.SIGCONT)  # a paused node could not act on SIGTERM
                node.proc.terminate()
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
        for link in self.links.values():
            link.close()

    def addr(self, nid: str) -> str:
        return self.nodes[nid].addr

    def info(self, nid: str, timeout: float = 5.0) -> dict[str, str]:
        """INFO as the raw text a script would parse (redis-py would reinterpret it)."""
        return info_at(self.nodes[nid].port, timeout)

    def leader(self, among: list[str] | None = None, timeout: float = 10.0) -> str:
        ids = among or [n for n, p in self.nodes.items() if p.alive()]

        def find() -> str | None:
            leaders = [n for n in ids if self.nodes[n].alive() and self.info(n)["role"] == "leader"]
            return leaders[0] if len(leaders) == 1 else None

        return str(wait_until(find, timeout, what="a single leader"))

    def isolate(self, nid: str) -> None:
        for (a, b), link in self.links.items():
            if nid in (a, b):
                link.set_cut(True)

    def drop_link(self, a: str | None = None, b: str | None = None) -> tuple[str, str]:
        """A deliberate connection drop on the proxied link a→b (a seeded random link if
        not given): its connections are reset, and a reconnects at once. Returns the link."""
        if a is None or b is None:
            a, b = self.faults.choice(sorted(self.links))
        self.links[(a, b)].drop()
        return a, b

    def partition(self, *groups: list[str]) -> None:
        """Cut every link between nodes of different groups (links within a group stay)."""
        side = {nid: i for i, group in enumerate(groups) for nid in group}
        for (a, b), link in self.links.items():
            if side.get(a, -1) != side.get(b, -2):
                link.set_cut(True)

    def delay_link(self, a: str, b: str, seconds: float) -> None:
        """Delay the traffic a sends to b by `seconds` (0 to stop); `heal()` clears it too."""
        self.links[(a, b)].set_delay(seconds)

    def heal(self) -> None:
        """Reconnect every cut link and take every delay off."""
        for link in self.links.values():
            link.set_cut(False)
            link.set_delay(0.0)

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log.read_text(errors='replace')[-3000:]}"
                         for n, p in self.nodes.items() if p.log.exists())


@contextlib.contextmanager
def running(cluster: LocalCluster, *, leader: bool = False) -> Iterator[LocalCluster]:
    """Start `cluster` (and wait for a leader if asked), print its logs if the body fails,
    and stop every process it started however the body ends: what each e2e fixture does."""
    try:
        cluster.start()
        if leader:
            cluster.leader()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()

