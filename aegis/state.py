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

Snapshots are a msgpack stream: a header ``["aegis-sm", 2, applied_index, key_count]``, one
``[key, value, version, revision]`` record per key in the backend's storage order (byte
order of the keys; the LMDB backend puts keys over 510 bytes last), so equal states give
equal bytes, and a trailer ``["end", key_count, crc32]``. Version 1 streams (records
without the revision) are still read. `SnapshotParser` validates while it streams; a
backend's `replace` undoes everything if the stream turns out bad, so garbage never
half-replaces a state. `Snapshot` wraps the same stream with the index and term it covers.

This module does no I/O and never imports trio, lmdb, socket or time.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Final, Iterable, Iterator, Mapping, Protocol, Sequence, TypeAlias, TypeVar

import msgpack

from .log import EntryType, LogEntry

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
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

NOT_AN_INTEGER: Final = "value is not an integer or out of range"
OVERFLOW: Final = "increment or decrement would overflow"

_SNAP_TAG: Final = "aegis-sm"
_SNAP_VERSION: Final = 2  # version 1 records had no revision; they are still read
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
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


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

    # The seed's CamelCase spellings.
    Get = 0
    Set = 1
    Delete = 2
    CompareAndSwap = 3
    Increment = 4
    Custom = 5


# Which optional fields each command type uses; every other field must keep its default,
# so that a command has exactly one encoding and decode(encode(c)) == c.
_USES: Final[dict[CommandType, frozenset[str]]] = {
    CommandType.GET: frozenset({"key"}),
    CommandType.SET: frozenset({"key", "value"}),
    CommandType.DELETE: frozenset({"key", "keys"}),
    CommandType.COMPARE_AND_SWAP: frozenset({"key", "expected", "value"}),
    CommandType.INCREMENT: frozenset({"key", "delta"}),
    CommandType.CUSTOM: frozenset({"name", "args"}),
}
_DEFAULTS: Final[dict[str, object]] = {
    "key": "",
    "value": None,
    "expected": None,
    "delta": 0,
    "keys": (),
    "name": None,
    "args": (),
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

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def get(cls, key: str) -> Command:
        return cls(CommandType.GET, key)

    @classmethod
    def set(cls, key: str, value: bytes) -> Command:
        return cls(CommandType.SET, key, value=_as_bytes(value, "value"))

    @classmethod
    def delete(cls, key: str, *more_keys: str) -> Command:
        return cls(CommandType.DELETE, key, keys=tuple(more_keys))

    @classmethod
    def compare_and_swap(cls, key: str, expected: bytes, new: bytes) -> Command:
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
    def custom(cls, name: str, *args: bytes) -> Command:
        return cls(CommandType.CUSTOM, name=name, args=tuple(_as_bytes(a, "argument") for a in args))

    # --- properties ------------------------------------------------------------------------
    @property
    def all_keys(self) -> tuple[str, ...]:
        """Every key the command names (empty for CUSTOM: a handler picks its own)."""
        if self.type == CommandType.CUSTOM:
            return ()
        return (self.key, *self.keys)

    @property
    def is_read_only(self) -> bool:
        return self.type == CommandType.GET

    # --- codec -----------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The compact, safe payload of a COMMAND log entry."""
        t = self.type
        body: list[object]
        if t == CommandType.CUSTOM:
            body = [int(t), self.name, list(self.args)]
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
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]

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
        if t == CommandType.CUSTOM:
            name, args = obj[1], obj[2]
            if not isinstance(name, str) or not isinstance(args, list):
                raise ValueError("bad CUSTOM fields")
            return cls(t, name=name, args=tuple(args))
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
}


def _wire_key(raw: object) -> str:
    if not isinstance(raw, bytes):
        raise ValueError("key must be binary")
    return _key_str(raw)


def _wire_bytes(raw: object) -> bytes:
    if not isinstance(raw, bytes):
        raise ValueError("value must be binary")
    return raw


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The outcome of applying (or reading) a command.

    `value` is bytes for GET, an int for DELETE (keys removed), INCREMENT (new value) and
    COMPARE_AND_SWAP (1 swapped, 0 not), None for SET or a missing key. `version` is the
    key's version after the command (0 when the key does not exist). A failed result
    (`success` False) carries `error` and means the state did not change.
    """

    success: bool
    value: bytes | int | None = None
    version: int = 0
    applied_index: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        if self.success and self.error is not None:
            raise ValueError("a successful result carries no error")
        if not self.success and not self.error:
            raise ValueError("a failed result needs an error message")

    @classmethod
    def ok(cls, value: bytes | int | None = None, *, version: int = 0, applied_index: int = 0) -> CommandResult:
        return cls(True, value, version, applied_index)

    @classmethod
    def fail(cls, error: str, *, version: int = 0, applied_index: int = 0) -> CommandResult:
        return cls(False, None, version, applied_index, error)


# --- the backend ----------------------------------------------------------------------------


#: One stored record: (value, version, revision). `version` counts the writes since the key
#: was created (1 on creation); `revision` is the log index of the entry that last wrote it.
Record: TypeAlias = tuple[bytes, int, int]


class KVView(Protocol):
    """What applying one batch sees: reads and writes inside one backend transaction."""

    def get(self, key: bytes) -> Record | None: ...

    def put(self, key: bytes, value: bytes, version: int, revision: int) -> None: ...

    def delete(self, key: bytes) -> bool: ...


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

    def items(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        """A consistent snapshot as of the call, in key order: (key, value, version, revision)."""
        ...

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T: ...

    def replace(self, records: Iterable[tuple[bytes, bytes, int, int]], applied: int) -> None:
        """Replace everything with `records` (a snapshot). If iterating raises, nothing changes."""
        ...


class DictBackend:
    """`KVBackend` in a Python dict (with a sorted view for snapshots)."""

    __slots__ = ("_data", "_applied")

    def __init__(self) -> None:
        self._data: dict[bytes, Record] = {}
        self._applied = 0

    def get(self, key: bytes) -> Record | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes, version: int, revision: int) -> None:
        self._data[key] = (value, version, revision)

    def delete(self, key: bytes) -> bool:
        return self._data.pop(key, None) is not None

    def count(self) -> int:
        return len(self._data)

    def applied(self) -> int:
        return self._applied

    def items(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        data = self._data
        snap = [(k, *data[k]) for k in sorted(data)]  # captured now
        return iter(snap)

    def transact(self, body: Callable[[KVView], _T], applied: int, term: int = 0) -> _T:
        out = body(self)
        self._applied = applied
        return out

    def replace(self, records: Iterable[tuple[bytes, bytes, int, int]], applied: int) -> None:
        new: dict[bytes, Record] = {}
        n = 0
        for k, v, ver, rev in records:
            new[k] = (v, ver, rev)
            n += 1
        if len(new) != n:
            raise ValueError(f"corrupt snapshot: {n - len(new)} duplicate keys")
        self._data = new
        self._applied = applied


# --- custom handlers ----------------------------------------------------------------------


class StateView:
    """What a custom handler sees: reads go to the state (and the handler's own writes);
    writes are buffered and applied only if the handler succeeds."""

    __slots__ = ("_data", "_writes")

    def __init__(self, data: KVView) -> None:
        self._data = data
        self._writes: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        rec = self._data.get(_key_bytes(key))
        return rec[0] if rec is not None else None

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def version(self, key: str) -> int:
        """The committed version (writes buffered by this handler are not counted yet)."""
        rec = self._data.get(_key_bytes(key))
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
        self._handlers: dict[str, Handler] = {}
        self._digest: str | None = None
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

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._kv.get(_key_bytes(key)) is not None

    def keys(self) -> list[str]:
        return sorted(_key_str(k) for k, *_ in self._kv.items())

    def version(self, key: str) -> int:
        rec = self._kv.get(_key_bytes(key))
        return rec[1] if rec is not None else 0

    def revision(self, key: str) -> int:
        """The log index of the entry that last wrote `key` (0 if it does not exist)."""
        rec = self._kv.get(_key_bytes(key))
        return rec[2] if rec is not None else 0

    def get(self, key: str) -> CommandResult:
        """Read local state (not through the log): linearizable only after a ReadIndex wait."""
        return self.get_raw(_key_bytes(key))

    def get_raw(self, key: bytes) -> CommandResult:
        rec = self._kv.get(key)
        if rec is None:
            return CommandResult.ok(None, version=0, applied_index=self._last_applied)
        return CommandResult.ok(rec[0], version=rec[1], applied_index=self._last_applied)

    def get_value(self, key: bytes) -> bytes | None:
        """The value alone (the node's GET path)."""
        rec = self._kv.get(key)
        return rec[0] if rec is not None else None

    def digest(self) -> str:
        """A stable hash (hex SHA-256) of the contents — keys, values, versions — regardless
        of insertion order or `last_applied`. Replicas that applied the same entries agree."""
        if self._digest is None:
            h = hashlib.sha256()
            for kb, value, version, _rev in sorted(self._kv.items()):
                h.update(len(kb).to_bytes(4, "big") + kb)
                h.update(len(value).to_bytes(8, "big") + value)
                h.update(version.to_bytes(8, "big"))
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
        result = self._kv.transact(lambda view: self._execute(view, command, index), index)
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
        self._done(index)

    def _done(self, index: int) -> None:
        self._last_applied = index
        self._digest = None

    def _execute_entry(self, view: KVView, entry: LogEntry) -> list[CommandResult]:
        index = int(entry.index)
        t = entry.type
        if t == EntryType.COMMAND:
            try:
                command = Command.decode(entry.data)
            except ValueError as exc:
                return [CommandResult.fail(str(exc), applied_index=index)]
            return [self._execute(view, command, index)]
        if t == EntryType.BATCH:
            try:
                objs = _unpack_batch(entry.data)
            except ValueError as exc:
                return [CommandResult.fail(str(exc), applied_index=index)]
            return [self._execute_wire(view, obj, index) for obj in objs]
        return []  # NO_OP, CONFIG_CHANGE: the core handles them

    def _execute_wire(self, view: KVView, obj: Any, index: int) -> CommandResult:
        # The hot path: a SET straight from its wire form, without building a Command.
        if type(obj) is list and len(obj) == 3 and obj[0] == 1 and type(obj[1]) is bytes and type(obj[2]) is bytes:
            key = obj[1]
            rec = view.get(key)
            version = 1 if rec is None else rec[1] + 1
            view.put(key, obj[2], version, index)
            return CommandResult(True, None, version, index)
        try:
            command = Command._from_wire(obj)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            return CommandResult.fail(f"malformed command payload: {exc}", applied_index=index)
        return self._execute(view, command, index)

    def _execute(self, view: KVView, c: Command, index: int) -> CommandResult:
        t = c.type
        if t == CommandType.GET:
            rec = view.get(_key_bytes(c.key))
            if rec is None:
                return CommandResult.ok(None, applied_index=index)
            return CommandResult.ok(rec[0], version=rec[1], applied_index=index)
        if t == CommandType.SET:
            assert c.value is not None
            return CommandResult.ok(None, version=_write(view, _key_bytes(c.key), c.value, index), applied_index=index)
        if t == CommandType.DELETE:
            removed = 0
            for key in dict.fromkeys(c.all_keys):  # DEL k k counts k once, as Redis does
                if view.delete(_key_bytes(key)):
                    removed += 1
            return CommandResult.ok(removed, applied_index=index)
        if t == CommandType.COMPARE_AND_SWAP:
            assert c.value is not None
            kb = _key_bytes(c.key)
            rec = view.get(kb)
            if rec is None or rec[0] != c.expected:
                return CommandResult.ok(0, version=rec[1] if rec else 0, applied_index=index)
            return CommandResult.ok(1, version=_write(view, kb, c.value, index), applied_index=index)
        if t == CommandType.INCREMENT:
            kb = _key_bytes(c.key)
            rec = view.get(kb)
            current = 0 if rec is None else parse_redis_int(rec[0])
            version = rec[1] if rec else 0
            if current is None:
                return CommandResult.fail(NOT_AN_INTEGER, version=version, applied_index=index)
            new = current + c.delta
            if not INT64_MIN <= new <= INT64_MAX:
                return CommandResult.fail(OVERFLOW, version=version, applied_index=index)
            return CommandResult.ok(new, version=_write(view, kb, str(new).encode(), index), applied_index=index)
        return self._custom(view, c, index)

    def _custom(self, data: KVView, c: Command, index: int) -> CommandResult:
        assert c.name is not None
        fn = self._handlers.get(c.name)
        if fn is None:
            return CommandResult.fail(f"unknown command handler {c.name!r}", applied_index=index)
        view = StateView(data)
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
        if result.success:
            for key, value in view._writes.items():
                if value is None:
                    data.delete(_key_bytes(key))
                else:
                    _write(data, _key_bytes(key), value, index)
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
        return stream_snapshot(self._kv.items(), self._last_applied, self._kv.count(), chunk_size)

    def restore_chunks(self, chunks: Iterable[bytes], *, expect_index: int | None = None) -> int:
        """Replace the whole state with a snapshot stream; returns its applied index.

        The stream is validated completely before anything changes: on ValueError the state
        is untouched. Registered handlers are kept.
        """
        parser = SnapshotParser(chunks)
        index = parser.index
        if expect_index is not None and index != expect_index:
            raise ValueError(f"snapshot covers index {index}, expected {expect_index}")
        self._kv.replace(parser.records(), index)
        self._done(index)
        return index


def _write(view: KVView, key: bytes, value: bytes, index: int) -> int:
    rec = view.get(key)
    version = 1 if rec is None else rec[1] + 1
    view.put(key, value, version, index)
    return version


# --- the snapshot stream --------------------------------------------------------------------


def _record_crc(crc: int, kb: bytes, value: bytes, version: int, revision: int | None = None) -> int:
    crc = zlib.crc32(kb, crc)
    crc = zlib.crc32(value, crc)
    crc = zlib.crc32(version.to_bytes(8, "big"), crc)
    if revision is not None:
        crc = zlib.crc32(revision.to_bytes(8, "big"), crc)
    return crc


def stream_snapshot(
    items: Iterable[tuple[bytes, bytes, int, int]], index: int, count: int, chunk_size: int = 64 * 1024
) -> Iterator[bytes]:
    """The snapshot stream of `count` records in key order, as chunks of `chunk_size`."""
    packer = msgpack.Packer(use_bin_type=True)
    buf = bytearray(packer.pack([_SNAP_TAG, _SNAP_VERSION, index, count]))
    crc = 0
    n = 0
    for kb, value, version, revision in items:
        crc = _record_crc(crc, kb, value, version, revision)
        buf += packer.pack([kb, value, version, revision])
        n += 1
        if len(buf) >= chunk_size:
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]
    if n != count:
        raise ValueError(f"the state changed while it was streamed ({n} records, expected {count})")
    buf += packer.pack([_SNAP_END, count, crc])
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
    if obj[1] not in (1, _SNAP_VERSION):
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

    def records(self) -> Iterator[tuple[bytes, bytes, int, int]]:
        v2 = self.version == _SNAP_VERSION
        width = 4 if v2 else 3
        crc = 0
        n = 0
        while True:
            obj = self._next()
            if obj is None:
                raise ValueError("corrupt snapshot: truncated stream")
            if isinstance(obj, list) and len(obj) == 3 and obj[0] == _SNAP_END:
                trailer = obj
                break
            if (
                not isinstance(obj, list)
                or len(obj) != width
                or not isinstance(obj[0], bytes)
                or not isinstance(obj[1], bytes)
                or not _is_uint(obj[2])
                or obj[2] < 1
                or (v2 and not _is_uint(obj[3]))
            ):
                raise ValueError("corrupt snapshot: malformed snapshot record")
            kb = obj[0]
            rev = obj[3] if v2 else 0
            crc = _record_crc(crc, kb, obj[1], obj[2], rev if v2 else None)
            n += 1
            yield kb, obj[1], obj[2], rev
        if self._next() is not None or self._unpacker.read_bytes(1 << 30) or next(self._chunks, None):
            raise ValueError("corrupt snapshot: trailing bytes after the trailer")
        if trailer[1] != self.count or n != self.count:
            raise ValueError(f"corrupt snapshot: header says {self.count} keys, found {n}")
        if trailer[2] != crc:
            raise ValueError("corrupt snapshot: checksum mismatch")


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
