"""A full disk, end to end (issue 11): a real 3-node cluster whose LMDB maps are capped
(`--max-map-mb`) refuses the writes it could not make durable with one `-DISKFULL` line,
logs one line for it, keeps every acknowledged write and serves reads, and takes writes
again once deletes (and the compaction that follows) give the space back."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest
import redis

from .harness import LocalCluster, running, wait_until

CAP_MB = 8
VALUE = 32 << 10


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, n=3, snapshot_threshold=50, extra=["--max-map-mb", str(CAP_MB), "--feed-history", "0"])
    with running(c):
        yield c


def fill(c: redis.Redis, rng: random.Random) -> dict[str, bytes]:
    """SET incompressible values until the leader says DISKFULL; returns what was acknowledged."""
    acked: dict[str, bytes] = {}
    refusal = ""
    for i in range(CAP_MB * 2 * (1 << 20) // VALUE):  # twice what the map could hold
        value = rng.randbytes(VALUE)
        try:
            assert c.set(f"k{i}", value)
        except redis.ResponseError as exc:
            refusal = str(exc)
            break
        acked[f"k{i}"] = value
    assert refusal.startswith("DISKFULL"), refusal
    assert "nothing was written" in refusal and "\n" not in refusal
    assert len(acked) > 50  # the cap, not something else, stopped the writes
    return acked


def test_full_disk_refuses_writes_keeps_reads_and_recovers(cluster: LocalCluster) -> None:
    rng = random.Random(11)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    lc = cluster.nodes[leader].client()
    acked = fill(lc, rng)

    # More writes, on the leader and through a follower: all refused, with one log line.
    fc = cluster.nodes[follower].client()
    for i in range(20):
        for c in (lc, fc):
            with pytest.raises(redis.ResponseError, match="^DISKFULL"):
                c.set(f"more{i}", rng.randbytes(VALUE))
    assert cluster.nodes[leader].log.read_text().count("refusing writes") == 1
    info = cluster.info(leader)
    assert info["disk_full"] == "1" and int(info["disk_full_refused"]) >= 41

    # Reads keep working on every node, and every acknowledged write is there.
    for nid, node in cluster.nodes.items():
        c = node.client()
        sample = list(acked)[:: max(1, len(acked) // 25)] + [list(acked)[-1]]
        assert [c.get(k) for k in sample] == [acked[k] for k in sample], nid
        assert c.get("more0") is None
        c.close()
    assert all(node.alive() for node in cluster.nodes.values())

    # Deletes are let through; once the state is flushed and the log compacted, the pages
    # they freed take writes again.
    gone = list(acked)[: len(acked) // 2]
    for i in range(0, len(gone), 20):
        assert lc.delete(*gone[i:i + 20]) == len(gone[i:i + 20])
    for k in gone:
        del acked[k]

    def writes_again() -> bool:
        try:
            return bool(lc.set("after", b"x" * VALUE))
        except redis.ResponseError as exc:
            assert str(exc).startswith("DISKFULL"), exc
            return False

    wait_until(writes_again, 20, interval=0.2, what="writes to be accepted after the deletes")
    assert "storage space is back" in cluster.nodes[leader].log.read_text()
    assert cluster.info(leader)["disk_full"] == "0"
    acked["after"] = b"x" * VALUE

    # Nothing was corrupted: every node restarts (kill -9) and holds every acknowledged write.
    for nid in cluster.nodes:
        cluster.kill(nid)
    cluster.start()
    cluster.leader()
    for nid, node in cluster.nodes.items():
        c = node.client()
        wait_until(lambda: c.get("after") == acked["after"], 15, what=f"{nid} to catch up")
        assert all(c.get(k) == v for k, v in acked.items()), nid
        assert all(c.get(k) is None for k in gone[:10]), nid
        c.close()
    lc.close()
    fc.close()


def test_a_restart_with_a_larger_cap_takes_writes_again(cluster: LocalCluster) -> None:
    rng = random.Random(12)
    lc = cluster.nodes[cluster.leader()].client()
    acked = fill(lc, rng)
    lc.close()
    cluster.stop_all()  # SIGTERM: a clean stop of a full node
    cluster.extra = ["--max-map-mb", str(2 * CAP_MB), "--feed-history", "0"]
    cluster.start()
    c = cluster.nodes[cluster.leader()].client()
    assert c.set("after", b"x" * VALUE)
    for nid, node in cluster.nodes.items():
        nc = node.client()
        wait_until(lambda: nc.get("after") == b"x" * VALUE, 15, what=f"{nid} to catch up")
        assert all(nc.get(k) == v for k, v in acked.items()), nid
        nc.close()
    c.close()
