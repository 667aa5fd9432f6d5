"""Disk footprint of small JSON values with the zstd dictionary shipped through the log.

    python bench/disk_footprint.py                     # 200,000 values, --zstd-dict auto vs off
    python bench/disk_footprint.py --values 50000 --modes auto

For each mode, starts a real 3-node cluster (`aegis serve` processes on 127.0.0.1), writes
N JSON documents of ~100-300 bytes (repeated field names, as applications store them) with
pipelined SETs from a few connections, waits until every node has applied and flushed
them, stops the cluster (SIGTERM) and measures each data directory:

* ``du``: the blocks the directory takes on disk (what an operator sees);
* LMDB: pages in use per database, times the page size (``log`` and ``meta`` of the log's
  environment; ``kv`` (the values), ``scan`` (the SCAN index) and ``history`` (the change
  feed's recent changes) of the state's environment), and each environment's high-water
  mark (``last_pgno``).

Then the ratio auto / off. Uses 2 cores' worth of processes for a minute or two.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import redis

ROOT = Path(__file__).resolve().parents[1]
CITIES = ["Paris", "Berlin", "Oslo", "Lima", "Tokyo", "Austin", "Lagos", "Perth"]
TAGS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda"]
STATUS = ["active", "pending", "suspended", "deleted"]


def document(rng: random.Random, i: int) -> bytes:
    """A user record of ~100-300 bytes: a fixed schema, varying contents and optional fields."""
    d: dict[str, Any] = {"id": i, "user": f"user{rng.randrange(10**6)}", "status": rng.choice(STATUS),
                         "score": round(rng.random() * 1000, 2), "created_at":
                         f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
                         f"{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"}
    if rng.random() < 0.7:
        d["email"] = f"{d['user']}@{rng.choice(['example.com', 'mail.org', 'corp.net'])}"
    if rng.random() < 0.6:
        d["address"] = {"city": rng.choice(CITIES), "zip": str(rng.randrange(10**4, 10**5))}
    if rng.random() < 0.5:
        d["tags"] = rng.sample(TAGS, rng.randrange(1, 4))
    if rng.random() < 0.3:
        d["note"] = " ".join(rng.choice(TAGS + CITIES) for _ in range(rng.randrange(1, 10)))
    return json.dumps(d, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def info(port: int) -> dict[str, str]:
    c = redis.Redis(port=port, socket_timeout=10)
    try:
        text = c.execute_command("INFO")
    finally:
        c.close()
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    raw = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line and not line.startswith("#"))


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:  # noqa: BLE001 - retried until the deadline
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def write(port: int, n: int, conns: int, seed: int) -> float:
    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        c = redis.Redis(port=port, socket_timeout=30)
        p = c.pipeline(transaction=False)
        for i in range(w, n, conns):
            p.set(f"user:{i:07d}", document(rng, i))
            if len(p) >= 200:
                p.execute()
        if len(p):
            p.execute()
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) * 1024


def lmdb_figures(path: Path) -> dict[str, int]:
    """Bytes in use per named database (pages x page size) and the environment's high water."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        out: dict[str, int] = {}
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        psize = env.stat()["psize"]
        for name in names:
            try:
                db = env.open_db(name, create=False)
            except lmdb.Error:
                continue
            with env.begin() as txn:
                st = txn.stat(db)
            out[name.decode()] = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * psize
        out["(high water)"] = (env.info()["last_pgno"] + 1) * psize
        return out
    finally:
        env.close()


def value_figures(state: Path) -> tuple[int, int, int, int]:
    """(values, compressed values, raw value bytes, stored value bytes) of the kv database."""
    env = lmdb.open(str(state), readonly=True, lock=False, max_dbs=16, subdir=True)
    n = packed = raw = stored = 0
    try:
        db = env.open_db(b"kv", create=False)
        with env.begin(db=db) as txn:
            for k, rec in txn.cursor():
                version = int.from_bytes(rec[4:12], "big")
                off = 20 + (8 if version >> 63 else 0)
                if k[:1] == b"\x01":  # a long key's record carries the key
                    off += 4 + int.from_bytes(rec[off:off + 4], "big")
                n += 1
                stored += len(rec) - off
                if version >> 62 & 1:
                    packed += 1
                    raw += int.from_bytes(rec[off + 4:off + 8], "big")
                else:
                    raw += len(rec) - off
    finally:
        env.close()
    return n, packed, raw, stored


def run(mode: str, n: int, root: Path, conns: int) -> dict[str, Any]:
    ids = ["n1", "n2", "n3"]
    ports = {nid: free_port() for nid in ids}
    peers = ",".join(f"{nid}=127.0.0.1:{p}" for nid, p in ports.items())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for nid in ids:
            logf = open(root / f"{mode}-{nid}.log", "ab")
            procs[nid] = subprocess.Popen(
                [sys.executable, "-m", "aegis.cli", "serve", "--id", nid, "--listen", f"127.0.0.1:{ports[nid]}",
                 "--data", str(root / mode / nid), "--peers", peers, "--zstd-dict", mode],
                cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            logf.close()
        leader = wait(lambda: next((nid for nid in ids if info(ports[nid])["role"] == "leader"), None), 30, "a leader")
        secs = write(ports[leader], n, conns, seed=1)

        def settled() -> bool:
            fs = [info(ports[nid]) for nid in ids]
            commit = int(fs[ids.index(leader)]["commit_index"])
            return all(int(f["applied_index"]) >= commit and int(f["state_durable_index"]) >= commit
                       and int(f["state_pending_keys"]) == 0 for f in fs)

        wait(settled, 60, "every node to apply and flush")
        time.sleep(1.0)  # let a last log compaction finish
        infos = {nid: info(ports[nid]) for nid in ids}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    nodes = {}
    for nid in ids:
        d = root / mode / nid
        nodes[nid] = {"du": du(d), "log_env": lmdb_figures(d), "state_env": lmdb_figures(d / "state"),
                      "values": value_figures(d / "state")}
    return {"mode": mode, "seconds": secs, "nodes": nodes, "info": infos}


def mib(b: int) -> str:
    return f"{b / (1 << 20):8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=200_000)
    ap.add_argument("--modes", default="auto,off")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args()
    rng = random.Random(1)
    sample = [document(rng, i) for i in range(10_000)]
    avg = sum(map(len, sample)) / len(sample)
    print(f"{args.values} JSON values, {min(map(len, sample))}-{max(map(len, sample))} bytes (mean {avg:.0f}), "
          f"~{args.values * avg / (1 << 20):.1f} MiB of values; 3 nodes")
    root = Path(tempfile.mkdtemp(prefix="aegis-disk-"))
    results = {}
    for mode in args.modes.split(","):
        r = run(mode, args.values, root, args.conns)
        results[mode] = r
        i1 = r["info"]["n1"]
        print(f"\n--zstd-dict {mode}: wrote in {r['seconds']:.1f} s ({args.values / r['seconds']:,.0f}/s); "
              f"dictionary id {i1.get('zstd_dict_id', '-')}, {i1.get('zstd_dict_bytes', '-')} bytes, "
              f"at index {i1.get('zstd_dict_index', '-')}")
        print(f"  {'node':<5}{'du MiB':>9}{'log':>9}{'meta':>9}{'kv':>9}{'scan':>9}{'history':>9}"
              f"{'log hw':>9}{'state hw':>9}")
        for nid, f in r["nodes"].items():
            le, se = f["log_env"], f["state_env"]
            print(f"  {nid:<5}{mib(f['du'])} {mib(le.get('log', 0))} {mib(le.get('meta', 0))} {mib(se.get('kv', 0))} "
                  f"{mib(se.get('scan', 0))} {mib(se.get('history', 0))} {mib(le['(high water)'])} "
                  f"{mib(se['(high water)'])}")
        nv, packed, raw, stored = r["nodes"]["n1"]["values"]
        print(f"  values in the state (n1): {nv} keys, {packed} compressed with the dictionary; "
              f"{raw / (1 << 20):.1f} MiB of values stored in {stored / (1 << 20):.1f} MiB ({stored / raw:.2f})")
    if "auto" in results and "off" in results:
        def total(mode: str, key: str) -> int:
            nodes = results[mode]["nodes"].values()
            if key == "du":
                return sum(f["du"] for f in nodes)
            return sum(f["state_env"].get(key, 0) + f["log_env"].get(key, 0) for f in nodes)

        print("\nauto / off:")
        for key in ("du", "kv", "history", "log", "scan"):
            a, o = total("auto", key), total("off", key)
            print(f"  {key:<8} {mib(a)} MiB / {mib(o)} MiB = {a / o if o else float('nan'):.2f}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\ndata kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
