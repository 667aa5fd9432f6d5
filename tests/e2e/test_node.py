"""End to end: real `aegis serve` processes on loopback, redis-py and redis-cli as clients."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from .harness import LocalCluster, free_port, free_port_run, raw_command, running, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    try:
        c.start()
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, proxies=True)
    try:
        c.start()
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_write_through_any_node_read_from_every_node(cluster: LocalCluster) -> None:
    cluster.leader()
    for i, nid in enumerate(cluster.nodes):
        assert cluster.nodes[nid].client().set(f"k{i}", f"v{i}") is True
    for nid in cluster.nodes:
        c = cluster.nodes[nid].client()
        assert [c.get(f"k{i}") for i in range(3)] == [b"v0", b"v1", b"v2"]
    c = cluster.nodes["n2"].client()
    assert c.incr("counter") == 1
    assert c.incrby("counter", 41) == 42
    assert c.delete("k0", "k1", "nope") == 2
    assert c.execute_command("CAS", "k2", "v2", "new") == 1
    assert c.execute_command("CAS", "k2", "v2", "again") == 0
    assert c.execute_command("CAS", "missing", "", "x") == 0
    assert cluster.nodes["n3"].client().get("k2") == b"new"
    with pytest.raises(redis.ResponseError, match="not an integer"):
        c.incr("k2")
    assert c.get("k2") == b"new"  # a failed INCR changes nothing


def test_info_and_cluster_status_fields(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    info = cluster.info(leader)
    for field in ("node_id", "role", "leader_id", "term", "commit_index", "applied_index", "last_log_index",
                  "members"):
        assert field in info
    assert info["role"] == "leader" and info["leader_id"] == leader
    assert info["members"] == "n1,n2,n3"
    c = cluster.nodes[leader].client(protocol=2)
    cinfo = c.execute_command("CLUSTER", "INFO").decode()
    assert "cluster_state:Healthy" in cinfo
    nodes = c.execute_command("CLUSTER", "NODES").decode().splitlines()
    assert len(nodes) == 3
    assert any(f"{leader} " in line and "role=leader" in line for line in nodes)
    wait_until(lambda: all("health=Healthy" in line
                           for line in c.execute_command("CLUSTER", "NODES").decode().splitlines()),
               10, what="every member to be heard from")
    out = subprocess.run([sys.executable, "-m", "aegis.cli", "status", "--addr", cluster.nodes[leader].addr,
                          "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"role": "leader"' in out.stdout


def test_kill_leader_new_leader_serves_and_no_ack_lost(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    acked = {}
    for i in range(200):
        c = cluster.nodes[leader].client()
        assert c.set(f"a{i}", str(i))
        acked[f"a{i}"] = str(i).encode()
    cluster.kill(leader)
    survivors = [n for n in cluster.nodes if n != leader]
    t0 = time.monotonic()
    new = cluster.leader(survivors)
    c = cluster.nodes[new].client()
    wait_until(lambda: c.set("after", "1"), 10, what="a write on the new leader")
    assert time.monotonic() - t0 < 8  # a few election timeouts (20-40 ticks of 20 ms), generous under load
    for nid in survivors:
        cc = cluster.nodes[nid].client()
        values = cc.mget(list(acked)) if False else [cc.get(k) for k in acked]
        assert values == list(acked.values())
    # The old leader comes back as a follower and catches up.
    cluster.start(leader)
    wait_until(lambda: cluster.nodes[leader].client().get("after") == b"1", 10, what="old leader to catch up")


def test_restart_every_node_at_once_keeps_all_data(cluster: LocalCluster) -> None:
    cluster.leader()
    c = cluster.nodes["n1"].client()
    for i in range(100):
        c.set(f"r{i}", f"{i}")
    for nid in cluster.nodes:
        cluster.kill(nid)  # kill -9 every node
    cluster.start()
    cluster.leader()
    for nid in cluster.nodes:
        cc = cluster.nodes[nid].client()
        assert [cc.get(f"r{i}") for i in range(100)] == [f"{i}".encode() for i in range(100)]


def test_follower_down_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, snapshot_threshold=50)
    try:
        c.start()
        leader = c.leader()
        lagger = next(n for n in c.nodes if n != leader)
        c.kill(lagger)
        cl = c.nodes[leader].client()
        # Pipelined writes share log entries; a pipeline per 4 keys makes ~100 entries.
        for lo in range(0, 400, 4):
            pipe = cl.pipeline(transaction=False)
            for i in range(lo, lo + 4):
                pipe.set(f"s{i}", f"{i}")
            pipe.execute()
        # The leader compacts in the background of its Raft loop, right after applying.
        wait_until(lambda: int(c.info(leader)["snapshot_index"]) > 0 and int(c.info(leader)["first_log_index"]) > 2,
                   10, what="the leader to compact its log")
        c.start(lagger)
        wait_until(lambda: c.nodes[lagger].client().get("s399") == b"399", 15, what="the lagger to catch up")
        assert int(c.info(lagger)["snapshots_installed"]) >= 1
        lc = c.nodes[lagger].client()
        assert [lc.get(f"s{i}") for i in range(0, 400, 37)] == [f"{i}".encode() for i in range(0, 400, 37)]
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_a_write_to_a_cut_off_leader_times_out_after_the_request_timeout(proxied: LocalCluster) -> None:
    """A leader cut off from both followers cannot commit: the client gets -TIMEOUT (the
    outcome is unknown) once --request-timeout (3 s here) has passed, not before, and not
    much after; the connection stays usable."""
    c = proxied
    leader = c.leader()
    client = c.nodes[leader].client(socket_timeout=15)
    client.set("t", "before")
    c.isolate(leader)
    t0 = time.monotonic()
    with pytest.raises(redis.ResponseError) as exc:
        client.set("t", "cut-off")
    took = time.monotonic() - t0
    assert exc.value.args[0].startswith("TIMEOUT"), exc.value.args[0]
    assert 2.9 <= took < 4.0, took
    assert client.ping()
    c.heal()


def test_partitioned_minority_cannot_write_or_read(proxied: LocalCluster) -> None:
    c = proxied
    leader = c.leader()
    c.nodes[leader].client().set("p", "before")
    minority = next(n for n in c.nodes if n != leader)
    c.isolate(minority)
    m = c.nodes[minority].client(socket_timeout=10)
    t0 = time.monotonic()
    with pytest.raises(redis.ResponseError) as exc:
        m.set("p", "from-minority")
    assert exc.value.args[0].split()[0] in ("NOLEADER", "TIMEOUT", "TRYAGAIN")
    with pytest.raises(redis.ResponseError) as exc:
        m.get("p")
    assert exc.value.args[0].split()[0] in ("NOLEADER", "TIMEOUT", "TRYAGAIN")
    assert time.monotonic() - t0 < 10
    # The majority still serves.
    major = [n for n in c.nodes if n != minority]
    new = c.leader(major)
    c.nodes[new].client().set("p", "after")
    c.heal()
    wait_until(lambda: c.nodes[minority].client().get("p") == b"after", 10, what="the minority to heal")


def test_isolated_leader_steps_down_and_majority_elects(proxied: LocalCluster) -> None:
    c = proxied
    old = c.leader()
    c.isolate(old)
    rest = [n for n in c.nodes if n != old]
    new = c.leader(rest)
    assert new != old
    wait_until(lambda: c.info(old)["role"] != "leader", 10, what="the isolated leader to step down")
    c.nodes[new].client().set("x", "1")
    c.heal()
    wait_until(lambda: c.nodes[old].client().get("x") == b"1", 10, what="old leader to rejoin")


def test_kill9_minority_during_writes_loses_nothing(cluster: LocalCluster) -> None:
    rng = random.Random(42)
    acked: dict[str, bytes] = {}
    leader = cluster.leader()
    for round_no in range(3):
        victim = rng.choice([n for n in cluster.nodes if n != leader])
        for i in range(60):
            key = f"w{round_no}-{i}"
            try:
                if cluster.nodes[leader].client(socket_timeout=5).set(key, key):
                    acked[key] = key.encode()
            except redis.RedisError:
                pass
            if i == 20:
                cluster.kill(victim)
                assert not cluster.nodes[victim].alive()
        cluster.start(victim)
    # Losing one follower of three leaves a quorum: (nearly) every write is acknowledged, so
    # the check below has something to check.
    assert len(acked) >= 170, f"only {len(acked)} of 180 writes acknowledged"
    for nid in cluster.nodes:
        cc = cluster.nodes[nid].client()
        wait_until(lambda cc=cc: all(cc.get(k) == v for k, v in acked.items()), 15, what=f"{nid} has every ack")


def test_redis_cli_inline_pipelining_and_errors(cluster: LocalCluster) -> None:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")
    leader = cluster.leader()
    port = str(cluster.nodes[leader].port)
    run = lambda *a: subprocess.run(["redis-cli", "-p", port, *a], capture_output=True, text=True, timeout=30)
    assert run("SET", "cli", "hello").stdout.strip() == "OK"
    assert run("GET", "cli").stdout.strip() == "hello"
    assert "wrong number of arguments" in run("GET").stdout
    assert "unknown command" in run("FLY", "away").stdout
    # Pipelined RESP through redis-cli --pipe.
    proto = "".join(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n$1\r\nv\r\n" for k in (f"pp{i}" for i in range(100)))
    out = subprocess.run(["redis-cli", "-p", port, "--pipe"], input=proto, capture_output=True, text=True,
                         timeout=30)
    assert "errors: 0, replies: 100" in out.stdout
    # Inline commands over a raw socket, as typed into nc, pipelined in one packet.
    with socket.create_connection(("127.0.0.1", cluster.nodes[leader].port), timeout=10) as s:
        s.sendall(b"SET inline \"a b\"\r\nGET inline\r\nPING\r\n")
        buf = b""
        while buf.count(b"\r\n") < 4:
            buf += s.recv(4096)
    assert buf == b"+OK\r\n$3\r\na b\r\n+PONG\r\n"


def test_redis_py_resp3_and_pipeline(cluster: LocalCluster) -> None:
    cluster.leader()
    c = cluster.nodes["n3"].client()  # redis-py speaks RESP3 by default (HELLO 3)
    assert c.get("nothing") is None
    pipe = c.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"rp{i}", i)
    pipe.get("rp49")
    pipe.incr("rp49")
    results = pipe.execute()
    assert results[:50] == [True] * 50 and results[50:] == [b"49", 50]
    c2 = cluster.nodes["n1"].client(protocol=2)
    assert c2.get("rp49") == b"50" and c2.get("nothing") is None


def test_a_pipelined_get_sees_the_sets_before_it_on_every_node(cluster: LocalCluster) -> None:
    """SETs then a GET in one pipeline: the GET's read point is asked for only after the
    SETs were answered, on the leader and on followers (which forward the SETs). The fast
    path for plain SET/GET once submitted the GET first, and a follower answered nil."""
    cluster.leader()
    stale = []
    for nid, node in sorted(cluster.nodes.items()):
        c = node.client(protocol=2)
        for round_ in range(20):
            pipe = c.pipeline(transaction=False)
            for i in range(50):
                pipe.set(f"po:{nid}:{round_}:{i}", i)
            pipe.get(f"po:{nid}:{round_}:49")
            got = pipe.execute()[50]
            if got != b"49":
                stale.append((nid, round_, got))
    assert not stale


def test_gets_around_a_set_in_one_pipeline_do_not_share_a_read_point(cluster: LocalCluster) -> None:
    """The plain GETs of one run share a read point; a SET between two runs ends the first,
    so the GETs after it see it, on the leader and on followers."""
    cluster.leader()
    wrong = []
    for nid, node in sorted(cluster.nodes.items()):
        c = node.client(protocol=2)
        key = f"gsg:{nid}"
        c.set(key, "old")
        for round_ in range(20):
            pipe = c.pipeline(transaction=False)
            for _ in range(8):
                pipe.get(key)
            pipe.set(key, round_)
            for _ in range(8):
                pipe.get(key)
            got = pipe.execute()
            before = b"old" if round_ == 0 else str(round_ - 1).encode()
            if got != [before] * 8 + [True] + [str(round_).encode()] * 8:
                wrong.append((nid, round_, got))
    assert not wrong


def test_concurrent_reads_sharing_a_read_point_see_every_acknowledged_write(cluster: LocalCluster) -> None:
    """Reads that reach the Raft task together share one read point: 16 clients pipelining
    GETs on every node, each right after its own acknowledged SET, all see their write."""
    import threading

    cluster.leader()
    errors: list[str] = []

    def reader(nid: str, i: int) -> None:
        try:
            c = cluster.nodes[nid].client(protocol=2, socket_timeout=10)
            for round_ in range(10):
                key = f"rp:{nid}:{i}:{round_}"
                c.set(key, round_)
                pipe = c.pipeline(transaction=False)
                for _ in range(20):
                    pipe.get(key)
                got = pipe.execute()
                if got != [str(round_).encode()] * 20:
                    errors.append(f"{key}: {got[:3]}")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(f"{nid}/{i}: {exc!r}")

    threads = [threading.Thread(target=reader, args=(nid, i), daemon=True)
               for nid in sorted(cluster.nodes) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], "readers still waiting after 60 s"
    assert not errors, errors[:5]


def test_bad_input_is_refused_and_changes_nothing(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    port = cluster.nodes[leader].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"*1\r\n$-5\r\n")
        data = s.recv(4096)
        assert data.startswith(b"-ERR Protocol error")
        assert s.recv(4096) == b""  # closed after a protocol error
    c = cluster.nodes[leader].client()
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        c.execute_command("SET", "only-key")
    before = cluster.info(leader)["commit_index"]
    with pytest.raises(redis.ResponseError):
        c.execute_command("INCRBY", "k", "not-a-number")
    with pytest.raises(redis.ResponseError, match="value is too large"):
        c.set("big", b"x" * (8 * 1024 * 1024 + 1))
    with pytest.raises(redis.ResponseError, match="key is too long"):
        c.set(b"k" * 70_000, "v")
    assert c.ping()  # the connection survives a refused command
    assert cluster.info(leader)["commit_index"] == before
    assert c.get("big") is None


def test_non_member_peer_is_refused(cluster: LocalCluster) -> None:
    from aegis.peers import FRAME_MSG, PEER_MAGIC
    from aegis.peers import frame as _frame
    from aegis.transport import Handshake, encode

    leader = cluster.leader()
    with socket.create_connection(("127.0.0.1", cluster.nodes[leader].port), timeout=10) as s:
        s.sendall(PEER_MAGIC + _frame(FRAME_MSG + encode(Handshake(node_id="intruder", cluster="aegis"))))
        data = b""
        while True:
            more = s.recv(4096)
            if not more:
                break
            data += more
    assert data[4:5] == b"R" and b"not a member" in data
    with socket.create_connection(("127.0.0.1", cluster.nodes[leader].port), timeout=10) as s:
        s.sendall(PEER_MAGIC + _frame(FRAME_MSG + encode(Handshake(node_id="n2", cluster="other"))))
        data = s.recv(4096)
    assert b"cluster mismatch" in data


def test_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=1)
    try:
        c.start()
        c.nodes["n1"].client().set("x", "1")
    finally:
        c.stop_all()
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "aegis.cli", "serve", "--id", "zz", "--listen",
                          f"127.0.0.1:{port}", "--data", str(tmp_path / "n1")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3
    assert "n1" in out.stderr and "zz" in out.stderr and "Traceback" not in out.stderr


def test_single_node_cluster_serves_at_once(tmp_path: Path) -> None:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "aegis.cli", "serve", "--id", "solo", "--listen",
                          f"127.0.0.1:{port}", "--data", str(tmp_path / "solo")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = redis.Redis(port=port, socket_timeout=5)
        wait_until(lambda: c.ping(), 10, what="solo to listen")
        t0 = time.monotonic()
        assert c.set("a", "1") and c.get("a") == b"1"
        assert time.monotonic() - t0 < 3.0  # no election timeout to wait for
        # SIGTERM shuts it down cleanly.
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_wrong_flags_are_clear_errors(tmp_path: Path) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "aegis.cli", *a], capture_output=True, text=True,
                                    timeout=30)
    out = run("serve", "--id", "n1", "--listen", "nonsense", "--data", str(tmp_path / "d"))
    assert out.returncode == 2 and "HOST:PORT" in out.stderr
    out = run("serve", "--id", "n9", "--listen", "127.0.0.1:1", "--data", str(tmp_path / "d"),
              "--peers", "n1=127.0.0.1:2")
    assert out.returncode == 2 and "does not appear in --peers" in out.stderr
    out = run("serve", "--id", "n1", "--listen", "127.0.0.1:1", "--data", str(tmp_path / "d"),
              "--peers", "n1=127.0.0.1:2,n1=127.0.0.1:3")
    assert out.returncode == 2 and "named twice" in out.stderr
    for bad in ("-1", "nan", "soon"):
        out = run("serve", "--id", "n1", "--listen", "127.0.0.1:1", "--data", str(tmp_path / "d"),
                  "--commit-notice-ms", bad)
        assert out.returncode == 2 and "--commit-notice-ms" in out.stderr
    assert not (tmp_path / "d").exists()


def test_kill9_every_node_mid_write_loses_no_ack(cluster: LocalCluster) -> None:
    """Writers run on three connections; every node is kill -9'd at a random moment."""
    import threading

    rng = random.Random(7)
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    for round_no in range(3):
        leader = cluster.leader()
        stop = threading.Event()

        def writer(w: int) -> None:
            c = cluster.nodes[leader].client(socket_timeout=5)
            i = 0
            while not stop.is_set() and i < 5000:
                key = f"k{round_no}-{w}-{i}"
                try:
                    if c.set(key, key):
                        with lock:
                            acked[key] = key.encode()
                except redis.RedisError:
                    return
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 0.8))
        for nid in cluster.nodes:
            cluster.kill(nid)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        cluster.start()
    cluster.leader()
    assert len(acked) > 100
    for nid in cluster.nodes:
        cc = cluster.nodes[nid].client()
        keys = sorted(acked)
        wait_until(lambda cc=cc: [cc.get(k) for k in keys] == [acked[k] for k in keys], 15,
                   what=f"{nid} to hold every acknowledged write")


def test_member_add_join_promote_and_remove(cluster: LocalCluster, tmp_path: Path) -> None:
    """Grow the cluster with `aegis serve --join` + MEMBER ADD, as a learner then a voter."""
    from .harness import NodeProc

    leader = cluster.leader()
    lc = cluster.nodes[leader].client(protocol=2)
    lc.set("before", "1")
    new = NodeProc("n4", free_port(), tmp_path / "n4", tmp_path / "n4.log")
    peers = ",".join(f"{n}={p.addr}" for n, p in cluster.nodes.items()) + f",n4={new.addr}"
    logf = open(new.log, "ab")
    new.proc = subprocess.Popen([sys.executable, "-m", "aegis.cli", "serve", "--id", "n4", "--listen", new.addr,
                                 "--data", str(new.data), "--peers", peers, "--join", "--tick-ms", "20"],
                                stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    cluster.nodes["n4"] = new  # stopped with the others
    try:
        wait_until(lambda: new.client().ping(), 15, what="n4 to listen")
        # A joining node never elects itself.
        assert cluster.info("n4")["role"] == "learner"
        assert lc.execute_command("MEMBER", "ADD", "n4", new.addr, "LEARNER") in (b"OK", "OK", True)
        wait_until(lambda: new.client().get("before") == b"1", 15, what="the learner to catch up")
        assert cluster.info("n4")["role"] == "learner"
        assert lc.execute_command("MEMBER", "PROMOTE", "n4") in (b"OK", "OK", True)
        wait_until(lambda: cluster.info("n4")["voters"] == "n1,n2,n3,n4", 10, what="n4 to be a voter")
        members = [m.decode() if isinstance(m, bytes) else m for m in lc.execute_command("MEMBER", "LIST")]
        assert len(members) == 4 and any(m.startswith("n4 ") and "voter" in m for m in members)
        # With four voters one may fail and writes still commit (3 of 4).
        victim = next(n for n in ("n1", "n2", "n3") if n != leader)
        cluster.kill(victim)
        assert cluster.nodes[leader].client().set("after", "2")
        wait_until(lambda: new.client().get("after") == b"2", 10, what="n4 to apply")
        cluster.start(victim)
        with pytest.raises(redis.ResponseError, match="another membership change|not a member|ERR"):
            lc.execute_command("MEMBER", "REMOVE", "nobody")
        # The joined node leads, then removes itself: its followers must stay connected to it
        # until the removal commits, so it is answered OK, not -TIMEOUT (issue 10).
        assert lc.execute_command("LEADER", "TRANSFER", "n4") in (b"OK", "OK", True)
        wait_until(lambda: cluster.info("n4")["role"] == "leader", 10, what="n4 to lead")
        assert new.client(protocol=2).execute_command("MEMBER", "REMOVE", "n4") in (b"OK", "OK", True)
        wait_until(lambda: cluster.info(leader)["voters"] == "n1,n2,n3", 10, what="n4 to be removed")
        cluster.leader(["n1", "n2", "n3"])
    except BaseException:
        print(cluster.logs())
        raise


def test_aegis_up_runs_stops_and_restarts_from_the_same_data(tmp_path: Path) -> None:
    base = free_port_run(3)
    cmd = [sys.executable, "-m", "aegis.cli", "up", "--data", str(tmp_path / "data"), "--port", str(base),
           "--tick-ms", "20"]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    up = start()
    try:
        c = redis.Redis(port=base + 1, socket_timeout=5)
        wait_until(lambda: c.set("up", "yes"), 20, what="the cluster to serve")
        # A second `aegis up` on the same data is refused with a clear message.
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "in use" in second.stderr and "Traceback" not in second.stderr
        up.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = up.communicate(timeout=30)
        assert up.returncode == 0, err
        assert "stopped." in out and "127.0.0.1:%d" % base in out
        up = start()
        c = redis.Redis(port=base + 2, socket_timeout=5)
        wait_until(lambda: c.get("up") == b"yes", 20, what="the restarted cluster to serve old data")
        # A node that dies is reported and left down; the others carry on.
        pid = int(next(line.split("pid")[1] for line in iter(up.stdout.readline, "") if " n1 " in line))
        os_kill = __import__("os").kill
        os_kill(pid, signal.SIGKILL)
        wait_until(lambda: c.set("still", "ok"), 20, what="a write with n1 down")
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                _, err = up.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.communicate()
                raise
    assert up.returncode == 0
    assert "node n1 exited" in err


def test_snapshot_save_status_restore_brings_a_cluster_back(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.leader()
    c = cluster.nodes["n2"].client()
    for i in range(300):
        c.set(f"b{i}", f"v{i}")
    c.incrby("counter", 7)
    backup = tmp_path / "cluster.aegis-snapshot"
    cli = [sys.executable, "-m", "aegis.cli", "snapshot"]
    out = subprocess.run([*cli, "save", str(backup), "--addr", cluster.nodes["n3"].addr],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "saved" in out.stdout and backup.exists()
    assert not list(tmp_path.glob("*.partial"))
    st = subprocess.run([*cli, "status", str(backup), "--json"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stderr
    import json

    d = json.loads(st.stdout)
    assert d["keys"] == 301 and d["verified"] and d["index"] >= 302 and d["checksum"].startswith("sha256:")
    # A corrupted copy is refused with a clear error, never read as data.
    bad = tmp_path / "bad.aegis-snapshot"
    raw = bytearray(backup.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    st = subprocess.run([*cli, "status", str(bad)], capture_output=True, text=True, timeout=60)
    assert st.returncode == 1 and "not a valid Aegis snapshot" in st.stderr and "Traceback" not in st.stderr
    # Bring it back as a new two... three-node cluster on fresh ports.
    new = LocalCluster(tmp_path / "restored")
    try:
        peers = ",".join(f"{n}={p.addr}" for n, p in new.nodes.items())
        for nid, node in new.nodes.items():
            r = subprocess.run([*cli, "restore", str(backup), "--data", str(node.data), "--id", nid, "--peers", peers],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        again = subprocess.run([*cli, "restore", str(backup), "--data", str(new.nodes["n1"].data), "--id", "n1"],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "not empty" in again.stderr
        new.start()
        new.leader()
        rc = new.nodes["n3"].client()
        assert [rc.get(f"b{i}") for i in range(0, 300, 29)] == [f"v{i}".encode() for i in range(0, 300, 29)]
        assert rc.get("counter") == b"7"
        assert rc.set("new-life", "1") and new.nodes["n1"].client().get("new-life") == b"1"
    except BaseException:
        print(new.logs())
        raise
    finally:
        new.stop_all()
    _ = leader


def test_frequent_snapshots_under_load_keep_the_leader_and_the_data(tmp_path: Path) -> None:
    """Snapshots are written in the background: compaction races appends, nobody loses a lease."""
    # A pipeline's writes share a log entry or a few: 60 pipelines make 60+ entries, and the
    # threshold counts writes: 3000 of them make about six compactions.
    c = LocalCluster(tmp_path, snapshot_threshold=500)
    try:
        c.start()
        leader = c.leader()
        term = c.info(leader)["term"]
        cl = c.nodes[leader].client()
        value = "x" * 1024
        for batch in range(15):
            for part in range(4):
                pipe = cl.pipeline(transaction=False)
                for i in range(part * 50, part * 50 + 50):
                    pipe.set(f"k{batch}-{i}", f"{value}{batch}-{i}")
                assert all(pipe.execute())
            time.sleep(0.35)  # compaction follows the state's flushes (every 2 s): spread the load
        info = c.info(leader)
        assert info["term"] == term and info["role"] == "leader"
        wait_until(lambda: int(c.info(leader)["snapshots_taken"]) >= 2, 15, what="several compactions")
        assert int(c.info(leader)["first_log_index"]) > 8
        follower = next(n for n in c.nodes if n != leader)
        fc = c.nodes[follower].client()
        assert [fc.get(f"k{b}-{i}") for b, i in ((0, 0), (7, 123), (14, 199))] == [
            f"{value}{b}-{i}".encode() for b, i in ((0, 0), (7, 123), (14, 199))]
        c.kill(follower)
        c.start(follower)  # restarts from its own snapshot plus the log after it
        wait_until(lambda: c.nodes[follower].client().get("k14-199") == f"{value}14-199".encode(), 15,
                   what="the follower to come back")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_connection_limit_is_a_clear_error(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=1, extra=["--max-clients", "2"])
    try:
        c.start()
        port = c.nodes["n1"].port
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for s in held:
            s.sendall(b"PING\r\n")
            assert s.recv(100) == b"+PONG\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            third.sendall(b"PING\r\n")
            assert third.recv(200).startswith(b"-ERR max number of clients reached")
        for s in held:
            s.close()
        wait_until(lambda: c.nodes["n1"].client().ping(), 10, what="a slot to free up")
    finally:
        c.stop_all()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "aegis.cli", "serve", "--id", "x", "--listen",
                              f"127.0.0.1:{port}", "--data", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 5
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


def test_a_pipeline_through_a_follower_is_forwarded_in_order(cluster: LocalCluster) -> None:
    """A follower forwards the writes of one turn as one batch; each keeps its own reply, in order."""
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    fc = cluster.nodes[follower].client()
    pipe = fc.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"f{i}", "1")
        pipe.incr(f"f{i}")
        if i % 50 == 0:
            pipe.set(f"txt{i}", "x")
            pipe.incr(f"txt{i}")  # an error in the middle fails alone
    out = pipe.execute(raise_on_error=False)
    incrs = [r for r in out if type(r) is int]
    errors = [r for r in out if isinstance(r, Exception)]
    assert incrs == [2] * 300 and len(errors) == 6
    assert all("not an integer" in str(e) for e in errors)
    lc = cluster.nodes[leader].client()
    assert [lc.get(f"f{i}") for i in (0, 150, 299)] == [b"2"] * 3
    assert int(cluster.info(follower)["forwarded"]) >= 600


def test_state_written_lazily_survives_kill9_and_restart_serves_at_once(cluster: LocalCluster) -> None:
    """Applied state reaches its LMDB database in the background; a kill -9 right after the
    writes loses none (the log replays past the stored applied index) and a restart needs no
    state rebuild."""
    leader = cluster.leader()
    c = cluster.nodes[leader].client()
    pipe = c.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"s{i:05d}", f"v{i}")
    assert all(pipe.execute())
    c.delete("s00007")
    for nid in cluster.nodes:
        cluster.kill(nid)  # before the half-second state flush, most likely
    t0 = time.monotonic()
    cluster.start()
    cluster.leader()
    assert time.monotonic() - t0 < 15
    for nid in cluster.nodes:
        cc = cluster.nodes[nid].client()
        assert [cc.get(f"s{i:05d}") for i in (0, 2500, 4999)] == [b"v0", b"v2500", b"v4999"]
        assert cc.get("s00007") is None
        wait_until(lambda: int(cluster.info(nid)["keys"]) == 4999, 10, what=f"{nid} to count its keys")


def test_compaction_counts_writes_not_only_entries(tmp_path: Path) -> None:
    """One pipeline of 2000 writes is a handful of entries; --snapshot-threshold 500 counts
    the writes, so the log is still compacted once the state is on disk."""
    c = LocalCluster(tmp_path, snapshot_threshold=500)
    try:
        c.start()
        leader = c.leader()
        cl = c.nodes[leader].client()
        pipe = cl.pipeline(transaction=False)
        for i in range(2000):
            pipe.set(f"w{i}", "v")
        assert all(pipe.execute())
        assert int(c.info(leader)["last_log_index"]) < 100  # batched: far fewer entries than writes
        wait_until(lambda: int(c.info(leader)["state_durable_index"]) == int(c.info(leader)["applied_index"]),
                   10, what="the state to reach the disk")
        cl.set("nudge", "1")  # compaction is considered as writes are applied
        wait_until(lambda: int(c.info(leader)["snapshot_index"]) > 0, 10, what="a compaction")
        assert int(c.info(leader)["state_pending_keys"]) >= 0 and int(c.info(leader)["keys"]) == 2001
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_writes_forwarded_to_a_leader_that_dies_are_answered_once_a_new_one_is_known(tmp_path: Path) -> None:
    import threading

    c = LocalCluster(tmp_path, extra=["--request-timeout", "15"])  # the last flag wins
    try:
        c.start()
        leader = c.leader()
        follower = next(n for n in c.nodes if n != leader)
        replies: list[object] = []
        finished: list[float] = []

        def load() -> None:
            cl = c.nodes[follower].client(socket_timeout=20)
            with cl.pipeline(transaction=False) as p:
                for i in range(10000):
                    p.set(f"f{i}", "x")
                replies.extend(p.execute(raise_on_error=False))
            finished.append(time.monotonic())

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.3)  # the pipeline is being forwarded
        killed = time.monotonic()
        c.kill(leader)
        t.join(30)
        assert finished, "the pipeline never finished"
        errors = [r for r in replies if isinstance(r, Exception)]
        assert len(replies) == 10000
        # Waiting out the 15 s request timeout is what this guards against (an election and
        # the rest of the pipeline take a second or two; more on a busy machine).
        kinds = sorted({str(e)[:60] for e in errors})
        assert finished[0] - killed < 10, f"replies took {finished[0] - killed:.1f}s after the kill: {kinds}"
        assert all("TIMEOUT" in str(e) or "TRYAGAIN" in str(e) or "NOLEADER" in str(e) for e in errors)
    finally:
        c.stop_all()


def test_membership_changes_that_change_nothing_are_refused_and_write_nothing(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    c = cluster.nodes[leader].client()
    before = cluster.info(leader)["commit_index"]
    voter = next(n for n in cluster.nodes if n != leader)
    for args, message in (
        (("MEMBER", "ADD", voter, cluster.addr(voter)), f"{voter} is already a voter"),
        (("MEMBER", "ADD", voter, "127.0.0.1:1"), f"{voter} is already a voter"),
        (("MEMBER", "PROMOTE", voter), f"{voter} is already a voter"),
        (("MEMBER", "PROMOTE", "n9"), "n9 is not a member"),
        (("MEMBER", "REMOVE", "n9"), "n9 is not a member"),
    ):
        with pytest.raises(redis.ResponseError, match=message):
            c.execute_command(*args)
    time.sleep(0.3)
    assert cluster.info(leader)["commit_index"] == before  # nothing was proposed
    lines = [x.decode() if isinstance(x, bytes) else x for x in c.execute_command("MEMBER", "LIST")]
    assert any(cluster.addr(voter) in line for line in lines)  # the address did not change


def test_writes_pending_at_a_deposed_leader_are_answered_when_a_snapshot_covers_them(tmp_path: Path) -> None:
    """Issue 11: a leader that proposed writes, was cut off and deposed, then caught up by a
    snapshot covering those indexes must answer its waiting clients (outcome unknown) and
    keep running. The waiters used to be failed from the store's worker thread, off the
    trio thread, which crashed the node's Raft task."""
    with running(LocalCluster(tmp_path, proxies=True, snapshot_threshold=40,
                              extra=["--request-timeout", "30"])) as c:
        old = c.leader()
        c.nodes[old].client().set("before", "1")
        c.isolate(old)
        replies: list[bytes] = []

        def pending_write(i: int) -> None:
            try:
                replies.append(raw_command(c.nodes[old].port, b"SET", f"cut{i}".encode(), b"v", timeout=25))
            except RuntimeError as exc:  # an error reply, without its "-"
                replies.append(b"-" + str(exc).encode())
            except OSError as exc:
                replies.append(f"socket error {exc}".encode())

        writers = [threading.Thread(target=pending_write, args=(i,)) for i in range(3)]
        for t in writers:
            t.start()
        rest = [n for n in c.nodes if n != old]
        new = c.leader(rest)
        client = c.nodes[new].client()
        for i in range(300):
            client.set(f"k{i}", str(i))
        old_last = int(c.info(old)["last_log_index"])
        wait_until(lambda: int(c.info(new)["first_log_index"]) > old_last + 1, 15,
                   what="the new leader to compact past the old leader's log")
        c.heal()
        for t in writers:
            t.join(timeout=20)
        assert len(replies) == 3, replies
        for r in replies:
            assert r.startswith((b"-TIMEOUT", b"-TRYAGAIN")), r
        assert any(b"snapshot" in r for r in replies), replies
        assert c.nodes[old].alive()
        wait_until(lambda: c.nodes[old].client().get("k299") == b"299", 10, what="the old leader to catch up")
        assert c.nodes[old].alive() and c.info(old)["role"] == "follower"
