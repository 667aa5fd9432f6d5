"""Tolerant readers for the node's status replies: INFO, CLUSTER INFO, CLUSTER NODES,
MEMBER LIST.

Theory of operation
-------------------
The shell shows status; it must not break when a field is renamed, added or missing.
`aegis.client.parse_info` and `parse_cluster_nodes` split the text; this module turns those
dicts into typed rows, trying the field names a node might reasonably use (``match`` or
``match_index``, ``health`` or ``status``, ``last_heard`` in seconds or milliseconds…), and
keeps everything it did not recognise in `extra` so the tables can still show it.
Nothing here raises on odd input: an unparsable number becomes None, a missing field "".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aegis.client import parse_cluster_nodes, parse_info
from aegis.protocol import Reply

__all__ = [
    "MemberRow",
    "ROLES",
    "HEALTH_LABELS",
    "parse_member_lines",
    "members_from_reply",
    "parse_members_field",
    "info_int",
    "reply_text",
    "format_age",
    "pick",
]

ROLES: Final = ("leader", "follower", "candidate", "learner", "precandidate", "voter")
HEALTH_LABELS: Final = {
    "starting": "Starting",
    "healthy": "Healthy",
    "suspect": "Suspect",
    "down": "Down",
    "leaving": "Leaving",
    "left": "Left",
    "unreachable": "Unreachable",
}

_ID_KEYS: Final = ("id", "node_id", "node")
_ADDRESS_KEYS: Final = ("address", "addr", "listen")
_ROLE_KEYS: Final = ("role", "state", "raft_role")
_MATCH_KEYS: Final = ("match_index", "match", "matchindex", "matched")
_HEALTH_KEYS: Final = ("health", "status", "node_status")
_HEARD_KEYS: Final = (
    "last_heard", "heard", "last_seen", "last_contact", "last_heard_s", "last_heard_ago",
)
_HEARD_MS_KEYS: Final = ("last_heard_ms", "last_seen_ms", "last_contact_ms", "heard_ms")
_SUFFRAGE_KEYS: Final = ("suffrage", "kind", "voter", "member_type")
_KNOWN: Final = frozenset(
    _ID_KEYS + _ADDRESS_KEYS + _ROLE_KEYS + _MATCH_KEYS + _HEALTH_KEYS + _HEARD_KEYS
    + _HEARD_MS_KEYS + _SUFFRAGE_KEYS + ("flags",)
)


def pick(fields: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The first of `names` present in `fields` (case-insensitive keys)."""
    lowered = {k.lower(): v for k, v in fields.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _to_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        try:
            return int(float(text.strip()))
        except ValueError:
            return None


def _non_negative(value: int | None) -> int | None:
    """-1 means "not known" (a follower does not track its peers' match index)."""
    return value if value is not None and value >= 0 else None


def format_age(seconds: float | None) -> str:
    """``0.2s ago``, ``12s ago``, ``3m10s ago``; "" when unknown, ``never`` if negative."""
    if seconds is None:
        return ""
    if seconds < 0:
        return "never"
    if seconds < 10:
        return f"{seconds:.1f}s ago"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s ago"
    return f"{minutes // 60}h{minutes % 60:02d}m ago"


def _heard(fields: Mapping[str, str]) -> str:
    millis = pick(fields, _HEARD_MS_KEYS)
    if millis is not None:
        value = _to_int(millis)
        return format_age(value / 1000) if value is not None else millis
    text = pick(fields, _HEARD_KEYS)
    if text is None:
        return ""
    stripped = text.strip()
    if stripped in ("-1", "never", "-"):
        return "never"
    number = stripped[:-1] if stripped.endswith("s") and not stripped.endswith("ms") else stripped
    if number.endswith("ms"):
        value = _to_int(number[:-2])
        return format_age(value / 1000) if value is not None else stripped
    try:
        return format_age(float(number))
    except ValueError:
        return stripped


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as a status reply describes it."""

    node_id: str
    address: str = ""
    role: str = ""
    match_index: int | None = None
    health: str = ""
    last_heard: str = ""
    is_leader: bool = False
    myself: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_down(self) -> bool:
        return self.health.lower() in ("down", "unreachable", "left")


_EMPTY: Final = frozenset({"-", "none", "null", ""})


def _row(raw: Mapping[str, str], leader_id: str | None) -> MemberRow:
    # "-" is how a node writes "nothing" in a space-separated line.
    fields = {k: v for k, v in raw.items() if v.strip().lower() not in _EMPTY}
    flags = [f.lower() for f in (fields.get("flags") or "").replace(",", " ").split()]
    node_id = pick(fields, _ID_KEYS) or ""
    role = (pick(fields, _ROLE_KEYS) or "").lower()
    if not role:
        role = next((f for f in flags if f in ROLES), "")
    health_text = pick(fields, _HEALTH_KEYS) or next((f for f in flags if f in HEALTH_LABELS), "")
    health = HEALTH_LABELS.get(health_text.lower(), health_text)
    suffrage = (pick(fields, _SUFFRAGE_KEYS) or "").lower()
    if not role and suffrage in ("learner", "nonvoter", "non-voter"):
        role = "learner"
    is_leader = role == "leader" or "leader" in flags or (bool(leader_id) and node_id == leader_id)
    if is_leader and role in ("", "voter"):
        role = "leader"
    extra = {k: v for k, v in fields.items() if k.lower() not in _KNOWN}
    myself = "myself" in flags or fields.get("self", "").lower() in ("1", "yes", "true")
    return MemberRow(
        node_id=node_id,
        address=pick(fields, _ADDRESS_KEYS) or "",
        role=role,
        match_index=_non_negative(_to_int(pick(fields, _MATCH_KEYS))),
        health=health,
        last_heard="—" if myself else _heard(fields),
        is_leader=is_leader,
        myself=myself,
        extra=extra,
    )


def parse_member_lines(text: bytes | str, leader_id: str | None = None) -> list[MemberRow]:
    """CLUSTER NODES / MEMBER LIST text, one member per line, as rows.

    Lines may be ``id address key=value …`` or carry bare flags (``leader``, ``myself``,
    ``healthy``); a leading ``1)`` numbering is ignored.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    cleaned: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].endswith(")") and words[0][:-1].isdigit():
            words = words[1:]
        if words:
            cleaned.append(" ".join(words))
    return [_row(fields, leader_id) for fields in parse_cluster_nodes("\n".join(cleaned))]


def members_from_reply(reply: Reply, leader_id: str | None = None) -> list[MemberRow] | None:
    """Rows from a MEMBER LIST / CLUSTER NODES reply of any shape (text, a list of lines, or
    a list of lists of words); None when the reply is not member data."""
    if isinstance(reply, (bytes, str)):
        rows = parse_member_lines(reply, leader_id)
        return rows or None
    if isinstance(reply, list):
        lines: list[str] = []
        for item in reply:
            if isinstance(item, (bytes, str)):
                lines.append(item.decode("utf-8", "replace") if isinstance(item, bytes) else item)
            elif isinstance(item, list) and all(isinstance(w, (bytes, str, int)) for w in item):
                lines.append(
                    " ".join(w.decode("utf-8", "replace") if isinstance(w, bytes) else str(w) for w in item)
                )
            else:
                return None
        rows = parse_member_lines("\n".join(lines), leader_id)
        return rows or None
    return None


def parse_members_field(value: str) -> list[tuple[str, str]]:
    """INFO's ``members`` field as ``[(id, address)]`` (address "" when not given).

    Accepts ``n1=127.0.0.1:7001,n2=…``, ``n1@127.0.0.1:7001``, ``n1:127.0.0.1:7001`` and a
    bare ``n1,n2,n3``.
    """
    out: list[tuple[str, str]] = []
    for part in value.replace(";", ",").replace(" ", ",").split(","):
        part = part.strip()
        if not part:
            continue
        for sep in ("=", "@"):
            if sep in part:
                node_id, _, address = part.partition(sep)
                out.append((node_id, address))
                break
        else:
            node_id, sep, address = part.partition(":")
            # "n1:127.0.0.1:7001" has an address after the first colon; "host:port" alone
            # (no id) keeps the whole as the address.
            if sep and ":" in address:
                out.append((node_id, address))
            elif sep and address.isdigit():
                out.append(("", part))
            else:
                out.append((part, ""))
    return out


def info_int(info: Mapping[str, str], *names: str) -> int | None:
    """The first of `names` in INFO as an int (None if missing or not a number)."""
    return _to_int(pick(info, names))


def reply_text(reply: Reply) -> str | None:
    """A bulk or simple string reply as text, else None."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    return None


def info_dict(reply: Reply) -> dict[str, str]:
    text = reply_text(reply)
    return parse_info(text) if text is not None else {}
