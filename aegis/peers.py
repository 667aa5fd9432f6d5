"""The TCP transport between nodes: framing, the handshake, and the ConnectionPool.

Theory of operation
-------------------
Clients and peers share one port. A peer connection starts with `PEER_MAGIC` (its first byte
is NUL, which no RESP or inline client sends), then length-prefixed frames whose first byte
says what they carry:

* ``M`` + a wire message (aegis.transport codec: Raft messages, forwarded client requests
  and their responses, the handshake) — msgpack, never pickle;
* ``S`` + a chunk of a snapshot file, ``E`` at its end (InstallSnapshot, streamed);
* ``P`` a ping, so each side knows the other is alive even when Raft is quiet;
* ``A`` / ``R`` + reason: the answer to a handshake.

The first frame is a `Handshake` naming the caller's node id and cluster: identity is by
name, never by source address, so proxies and NAT in between are fine. The receiver refuses
strangers and other clusters with a reason and closes.

Until its handshake is accepted a connection is a stranger's, and may make the node hold
little: at most `HANDSHAKE_FRAME_LIMIT` for the frame (a larger declared length is refused
from its 4-byte header, before any of it is buffered), `PREAUTH_PEER_BYTES` in all, within
a node-wide `ByteBudget` shared by every connection still shaking hands, and for at most
`HANDSHAKE_TIMEOUT`. Only an accepted peer may send frames of up to `MAX_PEER_FRAME`.

Connections are one-way: each node keeps one *outgoing* connection per peer
(`ConnectionPool`), fed by a bounded queue, reconnecting with exponential back-off; what it
receives arrives on the peers' outgoing connections. A full queue drops the message — Raft
retransmits — rather than letting a slow peer stall the node. A connection failure empties
the queue (stale appends only slow recovery) and tells the node (`on_unreachable`), which
tells the Raft core to fall back from pipelining to probing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import trio

from .budget import Account, ByteBudget
from .messages import InstallSnapshotRequest
from .node import parse_address
from .transport import Handshake, PayloadPacker, decode, encode

log = logging.getLogger("aegis.peers")

PEER_MAGIC = b"\x00AEGIS-PEER/1\n"
FRAME_MSG = b"M"
FRAME_SNAP_CHUNK = b"S"
FRAME_SNAP_END = b"E"
FRAME_PING = b"P"
FRAME_ACCEPT = b"A"
FRAME_REJECT = b"R"
MAX_PEER_FRAME = 64 << 20
HANDSHAKE_FRAME_LIMIT = 4 << 10  # a handshake is ~100 bytes: ids, cluster name, token
PREAUTH_PEER_BYTES = 8 << 10  # all a connection may make the node hold before it is accepted
PREAUTH_PEER_BUDGET = 4 << 20  # ... all such connections together (see `handshake_budget`)
HANDSHAKE_TIMEOUT = 5.0
SNAPSHOT_CHUNK = 256 << 10
QUEUE_DEPTH = 4096
CONNECT_TIMEOUT = 2.0
MAX_BACKOFF = 1.0

Outgoing = tuple[bytes, Any]  # (frame kind, payload)


def frame(body: bytes) -> bytes:
    """A length-prefixed frame: 4-byte big-endian length, then `body`."""
    return len(body).to_bytes(4, "big") + body


def handshake_budget() -> ByteBudget:
    """The node-wide budget of the connections that have not completed a handshake."""
    return ByteBudget(PREAUTH_PEER_BUDGET, "input from unaccepted peers")


async def read_frame(stream: trio.abc.ReceiveStream, buf: bytearray, limit: int = MAX_PEER_FRAME,
                     account: Account | None = None, allowance: int | None = None) -> bytes | None:
    """The next frame from `stream` (None at EOF); `buf` carries bytes between calls.

    A frame longer than `limit` is refused from its header (ValueError). With an `account`,
    `buf` is charged to it after every read (and `allowance` caps it); a refusal is a
    ValueError with the reason."""
    chunk = 1 << 20 if allowance is None else allowance
    while True:
        if len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > limit:
                raise ValueError(f"peer frame of {size} bytes exceeds the limit of {limit}")
            if len(buf) >= 4 + size:
                body = bytes(buf[4 : 4 + size])
                del buf[: 4 + size]
                return body
        data = await stream.receive_some(chunk)
        if not data:
            return None
        buf += data
        if account is not None and (why := account.hold(len(buf), allowance, "this peer connection")):
            raise ValueError(why)


async def safe_send(stream: trio.abc.SendStream, data: bytes) -> None:
    """Best effort: used for farewells on connections that are being closed anyway."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def accept_handshake(
    stream: trio.abc.Stream, buf: bytearray, refuse: Callable[[Handshake], str | None],
    budget: ByteBudget | None = None,
) -> Handshake | None:
    """The receiving side of a peer connection, after the first bytes were read into `buf`.

    Returns the caller's handshake once accepted, or None after refusing it (the reason is
    sent to the caller, who logs it). Until then the connection's bytes are charged to
    `budget` (the node's `handshake_budget()`), within `PREAUTH_PEER_BYTES` of its own."""
    account = (budget or handshake_budget()).account()
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            return await _accept_handshake(stream, buf, refuse, account)
    except trio.TooSlowError:
        log.info("refused a peer connection: no handshake within %g s", HANDSHAKE_TIMEOUT)
        await safe_send(stream, frame(FRAME_REJECT + f"no handshake within {HANDSHAKE_TIMEOUT:g} s".encode()))
        return None
    finally:
        account.close()


async def _accept_handshake(
    stream: trio.abc.Stream, buf: bytearray, refuse: Callable[[Handshake], str | None], account: Account
) -> Handshake | None:
    while len(buf) < len(PEER_MAGIC):
        more = await stream.receive_some(len(PEER_MAGIC) - len(buf))
        if not more:
            return None
        buf += more
    if bytes(buf[: len(PEER_MAGIC)]) != PEER_MAGIC:
        await safe_send(stream, b"-ERR Protocol error: not a RESP request or an Aegis peer\r\n")
        return None
    try:
        why = account.hold(len(buf), PREAUTH_PEER_BYTES, "this peer connection")
        if why is not None:
            raise ValueError(why)
        del buf[: len(PEER_MAGIC)]
        body = await read_frame(stream, buf, HANDSHAKE_FRAME_LIMIT, account, PREAUTH_PEER_BYTES)
    except ValueError as exc:  # too long, or too much held: refused before it is buffered
        log.info("refused a peer connection before its handshake: %s", exc)
        await safe_send(stream, frame(FRAME_REJECT + f"handshake refused: {exc}".encode()))
        return None
    if body is None:
        return None
    try:
        hs = decode(body[1:]) if body[:1] == FRAME_MSG else None
    except Exception as exc:  # noqa: BLE001 - any malformed handshake is refused the same way
        await safe_send(stream, frame(FRAME_REJECT + f"malformed handshake: {exc}".encode()))
        return None
    if not isinstance(hs, Handshake):
        await safe_send(stream, frame(FRAME_REJECT + b"expected a handshake"))
        return None
    why = refuse(hs)
    if why:
        log.warning("refused peer connection from %r: %s", hs.node_id, why)
        await safe_send(stream, frame(FRAME_REJECT + why.encode()))
        return None
    await stream.send_all(frame(FRAME_ACCEPT))
    return hs


class ConnectionPool:
    """One outgoing connection per peer, each with a bounded send queue and its own task."""

    def __init__(
        self,
        handshake: Handshake,
        addresses: Callable[[], dict[str, str]],
        *,
        ping_interval: float,
        pack_payload: PayloadPacker | None,
        on_unreachable: Callable[[str, str], None],
        stream_snapshot: Callable[[str, trio.SocketStream, InstallSnapshotRequest], Awaitable[None]],
        packer_for: Callable[[str], PayloadPacker] | None = None,
    ) -> None:
        self.handshake = handshake
        self.addresses = addresses
        self.ping_interval = ping_interval
        self.pack_payload = pack_payload
        self.on_unreachable = on_unreachable
        self.stream_snapshot = stream_snapshot
        #: The payload packer for one peer (it knows which zstd dictionaries that peer
        #: holds, aegis.zdict); default `pack_payload` for all.
        self.packer_for = packer_for
        self.connected: dict[str, bool] = {}
        self.bytes_sent = 0  # frames written to peers (snapshot files are counted by the node)
        self._queues: dict[str, trio.MemorySendChannel[Outgoing]] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def retain(self, peers: Iterable[str]) -> None:
        """Keep a connection to exactly `peers`: start the new ones, stop the others."""
        wanted = set(peers)
        for pid in sorted(set(self._scopes) - wanted):
            self._scopes.pop(pid).cancel()
            self._queues.pop(pid).close()
            self.connected.pop(pid, None)
        if self._nursery is None:
            return
        for pid in sorted(wanted - set(self._scopes)):
            send, recv = trio.open_memory_channel[Outgoing](QUEUE_DEPTH)
            scope = trio.CancelScope()
            self._queues[pid] = send
            self._scopes[pid] = scope
            self._nursery.start_soon(self._sender, pid, recv, scope)

    def send(self, pid: str, kind: bytes, payload: Any = None) -> bool:
        """Queue a frame for `pid`; False if there is no connection task or its queue is full."""
        q = self._queues.get(pid)
        if q is None:
            return False
        try:
            q.send_nowait((kind, payload))
            return True
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False  # Raft tolerates loss; a full queue means the peer is slow or gone

    async def _sender(self, pid: str, queue: trio.MemoryReceiveChannel[Outgoing], scope: trio.CancelScope) -> None:
        backoff = 0.05
        with scope:
            while True:
                addr = self.addresses().get(pid)
                if addr is None:
                    await trio.sleep(0.5)
                    continue
                try:
                    host, port = parse_address(addr)
                    with trio.fail_after(CONNECT_TIMEOUT):
                        stream = await trio.open_tcp_stream(host, port)
                    async with stream:
                        await stream.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(self.handshake)))
                        with trio.fail_after(CONNECT_TIMEOUT):
                            reply = await read_frame(stream, bytearray())
                        if reply is None or not reply.startswith(FRAME_ACCEPT):
                            why = (reply or b"Rconnection closed")[1:].decode(errors="replace")
                            raise ConnectionError(f"{pid} refused the handshake: {why}")
                        if backoff > 0.05:
                            log.info("connected to peer %s at %s", pid, addr)
                        backoff = 0.05
                        self.connected[pid] = True
                        await self._pump(pid, stream, queue)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                        ConnectionError, ValueError) as exc:
                    self.connected[pid] = False
                    reason = str(exc) or exc.__class__.__name__
                    if backoff >= 0.4:
                        log.debug("peer %s unreachable: %s", pid, reason)
                    self.on_unreachable(pid, reason)
                    while True:  # stale messages only slow recovery: Raft resends
                        try:
                            queue.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    async def _pump(self, pid: str, stream: trio.SocketStream, queue: trio.MemoryReceiveChannel[Outgoing]) -> None:
        pack = self.packer_for(pid) if self.packer_for is not None else self.pack_payload
        while True:
            item = None
            with trio.move_on_after(self.ping_interval):
                item = await queue.receive()
            if item is None:
                await stream.send_all(frame(FRAME_PING))
                self.bytes_sent += 5
                continue
            items = [item]
            while len(items) < 1024:
                try:
                    items.append(queue.receive_nowait())
                except trio.WouldBlock:
                    break
            buf = bytearray()
            for kind, payload in items:
                if kind == FRAME_MSG and isinstance(payload, InstallSnapshotRequest):
                    if buf:
                        await stream.send_all(bytes(buf))
                        self.bytes_sent += len(buf)
                        buf.clear()
                    await self.stream_snapshot(pid, stream, payload)
                    continue
                buf += frame(kind + (encode(payload, pack) if kind == FRAME_MSG else b""))
            if buf:
                await stream.send_all(bytes(buf))
                self.bytes_sent += len(buf)


async def send_snapshot_file(stream: trio.SocketStream, msg: InstallSnapshotRequest, path: Path) -> None:
    """Stream InstallSnapshot: the request frame, then the snapshot file in chunks, then E."""
    await stream.send_all(frame(FRAME_MSG + encode(msg)))
    with open(path, "rb") as f:
        while True:
            chunk = await trio.to_thread.run_sync(f.read, SNAPSHOT_CHUNK)
            if not chunk:
                break
            await stream.send_all(frame(FRAME_SNAP_CHUNK + chunk))
    await stream.send_all(frame(FRAME_SNAP_END))


def fsync_close(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
