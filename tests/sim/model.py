"""A reference model of the data commands the simulator proposes, written from their
specification (Redis semantics, the README's data API), not from `aegis/state.py`.

Theory of operation
-------------------
The model is the logical state only: ``key -> (value, version, revision, deadline)``, with
a record past its deadline simply *not live* (it is never removed behind the log's back).
The state machine also removes expired records physically (a write that meets one, PURGE),
which is invisible to reads as long as the log's time never goes backwards; so the
simulator compares the two through `live()`, at each entry's own time, and compares the
replicas' *stored* records (`len(sm)` included) with each other, not with the model.

What the model assumes, and the simulator therefore checks:
* versions start at 1 when a key is created (or re-created after it expired or was
  deleted) and grow by one with every write, an EXPIRE or PERSIST included;
* the revision is the log index of the entry that last wrote the key;
* a write without a TTL option clears the deadline (SET, MSET, GETSET, CAS, CASV), INCR and
  APPEND keep it, `SET ... KEEPTTL` keeps it, a deadline at or before the entry's time
  deletes the key (SET PX/PXAT, PEXPIRE);
* a TRANSACTION applies nothing when a watched key's live revision (0: missing) differs;
* PURGE removes only keys that are expired at its own entry's time.

It does no I/O and reads no clock: "now" is the entry's timestamp in ms.
"""

from __future__ import annotations

import re
from typing import Final

from aegis.state import Command, CommandType

#: (value, version, revision, deadline in ms, 0 for none)
Rec = tuple[bytes, int, int, int]

_INT: Final = re.compile(rb"-?[1-9][0-9]*|0")
_I64: Final = (-(2**63), 2**63 - 1)


def _as_int(raw: bytes) -> int | None:
    if len(raw) > 20 or _INT.fullmatch(raw) is None:
        return None
    n = int(raw)
    return n if _I64[0] <= n <= _I64[1] else None


class ModelKV:
    """The logical key-value state after some prefix of the committed log."""

    __slots__ = ("data", "index", "now")

    def __init__(self, data: dict[bytes, Rec] | None = None) -> None:
        self.data: dict[bytes, Rec] = dict(data or {})
        self.index = 0
        self.now = 0

    def copy(self) -> ModelKV:
        return ModelKV(self.data)

    # --- reading ---------------------------------------------------------------------------
    def get(self, key: bytes, now: int) -> Rec | None:
        rec = self.data.get(key)
        if rec is None or (rec[3] and rec[3] <= now):
            return None
        return rec

    def live(self, now: int) -> dict[bytes, Rec]:
        return {k: rec for k in sorted(self.data) if (rec := self.get(k, now)) is not None}

    # --- writing ---------------------------------------------------------------------------
    def _rec(self, key: bytes) -> Rec | None:
        return self.get(key, self.now)

    def _write(self, key: bytes, value: bytes, deadline: int = 0) -> None:
        old = self._rec(key)
        self.data[key] = (value, old[1] + 1 if old else 1, self.index, deadline)

    def _delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def _expire_at(self, key: bytes, deadline: int) -> None:
        rec = self._rec(key)
        assert rec is not None
        if deadline <= self.now:
            self._delete(key)
        else:
            self.data[key] = (rec[0], rec[1] + 1, self.index, deadline)

    def apply(self, c: Command, index: int, now: int) -> None:
        """Apply one committed command of the entry at `index`, whose time is `now` (ms)."""
        self.index, self.now = index, now
        t = c.type
        k = c.key.encode("utf-8", "surrogateescape")
        if t == CommandType.GET:
            return
        if t == CommandType.SET:
            assert c.value is not None
            self._write(k, c.value)
        elif t == CommandType.DELETE:
            for key in c.all_keys:
                self._delete(key.encode("utf-8", "surrogateescape"))
        elif t == CommandType.COMPARE_AND_SWAP:
            rec = self._rec(k)
            if rec is not None and rec[0] == c.expected:
                assert c.value is not None
                self._write(k, c.value)
        elif t == CommandType.INCREMENT:
            rec = self._rec(k)
            cur = 0 if rec is None else _as_int(rec[0])
            if cur is not None and _I64[0] <= cur + c.delta <= _I64[1]:
                self._write(k, str(cur + c.delta).encode(), rec[3] if rec else 0)
        elif t == CommandType.OP:
            assert c.name is not None
            self._op(c.name, c.args)
        elif t == CommandType.TRANSACTION:
            for key, revision in c.watches:
                rec = self._rec(key.encode("utf-8", "surrogateescape"))
                if (rec[2] if rec else 0) != revision:
                    return
            for sub in c.commands:
                self.apply(sub, index, now)
        else:
            raise AssertionError(f"the model does not know {t.name}")

    def _op(self, name: str, a: tuple[bytes, ...]) -> None:
        now = self.now
        if name == "SET":
            key, value, cond, _get, mode, ttl = a
            old = self._rec(key)
            if (cond == b"NX" and old is not None) or (cond == b"XX" and old is None):
                return
            deadline = {b"PX": lambda: now + int(ttl), b"PXAT": lambda: int(ttl),
                        b"KEEPTTL": lambda: old[3] if old else 0}.get(mode, lambda: 0)()
            if deadline and deadline <= now:
                self._delete(key)
            else:
                self._write(key, value, deadline)
        elif name in ("MSET", "MSETNX"):
            pairs = [(a[i], a[i + 1]) for i in range(0, len(a), 2)]
            if name == "MSETNX" and any(self._rec(k) is not None for k, _ in pairs):
                return
            for k, v in pairs:
                self._write(k, v)
        elif name == "GETSET":
            self._write(a[0], a[1])
        elif name == "GETDEL":
            self._delete(a[0])
        elif name == "APPEND":
            old = self._rec(a[0])
            self._write(a[0], (old[0] if old else b"") + a[1], old[3] if old else 0)
        elif name in ("PEXPIRE", "PEXPIREAT"):
            rec = self._rec(a[0])
            if rec is None:
                return
            deadline = now + int(a[1]) if name == "PEXPIRE" else int(a[1])
            cur, cond = rec[3], a[2]
            # Redis: a key without a deadline has an infinite one for GT and LT.
            if ((cond == b"NX" and cur) or (cond == b"XX" and not cur)
                    or (cond == b"GT" and (not cur or deadline <= cur))
                    or (cond == b"LT" and cur and deadline >= cur)):
                return
            self._expire_at(a[0], deadline)
        elif name == "PERSIST":
            rec = self._rec(a[0])
            if rec is not None and rec[3]:
                self.data[a[0]] = (rec[0], rec[1] + 1, self.index, 0)
        elif name == "CASV":
            rec = self._rec(a[0])
            if (rec[1] if rec else 0) == int(a[1]):
                self._write(a[0], a[2])
        elif name == "DELV":
            rec = self._rec(a[0])
            if rec is not None and rec[1] == int(a[1]):
                self._delete(a[0])
        elif name == "PURGE":
            for k in a:
                rec = self.data.get(k)
                if rec is not None and rec[3] and rec[3] <= now:
                    self._delete(k)
        elif name in ("MGET", "EXISTS", "STRLEN", "PTTL", "TTL", "GETV"):
            return
        else:
            raise AssertionError(f"the model does not know the operation {name}")
