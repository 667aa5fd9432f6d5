"""`aegis snapshot save|status|restore`: back a cluster up and bring it back (DESIGN.md §6).

* save: `SNAPSHOT CREATE` on any node takes a linearizable snapshot (a ReadIndex round, then
  the state machine as applied at that point) into a backup file on the node; the CLI reads
  it in chunks (`SNAPSHOT READ`, with a progress bar), verifies every checksum, renames it
  into place, and `SNAPSHOT RELEASE`s it. A partial download never looks like a backup.
* status: reads and verifies a backup file and says what it holds.
* restore: seeds an empty data directory from a backup, for the membership given by
  `--peers`. Restore every node of a new cluster from the same file (or one, and add the
  others with `serve --join`), then start them with `aegis serve` and the same flags.

The file format is storage's backup format (header with index, term, membership, size and
SHA-256, then a chunked zstd stream with a CRC per chunk).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from .log import HardState, LogIndex, Membership, SnapshotMeta, Term

READ_CHUNK = 1 << 20


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _failed(prog: str, message: str, as_json: bool) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message}))
    return 1


def save(addr: str, path: str, token: str | None, as_json: bool = False, *,
         ssl_context: "ssl.SSLContext | None" = None) -> int:
    import trio

    from storage import StorageError, read_snapshot_file

    from .client import AegisClient

    err = Console(stderr=True)
    target = Path(path)
    tmp = target.with_name(target.name + ".partial")

    async def fetch() -> list[Any]:
        client = await AegisClient.connect(addr, token=token, timeout=60, ssl_context=ssl_context)
        try:
            head = await client.execute("SNAPSHOT", "CREATE")
            if not isinstance(head, list) or len(head) < 5 or not all(isinstance(x, int) for x in head[:5]):
                raise RuntimeError(f"unexpected reply to SNAPSHOT CREATE: {head!r:.100}")
            sid, index, term, keys, size = (int(x) for x in head[:5] if isinstance(x, int))
            try:
                with open(tmp, "wb") as f, _progress(err) as bar:
                    task = bar.add_task(f"snapshot at index {index}", total=size)
                    offset = 0
                    while offset < size:
                        chunk = await client.execute("SNAPSHOT", "READ", sid, offset, min(READ_CHUNK, size - offset))
                        if not isinstance(chunk, bytes) or not chunk:
                            raise RuntimeError(f"the node returned no data at offset {offset} of {size}")
                        f.write(chunk)
                        offset += len(chunk)
                        bar.update(task, completed=offset)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                try:
                    await client.execute("SNAPSHOT", "RELEASE", sid)
                except Exception:  # noqa: BLE001 - best effort: the node also cleans up on restart
                    pass
            return [index, term, keys, size]
        finally:
            await client.aclose()

    try:
        index, term, keys, size = trio.run(fetch)
        with read_snapshot_file(tmp) as reader:  # verify every chunk and the SHA-256
            for _ in reader:
                pass
        os.replace(tmp, target)
    except (StorageError, OSError, RuntimeError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        return _failed("aegis snapshot save", str(exc), as_json)
    except Exception as exc:  # noqa: BLE001 - connection and server errors, said plainly
        tmp.unlink(missing_ok=True)
        return _failed("aegis snapshot save", f"cannot take a snapshot from {addr}: {exc}", as_json)
    if as_json:
        print(json.dumps({"file": str(target), "index": index, "term": term, "keys": keys, "size": size},
                         indent=2))
    else:
        print(f"saved {target}: index {index}, term {term}, {keys} keys, {size} bytes")
    return 0


def describe(path: str) -> dict[str, Any]:
    """What a backup file holds, after verifying all of it (raises on any corruption)."""
    from storage import read_snapshot_file

    from .state import read_snapshot_header

    with read_snapshot_file(path) as reader:
        info = reader.info
        head = b""
        for piece in reader:  # decompresses and verifies every chunk and the SHA-256
            if len(head) < 256:
                head += piece[:256]
    _, keys = read_snapshot_header(head)
    return {
        "file": str(path),
        "index": int(info.index),
        "term": int(info.term),
        "keys": keys,
        "size": info.size,
        "file_size": os.path.getsize(path),
        "checksum": f"sha256:{info.checksum}",
        "members": sorted(info.membership.members),
        "created": info.created,
        "verified": True,
    }


def status(path: str, as_json: bool) -> int:
    from storage import StorageError

    try:
        d = describe(path)
    except FileNotFoundError:
        print(f"aegis snapshot status: no such file: {path}", file=sys.stderr)
        return 1
    except (StorageError, ValueError, OSError) as exc:
        print(f"aegis snapshot status: {path} is not a valid Aegis snapshot: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(d, indent=2))
        return 0
    import datetime

    created = datetime.datetime.fromtimestamp(d["created"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    for k, v in [("file", d["file"]), ("index", d["index"]), ("term", d["term"]), ("keys", d["keys"]),
                 ("size", f"{d['size']} bytes ({d['file_size']} in the file)"), ("checksum", d["checksum"]),
                 ("members", ",".join(d["members"])), ("created", created), ("verified", "yes")]:
        print(f"{k:>9}: {v}")
    return 0


def restore(path: str, data: str, node_id: str, peers: dict[str, str], cluster: str, as_json: bool = False) -> int:
    from storage import LmdbStore, StorageError, read_snapshot_file

    err = Console(stderr=True)
    if peers and node_id not in peers:
        _failed("aegis snapshot restore", f"--id {node_id} does not appear in --peers", as_json)
        return 2
    target = Path(data)
    if target.exists() and any(target.iterdir()):
        return _failed("aegis snapshot restore", f"{data} is not empty; restore seeds a new node only", as_json)
    membership = Membership.of(sorted(peers) if peers else [node_id], addresses=dict(peers))
    try:
        with read_snapshot_file(path) as reader:
            info = reader.info
            store = LmdbStore.open(data, node_id=node_id, cluster=cluster)
            try:
                meta = SnapshotMeta(LogIndex(info.index), Term(info.term), membership)
                with store.begin_snapshot(meta) as writer, _progress(err) as bar:
                    task = bar.add_task(f"restoring index {info.index}", total=info.stored_size)
                    for raw in reader.raw_chunks():
                        writer.write_compressed(raw)
                        bar.advance(task, len(raw))
                    writer.commit(hard_state=HardState(Term(info.term), None, LogIndex(info.index)),
                                  membership=membership, expect_checksum=info.checksum)
            finally:
                store.close()
    except FileNotFoundError:
        return _failed("aegis snapshot restore", f"no such file: {path}", as_json)
    except (StorageError, ValueError, OSError) as exc:
        return _failed("aegis snapshot restore", str(exc), as_json)
    if as_json:
        print(json.dumps({"file": str(path), "data": str(data), "node_id": node_id, "index": int(info.index),
                          "term": int(info.term), "members": sorted(membership.members)}, indent=2))
        return 0
    print(f"restored {path} (index {info.index}, term {info.term}) into {data} for node {node_id} "
          f"of {','.join(sorted(membership.members))}")
    return 0
