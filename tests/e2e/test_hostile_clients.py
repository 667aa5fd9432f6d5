"""Hostile clients against a real node (issue 11): connections that leave huge requests
unfinished cannot make the node hold more than its budget, before or after AUTH, and the
node keeps serving everybody else."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from .harness import LocalCluster, rss_anon_mib, wait_until

TOKEN = "s3cret"
BUDGET_MB = 32
VALUE = 8 << 20  # declared; the flood never sends all of it


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, n=1, extra=["--token", TOKEN, "--client-buffer-mb", str(BUDGET_MB)])
    try:
        c.start(wait=False)
        wait_until(lambda: c.nodes["n1"].client(password=TOKEN).ping(), 15, what="n1 to serve")
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def flood(port: int, conns: int, send: int, auth: bool) -> tuple[list[socket.socket], list[bytes]]:
    """`conns` connections, each starting `SET k <8 MiB>` and sending `send` bytes of it.
    Returns the sockets (still open) and what each was told."""
    socks = []
    chunk = b"v" * (1 << 20)
    for i in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        try:
            if auth:
                s.sendall(b"AUTH %s\r\n" % TOKEN.encode())
            s.sendall(b"*3\r\n$3\r\nSET\r\n$4\r\nk%03d\r\n$%d\r\n" % (i, VALUE))
            left = send
            while left > 0:
                s.sendall(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        except OSError:
            pass  # refused and closed while we were still sending
    time.sleep(0.3)
    replies = []
    for s in socks:
        s.settimeout(0.05)
        try:
            replies.append(s.recv(4096))
        except OSError:
            replies.append(b"")
    return socks, replies


def test_unfinished_requests_are_bounded_before_and_after_auth(node: LocalCluster) -> None:
    n1 = node.nodes["n1"]
    assert n1.proc is not None
    pid = n1.proc.pid
    baseline = rss_anon_mib(pid)
    client = n1.client(password=TOKEN)

    # Before AUTH a connection may hold 64 KiB: 150 x 1 MiB partial values get nowhere.
    socks, replies = flood(n1.port, 150, 1 << 20, auth=False)
    try:
        assert rss_anon_mib(pid) - baseline < 20
        told = [r for r in replies if r.startswith(b"-ERR client input limit: a connection that has not authenticated")]
        assert len(told) >= 140, replies[:3]
        assert b"64 KiB" in told[0] and b"closing the connection" in told[0]
        assert client.set("during", "pre-auth flood") and client.get("during") == b"pre-auth flood"
    finally:
        for s in socks:
            s.close()

    # After AUTH: 150 x 6 MiB (900 MiB unbounded) stay within the node-wide budget.
    socks, replies = flood(n1.port, 150, 6 << 20, auth=True)
    try:
        grown = rss_anon_mib(pid) - baseline
        assert int(client.info()["client_input_bytes"]) <= BUDGET_MB << 20
        assert grown < BUDGET_MB + 40, f"RssAnon grew by {grown:.0f} MiB"
        told = [r for r in replies if b"-ERR client input limit: the node's budget for unfinished client" in r]
        assert len(told) >= 100, replies[:3]
        assert b"(32 MiB) is used up" in told[0]
        # Everybody else keeps working, through the flood.
        assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        assert client.incr("n") == 1
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: int(client.info()["client_input_bytes"]) == 0, 5, what="the budget to be returned")
    assert int(client.info()["client_input_refused"]) >= 240
