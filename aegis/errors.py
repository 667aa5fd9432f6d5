"""Aegis's exception hierarchy.

Theory of operation
-------------------
Every error Aegis raises on purpose descends from `AegisError`. The split that matters to a
client is whether anything was written:

* `CommandError` — a *definite* failure: the command was rejected before it reached the log,
  so nothing was written and retrying it is safe. RESP prefix ``-ERR``.
  `ProtocolError` (malformed client input) and `CodecError` (a malformed frame from a peer)
  are definite failures too, and so is `DiskFullError` (``-DISKFULL``: the storage is full,
  the write was refused before it was proposed).
* `UnknownOutcomeError` — the command may or may not have been committed: the leader was
  lost, the request timed out, or the cluster cannot serve right now. A client that retries
  a non-idempotent command after one of these may apply it twice. Subclasses carry the RESP
  prefixes ``-NOLEADER``, ``-TIMEOUT`` and ``-TRYAGAIN``.

Each class has a `resp_prefix` class attribute, so the server turns any `AegisError` into a
RESP error line with `resp_error()` and never needs a table of its own.

Raise these with ``from None`` at layer boundaries. A broken core invariant is *not* an
`AegisError` (see `aegis.log.LogInvariantError`): it must crash loudly, never reach a client.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AegisError",
    "CommandError",
    "ProtocolError",
    "CodecError",
    "DiskFullError",
    "UnknownOutcomeError",
    "NoLeaderError",
    "RequestTimeoutError",
    "TryAgainError",
]


class AegisError(Exception):
    """Root of every error Aegis raises on purpose."""

    resp_prefix: ClassVar[str] = "ERR"
    #: Whether the operation certainly did not change the replicated state.
    definite: ClassVar[bool] = True

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    def resp_error(self) -> str:
        """The RESP2 error line body (without the leading ``-`` and the CRLF).

        Line breaks in the message are flattened: RESP error lines cannot contain them.
        """
        text = " ".join(self.message.split())
        return f"{self.resp_prefix} {text}" if text else self.resp_prefix


class CommandError(AegisError):
    """Definite failure: the command was rejected and nothing was written (``-ERR``)."""

    resp_prefix = "ERR"


class ProtocolError(CommandError):
    """Malformed client input: bad RESP framing, wrong arity, a value that does not parse."""


class CodecError(ProtocolError):
    """A frame that does not decode to a well-formed message (from a peer or a client)."""


class DiskFullError(CommandError):
    """Definite failure: the leader's storage is (nearly) full, the write was not proposed
    (``-DISKFULL``; see aegis.space)."""

    resp_prefix = "DISKFULL"


class UnknownOutcomeError(AegisError):
    """The command may or may not have been applied; the client must find out or retry."""

    resp_prefix = "TRYAGAIN"
    definite = False


class NoLeaderError(UnknownOutcomeError):
    """No leader is known (election in progress, or this node is partitioned away)."""

    resp_prefix = "NOLEADER"

    def __init__(self, message: str = "no leader is known", *, leader_hint: str | None = None) -> None:
        super().__init__(message)
        #: The id of the node believed to be leader, if any (a client may redirect there).
        self.leader_hint = leader_hint


class RequestTimeoutError(UnknownOutcomeError):
    """The request was not confirmed in time; it may still commit later."""

    resp_prefix = "TIMEOUT"


class TryAgainError(UnknownOutcomeError):
    """The cluster cannot serve this right now (leadership transfer, overload, catching up)."""

    resp_prefix = "TRYAGAIN"
