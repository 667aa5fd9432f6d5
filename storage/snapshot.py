"""Snapshots: a zstd stream in checksummed chunks, in the store and in backup files.

Theory of operation
-------------------
A snapshot is whatever bytes the state machine serialises, compressed as ONE zstd stream
and cut into chunks of about `CHUNK_SIZE` compressed bytes. Each chunk carries its own
CRC32 and the whole snapshot a SHA-256 and byte count of the *uncompressed* data, so:

* a reader checks each chunk's CRC before decompressing it, and hands out only data that
  came from chunks that verified; the SHA-256 and size are checked at the end (a snapshot
  whose chunks all verify but whose digest does not match raises `CorruptionError` when it
  is exhausted; a consumer must only apply a snapshot after reading it to the end);
* nothing is materialised twice: the writer keeps at most one chunk of compressed output,
  the reader at most one chunk in and `OUT_PIECE` bytes out.

`SnapshotWriter` follows hashicorp/raft's SnapshotSink: `write(data)` (or
`write_compressed(chunk)` for a stream that is already compressed, e.g. received from the
leader or read from a backup file: it is verified, not recompressed), then `commit()` or
`cancel()`. The store keeps the previous snapshot until `commit()` succeeds.

Where the chunks live: in the store's LMDB environment (database ``snap``, keys
``snapshot_id (8 bytes) + chunk_no (4 bytes)``), not in files beside it. The reason is
atomicity with the log: the last step of installing a snapshot (point the metadata at the
new chunks, compact or drop the log, drop the old chunks, optionally set hard state and
membership) is ONE LMDB transaction, so a crash leaves either the old snapshot and the old
log or the new ones, with no rename-then-update window to repair on open, no orphan file
races, and a single fsync discipline. Chunks of an unfinished snapshot are written under a
fresh id in their own small transactions (so the log writer is not blocked for long) and
are deleted on cancel or, after a crash, when the store is next opened. Readers read one
chunk per short transaction, so a slow follower streaming a snapshot never pins old pages
(and never holds a transaction across threads or across a map resize); if a newer snapshot
replaces the one being read, the reader raises `SnapshotSupersededError`.

Backup files (`aegis snapshot save/status/restore`) use the same chunk framing after a
header (see `write_snapshot_file`). A snapshot also carries the zstd dictionaries the log's
records and the state's values may be compressed with (`SnapshotInfo.dictionaries`, as
``(log index, dictionary bytes)``; flag 0x0001 of a file's header), so a node installed or
restored from it can decode what it receives next (aegis.zdict). A file is written to a temporary name, fsynced and
renamed, so a backup is either complete or absent.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Protocol, cast

import msgpack
import zstandard as zstd

from aegis import failpoints
from aegis.log import HardState, LogIndex, Membership, SnapshotMeta, Term

from .errors import CorruptionError, SnapshotError, SnapshotSupersededError

__all__ = [
    "CHUNK_SIZE",
    "SnapshotInfo",
    "SnapshotWriter",
    "SnapshotReader",
    "SnapshotFileReader",
    "write_snapshot_file",
    "read_snapshot_file",
    "read_snapshot_file_info",
]

CHUNK_SIZE = 1 << 20
MAX_DICTIONARIES = 64
FLAG_DICTIONARIES = 0x0001  # in a file's header: the dictionaries follow the membership
OUT_PIECE = 1 << 18
MAX_FILE_CHUNK = 64 << 20
DEFAULT_SNAPSHOT_LEVEL = 3

_U32 = struct.Struct(">I")
_FILE_MAGIC = b"AEGISSNP"
_FILE_VERSION = 1
# magic, version, flags, index, term, size, stored_size, chunks, created, sha256, membership length
_FILE_HEAD = struct.Struct(">8sHHQQQQId32sI")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What a stored snapshot (or a snapshot file) holds."""

    index: LogIndex
    term: Term
    membership: Membership
    size: int  # uncompressed bytes
    stored_size: int  # compressed bytes (chunk payloads)
    checksum: str  # SHA-256 (hex) of the uncompressed bytes
    created: float  # unix time of commit
    chunks: int
    snapshot_id: int = 0  # the store's key prefix; 0 for files
    dictionaries: tuple[tuple[int, bytes], ...] = ()  # (log index, zstd dictionary), by index

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, self.membership)

    def to_obj(self) -> dict[str, object]:
        return {
            "index": int(self.index),
            "term": int(self.term),
            "membership": self.membership.to_dict(),
            "size": self.size,
            "stored_size": self.stored_size,
            "checksum": self.checksum,
            "created": self.created,
            "chunks": self.chunks,
            "snapshot_id": self.snapshot_id,
            "dictionaries": [[i, d] for i, d in self.dictionaries],
        }

    @classmethod
    def from_obj(cls, v: object) -> SnapshotInfo:
        if not isinstance(v, dict):
            raise ValueError("snapshot info is not a map")
        m = v["membership"]
        if not isinstance(m, dict):
            raise ValueError("snapshot membership is not a map")
        return cls(
            LogIndex(int(v["index"])),
            Term(int(v["term"])),
            Membership.from_dict(m),
            int(v["size"]),
            int(v["stored_size"]),
            str(v["checksum"]),
            float(v["created"]),
            int(v["chunks"]),
            int(v["snapshot_id"]),
            _dictionaries(v.get("dictionaries", [])),
        )


def _dictionaries(v: object) -> tuple[tuple[int, bytes], ...]:
    if not isinstance(v, list) or not all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and not isinstance(x[0], bool)
        and x[0] >= 0 and isinstance(x[1], bytes) for x in v
    ):
        raise ValueError("snapshot dictionaries are not a list of [index, bytes]")
    if len(v) > MAX_DICTIONARIES:
        raise ValueError(f"a snapshot carries at most {MAX_DICTIONARIES} dictionaries, this one {len(v)}")
    return tuple((int(x[0]), bytes(x[1])) for x in v)


# --- chunk framing -------------------------------------------------------------------------------
def encode_chunk(data: bytes) -> bytes:
    return _U32.pack(zlib.crc32(data)) + data


def decode_chunk(value: bytes, what: str, path: str | None) -> bytes:
    if len(value) < 4 or _U32.unpack_from(value, 0)[0] != zlib.crc32(memoryview(value)[4:]):
        raise CorruptionError(f"checksum mismatch in {what}", path=path)
    return value[4:]


class _Digest:
    """A write-only sink that hashes and counts what zstd decompresses into it."""

    def __init__(self, limit: int | None = None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise ValueError(f"decompressed data exceeds the declared {self.limit} bytes")
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Compressor:
    """Compress a stream into chunks of about `chunk_size` bytes, tracking size and digest."""

    def __init__(self, level: int, chunk_size: int) -> None:
        self._cobj = zstd.ZstdCompressor(level=level, write_checksum=False).compressobj()
        self._buf = bytearray()
        self._chunk_size = chunk_size
        self.digest = _Digest()

    def write(self, data: bytes) -> list[bytes]:
        self.digest.write(data)
        self._buf += self._cobj.compress(data)
        return self._take(final=False)

    def finish(self) -> list[bytes]:
        self._buf += self._cobj.flush()
        return self._take(final=True)

    def _take(self, *, final: bool) -> list[bytes]:
        out: list[bytes] = []
        while len(self._buf) >= self._chunk_size or (final and self._buf):
            out.append(bytes(self._buf[: self._chunk_size]))
            del self._buf[: self._chunk_size]
        return out


class _Verifier:
    """Decompress an already-compressed stream only to hash and count it."""

    def __init__(self) -> None:
        self.digest = _Digest()
        self._writer = zstd.ZstdDecompressor().stream_writer(cast(BinaryIO, self.digest), write_size=OUT_PIECE)

    def write(self, chunk: bytes, what: str, path: str | None) -> None:
        try:
            self._writer.write(chunk)
        except zstd.ZstdError as e:
            raise CorruptionError(f"{what} is not a valid zstd stream ({e})", path=path) from None


class _ChunkSource:
    """A file-like view of an iterator of verified compressed chunks (for zstd's reader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._exhausted = False

    def read(self, size: int = -1) -> bytes:
        if self._exhausted:
            return b""
        for c in self._chunks:
            if c:
                return c
        self._exhausted = True
        return b""

    def drain(self) -> int:
        """Consume what the decompressor did not need; returns the number of extra bytes."""
        extra = 0
        while chunk := self.read():
            extra += len(chunk)
        return extra


def decompress_chunks(
    raw_chunks: Iterator[bytes], size: int, checksum: str, what: str, path: str | None
) -> Iterator[bytes]:
    """Decompress verified chunks into pieces of at most OUT_PIECE bytes, checking the digest."""
    src = _ChunkSource(raw_chunks)
    digest = _Digest(limit=size)
    dctx = zstd.ZstdDecompressor()
    try:
        for piece in dctx.read_to_iter(cast(BinaryIO, src), read_size=CHUNK_SIZE, write_size=OUT_PIECE):
            digest.write(piece)
            yield piece
    except (zstd.ZstdError, ValueError) as e:
        raise CorruptionError(f"{what} cannot be decompressed ({e})", path=path) from None
    if src.drain():
        raise CorruptionError(f"{what} has data after the end of its zstd stream", path=path)
    if digest.size != size or digest.sha.hexdigest() != checksum:
        raise CorruptionError(
            f"{what} does not match its checksum (got {digest.size} bytes, sha256 "
            f"{digest.sha.hexdigest()[:16]}…; expected {size} bytes, {checksum[:16]}…)",
            path=path,
        )


# --- the store side ----------------------------------------------------------------------------------
class SnapshotBackend(Protocol):
    """What a `SnapshotWriter`/`SnapshotReader` needs from the store (LmdbStore implements it)."""

    @property
    def path(self) -> str: ...
    def _snapshot_put_chunk(self, snapshot_id: int, chunk_no: int, value: bytes) -> None: ...
    def _snapshot_get_chunk(self, snapshot_id: int, chunk_no: int) -> bytes | None: ...
    def _snapshot_discard(self, snapshot_id: int) -> None: ...
    def _snapshot_commit(
        self,
        info: SnapshotInfo,
        *,
        compact: bool,
        hard_state: HardState | None,
        membership: Membership | None,
    ) -> None: ...
    def snapshot_info(self) -> SnapshotInfo | None: ...


class SnapshotWriter:
    """A sink for a new snapshot: `write()` chunks, then `commit()` or `cancel()`.

    Also a context manager: leaving the block without `commit()` cancels.
    """

    def __init__(
        self,
        backend: SnapshotBackend,
        meta: SnapshotMeta,
        snapshot_id: int,
        *,
        compact: bool = True,
        level: int = DEFAULT_SNAPSHOT_LEVEL,
        chunk_size: int = CHUNK_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.snapshot_id = snapshot_id
        self._backend = backend
        self._compact = compact
        self._level = level
        self._chunk_size = chunk_size
        self._clock = clock
        self._compressor: _Compressor | None = None
        self._verifier: _Verifier | None = None
        self._chunks = 0
        self._stored = 0
        self._state = "open"

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state == "open":
            self.cancel()

    def _check_open(self) -> None:
        if self._state != "open":
            raise SnapshotError(f"snapshot writer for index {self.meta.index} is already {self._state}")

    def write(self, data: bytes) -> None:
        """Add uncompressed snapshot bytes."""
        self._check_open()
        if self._verifier is not None:
            raise SnapshotError("cannot mix write() and write_compressed() in one snapshot")
        if self._compressor is None:
            self._compressor = _Compressor(self._level, self._chunk_size)
        try:
            for chunk in self._compressor.write(bytes(data)):
                self._put(chunk)
        except BaseException:
            self.cancel()
            raise

    def write_compressed(self, chunk: bytes) -> None:
        """Add a piece of an already-compressed snapshot stream (verified, stored as is)."""
        self._check_open()
        if self._compressor is not None:
            raise SnapshotError("cannot mix write() and write_compressed() in one snapshot")
        if self._verifier is None:
            self._verifier = _Verifier()
        try:
            if chunk:
                self._verifier.write(bytes(chunk), f"snapshot {self.meta.index} stream", self._backend.path)
                self._put(bytes(chunk))
        except BaseException:
            self.cancel()
            raise

    def _put(self, chunk: bytes) -> None:
        self._backend._snapshot_put_chunk(self.snapshot_id, self._chunks, encode_chunk(chunk))
        self._chunks += 1
        self._stored += len(chunk)

    def commit(
        self,
        *,
        hard_state: HardState | None = None,
        membership: Membership | None = None,
        expect_checksum: str | None = None,
        dictionaries: Iterable[tuple[int, bytes]] = (),
    ) -> SnapshotInfo:
        """Make this the store's snapshot (and compact the log) in one transaction.

        `hard_state`/`membership`, when given, are written in that same transaction (a
        follower installing a leader's snapshot moves its commit index and configuration
        with it). `expect_checksum` (the sender's SHA-256) is compared with what was
        written: a mismatch raises CorruptionError and nothing changes.
        """
        self._check_open()
        try:
            if self._compressor is None and self._verifier is None:
                self._compressor = _Compressor(self._level, self._chunk_size)
            if self._compressor is not None:
                for chunk in self._compressor.finish():
                    self._put(chunk)
                digest = self._compressor.digest
            else:
                assert self._verifier is not None
                digest = self._verifier.digest
            if expect_checksum is not None and digest.sha.hexdigest() != expect_checksum:
                raise CorruptionError(
                    f"snapshot at index {self.meta.index} does not match the expected checksum",
                    path=self._backend.path,
                )
            info = SnapshotInfo(
                self.meta.index,
                self.meta.term,
                self.meta.membership,
                digest.size,
                self._stored,
                digest.sha.hexdigest(),
                self._clock(),
                self._chunks,
                self.snapshot_id,
                tuple(sorted((int(i), bytes(d)) for i, d in dictionaries)),
            )
            self._backend._snapshot_commit(
                info, compact=self._compact, hard_state=hard_state, membership=membership
            )
        except BaseException:
            self.cancel()
            raise
        self._state = "committed"
        return info

    def cancel(self) -> None:
        """Forget this snapshot; the previous one stays. Safe to call more than once."""
        if self._state != "open":
            return
        self._state = "cancelled"
        self._backend._snapshot_discard(self.snapshot_id)


class SnapshotReader:
    """Reads the store's snapshot: iterate for verified uncompressed pieces."""

    def __init__(self, backend: SnapshotBackend, info: SnapshotInfo) -> None:
        self.info = info
        self._backend = backend

    def raw_chunks(self) -> Iterator[bytes]:
        """The compressed chunks, each CRC-checked (what a transport ships to a follower)."""
        info = self.info
        for no in range(info.chunks):
            value = self._backend._snapshot_get_chunk(info.snapshot_id, no)
            if value is None:
                current = self._backend.snapshot_info()
                if current is None or current.snapshot_id != info.snapshot_id:
                    raise SnapshotSupersededError(
                        f"snapshot at index {info.index} was replaced while being read"
                    )
                raise CorruptionError(
                    f"snapshot at index {info.index} is missing chunk {no} of {info.chunks}",
                    path=self._backend.path,
                )
            yield decode_chunk(value, f"snapshot at index {info.index}, chunk {no}", self._backend.path)

    def __iter__(self) -> Iterator[bytes]:
        return decompress_chunks(
            self.raw_chunks(),
            self.info.size,
            self.info.checksum,
            f"snapshot at index {self.info.index}",
            self._backend.path,
        )

    def read_all(self) -> bytes:
        """The whole snapshot in memory (for small snapshots and tests)."""
        return b"".join(self)


# --- backup files --------------------------------------------------------------------------------
def _file_header(info: SnapshotInfo) -> bytes:
    m: bytes = msgpack.packb(info.membership.to_dict(), use_bin_type=True)
    head = _FILE_HEAD.pack(
        _FILE_MAGIC,
        _FILE_VERSION,
        FLAG_DICTIONARIES if info.dictionaries else 0,
        info.index,
        info.term,
        info.size,
        info.stored_size,
        info.chunks,
        info.created,
        bytes.fromhex(info.checksum) if info.checksum else bytes(32),
        len(m),
    )
    head += m
    if info.dictionaries:
        d: bytes = msgpack.packb([[i, b] for i, b in info.dictionaries], use_bin_type=True)
        head += _U32.pack(len(d)) + d
    return head + _U32.pack(zlib.crc32(head))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(
    path: str | os.PathLike[str],
    placeholder: SnapshotInfo,
    raw_chunks: Iterable[bytes],
    finish: Callable[[int, int], SnapshotInfo],
) -> SnapshotInfo:
    """Write header + framed chunks to a temp file, patch the header, fsync, rename."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    head = _file_header(placeholder)
    chunks = stored = 0
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for raw in raw_chunks:
                f.write(_U32.pack(len(raw)) + encode_chunk(raw))
                chunks += 1
                stored += len(raw)
                failpoints.hit("snapshot-mid-write")
            f.write(_U32.pack(0))
            info = finish(chunks, stored)
            final_head = _file_header(info)
            if len(final_head) != len(head):
                raise AssertionError("snapshot file header changed size")
            f.seek(0)
            f.write(final_head)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return info


def write_snapshot_file(
    path: str | os.PathLike[str],
    meta: SnapshotMeta,
    chunks: Iterable[bytes],
    *,
    level: int = DEFAULT_SNAPSHOT_LEVEL,
    chunk_size: int = CHUNK_SIZE,
    created: float | None = None,
    dictionaries: Iterable[tuple[int, bytes]] = (),
) -> SnapshotInfo:
    """Write a backup file from uncompressed `chunks`; returns what it holds.

    Layout: header (magic ``AEGISSNP``, version, index, term, uncompressed size, stored
    size, chunk count, creation time, SHA-256, membership as msgpack, header CRC32), then
    chunks framed as ``u32 length, u32 crc32, bytes`` (a zstd stream), then ``u32 0``.
    """
    comp = _Compressor(level, chunk_size)
    when = time.time() if created is None else created
    dicts = tuple(sorted((int(i), bytes(d)) for i, d in dictionaries))
    placeholder = SnapshotInfo(meta.index, meta.term, meta.membership, 0, 0, "", when, 0, dictionaries=dicts)

    def compressed() -> Iterator[bytes]:
        for data in chunks:
            yield from comp.write(bytes(data))
        yield from comp.finish()

    def finish(n: int, stored: int) -> SnapshotInfo:
        return SnapshotInfo(
            meta.index, meta.term, meta.membership, comp.digest.size, stored,
            comp.digest.sha.hexdigest(), when, n, dictionaries=dicts,
        )

    return _write_file(path, placeholder, compressed(), finish)


def write_snapshot_file_raw(
    path: str | os.PathLike[str], info: SnapshotInfo, raw_chunks: Iterable[bytes]
) -> SnapshotInfo:
    """Write a backup file from an already-compressed stream (verified against `info`)."""
    verifier = _Verifier()
    where = f"snapshot at index {info.index}"

    def verified() -> Iterator[bytes]:
        for raw in raw_chunks:
            verifier.write(raw, where, None)
            yield raw

    def finish(n: int, stored: int) -> SnapshotInfo:
        d = verifier.digest
        if d.size != info.size or d.sha.hexdigest() != info.checksum:
            raise CorruptionError(f"{where} does not match its checksum; backup not written")
        return SnapshotInfo(
            info.index, info.term, info.membership, d.size, stored, info.checksum, info.created, n,
            dictionaries=info.dictionaries,
        )

    return _write_file(path, info, verified(), finish)


def _read_header(f: BinaryIO, path: str) -> SnapshotInfo:
    fixed = f.read(_FILE_HEAD.size)
    if len(fixed) < _FILE_HEAD.size or fixed[:8] != _FILE_MAGIC:
        raise CorruptionError("not an aegis snapshot file (bad magic or too short)", path=path)
    magic, version, flags, index, term, size, stored, chunks, created, sha, mlen = _FILE_HEAD.unpack(fixed)
    if version != _FILE_VERSION:
        raise CorruptionError(f"unsupported snapshot file version {version}", path=path)
    if flags & ~FLAG_DICTIONARIES:
        raise CorruptionError(f"snapshot file header has unknown flags {flags:#x}", path=path)
    if mlen > 16 << 20:
        raise CorruptionError("snapshot file header is corrupt (membership too large)", path=path)
    m = f.read(mlen)
    extra = b""
    if flags & FLAG_DICTIONARIES and len(m) == mlen:
        lb = f.read(4)
        dlen = _U32.unpack(lb)[0] if len(lb) == 4 else -1
        if not 0 <= dlen <= MAX_DICTIONARIES << 20:
            raise CorruptionError("snapshot file header is corrupt (dictionaries)", path=path)
        extra = lb + f.read(dlen)
        if len(extra) != dlen + 4:
            raise CorruptionError("snapshot file header is truncated (dictionaries)", path=path)
    crc = f.read(4)
    if len(m) != mlen or len(crc) != 4 or _U32.unpack(crc)[0] != zlib.crc32(fixed + m + extra):
        raise CorruptionError("checksum mismatch in snapshot file header", path=path)
    dictionaries: tuple[tuple[int, bytes], ...] = ()
    if extra:
        try:
            dictionaries = _dictionaries(msgpack.unpackb(extra[4:], raw=False))
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptionError(f"snapshot file dictionaries are invalid ({e})", path=path) from None
    try:
        mobj: Any = msgpack.unpackb(m, raw=False)
        membership = Membership.from_dict(cast(dict[str, object], mobj))
    except (ValueError, TypeError, IndexError, AttributeError, msgpack.UnpackException) as e:
        raise CorruptionError(f"snapshot file membership is invalid ({e})", path=path) from None
    return SnapshotInfo(
        LogIndex(index), Term(term), membership, size, stored, sha.hex(), created, chunks,
        dictionaries=dictionaries,
    )


def read_snapshot_file_info(path: str | os.PathLike[str]) -> SnapshotInfo:
    """The header of a backup file (for `aegis snapshot status`); the body is not read."""
    with open(path, "rb") as f:
        return _read_header(f, os.fspath(path))


class SnapshotFileReader:
    """An open backup file: `.info`, then iterate for verified uncompressed pieces."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._f: BinaryIO = open(self.path, "rb")
        try:
            self.info = _read_header(self._f, self.path)
        except BaseException:
            self._f.close()
            raise
        self._body = self._f.tell()

    def __enter__(self) -> SnapshotFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def raw_chunks(self) -> Iterator[bytes]:
        """The compressed chunks, each CRC-checked; checks the chunk count and the end."""
        f = self._f
        f.seek(self._body)
        stored = 0
        for no in range(self.info.chunks + 1):
            lb = f.read(4)
            if len(lb) != 4:
                raise CorruptionError(f"snapshot file is truncated at chunk {no}", path=self.path)
            (n,) = _U32.unpack(lb)
            if n == 0:
                break
            if n > MAX_FILE_CHUNK or no >= self.info.chunks:
                raise CorruptionError(f"snapshot file chunk {no} is corrupt (length {n})", path=self.path)
            value = f.read(n + 4)
            if len(value) != n + 4:
                raise CorruptionError(f"snapshot file is truncated in chunk {no}", path=self.path)
            raw = decode_chunk(value, f"snapshot file chunk {no}", self.path)
            stored += len(raw)
            yield raw
        if no != self.info.chunks or stored != self.info.stored_size or f.read(1):
            raise CorruptionError(
                f"snapshot file has {no} chunks / {stored} bytes, header says "
                f"{self.info.chunks} / {self.info.stored_size} (or trailing data)",
                path=self.path,
            )

    def __iter__(self) -> Iterator[bytes]:
        return decompress_chunks(
            self.raw_chunks(), self.info.size, self.info.checksum, "snapshot file", self.path
        )

    def read_all(self) -> bytes:
        return b"".join(self)


def read_snapshot_file(path: str | os.PathLike[str]) -> SnapshotFileReader:
    """Open a backup file; the header is verified now, the body as it is read."""
    return SnapshotFileReader(path)
