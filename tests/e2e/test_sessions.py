"""End to end, issue 11: exactly-once writes with client sessions, and requests that survive a
dropped connection — real `aegis serve` processes, kill -9 and the harness's link proxies."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
import trio

from aegis.client import AegisClient, RetryPolicy

from .harness import LocalCluster, running, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running(LocalCluster(tmp_path), leader=True) as c:
        yield c


def test_session_call_retried_returns_the_first_reply_on_any_node(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    f = cluster.nodes[follower].client()
    sid = f.execute_command("SESSION", "OPEN")
    assert isinstance(sid, int) and sid > 0
    assert f.execute_command("SESSION", "CALL", sid, 1, 0, "INCR", "c") == 1
    # The reply was "lost": the same call again, on another node, applies nothing.
    other = cluster.nodes[leader].client()
    assert other.execute_command("SESSION", "CALL", sid, 1, 0, "INCR", "c") == 1
    assert f.execute_command("SESSION", "CALL", sid, 2, 2, "INCR", "c") == 2
    with pytest.raises(redis.ResponseError, match="STALESEQ"):
        other.execute_command("SESSION", "CALL", sid, 1, 0, "INCR", "c")
    with pytest.raises(redis.ResponseError, match="NOSESSION"):
        other.execute_command("SESSION", "CALL", 12345, 1, 0, "INCR", "c")
    assert other.get("c") == b"2"
    # Plain redis clients pay nothing and see nothing new.
    assert other.incr("c") == 3


def test_incr_through_a_leader_kill_applies_exactly_once(cluster: LocalCluster) -> None:
    """An aegis.client INCR loop while the leader is killed: a write in flight at the kill
    (its reply lost, or -TIMEOUT) is retried with the same session and sequence number, so
    the replies are exactly 1..N and the counter moves by one per call."""
    leader = cluster.leader()
    addrs = [cluster.addr(n) for n in cluster.nodes]
    n_calls = 60
    got: list[int] = []
    killed = threading.Event()

    def killer() -> None:
        wait_until(lambda: len(got) >= 15, 20, what="some writes before the kill")
        cluster.kill(leader)
        killed.set()

    t = threading.Thread(target=killer, daemon=True)
    t.start()

    async def writes() -> None:
        retry = RetryPolicy(initial_backoff=0.02, max_backoff=0.2)
        async with AegisClient([cluster.addr(leader)] + [a for a in addrs if a != cluster.addr(leader)],
                               timeout=15, retry=retry) as client:
            for _ in range(n_calls):
                got.append(await client.incr("counter"))
                if not killed.is_set():
                    await trio.sleep(0.01)

    trio.run(writes)
    t.join(10)
    assert killed.is_set()
    assert got == list(range(1, n_calls + 1))
    alive = next(n for n in cluster.nodes if n != leader)
    assert cluster.nodes[alive].client().get("counter") == str(n_calls).encode()


def test_forwarded_session_write_survives_the_leader_kill_quickly(cluster: LocalCluster) -> None:
    """A follower re-forwards a session write to the new leader as soon as it is known
    instead of answering -TIMEOUT after --request-timeout (3 s here)."""
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    f = cluster.nodes[follower].client(socket_timeout=10)
    sid = f.execute_command("SESSION", "OPEN")
    f.execute_command("SESSION", "CALL", sid, 1, 0, "SET", "x", "0")
    proc = cluster.nodes[leader].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # the forwarded write cannot be answered
    try:
        start = time.monotonic()
        reply = f.execute_command("SESSION", "CALL", sid, 2, 2, "INCR", "x")
        elapsed = time.monotonic() - start
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # (the fixture stops it)
    assert reply == 1
    assert elapsed < 2.9, f"the write waited {elapsed:.1f} s"
    assert f.execute_command("SESSION", "CALL", sid, 2, 2, "INCR", "x") == 1  # and it applied once
    assert f.get("x") == b"1"


def test_follower_reads_survive_dropped_links_without_waiting_out_the_timeout(tmp_path: Path) -> None:
    with running(LocalCluster(tmp_path, proxies=True, fault_seed=11), leader=True) as c:
        leader = c.leader()
        follower = next(n for n in c.nodes if n != leader)
        c.nodes[leader].client().set("k", "v")
        stop = threading.Event()
        slowest: list[float] = []
        errors: list[str] = []

        def reader() -> None:
            r = c.nodes[follower].client(socket_timeout=10)
            worst = 0.0
            while not stop.is_set():
                start = time.monotonic()
                try:
                    assert r.get("k") == b"v"
                except redis.RedisError as exc:
                    errors.append(str(exc))
                worst = max(worst, time.monotonic() - start)
            slowest.append(worst)

        threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(40):  # reads are always in flight when a link drops
                c.drop_link(follower, leader) if i % 2 == 0 else c.drop_link(leader, follower)
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert not errors, errors[:3]
        assert len(slowest) == 4 and max(slowest) < 2.0, f"slowest read {max(slowest):.2f} s"
