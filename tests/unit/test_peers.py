"""aegis.peers: framing and the receiving side of the handshake, over in-memory streams.

A connection that has not been accepted is a stranger's: it may make the node hold only a
small handshake frame, within a node-wide budget, for a few seconds (issue 11)."""

from __future__ import annotations

import functools
from typing import Any

import trio
import trio.testing

from aegis.budget import ByteBudget
from aegis.peers import (
    FRAME_MSG,
    FRAME_REJECT,
    HANDSHAKE_FRAME_LIMIT,
    HANDSHAKE_TIMEOUT,
    MAX_PEER_FRAME,
    PEER_MAGIC,
    PREAUTH_PEER_BYTES,
    accept_handshake,
    dial_handshake,
    frame,
    read_frame,
)
from aegis.peerauth import PeerAuth, new_nonce
from aegis.transport import Handshake, encode

HELLO = PEER_MAGIC + frame(FRAME_MSG + encode(Handshake(node_id="n2", cluster="aegis", nonce=b"n" * 32)))
AUTH = PeerAuth(b"test-cluster-secret")


def accept_all(hs: Handshake) -> str | None:
    return None


async def answer(caller: trio.abc.Stream) -> bytes:
    """The frame the receiver sent back (ACCEPT, or REJECT + reason)."""
    body = await read_frame(caller, bytearray())
    assert body is not None
    return body


async def handshake(first: bytes, more: bytes = b"", budget: ByteBudget | None = None) -> tuple[Handshake | None, bytes]:
    caller, receiver = trio.testing.memory_stream_pair()
    if more:
        await caller.send_all(more)
    hs = await accept_handshake(receiver, bytearray(first), accept_all, budget, auth=AUTH, me="n1")
    return hs, await answer(caller)


async def honest(budget: ByteBudget | None = None) -> Handshake | None:
    """A dialer that knows the secret against the acceptor, over an in-memory stream pair."""
    caller, receiver = trio.testing.memory_stream_pair()
    result: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        async def accept() -> None:
            result.append(await accept_handshake(receiver, bytearray(), accept_all, budget, auth=AUTH, me="n1"))

        nursery.start_soon(accept)
        await dial_handshake(caller, Handshake(node_id="n2", cluster="aegis", nonce=new_nonce()), AUTH, "n1", "test")
    return result[0]


async def test_an_honest_handshake_is_accepted_and_holds_nothing_after() -> None:
    budget = ByteBudget(1 << 20, "input from unaccepted peers")
    hs = await honest(budget)
    assert hs is not None and hs.node_id == "n2"
    assert budget.held == 0


async def test_a_stranger_cannot_declare_a_big_frame_before_it_is_accepted() -> None:
    # A legal 64 MiB frame, from a connection that has not been accepted: refused from its
    # header, before a byte of it is buffered.
    budget = ByteBudget(1 << 20, "input from unaccepted peers")
    hs, reply = await handshake(PEER_MAGIC + MAX_PEER_FRAME.to_bytes(4, "big") + b"x" * 1000, budget=budget)
    assert hs is None
    assert reply == FRAME_REJECT + (f"handshake refused: peer frame of {MAX_PEER_FRAME} bytes exceeds the "
                                    f"limit of {HANDSHAKE_FRAME_LIMIT}").encode()
    assert budget.held == 0


async def test_a_stranger_cannot_send_more_than_its_allowance_before_it_is_accepted() -> None:
    hs, reply = await handshake(PEER_MAGIC + b"\x00" * 65536)
    assert hs is None
    assert reply.startswith(FRAME_REJECT + b"handshake refused: this peer connection would hold")
    assert f"its limit is {PREAUTH_PEER_BYTES >> 10} KiB".encode() in reply


async def test_strangers_together_stay_within_the_node_budget() -> None:
    budget = ByteBudget(5000, "input from unaccepted peers")
    half = PEER_MAGIC + HANDSHAKE_FRAME_LIMIT.to_bytes(4, "big") + b"h" * 3000  # a frame left unfinished
    results: list[tuple[Handshake | None, bytes]] = []
    first_caller, first_receiver = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        async def slow() -> None:
            hs = await accept_handshake(first_receiver, bytearray(half), accept_all, budget, auth=AUTH, me="n1")
            results.append((hs, await answer(first_caller)))

        nursery.start_soon(slow)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.held == len(half)
        # A second stranger would take the node past its budget: it is refused, the first waits.
        hs, reply = await handshake(half, budget=budget)
        assert hs is None
        assert reply.startswith(FRAME_REJECT + b"handshake refused: the node's budget for input from "
                                               b"unaccepted peers (5000 bytes) is used up")
        assert budget.held == len(half)
        await first_caller.send_all(b"h" * (HANDSHAKE_FRAME_LIMIT - 3000))
    assert results[0][0] is None and results[0][1] == FRAME_REJECT + b"expected a handshake"
    assert budget.held == 0
    hs = await honest(budget)  # room again
    assert hs is not None


async def test_a_stranger_that_stalls_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    caller, receiver = trio.testing.memory_stream_pair()
    start = trio.current_time()
    hs = await accept_handshake(receiver, bytearray(PEER_MAGIC[:1]), accept_all, auth=AUTH, me="n1")
    assert hs is None and trio.current_time() - start == HANDSHAKE_TIMEOUT
    assert await answer(caller) == FRAME_REJECT + b"no handshake within 5 s"


async def test_an_accepted_peer_may_send_frames_up_to_the_limit() -> None:
    caller, receiver = trio.testing.memory_stream_pair()
    await caller.send_all(frame(b"M" + b"e" * (HANDSHAKE_FRAME_LIMIT * 4)))
    body = await read_frame(receiver, bytearray())
    assert body is not None and len(body) == HANDSHAKE_FRAME_LIMIT * 4 + 1


async def pool_to(nursery: trio.Nursery, serve: Any, *, ping_interval: float) -> Any:
    """A ConnectionPool of "n2" connected over real TCP to `serve` as "n1", its sender
    parked (so `send` writes directly)."""
    from aegis.peers import ConnectionPool

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]

    async def no_snapshot(pid: str, stream: trio.abc.Stream, msg: object) -> None:
        raise AssertionError("no snapshot here")

    pool = ConnectionPool(Handshake(node_id="n2", cluster="aegis"), lambda: {"n1": f"127.0.0.1:{port}"},
                          ping_interval=ping_interval, pack_payload=None, on_unreachable=lambda pid, why: None,
                          stream_snapshot=no_snapshot, auth=AUTH)
    pool.start(nursery)
    pool.retain(["n1"])
    with trio.fail_after(10):
        while not pool._direct:  # connected, its sender parked: direct writes are on
            await trio.sleep(0.01)
    return pool


async def test_frames_written_directly_and_queued_arrive_whole_and_in_order() -> None:
    """ConnectionPool.send writes a frame straight to the socket while the sender is idle; a
    receiver that stops reading fills the socket, and from the first frame the socket takes
    only in part, the rest goes through the queue: over real TCP every frame arrives whole
    and in the order it was sent."""
    from aegis.log import LogEntry
    from aegis.messages import AppendEntriesRequest
    from aegis.transport import decode

    n, size = 400, 32 << 10
    received: list[int] = []
    reading = trio.Event()
    done = trio.Event()

    async def serve(stream: trio.SocketStream) -> None:
        first = await stream.receive_some(65536)
        buf = bytearray(first)
        assert await accept_handshake(stream, buf, accept_all, auth=AUTH, me="n1") is not None
        await reading.wait()  # meanwhile the sender's socket and ours fill up
        while len(received) < n:
            body = await read_frame(stream, buf, MAX_PEER_FRAME)
            assert body is not None
            if body[:1] == FRAME_MSG:
                msg = decode(body[1:])
                assert isinstance(msg, AppendEntriesRequest)
                received.append(msg.prev_log_index)
        done.set()

    async with trio.open_nursery() as nursery:
        pool = await pool_to(nursery, serve, ping_interval=0.05)
        for i in range(n):  # all at once, as the Raft loop sends: no await in between
            e = LogEntry(i + 1, 1, data=bytes([i % 251]) * size)
            assert pool.send("n1", FRAME_MSG, AppendEntriesRequest(term=1, leader_id="n2", receiver="n1",
                                                                   prev_log_index=i, prev_log_term=1 if i else 0,
                                                                   entries=(e,)))
        assert 1 <= pool.direct_frames < n  # both paths were taken
        reading.set()
        with trio.fail_after(20):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert received == list(range(n))


async def test_a_link_busy_with_direct_frames_sends_no_pings_and_a_quiet_one_does() -> None:
    """Pings keep a quiet link alive; frames `send` wrote itself count as traffic, so a
    leader's heartbeats (written directly) are not doubled by pings."""
    from aegis.messages import AppendEntriesRequest
    from aegis.peers import FRAME_PING

    kinds: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray(await stream.receive_some(65536))
        assert await accept_handshake(stream, buf, accept_all, auth=AUTH, me="n1") is not None
        while True:
            body = await read_frame(stream, buf, MAX_PEER_FRAME)
            if body is None:
                return
            kinds.append(body[:1])

    async with trio.open_nursery() as nursery:
        pool = await pool_to(nursery, serve, ping_interval=0.1)
        heartbeat = AppendEntriesRequest(term=1, leader_id="n2", receiver="n1", prev_log_index=0,
                                         prev_log_term=0, heartbeat=True)
        kinds.clear()
        for _ in range(20):  # a frame every 40 ms for 0.8 s
            assert pool.send("n1", FRAME_MSG, heartbeat)
            await trio.sleep(0.04)
        await trio.sleep(0.02)
        busy = list(kinds)
        assert busy.count(FRAME_MSG) == 20 and FRAME_PING not in busy
        await trio.sleep(0.55)  # quiet: pings every 0.1 s
        assert kinds[len(busy):].count(FRAME_PING) >= 3
        nursery.cancel_scope.cancel()
