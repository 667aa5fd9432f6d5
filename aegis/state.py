"""The replicated state machine: commands, their results, the versioned key-value store,
and snapshots of it.

Theory of operation
-------------------
A `Command` is what a client asks for; `Command.encode()` turns it into the payload of a
COMMAND log entry and `Command.decode()` turns it back. The encoding is msgpack arrays (never
pickle: log payloads cross the network and outlive the code that wrote them). Keys are `str`;
binary client keys arrive decoded with UTF-8 ``surrogateescape`` and are encoded the same way,
so any byte string a client sends round-trips exactly. A key must be in the canonical form
such a decoding produces (checked when the command is built).

`StateMachine` holds ``key -> (value, version, revision)`` in a `KVBackend`: a dict
(`DictBackend`) for the simulator and the seed API, an LMDB database in the node
(`storage.LmdbKV`). One apply logic runs over both. The version of a key starts at 1 when it
is created and grows by one on every write; deleting a key forgets it, so a later SET starts
again at 1. The revision is the log index of the entry that last wrote the key. Invariants:

* entries are applied in strictly increasing index order; applying an index at or below
  `last_applied` is a no-op, so a driver may replay its log after a restart;
* `apply_entries` applies a run of committed entries in ONE backend transaction that also
  records the new applied index (the node's LMDB state needs no fsync of its own: the log
  is the durable record, and entries after the recorded index are applied again);
* a BATCH entry holds several commands (`encode_batch`), applied in order, each with its own
  result; the seed's one-command COMMAND entries keep working;
* applying is deterministic: the result and the new state depend only on the state before
  and the command (custom handlers must be deterministic too, and registered alike on every
  replica);
* a committed entry never raises: a payload that does not decode, an INCREMENT of a
  non-integer, a handler that raises — each becomes a failed `CommandResult` and the state
  is left exactly as it was;
* a failed command changes nothing (INCREMENT checks before it writes; a custom handler's
  writes are buffered in a `StateView` and dropped when it fails).

Snapshots are a msgpack stream: a header ``["aegis-sm", 3, applied_index, key_count]``, one
``[key, value, version, revision]`` record per key — ``[key, value, version, revision,
expires]`` for a key with a deadline — in the backend's storage order (byte order of the
keys; the LMDB backend puts keys over 510 bytes last), so equal states give equal bytes, and
a trailer ``["end", key_count, crc32]``. A state with client sessions (aegis.sessions) is
version 4: after the keys, one ``["session", sid, encoded]`` per session in id order, and
the trailer ``["end", key_count, crc32, session_count]`` (the CRC covers the sessions too);
a state without any is still written as version 3. Version 1 streams (records without the
revision), 2 (no deadlines) and 3 (no sessions) are still read. `SnapshotParser` validates while it streams; a
backend's `replace` undoes everything if the stream turns out bad, so garbage never
half-replaces a state. `Snapshot` wraps the same stream with the index and term it covers.

Beyond the seed's commands, `OP` commands name a built-in operation (`OPS`: MSET, SET with
NX/XX/GET/expiry, GETDEL, APPEND, EXPIRE, CAS by version, ...) and a `TRANSACTION` holds
several commands applied in one entry, or none of them when a WATCHed key's revision moved.
`SESSION` commands carry a write in a client session and `SESSION_OPEN` registers one: the
table of sessions (aegis.sessions) makes a retried write apply once and answer with its
first result. Time comes from the log: an entry's timestamp (the leader's clock when it proposed it) is
"now" while it applies, so a key's deadline is decided the same on every replica; a key past
its deadline reads as missing, and a write that meets one deletes it first. The leader
removes expired keys with PURGE entries.

This module does no I/O and never imports trio, lmdb, socket or time.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Final, Iterable, Iterator, Mapping, Protocol, Sequence, TypeAlias, TypeVar

import msgpack

from .log import EntryType, LogEntry
from .sessions import POSITION_BITS, SessionTable, decode_session

__all__ = [
    "CommandType",
    "Command",
    "CommandResult",
    "StateView",
    "Handler",
    "StateMachine",
    "Snapshot",
    "NOT_AN_INTEGER",
    "OVERFLOW",
    "read_snapshot_header",
    "Change",
    "OPS",
    "scan_hash",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

NOT_AN_INTEGER: Final = "value is not an integer or out of range"
OVERFLOW: Final = "increment or decrement would overflow"

_SNAP_TAG: Final = "aegis-sm"
_SNAP_VERSION: Final = 4  # v1 records had no revision, v2 no deadline, v3 no sessions; all still read
_SNAP_SESSION: Final = "session"
_SNAP_END: Final = "end"
_FILE_TAG: Final = "aegis-snapshot"
_FILE_VERSION: Final = 1

# Redis's string2ll: optional '-', no '+', no spaces, no leading zeros, no "-0".
_REDIS_INT = re.compile(rb"-?[1-9][0-9]{0,19}|0")


# --- keys ---------------------------------------------------------------------------------


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _key_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _check_key(key: object, what: str = "key") -> None:
    if not isinstance(key, str):
        raise TypeError(f"{what} must be str, got {type(key).__name__}")
    if key.isascii():
        return  # ASCII always round-trips
    try:
        canonical = _key_str(_key_bytes(key)) == key
    except UnicodeEncodeError:
        canonical = False
    if not canonical:
        # e.g. a lone surrogate outside U+DC80..U+DCFF, or escaped bytes that form valid
        # UTF-8: such a key would not come back unchanged from the log.
        raise ValueError(f"{what} {key!r} is not a canonical utf-8/surrogateescape string")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # the seed's b"value".to_vec() is just bytes; Python users pass text
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


def parse_redis_int(raw: bytes) -> int | None:
    """The integer a stored value holds under Redis's rules, or None if it holds none."""
    if len(raw) > 20 or _REDIS_INT.fullmatch(raw) is None:
        return None
    n = int(raw)
    return n if INT64_MIN <= n <= INT64_MAX else None


# --- commands -----------------------------------------------------------------------------


class CommandType(enum.IntEnum):
    GET = 0
    SET = 1
    DELETE = 2
    COMPARE_AND_SWAP = 3
    INCREMENT = 4
    CUSTOM = 5
    OP = 6  # a built-in data command by name (MSET, SET with options, EXPIRE, ...): see OPS
    TRANSACTION = 7  # MULTI/EXEC: commands applied together, guarded by WATCHed revisions
    SESSION = 8  # a write in a client session, applied at most once (aegis.sessions)
    SESSION_OPEN = 9  # register a client session (its id: the entry's index and position)

    # The seed's CamelCase spellings.
    Get = 0
    Set = 1
    Delete = 2
    CompareAndSwap = 3
    Increment = 4
    Custom = 5
    Op = 6
    Transaction = 7
    Session = 8
    SessionOpen = 9


# Which optional fields each command type uses; every other field must keep its default,
# so that a command has exactly one encoding and decode(encode(c)) == c.
_USES: Final[dict[CommandType, frozenset[str]]] = {
    CommandType.GET: frozenset({"key"}),
    CommandType.SET: frozenset({"key", "value"}),
    CommandType.DELETE: frozenset({"key", "keys"}),
    CommandType.COMPARE_AND_SWAP: frozenset({"key", "expected", "value"}),
    CommandType.INCREMENT: frozenset({"key", "delta"}),
    CommandType.CUSTOM: frozenset({"name", "args"}),
    CommandType.OP: frozenset({"name", "args"}),
    CommandType.TRANSACTION: frozenset({"commands", "watches"}),
    CommandType.SESSION: frozenset({"session", "seq", "ack", "commands"}),
    CommandType.SESSION_OPEN: frozenset({"args"}),
}
_DEFAULTS: Final[dict[str, object]] = {
    "key": "",
    "value": None,
    "expected": None,
    "delta": 0,
    "keys": (),
    "name": None,
    "args": (),
    "commands": (),
    "watches": (),
    "session": 0,
    "seq": 0,
    "ack": 0,
}
_UNUSED: Final[dict[CommandType, tuple[tuple[str, object], ...]]] = {
    t: tuple((f, d) for f, d in _DEFAULTS.items() if f not in uses) for t, uses in _USES.items()
}


@dataclass(frozen=True, slots=True)
class Command:
    """A client command, validated when built. Prefer the constructors (`Command.set(...)`)."""

    type: CommandType
    key: str = ""
    value: bytes | None = None
    expected: bytes | None = None
    delta: int = 0
    keys: tuple[str, ...] = ()
    name: str | None = None
    args: tuple[bytes, ...] = ()
    commands: tuple[Command, ...] = ()
    watches: tuple[tuple[str, int], ...] = ()
    session: int = 0
    seq: int = 0
    ack: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.type, CommandType):
            raise TypeError(f"command type must be a CommandType, got {self.type!r}")
        uses = _USES[self.type]
        for fname, default in _UNUSED[self.type]:
            if getattr(self, fname) != default:
                raise ValueError(f"{self.type.name} does not take {fname!r}")
        if "key" in uses:
            _check_key(self.key)
        if "value" in uses and not isinstance(self.value, bytes):
            raise TypeError(f"{self.type.name} value must be bytes, got {type(self.value).__name__}")
        if "expected" in uses and not isinstance(self.expected, bytes):
            raise TypeError(f"expected value must be bytes, got {type(self.expected).__name__}")
        if "delta" in uses:
            if not isinstance(self.delta, int) or isinstance(self.delta, bool):
                raise TypeError("delta must be an int")
            if not INT64_MIN <= self.delta <= INT64_MAX:
                raise ValueError(f"delta {self.delta} is outside the signed 64-bit range")
        if "keys" in uses:
            if not isinstance(self.keys, tuple):
                raise TypeError("keys must be a tuple of str")
            for k in self.keys:
                _check_key(k)
        if "name" in uses:
            if not isinstance(self.name, str) or not self.name:
                raise ValueError("a custom command needs a non-empty name")
            try:
                self.name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"custom command name {self.name!r} is not valid unicode") from None
        if "args" in uses:
            if not isinstance(self.args, tuple) or not all(isinstance(a, bytes) for a in self.args):
                raise TypeError("custom command args must be a tuple of bytes")
        if self.type == CommandType.OP:
            spec = OPS.get(self.name or "")
            if spec is None:
                raise ValueError(f"unknown built-in operation {self.name!r}")
            spec.check(self.args)
        if self.type == CommandType.SESSION:
            for fname in ("session", "seq", "ack"):
                v = getattr(self, fname)
                if not _is_uint(v) or v > INT64_MAX or (fname != "ack" and v < 1):
                    raise ValueError(f"a session call's {fname} must be an integer from {int(fname != 'ack')} "
                                     f"to 2^63-1, got {v!r}")
            if (not isinstance(self.commands, tuple) or len(self.commands) != 1
                    or not isinstance(self.commands[0], Command)
                    or self.commands[0].type in _NOT_IN_SESSION or self.commands[0].is_read_only):
                raise TypeError("a session call holds exactly one write (not a read, a session command "
                                "or a custom command)")
        elif self.type == CommandType.SESSION_OPEN:
            if len(self.args) != 3 or any(parse_redis_int(a) is None or int(a) < 1 for a in self.args):
                raise ValueError("SESSION_OPEN takes three positive integers: timeout (ms), max sessions, "
                                 "max results per session")
        elif "commands" in uses:
            if not isinstance(self.commands, tuple) or not all(
                isinstance(c, Command) and c.type not in _NOT_IN_TRANSACTION for c in self.commands
            ):
                raise TypeError("a transaction holds a tuple of commands (no nested transactions or sessions)")
            if not isinstance(self.watches, tuple):
                raise TypeError("watches must be a tuple of (key, revision)")
            for w in self.watches:
                if not (isinstance(w, tuple) and len(w) == 2 and _is_uint(w[1])):
                    raise TypeError("each watch is a (key, revision) pair")
                _check_key(w[0])

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def get(cls, key: str) -> Command:
        return cls(CommandType.GET, key)

    @classmethod
    def set(cls, key: str, value: bytes | str) -> Command:
        return cls(CommandType.SET, key, value=_as_bytes(value, "value"))

    @classmethod
    def delete(cls, key: str, *more_keys: str) -> Command:
        return cls(CommandType.DELETE, key, keys=tuple(more_keys))

    @classmethod
    def compare_and_swap(cls, key: str, expected: bytes | str, new: bytes | str) -> Command:
        return cls(
            CommandType.COMPARE_AND_SWAP,
            key,
            expected=_as_bytes(expected, "expected"),
            value=_as_bytes(new, "new value"),
        )

    cas = compare_and_swap

    @classmethod
    def increment(cls, key: str, delta: int = 1) -> Command:
        return cls(CommandType.INCREMENT, key, delta=delta)

    @classmethod
    def custom(cls, name: str, *args: bytes | str) -> Command:
        return cls(CommandType.CUSTOM, name=name, args=tuple(_as_bytes(a, "argument") for a in args))

    @classmethod
    def op(cls, name: str, *args: bytes | str | int) -> Command:
        """A built-in operation from `OPS` (``Command.op("MSET", "a", b"1", "b", b"2")``);
        str arguments are UTF-8 (keys: surrogateescape), ints their decimal spelling."""
        return cls(CommandType.OP, name=name, args=tuple(_op_arg(a) for a in args))

    @classmethod
    def transaction(cls, commands: Sequence[Command], watches: Sequence[tuple[str, int]] = ()) -> Command:
        """MULTI/EXEC: `commands` applied in order in one log entry, or none of them when a
        watched key's revision is no longer the one given (0: the key did not exist)."""
        return cls(CommandType.TRANSACTION, commands=tuple(commands), watches=tuple(watches))

    @classmethod
    def session_call(cls, session: int, seq: int, ack: int, command: Command) -> Command:
        """`command` (a write) as call `seq` of client session `session`; `ack` is the lowest
        sequence number whose reply the client has not received (0: no news)."""
        return cls(CommandType.SESSION, session=session, seq=seq, ack=ack, commands=(command,))

    @classmethod
    def open_session(cls, timeout_ms: int, max_sessions: int, max_results: int) -> Command:
        """Register a client session with these limits (see aegis.sessions)."""
        return cls(CommandType.SESSION_OPEN, args=tuple(str(int(n)).encode() for n in
                                                          (timeout_ms, max_sessions, max_results)))

    @property
    def inner(self) -> Command:
        """The write a SESSION call carries; the command itself otherwise."""
        return self.commands[0] if self.type == CommandType.SESSION else self

    # --- properties ------------------------------------------------------------------------
    @property
    def all_keys(self) -> tuple[str, ...]:
        """Every key the command names (empty for CUSTOM: a handler picks its own)."""
        t = self.type
        if t == CommandType.CUSTOM or t == CommandType.SESSION_OPEN:
            return ()
        if t == CommandType.SESSION:
            return self.commands[0].all_keys
        if t == CommandType.OP:
            return tuple(_key_str(self.args[i]) for i in OPS[self.name or ""].key_positions(len(self.args)))
        if t == CommandType.TRANSACTION:
            return tuple(dict.fromkeys(k for c in self.commands for k in c.all_keys))
        return (self.key, *self.keys)

    @property
    def is_read_only(self) -> bool:
        t = self.type
        if t == CommandType.OP:
            return OPS[self.name or ""].read_only
        if t == CommandType.TRANSACTION:
            return all(c.is_read_only for c in self.commands)
        if t == CommandType.SESSION or t == CommandType.SESSION_OPEN:
            return False
        return t == CommandType.GET

    # --- codec -----------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The compact, safe payload of a COMMAND log entry."""
        return msgpack.packb(self._wire(), use_bin_type=True)  # type: ignore[no-any-return]

    def _wire(self) -> list[object]:
        t = self.type
        body: list[object]
        if t == CommandType.CUSTOM or t == CommandType.OP:
            body = [int(t), self.name, list(self.args)]
        elif t == CommandType.TRANSACTION:
            body = [int(t), [[_key_bytes(k), r] for k, r in self.watches], [c._wire() for c in self.commands]]
        elif t == CommandType.SESSION:
            body = [int(t), self.session, self.seq, self.ack, self.commands[0]._wire()]
        elif t == CommandType.SESSION_OPEN:
            body = [int(t), list(self.args)]
        else:
            body = [int(t), _key_bytes(self.key)]
            if t == CommandType.SET:
                body.append(self.value)
            elif t == CommandType.DELETE:
                body.append([_key_bytes(k) for k in self.keys])
            elif t == CommandType.COMPARE_AND_SWAP:
                body += [self.expected, self.value]
            elif t == CommandType.INCREMENT:
                body.append(self.delta)
        return body

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Parse a payload written by `encode`. Raises ValueError on anything else."""
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:  # msgpack raises a zoo of types on garbage
            raise ValueError(f"malformed command payload: {_describe(exc)}") from None
        try:
            return cls._from_wire(obj)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"malformed command payload: {exc}") from None

    @classmethod
    def _from_wire(cls, obj: object) -> Command:
        if not isinstance(obj, list) or not obj:
            raise ValueError("not a non-empty array")
        code = obj[0]
        if not isinstance(code, int) or isinstance(code, bool) or code not in _ARITY:
            raise ValueError(f"unknown command type {code!r}")
        t = CommandType(code)
        if len(obj) != _ARITY[t]:
            raise ValueError(f"{t.name} needs {_ARITY[t]} fields, got {len(obj)}")
        if t == CommandType.CUSTOM or t == CommandType.OP:
            name, args = obj[1], obj[2]
            if not isinstance(name, str) or not isinstance(args, list):
                raise ValueError(f"bad {t.name} fields")
            return cls(t, name=name, args=tuple(args))
        if t == CommandType.SESSION:
            return cls(t, session=obj[1], seq=obj[2], ack=obj[3], commands=(cls._from_wire(obj[4]),))
        if t == CommandType.SESSION_OPEN:
            if not isinstance(obj[1], list):
                raise ValueError("bad SESSION_OPEN fields")
            return cls(t, args=tuple(obj[1]))
        if t == CommandType.TRANSACTION:
            watches, subs = obj[1], obj[2]
            if not isinstance(watches, list) or not isinstance(subs, list):
                raise ValueError("bad TRANSACTION fields")
            ws = []
            for w in watches:
                if not isinstance(w, list) or len(w) != 2:
                    raise ValueError("bad TRANSACTION watch")
                ws.append((_wire_key(w[0]), w[1]))
            return cls(t, commands=tuple(cls._from_wire(c) for c in subs), watches=tuple(ws))
        key = _wire_key(obj[1])
        if t == CommandType.GET:
            return cls(t, key)
        if t == CommandType.SET:
            return cls(t, key, value=_wire_bytes(obj[2]))
        if t == CommandType.DELETE:
            if not isinstance(obj[2], list):
                raise ValueError("DELETE keys must be an array")
            return cls(t, key, keys=tuple(_wire_key(k) for k in obj[2]))
        if t == CommandType.COMPARE_AND_SWAP:
            return cls(t, key, expected=_wire_bytes(obj[2]), value=_wire_bytes(obj[3]))
        return cls(t, key, delta=obj[2])  # INCREMENT; __post_init__ checks the delta


_ARITY: Final[dict[int, int]] = {
    CommandType.GET: 2,
    CommandType.SET: 3,
    CommandType.DELETE: 3,
    CommandType.COMPARE_AND_SWAP: 4,
    CommandType.INCREMENT: 3,
    CommandType.CUSTOM: 3,
    CommandType.OP: 3,
    CommandType.TRANSACTION: 3,
    CommandType.SESSION: 5,
    CommandType.SESSION_OPEN: 2,
}

_NOT_IN_TRANSACTION: Final = frozenset({CommandType.TRANSACTION, CommandType.SESSION, CommandType.SESSION_OPEN})
_NOT_IN_SESSION: Final = frozenset({CommandType.SESSION, CommandType.SESSION_OPEN})


def _wire_key(raw: object) -> str:
    if not isinstance(raw, bytes):
        raise ValueError("key must be binary")
    return _key_str(raw)


def _wire_bytes(raw: object) -> bytes:
    if not isinstance(raw, bytes):
        raise ValueError("value must be binary")
    return raw


def _op_arg(a: bytes | str | int) -> bytes:
    if isinstance(a, bool):
        raise TypeError("an operation argument is bytes, str or int, not bool")
    if isinstance(a, int):
        return str(a).encode()
    if isinstance(a, str):
        return _key_bytes(a)
    return _as_bytes(a, "argument")


# --- built-in operations --------------------------------------------------------------------
#
# Each OP command names one of these. Its arguments are bytes in a canonical form (numbers
# in decimal, flags upper-case, b"" for an absent option) that the command table builds from
# the client's argv; the state machine checks them again, so a malformed payload fails alone.


class _Ctx:
    """What an operation sees: the view, the entry's index, its time (ms, the leader's clock
    travelling in the log) and whether it may write (False for a local read)."""

    __slots__ = ("view", "index", "now", "mutate", "pos")

    def __init__(self, view: KVView, index: int, now: int, mutate: bool) -> None:
        self.view = view
        self.index = index
        self.now = now
        self.mutate = mutate
        self.pos = 0  # the command's position in its entry (a BATCH holds many)

    def live(self, key: bytes) -> Record | None:
        """The key's record unless it is missing or past its deadline. An expired key met by
        a write is deleted there and then (deterministic: every replica applies the same
        entry at the same time)."""
        rec = self.view.get(key)
        if rec is not None and rec[3] and rec[3] <= self.now:
            if self.mutate:
                self.view.delete(key)
            return None
        return rec

    def write(self, key: bytes, value: bytes, expires: int = 0) -> int:
        rec = self.live(key)
        version = 1 if rec is None else rec[1] + 1
        self.view.put(key, value, version, self.index, expires)
        return version


#: One change for the change feed: (revision, key, new value, or None for a deletion).
Change: TypeAlias = tuple[int, bytes, "bytes | None"]


class _Recording:
    """A view that also notes every change it makes (`StateMachine.changes`)."""

    __slots__ = ("_view", "_out", "_index")

    def __init__(self, view: KVView, out: list[Change], index: int) -> None:
        self._view = view
        self._out = out
        self._index = index

    def get(self, key: bytes) -> Record | None:
        return self._view.get(key)

    def put(self, key: bytes, value: bytes, version: int, revision: int, expires: int = 0) -> None:
        self._view.put(key, value, version, revision, expires)
        self._out.append((self._index, key, value))

    def delete(self, key: bytes) -> bool:
        if self._view.delete(key):
            self._out.append((self._index, key, None))
            return True
        return False

    def put_session(self, sid: int, data: bytes) -> None:
        self._view.put_session(sid, data)

    def delete_session(self, sid: int) -> bool:
        return self._view.delete_session(sid)


OpFn: TypeAlias = "Callable[[_Ctx, tuple[bytes, ...]], CommandResult]"


@dataclass(frozen=True, slots=True)
class OpSpec:
    """A built-in operation: its argument count (`min_args`, `max_args`, None for no bound,
    `step`: args beyond `min_args` come in groups of it), which arguments are keys (`keys`:
    "first", "all" or "pairs" — every other one from the first), and whether it only reads."""

    name: str
    fn: OpFn
    min_args: int
    max_args: int | None
    keys: str = "first"
    read_only: bool = False
    step: int = 1

    def key_positions(self, n: int) -> range:
        if self.keys == "all":
            return range(n)
        if self.keys == "pairs":
            return range(0, n, 2)
        return range(min(n, 1))

    def check(self, args: tuple[bytes, ...]) -> None:
        n = len(args)
        if n < self.min_args or (self.max_args is not None and n > self.max_args) or (n - self.min_args) % self.step:
            raise ValueError(f"{self.name} takes {self.min_args}{'+' if self.max_args is None else ''} arguments, got {n}")
        for i in self.key_positions(n):
            _check_key(_key_str(args[i]))


def _num(raw: bytes, what: str) -> int:
    n = parse_redis_int(raw)
    if n is None:
        raise ValueError(f"{what} is not an integer")
    return n


def _choice(raw: bytes, options: tuple[bytes, ...], what: str) -> bytes:
    if raw not in options:
        raise ValueError(f"bad {what} {raw!r}")
    return raw


_SET_COND = (b"", b"NX", b"XX")
_TTL_MODE = (b"", b"PX", b"PXAT", b"KEEPTTL")
_EXPIRE_COND = (b"", b"NX", b"XX", b"GT", b"LT")


def _deadline(ctx: _Ctx, mode: bytes, raw: bytes, old: Record | None) -> int:
    if mode == b"PX":
        return ctx.now + _num(raw, "ttl")
    if mode == b"PXAT":
        return _num(raw, "deadline")
    if mode == b"KEEPTTL":
        return old[3] if old is not None else 0
    return 0


def _op_set(ctx: _Ctx, a: tuple[bytes, ...], *, as_int: bool = False) -> CommandResult:
    key, value, cond, get, mode, ttl = a
    _choice(cond, _SET_COND, "condition")
    _choice(get, (b"", b"GET"), "flag")
    _choice(mode, _TTL_MODE, "expiry mode")
    old = ctx.live(key)
    deadline = _deadline(ctx, mode, ttl, old)
    old_value = old[0] if old is not None else None
    if (cond == b"NX" and old is not None) or (cond == b"XX" and old is None):
        return CommandResult.ok(old_value if get else (0 if as_int else None),
                                version=old[1] if old else 0, applied_index=ctx.index)
    if deadline and deadline <= ctx.now:  # already past: Redis stores nothing (and deletes)
        if old is not None:
            ctx.view.delete(key)
        return CommandResult.ok(old_value if get else 1, applied_index=ctx.index)
    version = ctx.write(key, value, deadline)
    return CommandResult.ok(old_value if get else 1, version=version, applied_index=ctx.index)


def _op_setnx(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    return _op_set(ctx, (a[0], a[1], b"NX", b"", b"", b"0"), as_int=True)


def _op_mset(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    for i in range(0, len(a), 2):
        ctx.write(a[i], a[i + 1])
    return CommandResult.ok(None, applied_index=ctx.index)


def _op_msetnx(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    if any(ctx.live(a[i]) is not None for i in range(0, len(a), 2)):
        return CommandResult.ok(0, applied_index=ctx.index)
    _op_mset(ctx, a)
    return CommandResult.ok(1, applied_index=ctx.index)


def _op_getset(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    old = ctx.live(a[0])
    version = ctx.write(a[0], a[1])
    return CommandResult.ok(old[0] if old else None, version=version, applied_index=ctx.index)


def _op_getdel(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    old = ctx.live(a[0])
    if old is None:
        return CommandResult.ok(None, applied_index=ctx.index)
    ctx.view.delete(a[0])
    return CommandResult.ok(old[0], applied_index=ctx.index)


def _op_append(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    old = ctx.live(a[0])
    value = (old[0] if old else b"") + a[1]
    version = ctx.write(a[0], value, old[3] if old else 0)
    return CommandResult.ok(len(value), version=version, applied_index=ctx.index)


def _op_strlen(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    rec = ctx.live(a[0])
    return CommandResult.ok(len(rec[0]) if rec else 0, version=rec[1] if rec else 0, applied_index=ctx.index)


def _op_mget(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    out = []
    for k in a:
        rec = ctx.live(k)
        out.append(rec[0] if rec is not None else None)
    return CommandResult.ok(tuple(out), applied_index=ctx.index)


def _op_exists(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    return CommandResult.ok(sum(1 for k in a if ctx.live(k) is not None), applied_index=ctx.index)


def _expire(ctx: _Ctx, key: bytes, deadline: int, cond: bytes) -> CommandResult:
    _choice(cond, _EXPIRE_COND, "condition")
    rec = ctx.live(key)
    if rec is None:
        return CommandResult.ok(0, applied_index=ctx.index)
    current = rec[3]
    if ((cond == b"NX" and current) or (cond == b"XX" and not current)
            or (cond == b"GT" and (not current or deadline <= current))
            or (cond == b"LT" and current and deadline >= current)):
        return CommandResult.ok(0, version=rec[1], applied_index=ctx.index)
    if deadline <= ctx.now:
        ctx.view.delete(key)
        return CommandResult.ok(1, applied_index=ctx.index)
    ctx.view.put(key, rec[0], rec[1] + 1, ctx.index, deadline)
    return CommandResult.ok(1, version=rec[1] + 1, applied_index=ctx.index)


def _op_pexpire(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    return _expire(ctx, a[0], ctx.now + _num(a[1], "ttl"), a[2])


def _op_pexpireat(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    return _expire(ctx, a[0], _num(a[1], "deadline"), a[2])


def _op_persist(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    rec = ctx.live(a[0])
    if rec is None or not rec[3]:
        return CommandResult.ok(0, applied_index=ctx.index)
    ctx.view.put(a[0], rec[0], rec[1] + 1, ctx.index, 0)
    return CommandResult.ok(1, version=rec[1] + 1, applied_index=ctx.index)


def _op_pttl(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    rec = ctx.live(a[0])
    if rec is None:
        return CommandResult.ok(-2, applied_index=ctx.index)
    return CommandResult.ok(rec[3] - ctx.now if rec[3] else -1, version=rec[1], applied_index=ctx.index)


def _op_ttl(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    r = _op_pttl(ctx, a)
    ms = r.value
    assert isinstance(ms, int)
    return r if ms < 0 else replace(r, value=(ms + 500) // 1000)


def _op_getv(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    rec = ctx.live(a[0])
    if rec is None:
        return CommandResult.ok(None, applied_index=ctx.index)
    return CommandResult.ok((rec[0], rec[1], rec[2]), version=rec[1], applied_index=ctx.index)


def _op_casv(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    expected = _num(a[1], "version")
    rec = ctx.live(a[0])
    if (rec[1] if rec else 0) != expected:
        return CommandResult.ok(0, version=rec[1] if rec else 0, applied_index=ctx.index)
    return CommandResult.ok(1, version=ctx.write(a[0], a[2]), applied_index=ctx.index)


def _op_delv(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    expected = _num(a[1], "version")
    rec = ctx.live(a[0])
    if rec is None or rec[1] != expected:
        return CommandResult.ok(0, version=rec[1] if rec else 0, applied_index=ctx.index)
    ctx.view.delete(a[0])
    return CommandResult.ok(1, applied_index=ctx.index)


def _op_purge(ctx: _Ctx, a: tuple[bytes, ...]) -> CommandResult:
    """The leader's expiry sweep: delete the keys whose deadline has passed by this entry's
    time (a key rewritten since the leader looked is left alone)."""
    removed = 0
    for k in dict.fromkeys(a):
        rec = ctx.view.get(k)
        if rec is not None and rec[3] and rec[3] <= ctx.now:
            ctx.view.delete(k)
            removed += 1
    return CommandResult.ok(removed, applied_index=ctx.index)


#: The built-in operations, by name.
OPS: Final[dict[str, OpSpec]] = {
    s.name: s
    for s in (
        OpSpec("SET", _op_set, 6, 6),
        OpSpec("SETNX", _op_setnx, 2, 2),
        OpSpec("MSET", _op_mset, 2, None, keys="pairs", step=2),
        OpSpec("MSETNX", _op_msetnx, 2, None, keys="pairs", step=2),
        OpSpec("GETSET", _op_getset, 2, 2),
        OpSpec("GETDEL", _op_getdel, 1, 1),
        OpSpec("APPEND", _op_append, 2, 2),
        OpSpec("STRLEN", _op_strlen, 1, 1, read_only=True),
        OpSpec("MGET", _op_mget, 1, None, keys="all", read_only=True),
        OpSpec("EXISTS", _op_exists, 1, None, keys="all", read_only=True),
        OpSpec("PEXPIRE", _op_pexpire, 3, 3),
        OpSpec("PEXPIREAT", _op_pexpireat, 3, 3),
        OpSpec("PERSIST", _op_persist, 1, 1),
        OpSpec("PTTL", _op_pttl, 1, 1, read_only=True),
        OpSpec("TTL", _op_ttl, 1, 1, read_only=True),
        OpSpec("GETV", _op_getv, 1, 1, read_only=True),
        OpSpec("CASV", _op_casv, 3, 3),
        OpSpec("DELV", _op_delv, 2, 2),
        OpSpec("PURGE", _op_purge, 1, None, keys="all"),
    )
}


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The outcome of applying (or reading) a command.

    `value` is bytes for GET, an int for DELETE (keys removed), INCREMENT (new value) and
    COMPARE_AND_SWAP (1 swapped, 0 not), None for SET or a missing key. An OP's value is
    its operation's own (a tuple for MGET and GETV); a TRANSACTION's is the tuple of its
    commands' results, or None when a watched key had changed (nothing was applied). `version` is the
    key's version after the command (0 when the key does not exist). A failed result
    (`success` False) carries `error` and means the state did not change.
    """

    success: bool
    value: bytes | int | tuple[Any, ...] | None = None
    version: int = 0
    applied_index: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        if self.success and self.error is not None:
            raise ValueError("a successful result carries no error")
        if not self.success and not self.error:
            raise ValueError("a failed result needs an error message")

    @classmethod
    def ok(cls, value: bytes | int | tuple[Any, ...] | None = None, *, version: int = 0, applied_index: int = 0) -> CommandResult:
        return cls(True, value, version, applied_index)

    @classmethod
    def fail(cls, error: str, *, version: int = 0, applied_index: int = 0) -> CommandResult:
        return cls(False, None, version, applied_index, error)


# --- the backend ----------------------------------------------------------------------------


#: One stored record: (value, version, revision, expires). `version` counts the writes since
#: the key was created (1 on creation); `revision` is the log index of the entry that last
#: wrote it; `expires` is the key's deadline in milliseconds since the epoch on the leader's
#: clock (0: it never expires).
Record: TypeAlias = tuple[bytes, int, int, int]

#: A record with its key: (key, value, version, revision, expires), as snapshots carry them.
Item: TypeAlias = tuple[bytes, bytes, int, int, int]


def scan_hash(key: bytes) -> int:
    """The 63-bit position of `key` in SCAN order: the same on every node and every run."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


class KVView(Protocol):
    """What applying one batch sees: reads and writes inside one backend transaction."""

    def get(self, key: bytes) -> Record | None: ...

    def put(self, key: bytes, value: bytes, version: int, revision: int, expires: int = 0) -> None: ...

    def delete(self, key: bytes) -> bool: ...

    def put_session(self, sid: int, data: bytes) -> None:
        """Store client session `sid` (aegis.sessions encodes it)."""
        ...

    def delete_session(self, sid: int) -> bool: ...


_T = TypeVar("_T")


class KVBackend(Protocol):
    """The narrow key-value store under `StateMachine`: ordered bytes keys -> `Record`, and
    the index applied so far. `DictBackend` is the in-memory twin (simulator, seed API);
    `storage.LmdbKV` keeps the same records in the node's LMDB environment.

    `transact(body, applied, term)` runs `body(view)` in one transaction that also records
    `applied` (and the term of that entry), and returns body's result. A backend may run `body` again from the start
    (LMDB grows its map and retries), so `body` must not change anything but the view.
    """

    def get(self, key: bytes) -> Record | None: ...

    def count(self) -> int: ...

    def applied(self) -> int: ...

    def items(self) -> Iterator[Item]:
        """A consistent snapshot as of the call, in storage order (`Item` tuples)."""
        ...

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T: ...

    def replace(self, records: Iterable[Item], applied: int,
                sessions: Iterable[tuple[int, bytes]] = ()) -> None:
        """Replace everything with `records` (a snapshot) and the client `sessions` (iterated
        after `records`). If iterating either raises, nothing changes."""
        ...

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        """Every stored client session as ``(sid, encoded)``, in id order, as of now."""
        ...

    def range(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, Record]]:
        """The records of the keys ``start <= key < end`` (no upper bound when `end` is None)
        in byte order of the keys, at most `limit` of them (no limit when `limit` <= 0)."""
        ...

    def scan(self, cursor: int, count: int) -> tuple[int, list[tuple[bytes, Record]]]:
        """SCAN order (`scan_hash`): every key whose position is >= `cursor`, up to (and not
        including) the returned next cursor, at least `count` of them unless the state ends
        first; a run of keys sharing one position is never split. The next cursor is 0 when
        the state is exhausted. Cursor 0 starts from the beginning."""
        ...

    def expiring(self, now_ms: int, limit: int) -> list[bytes]:
        """Keys whose record's deadline has passed (``0 < expires <= now_ms``), soonest
        first, at most `limit`."""
        ...


class DictBackend:
    """`KVBackend` in a Python dict: the reference twin of `storage.LmdbKV`. Range reads and
    scans sort the keys on each call (fine for the simulator and the seed API); deadlines
    are kept in a heap, checked lazily against the records."""

    __slots__ = ("_data", "_applied", "_deadlines", "_sessions")

    def __init__(self) -> None:
        self._data: dict[bytes, Record] = {}
        self._applied = 0
        self._deadlines: list[tuple[int, bytes]] = []
        self._sessions: dict[int, bytes] = {}

    def put_session(self, sid: int, data: bytes) -> None:
        self._sessions[sid] = data

    def delete_session(self, sid: int) -> bool:
        return self._sessions.pop(sid, None) is not None

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        return iter(sorted(self._sessions.items()))

    def get(self, key: bytes) -> Record | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes, version: int, revision: int, expires: int = 0) -> None:
        self._data[key] = (value, version, revision, expires)
        if expires:
            heapq.heappush(self._deadlines, (expires, key))

    def delete(self, key: bytes) -> bool:
        return self._data.pop(key, None) is not None

    def count(self) -> int:
        return len(self._data)

    def applied(self) -> int:
        return self._applied

    def items(self) -> Iterator[Item]:
        data = self._data
        snap = [(k, *data[k]) for k in sorted(data)]  # captured now
        return iter(snap)

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T:
        out = body(self)
        self._applied = applied
        return out

    def replace(self, records: Iterable[Item], applied: int,
                sessions: Iterable[tuple[int, bytes]] = ()) -> None:
        new: dict[bytes, Record] = {}
        n = 0
        for k, v, ver, rev, exp in records:
            new[k] = (v, ver, rev, exp)
            n += 1
        if len(new) != n:
            raise ValueError(f"corrupt snapshot: {n - len(new)} duplicate keys")
        self._sessions = dict(sessions)
        self._data = new
        self._applied = applied
        self._deadlines = [(rec[3], k) for k, rec in new.items() if rec[3]]
        heapq.heapify(self._deadlines)

    def range(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, Record]]:
        data = self._data
        keys = sorted(k for k in data if k >= start and (end is None or k < end))
        if limit > 0:
            keys = keys[:limit]
        return [(k, data[k]) for k in keys]

    def scan(self, cursor: int, count: int) -> tuple[int, list[tuple[bytes, Record]]]:
        data = self._data
        ordered = sorted((h, k) for k in data if (h := scan_hash(k)) >= cursor)
        out: list[tuple[bytes, Record]] = []
        for i, (h, k) in enumerate(ordered):
            if len(out) >= max(count, 1) and h != ordered[i - 1][0]:
                return h, out
            out.append((k, data[k]))
        return 0, out

    def expiring(self, now_ms: int, limit: int) -> list[bytes]:
        heap = self._deadlines
        out: list[bytes] = []
        seen: set[bytes] = set()
        keep: list[tuple[int, bytes]] = []
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            deadline, key = heapq.heappop(heap)
            rec = self._data.get(key)
            if rec is None or rec[3] != deadline or key in seen:
                continue  # stale: the key was deleted, rewritten or given another deadline
            seen.add(key)
            out.append(key)
            keep.append((deadline, key))
        for item in keep:  # still stored until a log entry deletes it
            heapq.heappush(heap, item)
        return out


# --- custom handlers ----------------------------------------------------------------------


class StateView:
    """What a custom handler sees: reads go to the state (and the handler's own writes);
    writes are buffered and applied only if the handler succeeds. A key past its deadline
    reads as missing."""

    __slots__ = ("_ctx", "_writes")

    def __init__(self, ctx: _Ctx) -> None:
        self._ctx = ctx
        self._writes: dict[str, bytes | None] = {}

    def _rec(self, key: str) -> Record | None:
        rec = self._ctx.view.get(_key_bytes(key))
        if rec is not None and rec[3] and rec[3] <= self._ctx.now:
            return None
        return rec

    def get(self, key: str) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        rec = self._rec(key)
        return rec[0] if rec is not None else None

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def version(self, key: str) -> int:
        """The committed version (writes buffered by this handler are not counted yet)."""
        rec = self._rec(key)
        return rec[1] if rec is not None else 0

    def set(self, key: str, value: bytes) -> None:
        _check_key(key)
        self._writes[key] = _as_bytes(value, "value")

    def delete(self, key: str) -> bool:
        _check_key(key)
        existed = self.exists(key)
        self._writes[key] = None
        return existed


#: A custom command handler: gets a view of the state and the command's arguments; returns
#: a `CommandResult`, or a plain value (bytes, int or None) meaning success. Raising, or
#: returning a failed result, discards its writes. It must be deterministic.
HandlerReturn: TypeAlias = CommandResult | bytes | int | None
Handler: TypeAlias = Callable[[StateView, tuple[bytes, ...]], HandlerReturn]


# --- batches --------------------------------------------------------------------------------

_BATCH_HEAD = struct.Struct(">BI")


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The payload of a BATCH entry: a msgpack array of the commands' own encodings, built
    by concatenation (each `Command.encode()` is one msgpack object)."""
    return _BATCH_HEAD.pack(0xDD, len(payloads)) + b"".join(payloads)


def decode_batch(data: bytes) -> list[Command]:
    """The commands of a BATCH payload. Raises ValueError on anything malformed."""
    return [Command._from_wire(obj) for obj in _unpack_batch(data)]


def _unpack_batch(data: bytes) -> list[Any]:
    try:
        objs = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"malformed batch payload: {_describe(exc)}") from None
    if not isinstance(objs, list):
        raise ValueError("malformed batch payload: not an array")
    return objs


# --- the state machine --------------------------------------------------------------------


class StateMachine:
    """A versioned key-value store driven by committed log entries, over a `KVBackend`
    (an in-memory `DictBackend` unless one is given)."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None, *, backend: KVBackend | None = None) -> None:
        self._kv: KVBackend = backend if backend is not None else DictBackend()
        self._last_applied = self._kv.applied()
        self._clock = 0  # the time (ms) of the latest applied entry that carried one
        #: When a list, applying appends every change to it (revision, key, value or None),
        #: in apply order: the node's change feed drains it. None (the default) costs nothing.
        self.changes: list[Change] | None = None
        self._handlers: dict[str, Handler] = {}
        self._digest: str | None = None
        self._sessions = SessionTable()
        self._sessions.load(self._kv.sessions())
        for name, fn in (handlers or {}).items():
            self.register_handler(name, fn)

    # --- introspection ---------------------------------------------------------------------
    @property
    def backend(self) -> KVBackend:
        return self._kv

    @property
    def last_applied(self) -> int:
        return self._last_applied

    def __len__(self) -> int:
        return self._kv.count()

    def __bool__(self) -> bool:
        # Not a container: an empty state machine is still a state machine, so that
        # ``sm or StateMachine()`` never swaps it out behind the caller's back.
        return True

    @property
    def clock(self) -> int:
        """The time (ms since the epoch, the leader's clock) of the latest applied entry
        that carried one: the state's own notion of now, the same on every replica."""
        return self._clock

    def advance_clock(self, ms: int) -> None:
        """Move `clock` forward to `ms` (never back): a node reopening a state whose last
        applied entry it still holds sets the clock to that entry's time, which applying it
        had set before the restart."""
        if ms > self._clock:
            self._clock = ms

    def record(self, key: bytes, now_ms: int | None = None) -> Record | None:
        """The key's record, or None if it is missing or past its deadline at `now_ms`
        (default: `clock`)."""
        rec = self._kv.get(key)
        if rec is not None and rec[3] and rec[3] <= (self._clock if now_ms is None else now_ms):
            return None
        return rec

    @property
    def sessions(self) -> SessionTable:
        """The client sessions (aegis.sessions): read them, never change them."""
        return self._sessions

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.record(_key_bytes(key)) is not None

    def keys(self) -> list[str]:
        now = self._clock
        return sorted(_key_str(k) for k, _v, _ver, _rev, exp in self._kv.items() if not exp or exp > now)

    def version(self, key: str) -> int:
        rec = self.record(_key_bytes(key))
        return rec[1] if rec is not None else 0

    def revision(self, key: str) -> int:
        """The log index of the entry that last wrote `key` (0 if it does not exist)."""
        rec = self.record(_key_bytes(key))
        return rec[2] if rec is not None else 0

    def get(self, key: str) -> CommandResult:
        """Read local state (not through the log): linearizable only after a ReadIndex wait."""
        return self.get_raw(_key_bytes(key))

    def get_raw(self, key: bytes, now_ms: int | None = None) -> CommandResult:
        rec = self.record(key, now_ms)
        if rec is None:
            return CommandResult.ok(None, version=0, applied_index=self._last_applied)
        return CommandResult.ok(rec[0], version=rec[1], applied_index=self._last_applied)

    def get_value(self, key: bytes, now_ms: int | None = None) -> bytes | None:
        """The value alone (the node's GET path)."""
        rec = self._kv.get(key)
        if rec is None or (rec[3] and rec[3] <= (self._clock if now_ms is None else now_ms)):
            return None
        return rec[0]

    def digest(self) -> str:
        """A stable hash (hex SHA-256) of the contents — keys, values, versions — regardless
        of insertion order or `last_applied`. Replicas that applied the same entries agree."""
        if self._digest is None:
            h = hashlib.sha256()
            for kb, value, version, _rev, expires in sorted(self._kv.items()):
                h.update(len(kb).to_bytes(4, "big") + kb)
                h.update(len(value).to_bytes(8, "big") + value)
                h.update(version.to_bytes(8, "big"))
                if expires:
                    h.update(b"x" + expires.to_bytes(8, "big"))
            for sid, data in self._sessions.items():  # nothing when no session exists
                h.update(b"s" + sid.to_bytes(8, "big") + len(data).to_bytes(8, "big") + data)
            self._digest = h.hexdigest()
        return self._digest

    # --- handlers --------------------------------------------------------------------------
    def register_handler(self, name: str, fn: Handler, *, replace: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a handler needs a non-empty name")
        if not callable(fn):
            raise TypeError("a handler must be callable")
        if name in self._handlers and not replace:
            raise ValueError(f"a handler named {name!r} is already registered")
        self._handlers[name] = fn

    @property
    def handlers(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    # --- applying --------------------------------------------------------------------------
    def apply(self, command: Command, index: int) -> CommandResult | None:
        """Apply a committed command at log `index`. Returns None if already applied."""
        if index <= self._last_applied:
            return None
        result = self._kv.transact(lambda view: self._execute(_Ctx(view, index, self._clock, True), command), index)
        self._done(index)
        return result

    def apply_entry(self, entry: LogEntry) -> CommandResult | None:
        """Apply a committed log entry. Never raises for a bad payload: a committed entry
        must not crash a node, so it becomes a failed result (and changes nothing).

        For a BATCH entry this is the last command's result; `apply_entries` gives them all."""
        results = self.apply_entries([entry])
        if not results or not results[0]:
            return None
        return results[0][-1]

    def apply_entries(self, entries: Sequence[LogEntry]) -> list[list[CommandResult]]:
        """Apply committed entries in ONE backend transaction, which also records the new
        applied index. Returns, per entry, the results of its commands in order (one for a
        COMMAND entry, one per command for a BATCH, none for NO_OP/CONFIG_CHANGE or an
        entry at or below `last_applied`)."""
        before = self._last_applied
        todo = [e for e in entries if e.index > before]
        if not todo:
            return [[] for _ in entries]
        last = int(todo[-1].index)

        def body(view: KVView) -> list[list[CommandResult]]:
            return [self._execute_entry(view, e) for e in todo]

        out = self._kv.transact(body, last, int(todo[-1].term))
        self._done(last)
        if len(todo) == len(entries):
            return out
        it = iter(out)
        return [next(it) if e.index > before else [] for e in entries]

    def reset(self, index: int) -> None:
        """The backend's contents were replaced underneath (a snapshot installed into the
        node's store): the state is now as of `index`."""
        self._sessions.load(self._kv.sessions())
        self._done(index)

    def _done(self, index: int) -> None:
        self._last_applied = index
        self._digest = None

    def _execute_entry(self, view: KVView, entry: LogEntry) -> list[CommandResult]:
        index = int(entry.index)
        t = entry.type
        if self.changes is not None:
            view = _Recording(view, self.changes, index)
        now = int(entry.timestamp * 1000)
        if now > self._clock:
            self._clock = now
        if t == EntryType.COMMAND:
            try:
                command = Command.decode(entry.data)
            except ValueError as exc:
                return [CommandResult.fail(str(exc), applied_index=index)]
            return [self._execute(_Ctx(view, index, now, True), command)]
        if t == EntryType.BATCH:
            try:
                objs = _unpack_batch(entry.data)
            except ValueError as exc:
                return [CommandResult.fail(str(exc), applied_index=index)]
            ctx = _Ctx(view, index, now, True)
            out = []
            for pos, obj in enumerate(objs):
                ctx.pos = pos
                out.append(self._execute_wire(ctx, obj))
            return out
        return []  # NO_OP, CONFIG_CHANGE: the core handles them

    def _execute_wire(self, ctx: _Ctx, obj: Any) -> CommandResult:
        # The hot path: a SET straight from its wire form, without building a Command.
        if type(obj) is list and len(obj) == 3 and obj[0] == 1 and type(obj[1]) is bytes and type(obj[2]) is bytes:
            key = obj[1]
            view = ctx.view
            rec = view.get(key)
            if rec is None:
                version = 1
            elif rec[3] and rec[3] <= ctx.now:  # expired: this SET creates it anew
                view.delete(key)
                version = 1
            else:
                version = rec[1] + 1
            view.put(key, obj[2], version, ctx.index)
            return CommandResult(True, None, version, ctx.index)
        try:
            command = Command._from_wire(obj)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            return CommandResult.fail(f"malformed command payload: {exc}", applied_index=ctx.index)
        return self._execute(ctx, command)

    def read(self, command: Command, now_ms: int | None = None) -> CommandResult:
        """Serve a read-only command (GET, or an OP such as MGET, TTL, GETV) from the local
        state at time `now_ms` (default: the time of the last applied entry). Linearizable
        only after a ReadIndex wait. Changes nothing (an expired key reads as missing)."""
        if not command.is_read_only:
            raise ValueError(f"{command.type.name} is not a read")
        now = self._clock if now_ms is None else now_ms
        return self._execute(_Ctx(_ReadOnly(self._kv), self._last_applied, now, False), command)

    def _execute(self, ctx: _Ctx, c: Command) -> CommandResult:
        t = c.type
        index = ctx.index
        if t == CommandType.GET:
            rec = ctx.live(_key_bytes(c.key))
            if rec is None:
                return CommandResult.ok(None, applied_index=index)
            return CommandResult.ok(rec[0], version=rec[1], applied_index=index)
        if t == CommandType.SET:
            assert c.value is not None
            return CommandResult.ok(None, version=ctx.write(_key_bytes(c.key), c.value), applied_index=index)
        if t == CommandType.DELETE:
            removed = 0
            for key in dict.fromkeys(c.all_keys):  # DEL k k counts k once, as Redis does
                kb = _key_bytes(key)
                if ctx.live(kb) is not None and ctx.view.delete(kb):
                    removed += 1
            return CommandResult.ok(removed, applied_index=index)
        if t == CommandType.COMPARE_AND_SWAP:
            assert c.value is not None
            kb = _key_bytes(c.key)
            rec = ctx.live(kb)
            if rec is None or rec[0] != c.expected:
                return CommandResult.ok(0, version=rec[1] if rec else 0, applied_index=index)
            return CommandResult.ok(1, version=ctx.write(kb, c.value), applied_index=index)
        if t == CommandType.INCREMENT:
            kb = _key_bytes(c.key)
            rec = ctx.live(kb)
            current = 0 if rec is None else parse_redis_int(rec[0])
            version = rec[1] if rec else 0
            if current is None:
                return CommandResult.fail(NOT_AN_INTEGER, version=version, applied_index=index)
            new = current + c.delta
            if not INT64_MIN <= new <= INT64_MAX:
                return CommandResult.fail(OVERFLOW, version=version, applied_index=index)
            # INCR keeps the key's deadline, as in Redis.
            return CommandResult.ok(new, version=ctx.write(kb, str(new).encode(), rec[3] if rec else 0),
                                    applied_index=index)
        if t == CommandType.OP:
            spec = OPS[c.name or ""]
            try:
                return spec.fn(ctx, c.args)
            except ValueError as exc:  # checked when built; a hand-made payload can still lie
                return CommandResult.fail(f"{spec.name}: {exc}", applied_index=index)
        if t == CommandType.TRANSACTION:
            for key, revision in c.watches:
                rec = ctx.live(_key_bytes(key))
                if (rec[2] if rec is not None else 0) != revision:
                    return CommandResult.ok(None, applied_index=index)  # EXEC aborted: nothing applied
            return CommandResult.ok(tuple(self._execute(ctx, sub) for sub in c.commands), applied_index=index)
        if t == CommandType.SESSION:
            inner = c.commands[0]
            result, refused = self._sessions.call(c.session, c.seq, c.ack, ctx.now,
                                                  lambda: self._execute(ctx, inner), ctx.view)
            if refused is not None:
                return CommandResult.fail(refused, applied_index=index)
            assert isinstance(result, CommandResult)
            return result
        if t == CommandType.SESSION_OPEN:
            if ctx.pos >> POSITION_BITS:
                return CommandResult.fail("too many commands in one entry to number a session", applied_index=index)
            sid = (index << POSITION_BITS) | ctx.pos
            timeout_ms, max_sessions, max_results = (int(a) for a in c.args)
            self._sessions.open(sid, ctx.now, timeout_ms, max_sessions, max_results, ctx.view)
            return CommandResult.ok(sid, applied_index=index)
        return self._custom(ctx, c)

    def _custom(self, ctx: _Ctx, c: Command) -> CommandResult:
        assert c.name is not None
        index = ctx.index
        fn = self._handlers.get(c.name)
        if fn is None:
            return CommandResult.fail(f"unknown command handler {c.name!r}", applied_index=index)
        view = StateView(ctx)
        try:
            out = fn(view, c.args)
        except Exception as exc:
            return CommandResult.fail(f"{c.name}: {_describe(exc)}", applied_index=index)
        if isinstance(out, CommandResult):
            result = replace(out, applied_index=index)
        elif out is None or (isinstance(out, (bytes, int)) and not isinstance(out, bool)):
            result = CommandResult.ok(out, applied_index=index)
        else:
            return CommandResult.fail(
                f"{c.name}: handler returned unsupported {type(out).__name__}", applied_index=index
            )
        if result.success and ctx.mutate:
            for key, value in view._writes.items():
                kb = _key_bytes(key)
                if value is None:
                    if ctx.live(kb) is not None:
                        ctx.view.delete(kb)
                else:
                    ctx.write(kb, value)
        return result

    # --- snapshots -------------------------------------------------------------------------
    def snapshot_chunks(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream the state as chunks of exactly `chunk_size` bytes (the last may be shorter).

        The contents are captured when this is *called* (the backend's consistent view), so
        the driver may keep applying entries while the returned iterator is consumed (in
        another thread, say).
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        return stream_snapshot(self._kv.items(), self._last_applied, self._kv.count(), chunk_size,
                               sessions=list(self._kv.sessions()))

    def restore_chunks(self, chunks: Iterable[bytes], *, expect_index: int | None = None) -> int:
        """Replace the whole state with a snapshot stream; returns its applied index.

        The stream is validated completely before anything changes: on ValueError the state
        is untouched. Registered handlers are kept.
        """
        parser = SnapshotParser(chunks)
        index = parser.index
        if expect_index is not None and index != expect_index:
            raise ValueError(f"snapshot covers index {index}, expected {expect_index}")
        self._kv.replace(parser.records(), index, parser.sessions())
        self._sessions.load(self._kv.sessions())
        self._done(index)
        return index


class _ReadOnly:
    """A backend seen through a view that refuses writes (local reads)."""

    __slots__ = ("_kv",)

    def __init__(self, kv: KVBackend) -> None:
        self._kv = kv

    def get(self, key: bytes) -> Record | None:
        return self._kv.get(key)

    def put(self, key: bytes, value: bytes, version: int, revision: int, expires: int = 0) -> None:
        raise RuntimeError("a read tried to write")

    def delete(self, key: bytes) -> bool:
        raise RuntimeError("a read tried to write")

    def put_session(self, sid: int, data: bytes) -> None:
        raise RuntimeError("a read tried to write")

    def delete_session(self, sid: int) -> bool:
        raise RuntimeError("a read tried to write")


# --- the snapshot stream --------------------------------------------------------------------


def _record_crc(crc: int, kb: bytes, value: bytes, version: int, revision: int | None = None,
                expires: int = 0) -> int:
    crc = zlib.crc32(kb, crc)
    crc = zlib.crc32(value, crc)
    crc = zlib.crc32(version.to_bytes(8, "big"), crc)
    if revision is not None:
        crc = zlib.crc32(revision.to_bytes(8, "big"), crc)
    if expires:
        crc = zlib.crc32(expires.to_bytes(8, "big"), crc)
    return crc


def _session_crc(crc: int, sid: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(b"s" + sid.to_bytes(8, "big"), crc))


def stream_snapshot(items: Iterable[Item], index: int, count: int, chunk_size: int = 64 * 1024,
                    sessions: Sequence[tuple[int, bytes]] = ()) -> Iterator[bytes]:
    """The snapshot stream of `count` records in key order, then the client `sessions`, as
    chunks of `chunk_size`. A state without sessions is written as version 3, byte for byte
    what the versions before sessions wrote (so they can still read it)."""
    packer = msgpack.Packer(use_bin_type=True)
    version = _SNAP_VERSION if sessions else 3
    buf = bytearray(packer.pack([_SNAP_TAG, version, index, count]))
    crc = 0
    n = 0
    for kb, value, version, revision, expires in items:
        crc = _record_crc(crc, kb, value, version, revision, expires)
        buf += packer.pack([kb, value, version, revision, expires] if expires else [kb, value, version, revision])
        n += 1
        if len(buf) >= chunk_size:
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]
    if n != count:
        raise ValueError(f"the state changed while it was streamed ({n} records, expected {count})")
    for sid, data in sessions:
        crc = _session_crc(crc, sid, data)
        buf += packer.pack([_SNAP_SESSION, sid, data])
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    buf += packer.pack([_SNAP_END, count, crc, len(sessions)] if sessions else [_SNAP_END, count, crc])
    while buf:
        yield bytes(buf[:chunk_size])
        del buf[:chunk_size]


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _parse_header(obj: object) -> tuple[int, int, int]:
    if (
        not isinstance(obj, list)
        or len(obj) != 4
        or obj[0] != _SNAP_TAG
        or not _is_uint(obj[2])
        or not _is_uint(obj[3])
    ):
        raise ValueError("not an Aegis state-machine snapshot (bad header)")
    if obj[1] not in (1, 2, 3, _SNAP_VERSION):
        raise ValueError(f"unsupported snapshot format version {obj[1]!r}")
    return obj[1], obj[2], obj[3]


class SnapshotParser:
    """Validates a snapshot stream while yielding its records.

    `index` and `count` are read from the header at construction (ValueError if it is bad).
    `records()` yields ``(key, value, version, revision)`` in stream order (a consumer
    detects a key named twice: the backends do) and raises
    ValueError — after the last record, if need be — when anything is wrong: a consumer
    that writes records as they come must undo its work on that error (a transaction
    aborted, a dict discarded). Version 1 streams (no revision) read with revision 0.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True, max_buffer_size=1 << 30)
        self._pending: list[Any] = []
        self._sessions: list[tuple[int, bytes]] | None = None
        header = self._next()
        if header is None:
            raise ValueError("corrupt snapshot: truncated stream")
        try:
            self.version, self.index, self.count = _parse_header(header)
        except ValueError as exc:
            raise ValueError(f"corrupt snapshot: {exc}") from None

    def _next(self) -> Any:
        while True:
            try:
                for obj in self._unpacker:
                    return obj
            except ValueError as exc:
                raise ValueError(f"corrupt snapshot: {exc}") from None
            except Exception as exc:  # msgpack's own errors on garbage
                raise ValueError(f"corrupt snapshot: {_describe(exc)}") from None
            chunk = next(self._chunks, None)  # a source's own errors (a corrupt file) pass through
            if chunk is None:
                return None
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise ValueError(f"snapshot chunks must be bytes, got {type(chunk).__name__}")
            try:
                self._unpacker.feed(chunk)
            except Exception as exc:
                raise ValueError(f"corrupt snapshot: {_describe(exc)}") from None

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        """The client sessions the stream carries ``(sid, encoded)``: iterate only after
        `records()` is exhausted (they come after the keys; a backend's `replace` does so)."""
        if self._sessions is None:
            raise RuntimeError("the sessions of a snapshot are known only after its records")
        yield from self._sessions

    def records(self) -> Iterator[Item]:
        fmt = self.version
        widths = (3,) if fmt == 1 else (4,) if fmt == 2 else (4, 5)
        trailer_len = 4 if fmt >= 4 else 3
        crc = 0
        n = 0
        sessions: list[tuple[int, bytes]] = []
        while True:
            obj = self._next()
            if obj is None:
                raise ValueError("corrupt snapshot: truncated stream")
            if isinstance(obj, list) and len(obj) == trailer_len and obj[0] == _SNAP_END:
                trailer = obj
                break
            if fmt >= 4 and isinstance(obj, list) and len(obj) == 3 and obj[0] == _SNAP_SESSION:
                if not _is_uint(obj[1]) or not isinstance(obj[2], bytes) or (sessions and obj[1] <= sessions[-1][0]):
                    raise ValueError("corrupt snapshot: malformed session record")
                try:
                    decode_session(obj[1], obj[2])
                except ValueError as exc:
                    raise ValueError(f"corrupt snapshot: {exc}") from None
                crc = _session_crc(crc, obj[1], obj[2])
                sessions.append((obj[1], obj[2]))
                continue
            if sessions:
                raise ValueError("corrupt snapshot: a key record after the sessions")
            if (
                not isinstance(obj, list)
                or len(obj) not in widths
                or not isinstance(obj[0], bytes)
                or not isinstance(obj[1], bytes)
                or not _is_uint(obj[2])
                or obj[2] < 1
                or (len(obj) > 3 and not _is_uint(obj[3]))
                or (len(obj) > 4 and (not _is_uint(obj[4]) or obj[4] < 1))
            ):
                raise ValueError("corrupt snapshot: malformed snapshot record")
            kb = obj[0]
            rev = obj[3] if len(obj) > 3 else 0
            exp = obj[4] if len(obj) > 4 else 0
            crc = _record_crc(crc, kb, obj[1], obj[2], rev if fmt > 1 else None, exp)
            n += 1
            yield kb, obj[1], obj[2], rev, exp
        if self._next() is not None or self._unpacker.read_bytes(1 << 30) or next(self._chunks, None):
            raise ValueError("corrupt snapshot: trailing bytes after the trailer")
        if trailer[1] != self.count or n != self.count:
            raise ValueError(f"corrupt snapshot: header says {self.count} keys, found {n}")
        if trailer[2] != crc:
            raise ValueError("corrupt snapshot: checksum mismatch")
        if fmt >= 4 and trailer[3] != len(sessions):
            raise ValueError(f"corrupt snapshot: trailer says {trailer[3]} sessions, found {len(sessions)}")
        self._sessions = sessions


def read_snapshot_header(prefix: bytes) -> tuple[int, int]:
    """(applied_index, key_count) from the first bytes of a snapshot stream."""
    try:
        unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True)
        unpacker.feed(prefix)
        obj = next(unpacker)
    except StopIteration:
        raise ValueError("snapshot header is incomplete") from None
    except Exception as exc:
        raise ValueError(f"corrupt snapshot header: {_describe(exc)}") from None
    return _parse_header(obj)[1:]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole state-machine snapshot in memory: the index and term it covers, and `data`,
    the stream `StateMachine.snapshot_chunks` produces."""

    index: int
    term: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _is_uint(self.index) or not _is_uint(self.term):
            raise ValueError("snapshot index and term must be non-negative ints")
        if not isinstance(self.data, bytes):
            raise TypeError("snapshot data must be bytes")

    @classmethod
    def from_state_machine(cls, sm: StateMachine, term: int) -> Snapshot:
        """Snapshot `sm` as of its `last_applied`; `term` is the term of that entry."""
        return cls(sm.last_applied, term, b"".join(sm.snapshot_chunks()))

    def restore_into(self, sm: StateMachine) -> None:
        sm.restore_chunks([self.data], expect_index=self.index)

    @property
    def key_count(self) -> int:
        return read_snapshot_header(self.data[:64])[1]

    def checksum(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def serialize(self) -> bytes:
        return msgpack.packb([_FILE_TAG, _FILE_VERSION, self.index, self.term, self.data], use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def deserialize(cls, raw: bytes) -> Snapshot:
        try:
            obj = msgpack.unpackb(bytes(raw), raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:
            raise ValueError(f"corrupt snapshot file: {_describe(exc)}") from None
        if (
            not isinstance(obj, list)
            or len(obj) != 5
            or obj[0] != _FILE_TAG
            or obj[1] != _FILE_VERSION
            or not _is_uint(obj[2])
            or not _is_uint(obj[3])
            or not isinstance(obj[4], bytes)
        ):
            raise ValueError("not an Aegis snapshot")
        snap = cls(obj[2], obj[3], obj[4])
        # Check the stream's own header agrees, so a mislabelled file is caught early.
        if read_snapshot_header(snap.data[:64])[0] != snap.index:
            raise ValueError("snapshot index does not match its contents")
        return snap
