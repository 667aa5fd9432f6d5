"""shell.connection and shell.transaction: MULTI/EXEC and WATCH through the shell's
connection, and what happens when the connection that holds them goes away.

`TxNode` is a tiny RESP server on 127.0.0.1 (port 0) that keeps, per connection, what a
Redis or Aegis node keeps: the MULTI queue, whether a refused command doomed it, and the
WATCHed keys with the version each had. A test can make it drop the connection when a
given command arrives (after it was sent: an unknown outcome) or close every connection
while idle (before the next one is sent). Also here: the client's pinned mode, which is
what the shell relies on (`AegisClient.execute(pinned=True)`).
"""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from aegis.client import AegisClient, ConnectionGoneError, ConnectionLostError, NodeUnavailableError, RetryPolicy
from aegis.errors import CommandError, NoLeaderError, TryAgainError
from aegis.protocol import ProtocolViolation, Reply, RespError, RespParser, encode, encode_error
from shell.app import run_script
from shell.bridge import TrioBridge
from shell.connection import ShellConnection, TransactionLostError, describe_error
from shell.repl import prompt_text
from shell.transaction import NO_SESSION, Session, advance, is_doomed_by, lost_message

FAST = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
QUEUEABLE = {b"SET", b"GET", b"INCR", b"DEL"}


@dataclass
class _Conn:
    number: int
    multi: list[list[bytes]] | None = None
    dirty: bool = False
    watches: dict[bytes, int] = field(default_factory=dict)


class TxNode:
    """A RESP node with per-connection MULTI/EXEC/WATCH, as the server has them."""

    def __init__(self, name: str = "n1", data: dict[bytes, bytes] | None = None) -> None:
        self.name = name
        self.data: dict[bytes, bytes] = data if data is not None else {}
        self.versions: dict[bytes, int] = {}
        self.seen: list[tuple[int, list[bytes]]] = []  # (connection number, argv)
        self.connections = 0
        self.drop_on: bytes | None = None  # close the connection when this command arrives
        self.reply_with: dict[bytes, bytes] = {}  # a canned reply for a command name
        self.address = ""
        self._streams: list[trio.SocketStream] = []

    def names(self, connection: int | None = None) -> list[bytes]:
        return [argv[0].upper() for n, argv in self.seen if connection is None or n == connection]

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.address = "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        return self.address

    async def close_connections(self) -> None:
        """Every connection closed by the node while idle (it restarted, say)."""
        for stream in self._streams:
            await trio.aclose_forcefully(stream)
        self._streams.clear()
        await trio.testing.wait_all_tasks_blocked()

    # -- commands

    def _write(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.versions[key] = self.versions.get(key, 0) + 1

    def _run(self, argv: list[bytes]) -> Reply:
        name = argv[0].upper()
        if name == b"SET":
            self._write(argv[1], argv[2])
            return "OK"
        if name == b"GET":
            return self.data.get(argv[1])
        if name == b"INCR":
            try:
                value = int(self.data.get(argv[1], b"0")) + 1
            except ValueError:
                return RespError("ERR value is not an integer or out of range")
            self._write(argv[1], str(value).encode())
            return value
        if name == b"DEL":
            found = [k for k in argv[1:] if k in self.data]
            for key in found:
                del self.data[key]
                self.versions[key] = self.versions.get(key, 0) + 1
            return len(found)
        return RespError(f"ERR unknown command '{argv[0].decode()}'")

    def reply(self, conn: _Conn, argv: list[bytes]) -> bytes:
        name = argv[0].upper()
        if name in self.reply_with:
            return self.reply_with[name]
        if name == b"CLIENT":
            return b"+OK\r\n"
        if name == b"PING":
            return b"+PONG\r\n"
        if conn.multi is not None and name not in (b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH"):
            if name in QUEUEABLE:
                conn.multi.append(argv)
                return b"+QUEUED\r\n"
            conn.dirty = True
            return encode_error("ERR only key commands can be queued in a MULTI (not scans, status or admin)")
        if name == b"INFO":
            return encode(f"node_id:{self.name}\r\nrole:leader\r\nleader_id:{self.name}\r\nterm:2\r\n".encode())
        if name == b"MULTI":
            if conn.multi is not None:
                return encode_error("ERR MULTI calls can not be nested")
            conn.multi, conn.dirty = [], False
            return b"+OK\r\n"
        if name == b"DISCARD":
            if conn.multi is None:
                return encode_error("ERR DISCARD without MULTI")
            conn.multi, conn.dirty = None, False
            conn.watches.clear()
            return b"+OK\r\n"
        if name == b"WATCH":
            if conn.multi is not None:
                return encode_error("ERR WATCH inside MULTI is not allowed")
            for key in argv[1:]:
                conn.watches.setdefault(key, self.versions.get(key, 0))
            return b"+OK\r\n"
        if name == b"UNWATCH":
            conn.watches.clear()
            return b"+OK\r\n"
        if name == b"EXEC":
            if conn.multi is None:
                return encode_error("ERR EXEC without MULTI")
            queued, dirty, watches = conn.multi, conn.dirty, dict(conn.watches)
            conn.multi, conn.dirty = None, False
            conn.watches.clear()
            if dirty:
                return encode_error("EXECABORT Transaction discarded because of previous errors.")
            if any(self.versions.get(k, 0) != v for k, v in watches.items()):
                return b"*-1\r\n"
            return encode([self._run(cmd) for cmd in queued])
        return encode(self._run(argv))

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = _Conn(self.connections)
        self._streams.append(stream)
        parser = RespParser()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                parser.feed(data)
                out = bytearray()
                for argv in parser:
                    assert not isinstance(argv, ProtocolViolation)
                    self.seen.append((conn.number, argv))
                    if self.drop_on is not None and argv[0].upper() == self.drop_on:
                        self.drop_on = None
                        await trio.aclose_forcefully(stream)
                        return
                    out += self.reply(conn, argv)
                await stream.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            if stream in self._streams:
                self._streams.remove(stream)


@asynccontextmanager
async def running(*nodes: TxNode) -> AsyncIterator[list[str]]:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            yield [await node.serve(nursery) for node in nodes]
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def shell_connection(addresses: list[str]) -> AsyncIterator[ShellConnection]:
    conn = ShellConnection(addresses, timeout=2.0, connect_timeout=0.5)
    conn.client.retry = FAST
    try:
        await conn.start()
        yield conn
    finally:
        await conn.aclose()


async def run(conn: ShellConnection, line: str) -> Any:
    outcome = await conn.execute([w.encode() for w in line.split()])
    return outcome.error if outcome.error is not None else outcome.reply


# --------------------------------------------------------------------------- the session table


def argv(line: str) -> list[bytes]:
    return [w.encode() for w in line.split()]


def test_session_transitions() -> None:
    s = advance(NO_SESSION, argv("WATCH a b"), "OK", None)
    assert s.watched == ("a", "b") and s.pinned and not s.in_multi
    s = advance(s, argv("WATCH b c"), "OK", None)
    assert s.watched == ("a", "b", "c")
    s = advance(s, argv("MULTI"), "OK", None)
    assert s.in_multi and s.queued == () and s.watched == ("a", "b", "c")
    s = advance(s, argv("SET a 1"), "QUEUED", None)
    s = advance(s, argv("INCR n"), "QUEUED", None)
    assert s.queued == (tuple(argv("SET a 1")), tuple(argv("INCR n")))
    # A misplaced MULTI or WATCH is refused without dooming the transaction; SCAN dooms it.
    error = CommandError("MULTI calls can not be nested")
    assert advance(s, argv("MULTI"), None, error) == s
    assert not is_doomed_by(s, argv("WATCH x"), CommandError("WATCH inside MULTI is not allowed"))
    doomed = advance(s, argv("SCAN 0"), None, CommandError("only key commands can be queued"))
    assert doomed.doomed and doomed.queued == s.queued
    # EXEC ends it whatever the answer; DISCARD too; UNWATCH forgets the keys only.
    assert advance(s, argv("EXEC"), ["OK", 1], None) is NO_SESSION
    assert advance(doomed, argv("EXEC"), None, CommandError("EXECABORT …")) is NO_SESSION
    assert advance(s, argv("EXEC"), None, None) is NO_SESSION  # the nil array
    assert advance(s, argv("DISCARD"), "OK", None) is NO_SESSION
    assert advance(s, argv("UNWATCH"), "OK", None).watched == ()
    # An EXEC without MULTI is refused before the watches are forgotten.
    watching = Session(watched=("a",))
    assert advance(watching, argv("EXEC"), None, CommandError("EXEC without MULTI")) == watching
    assert advance(NO_SESSION, argv("GET a"), b"1", None) is NO_SESSION


def test_lost_messages_say_what_was_lost() -> None:
    tx = Session(queued=((b"SET", b"a", b"1"),), watched=("a",))
    text = lost_message(tx, argv("INCR n"), sent=True, reason="connection refused")
    assert "(connection refused)" in text and "transaction was discarded (1 queued command)" in text
    assert "nothing was written" in text
    assert "may or may not" in lost_message(tx, argv("EXEC"), sent=True, reason="")
    assert "nothing was written" in lost_message(tx, argv("EXEC"), sent=False, reason="")
    text = lost_message(Session(watched=("a", "b")), argv("MULTI"), sent=False, reason="")
    assert "WATCH on a, b" in text and "MULTI was not sent" in text


def test_prompt_shows_a_transaction() -> None:
    from shell.connection import NodeView

    view = NodeView("127.0.0.1:7001", reachable=True, role="leader", checked=True)
    assert prompt_text(view) == "127.0.0.1:7001 (leader)> "
    assert prompt_text(view, Session(queued=())) == "127.0.0.1:7001 (leader) (TX)> "
    assert prompt_text(view, Session(watched=("a",))) == "127.0.0.1:7001 (leader)> "


# --------------------------------------------------------------------------- MULTI … EXEC


async def test_multi_exec_through_the_shell_connection() -> None:
    node = TxNode()
    async with running(node) as addrs, shell_connection(addrs) as conn:
        assert await run(conn, "MULTI") == "OK"
        assert conn.session.in_multi
        assert await run(conn, "SET a 1") == "QUEUED"
        assert await run(conn, "INCR n") == "QUEUED"
        outcome = await conn.execute(argv("EXEC"))
        assert outcome.reply == ["OK", 1]
        assert outcome.queued == (tuple(argv("SET a 1")), tuple(argv("INCR n")))
        assert conn.session is NO_SESSION and node.data == {b"a": b"1", b"n": b"1"}
        # Inside MULTI the shell's own INFO refresh is not sent (it would doom the transaction).
        names = node.names()
        between = names[names.index(b"MULTI"):names.index(b"EXEC") + 1]
        assert between == [b"MULTI", b"SET", b"INCR", b"EXEC"]
        assert names[-1] == b"INFO"  # after EXEC the view is refreshed again
        assert node.connections == 1


async def test_a_refused_command_dooms_the_transaction_and_says_so() -> None:
    node = TxNode()
    async with running(node) as addrs, shell_connection(addrs) as conn:
        await run(conn, "MULTI")
        outcome = await conn.execute(argv("SCAN 0"))
        assert isinstance(outcome.error, CommandError)
        assert any("EXECABORT" in n for n in outcome.notices)
        assert conn.session.doomed
        error = await run(conn, "EXEC")
        assert isinstance(error, CommandError) and "EXECABORT" in str(error)
        assert conn.session is NO_SESSION


async def test_watch_conflict_is_the_nil_array() -> None:
    node = TxNode()
    async with running(node) as addrs, shell_connection(addrs) as conn:
        assert await run(conn, "WATCH balance") == "OK"
        assert conn.session.watched == ("balance",)
        node._write(b"balance", b"99")  # someone else writes it
        await run(conn, "MULTI")
        await run(conn, "SET balance 0")
        outcome = await conn.execute(argv("EXEC"))
        assert outcome.ok and outcome.reply is None
        assert node.data[b"balance"] == b"99" and conn.session is NO_SESSION


# --------------------------------------------------------------------------- losing the connection


async def test_connection_lost_while_queueing_discards_and_never_moves_mid_transaction() -> None:
    first, second = TxNode("n1"), TxNode("n2")
    async with running(first, second) as addrs, shell_connection(addrs) as conn:
        await run(conn, "MULTI")
        await run(conn, "SET a 1")
        first.drop_on = b"SET"
        outcome = await conn.execute(argv("SET b 2"))
        assert isinstance(outcome.error, TransactionLostError)
        text = describe_error(outcome.error)
        assert text.startswith("lost the connection") and "transaction was discarded" in text
        assert "1 queued command" in text and "nothing was written" in text
        assert conn.session is NO_SESSION
        # Nothing of the transaction reached the other member, and nothing was applied.
        assert second.names() == [] or b"SET" not in second.names()
        assert first.data == {} and second.data == {}
        # The next command, outside any transaction, connects as usual (to the other seed).
        assert await run(conn, "SET c 3") == "OK"
        assert second.data == {b"c": b"3"} or first.data == {b"c": b"3"}


async def test_connection_gone_before_a_queued_command_is_sent() -> None:
    first, second = TxNode("n1"), TxNode("n2")
    async with running(first, second) as addrs, shell_connection(addrs) as conn:
        await run(conn, "MULTI")
        await run(conn, "SET a 1")
        await first.close_connections()
        outcome = await conn.execute(argv("SET b 2"))
        assert isinstance(outcome.error, TransactionLostError)
        assert "transaction was discarded" in str(outcome.error)
        # The SET was not resent anywhere: a queued command must never run on its own.
        assert b"SET" not in second.names() and first.names().count(b"SET") == 1
        assert first.data == {} and second.data == {}


async def test_exec_lost_after_sending_is_an_unknown_outcome() -> None:
    node = TxNode()
    async with running(node) as addrs, shell_connection(addrs) as conn:
        await run(conn, "MULTI")
        await run(conn, "INCR n")
        node.drop_on = b"EXEC"
        outcome = await conn.execute(argv("EXEC"))
        assert isinstance(outcome.error, ConnectionLostError)
        assert "may or may not have been applied" in str(outcome.error)
        assert conn.session is NO_SESSION


async def test_watches_lost_with_the_connection_fail_the_next_command() -> None:
    first, second = TxNode("n1"), TxNode("n2")
    async with running(first, second) as addrs, shell_connection(addrs) as conn:
        await run(conn, "WATCH k")
        await first.close_connections()
        outcome = await conn.execute(argv("MULTI"))
        assert isinstance(outcome.error, TransactionLostError)
        assert "WATCH on k went with it" in str(outcome.error) and "MULTI was not sent" in str(outcome.error)
        assert b"MULTI" not in first.names() + second.names()
        assert conn.session is NO_SESSION
        assert await run(conn, "MULTI") == "OK"  # now on a fresh connection, knowingly


async def test_interrupted_command_in_multi_reports_the_loss() -> None:
    node = TxNode()
    async with running(node) as addrs, shell_connection(addrs) as conn:
        await run(conn, "MULTI")
        await conn.client.disconnect()  # what the client does to a request cancelled mid-way
        message = await conn.check_session(argv("SET a 1"))
        assert message is not None and "transaction was discarded" in message
        assert conn.session is NO_SESSION
        assert await conn.check_session(argv("GET a")) is None


async def test_connect_to_resets_the_session() -> None:
    first, second = TxNode("n1"), TxNode("n2")
    async with running(first, second) as addrs, shell_connection(addrs) as conn:
        await run(conn, "WATCH k")
        await conn.connect_to(addrs[1])
        assert conn.session is NO_SESSION


# --------------------------------------------------------------------------- the client's pinned mode


async def test_pinned_execute_never_connects() -> None:
    node = TxNode()
    async with running(node) as addrs:
        client = AegisClient(addrs, retry=FAST, timeout=1)
        try:
            with pytest.raises(ConnectionGoneError) as info:
                await client.execute("GET", "k", pinned=True)
            assert isinstance(info.value, NodeUnavailableError)  # nothing was sent
            assert node.connections == 0
            await client.execute("PING")
            await node.close_connections()
            with pytest.raises(ConnectionGoneError):
                await client.execute("GET", "k", pinned=True)  # even a safe read is not resent
            assert node.connections == 1 and node.names().count(b"GET") == 0
        finally:
            await client.aclose()


async def test_pinned_execute_neither_retries_nor_drops_on_errors() -> None:
    node = TxNode()
    async with running(node) as addrs:
        client = AegisClient(addrs, retry=FAST, timeout=1)
        try:
            await client.execute("PING")
            node.reply_with[b"GET"] = b"-TRYAGAIN busy\r\n"
            with pytest.raises(TryAgainError):
                await client.execute("GET", "k", pinned=True)
            assert node.names().count(b"GET") == 1
            node.reply_with[b"GET"] = b"-NOLEADER no leader is known\r\n"
            with pytest.raises(NoLeaderError):
                await client.execute("GET", "k", pinned=True)
            assert client.connected and node.connections == 1  # the connection (and its MULTI) stays
            node.reply_with.clear()
            node.drop_on = b"GET"
            with pytest.raises(ConnectionLostError):
                await client.execute("GET", "k", pinned=True)  # a read, yet not resent
            assert node.names().count(b"GET") == 3 and node.connections == 1
        finally:
            await client.aclose()


# --------------------------------------------------------------------------- scripts


def test_transaction_in_a_script_json_and_pretty() -> None:
    node = TxNode()
    listening = threading.Event()
    bridge = TrioBridge()
    try:
        async def serve() -> None:  # the node lives in the bridge's trio thread, like the client
            async with trio.open_nursery() as nursery:
                await node.serve(nursery)
                listening.set()

        _future, scope = bridge.submit(serve)
        assert listening.wait(5)

        async def make() -> ShellConnection:
            return ShellConnection([node.address], timeout=2.0)

        conn = bridge.run(make)
        out, err = io.StringIO(), io.StringIO()
        lines = ["WATCH k", "MULTI", "SET k v", "INCR n", "GET k", "EXEC", "WATCH"]
        code = run_script(lines, conn, bridge, mode="json", confirm=True, stdout=out, stderr=err)
        values = [json.loads(line) for line in out.getvalue().splitlines()]
        assert values[:6] == ["OK", "OK", "QUEUED", "QUEUED", "QUEUED", ["OK", 1, "v"]]
        assert "DASHBOARD" in values[6]["error"] and code == 1
        assert node.names().count(b"WATCH") == 1  # the bare WATCH was never sent
        out = io.StringIO()
        code = run_script(["MULTI", "INCR n", "EXEC"], conn, bridge, mode="pretty", confirm=True,
                          stdout=out, stderr=err)
        text = out.getvalue()
        assert code == 0 and "1) INCR n" in text and "(integer) 2" in text
        bridge.run(conn.aclose)
        bridge.cancel(scope)
    finally:
        bridge.close()
