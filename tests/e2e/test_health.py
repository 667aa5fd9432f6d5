"""`aegis health` against real nodes: every member asked for itself, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .harness import LocalCluster, running, wait_until


def health(*addrs: str, json_out: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "aegis.cli", "health", "--addr", ",".join(addrs)]
    return subprocess.run(cmd + (["--json"] if json_out else []), capture_output=True, text=True, timeout=60)


def test_health_exit_codes_follow_the_members(tmp_path: Path) -> None:
    with running(LocalCluster(tmp_path), leader=True) as c:
        leader = c.leader()
        others = [n for n in c.nodes if n != leader]
        # One address is enough: the others are found through CLUSTER NODES.
        wait_until(lambda: health(c.addr(others[0])).returncode == 0, 15, what="a healthy cluster")
        out = health(c.addr(others[0]), json_out=True)
        doc = json.loads(out.stdout)
        assert doc["status"] == "healthy" and doc["leader"] == leader and doc["quorum"] == 2
        assert sorted(m["id"] for m in doc["members"]) == sorted(c.nodes)
        assert all(m["healthy"] and m["reachable"] for m in doc["members"])
        text = health(c.addr(leader)).stdout
        assert f"cluster healthy: leader {leader}" in text and text.count("healthy") >= 4

        c.kill(others[0])  # a quorum is left: degraded
        out = health(c.addr(leader), c.addr(others[0]))
        assert out.returncode == 1, out.stdout + out.stderr
        assert "unreachable" in out.stdout and "cluster degraded" in out.stdout
        doc = json.loads(health(c.addr(leader), json_out=True).stdout)
        assert doc["status"] == "degraded" and doc["healthy_voters"] == 2
        down = [m for m in doc["members"] if not m["healthy"]]
        assert [m["id"] for m in down] == [others[0]] and not down[0]["reachable"]

        c.kill(others[1])  # no quorum
        out = health(c.addr(leader))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "cluster unavailable" in out.stdout


def test_health_with_no_node_answering_is_unavailable(tmp_path: Path) -> None:
    from .harness import free_port

    out = health(f"127.0.0.1:{free_port()}", json_out=True)
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert doc["status"] == "unavailable" and doc["leader"] is None and not doc["members"][0]["reachable"]
