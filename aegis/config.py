"""What a node is told at start: `aegis serve`'s flags, as one dataclass (see aegis.cli)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import commands as C
from .tls import TlsConfig


@dataclass
class ServerConfig:
    node_id: str
    host: str = "127.0.0.1"
    port: int = 7001
    data_dir: str = "data/n1"
    peers: dict[str, str] = field(default_factory=dict)  # id -> "host:port", may include self
    cluster: str = "aegis"
    token: str | None = None  # clients must AUTH with it; the peer secret too if `secret` is None
    secret: bytes | None = None  # the cluster secret peers prove by HMAC (aegis.peerauth)
    tls: TlsConfig | None = None  # TLS on the port, mutual TLS to and from peers (aegis.tls)
    tick_ms: float = 50.0
    election_ticks: tuple[int, int] = (10, 20)
    heartbeat_ticks: int = 2
    snapshot_threshold: int = 10_000
    request_timeout: float = 5.0
    max_clients: int = 10_000
    client_buffer_bytes: int = 256 << 20  # unfinished client requests, node-wide (--client-buffer-mb)
    client_preauth_bytes: int = 64 << 10  # ... and per connection before AUTH (with a token)
    first_byte_timeout: float = 60.0  # a connection that sends nothing this long is closed
    max_map_bytes: int | None = None  # cap of each LMDB map (--max-map-mb; None: 1 TiB)
    disk_reserve_bytes: int = 64 << 20  # writes are refused while the file system has less free
    fsync: bool = True
    limits: C.CommandLimits = C.DEFAULT_LIMITS
    max_batch: int = 4096
    max_entry_bytes: int = 1 << 20  # a batch of writes becomes entries of at most this size (one if bigger)
    # Applied state is written to disk at least this often, or once this many keys changed.
    # Each flush rewrites every B-tree page its keys land on: with random keys over 1M a
    # 0.5 s flush (about 12k keys) rewrote about 0.8 pages (3.2 KB) per write, a 2 s one
    # about 1 KB (bench/compare.py's SET -P16: 63 -> 54 µs of node CPU per write). The log
    # is the durable record meanwhile; the cost is a longer replay after a crash. The keys
    # waiting are Python objects: a bulk load at 30k writes/s reaches the key limit first,
    # and 100k keys held 155 MB RssAnon per node after bench/load_bench.py, 50k 121-134 MB,
    # 25k 103-117 MB (93-98 MB with the heap trimmed after each big flush: aegis.driver),
    # at the same load time.
    state_flush_s: float = 2.0
    state_flush_keys: int = 25_000
    # A Ready whose entries add up to at most this many bytes is written and fsynced on the
    # trio thread itself: a hop to a worker thread and back costs two wake-ups (about as much
    # as the fsync on a fast disk). Only where nothing must go out during the sync: a
    # follower's reply waits for it anyway, while a leader's AppendEntries leave during its
    # own sync. Bigger writes, snapshot installs and a log write lock another thread holds go
    # to a worker, so the loop keeps reading the network meanwhile. 0: always a worker.
    inline_persist_bytes: int = 16 << 10
    # A leader tells followers a new commit index with the next entries it sends them, or
    # after this long without any (an empty AppendEntries each). One client writing in a
    # loop then costs each follower one AppendEntries per write instead of two. Followers
    # apply that much later, never more; a follower read is told at once. 0: at once.
    commit_notice_ms: float = 2.0
    # Incoming peer connections over plain TCP read their socket directly (aegis.fastio)
    # instead of through trio's SocketStream. False: SocketStream.
    fd_streams: bool = True
    inbox_depth: int = 100_000  # events queued for the Raft task before clients get -TRYAGAIN
    join: bool = False  # start as a new member of a running cluster (see `aegis serve --join`)
    keys_limit: int = 10_000  # KEYS refuses to examine more keys than this (SCAN has no limit)
    range_limit: int = 10_000  # RANGE/PREFIX return at most this many keys in one reply
    expiry_sweep_ms: float = 100.0  # how often the leader looks for keys past their deadline
    expiry_batch: int = 1_000  # keys removed by one PURGE entry at most
    feed_history: int = 100_000  # changes kept on disk for CHANGES ... FROM (0: none; memory only)
    metrics: tuple[str, int] | None = None  # serve /metrics and /health here (aegis serve --metrics)
    health_max_lag: int = 100  # /health: entries the applied index may trail the commit index
    zstd_dict: str = "auto"  # zstd dictionaries shipped through the log (aegis.zdict): auto | off
    zstd_dict_train_after: int = 5_000  # values written before the leader trains the first one
