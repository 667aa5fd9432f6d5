"""A bounded chaos run: writers against a 3-node cluster while nodes are kill -9'd at random.

    python bench/chaos.py [--seconds 60] [--seed 1] [--proxies]

Every write a client saw acknowledged (+OK, :n) is recorded with its value. Every 0.5-2 s a
random node (sometimes two, sometimes all three) is killed with SIGKILL and restarted a
moment later; with --proxies, links are also cut and healed. At the end the cluster is
healed and every acknowledged write must be readable, with its last acknowledged value,
from every node. Exits non-zero on any loss. Everything it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.harness import LocalCluster, wait_until  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--proxies", action="store_true", help="also cut and heal links")
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="aegis-chaos-"))
    cluster = LocalCluster(root, proxies=args.proxies, snapshot_threshold=500)
    acked: dict[str, bytes] = {}
    maybe: dict[str, list[bytes]] = {}  # values sent after the last ack whose outcome is unknown
    lock = threading.Lock()
    stop = threading.Event()
    counts = {"ok": 0, "err": 0}

    def writer(w: int) -> None:
        wrng = random.Random(args.seed * 100 + w)
        ids = list(cluster.nodes)
        i = 0
        while not stop.is_set():
            node = cluster.nodes[wrng.choice(ids)]
            key = f"w{w}-{wrng.randrange(200)}"
            value = f"{w}-{i}".encode()
            i += 1
            with lock:
                maybe.setdefault(key, []).append(value)  # outcome unknown until acknowledged
            try:
                c = redis.Redis(port=node.port, socket_timeout=3, socket_connect_timeout=1)
                if c.set(key, value):
                    with lock:
                        acked[key] = value  # one writer per key: the last ack wins...
                        maybe[key] = []  # ...unless a later write of unknown outcome landed
                        counts["ok"] += 1
            except redis.ResponseError as exc:
                definite = str(exc).split()[0] in ("ERR", "TRYAGAIN")  # nothing was written
                with lock:
                    if definite and maybe.get(key):
                        maybe[key].remove(value)
                    counts["err"] += 1
                time.sleep(0.05)
            except redis.RedisError:
                with lock:
                    counts["err"] += 1
                time.sleep(0.05)

    try:
        cluster.start()
        cluster.leader()
        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(args.writers)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.seconds
        events = 0
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))
            roll = rng.random()
            alive = [n for n, node in cluster.nodes.items() if node.alive()]
            if args.proxies and roll < 0.3:
                victim = rng.choice(list(cluster.nodes))
                cluster.isolate(victim)
                time.sleep(rng.uniform(0.3, 1.5))
                cluster.heal()
                what = f"isolated {victim}"
            else:
                k = 3 if roll > 0.9 else (2 if roll > 0.75 else 1)
                victims = rng.sample(alive, min(k, len(alive)))
                for v in victims:
                    cluster.kill(v)
                time.sleep(rng.uniform(0.2, 1.0))
                for v in victims:
                    cluster.start(v, wait=False)
                what = f"killed {','.join(victims)}"
            events += 1
            print(f"{time.strftime('%H:%M:%S')} {what}; acked {counts['ok']}, errors {counts['err']}", flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        cluster.heal()
        for nid, node in cluster.nodes.items():
            if not node.alive():
                cluster.start(nid)
        cluster.leader(timeout=30)
        lost: list[tuple[str, str, object, bytes]] = []
        for nid, node in cluster.nodes.items():
            c = node.client(socket_timeout=10)
            def check(c: redis.Redis = c, nid: str = nid) -> bool:
                wrong = [(k, c.get(k)) for k, v in acked.items() if c.get(k) not in (v, *maybe.get(k, []))]
                lost[:] = [(nid, k, got, acked[k]) for k, got in wrong]
                return not wrong
            try:
                wait_until(check, 30, what=f"{nid} to hold every acknowledged write")
            except AssertionError:
                print(f"LOST on {nid}: {lost[:10]}", file=sys.stderr)
                return 1
        print(f"chaos: {events} fault events, {counts['ok']} acknowledged writes "
              f"({len(acked)} keys), {counts['err']} errors, 0 lost")
        return 0
    finally:
        stop.set()
        cluster.stop_all()


if __name__ == "__main__":
    sys.exit(main())
