"""The shell's connection to the cluster, as seen from the trio thread.

Theory of operation
-------------------
`ShellConnection` owns the shell's `AegisClient` and lives entirely in the trio thread (see
`bridge.py`); the main thread calls its coroutines through the bridge and reads its
`view`, an immutable `NodeView` that is replaced, never mutated, so reading it from
another thread is safe.

A `NodeView` is what the prompt and the toolbar show: the address the next command goes
to, whether that node answers, its id and role, the leader it follows, the term. It is
refreshed with one ``INFO`` on the command connection after every command (a loopback
round trip, and the only way to notice a role change caused by someone else), and by a
background `monitor` that probes the node every couple of seconds on a connection of its
own, so the toolbar says "down" while the user is still typing. The monitor never touches
the command connection: moving the shell to another node is left to the next command,
which is when the client's failover runs. Nor does a stream (CHANGES, SUBSCRIBE): it gets a
client of its own (`stream_client`), since a connection that sent one only receives.

Every member address the node reports (INFO ``members``, CLUSTER NODES) becomes a fallback
seed of the client, so when the node the shell talks to dies, the next command goes to a
live member even if the user gave a single ``--addr``. The client itself decides when a
command may be resent (see `aegis.client`); the shell only reports what happened.

Except in a transaction: MULTI's queue and WATCHed keys live in the server's state for this
one connection, so while the `Session` (see `transaction.py`) holds any, commands are sent
pinned — on the same connection or not at all — and the INFO refresh is skipped inside
MULTI (the server would refuse it there and doom the transaction). When the connection that
held a session is gone, the command that finds out fails with `TransactionLostError` (or,
for an EXEC already sent, `ConnectionLostError`: its outcome is unknown), the session is
reset, and the next command connects as usual.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import trio

from aegis.client import AegisClient, ConnectionGoneError, ConnectionLostError, open_client, parse_info
from aegis.errors import AegisError, CommandError
from aegis.protocol import Reply

from .status import info_int, parse_member_lines, parse_members_field, pick, reply_text
from .transaction import NO_SESSION, Session, advance, is_doomed_by, lost_message

__all__ = ["NodeView", "Outcome", "ShellConnection", "TransactionLostError", "describe_error"]

INFO_TIMEOUT = 1.5
PROBE_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class NodeView:
    """Where the shell is and what that node said about itself the last time it answered."""

    address: str
    reachable: bool = False
    node_id: str = ""
    role: str = ""
    leader_id: str = ""
    term: int | None = None
    error: str = ""
    checked: bool = False  # False until the node was asked at least once

    @property
    def label(self) -> str:
        """The role as the prompt shows it: ``leader``, ``follower``, ``down``, ``?``."""
        if not self.checked:
            return "?"
        if not self.reachable:
            return "down"
        return self.role or "?"


class TransactionLostError(CommandError):
    """The connection that held a MULTI (or WATCHes) is gone before EXEC reached the
    server: a definite failure — nothing of the transaction was written."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One command's result: its reply or its error, and the view before and after.

    `queued` is set for EXEC: the commands whose replies its array holds, in order."""

    argv: tuple[bytes, ...]
    reply: Reply = None
    error: BaseException | None = None
    elapsed: float = 0.0
    before: NodeView | None = None
    after: NodeView | None = None
    notices: tuple[str, ...] = field(default=())
    queued: tuple[tuple[bytes, ...], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(exc: BaseException) -> str:
    """The error line users see: the RESP kind first when there is one."""
    if isinstance(exc, AegisError):
        text = exc.message
        kind = exc.resp_prefix
        name = type(exc).__name__
        if name in ("NodeUnavailableError", "ConnectionLostError", "ConnectionGoneError",
                    "TransactionLostError"):
            return text
        if text.startswith("NOAUTH"):
            return f"{text} (give the token with --token or AEGIS_TOKEN)"
        if text.split(" ", 1)[0].isupper() and text.split(" ", 1)[0].isalpha():
            return text  # already "WRONGPASS …"
        return f"{kind} {text}"
    return f"{type(exc).__name__}: {exc}"


class ShellConnection:
    """The client, the current `NodeView` and the known members (trio thread only)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._token = token
        self._ssl = ssl_context
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self.client = AegisClient(
            list(addresses), token=token, timeout=timeout, connect_timeout=connect_timeout,
            client_name="aegis-shell", ssl_context=ssl_context,
        )
        self.view = NodeView(self.client.address)
        #: what the server keeps for the command connection (replaced, never mutated)
        self.session: Session = NO_SESSION
        #: node id -> address, from INFO and CLUSTER NODES replies.
        self.members: dict[str, str] = {}
        # The leader the user was last told about: a change is announced once, even when
        # the view passed through "no leader" (an election) in between.
        self._announced_leader = ""

    # -- commands

    def stream_client(self) -> AegisClient:
        """A client of its own for a stream (CHANGES, SUBSCRIBE; see `stream`): the node
        the shell talks to first, the other known members after. Never the command
        connection, which would only receive from then on."""
        first = self.client.address
        seeds = [first] + [a for a in self.client.seeds if a != first]
        return AegisClient(
            seeds, token=self._token, timeout=self._timeout,
            connect_timeout=self._connect_timeout, client_name="aegis-shell-stream", ssl_context=self._ssl,
        )

    async def execute(self, argv: Sequence[bytes]) -> Outcome:
        before = self.view
        session = self.session
        start = trio.current_time()
        reply: Reply = None
        error: BaseException | None = None
        try:
            reply = await self.client.execute(*argv, pinned=session.pinned)
        except AegisError as exc:
            error = exc
        elapsed = trio.current_time() - start
        is_exec = bool(argv) and argv[0].upper() == b"EXEC"
        queued = (session.queued or ()) if is_exec else ()
        notes: list[str] = []
        if session.pinned and not self.client.connected:
            error = self._lose_session(session, argv, error, notes)
        else:
            self.session = advance(session, argv, reply, error)
            if is_doomed_by(session, argv, error) and not session.doomed:
                notes.append("this transaction can no longer commit: EXEC will answer EXECABORT "
                             "(DISCARD, then MULTI again)")
        if self.session.in_multi:
            after = self.view  # INFO inside MULTI would be refused, and doom the transaction
        else:
            after = await self.refresh(pinned=self.session.pinned)
        notices = self._notices(before, after, error) + tuple(notes)
        return Outcome(tuple(argv), reply, error, elapsed, before, after, notices, queued)

    def _lose_session(
        self, session: Session, argv: Sequence[bytes], error: BaseException | None, notes: list[str]
    ) -> BaseException | None:
        """The connection that held `session` is gone: reset it; the error to report."""
        self.session = NO_SESSION
        sent = not isinstance(error, ConnectionGoneError)
        message = lost_message(session, argv, sent=sent, reason=self.client.last_error or "")
        if error is None:  # answered, then the connection went: the next command says so
            notes.append(message)
            return None
        if session.in_multi and sent and argv and argv[0].upper() == b"EXEC":
            return ConnectionLostError(message)
        return TransactionLostError(message)

    async def check_session(self, argv: Sequence[bytes]) -> str | None:
        """After `argv` was interrupted (the client then drops its connection): what that did
        to the session, if anything (the session is reset)."""
        session = self.session
        if not session.pinned or self.client.connected:
            return None
        self.session = NO_SESSION
        return lost_message(session, argv, sent=True, reason=self.client.last_error or "interrupted")

    def _notices(self, before: NodeView, after: NodeView, error: BaseException | None) -> tuple[str, ...]:
        notes: list[str] = []
        if before.address != after.address:
            why = f" ({before.error})" if before.error else ""
            if after.reachable:
                notes.append(
                    f"lost {before.address}{why}; now connected to {after.address}"
                    + (f" ({after.role})" if after.role else "")
                )
            else:
                notes.append(f"lost {before.address}{why}; trying {after.address} next")
        elif before.checked and not before.reachable and after.reachable:
            notes.append(f"reconnected to {after.address}" + (f" ({after.role})" if after.role else ""))
        elif before.reachable and not after.reachable:
            notes.append(f"{after.address} is down ({after.error or 'no answer'}); "
                         "the next command will try another member")
        leader = after.leader_id
        if leader and leader != self._announced_leader:
            where = self.members.get(leader, "")
            where_text = f" ({where})" if where else ""
            if self._announced_leader:
                notes.append(f"leader changed: {self._announced_leader} → {leader}{where_text}")
            else:
                notes.append(f"leader is {leader}{where_text}")
            self._announced_leader = leader
        return tuple(notes)

    async def refresh(self, *, pinned: bool = False) -> NodeView:
        """Ask the node about itself (INFO) on the command connection; update `view`.
        `pinned`: WATCHes are held, so never on a new connection."""
        address = self.client.address
        try:
            with trio.fail_after(INFO_TIMEOUT):
                text = reply_text(await self.client.execute("INFO", timeout=INFO_TIMEOUT, pinned=pinned))
        except (AegisError, trio.TooSlowError) as exc:
            reason = self.client.last_error or describe_error(exc)
            self.view = replace(self.view, address=address, reachable=False, error=reason, checked=True)
            return self.view
        self.view = self._view_from_info(self.client.address, parse_info(text or ""))
        return self.view

    def _view_from_info(self, address: str, info: dict[str, str]) -> NodeView:
        node_id = pick(info, ("node_id", "id", "node")) or ""
        leader_id = pick(info, ("leader_id", "leader")) or ""
        if node_id:
            self.members.setdefault(node_id, address)
        leader_address = pick(info, ("leader_addr", "leader_address"))
        if leader_id and leader_address and leader_address != "-":
            self.members[leader_id] = leader_address
            self._add_seed(leader_address)
        members = pick(info, ("members", "peers", "voters"))
        if members:
            for member_id, member_address in parse_members_field(members):
                if member_id and member_address:
                    self.members[member_id] = member_address
                if member_address:
                    self._add_seed(member_address)
        return NodeView(
            address=address,
            reachable=True,
            node_id=node_id,
            role=(pick(info, ("role", "raft_role", "state")) or "").lower(),
            leader_id=leader_id if leader_id not in ("-", "none", "0") else "",
            term=info_int(info, "term", "current_term"),
            checked=True,
        )

    def _add_seed(self, address: str) -> None:
        try:
            self.client.add_seed(address)
        except ValueError:
            pass

    async def learn_members(self) -> None:
        """CLUSTER NODES once: every member's address becomes a fallback seed."""
        try:
            reply = await self.client.execute("CLUSTER", "NODES", timeout=INFO_TIMEOUT)
        except AegisError:
            return
        text = reply_text(reply)
        if text is None:
            return
        self.learn_member_text(text)

    def learn_member_text(self, text: str) -> None:
        for row in parse_member_lines(text):
            if row.node_id and row.address:
                self.members[row.node_id] = row.address
                self._add_seed(row.address)

    async def start(self) -> NodeView:
        """Connect (failing over across seeds) and learn the cluster; never raises."""
        try:
            await self.client.ensure_connected(timeout=self._timeout)
        except AegisError as exc:
            self.view = NodeView(
                self.client.address, reachable=False, error=describe_error(exc), checked=True
            )
            return self.view
        await self.learn_members()
        view = await self.refresh()
        if view.leader_id:
            self._announced_leader = view.leader_id
        return view

    async def connect_to(self, address: str) -> NodeView:
        """Move the shell to `address` (CONNECT); the old seeds stay as fallbacks."""
        seeds = [address] + [a for a in self.client.seeds if a != address]
        old = self.client
        self.client = AegisClient(
            seeds, token=self._token, timeout=self._timeout,
            connect_timeout=self._connect_timeout, client_name="aegis-shell", ssl_context=self._ssl,
        )
        await old.aclose()
        self.session = NO_SESSION  # whatever it held went with the old connection
        self.view = NodeView(self.client.address)
        return await self.start()

    # -- the background probe

    async def monitor(self, interval: float = PROBE_INTERVAL) -> None:
        """Probe the current node every `interval` seconds on a separate connection and
        keep `view.reachable` honest while the shell waits at the prompt. Runs until
        cancelled."""
        while True:
            await trio.sleep(interval)
            address = self.client.address
            try:
                with trio.fail_after(INFO_TIMEOUT + 0.5):
                    async with open_client(
                        [address], token=self._token, timeout=INFO_TIMEOUT,
                        connect_timeout=min(1.0, INFO_TIMEOUT), ssl_context=self._ssl,
                    ) as probe:
                        text = reply_text(await probe.execute("INFO"))
            except (AegisError, OSError, trio.TooSlowError) as exc:
                if self.client.address == address:
                    reason = "no answer in time" if isinstance(exc, trio.TooSlowError) else describe_error(exc)
                    if reason.startswith("cannot reach any node: ") and "(" in reason:
                        reason = reason.split("(", 1)[-1].rstrip(")")
                    self.view = replace(self.view, reachable=False, error=reason, checked=True)
                continue
            if self.client.address == address:
                self.view = self._view_from_info(address, parse_info(text or ""))

    async def aclose(self) -> None:
        await self.client.aclose()
