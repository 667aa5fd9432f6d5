"""Request routing between nodes: a follower forwards the commands only a leader may run,
and the leader serves what followers forwarded.

Theory of operation
-------------------
Follower side (`Forwarder.forward`): the commands forwarded in one turn of the event loop,
from any number of connections, travel as one `ClientBatchRequest`; the leader answers the
batch with one `ClientBatchResponse` (`replies`). A command whose client speaks RESP3 is
wrapped with `RESP3_FORWARD` so the leader encodes its reply for that protocol, and EXEC
travels as `TXN_FORWARD` plus the encoded transaction.

When a forward may never be answered (the leader changed, or the link to it dropped:
`lost`, `leader_changed`), a SESSION CALL is forwarded again to whoever leads now — the
session makes a second copy harmless — and any other write fails at once with -TIMEOUT,
because its outcome is unknown and a second copy could apply twice. Session writes that
find no leader are parked until one is known.

Leader side (`serve_batch`): the forwarded commands are started at once, in order (the
order of submission is the order of apply), and answered together.

The forwarder reaches the node only through the callables it is built with.
"""

from __future__ import annotations

import itertools
import logging
from typing import Awaitable, Callable

from . import commands as C
from .driver import Waiter
from .protocol import constant_reply, encode, encode_error
from .state import Command, CommandType
from .transport import MAX_BATCH_COMMANDS, MAX_FRAME_SIZE, ClientBatchRequest, ClientBatchResponse, ClientRequest, ClientResponse

log = logging.getLogger("aegis.server")

#: The first argument of a transaction a follower forwards (its encoded Command follows);
#: no client can send it: the command table does not know it.
TXN_FORWARD = b"\x00aegis-txn"

#: Marks a forwarded command whose client speaks RESP3 (the leader encodes its reply so).
RESP3_FORWARD = b"\x00aegis-resp3"

Op = Callable[[], Awaitable[bytes]]


def unwrap_forwarded(argv: tuple[bytes, ...] | list[bytes]) -> tuple[tuple[bytes, ...] | list[bytes], bool]:
    """A forwarded command's argv without its RESP3 mark, and whether it had one."""
    if len(argv) > 1 and argv[0] == RESP3_FORWARD:
        return argv[1:], True
    return argv, False


def parse_forwarded(argv: tuple[bytes, ...] | list[bytes], limits: C.CommandLimits) -> C.Request:
    """A forwarded command as a request: a transaction from EXEC on a follower, or any
    command the table knows (checked again here: a peer is not trusted to have)."""
    if len(argv) == 2 and argv[0] == TXN_FORWARD:
        try:
            command = Command.decode(argv[1])
        except ValueError as exc:
            return C.ErrorReply(f"ERR {exc}")
        if command.type != CommandType.TRANSACTION:
            return C.ErrorReply("ERR a forwarded transaction must hold a transaction")
        return C.WriteRequest(command)
    return C.parse_command(list(argv), limits)


class Forwarder:
    def __init__(self, node_id: str, *, leader: Callable[[], str | None], send: Callable[[str, object], bool],
                 start: Callable[[tuple[bytes, ...] | list[bytes]], Op], wait: Callable[[Waiter], Awaitable[bool]],
                 spawn: Callable[[Callable[[], Awaitable[None]]], None], stats: dict[str, int]) -> None:
        """`leader()`: the leader known now; `send(pid, msg)`: a frame to a peer, False if it
        cannot go; `start(wrapped)`: start a forwarded command here (this node leads) and
        return its reply to await; `wait`: the driver's wait with --request-timeout;
        `spawn`: run a task in the node's nursery."""
        self.id = node_id
        self._leader = leader
        self._send = send
        self._start = start
        self._wait = wait
        self._spawn = spawn
        self._stats = stats
        self._buf: list[tuple[list[bytes], Waiter]] = []  # forwarded this turn, not yet sent
        self._parked: list[tuple[list[bytes], Waiter]] = []  # session writes awaiting a leader
        self._scheduled = False
        self._batches: dict[int, list[Waiter]] = {}  # forwarded batch id -> its commands' waiters
        self._sent_to: dict[int, str] = {}  # forwarded batch id -> the leader it went to
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ follower side
    def forward(self, argv: list[bytes], resp3: bool = False) -> Op:
        """Send a command to the leader; returns its reply to await."""
        leader = self._leader()
        if leader is None or leader == self.id:
            return constant_reply(encode_error("NOLEADER no leader is known; try again shortly"))
        w = Waiter()
        # The leader encodes the reply for the client's protocol (RESP3's nil is not RESP2's).
        wrapped = [RESP3_FORWARD, *argv] if resp3 else argv
        if len(argv) > 5 and argv[0].lower() == b"session" and argv[1].lower() == b"call":
            w.resend = wrapped
        self._buf.append((wrapped, w))
        self._schedule()
        self._stats["forwarded"] += 1

        async def result() -> bytes:
            if not await self._wait(w):  # timed out: the waiter is done, so a parked
                self._batches.pop(w.ctx, None)  # session write is not forwarded after this
                self._sent_to.pop(w.ctx, None)
                return encode_error(f"TIMEOUT no answer from the leader {leader}; the outcome is unknown")
            if w.error is not None:
                return encode_error(w.error)
            return bytes(w.value) if isinstance(w.value, (bytes, bytearray)) else encode(w.value)

        return result

    def replies(self, msg: ClientBatchResponse) -> None:
        """The leader's answers to one forwarded batch."""
        waiters = self._batches.pop(msg.request_id, None)
        self._sent_to.pop(msg.request_id, None)
        if waiters is not None:
            for w, reply in zip(waiters, msg.replies):
                w.set(reply)
            for w in waiters[len(msg.replies):]:
                w.fail("ERR the leader sent too few replies")

    def leader_changed(self, leader: str | None) -> None:
        """Commands forwarded to a node that is no longer the leader will get no answer (it
        died, or was deposed): say so now rather than after the request timeout, or forward
        them again (session writes). Session writes parked while no leader was known go to
        the one now known."""
        for to in set(self._sent_to.values()) - {leader}:
            self.lost(to, f"the leader {to} went away before answering")
        if leader is not None and self._parked:
            parked, self._parked = self._parked, []
            self._again(parked)

    def lost(self, to: str, why: str) -> None:
        """The commands forwarded to `to` may never be answered (it is no longer the leader,
        or a connection between us dropped: the request or its reply may be lost).

        A SESSION CALL is forwarded again, to whoever leads now: the session makes a second
        copy harmless (the state machine applies it once and answers both with the first
        result), so the client gets its answer as soon as a leader does. Any other write
        fails now with -TIMEOUT (the outcome is unknown: it may have applied), because a
        second copy of it could apply twice; that is what the client would get after the
        request timeout, without the wait."""
        again: list[tuple[list[bytes], Waiter]] = []
        for rid in [r for r, t in self._sent_to.items() if t == to]:
            del self._sent_to[rid]
            for w in self._batches.pop(rid, []):
                if w.event.is_set():
                    continue
                if w.resend is not None:
                    again.append((w.resend, w))
                else:
                    w.fail(f"TIMEOUT {why}; the outcome is unknown (check before retrying)")
        if again:
            log.info("forwarding %d session write(s) again: %s", len(again), why)
            self._again(again)

    def _again(self, items: list[tuple[list[bytes], Waiter]]) -> None:
        items = [(a, w) for a, w in items if not w.event.is_set()]
        leader = self._leader()
        if not items:
            return
        if leader is None:  # mid-election: they go when a leader is known (or time out)
            self._parked += items
            return
        if leader == self.id:  # this node leads now: propose them here
            for wrapped, w in items:
                op = self._start(wrapped)

                async def finish(op: Op = op, w: Waiter = w) -> None:
                    w.set(await op())

                self._spawn(finish)
            return
        self._buf += items
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._spawn(self._send_buffered)

    async def _send_buffered(self) -> None:
        self._scheduled = False
        buf, self._buf = self._buf, []
        if not buf:
            return
        leader = self._leader()
        if leader is None or leader == self.id:
            again = [(a, w) for a, w in buf if w.resend is not None and w.ctx]  # sent before: send again
            for _, w in buf:
                if not (w.resend is not None and w.ctx):
                    w.fail("TRYAGAIN the leader changed before the command was forwarded; nothing was sent")
            self._again(again)
            return
        parts: list[list[tuple[list[bytes], Waiter]]] = [[]]
        size = 0
        for item in buf:  # frames stay well under the frame limit
            n = sum(len(a) for a in item[0]) + 16
            if parts[-1] and (len(parts[-1]) >= MAX_BATCH_COMMANDS or size + n > MAX_FRAME_SIZE // 4):
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += n
        for part in parts:
            rid = next(self._ids)
            waiters = [w for _, w in part]
            sent_before = [w.ctx != 0 for w in waiters]
            for w in waiters:
                w.ctx = rid
            self._batches[rid] = waiters
            self._sent_to[rid] = leader
            msg = ClientBatchRequest(request_id=rid, commands=tuple(tuple(a) for a, _ in part))
            if not self._send(leader, msg):
                self._batches.pop(rid, None)
                self._sent_to.pop(rid, None)
                for w, before in zip(waiters, sent_before):
                    if before:  # a session write sent before: its outcome is unknown
                        w.fail(f"TIMEOUT cannot reach the leader {leader} to forward the write again; "
                               "the outcome is unknown (retry it with the same session and seq)")
                    else:
                        w.fail(f"TRYAGAIN cannot reach the leader {leader}; nothing was sent")

    # ------------------------------------------------------------------ leader side
    def serve_batch(self, pid: str, req: ClientBatchRequest) -> None:
        """A follower's forwarded commands: start them all now, in order; one reply frame."""
        ops = [self._start(wrapped) for wrapped in req.commands]

        async def finish() -> None:
            replies = [await op() for op in ops]
            self._send(pid, ClientBatchResponse(request_id=req.request_id, replies=tuple(replies)))

        self._spawn(finish)

    def serve_one(self, pid: str, req: ClientRequest) -> None:
        """A single forwarded command (from older peers): submit it now, reply later."""
        op = self._start(req.argv)

        async def finish() -> None:
            self._send(pid, ClientResponse(request_id=req.request_id, value=await op()))

        self._spawn(finish)


__all__ = ["Forwarder", "RESP3_FORWARD", "TXN_FORWARD", "parse_forwarded", "unwrap_forwarded"]
