"""A linearizability checker for histories of register operations, key by key.

Theory of operation
-------------------
A history is a set of operations. Each has an invocation time and either a completion time
and a result, or no completion: its outcome is unknown (a write that timed out or lost its
connection), so it may have taken effect at any instant after its invocation, or never.
The history is linearizable if some total order of all the completed operations and some
subset of the unknown ones

1. respects real time: if `a` completed before `b` was invoked, `a` comes first, and an
   unknown operation comes after everything that completed before it was invoked;
2. is a legal run of the model: replayed one at a time from the initial state, every
   completed operation returns exactly what it returned in the history.

Keys are independent registers, so each key's sub-history is checked on its own
(linearizability is local: Herlihy & Wing 1990, §3.3; Porcupine's P-compositionality).

The search is Wing & Gong's (1993): depth first, linearize some operation that may go next,
recurse, undo on failure. An operation may go next iff no other outstanding operation
completed before it was invoked; the outstanding op that completes first may always go, and
is tried first (Lowe 2017). A configuration is (which ops are linearized, model state);
Lowe's memoisation (as in Knossos and Porcupine) never explores a configuration twice, since
everything reachable from it depends on nothing else. Completed ops are numbered in
invocation order and the linearized set is kept as `p` (ops [0, p) are all in) plus a small
bitmask of those beyond `p`, so keys and masks stay small on long histories.

Unknown-outcome ops are what make such searches blow up (each is concurrent with everything
after it), so three sound reductions keep them cheap:

* dominance: leaving an unknown op out is always allowed, so a configuration that has
  consumed a superset of the unknowns of a failed configuration with the same completed set
  and state fails too, and is pruned;
* no-ops: consuming an unknown op that leaves the state as it is never helps (dominance);
* symmetry: available unknown ops with the same effect (two INCRs, two DELs) are
  interchangeable, so only the earliest unconsumed one of each effect is tried;
* blind writes: an unknown op whose effect ignores the state (SET, DEL) wastes any unknown
  op consumed just before it, so it may only start a run of unknown ops, right after a
  completed op. Without this rule a run of n unknown SETs is tried in every order.

Unknown ops are only tried after every completed candidate has failed, so a good history is
usually accepted in one greedy pass. The search has a budget of configurations; a key that
exhausts it is reported as inconclusive, never as linearizable.

On a violation the report gives the longest linearizable prefix found, the operations that
could not be linearized after it (with the state they saw), and a minimal set of completed
operations that is still not linearizable, found by sound reductions only: a completed op
with no effect (a GET, a DEL or CAS that changed nothing) is dropped, and any other
completed op is relaxed to an unknown outcome. A history that stays non-linearizable under
those reductions proves the original one is not linearizable either.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, Protocol

__all__ = [
    "Op",
    "Model",
    "RegisterModel",
    "KeyResult",
    "CheckResult",
    "check",
    "check_key",
    "minimize",
    "format_op",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """One operation of a history.

    `complete is None` means the outcome is unknown and `result` is ignored. Times are
    seconds on one monotonic clock; `complete >= invoke`.
    """

    process: Hashable
    key: str
    kind: str  # "get" | "set" | "del" | "incr" | "cas"
    args: tuple[Any, ...]
    result: Any
    invoke: float
    complete: float | None
    id: int = 0

    def __post_init__(self) -> None:
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(f"op {self.id} completes ({self.complete}) before it is invoked ({self.invoke})")

    @property
    def unknown(self) -> bool:
        return self.complete is None

    def relaxed(self) -> Op:
        """The same op with its outcome forgotten."""
        return dataclasses.replace(self, complete=None, result=None)


class Model(Protocol):
    """A sequential specification, one instance per key."""

    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        """Whether a completed `op` returning `op.result` is legal in `state`, and the next state."""

    def apply(self, state: Hashable, op: Op) -> Hashable:
        """The state after `op` takes effect, whatever it returned (for unknown outcomes)."""

    def effect(self, op: Op) -> Hashable:
        """Ops with equal effects are interchangeable when their outcome is unknown."""

    def no_effect(self, op: Op) -> bool:
        """Whether a completed `op`, given its own result, certainly changed nothing."""

    def blind(self, op: Op) -> bool:
        """Whether `op`'s effect ignores the state it is applied to (a blind write)."""

    def expected(self, state: Hashable, op: Op) -> Any:
        """What `op` would have returned in `state` (for reports)."""


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.strip() != text or (text.startswith("0") and text != "0") or text.startswith("-0") or text == "-":
            return None
        return int(text)
    except (ValueError, UnicodeDecodeError):
        return None


class RegisterModel:
    """A Redis-style string register: GET, SET, DEL, INCR and CAS on value.

    The state is the value as a string, or None when the key does not exist.
    GET returns the value (None for nil); SET returns "OK"; DEL returns 1 if the key existed,
    else 0; INCR returns the new integer (a missing key counts as 0) and fails, changing
    nothing, on a non-integer value (result "ERR"); CAS(expected, new) returns 1 and swaps if
    the key holds `expected`, else 0 (a missing key matches nothing).
    """

    def init(self) -> Hashable:
        return None

    def expected(self, state: Hashable, op: Op) -> Any:
        kind = op.kind
        if kind == "get":
            return state
        if kind == "set":
            return "OK"
        if kind == "del":
            return 0 if state is None else 1
        if kind == "incr":
            if state is None:
                return 1
            n = _as_int(state)
            return "ERR" if n is None else n + 1
        if kind == "cas":
            return 1 if state is not None and state == str(op.args[0]) else 0
        raise ValueError(f"unknown op kind {kind!r}")

    def apply(self, state: Hashable, op: Op) -> Hashable:
        kind = op.kind
        if kind == "get":
            return state
        if kind == "set":
            return str(op.args[0])
        if kind == "del":
            return None
        if kind == "incr":
            result = self.expected(state, op)
            return state if result == "ERR" else str(result)
        if kind == "cas":
            return str(op.args[1]) if self.expected(state, op) == 1 else state
        raise ValueError(f"unknown op kind {kind!r}")

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        want = self.expected(state, op)
        got = op.result
        if op.kind == "get":
            ok = got == state
        elif op.kind == "set":
            ok = got in ("OK", b"OK", True)
        else:
            ok = got == want
        return ok, self.apply(state, op)

    def effect(self, op: Op) -> Hashable:
        return (op.kind, *map(str, op.args))

    def no_effect(self, op: Op) -> bool:
        return op.kind == "get" or (op.kind in ("del", "cas") and op.result == 0) or op.result == "ERR"

    def blind(self, op: Op) -> bool:
        return op.kind in ("set", "del")


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class KeyResult:
    key: str
    ok: bool
    inconclusive: bool
    ops: int
    unknown: int
    configs: int
    seconds: float
    prefix: list[tuple[Op, Hashable]]  # the longest linearizable prefix: (op, state after it)
    stuck: list[tuple[Op, Hashable, Any]]  # ops that could not go next: (op, state, what it should have returned)
    minimal: list[Op] | None = None  # the minimal completed ops still not linearizable
    minimal_unknown: int = 0  # how many ops of the key were left as unknown outcomes in it


@dataclasses.dataclass
class CheckResult:
    keys: list[KeyResult]

    @property
    def ok(self) -> bool:
        return all(k.ok for k in self.keys)

    @property
    def verdict(self) -> str:
        if any(not k.ok and not k.inconclusive for k in self.keys):
            return "violation"
        return "ok" if self.ok else "inconclusive"

    @property
    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if not k.ok]

    def report(self, t0: float = 0.0, *, context: int = 8) -> str:
        lines: list[str] = []
        for k in self.failures:
            lines += format_failure(k, t0, context=context)
        return "\n".join(lines)


class _Budget(Exception):
    pass


# ----------------------------------------------------------------------------- the search


class _Search:
    """The search for one key. `run()` returns True (linearizable) or False; raises _Budget."""

    def __init__(self, ops: Sequence[Op], model: Model, max_configs: int) -> None:
        self.model = model
        self.completed = sorted((o for o in ops if o.complete is not None), key=lambda o: (o.invoke, o.complete))
        # An unknown op invoked after every completed op completed can only go last: drop it.
        last = max((float(o.complete) for o in self.completed), default=-math.inf)  # type: ignore[arg-type]
        self.unknown = sorted((o for o in ops if o.complete is None and o.invoke <= last), key=lambda o: o.invoke)
        self.inv = [o.invoke for o in self.completed]
        self.comp = [float(o.complete) for o in self.completed]  # type: ignore[arg-type]
        self.uinv = [o.invoke for o in self.unknown]
        self.ueffect = [model.effect(o) for o in self.unknown]
        self.ublind = [model.blind(o) for o in self.unknown]
        self.max_configs = max_configs
        self.configs = 0
        self.seen: dict[tuple[int, int, Hashable], list[int]] = {}
        # The deepest point reached: (completed ops linearized, path, p, extra, state, umask).
        # `umask` has bit k+1 set when unknown op k is consumed, and bit 0 when the last step
        # consumed an unknown op (a blind write may not go next): a configuration with fewer
        # bits set dominates one with more, so the memo's subset test covers both.
        self.best: tuple[int, Any, int, int, Hashable, int] = (-1, None, 0, 0, None, 0)

    # A path is a cons list (op, state after, parent) so recording the deepest one is O(1).

    def _window(self, p: int, extra: int) -> tuple[list[int], float]:
        """Unlinearized completed ops that may go next (earliest completion first), and the
        earliest completion among the outstanding ones."""
        inv, comp, n = self.inv, self.comp, len(self.completed)
        m1 = math.inf
        window: list[int] = []
        j = p
        while j < n and inv[j] <= m1:
            if not (extra >> (j - p)) & 1:
                window.append(j)
                if comp[j] < m1:
                    m1 = comp[j]
            j += 1
        cands = [j for j in window if inv[j] <= m1]
        cands.sort(key=lambda j: comp[j])
        return cands, m1

    def _children(self, p: int, extra: int, state: Hashable, umask: int) -> Iterator[tuple[Op, int, int, Hashable, int]]:
        cands, m1 = self._window(p, extra)
        step = self.model.step
        for j in cands:
            ok, nstate = step(state, self.completed[j])
            if not ok:
                continue
            e = extra | (1 << (j - p))
            np_ = p
            while e & 1:
                e >>= 1
                np_ += 1
            yield self.completed[j], np_, e, nstate, umask & ~1
        # Unknown ops only once every completed candidate has been tried.
        avail = bisect.bisect_right(self.uinv, m1)
        tried: set[Hashable] = set()
        apply = self.model.apply
        for k in range(avail):
            if (umask >> (k + 1)) & 1 or (self.ublind[k] and umask & 1):
                continue
            eff = self.ueffect[k]
            if eff in tried:
                continue  # symmetry: an earlier unconsumed op with this effect was tried
            tried.add(eff)
            nstate = apply(state, self.unknown[k])
            if nstate == state:
                continue  # no-op: dominated by not consuming it
            yield self.unknown[k], p, extra, nstate, umask | (1 << (k + 1)) | 1

    def _visit(self, p: int, extra: int, state: Hashable, umask: int) -> bool:
        """Record the configuration; False if it (or one that dominates it) was seen."""
        key = (p, extra, state)
        failed = self.seen.get(key)
        if failed is not None:
            for f in failed:
                if f & ~umask == 0:
                    return False
            failed.append(umask)
        else:
            self.seen[key] = [umask]
        self.configs += 1
        if self.configs > self.max_configs:
            raise _Budget
        return True

    def run(self) -> bool:
        n = len(self.completed)
        init = self.model.init()
        if n == 0:
            self.best = (0, None, 0, 0, init, 0)
            return True
        self._visit(0, 0, init, 0)
        self.best = (0, None, 0, 0, init, 0)
        stack: list[tuple[Iterator[tuple[Op, int, int, Hashable, int]], Any]] = [
            (self._children(0, 0, init, 0), None)
        ]
        while stack:
            children, path = stack[-1]
            for op, p, extra, state, umask in children:
                if p == n:
                    self.best = (n, (op, state, path), p, extra, state, umask)
                    return True
                if not self._visit(p, extra, state, umask):
                    continue
                node = (op, state, path)
                depth = p + extra.bit_count()
                if depth > self.best[0]:
                    self.best = (depth, node, p, extra, state, umask)
                stack.append((self._children(p, extra, state, umask), node))
                break
            else:
                stack.pop()
        return False

    def prefix(self) -> list[tuple[Op, Hashable]]:
        out: list[tuple[Op, Hashable]] = []
        node = self.best[1]
        while node is not None:
            out.append((node[0], node[1]))
            node = node[2]
        out.reverse()
        return out

    def stuck(self) -> list[tuple[Op, Hashable, Any]]:
        _, _, p, extra, state, _ = self.best
        if p >= len(self.completed):
            return []
        cands, _ = self._window(p, extra)
        return [(self.completed[j], state, self.model.expected(state, self.completed[j])) for j in cands]


def _search(ops: Sequence[Op], model: Model, max_configs: int) -> tuple[bool | None, _Search]:
    s = _Search(ops, model, max_configs)
    try:
        return s.run(), s
    except _Budget:
        return None, s


def check_key(ops: Sequence[Op], model: Model | None = None, *, max_configs: int = 2_000_000,
              minimize_seconds: float = 20.0) -> KeyResult:
    """Check one key's operations (all `ops` must be on the same key)."""
    model = model or RegisterModel()
    keys = {o.key for o in ops}
    if len(keys) > 1:
        raise ValueError(f"check_key got ops on several keys: {sorted(keys)[:5]}")
    t = time.perf_counter()
    verdict, s = _search(ops, model, max_configs)
    result = KeyResult(
        key=next(iter(keys)) if keys else "", ok=verdict is True, inconclusive=verdict is None,
        ops=len(ops), unknown=sum(1 for o in ops if o.complete is None), configs=s.configs, seconds=0.0,
        prefix=[] if verdict else s.prefix(), stuck=[] if verdict else s.stuck(),
    )
    if verdict is False and minimize_seconds > 0:
        focus = [o for o, _, _ in result.stuck] + [o for o, _ in reversed(result.prefix)]
        core = minimize(ops, model, focus=focus, seconds=minimize_seconds)
        result.minimal = [o for o in core if o.complete is not None]
        result.minimal_unknown = sum(1 for o in core if o.complete is None)
    result.seconds = time.perf_counter() - t
    return result


def check(ops: Iterable[Op], model_factory: type[RegisterModel] | Any = RegisterModel, *,
          max_configs: int = 2_000_000, minimize_seconds: float = 20.0) -> CheckResult:
    """Check a whole history, key by key."""
    by_key: dict[str, list[Op]] = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    return CheckResult([
        check_key(by_key[k], model_factory(), max_configs=max_configs, minimize_seconds=minimize_seconds)
        for k in sorted(by_key)
    ])


# ----------------------------------------------------------------------------- minimisation


def minimize(ops: Sequence[Op], model: Model, *, focus: Sequence[Op] = (), seconds: float = 20.0,
             max_configs: int = 200_000) -> list[Op]:
    """A smaller history that is still not linearizable, by sound reductions only.

    Dropping a completed op that changed nothing, or forgetting a completed op's outcome,
    can only make a history easier to linearize; so if the reduced history still fails,
    the original one fails too. `focus` (the ops the search got stuck on, then the end of
    the longest prefix, latest first) is tried first: keep the first 1, 2, 4, ... of them
    and reduce everything else. The kept set is then shrunk in halving chunks (delta
    debugging) until a time budget runs out. A trial whose search exhausts its own budget
    counts as linearizable, so a reduction is only taken when it is proven.
    """
    deadline = time.monotonic() + seconds
    original = dict(enumerate(ops))
    index = {id(o): i for i, o in original.items()}

    def reduced(keep: set[int]) -> dict[int, Op]:
        out: dict[int, Op] = {}
        for i, o in original.items():
            if o.complete is None or i in keep:
                out[i] = o
            elif not model.no_effect(o):
                out[i] = o.relaxed()
        return out

    def fails(history: Iterable[Op]) -> bool:
        return _search(list(history), model, max_configs)[0] is False

    completed = [i for i, o in original.items() if o.complete is not None]
    keep: set[int] = set(completed)
    order = [index[id(o)] for o in focus if id(o) in index and original[index[id(o)]].complete is not None]
    n = 1
    while order and time.monotonic() < deadline:
        trial = set(order[:n])
        if fails(reduced(trial).values()):
            keep = trial
            break
        if n >= len(order):
            break
        n *= 2
    # Delta debugging over what is kept.
    chunk = max(1, len(keep) // 2)
    while keep and time.monotonic() < deadline:
        members = sorted(keep, key=lambda i: original[i].invoke)
        pos, changed = 0, False
        while pos < len(members) and time.monotonic() < deadline:
            trial = keep - set(members[pos:pos + chunk])
            if fails(reduced(trial).values()):
                keep = trial
                changed = True
            pos += chunk
        if chunk == 1 and not changed:
            break
        if not changed or chunk > len(keep):
            chunk = max(1, chunk // 2)
    return list(reduced(keep).values())


# ----------------------------------------------------------------------------- reports


def _fmt_value(v: Any) -> str:
    return "nil" if v is None else repr(v)


def format_op(op: Op, t0: float = 0.0) -> str:
    """`key=k proc=3 CAS('5', '6') -> 1  [1.203, 1.207]` (times in seconds since t0)."""
    args = ", ".join(repr(a) for a in op.args)
    if op.complete is None:
        outcome, times = "?  (outcome unknown)", f"[{op.invoke - t0:.3f}, ...]"
    else:
        outcome, times = _fmt_value(op.result), f"[{op.invoke - t0:.3f}, {op.complete - t0:.3f}]"
    return f"key={op.key} proc={op.process} {op.kind.upper()}({args}) -> {outcome}  {times}"


def format_failure(k: KeyResult, t0: float = 0.0, *, context: int = 8) -> list[str]:
    if k.inconclusive:
        return [f"key {k.key}: INCONCLUSIVE: the search gave up after {k.configs} configurations "
                f"({k.ops} ops, {k.unknown} of unknown outcome)"]
    lines = [f"key {k.key}: NOT LINEARIZABLE ({k.ops} ops, {k.unknown} of unknown outcome, "
             f"{k.configs} configurations searched)"]
    lines.append(f"  longest linearizable prefix: {len(k.prefix)} ops; its last {min(context, len(k.prefix))}:")
    for op, state in k.prefix[-context:]:
        lines.append(f"    {format_op(op, t0)}    => {_fmt_value(state)}")
    if k.stuck:
        lines.append("  then none of these could be linearized next:")
        for op, state, want in k.stuck:
            why = ("legal here, but nothing after it can be linearized" if want == op.result
                   else f"in state {_fmt_value(state)} it would return {_fmt_value(want)}")
            lines.append(f"    {format_op(op, t0)}    ({why})")
    if k.minimal is not None:
        lines.append(f"  minimal offending operations ({len(k.minimal)} completed ops; {k.minimal_unknown} other "
                     "writes on the key allowed any outcome at any time after their invocation):")
        shown = sorted(k.minimal, key=lambda o: o.invoke)
        if len(shown) > 2 * context + 4:
            lines.append(f"    ... {len(shown) - 2 * context - 4} earlier ones (in the history) ...")
            shown = shown[-(2 * context + 4):]
        for op in shown:
            lines.append(f"    {format_op(op, t0)}")
    return lines
