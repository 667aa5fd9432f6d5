"""Every failpoint, armed with `crash` on a real node of a real three-node cluster: the node
exits 137 at that point, comes back without the failpoint, and every acknowledged write is
readable through the leader and then on every node (issue 11).

One cluster serves the single-node cases (each leaves it whole: three members up, none
armed); its snapshot threshold is small so compaction and InstallSnapshot happen within
seconds. The keys every case acknowledged are checked again by every later case. The last
test arms every node of a fresh cluster at the log fsync.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aegis.failpoints import CRASH_EXIT_CODE, ENV, POINTS

from .harness import LocalCluster, wait_until

THRESHOLD = 200  # --snapshot-threshold: writes between compactions
FAST = ["--request-timeout", "1"]  # a write cut off by a crash is answered (-TIMEOUT) soon (the last flag wins)


class Writer:
    """One client thread writing fresh keys, `SET` after `SET`, through whichever node
    answers (a follower forwards); only a `+OK` counts as acknowledged. redis-py does not
    retry: a failed write moves on to the next node with the next key."""

    def __init__(self, cluster: LocalCluster, prefix: str, acked: dict[str, bytes]) -> None:
        self.cluster, self.prefix, self.acked = cluster, prefix, acked
        self.stop = threading.Event()
        self.hold = threading.Event()  # set: write nothing for now
        self.errors = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=15)

    def count(self) -> int:
        return sum(1 for k in list(self.acked) if k.startswith(self.prefix))

    def _run(self) -> None:
        ids = list(self.cluster.nodes)
        turn, i = 0, 0
        client: redis.Redis | None = None
        while not self.stop.is_set():
            if self.hold.is_set():
                time.sleep(0.01)
                continue
            if client is None:
                node = self.cluster.nodes[ids[turn % len(ids)]]
                turn += 1
                if not node.alive():
                    continue
                client = node.client(socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
            key = f"{self.prefix}{i}"
            i += 1
            try:
                if client.set(key, key) is True:
                    self.acked[key] = key.encode()
            except redis.RedisError:
                self.errors += 1
                client.close()
                client = None
                time.sleep(0.05)
        if client is not None:
            client.close()


def check_acked(cluster: LocalCluster, acked: dict[str, bytes], timeout: float = 20.0) -> None:
    """Linearizable reads: every acknowledged key through the leader, then on each node."""
    keys = sorted(acked)
    expected = [acked[k] for k in keys]

    def all_there(nid: str) -> bool:
        c = cluster.nodes[nid].client(socket_timeout=5)
        try:
            got: list[bytes | None] = []
            for lo in range(0, len(keys), 500):
                got += c.mget(keys[lo:lo + 500])
            missing = [k for k, v, e in zip(keys, got, expected) if v != e]
            assert not missing, f"{nid} misses {len(missing)} acknowledged writes, e.g. {missing[:5]}"
            return True
        finally:
            c.close()

    leader = cluster.leader(timeout=15)
    all_there(leader)  # the leader holds every acknowledged write at once
    for nid in cluster.nodes:
        wait_until(lambda nid=nid: all_there(nid), timeout, what=f"{nid} to hold every acknowledged write")


def start_armed(cluster: LocalCluster, nid: str, spec: str) -> None:
    """Start `nid` with AEGIS_FAILPOINTS=spec; wait until it listens (or has already crashed)."""
    cluster.start(nid, wait=False, env={ENV: spec})
    node = cluster.nodes[nid]

    def up() -> bool:
        if not node.alive():
            return True
        c = node.client(socket_timeout=1)
        try:
            return bool(c.ping())
        finally:
            c.close()

    wait_until(up, 15, what=f"{nid} to listen")


def wait_crashed(cluster: LocalCluster, nid: str, point: str, timeout: float = 20.0) -> None:
    node = cluster.nodes[nid]
    assert node.proc is not None
    wait_until(lambda: node.proc is not None and node.proc.poll() is not None, timeout,
               what=f"{nid} to crash at {point}")
    assert node.proc.returncode == CRASH_EXIT_CODE, f"{nid} exited {node.proc.returncode}, not at the failpoint"
    assert f"failpoint {point}: crash" in node.log.read_text(errors="replace")


def caught_up(cluster: LocalCluster, nid: str, leader: str) -> bool:
    return int(cluster.info(nid)["applied_index"]) >= int(cluster.info(leader)["commit_index"])


def transfer(cluster: LocalCluster, via: str, to: str) -> None:
    c = cluster.nodes[via].client(socket_timeout=6)
    try:
        c.execute_command("LEADER", "TRANSFER", to)
    except redis.RedisError:
        pass  # the target may crash on its way to leadership: that is what is tested
    finally:
        c.close()


@dataclass(frozen=True)
class Case:
    point: str
    action: str
    drive: Callable[[LocalCluster, str, Writer], None]  # arm `victim` and make it reach the point


def _leader_victim(cluster: LocalCluster, victim: str, writer: Writer, spec: str) -> None:
    """Armed from a later hit on, made leader, then written to: it crashes as a leader
    (the writes wait while it catches up, which takes a few of its hits)."""
    leader = cluster.leader()
    writer.hold.set()
    try:
        cluster.kill(victim, sig=15)
        start_armed(cluster, victim, spec)
        wait_until(lambda: caught_up(cluster, victim, leader), 10, what=f"{victim} to catch up")
        transfer(cluster, leader, victim)
    finally:
        writer.hold.clear()


def _voter(cluster: LocalCluster, victim: str, writer: Writer, spec: str) -> None:
    """A follower armed, then an election it votes in: leadership moves to the third node."""
    leader = cluster.leader()
    cluster.kill(victim, sig=15)
    start_armed(cluster, victim, spec)
    wait_until(lambda: caught_up(cluster, victim, leader), 10, what=f"{victim} to catch up")
    candidate = next(n for n in cluster.nodes if n not in (leader, victim))
    transfer(cluster, leader, candidate)


def _lagging(cluster: LocalCluster, victim: str, writer: Writer, spec: str) -> None:
    """A follower down while the leader compacts past its log: it comes back (armed) by snapshot."""
    leader = cluster.leader()
    cluster.kill(victim)
    gone_at = int(cluster.info(leader)["last_log_index"])
    bulk = cluster.nodes[leader].client()
    try:  # enough writes for a compaction, quickly: pipelined, so they share a few entries
        pipe = bulk.pipeline(transaction=False)
        keys = [f"{writer.prefix}bulk{i}" for i in range(3 * THRESHOLD)]
        for k in keys:
            pipe.set(k, k)
        for k, ok in zip(keys, pipe.execute(raise_on_error=False)):
            if ok is True:
                writer.acked[k] = k.encode()
    finally:
        bulk.close()
    wait_until(lambda: int(cluster.info(leader)["first_log_index"]) > gone_at + 1, 15,
               what="the leader to compact past the follower")
    start_armed(cluster, victim, spec)


def _restarted(cluster: LocalCluster, victim: str, writer: Writer, spec: str) -> None:
    """A follower restarted armed, under the write load (compaction, state flush)."""
    cluster.kill(victim, sig=15)
    start_armed(cluster, victim, spec)


CASES = [
    Case("log-before-fsync", "crash@20", lambda c, v, w: _leader_victim(c, v, w, "log-before-fsync=crash@20")),
    Case("log-after-fsync", "crash@20", lambda c, v, w: _leader_victim(c, v, w, "log-after-fsync=crash@20")),
    Case("vote-after-persist", "crash", lambda c, v, w: _voter(c, v, w, "vote-after-persist=crash")),
    Case("snapshot-mid-write", "crash", lambda c, v, w: _lagging(c, v, w, "snapshot-mid-write=crash")),
    Case("snapshot-mid-install", "crash", lambda c, v, w: _lagging(c, v, w, "snapshot-mid-install=crash")),
    Case("compact-before", "crash", lambda c, v, w: _restarted(c, v, w, "compact-before=crash")),
    Case("state-before-flush", "crash", lambda c, v, w: _restarted(c, v, w, "state-before-flush=crash")),
    Case("state-after-flush", "crash", lambda c, v, w: _restarted(c, v, w, "state-after-flush=crash")),
]


def test_every_failpoint_has_a_case() -> None:
    assert sorted(c.point for c in CASES) == sorted(POINTS)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, bytes]]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("failpoints"), snapshot_threshold=THRESHOLD, extra=FAST)
    try:
        cluster.start()
        cluster.leader()
        yield cluster, {}
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_a_node_crashing_at_a_failpoint_loses_no_acknowledged_write(
        shared: tuple[LocalCluster, dict[str, bytes]], case: Case) -> None:
    cluster, acked = shared
    leader = cluster.leader()
    victim = next(n for n in sorted(cluster.nodes) if n != leader)
    try:
        with Writer(cluster, f"{case.point}:", acked) as writer:
            wait_until(lambda: writer.count() >= 20, 10, what="the first acknowledged writes")
            case.drive(cluster, victim, writer)
            wait_crashed(cluster, victim, case.point)
            at_crash = writer.count()
            wait_until(lambda: writer.count() >= at_crash + 20, 10, what="writes with the victim down")
        cluster.start(victim)  # without the failpoint
        check_acked(cluster, acked)
        if case.point == "snapshot-mid-write":  # (mid-install: the restart finishes the install it began)
            assert int(cluster.info(victim)["snapshots_installed"]) >= 1
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        for nid, node in cluster.nodes.items():  # leave the cluster whole for the next case
            if not node.alive():
                cluster.start(nid)


def test_every_node_crashing_at_the_log_fsync_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Every node armed at its 40th durable log write: with one writer the three count
    nearly in step, so they go down together. A node left alone (without a quorum it
    writes nothing) gets its peers back, still armed, until it too has crashed there."""
    point, spec = "log-after-fsync", "log-after-fsync=crash@40"
    cluster = LocalCluster(tmp_path, extra=FAST)
    acked: dict[str, bytes] = {}
    crashed: set[str] = set()
    try:
        for nid in cluster.nodes:
            cluster.start(nid, wait=False, env={ENV: spec})
        cluster.leader(timeout=15)
        with Writer(cluster, "all:", acked) as writer:
            deadline = time.monotonic() + 30
            last_change = time.monotonic()
            while len(crashed) < len(cluster.nodes):
                assert time.monotonic() < deadline, f"only {sorted(crashed)} crashed at {point}"
                for nid, node in cluster.nodes.items():
                    if nid not in crashed and node.proc is not None and node.proc.poll() is not None:
                        wait_crashed(cluster, nid, point, timeout=1)
                        crashed.add(nid)
                        last_change = time.monotonic()
                if crashed and len(crashed) < len(cluster.nodes) and time.monotonic() - last_change > 2:
                    for nid in crashed:  # the survivor needs a quorum to write again
                        if not cluster.nodes[nid].alive():
                            cluster.start(nid, wait=False, env={ENV: "log-after-fsync=crash"})
                    last_change = time.monotonic()
                time.sleep(0.05)
            for node in cluster.nodes.values():  # an armed restart left without a quorum writes nothing
                if node.alive():
                    cluster.kill(node.id)
        assert writer.count() > 20
        cluster.start()
        check_acked(cluster, acked)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
