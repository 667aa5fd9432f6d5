"""The zstd dictionary shipped through the log, with real processes (issue 10, "Disk").

A 3-node cluster with a low training threshold: the leader trains a dictionary from the
values written, proposes it, and every node uses it (INFO ``zstd_dict_id``); a node killed
with SIGKILL restarts and reads everything back; a node added later (``--join`` + MEMBER
ADD) gets the state by snapshot and the rest by the log, and reads everything back too.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path


from .harness import LocalCluster, NodeProc, free_port, running, wait_until



def _doc(rng: random.Random, i: int) -> bytes:
    d = {"id": i, "user": f"user{rng.randrange(100_000)}", "email": f"u{rng.randrange(10**6)}@example.com",
         "active": rng.random() < 0.5, "score": round(rng.random() * 1000, 2),
         "tags": rng.sample(["alpha", "beta", "gamma", "delta", "omega"], rng.randrange(1, 4)),
         "address": {"city": rng.choice(["Paris", "Berlin", "Oslo", "Lima"]), "zip": str(rng.randrange(10**4, 10**5))}}
    return json.dumps(d, separators=(",", ":")).encode()


def _write(node: NodeProc, values: dict[str, bytes]) -> None:
    c = node.client()
    try:
        items = sorted(values.items())
        for at in range(0, len(items), 500):
            p = c.pipeline(transaction=False)
            for k, v in items[at:at + 500]:
                p.set(k, v)
            assert all(p.execute())
    finally:
        c.close()


def _read_all(node: NodeProc, values: dict[str, bytes]) -> bool:
    c = node.client()
    try:
        keys = sorted(values)
        for at in range(0, len(keys), 1000):
            chunk = keys[at:at + 1000]
            if c.mget(chunk) != [values[k] for k in chunk]:
                return False
        return True
    finally:
        c.close()


def test_the_dictionary_is_trained_shipped_and_used_by_every_node_including_a_restarted_and_a_joined_one(
        tmp_path: Path) -> None:
    rng = random.Random(10)
    cluster = LocalCluster(tmp_path, 3, snapshot_threshold=1500, extra=["--zstd-dict-train-after", "400"])
    with running(cluster, leader=True) as c:
        leader = c.leader()
        values = {f"doc:{i:05d}": _doc(rng, i) for i in range(2500)}
        _write(c.nodes[leader], values)

        def dict_everywhere() -> str | None:
            ids = {c.info(n)["zstd_dict_id"] for n in c.nodes}
            return ids.pop() if len(ids) == 1 and "0" not in ids else None

        dict_id = wait_until(dict_everywhere, 20, what="every node to use the same dictionary",
                             detail=lambda: str({n: c.info(n).get("zstd_dict_id") for n in c.nodes}))
        for n in c.nodes:
            info = c.info(n)
            assert int(info["zstd_dict_bytes"]) > 1000 and info["zstd_dict_mode"] == "auto"
        more = {f"doc:{i:05d}": _doc(rng, i) for i in range(2500, 4000)}
        _write(c.nodes[leader], more)
        values.update(more)

        # A follower killed with SIGKILL restarts (dictionaries loaded before the log is read)
        # and reads everything back, then keeps replicating.
        follower = next(n for n in c.nodes if n != leader)
        c.kill(follower)
        later = {f"late:{i:04d}": _doc(rng, i) for i in range(500)}
        _write(c.nodes[leader], later)
        values.update(later)
        c.start(follower)
        assert c.info(follower)["zstd_dict_id"] == dict_id
        wait_until(lambda: _read_all(c.nodes[follower], values), 20, what="the restarted node to read everything")

        # A node that joins later: the log is compacted, so it gets a snapshot (which carries
        # the dictionary), then the entries after it.
        new = NodeProc("n4", free_port(), tmp_path / "n4", tmp_path / "n4.log")
        peers = ",".join(f"{n}={p.addr}" for n, p in c.nodes.items()) + f",n4={new.addr}"
        with open(new.log, "ab") as logf:
            new.proc = subprocess.Popen(
                [sys.executable, "-m", "aegis.cli", "serve", "--id", "n4", "--listen", new.addr, "--data",
                 str(new.data), "--peers", peers, "--join", "--tick-ms", "20"],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        c.nodes["n4"] = new  # stopped with the others
        wait_until(lambda: new.client().ping(), 15, what="n4 to listen")
        lc = c.nodes[leader].client(protocol=2)
        assert lc.execute_command("MEMBER", "ADD", "n4", new.addr, "LEARNER") in (b"OK", "OK", True)
        wait_until(lambda: c.info("n4")["zstd_dict_id"] == dict_id, 20, what="n4 to hold the dictionary",
                   detail=c.logs)
        last = {f"last:{i:04d}": _doc(rng, i) for i in range(500)}
        _write(c.nodes[leader], last)
        values.update(last)
        wait_until(lambda: _read_all(new, values), 20, what="n4 to read everything")
        assert "installed a snapshot" in new.log.read_text()
        for n in c.nodes:
            assert c.info(n)["zstd_dict_id"] == dict_id
        assert "cannot be decoded" not in c.logs() and "does not unpack" not in c.logs()
