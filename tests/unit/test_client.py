"""aegis.client against tiny in-test RESP servers on 127.0.0.1 (port 0).

The fake node speaks RESP through aegis.protocol, parses commands with aegis.commands and
keeps a real aegis.state.StateMachine, so the client's framing is exercised end to end; a
hook per test injects the failures (error replies, dropped connections, silence) that the
client's reconnect and retry rules are about. Real nodes come in tests/e2e.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest
import trio
import trio.testing

from aegis.client import (
    AegisClient,
    AuthenticationError,
    ConnectionLostError,
    ConnectionState,
    NodeUnavailableError,
    RetryPolicy,
    error_from_reply,
    is_retry_safe,
    normalize_address,
    open_client,
    parse_cluster_nodes,
    parse_info,
    parse_info_sections,
)
from aegis.commands import (
    AuthRequest,
    ClusterRequest,
    ErrorReply,
    ExistsRequest,
    InfoRequest,
    LocalReply,
    ReadRequest,
    WriteRequest,
    encode_result,
    parse_command,
)
from aegis.errors import (
    CommandError,
    NoLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TryAgainError,
    UnknownOutcomeError,
)
from aegis.protocol import ProtocolViolation, RespError, RespParser, encode, encode_bulk, encode_error
from aegis.state import StateMachine

FAST = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)

Action = bytes | Literal["close", "hang"] | None
Hook = Callable[["FakeNode", list[bytes]], Awaitable[Action]]


class FakeNode:
    """A RESP server with a real state machine; `hook` may override any reply."""

    def __init__(
        self,
        name: str,
        store: StateMachine | None = None,
        hook: Hook | None = None,
        token: bytes | None = None,
    ) -> None:
        self.name = name
        self.store = store if store is not None else StateMachine()
        self.hook = hook
        self.token = token
        self.seen: list[list[bytes]] = []
        self.connections = 0
        self.address = ""
        self._scope = trio.CancelScope()

    def count(self, name: bytes) -> int:
        return sum(1 for cmd in self.seen if cmd[0].upper() == name)

    async def serve(self, nursery: trio.Nursery) -> str:
        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with self._scope:
                await trio.serve_tcp(self._handle, 0, host="127.0.0.1", task_status=task_status)

        listeners = await nursery.start(run)
        self.address = "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        return self.address

    async def stop(self) -> None:
        """The node dies: listener and every connection closed."""
        self._scope.cancel()
        await trio.testing.wait_all_tasks_blocked()

    def reply(self, argv: list[bytes], authed: bool) -> tuple[bytes, bool]:
        request = parse_command(argv)
        if isinstance(request, AuthRequest):
            if self.token is None:
                return encode_error("ERR AUTH called without any password configured"), authed
            if request.token == self.token:
                return b"+OK\r\n", True
            return encode_error("WRONGPASS invalid username-password pair"), authed
        if not authed:
            return encode_error("NOAUTH Authentication required."), authed
        index = self.store.last_applied + 1
        if isinstance(request, WriteRequest):
            result = self.store.apply(request.command, index)
            assert result is not None
            return encode_result(request.command, result), authed
        if isinstance(request, ReadRequest):
            return encode_result(request.command, self.store.get(request.key)), authed
        if isinstance(request, ExistsRequest):
            return encode(sum(k in self.store for k in request.keys)), authed
        if isinstance(request, InfoRequest):
            text = f"# Server\r\nnode_id:{self.name}\r\n\r\n# Raft\r\nrole:leader\r\nterm:3\r\n"
            return encode_bulk(text.encode()), authed
        if isinstance(request, ClusterRequest):
            text = "n1 127.0.0.1:7001 role=leader status=healthy match_index=9\n"
            return encode_bulk(text.encode()), authed
        if isinstance(request, (LocalReply, ErrorReply)):
            return request.encoded(), authed
        return encode_error("ERR not in the fake"), authed

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        parser = RespParser()
        authed = self.token is None
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                parser.feed(data)
                out = bytearray()
                for argv in parser:
                    if isinstance(argv, ProtocolViolation):
                        await stream.send_all(bytes(out) + argv.reply)
                        return
                    self.seen.append(argv)
                    action = await self.hook(self, argv) if self.hook else None
                    if action == "close":
                        if out:
                            await stream.send_all(bytes(out))
                        return
                    if action == "hang":
                        await trio.sleep_forever()
                    if action is None:
                        action, authed = self.reply(argv, authed)
                    assert isinstance(action, bytes)
                    out += action
                    if argv[0].upper() == b"QUIT":
                        await stream.send_all(bytes(out))
                        return
                if out:
                    try:
                        await stream.send_all(bytes(out))
                    except trio.BrokenResourceError:
                        return


@asynccontextmanager
async def cluster(*nodes: FakeNode) -> AsyncIterator[list[str]]:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            yield [await node.serve(nursery) for node in nodes]
            nursery.cancel_scope.cancel()


def dead_address() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"127.0.0.1:{port}"


def times(n: int, action: Action, on: bytes | None = None) -> Hook:
    """A hook that answers `action` to the first `n` commands (named `on`, if given)."""
    left = [n]

    async def hook(node: FakeNode, argv: list[bytes]) -> Action:
        if (on is None or argv[0].upper() == on) and left[0] > 0:
            left[0] -= 1
            return action
        return None

    return hook


# --------------------------------------------------------------------------- basics


async def test_commands_round_trip() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            assert client.connected and client.state is ConnectionState.CONNECTED
            assert client.address == addrs[0]
            assert await client.execute("PING") == "PONG"
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert await client.get("missing") is None
            assert await client.incr("n") == 1
            assert await client.incr("n", 10) == 11
            assert await client.decr("n") == 10
            assert await client.decr("n", 4) == 6
            assert await client.cas("k", "v", "w") is True
            assert await client.cas("k", "v", "x") is False
            assert await client.exists("k", "n", "nope") == 2
            assert await client.delete("k", "n", "nope") == 2
            await client.set(b"\xff\x00", b"\x00\xff")
            assert await client.get(b"\xff\x00") == b"\x00\xff"
            assert await client.ping() >= 0
        assert client.state.name == "CLOSED" and not client.connected


async def test_error_replies_raise_the_errors_module_types() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            with pytest.raises(CommandError) as err:
                await client.execute("NOSUCH", "x")
            assert err.value.resp_error() == (
                "ERR unknown command 'NOSUCH', with args beginning with: 'x'"
            )
            await client.set("s", "text")
            with pytest.raises(CommandError, match="not an integer"):
                await client.incr("s")
            # The connection survives definite errors.
            assert await client.get("s") == b"text"


def test_error_from_reply() -> None:
    assert type(error_from_reply(RespError("ERR bad"))) is CommandError
    assert error_from_reply(RespError("ERR bad")).message == "bad"
    assert isinstance(error_from_reply(RespError("NOLEADER")), NoLeaderError)
    assert isinstance(error_from_reply(RespError("TIMEOUT slow")), RequestTimeoutError)
    assert isinstance(error_from_reply(RespError("TRYAGAIN later")), TryAgainError)
    assert isinstance(error_from_reply(RespError("NOAUTH Authentication required.")), AuthenticationError)
    assert isinstance(error_from_reply(RespError("WRONGPASS no")), AuthenticationError)
    other = error_from_reply(RespError("NOPROTO sorry"))
    assert type(other) is CommandError and other.message == "NOPROTO sorry"


async def test_pipeline_in_order_with_errors_in_place() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            replies = await client.pipeline([["SET", f"k{i}", i] for i in range(100)])
            assert replies == ["OK"] * 100
            replies = await client.pipeline([["GET", f"k{i}"] for i in range(100)])
            assert replies == [str(i).encode() for i in range(100)]
            mixed = [["INCR", "c"], ["INCR", "k1", "extra"], ["INCR", "c"]]
            out = await client.pipeline(mixed, raise_on_error=False)
            assert out[0] == 1 and out[2] == 2
            assert isinstance(out[1], RespError) and out[1].kind == "ERR"
            with pytest.raises(CommandError, match="wrong number of arguments"):
                await client.pipeline(mixed)
            assert await client.get("c") == b"4"  # every command ran, even after the error
            assert await client.pipeline([]) == []


async def test_big_pipeline_does_not_deadlock_on_full_buffers() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST, timeout=8) as client:
            value = b"x" * 4096
            n = 1500  # ~6 MiB each way: more than the socket buffers hold
            replies = await client.pipeline([["SET", f"k{i}", value] for i in range(n)])
            assert replies == ["OK"] * n
            got = await client.pipeline([["GET", f"k{i}"] for i in range(n)])
            assert got == [value] * n


async def test_concurrent_callers_share_one_client() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            results: list[int] = []

            async def bump() -> None:
                results.append(await client.incr("shared"))

            async with trio.open_nursery() as nursery:
                for _ in range(30):
                    nursery.start_soon(bump)
            assert sorted(results) == list(range(1, 31))


async def test_info_and_cluster_nodes_are_parsed() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            info = await client.info()
            assert info == {"node_id": "n1", "role": "leader", "term": "3"}
            assert (await client.info("raft"))["role"] == "leader"
            nodes = await client.cluster_nodes()
            assert nodes == [
                {
                    "id": "n1",
                    "address": "127.0.0.1:7001",
                    "role": "leader",
                    "status": "healthy",
                    "match_index": "9",
                }
            ]


def test_parsers_for_status_text() -> None:
    text = b"# Server\r\nnode_id:n1\r\n\r\n# Raft\r\nrole:follower\r\nleader_id:n2\r\nweird line\r\n"
    assert parse_info_sections(text) == {
        "server": {"node_id": "n1"},
        "raft": {"role": "follower", "leader_id": "n2"},
    }
    assert parse_info(text) == {"node_id": "n1", "role": "follower", "leader_id": "n2"}
    assert parse_info("a:1\nb:x:y\n") == {"a": "1", "b": "x:y"}
    assert parse_info_sections("a:1") == {"": {"a": "1"}}
    nodes = parse_cluster_nodes("n1 [::1]:7001 myself leader role=leader\n\nn2 h:2 =odd\n")
    assert nodes == [
        {"id": "n1", "address": "[::1]:7001", "flags": "myself,leader", "role": "leader"},
        {"id": "n2", "address": "h:2", "flags": "=odd"},
    ]


def test_addresses_and_retry_safety() -> None:
    assert normalize_address("7001") == "127.0.0.1:7001"
    assert normalize_address(" localhost:7002 ") == "localhost:7002"
    assert normalize_address("[::1]:7003") == "[::1]:7003"
    for bad in ("nohost", "h:0", "h:99999", "::1:7001"):
        with pytest.raises(ValueError):
            normalize_address(bad)
    client = AegisClient("7001, 127.0.0.1:7001,7002")
    assert list(client.seeds) == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert client.state is ConnectionState.DISCONNECTED and not client.connected
    assert client.address == "127.0.0.1:7001"
    client.add_seed("7003")
    client.add_seed("127.0.0.1:7003")
    assert list(client.seeds) == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    with pytest.raises(ValueError):
        AegisClient([])
    with pytest.raises(ValueError):
        AegisClient("7001", timeout=0)

    for safe in (["GET", "k"], [b"get", b"k"], ["EXISTS", "a"], ["PING"], ["INFO"],
                 ["CLUSTER", "NODES"], ["MEMBER", "LIST"], ["cluster", "bogus"]):
        assert is_retry_safe(safe), safe
    for unsafe in (["SET", "k", "v"], ["DEL", "k"], ["INCR", "k"], ["CAS", "k", "a", "b"],
                   ["MEMBER", "ADD", "n4", "h:1"], ["LEADER", "TRANSFER", "n2"], ["NOSUCH"], []):
        assert not is_retry_safe(unsafe), unsafe


def test_retry_policy() -> None:
    import random

    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.25)
    rng = random.Random(1)
    for attempt, base in [(0, 0.1), (1, 0.2), (3, 0.8), (4, 1.0), (1000, 1.0)]:
        delay = policy.delay(attempt, rng)
        assert base * 0.75 <= delay <= base * 1.25
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff=2, max_backoff=1)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.0)


# --------------------------------------------------------------------------- retry rules


async def test_tryagain_is_retried_even_for_writes() -> None:
    node = FakeNode("n1", hook=times(2, b"-TRYAGAIN leadership transfer in progress\r\n", on=b"SET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST) as client:
            await client.set("k", "v")
            assert node.count(b"SET") == 3
            assert await client.get("k") == b"v"


async def test_noleader_on_a_write_is_raised_not_retried() -> None:
    node = FakeNode("n1", hook=times(1, b"-NOLEADER no leader is known\r\n", on=b"SET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST) as client:
            with pytest.raises(NoLeaderError) as err:
                await client.set("k", "v")
            assert isinstance(err.value, UnknownOutcomeError)
            assert node.count(b"SET") == 1
            assert not client.connected  # moved off that node; the next command reconnects
            await client.set("k", "v")
            assert node.count(b"SET") == 2


async def test_timeout_reply_on_a_write_is_raised_not_retried() -> None:
    node = FakeNode("n1", hook=times(1, b"-TIMEOUT not committed in time\r\n", on=b"INCR"))
    async with cluster(node) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST) as client:
            with pytest.raises(RequestTimeoutError):
                await client.incr("n")
            assert node.count(b"INCR") == 1


@pytest.mark.parametrize("reply", [b"-NOLEADER election\r\n", b"-TIMEOUT slow\r\n", b"-TRYAGAIN\r\n"])
async def test_reads_are_retried_through_unknown_outcomes(reply: bytes) -> None:
    node = FakeNode("n1", hook=times(3, reply, on=b"GET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert node.count(b"GET") == 4


async def test_retries_stop_at_the_deadline_with_the_last_error() -> None:
    node = FakeNode("n1", hook=times(10**6, b"-NOLEADER still electing\r\n", on=b"GET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST, timeout=0.3) as client:
            start = trio.current_time()
            with pytest.raises(NoLeaderError, match="still electing"):
                await client.get("k")
            elapsed = trio.current_time() - start
            assert 0.2 < elapsed < 2
            assert node.count(b"GET") > 3


async def test_noleader_moves_to_another_seed() -> None:
    cut_off = FakeNode("n1", hook=times(10**6, b"-NOLEADER partitioned\r\n", on=b"GET"))
    healthy = FakeNode("n2")
    async with cluster(cut_off, healthy) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            assert client.address == addrs[0]
            assert await client.get("k") is None
            assert client.address == addrs[1]


# --------------------------------------------------------------------------- connections


async def test_dead_seeds_are_skipped() -> None:
    async with cluster(FakeNode("n2")) as addrs:
        dead = dead_address()
        async with open_client([dead, addrs[0]], retry=FAST) as client:
            assert client.address == addrs[0]
            assert await client.execute("PING") == "PONG"
            assert client.last_error is None


async def test_no_live_node_is_a_quick_clear_error() -> None:
    with trio.fail_after(5):
        dead = [dead_address(), dead_address()]
        client = AegisClient(dead, retry=FAST)
        with pytest.raises(NodeUnavailableError) as err:
            await client.execute("GET", "k")
        assert dead[0] in str(err.value) and dead[1] in str(err.value)
        assert "refused" in str(err.value)
        assert err.value.definite
        assert client.state is ConnectionState.DISCONNECTED
        assert client.last_error is not None and dead[0] in client.last_error
        with pytest.raises(NodeUnavailableError):
            await AegisClient.connect(dead, retry=FAST)


async def test_a_node_that_died_while_idle_is_replaced_before_sending() -> None:
    store = StateMachine()  # both fakes serve the same data, as a cluster would
    first, second = FakeNode("n1", store), FakeNode("n2", store)
    async with cluster(first, second) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST) as client:
            await client.set("k", "v")
            assert client.address == addrs[0]
            await first.stop()
            # Nothing was sent on the dead connection, so even a write goes through.
            await client.set("k", "w")
            assert client.address == addrs[1]
            assert first.count(b"SET") == 1 and second.count(b"SET") == 1
            assert await client.get("k") == b"w"


async def test_connection_lost_after_a_write_was_sent_is_an_unknown_outcome() -> None:
    node = FakeNode("n1", hook=times(1, "close", on=b"SET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST) as client:
            with pytest.raises(ConnectionLostError) as err:
                await client.set("k", "v")
            assert isinstance(err.value, UnknownOutcomeError) and not err.value.definite
            assert node.count(b"SET") == 1
            assert not client.connected and client.last_error
            await client.set("k", "v")  # the next command reconnects
            assert client.connected and node.connections == 2


async def test_connection_lost_during_a_read_is_retried() -> None:
    node = FakeNode("n1", hook=times(2, "close", on=b"GET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            assert await client.get("k") is None
            assert node.count(b"GET") == 3
            assert node.connections == 3


async def test_safe_pipeline_is_resent_after_a_loss_and_unsafe_is_not() -> None:
    node = FakeNode("n1", hook=times(1, "close", on=b"EXISTS"))
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            assert await client.pipeline([["GET", "a"], ["EXISTS", "a"]]) == [None, 0]
            node.hook = times(1, "close", on=b"EXISTS")
            with pytest.raises(ConnectionLostError):
                await client.pipeline([["SET", "a", "1"], ["EXISTS", "a"]])


async def test_no_reply_in_time_raises_and_a_late_reply_is_never_misread() -> None:
    async def slow_once(node: FakeNode, argv: list[bytes]) -> Action:
        if argv == [b"GET", b"slow"] and node.count(b"GET") == 1:
            await trio.sleep(0.3)
            return encode_bulk(b"late")
        return None

    node = FakeNode("n1", hook=slow_once)
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST, timeout=2) as client:
            await client.set("fast", "right")
            with pytest.raises(RequestTimeoutError, match="outcome is unknown"):
                await client.execute("GET", "slow", timeout=0.1)
            assert not client.connected
            assert await client.get("fast") == b"right"
            await trio.sleep(0.3)
            assert await client.get("fast") == b"right"


async def test_a_write_that_hangs_times_out_as_unknown_outcome() -> None:
    node = FakeNode("n1", hook=times(1, "hang", on=b"SET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, sessions=False, retry=FAST, timeout=0.2) as client:
            with pytest.raises(RequestTimeoutError):
                await client.set("k", "v")
            assert node.count(b"SET") == 1


async def test_cancelling_a_request_drops_the_connection() -> None:
    async def slow(node: FakeNode, argv: list[bytes]) -> Action:
        if argv[0] == b"GET" and argv[1] == b"slow":
            await trio.sleep(0.2)
        return None

    node = FakeNode("n1", hook=slow)
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            await client.set("slow", "1")
            await client.set("other", "2")
            with trio.move_on_after(0.05):
                await client.get("slow")
            assert not client.connected
            assert await client.get("other") == b"2"
            await trio.sleep(0.25)
            assert await client.get("other") == b"2"


async def test_a_malformed_reply_is_a_protocol_error() -> None:
    node = FakeNode("n1", hook=times(1, b"?garbage\r\n", on=b"GET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            with pytest.raises(ProtocolError, match="malformed reply"):
                await client.get("k")
            assert not client.connected
            assert await client.get("k") is None


async def test_server_closing_after_quit_is_handled() -> None:
    node = FakeNode("n1")
    async with cluster(node) as addrs:
        async with open_client(addrs, retry=FAST) as client:
            assert await client.execute("QUIT") == "OK"
            await trio.testing.wait_all_tasks_blocked()
            await client.set("k", "v")  # the closed connection is noticed before sending
            assert node.connections == 2
            await client.disconnect()
            assert not client.connected
            assert await client.execute("PING") == "PONG"


async def test_lazy_client_connects_on_first_command() -> None:
    async with cluster(FakeNode("n1")) as addrs:
        async with open_client(addrs, retry=FAST, lazy=True) as client:
            assert not client.connected
            assert await client.ensure_connected() == addrs[0]
            assert client.connected


# --------------------------------------------------------------------------- auth


async def test_token_is_sent_on_every_connection() -> None:
    node = FakeNode("n1", token=b"s3cret", hook=times(1, "close", on=b"GET"))
    async with cluster(node) as addrs:
        async with open_client(addrs, token="s3cret", retry=FAST, client_name="tests") as client:
            assert await client.get("k") is None  # reconnected, and authenticated again
            assert node.count(b"AUTH") == 2
            assert node.count(b"CLIENT") == 2


async def test_wrong_or_missing_token() -> None:
    node = FakeNode("n1", token=b"s3cret")
    async with cluster(node) as addrs:
        with pytest.raises(AuthenticationError, match="refused the token"):
            await AegisClient.connect(addrs, token="wrong", retry=FAST)
        async with open_client(addrs, retry=FAST) as client:
            with pytest.raises(AuthenticationError, match="NOAUTH"):
                await client.get("k")
