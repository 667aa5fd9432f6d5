"""3 -> 5 -> 3 under a write load (issue 10's black-box test): two nodes join with `--join`
and are promoted, then a joined leader and an original leader each remove themselves and
are answered OK; every acknowledged write is on every remaining member."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from pathlib import Path

import redis

from .harness import LocalCluster, NodeProc, free_port, running, wait_until


def ok(reply: object) -> bool:
    return reply in (b"OK", "OK", True)


def test_grow_to_five_and_back_to_three_while_writing(tmp_path: Path) -> None:
    with running(LocalCluster(tmp_path), leader=True) as c:
        members = ["n1", "n2", "n3"]
        acked: dict[str, str] = {}
        stop = threading.Event()
        rng = random.Random(7)

        def writer() -> None:
            i = 0
            while not stop.is_set() and i < 20_000:
                nid = rng.choice(list(members))
                try:
                    if c.nodes[nid].client(socket_timeout=3).set(f"w{i}", str(i)):
                        acked[f"w{i}"] = str(i)
                except redis.RedisError:
                    pass
                i += 1

        def leader_client() -> redis.Redis:
            return c.nodes[c.leader(list(members))].client(socket_timeout=10)

        def voters_are(nids: list[str]) -> bool:
            return all(c.info(n)["voters"] == ",".join(sorted(nids)) for n in nids)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            for nid in ("n4", "n5"):
                new = NodeProc(nid, free_port(), tmp_path / nid, tmp_path / f"{nid}.log")
                peers = ",".join(f"{n}={c.addr(n)}" for n in members) + f",{nid}={new.addr}"
                with open(new.log, "ab") as logf:
                    new.proc = subprocess.Popen(
                        [sys.executable, "-m", "aegis.cli", "serve", "--id", nid, "--listen", new.addr, "--data",
                         str(new.data), "--peers", peers, "--join", "--tick-ms", "20"],
                        stdout=logf, stderr=subprocess.STDOUT)
                c.nodes[nid] = new  # stopped with the others
                wait_until(lambda: new.client().ping(), 15, what=f"{nid} to listen")
                assert ok(leader_client().execute_command("MEMBER", "ADD", nid, new.addr, "LEARNER"))
                lead = c.leader(list(members))
                wait_until(lambda: int(c.info(nid)["applied_index"]) >= int(c.info(lead)["commit_index"]) - 50,
                           20, what=f"{nid} to catch up")
                assert ok(leader_client().execute_command("MEMBER", "PROMOTE", nid))
                members.append(nid)
                wait_until(lambda: voters_are(members), 15, what=f"{nid} to be a voter")
            assert len(members) == 5

            # A joined node leads, then removes itself: answered OK, not -TIMEOUT.
            assert ok(leader_client().execute_command("LEADER", "TRANSFER", "n4"))
            wait_until(lambda: c.info("n4")["role"] == "leader", 15, what="n4 to lead")
            assert ok(c.nodes["n4"].client(socket_timeout=10).execute_command("MEMBER", "REMOVE", "n4"))
            members.remove("n4")
            wait_until(lambda: voters_are(members), 15, what="n4 to be gone")
            # An original node leads, then removes itself.
            lead = c.leader(members)
            if lead not in ("n1", "n2", "n3"):
                assert ok(c.nodes[lead].client(socket_timeout=10).execute_command("LEADER", "TRANSFER", "n1"))
                wait_until(lambda: c.info("n1")["role"] == "leader", 15, what="n1 to lead")
                lead = "n1"
            assert ok(c.nodes[lead].client(socket_timeout=10).execute_command("MEMBER", "REMOVE", lead))
            members.remove(lead)
            wait_until(lambda: voters_are(members), 15, what=f"{lead} to be gone")
            assert len(members) == 3 and "n5" in members
        finally:
            stop.set()
            t.join(30)
        assert len(acked) >= 50, f"only {len(acked)} writes acknowledged"  # (one connection each)
        last = max(acked, key=lambda k: int(k[1:]))
        for nid in members:
            cl = c.nodes[nid].client()
            wait_until(lambda cl=cl: cl.get(last) == acked[last].encode(), 15, what=f"{nid} to apply")
            keys = sorted(acked)
            got = cl.mget(keys)
            missing = [k for k, v in zip(keys, got) if v != acked[k].encode()]
            assert not missing, f"{nid} lacks {len(missing)} acknowledged writes, e.g. {missing[:5]}"
