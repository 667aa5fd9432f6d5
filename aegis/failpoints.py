"""Named failpoints: an environment variable makes `aegis serve` crash, pause or fail at a
named point of its durable write paths (etcd's gofail is the model).

Theory of operation
-------------------
``AEGIS_FAILPOINTS`` is read once, when this module is imported; it is a ``;``-separated
list of ``NAME=ACTION`` pairs::

    AEGIS_FAILPOINTS="log-after-fsync=crash;vote-after-persist=sleep(2000)"

Actions, each optionally followed by ``@N`` (do nothing on the first N-1 hits, act from
the Nth on):

* ``crash`` — leave at once with exit code 137, like ``kill -9``: no cleanup, no atexit,
  no flush of buffered output; only what was already written (and fsynced) survives;
* ``sleep(MS)`` — block the calling thread for MS milliseconds, then go on;
* ``pause`` — block the calling thread until the process is killed;
* ``error`` — raise `FailpointError`, an `OSError` (EIO) such as a failing disk raises.

With the variable unset (production) nothing is armed and `hit` is one dict truthiness test.
A malformed spec or an unknown name arms nothing; `aegis serve` calls `check()` before it
opens anything and refuses to start with a one-line error. `hit` may be called from the trio
thread or a worker thread; counting hits takes a lock only when the point is armed.

This module imports only the standard library: `storage` and `aegis.server` both call it.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["POINTS", "ENV", "Action", "FailpointError", "FailpointSpecError", "parse", "configure", "check",
           "hit", "armed", "enabled"]

ENV: Final = "AEGIS_FAILPOINTS"
CRASH_EXIT_CODE: Final = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

# Every failpoint, with where it sits. A new point is one row here and one `hit` call.
POINTS: Final[dict[str, str]] = {
    "log-before-fsync": "log entries and hard state in their LMDB transaction, not yet committed (fsynced)",
    "log-after-fsync": "log entries and hard state durable; no client acknowledged for them yet",
    "vote-after-persist": "a granted vote (and its term) durable; the vote reply not yet sent",
    "snapshot-mid-write": "a snapshot file partly written: after each chunk received from the leader "
                          "(or exported)",
    "snapshot-mid-install": "a received snapshot installed as the state; the log not yet compacted to it",
    "compact-before": "log compaction about to delete the entries the stored state covers",
    "state-before-flush": "a key-value state flush in its LMDB transaction, not yet committed",
    "state-after-flush": "a key-value state flush durable (its applied index on disk)",
}

_ACTION = re.compile(r"^(crash|pause|error|sleep\((\d+)\))(?:@(\d+))?$")


class FailpointSpecError(ValueError):
    """AEGIS_FAILPOINTS is malformed or names an unknown failpoint."""


class FailpointError(OSError):
    """The `error` action: an injected I/O error (EIO) at a named failpoint."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EIO, f"injected I/O error at failpoint {name}")
        self.name = name


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    kind: str  # crash | sleep | pause | error
    sleep_ms: int = 0
    from_hit: int = 1  # act on this hit and every later one

    def __post_init__(self) -> None:
        if self.kind not in ("crash", "sleep", "pause", "error"):
            raise FailpointSpecError(f"unknown failpoint action {self.kind!r}")
        if self.from_hit < 1:
            raise FailpointSpecError("a failpoint's @N counts hits from 1")


def parse(spec: str) -> dict[str, Action]:
    """`NAME=ACTION[;NAME=ACTION…]` as a table; raises FailpointSpecError with one line."""
    out: dict[str, Action] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, eq, action = (s.strip() for s in part.partition("="))
        if not eq or not name or not action:
            raise FailpointSpecError(f"{part!r} is not NAME=ACTION")
        if name not in POINTS:
            raise FailpointSpecError(f"unknown failpoint {name!r} (known: {', '.join(POINTS)})")
        if name in out:
            raise FailpointSpecError(f"failpoint {name!r} is given twice")
        m = _ACTION.match(action)
        if m is None:
            raise FailpointSpecError(f"{name}={action!r}: expected crash, pause, error or sleep(MS), "
                                     "optionally followed by @N")
        kind = m.group(1).split("(")[0]
        out[name] = Action(kind=kind, sleep_ms=int(m.group(2) or 0), from_hit=int(m.group(3) or 1))
    return out


_armed: dict[str, Action] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()
_spec_error: FailpointSpecError | None = None


def configure(spec: str | None) -> None:
    """Arm the failpoints `spec` names (None or "": none), forgetting earlier ones and their
    hit counts. Raises FailpointSpecError (and arms nothing) for a bad spec."""
    global _armed, _spec_error
    with _lock:
        _armed, _spec_error = {}, None
        _hits.clear()
        if spec:
            _armed = parse(spec)


def check() -> None:
    """Raise the FailpointSpecError the environment's spec had, if any (`aegis serve` calls it)."""
    if _spec_error is not None:
        raise _spec_error


def armed() -> dict[str, Action]:
    return dict(_armed)


def enabled() -> bool:
    """Whether any failpoint is armed: guards a call site that must look before it `hit`s."""
    return bool(_armed)


def hit(name: str) -> None:
    """The named point is reached: act as armed (normally: nothing at all)."""
    if not _armed:
        return
    action = _armed.get(name)
    if action is None:
        return
    with _lock:
        n = _hits[name] = _hits.get(name, 0) + 1
    if n < action.from_hit:
        return
    if action.kind == "crash":
        try:
            os.write(2, f"failpoint {name}: crash (hit {n})\n".encode())
        finally:
            os._exit(CRASH_EXIT_CODE)
    if action.kind == "error":
        raise FailpointError(name)
    if action.kind == "sleep":
        time.sleep(action.sleep_ms / 1000)
        return
    threading.Event().wait()  # pause: until the process is killed


try:
    configure(os.environ.get(ENV))
except FailpointSpecError as _exc:
    _spec_error = _exc
