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
from .protocol import OK, Reply, encode, encode_bulk, encode_error, encode_integer
from .state import Command, CommandResult, CommandType

__all__ = [
    "CommandLimits",
    "DEFAULT_LIMITS",
    "WriteRequest",
    "ReadRequest",
    "ExistsRequest",
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

    def __post_init__(self) -> None:
        if min(self.max_key_len, self.max_value_len, self.max_keys) < 1:
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


def encode_result(command: Command, result: CommandResult, *, resp3: bool = False) -> bytes:
    """The RESP reply for an applied (or read) command: what the client of §4 expects.

    SET → ``+OK``; GET → bulk or nil; DEL, INCR*, CAS → integer; a failed result (an
    INCR of a non-integer, an overflow) → ``-ERR <error>``. `resp3` for connections that
    sent ``HELLO 3`` (it only changes how nil is spelled).
    """
    if not result.success:
        return encode_error(f"ERR {result.error}")
    if command.type == CommandType.SET:
        return OK
    value = result.value
    if isinstance(value, int):
        return encode_integer(value)
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


_SET_UNSUPPORTED: Final = {
    b"nx": "use CAS for conditional writes",
    b"xx": "use CAS for conditional writes",
    b"get": "use GET, then SET (or CAS)",
    b"ex": "Aegis keys do not expire",
    b"px": "Aegis keys do not expire",
    b"exat": "Aegis keys do not expire",
    b"pxat": "Aegis keys do not expire",
    b"keepttl": "Aegis keys do not expire",
}


def _h_set(argv: Sequence[bytes], limits: CommandLimits) -> Request:
    if len(argv) > 3:
        option = argv[3]
        why = _SET_UNSUPPORTED.get(option.lower())
        if why is None:
            return ErrorReply(ERR_SYNTAX)
        return ErrorReply(f"ERR SET option '{_text(option).upper()}' is not supported: {why}")
    return WriteRequest(Command.set(_key(argv[1], limits), _value(argv[2], limits)))


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
        "SET", -3, "Set a key to a value. OK means a majority has it on disk.",
        "SET key value", "SET greeting hello", "OK", "keys", _h_set,
        (Arg("key", K.KEY), Arg("value", K.VALUE)), write=True,
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
