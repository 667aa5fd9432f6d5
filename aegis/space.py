"""Refusing writes before the disk (or the LMDB map limit) is full.

Theory of operation
-------------------
A write that fails in LMDB for want of space leaves the store fail-stop (storage.env): the
node would have to stop. So the leader refuses new writes *before* that happens, while the
last `reserve` bytes are still free, like etcd's space quota (``mvcc: database space
exceeded``). The reserve is what Raft itself needs to keep going: term and vote, the
leader's no-op entry, membership changes, and the deletes that give space back.

* `SpaceGuard.refusal(payloads)` is asked for each batch of client writes on the leader.
  It returns None (propose them) or a one-line ``DISKFULL ...`` reason. A refused write
  was never proposed: nothing was written, the failure is definite.
* Writes that free space (DEL, UNLINK, PURGE, ...) are always let through: they are how
  an operator (or expiry) gets out of a full store. The reserve covers their log entries
  until the log is compacted.
* The headroom is measured (`measure`: pages the LMDB databases use now, against their
  map limit, and the free bytes of the file system) at most every `interval` seconds, or
  sooner once the bytes proposed since would eat a quarter of the reserve: one small read
  transaction per interval, not per write. What was proposed since the measurement is
  counted against it (the log's share).
* The applied state reaches its LMDB environment later, in a background flush (one
  transaction every couple of seconds): what was proposed but is not flushed yet is not
  in the measurement, so it is counted too (the state's share), per flush "epoch": a flush
  taken opens a new epoch, and a flush done forgets every epoch but the last two (the
  flush just done may have missed writes proposed before it was taken but applied after).
  The count is conservative by at most one flush interval of writes.
* Full and not-full are states: entering one logs one line (``disk_full`` /
  ``disk_space_back``), so a client hammering a full node makes no flood of log lines;
  leaving the full state takes twice the reserve, so the two do not alternate either.

No trio here; the clock and the measurement are parameters.
"""

from __future__ import annotations

import time
from typing import Callable

from .budget import format_bytes
from .state import Command, CommandType

__all__ = ["SpaceGuard", "frees_space", "DISKFULL"]

DISKFULL = "DISKFULL"

#: OP commands (see aegis.state.OPS) that only remove keys or deadlines.
_FREEING_OPS = frozenset({"PURGE", "DEL", "UNLINK", "FLUSHALL", "FLUSHDB", "PERSIST"})


def frees_space(payload: bytes) -> bool:
    """Whether the encoded command only removes data (so it is let through when full)."""
    try:
        cmd = Command.decode(payload)
    except Exception:  # noqa: BLE001 - not ours to judge here; the state machine will
        return False
    return _frees(cmd)


def _frees(cmd: Command) -> bool:
    if cmd.type == CommandType.DELETE:
        return True
    if cmd.type == CommandType.OP:
        return (cmd.name or "").upper() in _FREEING_OPS
    if cmd.type in (CommandType.SESSION, CommandType.TRANSACTION):
        return bool(cmd.commands) and all(_frees(c) for c in cmd.commands)
    return False


class SpaceGuard:
    """The leader's admission check for writes, against the bytes still free on disk."""

    def __init__(self, measure: Callable[[], int], reserve: int, *, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool, str], None] = lambda full, why: None) -> None:
        self.measure = measure  # bytes that can still be written
        self.reserve = reserve
        self.interval = interval
        self.clock = clock
        self.on_change = on_change
        self.full = False
        self.refused = 0
        self._room = 0
        self._spent = 0  # the log's share of what was proposed since the measurement
        self._epochs = [0]  # the state's share of what was proposed, per state flush taken
        self._at: float | None = None

    def room(self) -> int:
        """Bytes believed free now (measured again when stale)."""
        now = self.clock()
        if self._at is None or now - self._at >= self.interval or self._spent * 4 >= self.reserve:
            self._room = self.measure()
            self._spent = 0
            self._at = now
        return self._room - self._spent - sum(self._epochs)

    def flush_taken(self) -> None:
        """A state flush took the overlay: what is proposed from now on is in a later one."""
        self._epochs.append(0)

    def flush_done(self, ok: bool) -> None:
        """A state flush is on disk (or failed: then nothing is forgotten)."""
        if ok:
            del self._epochs[:-2]
            self._at = None

    def _spend(self, nbytes: int) -> None:
        # A value lands in the log (compressed) and in the state (copy-on-write pages).
        self._spent += nbytes + nbytes // 2
        self._epochs[-1] += nbytes + nbytes // 2

    def refusal(self, payloads: list[bytes]) -> str | None:
        """None: propose these writes; else why they are refused (``DISKFULL ...``)."""
        size = sum(len(p) for p in payloads)
        need = 3 * size
        room = self.room()
        # Hysteresis: once full, writes come back only with twice the reserve free, so a
        # store at the edge does not flip between the two states (and log each flip).
        if room - need >= (2 * self.reserve if self.full else self.reserve):
            self._spend(size)
            if self.full:
                self.full = False
                self.on_change(False, f"{format_bytes(room)} free again; writes are accepted")
            return None
        if all(frees_space(p) for p in payloads):
            self._spend(size)
            return None
        self.refused += len(payloads)
        why = (f"{DISKFULL} the node's storage is full ({max(room, 0)} bytes free, {self.reserve} kept in "
               f"reserve); nothing was written; delete keys or give the node more space")
        if not self.full:
            self.full = True
            self.on_change(True, why)
        return why

    def forget(self) -> None:
        """Measure again at the next check (after a compaction or a flush freed pages)."""
        self._at = None
