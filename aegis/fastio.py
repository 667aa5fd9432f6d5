"""A trio stream over a plain TCP socket's file descriptor, for the node's peer links.

trio's `SocketStream` passes through the scheduler on every call, even when the socket is
ready: `receive_some` and `send_all` each end with a checkpoint. A follower reads every
AppendEntries that way, so the stream layer was a large part of what one message cost.

`FdStream` reads and writes the descriptor directly (non-blocking, as trio left it) and
only waits, with `trio.lowlevel.wait_readable`/`wait_writable`, when the socket is not
ready. It still honours cancellation at every call (`checkpoint_if_cancelled`), and
after `FAIR_STREAK` calls in a row that did not wait it yields once, so a peer that
always has data ready cannot keep the other tasks from running.

The node uses it for incoming peer connections over plain TCP (TLS keeps trio's
`SSLStream`), after the first read, which went through the `SocketStream`. Client
connections keep the `SocketStream`: measured with 64 unpipelined clients, skipping those
checkpoints made the leader slower (its Raft loop then saw fewer commands per turn).
`aclose` wakes a task waiting on the descriptor and closes the `SocketStream` it wraps.
Errors are trio's: `BrokenResourceError` for a socket that failed, `ClosedResourceError`
after `aclose`.
"""

from __future__ import annotations

import errno
import os

import trio

#: Calls that found the socket ready, in a row, before one yields to the scheduler.
FAIR_STREAK = 16


class FdStream(trio.abc.Stream):
    """`receive_some`/`send_all` straight on the descriptor of a `trio.SocketStream`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._streak = 0
        self._closed = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def _fair(self) -> None:
        self._streak += 1
        if self._streak >= FAIR_STREAK:
            self._streak = 0
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        n = 65536 if max_bytes is None else max_bytes
        while True:
            try:
                data = os.read(self._fd, n)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(self._fd)
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed") from None
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            await self._fair()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data).cast("B")
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_writable(self._fd)
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed") from None
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            view = view[sent:]
        await self._fair()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)  # wakes a task waiting on it
        await self._stream.aclose()


def _broken(exc: OSError) -> Exception:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the stream was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
