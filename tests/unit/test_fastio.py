"""aegis.fastio.FdStream over real loopback TCP: data, back-pressure, EOF, errors,
cancellation, closing, fairness."""

from __future__ import annotations

import functools
import socket
from typing import AsyncIterator

import pytest
import trio

from aegis.fastio import FAIR_STREAK, FdStream


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FdStream, trio.SocketStream]]:
    """(an FdStream on the server side of a connection, the client's SocketStream)."""
    accepted: list[trio.SocketStream] = []
    got = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        got.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await got.wait()
        yield FdStream(accepted[0]), client
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_bytes_go_both_ways(pair: tuple[FdStream, trio.SocketStream]) -> None:
    fd, client = pair
    await client.send_all(b"hello")
    assert await fd.receive_some(100) == b"hello"
    await fd.send_all(bytearray(b"world"))
    assert await client.receive_some(100) == b"world"


async def test_a_big_send_waits_for_the_reader_and_arrives_whole(pair: tuple[FdStream, trio.SocketStream]) -> None:
    fd, client = pair
    data = bytes(range(256)) * (64 << 10)  # 16 MiB: far more than the socket buffers hold
    got = bytearray()

    async def read() -> None:
        await trio.sleep(0.2)  # the sender fills the buffers and must wait
        while len(got) < len(data):
            got.extend(await client.receive_some(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await fd.send_all(memoryview(data))
    assert bytes(got) == data


async def test_eof_and_a_reset_connection(pair: tuple[FdStream, trio.SocketStream]) -> None:
    fd, client = pair
    await client.send_eof()
    assert await fd.receive_some(10) == b""
    sock = client.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await client.aclose()  # linger 0: the peer gets a reset
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):
            await fd.send_all(b"x" * 65536)
            await trio.sleep(0.01)


async def test_a_waiting_receive_is_cancellable_and_closing_wakes_it(pair: tuple[FdStream, trio.SocketStream]) -> None:
    fd, client = pair
    with trio.move_on_after(0.1) as scope:
        await fd.receive_some(10)
    assert scope.cancelled_caught
    errors: list[BaseException] = []

    async def wait_for_data() -> None:
        try:
            await fd.receive_some(10)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_data)
        await trio.sleep(0.05)
        await fd.aclose()
    assert len(errors) == 1
    with pytest.raises(trio.ClosedResourceError):
        await fd.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await fd.send_all(b"x")


async def test_a_reader_that_always_has_data_still_lets_others_run(pair: tuple[FdStream, trio.SocketStream]) -> None:
    fd, client = pair
    await client.send_all(b"y" * (4 * FAIR_STREAK))
    ticks = 0

    async def other() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = ticks
        for _ in range(4 * FAIR_STREAK):
            assert await fd.receive_some(1) == b"y"
        assert ticks - before >= 3  # it yielded every FAIR_STREAK ready reads
        nursery.cancel_scope.cancel()
