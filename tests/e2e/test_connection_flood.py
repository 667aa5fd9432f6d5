"""A flood of connections against a real node (issue 11): 200 connections each leaving an
8 MiB SET unfinished cost the node about what they sent, and no more; a normal client is
served meanwhile; silent connections count towards --max-clients and are closed after
--first-byte-timeout. (bench/connection_flood.py runs the 2,000-connection version.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from .harness import LocalCluster, rss_anon_mib, running, wait_until

CONNS = 200
SEND = 64 << 10
IDLE = 40
MAX_CLIENTS = CONNS + IDLE + 1  # the flood, the silent ones, the test's own client
HEADER = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (8 << 20)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, n=1, extra=["--max-clients", str(MAX_CLIENTS), "--first-byte-timeout", "2"])
    with running(c):
        yield c


def test_a_flood_of_unfinished_sets_costs_what_it_sent_and_silent_connections_are_bounded(
        node: LocalCluster) -> None:
    n1 = node.nodes["n1"]
    assert n1.proc is not None
    pid, port = n1.proc.pid, n1.port
    client = n1.client()
    assert client.set("warm", b"x" * SEND)  # the node's own buffers exist before the baseline
    baseline = rss_anon_mib(pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(CONNS):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(HEADER + b"v" * SEND)
            socks.append(s)
        held_mib = CONNS * SEND / (1 << 20)
        wait_until(lambda: int(node.info("n1")["client_input_bytes"]) >= CONNS * SEND, 10,
                   what="the node to have read every partial value")
        grown = rss_anon_mib(pid) - baseline
        # What the connections sent, once (the parser's buffer), and a little for their tasks.
        assert grown < 1.4 * held_mib + 5, f"RssAnon grew {grown:.1f} MiB for {held_mib:.1f} MiB held"
        assert client.ping() and client.set("during", b"1") and client.get("during") == b"1"

        # Silent connections take the remaining slots; one more client is refused.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE)]
        socks += idle
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"PING\r\n")
            assert extra.recv(200) == b"-ERR max number of clients reached\r\n"
        # ... until the first-byte timeout closes them, each with a one-line reason.
        for s in idle:
            s.settimeout(5)
            assert s.recv(200) == b"-ERR nothing was sent in time; closing the connection\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"PING\r\n")
            assert extra.recv(200) == b"+PONG\r\n"
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: int(node.info("n1")["client_input_bytes"]) == 0, 10, what="the budget to be returned")
    assert client.get("during") == b"1"
    client.close()


def test_peers_get_through_when_clients_hold_every_slot(tmp_path: Path) -> None:
    """With --max-clients used up by silent connections, a restarted peer still connects:
    the node hears it and (with the third node down) a write commits through it."""
    c = LocalCluster(tmp_path, n=3, extra=["--max-clients", "5", "--first-byte-timeout", "60"])
    held: list[socket.socket] = []
    try:
        c.start()
        leader = c.leader()
        a, b = [n for n in c.nodes if n != leader]
        lc = c.nodes[leader].client()
        assert lc.set("before", b"1")
        c.kill(b)  # quorum now needs `a`
        c.kill(a)
        held = [socket.create_connection(("127.0.0.1", c.nodes[leader].port), timeout=10) for _ in range(5)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", c.nodes[leader].port), timeout=10) as extra:
            extra.sendall(b"PING\r\n")
            assert extra.recv(200) == b"-ERR max number of clients reached\r\n"
        c.start(a, wait=False)  # it must dial the old leader through the full slots
        # lc was connected before the flood. Whichever of the two leads now, a commit needs
        # a message that `a` sent on a connection it opened to the full node.
        wait_until(lambda: lc.set("after", b"2"), 20, interval=0.2, what="a write to commit with `a` back")
        assert lc.get("before") == b"1"
        lc.close()
    except BaseException:
        print(c.logs())
        raise
    finally:
        for s in held:
            s.close()
        c.stop_all()
