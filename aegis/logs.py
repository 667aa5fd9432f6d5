"""Logs an operator can read and a machine can parse: `--log-format text|json`.

Theory of operation
-------------------
Everything logs through the standard `logging` module. The few things an operator cares
about — a leader elected or stepping down, a member added or removed, a snapshot taken or
installed, a peer down or up, a disk error — are *events*: `event(log, "leader_elected",
"…", node=…, term=…, **fields)` logs one line carrying a stable event name, the node id,
its term and the event's own fields as attributes of the record. The formatters decide how
that looks:

* text: ``2026-12-03 07:30:01,123 INFO aegis.server: n1 is the leader in term 2
  [leader_elected node=n1 term=2 leader=n1]``;
* json: one object per line, ``{"ts", "level", "node", "term", "event", "msg", "fields",
  "logger"}`` (``event`` is null for a line that is not an event; ``exc`` holds a traceback
  when there is one).

A line that is not an event gets the process's node id and term from `set_context` (one
`aegis serve` process is one node); events always name their own, so several nodes in one
process (the in-process tests) log correctly too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable, Final, Mapping

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "event", "set_context", "setup"]

FORMATS: Final = ("text", "json")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Names of the events (the `event` field); a new event is one row here and one call.
EVENTS: Final = frozenset({
    "node_started",      # serving: fields listen, cluster, data, metrics
    "leader_elected",    # this node won an election: fields leader
    "leader_changed",    # this node follows a new leader (or knows none: leader null)
    "stepped_down",      # this node was the leader and no longer is: fields leader (the new one, if known)
    "member_added",      # fields member, address, voter (true/false)
    "member_promoted",   # a learner became a voter: fields member
    "member_removed",    # fields member
    "snapshot_taken",    # the log was compacted up to a snapshot point: fields index, seconds
    "snapshot_installed",  # a snapshot from the leader replaced the state: fields index, keys
    "snapshot_sent",     # fields peer, index, bytes, seconds
    "peer_down",         # the failure detector has not heard from a peer: fields peer, error
    "peer_up",           # a peer is heard from again (or for the first time): fields peer
    "disk_error",        # a write to the data directory failed; the node stops: fields error, what
    "disk_full",         # the leader refuses writes: too little space is left (aegis.space)
    "disk_space_back",   # ... and accepts them again
})


class _Context:
    node: str | None = None
    term: Callable[[], int | None] | None = None


_CONTEXT = _Context()


def set_context(node: str | None, term: Callable[[], int | None] | None = None) -> None:
    """The node id (and a getter of its current term) for lines that do not name them."""
    _CONTEXT.node = node
    _CONTEXT.term = term


def event(logger: logging.Logger, name: str, msg: str, *, node: str, term: int,
          level: int = logging.INFO, **fields: Any) -> None:
    """Log the operator event `name` (one of `EVENTS`) with its node id, term and fields."""
    if name not in EVENTS:
        raise ValueError(f"unknown log event {name!r}")
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"event": name, "node": node, "term": term, "fields": fields})


def _node_term(record: logging.LogRecord) -> tuple[str | None, int | None]:
    node = getattr(record, "node", None)
    if node is not None:
        return node, getattr(record, "term", None)
    term = None
    if _CONTEXT.term is not None:
        try:
            term = _CONTEXT.term()
        except Exception:  # noqa: BLE001 - a log line must never fail for its context
            term = None
    return _CONTEXT.node, term


def _text_value(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v)
    return json.dumps(s) if (not s or any(c.isspace() or c in '"=[]' for c in s)) else s


class TextFormatter(logging.Formatter):
    """The classic one-line format; an event gets ``[event node=… term=… k=v …]`` after it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        name = getattr(record, "event", None)
        if name is None:
            return line
        node, term = _node_term(record)
        fields: Mapping[str, object] = getattr(record, "fields", {}) or {}
        parts = [name, f"node={_text_value(node)}", f"term={_text_value(term)}"]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
        head, nl, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} [{' '.join(parts)}]{nl}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        node, term = _node_term(record)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        doc: dict[str, object] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "node": node,
            "term": term,
            "event": getattr(record, "event", None),
            "msg": record.getMessage(),
            "fields": dict(getattr(record, "fields", {}) or {}),
            "logger": record.name,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger: `level` (debug…error) and `fmt` (text|json), to stderr."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, "_aegis", True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_aegis", False)]:
        root.removeHandler(old)  # a second setup replaces the first (other handlers stay)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
