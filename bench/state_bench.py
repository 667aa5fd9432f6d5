"""CPU per SET of applying and flushing the node's LMDB state, as every node does it.

    python bench/state_bench.py [--writes 200000] [--batch 16] [--no-history] [--no-dictionary]

Opens a fresh `LmdbStore` in a temp dir, registers and activates a zstd dictionary trained
on values like the workload's (the node trains one from its traffic), then applies
`--writes` SETs of 100-byte values to random keys of a 1,000,000-key space in BATCH entries
of `--batch` commands through `StateMachine.apply_entries`, and every 40,000 writes takes a
state flush (`take_flush` + `write_flush`, with the change feed's history unless
`--no-history`), as the node's background flush does. Prints the process CPU time
(`time.process_time`, so the fsync waits are not counted) per SET of apply and of flush.
For people, not CI.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time

import msgpack
import zstandard as zstd

from aegis.log import EntryType, LogEntry, LogIndex, Term
from aegis.state import StateMachine, encode_batch
from storage.lmdb_store import LmdbStore

FLUSH_EVERY = 40_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writes", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-history", action="store_true", help="keep no change-feed history (--feed-history 0)")
    p.add_argument("--no-dictionary", action="store_true", help="no zstd dictionary: values stored raw")
    args = p.parse_args()
    d = tempfile.mkdtemp(prefix="aegis-state-bench-")
    try:
        store = LmdbStore.open(d, node_id="n1")
        kv = store.state()
        kv.history_keep = 0 if args.no_history else 100_000
        if not args.no_dictionary:
            samples = [(b"v%06d" % i) + b"x" * 94 for i in range(2000)]
            store.codec.add_dictionary(zstd.train_dictionary(4096, samples).as_bytes(), activate=True)
        sm = StateMachine(backend=kv)
        rng = random.Random(1)
        value = b"x" * 100
        t_apply = t_flush = 0.0
        changes: list[tuple[int, bytes, bytes | None]] = []
        done = 0
        index = 1
        while done < args.writes:
            n = min(args.batch, args.writes - done)
            cmds = [b"\x93\x01" + msgpack.packb(b"key:%012d" % rng.randrange(1_000_000)) + msgpack.packb(value)
                    for _ in range(n)]
            entry = LogEntry(LogIndex(index), Term(1), EntryType.BATCH, encode_batch(cmds), time.time())
            index += 1
            sm.changes = []
            t0 = time.process_time()
            sm.apply_entries([entry])
            t_apply += time.process_time() - t0
            changes.extend(sm.changes or [])
            done += n
            if done % FLUSH_EVERY < n or done == args.writes:
                t0 = time.process_time()
                flush = kv.take_flush()
                if flush is not None:
                    kv.write_flush(*flush, history=changes)
                    kv.flush_done(True)
                t_flush += time.process_time() - t0
                changes = []
        store.close()
        print(f"{args.writes:,} SETs in batches of {args.batch}, history {'off' if args.no_history else 'on'}, "
              f"dictionary {'off' if args.no_dictionary else 'on'}: apply {t_apply / args.writes * 1e6:.1f} µs/SET, "
              f"flush {t_flush / args.writes * 1e6:.1f} µs/SET (process CPU)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
