"""The client command table: argv in, a typed request or a definite ``-ERR`` out.

Theory of operation
-------------------
`parse_command(argv)` is pure: it looks the command up in `COMMANDS`, checks the arity
recorded there, validates every argument (integers, key and value sizes, node ids,
addresses) and returns one frozen request object. It never raises on client input: a bad
command becomes an `ErrorReply` with Redis's wording where Redis has one, so the server
writes it back and nothing is proposed. Only requests that passed validation reach Raft.

What comes out, and what the server does with it:

* `WriteRequest(command)` — SET, DEL, INCR/INCRBY/DECR/DECRBY, CAS: propose
  ``command`` (an `aegis.state.Command`), and when it applies reply with
  `encode_result(command, result)`.
* `ReadRequest(key)` (GET) and `ExistsRequest(keys)` (EXISTS) — serve after ReadIndex.
* `InfoRequest`, `ClusterRequest`, `MemberRequest`, `LeaderTransferRequest`,
  `AuthRequest` — node status, membership and authentication: the server's business.
* `HelloRequest` — the protocol handshake: the connection may switch to RESP3 (redis-py 8
  asks for it on connect and does not fall back), after which every reply is encoded with
  ``resp3=True`` (nil is ``_``; maps are maps).
* `LocalReply(value, close=…)` — answered from the table alone (PING, ECHO, SELECT 0,
  COMMAND, CLIENT SETNAME, QUIT …): send `encoded(resp3)`, and close the connection
  afterwards when `close` is set (QUIT).
* `ErrorReply(text)` — a definite failure; ``text`` starts with its kind (``ERR …``).

`COMMANDS` is also the user-facing catalogue: syntax, summary, example, group, argument
kinds (for completion: which argument is a key, a node id, a keyword), whether a command is
safe to retry after an unknown outcome, and whether it is dangerous (the shell asks before
running those). Container commands (CLUSTER, MEMBER, LEADER, CLIENT, CONFIG) keep
their sub-commands in `CommandSpec.subcommands`; `lookup("member", "add")` finds one.

Arity follows Redis: a positive arity is exact, a negative one is a minimum, and both count
the command name (and the sub-command name, for a sub-command). `max_arity` bounds the
optional arguments of a command with a negative arity.

This module does no I/O and never imports trio.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, Union

from .node import MAX_NODE_ID_LEN, parse_address
from .protocol import OK, Reply, encode, encode_array, encode_bulk, encode_error, encode_integer
from .sessions import DEFAULT_MAX_RESULTS, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TIMEOUT_MS, SESSION_ERRORS
from .state import Command, CommandResult, CommandType

__all__ = [
    "CommandLimits",
    "DEFAULT_LIMITS",
    "WriteRequest",
    "ReadRequest",
    "ExistsRequest",
    "QueryRequest",
    "ScanRequest",
    "KeysRequest",
    "DbsizeRequest",
    "RangeRequest",
    "TxnOp",
    "ChangesRequest",
    "PubSubRequest",
    "TxnRequest",
    "queued_command",
    "glob_prefix",
    "SnapshotRequest",
    "MAX_SNAPSHOT_READ",
    "InfoRequest",
    "ClusterRequest",
    "MemberOp",
    "MemberRequest",
    "LeaderTransferRequest",
    "AuthRequest",
    "HelloRequest",
    "LocalReply",
    "ErrorReply",
    "Request",
    "ArgKind",
    "Arg",
    "CommandSpec",
    "COMMANDS",
    "GROUPS",
    "INFO_SECTIONS",
    "lookup",
    "parse_command",
    "allowed_before_auth",
    "encode_result",
    "ERR_NOAUTH",
    "ERR_WRONGPASS",
    "ERR_AUTH_NOT_CONFIGURED",
    "ERR_NOT_INTEGER",
    "ERR_HELLO_NOAUTH",
    "ERR_SYNTAX",
]

SERVER_NAME: Final = "aegis"
SERVER_VERSION: Final = "0.1.0"

ERR_NOAUTH: Final = "NOAUTH Authentication required."
ERR_WRONGPASS: Final = "WRONGPASS invalid username-password pair or user is disabled."
ERR_AUTH_NOT_CONFIGURED: Final = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
ERR_NOT_INTEGER: Final = "ERR value is not an integer or out of range"
ERR_HELLO_NOAUTH: Final = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    "select the RESP protocol version at the same time"
)
ERR_SYNTAX: Final = "ERR syntax error"

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """Size limits checked before anything is proposed (each breach is a clear ``-ERR``).

    Keep `max_value_len` below the parser's ``max_bulk_len`` so an oversized value gets an
    error reply on a connection that stays open, rather than a protocol error that closes it.
    """

    max_key_len: int = 64 * 1024
    max_value_len: int = 8 * 1024 * 1024
    max_keys: int = 4096  # keys in one DEL or EXISTS
    # What SESSION OPEN puts in the log (the leader's flags, so every replica applies the same).
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS  # --session-timeout
    max_sessions: int = DEFAULT_MAX_SESSIONS  # --max-sessions
    session_results: int = DEFAULT_MAX_RESULTS  # --session-results: results kept per session

    def __post_init__(self) -> None:
        if min(self.max_key_len, self.max_value_len, self.max_keys, self.session_timeout_ms,
               self.max_sessions, self.session_results) < 1:
            raise ValueError("command limits must be positive")


DEFAULT_LIMITS: Final = CommandLimits()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Propose `command` through Raft; reply with `encode_result` once it applies."""

    command: Command


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """GET: a linearizable read of one key (bulk reply, or nil when missing)."""

    key: str

    @property
    def command(self) -> Command:
        return Command.get(self.key)

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ExistsRequest:
    """EXISTS: how many of `keys` exist (a key named twice counts twice, as in Redis)."""

    keys: tuple[str, ...]

    @property
    def command(self) -> Command:
        return Command.op("EXISTS", *self.keys)


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A read-only data command (MGET, STRLEN, TTL, PTTL, GETV): served after ReadIndex with
    `StateMachine.read(command, now)` and replied with `encode_result`."""

    command: Command


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: one step of a SCAN (hash order,
    `KVBackend.scan`); reply ``[next-cursor, [key, ...]]``. `pattern` is a Redis glob."""

    cursor: int
    pattern: bytes | None = None
    count: int = 10
    type: str | None = None


@dataclass(frozen=True, slots=True)
class KeysRequest:
    """KEYS pattern: every matching key, in byte order; refused when it would examine more
    keys than the node's limit (``--keys-limit``). A pattern with a literal prefix only
    examines the keys under that prefix."""

    pattern: bytes


@dataclass(frozen=True, slots=True)
class DbsizeRequest:
    """DBSIZE: the number of keys (keys past their deadline but not yet purged included,
    as in Redis)."""


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """RANGE min max [LIMIT n] [KEYSONLY], PREFIX prefix [LIMIT n] [KEYSONLY]: keys
    ``start <= key < end`` in byte order (`end` None: no bound), at most `limit` (0: the
    node's ``--range-limit``). Reply: ``[key, value, key, value, ...]`` or the keys only."""

    start: bytes
    end: bytes | None
    limit: int = 0
    keys_only: bool = False


@dataclass(frozen=True, slots=True)
class ChangesRequest:
    """CHANGES prefix [FROM revision]: follow every committed change to the keys under
    `prefix`, in commit order. The connection then only receives, until it closes: first
    ``["changes", prefix, revision]`` (where the stream starts), then one
    ``["change", revision, [key, value-or-nil, ...]]`` per log entry that changed such keys.
    With FROM, every change after `revision` comes first (``-COMPACTED`` when the node no
    longer holds them); without it, the stream starts at the node's current revision."""

    prefix: bytes
    from_revision: int | None = None


@dataclass(frozen=True, slots=True)
class PubSubRequest:
    """SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE / PUNSUBSCRIBE channels: Redis's keyspace
    notifications (``__keyspace@0__:<key>`` carries the event, ``set`` or ``del``;
    ``__keyevent@0__:<event>`` carries the key), live from the moment of subscribing and
    not resumable (use CHANGES for that). `op` is the lower-case command name."""

    op: str
    channels: tuple[bytes, ...] = ()


class TxnOp(enum.Enum):
    MULTI = "multi"
    EXEC = "exec"
    DISCARD = "discard"
    WATCH = "watch"
    UNWATCH = "unwatch"


@dataclass(frozen=True, slots=True)
class TxnRequest:
    """MULTI, EXEC, DISCARD, WATCH key..., UNWATCH: the connection's transaction state
    (the server's business). EXEC commits the queued commands as one log entry."""

    op: TxnOp
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InfoRequest:
    """INFO: node status in ``field:value`` lines. `sections` are lower-case; empty means
    the default set. Unknown sections produce no lines (as in Redis)."""

    sections: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        return self.sections[0] if self.sections else "default"


@dataclass(frozen=True, slots=True)
class ClusterRequest:
    """CLUSTER INFO or CLUSTER NODES (`sub` is ``"info"`` or ``"nodes"``)."""

    sub: str


class MemberOp(enum.Enum):
    LIST = "list"
    ADD = "add"
    REMOVE = "remove"
    PROMOTE = "promote"


@dataclass(frozen=True, slots=True)
class MemberRequest:
    """MEMBER LIST | ADD id addr [LEARNER] | REMOVE id | PROMOTE id (one server at a time)."""

    op: MemberOp
    node_id: str | None = None
    address: str | None = None  # "host:port", validated, for ADD
    learner: bool = False


@dataclass(frozen=True, slots=True)
class LeaderTransferRequest:
    """LEADER TRANSFER id: hand leadership to `node_id` (dissertation §3.10)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """SNAPSHOT CREATE | READ id offset count | RELEASE id: a consistent backup, fetched in
    chunks by `aegis snapshot save` (DESIGN.md §6)."""

    op: str  # "create", "read", "release"
    snapshot_id: int = 0
    offset: int = 0
    count: int = 0


MAX_SNAPSHOT_READ: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """AUTH [username] token. Compare `token` in constant time (`hmac.compare_digest`)."""

    token: bytes
    username: bytes | None = None


@dataclass(frozen=True, slots=True)
class LocalReply:
    """Answered without the cluster: send `encode(value)`; close afterwards if `close`."""

    value: Reply
    close: bool = False

    def encoded(self, resp3: bool = False) -> bytes:
        return encode(self.value, resp3=resp3)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A definite failure; `text` starts with the error kind (``ERR …``, ``NOAUTH …``)."""

    text: str

    def encoded(self, resp3: bool = False) -> bytes:
        return encode_error(self.text)


@dataclass(frozen=True, slots=True)
class HelloRequest:
    """HELLO [protover [AUTH username password] [SETNAME name]].

    The server: if `auth` is set, check it like AUTH (``WRONGPASS`` on failure, and then
    change nothing); on a node with a token, a connection not yet authenticated that sends
    no `auth` gets ``NOAUTH HELLO must be called with the client already authenticated…``.
    Otherwise remember `protocol` for the connection (when not None; 3 means encode every
    later reply with ``resp3=True``) and send `encoded(resp3)` — the server description,
    a map in RESP3 and a flat array in RESP2.
    """

    protocol: int | None = None
    auth: AuthRequest | None = None
    client_name: bytes | None = None

    def encoded(self, resp3: bool = False) -> bytes:
        proto = self.protocol if self.protocol is not None else (3 if resp3 else 2)
        return encode(
            {
                b"server": SERVER_NAME.encode(),
                b"version": SERVER_VERSION.encode(),
                b"proto": proto,
                b"mode": b"cluster",
                b"modules": [],
            },
            resp3=proto == 3,
        )


Request: TypeAlias = Union[
    WriteRequest,
    ReadRequest,
    ExistsRequest,
    QueryRequest,
    ScanRequest,
    KeysRequest,
    DbsizeRequest,
    RangeRequest,
    ChangesRequest,
    PubSubRequest,
    TxnRequest,
    InfoRequest,
    ClusterRequest,
    MemberRequest,
    LeaderTransferRequest,
    SnapshotRequest,
    AuthRequest,
    HelloRequest,
    LocalReply,
    ErrorReply,
]


def queued_command(req: Request) -> Command | None:
    """The command a data request stands for inside MULTI (None: not allowed there)."""
    if isinstance(req, (WriteRequest, ReadRequest, ExistsRequest, QueryRequest)):
        return req.command
    return None


def encode_result(command: Command, result: CommandResult, *, resp3: bool = False) -> bytes:
    """The RESP reply for an applied (or read) command: what the client of §4 expects.

    SET → ``+OK``; GET → bulk or nil; DEL, INCR*, CAS → integer; a failed result (an
    INCR of a non-integer, an overflow) → ``-ERR <error>``. OP replies follow Redis's
    command of that name; a TRANSACTION is the array of its commands' replies (errors
    inside it), or the nil array when a WATCHed key changed. `resp3` for connections that
    sent ``HELLO 3`` (it only changes how nil is spelled).
    """
    if command.type == CommandType.SESSION:  # the write's own reply (its first result, if retried)
        if not result.success and (result.error or "").split(" ", 1)[0] in SESSION_ERRORS:
            return encode_error(result.error or "")
        return encode_result(command.commands[0], result, resp3=resp3)
    if not result.success:
        return encode_error(f"ERR {result.error}")
    t = command.type
    if t == CommandType.SET:
        return OK
    value = result.value
    if t == CommandType.TRANSACTION:
        if value is None:
            return encode_array(None, resp3=resp3)
        assert isinstance(value, tuple)
        out = bytearray(b"*%d\r\n" % len(value))
        for sub, res in zip(command.commands, value):
            out += encode_result(sub, res, resp3=resp3)
        return bytes(out)
    if t == CommandType.OP:
        name = command.name
        if name == "SET":
            if command.args[3] == b"GET":
                return encode_bulk(value if isinstance(value, bytes) else None, resp3=resp3)
            return OK if value == 1 else encode_bulk(None, resp3=resp3)
        if name == "MSET":
            return OK
        if name == "MGET" or name == "GETV":
            return encode_array(value if isinstance(value, tuple) else None, resp3=resp3)
    if isinstance(value, int):
        return encode_integer(value)
    assert not isinstance(value, tuple)
    return encode_bulk(value, resp3=resp3)


# --------------------------------------------------------------------------- catalogue


class ArgKind(enum.Enum):
    """What an argument is, for validation messages, completion and highlighting."""

    KEY = "key"
    VALUE = "value"
    INTEGER = "integer"
    NODE_ID = "node-id"
    ADDRESS = "address"
    TOKEN = "token"
    KEYWORD = "keyword"  # one of `choices`
    STRING = "string"


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: ArgKind
    optional: bool = False
    multiple: bool = False
    choices: tuple[str, ...] = ()


Handler: TypeAlias = Callable[[Sequence[bytes], CommandLimits], Request]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command (or sub-command) as users see it and as the parser checks it.

    `name` is upper-case, with the container for sub-commands (``"MEMBER ADD"``).
    `retry_safe`: a client may resend it after an unknown outcome (reads, status, PING).
    `write`: it goes through the Raft log. `dangerous`: the shell asks first.
    `no_auth`: allowed before AUTH on a node that requires a token.
    """

    name: str
    arity: int
    summary: str
    syntax: str
    example: str
    example_reply: str
    group: str
    args: tuple[Arg, ...] = ()
    write: bool = False
    retry_safe: bool = False
    dangerous: bool = False
    no_auth: bool = False
    max_arity: int | None = None
    subcommands: tuple[CommandSpec, ...] = ()
    handler: Handler | None = field(default=None, repr=False, compare=False)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())

    @property
    def fullname(self) -> str:
        """Redis's name in error messages: ``get``, ``member|add``."""
        return "|".join(self.words).lower()

    def subcommand(self, name: str) -> CommandSpec | None:
        wanted = name.upper()
        for sub in self.subcommands:
            if sub.words[-1] == wanted:
                return sub
        return None


#: Groups in the order HELP lists them, with a one-line description each.
GROUPS: Final[Mapping[str, str]] = {
    "keys": "read and write keys (every write is committed by a majority and fsynced)",
    "expiry": "keys that expire (deadlines on the leader's clock, removed through the log)",
    "keyspace": "walk the keys: scans, ordered ranges, counts",
    "transactions": "MULTI/EXEC and optimistic WATCH: several commands in one log entry",
    "cluster": "node status, membership and leadership",
    "connection": "the connection itself",
    "compat": "accepted so Redis tools work (redis-cli, redis-benchmark, client libraries)",
}

#: Sections INFO knows, for completion (any other section is accepted and prints nothing).
INFO_SECTIONS: Final = (
    "default",
    "all",
    "everything",
    "server",
    "raft",
    "replication",
    "cluster",
    "keyspace",
    "stats",
    "clients",
)


# --------------------------------------------------------------------------- validation


class _Reject(Exception):
    """Internal: argument validation failed with this `ErrorReply`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


_INT_RE: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def _int64(raw: bytes) -> int:
    if _INT_RE.fullmatch(raw) is None:
        raise _Reject(ERR_NOT_INTEGER)
    n = int(raw)
    if not INT64_MIN <= n <= INT64_MAX:
        raise _Reject(ERR_NOT_INTEGER)
    return n


def _key(raw: bytes, limits: CommandLimits) -> str:
    if len(raw) > limits.max_key_len:
        raise _Reject(f"ERR key is too long ({len(raw)} bytes; the limit is {limits.max_key_len})")
    return raw.decode("utf-8", "surrogateescape")


def _value(raw: bytes, limits: CommandLimits) -> bytes:
    if len(raw) > limits.max_value_len:
        raise _Reject(
            f"ERR value is too large ({len(raw)} bytes; the limit is {limits.max_value_len})"
        )
    return raw


def _keys(raws: Sequence[bytes], limits: CommandLimits) -> tuple[str, ...]:
    if len(raws) > limits.max_keys:
        raise _Reject(f"ERR too many keys ({len(raws)}; the limit is {limits.max_keys})")
    return tuple(_key(raw, limits) for raw in raws)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _node_id(raw: bytes) -> str:
    text = _text(raw)
    if (
        not text
        or len(text) > MAX_NODE_ID_LEN
        or not text.isprintable()
        or any(c.isspace() or c in ",=" for c in text)
    ):
        raise _Reject(
            f"ERR invalid node id '{text[:64]}': use up to {MAX_NODE_ID_LEN} printable "
            "characters without spaces, ',' or '='"
        )
    return text


def _address(raw: bytes) -> str:
    text = _text(raw)
    try:
        _host, port = parse_address(text)
    except (TypeError, ValueError) as exc:
        raise _Reject(f"ERR {exc}") from None
    if port == 0:
        raise _Reject(f"ERR bad address {text[:128]!r}: port 0 cannot be dialled")
    return text


# --------------------------------------------------------------------------- handlers


def _h_get(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return ReadRequest(_key(argv[1], limits))


def _expire_ms(raw: bytes, unit: int, command: str, *, positive: bool) -> int:
    """A TTL or deadline argument in ms; Redis's errors for a bad or out-of-range one."""
    n = _int64(raw)
    if (positive and n <= 0) or not INT64_MIN <= n * unit <= INT64_MAX:
        raise _Reject(f"ERR invalid expire time in '{command}' command")
    return n * unit


def _h_set(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    key, value = _key(argv[1], limits), _value(argv[2], limits)
    if len(argv) == 3:
        return WriteRequest(Command.set(key, value))
    cond = get = mode = b""
    ttl = 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt in (b"NX", b"XX") and not cond:
            cond = opt
        elif opt == b"GET" and not get:
            get = b"GET"
        elif opt == b"KEEPTTL" and not mode:
            mode = b"KEEPTTL"
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and not mode and i + 1 < len(argv):
            i += 1
            ttl = _expire_ms(argv[i], 1000 if opt in (b"EX", b"EXAT") else 1, "set", positive=True)
            mode = b"PX" if opt in (b"EX", b"PX") else b"PXAT"
        else:
            return ErrorReply(ERR_SYNTAX)
        i += 1
    return WriteRequest(Command.op("SET", key, value, cond, get, mode, ttl))


def _h_setnx(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return WriteRequest(Command.op("SETNX", _key(argv[1], limits), _value(argv[2], limits)))


def _h_setex(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    unit = 1000 if argv[0].lower() == b"setex" else 1
    ttl = _expire_ms(argv[2], unit, _text(argv[0]).lower(), positive=True)
    return WriteRequest(Command.op("SET", _key(argv[1], limits), _value(argv[3], limits), b"", b"", b"PX", ttl))


def _pairs(argv: Sequence[bytes], limits: CommandLimits, name: str) -> list[bytes | str]:
    if len(argv) % 2 != 1:
        raise _Reject(f"ERR wrong number of arguments for '{name}' command")
    if (len(argv) - 1) // 2 > limits.max_keys:
        raise _Reject(f"ERR too many keys ({(len(argv) - 1) // 2}; the limit is {limits.max_keys})")
    out: list[bytes | str] = []
    for i in range(1, len(argv), 2):
        out += [_key(argv[i], limits), _value(argv[i + 1], limits)]
    return out


def _h_mset(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    name = "msetnx" if argv[0].lower() == b"msetnx" else "mset"
    return WriteRequest(Command.op(name.upper(), *_pairs(argv, limits, name)))


def _h_mget(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return QueryRequest(Command.op("MGET", *_keys(argv[1:], limits)))


def _h_key_value_op(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    """GETSET key value, APPEND key value."""
    return WriteRequest(Command.op(_text(argv[0]).upper(), _key(argv[1], limits), _value(argv[2], limits)))


def _h_key_write_op(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    """GETDEL key, PERSIST key."""
    return WriteRequest(Command.op(_text(argv[0]).upper(), _key(argv[1], limits)))


def _h_key_read_op(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    """STRLEN, TTL, PTTL, GETV key."""
    return QueryRequest(Command.op(_text(argv[0]).upper(), _key(argv[1], limits)))


_EXPIRE_KINDS: Final = {
    b"expire": ("PEXPIRE", 1000),
    b"pexpire": ("PEXPIRE", 1),
    b"expireat": ("PEXPIREAT", 1000),
    b"pexpireat": ("PEXPIREAT", 1),
}


def _h_expire(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    name = argv[0].lower()
    op, unit = _EXPIRE_KINDS[name]
    key = _key(argv[1], limits)
    when = _expire_ms(argv[2], unit, _text(name), positive=False)
    cond = b""
    for raw in argv[3:]:
        opt = raw.upper()
        if opt not in (b"NX", b"XX", b"GT", b"LT"):
            return ErrorReply(f"ERR Unsupported option {_text(raw)[:64]}")
        if cond:
            if {cond, opt} == {b"GT", b"LT"}:
                return ErrorReply("ERR GT and LT options at the same time are not compatible")
            return ErrorReply("ERR NX and XX, GT or LT options at the same time are not compatible")
        cond = opt
    return WriteRequest(Command.op(op, key, when, cond))


def _version_arg(raw: bytes) -> int:
    n = _int64(raw)
    if n < 0:
        raise _Reject("ERR version must not be negative")
    return n


def _h_casv(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    key = _key(argv[1], limits)
    return WriteRequest(Command.op("CASV", key, _version_arg(argv[2]), _value(argv[3], limits)))


def _h_delv(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return WriteRequest(Command.op("DELV", _key(argv[1], limits), _version_arg(argv[2])))


def _h_scan(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    raw = argv[1]
    if not raw.isdigit() or len(raw) > 20 or int(raw) >= 2**63:
        return ErrorReply("ERR invalid cursor")
    pattern: bytes | None = None
    count = 10
    kind: str | None = None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            return ErrorReply(ERR_SYNTAX)
        arg = argv[i + 1]
        if opt == b"MATCH":
            pattern = arg
        elif opt == b"COUNT":
            count = _int64(arg)
            if count < 1:
                return ErrorReply(ERR_SYNTAX)
            count = min(count, limits.max_keys)
        elif opt == b"TYPE":
            kind = _text(arg).lower()
        else:
            return ErrorReply(ERR_SYNTAX)
        i += 2
    return ScanRequest(int(raw), pattern, count, kind)


def _h_keys(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return KeysRequest(argv[1])


def _h_dbsize(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return DbsizeRequest()


def _lex_bound(raw: bytes, *, lower: bool) -> bytes | None:
    """A ZRANGEBYLEX-style bound as the half-open [start, end) edge it means: for the lower
    bound the first key included, for the upper one the first key excluded (None: none)."""
    if raw == b"-":
        return b"" if lower else b""
    if raw == b"+":
        return None
    if raw[:1] == b"[":
        return raw[1:] if lower else raw[1:] + b"\x00"
    if raw[:1] == b"(":
        return raw[1:] + b"\x00" if lower else raw[1:]
    raise _Reject("ERR min or max not valid string range item")


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key that starts with `prefix` (None: no such key)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _range_options(argv: Sequence[bytes]) -> tuple[int, bool]:
    limit, keys_only = 0, False
    i = 0
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"LIMIT" and i + 1 < len(argv):
            limit = _int64(argv[i + 1])
            if limit < 0:
                raise _Reject("ERR LIMIT must not be negative")
            i += 2
        elif opt == b"KEYSONLY":
            keys_only = True
            i += 1
        else:
            raise _Reject(ERR_SYNTAX)
    return limit, keys_only


def _h_range(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    lo, hi = argv[1], argv[2]
    start = _lex_bound(lo, lower=True)
    end = _lex_bound(hi, lower=False)
    limit, keys_only = _range_options(argv[3:])
    if lo == b"+" or hi == b"-":
        start, end = b"", b""  # nothing is above + or below -
    assert start is not None
    return RangeRequest(start, end, limit, keys_only)


def _h_prefix(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    limit, keys_only = _range_options(argv[2:])
    return RangeRequest(argv[1], prefix_end(argv[1]), limit, keys_only)


def _h_changes(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    if len(argv) == 2:
        return ChangesRequest(argv[1])
    if len(argv) != 4 or argv[2].upper() != b"FROM":
        return ErrorReply(ERR_SYNTAX)
    rev = _int64(argv[3])
    if rev < 0:
        return ErrorReply("ERR revision must not be negative")
    return ChangesRequest(argv[1], rev)


def _h_pubsub(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return PubSubRequest(_text(argv[0]).lower(), tuple(argv[1:]))


def _h_txn(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    op = TxnOp(_text(argv[0]).lower())
    return TxnRequest(op, _keys(argv[1:], limits) if op == TxnOp.WATCH else ())


_GLOB_SPECIAL: Final = frozenset(b"*?[\\")


def glob_prefix(pattern: bytes) -> bytes:
    """The literal prefix of a Redis glob (every matching key starts with it)."""
    for i, c in enumerate(pattern):
        if c in _GLOB_SPECIAL:
            return pattern[:i]
    return pattern


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """Redis's glob (`stringmatchlen`): ``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``."""
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            out += b".*"
        elif c == ord("?"):
            out += b"."
        elif c == ord("\\") and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == ord("["):
            j = i + 1
            negate = j < n and pattern[j] == ord("^")
            if negate:
                j += 1
            items = bytearray()
            while j < n and pattern[j] != ord("]"):
                if pattern[j] == ord("\\") and j + 1 < n:
                    j += 1
                    items += re.escape(pattern[j:j + 1])
                elif j + 2 < n and pattern[j + 1] == ord("-") and pattern[j + 2] != ord("]"):
                    a, b = sorted((pattern[j], pattern[j + 2]))
                    items += re.escape(bytes([a])) + b"-" + re.escape(bytes([b]))
                    j += 2
                else:
                    items += re.escape(pattern[j:j + 1])
                j += 1
            # An unterminated class runs to the end of the pattern, as in Redis.
            out += b"[" + (b"^" if negate else b"") + (bytes(items) or b"^\\x00-\\xff") + b"]"
            i = j
        else:
            out += re.escape(pattern[i:i + 1])
        i += 1
    rx = re.compile(bytes(out), re.DOTALL)
    return lambda key: rx.fullmatch(key) is not None


def _h_del(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    keys = _keys(argv[1:], limits)
    return WriteRequest(Command.delete(keys[0], *keys[1:]))


def _h_exists(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return ExistsRequest(_keys(argv[1:], limits))


def _h_incr(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return WriteRequest(Command.increment(_key(argv[1], limits), 1))


def _h_decr(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return WriteRequest(Command.increment(_key(argv[1], limits), -1))


def _h_incrby(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    key = _key(argv[1], limits)
    return WriteRequest(Command.increment(key, _int64(argv[2])))


def _h_decrby(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    key = _key(argv[1], limits)
    delta = _int64(argv[2])
    if delta == INT64_MIN:
        return ErrorReply("ERR decrement would overflow")
    return WriteRequest(Command.increment(key, -delta))


def _h_cas(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    key = _key(argv[1], limits)
    expected = _value(argv[2], limits)
    return WriteRequest(Command.compare_and_swap(key, expected, _value(argv[3], limits)))


def _h_info(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return InfoRequest(tuple(_text(a).lower() for a in argv[1:]))


def _h_cluster_info(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return ClusterRequest("info")


def _h_cluster_nodes(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return ClusterRequest("nodes")


def _snapshot_int(raw: bytes, what: str) -> int:
    value = _int64(raw)
    if value < 0:
        raise _Reject(f"ERR {what} must not be negative")
    return value


def _h_snapshot_create(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return SnapshotRequest("create")


def _h_snapshot_read(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    count = _snapshot_int(argv[4], "count")
    if not 0 < count <= MAX_SNAPSHOT_READ:
        return ErrorReply(f"ERR count must be between 1 and {MAX_SNAPSHOT_READ}")
    return SnapshotRequest("read", _snapshot_int(argv[2], "snapshot id"), _snapshot_int(argv[3], "offset"), count)


def _h_snapshot_release(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return SnapshotRequest("release", _snapshot_int(argv[2], "snapshot id"))


def _h_member_list(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return MemberRequest(MemberOp.LIST)


def _h_member_add(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    node_id = _node_id(argv[2])
    address = _address(argv[3])
    learner = False
    if len(argv) == 5:
        if argv[4].lower() not in (b"learner", b"--learner"):
            return ErrorReply(
                f"ERR unknown option '{_text(argv[4])}' for MEMBER ADD: the only option is LEARNER"
            )
        learner = True
    return MemberRequest(MemberOp.ADD, node_id, address, learner)


def _h_member_remove(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return MemberRequest(MemberOp.REMOVE, _node_id(argv[2]))


def _h_member_promote(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return MemberRequest(MemberOp.PROMOTE, _node_id(argv[2]))


def _h_leader_transfer(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return LeaderTransferRequest(_node_id(argv[2]))


def _h_auth(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    if len(argv) == 3:
        return AuthRequest(argv[2], username=argv[1])
    return AuthRequest(argv[1])


_PONG: Final = LocalReply("PONG")
_OK: Final = LocalReply("OK")


def _h_ping(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return _PONG if len(argv) == 1 else LocalReply(argv[1])


def _h_echo(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return LocalReply(argv[1])


def _h_select(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    index = _int64(argv[1])
    if index != 0:
        return ErrorReply("ERR DB index is out of range")
    return _OK


def _h_quit(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return LocalReply("OK", close=True)


def _h_hello(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    if len(argv) == 1:
        return HelloRequest()
    try:
        version = _int64(argv[1])
    except _Reject:
        return ErrorReply("ERR Protocol version is not an integer or out of range")
    if version not in (2, 3):
        return ErrorReply("NOPROTO sorry, this protocol version is not supported.")
    auth: AuthRequest | None = None
    name: bytes | None = None
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option == b"auth" and i + 2 < len(argv):
            auth = AuthRequest(argv[i + 2], username=argv[i + 1])
            i += 3
        elif option == b"setname" and i + 1 < len(argv):
            name = argv[i + 1]
            if any(b <= 0x20 or b >= 0x7F for b in name):
                return ErrorReply(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                )
            i += 2
        else:
            return ErrorReply(f"ERR Syntax error in HELLO option '{_text(argv[i])[:64]}'")
    return HelloRequest(version, auth, name)


def _h_command(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    # redis-cli asks for COMMAND DOCS when it starts; an empty answer makes it use its
    # built-in help. COUNT and LIST answer for real; everything else is empty.
    sub = argv[1].lower() if len(argv) > 1 else b""
    if sub == b"count":
        return LocalReply(len(COMMANDS))
    if sub == b"list":
        return LocalReply([name.lower().encode() for name in COMMANDS])
    return LocalReply([])


def _h_session_open(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    return WriteRequest(Command.open_session(limits.session_timeout_ms, limits.max_sessions, limits.session_results))


def _positive(raw: bytes, what: str, *, zero: bool = False) -> int:
    n = _int64(raw) if _INT_RE.fullmatch(raw) else -1
    if n < (0 if zero else 1):
        raise _Reject(f"ERR SESSION CALL {what} must be an integer from {0 if zero else 1} to 2^63-1")
    return n


def _h_session_call(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    sid = _positive(argv[2], "session id")
    seq = _positive(argv[3], "sequence number")
    ack = _positive(argv[4], "acknowledged floor", zero=True)
    inner = parse_command(argv[5:], limits)
    if isinstance(inner, ErrorReply):
        return inner
    if not isinstance(inner, WriteRequest) or inner.command.type in (CommandType.SESSION, CommandType.SESSION_OPEN):
        return ErrorReply("ERR SESSION CALL takes one data write (SET, INCR, DEL, CAS, ...); "
                          "send reads and every other command without a session")
    return WriteRequest(Command.session_call(sid, seq, ack, inner.command))


def _h_client_setname(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    name = argv[2]
    if any(b <= 0x20 or b >= 0x7F for b in name):
        return ErrorReply("ERR Client names cannot contain spaces, newlines or special characters.")
    return _OK


def _h_client_setinfo(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    attribute = argv[2].lower()
    if attribute not in (b"lib-name", b"lib-ver"):
        return ErrorReply(f"ERR Unrecognized option '{_text(argv[2])}'")
    return _OK


# What redis-benchmark and friends read at start-up; anything else matches nothing.
_CONFIG_VALUES: Final = {"save": b"", "appendonly": b"yes", "appendfsync": b"always", "databases": b"1"}


def _h_config_get(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    found: dict[Reply, Reply] = {}
    for raw in argv[2:]:
        pattern = _text(raw).lower()
        for name, value in _CONFIG_VALUES.items():
            if fnmatch.fnmatchcase(name, pattern):
                found.setdefault(name.encode(), value)
    return LocalReply(found)  # a map in RESP3, name/value pairs in RESP2


# --------------------------------------------------------------------------- the table


def _help_lines(container: str, subs: Sequence[CommandSpec]) -> LocalReply:
    lines: list[Reply] = [f"{container} <subcommand> [<arg> ...]. Subcommands are:"]
    for sub in subs:
        lines.append(sub.syntax.split(" ", 1)[1] if " " in sub.syntax else sub.syntax)
        lines.append(f"    {sub.summary}")
    return LocalReply(lines)


def _spec(
    name: str,
    arity: int,
    summary: str,
    syntax: str,
    example: str,
    example_reply: str,
    group: str,
    handler: Handler | None,
    args: tuple[Arg, ...] = (),
    *,
    write: bool = False,
    retry_safe: bool = False,
    dangerous: bool = False,
    no_auth: bool = False,
    max_arity: int | None = None,
    subcommands: tuple[CommandSpec, ...] = (),
) -> CommandSpec:
    return CommandSpec(
        name=name,
        arity=arity,
        summary=summary,
        syntax=syntax,
        example=example,
        example_reply=example_reply,
        group=group,
        args=args,
        write=write,
        retry_safe=retry_safe,
        dangerous=dangerous,
        no_auth=no_auth,
        max_arity=max_arity,
        subcommands=subcommands,
        handler=handler,
    )


def _container(
    name: str, group: str, summary: str, subs: tuple[CommandSpec, ...], *, retry_safe: bool = False
) -> CommandSpec:
    """A command whose first argument picks a sub-command; adds ``<NAME> HELP``."""
    everything: list[CommandSpec] = list(subs)

    def help_handler(argv: Sequence[bytes], limits: CommandLimits) -> Request:
        return _help_lines(name, everything)

    everything.append(
        _spec(
            f"{name} HELP", 2, f"List the {name} sub-commands.", f"{name} HELP", f"{name} HELP",
            "(a list of lines)", group, help_handler, retry_safe=True,
        )
    )
    names = tuple(s.words[-1] for s in everything)
    return _spec(
        name, -2, summary, f"{name} {'|'.join(names)} ...", subs[0].example, subs[0].example_reply,
        group, None, (Arg("subcommand", ArgKind.KEYWORD, choices=names),),
        retry_safe=retry_safe, subcommands=tuple(everything),
    )


K = ArgKind
_NODE = Arg("node-id", K.NODE_ID)

_TABLE: Final[tuple[CommandSpec, ...]] = (
    # ----- keys
    _spec(
        "GET", 2, "Get the value of a key (nil when it does not exist). Linearizable.",
        "GET key", "GET greeting", '"hello"', "keys", _h_get,
        (Arg("key", K.KEY),), retry_safe=True,
    ),
    _spec(
        "SET", -3,
        "Set a key to a value. OK means a majority has it on disk. NX/XX: only if it does not / "
        "does exist (nil otherwise); GET: reply with the old value; EX/PX/EXAT/PXAT: expire it; "
        "KEEPTTL: keep its deadline (a plain SET clears it).",
        "SET key value [NX|XX] [GET] [EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]",
        "SET session:1 alice EX 60", "OK", "keys", _h_set,
        (Arg("key", K.KEY), Arg("value", K.VALUE),
         Arg("option", K.KEYWORD, optional=True, multiple=True,
             choices=("NX", "XX", "GET", "EX", "PX", "EXAT", "PXAT", "KEEPTTL"))),
        write=True, max_arity=9,
    ),
    _spec(
        "SETNX", 3, "Set a key only if it does not exist: 1 if set, 0 if not.",
        "SETNX key value", "SETNX lock me", "(integer) 1", "keys", _h_setnx,
        (Arg("key", K.KEY), Arg("value", K.VALUE)), write=True,
    ),
    _spec(
        "SETEX", 4, "Set a key that expires after the given seconds.",
        "SETEX key seconds value", "SETEX session:1 60 alice", "OK", "keys", _h_setex,
        (Arg("key", K.KEY), Arg("seconds", K.INTEGER), Arg("value", K.VALUE)), write=True,
    ),
    _spec(
        "PSETEX", 4, "Set a key that expires after the given milliseconds.",
        "PSETEX key milliseconds value", "PSETEX session:1 1500 alice", "OK", "keys", _h_setex,
        (Arg("key", K.KEY), Arg("milliseconds", K.INTEGER), Arg("value", K.VALUE)), write=True,
    ),
    _spec(
        "MGET", -2, "Get the values of several keys at one point in time (nil for missing ones).",
        "MGET key [key ...]", "MGET a b", '1) "1"\n2) (nil)', "keys", _h_mget,
        (Arg("key", K.KEY, multiple=True),), retry_safe=True,
    ),
    _spec(
        "MSET", -3, "Set several keys in one log entry: all of them or none.",
        "MSET key value [key value ...]", "MSET a 1 b 2", "OK", "keys", _h_mset,
        (Arg("key", K.KEY), Arg("value", K.VALUE), Arg("more", K.STRING, optional=True, multiple=True)),
        write=True,
    ),
    _spec(
        "MSETNX", -3, "Set several keys only if none of them exists: 1 if set, 0 if not.",
        "MSETNX key value [key value ...]", "MSETNX a 1 b 2", "(integer) 1", "keys", _h_mset,
        (Arg("key", K.KEY), Arg("value", K.VALUE), Arg("more", K.STRING, optional=True, multiple=True)),
        write=True,
    ),
    _spec(
        "GETSET", 3, "Set a key and reply with its old value (nil if it did not exist).",
        "GETSET key value", "GETSET counter 0", '"41"', "keys", _h_key_value_op,
        (Arg("key", K.KEY), Arg("value", K.VALUE)), write=True,
    ),
    _spec(
        "GETDEL", 2, "Delete a key and reply with the value it had (nil if none).",
        "GETDEL key", "GETDEL token", '"abc"', "keys", _h_key_write_op,
        (Arg("key", K.KEY),), write=True,
    ),
    _spec(
        "APPEND", 3, "Append to a key's value (a missing key counts as empty); replies the new length.",
        "APPEND key value", "APPEND log line1", "(integer) 5", "keys", _h_key_value_op,
        (Arg("key", K.KEY), Arg("value", K.VALUE)), write=True,
    ),
    _spec(
        "STRLEN", 2, "The length of a key's value (0 when missing).",
        "STRLEN key", "STRLEN greeting", "(integer) 5", "keys", _h_key_read_op,
        (Arg("key", K.KEY),), retry_safe=True,
    ),
    _spec(
        "GETV", 2,
        "A key's value with its version (writes since it was created) and revision (the log "
        "index that last wrote it): [value, version, revision], or nil.",
        "GETV key", "GETV config", '1) "v1"\n2) (integer) 3\n3) (integer) 1207', "keys", _h_key_read_op,
        (Arg("key", K.KEY),), retry_safe=True,
    ),
    _spec(
        "CASV", 4,
        "Compare-and-swap on version: set key to new only if its version is the given one "
        "(0: only if it does not exist). 1 if swapped, 0 if not.",
        "CASV key version new", "CASV config 3 v2", "(integer) 1", "keys", _h_casv,
        (Arg("key", K.KEY), Arg("version", K.INTEGER), Arg("new", K.VALUE)), write=True,
    ),
    _spec(
        "DELV", 3, "Delete a key only if its version is the given one: 1 if deleted, 0 if not.",
        "DELV key version", "DELV lock 1", "(integer) 1", "keys", _h_delv,
        (Arg("key", K.KEY), Arg("version", K.INTEGER)), write=True,
    ),
    _spec(
        "DEL", -2, "Delete keys; replies with how many of them existed.",
        "DEL key [key ...]", "DEL greeting stale", "(integer) 1", "keys", _h_del,
        (Arg("key", K.KEY, multiple=True),), write=True,
    ),
    _spec(
        "EXISTS", -2, "Count how many of the keys exist (a key named twice counts twice).",
        "EXISTS key [key ...]", "EXISTS greeting", "(integer) 1", "keys", _h_exists,
        (Arg("key", K.KEY, multiple=True),), retry_safe=True,
    ),
    _spec(
        "INCR", 2, "Add 1 to the integer stored at key (a missing key counts as 0).",
        "INCR key", "INCR visits", "(integer) 1", "keys", _h_incr,
        (Arg("key", K.KEY),), write=True,
    ),
    _spec(
        "INCRBY", 3, "Add an integer to the integer stored at key (a missing key counts as 0).",
        "INCRBY key increment", "INCRBY visits 10", "(integer) 11", "keys", _h_incrby,
        (Arg("key", K.KEY), Arg("increment", K.INTEGER)), write=True,
    ),
    _spec(
        "DECR", 2, "Subtract 1 from the integer stored at key (a missing key counts as 0).",
        "DECR key", "DECR stock", "(integer) -1", "keys", _h_decr,
        (Arg("key", K.KEY),), write=True,
    ),
    _spec(
        "DECRBY", 3, "Subtract an integer from the integer stored at key.",
        "DECRBY key decrement", "DECRBY stock 5", "(integer) -6", "keys", _h_decrby,
        (Arg("key", K.KEY), Arg("decrement", K.INTEGER)), write=True,
    ),
    _spec(
        "CAS", 4,
        "Compare-and-swap: set key to new only if it currently holds expected. "
        "1 if swapped, 0 if not (a missing key matches nothing).",
        "CAS key expected new", "CAS greeting hello bonjour", "(integer) 1", "keys", _h_cas,
        (Arg("key", K.KEY), Arg("expected", K.VALUE), Arg("new", K.VALUE)), write=True,
    ),
    # ----- expiry
    _spec(
        "EXPIRE", -3,
        "Make a key expire after the given seconds (0 or less deletes it). NX: only if it has no "
        "deadline; XX: only if it has one; GT/LT: only if the new deadline is later/earlier. 1 if set.",
        "EXPIRE key seconds [NX|XX|GT|LT]", "EXPIRE session:1 60", "(integer) 1", "expiry", _h_expire,
        (Arg("key", K.KEY), Arg("seconds", K.INTEGER),
         Arg("condition", K.KEYWORD, optional=True, choices=("NX", "XX", "GT", "LT"))),
        write=True, max_arity=4,
    ),
    _spec(
        "PEXPIRE", -3, "EXPIRE in milliseconds.",
        "PEXPIRE key milliseconds [NX|XX|GT|LT]", "PEXPIRE session:1 1500", "(integer) 1", "expiry",
        _h_expire,
        (Arg("key", K.KEY), Arg("milliseconds", K.INTEGER),
         Arg("condition", K.KEYWORD, optional=True, choices=("NX", "XX", "GT", "LT"))),
        write=True, max_arity=4,
    ),
    _spec(
        "EXPIREAT", -3, "Make a key expire at a Unix time in seconds (the past deletes it).",
        "EXPIREAT key unix-seconds [NX|XX|GT|LT]", "EXPIREAT session:1 1893456000", "(integer) 1",
        "expiry", _h_expire,
        (Arg("key", K.KEY), Arg("unix-seconds", K.INTEGER),
         Arg("condition", K.KEYWORD, optional=True, choices=("NX", "XX", "GT", "LT"))),
        write=True, max_arity=4,
    ),
    _spec(
        "PEXPIREAT", -3, "EXPIREAT in milliseconds.",
        "PEXPIREAT key unix-ms [NX|XX|GT|LT]", "PEXPIREAT session:1 1893456000000", "(integer) 1",
        "expiry", _h_expire,
        (Arg("key", K.KEY), Arg("unix-ms", K.INTEGER),
         Arg("condition", K.KEYWORD, optional=True, choices=("NX", "XX", "GT", "LT"))),
        write=True, max_arity=4,
    ),
    _spec(
        "PERSIST", 2, "Remove a key's deadline: 1 if it had one.",
        "PERSIST key", "PERSIST session:1", "(integer) 1", "expiry", _h_key_write_op,
        (Arg("key", K.KEY),), write=True,
    ),
    _spec(
        "TTL", 2, "Seconds until a key expires: -1 if it never does, -2 if it does not exist.",
        "TTL key", "TTL session:1", "(integer) 59", "expiry", _h_key_read_op,
        (Arg("key", K.KEY),), retry_safe=True,
    ),
    _spec(
        "PTTL", 2, "TTL in milliseconds.", "PTTL key", "PTTL session:1", "(integer) 59000", "expiry",
        _h_key_read_op, (Arg("key", K.KEY),), retry_safe=True,
    ),
    # ----- the keyspace
    _spec(
        "SCAN", -2,
        "Walk the keys a few at a time: reply [next-cursor, keys]; start and end at 0. Every key "
        "present for the whole walk is returned at least once, on any node.",
        "SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]", "SCAN 0 MATCH user:* COUNT 100",
        '1) "4611686018427387904"\n2) 1) "user:7"', "keyspace", _h_scan,
        (Arg("cursor", K.INTEGER),
         Arg("option", K.KEYWORD, optional=True, multiple=True, choices=("MATCH", "COUNT", "TYPE"))),
        retry_safe=True, max_arity=8,
    ),
    _spec(
        "KEYS", 2,
        "Every key matching a glob pattern, in byte order; refused on a large keyspace (use SCAN). "
        "A pattern with a literal prefix (user:*) only examines the keys under it.",
        "KEYS pattern", "KEYS user:*", '1) "user:1"', "keyspace", _h_keys,
        (Arg("pattern", K.STRING),), retry_safe=True,
    ),
    _spec(
        "DBSIZE", 1, "The number of keys.", "DBSIZE", "DBSIZE", "(integer) 42", "keyspace", _h_dbsize,
        retry_safe=True,
    ),
    _spec(
        "RANGE", -3,
        "Keys in byte order between min and max ([a inclusive, (a exclusive, - and + unbounded, "
        "as ZRANGEBYLEX): [key, value, ...], at most LIMIT pairs; KEYSONLY for keys alone.",
        "RANGE min max [LIMIT count] [KEYSONLY]", "RANGE [user: (user; LIMIT 10",
        '1) "user:1"\n2) "alice"', "keyspace", _h_range,
        (Arg("min", K.STRING), Arg("max", K.STRING),
         Arg("option", K.KEYWORD, optional=True, multiple=True, choices=("LIMIT", "KEYSONLY"))),
        retry_safe=True, max_arity=6,
    ),
    _spec(
        "PREFIX", -2,
        "Keys that start with a prefix, in byte order (etcd's get --prefix): [key, value, ...].",
        "PREFIX prefix [LIMIT count] [KEYSONLY]", "PREFIX user: LIMIT 10", '1) "user:1"\n2) "alice"',
        "keyspace", _h_prefix,
        (Arg("prefix", K.STRING),
         Arg("option", K.KEYWORD, optional=True, multiple=True, choices=("LIMIT", "KEYSONLY"))),
        retry_safe=True, max_arity=5,
    ),
    _spec(
        "CHANGES", -2,
        "Follow every committed change under a prefix, in commit order, on any node; resume "
        "after a revision with FROM. The connection then streams [\"change\", revision, "
        "[key, value-or-nil, ...]] until it closes.",
        "CHANGES prefix [FROM revision]", "CHANGES user: FROM 1200",
        '1) "change"\n2) (integer) 1201\n3) 1) "user:7"\n   2) "alice"', "keyspace", _h_changes,
        (Arg("prefix", K.STRING), Arg("from", K.KEYWORD, optional=True, choices=("FROM",)),
         Arg("revision", K.INTEGER, optional=True)),
        retry_safe=True, max_arity=4,
    ),
    _spec(
        "SUBSCRIBE", -2,
        "Redis keyspace notifications, live: __keyspace@0__:<key> says set or del, "
        "__keyevent@0__:set|del names the key. Not resumable: use CHANGES for that.",
        "SUBSCRIBE channel [channel ...]", "SUBSCRIBE __keyspace@0__:config",
        '1) "message"\n2) "__keyspace@0__:config"\n3) "set"', "keyspace", _h_pubsub,
        (Arg("channel", K.STRING, multiple=True),), retry_safe=True,
    ),
    _spec(
        "PSUBSCRIBE", -2, "SUBSCRIBE to every channel matching a glob pattern.",
        "PSUBSCRIBE pattern [pattern ...]", "PSUBSCRIBE __keyspace@0__:user:*",
        '1) "pmessage"\n2) "__keyspace@0__:user:*"\n3) "__keyspace@0__:user:1"\n4) "set"', "keyspace",
        _h_pubsub, (Arg("pattern", K.STRING, multiple=True),), retry_safe=True,
    ),
    _spec(
        "UNSUBSCRIBE", -1, "Stop receiving channels (all when none is named).",
        "UNSUBSCRIBE [channel ...]", "UNSUBSCRIBE", '1) "unsubscribe"', "keyspace", _h_pubsub,
        (Arg("channel", K.STRING, optional=True, multiple=True),), retry_safe=True,
    ),
    _spec(
        "PUNSUBSCRIBE", -1, "Stop receiving patterns (all when none is named).",
        "PUNSUBSCRIBE [pattern ...]", "PUNSUBSCRIBE", '1) "punsubscribe"', "keyspace", _h_pubsub,
        (Arg("pattern", K.STRING, optional=True, multiple=True),), retry_safe=True,
    ),
    # ----- transactions
    _spec(
        "MULTI", 1, "Start a transaction: later commands are queued until EXEC.",
        "MULTI", "MULTI", "OK", "transactions", _h_txn,
    ),
    _spec(
        "EXEC", 1,
        "Commit the queued commands as one log entry: an array of their replies, or nil if a "
        "WATCHed key changed (then nothing was written).",
        "EXEC", "EXEC", '1) OK\n2) (integer) 2', "transactions", _h_txn, write=True,
    ),
    _spec(
        "DISCARD", 1, "Drop the queued commands.", "DISCARD", "DISCARD", "OK", "transactions", _h_txn,
    ),
    _spec(
        "WATCH", -2,
        "Make the next EXEC fail if any of these keys is written (or expires) before it.",
        "WATCH key [key ...]", "WATCH balance", "OK", "transactions", _h_txn,
        (Arg("key", K.KEY, multiple=True),), retry_safe=True,
    ),
    _spec(
        "UNWATCH", 1, "Forget the WATCHed keys.", "UNWATCH", "UNWATCH", "OK", "transactions", _h_txn,
        retry_safe=True,
    ),
    # ----- cluster
    _spec(
        "INFO", -1,
        "Node status as field:value lines: role, term, leader, commit and applied index, members.",
        "INFO [section ...]", "INFO raft", "role:leader\nterm:3\n...", "cluster", _h_info,
        (Arg("section", K.KEYWORD, optional=True, multiple=True, choices=INFO_SECTIONS),),
        retry_safe=True,
    ),
    _container(
        "CLUSTER", "cluster", "Cluster-wide status.",
        (
            _spec(
                "CLUSTER INFO", 2,
                "Cluster state (Healthy, Degraded, NoQuorum), leader, term, member counts.",
                "CLUSTER INFO", "CLUSTER INFO", "cluster_state:Healthy\n...", "cluster",
                _h_cluster_info, retry_safe=True,
            ),
            _spec(
                "CLUSTER NODES", 2,
                "One line per member: id, address, role, match index, health.",
                "CLUSTER NODES", "CLUSTER NODES", "n1 127.0.0.1:7001 leader ...", "cluster",
                _h_cluster_nodes, retry_safe=True,
            ),
        ),
        retry_safe=True,
    ),
    _container(
        "MEMBER", "cluster", "Membership changes, one server at a time.",
        (
            _spec(
                "MEMBER LIST", 2, "List the members with their role and address.",
                "MEMBER LIST", "MEMBER LIST", "1) n1 127.0.0.1:7001 voter ...", "cluster",
                _h_member_list, retry_safe=True,
            ),
            _spec(
                "MEMBER ADD", -4,
                "Add a node: as a voter, or as a non-voting LEARNER that catches up first.",
                "MEMBER ADD node-id address [LEARNER]", "MEMBER ADD n4 127.0.0.1:7004 LEARNER",
                "OK", "cluster", _h_member_add,
                (_NODE, Arg("address", K.ADDRESS),
                 Arg("learner", K.KEYWORD, optional=True, choices=("LEARNER",))),
                write=True, max_arity=5,
            ),
            _spec(
                "MEMBER REMOVE", 3, "Remove a node from the cluster (it stops counting for quorum).",
                "MEMBER REMOVE node-id", "MEMBER REMOVE n4", "OK", "cluster", _h_member_remove,
                (_NODE,), write=True, dangerous=True,
            ),
            _spec(
                "MEMBER PROMOTE", 3, "Make a learner a voting member.",
                "MEMBER PROMOTE node-id", "MEMBER PROMOTE n4", "OK", "cluster", _h_member_promote,
                (_NODE,), write=True,
            ),
        ),
    ),
    _container(
        "SNAPSHOT", "cluster", "Consistent backups (what `aegis snapshot save` uses).",
        (
            _spec(
                "SNAPSHOT CREATE", 2,
                "Take a linearizable snapshot of the state machine; replies id, index, term, keys, size.",
                "SNAPSHOT CREATE", "SNAPSHOT CREATE", "1) (integer) 1 2) (integer) 42 ...", "cluster",
                _h_snapshot_create,
            ),
            _spec(
                "SNAPSHOT READ", 5, "Read bytes of a created snapshot file.",
                "SNAPSHOT READ id offset count", "SNAPSHOT READ 1 0 1048576", "(binary)", "cluster",
                _h_snapshot_read, (Arg("id", K.INTEGER), Arg("offset", K.INTEGER), Arg("count", K.INTEGER)),
                retry_safe=True,
            ),
            _spec(
                "SNAPSHOT RELEASE", 3, "Delete a created snapshot file on the node.",
                "SNAPSHOT RELEASE id", "SNAPSHOT RELEASE 1", "OK", "cluster", _h_snapshot_release,
                (Arg("id", K.INTEGER),),
            ),
        ),
    ),
    _container(
        "LEADER", "cluster", "Leadership.",
        (
            _spec(
                "LEADER TRANSFER", 3,
                "Hand leadership to another voter; writes pause briefly while it takes over.",
                "LEADER TRANSFER node-id", "LEADER TRANSFER n2", "OK", "cluster",
                _h_leader_transfer, (_NODE,), dangerous=True,
            ),
        ),
    ),
    _container(
        "SESSION", "keys", "Exactly-once writes: a retried write applies once and answers its first reply.",
        (
            _spec(
                "SESSION OPEN", 2,
                "Open a client session (through the log); replies its id. It expires after the "
                "node's --session-timeout without a call.",
                "SESSION OPEN", "SESSION OPEN", "(integer) 1073741824", "keys", _h_session_open,
                write=True,
            ),
            _spec(
                "SESSION CALL", -6,
                "Run a write as call seq of a session. Sent again (after -TIMEOUT or a lost "
                "connection, to any node) it is not applied twice: the reply is the first one. "
                "ack: the lowest seq whose reply you have not received (0: none yet); results "
                "below it are forgotten and such calls refused (-STALESEQ).",
                "SESSION CALL session-id seq ack command [arg ...]", "SESSION CALL 1073741824 1 1 INCR visits",
                "(integer) 1", "keys", _h_session_call,
                (Arg("session-id", K.INTEGER), Arg("seq", K.INTEGER), Arg("ack", K.INTEGER),
                 Arg("command", K.STRING), Arg("arg", K.STRING, optional=True, multiple=True)),
                write=True, retry_safe=True,
            ),
        ),
    ),
    # ----- connection
    _spec(
        "AUTH", -2, "Authenticate with the node's token (needed when it runs with one).",
        "AUTH [username] token", "AUTH s3cret", "OK", "connection", _h_auth,
        (Arg("token", K.TOKEN),), retry_safe=True, no_auth=True, max_arity=3,
    ),
    _spec(
        "PING", -1, "Check the connection: PONG, or the message back.",
        "PING [message]", "PING", "PONG", "connection", _h_ping,
        (Arg("message", K.STRING, optional=True),), retry_safe=True, max_arity=2,
    ),
    _spec(
        "ECHO", 2, "Reply with the message.", "ECHO message", "ECHO hi", '"hi"', "connection",
        _h_echo, (Arg("message", K.STRING),), retry_safe=True,
    ),
    _spec(
        "SELECT", 2, "Select a database; Aegis has only database 0.",
        "SELECT index", "SELECT 0", "OK", "connection", _h_select,
        (Arg("index", K.INTEGER),), retry_safe=True,
    ),
    _spec(
        "QUIT", 1, "Close the connection.", "QUIT", "QUIT", "OK", "connection", _h_quit,
        retry_safe=True, no_auth=True,
    ),
    _container(
        "CLIENT", "connection", "Connection metadata Redis clients send.",
        (
            _spec(
                "CLIENT SETNAME", 3, "Name this connection.", "CLIENT SETNAME name",
                "CLIENT SETNAME shell", "OK", "connection", _h_client_setname,
                (Arg("name", K.STRING),), retry_safe=True,
            ),
            _spec(
                "CLIENT SETINFO", 4, "Record the client library name or version.",
                "CLIENT SETINFO LIB-NAME|LIB-VER value", "CLIENT SETINFO LIB-NAME redis-py", "OK",
                "connection", _h_client_setinfo,
                (Arg("attribute", K.KEYWORD, choices=("LIB-NAME", "LIB-VER")), Arg("value", K.STRING)),
                retry_safe=True,
            ),
        ),
        retry_safe=True,
    ),
    # ----- compat
    _spec(
        "HELLO", -1,
        "Protocol handshake: RESP2 (Aegis's own) or RESP3 (what redis-py 8 asks for).",
        "HELLO [protover [AUTH username token] [SETNAME name]]", "HELLO 2",
        "1) \"server\" 2) \"aegis\" ...", "compat", _h_hello,
        (Arg("protover", K.KEYWORD, optional=True, choices=("2", "3")),),
        retry_safe=True, no_auth=True,
    ),
    _spec(
        "COMMAND", -1, "Command introspection for redis-cli (COUNT and LIST answer; DOCS is empty).",
        "COMMAND [DOCS|COUNT|LIST]", "COMMAND COUNT", "(integer) 22", "compat", _h_command,
        (Arg("subcommand", K.KEYWORD, optional=True, choices=("DOCS", "COUNT", "LIST")),),
        retry_safe=True,
    ),
    _container(
        "CONFIG", "compat", "Configuration, read-only (Aegis is configured by its flags).",
        (
            _spec(
                "CONFIG GET", -3, "Read configuration parameters (glob patterns allowed).",
                "CONFIG GET parameter [parameter ...]", "CONFIG GET appendonly",
                '1) "appendonly" 2) "yes"', "compat", _h_config_get,
                (Arg("parameter", K.STRING, multiple=True),), retry_safe=True,
            ),
        ),
        retry_safe=True,
    ),
)

#: Every top-level command by upper-case name, in the order HELP lists them.
COMMANDS: Final[Mapping[str, CommandSpec]] = {spec.name: spec for spec in _TABLE}

_BY_LOWER_NAME: Final[dict[bytes, CommandSpec]] = {
    name.lower().encode(): spec for name, spec in COMMANDS.items()
}


def lookup(*words: str) -> CommandSpec | None:
    """The spec for ``lookup("member", "add")`` (case-insensitive); the container's own spec
    when the sub-command is missing or unknown; None for an unknown command."""
    if not words:
        return None
    spec = COMMANDS.get(words[0].upper())
    if spec is None or not spec.subcommands or len(words) < 2:
        return spec
    return spec.subcommand(words[1]) or spec


def allowed_before_auth(name: bytes) -> bool:
    """Whether a connection that has not authenticated may run this command (AUTH, HELLO,
    QUIT); every other command gets `ERR_NOAUTH`."""
    spec = _BY_LOWER_NAME.get(name.lower())
    return spec is not None and spec.no_auth


def _unknown_command(argv: Sequence[bytes]) -> ErrorReply:
    args = ""
    for raw in argv[1:]:
        if len(args) >= 128:
            break
        args += f"'{_text(raw)[: 128 - len(args)]}' "
    return ErrorReply(
        f"ERR unknown command '{_text(argv[0])[:128]}', with args beginning with: {args}"
    )


def _arity_ok(spec: CommandSpec, argc: int) -> bool:
    if spec.arity >= 0:
        return argc == spec.arity
    return argc >= -spec.arity and (spec.max_arity is None or argc <= spec.max_arity)


def parse_command(argv: Sequence[bytes], limits: CommandLimits = DEFAULT_LIMITS) -> Request:
    """Validate one command (argv from the parser) into a request or an `ErrorReply`."""
    if not argv:
        return ErrorReply("ERR empty command")
    spec = _BY_LOWER_NAME.get(argv[0].lower())
    if spec is None:
        return _unknown_command(argv)
    if spec.subcommands:
        if len(argv) < 2:
            return ErrorReply(f"ERR wrong number of arguments for '{spec.fullname}' command")
        sub = spec.subcommand(_text(argv[1]))
        if sub is None:
            return ErrorReply(
                f"ERR unknown subcommand '{_text(argv[1])[:128]}'. Try {spec.name} HELP."
            )
        spec = sub
    if not _arity_ok(spec, len(argv)):
        return ErrorReply(f"ERR wrong number of arguments for '{spec.fullname}' command")
    assert spec.handler is not None
    try:
        return spec.handler(argv, limits)
    except _Reject as reject:
        return ErrorReply(reject.text)
