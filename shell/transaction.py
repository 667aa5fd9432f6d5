"""What the server keeps for the shell's connection: a MULTI's queue and WATCHed keys.

Theory of operation
-------------------
MULTI, the commands queued after it and WATCH live in the server's state for *one
connection*. The shell's client may move to another connection (a reconnect, a failover to
another member) between any two commands, which is harmless for ordinary commands and
fatal for a transaction: on a new connection a queued SET would simply run, and an EXEC
would find no MULTI, or a MULTI without the WATCHes it was meant to depend on.

So the shell keeps its own copy of that state, a `Session`, and while it holds anything
(`Session.pinned`) every command is sent *pinned* (`AegisClient.execute(pinned=True)`): on
the same connection or not at all. `advance` is the transition table: the session after a
command, from the command and its reply (or error), mirroring what the server does —

=============  ============================  ==========================================
command        reply                         session afterwards
=============  ============================  ==========================================
MULTI          OK                            open, nothing queued (watches kept)
(in MULTI) X   QUEUED                        X appended to the queue
(in MULTI) X   an error                      unchanged; `doomed`: EXEC will be refused
EXEC           anything (even an error)      empty: the server forgets both either way
                                             (unless no MULTI was open: unchanged)
DISCARD        OK                            empty
WATCH k …      OK                            k … added to the watched keys
UNWATCH        OK                            no watched keys
=============  ============================  ==========================================

When the connection that held a session is gone, the session is gone with it (the server
discards a MULTI whose connection closes); `lost_message` says what that means for the
command that found out. Nothing here does I/O; `ShellConnection` applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from aegis.protocol import Reply

__all__ = ["Session", "NO_SESSION", "advance", "lost_message", "is_doomed_by", "TXN_COMMANDS"]

TXN_COMMANDS: Final = frozenset({"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"})


@dataclass(frozen=True, slots=True)
class Session:
    """The connection state a transaction depends on (replaced, never mutated)."""

    queued: tuple[tuple[bytes, ...], ...] | None = None  # None: no MULTI open
    watched: tuple[str, ...] = ()
    doomed: bool = False  # a queued command was refused: EXEC will answer EXECABORT

    @property
    def in_multi(self) -> bool:
        return self.queued is not None

    @property
    def pinned(self) -> bool:
        """Whether the next command must go on the connection that holds this state."""
        return self.queued is not None or bool(self.watched)


NO_SESSION: Final = Session()


def _name(argv: Sequence[bytes]) -> str:
    return argv[0].decode("utf-8", "replace").upper() if argv else ""


def is_doomed_by(session: Session, argv: Sequence[bytes], error: BaseException | None) -> bool:
    """Whether this error, answered to a command inside MULTI, makes the server refuse the
    EXEC (it does for a refused command, not for a misplaced MULTI or WATCH)."""
    return session.in_multi and error is not None and _name(argv) not in TXN_COMMANDS


def advance(session: Session, argv: Sequence[bytes], reply: Reply, error: BaseException | None) -> Session:
    """The session after `argv` was answered with `reply` (or the error reply `error`) on
    the connection that holds `session`."""
    name = _name(argv)
    if name == "EXEC":
        # The server forgets the queue and the watches at EXEC, whatever the outcome; an
        # EXEC without MULTI is refused before that and leaves the watches in place.
        return NO_SESSION if session.in_multi else session
    if error is not None:
        return replace(session, doomed=True) if is_doomed_by(session, argv, error) else session
    if name == "MULTI" and reply == "OK" and not session.in_multi:
        return replace(session, queued=(), doomed=False)
    if name == "DISCARD" and reply == "OK":
        return NO_SESSION
    if name == "WATCH" and reply == "OK" and not session.in_multi:
        keys = [a.decode("utf-8", "replace") for a in argv[1:]]
        return replace(session, watched=tuple(dict.fromkeys([*session.watched, *keys])))
    if name == "UNWATCH" and reply == "OK":
        return replace(session, watched=())
    if session.queued is not None and reply == "QUEUED":
        return replace(session, queued=(*session.queued, tuple(argv)))
    return session


def lost_message(session: Session, argv: Sequence[bytes], *, sent: bool, reason: str) -> str:
    """What the loss of the connection holding `session` means, told to the user of the
    command `argv` that found out (`sent`: whether it had reached the wire)."""
    why = f" ({reason})" if reason else ""
    name = _name(argv)
    if session.in_multi:
        if name == "EXEC" and sent:
            return (f"lost the connection{why} after EXEC was sent: the transaction may or may "
                    "not have been applied")
        count = len(session.queued or ())
        what = f"{count} queued command{'s' if count != 1 else ''}" if count else "nothing queued yet"
        return (f"lost the connection{why}: the transaction was discarded ({what}); nothing was "
                "written. MULTI starts a new one")
    keys = ", ".join(session.watched)
    unsent = "" if sent else f"; {name or 'the command'} was not sent"
    return (f"lost the connection{why}: the WATCH on {keys} went with it{unsent}. WATCH the keys "
            "again (and read them again) before MULTI")
