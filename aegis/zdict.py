"""zstd dictionaries shipped through the log: small values stored at about a third of their size.

Theory of operation
-------------------
A zstd dictionary trained on a node's own values shrinks small JSON-like values to about a
quarter (bench/disk_footprint.py), but a record compressed with one can only be read by a
node that holds the same dictionary. So the dictionary is replicated state:

1. Every node samples what its state flushes write (`Sampler`: a bounded reservoir of
   recent small values, filled in the flush's worker thread, never on the event loop).
2. The leader, once enough values were written (`train_after`), trains a dictionary in a
   worker thread, checks on held-out samples that it pays, and proposes it as ONE
   ``DICTIONARY`` log entry (`storage.codec.encode_dictionary_entry`).
3. Every node stores the dictionary when it *appends* that entry (storage.lmdb_store: in
   the same transaction, so a follower can decode the records that use it as soon as it has
   acknowledged the entry), and starts compressing with it (log records it encodes itself,
   state values, the feed's history) only once it has *applied* the entry, i.e. once it is
   committed. A committed entry is in every future leader's log, so every record compressed
   with a dictionary names one that every leader holds.
4. A leader ships a record compressed with dictionary D to a follower only if the
   follower's match index is at or past D's entry (it has persisted it, so it holds D; a
   snapshot carries the dictionaries up to its index, so an install counts too); otherwise
   `Codec.pack_payload` re-encodes the payload without a dictionary. A node never receives
   a record it cannot decode.

Truncation: an uncommitted DICTIONARY entry that a new leader overwrites takes its
dictionary with it (no record can use it). Restart: the store registers every dictionary
before it reads a record, and the newest one known to be committed is used again at once
(`LmdbStore.activate_committed`); replayed entries re-apply the rest. Snapshots
(InstallSnapshot, `aegis snapshot save|restore`) carry the dictionaries. Re-training: after
`retrain_after` more values the leader trains a candidate and proposes it only if it beats
the current dictionary by 10% on recent values; old dictionaries stay registered (records
use them), at most `max_dictionaries`.

``--zstd-dict off``: the node neither trains nor compresses with a dictionary (it still
stores the dictionaries others propose, to decode what they send).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Sequence

from .log import EntryType, LogEntry

if TYPE_CHECKING:
    from storage import LmdbStore

    from .raft import RaftNode

__all__ = ["MODES", "ZDictConfig", "Sampler", "ZDict", "evaluate", "train", "leader_loop"]

log = logging.getLogger("aegis.zdict")

MODES = ("off", "auto")
MIN_SAMPLE = 48  # shorter values are stored raw anyway (storage.codec.VALUE_THRESHOLD)
MAX_SAMPLE = 4096  # longer values are not "small"; a dictionary matters little to them
MIN_GAIN = 0.10  # a first dictionary must save this much; a new one beat the current by this
RETRY_S = 30.0  # a proposal not applied by then is forgotten (lost to a leader change)


@dataclass(frozen=True, slots=True)
class ZDictConfig:
    mode: str = "auto"
    train_after: int = 5_000  # values written (sampled) before the first dictionary
    retrain_after: int = 500_000  # ... and between two trials of a new one
    size: int = 32 << 10  # bytes of a dictionary
    max_dictionaries: int = 8
    check_s: float = 0.25  # how often the leader looks

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--zstd-dict must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.train_after < 64:
            raise ValueError("the dictionary needs at least 64 values to train on")
        if not 1 << 10 <= self.size <= 1 << 20:
            raise ValueError("a zstd dictionary must be between 1 KiB and 1 MiB")


class Sampler:
    """A bounded reservoir of recent small values (called from the flush's worker thread
    with the records it writes). `seen` counts the eligible values, by estimate: one record
    in `stride` is looked at."""

    def __init__(self, capacity: int = 8192, stride: int = 2) -> None:
        self._buf: deque[bytes] = deque(maxlen=capacity)
        self._stride = stride
        self._lock = threading.Lock()
        self.seen = 0

    def __call__(self, records: Iterable[Any]) -> None:
        n = 0
        picked = []
        for rec in itertools.islice(records, 0, None, self._stride):
            if rec is not None and MIN_SAMPLE <= len(rec[0]) <= MAX_SAMPLE:
                picked.append(rec[0])
                n += 1
        with self._lock:
            self._buf.extend(picked)
            self.seen += n * self._stride

    def samples(self) -> list[bytes]:
        with self._lock:
            return list(self._buf)


def train(samples: Sequence[bytes], size: int, avoid: Iterable[int] = ()) -> bytes | None:
    """A dictionary trained on most of `samples` (its id none of `avoid`), or None when it
    does not save `MIN_GAIN` on the rest compared to storing them raw."""
    from storage import Codec, dictionary_id, train_dictionary

    if len(samples) < 64:
        return None
    holdout = samples[::10]
    body = [s for i, s in enumerate(samples) if i % 10]
    taken = set(avoid)
    dict_id = 0
    for attempt in range(4):
        try:
            raw = train_dictionary(body, size, dict_id=dict_id)
        except Exception as exc:  # noqa: BLE001 - zstd's trainer says "Src size is incorrect" and such
            log.info("could not train a zstd dictionary: %s", exc)
            return None
        if dictionary_id(raw) not in taken:
            break
        dict_id = 32768 + (hash((attempt, len(raw))) & 0x3FFF_FFFF)  # a collision: pick one
    else:
        return None
    raw_total = sum(len(s) for s in holdout)
    codec = Codec()
    codec.add_dictionary(raw, activate=True)
    if evaluate(codec, holdout) > raw_total * (1 - MIN_GAIN):
        return None
    return raw


def evaluate(codec: Any, values: Sequence[bytes]) -> int:
    """Bytes `values` take stored by a codec (with its active dictionary)."""
    total = 0
    for v in values:
        packed = codec.compress_value(v)
        total += len(v) if packed is None else len(packed[1]) + 8
    return total


class ZDict:
    """One node's dictionaries: activation on apply, training and proposing on the leader,
    what a peer may be sent, the INFO figures."""

    def __init__(self, cfg: ZDictConfig, store: LmdbStore, applied: int) -> None:
        self.cfg = cfg
        self.store = store
        self.codec = store.codec
        self.sampler: Sampler | None = Sampler() if cfg.mode == "auto" else None
        store.state().sampler = self.sampler
        self._proposed: tuple[float, int] | None = None  # (when, dictionary id) in flight
        self._last_try = 0  # sampler.seen when the leader last trained (or activated one)
        self.trained = 0
        if cfg.mode == "auto":
            store.activate_committed(applied)
        else:
            self.codec.use_dictionary(None)

    # --- on every node ---------------------------------------------------------------------
    def applied(self, entries: Sequence[LogEntry]) -> None:
        """Committed entries were applied: a DICTIONARY among them is used from now on."""
        for e in entries:
            if e.type == EntryType.DICTIONARY:
                self._activate(e)

    def _activate(self, e: LogEntry) -> None:
        from storage import decode_dictionary_entry

        try:
            dict_id, _ = decode_dictionary_entry(e.data)
        except ValueError:
            log.warning("log entry %d is a DICTIONARY entry without a dictionary; ignored", e.index)
            return
        if self._proposed is not None and self._proposed[1] == dict_id:
            self._proposed = None
        if self.sampler is not None:
            self._last_try = self.sampler.seen
        if self.cfg.mode != "auto" or not self.codec.has_dictionary(dict_id):
            return
        current = self.codec.active_dictionary
        cur_index = self.store.dictionary_index(current) if current is not None else None
        if cur_index is None or cur_index <= e.index:
            self.codec.use_dictionary(dict_id)
            log.info("compressing with zstd dictionary %d (log entry %d)", dict_id, e.index)

    def installed(self, index: int) -> None:
        """A snapshot at `index` was installed: use the newest dictionary it carried."""
        if self.cfg.mode == "auto":
            dict_id = self.store.activate_committed(index)
            if dict_id is not None:
                log.info("compressing with zstd dictionary %d (from the snapshot at index %d)", dict_id, index)

    def peer_has(self, raft: RaftNode, pid: str, dict_id: int) -> bool:
        """Whether `pid` is known to hold dictionary `dict_id`: it has persisted its entry
        (or installed a snapshot past it). Only a leader knows; anyone else says no."""
        index = self.store.dictionary_index(dict_id)
        if index is None or not raft.is_leader():
            return False
        pr = raft.progress.get(pid)
        return pr is not None and pr.match_index >= index

    def packer_for(self, raft: RaftNode, pid: str) -> Callable[[LogEntry], bytes]:
        """The payload packer for messages to `pid` (the transport's `PayloadPacker`)."""
        codec = self.codec

        def ok(dict_id: int) -> bool:
            return self.peer_has(raft, pid, dict_id)

        def pack(e: LogEntry) -> bytes:
            return codec.pack_payload(e, ok)

        return pack

    # --- on the leader ---------------------------------------------------------------------
    def wants_training(self, now: float) -> bool:
        s = self.sampler
        if s is None:
            return False
        if self._proposed is not None:
            if now - self._proposed[0] < RETRY_S:
                return False
            self._proposed = None
        if self.codec.active_dictionary is None:
            return s.seen - self._last_try >= self.cfg.train_after
        if len(self.codec.dictionary_ids()) >= self.cfg.max_dictionaries:
            return False
        return s.seen - self._last_try >= self.cfg.retrain_after

    def candidate(self) -> bytes | None:
        """Train a dictionary on the samples (in a worker thread): None if it would not pay,
        or (re-training) would not beat the current one by `MIN_GAIN` on recent values."""
        assert self.sampler is not None
        samples = self.sampler.samples()
        raw = train(samples, self.cfg.size, self.codec.dictionary_ids())
        self.trained += 1
        if raw is None or self.codec.active_dictionary is None:
            return raw
        from storage import Codec

        recent = samples[-2000:]
        now = evaluate(self.codec, recent)
        trial = Codec()
        trial.add_dictionary(raw, activate=True)
        return raw if evaluate(trial, recent) < now * (1 - MIN_GAIN) else None

    def tried(self, dict_id: int | None, now: float) -> None:
        """The leader trained (and proposed `dict_id`, unless None)."""
        if self.sampler is not None:
            self._last_try = self.sampler.seen
        self._proposed = (now, dict_id) if dict_id is not None else None

    # --- status ------------------------------------------------------------------------------
    def info(self) -> dict[str, object]:
        active = self.codec.active_dictionary
        index, raw = (self.store.dictionary(active) if active is not None else None) or (0, b"")
        return {
            "zstd_dict_mode": self.cfg.mode,
            "zstd_dict_id": active or 0,
            "zstd_dict_bytes": len(raw),
            "zstd_dict_index": index,
            "zstd_dicts": len(self.codec.dictionary_ids()),
            "zstd_dict_samples": self.sampler.seen if self.sampler is not None else 0,
        }


async def leader_loop(zd: ZDict, raft: RaftNode, propose: Callable[[bytes], Awaitable[object]]) -> None:
    """On the leader, now and then: train a dictionary when there is enough data and
    propose it (`propose(payload)` puts a DICTIONARY entry through the Raft task)."""
    import trio

    from storage import decode_dictionary_entry, encode_dictionary_entry

    while True:
        await trio.sleep(zd.cfg.check_s)
        if not raft.is_leader() or not zd.wants_training(time.monotonic()):
            continue
        raw = await trio.to_thread.run_sync(zd.candidate)
        if raw is None or not raft.is_leader():
            zd.tried(None, time.monotonic())
            continue
        payload = encode_dictionary_entry(raw)
        dict_id = decode_dictionary_entry(payload)[0]
        zd.tried(dict_id, time.monotonic())
        log.info("proposing zstd dictionary %d (%d bytes, trained on %d values)", dict_id, len(raw),
                 len(zd.sampler.samples()) if zd.sampler is not None else 0)
        await propose(payload)
