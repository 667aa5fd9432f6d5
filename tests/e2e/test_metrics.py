"""End to end: `aegis serve --metrics` on three real processes, scraped over HTTP, and
`--log-format json` lines parsed (issue 10)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .harness import LocalCluster, free_port, running, wait_until


class MetricsCluster(LocalCluster):
    """A LocalCluster whose nodes log JSON and serve /metrics on ports of their own."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.metrics_ports = {nid: free_port() for nid in self.nodes}

    def command(self, nid: str) -> list[str]:
        cmd = super().command(nid)
        at = cmd.index("serve")
        return [*cmd[:at], "--log-format", "json", *cmd[at:], "--metrics",
                f"127.0.0.1:{self.metrics_ports[nid]}"]

    def get(self, nid: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_ports[nid]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def scrape(self, nid: str) -> dict[str, float]:
        status, text = self.get(nid, "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out

    def events(self, nid: str) -> list[dict[str, object]]:
        """Every line of the node's log, each parsed as JSON (a line that is not fails)."""
        return [json.loads(line) for line in self.nodes[nid].log.read_text().splitlines() if line.strip()]


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    with running(MetricsCluster(tmp_path), leader=True) as c:
        yield c


def test_metrics_move_with_the_load_and_health_follows_the_leader(cluster: MetricsCluster) -> None:
    leader = cluster.leader()
    followers = [n for n in cluster.nodes if n != leader]
    wait_until(lambda: all(cluster.get(n, "/health")[0] == 200 for n in cluster.nodes), 10,
               what="every node healthy")
    status, body = cluster.get(leader, "/health")
    assert status == 200 and body.startswith("ok: leader " + leader)
    before = cluster.scrape(leader)
    assert before["aegis_role{role=\"leader\"}"] == 1 and before["aegis_has_leader"] == 1
    assert before["aegis_term"] >= 1

    lc = cluster.nodes[leader].client()
    fc = cluster.nodes[followers[0]].client()
    for i in range(50):
        assert lc.set(f"k{i}", "v" * 100)
    for i in range(20):
        assert fc.set(f"f{i}", "x")  # forwarded to the leader
        assert fc.get(f"k{i}") == b"v" * 100
    assert lc.incr("n") == 1
    with pytest.raises(Exception, match="unknown command"):
        lc.execute_command("NOSUCH", "x")
    lc.close()
    fc.close()

    after = cluster.scrape(leader)
    assert after["aegis_commit_index"] > before["aegis_commit_index"]
    assert after["aegis_applied_index"] >= before["aegis_applied_index"]
    assert after['aegis_requests_total{command="set"}'] - before.get('aegis_requests_total{command="set"}', 0) == 50
    assert after['aegis_requests_total{command="incrby"}'] == 1  # redis-py's incr()
    assert after['aegis_requests_total{command="unknown"}'] >= 1
    assert after['aegis_request_duration_seconds_count{command="set"}'] >= 50
    assert after['aegis_errors_total{kind="ERR"}'] >= 1
    assert after['aegis_fsync_duration_seconds_count{db="log"}'] > before['aegis_fsync_duration_seconds_count{db="log"}']
    assert after["aegis_proposals_total"] - before["aegis_proposals_total"] >= 71  # 50 + 20 forwarded + INCR
    assert after["aegis_batch_entries_count"] > before["aegis_batch_entries_count"]
    assert after['aegis_network_received_bytes_total{traffic="client"}'] > 50 * 100
    assert after['aegis_network_sent_bytes_total{traffic="peer"}'] > 50 * 100  # replicated
    for f in followers:
        assert f'aegis_peer_replication_lag_entries{{peer="{f}"}}' in after
        assert after[f'aegis_peer_up{{peer="{f}"}}'] == 1
        assert after[f'aegis_peer_round_trip_seconds_count{{peer="{f}"}}'] >= 1
    fol = cluster.scrape(followers[0])
    assert fol['aegis_requests_total{command="set"}'] == 20 and fol['aegis_requests_total{command="get"}'] == 20
    assert fol["aegis_forwarded_total"] >= 20
    assert fol['aegis_role{role="follower"}'] == 1

    # The leader-elected event: in the JSON log of the node that won, with its id and term.
    term = int(after["aegis_term"])
    elected = [e for e in cluster.events(leader) if e["event"] == "leader_elected"]
    assert elected and elected[-1]["node"] == leader and elected[-1]["term"] == term
    assert {"ts", "level", "node", "term", "event", "msg", "fields"} <= set(elected[-1])
    for f in followers:
        assert any(e["event"] == "leader_changed" and e["fields"] == {"leader": leader, "role": "follower"}
                   for e in cluster.events(f))

    # Kill the followers: the survivor loses its quorum and its leader, and says so.
    for f in followers:
        cluster.kill(f)
    wait_until(lambda: cluster.get(leader, "/health")[0] == 503, 15, what="the survivor to be unhealthy")
    status, body = cluster.get(leader, "/health")
    assert status == 503 and "no leader" in body
    lone = cluster.scrape(leader)
    assert lone["aegis_has_leader"] == 0 and lone["aegis_healthy"] == 0
    assert any(e["event"] == "stepped_down" and e["node"] == leader for e in cluster.events(leader))

    def peers_down() -> bool:
        down = {e["fields"]["peer"] for e in cluster.events(leader) if e["event"] == "peer_down"}  # type: ignore[index]
        return down == set(followers)

    wait_until(peers_down, 10, what="a peer_down event for each killed follower")


def test_a_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "aegis.cli", "serve", "--id", "n1", "--listen", f"127.0.0.1:{free_port()}",
             "--data", str(tmp_path / "n1"), "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30)
    assert proc.returncode == 5
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in proc.stderr
