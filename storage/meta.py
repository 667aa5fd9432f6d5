"""Encoding of the small metadata values kept in the `meta` database.

Every value is msgpack (never pickle) behind a 4-byte CRC32 "seal", so a flipped byte in
the hard state or the membership is reported as corruption instead of being believed.
Decoders are strict: an unexpected shape is corruption, not a default.

Keys of the `meta` database:

=================  =====================================================================
``format``         data directory format version (an int)
``identity``       ``{"node_id", "cluster", "created"}`` of the node that owns the directory
``hard_state``     ``[term, voted_for or None, commit_index]``
``membership``     the current membership (`Membership.to_dict()`)
``log_base``       ``[index, term, membership]``: the log's snapshot point (`LogStore.snapshot()`)
``snapshot``       `SnapshotInfo` of the stored snapshot data (see storage.snapshot)
``zstd_dict``      a trained zstd dictionary for small payloads (optional; the old, local way)
``zdict/<id>``     ``[log index, dictionary bytes]``: a zstd dictionary from a DICTIONARY entry
                   (4-byte big-endian id), written with the entry (aegis.zdict)
=================  =====================================================================
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from aegis.log import HardState, LogIndex, Membership, SnapshotMeta, Term

from .errors import CorruptionError

__all__ = [
    "DATA_FORMAT",
    "K_FORMAT",
    "K_IDENTITY",
    "K_HARD_STATE",
    "K_MEMBERSHIP",
    "K_LOG_BASE",
    "K_SNAPSHOT",
    "K_DICT",
    "K_ZDICT_PREFIX",
    "zdict_key",
    "seal",
    "unseal",
    "encode_hard_state",
    "decode_hard_state",
    "encode_membership",
    "decode_membership",
    "encode_snapshot_meta",
    "decode_snapshot_meta",
    "index_key",
    "key_index",
]

DATA_FORMAT = 1

K_FORMAT = b"format"
K_IDENTITY = b"identity"
K_HARD_STATE = b"hard_state"
K_MEMBERSHIP = b"membership"
K_LOG_BASE = b"log_base"
K_SNAPSHOT = b"snapshot"
K_DICT = b"zstd_dict"
K_ZDICT_PREFIX = b"zdict/"


def zdict_key(dict_id: int) -> bytes:
    return K_ZDICT_PREFIX + struct.pack(">I", dict_id)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def index_key(index: int) -> bytes:
    """8-byte big-endian, so LMDB's byte order is index order."""
    return _U64.pack(index)


def key_index(key: bytes) -> int:
    if len(key) != 8:
        raise ValueError(f"log key of {len(key)} bytes")
    return int(_U64.unpack(key)[0])


def seal(obj: object) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _U32.pack(zlib.crc32(body)) + body


def unseal(raw: bytes, what: str, path: str | None) -> Any:
    if len(raw) < 4 or _U32.unpack_from(raw, 0)[0] != zlib.crc32(raw[4:]):
        raise CorruptionError(f"checksum mismatch in stored {what}", path=path)
    try:
        return msgpack.unpackb(raw[4:], raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise CorruptionError(f"stored {what} cannot be decoded ({e})", path=path) from None


def _bad(what: str, path: str | None) -> CorruptionError:
    return CorruptionError(f"stored {what} has an unexpected shape", path=path)


def encode_hard_state(hs: HardState) -> bytes:
    return seal([int(hs.term), hs.voted_for, int(hs.commit_index)])


def decode_hard_state(raw: bytes, path: str | None) -> HardState:
    v = unseal(raw, "hard state", path)
    if (
        not isinstance(v, list)
        or len(v) != 3
        or not isinstance(v[0], int)
        or not (v[1] is None or isinstance(v[1], str))
        or not isinstance(v[2], int)
    ):
        raise _bad("hard state", path)
    return HardState(Term(v[0]), v[1], LogIndex(v[2]))


def encode_membership(m: Membership) -> bytes:
    return seal(m.to_dict())


def membership_from_obj(v: object, what: str, path: str | None) -> Membership:
    if not isinstance(v, dict):
        raise _bad(what, path)
    try:
        return Membership.from_dict(v)
    except (ValueError, TypeError, IndexError) as e:
        raise CorruptionError(f"stored {what} is invalid ({e})", path=path) from None


def decode_membership(raw: bytes, path: str | None) -> Membership:
    return membership_from_obj(unseal(raw, "membership", path), "membership", path)


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    return seal([int(meta.index), int(meta.term), meta.membership.to_dict()])


def decode_snapshot_meta(raw: bytes, path: str | None) -> SnapshotMeta:
    v = unseal(raw, "log base", path)
    if not isinstance(v, list) or len(v) != 3 or not isinstance(v[0], int) or not isinstance(v[1], int):
        raise _bad("log base", path)
    return SnapshotMeta(LogIndex(v[0]), Term(v[1]), membership_from_obj(v[2], "log base membership", path))
