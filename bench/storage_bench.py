"""Storage benchmark: durable append throughput, recovery time, compression ratio and cost.

    python bench/storage_bench.py                   # everything (builds a 1,000,000-entry log)
    python bench/storage_bench.py --recover-entries 200000 --skip-compression

Figures printed:

* durable appends (sync=True: each batch is one LMDB transaction and one fsync) of 100-byte
  entries in batches of 1, 16 and 256: entries/s, and the batch-256 / batch-1 ratio (group
  commit should make it >= 50x);
* reopen and recover a log of N entries (default 1,000,000): time for `LmdbStore.open`
  (identity and structure checks, the cache tail loaded and verified) and the first reads;
* compression of JSON-like values of ~100 B and ~1 KiB: stored record size vs raw payload,
  and CPU per pack/unpack, at zstd levels 1 and 3, with and without a trained dictionary
  (trained on one set of values, measured on another).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aegis.log import LogEntry, LogIndex, Term  # noqa: E402
from storage import Codec, LmdbStore, train_dictionary  # noqa: E402

WORDS = "alpha beta gamma delta red green blue gold silver admin user guest eu-west us-east".split()


def json_value(rng: random.Random, target: int) -> bytes:
    """A JSON document of about `target` bytes, shaped like application records."""
    doc: dict[str, object] = {
        "id": rng.randrange(10**9),
        "user": f"user{rng.randrange(100_000)}",
        "email": f"u{rng.randrange(100_000)}@example.com",
        "active": rng.random() < 0.7,
        "role": rng.choice(WORDS[8:11]),
    }
    items: list[dict[str, object]] = []
    while len(json.dumps(doc | {"items": items})) < target:
        items.append(
            {"sku": f"SKU-{rng.randrange(10_000):05d}", "qty": rng.randrange(1, 9),
             "price": round(rng.uniform(1, 500), 2), "tag": rng.choice(WORDS)}
        )
    raw = json.dumps(doc | {"items": items}).encode() if items else json.dumps(doc).encode()
    return raw[: max(target, 60)] if len(raw) > target * 1.3 else raw


def entries_of(lo: int, n: int, size: int, term: int = 1) -> list[LogEntry]:
    payload = b"x" * size
    return [LogEntry(LogIndex(i), Term(term), data=payload, timestamp=float(i)) for i in range(lo, lo + n)]


def bench_appends(root: Path) -> None:
    print("== durable appends (sync=True, one transaction + fsync per batch), 100 B entries")
    rng = random.Random(1)
    rates = {}
    for batch, batches in ((1, 1500), (16, 400), (256, 120)):
        d = root / f"append-{batch}"
        store = LmdbStore.open(d, node_id="bench")
        values = [json_value(rng, 100) for _ in range(1024)]
        # The entries come ready-made from the Raft core; only the store's work is timed.
        work = [
            [LogEntry(LogIndex(b * batch + k + 1), Term(1), data=values[(b * batch + k) % 1024], timestamp=0.0)
             for k in range(batch)]
            for b in range(batches)
        ]
        t0 = time.perf_counter()
        for es in work:
            store.append(es)
        dt = time.perf_counter() - t0
        store.close()
        shutil.rmtree(d)
        rates[batch] = batch * batches / dt
        print(f"   batch {batch:>3}: {rates[batch]:>10,.0f} entries/s  ({batches / dt:,.0f} fsyncs/s)")
    print(f"   batch-256 / batch-1 = {rates[256] / rates[1]:.0f}x (target >= 50x)")


def bench_recovery(root: Path, n: int) -> None:
    print(f"== reopen and recover a log of {n:,} entries of ~100 B")
    d = root / "recover"
    rng = random.Random(2)
    values = [json_value(rng, 100) for _ in range(1024)]
    t0 = time.perf_counter()
    store = LmdbStore.open(d, node_id="bench", sync=False)  # UNSAFE mode only to build quickly
    step = 10_000
    for lo in range(1, n + 1, step):
        store.append(
            [LogEntry(LogIndex(i), Term(1 + i // 100_000), data=values[i % 1024], timestamp=float(i))
             for i in range(lo, min(n, lo + step - 1) + 1)]
        )
    store.close()
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"   built in {time.perf_counter() - t0:.1f}s, data directory {size / 1e6:.0f} MB")
    for label in ("cold-ish", "again"):
        t0 = time.perf_counter()
        # a fresh codec: the builder's record cache must not spare the open any decoding
        store = LmdbStore.open(d, node_id="bench", codec=Codec())
        t_open = time.perf_counter() - t0
        first, last = store.first_index(), store.last_index()
        tail = store.entries(LogIndex(last - 99), LogIndex(last + 1))
        head = store.entries(first, LogIndex(first + 100))
        t_read = time.perf_counter() - t0
        store.close()
        assert (first, last, len(tail), len(head)) == (1, n, 100, 100)
        print(f"   open ({label}): {t_open * 1000:.0f} ms; open + read head and tail: {t_read * 1000:.0f} ms (target < 2000 ms)")
    shutil.rmtree(d)


def bench_compression() -> None:
    print("== compression of JSON-like values (record = 31-35 B header + payload)")
    rng = random.Random(3)
    for target in (100, 1024):
        train = [json_value(rng, target) for _ in range(5000)]
        test = [json_value(rng, target) for _ in range(3000)]
        raw = sum(len(v) for v in test)
        dict_bytes = train_dictionary(train, 16 << 10)
        print(f"   values of ~{target} B (mean {raw / len(test):.0f} B):")
        configs = [(lv, dic, False) for lv in (1, 3) for dic in (False, True)] + [(3, False, True)]
        for level, use_dict, adaptive in configs:
            codec = Codec(level=level, cache_entries=0, adaptive=adaptive)
            if use_dict:
                codec.add_dictionary(dict_bytes, activate=True)
            entries = [LogEntry(LogIndex(i + 1), Term(1), data=v) for i, v in enumerate(test)]
            codec.pack_entry(entries[0])  # warm the per-thread context
            t0 = time.perf_counter()
            records = [codec.pack_entry(e) for e in entries]
            t_pack = time.perf_counter() - t0
            t0 = time.perf_counter()
            for e, r in zip(entries, records):
                codec.unpack_entry(e.index, r)
            t_unpack = time.perf_counter() - t0
            stored = sum(len(r) for r in records)
            payload = stored - sum(35 if use_dict and r[2] & 2 else 31 for r in records)
            n = len(entries)
            label = f"level {level} {'dict   ' if use_dict else 'no dict'}" + (" adaptive (default)" if adaptive else "")
            print(
                f"     {label:<35}: payload {payload / raw:5.1%} of raw, "
                f"record {stored / n:6.1f} B vs raw {raw / n:6.1f} B; "
                f"pack {t_pack / n * 1e6:5.1f} us, unpack {t_unpack / n * 1e6:5.1f} us"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where to put the stores (default: a temporary directory)")
    ap.add_argument("--recover-entries", type=int, default=1_000_000)
    ap.add_argument("--skip-appends", action="store_true")
    ap.add_argument("--skip-recovery", action="store_true")
    ap.add_argument("--skip-compression", action="store_true")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="aegis-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_appends:
            bench_appends(root)
        if not args.skip_recovery:
            bench_recovery(root, args.recover_entries)
        if not args.skip_compression:
            bench_compression()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
