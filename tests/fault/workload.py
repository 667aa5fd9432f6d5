"""Client workers: GET/SET/DEL/INCR/CAS on a few keys against random nodes, every call recorded.

Each worker is a thread with its own seeded `random.Random` and one raw redis-py
`Connection` per node (no client-side retries: a retried write would be applied twice
behind the history's back). An operation is recorded when it is sent (invocation) and when
its reply arrives (completion), on one monotonic clock.

Outcomes:
* a reply — the op completed with that result (INCR's "not an integer" `-ERR` included: it
  is a definite result the model checks);
* a connect failure — nothing was sent, nothing is recorded (a definite failure);
* any other `-ERR` — definite failure, nothing written; recorded nowhere but counted and
  sampled, since the workload never sends a bad command;
* `-NOLEADER`, `-TIMEOUT`, `-TRYAGAIN`, a timeout or a lost connection — a write's outcome
  is unknown (it may still commit), so it is recorded with no completion; a read that fails
  has no effect and is dropped.

Keys rotate: every `key_seconds` the workers move to a fresh set of `keys` keys, which keeps
each key's history (and its unknown writes) short for the checker, as Jepsen's independent
keys do. Values are unique integers (multiples of 1000), so INCR applies to every value and
a read names the write it saw.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .linearizability import Op

KINDS = ("get", "set", "del", "incr", "cas")
WEIGHTS = (35, 20, 10, 20, 15)


@dataclasses.dataclass
class Tally:
    ok: int = 0
    failed: int = 0  # definite failures and failed reads: no effect
    unknown: int = 0
    by_kind: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # kind -> [ok, failed, unknown]
    errors: dict[str, int] = dataclasses.field(default_factory=dict)  # 'reads|writes <error>' -> count
    unexpected: list[str] = dataclasses.field(default_factory=list)  # samples of -ERR replies

    def count(self, kind: str, outcome: int) -> None:
        row = self.by_kind.setdefault(kind, [0, 0, 0])
        row[outcome] += 1
        if outcome == 0:
            self.ok += 1
        elif outcome == 1:
            self.failed += 1
        else:
            self.unknown += 1


class History:
    """The shared, thread-safe record of every operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.ops: list[Op] = []
        self.tally = Tally()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def record(self, op: Op | None, kind: str, outcome: int, error: str | None = None) -> None:
        with self._lock:
            if op is not None:
                self.ops.append(op)
            self.tally.count(kind, outcome)
            if error:
                name = f"{'reads' if kind.endswith('get') else 'writes'} {error}"
                self.tally.errors[name] = self.tally.errors.get(name, 0) + 1

    def unexpected(self, text: str) -> None:
        with self._lock:
            if len(self.tally.unexpected) < 10:
                self.tally.unexpected.append(text)


def connection(port: int, timeout: float) -> redis.Connection:
    return redis.Connection(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=1.0,
                            retry=Retry(NoBackoff(), 0), decode_responses=True)


def classify(exc: BaseException) -> str:
    """A short name for an error: the RESP prefix of a reply, else the exception class.

    redis-py strips the prefixes it knows (`ERR`, `TRYAGAIN`, ...) and maps them to classes;
    others (`NOLEADER`, `TIMEOUT`) stay at the start of the message. Only a plain
    `ResponseError` whose message does not start with such a prefix is a definite `ERR`:
    when in doubt an error counts as an unknown outcome, which is the safe side."""
    if isinstance(exc, redis.exceptions.TryAgainError):
        return "TRYAGAIN"
    if type(exc) is redis.ResponseError:
        first = (str(exc).split() or [""])[0]
        return first if first.isalpha() and first.isupper() else "ERR"
    if isinstance(exc, redis.ResponseError):
        return type(exc).__name__
    return type(exc).__name__


class Worker(threading.Thread):
    def __init__(self, index: int, ports: dict[str, int], history: History, stop: threading.Event, *,
                 seed: int, keys: int, key_seconds: float, t0: float, values: itertools.count[int],
                 timeout: float = 5.0) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.ports = ports
        self.history = history
        self.stop = stop
        self.rng = random.Random(seed * 1_000_003 + index)
        self.keys = keys
        self.key_seconds = key_seconds
        self.t0 = t0
        self.values = values
        self.timeout = timeout
        self.conns: dict[str, redis.Connection] = {}
        self.seen: dict[str, str] = {}  # the last value this worker saw per key (CAS's expected)

    def key(self) -> str:
        gen = int((time.monotonic() - self.t0) / self.key_seconds)
        return f"f{gen}.{self.rng.randrange(self.keys)}"

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.step():
                    self.stop.wait(self.rng.uniform(0.02, 0.1))
        finally:
            for c in self.conns.values():
                c.disconnect()

    def step(self) -> bool:
        """One operation; False if it failed (the caller backs off)."""
        rng = self.rng
        nid = rng.choice(sorted(self.ports))
        key = self.key()
        kind = rng.choices(KINDS, WEIGHTS)[0]
        args: tuple[Any, ...] = ()
        if kind == "set":
            args = (str(next(self.values) * 1000),)
        elif kind == "cas":
            expected = self.seen.get(key) if rng.random() < 0.8 else None
            args = (expected if expected is not None else str(rng.randrange(1, 50) * 1000), str(next(self.values) * 1000))
        conn = self.conns.get(nid)
        if conn is None:
            conn = self.conns[nid] = connection(self.ports[nid], self.timeout)
        try:
            conn.connect()
        except redis.RedisError as exc:
            self.history.record(None, kind, 1, classify(exc))  # nothing was sent
            return False
        command = {"get": ("GET", key), "set": ("SET", key, *args), "del": ("DEL", key), "incr": ("INCR", key),
                   "cas": ("CAS", key, *args)}[kind]
        oid = self.history.next_id()
        invoke = time.monotonic()
        try:
            conn.send_command(*command)
            reply = conn.read_response()
        except redis.ResponseError as exc:
            done = time.monotonic()
            prefix = classify(exc)
            if prefix == "ERR" and kind == "incr" and "integer" in str(exc):
                self.history.record(Op(self.index, key, kind, args, "ERR", invoke, done, oid), kind, 0)
                return True
            if prefix == "ERR":
                self.history.unexpected(f"{' '.join(command)} -> {exc}")
                self.history.record(None, kind, 1, prefix)
                return False
            return self._unknown(kind, key, args, invoke, oid, prefix)
        except (redis.RedisError, OSError) as exc:
            conn.disconnect()
            return self._unknown(kind, key, args, invoke, oid, classify(exc))
        done = time.monotonic()
        result: Any = reply
        if kind == "set":
            result = "OK" if reply in ("OK", True) else reply
        if kind == "get" and result is not None:
            self.seen[key] = str(result)
        elif kind == "set":
            self.seen[key] = args[0]
        elif kind == "incr" and isinstance(result, int):
            self.seen[key] = str(result)
        elif kind == "cas" and result == 1:
            self.seen[key] = args[1]
        self.history.record(Op(self.index, key, kind, args, result, invoke, done, oid), kind, 0)
        return True

    def _unknown(self, kind: str, key: str, args: tuple[Any, ...], invoke: float, oid: int, error: str) -> bool:
        if kind == "get":
            self.history.record(None, kind, 1, error)  # a failed read has no effect
        else:
            self.history.record(Op(self.index, key, kind, args, None, invoke, None, oid), kind, 2, error)
        return False


def final_reads(ports: dict[str, int], keys: list[str], history: History, *, deadline: float,
                process: str = "final") -> dict[str, list[str]]:
    """After the heal: read every key from every node, retrying failed reads until `deadline`.

    Each successful read is recorded, so the checker also proves that every acknowledged
    write survived on every node. Returns, per node, the keys it never served."""
    missing: dict[str, list[str]] = {}
    for nid in sorted(ports):
        conn = connection(ports[nid], 5.0)
        todo = list(keys)
        try:
            while todo and time.monotonic() < deadline:
                key = todo[0]
                oid = history.next_id()
                invoke = time.monotonic()
                try:
                    conn.connect()
                    conn.send_command("GET", key)
                    value = conn.read_response()
                except (redis.RedisError, OSError) as exc:
                    conn.disconnect()
                    history.record(None, "final-get", 1, classify(exc))
                    time.sleep(0.1)
                    continue
                history.record(Op(f"{process}@{nid}", key, "get", (), value, invoke, time.monotonic(), oid),
                               "final-get", 0)
                todo.pop(0)
        finally:
            conn.disconnect()
        if todo:
            missing[nid] = todo
    return missing
