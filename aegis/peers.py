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
* ``C`` nonce + proof + id / ``K`` proof: the HMAC challenge and its answer (aegis.peerauth);
* ``A`` / ``R`` + reason: the answer to a handshake.

The first frame is a `Handshake` naming the caller's node id and cluster, with a fresh
nonce: identity is by name, never by source address, so proxies and NAT in between are
fine. The receiver refuses strangers and other clusters with a reason and closes; then both
sides prove they know the cluster secret (`C`, `K`: see aegis.peerauth), and a caller that
cannot is refused, logged, and closed before anything else it sends is read. With TLS
(`--tls-*`) all of this runs inside a mutually authenticated TLS session.

Until its handshake is accepted a connection is a stranger's, and may make the node hold
little: at most `HANDSHAKE_FRAME_LIMIT` for the frame (a larger declared length is refused
from its 4-byte header, before any of it is buffered), `PREAUTH_PEER_BYTES` in all, within
a node-wide `ByteBudget` shared by every connection still shaking hands, and for at most
`HANDSHAKE_TIMEOUT`. Only an accepted peer may send frames of up to `MAX_PEER_FRAME`.

Connections are one-way: each node keeps one *outgoing* connection per peer
(`ConnectionPool`), fed by a bounded queue, reconnecting with exponential back-off; what it
receives arrives on the peers' outgoing connections. While a connection's sender task is
idle, `send` writes a frame to the socket itself (one non-blocking write, from the Raft
loop) and only what the socket does not take goes through the queue. A full queue drops the message — Raft
retransmits — rather than letting a slow peer stall the node. A connection failure empties
the queue (stale appends only slow recovery) and tells the node (`on_unreachable`), which
tells the Raft core to fall back from pipelining to probing.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import trio

from .budget import Account, ByteBudget
from .messages import InstallSnapshotRequest
from .node import parse_address
from .peerauth import NONCE_LEN, PROOF_LEN, PeerAuth, new_nonce
from .transport import PROTOCOL_VERSION, Handshake, PayloadPacker, decode, encode

log = logging.getLogger("aegis.peers")

PEER_MAGIC = b"\x00AEGIS-PEER/1\n"
FRAME_MSG = b"M"
FRAME_SNAP_CHUNK = b"S"
FRAME_SNAP_END = b"E"
FRAME_PING = b"P"
FRAME_ACCEPT = b"A"
FRAME_REJECT = b"R"
FRAME_CHALLENGE = b"C"
FRAME_PROOF = b"K"
MAX_PEER_FRAME = 64 << 20
HANDSHAKE_FRAME_LIMIT = 4 << 10  # a handshake is ~100 bytes: ids, cluster name, nonce
PREAUTH_PEER_BYTES = 8 << 10  # all a connection may make the node hold before it is accepted
PREAUTH_PEER_BUDGET = 4 << 20  # ... all such connections together (see `handshake_budget`)
HANDSHAKE_TIMEOUT = 5.0
SNAPSHOT_CHUNK = 256 << 10
QUEUE_DEPTH = 4096
CONNECT_TIMEOUT = 2.0
MAX_BACKOFF = 1.0

Outgoing = tuple[bytes, Any]  # (frame kind, payload)
_RAW = b"raw"  # a queue item of bytes already framed (never a frame kind: those are 1 byte)


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
    budget: ByteBudget | None = None, *, auth: PeerAuth, me: str,
) -> Handshake | None:
    """The receiving side of a peer connection, after the first bytes were read into `buf`.

    Returns the caller's handshake once it proved it knows the cluster secret (see
    aegis.peerauth; `me` is this node's id), or None after refusing it (the reason is sent
    to the caller, who logs it). Until then the connection's bytes are charged to `budget`
    (the node's `handshake_budget()`), within `PREAUTH_PEER_BYTES` of its own."""
    account = (budget or handshake_budget()).account()
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            return await _accept_handshake(stream, buf, refuse, account, auth, me)
    except trio.TooSlowError:
        log.info("refused a peer connection: no handshake within %g s", HANDSHAKE_TIMEOUT)
        await safe_send(stream, frame(FRAME_REJECT + f"no handshake within {HANDSHAKE_TIMEOUT:g} s".encode()))
        return None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return None  # the caller went away mid-handshake (over TLS, a ragged EOF raises)
    finally:
        account.close()


async def _read_preauth(stream: trio.abc.Stream, buf: bytearray, account: Account) -> bytes | None:
    """One frame from a connection not yet accepted, within its small allowance; a
    refusal is sent and None returned (as at EOF)."""
    try:
        body = await read_frame(stream, buf, HANDSHAKE_FRAME_LIMIT, account, PREAUTH_PEER_BYTES)
    except ValueError as exc:  # too long, or too much held: refused before it is buffered
        log.info("refused a peer connection before its handshake: %s", exc)
        await safe_send(stream, frame(FRAME_REJECT + f"handshake refused: {exc}".encode()))
        return None
    return body


async def _accept_handshake(
    stream: trio.abc.Stream, buf: bytearray, refuse: Callable[[Handshake], str | None], account: Account,
    auth: PeerAuth, me: str,
) -> Handshake | None:
    while len(buf) < len(PEER_MAGIC):
        more = await stream.receive_some(len(PEER_MAGIC) - len(buf))
        if not more:
            return None
        buf += more
    if bytes(buf[: len(PEER_MAGIC)]) != PEER_MAGIC:
        await safe_send(stream, b"-ERR Protocol error: not a RESP request or an Aegis peer\r\n")
        return None
    why = account.hold(len(buf), PREAUTH_PEER_BYTES, "this peer connection")
    if why is not None:
        log.info("refused a peer connection before its handshake: %s", why)
        await safe_send(stream, frame(FRAME_REJECT + f"handshake refused: {why}".encode()))
        return None
    del buf[: len(PEER_MAGIC)]
    body = await _read_preauth(stream, buf, account)
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
    if hs.protocol_version < PROTOCOL_VERSION:
        why = (f"peer protocol {hs.protocol_version} is not spoken here (this node speaks {PROTOCOL_VERSION}: "
               f"peers prove the cluster secret by HMAC challenge); upgrade the caller")
    else:
        why = refuse(hs)
        if not why and len(hs.nonce) != NONCE_LEN:
            why = f"malformed handshake: the nonce must be {NONCE_LEN} bytes, not {len(hs.nonce)}"
    if why:
        _warn_refusal(hs.node_id, why)
        await safe_send(stream, frame(FRAME_REJECT + why.encode()))
        return None
    # The challenge: our nonce, our proof for the caller's nonce, and who we are.
    nonce = new_nonce()
    proof = auth.acceptor_proof(hs.nonce, hs.node_id, me, hs.cluster)
    await stream.send_all(frame(FRAME_CHALLENGE + nonce + proof + me.encode()))
    body = await _read_preauth(stream, buf, account)
    if body is None:
        return None
    answer = body[1:]
    if (body[:1] != FRAME_PROOF or len(answer) != PROOF_LEN
            or not auth.check_dialer(answer, nonce, hs.nonce, hs.node_id, me, hs.cluster)):
        why = "the caller did not prove it knows the cluster secret"
        _warn_refusal(hs.node_id, why + " (a different --token or secret file, or none: check every node's)")
        await safe_send(stream, frame(FRAME_REJECT + why.encode()))
        return None
    await stream.send_all(frame(FRAME_ACCEPT))
    return hs


_refusals: dict[tuple[str, str], tuple[float, int]] = {}  # (claimed id, reason) -> (last warned, since)
REFUSAL_LOG_INTERVAL = 10.0


def _warn_refusal(claimed: str, why: str) -> None:
    """One warning per claimed id and reason every `REFUSAL_LOG_INTERVAL` seconds (a
    misconfigured peer retries every second), saying how many were refused meanwhile."""
    now = time.monotonic()
    key = (claimed[:64], why)
    last, quiet = _refusals.get(key, (-REFUSAL_LOG_INTERVAL, 0))
    if now - last < REFUSAL_LOG_INTERVAL:
        _refusals[key] = (last, quiet + 1)
        log.debug("refused peer connection from %r: %s", claimed, why)
        return
    if len(_refusals) > 1000:
        _refusals.clear()
    _refusals[key] = (now, 0)
    more = f" ({quiet} more refused since the last warning)" if quiet else ""
    log.warning("refused peer connection from %r: %s; closed it%s", claimed, why, more)


class PeerRefusedError(ConnectionError):
    """The other side of an outgoing peer connection refused us, or failed to prove itself."""


async def dial_handshake(stream: trio.abc.Stream, hello: Handshake, auth: PeerAuth, expected: str,
                         addr: str) -> bytearray:
    """The calling side: send `hello` (its nonce fresh), check the acceptor's proof that it
    knows the secret and is `expected`, prove ourselves, and wait for the acceptance.
    Returns what was read past the acceptance; raises PeerRefusedError."""
    buf = bytearray()
    await stream.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(hello)))
    with trio.fail_after(CONNECT_TIMEOUT):
        reply = await read_frame(stream, buf, HANDSHAKE_FRAME_LIMIT)
    if reply is None or reply[:1] == FRAME_REJECT:
        why = (reply or b"Rconnection closed")[1:].decode(errors="replace")
        raise PeerRefusedError(f"{expected} at {addr} refused the handshake: {why}")
    body = reply[1:]
    if reply[:1] != FRAME_CHALLENGE or len(body) < NONCE_LEN + PROOF_LEN:
        raise PeerRefusedError(f"{expected} at {addr} answered the handshake with {reply[:1]!r}, not a challenge")
    nonce, proof, who = body[:NONCE_LEN], body[NONCE_LEN : NONCE_LEN + PROOF_LEN], body[NONCE_LEN + PROOF_LEN :]
    acceptor = who.decode(errors="replace")
    if acceptor != expected:
        raise PeerRefusedError(f"the node at {addr} is {acceptor!r}, not {expected!r} (check --peers)")
    if not auth.check_acceptor(proof, hello.nonce, hello.node_id, expected, hello.cluster):
        raise PeerRefusedError(f"{expected} at {addr} did not prove it knows the cluster secret "
                               f"(a different --token or secret file, or none: check every node's)")
    await stream.send_all(frame(FRAME_PROOF + auth.dialer_proof(nonce, hello.nonce, hello.node_id, expected,
                                                                 hello.cluster)))
    with trio.fail_after(CONNECT_TIMEOUT):
        reply = await read_frame(stream, buf, HANDSHAKE_FRAME_LIMIT)
    if reply is None or not reply.startswith(FRAME_ACCEPT):
        why = (reply or b"Rconnection closed")[1:].decode(errors="replace")
        raise PeerRefusedError(f"{expected} at {addr} refused the handshake: {why}")
    return buf


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
        stream_snapshot: Callable[[str, trio.abc.Stream, InstallSnapshotRequest], Awaitable[None]],
        auth: PeerAuth,
        ssl_context: ssl.SSLContext | None = None,
        packer_for: Callable[[str], PayloadPacker] | None = None,
    ) -> None:
        self.handshake = handshake
        self.auth = auth
        self.ssl_context = ssl_context  # mutual TLS to every peer (verified against --tls-ca)
        self._warned: dict[str, str] = {}  # peer -> the refusal last logged as a warning
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
        #: peer -> (socket fd, packer) while its sender is parked with nothing queued or
        #: half-sent: `send` then writes the frame straight to the socket (see `send`).
        self._direct: dict[str, tuple[int, PayloadPacker | None]] = {}
        self.direct_frames = 0  # frames `send` wrote itself (the rest went through the queue)
        self._direct_at: dict[str, float] = {}  # peer -> when `send` last wrote a whole frame

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
        """Send a frame to `pid`, or queue it; False if there is no connection task or its
        queue is full.

        When the peer's sender is idle (connected over plain TCP, waiting on an empty queue,
        nothing half-sent), the frame is written to the socket here and now, in one
        non-blocking write: no wake-up of the sender task and no trip through trio's
        scheduler, which is most of what a small message cost. Whatever the socket does not
        take at once is queued ahead of anything later, and the sender takes over."""
        q = self._queues.get(pid)
        if q is None:
            return False
        direct = self._direct.get(pid)
        if direct is not None and not (kind == FRAME_MSG and isinstance(payload, InstallSnapshotRequest)):
            fd, pack = direct
            data = frame(kind + (encode(payload, pack) if kind == FRAME_MSG else b""))
            try:
                sent = os.write(fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the sender meets the same error on its next write and reconnects
            self.bytes_sent += sent
            if sent == len(data):
                self.direct_frames += 1
                self._direct_at[pid] = time.monotonic()
                return True
            del self._direct[pid]  # from here the queue holds the order
            kind, payload = _RAW, data[sent:]
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
                        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                        if self.ssl_context is not None:
                            # Peers are known by id, not address (proxies, NAT): the certificate
                            # must chain to --tls-ca; the HMAC handshake then proves the id.
                            stream = trio.SSLStream(stream, self.ssl_context)
                            await stream.do_handshake()
                    async with stream:
                        hello = replace(self.handshake, nonce=new_nonce())
                        await dial_handshake(stream, hello, self.auth, pid, addr)
                        if backoff > 0.05:
                            log.info("connected to peer %s at %s", pid, addr)
                        backoff = 0.05
                        self._warned.pop(pid, None)
                        self.connected[pid] = True
                        await self._pump(pid, stream, queue)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                        ConnectionError, ValueError) as exc:
                    self.connected[pid] = False
                    reason = _reason(exc)
                    if isinstance(exc, (PeerRefusedError, ssl.SSLError)) or isinstance(exc.__cause__, ssl.SSLError):
                        if self._warned.get(pid) != reason:  # once per reason, not every retry
                            self._warned[pid] = reason
                            log.warning("cannot connect to peer %s: %s", pid, reason)
                    elif backoff >= 0.4:
                        log.debug("peer %s unreachable: %s", pid, reason)
                    self.on_unreachable(pid, reason)
                    while True:  # stale messages only slow recovery: Raft resends
                        try:
                            queue.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    async def _pump(self, pid: str, stream: trio.abc.Stream, queue: trio.MemoryReceiveChannel[Outgoing]) -> None:
        try:
            await self._pump_frames(pid, stream, queue)
        finally:
            self._direct.pop(pid, None)  # never a write to a socket that is closing

    async def _pump_frames(self, pid: str, stream: trio.abc.Stream,
                           queue: trio.MemoryReceiveChannel[Outgoing]) -> None:
        pack = self.packer_for(pid) if self.packer_for is not None else self.pack_payload
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        wait = self.ping_interval
        while True:
            item = None
            if fd is not None and not queue.statistics().current_buffer_used:
                self._direct[pid] = (fd, pack)  # parked with nothing pending: `send` may write
            with trio.move_on_after(wait):
                item = await queue.receive()
            self._direct.pop(pid, None)
            wait = self.ping_interval
            if item is None:
                # A ping only on a link that was quiet that long: frames `send` wrote itself
                # count (a leader's heartbeats, a follower's answers to them).
                quiet = time.monotonic() - self._direct_at.get(pid, 0.0)
                if quiet < self.ping_interval:
                    wait = self.ping_interval - quiet
                    continue
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
                if kind is _RAW:
                    buf += payload  # the rest of a frame `send` started writing itself
                else:
                    buf += frame(kind + (encode(payload, pack) if kind == FRAME_MSG else b""))
            if buf:
                await stream.send_all(bytes(buf))
                self.bytes_sent += len(buf)


async def send_snapshot_file(stream: trio.abc.SendStream, msg: InstallSnapshotRequest, path: Path) -> None:
    """Stream InstallSnapshot: the request frame, then the snapshot file in chunks, then E."""
    await stream.send_all(frame(FRAME_MSG + encode(msg)))
    with open(path, "rb") as f:
        while True:
            chunk = await trio.to_thread.run_sync(f.read, SNAPSHOT_CHUNK)
            if not chunk:
                break
            await stream.send_all(frame(FRAME_SNAP_CHUNK + chunk))
    await stream.send_all(frame(FRAME_SNAP_END))


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):  # trio wraps TLS failures in BrokenResourceError
        return f"TLS: {cause.reason or cause}"
    return str(exc) or exc.__class__.__name__


def fsync_close(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
