"""aegis.messages: validation of the RPC dataclasses, and ConfigChange apply/encode/decode."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import pytest

from aegis.log import EntryType, LogEntry, LogIndex, Membership, MemoryLogStore, SnapshotMeta, Term
from aegis.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ConfigChange,
    ConfigChangeType,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from aegis.raft import RaftConfig, RaftNode


def entry(index: int, term: int = 1) -> LogEntry:
    return LogEntry(LogIndex(index), Term(term))


def append(prev: int = 0, entries: tuple[LogEntry, ...] = (), **kw: object) -> AppendEntriesRequest:
    base: dict[str, object] = dict(term=3, leader_id="n1", prev_log_index=prev, prev_log_term=1 if prev else 0)
    base.update(kw)
    return AppendEntriesRequest(entries=entries, **base)  # type: ignore[arg-type]


# One well-formed instance of every message, with the name of its sender field.
GOOD: list[tuple[Callable[..., RaftMessage], dict[str, object], str]] = [
    (VoteRequest, dict(term=2, candidate_id="a", last_log_index=3, last_log_term=1), "candidate_id"),
    (VoteResponse, dict(term=2, vote_granted=True, voter_id="a"), "voter_id"),
    (AppendEntriesRequest, dict(term=2, leader_id="a", prev_log_index=0, prev_log_term=0), "leader_id"),
    (AppendEntriesResponse, dict(term=2, success=True, follower_id="a"), "follower_id"),
    (InstallSnapshotRequest, dict(term=2, leader_id="a", snapshot=SnapshotMeta(LogIndex(4), Term(1))), "leader_id"),
    (InstallSnapshotResponse, dict(term=2, follower_id="a"), "follower_id"),
    (TimeoutNow, dict(term=2, leader_id="a"), "leader_id"),
    (ReadIndexRequest, dict(term=2, sender_id="a", ctx=1), "sender_id"),
    (ReadIndexResponse, dict(term=2, sender_id="a", ctx=1, index=4), "sender_id"),
]
IDS = [getattr(cls, "__name__") for cls, _, _ in GOOD]


# --- common fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls,kw,sender_field", GOOD, ids=IDS)
def test_every_message_has_term_sender_and_receiver(
    cls: Callable[..., RaftMessage], kw: dict[str, object], sender_field: str
) -> None:
    m = cls(receiver="b", **kw)
    assert m.term == 2 and m.sender == "a" and m.sender == kw[sender_field] and m.receiver == "b"
    assert cls(**kw).receiver == ""  # the seed's examples leave it blank


@pytest.mark.parametrize("cls,kw,sender_field", GOOD, ids=IDS)
def test_every_message_is_frozen_slotted_and_keyword_only(
    cls: Callable[..., RaftMessage], kw: dict[str, object], sender_field: str
) -> None:
    m = cls(**kw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.term = Term(9)  # type: ignore[misc]
    assert not hasattr(m, "__dict__")
    with pytest.raises(TypeError):
        cls(*kw.values())


@pytest.mark.parametrize("cls,kw,sender_field", GOOD, ids=IDS)
def test_every_message_rejects_a_negative_term(
    cls: Callable[..., RaftMessage], kw: dict[str, object], sender_field: str
) -> None:
    with pytest.raises(ValueError):
        cls(**{**kw, "term": -1})


@pytest.mark.parametrize("cls,kw,sender_field", GOOD, ids=IDS)
def test_every_message_rejects_a_non_int_term(
    cls: Callable[..., RaftMessage], kw: dict[str, object], sender_field: str
) -> None:
    with pytest.raises(ValueError):
        cls(**{**kw, "term": "2"})


@pytest.mark.parametrize("cls,kw,sender_field", GOOD, ids=IDS)
def test_every_message_rejects_non_str_ids(
    cls: Callable[..., RaftMessage], kw: dict[str, object], sender_field: str
) -> None:
    with pytest.raises(ValueError):
        cls(**{**kw, sender_field: 7})
    with pytest.raises(ValueError):
        cls(**{**kw, "receiver": None})


# --- log positions -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["last_log_index", "last_log_term"])
def test_vote_request_rejects_negative_log_positions(field: str) -> None:
    kw: dict[str, object] = dict(term=2, candidate_id="a", last_log_index=3, last_log_term=1)
    with pytest.raises(ValueError):
        VoteRequest(**{**kw, field: -1})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["prev_log_index", "prev_log_term", "leader_commit"])
def test_append_request_rejects_negative_log_positions(field: str) -> None:
    kw: dict[str, object] = {field: -1}
    with pytest.raises(ValueError):
        append(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["match_index", "reject_index", "reject_hint", "hint_term"])
def test_append_response_rejects_negative_log_positions(field: str) -> None:
    with pytest.raises(ValueError):
        AppendEntriesResponse(term=Term(1), success=False, follower_id="a", **{field: -1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ReadIndexResponse(term=Term(1), sender_id="a", ctx=1, index=LogIndex(-1)),
        lambda: InstallSnapshotResponse(term=Term(1), follower_id="a", match_index=LogIndex(-1)),
        lambda: InstallSnapshotRequest(term=Term(1), leader_id="a", snapshot=SnapshotMeta(LogIndex(-1), Term(0))),
        lambda: InstallSnapshotRequest(term=Term(1), leader_id="a", snapshot=SnapshotMeta(LogIndex(3), Term(-1))),
    ],
    ids=["read-index-response", "install-snapshot-response", "snapshot-index", "snapshot-term"],
)
def test_other_messages_reject_negative_log_positions(build: Callable[[], RaftMessage]) -> None:
    with pytest.raises(ValueError):
        build()


def test_append_request_accepts_contiguous_entries() -> None:
    m = append(prev=3, entries=(entry(4), entry(5), entry(6, 2)))
    assert [e.index for e in m.entries] == [4, 5, 6] and m.sender == "n1"
    assert append().entries == () and not append().heartbeat and append().read_ctx == 0


@pytest.mark.parametrize(
    "prev,indexes",
    [(0, [2]), (3, [3]), (3, [4, 6]), (3, [4, 4]), (3, [5, 4]), (0, [1, 2, 4])],
    ids=["gap-at-start", "overlaps-prev", "gap-inside", "duplicate", "backwards", "gap-at-end"],
)
def test_append_request_rejects_non_contiguous_entries(prev: int, indexes: list[int]) -> None:
    with pytest.raises(ValueError, match="contiguous"):
        append(prev=prev, entries=tuple(entry(i) for i in indexes))


def test_append_request_rejects_something_that_is_not_an_entry() -> None:
    with pytest.raises((TypeError, ValueError)):
        append(entries=("x",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "term,prev,entries",
    [
        (1, 0, (entry(1, 5),)),
        (3, 1, (entry(2, 1),)),
        (3, 0, (entry(1, 3), entry(2, 2))),
    ],
    ids=["entry-term-above-message-term", "entry-term-below-prev-term", "entry-terms-decrease"],
)
def test_append_request_rejects_impossible_entry_terms(term: int, prev: int, entries: tuple[LogEntry, ...]) -> None:
    with pytest.raises(ValueError):
        AppendEntriesRequest(term=Term(term), leader_id="n1", prev_log_index=LogIndex(prev),
                             prev_log_term=Term(3 if prev else 0), entries=entries)


def test_install_snapshot_request_exposes_the_snapshot_point() -> None:
    meta = SnapshotMeta(LogIndex(9), Term(4), Membership.of(["a"]))
    m = InstallSnapshotRequest(term=Term(5), leader_id="a", snapshot=meta, data=b"s")
    assert (m.last_included_index, m.last_included_term) == (9, 4)


def test_defaults() -> None:
    v = VoteRequest(term=Term(1), candidate_id="a", last_log_index=LogIndex(0), last_log_term=Term(0))
    assert not v.pre_vote and not v.transfer
    r = AppendEntriesResponse(term=Term(1), success=True)
    assert (r.match_index, r.reject_index, r.reject_hint, r.hint_term) == (0, 0, 0, 0)
    assert InstallSnapshotResponse(term=Term(1)).success
    assert ReadIndexResponse(term=Term(1), sender_id="a", ctx=1, index=LogIndex(0)).success


# --- ConfigChange.apply_to ---------------------------------------------------------------------

BASE = Membership.of(["a", "b"], ["c"], {"a": "h:1", "c": "h:3"})


def change(t: ConfigChangeType, node: str, address: str = "") -> ConfigChange:
    return ConfigChange(type=t, node_id=node, address=address)


def test_add_voter() -> None:
    m = change(ConfigChangeType.ADD_VOTER, "d", "h:4").apply_to(BASE)
    assert m.voters == {"a", "b", "d"} and m.learners == {"c"} and m.address_of("d") == "h:4"
    assert BASE.voters == {"a", "b"}  # the input is untouched


def test_add_voter_of_a_learner_promotes_it() -> None:
    m = change(ConfigChangeType.ADD_VOTER, "c").apply_to(BASE)
    assert m.voters == {"a", "b", "c"} and m.learners == frozenset() and m.address_of("c") == "h:3"


def test_add_voter_twice_is_idempotent() -> None:
    assert change(ConfigChangeType.ADD_VOTER, "a").apply_to(BASE) == BASE


def test_add_learner() -> None:
    m = change(ConfigChangeType.ADD_LEARNER, "d", "h:4").apply_to(BASE)
    assert m.learners == {"c", "d"} and m.voters == {"a", "b"} and m.address_of("d") == "h:4"


def test_add_learner_that_is_a_voter_is_refused() -> None:
    with pytest.raises(ValueError, match="already a voter"):
        change(ConfigChangeType.ADD_LEARNER, "a").apply_to(BASE)


def test_promote() -> None:
    m = change(ConfigChangeType.PROMOTE, "c").apply_to(BASE)
    assert m.voters == {"a", "b", "c"} and m.learners == frozenset()


@pytest.mark.parametrize("node", ["a", "zz"])
def test_promote_of_a_non_learner_is_refused(node: str) -> None:
    with pytest.raises(ValueError, match="not a learner"):
        change(ConfigChangeType.PROMOTE, node).apply_to(BASE)


@pytest.mark.parametrize("node", ["a", "c"])
def test_remove_drops_the_member_and_its_address(node: str) -> None:
    m = change(ConfigChangeType.REMOVE, node, "ignored:1").apply_to(BASE)
    assert node not in m.members and m.address_of(node) is None


def test_remove_of_a_non_member_is_refused() -> None:
    with pytest.raises(ValueError, match="not a member"):
        change(ConfigChangeType.REMOVE, "zz").apply_to(BASE)


def test_an_address_updates_a_member() -> None:
    m = change(ConfigChangeType.ADD_VOTER, "a", "h:99").apply_to(BASE)
    assert m.address_of("a") == "h:99" and m.voters == BASE.voters


# --- ConfigChange.encode / decode --------------------------------------------------------------


@pytest.mark.parametrize("t", list(ConfigChangeType))
def test_encode_decode_round_trip(t: ConfigChangeType) -> None:
    c = change(t, "c" if t is not ConfigChangeType.ADD_LEARNER else "d", "h:7")
    result = c.apply_to(BASE)
    decoded, membership = ConfigChange.decode(c.encode(result))
    assert decoded == c and membership == result


def test_encoding_is_canonical() -> None:
    c = change(ConfigChangeType.ADD_VOTER, "d")
    assert c.encode(c.apply_to(BASE)) == c.encode(c.apply_to(BASE))
    body = json.loads(c.encode(c.apply_to(BASE)))
    assert body["membership"]["voters"] == ["a", "b", "d"]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b"5",
        b'"text"',
        b"{}",
        b'{"type":0,"node":"n"}',
        b'{"type":9,"node":"n","membership":{}}',
        b'{"type":"x","node":"n","membership":{}}',
        b'{"node":"n","membership":{}}',
        b'{"type":0,"node":"n","membership":{"voters":"ab"}}',
        b'{"type":0,"node":"n","membership":{"voters":["a"],"learners":["a"]}}',
    ],
)
def test_decode_rejects_malformed_payloads_with_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="malformed config change"):
        ConfigChange.decode(payload)


MALFORMED_MEMBERSHIP = [
    b'{"type":0,"node":"n","membership":[]}',
    b'{"type":0,"node":"n","membership":"m"}',
    b'{"type":0,"node":"n","membership":{"voters":["a"],"addresses":["x"]}}',
    b'{"type":0,"node":"n","membership":{"voters":["a"],"addresses":[["a"]]}}',
]


@pytest.mark.parametrize("payload", MALFORMED_MEMBERSHIP)
def test_decode_rejects_a_malformed_membership_with_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        ConfigChange.decode(payload)


@pytest.mark.parametrize("payload", MALFORMED_MEMBERSHIP)
def test_follower_survives_a_malformed_config_entry(payload: bytes) -> None:
    node = RaftNode("n2", RaftConfig(seed=1), MemoryLogStore(Membership.of(["n1", "n2", "n3"])))
    bad = LogEntry(LogIndex(1), Term(1), EntryType.CONFIG_CHANGE, payload)
    node.step(AppendEntriesRequest(term=Term(1), leader_id="n1", prev_log_index=LogIndex(0),
                                   prev_log_term=Term(0), entries=(bad,), receiver="n2"))
    assert node.membership.voters == {"n1", "n2", "n3"}
