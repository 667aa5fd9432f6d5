"""shell.stream: CHANGES / SUBSCRIBE followed live, and AegisClient.stream under it.

Pure parts first (events, progress, rendering), then `follow` against `FeedNode`, a tiny
RESP node on 127.0.0.1 (port 0) in the bridge's trio thread: it answers PING, INFO, GET and
SET, and after CHANGES or PSUBSCRIBE plays a script — replies to send, a gate to wait at,
then hold the connection open, close it, or send an error — and records when the client
closed the stream. Real nodes are in tests/integration/test_shell_repl.py.
"""

from __future__ import annotations

import functools
import io
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio

from aegis.client import AegisClient, ConnectionLostError, RequestTimeoutError
from aegis.commands import lookup
from aegis.errors import CommandError
from aegis.protocol import ProtocolViolation, Reply, RespError, RespParser, encode
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console
from shell.app import run_script
from shell.bridge import TrioBridge
from shell.connection import ShellConnection
from shell.render import help_command
from shell.repl import Repl, ShellOptions
from shell.stream import (
    Change,
    Message,
    Progress,
    Started,
    StreamEvent,
    Subscribed,
    Unexpected,
    follow,
    is_stream_command,
    json_event,
    parse_event,
    render_event,
)

GATE = object()  # in a script: wait until the test opens `FeedNode.gate`


def text_of(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


# --------------------------------------------------------------------------- events


def test_parse_every_stream_reply() -> None:
    assert parse_event([b"changes", b"user:", 1200]) == Started(b"user:", 1200)
    assert parse_event([b"change", 1201, [b"user:7", b"alice", b"user:8", None]]) == Change(
        1201, ((b"user:7", b"alice"), (b"user:8", None))
    )
    assert parse_event([b"psubscribe", b"__keyspace@0__:u*", 1]) == Subscribed("psubscribe", b"__keyspace@0__:u*", 1)
    assert parse_event([b"unsubscribe", None, 0]) == Subscribed("unsubscribe", None, 0)
    message = parse_event([b"message", b"__keyspace@0__:user:1", b"set"])
    assert message == Message(b"__keyspace@0__:user:1", b"set") and message.key_event == (b"user:1", "set")
    pmessage = parse_event([b"pmessage", b"__keyevent@0__:*", b"__keyevent@0__:del", b"user:2"])
    assert isinstance(pmessage, Message) and pmessage.pattern == b"__keyevent@0__:*"
    assert pmessage.key_event == (b"user:2", "del")
    assert parse_event([b"message", b"news", b"hi"]).key_event is None  # type: ignore[union-attr]


@pytest.mark.parametrize("reply", [None, b"x", [], [b"change", b"x", []], [b"change", 5, [b"odd"]],
                                   [b"changes", b"p"], [b"what", 1, 2]])
def test_an_unknown_shape_is_kept_not_lost(reply: Reply) -> None:
    assert parse_event(reply) == Unexpected(reply)


def test_stream_commands() -> None:
    assert is_stream_command([b"changes", b"p"]) and is_stream_command([b"PSUBSCRIBE", b"x"])
    assert not is_stream_command([b"UNSUBSCRIBE"]) and not is_stream_command([b"GET", b"k"])
    spec = lookup("CHANGES")
    assert spec is not None and "in this shell: shown live" in text_of(help_command(spec))


# --------------------------------------------------------------------------- progress


def test_progress_resumes_after_the_last_change_seen() -> None:
    p = Progress.of([b"CHANGES", b"user:"])
    assert p.resume_command() is None and p.summary() == "stopped before the stream started"
    p = p.after(Started(b"user:", 40))
    assert p.resume_command() == "CHANGES user: FROM 40"  # nothing seen yet: from the start
    p = p.after(Change(41, ((b"user:1", b"a"),))).after(Change(45, ((b"user:2", None),)))
    assert (p.changes, p.revision) == (2, 45)
    assert p.summary() == "stopped after 2 changes (last revision 45)"
    assert p.resume_hint() == "resume with: CHANGES user: FROM 45"


def test_progress_from_a_revision_and_a_prefix_that_needs_quotes() -> None:
    p = Progress.of([b"CHANGES", b"my keys", b"FROM", b"7"])
    assert p.resume_command() == 'CHANGES "my keys" FROM 7'  # interrupted before the header
    assert p.after(Change(9, ())).resume_command() == 'CHANGES "my keys" FROM 9'


def test_keyspace_notifications_are_not_resumable_but_say_what_is() -> None:
    p = Progress.of([b"PSUBSCRIBE", b"__keyspace@0__:user:*"]).after(Subscribed("psubscribe", b"x", 1))
    p = p.after(Message(b"__keyspace@0__:user:1", b"set"))
    assert p.summary() == "unsubscribed after 1 message" and p.resume_command() is None
    assert "CHANGES user: FROM <revision>" in p.resume_hint()
    other = Progress.of([b"SUBSCRIBE", b"__keyevent@0__:del"])
    assert other.equivalent_changes() is None and "not resumable" in other.resume_hint()
    assert Progress.of([b"PSUBSCRIBE", b"__keyspace@0__:u?er:*"]).equivalent_changes() is None


# --------------------------------------------------------------------------- rendering


def test_a_change_renders_revision_key_and_value_or_deleted() -> None:
    text = text_of(render_event(Change(1201, ((b"user:7", b"alice"), (b"user:8", None)))))
    assert text.splitlines() == ['1201  "user:7"  "alice"', '      "user:8"  deleted']
    text = text_of(render_event(Started(b"user:", 1200), at="12:00:01", hint="Ctrl-C stops"))
    assert text.strip() == '12:00:01 following changes under "user:" after revision 1200 · Ctrl-C stops'
    big = text_of(render_event(Change(3, ((b"k", b"x" * 5000),))))
    assert "(5000 bytes)" in big and len(big) < 400


def test_notifications_render_key_and_event() -> None:
    assert text_of(render_event(Message(b"__keyspace@0__:user:1", b"del"))).strip() == '"user:1"  del'
    assert text_of(render_event(Subscribed("subscribe", b"ch", 2))).strip() == 'subscribed to "ch" (2 subscriptions)'
    assert "unexpected reply" in text_of(render_event(Unexpected(b"odd")))


def test_json_objects_name_their_type() -> None:
    assert json_event(Started(b"user:", 5)) == {"type": "changes", "prefix": "user:", "revision": 5}
    assert json_event(Change(6, ((b"a", b"1"), (b"b", None), (b"c", b"\xff")))) == {
        "type": "change", "revision": 6,
        "changes": [{"key": "a", "value": "1"}, {"key": "b", "value": None}, {"key": "c", "value": {"base64": "/w=="}}],
    }
    assert json_event(Message(b"__keyspace@0__:k", b"set", b"__keyspace@0__:*")) == {
        "type": "pmessage", "pattern": "__keyspace@0__:*", "channel": "__keyspace@0__:k", "data": "set",
        "key": "k", "event": "set",
    }


# --------------------------------------------------------------------------- a fake feed node


@dataclass
class FeedNode:
    """After CHANGES or PSUBSCRIBE: the first reply, then `script` (replies, or GATE), then
    `end`: "hold" (until the client closes), "close", or an error reply to send."""

    first: Reply = field(default_factory=lambda: [b"changes", b"user:", 10])
    script: list[object] = field(default_factory=list)
    end: str | RespError = "hold"
    gate: threading.Event = field(default_factory=threading.Event)
    stream_closed: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[int, list[bytes]]] = field(default_factory=list)
    names: dict[int, bytes] = field(default_factory=dict)  # connection -> CLIENT SETNAME
    data: dict[bytes, bytes] = field(default_factory=dict)
    connections: int = 0
    address: str = ""

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.address = "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        return self.address

    def reply(self, argv: list[bytes]) -> bytes:
        name = argv[0].upper()
        if name == b"INFO":
            return encode(b"node_id:n1\r\nrole:leader\r\nleader_id:n1\r\nterm:1\r\n")
        if name == b"SET":
            self.data[argv[1]] = argv[2]
            return b"+OK\r\n"
        if name == b"GET":
            return encode(self.data.get(argv[1]))
        if name == b"MULTI":
            return b"+OK\r\n"
        return b"+PONG\r\n" if name == b"PING" else b"+OK\r\n"

    async def _stream(self, stream: trio.SocketStream) -> None:
        await stream.send_all(encode(self.first))
        for item in self.script:
            if item is GATE:
                await trio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
            else:
                await stream.send_all(encode(item))  # type: ignore[arg-type]
        if isinstance(self.end, RespError):
            await stream.send_all(encode(self.end))
        if self.end != "hold":
            await trio.aclose_forcefully(stream)
            return
        while await stream.receive_some(4096):  # only the client's close ends it
            pass
        self.stream_closed.set()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        parser = RespParser()
        try:
            while data := await stream.receive_some(65536):
                parser.feed(data)
                out = bytearray()
                for argv in parser:
                    assert not isinstance(argv, ProtocolViolation)
                    self.seen.append((number, argv))
                    if argv[0].upper() == b"CLIENT":
                        self.names[number] = argv[2]
                    if argv[0].upper() in (b"CHANGES", b"PSUBSCRIBE"):
                        await stream.send_all(bytes(out))
                        await self._stream(stream)
                        return
                    out += self.reply(argv)
                await stream.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def streams(self) -> list[int]:
        return [n for n, argv in self.seen if argv[0].upper() in (b"CHANGES", b"PSUBSCRIBE")]


@dataclass
class Setup:
    bridge: TrioBridge
    node: FeedNode
    conn: ShellConnection


@pytest.fixture
def feed() -> Iterator[Setup]:
    node = FeedNode()
    bridge = TrioBridge()
    listening = threading.Event()
    try:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                await node.serve(nursery)
                listening.set()

        _future, scope = bridge.submit(serve)
        assert listening.wait(5)

        async def make() -> ShellConnection:
            conn = ShellConnection([node.address], timeout=2.0, connect_timeout=0.5)
            await conn.start()
            return conn

        conn = bridge.run(make)
        yield Setup(bridge, node, conn)
        bridge.run(conn.aclose)
        bridge.cancel(scope)
    finally:
        bridge.close()


def collect(setup: Setup, argv: list[bytes], *, stop_after: int | None = None,
            interrupt_at: int | None = None) -> tuple[list[StreamEvent], object]:
    """Follow `argv`; stop (as `stop` does) after `stop_after` events, or raise
    KeyboardInterrupt (as Ctrl-C does) while showing event number `interrupt_at`."""
    events: list[StreamEvent] = []
    stop = threading.Event()

    def on_event(event: StreamEvent, reply: Reply) -> None:
        if interrupt_at is not None and len(events) + 1 == interrupt_at:
            raise KeyboardInterrupt
        events.append(event)
        if isinstance(event, Change):
            setup.node.gate.set()  # the next changes are sent only once this one was shown
        if stop_after is not None and len(events) >= stop_after:
            stop.set()

    result = follow(setup.bridge, setup.conn.stream_client, argv, on_event, stop=stop)
    return events, result


# --------------------------------------------------------------------------- follow


def test_changes_arrive_one_by_one_and_ctrl_c_closes_only_the_stream(feed: Setup) -> None:
    feed.node.script = [[b"change", 11, [b"user:1", b"a"]], GATE,
                        [b"change", 12, [b"user:2", b"b", b"user:1", None]], [b"change", 13, [b"user:3", b"c"]]]
    events, result = collect(feed, [b"CHANGES", b"user:"], interrupt_at=4)
    assert events == [Started(b"user:", 10), Change(11, ((b"user:1", b"a"),)),
                      Change(12, ((b"user:2", b"b"), (b"user:1", None)))]
    assert result.interrupted and result.error is None  # type: ignore[attr-defined]
    # Revision 13 was being shown when Ctrl-C came: not seen, so the resume point is 12.
    assert result.progress.resume_command() == "CHANGES user: FROM 12"  # type: ignore[attr-defined]
    assert feed.node.stream_closed.wait(3)  # the client closed the stream's connection
    # The stream had a connection of its own; the command connection is still there and works.
    (stream_conn,) = feed.node.streams()
    assert feed.node.names[stream_conn] == b"aegis-shell-stream" and feed.node.names[1] == b"aegis-shell"
    before = feed.node.connections
    outcome = feed.bridge.run(feed.conn.execute, [b"SET", b"after", b"1"])
    assert outcome.ok and feed.node.connections == before
    assert [n for n, argv in feed.node.seen if argv[0] == b"SET"] == [1]


def test_ctrl_c_while_a_change_is_printed_counts_it_and_stops_after_it(feed: Setup) -> None:
    feed.node.script = [[b"change", r, [b"user:%d" % r, b"v"]] for r in (11, 12, 13)]
    shown: list[int] = []

    def on_event(event: StreamEvent, reply: Reply) -> None:
        if isinstance(event, Change):
            shown.append(event.revision)
            if event.revision == 12:
                signal.raise_signal(signal.SIGINT)  # the terminal's Ctrl-C, mid-print

    previous = signal.getsignal(signal.SIGINT)
    result = follow(feed.bridge, feed.conn.stream_client, [b"CHANGES", b"user:"], on_event)
    assert shown == [11, 12] and result.interrupted and result.error is None
    assert result.progress.resume_command() == "CHANGES user: FROM 12"  # shown, so seen
    assert signal.getsignal(signal.SIGINT) is previous
    assert feed.node.stream_closed.wait(3)


def test_a_second_ctrl_c_interrupts_at_once(feed: Setup) -> None:
    feed.node.script = [[b"change", 11, [b"user:1", b"v"]]]

    def on_event(event: StreamEvent, reply: Reply) -> None:
        if isinstance(event, Change):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt here
            raise AssertionError("not reached")

    result = follow(feed.bridge, feed.conn.stream_client, [b"CHANGES", b"user:"], on_event)
    assert result.interrupted and result.progress.changes == 0
    assert feed.node.stream_closed.wait(3)


def test_stop_ends_a_quiet_stream(feed: Setup) -> None:
    events, result = collect(feed, [b"CHANGES", b"user:"], stop_after=1)
    assert events == [Started(b"user:", 10)] and result.interrupted  # type: ignore[attr-defined]
    assert feed.node.stream_closed.wait(3)


def test_compacted_is_an_error_before_the_stream_starts(feed: Setup) -> None:
    feed.node.first = RespError("COMPACTED the changes after revision 3 are no longer held on this node")
    events, result = collect(feed, [b"CHANGES", b"user:", b"FROM", b"3"])
    assert events == [] and not result.interrupted  # type: ignore[attr-defined]
    error = result.error  # type: ignore[attr-defined]
    assert isinstance(error, CommandError) and "COMPACTED" in str(error)


def test_a_stream_the_node_closes_keeps_what_was_seen(feed: Setup) -> None:
    feed.node.script = [[b"change", 11, [b"user:1", b"a"]]]
    feed.node.end = "close"
    events, result = collect(feed, [b"CHANGES", b"user:"])
    assert len(events) == 2 and isinstance(result.error, ConnectionLostError)  # type: ignore[attr-defined]
    assert result.progress.resume_command() == "CHANGES user: FROM 11"  # type: ignore[attr-defined]


def test_the_repl_renders_live_and_says_how_to_resume(feed: Setup) -> None:
    feed.node.first = [b"psubscribe", b"__keyspace@0__:user:*", 1]
    feed.node.script = [[b"pmessage", b"__keyspace@0__:user:*", b"__keyspace@0__:user:9", b"set"]]
    out = io.StringIO()
    with create_pipe_input() as pipe:
        repl = Repl(ShellOptions(addresses=[feed.node.address], pager=False), feed.bridge, feed.conn,
                    Console(file=out, width=160, color_system=None, force_terminal=False),
                    input=pipe, output=DummyOutput(), monitor=False)
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        result = repl.follow([b"PSUBSCRIBE", b"__keyspace@0__:user:*"], stop=stop)
    text = out.getvalue()
    assert result.progress.messages == 1
    assert 'subscribed to pattern "__keyspace@0__:user:*" (1 subscription) · Ctrl-C (or q)' in text
    assert '"user:9"  set' in text
    assert "unsubscribed after 1 message" in text and "CHANGES user: FROM <revision>" in text
    assert "user:9" in repl.knowledge.keys  # keys a stream names complete at the prompt
    assert feed.node.stream_closed.wait(3)


def test_the_repl_sends_a_stream_inside_multi_to_the_node(feed: Setup) -> None:
    with create_pipe_input() as pipe:
        repl = Repl(ShellOptions(addresses=[feed.node.address], pager=False), feed.bridge, feed.conn,
                    Console(file=io.StringIO()), input=pipe, output=DummyOutput(), monitor=False)
        repl.handle_line("MULTI")
        assert feed.conn.session.in_multi
        feed.node.end = "close"
        repl.handle_line("CHANGES user:")  # not followed: the node decides (Aegis refuses it in MULTI)
    assert feed.node.streams() == [1]


def test_a_script_prints_one_json_object_per_change(feed: Setup) -> None:
    feed.node.script = [[b"change", 11, [b"user:1", b"a"]], [b"change", 12, [b"user:1", None]]]
    feed.node.end = "close"
    out, err = io.StringIO(), io.StringIO()
    code = run_script(["CHANGES user:", "GET after"], feed.conn, feed.bridge, mode="json", confirm=True,
                      stdout=out, stderr=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"type": "changes", "prefix": "user:", "revision": 10}
    assert lines[1] == {"type": "change", "revision": 11, "changes": [{"key": "user:1", "value": "a"}]}
    assert lines[2] == {"type": "change", "revision": 12, "changes": [{"key": "user:1", "value": None}]}
    assert "lost the stream" in lines[3]["error"] and lines[4] is None  # the next line still ran
    assert "resume with: CHANGES user: FROM 12" in err.getvalue() and code == 1


def test_raw_mode_prints_the_replies_as_redis_cli_does(feed: Setup) -> None:
    feed.node.script = [[b"change", 11, [b"user:1", b"a"]]]
    feed.node.end = "close"
    out, err = io.StringIO(), io.StringIO()
    run_script(["CHANGES user:"], feed.conn, feed.bridge, mode="raw", confirm=True, stdout=out, stderr=err)
    assert out.getvalue() == "changes\nuser:\n10\nchange\n11\nuser:1\na\n"


# --------------------------------------------------------------------------- AegisClient.stream


async def test_client_stream_reads_every_reply_and_closes_on_exit() -> None:
    node = FeedNode(script=[[b"change", 11, [b"k", b"v"]]])
    async with trio.open_nursery() as nursery:
        address = await node.serve(nursery)
        client = AegisClient([address], timeout=2.0)
        async with client.stream("CHANGES", "user:") as stream:
            assert await stream.receive() == [b"changes", b"user:", 10]
            assert await stream.receive() == [b"change", 11, [b"k", b"v"]]
            assert client.connected
        assert not client.connected
        await trio.to_thread.run_sync(node.stream_closed.wait, 3)
        assert node.stream_closed.is_set()
        assert await client.execute("PING") == "PONG"  # the next command connects afresh
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_client_stream_first_reply_has_a_deadline() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        address = "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        client = AegisClient([address], timeout=0.2)
        with pytest.raises(RequestTimeoutError):
            async with client.stream("CHANGES", "x"):
                pass  # pragma: no cover
        assert not client.connected
        nursery.cancel_scope.cancel()
