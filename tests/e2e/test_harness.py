"""The e2e harness itself: its proxies relay faithfully and drop links only when told."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from .harness import LinkProxy, LocalCluster, wait_until


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[socket.socket]]]:
    """A listener that keeps every connection it accepts (the far end of a link)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(srv.getsockname()[1]), accepted
    finally:
        srv.close()
        for s in accepted:
            s.close()


def test_an_idle_one_way_link_stays_up(upstream: tuple[int, list[socket.socket]]) -> None:
    """A peer link carries bytes one way only; the proxy must not time the idle way out."""
    port, accepted = upstream
    proxy = LinkProxy(port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as caller:
            caller.sendall(b"hello")
            wait_until(lambda: accepted, 5, what="the proxy to connect upstream")
            far = accepted[0]
            far.settimeout(5)
            assert far.recv(5) == b"hello"
            time.sleep(2.6)  # longer than the connect timeout that used to stay on as a read timeout
            caller.sendall(b"still")
            assert far.recv(5) == b"still"
            assert proxy.accepted == 1 and len(accepted) == 1
    finally:
        proxy.close()


def test_drop_resets_the_link_and_the_caller_can_reconnect(upstream: tuple[int, list[socket.socket]]) -> None:
    port, accepted = upstream
    proxy = LinkProxy(port)
    try:
        caller = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        wait_until(lambda: proxy.accepted == 1, 5, what="the first connection")
        assert proxy.drop() == 1
        with caller:
            assert caller.recv(10) == b""  # the caller sees its connection end
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as again:
            again.sendall(b"x")
            wait_until(lambda: len(accepted) == 2, 5, what="the reconnect")
            accepted[1].settimeout(5)
            assert accepted[1].recv(1) == b"x"
    finally:
        proxy.close()


def test_proxied_cluster_links_reconnect_only_when_dropped(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, proxies=True, fault_seed=7)
    try:
        c.start()
        leader = c.leader()
        c.nodes[leader].client().set("k", "v1")
        wait_until(lambda: all(link.accepted >= 1 for link in c.links.values()), 10, what="every link to connect")
        before = {k: link.accepted for k, link in c.links.items()}
        time.sleep(2.5)  # the old proxy tore every link down every 2 s
        assert {k: link.accepted for k, link in c.links.items()} == before
        # A seeded drop is replayable: the same seed picks the same links.
        replay = random.Random(7)
        picks = [c.drop_link() for _ in range(3)]
        assert picks == [replay.choice(sorted(c.links)) for _ in range(3)]
        for a, b in picks:
            wait_until(lambda: c.links[(a, b)].accepted > before[(a, b)], 10, what=f"{a} to reconnect to {b}")
        c.nodes[c.leader()].client().set("k", "v2")
        for nid in c.nodes:
            wait_until(lambda: c.nodes[nid].client().get("k") == b"v2", 10, what=f"{nid} to see the write")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_a_delayed_link_delivers_late_in_order_and_then_on_time(upstream: tuple[int, list[socket.socket]]) -> None:
    port, accepted = upstream
    proxy = LinkProxy(port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as caller:
            caller.sendall(b"a")
            wait_until(lambda: accepted, 5, what="the proxy to connect upstream")
            far = accepted[0]
            far.settimeout(5)
            assert far.recv(1) == b"a"
            proxy.set_delay(0.4)
            sent = time.monotonic()
            for chunk in (b"1", b"2", b"3"):
                caller.sendall(chunk)
                time.sleep(0.05)
            got = b""
            while len(got) < 3:
                got += far.recv(3)
            assert got == b"123"
            assert time.monotonic() - sent >= 0.4
            proxy.set_delay(0)
            sent = time.monotonic()
            caller.sendall(b"z")
            assert far.recv(1) == b"z"
            assert time.monotonic() - sent < 0.3
    finally:
        proxy.close()
