"""The entry record codec: how one log entry is stored on disk and shipped between nodes.

Theory of operation
-------------------
A *record* is the stored and the wire form of a `LogEntry` without its index (the index is
the LMDB key, or travels beside the record in an AppendEntries frame)::

    offset size field
    0      1    format version (1)
    1      1    entry type (EntryType)
    2      1    flags: 0x01 payload is zstd-compressed, 0x02 compressed with a dictionary
    3      8    term                       (unsigned, big-endian)
    11     8    timestamp                  (IEEE double)
    19     4    payload length, uncompressed
    23     4    entry checksum = LogEntry.checksum() (CRC32 over index, term, type, payload)
    27     4    dictionary id              (only when flag 0x02 is set)
    27/31  4    record CRC32 over every header byte before it and the stored payload
    31/35  -    stored payload (raw, or a magic-less zstd frame)

Two checksums, because they guard different things: the record CRC is checked first and
cheaply (no decompression) and covers the header fields the entry checksum does not
(timestamp, flags, length); the entry checksum is end to end: it is computed by the node
that created the entry and verified after decompression, so a codec bug or a record
stored under the wrong index (the index is part of it) is caught too. A record that fails
either check raises `CorruptionError` naming the index (and the file, when given); wrong
data is never returned.

Compression: payloads longer than ``threshold`` bytes are compressed with zstd at
``level``; when the compressed form is not smaller the raw bytes are kept (flag clear), so
random data never grows. Adaptive (on by default): per payload size class (powers of two),
the codec tracks what compression saved over the last ~64 KiB of payloads; when it saved
less than ``min_saving`` (10%), payloads of that size are stored raw without trying, except
one in 32 that is still compressed to notice when the data changes. (Measured: ~100-byte
JSON values without a dictionary shrink by ~7% for ~3 us each, which halves the append rate
of large batches; with a dictionary they shrink by ~65% and keep being compressed.) Frames
are written without the zstd magic number, content size or
frame checksum (the header has all three), which matters for 100-byte values. Each thread
gets its own reusable ZstdCompressor/ZstdDecompressor (they are not thread-safe, and making
one per call costs more than compressing a small value).

A trained dictionary (`train_dictionary`) helps small, similar values a lot (see
bench/storage_bench.py). A record compressed with a dictionary can only be decoded by a
codec that has that dictionary registered (`Codec.add_dictionary`). In a cluster the
dictionaries travel through the log (DICTIONARY entries, aegis.zdict): `LmdbStore` stores
each one in its environment in the transaction that appends its entry, and registers them
all on open, before it reads a record. A DICTIONARY entry's own record is never compressed
with a dictionary (a node must decode it to learn the dictionary). A transport ships a
dictionary record only to a peer known to hold that dictionary: `pack_payload(entry,
dict_ok)` re-encodes the payload without one when ``dict_ok(dict_id)`` is false.
`compress_value`/`decompress_value` are the same dictionaries for the state's values
(storage.kv).

For the transport: compress once
--------------------------------
`pack_payload(entry)` / `unpack_payload(payload)` are the transport's payload hooks
(`aegis.transport.PayloadPacker` / `PayloadUnpacker`): the transport ships index, term,
type and timestamp in its own frame, and the payload in its *stored* form::

    flags (1) | uncompressed length (4) | [dictionary id (4)] | CRC32 (4) | stored bytes

(the CRC covers the fields before it and the stored bytes)

* On the leader, `LmdbStore.append` packs each entry once and the codec remembers the
  record (a bounded cache keyed by (index, term); a hit needs an *equal* entry, payload
  compared byte for byte), so `pack_payload` for every follower is a cache hit, a CRC
  and a copy, never a second compression.
* On a follower, `unpack_payload` checks the CRC (a peer's bytes are verified before they
  are decompressed), decompresses, and remembers the stored bytes together with the
  returned `bytes` object; when the driver appends the entry built around that object, the
  store writes the leader's stored bytes without compressing them again.

`pack_entry`/`unpack_entry` give and take whole records (`LmdbStore.records` returns them
too); `compress_payload`/`decompress_payload` are the bare payload step. The caches can
never change what is stored or returned: they only skip recomputing identical bytes.

This module never imports trio, lmdb, or anything from aegis except the log types.
"""

from __future__ import annotations

import itertools
import struct
import threading
import zlib
from collections import deque
from typing import Any, Callable, Iterable, Sequence, cast

import zstandard as zstd

from aegis.log import EntryType, LogEntry, LogIndex, Term

from .errors import CorruptionError, StorageError

__all__ = [
    "FORMAT_VERSION",
    "FLAG_COMPRESSED",
    "FLAG_DICT",
    "DEFAULT_LEVEL",
    "DEFAULT_THRESHOLD",
    "Codec",
    "RecordHeader",
    "default_codec",
    "set_default_codec",
    "pack_entry",
    "unpack_entry",
    "pack_payload",
    "unpack_payload",
    "record_term",
    "train_dictionary",
    "dictionary_id",
    "encode_dictionary_entry",
    "decode_dictionary_entry",
    "VALUE_THRESHOLD",
]

FORMAT_VERSION = 1
FLAG_COMPRESSED = 0x01
FLAG_DICT = 0x02
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_DICT

DEFAULT_LEVEL = 3
DEFAULT_THRESHOLD = 64
DEFAULT_CACHE_ENTRIES = 8192
# Recent log records, decoded and encoded: about 3 s of a 30k writes/s load. (64 MiB held
# 45 MB more RssAnon per node after bench/load_bench.py; 4 MiB 20 MB less again.)
DEFAULT_CACHE_BYTES = 16 << 20
DEFAULT_MIN_SAVING = 0.10
ADAPT_WINDOW = 64 << 10  # payload bytes observed per size class before (re)deciding
PROBE_EVERY = 32  # while a size class is skipped, still compress one payload in this many

_HEAD = struct.Struct(">BBBQdII")  # version, type, flags, term, timestamp, length, entry crc
_U32 = struct.Struct(">I")
_WIRE = struct.Struct(">BI")  # wire payload: flags, uncompressed length
_CRC_HEAD = struct.Struct(">QQB")  # what LogEntry.checksum() covers before the payload
_MAX_TERM = (1 << 64) - 1
_ENTRY_TYPES = frozenset(int(t) for t in EntryType)
_DICT_MAGIC = b"\x37\xa4\x30\xec"  # a trained zstd dictionary starts so (ZSTD_MAGIC_DICTIONARY)
VALUE_THRESHOLD = 48  # state values shorter than this are stored raw (compress_value)


class RecordHeader:
    """The decoded, CRC-checked header of a record (payload still stored form)."""

    __slots__ = ("type", "flags", "term", "timestamp", "length", "crc", "dict_id", "offset")

    def __init__(
        self,
        type: int,
        flags: int,
        term: int,
        timestamp: float,
        length: int,
        crc: int,
        dict_id: int,
        offset: int,
    ) -> None:
        self.type = type
        self.flags = flags
        self.term = term
        self.timestamp = timestamp
        self.length = length
        self.crc = crc
        self.dict_id = dict_id
        self.offset = offset  # where the stored payload starts

    @property
    def entry_size(self) -> int:
        """`LogEntry.size()` of the decoded entry, known without decompressing."""
        return self.length + 32


def _where(path: str | None) -> str:
    return f" in {path}" if path else ""


class Codec:
    """Compression settings plus per-thread zstd contexts, dictionaries and the record cache.

    One process normally uses the default codec (`default_codec()`); a store or a benchmark
    may build its own to try other settings.
    """

    def __init__(
        self,
        *,
        level: int = DEFAULT_LEVEL,
        threshold: int = DEFAULT_THRESHOLD,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        adaptive: bool = True,
        min_saving: float = DEFAULT_MIN_SAVING,
    ) -> None:
        if not -7 <= level <= 22:
            raise ValueError(f"zstd level must be in -7..22, got {level}")
        if threshold < 0:
            raise ValueError(f"compression threshold must be >= 0, got {threshold}")
        self.level = level
        self.threshold = threshold
        self._params = zstd.ZstdCompressionParameters.from_level(
            level,
            format=zstd.FORMAT_ZSTD1_MAGICLESS,
            write_checksum=0,
            write_content_size=0,
            write_dict_id=0,
        )
        self._local = threading.local()
        self._dicts: dict[int, Any] = {}  # dict_id -> zstd.ZstdCompressionDict
        self._dict_gen: dict[int, int] = {}  # dict_id -> generation (a replaced id gets new contexts)
        self._gen = itertools.count(1)
        self._active_dict: int | None = None
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        # FIFO: keys in insertion order in a deque (a dict's own order makes popping the
        # oldest O(deleted slots)); a re-inserted key may leave a stale deque slot, harmless.
        self._cache: dict[tuple[int, int], tuple[LogEntry, bytes]] = {}
        self._cache_order: deque[tuple[int, int]] = deque()
        # payloads received by unpack_payload, by id() of the returned bytes (kept alive here)
        self._wire: dict[int, tuple[bytes, int, int, bytes]] = {}
        self._wire_order: deque[int] = deque()
        self._wire_bytes = 0
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()
        # Adaptive compression, per payload size class (bit length of the size): bytes in and
        # out over a sliding window, and whether the class currently compresses poorly.
        self.adaptive = adaptive
        self.min_saving = min_saving
        self._class_in = [0] * 34
        self._class_out = [0] * 34
        self._class_poor = [False] * 34
        self._class_skipped = [0] * 34

    # --- dictionaries ------------------------------------------------------------------------
    def add_dictionary(self, dict_bytes: bytes, *, activate: bool = False, replace: bool = False) -> int:
        """Register a trained dictionary for decoding (and for encoding if `activate`).

        A different dictionary under an id already registered is refused (ValueError), or
        with `replace` takes its place (only for one that no record uses: an uncommitted
        DICTIONARY entry another leader overwrote)."""
        dict_id = dictionary_id(dict_bytes)
        old = self._dicts.get(dict_id)
        if old is not None and bytes(old.as_bytes()) != bytes(dict_bytes):
            if not replace:
                raise ValueError(f"another zstd dictionary with id {dict_id} is already registered")
            if self._active_dict == dict_id:
                raise ValueError(f"zstd dictionary {dict_id} is in use and cannot be replaced")
            old = None
        if old is None:
            d = zstd.ZstdCompressionDict(bytes(dict_bytes))
            d.precompute_compress(compression_params=self._params)
            self._dict_gen[dict_id] = next(self._gen)
            self._dicts[dict_id] = d
        if activate:
            self.use_dictionary(dict_id)
        return dict_id

    def remove_dictionary(self, dict_id: int) -> None:
        """Forget a dictionary no record uses (an uncommitted entry's, truncated)."""
        if self._active_dict == dict_id:
            raise ValueError(f"zstd dictionary {dict_id} is in use and cannot be removed")
        self._dicts.pop(dict_id, None)
        self._dict_gen.pop(dict_id, None)

    def has_dictionary(self, dict_id: int) -> bool:
        return dict_id in self._dicts

    def dictionary_ids(self) -> list[int]:
        return sorted(self._dicts)

    def use_dictionary(self, dict_id: int | None) -> None:
        """Compress new payloads with this registered dictionary (None: no dictionary)."""
        if dict_id is not None and dict_id not in self._dicts:
            raise ValueError(f"zstd dictionary {dict_id} is not registered")
        self._active_dict = dict_id
        self._class_in = [0] * 34  # what pays changes with the dictionary: observe again
        self._class_out = [0] * 34
        self._class_poor = [False] * 34

    @property
    def active_dictionary(self) -> int | None:
        return self._active_dict

    # --- per-thread contexts -------------------------------------------------------------------
    def _compressor(self, dict_id: int | None) -> Any:
        key = f"c{dict_id or 0}_{self._dict_gen.get(dict_id or 0, 0)}"
        c = getattr(self._local, key, None)
        if c is None:
            if dict_id is None:
                c = zstd.ZstdCompressor(compression_params=self._params)
            else:
                c = zstd.ZstdCompressor(dict_data=self._dicts[dict_id], compression_params=self._params)
            setattr(self._local, key, c)
        return c

    def _decompressor(self, dict_id: int | None) -> Any:
        key = f"d{dict_id or 0}_{self._dict_gen.get(dict_id or 0, 0)}"
        d = getattr(self._local, key, None)
        if d is None:
            if dict_id is None:
                d = zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS)
            else:
                d = zstd.ZstdDecompressor(dict_data=self._dicts[dict_id], format=zstd.FORMAT_ZSTD1_MAGICLESS)
            setattr(self._local, key, d)
        return d

    # --- payloads ------------------------------------------------------------------------------
    def compress_payload(self, data: bytes) -> tuple[int, int, bytes]:
        """Compress a payload if that pays: returns (flags, dict_id or 0, stored bytes)."""
        raw = data if type(data) is bytes else bytes(data)
        n = len(raw)
        if n <= self.threshold:
            return 0, 0, raw
        cls = n.bit_length()
        weight = 1
        if self.adaptive and self._class_poor[cls]:
            # Compressing values of this size has not paid lately: skip, but keep probing;
            # a probe stands for the PROBE_EVERY payloads it samples.
            self._class_skipped[cls] += 1
            if self._class_skipped[cls] % PROBE_EVERY:
                return 0, 0, raw
            weight = PROBE_EVERY
        dict_id = self._active_dict
        packed = cast(bytes, self._compressor(dict_id).compress(raw))
        if self.adaptive:
            self._observe(cls, n * weight, min(n, len(packed)) * weight)
        if len(packed) >= n:
            return 0, 0, raw
        if dict_id is None:
            return FLAG_COMPRESSED, 0, packed
        return FLAG_COMPRESSED | FLAG_DICT, dict_id, packed

    def compress_plain(self, data: bytes) -> tuple[int, int, bytes]:
        """`compress_payload` without a dictionary (and without the adaptive skip)."""
        raw = data if type(data) is bytes else bytes(data)
        if len(raw) <= self.threshold:
            return 0, 0, raw
        packed = cast(bytes, self._compressor(None).compress(raw))
        if len(packed) >= len(raw):
            return 0, 0, raw
        return FLAG_COMPRESSED, 0, packed

    def compress_value(self, value: bytes) -> tuple[int, bytes] | None:
        """(dictionary id, zstd frame) of a state value with the active dictionary, or None
        when there is none, the value is short, or the frame would not be smaller."""
        dict_id = self._active_dict
        n = len(value)
        if dict_id is None or n < VALUE_THRESHOLD:
            return None
        packed = cast(bytes, self._compressor(dict_id).compress(value))
        if len(packed) + 8 >= n:  # the dictionary id and length it needs
            return None
        return dict_id, packed

    def value_packer(self) -> Callable[[bytes], tuple[int, bytes] | None] | None:
        """`compress_value` for many values in a row on this thread (a state flush): the
        dictionary and its compressor looked up once; None when no dictionary is active."""
        dict_id = self._active_dict
        if dict_id is None:
            return None
        compress = self._compressor(dict_id).compress

        def pack(value: bytes) -> tuple[int, bytes] | None:
            n = len(value)
            if n < VALUE_THRESHOLD:
                return None
            packed = cast(bytes, compress(value))
            return None if len(packed) + 8 >= n else (dict_id, packed)

        return pack

    def decompress_value(self, dict_id: int, stored: bytes, length: int) -> bytes:
        """Inverse of `compress_value`; raises StorageError/ValueError/zstd.ZstdError."""
        return self.decompress_payload(FLAG_COMPRESSED | FLAG_DICT, dict_id, stored, length)

    def _observe(self, cls: int, n_in: int, n_out: int) -> None:
        # Unsynchronised on purpose: a lost update between threads only blurs a heuristic.
        self._class_in[cls] += n_in
        self._class_out[cls] += n_out
        if self._class_in[cls] >= ADAPT_WINDOW:
            self._class_poor[cls] = self._class_out[cls] > self._class_in[cls] * (1.0 - self.min_saving)
            self._class_in[cls] //= 2
            self._class_out[cls] //= 2

    def decompress_payload(self, flags: int, dict_id: int, stored: bytes, length: int) -> bytes:
        """Inverse of `compress_payload`; raises zstd.ZstdError/ValueError on bad input."""
        if not flags & FLAG_COMPRESSED:
            if len(stored) != length:
                raise ValueError(f"raw payload is {len(stored)} bytes, header says {length}")
            return bytes(stored)
        if flags & FLAG_DICT:
            if dict_id not in self._dicts:
                raise StorageError(f"payload needs zstd dictionary {dict_id}, which this node does not have")
            dctx = self._decompressor(dict_id)
        else:
            dctx = self._decompressor(None)
        if length == 0:
            out = b""
        else:
            out = cast(bytes, dctx.decompress(stored, max_output_size=length))
        if len(out) != length:
            raise ValueError(f"payload decompressed to {len(out)} bytes, header says {length}")
        return out

    # --- records -------------------------------------------------------------------------------
    def pack_entry(self, entry: LogEntry) -> bytes:
        """The stored/wire record of `entry` (cached: equal entries are compressed once)."""
        return self.pack_entries((entry,))[0]

    # --- the wire form of a payload (the transport's hooks) -----------------------------------------
    def pack_payload(self, entry: LogEntry, dict_ok: Callable[[int], bool] | None = None) -> bytes:
        """The payload as a transport ships it: the stored bytes, not compressed again.

        ``flags (1) | uncompressed length (4) | [dictionary id (4)] | CRC32 (4) | stored
        bytes``; the CRC covers the fields before it and the stored bytes. Goes through the record cache, so for an entry the store
        has just appended this costs a CRC and a copy, not a compression.

        A record compressed with a dictionary for which ``dict_ok(dict_id)`` is false (the
        peer is not known to hold it) is shipped compressed without one instead.
        """
        record = self.pack_entries((entry,))[0]
        flags = record[2]
        if flags & FLAG_DICT and dict_ok is not None:
            (dict_id,) = _U32.unpack_from(record, _HEAD.size)
            if not dict_ok(dict_id):
                flags, _, plain = self.compress_plain(entry.data)
                head = _WIRE.pack(flags, len(entry.data))
                return b"".join((head, _U32.pack(zlib.crc32(plain, zlib.crc32(head))), plain))
        off = _HEAD.size + (4 if flags & FLAG_DICT else 0) + 4
        stored = memoryview(record)[off:]
        head = _WIRE.pack(flags, len(entry.data))
        if flags & FLAG_DICT:
            head += record[_HEAD.size : _HEAD.size + 4]
        return b"".join((head, _U32.pack(zlib.crc32(stored, zlib.crc32(head))), stored))

    def unpack_payload(self, payload: bytes) -> bytes:
        """Verify and decompress a payload received from a peer; returns the payload bytes.

        The stored bytes are remembered with the returned object, so when the driver appends
        the entry built around it, the store writes the leader's bytes without compressing.
        """
        mv = memoryview(payload)
        if len(mv) < _WIRE.size + 4:
            raise CorruptionError("entry payload received from a peer is truncated")
        flags, length = _WIRE.unpack_from(mv, 0)
        off = _WIRE.size
        dict_id = 0
        if flags & ~_KNOWN_FLAGS or (flags & FLAG_DICT and not flags & FLAG_COMPRESSED):
            raise CorruptionError(f"entry payload received from a peer has invalid flags {flags:#x}")
        if flags & FLAG_DICT:
            if len(mv) < off + 8:
                raise CorruptionError("entry payload received from a peer is truncated")
            (dict_id,) = _U32.unpack_from(mv, off)
            off += 4
        (crc,) = _U32.unpack_from(mv, off)
        stored = bytes(mv[off + 4 :])
        if zlib.crc32(stored, zlib.crc32(mv[:off])) != crc:  # before trusting the length
            raise CorruptionError("checksum mismatch in an entry payload received from a peer")
        try:
            data = self.decompress_payload(flags, dict_id, stored, length)
        except (zstd.ZstdError, ValueError) as e:
            raise CorruptionError(f"entry payload received from a peer cannot be decoded ({e})") from None
        if self._cache_entries > 0:
            with self._cache_lock:
                self._wire[id(data)] = (data, flags, dict_id, stored)
                self._wire_order.append(id(data))
                self._wire_bytes += len(data) + len(stored)
                while self._wire_order and (
                    len(self._wire) > self._cache_entries or self._wire_bytes > self._cache_bytes
                ):
                    self._wire_forget(self._wire_order.popleft())
        return data

    def _wire_forget(self, key: int) -> None:
        """Caller holds `_cache_lock`."""
        gone = self._wire.pop(key, None)
        if gone is not None:
            self._wire_bytes -= len(gone[0]) + len(gone[3])

    def pack_entries(self, entries: Sequence[LogEntry]) -> list[bytes]:
        """`pack_entry` for a batch (one cache update for all of them)."""
        cache = self._cache
        out: list[bytes] = []
        fresh: list[tuple[LogEntry, bytes]] = []
        for e in entries:
            hit = cache.get((e.index, e.term))  # one dict lookup: atomic under the GIL
            if hit is not None and (hit[0] is e or hit[0] == e):
                out.append(hit[1])
            else:
                record = self._encode(e)
                out.append(record)
                fresh.append((e, record))
        if fresh:
            self._cache_put(fresh)
        return out

    def _encode(self, entry: LogEntry) -> bytes:
        if not 0 <= entry.term <= _MAX_TERM:
            raise ValueError(f"term {entry.term} does not fit in 64 bits")
        data = entry.data if type(entry.data) is bytes else bytes(entry.data)
        n = len(data)
        if n >= 1 << 32:
            raise ValueError(f"entry {entry.index} payload is {n} bytes, the limit is 4 GiB")
        received = self._wire.get(id(data)) if self._wire else None
        if received is not None and received[0] is data:  # from unpack_payload: as the leader sent it
            flags, dict_id, stored = received[1], received[2], received[3]
            with self._cache_lock:  # used once: from now on the record cache has it
                self._wire_forget(id(data))
        elif n <= self.threshold:
            flags, dict_id, stored = 0, 0, data
        elif entry.type == EntryType.DICTIONARY:  # decoded to learn a dictionary: never needs one
            flags, dict_id, stored = self.compress_plain(data)
        else:
            flags, dict_id, stored = self.compress_payload(data)
        # == entry.checksum(), computed with one struct call (pinned by the codec tests)
        crc = zlib.crc32(data, zlib.crc32(_CRC_HEAD.pack(entry.index, entry.term, entry.type)))
        head = _HEAD.pack(FORMAT_VERSION, entry.type, flags, entry.term, entry.timestamp, n, crc)
        if flags & FLAG_DICT:
            head += _U32.pack(dict_id)
        return b"".join((head, _U32.pack(zlib.crc32(stored, zlib.crc32(head))), stored))

    def read_header(self, index: int, record: bytes, *, path: str | None = None) -> RecordHeader:
        """Parse and CRC-check a record's header (and stored payload); no decompression."""
        mv = memoryview(record)
        if len(mv) < _HEAD.size + 4:
            raise CorruptionError(
                f"log entry {index} is truncated ({len(mv)} bytes)", path=path, index=index
            )
        version, etype, flags, term, ts, length, crc = _HEAD.unpack_from(mv, 0)
        if version != FORMAT_VERSION:
            raise CorruptionError(
                f"log entry {index} has unknown record format version {version}", path=path, index=index
            )
        off = _HEAD.size
        dict_id = 0
        if flags & FLAG_DICT:
            if len(mv) < off + 8:
                raise CorruptionError(f"log entry {index} is truncated", path=path, index=index)
            (dict_id,) = _U32.unpack_from(mv, off)
            off += 4
        (rcrc,) = _U32.unpack_from(mv, off)
        if zlib.crc32(mv[off + 4 :], zlib.crc32(mv[:off])) != rcrc:
            raise CorruptionError(
                f"checksum mismatch in log entry {index} (record CRC)", path=path, index=index
            )
        if flags & ~_KNOWN_FLAGS or etype not in _ENTRY_TYPES or (flags & FLAG_DICT and not flags & FLAG_COMPRESSED):
            raise CorruptionError(
                f"log entry {index} has an invalid header (type {etype}, flags {flags:#x})",
                path=path,
                index=index,
            )
        return RecordHeader(etype, flags, term, ts, length, crc, dict_id, off + 4)

    def unpack_entry(self, index: int, record: bytes, *, path: str | None = None) -> LogEntry:
        """Decode and verify a record stored at `index`. Raises CorruptionError, never lies."""
        record = bytes(record)
        hit = self._cache_get((index, self._peek_term(record)))
        if hit is not None and hit[1] == record:
            return hit[0]
        entry = self._decode(index, record, path=path)
        self._cache_put(((entry, record),))
        return entry

    def _decode(self, index: int, record: bytes, *, path: str | None) -> LogEntry:
        h = self.read_header(index, record, path=path)
        try:
            data = self.decompress_payload(h.flags, h.dict_id, record[h.offset :], h.length)
        except (zstd.ZstdError, ValueError) as e:
            raise CorruptionError(
                f"log entry {index} payload cannot be decoded ({e})", path=path, index=index
            ) from None
        entry = LogEntry(LogIndex(index), Term(h.term), EntryType(h.type), data, h.timestamp)
        if entry.checksum() != h.crc:
            raise CorruptionError(
                f"checksum mismatch in log entry {index} (entry CRC)", path=path, index=index
            )
        return entry

    def record_term(self, index: int, record: bytes, *, path: str | None = None) -> Term:
        """The term of a stored record, CRC-checked but not decompressed."""
        return Term(self.read_header(index, record, path=path).term)

    def repack(self, index: int, record: bytes) -> bytes:
        """Re-encode a record with this codec's settings (e.g. without a dictionary)."""
        return self._encode(self._decode(index, record, path=None))

    @staticmethod
    def _peek_term(record: bytes) -> int:
        if len(record) < _HEAD.size:
            return -1
        return int(struct.unpack_from(">Q", record, 3)[0])

    # --- the record cache ------------------------------------------------------------------------
    def _cache_get(self, key: tuple[int, int]) -> tuple[LogEntry, bytes] | None:
        return self._cache.get(key)  # one dict lookup: atomic under the GIL, no lock needed

    def _cache_put(self, pairs: Iterable[tuple[LogEntry, bytes]]) -> None:
        if self._cache_entries <= 0:
            return
        cache, order = self._cache, self._cache_order
        with self._cache_lock:
            for entry, record in pairs:
                key = (entry.index, entry.term)
                old = cache.pop(key, None)
                if old is not None:
                    self._cached_bytes -= len(old[1]) + len(old[0].data)
                cache[key] = (entry, record)
                order.append(key)
                self._cached_bytes += len(record) + len(entry.data)
            while order and (len(cache) > self._cache_entries or self._cached_bytes > self._cache_bytes):
                gone = cache.pop(order.popleft(), None)
                if gone is not None:
                    self._cached_bytes -= len(gone[1]) + len(gone[0].data)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._cache_order.clear()
            self._wire.clear()
            self._wire_order.clear()
            self._wire_bytes = 0
            self._cached_bytes = 0


def train_dictionary(samples: Iterable[bytes], size: int = 16 << 10, *, dict_id: int = 0) -> bytes:
    """Train a zstd dictionary of about `size` bytes on sample payloads; returns its bytes
    (`dict_id` 0: zstd derives the id from the contents)."""
    sample_list: Sequence[bytes] = [bytes(s) for s in samples]
    if len(sample_list) < 8:
        raise ValueError("need at least 8 samples to train a zstd dictionary")
    d = zstd.train_dictionary(size, list(sample_list), dict_id=dict_id)
    return bytes(d.as_bytes())


def dictionary_id(dict_bytes: bytes) -> int:
    """The id of a trained zstd dictionary (ValueError if the bytes are not one)."""
    raw = bytes(dict_bytes)
    if len(raw) < 8 or raw[:4] != _DICT_MAGIC:
        raise ValueError("not a trained zstd dictionary (bad magic)")
    dict_id = int(zstd.ZstdCompressionDict(raw).dict_id())
    if dict_id == 0:
        raise ValueError("not a trained zstd dictionary (dictionary id 0)")
    return dict_id


_DICT_ENTRY_VERSION = 1


def encode_dictionary_entry(dict_bytes: bytes) -> bytes:
    """The payload of a DICTIONARY log entry: a version byte, then the dictionary."""
    dictionary_id(dict_bytes)  # only real dictionaries go into the log
    return bytes([_DICT_ENTRY_VERSION]) + bytes(dict_bytes)


def decode_dictionary_entry(payload: bytes) -> tuple[int, bytes]:
    """(dictionary id, dictionary bytes) of a DICTIONARY entry's payload; ValueError if
    it is not one."""
    raw = bytes(payload)
    if not raw or raw[0] != _DICT_ENTRY_VERSION:
        raise ValueError("not a DICTIONARY entry payload (unknown version)")
    return dictionary_id(raw[1:]), raw[1:]


_default_codec = Codec()


def default_codec() -> Codec:
    """The process-wide codec used by the module-level functions and by stores by default."""
    return _default_codec


def set_default_codec(codec: Codec) -> None:
    global _default_codec
    _default_codec = codec


def pack_entry(entry: LogEntry) -> bytes:
    """The stored/wire record of `entry` (index not included). See the module docstring."""
    return _default_codec.pack_entry(entry)


def unpack_entry(index: int, record: bytes, *, path: str | None = None) -> LogEntry:
    """Decode a record received or stored at `index`, verifying both checksums."""
    return _default_codec.unpack_entry(index, record, path=path)


def pack_payload(entry: LogEntry) -> bytes:
    """The wire form of an entry's payload (a transport's `PayloadPacker`); see the docstring."""
    return _default_codec.pack_payload(entry)


def unpack_payload(payload: bytes) -> bytes:
    """The payload bytes from their wire form (a transport's `PayloadUnpacker`)."""
    return _default_codec.unpack_payload(payload)


def record_term(index: int, record: bytes, *, path: str | None = None) -> Term:
    return _default_codec.record_term(index, record, path=path)
