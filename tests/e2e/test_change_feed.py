"""End to end, the change feed: CHANGES on real 3-node clusters, resumed across kill -9."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from .harness import LocalCluster, running, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running(LocalCluster(tmp_path), leader=True) as c:
        yield c


class FeedReader:
    """A CHANGES subscriber on one node (redis-py's connection reads the RESP stream)."""

    def __init__(self, port: int, prefix: str, after: int | None) -> None:
        self.conn = redis.Connection(port=port, socket_timeout=10)
        self.conn.connect()
        args = ["CHANGES", prefix] + (["FROM", after] if after is not None else [])
        self.conn.send_command(*args)
        head = self.conn.read_response()
        assert head[0] == b"changes", head
        self.start = int(head[2])

    def next(self) -> tuple[int, list[tuple[bytes, bytes | None]]]:
        msg = self.conn.read_response()
        assert msg[0] == b"change", msg
        items = msg[2]
        return int(msg[1]), [(items[i], items[i + 1]) for i in range(0, len(items), 2)]

    def close(self) -> None:
        self.conn.disconnect()


def test_change_feed_resumes_across_a_kill9_restart_and_sees_every_change_once(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    acked: list[tuple[bytes, bytes | None]] = []
    lock = threading.Lock()
    done = threading.Event()

    def writer(w: int) -> None:
        c = cluster.nodes[leader].client()
        for i in range(300):
            key, value = f"f:{w}:{i % 40}", f"{w}-{i}"
            if i % 7 == 6:
                if c.delete(key):
                    with lock:
                        acked.append((key.encode(), None))
            else:
                assert c.set(key, value)
                with lock:
                    acked.append((key.encode(), value.encode()))
            c.set(f"other:{i}", "not under the prefix")
        done.set()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    reader = FeedReader(cluster.nodes[follower].port, "f:", 0)
    for t in threads:
        t.start()
    seen: list[tuple[int, bytes, bytes | None]] = []
    while len(seen) < 150:
        rev, items = reader.next()
        seen += [(rev, k, v) for k, v in items]
    # Stop mid-stream; the node we read from dies and comes back.
    reader.close()
    last = seen[-1][0]
    seen = [s for s in seen if s[0] <= last]
    cluster.kill(follower)
    cluster.start(follower)
    reader = FeedReader(cluster.nodes[follower].port, "f:", last)
    assert reader.start == last
    for t in threads:
        t.join()
    deadline = time.monotonic() + 20
    with lock:
        want = len(acked)
    while True:
        puts = sum(1 for s in seen if s[2] is not None)
        if puts >= sum(1 for a in acked if a[1] is not None) or time.monotonic() > deadline:
            break
        rev, items = reader.next()
        assert rev > seen[-1][0]  # commit order, no revision twice
        seen += [(rev, k, v) for k, v in items]
    reader.close()
    assert all(k.startswith(b"f:") for _, k, _ in seen)
    # Every acknowledged SET appears exactly once (values are unique), in each key's order.
    values = [(k, v) for _, k, v in seen if v is not None]
    assert sorted(values) == sorted(a for a in acked if a[1] is not None) and want == len(acked)
    for key in {k for k, _ in acked}:
        assert [v for k, v in values if k == key] == [v for k, v in acked if k == key and v is not None]
    # Deletions come through as nil.
    assert {k for _, k, v in seen if v is None} == {k for k, v in acked if v is None}


def test_change_feed_from_a_forgotten_revision_is_compacted(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, snapshot_threshold=200, extra=["--feed-history", "100"])
    try:
        c.start()
        leader = c.leader()
        client = c.nodes[leader].client()
        with client.pipeline(transaction=False) as p:
            for i in range(3000):
                p.set(f"x{i}", i)
            p.execute()
        def compacted() -> bool:
            conn = redis.Connection(port=c.nodes[leader].port, socket_timeout=5)
            try:
                conn.connect()
                conn.send_command("CHANGES", "x", "FROM", 1)
                try:
                    conn.read_response()
                    conn.read_response()
                except redis.ResponseError as exc:
                    return "COMPACTED" in str(exc) and "current revision" in str(exc)
                return False
            finally:
                conn.disconnect()
        wait_until(compacted, 15, what="history older than --feed-history to be forgotten")
    finally:
        c.stop_all()


def test_keyspace_notifications_with_redis_py_pubsub_on_a_follower(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    for protocol in (3, 2):  # redis-py 8 speaks RESP3 (push frames); older clients RESP2
        sub = cluster.nodes[follower].client(protocol=protocol).pubsub()
        sub.psubscribe("__keyspace@0__:user:*")
        sub.subscribe("__keyevent@0__:del")
        confirmations = [sub.get_message(timeout=2) for _ in range(2)]
        assert [m["type"] for m in confirmations if m] == ["psubscribe", "subscribe"]
        w = cluster.nodes[leader].client()
        w.set("user:1", "a")
        w.set("elsewhere", "x")
        w.delete("user:1")
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            m = sub.get_message(timeout=1)
            if m:
                got.append((m["type"], m["channel"], m["data"]))
        assert got == [("pmessage", b"__keyspace@0__:user:1", b"set"),
                       ("pmessage", b"__keyspace@0__:user:1", b"del"),
                       ("message", b"__keyevent@0__:del", b"user:1")]
        sub.close()
    # Subscribed mode takes only the pub/sub commands; when the last subscription ends, the
    # connection is an ordinary one again.
    import socket

    with socket.create_connection(("127.0.0.1", cluster.nodes[follower].port), timeout=5) as s:
        s.sendall(b"SUBSCRIBE ch\r\nGET k\r\nUNSUBSCRIBE\r\nSET k v\r\n")
        data = b""
        while not data.endswith(b"+OK\r\n"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert b"only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT are allowed" in data
    assert data.index(b"unsubscribe") < data.index(b"+OK")


def test_subscribers_that_vanish_mid_stream_do_not_hurt_the_node(cluster: LocalCluster) -> None:
    import socket

    leader = cluster.leader()
    node = cluster.nodes[leader]
    c = node.client()
    with c.pipeline(transaction=False) as p:
        for i in range(2000):
            p.set(f"v:{i}", "x" * 200)
        p.execute()
    for command in (b"CHANGES v: FROM 0\r\n", b"PSUBSCRIBE __keyspace@0__:*\r\n"):
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", node.port))
            s.sendall(command)
            s.settimeout(5)
            assert s.recv(64)  # the stream has begun: the node is sending
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # a reset, with the server in the middle of sending
        with c.pipeline(transaction=False) as p:
            for i in range(500):
                p.set(f"v:{i}", "y")
            p.execute()
    time.sleep(0.5)
    assert node.alive() and c.set("still", "here") and c.get("still") == b"here"
