"""Child process of test_storage_crash.py: writes to a store until it is killed.

    python storage_crash_child.py DATA_DIR SEED

Every write is announced before it starts and acknowledged after it returned (the store
fsyncs before returning), one flushed line each, on stdout:

    READY first last term commit snap
    B lo hi term commit cut        (a batch: truncate from `cut` (0: none), append lo..hi
    A lo hi term commit cut         with `term`, hard state (term, commit))
    P index term                   (a snapshot at `index`)
    S index term

Entry contents are a pure function of (index, term) (`make_entry`) and snapshot contents of
the index (`snapshot_data`), so the parent can check every byte.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aegis.log import EntryType, HardState, LogEntry, LogIndex, SnapshotMeta, Term  # noqa: E402
from storage import LmdbStore  # noqa: E402

NODE = "crash-node"


def make_entry(index: int, term: int) -> LogEntry:
    data = (b"%d:%d|" % (index, term)) * (1 + (index * 7 + term) % 60)
    etype = EntryType.NO_OP if index % 17 == 0 else EntryType.COMMAND
    return LogEntry(LogIndex(index), Term(term), etype, data, index + term / 8)


def snapshot_data(index: int) -> bytes:
    return random.Random(index).randbytes(12_000 + index % 5000)


def say(*fields: object) -> None:
    sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = LmdbStore.open(directory, node_id=NODE, map_size=1 << 20, snapshot_chunk_size=4096)
    hs, _ = store.initial_state()
    term, commit = max(hs.term, 1), int(hs.commit_index)
    snap = store.snapshot_info()
    say("READY", store.first_index(), store.last_index(), term, commit, snap.index if snap else 0)
    while True:
        last = store.last_index()
        if rng.random() < 0.06 and commit > (snap.index if snap else 0):
            index = commit
            meta = SnapshotMeta(LogIndex(index), store.term(LogIndex(index)))
            say("P", index, meta.term)
            data = snapshot_data(index)
            with store.begin_snapshot(meta) as w:
                for k in range(0, len(data), 3000):
                    w.write(data[k : k + 3000])
                w.commit()
            snap = store.snapshot_info()
            say("S", index, meta.term)
            continue
        cut = 0
        lo = last + 1
        if rng.random() < 0.1 and last > max(commit, store.snapshot().index):
            term += 1  # a new leader overwrote our uncommitted tail
            cut = rng.randrange(max(commit, store.snapshot().index) + 1, last + 1)
            lo = cut
        n = rng.choice([1, 1, 2, 5, 16, 64])
        hi = lo + n - 1
        commit = max(commit, min(hi, hi - rng.randrange(0, 8)))
        say("B", lo, hi, term, commit, cut)
        store.write_batch(
            truncate_from=LogIndex(cut) if cut else None,
            entries=[make_entry(i, term) for i in range(lo, hi + 1)],
            hard_state=HardState(Term(term), NODE, LogIndex(commit)),
        )
        say("A", lo, hi, term, commit, cut)


if __name__ == "__main__":
    main()
