"""Memory budgets for bytes that outside parties make the node hold.

Theory of operation
-------------------
A client's unfinished request, or a peer's frame before its handshake is accepted, is
memory the node holds on a stranger's behalf. Each such connection gets an `Account` in a
node-wide `ByteBudget`; after every read it reports how much it now holds
(`Account.hold`). The answer is None while both the connection's own allowance and the
node-wide budget have room, otherwise a one-line reason; the caller then replies with that
reason and closes the connection, so only the party that asked for too much is
disconnected and everybody else keeps working.

Invariants:

* ``budget.held`` is the sum of the holdings of the open accounts, and never exceeds
  ``budget.limit``: a holding that would pass it is refused and not recorded. The memory
  actually used may exceed it only by what one read adds before it is checked.
* Shrinking is always allowed (a request finished, a frame was consumed).
* `close` returns the account's bytes; it is idempotent, so ``finally: account.close()``
  is always safe.

Pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

__all__ = ["ByteBudget", "Account", "format_bytes"]


def format_bytes(n: int) -> str:
    """1024 -> '1 KiB', 3 << 20 -> '3 MiB', 100 -> '100 bytes' (whole units only)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


class ByteBudget:
    """A node-wide allowance of `limit` bytes, shared by accounts; `what` names it in reasons."""

    __slots__ = ("limit", "what", "held", "refused")

    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError("a budget must be positive")
        self.limit = limit
        self.what = what
        self.held = 0
        self.refused = 0  # holdings refused so far (INFO shows it)

    def account(self) -> Account:
        return Account(self)


class Account:
    """One connection's share of a `ByteBudget`."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def hold(self, nbytes: int, allowance: int | None = None, whose: str = "this connection") -> str | None:
        """Record that this connection now holds `nbytes`; None if allowed, else the reason
        it is refused (nothing is recorded then). `allowance` caps this connection alone."""
        b = self.budget
        if allowance is not None and nbytes > allowance:
            b.refused += 1
            return f"{whose} would hold {nbytes} bytes of {b.what}; its limit is {format_bytes(allowance)}"
        grow = nbytes - self.held
        if grow > 0 and b.held + grow > b.limit:
            b.refused += 1
            return (f"the node's budget for {b.what} ({format_bytes(b.limit)}) is used up; "
                    f"{whose} would hold {nbytes} bytes")
        b.held += grow
        self.held = nbytes
        return None

    def close(self) -> None:
        self.budget.held -= self.held
        self.held = 0
