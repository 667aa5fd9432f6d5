"""The trio client of Aegis: used by the CLI, the shell, the benchmark and the tests.

Theory of operation
-------------------
An `AegisClient` holds a list of seed addresses and at most one TCP connection, to one of
them. Any node accepts any command (a follower forwards to the leader), so the client does
not chase the leader itself: it stays on a node that answers and moves to the next seed when
that node stops answering.

One request at a time per client: a `trio.Lock` serialises callers, so tasks may share a
client safely; `pipeline` sends many commands in one write and then reads their replies.
For parallelism, open several clients.

Retrying is where a client can lose or double a write, so the rules are strict:

* A connection that fails before anything was sent (refused, or found closed by the
  server while idle) is replaced silently: the command was not sent, so nothing can double.
  If no seed accepts a connection (one pass over them, no waiting), `NodeUnavailableError`.
* A connection lost *after* the command was sent leaves the outcome unknown: a read-only,
  idempotent command (``retry_safe`` in `aegis.commands.COMMANDS`: GET, EXISTS, PING, INFO,
  CLUSTER …) is resent on a new connection; a write raises `ConnectionLostError` and is
  never resent. A reply that has not arrived by the deadline raises `RequestTimeoutError`.
* ``-TRYAGAIN`` means "not applied, try again": every command is retried after a back-off.
  ``-NOLEADER`` and ``-TIMEOUT`` may hide an applied write: only safe commands are retried;
  a write raises `NoLeaderError` / `RequestTimeoutError` for the caller to sort out.
  On ``-NOLEADER`` the client also moves to the next seed (that node may be cut off).
* Every call has one deadline (``timeout``) covering connecting, retries and back-offs.
  When it passes, the last error is raised (or `RequestTimeoutError`).
* ``execute(..., pinned=True)`` is for a command that relies on what the server keeps for
  one connection (a MULTI's queue, WATCHed keys): it goes on the current connection or not
  at all. No connecting, no resending, no retrying, and ``-NOLEADER`` keeps the connection;
  if it is gone, `ConnectionGoneError` (nothing was sent, but that state went with it).

* ``stream(...)`` is for a command after which the server only pushes (CHANGES, SUBSCRIBE):
  it connects as usual (nothing is sent before), the first reply must come by the deadline,
  later ones are read as they come, and nothing is resent. The connection is the stream's
  alone while the block runs and is closed when it exits, which is how a client stops a
  stream; the next command connects afresh.

Writes are exactly-once (Raft dissertation §6.3; see aegis.sessions). Unless built with
``sessions=False``, the client opens a session (``SESSION OPEN``) before its first write and
sends every data write (the ``write`` commands of the keys and expiry groups: SET, INCR, DEL,
CAS, EXPIRE ...) as ``SESSION CALL id seq ack …``, each with the next sequence number. Such a
call is safe to resend, so it is retried like a read: after ``-TIMEOUT``, ``-NOLEADER``,
``-TRYAGAIN`` or a lost connection, on any node, with the same id and sequence number, until
the deadline; the cluster applies it once and answers every copy with the first result.
``ack`` tells the cluster the lowest sequence number still waiting for its reply, so it can
forget the results below. ``-NOSESSION`` (the session expired or was evicted) on a first
attempt opens a new session and sends the write again (the refused copy did nothing); on a
resend the outcome is unknown and `RequestTimeoutError` says so. A node without sessions
(``-ERR unknown command``) turns them off for the client. Pinned commands (inside MULTI)
are sent as they are.

Any exception or cancellation between sending a request and reading its reply closes the
connection: a late reply would otherwise be read as the answer to the next command.

Connection state is observable (`state`, `address`, `connected`, `last_error`) so the shell
can show where it is and whether it is connected.
"""

from __future__ import annotations

import enum
import random
import select
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeAlias

import trio

from .commands import lookup
from .errors import (
    AegisError,
    CommandError,
    DiskFullError,
    NoLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TryAgainError,
    UnknownOutcomeError,
)
from .node import parse_address
from .protocol import (
    NeedData,
    Reply,
    RespError,
    RespProtocolError,
    RespReplyParser,
    encode_command,
)

__all__ = [
    "AegisClient",
    "ReplyStream",
    "open_client",
    "ConnectionState",
    "RetryPolicy",
    "NodeUnavailableError",
    "ConnectionLostError",
    "ConnectionGoneError",
    "AuthenticationError",
    "Arg",
    "error_from_reply",
    "is_retry_safe",
    "is_session_write",
    "normalize_address",
    "parse_info",
    "parse_info_sections",
    "parse_cluster_nodes",
]

#: What a command argument may be: bytes as-is, str as UTF-8, numbers in decimal.
Arg: TypeAlias = bytes | bytearray | memoryview | str | int | float

DEFAULT_PORT: Final = 7001
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
_RECEIVE_SIZE: Final = 64 * 1024


class NodeUnavailableError(AegisError):
    """No seed address accepted a connection. Nothing was sent: a definite failure."""


class ConnectionLostError(UnknownOutcomeError):
    """The connection broke after the request was sent; a write may or may not have applied."""


class ConnectionGoneError(NodeUnavailableError):
    """A pinned command found its connection gone before sending: nothing was sent, and
    what the server kept for that connection (a MULTI's queue, WATCHed keys) is lost."""


class AuthenticationError(CommandError):
    """The node wants a token (``-NOAUTH``) or refused the one given (``-WRONGPASS``)."""


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off between retries, with jitter; the call's deadline bounds it."""

    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.25  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt, 64))
        return base * (1 + self.jitter * (2 * rng.random() - 1))


# --------------------------------------------------------------------------- helpers


def normalize_address(text: str) -> str:
    """``"7001"`` → ``"127.0.0.1:7001"``; ``"host:port"`` and ``"[v6]:port"`` checked."""
    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, port = parse_address(text)
    if port == 0:
        raise ValueError(f"bad address {text!r}: port 0 cannot be dialled")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_address(address: str) -> tuple[str, int]:
    host, port = parse_address(address)
    return host, port


def error_from_reply(reply: RespError) -> AegisError:
    """The `aegis.errors` exception for an error reply (kind first word, as sent)."""
    kind, message = reply.kind, reply.message
    if kind == "ERR":
        return CommandError(message)
    if kind == "NOLEADER":
        return NoLeaderError(message or "no leader is known")
    if kind == "TIMEOUT":
        return RequestTimeoutError(message)
    if kind == "TRYAGAIN":
        return TryAgainError(message)
    if kind == "DISKFULL":
        return DiskFullError(message)
    if kind in ("NOAUTH", "WRONGPASS"):
        return AuthenticationError(reply.text)
    return CommandError(reply.text)


def _name_of(arg: Arg) -> str:
    if isinstance(arg, str):
        return arg
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("utf-8", "replace")
    return str(arg)


def is_retry_safe(args: Sequence[Arg]) -> bool:
    """Whether resending this command after an unknown outcome cannot change its effect."""
    if not args:
        return False
    words = [_name_of(args[0])]
    if len(args) > 1:
        words.append(_name_of(args[1]))
    spec = lookup(*words)
    if spec is None:
        return False
    if spec.subcommands:  # container with an unknown or missing sub-command: the node says no
        return True
    return spec.retry_safe


def is_session_write(args: Sequence[Arg]) -> bool:
    """Whether the client sends this command in its session: a data write (the keys and
    expiry groups), not SESSION itself, MULTI/EXEC, or an admin command."""
    if not args:
        return False
    spec = lookup(_name_of(args[0]))
    return spec is not None and spec.write and not spec.subcommands and spec.group in ("keys", "expiry")


def parse_info_sections(text: bytes | str) -> dict[str, dict[str, str]]:
    """INFO's ``# Section`` / ``field:value`` lines as ``{section: {field: value}}``
    (section names lower-case; fields before any header go under ``""``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            current = sections.setdefault(line.lstrip("#").strip().lower(), {})
            continue
        field, sep, value = line.partition(":")
        if sep:
            current[field] = value
    if not sections[""]:
        del sections[""]
    return sections


def parse_info(text: bytes | str) -> dict[str, str]:
    """INFO's ``field:value`` lines as one flat dict (section headers dropped)."""
    flat: dict[str, str] = {}
    for fields in parse_info_sections(text).values():
        flat.update(fields)
    return flat


def parse_cluster_nodes(text: bytes | str) -> list[dict[str, str]]:
    """CLUSTER NODES, one member per line: ``<id> <address> key=value …``.

    The first two bare words are ``id`` and ``address``; ``key=value`` words become fields;
    further bare words are joined, comma-separated, under ``flags``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    nodes: list[dict[str, str]] = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        node: dict[str, str] = {}
        bare: list[str] = []
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key:
                node[key] = value
            else:
                bare.append(word)
        for name, value in zip(("id", "address"), bare):
            node.setdefault(name, value)
        if len(bare) > 2:
            node.setdefault("flags", ",".join(bare[2:]))
        nodes.append(node)
    return nodes


def _as_text(reply: Reply) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    raise ProtocolError(f"expected a string reply, got {type(reply).__name__}")


def _as_int(reply: Reply) -> int:
    if isinstance(reply, int) and not isinstance(reply, bool):
        return reply
    raise ProtocolError(f"expected an integer reply, got {type(reply).__name__}")


# --------------------------------------------------------------------------- connection


class _Closed(Exception):
    """The server closed the connection (EOF)."""


class _Connection:
    """One TCP stream and its reply parser. Not shared: the client's lock guards it."""

    __slots__ = ("stream", "address", "parser")

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], address: str) -> None:
        self.stream = stream
        self.address = address
        self.parser = RespReplyParser()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_reply(self) -> Reply:
        while True:
            reply = self.parser.next_reply()
            if not isinstance(reply, NeedData):
                return reply
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise _Closed(f"{self.address} closed the connection")
            self.parser.feed(data)

    def looks_closed(self) -> bool:
        """Whether the idle connection has something to read (EOF, or bytes nobody asked
        for): either way it cannot carry a request. A zero-timeout poll, no I/O."""
        if self.parser.buffered > 0:
            return True
        try:
            tcp = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
            fd = tcp.socket.fileno()
            if fd < 0:
                return True
            if hasattr(select, "poll"):  # select() cannot take descriptors above 1023
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class ReplyStream:
    """The replies of a streaming command, in order, as the server sends them (see
    `AegisClient.stream`). Only valid inside the ``async with`` that made it."""

    __slots__ = ("address", "_conn", "_first")

    def __init__(self, conn: _Connection, first: Reply) -> None:
        self.address = conn.address
        self._conn = conn
        self._first: list[Reply] = [first]

    async def receive(self) -> Reply:
        """The next reply, however long the stream stays quiet. An error reply raises its
        `AegisError` (the server ends a CHANGES stream with one); a lost connection
        raises `ConnectionLostError`."""
        if self._first:
            reply = self._first.pop()
        else:
            try:
                reply = await self._conn.read_reply()
            except (OSError, _Closed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                why = "the node closed it" if isinstance(exc, _Closed) else _describe(exc)
                raise ConnectionLostError(f"lost the stream from {self.address} ({why})") from None
            except RespProtocolError as exc:
                raise ProtocolError(f"{self.address} sent a malformed reply: {exc}") from None
        if isinstance(reply, RespError):
            raise error_from_reply(reply)
        return reply


# --------------------------------------------------------------------------- the client


class AegisClient:
    """A connection to an Aegis cluster through its seed addresses.

    ::

        async with open_client(["127.0.0.1:7001", "127.0.0.1:7002"]) as client:
            await client.set("greeting", "hello")
            assert await client.get("greeting") == b"hello"
    """

    def __init__(
        self,
        addresses: str | Iterable[str],
        *,
        token: str | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        client_name: str | None = None,
        seed: int | None = None,
        sessions: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a.strip()]
        seeds = list(dict.fromkeys(normalize_address(a) for a in addresses))
        if not seeds:
            raise ValueError("need at least one address")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._seeds = seeds
        self._next = 0  # index of the seed to try first on the next connect
        self._token = token.encode() if isinstance(token, str) else token
        self._client_name = client_name
        self._ssl = ssl_context  # TLS to every node (aegis.tls.client_context)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry
        self._rng = random.Random(seed)
        self._conn: _Connection | None = None
        self._lock = trio.Lock()
        self._state = ConnectionState.DISCONNECTED
        self._last_error: str | None = None
        self.sessions = sessions  # send data writes in a session (exactly-once retries)
        self.session_id: int | None = None
        self._next_seq = 1
        self._waiting: set[int] = set()  # sequence numbers sent whose reply has not come
        self._opening: trio.Lock = trio.Lock()

    @classmethod
    async def connect(
        cls,
        addresses: str | Iterable[str],
        *,
        token: str | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        client_name: str | None = None,
        seed: int | None = None,
        sessions: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AegisClient:
        """A client already connected to one of `addresses` (NodeUnavailableError if none)."""
        client = cls(
            addresses,
            token=token,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retry=retry,
            client_name=client_name,
            seed=seed,
            sessions=sessions,
            ssl_context=ssl_context,
        )
        await client.ensure_connected()
        return client

    # -- observable state

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(self._seeds)

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def address(self) -> str:
        """The node connected to, or the one the next command will try first."""
        return self._conn.address if self._conn is not None else self._seeds[self._next]

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt or connection failed (None after a success)."""
        return self._last_error

    def add_seed(self, address: str) -> None:
        """Remember another address to fall back on (e.g. a member learned from the cluster)."""
        address = normalize_address(address)
        if address not in self._seeds:
            self._seeds.append(address)

    # -- life cycle

    async def ensure_connected(self, timeout: float | None = None) -> str:
        """Connect now if not connected; return the address. NodeUnavailableError if none."""
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        async with self._lock:
            conn = await self._ensure(deadline)
            return conn.address

    async def disconnect(self) -> None:
        """Drop the connection; the next command reconnects."""
        async with self._lock:
            await self._drop(None, advance=False)

    async def aclose(self) -> None:
        await self.disconnect()
        self._state = ConnectionState.CLOSED

    async def __aenter__(self) -> AegisClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- commands

    async def execute(self, *args: Arg, timeout: float | None = None, pinned: bool = False) -> Reply:
        """Run one command; its reply (str for +simple, bytes for bulk, int, None, list).

        Error replies raise (`CommandError`, `NoLeaderError`, …); see the module docstring
        for what is retried, and for `pinned`.
        """
        if not args:
            raise ValueError("execute() needs a command")
        if not pinned and self.sessions and is_session_write(args):
            return await self._session_write(args, timeout)
        payload = encode_command(args)
        safe = not pinned and is_retry_safe(args)
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        attempt = 0
        last: AegisError | None = None
        while True:
            try:
                reply = (await self._exchange(payload, 1, safe, deadline, pinned=pinned))[0]
            except NodeUnavailableError:
                # Out of time while reconnecting for a retry: nothing was sent this time,
                # so the error worth reporting is the one that made us retry.
                if last is not None and trio.current_time() >= deadline:
                    raise last from None
                raise
            if not isinstance(reply, RespError):
                return reply
            error = last = error_from_reply(reply)
            if pinned:
                raise error
            if isinstance(error, NoLeaderError):
                async with self._lock:  # this node may be cut off: try another next time
                    await self._drop("no leader", advance=True)
            retry = isinstance(error, TryAgainError) or (
                safe and isinstance(error, (NoLeaderError, RequestTimeoutError))
            )
            if not retry:
                raise error
            await self._back_off(attempt, deadline, error)
            attempt += 1

    @asynccontextmanager
    async def stream(self, *args: Arg, timeout: float | None = None) -> AsyncIterator[ReplyStream]:
        """Send a command after which the connection only receives (``CHANGES``,
        ``SUBSCRIBE``) and read its replies with `ReplyStream.receive`::

            async with client.stream("CHANGES", "user:") as changes:
                while True:
                    print(await changes.receive())

        Connecting fails over across the seeds as `execute` does; the first reply must come
        within `timeout` (`RequestTimeoutError`), and an error reply or a lost connection
        before it raises on entry. Nothing is ever resent. Until the block exits the
        client carries nothing else (its lock is held); then the connection is closed,
        which ends the stream on the server.
        """
        if not args:
            raise ValueError("stream() needs a command")
        payload = encode_command(args)
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        async with self._lock:
            conn = await self._ensure(deadline)
            try:
                first: Reply | NeedData = NeedData()
                with trio.move_on_at(deadline):
                    await conn.send(payload)
                    first = await conn.read_reply()
                if isinstance(first, NeedData):
                    raise RequestTimeoutError(f"{conn.address} did not start the stream in time")
                if isinstance(first, RespError):
                    raise error_from_reply(first)
            except (OSError, _Closed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._drop(_describe(exc), advance=True)
                raise ConnectionLostError(
                    f"lost the connection to {conn.address} ({_describe(exc)}) before the stream started"
                ) from None
            except RespProtocolError as exc:
                await self._drop(f"protocol error: {exc}", advance=True)
                raise ProtocolError(f"{conn.address} sent a malformed reply: {exc}") from None
            except BaseException:
                # Refused, too slow or cancelled: whatever the server does next on this
                # connection is not for the next command.
                await self._drop(None, advance=False)
                raise
            stream = ReplyStream(conn, first)
            try:
                yield stream
            finally:
                await self._drop(None, advance=False)

    async def pipeline(
        self,
        commands: Iterable[Sequence[Arg]],
        *,
        timeout: float | None = None,
        raise_on_error: bool = True,
    ) -> list[Reply]:
        """Send every command in one write, then read every reply, in order.

        Error replies stay in the list as `RespError` values when `raise_on_error` is false;
        otherwise the first one is raised after all replies are read. A pipeline is resent
        after a lost connection only if every command in it is safe to retry; error replies
        are never retried one by one.
        """
        batch = [list(cmd) for cmd in commands]
        if not batch:
            return []
        payload = b"".join(encode_command(cmd) for cmd in batch)
        safe = all(is_retry_safe(cmd) for cmd in batch)
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        replies = await self._exchange(payload, len(batch), safe, deadline)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, RespError):
                    raise error_from_reply(reply)
        return replies

    # -- conveniences

    async def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        start = trio.current_time()
        await self.execute("PING")
        return trio.current_time() - start

    async def get(self, key: Arg) -> bytes | None:
        reply = await self.execute("GET", key)
        if reply is None or isinstance(reply, bytes):
            return reply
        raise ProtocolError(f"GET replied with {type(reply).__name__}")

    async def set(self, key: Arg, value: Arg) -> None:
        await self.execute("SET", key, value)

    async def delete(self, *keys: Arg) -> int:
        return _as_int(await self.execute("DEL", *keys))

    async def exists(self, *keys: Arg) -> int:
        return _as_int(await self.execute("EXISTS", *keys))

    async def incr(self, key: Arg, by: int = 1) -> int:
        if by == 1:
            return _as_int(await self.execute("INCR", key))
        return _as_int(await self.execute("INCRBY", key, by))

    async def decr(self, key: Arg, by: int = 1) -> int:
        if by == 1:
            return _as_int(await self.execute("DECR", key))
        return _as_int(await self.execute("DECRBY", key, by))

    async def cas(self, key: Arg, expected: Arg, new: Arg) -> bool:
        """Set `key` to `new` if it holds `expected`; whether it swapped."""
        return _as_int(await self.execute("CAS", key, expected, new)) == 1

    async def info(self, section: str | None = None) -> dict[str, str]:
        """INFO as ``{field: value}`` (all sections flattened)."""
        args: list[Arg] = ["INFO"] if section is None else ["INFO", section]
        return parse_info(_as_text(await self.execute(*args)))

    async def cluster_info(self) -> dict[str, str]:
        return parse_info(_as_text(await self.execute("CLUSTER", "INFO")))

    async def cluster_nodes(self) -> list[dict[str, str]]:
        return parse_cluster_nodes(_as_text(await self.execute("CLUSTER", "NODES")))

    async def member_list(self) -> Reply:
        return await self.execute("MEMBER", "LIST")

    async def member_add(self, node_id: str, address: str, *, learner: bool = False) -> Reply:
        args: list[Arg] = ["MEMBER", "ADD", node_id, address]
        if learner:
            args.append("LEARNER")
        return await self.execute(*args)

    async def member_remove(self, node_id: str) -> Reply:
        return await self.execute("MEMBER", "REMOVE", node_id)

    async def member_promote(self, node_id: str) -> Reply:
        return await self.execute("MEMBER", "PROMOTE", node_id)

    async def leader_transfer(self, node_id: str) -> Reply:
        return await self.execute("LEADER", "TRANSFER", node_id)

    # -- internals (all called with the lock held, except _exchange which takes it)

    # -- sessions

    def _ack(self) -> int:
        """The lowest sequence number whose reply has not arrived (the session's floor)."""
        return min(self._waiting) if self._waiting else self._next_seq

    async def _session(self, deadline: float) -> int | None:
        """The session's id, opening one first if need be; None if the node has no sessions
        (they are then off for this client)."""
        async with self._opening:
            if self.session_id is not None or not self.sessions:
                return self.session_id
            payload = encode_command(["SESSION", "OPEN"])
            attempt = 0
            while True:
                # Resending an OPEN is harmless: a session nobody uses expires.
                reply = (await self._exchange(payload, 1, True, deadline))[0]
                if isinstance(reply, int) and not isinstance(reply, bool):
                    self.session_id = reply
                    self._next_seq, self._waiting = 1, set()
                    return reply
                if not isinstance(reply, RespError):
                    # Not an Aegis node that knows sessions (a Redis, a proxy, a test double):
                    # plain writes, retried as before.
                    self.sessions = False
                    return None
                error = error_from_reply(reply)
                if reply.kind == "ERR" and "unknown command" in reply.message:
                    self.sessions = False  # an older node: plain writes, retried as before
                    return None
                if not isinstance(error, UnknownOutcomeError):
                    raise error
                await self._back_off(attempt, deadline, error)
                attempt += 1

    async def _back_off(self, attempt: int, deadline: float, error: AegisError) -> None:
        """Sleep before retry number `attempt` + 1, or raise `error` if that would pass `deadline`."""
        delay = self.retry.delay(attempt, self._rng)
        if trio.current_time() + delay >= deadline:
            raise error
        await trio.sleep(delay)

    async def _session_write(self, args: Sequence[Arg], timeout: float | None) -> Reply:
        """One data write as a SESSION CALL, retried with the same sequence number until it
        is answered or the deadline passes (see the module docstring)."""
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        for _fresh in range(2):
            sid = await self._session(deadline)
            if sid is None:
                return await self.execute(*args, timeout=max(0.001, deadline - trio.current_time()))
            seq = self._next_seq
            self._next_seq += 1
            self._waiting.add(seq)
            payload = encode_command(["SESSION", "CALL", sid, seq, self._ack(), *args])
            sent = 0  # attempts that may have reached a node
            attempt = 0
            last: AegisError | None = None
            try:
                while True:
                    losses: list[int] = []
                    try:
                        reply = (await self._exchange(payload, 1, True, deadline, losses=losses))[0]
                    except NodeUnavailableError:
                        if last is not None and trio.current_time() >= deadline:
                            raise last from None
                        raise
                    except RequestTimeoutError:
                        raise
                    finally:
                        sent += 1 + len(losses)
                    if not isinstance(reply, RespError):
                        return reply
                    if reply.kind == "NOSESSION":
                        if self.session_id == sid:
                            self.session_id = None
                        if sent == 1:
                            break  # refused, and nothing before it: a new session, once
                        raise RequestTimeoutError(
                            f"the session expired while the write was retried; the outcome is unknown ({reply.message})")
                    error = last = error_from_reply(reply)
                    if isinstance(error, NoLeaderError):
                        async with self._lock:
                            await self._drop("no leader", advance=True)
                    if not isinstance(error, UnknownOutcomeError):
                        raise error
                    await self._back_off(attempt, deadline, error)
                    attempt += 1
            finally:
                self._waiting.discard(seq)
        raise RequestTimeoutError("the cluster refused two sessions in a row; nothing was written")

    async def _exchange(
        self, payload: bytes, count: int, safe: bool, deadline: float, *, pinned: bool = False,
        losses: list[int] | None = None,
    ) -> list[Reply]:
        """Send `payload` and read `count` replies, reconnecting as the rules allow (each
        lost connection after sending is noted in `losses`)."""
        if losses is None:
            losses = []
        while True:
            async with self._lock:
                conn = await (self._current() if pinned else self._ensure(deadline))
                try:
                    with trio.move_on_at(deadline):
                        return await _roundtrip(conn, payload, count)
                except (OSError, _Closed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = _describe(exc)
                    await self._drop(reason, advance=True)
                    losses.append(1)
                    if not safe:
                        raise ConnectionLostError(
                            f"lost the connection to {conn.address} ({reason}); "
                            "the command may or may not have been applied"
                        ) from None
                    if len(losses) > len(self._seeds) + 1:
                        raise ConnectionLostError(
                            f"lost the connection {len(losses)} times, last to {conn.address} ({reason})"
                        ) from None
                except RespProtocolError as exc:
                    await self._drop(f"protocol error: {exc}", advance=True)
                    raise ProtocolError(f"{conn.address} sent a malformed reply: {exc}") from None
                except BaseException:
                    # Cancelled (or anything else) mid-request: a late reply must not be
                    # taken for the next command's, so the connection goes.
                    await self._drop("interrupted", advance=False)
                    raise
                else:
                    # The deadline passed with the request sent (or half sent).
                    await self._drop(f"no reply from {conn.address} in time", advance=True)
                    raise RequestTimeoutError(
                        f"no reply from {conn.address} in time; the outcome is unknown"
                    )
            # A safe request lost its connection: resend at once after a first loss (the
            # node may just have closed an idle connection), with back-off after that.
            if len(losses) > 1:
                pause = self.retry.delay(len(losses) - 2, self._rng)
                await trio.sleep(min(pause, max(0.0, deadline - trio.current_time())))

    async def _current(self) -> _Connection:
        """The open connection, for a pinned command; never a new one."""
        conn = self._conn
        if conn is not None and not conn.looks_closed():
            return conn
        if conn is not None:
            await self._drop(f"{conn.address} closed the connection", advance=True)
        raise ConnectionGoneError(
            f"the connection is gone ({self._last_error or 'closed'}); nothing was sent"
        )

    async def _ensure(self, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None:
            if not conn.looks_closed():
                return conn
            await self._drop(f"{conn.address} closed the connection", advance=True)
        self._state = ConnectionState.CONNECTING
        try:
            return await self._connect_any(deadline)
        finally:
            if self._conn is None and self._state is ConnectionState.CONNECTING:
                self._state = ConnectionState.DISCONNECTED

    async def _connect_any(self, deadline: float) -> _Connection:
        failures: list[str] = []
        for i in range(len(self._seeds)):
            index = (self._next + i) % len(self._seeds)
            address = self._seeds[index]
            if trio.current_time() >= deadline:
                failures.append(f"{address} (no time left)")
                break
            try:
                conn = await self._open(address, deadline)
            except AuthenticationError:
                raise
            except (OSError, _Closed, trio.TooSlowError, trio.BrokenResourceError, RespProtocolError,
                    AegisError) as exc:
                failures.append(f"{address} ({_describe(exc)})")
                continue
            self._conn = conn
            self._next = index
            self._state = ConnectionState.CONNECTED
            self._last_error = None
            return conn
        self._last_error = "cannot reach " + ", ".join(failures)
        raise NodeUnavailableError(f"cannot reach any node: {', '.join(failures)}")

    async def _open(self, address: str, deadline: float) -> _Connection:
        host, port = _split_address(address)
        limit = min(deadline, trio.current_time() + self.connect_timeout)
        with trio.fail_at(limit):
            tcp = await trio.open_tcp_stream(host, port)
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
            if self._ssl is not None:
                stream = trio.SSLStream(tcp, self._ssl, server_hostname=host)
            conn = _Connection(stream, address)
            try:
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                await self._handshake(conn)
            except BaseException:
                await conn.close()
                raise
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        commands: list[list[Arg]] = []
        if self._token is not None:
            commands.append(["AUTH", self._token])
        if self._client_name is not None:
            commands.append(["CLIENT", "SETNAME", self._client_name])
        if not commands:
            return
        await conn.send(b"".join(encode_command(c) for c in commands))
        for command in commands:
            reply = await conn.read_reply()
            if isinstance(reply, RespError):
                error = error_from_reply(reply)
                if command[0] == "AUTH":
                    raise AuthenticationError(f"{conn.address} refused the token: {reply.text}")
                raise error

    async def _drop(self, reason: str | None, *, advance: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if reason is not None:
            self._last_error = reason
        if advance:
            self._next = (self._next + 1) % len(self._seeds)
        if self._state is not ConnectionState.CLOSED:
            self._state = ConnectionState.DISCONNECTED


# Up to this size a pipeline is written before its replies are read: it fits in the socket
# buffers, so the server can never block on writing replies we are not reading yet.
_SEND_FIRST_LIMIT: Final = 64 * 1024


async def _roundtrip(conn: _Connection, payload: bytes, count: int) -> list[Reply]:
    if count == 1 or len(payload) <= _SEND_FIRST_LIMIT:
        await conn.send(payload)
        return [await conn.read_reply() for _ in range(count)]
    # A big pipeline: read replies while still sending, or both sides could block on full
    # buffers (the server writing replies nobody reads, us writing requests it cannot take).
    failure: list[BaseException] = []
    replies: list[Reply] = []
    try:
        async with trio.open_nursery() as nursery:

            async def sender() -> None:
                try:
                    await conn.send(payload)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(sender)
            for _ in range(count):
                replies.append(await conn.read_reply())
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None
    if failure:
        raise failure[0]
    return replies


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that matters in a group: the first that is not a cancellation."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0]


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio's "all attempts to connect … failed"
        exc = _first_leaf(cause)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc.__cause__, ssl.SSLError):  # trio wraps TLS failures in BrokenResourceError
        return f"TLS: {exc.__cause__.reason or exc.__cause__}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_client(
    addresses: str | Iterable[str],
    *,
    token: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),
    client_name: str | None = None,
    lazy: bool = False,
    sessions: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[AegisClient]:
    """``async with open_client("127.0.0.1:7001,127.0.0.1:7002") as client: …``

    Connects before entering unless `lazy` (then the first command connects).
    """
    client = AegisClient(
        addresses,
        token=token,
        timeout=timeout,
        connect_timeout=connect_timeout,
        retry=retry,
        client_name=client_name,
        sessions=sessions,
        ssl_context=ssl_context,
    )
    try:
        if not lazy:
            await client.ensure_connected()
        yield client
    finally:
        await client.aclose()

