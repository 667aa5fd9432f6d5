"""Moving messages between nodes: the wire codec, the `Transport` seam, and the in-memory
network the simulator runs on. (The TCP transport lives at the end of this module.)

Theory of operation
-------------------
**Codec.** Every frame is one msgpack array whose first element is a `MessageType` code and
whose other elements are the message's fields in a fixed order given by a table (`_SCHEMAS`),
not by hand-written code per message. Arrays, not maps: smaller and faster, and a field
count check catches version skew. Decoding validates everything *before* building the
dataclass — types, field counts, non-negative indexes, contiguous entries, the entry type —
and any failure is a `CodecError`, never another exception: a peer's bytes must not be able
to crash a node (the property tests feed it random and mutated frames). Pickle is never used.

Entry payloads pass through optional hooks (`pack_payload` / `unpack_payload`) so the
server can ship the compressed form storage already holds instead of recompressing.

**Framing.** A frame on a byte stream is a 4-byte big-endian length and the body
(`encode_frame`, `FrameDecoder`), with a hard size limit checked before buffering.

**InMemoryTransport.** A deterministic network for the simulator. It has no clock: callers
pass `now`, an integer tick, and messages become due at ``now + delay``. All randomness
(drops, delays, duplicates, reordering) comes from one `random.Random(seed)`, drawn in a
fixed order per call, and nothing iterates a set or dict without sorting first — so a seed
and a call sequence always give the same run. Faults are checked both when a message is
sent and when it is delivered: a partition created while a message is in flight loses it,
as a cut cable would. Crashing a node drops what is in flight to and from it.

This module imports no trio or socket at module level.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Final, Iterable, Protocol, TypeAlias, runtime_checkable

import msgpack

from .errors import CodecError
from .log import EntryType, LogEntry, LogIndex, Membership, SnapshotMeta, Term
from .messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

__all__ = [
    "CodecError",
    "MessageType",
    "Message",
    "MessagePayload",
    "ClientRequest",
    "ClientResponse",
    "ClientBatchRequest",
    "ClientBatchResponse",
    "Handshake",
    "Reply",
    "WireMessage",
    "PayloadPacker",
    "PayloadUnpacker",
    "encode",
    "decode",
    "encode_message",
    "decode_message",
    "encode_frame",
    "FrameDecoder",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "Transport",
    "InMemoryTransport",
    "TransportStats",
]

#: 2: the handshake proves the cluster secret by HMAC challenge (version 1 sent a token in
#: the clear; a node refuses it).
PROTOCOL_VERSION: Final = 2
MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
MAX_ID_LEN: Final = 256
MAX_REPLY_DEPTH: Final = 16
_UINT_MAX: Final = 2**63 - 1
_INT_MIN: Final = -(2**63)


class MessageType(enum.IntEnum):
    """Every kind of message, spelled as the seed spells them (the upper-case names are
    aliases of the same members). The values are the codes that open each frame, except
    `Heartbeat`: a heartbeat travels as an AppendEntries frame (with its `heartbeat` flag),
    so it is a kind of message but never a frame code; `MessageType.of` tells it apart."""

    VoteRequest = 1
    VoteResponse = 2
    AppendEntries = 3
    AppendEntriesResponse = 4
    InstallSnapshot = 5
    InstallSnapshotResponse = 6
    TimeoutNow = 7
    ReadIndex = 8
    ReadIndexResponse = 9
    ClientRequest = 10
    ClientResponse = 11
    Handshake = 12
    ClientBatchRequest = 13
    ClientBatchResponse = 14
    Heartbeat = 15

    VOTE_REQUEST = 1
    VOTE_RESPONSE = 2
    APPEND_ENTRIES_REQUEST = 3
    APPEND_ENTRIES_RESPONSE = 4
    INSTALL_SNAPSHOT_REQUEST = 5
    INSTALL_SNAPSHOT_RESPONSE = 6
    TIMEOUT_NOW = 7
    READ_INDEX_REQUEST = 8
    READ_INDEX_RESPONSE = 9
    CLIENT_REQUEST = 10
    CLIENT_RESPONSE = 11
    HANDSHAKE = 12
    CLIENT_BATCH_REQUEST = 13
    CLIENT_BATCH_RESPONSE = 14
    HEARTBEAT = 15

    @classmethod
    def of(cls, msg: WireMessage) -> MessageType:
        """The kind of `msg`; an AppendEntries with its `heartbeat` flag is a Heartbeat."""
        try:
            kind = _TYPE_OF[type(msg)]
        except KeyError:
            raise CodecError(f"not a wire message: {type(msg).__name__}") from None
        if isinstance(msg, AppendEntriesRequest) and msg.heartbeat:
            return MessageType.Heartbeat
        return kind


# --- non-Raft wire messages ---------------------------------------------------------------

#: A command's reply as RESP models it: nil, integer, bulk string (bytes), status (str),
#: or an array of replies. Errors travel in `ClientResponse.error`.
Reply: TypeAlias = "None | int | bytes | str | list[Reply]"


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client command forwarded between nodes (a follower to the leader)."""

    request_id: int
    argv: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not _is_uint(self.request_id):
            raise ValueError("request_id must be a non-negative int")
        if not isinstance(self.argv, tuple) or not all(isinstance(a, bytes) for a in self.argv):
            raise TypeError("argv must be a tuple of bytes")

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls, data: bytes) -> ClientRequest:
        msg = decode(data)
        if not isinstance(msg, ClientRequest):
            raise CodecError(f"expected a client request, got {type(msg).__name__}")
        return msg


@dataclass(frozen=True, slots=True)
class ClientResponse:
    """The reply to a `ClientRequest`: a value, or an error line such as "NOLEADER ..."."""

    request_id: int
    value: Reply = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not _is_uint(self.request_id):
            raise ValueError("request_id must be a non-negative int")
        if self.error is not None and (not isinstance(self.error, str) or self.value is not None):
            raise ValueError("an error response carries a str error and no value")
        _check_reply(self.value, 0)

    @property
    def ok(self) -> bool:
        return self.error is None

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls, data: bytes) -> ClientResponse:
        msg = decode(data)
        if not isinstance(msg, ClientResponse):
            raise CodecError(f"expected a client response, got {type(msg).__name__}")
        return msg


#: The most commands one forwarded batch may carry.
MAX_BATCH_COMMANDS: Final = 65_536


@dataclass(frozen=True, slots=True)
class ClientBatchRequest:
    """Client commands forwarded together (a follower's writes of one turn), to be started
    in order; answered by one `ClientBatchResponse`."""

    request_id: int
    commands: tuple[tuple[bytes, ...], ...]

    def __post_init__(self) -> None:
        if not _is_uint(self.request_id):
            raise ValueError("request_id must be a non-negative int")
        if not isinstance(self.commands, tuple) or not self.commands or len(self.commands) > MAX_BATCH_COMMANDS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_COMMANDS} commands")
        for argv in self.commands:
            if not isinstance(argv, tuple) or not argv or not all(isinstance(a, bytes) for a in argv):
                raise TypeError("each command must be a non-empty tuple of bytes")


@dataclass(frozen=True, slots=True)
class ClientBatchResponse:
    """The replies to a `ClientBatchRequest`, one per command, each already RESP-encoded."""

    request_id: int
    replies: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not _is_uint(self.request_id):
            raise ValueError("request_id must be a non-negative int")
        if not isinstance(self.replies, tuple) or not all(isinstance(r, bytes) for r in self.replies):
            raise TypeError("replies must be a tuple of bytes")


@dataclass(frozen=True, slots=True)
class Handshake:
    """The first frame on a peer connection: who is calling, in which cluster, and the
    caller's fresh nonce for the acceptor to prove it knows the cluster secret (see
    aegis.peerauth; the secret itself never travels). Identity is by node id and cluster
    name, never by source address."""

    node_id: str
    cluster: str
    protocol_version: int = PROTOCOL_VERSION
    nonce: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id or len(self.node_id) > MAX_ID_LEN:
            raise ValueError("handshake needs a node id")
        if not isinstance(self.cluster, str) or not self.cluster or len(self.cluster) > MAX_ID_LEN:
            raise ValueError("handshake needs a cluster name")
        if not _is_uint(self.protocol_version):
            raise ValueError("bad protocol version")
        if not isinstance(self.nonce, bytes):
            raise TypeError("nonce must be bytes")


WireMessage: TypeAlias = RaftMessage | ClientRequest | ClientResponse | ClientBatchRequest | ClientBatchResponse | Handshake
#: The seed's name for what an envelope (`Message`) carries: any wire message.
#: ``isinstance(x, MessagePayload)`` works.
MessagePayload: TypeAlias = WireMessage

_RAFT_TYPES: Final[tuple[type, ...]] = (
    VoteRequest,
    VoteResponse,
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)


@dataclass(frozen=True, slots=True)
class Message:
    """The seed's envelope: a type, the two ends, and an encoded payload."""

    type: MessageType
    sender: str
    receiver: str
    payload: bytes

    @classmethod
    def wrap(cls, msg: RaftMessage, pack_payload: PayloadPacker | None = None) -> Message:
        return cls(MessageType.of(msg), msg.sender, msg.receiver, encode(msg, pack_payload))

    def unwrap(self, unpack_payload: PayloadUnpacker | None = None) -> RaftMessage:
        msg = decode_message(self.payload, unpack_payload)
        if MessageType.of(msg) != self.type or msg.sender != self.sender or msg.receiver != self.receiver:
            raise CodecError("envelope does not match its payload")
        return msg

    def encode(self) -> bytes:
        return _pack([int(self.type), self.sender, self.receiver, self.payload])

    @classmethod
    def decode(cls, data: bytes) -> Message:
        obj = _unpack(data)
        if not isinstance(obj, list) or len(obj) != 4:
            raise CodecError("envelope must be a 4-element array")
        code, sender, receiver, payload = obj
        _need(isinstance(code, int) and not isinstance(code, bool) and code in _ENVELOPE_CODES, "envelope type")
        _need(_is_id(sender) and _is_id(receiver), "envelope ends")
        _need(isinstance(payload, bytes), "envelope payload")
        return cls(MessageType(code), sender, receiver, payload)


# --- codec --------------------------------------------------------------------------------

PayloadPacker: TypeAlias = Callable[[LogEntry], bytes]
PayloadUnpacker: TypeAlias = Callable[[bytes], bytes]


class _K(enum.Enum):
    """Field kinds of the schema table."""

    UINT = "uint"  # 0 <= x < 2**63: terms, indexes
    INT = "int"  # signed 64-bit: opaque contexts
    BOOL = "bool"
    ID = "id"  # a node id (possibly empty: some messages leave the receiver blank)
    BYTES = "bytes"
    ENTRIES = "entries"
    SNAPSHOT = "snapshot"


# (attribute, kind) in wire order, per message class. The first field is always `term`.
_SCHEMAS: Final[dict[type, tuple[MessageType, tuple[tuple[str, _K], ...]]]] = {
    VoteRequest: (
        MessageType.VOTE_REQUEST,
        (("term", _K.UINT), ("candidate_id", _K.ID), ("receiver", _K.ID), ("last_log_index", _K.UINT),
         ("last_log_term", _K.UINT), ("pre_vote", _K.BOOL), ("transfer", _K.BOOL)),
    ),
    VoteResponse: (
        MessageType.VOTE_RESPONSE,
        (("term", _K.UINT), ("voter_id", _K.ID), ("receiver", _K.ID), ("vote_granted", _K.BOOL),
         ("pre_vote", _K.BOOL)),
    ),
    AppendEntriesRequest: (
        MessageType.APPEND_ENTRIES_REQUEST,
        (("term", _K.UINT), ("leader_id", _K.ID), ("receiver", _K.ID), ("prev_log_index", _K.UINT),
         ("prev_log_term", _K.UINT), ("leader_commit", _K.UINT), ("read_ctx", _K.INT),
         ("heartbeat", _K.BOOL), ("entries", _K.ENTRIES)),
    ),
    AppendEntriesResponse: (
        MessageType.APPEND_ENTRIES_RESPONSE,
        (("term", _K.UINT), ("follower_id", _K.ID), ("receiver", _K.ID), ("success", _K.BOOL),
         ("match_index", _K.UINT), ("reject_index", _K.UINT), ("reject_hint", _K.UINT),
         ("hint_term", _K.UINT), ("read_ctx", _K.INT), ("heartbeat", _K.BOOL)),
    ),
    InstallSnapshotRequest: (
        MessageType.INSTALL_SNAPSHOT_REQUEST,
        (("term", _K.UINT), ("leader_id", _K.ID), ("receiver", _K.ID), ("snapshot", _K.SNAPSHOT),
         ("data", _K.BYTES)),
    ),
    InstallSnapshotResponse: (
        MessageType.INSTALL_SNAPSHOT_RESPONSE,
        (("term", _K.UINT), ("follower_id", _K.ID), ("receiver", _K.ID), ("match_index", _K.UINT),
         ("success", _K.BOOL)),
    ),
    TimeoutNow: (
        MessageType.TIMEOUT_NOW,
        (("term", _K.UINT), ("leader_id", _K.ID), ("receiver", _K.ID)),
    ),
    ReadIndexRequest: (
        MessageType.READ_INDEX_REQUEST,
        (("term", _K.UINT), ("sender_id", _K.ID), ("receiver", _K.ID), ("ctx", _K.INT)),
    ),
    ReadIndexResponse: (
        MessageType.READ_INDEX_RESPONSE,
        (("term", _K.UINT), ("sender_id", _K.ID), ("receiver", _K.ID), ("ctx", _K.INT),
         ("index", _K.UINT), ("success", _K.BOOL)),
    ),
}
_BY_CODE: Final[dict[int, tuple[type, tuple[tuple[str, _K], ...]]]] = {
    int(code): (cls, fields) for cls, (code, fields) in _SCHEMAS.items()
}
_TYPE_OF: Final[dict[type, MessageType]] = {cls: code for cls, (code, _) in _SCHEMAS.items()}
_TYPE_OF.update(
    {
        ClientRequest: MessageType.CLIENT_REQUEST,
        ClientResponse: MessageType.CLIENT_RESPONSE,
        ClientBatchRequest: MessageType.CLIENT_BATCH_REQUEST,
        ClientBatchResponse: MessageType.CLIENT_BATCH_RESPONSE,
        Handshake: MessageType.HANDSHAKE,
    }
)
#: Codes a frame may open with (a Heartbeat is an AppendEntries frame: not among them).
_BY_CODE_ALL: Final[frozenset[int]] = frozenset(int(t) for t in MessageType if t is not MessageType.Heartbeat)
#: Types an envelope may name.
_ENVELOPE_CODES: Final[frozenset[int]] = frozenset(int(t) for t in MessageType)


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _UINT_MAX


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and _INT_MIN <= x <= _UINT_MAX


def _is_id(x: object) -> bool:
    return isinstance(x, str) and len(x) <= MAX_ID_LEN


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise CodecError(f"malformed {what}")


def _check_reply(value: object, depth: int) -> None:
    if depth > MAX_REPLY_DEPTH:
        raise ValueError("reply nested too deeply")
    if value is None or isinstance(value, (bytes, str)) or _is_int(value):
        return
    if isinstance(value, list):
        for v in value:
            _check_reply(v, depth + 1)
        return
    raise ValueError(f"unsupported reply element {type(value).__name__}")


def _pack(obj: object) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise CodecError(f"cannot encode: {exc.__class__.__name__}: {exc}") from None


def _unpack(data: bytes) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"a frame must be bytes, got {type(data).__name__}")
    if len(data) > MAX_FRAME_SIZE:
        raise CodecError(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME_SIZE}")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ...
        text = str(exc)
        raise CodecError(f"undecodable frame: {exc.__class__.__name__}{': ' + text if text else ''}") from None


# --- encoding -----------------------------------------------------------------------------


def encode(msg: WireMessage, pack_payload: PayloadPacker | None = None) -> bytes:
    """Encode any wire message (Raft, client request/response, handshake)."""
    if isinstance(msg, ClientRequest):
        return _pack([int(MessageType.CLIENT_REQUEST), msg.request_id, list(msg.argv)])
    if isinstance(msg, ClientResponse):
        return _pack([int(MessageType.CLIENT_RESPONSE), msg.request_id, msg.value, msg.error])
    if isinstance(msg, ClientBatchRequest):
        return _pack([int(MessageType.CLIENT_BATCH_REQUEST), msg.request_id, [list(c) for c in msg.commands]])
    if isinstance(msg, ClientBatchResponse):
        return _pack([int(MessageType.CLIENT_BATCH_RESPONSE), msg.request_id, list(msg.replies)])
    if isinstance(msg, Handshake):
        return _pack([int(MessageType.HANDSHAKE), msg.node_id, msg.cluster, msg.protocol_version, msg.nonce])
    cls = type(msg)
    if cls is AppendEntriesResponse:  # the hot two, without the schema walk
        r: AppendEntriesResponse = msg  # type: ignore[assignment]
        return _pack([_AER_CODE, int(r.term), r.follower_id, r.receiver, r.success, int(r.match_index),
                      int(r.reject_index), int(r.reject_hint), int(r.hint_term), int(r.read_ctx), r.heartbeat])
    if cls is AppendEntriesRequest:
        a: AppendEntriesRequest = msg  # type: ignore[assignment]
        return _pack([_AE_CODE, int(a.term), a.leader_id, a.receiver, int(a.prev_log_index), int(a.prev_log_term),
                      int(a.leader_commit), int(a.read_ctx), a.heartbeat,
                      [_entry_to_wire(e, pack_payload) for e in a.entries]])
    schema = _SCHEMAS.get(cls)
    if schema is None:
        raise CodecError(f"not a wire message: {type(msg).__name__}")
    code, fields = schema
    out: list[object] = [int(code)]
    for name, kind in fields:
        value = getattr(msg, name)
        if kind is _K.ENTRIES:
            out.append([_entry_to_wire(e, pack_payload) for e in value])
        elif kind is _K.SNAPSHOT:
            out.append(_snapshot_to_wire(value))
        else:
            out.append(int(value) if kind in (_K.UINT, _K.INT) else value)
    return _pack(out)


def encode_message(msg: RaftMessage, pack_payload: PayloadPacker | None = None) -> bytes:
    """Encode a Raft message. `pack_payload(entry)` gives the bytes to ship for an entry's
    payload (default: `entry.data` as is)."""
    if not isinstance(msg, _RAFT_TYPES):
        raise CodecError(f"not a Raft message: {type(msg).__name__}")
    return encode(msg, pack_payload)


def _entry_to_wire(e: LogEntry, pack_payload: PayloadPacker | None) -> list[object]:
    if pack_payload is None:
        data = bytes(e.data)
    else:
        try:
            data = pack_payload(e)
        except Exception as exc:
            raise CodecError(f"payload packer failed on entry {e.index}: {exc}") from None
        if not isinstance(data, bytes):
            raise CodecError("payload packer must return bytes")
    return [int(e.index), int(e.term), int(e.type), float(e.timestamp), data]


def _snapshot_to_wire(meta: SnapshotMeta) -> list[object]:
    m = meta.membership
    return [
        int(meta.index),
        int(meta.term),
        sorted(m.voters),
        sorted(m.learners),
        [[nid, addr] for nid, addr in m.addresses],
    ]


# --- decoding -----------------------------------------------------------------------------


def decode(data: bytes, unpack_payload: PayloadUnpacker | None = None) -> WireMessage:
    """Decode any wire message. Raises CodecError, and only CodecError, on bad input."""
    obj = _unpack(data)
    if not isinstance(obj, list) or not obj:
        raise CodecError("a frame must be a non-empty array")
    code = obj[0]
    if not isinstance(code, int) or isinstance(code, bool) or code not in _BY_CODE_ALL:
        raise CodecError(f"unknown message type {code!r}")
    if code == MessageType.CLIENT_REQUEST:
        return _decode_client_request(obj)
    if code == MessageType.CLIENT_RESPONSE:
        return _decode_client_response(obj)
    if code == MessageType.HANDSHAKE:
        return _decode_handshake(obj)
    if code == MessageType.CLIENT_BATCH_REQUEST:
        return _decode_client_batch(obj)
    if code == MessageType.CLIENT_BATCH_RESPONSE:
        return _decode_client_batch_response(obj)
    if code == _AE_CODE:
        fast = _fast_append(obj, unpack_payload)
        if fast is not None:
            return fast
    elif code == _AER_CODE:
        fast_r = _fast_append_response(obj)
        if fast_r is not None:
            return fast_r
    return _decode_schema(code, obj, unpack_payload)


def _decode_schema(code: int, obj: list[object], unpack_payload: PayloadUnpacker | None) -> WireMessage:
    """The general decoder: every field checked against the schema table, with an error that
    names the field. The hot messages try `_fast_append*` first and come here only when
    that does not accept the frame, so a bad frame gets the same error either way."""
    cls, fields = _BY_CODE[code]
    name = cls.__name__
    if len(obj) != len(fields) + 1:
        raise CodecError(f"{name} needs {len(fields)} fields, got {len(obj) - 1}")
    kwargs: dict[str, object] = {}
    for (attr, kind), value in zip(fields, obj[1:]):
        kwargs[attr] = _field(name, attr, kind, value, unpack_payload)
    if cls is AppendEntriesRequest:
        _check_contiguous(kwargs)
    try:
        msg: RaftMessage = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"invalid {name}: {exc}") from None
    return msg


_AE_CODE: Final = int(MessageType.APPEND_ENTRIES_REQUEST)
_AER_CODE: Final = int(MessageType.APPEND_ENTRIES_RESPONSE)
_ENTRY_TYPE_OF: Final[dict[int, EntryType]] = {int(t): t for t in EntryType}


def _u(x: object) -> bool:
    return type(x) is int and 0 <= x <= _UINT_MAX  # type() is exact: a bool is not an int here


def _fast_append(obj: list[object], unpack_payload: PayloadUnpacker | None) -> AppendEntriesRequest | None:
    """AppendEntries, the frame a follower decodes most, in a few checks per field and none
    of the schema table's per-field calls; None when anything is not exactly as the
    encoder writes it (the general decoder then accepts it or says what is wrong)."""
    if len(obj) != 10:
        return None
    _, term, leader, receiver, prev_index, prev_term, commit, ctx, heartbeat, wire_entries = obj
    if not (_u(term) and _u(prev_index) and _u(prev_term) and _u(commit)
            and type(leader) is str and len(leader) <= MAX_ID_LEN
            and type(receiver) is str and len(receiver) <= MAX_ID_LEN
            and type(ctx) is int and _INT_MIN <= ctx <= _UINT_MAX
            and type(heartbeat) is bool and type(wire_entries) is list):
        return None
    entries = []
    expect = prev_index + 1  # type: ignore[operator]
    types = _ENTRY_TYPE_OF
    for e in wire_entries:
        if type(e) is not list or len(e) != 5:
            return None
        index, eterm, etype, ts, data = e
        if not (type(index) is int and index == expect and _u(eterm) and type(etype) is int and etype in types
                and type(ts) is float and math.isfinite(ts) and type(data) is bytes):
            return None
        if unpack_payload is not None:
            try:
                data = unpack_payload(data)
            except Exception:
                return None
            if type(data) is not bytes:
                return None
        try:
            entries.append(LogEntry(index, eterm, types[etype], data, ts))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return None
        expect += 1
    try:
        return AppendEntriesRequest(term=term, leader_id=leader, receiver=receiver,  # type: ignore[arg-type]
                                    prev_log_index=prev_index, prev_log_term=prev_term,  # type: ignore[arg-type]
                                    leader_commit=commit, read_ctx=ctx, heartbeat=heartbeat,  # type: ignore[arg-type]
                                    entries=tuple(entries))
    except (TypeError, ValueError):
        return None


def _fast_append_response(obj: list[object]) -> AppendEntriesResponse | None:
    """AppendEntriesResponse, the frame a leader decodes most (see `_fast_append`)."""
    if len(obj) != 11:
        return None
    _, term, follower, receiver, success, match, reject, hint, hint_term, ctx, heartbeat = obj
    if not (_u(term) and _u(match) and _u(reject) and _u(hint) and _u(hint_term)
            and type(follower) is str and len(follower) <= MAX_ID_LEN
            and type(receiver) is str and len(receiver) <= MAX_ID_LEN
            and type(ctx) is int and _INT_MIN <= ctx <= _UINT_MAX
            and type(success) is bool and type(heartbeat) is bool):
        return None
    try:
        return AppendEntriesResponse(term=term, follower_id=follower, receiver=receiver,  # type: ignore[arg-type]
                                     success=success, match_index=match, reject_index=reject,  # type: ignore[arg-type]
                                     reject_hint=hint, hint_term=hint_term,  # type: ignore[arg-type]
                                     read_ctx=ctx, heartbeat=heartbeat)
    except (TypeError, ValueError):
        return None


def decode_message(data: bytes, unpack_payload: PayloadUnpacker | None = None) -> RaftMessage:
    """Decode a Raft message. `unpack_payload(wire_bytes)` turns a shipped entry payload back
    into `LogEntry.data` (default: as is). Raises CodecError, and only CodecError."""
    msg = decode(data, unpack_payload)
    if not isinstance(msg, _RAFT_TYPES):
        raise CodecError(f"expected a Raft message, got {type(msg).__name__}")
    return msg  # type: ignore[return-value]


def _field(msg: str, attr: str, kind: _K, value: object, unpack_payload: PayloadUnpacker | None) -> object:
    # The error text is only built for a bad field: formatting it for every good one cost
    # more than the checks.
    if kind is _K.UINT:
        if not _is_uint(value):
            raise CodecError(f"malformed {msg}.{attr} (want a non-negative integer, got {value!r:.40})")
        return value
    if kind is _K.INT:
        if not _is_int(value):
            raise CodecError(f"malformed {msg}.{attr} (want a 64-bit integer, got {value!r:.40})")
        return value
    if kind is _K.BOOL:
        if not isinstance(value, bool):
            raise CodecError(f"malformed {msg}.{attr} (want a boolean, got {value!r:.40})")
        return value
    if kind is _K.ID:
        if not _is_id(value):
            raise CodecError(f"malformed {msg}.{attr} (want a node id, got {value!r:.40})")
        return value
    if kind is _K.BYTES:
        _need(isinstance(value, bytes), f"{msg}.{attr} (want binary)")
        return value
    if kind is _K.ENTRIES:
        _need(isinstance(value, list), f"{msg}.{attr} (want an array of entries)")
        assert isinstance(value, list)
        return tuple(_entry_from_wire(e, unpack_payload) for e in value)
    return _snapshot_from_wire(value)


def _entry_from_wire(obj: object, unpack_payload: PayloadUnpacker | None) -> LogEntry:
    _need(isinstance(obj, list) and len(obj) == 5, "entry (want [index, term, type, timestamp, data])")
    assert isinstance(obj, list)
    index, term, etype, ts, data = obj
    _need(_is_uint(index) and index >= 1, f"entry index {index!r:.40}")
    _need(_is_uint(term), f"entry term {term!r:.40}")
    _need(isinstance(etype, int) and not isinstance(etype, bool) and etype in _ENTRY_TYPES, f"entry type {etype!r:.40}")
    _need(
        isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts),
        f"entry timestamp {ts!r:.40}",
    )
    _need(isinstance(data, bytes), "entry payload (want binary)")
    if unpack_payload is not None:
        try:
            data = unpack_payload(data)
        except Exception as exc:
            raise CodecError(f"entry {index} payload does not unpack: {exc.__class__.__name__}: {exc}") from None
        _need(isinstance(data, bytes), "unpacked entry payload (want bytes)")
    try:
        return LogEntry(LogIndex(index), Term(term), EntryType(etype), data, float(ts))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"invalid entry {index}: {exc}") from None


_ENTRY_TYPES: Final[frozenset[int]] = frozenset(int(t) for t in EntryType)


def _check_contiguous(kwargs: dict[str, object]) -> None:
    entries = kwargs["entries"]
    prev = kwargs["prev_log_index"]
    assert isinstance(entries, tuple) and isinstance(prev, int)
    for offset, e in enumerate(entries, start=1):
        if e.index != prev + offset:
            raise CodecError(
                f"AppendEntriesRequest entries are not contiguous: entry {offset} has index {e.index}, "
                f"expected {prev + offset}"
            )


def _snapshot_from_wire(obj: object) -> SnapshotMeta:
    _need(isinstance(obj, list) and len(obj) == 5, "snapshot metadata")
    assert isinstance(obj, list)
    index, term, voters, learners, addresses = obj
    _need(_is_uint(index) and _is_uint(term), "snapshot index/term")
    _need(isinstance(voters, list) and all(_is_id(v) for v in voters), "snapshot voters")
    _need(isinstance(learners, list) and all(_is_id(v) for v in learners), "snapshot learners")
    _need(
        isinstance(addresses, list)
        and all(isinstance(a, list) and len(a) == 2 and _is_id(a[0]) and isinstance(a[1], str) for a in addresses),
        "snapshot addresses",
    )
    try:
        membership = Membership.of(voters, learners, {a[0]: a[1] for a in addresses})
    except ValueError as exc:
        raise CodecError(f"invalid snapshot membership: {exc}") from None
    return SnapshotMeta(LogIndex(index), Term(term), membership)


def _decode_client_request(obj: list[object]) -> ClientRequest:
    _need(len(obj) == 3, "ClientRequest (want 2 fields)")
    rid, argv = obj[1], obj[2]
    _need(_is_uint(rid), "ClientRequest.request_id")
    _need(isinstance(argv, list) and all(isinstance(a, bytes) for a in argv), "ClientRequest.argv")
    assert isinstance(argv, list) and isinstance(rid, int)
    return ClientRequest(rid, tuple(argv))


def _decode_client_response(obj: list[object]) -> ClientResponse:
    _need(len(obj) == 4, "ClientResponse (want 3 fields)")
    rid, value, error = obj[1], obj[2], obj[3]
    _need(_is_uint(rid), "ClientResponse.request_id")
    _need(error is None or isinstance(error, str), "ClientResponse.error")
    assert isinstance(rid, int)
    try:
        return ClientResponse(rid, value, error)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise CodecError(f"invalid ClientResponse: {exc}") from None


def _decode_client_batch(obj: list[object]) -> ClientBatchRequest:
    _need(len(obj) == 3, "ClientBatchRequest (want 2 fields)")
    rid, cmds = obj[1], obj[2]
    _need(_is_uint(rid), "ClientBatchRequest.request_id")
    _need(isinstance(cmds, list) and all(isinstance(c, list) for c in cmds), "ClientBatchRequest.commands")
    assert isinstance(rid, int) and isinstance(cmds, list)
    try:
        return ClientBatchRequest(rid, tuple(tuple(c) for c in cmds))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"invalid ClientBatchRequest: {exc}") from None


def _decode_client_batch_response(obj: list[object]) -> ClientBatchResponse:
    _need(len(obj) == 3, "ClientBatchResponse (want 2 fields)")
    rid, replies = obj[1], obj[2]
    _need(_is_uint(rid), "ClientBatchResponse.request_id")
    _need(isinstance(replies, list), "ClientBatchResponse.replies")
    assert isinstance(rid, int) and isinstance(replies, list)
    try:
        return ClientBatchResponse(rid, tuple(replies))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"invalid ClientBatchResponse: {exc}") from None


def _decode_handshake(obj: list[object]) -> Handshake:
    _need(len(obj) == 5, "Handshake (want 4 fields)")
    _, node_id, cluster, version, nonce = obj
    _need(isinstance(node_id, str) and isinstance(cluster, str), "Handshake ids")
    _need(_is_uint(version), "Handshake.protocol_version")
    _need(isinstance(nonce, bytes), "Handshake.nonce")
    try:
        return Handshake(node_id, cluster, version, nonce)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise CodecError(f"invalid Handshake: {exc}") from None


# --- framing ------------------------------------------------------------------------------


def encode_frame(body: bytes, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """A length-prefixed frame: 4-byte big-endian length, then `body`."""
    if len(body) > max_size:
        raise CodecError(f"frame of {len(body)} bytes exceeds the limit of {max_size}")
    return len(body).to_bytes(4, "big") + body


class FrameDecoder:
    """Reassembles length-prefixed frames from a byte stream (sans-IO: feed bytes, get
    frames). A declared length above `max_size` is a CodecError before anything is
    buffered, so a peer cannot make us allocate."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "big")
            if size > self.max_size:
                raise CodecError(f"peer declared a frame of {size} bytes; the limit is {self.max_size}")
            if len(self._buf) < 4 + size:
                break
            frames.append(bytes(self._buf[4 : 4 + size]))
            del self._buf[: 4 + size]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


# --- the transport seam -------------------------------------------------------------------


@runtime_checkable
class Transport(Protocol):
    """How a driver hands Raft messages to the network and gets them back."""

    def send(self, msg: RaftMessage) -> None: ...

    def receive(self, node_id: str) -> list[RaftMessage]: ...

    def broadcast(self, msgs: Iterable[RaftMessage]) -> None: ...


@dataclass(slots=True)
class TransportStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0


@dataclass(order=True, slots=True)
class _InFlight:
    due: int
    seq: int
    msg: RaftMessage = field(compare=False)


class InMemoryTransport:
    """A deterministic, fault-injecting network for the simulator.

    Time is an integer tick passed in by the caller. A message sent at tick ``t`` is due at
    ``t + d`` with ``d`` drawn from ``delay`` (inclusive range); `deliver(now)` returns every
    due message in (due, send order) — or shuffled, with `reorder` — and `poll(node, now)`
    those for one node.

    Faults: `drop_rate` and `duplicate_rate` (probabilities per message), `delay`,
    `reorder`, `partition(*groups)`, `isolate(node)`, `cut(a, b)`, `crash(node)`, and
    `filter` (a predicate; False drops the message — etcd's "ignore message type"). `heal()`
    removes partitions, isolation and cuts (crashes are undone by `restart`).
    `codec_roundtrip` passes every message through encode/decode, so the simulator also
    exercises the wire codec.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        drop_rate: float = 0.0,
        delay: tuple[int, int] = (0, 0),
        reorder: bool = False,
        duplicate_rate: float = 0.0,
        codec_roundtrip: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        self.reorder = reorder
        self.codec_roundtrip = codec_roundtrip
        self.filter: Callable[[RaftMessage], bool] | None = None
        self.stats = TransportStats()
        self._drop_rate = 0.0
        self._duplicate_rate = 0.0
        self._delay = (0, 0)
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self.delay = delay
        self._queues: dict[str, list[_InFlight]] = {}
        self._seq = 0
        self._groups: dict[str, int] | None = None
        self._isolated: set[str] = set()
        self._cuts: set[tuple[str, str]] = set()
        self._crashed: set[str] = set()

    # --- knobs -----------------------------------------------------------------------------
    @property
    def drop_rate(self) -> float:
        return self._drop_rate

    @drop_rate.setter
    def drop_rate(self, rate: float) -> None:
        self._drop_rate = _probability(rate, "drop_rate")

    @property
    def duplicate_rate(self) -> float:
        return self._duplicate_rate

    @duplicate_rate.setter
    def duplicate_rate(self, rate: float) -> None:
        self._duplicate_rate = _probability(rate, "duplicate_rate")

    @property
    def delay(self) -> tuple[int, int]:
        return self._delay

    @delay.setter
    def delay(self, bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        if not (isinstance(lo, int) and isinstance(hi, int)) or not 0 <= lo <= hi:
            raise ValueError(f"delay must be (min, max) ticks with 0 <= min <= max, got {bounds!r}")
        self._delay = (lo, hi)

    # --- faults ----------------------------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: messages between different groups are lost. Nodes named in no
        group form one more group together. Replaces any previous partition."""
        assigned: dict[str, int] = {}
        for i, group in enumerate(groups):
            for node in sorted(group):
                if node in assigned:
                    raise ValueError(f"node {node!r} is in two partition groups")
                assigned[node] = i
        self._groups = assigned

    def isolate(self, node: str) -> None:
        """Cut `node` off from every other node (both directions)."""
        self._isolated.add(node)

    def cut(self, a: str, b: str, *, both_ways: bool = True) -> None:
        """Lose every message from `a` to `b` (and from `b` to `a` if `both_ways`)."""
        self._cuts.add((a, b))
        if both_ways:
            self._cuts.add((b, a))

    def uncut(self, a: str, b: str, *, both_ways: bool = True) -> None:
        self._cuts.discard((a, b))
        if both_ways:
            self._cuts.discard((b, a))

    def heal(self) -> None:
        """Remove partitions, isolation and cuts. Crashed nodes stay crashed."""
        self._groups = None
        self._isolated.clear()
        self._cuts.clear()

    def crash(self, node: str, *, drop_outgoing: bool = True) -> None:
        """The node stops: what is in flight to it (and, with `drop_outgoing`, from it) is
        lost, and nothing reaches it or leaves it until `restart`. With
        ``drop_outgoing=False`` messages it sent before crashing still arrive, late — a
        harsher test of persist-before-send."""
        self._crashed.add(node)
        self.stats.dropped += len(self._queues.pop(node, []))
        if drop_outgoing:
            for receiver in sorted(self._queues):
                queue = self._queues[receiver]
                kept = [f for f in queue if f.msg.sender != node]
                if len(kept) != len(queue):
                    self.stats.dropped += len(queue) - len(kept)
                    heapq.heapify(kept)
                    self._queues[receiver] = kept

    def restart(self, node: str) -> None:
        self._crashed.discard(node)

    def is_crashed(self, node: str) -> bool:
        return node in self._crashed

    def can_reach(self, a: str, b: str) -> bool:
        """Whether a message sent now from `a` to `b` would get through the current faults."""
        return a not in self._crashed and b not in self._crashed and self._link_open(a, b)

    def _link_open(self, a: str, b: str) -> bool:
        if a == b:
            return True
        if a in self._isolated or b in self._isolated:
            return False
        if (a, b) in self._cuts:
            return False
        if self._groups is not None and self._groups.get(a, -1) != self._groups.get(b, -1):
            return False
        return True

    # --- sending ---------------------------------------------------------------------------
    def send(self, msg: RaftMessage, now: int | None = None) -> None:
        at = self._advance(now)
        self.stats.sent += 1
        if self.codec_roundtrip:
            msg = decode_message(encode_message(msg))
        receiver = msg.receiver
        if not receiver:
            raise ValueError(f"{type(msg).__name__} has no receiver")
        if not self.can_reach(msg.sender, receiver) or (self.filter is not None and not self.filter(msg)):
            self.stats.dropped += 1
            return
        if self._drop_rate and self.rng.random() < self._drop_rate:
            self.stats.dropped += 1
            return
        self._enqueue(receiver, at, msg)
        if self._duplicate_rate and self.rng.random() < self._duplicate_rate:
            self.stats.duplicated += 1
            self._enqueue(receiver, at, msg)

    def broadcast(self, msgs: Iterable[RaftMessage], now: int | None = None) -> None:
        for msg in msgs:
            self.send(msg, now)

    def _enqueue(self, receiver: str, at: int, msg: RaftMessage) -> None:
        lo, hi = self._delay
        due = at + (lo if lo == hi else self.rng.randint(lo, hi))
        self._seq += 1
        heapq.heappush(self._queues.setdefault(receiver, []), _InFlight(due, self._seq, msg))

    def _advance(self, now: int | None) -> int:
        if now is None:
            return self.now
        if not isinstance(now, int) or now < self.now:
            raise ValueError(f"time went backwards: now={now!r} after {self.now}")
        self.now = now
        return now

    # --- receiving -------------------------------------------------------------------------
    def deliver(self, now: int | None = None) -> list[RaftMessage]:
        """Every message due by `now`, for all nodes."""
        at = self._advance(now)
        due: list[_InFlight] = []
        for receiver in sorted(self._queues):
            due += self._pop_due(receiver, at)
        return self._finish(due)

    def poll(self, node: str, now: int | None = None) -> list[RaftMessage]:
        """The messages due by `now` for `node` only."""
        at = self._advance(now)
        return self._finish(self._pop_due(node, at))

    def receive(self, node_id: str) -> list[RaftMessage]:
        """`Transport.receive`: what is due for `node_id` at the current tick."""
        return self.poll(node_id)

    def _pop_due(self, receiver: str, at: int) -> list[_InFlight]:
        queue = self._queues.get(receiver)
        out: list[_InFlight] = []
        while queue and queue[0].due <= at:
            out.append(heapq.heappop(queue))
        return out

    def _finish(self, due: list[_InFlight]) -> list[RaftMessage]:
        due.sort()
        out: list[RaftMessage] = []
        for item in due:
            # A fault that appeared while the message was in flight loses it. (A crashed
            # sender's messages were already removed by `crash` unless it kept them.)
            if item.msg.receiver not in self._crashed and self._link_open(item.msg.sender, item.msg.receiver):
                out.append(item.msg)
            else:
                self.stats.dropped += 1
        if self.reorder and len(out) > 1:
            self.rng.shuffle(out)
        self.stats.delivered += len(out)
        return out

    # --- inspection ------------------------------------------------------------------------
    def pending(self, node: str | None = None) -> int:
        """Messages in flight (to `node`, or in total)."""
        if node is not None:
            return len(self._queues.get(node, ()))
        return sum(len(q) for q in self._queues.values())

    def in_flight(self) -> list[tuple[int, RaftMessage]]:
        """(due tick, message) for everything in flight, in delivery order."""
        items = sorted(f for q in self._queues.values() for f in q)
        return [(f.due, f.msg) for f in items]

    def next_due(self) -> int | None:
        """The earliest tick at which something is due, if anything is in flight."""
        heads = [q[0].due for q in self._queues.values() if q]
        return min(heads) if heads else None

    def clear(self) -> None:
        """Lose everything in flight."""
        self.stats.dropped += self.pending()
        self._queues.clear()


def _probability(rate: float, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {rate!r}")
    return float(rate)


# --- TCP transport ------------------------------------------------------------------------
# The trio TCP transport and ConnectionPool go here (node issue): one connection per peer,
# a `Handshake` as the first frame, frames built with `encode_frame`/`FrameDecoder`, entry
# payloads shipped in storage's compressed form through `pack_payload`/`unpack_payload`.
# Import trio inside that section's functions or guard it, so the pure part above stays
# importable by the simulator without trio.
