"""Client sessions: exactly-once writes over a log that a client may retry into twice.

Theory of operation
-------------------
Raft alone gives at-least-once: a client whose write timed out (the leader died after
proposing it, the reply was lost with the connection) cannot know whether it applied, and
a retry may apply it a second time. The dissertation's answer [§6.3] is a replicated table
of client sessions, which this module keeps:

* ``SESSION OPEN`` commits a `SESSION_OPEN` command; its session id is made of the entry's
  log index and the command's position in it (``index << 20 | position``), so ids are
  unique for the life of the log and need no counter.
* every write the client makes in the session is a `SESSION` command carrying the session
  id, a sequence number, the client's *acknowledged floor* (the lowest sequence number whose
  reply it has not received yet) and the write itself;
* applying a call: sequence numbers below the floor are refused (their replies were
  received: such a request is a stray duplicate, and its result is gone); a sequence number
  whose result the session holds returns that first result and applies nothing; any other
  is applied and its result kept.

Results are kept per session until the floor passes them, at most `max_results` of them:
beyond that the oldest is dropped and the floor moves past it (a retry of it is then
refused, never applied again). Sessions expire after `timeout_ms` without a call, in log
time (the entry's timestamp, the same on every replica; never the wall clock at apply),
and at most `max_sessions` exist: opening one more expires the one that would expire first.
The three limits travel in the `SESSION_OPEN` entry (the leader's flags when it proposed
it), so every replica applies the same ones whatever its own flags say.

Expiry is checked when a session command applies (then every session whose deadline has
passed goes, soonest first): a session past its deadline is refused even if it is still
stored, and the table costs nothing to entries that do not use sessions.

The table lives in memory (`SessionTable`) and every change is written through the
`KVView` of the apply (``put_session`` / ``delete_session``), so the backend stores it in
the same transaction as the keys (the node's LMDB state: the same flush), and snapshots
carry it (`encode_session` / `decode_session`: msgpack, validated on the way in).

This module does no I/O and never imports trio, lmdb, socket or time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterable, Iterator, Protocol

import msgpack

__all__ = [
    "Session",
    "SessionTable",
    "SessionWriter",
    "encode_session",
    "decode_session",
    "encode_result_value",
    "NOSESSION",
    "STALESEQ",
    "SESSION_ERRORS",
    "DEFAULT_SESSION_TIMEOUT_MS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_MAX_RESULTS",
    "POSITION_BITS",
]

#: Error kinds of the session layer (the first word of the failed result's error, and the
#: RESP error prefix the client sees). Neither applied anything.
NOSESSION: Final = "NOSESSION"
STALESEQ: Final = "STALESEQ"
SESSION_ERRORS: Final = (NOSESSION, STALESEQ)

DEFAULT_SESSION_TIMEOUT_MS: Final = 3_600_000  # an hour idle, as LogCabin
DEFAULT_MAX_SESSIONS: Final = 10_000
DEFAULT_MAX_RESULTS: Final = 256
POSITION_BITS: Final = 20  # a session id is (log index << 20) | position in the entry


class SessionWriter(Protocol):
    """Where the table writes its changes: the apply's view of the backend."""

    def put_session(self, sid: int, data: bytes) -> None: ...

    def delete_session(self, sid: int) -> bool: ...


@dataclass(slots=True)
class Session:
    sid: int
    timeout_ms: int
    max_results: int
    last: int  # log time (ms) of the last call, or of the open
    floor: int = 1  # sequence numbers below it are refused
    results: dict[int, Any] = field(default_factory=dict)  # seq -> CommandResult

    @property
    def deadline(self) -> int:
        return self.last + self.timeout_ms


def _uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# --- codec ------------------------------------------------------------------------------------
#
# A result is [success, value, version, applied_index, error]; a value is bytes, an int or
# None, or a tuple: ["T", [values]] for a plain tuple (MGET, GETV), ["R", [results]] for a
# transaction's results. msgpack keeps str and bytes apart, so the tags cannot be values.


def encode_result_value(value: Any) -> Any:
    from .state import CommandResult

    if isinstance(value, tuple):
        if value and all(isinstance(v, CommandResult) for v in value):
            return ["R", [_result_wire(v) for v in value]]
        return ["T", [encode_result_value(v) for v in value]]
    return value


def _result_wire(r: Any) -> list[Any]:
    return [r.success, encode_result_value(r.value), r.version, r.applied_index, r.error]


def _value_from_wire(obj: Any, depth: int = 0) -> Any:
    if depth > 8:
        raise ValueError("result nested too deeply")
    if obj is None or isinstance(obj, bytes) or (isinstance(obj, int) and not isinstance(obj, bool)):
        return obj
    if isinstance(obj, list) and len(obj) == 2 and obj[0] in ("T", "R") and isinstance(obj[1], list):
        if obj[0] == "R":
            return tuple(_result_from_wire(r, depth + 1) for r in obj[1])
        return tuple(_value_from_wire(v, depth + 1) for v in obj[1])
    raise ValueError("malformed result value")


def _result_from_wire(obj: Any, depth: int = 0) -> Any:
    from .state import CommandResult

    if not (isinstance(obj, list) and len(obj) == 5 and isinstance(obj[0], bool) and _uint(obj[2])
            and _uint(obj[3]) and (obj[4] is None or isinstance(obj[4], str))):
        raise ValueError("malformed session result")
    return CommandResult(obj[0], _value_from_wire(obj[1], depth), obj[2], obj[3], obj[4])


def encode_session(s: Session) -> bytes:
    body = [s.timeout_ms, s.max_results, s.last, s.floor, [[seq, _result_wire(r)] for seq, r in s.results.items()]]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode_session(sid: int, data: bytes) -> Session:
    """The session stored as `data`; ValueError if it is malformed."""
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types on garbage
        raise ValueError(f"malformed session record: {exc.__class__.__name__}") from None
    try:
        if not (isinstance(obj, list) and len(obj) == 5 and all(_uint(x) for x in obj[:4])
                and obj[0] >= 1 and obj[1] >= 1 and obj[3] >= 1 and isinstance(obj[4], list)):
            raise ValueError("malformed session record")
        results: dict[int, Any] = {}
        for item in obj[4]:
            if not (isinstance(item, list) and len(item) == 2 and _uint(item[0]) and item[0] >= obj[3]):
                raise ValueError("malformed session result")
            results[item[0]] = _result_from_wire(item[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"session {sid}: {exc}") from None
    return Session(sid, obj[0], obj[1], obj[2], obj[3], results)


# --- the table ------------------------------------------------------------------------------


class SessionTable:
    """Every open session, with a heap of their deadlines (stale entries dropped lazily)."""

    __slots__ = ("_sessions", "_heap")

    def __init__(self) -> None:
        self._sessions: dict[int, Session] = {}
        self._heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: int) -> Session | None:
        return self._sessions.get(sid)

    def items(self) -> Iterator[tuple[int, bytes]]:
        """``(sid, encoded session)`` in id order, as backends store and snapshots carry them."""
        for sid in sorted(self._sessions):
            yield sid, encode_session(self._sessions[sid])

    def load(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Replace the table with stored sessions (ValueError if one is malformed)."""
        sessions = {sid: decode_session(sid, data) for sid, data in records}
        self._sessions = sessions
        self._heap = [(s.deadline, sid) for sid, s in sessions.items()]
        heapq.heapify(self._heap)

    def result_count(self) -> int:
        return sum(len(s.results) for s in self._sessions.values())

    # --- changes (each written through `out`) ---------------------------------------------------
    def _save(self, s: Session, out: SessionWriter, *, touched: bool) -> None:
        out.put_session(s.sid, encode_session(s))
        if touched:
            heapq.heappush(self._heap, (s.deadline, s.sid))
            if len(self._heap) > 2 * len(self._sessions) + 1024:  # mostly stale: rebuild
                self._heap = [(x.deadline, sid) for sid, x in self._sessions.items()]
                heapq.heapify(self._heap)

    def _drop_first(self, out: SessionWriter) -> bool:
        """Remove the session that expires first; False if there is none."""
        heap = self._heap
        while heap:
            deadline, sid = heapq.heappop(heap)
            s = self._sessions.get(sid)
            if s is not None and s.deadline == deadline:
                del self._sessions[sid]
                out.delete_session(sid)
                return True
        return False

    def expire(self, now: int, out: SessionWriter) -> int:
        """Remove every session whose deadline has passed by `now`; how many went."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, sid = heapq.heappop(heap)
            s = self._sessions.get(sid)
            if s is not None and s.deadline == deadline:
                del self._sessions[sid]
                out.delete_session(sid)
                n += 1
        return n

    def open(self, sid: int, now: int, timeout_ms: int, max_sessions: int, max_results: int,
             out: SessionWriter) -> None:
        self.expire(now, out)
        while len(self._sessions) >= max_sessions and self._drop_first(out):
            pass
        s = Session(sid, timeout_ms, max_results, now)
        self._sessions[sid] = s
        self._save(s, out, touched=True)

    def call(self, sid: int, seq: int, ack: int, now: int, run: Callable[[], Any], out: SessionWriter
             ) -> tuple[Any | None, str | None]:
        """Apply call `seq` of session `sid` (`run` applies the write and returns its result).
        Returns (result, None), or (None, error) when the session layer refused it."""
        self.expire(now, out)
        s = self._sessions.get(sid)
        if s is None:
            return None, (f"{NOSESSION} session {sid} is unknown or has expired; nothing was done by this "
                          "request (open a new session; an earlier attempt of it may have applied)")
        if ack > s.floor:
            s.floor = ack
            for old in [q for q in s.results if q < ack]:
                del s.results[old]
        if seq < s.floor:
            s.last = max(s.last, now)
            self._save(s, out, touched=True)
            return None, (f"{STALESEQ} session {sid}: sequence number {seq} is below the acknowledged floor "
                          f"{s.floor} (its reply was received, or its result is no longer kept); nothing was done")
        s.last = max(s.last, now)
        result = s.results.get(seq)
        if result is None:
            result = run()
            s.results[seq] = result
            while len(s.results) > s.max_results:
                oldest = min(s.results)
                del s.results[oldest]
                s.floor = max(s.floor, oldest + 1)
        self._save(s, out, touched=True)
        return result, None

    def digest_items(self) -> list[tuple[int, bytes]]:
        return list(self.items())
