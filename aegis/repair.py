"""`aegis repair-term`: bring a stored term past `MAX_TERM` back below it, offline.

Why it is offline and cluster-wide
----------------------------------
A term only ever grows in Raft, and safety leans on that: a node votes once per term
[3.4], and (index, term) names one entry in every log [3.5]. Lowering a term on a node
that is running, or on one node of a cluster whose others keep theirs, can let it vote a
second time in a term it already voted in (two leaders in one term), or let a new leader
write an entry at an (index, term) that another log already holds with other contents.

Lowering is safe when every node of the cluster is stopped and repaired to the same term T
with its vote cleared, T being at least the newest entry term in *any* node's log: the
terms above T hold no entry anywhere, no node remembers a vote in them, and no message of
the old run survives (its connections died with the processes), so they are fresh terms,
as if never used. That is why the tool only prints what a node holds until it is given
`--term`, and why the same T must go to every node. A log that itself holds an entry at or
past the limit cannot be repaired this way: restore the cluster from a backup.

A version of Aegis with the limit never writes such a term: messages that carry one are
refused (aegis.raft); only an older version under a forged-peer attack could have.
"""

from __future__ import annotations

import sys

from .log import HardState, LogIndex, Term
from .raft import MAX_TERM


def repair_term(data_dir: str, term: int | None) -> int:
    from storage import DataDirInUseError, LmdbStore, StorageError
    from storage.lmdb_store import read_identity

    try:
        node_id, cluster = read_identity(data_dir)
        store = LmdbStore.open(data_dir, node_id=node_id, cluster=cluster, create=False)
    except DataDirInUseError as exc:
        print(f"aegis repair-term: {exc}; stop the node (every node of the cluster) first", file=sys.stderr)
        return 3
    except StorageError as exc:
        print(f"aegis repair-term: {exc}", file=sys.stderr)
        return 4
    try:
        hs, _ = store.initial_state()
        last = store.last_index()
        last_term = int(store.term(last))
        print(f"node {node_id} of cluster {cluster!r} ({data_dir})")
        print(f"  stored term     {hs.term}{'   PAST THE LIMIT' if hs.term >= MAX_TERM else ''}")
        print(f"  voted for       {hs.voted_for or '-'}")
        print(f"  last log entry  index {last}, term {last_term}")
        print(f"  highest term    {MAX_TERM - 1} (a term must stay below {MAX_TERM})")
        if last_term >= MAX_TERM:
            print("aegis repair-term: the log itself holds an entry past the limit; this cannot be repaired "
                  "in place: restore the cluster from a backup (aegis snapshot restore)", file=sys.stderr)
            return 1
        if term is None:
            if hs.term >= MAX_TERM:
                print("\nTo repair: with EVERY node of the cluster stopped, run this on each node's data directory, "
                      "note the largest 'last log entry' term T among them, then run\n"
                      "  aegis repair-term --data DIR --term T\n"
                      "on every node with the same T, and start them all. Never on only some nodes of a running "
                      "cluster (see `aegis repair-term --help` and the README's Security section).")
            return 0
        if not last_term <= term < MAX_TERM:
            print(f"aegis repair-term: --term must be at least this node's last log term {last_term} and below "
                  f"{MAX_TERM}", file=sys.stderr)
            return 2
        store.set_hard_state(HardState(Term(term), None, LogIndex(hs.commit_index)))
        print(f"set the term to {term} and cleared the vote (was term {hs.term}, vote {hs.voted_for or '-'}); "
              "repair every other node with the same --term before starting any")
        return 0
    finally:
        store.close()
