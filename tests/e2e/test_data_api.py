"""End to end, the data API users expect from Redis and etcd: multi-key commands, versions,
MULTI/EXEC/WATCH, expiry, SCAN/KEYS/RANGE — redis-py against real 3-node clusters."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from .harness import LocalCluster, raw_command, running, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running(LocalCluster(tmp_path, extra=["--keys-limit", "500", "--range-limit", "300"]), leader=True) as c:
        yield c


def follower_of(cluster: LocalCluster) -> str:
    leader = cluster.leader()
    return next(n for n in cluster.nodes if n != leader)


def test_multi_key_and_string_commands_on_leader_and_follower(cluster: LocalCluster) -> None:
    for nid in (cluster.leader(), follower_of(cluster)):
        c = cluster.nodes[nid].client()
        p = f"{nid}:"
        assert c.mset({p + "a": "1", p + "b": "2"}) is True
        assert c.mget([p + "a", p + "nope", p + "b"]) == [b"1", None, b"2"]
        assert c.msetnx({p + "b": "x", p + "c": "3"}) is False
        assert c.exists(p + "c") == 0
        assert c.set(p + "a", "10", nx=True) is None
        assert c.set(p + "a", "11", xx=True, get=True) == b"1"
        assert c.getset(p + "a", "12") == b"11"
        assert c.getdel(p + "b") == b"2"
        assert c.append(p + "log", "ab") == 2 and c.append(p + "log", "cd") == 4
        assert c.strlen(p + "log") == 4
        assert c.setnx(p + "lock", "me") is True and c.setnx(p + "lock", "you") is False
        assert c.get(p + "a") == b"12"
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        cluster.nodes["n1"].client().execute_command("MSET", "a", "1", "b")


def test_versions_and_version_cas_for_locks(cluster: LocalCluster) -> None:
    c = cluster.nodes[follower_of(cluster)].client()
    assert c.execute_command("GETV", "lock") is None
    assert c.execute_command("CASV", "lock", 0, "owner-1") == 1  # take it: only if absent
    assert c.execute_command("CASV", "lock", 0, "owner-2") == 0  # someone has it
    value, version, revision = c.execute_command("GETV", "lock")
    assert (value, version) == (b"owner-1", 1) and revision > 0
    c.set("unrelated", "x")
    assert c.execute_command("GETV", "lock")[2] == revision  # the revision is the lock's own write
    assert c.execute_command("DELV", "lock", 2) == 0
    assert c.execute_command("DELV", "lock", 1) == 1  # release only what we hold
    assert c.get("lock") is None


def test_multi_exec_pipeline_and_watch_conflict_between_two_clients(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    a = cluster.nodes[follower_of(cluster)].client()
    b = cluster.nodes[leader].client()
    a.set("balance", 100)
    with a.pipeline(transaction=True) as pipe:
        pipe.decrby("balance", 30).incrby("savings", 30).get("balance").incr("balance:name")
        pipe.set("balance:name", "checking")
        out = pipe.execute(raise_on_error=False)
    assert out[:3] == [70, 30, b"70"] and out[3] == 1 and out[4] is True

    # WATCH: b writes the key between a's WATCH and EXEC, so a's EXEC does nothing.
    with a.pipeline(transaction=True) as pipe:
        pipe.watch("balance")
        current = int(pipe.get("balance") or 0)
        b.set("balance", 0)
        pipe.multi()
        pipe.set("balance", current - 10)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert a.get("balance") == b"0"
    # Unchanged since WATCH: EXEC applies.
    with a.pipeline(transaction=True) as pipe:
        pipe.watch("balance")
        pipe.multi()
        pipe.set("balance", 5)
        assert pipe.execute() == [True]
    assert b.get("balance") == b"5"


def test_transaction_errors_follow_redis(cluster: LocalCluster) -> None:
    port = cluster.nodes[follower_of(cluster)].port
    # A command that cannot be queued aborts EXEC; nothing runs.
    script = (b"MULTI\r\nSET t1 a\r\nNOSUCHCMD\r\nSET t2 b\r\nEXEC\r\nEXISTS t1 t2\r\n")
    with __import__("socket").create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(script)
        data = b""
        while data.count(b"\r\n") < 6:
            data += s.recv(65536)
    lines = data.split(b"\r\n")
    assert lines[0] == b"+OK" and lines[1] == b"+QUEUED"
    assert lines[2].startswith(b"-ERR unknown command 'NOSUCHCMD'")
    assert lines[3] == b"+QUEUED"
    assert lines[4] == b"-EXECABORT Transaction discarded because of previous errors."
    assert lines[5] == b":0"
    with pytest.raises(RuntimeError, match="ERR EXEC without MULTI"):
        raw_command(port, b"EXEC")
    with pytest.raises(RuntimeError, match="ERR DISCARD without MULTI"):
        raw_command(port, b"DISCARD")
    c = cluster.nodes["n1"].client()
    with c.pipeline(transaction=False) as p:
        p.execute_command("MULTI")
        p.execute_command("SCAN", "0")
        p.execute_command("MULTI")
        p.execute_command("DISCARD")
        out = p.execute(raise_on_error=False)
    assert out[0] in (b"OK", True, "OK")
    assert "only key commands" in str(out[1])
    assert "can not be nested" in str(out[2])


def test_exec_of_100_sets_is_all_or_nothing_across_a_leader_kill(cluster: LocalCluster) -> None:
    import socket

    for attempt in range(3):
        leader = cluster.leader()
        body = b"MULTI\r\n" + b"".join(b"SET txn%d:%d v%d\r\n" % (attempt, i, attempt) for i in range(100)) + b"EXEC\r\n"
        with socket.create_connection(("127.0.0.1", cluster.nodes[leader].port), timeout=5) as s:
            s.sendall(body)
            time.sleep(0.002 * attempt)  # kill before, around or after the commit
        cluster.kill(leader)
        survivors = [n for n in cluster.nodes if n != leader]
        new = cluster.leader(survivors)
        c = cluster.nodes[new].client()
        wait_until(lambda: c.set("probe", attempt), 10, what="the new leader to serve")
        for nid in survivors:
            cc = cluster.nodes[nid].client()
            n = cc.exists(*[f"txn{attempt}:{i}" for i in range(100)])
            assert n in (0, 100), f"a transaction was applied in part: {n} of 100 keys on {nid}"
        cluster.start(leader)
        wait_until(lambda: cluster.nodes[leader].client().get("probe") == str(attempt).encode(), 15,
                   what="the old leader to catch up")
        n_old = cluster.nodes[leader].client().exists(*[f"txn{attempt}:{i}" for i in range(100)])
        assert n_old == cluster.nodes[new].client().exists(*[f"txn{attempt}:{i}" for i in range(100)])


def test_ttl_expiry_is_the_same_on_every_node_across_a_leader_change(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    c = cluster.nodes[leader].client()
    assert c.set("short", "v", px=2500) is True
    assert c.set("long", "v", ex=600) is True
    c.set("plain", "v")
    assert c.expire("plain", 600) is True and c.persist("plain") is True
    for nid in cluster.nodes:
        cc = cluster.nodes[nid].client()
        assert cc.get("short") == b"v"
        assert 0 < cc.pttl("short") <= 2500
        assert 590 <= cc.ttl("long") <= 600
        assert cc.ttl("plain") == -1 and cc.ttl("nope") == -2
    cluster.kill(leader)  # the deadline must survive the leader that set it
    survivors = [n for n in cluster.nodes if n != leader]
    cluster.leader(survivors)
    wait_until(lambda: all(cluster.nodes[n].client().get("short") is None for n in survivors), 10,
               what="the key to expire everywhere")
    for nid in survivors:
        cc = cluster.nodes[nid].client()
        assert cc.get("short") is None and cc.exists("short") == 0 and cc.ttl("short") == -2
        assert cc.get("long") == b"v"
    # The new leader removes it through the log: DBSIZE drops on every node.
    wait_until(lambda: all(cluster.nodes[n].client().dbsize() == 2 for n in survivors), 10,
               what="the expired key to be purged on every node")
    cluster.start(leader)
    wait_until(lambda: cluster.nodes[leader].client().dbsize() == 2, 15, what="the old leader to purge it too")
    assert cluster.nodes[leader].client().get("short") is None


def test_scan_returns_every_key_present_throughout_while_keys_are_written(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    w = cluster.nodes[leader].client()
    stable = {f"user:{i}".encode() for i in range(1500)}
    with w.pipeline(transaction=False) as p:
        for k in stable:
            p.set(k, "x")
        p.execute()
    stop = threading.Event()
    churned = 0

    def churn() -> None:
        nonlocal churned
        cw = cluster.nodes[leader].client()
        while not stop.is_set() and churned < 5000:
            cw.set(f"tmp:{churned}", "y")
            if churned % 3 == 0:
                cw.delete(f"tmp:{churned - 3}")
            churned += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        seen: set[bytes] = set()
        cursor = 0
        nodes = list(cluster.nodes)
        step = 0
        while True:  # hop from node to node with the same cursor
            cc = cluster.nodes[nodes[step % 3]].client()
            cursor, keys = cc.scan(cursor, count=97)
            seen.update(keys)
            step += 1
            if cursor == 0:
                break
    finally:
        stop.set()
        t.join()
    assert churned > 0 and step > 10
    assert stable <= seen, f"{len(stable - seen)} keys present throughout were not returned"
    matched = set(cluster.nodes["n2"].client().scan_iter(match="user:1?", count=200))
    assert matched == {f"user:1{i}".encode() for i in range(10)}


def test_keys_dbsize_range_and_prefix(cluster: LocalCluster) -> None:
    c = cluster.nodes[follower_of(cluster)].client()
    with c.pipeline(transaction=False) as p:
        for i in range(400):
            p.set(f"item:{i:04d}", f"v{i}")
        for i in range(5):
            p.set(f"cfg:{i}", f"c{i}")
        p.execute()
    assert c.dbsize() == 405
    assert c.keys("cfg:*") == [f"cfg:{i}".encode() for i in range(5)]  # byte order
    assert sorted(c.keys("item:000?")) == [f"item:000{i}".encode() for i in range(10)]
    c.set("item:0001", "v", px=1)
    time.sleep(0.05)
    assert b"item:0001" not in c.keys("item:000?")  # expired: hidden at once
    with c.pipeline(transaction=False) as p:
        for i in range(200):
            p.set(f"more:{i}", "x")
        p.execute()
    with pytest.raises(redis.ResponseError, match="KEYS would examine more than 500 keys"):
        c.keys("*")
    assert c.execute_command("PREFIX", "cfg:") == [x for i in range(5) for x in (f"cfg:{i}".encode(), f"c{i}".encode())]
    assert c.execute_command("PREFIX", "cfg:", "LIMIT", 2, "KEYSONLY") == [b"cfg:0", b"cfg:1"]
    assert c.execute_command("RANGE", "[item:0010", "(item:0013", "KEYSONLY") == [
        b"item:0010", b"item:0011", b"item:0012"]
    assert c.execute_command("RANGE", "(item:0010", "[item:0012") == [b"item:0011", b"v11", b"item:0012", b"v12"]
    assert c.execute_command("RANGE", "-", "[cfg:1", "KEYSONLY") == [b"cfg:0", b"cfg:1"]
    assert c.execute_command("RANGE", "+", "-") == []
    # Paging: LIMIT n, then continue after the last key.
    page1 = c.execute_command("RANGE", "[item:", "+", "LIMIT", 250, "KEYSONLY")
    page2 = c.execute_command("RANGE", b"(" + page1[-1], "(item;", "LIMIT", 250, "KEYSONLY")
    assert len(page1) == 250 and len(page2) == 399 - 250  # item:0001 expired
    with pytest.raises(redis.ResponseError, match="more than 300 keys"):
        c.execute_command("RANGE", "-", "+")
    with pytest.raises(redis.ResponseError, match="above this node's --range-limit 300"):
        c.execute_command("RANGE", "-", "+", "LIMIT", 301)
    with pytest.raises(redis.ResponseError, match="not valid string range item"):
        c.execute_command("RANGE", "a", "b")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli_scan_mode_walks_every_key(cluster: LocalCluster) -> None:
    c = cluster.nodes["n1"].client()
    with c.pipeline(transaction=False) as p:
        for i in range(300):
            p.set(f"k:{i}", "v")
        p.execute()
    out = subprocess.run(["redis-cli", "-p", str(cluster.nodes["n3"].port), "--scan", "--pattern", "k:*"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert sorted(set(out)) == sorted(f"k:{i}" for i in range(300))

