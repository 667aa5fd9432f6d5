"""Aegis persistence: the Raft log, hard state, membership and snapshots in LMDB, zstd-compressed.

The node driver uses `LmdbStore` (an `aegis.log.LogStore`); the transport uses the record
codec (`pack_entry`/`unpack_entry`) so entries travel in their stored form; the CLI uses the
snapshot file functions for backup and restore. See DESIGN.md §5 and §6.
"""

from .codec import (
    Codec,
    default_codec,
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
    "StorageError",
    "CorruptionError",
    "WrongNodeError",
    "DiskFullError",
    "DataDirInUseError",
    "SnapshotError",
    "SnapshotSupersededError",
    "LmdbStore",
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
