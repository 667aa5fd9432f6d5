"""The trio node: one TCP port for clients and peers, driving the sans-IO Raft core.

Theory of operation
-------------------
`Node` wires the parts of a running node together and serves clients; each other part
has its own home and reaches the rest only through what it is handed:

* `aegis.driver.RaftDriver` — the one task that owns the `RaftNode`, the `StateMachine`
  and the store's write side: typed inbox events, the Ready cycle with group commit, the
  waiters every request awaits, the background state flush and log compaction;
* `aegis.forwarding.Forwarder` — request routing: a follower forwards what only a leader
  may run, in batches, and the leader serves what followers forwarded;
* `aegis.peer_service.PeerService` — peer connections in (handshake, frames, snapshot
  transfers received and verified) and snapshots streamed out;
* `aegis.backup_service.BackupService` — SNAPSHOT CREATE/READ/RELEASE for `aegis snapshot save`;
* `aegis.status` — INFO, CLUSTER INFO/NODES and MEMBER LIST text;
* `aegis.peers.ConnectionPool` — outgoing peer links.

Clients speak RESP2/RESP3 (aegis.protocol); peers open a connection with `PEER_MAGIC` and
then length-prefixed frames (aegis.transport codec; never pickle). A connection's first
bytes say which it is. A node reaches its peers only through the addresses in its
`--peers` (or the membership), and recognises them by node id and cluster name, never by
source address.

A client connection parses every command it has (a pipeline), starts each in order
(`_prepare`: submission order is the apply order) and awaits their replies in order. A
read and a write of one pipeline never overlap: a read sees the writes before it. Plain
SET and GET take a fast path with the same checks and replies. Writes go through the log
and are acknowledged only once committed and applied; reads use ReadIndex [§6.4] and are
served locally once applied; a follower forwards writes. With no leader a client gets
`-NOLEADER` (after one election timeout); when the outcome is unknown, `-TIMEOUT`.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Final

import msgpack
import trio

from . import commands as C
from . import status
from .backup_service import BackupService
from .budget import Account, ByteBudget
from .cluster import Cluster, ClusterConfig
from .config import ServerConfig
from .driver import (
    TICK,
    DictionaryEntry,
    PeerLost,
    RaftDriver,
    Reconfigure,
    Transfer,
    Waiter,
)
from .fastio import FdStream
from .feed import ChangeFeed, Compacted
from .forwarding import TXN_FORWARD, Forwarder, parse_forwarded, unwrap_forwarded
from .log import LogIndex, Membership
from .logs import event
from .messages import ConfigChange, ConfigChangeType, RaftMessage
from .metrics import Histogram, NodeMetrics, node_health, new_registry, render, serve_http
from .node import NodeId, NodeInfo, NodeStatus
from .peer_service import PeerService
from .peerauth import PeerAuth
from .peers import FRAME_MSG, HANDSHAKE_TIMEOUT, PEER_MAGIC, ConnectionPool, safe_send
from .protocol import OK, Reply, RespParser, constant_reply, encode, encode_array, encode_bulk, encode_error, encode_integer, encode_simple
from .raft import RaftConfig, RaftNode, Ready
from .space import SpaceGuard
from .state import Command, StateMachine
from .transport import Handshake
from .zdict import ZDict, leader_loop as zdict_leader_loop

log = logging.getLogger("aegis.server")
events = logging.getLogger("aegis.events")

LINGER_S: Final = 10.0  # how long a departed member stays reachable

OVERLOADED = encode_error("TRYAGAIN the node is overloaded; nothing was done")


@dataclass(slots=True)
class _Session:
    """One client connection's state."""

    authed: bool
    resp3: bool = False
    multi: list[Command] | None = None  # the queued commands after MULTI, until EXEC/DISCARD
    dirty: bool = False  # a command failed to queue: EXEC aborts
    watches: dict[str, int] = field(default_factory=dict)  # WATCHed key -> revision seen
    input: Account | None = None  # its share of the node's budget for unfinished requests
    # The read point the fast-path GETs of one run share: all of them arrived before it was
    # asked for, so one ReadIndex serves them all. A run ends when its replies are awaited
    # (before a write, a stream, or the next chunk of input), and that resolves the read
    # point: a GET that finds it resolved asks for a new one.
    read_point: Waiter | None = None


class Node:
    """A running Aegis node. `await node.serve(task_status=...)` runs it until cancelled."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.port = cfg.port
        self.started_at = time.time()
        self._peer_addrs: dict[str, str] = {}  # the members' addresses when last looked at
        self._lingering: dict[str, tuple[float, str]] = {}  # departed member -> (until, address)
        self.peer_auth = PeerAuth(cfg.secret if cfg.secret is not None else (cfg.token or "").encode())
        self._tls_server = cfg.tls.server_context() if cfg.tls is not None else None
        self.pool = ConnectionPool(
            Handshake(node_id=cfg.node_id, cluster=cfg.cluster),
            self.addresses,
            ping_interval=cfg.tick_ms * cfg.heartbeat_ticks / 1000,
            pack_payload=_pack_payload,
            on_unreachable=self._peer_unreachable,
            stream_snapshot=lambda pid, stream, msg: self.peers.send_snapshot(pid, stream, msg),
            auth=self.peer_auth,
            ssl_context=cfg.tls.peer_context() if cfg.tls is not None else None,
            packer_for=lambda pid: self.zdict.packer_for(self.raft, pid),
        )
        self.clients_connected = 0
        self._unidentified = 0  # connections that have sent nothing yet (count for --max-clients)
        self.client_input = ByteBudget(cfg.client_buffer_bytes, "unfinished client requests")
        self.stats = {"total_writes": 0, "total_reads": 0, "total_commands": 0, "forwarded": 0,
                      "batches": 0, "entries_persisted": 0, "snapshots_taken": 0, "snapshots_installed": 0, "expired_keys": 0,
                      "feed_subscribers": 0, "pubsub_clients": 0, "idle_closed": 0}
        self._nursery: trio.Nursery | None = None
        self.metrics = NodeMetrics(cfg.node_id)  # see aegis.metrics: cheap counters, read at scrape time
        self.metrics_port: int | None = None
        self.store: Any = None
        self.raft: RaftNode
        self.sm = StateMachine()
        self.cluster: Cluster
        self.feed: ChangeFeed
        self.zdict: ZDict
        self.driver: RaftDriver  # the Raft task (aegis.driver), made by _open
        self.forwarder: Forwarder  # request routing to and from the leader (aegis.forwarding)
        self.peers: PeerService  # peer connections in, snapshots out (aegis.peer_service)
        self.backups: BackupService  # SNAPSHOT CREATE/READ/RELEASE (aegis.backup_service)

    # ------------------------------------------------------------------ startup
    def _open(self) -> None:
        from storage import Codec, LmdbStore

        from .zdict import ZDict, ZDictConfig

        cfg = self.cfg
        zcfg = ZDictConfig(mode=cfg.zstd_dict, train_after=cfg.zstd_dict_train_after)
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(cfg.data_dir).glob("incoming-*.snap"):  # transfers a crash cut short
            stale.unlink(missing_ok=True)
        # The entry cache answers replication reads of recent entries; 8 MiB of batched
        # entries is tens of thousands of writes, and keeps a restart's cache load short.
        # A codec of its own: the zstd dictionaries it holds and uses are this node's.
        from storage import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE

        cap = cfg.max_map_bytes if cfg.max_map_bytes is not None else DEFAULT_MAX_MAP_SIZE
        self.store = LmdbStore.open(cfg.data_dir, node_id=cfg.node_id, cluster=cfg.cluster, sync=cfg.fsync,
                                    cache_bytes=8 << 20, codec=Codec(), map_size=min(cap, DEFAULT_MAP_SIZE),
                                    max_map_size=cap)
        hs, membership = self.store.initial_state()
        if not membership.members and self.store.snapshot().index == 0 and self.store.last_index() == 0:
            addrs = dict(cfg.peers)
            addrs.setdefault(cfg.node_id, f"{cfg.host}:{self.port}")
            if cfg.join:
                # A new member: no vote, no election, until the leader's log (whose MEMBER ADD
                # entry carries the whole membership) tells it who the cluster is.
                initial = Membership.of([], [cfg.node_id], addresses=addrs)
            else:
                initial = Membership.of(sorted(set(cfg.peers) | {cfg.node_id}), addresses=addrs)
            self.store.write_batch(membership=initial)
        # The state lives in LMDB: nothing to load, whatever its size. Entries after the
        # stored applied index are applied again as the log's commit index is relearned.
        self.kv = self.store.state()
        self.sm = StateMachine(backend=self.kv)
        # The state's clock is the time of its last applied entry (the log's time only moves
        # forward): from the log when it still holds that entry. (After a snapshot install
        # with nothing applied since, it does not: the clock then waits for the next entry.)
        applied = self.sm.last_applied
        if self.store.first_index() <= applied <= self.store.last_index():
            last = self.store.entries(LogIndex(applied), LogIndex(applied + 1))
            if last:
                self.sm.advance_clock(int(last[0].timestamp * 1000))
        # Writes are refused while less than an eighth of the map (at least 1 MiB) is free.
        self.space = SpaceGuard(self._free_bytes, max(1 << 20, cap // 8), on_change=self._space_changed)
        self.zdict = ZDict(zcfg, self.store, self.kv.applied())
        rcfg = RaftConfig(
            election_timeout_min=cfg.election_ticks[0],
            election_timeout_max=cfg.election_ticks[1],
            heartbeat_interval=cfg.heartbeat_ticks,
            snapshot_threshold=cfg.snapshot_threshold,
            # Committed entries handed out per Ready: what one apply decodes at once, and so
            # the node's memory high-water mark while it catches up.
            max_committed_bytes_per_ready=2 << 20,
            defer_commit_notices=cfg.commit_notice_ms > 0,
        )
        self.raft = RaftNode(cfg.node_id, rcfg, self.store, applied=self.kv.applied())
        local = NodeInfo(NodeId(cfg.node_id), cfg.host, self.port or 1)
        hb = cfg.tick_ms * cfg.heartbeat_ticks / 1000
        ccfg = (ClusterConfig(cfg.cluster).with_heartbeat_interval(max(hb, 0.01))
                .with_failure_timeout(max(hb * 10, cfg.tick_ms * cfg.election_ticks[1] / 1000)))
        self.cluster = Cluster(local, ccfg, clock=time.monotonic)
        self._sync_cluster_view()
        self.kv.history_keep = cfg.feed_history
        self.feed = ChangeFeed(self.sm.last_applied, self.kv.durable_applied, self.kv if cfg.feed_history else None,
                               memory_limit=min(100_000, max(cfg.feed_history, 1_000)))
        self.sm.changes = []
        self.driver = RaftDriver(cfg, self.raft, self.sm, self.store, self.kv, self.feed, self.zdict, self.space,
                                 self.metrics, self.stats, send_messages=self._send_messages,
                                 changed=self._on_membership_or_leader_change, link_lost=self._link_lost)
        self.forwarder = Forwarder(cfg.node_id, leader=lambda: self.raft.leader_id,
                                   send=lambda pid, msg: self._send_peer(pid, FRAME_MSG, msg),
                                   start=self._start_forwarded, wait=self.driver.wait, spawn=self._spawn,
                                   stats=self.stats)
        self.peers = PeerService(cfg, auth=self.peer_auth, tls=self._tls_server is not None, pool=self.pool,
                                 cluster=self.cluster, metrics=self.metrics, forwarder=self.forwarder,
                                 submit=self.driver.submit, unpack_payload=self.store.codec.unpack_payload,
                                 membership=lambda: self.raft.membership, term=lambda: self.raft.term,
                                 export_state=self.driver.export_state)
        self.backups = BackupService(cfg.data_dir, self.driver, self.metrics, OVERLOADED)
        self.backups.clear()

    def _sync_cluster_view(self) -> None:
        m = self.raft.membership
        try:
            self.cluster.sync_membership(m, self.addresses())
        except ValueError as exc:
            log.warning("membership view: %s", exc)
        self.cluster.set_leader(self.raft.leader_id if self.raft.leader_id in m.members else None)

    def addresses(self) -> dict[str, str]:
        addrs = {pid: addr for pid, (_, addr) in self._lingering.items()}
        addrs.update(self.raft.membership.address_map())
        addrs.update(self.cfg.peers)
        addrs[self.id] = f"{self.cfg.host}:{self.port}"
        return addrs

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await trio.to_thread.run_sync(self._open)  # inside: a refused data directory is closed too
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.pool.start(nursery)
                self.port = await self._listen(nursery)
                self.metrics.membership(self.raft.term, self.raft.membership)
                if self.cfg.metrics is not None:
                    self.metrics_port = await self._serve_metrics(nursery, *self.cfg.metrics)
                self.driver.start(nursery)
                nursery.start_soon(self._health_loop)
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(zdict_leader_loop, self.zdict, self.raft, self._propose_dictionary)
                self._ensure_peer_tasks()
                if self.raft.membership.voters == {self.id} and not self.raft.is_leader():
                    # A cluster of one elects itself at once: nobody else could object.
                    self.raft.campaign(pre_vote=False)
                    self.driver.submit(TICK)
                metrics = f"{self.cfg.metrics[0]}:{self.metrics_port}" if self.cfg.metrics else None
                event(events, "node_started", f"node {self.id} serving on {self.cfg.host}:{self.port} (cluster "
                      f"{self.cfg.cluster}, data {self.cfg.data_dir}, metrics {metrics or 'off'}"
                      f"{', TLS' if self._tls_server else ''})",
                      node=self.id, term=self.raft.term, listen=f"{self.cfg.host}:{self.port}",
                      cluster=self.cfg.cluster, data=self.cfg.data_dir, metrics=metrics, tls=bool(self._tls_server))
                if self.peer_auth.open:
                    log.warning("no cluster secret (--token, --secret-file or %s/cluster.secret): any process "
                                "that can reach %s:%d can act as a peer (and as a client)",
                                self.cfg.data_dir, self.cfg.host, self.port)
                task_status.started(self.port)
        finally:
            with trio.CancelScope(shield=True):
                if self.store is not None:
                    await trio.to_thread.run_sync(self.store.close)

    async def _serve_metrics(self, nursery: trio.Nursery, host: str, port: int) -> int:
        registry = new_registry(self)
        try:
            return await serve_http(nursery, host, port, lambda: render(registry), lambda: node_health(self))
        except OSError as exc:
            raise MetricsListenError(f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc}") from None

    def _free_bytes(self) -> int:
        """Bytes that can still be written: the LMDB maps' headroom, and the file system's
        free space beyond its reserve (a full file system under LMDB's write map would
        SIGBUS the process instead of failing a write)."""
        room: int = self.store.headroom()
        try:
            st = os.statvfs(self.cfg.data_dir)
        except OSError:
            return room
        return min(room, st.f_bavail * st.f_frsize - self.cfg.disk_reserve_bytes + self.space.reserve)

    def _space_changed(self, full: bool, why: str) -> None:
        if full:
            event(events, "disk_full", f"refusing writes: {why}", node=self.id, term=self.raft.term,
                  level=logging.ERROR)
        else:
            event(events, "disk_space_back", f"storage space is back: {why}", node=self.id, term=self.raft.term)

    async def _listen(self, nursery: trio.Nursery) -> int:
        listeners = await trio.open_tcp_listeners(self.cfg.port, host=self.cfg.host)
        nursery.start_soon(trio.serve_listeners, self._handle_connection, listeners)
        sock = listeners[0].socket
        port: int = sock.getsockname()[1]
        return port

    # ------------------------------------------------------------------ timers
    async def _expiry_loop(self) -> None:
        """On the leader: remove keys past their deadline through the log (PURGE entries),
        one entry in flight at a time. Reads hide such keys already; this frees them."""
        interval = self.cfg.expiry_sweep_ms / 1000
        while True:
            await trio.sleep(interval)
            if not self.raft.is_leader():
                continue
            keys = self.sm.backend.expiring(self._read_now(), self.cfg.expiry_batch)
            if not keys:
                continue
            w = Waiter()
            if self.driver.client_op(Command.op("PURGE", *keys).encode(), w):
                await self.driver.wait(w)
                self.stats["expired_keys"] += int(w.value.value) if w.error is None and w.value else 0

    async def _propose_dictionary(self, payload: bytes) -> None:
        w = Waiter()
        if self.driver.submit(DictionaryEntry(payload, w)):
            await self.driver.wait(w)

    async def _health_loop(self) -> None:
        while True:
            await trio.sleep(max(self.cfg.tick_ms / 1000, 0.05))
            for ch in self.cluster.check_status_changes():
                if ch.new is NodeStatus.DOWN:
                    h = self.cluster.health(ch.node_id)
                    event(events, "peer_down", f"peer {ch.node_id} is down (not heard from; {h.error or 'no error'})",
                          node=self.id, term=self.raft.term, level=logging.WARNING, peer=ch.node_id, error=h.error)
            if self._lingering:
                self._ensure_peer_tasks()  # let departed members go once their time is up

    # ------------------------------------------------------------------ the driver's hooks
    def _on_membership_or_leader_change(self, rd: Ready) -> None:
        self._sync_cluster_view()
        self._ensure_peer_tasks()
        if rd.membership is not None:
            self.metrics.membership(self.raft.term, self.raft.membership)
        if rd.soft_state is not None:
            self.metrics.soft_state(self.raft.term, status.role_name(self), rd.soft_state.leader_id)
            self.forwarder.leader_changed(rd.soft_state.leader_id)
            # (Reads waiting for a read point are not failed: the core asks the new leader.)

    def _link_lost(self, pid: str) -> None:
        self.forwarder.lost(pid, "the connection to the leader dropped before it answered")

    def _start_forwarded(self, wrapped: tuple[bytes, ...] | list[bytes]) -> Callable[[], Awaitable[bytes]]:
        """Start a command another node forwarded here (it is the leader): the same checks
        as a client's, and never forwarded on."""
        argv, resp3 = unwrap_forwarded(wrapped)
        return self._prepare(parse_forwarded(argv, self.cfg.limits), forwarded=True, resp3=resp3)

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    # ------------------------------------------------------------------ peers: sending
    def _ensure_peer_tasks(self) -> None:
        members = self.raft.membership.members
        now = time.monotonic()
        # A member that leaves stays reachable for a while: a leader being removed must still
        # hear the acknowledgements that commit its own removal (issue 10).
        for pid in self._peer_addrs.keys() - members - {self.id}:
            self._lingering.setdefault(pid, (now + LINGER_S, self._peer_addrs[pid]))
        for pid in [p for p, (until, _) in self._lingering.items() if p in members or until <= now]:
            del self._lingering[pid]
        self._peer_addrs = {p: a for p, a in self.raft.membership.address_map().items()}
        wanted = (set(members) | set(self.cfg.peers) | set(self._lingering)) - {self.id}
        self.pool.retain(wanted)

    def _send_messages(self, msgs: tuple[RaftMessage, ...]) -> None:
        self.metrics.sent(msgs)
        for m in msgs:
            self._send_peer(m.receiver, FRAME_MSG, m)

    def _send_peer(self, pid: str, kind: bytes, payload: Any) -> bool:
        if self.pool.send(pid, kind, payload):
            return True
        self._ensure_peer_tasks()
        return self.pool.send(pid, kind, payload)

    def _peer_unreachable(self, pid: str, reason: str) -> None:
        self.metrics.peer_lost(pid)
        try:
            self.cluster.report_error(pid, reason)
        except KeyError:
            pass
        self.driver.submit(PeerLost(pid, unreachable=True))

    # ------------------------------------------------------------------ connections
    async def _handle_connection(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if self._tls_server is not None:
            tls = await self._tls_handshake(tcp)
            if tls is None:
                return
            stream = tls
        # A connection that has said nothing yet holds a slot of --max-clients (it may be a
        # client), for --first-byte-timeout at most. Past the limit it gets a second to show
        # it is a peer (peers must always get through a flood of clients), else it is refused.
        over = self._unidentified + self.clients_connected >= self.cfg.max_clients
        wait = min(1.0, self.cfg.first_byte_timeout) if over else self.cfg.first_byte_timeout
        first: bytes | bytearray | None = None
        self._unidentified += 1
        try:
            with trio.move_on_after(wait):
                first = await stream.receive_some(65536)
        except (trio.BrokenResourceError, OSError):
            return
        finally:
            self._unidentified -= 1
        if first is None:  # silent until the deadline
            self.stats["idle_closed"] += 1
            await safe_send(stream, encode_error("ERR max number of clients reached" if over
                                                 else "ERR nothing was sent in time; closing the connection"))
            return
        if not first:
            return
        if first.startswith(PEER_MAGIC[:1]):
            if stream is tcp and self.cfg.fd_streams:
                stream = FdStream(tcp)  # the hot path from here on: no scheduler trip per call
            await self.peers.serve(stream, bytearray(first))
        else:
            # Handed over in a list the client task empties: a reference kept here would
            # keep the first chunk (up to 64 KiB) alive for the whole connection.
            handover: list[bytes | bytearray] = [first]
            del first
            await self._handle_client(stream, handover)

    async def _tls_handshake(self, tcp: trio.SocketStream) -> trio.SSLStream[trio.SocketStream] | None:
        """TLS first, within the handshake timeout; a failure is logged and the connection closed."""
        assert self._tls_server is not None
        tls = trio.SSLStream(tcp, self._tls_server, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
            cause = exc.__cause__
            why = f"{cause.reason or cause}" if isinstance(cause, ssl.SSLError) else (str(exc) or type(exc).__name__)
            try:
                who = "%s:%d" % tcp.socket.getpeername()[:2]
            except OSError:
                who = "a client"
            log.info("TLS handshake with %s failed: %s; closed the connection", who, why)
            await trio.aclose_forcefully(tcp)
            return None
        return tls

    # ------------------------------------------------------------------ forwarding
    # ------------------------------------------------------------------ clients
    async def _handle_client(self, stream: trio.abc.Stream, handover: list[bytes | bytearray]) -> None:
        if self.clients_connected + self._unidentified >= self.cfg.max_clients:
            await safe_send(stream, encode_error("ERR max number of clients reached"))
            return
        self.clients_connected += 1
        parser = RespParser(max_bulk_len=self.cfg.limits.max_value_len + 1024)
        state = _Session(authed=not self.cfg.token, input=self.client_input.account())
        data: bytes | bytearray = handover.pop()
        metrics = self.metrics
        clock = time.perf_counter
        try:
            while True:
                t0 = clock()  # when this batch of (pipelined) commands arrived: their latency's start
                metrics.client_bytes_in += len(data)
                parser.feed(data)
                out = bytearray()
                # Each reply to come, with the latency histogram of its command (None: not a command).
                ops: list[tuple[Callable[[], Awaitable[bytes]], Histogram | None]] = []
                last_kind = ""
                close = False
                while True:
                    cmd = parser.next_command()
                    if cmd is None:
                        break
                    if not isinstance(cmd, list):  # a protocol violation: reply, then close
                        ops.append((constant_reply(cmd.reply), None))
                        close = True
                        break
                    self.stats["total_commands"] += 1
                    # a write in a client session counts as the command it carries
                    timer = metrics.command(cmd[0] if len(cmd) < 6 or cmd[0].lower() != b"session"
                                            else cmd[5])
                    fast = None
                    if state.multi is None:
                        kind = _fast_kind(cmd)
                        if kind:
                            if last_kind and kind != last_kind and ops:
                                # Before the fast path submits anything: a GET after SETs in
                                # one pipeline must not ask for its read point before they
                                # were answered (it would read without them).
                                await self._replies(ops, out, t0)
                                ops = []
                            fast = self._fast_path(cmd, state, kind)
                    if fast is not None:
                        kind, op = fast
                        last_kind = kind
                        ops.append((op, timer))
                        continue
                    req = C.parse_command(cmd, self.cfg.limits)
                    if not state.authed and not C.allowed_before_auth(cmd[0]):
                        ops.append((constant_reply(encode_error(C.ERR_NOAUTH)), timer))
                        continue
                    if isinstance(req, C.AuthRequest):
                        ops.append((constant_reply(self._auth(req, state)), timer))
                        continue
                    if isinstance(req, C.HelloRequest):
                        ops.append((constant_reply(self._hello(req, state)), timer))
                        continue
                    if isinstance(req, C.LocalReply) and req.close:
                        ops.append((constant_reply(req.encoded()), timer))
                        close = True
                        break
                    if isinstance(req, C.ChangesRequest) and state.multi is None:
                        await self._replies(ops, out, t0)
                        timer.observe(clock() - t0)  # a stream: counted when it starts
                        if out:
                            metrics.client_bytes_out += len(out)
                            await stream.send_all(bytes(out))
                        await self._serve_changes(stream, req, state)
                        return
                    if isinstance(req, C.PubSubRequest) and state.multi is None:
                        await self._replies(ops, out, t0)
                        timer.observe(clock() - t0)  # a stream: counted when it starts
                        if out:
                            metrics.client_bytes_out += len(out)
                            await stream.send_all(bytes(out))
                        ops, out, last_kind = [], bytearray(), ""
                        if await self._serve_pubsub(stream, parser, req, state):
                            return
                        continue  # every subscription ended: back to ordinary commands
                    if state.multi is not None or isinstance(req, C.TxnRequest):
                        queued = self._transaction_step(req, state)
                        if queued is not None:  # answered at once: queued, or refused
                            ops.append((constant_reply(queued), timer))
                            continue
                        assert isinstance(req, C.TxnRequest)
                    kind = "r" if isinstance(req, (*_READS, C.SnapshotRequest)) else (
                        "w" if isinstance(req, (*_WRITES, C.TxnRequest)) else "")
                    if kind and last_kind and kind != last_kind and ops:
                        # A pipeline runs in order: a read sees the writes before it, and a
                        # write is not submitted before the reads ahead of it were served.
                        await self._replies(ops, out, t0)
                        ops = []
                    last_kind = kind or last_kind
                    if isinstance(req, C.TxnRequest):
                        ops.append((self._watch(req.keys, state) if req.op == C.TxnOp.WATCH
                                    else self._exec(state), timer))
                    else:
                        ops.append((self._prepare(req, argv=cmd, resp3=state.resp3), timer))
                if not close and (refused := self._input_refused(parser, state)) is not None:
                    ops.append((constant_reply(refused), None))
                    close = True
                await self._replies(ops, out, t0)
                if out:
                    metrics.client_bytes_out += len(out)
                    await stream.send_all(bytes(out))
                if close:
                    return
                # The parser has its own copy: holding this chunk while the client is silent
                # would double what an unfinished request costs (issue 11's flood).
                data = b""
                data = await stream.receive_some(65536)
                if not data:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            if state.input is not None:
                state.input.close()
            self.clients_connected -= 1

    async def _replies(self, ops: list[tuple[Callable[[], Awaitable[bytes]], Histogram | None]], out: bytearray,
                       t0: float) -> None:
        """Await each reply in order into `out`; time each command from `t0`, count errors."""
        metrics = self.metrics
        clock = time.perf_counter
        for op, timer in ops:
            reply = await op()
            out += reply
            if timer is not None:
                timer.observe(clock() - t0)
            if reply[:1] == b"-":
                metrics.error(reply)

    def _input_refused(self, parser: RespParser, state: _Session) -> bytes | None:
        """The -ERR that closes a connection whose unfinished request would pass its
        allowance (before AUTH) or the node's budget (--client-buffer-mb); else None."""
        if state.input is None:
            return None
        authed = state.authed
        why = state.input.hold(parser.held, None if authed else self.cfg.client_preauth_bytes,
                               "this connection" if authed else "a connection that has not authenticated")
        if why is None:
            return None
        log.info("closing a client connection: %s", why)
        return encode_error(f"ERR client input limit: {why}; closing the connection")

    def _fast_path(self, cmd: list[bytes], state: _Session, kind: str
                   ) -> tuple[str, Callable[[], Awaitable[bytes]]] | None:
        """Plain SET k v (`kind` "w") and GET k ("r"), the bulk of any load, without building
        a Request and a Command: the same checks, the same log payload
        (`Command.set(k, v).encode()`), the same replies. Anything else (limits exceeded, no
        leader, no AUTH yet) takes the general path."""
        limits = self.cfg.limits
        if not state.authed or self.raft.leader_id is None or len(cmd[1]) > limits.max_key_len:
            return None
        if kind == "w" and len(cmd[2]) <= limits.max_value_len:
            self.stats["total_writes"] += 1
            if not self.raft.is_leader():
                return "w", self._to_leader(cmd, False, state.resp3)
            w = Waiter()
            if not self.driver.client_op(b"\x93\x01" + _pack(cmd[1]) + _pack(cmd[2]), w):
                return "w", constant_reply(OVERLOADED)

            async def set_result() -> bytes:
                if not await self.driver.wait(w):
                    return encode_error("TIMEOUT the write was not committed in time; the outcome is unknown")
                if w.error is not None:
                    return encode_error(w.error)
                r = w.value
                return OK if r.success else encode_error(f"ERR {r.error}")

            return "w", set_result
        if kind == "r":
            self.stats["total_reads"] += 1
            key = cmd[1]
            resp3 = state.resp3
            shared = state.read_point
            if shared is None or shared.event.is_set():
                w = Waiter()
                if not self.driver.client_op(None, w):
                    return "r", constant_reply(OVERLOADED)
                state.read_point = w
            else:
                w = shared

            async def get_result() -> bytes:
                refused = await self.driver.read_point(w)
                if refused is not None:
                    return encode_error(refused)
                return encode_bulk(self.sm.get_value(key, self._read_now()), resp3=resp3)

            return "r", get_result
        return None

    # ------------------------------------------------------------------ the change feed
    async def _serve_changes(self, stream: trio.abc.Stream, req: C.ChangesRequest, state: _Session) -> None:
        """Stream the changes under a prefix until the client goes away (see ChangesRequest)."""
        feed = self.feed
        pos = feed.current if req.from_revision is None else req.from_revision
        prefix = req.prefix
        resp3 = state.resp3
        self.stats["feed_subscribers"] += 1
        try:
            await stream.send_all(encode([b"changes", prefix, pos], resp3=resp3))
            async with trio.open_nursery() as nursery:
                async def until_closed() -> None:
                    while True:  # nothing but QUIT or the end of the stream means anything now
                        data = await stream.receive_some(4096)
                        if not data or b"QUIT" in data.upper():
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(until_closed)
                while True:
                    seen = feed.current
                    got = await feed.read(pos)
                    if isinstance(got, Compacted):
                        await stream.send_all(encode_error(
                            f"COMPACTED the changes after revision {got.after} are no longer held on this "
                            f"node (it can resume from revision {got.oldest}); read the keys afresh and "
                            f"follow from the current revision {got.current}"))
                        nursery.cancel_scope.cancel()
                        return
                    if not got:
                        await feed.wait(max(seen, pos))
                        continue
                    out = bytearray()
                    i = 0
                    while i < len(got):
                        rev = got[i][0]
                        items: list[Reply] = []
                        while i < len(got) and got[i][0] == rev:
                            _, key, value = got[i]
                            if key.startswith(prefix):
                                items += [key, value]
                            i += 1
                        if items:
                            out += encode([b"change", rev, items], resp3=resp3)
                    pos = got[-1][0]
                    if out:
                        await stream.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        except BaseExceptionGroup as group:  # the client went away while a task sent or read
            _, rest = group.split(_GONE)
            if rest is not None:
                raise rest from None
            return
        finally:
            self.stats["feed_subscribers"] -= 1

    async def _serve_pubsub(self, stream: trio.abc.Stream, parser: RespParser, first: C.PubSubRequest,
                            state: _Session) -> bool:
        """Redis's subscribed mode over the change feed (keyspace notifications). Returns
        True when the connection is finished, False when its last subscription ended."""
        resp3 = state.resp3
        channels: set[bytes] = set()
        patterns: dict[bytes, Callable[[bytes], bool]] = {}
        send_lock = trio.Lock()
        closed = False

        def frame(items: list[Reply]) -> bytes:
            if resp3:  # RESP3 clients expect pub/sub traffic as push frames
                return b">%d\r\n" % len(items) + b"".join(encode(i, resp3=True) for i in items)
            return encode(items)

        def handle(req: C.PubSubRequest) -> bytes:
            out = bytearray()
            op = req.op
            if op in ("subscribe", "psubscribe"):
                for ch in req.channels:
                    if op == "subscribe":
                        channels.add(ch)
                    else:
                        patterns[ch] = C.glob_matcher(ch)
                    out += frame([op.encode(), ch, len(channels) + len(patterns)])
                return bytes(out)
            target: Any = channels if op == "unsubscribe" else patterns
            names = list(req.channels) or sorted(target)
            if not names:
                out += frame([op.encode(), None, len(channels) + len(patterns)])
            for ch in names:
                if op == "unsubscribe":
                    channels.discard(ch)
                else:
                    patterns.pop(ch, None)
                out += frame([op.encode(), ch, len(channels) + len(patterns)])
            return bytes(out)

        async def send(data: bytes) -> None:
            async with send_lock:
                await stream.send_all(data)

        self.stats["pubsub_clients"] += 1
        try:
            await send(handle(first))
            if not channels and not patterns:
                return False
            async with trio.open_nursery() as nursery:
                async def commands() -> None:
                    nonlocal closed
                    while True:
                        while (cmd := parser.next_command()) is not None:
                            if not isinstance(cmd, list):
                                await send(cmd.reply)
                                closed = True
                                nursery.cancel_scope.cancel()
                                return
                            name = cmd[0].lower()
                            req = C.parse_command(cmd, self.cfg.limits)
                            if isinstance(req, C.PubSubRequest):
                                await send(handle(req))
                            elif name == b"ping":
                                await send(frame([b"pong", cmd[1] if len(cmd) > 1 else b""]))
                            elif name == b"quit":
                                await send(OK)
                                closed = True
                                nursery.cancel_scope.cancel()
                                return
                            elif isinstance(req, C.ErrorReply):
                                await send(req.encoded(resp3))
                            else:
                                await send(encode_error(
                                    f"ERR Can't execute '{cmd[0].decode('utf-8', 'replace').lower()[:64]}': only "
                                    "(P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT are allowed in this context"))
                            if not channels and not patterns:
                                nursery.cancel_scope.cancel()  # back to ordinary commands
                                return
                        if (refused := self._input_refused(parser, state)) is not None:
                            await send(refused)
                            closed = True
                            nursery.cancel_scope.cancel()
                            return
                        data = await stream.receive_some(65536)
                        if not data:
                            closed = True
                            nursery.cancel_scope.cancel()
                            return
                        parser.feed(data)

                nursery.start_soon(commands)
                feed = self.feed
                pos = feed.current
                while True:
                    seen = feed.current
                    got = await feed.read(pos)
                    if isinstance(got, Compacted):  # fell too far behind: skip ahead (live only)
                        pos = got.current
                        continue
                    if not got:
                        await feed.wait(max(seen, pos))
                        continue
                    out = bytearray()
                    for _rev, key, value in got:
                        event = b"set" if value is not None else b"del"
                        for channel, payload in ((b"__keyspace@0__:" + key, event),
                                                 (b"__keyevent@0__:" + event, key)):
                            if channel in channels:
                                out += frame([b"message", channel, payload])
                            for pattern, match in patterns.items():
                                if match(channel):
                                    out += frame([b"pmessage", pattern, channel, payload])
                    pos = got[-1][0]
                    if out:
                        await send(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return True
        except BaseExceptionGroup as group:  # the client went away while a task sent or read
            _, rest = group.split(_GONE)
            if rest is not None:
                raise rest from None
            return True
        finally:
            self.stats["pubsub_clients"] -= 1
        return closed

    # ------------------------------------------------------------------ transactions
    def _transaction_step(self, req: C.Request, state: _Session) -> bytes | None:
        """MULTI bookkeeping: the immediate reply (QUEUED, an error, OK), or None for the
        requests that need the cluster (WATCH, and EXEC of a clean transaction)."""
        if isinstance(req, C.TxnRequest):
            op = req.op
            if op == C.TxnOp.MULTI:
                if state.multi is not None:
                    return encode_error("ERR MULTI calls can not be nested")
                state.multi, state.dirty = [], False
                return OK
            if op == C.TxnOp.DISCARD:
                if state.multi is None:
                    return encode_error("ERR DISCARD without MULTI")
                state.multi, state.dirty = None, False
                state.watches.clear()
                return OK
            if op == C.TxnOp.EXEC:
                if state.multi is None:
                    return encode_error("ERR EXEC without MULTI")
                if state.dirty:
                    state.multi, state.dirty = None, False
                    state.watches.clear()
                    return encode_error("EXECABORT Transaction discarded because of previous errors.")
                return None
            if op == C.TxnOp.WATCH:
                if state.multi is not None:
                    return encode_error("ERR WATCH inside MULTI is not allowed")
                return None
            state.watches.clear()  # UNWATCH
            return OK
        assert state.multi is not None
        if isinstance(req, C.ErrorReply):
            state.dirty = True
            return req.encoded(state.resp3)
        command = C.queued_command(req)
        if command is None:
            if isinstance(req, (C.LocalReply, C.HelloRequest, C.AuthRequest)):
                state.dirty = True
                return encode_error("ERR this command is not allowed inside MULTI")
            state.dirty = True
            return encode_error("ERR only key commands can be queued in a MULTI (not scans, status or admin)")
        state.multi.append(command)
        return encode_simple("QUEUED")

    def _exec(self, state: _Session) -> Callable[[], Awaitable[bytes]]:
        """EXEC: the queued commands and the watched revisions, as one log entry."""
        assert state.multi is not None
        txn = Command.transaction(state.multi, tuple(state.watches.items()))
        state.multi, state.dirty = None, False
        state.watches.clear()
        if not txn.commands and not txn.watches:
            return constant_reply(encode_array([]))
        return self._prepare(C.WriteRequest(txn), argv=[TXN_FORWARD, txn.encode()], resp3=state.resp3)

    def _watch(self, keys: tuple[str, ...], state: _Session) -> Callable[[], Awaitable[bytes]]:
        """WATCH: remember each key's revision at a linearizable point (0: missing)."""
        read = self._prepare(C.ExistsRequest(keys))  # a read point, like any read

        async def watched() -> bytes:
            reply = await read()
            if not reply.startswith(b":"):
                return reply  # -NOLEADER, -TIMEOUT ...
            now = self._read_now()
            for key in keys:
                if key not in state.watches:  # the first WATCH of a key counts
                    rec = self.sm.record(key.encode("utf-8", "surrogateescape"), now)
                    state.watches[key] = rec[2] if rec is not None else 0
            return OK

        return watched

    def _auth(self, req: C.AuthRequest, state: _Session) -> bytes:
        if not self.cfg.token:
            return encode_error(C.ERR_AUTH_NOT_CONFIGURED)
        if hmac.compare_digest(req.token, self.cfg.token.encode()):
            state.authed = True
            return encode_simple("OK")
        return encode_error(C.ERR_WRONGPASS)

    def _hello(self, req: C.HelloRequest, state: _Session) -> bytes:
        if req.auth is not None:
            if not self.cfg.token:
                return encode_error(C.ERR_AUTH_NOT_CONFIGURED)
            reply = self._auth(req.auth, state)
            if not state.authed:
                return reply
        elif not state.authed:
            return encode_error(C.ERR_HELLO_NOAUTH)
        if req.protocol is not None:
            state.resp3 = req.protocol == 3
        return req.encoded(state.resp3)

    def _prepare(self, req: C.Request, *, argv: list[bytes] | None = None,
                 forwarded: bool = False, resp3: bool = False) -> Callable[[], Awaitable[bytes]]:
        """Start a request now (submission order is the apply order); await its reply later."""
        raft = self.raft
        if (isinstance(req, (C.WriteRequest, *_READS)) and raft.leader_id is None
                and not forwarded):
            # Mid-election: give it one election timeout before answering -NOLEADER.
            async def after_election() -> bytes:
                deadline = trio.current_time() + self.cfg.tick_ms * self.cfg.election_ticks[1] / 1000
                while raft.leader_id is None and trio.current_time() < deadline:
                    await self.driver.leader_changed(deadline - trio.current_time())
                if raft.leader_id is None:
                    return encode_error("NOLEADER no leader is known; try again shortly")
                return await self._prepare(req, argv=argv, resp3=resp3)()

            return after_election
        if isinstance(req, C.WriteRequest):
            self.stats["total_writes"] += 1
            if not raft.is_leader():
                return self._to_leader(argv, forwarded, resp3)
            w = Waiter()
            if not self.driver.client_op(req.command.encode(), w):
                return constant_reply(OVERLOADED)
            command = req.command

            async def write_result() -> bytes:
                if not await self.driver.wait(w):
                    return encode_error("TIMEOUT the write was not committed in time; the outcome is unknown")
                if w.error is not None:
                    return encode_error(w.error)
                return C.encode_result(command, w.value, resp3=resp3)

            return write_result
        if isinstance(req, _READS):
            self.stats["total_reads"] += 1
            w = Waiter()
            if not self.driver.client_op(None, w):
                return constant_reply(OVERLOADED)

            async def read_result() -> bytes:
                refused = await self.driver.read_point(w)
                if refused is not None:
                    return encode_error(refused)
                return self._serve_read(req, resp3)

            return read_result
        if isinstance(req, C.InfoRequest):
            return constant_reply(encode_bulk(status.info_text(self, req.sections).encode()))
        if isinstance(req, C.ClusterRequest):
            text = status.cluster_info_text(self) if req.sub == "info" else status.cluster_nodes_text(self)
            return constant_reply(encode_bulk(text.encode()))
        if isinstance(req, C.MemberRequest):
            return self._member(req, argv, forwarded)
        if isinstance(req, C.LeaderTransferRequest):
            if not raft.is_leader():
                return self._to_leader(argv, forwarded, resp3)
            w = Waiter()
            if not self.driver.submit(Transfer(req.node_id, w)):
                return constant_reply(OVERLOADED)

            async def transfer_result() -> bytes:
                await self.driver.wait(w)
                if w.error:
                    return encode_error(w.error)
                deadline = trio.current_time() + self.cfg.request_timeout
                while trio.current_time() < deadline:
                    if raft.leader_id == req.node_id:
                        return encode_simple("OK")
                    await self.driver.leader_changed(deadline - trio.current_time())
                return encode_error(f"TIMEOUT leadership did not move to {req.node_id} in time")

            return transfer_result
        if isinstance(req, C.SnapshotRequest):
            return self.backups.op(req, resp3)
        if isinstance(req, (C.LocalReply, C.ErrorReply, C.HelloRequest)):
            return constant_reply(req.encoded(resp3))
        return constant_reply(encode_error("ERR command not supported here"))

    def _read_now(self) -> int:
        """The time (ms) a read is served at: this node's clock, and never earlier than the
        latest entry applied here (whose time came from a leader's clock)."""
        return max(int(time.time() * 1000), self.sm.clock)

    def _serve_read(self, req: C.Request, resp3: bool) -> bytes:
        """Answer a read from the local state; its read point has been reached."""
        now = self._read_now()
        sm = self.sm
        if isinstance(req, C.ReadRequest):
            return encode_bulk(sm.get_value(req.key_bytes, now), resp3=resp3)
        if isinstance(req, (C.ExistsRequest, C.QueryRequest)):
            return C.encode_result(req.command, sm.read(req.command, now), resp3=resp3)
        kv = sm.backend
        if isinstance(req, C.DbsizeRequest):
            return encode_integer(kv.count())
        if isinstance(req, C.ScanRequest):
            cursor, items = kv.scan(req.cursor, req.count)
            match = C.glob_matcher(req.pattern) if req.pattern is not None else None
            keys: list[Reply] = []
            if req.type is None or req.type == "string":
                keys = [k for k, rec in items if not (rec[3] and rec[3] <= now) and (match is None or match(k))]
            return encode([str(cursor).encode(), keys], resp3=resp3)
        if isinstance(req, C.KeysRequest):
            prefix = C.glob_prefix(req.pattern)
            limit = self.cfg.keys_limit
            found = kv.range(prefix, C.prefix_end(prefix), limit + 1)
            if len(found) > limit:
                return encode_error(
                    f"ERR KEYS would examine more than {limit} keys (--keys-limit); walk them with "
                    "SCAN, or give the pattern a longer literal prefix")
            match = C.glob_matcher(req.pattern)
            matched: list[Reply] = [k for k, rec in found if not (rec[3] and rec[3] <= now) and match(k)]
            return encode(matched, resp3=resp3)
        if isinstance(req, C.RangeRequest):
            return self._serve_range(req, now, resp3)
        return encode_error("ERR command not supported here")

    def _serve_range(self, req: C.RangeRequest, now: int, resp3: bool) -> bytes:
        cap = self.cfg.range_limit
        if req.limit > cap:
            return encode_error(f"ERR LIMIT {req.limit} is above this node's --range-limit {cap}")
        want = req.limit or cap
        kv = self.sm.backend
        live: list[tuple[bytes, bytes]] = []
        start = req.start
        while len(live) <= want:  # one more than wanted, to know whether the range goes on
            page = want + 1 - len(live)
            batch = kv.range(start, req.end, page)
            live += [(k, rec[0]) for k, rec in batch if not (rec[3] and rec[3] <= now)]
            if len(batch) < page:
                break
            start = batch[-1][0] + b"\x00"  # keys past their deadline were skipped: look further
        if len(live) > want and req.limit == 0:
            return encode_error(f"ERR the range holds more than {cap} keys (--range-limit); add LIMIT n "
                                "and page on from the last key: RANGE (last-key max LIMIT n")
        out: list[Reply] = []
        for k, v in live[:want]:
            out.append(k)
            if not req.keys_only:
                out.append(v)
        return encode(out, resp3=resp3)

    def _to_leader(self, argv: list[bytes] | None, forwarded: bool, resp3: bool = False) -> Callable[[], Awaitable[bytes]]:
        """A command only the leader may run, on a node that is not (or no longer) it:
        forward it once; a command that was already forwarded is refused, never bounced on."""
        if forwarded or argv is None:
            return constant_reply(encode_error("TRYAGAIN this node is no longer the leader; nothing was written"))
        return self.forwarder.forward(argv, resp3)

    def _member_refusal(self, req: C.MemberRequest) -> str | None:
        """A membership change that would change nothing, or not what it says, is refused
        before anything is written (issue 10: MEMBER ADD of a voter used to commit an entry
        and silently re-address it)."""
        m = self.raft.membership
        nid = req.node_id
        if req.op == C.MemberOp.ADD:
            if nid in m.voters:
                return f"ERR {nid} is already a voter"
            if nid in m.learners and req.learner:
                return f"ERR {nid} is already a learner"
            if nid in m.learners:
                return f"ERR {nid} is a learner: make it a voter with MEMBER PROMOTE {nid}"
        elif req.op == C.MemberOp.REMOVE and nid not in m.members:
            return f"ERR {nid} is not a member"
        elif req.op == C.MemberOp.PROMOTE:
            if nid in m.voters:
                return f"ERR {nid} is already a voter"
            if nid not in m.learners:
                return f"ERR {nid} is not a member; add it with MEMBER ADD {nid} host:port LEARNER"
        return None

    def _member(self, req: C.MemberRequest, argv: list[bytes] | None, forwarded: bool) -> Callable[[], Awaitable[bytes]]:
        if req.op == C.MemberOp.LIST:
            return constant_reply(encode([line.encode() for line in status.member_lines(self)]))
        if not self.raft.is_leader():
            return self._to_leader(argv, forwarded)
        assert req.node_id is not None
        refused = self._member_refusal(req)
        if refused is not None:
            return constant_reply(encode_error(refused))
        if req.op == C.MemberOp.ADD:
            ctype = ConfigChangeType.ADD_LEARNER if req.learner else ConfigChangeType.ADD_VOTER
        elif req.op == C.MemberOp.REMOVE:
            ctype = ConfigChangeType.REMOVE
        else:
            ctype = ConfigChangeType.PROMOTE
        change = ConfigChange(type=ctype, node_id=req.node_id, address=req.address or "")
        w = Waiter()
        if not self.driver.submit(Reconfigure(change, w)):
            return constant_reply(OVERLOADED)

        async def conf_result() -> bytes:
            if not await self.driver.wait(w):
                return encode_error("TIMEOUT the membership change did not commit in time; the outcome is unknown")
            if w.error:
                return encode_error(w.error)
            return encode_simple("OK")

        return conf_result


# ---------------------------------------------------------------------- helpers
#: What a client connection that went away raises.
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

_READS: Final = (C.ReadRequest, C.ExistsRequest, C.QueryRequest, C.ScanRequest, C.KeysRequest,
                 C.DbsizeRequest, C.RangeRequest)
_WRITES: Final = (C.WriteRequest, C.MemberRequest, C.LeaderTransferRequest)


class MetricsListenError(OSError):
    """`--metrics HOST:PORT` cannot be listened on (the message names the address)."""


def _pack_payload(e: Any) -> bytes:
    # Entries travel in their stored, compressed form: the leader compresses once.
    from storage import pack_payload

    return pack_payload(e)


_pack = msgpack.Packer(use_bin_type=True).pack  # the fast path's SET payload: [1, key, value]


def _fast_kind(cmd: list[bytes]) -> str:
    """"w" for a plain ``SET k v``, "r" for ``GET k`` (the fast path's two), else ""."""
    if len(cmd) == 3:
        name = cmd[0]
        return "w" if name == b"SET" or name == b"set" else ""
    if len(cmd) == 2:
        name = cmd[0]
        return "r" if name == b"GET" or name == b"get" else ""
    return ""


