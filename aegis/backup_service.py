"""The node's side of `aegis snapshot save`: SNAPSHOT CREATE / READ / RELEASE.

CREATE takes a linearizable point (a read point, like any read: everything acknowledged
before the command arrived is included), waits until this node has applied up to it,
flushes the applied state to disk, and exports one consistent read of the state database
as a backup-format file under `<data>/backups/`. The client fetches it in chunks (READ)
and RELEASEs it. Backups of an earlier run of the node were never released: `clear`
removes them at start.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable

import trio

from . import commands as C
from .driver import FlushState, RaftDriver, ReadPoint, Waiter
from .metrics import NodeMetrics
from .protocol import constant_reply, encode, encode_bulk, encode_error, encode_simple

log = logging.getLogger("aegis.server")

Op = Callable[[], Awaitable[bytes]]


class BackupService:
    def __init__(self, data_dir: str, driver: RaftDriver, metrics: NodeMetrics, overloaded: bytes) -> None:
        self.dir = Path(data_dir) / "backups"
        self._driver = driver
        self._metrics = metrics
        self._overloaded = overloaded  # the reply when the driver's inbox is full
        self._backups: dict[int, Path] = {}
        self._ids = itertools.count(1)

    def clear(self) -> None:
        """(At start.) Remove the backups a previous run of this node left behind."""
        if self.dir.is_dir():
            for stale in self.dir.glob("*"):
                stale.unlink(missing_ok=True)

    def op(self, req: C.SnapshotRequest, resp3: bool) -> Op:
        """Start a SNAPSHOT command; returns its reply to await."""
        if req.op == "create":
            return self._create(resp3)
        path = self._backups.get(req.snapshot_id)
        if path is None:
            return constant_reply(encode_error(f"ERR no snapshot with id {req.snapshot_id} on this node"))
        if req.op == "release":
            self._backups.pop(req.snapshot_id, None)
            path.unlink(missing_ok=True)
            return constant_reply(encode_simple("OK"))

        async def read() -> bytes:
            def chunk() -> bytes:
                with open(path, "rb") as f:
                    f.seek(req.offset)
                    return f.read(req.count)

            return encode_bulk(await trio.to_thread.run_sync(chunk), resp3=resp3)

        return read

    def _create(self, resp3: bool) -> Op:
        driver = self._driver
        w = Waiter()
        if not driver.submit(ReadPoint(w)):
            return constant_reply(self._overloaded)

        async def create() -> bytes:
            # A linearizable point: everything acknowledged before now is included.
            if not await driver.wait(w) or w.error is not None:
                driver.forget_read(w)
                return encode_error(w.error or "TIMEOUT no quorum confirmed the snapshot point in time")
            if not await driver.wait_applied(int(w.value)):
                return encode_error("TIMEOUT this node did not catch up in time")
            # The snapshot point must be on disk: flush the applied state first.
            fw = Waiter()
            if not driver.submit(FlushState(fw)):
                return self._overloaded
            if not await driver.wait(fw):
                return encode_error("TIMEOUT the state was not written in time")
            sid = next(self._ids)
            path = self.dir / f"backup-{sid}.aegis-snapshot"
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            info, keys = await driver.export_state(path)
            self._metrics.snapshots["backup"].observe(time.perf_counter() - t0)
            size = path.stat().st_size
            self._metrics.snapshot_bytes["backup"] = size
            self._backups[sid] = path
            log.info("backup %d at index %d (%d keys, %d bytes)", sid, info.index, keys, size)
            return encode([sid, int(info.index), int(info.term), keys, size, info.checksum.encode()], resp3=resp3)

        return create

