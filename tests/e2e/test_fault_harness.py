"""The fault harness in CI: one seeded run with every fault kind, checked for linearizability.

`python -m tests.fault --seconds 600` is the soak; this is the same run, shorter.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import threading
import time
from pathlib import Path

from tests.fault.linearizability import Op, check
from tests.fault.nemesis import KINDS
from tests.fault.run import Config, run
from tests.fault.workload import History, Worker, connection, final_reads

from .harness import LocalCluster, running


def test_a_seeded_run_with_every_fault_kind_is_linearizable() -> None:
    summary = run(Config(seconds=40, seed=20261203, clients=6, keys=4, key_seconds=10))
    print(summary.text())
    assert summary.ok, summary.text()
    assert summary.verdict == "ok"
    # Every kind of fault really happened...
    assert set(summary.faults) == set(KINDS)
    assert all(summary.faults[k] >= 1 for k in KINDS), summary.faults
    assert summary.dropped_connections >= 1
    # ... and the run proved something: many operations of every kind completed, so it
    # cannot pass with everything failing, and every node served every key at the end.
    t = summary.tally
    assert t.ok >= 1500, t
    for kind in ("get", "set", "del", "incr", "cas"):
        assert t.by_kind[kind][0] >= 100, (kind, t.by_kind[kind])
    assert t.by_kind["final-get"][0] == summary.keys_used * summary.config.nodes
    assert summary.ops_checked >= t.ok


def test_the_pipeline_catches_acknowledged_writes_that_were_lost(tmp_path: Path) -> None:
    """Workers record writes, every node's data is then wiped behind the checker's back:
    the final reads of nil contradict the acknowledged writes and the check says so."""
    cluster = LocalCluster(tmp_path)
    history = History()
    stop = threading.Event()
    with running(cluster, leader=True):
        ports = {nid: node.port for nid, node in cluster.nodes.items()}
        t0 = time.monotonic()
        values = itertools.count(1)
        workers = [Worker(i, ports, history, stop, seed=1, keys=2, key_seconds=60, t0=t0, values=values)
                   for i in range(2)]
        for w in workers:
            w.start()
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert check(history.ops).verdict == "ok"
        # However the second went, each key ends on one more acknowledged SET. A key whose
        # history holds an unknown write (a slow CI machine timed one out) could still read
        # nil legally, since that write may linearize last; "lost" is a key no worker
        # touched, so its nil can only mean a loss.
        leader_port = ports[cluster.leader()]
        keys = ["f0.0", "f0.1", "lost"]
        for key in keys:
            conn = connection(leader_port, 10.0)
            value = str(next(values) * 1000)
            oid, invoke = history.next_id(), time.monotonic()
            conn.send_command("SET", key, value)
            assert conn.read_response() == "OK"
            history.record(Op("last", key, "set", (value,), "OK", invoke, time.monotonic(), oid), "set", 0)
            conn.disconnect()
        assert check(history.ops).verdict == "ok"
        for nid, node in cluster.nodes.items():
            cluster.kill(nid, signal.SIGTERM)
            shutil.rmtree(node.data)
        cluster.start()
        cluster.leader()
        assert not final_reads(ports, keys, history, deadline=time.monotonic() + 30)
    result = check(history.ops, minimize_seconds=5)
    assert result.verdict == "violation", history.tally
    print(result.report())
    assert "final@" in result.report()
