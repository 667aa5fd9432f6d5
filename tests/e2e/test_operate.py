"""End to end: `aegis member|leader|health|status --cluster` against real `aegis serve` processes.

One three-node cluster serves the whole module (the tests run in file order); the tests that
kill nodes come last. Every CLI call is a subprocess, as an operator would run it.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from .harness import LocalCluster, NodeProc, free_port, running, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running(LocalCluster(tmp_path_factory.mktemp("operate")), leader=True) as c:
        yield c


def aegis(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aegis.cli", *args], stdin=stdin, capture_output=True,
                          text=True, timeout=60)


def addrs(cluster: LocalCluster, *ids: str) -> str:
    return ",".join(cluster.addr(n) for n in (ids or ("n1", "n2", "n3")))


def voters(cluster: LocalCluster) -> list[str]:
    return ["n1", "n2", "n3"]


def test_member_list_health_and_status_cluster_on_a_healthy_cluster(cluster: LocalCluster) -> None:
    leader = cluster.leader(voters(cluster))
    follower = next(n for n in voters(cluster) if n != leader)
    out = aegis("member", "list", "--addr", cluster.addr(follower))  # not the leader: it finds it
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE", "LEADER"]
    assert [line.split()[0] for line in lines[1:]] == ["n1", "n2", "n3"]
    assert next(line for line in lines if line.startswith(leader + " ")).split()[-1] == "*"

    doc = json.loads(aegis("member", "list", "--addr", cluster.addr(follower), "--json").stdout)
    assert doc["leader_id"] == leader
    assert [(m["id"], m["addr"], m["role"], m["is_leader"]) for m in doc["members"]] == [
        (n, cluster.addr(n), "voter", n == leader) for n in voters(cluster)]

    out = aegis("health", "--addr", cluster.addr(follower))
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(out.stdout.splitlines()) == 5 and out.stdout.splitlines()[-1].startswith("cluster is healthy")

    out = aegis("status", "--cluster", "--json", "--addr", cluster.addr(follower))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["health"], doc["leader_id"], doc["exit_code"]) == ("healthy", leader, 0)
    rows = {m["id"]: m for m in doc["members"]}
    assert set(rows) == {"n1", "n2", "n3"}
    for nid, row in rows.items():
        own = cluster.info(nid)  # each row is that node's own INFO, not the leader's view of it
        assert row["role"] == own["role"] and row["term"] == int(own["term"])
        assert row["addr"] == cluster.addr(nid) and row["reachable"] and row["healthy"]
        assert row["version"] == own["aegis_version"] and row["lag"] == 0
        assert isinstance(row["commit_index"], int) and isinstance(row["last_heard_ms"], int)
    assert rows[leader]["role"] == "leader"

    out = aegis("status", "--cluster", "--addr", cluster.addr(follower))  # plain text when piped
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[1]
    assert header.split() == ["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "HEALTH",
                              "LAST", "HEARD", "VERSION"]


def test_member_add_learner_promote_remove_through_the_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.leader(voters(cluster))
    cluster.nodes[leader].client().set("before", "1")
    new = NodeProc("n4", free_port(), tmp_path / "n4", tmp_path / "n4.log")
    peers = ",".join(f"{n}={cluster.addr(n)}" for n in voters(cluster)) + f",n4={new.addr}"
    with open(new.log, "ab") as logf:
        new.proc = subprocess.Popen([sys.executable, "-m", "aegis.cli", "serve", "--id", "n4", "--listen", new.addr,
                                     "--data", str(new.data), "--peers", peers, "--join", "--tick-ms", "20"],
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.nodes["n4"] = new  # stopped with the others
    wait_until(lambda: new.client().ping(), 15, what="n4 to listen")
    try:
        out = aegis("member", "add", "n4", new.addr, "--learner", "--addr", addrs(cluster))
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"Added n4 ({new.addr}) as a learner."
        assert out.stdout.splitlines()[-1].split() == ["n4", new.addr, "learner"]
        wait_until(lambda: new.client().get("before") == b"1", 15, what="the learner to catch up")

        # Adding an existing member is refused by the server and writes nothing.
        before = cluster.info(leader)["commit_index"]
        for args, message in ((("n2", cluster.addr("n2")), "ERR n2 is already a voter"),
                              (("n2", "127.0.0.1:1"), "ERR n2 is already a voter"),
                              (("n4", new.addr, "--learner"), "ERR n4 is already a learner")):
            out = aegis("member", "add", *args, "--addr", addrs(cluster))
            assert out.returncode == 1 and message in out.stderr, out.stderr
            assert out.stdout == ""
        out = aegis("member", "add", "n2", "127.0.0.1:1", "--json", "--addr", addrs(cluster))
        assert out.returncode == 1
        assert json.loads(out.stdout) == {"error": "ERR n2 is already a voter", "outcome": "refused"}
        time.sleep(0.3)
        assert cluster.info(leader)["commit_index"] == before

        out = aegis("member", "promote", "n4", "--json", "--addr", addrs(cluster))
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert (doc["action"], doc["node_id"], doc["leader_id"]) == ("promote", "n4", leader)
        assert {m["id"]: m["role"] for m in doc["members"]} == {"n1": "voter", "n2": "voter", "n3": "voter",
                                                                "n4": "voter"}
        out = aegis("member", "promote", "n4", "--addr", addrs(cluster))
        assert out.returncode == 1 and "ERR n4 is already a voter" in out.stderr

        # No terminal and no --yes: refused, nothing changed.
        before = cluster.info(leader)["commit_index"]
        out = aegis("member", "remove", "n4", "--addr", addrs(cluster))
        assert out.returncode == 1
        assert "stdin is not a terminal; pass --yes" in out.stderr
        time.sleep(0.3)
        assert cluster.info(leader)["commit_index"] == before
        assert cluster.info(leader)["voters"] == "n1,n2,n3,n4"

        # On a terminal it asks: "n" keeps the member, "y" removes it.
        for answer, code in ((b"n\n", 1), (b"y\n", 0)):
            master, slave = pty.openpty()
            try:
                os.write(master, answer)
                out = aegis("member", "remove", "n4", "--addr", addrs(cluster), stdin=slave)
            finally:
                os.close(slave)
                os.close(master)
            assert "Remove n4 (" in out.stderr and "[y/N]" in out.stderr
            assert out.returncode == code, out.stderr
            if code:
                assert "not removed" in out.stderr and cluster.info(leader)["voters"] == "n1,n2,n3,n4"
        assert out.stdout.splitlines()[0] == "Removed n4."
        assert [line.split()[0] for line in out.stdout.splitlines()[2:]] == ["n1", "n2", "n3"]
        wait_until(lambda: cluster.info(leader)["voters"] == "n1,n2,n3", 10, what="n4 to be removed")
        out = aegis("member", "remove", "n4", "--yes", "--addr", addrs(cluster))
        assert out.returncode == 1 and "ERR n4 is not a member" in out.stderr
    finally:
        cluster.kill("n4")
        del cluster.nodes["n4"]


def test_leader_transfer(cluster: LocalCluster) -> None:
    leader = cluster.leader(voters(cluster))
    target = next(n for n in voters(cluster) if n != leader)
    out = aegis("leader", "transfer", target, "--json", "--addr", cluster.addr(leader))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["action"], doc["previous_leader_id"], doc["leader_id"]) == ("transfer", leader, target)
    assert cluster.info(target)["role"] == "leader"
    out = aegis("leader", "transfer", "n9", "--addr", addrs(cluster))
    assert out.returncode == 1 and out.stderr.startswith("aegis leader transfer: ")
    out = aegis("leader", "transfer", target, "--addr", addrs(cluster))  # already there: nothing to do
    assert out.returncode == 0 and f"{target} is already the leader" in out.stdout


def test_snapshot_save_and_restore_take_json(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.nodes["n1"].client().set("snap", "1")
    backup = tmp_path / "b.aegis-snapshot"
    out = aegis("snapshot", "save", str(backup), "--json", "--addr", cluster.addr("n2"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"file", "index", "term", "keys", "size"} and doc["keys"] >= 1
    assert doc["size"] == backup.stat().st_size and doc["file"] == str(backup)
    out = aegis("snapshot", "restore", str(backup), "--data", str(tmp_path / "r1"), "--id", "r1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["node_id"], doc["members"], doc["index"]) == ("r1", ["r1"], json.loads(
        aegis("snapshot", "status", str(backup), "--json").stdout)["index"])
    out = aegis("snapshot", "restore", str(backup), "--data", str(tmp_path / "r1"), "--id", "r1", "--json")
    assert out.returncode == 1 and "not empty" in json.loads(out.stdout)["error"] and "not empty" in out.stderr


def test_health_exit_codes_as_nodes_die(cluster: LocalCluster) -> None:
    """Last in the module: it kills two of the three nodes."""
    leader = cluster.leader(voters(cluster))
    first, second = [n for n in voters(cluster) if n != leader]
    assert aegis("health", "--addr", addrs(cluster)).returncode == 0
    cluster.kill(first)
    out = aegis("health", "--addr", addrs(cluster))
    assert out.returncode == 1, out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith(first + " "))
    assert "unhealthy: unreachable" in line
    assert out.stdout.splitlines()[-1].startswith("cluster is degraded")
    doc = json.loads(aegis("status", "--cluster", "--json", "--addr", addrs(cluster)).stdout)
    row = next(m for m in doc["members"] if m["id"] == first)
    assert not row["reachable"] and row["reason"].startswith("unreachable") and row["term"] is None
    assert doc["health"] == "degraded"

    cluster.kill(second)
    out = aegis("health", "--addr", cluster.addr(leader), "--json")
    assert out.returncode == 2, out.stdout
    doc = json.loads(out.stdout)
    assert doc["health"] == "unavailable" and doc["exit_code"] == 2 and doc["healthy_voters"] <= 1

    cluster.kill(leader)
    out = aegis("health", "--addr", addrs(cluster))
    assert out.returncode == 2 and "no node answered" in out.stdout
    out = aegis("member", "list", "--addr", addrs(cluster), "--wait", "0.5")
    assert out.returncode == 1 and "no node answered" in out.stderr
