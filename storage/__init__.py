"""Aegis persistence: the Raft log, hard state, membership and snapshots in LMDB, zstd-compressed.

DESIGN.md §5 and §6. What the rest of the node uses:

* the driver: ``store = LmdbStore.open(data_dir, node_id=..., cluster=...)`` (an
  `aegis.log.LogStore`); ``store.write_batch(truncate_from, entries, hard_state, membership)``
  once per Ready (one transaction, one fsync); ``store.begin_snapshot(meta)`` ->
  `SnapshotWriter` (``write``/``commit``/``cancel``; commit compacts the log atomically);
  ``store.open_snapshot()`` -> `SnapshotReader` (iterate for verified bytes);
  ``store.snapshot_info()``; ``store.install_snapshot_file(path)`` /
  ``store.export_snapshot(path)``; ``store.stats()`` for INFO; ``store.close()``.
* the transport: ``pack_payload(entry)`` / ``unpack_payload(payload)`` ship entry payloads
  in their stored, compressed form; ``SnapshotReader.raw_chunks()`` and
  ``SnapshotWriter.write_compressed(chunk)`` do the same for snapshots.
* the CLI: ``write_snapshot_file``, ``read_snapshot_file``, ``read_snapshot_file_info``.

Errors are `StorageError`s: `CorruptionError` and `WrongNodeError` mean "refuse to serve",
`DiskFullError` means "stop acknowledging writes" (nothing was written, nothing corrupted).
"""

from .codec import (
    Codec,
    decode_dictionary_entry,
    default_codec,
    dictionary_id,
    encode_dictionary_entry,
    pack_entry,
    pack_payload,
    record_term,
    set_default_codec,
    train_dictionary,
    unpack_entry,
    unpack_payload,
)
from .errors import (
    CorruptionError,
    DataDirInUseError,
    DiskFullError,
    SnapshotError,
    SnapshotSupersededError,
    StorageError,
    WrongNodeError,
)
from .kv import KVExport, LmdbKV
from .lmdb_store import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, LmdbStore
from .snapshot import (
    SnapshotFileReader,
    SnapshotInfo,
    SnapshotReader,
    SnapshotWriter,
    read_snapshot_file,
    read_snapshot_file_info,
    write_snapshot_file,
)

__all__ = [
    "Codec",
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
    "StorageError",
    "CorruptionError",
    "WrongNodeError",
    "DiskFullError",
    "DataDirInUseError",
    "SnapshotError",
    "SnapshotSupersededError",
    "LmdbStore",
    "LmdbKV",
    "KVExport",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "SnapshotInfo",
    "SnapshotWriter",
    "SnapshotReader",
    "SnapshotFileReader",
    "write_snapshot_file",
    "read_snapshot_file",
    "read_snapshot_file_info",
]
