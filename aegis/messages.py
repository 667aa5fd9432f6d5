"""Raft RPC messages, named as in the dissertation (Ongaro 2014, Figure 3.1 and §4, §6, §9).

Every message is a frozen, slotted, keyword-only dataclass carrying `term`, `sender` and
`receiver`. Validation happens when a message is built, so a malformed message from the
network is rejected by the codec (aegis.transport) before it reaches the core.

Re-exported from `aegis.raft`; kept in a module of its own so the codec and storage can use
the types without pulling in the state machine of the core.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from .log import LogEntry, LogIndex, Membership, SnapshotMeta, Term

__all__ = [
    "VoteRequest",
    "VoteResponse",
    "AppendEntriesRequest",
    "AppendEntriesResponse",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "TimeoutNow",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ConfigChangeType",
    "ConfigChange",
    "RaftMessage",
]


def _check_common(term: int, sender: str, receiver: str) -> None:
    if not isinstance(term, int) or term < 0:
        raise ValueError(f"bad term {term!r}")
    if not isinstance(sender, str) or not isinstance(receiver, str):
        raise ValueError("sender and receiver must be node ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest:
    """RequestVote (§3.4), or a PreVote (§9.6) when `pre_vote` is set.

    For a pre-vote, `term` is the term the candidate *would* use (current + 1); nobody
    changes its own term on receiving one.
    """

    term: Term
    candidate_id: str
    last_log_index: LogIndex
    last_log_term: Term
    pre_vote: bool = False
    # Set by a leadership transfer (§3.10): voters skip the "leader is alive" check.
    transfer: bool = False
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.candidate_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.candidate_id, self.receiver)
        if self.last_log_index < 0 or self.last_log_term < 0:
            raise ValueError("negative log position")


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse:
    term: Term
    vote_granted: bool
    voter_id: str = ""
    pre_vote: bool = False
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.voter_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.voter_id, self.receiver)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesRequest:
    term: Term
    leader_id: str
    prev_log_index: LogIndex
    prev_log_term: Term
    entries: tuple[LogEntry, ...] = ()
    leader_commit: LogIndex = LogIndex(0)
    receiver: str = ""
    # Echoed by heartbeat responses so the leader can confirm ReadIndex rounds (§6.4).
    read_ctx: int = 0
    heartbeat: bool = False

    @property
    def sender(self) -> str:
        return self.leader_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.leader_id, self.receiver)
        if self.prev_log_index < 0 or self.prev_log_term < 0 or self.leader_commit < 0:
            raise ValueError("negative log position")
        expect = self.prev_log_index + 1
        last_term = self.prev_log_term
        for e in self.entries:
            if not isinstance(e, LogEntry):
                raise TypeError("entries must be LogEntry values")
            if e.index != expect:
                raise ValueError(f"entries are not contiguous after {self.prev_log_index}")
            # Log Matching: terms never decrease along a log and never exceed the leader's.
            if e.term < last_term or e.term > self.term:
                raise ValueError(f"entry {e.index} has impossible term {e.term}")
            last_term = e.term
            expect += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntriesResponse:
    """Reply to AppendEntries.

    On success `match_index` is the last index known to match the leader's log.
    On rejection, `reject_hint`/`hint_term` let the leader skip a whole term at once (§5.3's
    optimisation as etcd does it): the follower's largest index <= the probe whose term is
    <= the leader's prev_log_term.
    """

    term: Term
    success: bool
    follower_id: str = ""
    match_index: LogIndex = LogIndex(0)
    reject_index: LogIndex = LogIndex(0)
    reject_hint: LogIndex = LogIndex(0)
    hint_term: Term = Term(0)
    receiver: str = ""
    read_ctx: int = 0
    heartbeat: bool = False

    @property
    def sender(self) -> str:
        return self.follower_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.follower_id, self.receiver)
        if self.match_index < 0 or self.reject_index < 0 or self.reject_hint < 0 or self.hint_term < 0:
            raise ValueError("negative log position")


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotRequest:
    """InstallSnapshot (§5.3 of the dissertation). `data` is the whole snapshot as the core
    sees it; the TCP transport streams it in chunks, and an empty `data` from the core means
    "the driver attaches the current snapshot file"."""

    term: Term
    leader_id: str
    snapshot: SnapshotMeta
    data: bytes = b""
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.leader_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.leader_id, self.receiver)
        if not isinstance(self.snapshot, SnapshotMeta) or self.snapshot.index < 0 or self.snapshot.term < 0:
            raise ValueError("bad snapshot metadata")

    @property
    def last_included_index(self) -> LogIndex:
        return self.snapshot.index

    @property
    def last_included_term(self) -> Term:
        return self.snapshot.term


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshotResponse:
    term: Term
    follower_id: str = ""
    match_index: LogIndex = LogIndex(0)
    success: bool = True
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.follower_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.follower_id, self.receiver)
        if self.match_index < 0:
            raise ValueError("negative log position")


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """Leadership transfer (§3.10): the target starts an election at once."""

    term: Term
    leader_id: str
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.leader_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.leader_id, self.receiver)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of a client (§6.4)."""

    term: Term
    sender_id: str
    ctx: int
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.sender_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.sender_id, self.receiver)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse:
    term: Term
    sender_id: str
    ctx: int
    index: LogIndex
    success: bool = True
    receiver: str = ""

    @property
    def sender(self) -> str:
        return self.sender_id

    def __post_init__(self) -> None:
        _check_common(self.term, self.sender_id, self.receiver)
        if self.index < 0:
            raise ValueError("negative log position")


RaftMessage = (
    VoteRequest
    | VoteResponse
    | AppendEntriesRequest
    | AppendEntriesResponse
    | InstallSnapshotRequest
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)


class ConfigChangeType(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE = 2
    PROMOTE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    """The payload of a CONFIG_CHANGE entry: one server at a time (§4.1)."""

    type: ConfigChangeType
    node_id: str
    address: str = ""

    def apply_to(self, m: Membership) -> Membership:
        addrs = m.address_map()
        voters, learners = set(m.voters), set(m.learners)
        if self.type == ConfigChangeType.ADD_VOTER:
            learners.discard(self.node_id)
            voters.add(self.node_id)
        elif self.type == ConfigChangeType.ADD_LEARNER:
            if self.node_id in voters:
                raise ValueError(f"{self.node_id} is already a voter")
            learners.add(self.node_id)
        elif self.type == ConfigChangeType.PROMOTE:
            if self.node_id not in learners:
                raise ValueError(f"{self.node_id} is not a learner")
            learners.discard(self.node_id)
            voters.add(self.node_id)
        elif self.type == ConfigChangeType.REMOVE:
            if self.node_id not in voters | learners:
                raise ValueError(f"{self.node_id} is not a member")
            voters.discard(self.node_id)
            learners.discard(self.node_id)
            addrs.pop(self.node_id, None)
        if self.address and self.type != ConfigChangeType.REMOVE:
            addrs[self.node_id] = self.address
        return Membership.of(voters, learners, addrs)

    def encode(self, result: Membership) -> bytes:
        """Entry payload: the change and the membership it results in (self-contained, so
        the configuration at any index is read from one entry, never replayed)."""
        body = {"type": int(self.type), "node": self.node_id, "address": self.address,
                "membership": result.to_dict()}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> tuple[ConfigChange, Membership]:
        try:
            body = json.loads(bytes(data).decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not an object")
            change = cls(type=ConfigChangeType(int(body["type"])), node_id=str(body["node"]),
                         address=str(body.get("address", "")))
            if not isinstance(body, dict):
                raise ValueError("not an object")
            return change, Membership.from_dict(body["membership"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"malformed config change: {exc}") from None

