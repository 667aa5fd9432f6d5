"""The peer side of a node's port: accepting peer connections, receiving their frames
(Raft messages, forwarded commands and their replies, snapshot transfers), and streaming
snapshots out to followers that need one.

Theory of operation
-------------------
A connection that opens with `PEER_MAGIC` is a peer's: it must pass the handshake (cluster
name, a member's id, the cluster secret's HMAC: `aegis.peers.accept_handshake`) before
anything it sends is read. A peer keeps one outgoing connection to us, so a new one from
the same id closes the old: each member has at most one frame in flight here. A message
must name its sender as the peer that proved who it is.

Raft messages go to the driver's inbox (`PeerMessage`), forwarded commands and their
replies to the forwarder. An InstallSnapshot is followed by chunks written straight to
a file of its own (`incoming-<peer>-<n>.snap`), fsynced and read through (every chunk's
CRC and the SHA-256) before the driver hears of it: a snapshot that does not verify is
never installed, and the leader sends it again. When the link drops, the driver hears of
it (`PeerLost`): what the peer had queued for us may be lost with it.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import failpoints
from .budget import ByteBudget
from .config import ServerConfig
from .driver import Event, PeerLost, PeerMessage, SnapshotReceived, SnapshotSent
from .forwarding import Forwarder
from .log import Membership
from .logs import event
from .messages import InstallSnapshotRequest
from .metrics import NodeMetrics
from .cluster import Cluster
from .node import NodeStatus
from .peerauth import PeerAuth
from .peers import (
    FRAME_MSG,
    FRAME_PING,
    FRAME_REJECT,
    FRAME_SNAP_CHUNK,
    FRAME_SNAP_END,
    ConnectionPool,
    accept_handshake,
    frame,
    fsync_close,
    handshake_budget,
    read_frame,
    safe_send,
    send_snapshot_file,
)
from .tls import peer_cert_presented
from .transport import ClientBatchRequest, ClientBatchResponse, ClientRequest, ClientResponse, Handshake, decode

log = logging.getLogger("aegis.server")
events = logging.getLogger("aegis.events")


class PeerService:
    def __init__(self, cfg: ServerConfig, *, auth: PeerAuth, tls: bool, pool: ConnectionPool, cluster: Cluster,
                 metrics: NodeMetrics, forwarder: Forwarder, submit: Callable[[Event], bool],
                 unpack_payload: Callable[..., Any], membership: Callable[[], Membership],
                 term: Callable[[], int], export_state: Callable[[Path], Awaitable[tuple[Any, int]]]) -> None:
        """`submit`: the driver's inbox; `unpack_payload`: the store codec's entry
        decoder; `membership()`/`term()`: the core's now; `export_state(path)`: the
        driver's consistent snapshot export."""
        self.cfg = cfg
        self.id = cfg.node_id
        self.peer_auth = auth
        self._tls = tls
        self.pool = pool
        self.cluster = cluster
        self.metrics = metrics
        self.forwarder = forwarder
        self._submit = submit
        self._unpack_payload = unpack_payload
        self._membership = membership
        self._term = term
        self._export_state = export_state
        self._handshakes: ByteBudget = handshake_budget()  # what peers not yet accepted may make us hold
        self._peer_streams: dict[str, trio.abc.Stream] = {}  # the newest inbound connection per peer
        self._transfer_ids = itertools.count(1)

    async def serve(self, stream: trio.abc.Stream, buf: bytearray) -> None:
        if self._tls and not peer_cert_presented(stream):
            log.warning("refused a peer connection that presented no TLS certificate (peers need one signed "
                        "by --tls-ca)")
            await safe_send(stream, frame(FRAME_REJECT + b"a peer must present a TLS certificate signed by the "
                                                         b"cluster's CA"))
            return
        hs = await accept_handshake(stream, buf, self._refuse, self._handshakes, auth=self.peer_auth,
                                    me=self.id)
        if hs is None:
            return
        unpack_payload = self._unpack_payload

        pid = hs.node_id
        # A peer keeps one outgoing connection to us, so a new one means the old is dead: close
        # it. Each member then has at most one frame in flight here, whoever claims its id.
        old = self._peer_streams.get(pid)
        self._peer_streams[pid] = stream
        if old is not None:
            log.info("a new connection from peer %s replaces its previous one", pid)
            await old.aclose()
        snapshot_file = None
        snapshot_msg: InstallSnapshotRequest | None = None
        try:
            while True:
                body_ = await read_frame(stream, buf)
                if body_ is None:
                    return
                self.metrics.peer_bytes_in += len(body_) + 4
                self._heard_from(pid)
                kind, body = body_[:1], body_[1:]
                if kind == FRAME_PING:
                    continue
                if kind == FRAME_SNAP_CHUNK and snapshot_file is not None:
                    await trio.to_thread.run_sync(write_snapshot_chunk, snapshot_file, body)
                    continue
                if kind == FRAME_SNAP_END and snapshot_file is not None and snapshot_msg is not None:
                    f = snapshot_file
                    await trio.to_thread.run_sync(fsync_close, f)
                    snapshot_file = None
                    problem = await trio.to_thread.run_sync(verify_snapshot_file, Path(f.name))
                    if problem:
                        # Never install what does not verify; the leader sends it again.
                        log.warning("discarding a snapshot from %s: %s", pid, problem)
                        Path(f.name).unlink(missing_ok=True)
                    else:
                        self._submit(SnapshotReceived(snapshot_msg, Path(f.name)))
                    snapshot_msg = None
                    continue
                if kind != FRAME_MSG:
                    raise ValueError(f"unexpected frame kind {kind!r}")
                msg = decode(body, unpack_payload)
                if isinstance(msg, ClientBatchRequest):
                    self.forwarder.serve_batch(pid, msg)
                elif isinstance(msg, ClientBatchResponse):
                    self.forwarder.replies(msg)
                elif isinstance(msg, ClientRequest):  # a single forwarded command (older peers)
                    self.forwarder.serve_one(pid, msg)
                elif isinstance(msg, ClientResponse):
                    raise ValueError("unexpected ClientResponse (this node forwards in batches)")
                elif isinstance(msg, Handshake):
                    raise ValueError("second handshake")
                else:
                    if msg.sender != pid:
                        raise ValueError(f"peer {pid} sent a message claiming to be from {msg.sender}")
                    if isinstance(msg, InstallSnapshotRequest):
                        # One file per transfer: a resent snapshot must never truncate one
                        # that is verified and waiting to be installed.
                        path = Path(self.cfg.data_dir) / f"incoming-{pid}-{next(self._transfer_ids)}.snap"
                        if snapshot_file is not None:  # a transfer started again before it ended
                            snapshot_file.close()
                            Path(snapshot_file.name).unlink(missing_ok=True)
                        snapshot_file = open(path, "wb")
                        snapshot_msg = msg
                        continue
                    self.metrics.received(pid, msg)
                    self._submit(PeerMessage(msg))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        except Exception as exc:
            log.warning("closing connection from peer %s: %s", pid, exc)
            return
        finally:
            if self._peer_streams.get(pid) is stream:
                del self._peer_streams[pid]
            if snapshot_file is not None:  # a transfer the link lost half-way
                snapshot_file.close()
                Path(snapshot_file.name).unlink(missing_ok=True)
            # What the peer sent us on this link may be lost with it (it drops what it had
            # queued when its connection fails): reads and forwards waiting on it ask again.
            self._submit(PeerLost(pid, unreachable=False))

    def _refuse(self, hs: Handshake) -> str | None:
        if hs.cluster != self.cfg.cluster:
            return f"cluster mismatch: this node is in cluster {self.cfg.cluster!r}, the caller in {hs.cluster!r}"
        if hs.node_id == self.id:
            return f"the caller claims to be {hs.node_id}, which is this node"
        known = set(self._membership().members) | set(self.cfg.peers)
        if hs.node_id not in known:
            return f"{hs.node_id!r} is not a member of cluster {self.cfg.cluster!r}"
        return None  # then it proves it knows the cluster secret (accept_handshake)

    def _heard_from(self, pid: str) -> None:
        try:
            ch = self.cluster.heartbeat(pid)
        except KeyError:
            return
        if ch is not None and ch.old in (NodeStatus.DOWN, NodeStatus.STARTING):
            event(events, "peer_up", f"peer {pid} is up", node=self.id, term=self._term(), peer=pid)

    async def send_snapshot(self, pid: str, stream: trio.abc.Stream, msg: InstallSnapshotRequest) -> None:
        """InstallSnapshot in chunks: the current snapshot exported as a backup-format file."""
        tmp = Path(self.cfg.data_dir) / f"outgoing-{pid}.snap"
        ok = False
        try:
            t0 = time.perf_counter()
            info, _ = await self._export_state(tmp)
            if info.index != msg.snapshot.index:
                msg = InstallSnapshotRequest(term=msg.term, leader_id=msg.leader_id, snapshot=info.meta,
                                             receiver=msg.receiver)
            await send_snapshot_file(stream, msg, tmp)
            ok = True
            size = tmp.stat().st_size
            seconds = time.perf_counter() - t0
            self.pool.bytes_sent += size
            self.metrics.snapshots["sent"].observe(seconds)
            self.metrics.snapshot_bytes["sent"] = size
            event(events, "snapshot_sent", f"{self.id} sent a snapshot at index {msg.snapshot.index} to {pid} "
                  f"({size} bytes, {seconds:.2f} s)", node=self.id, term=self._term(), peer=pid,
                  index=int(msg.snapshot.index), bytes=size, seconds=round(seconds, 3))
        finally:
            self._submit(SnapshotSent(pid, ok))
            try:
                tmp.unlink()
            except OSError:
                pass


def write_snapshot_chunk(f: Any, data: bytes) -> None:
    """(In a worker thread.) One chunk of an incoming snapshot, on its way to the disk."""
    f.write(data)
    failpoints.hit("snapshot-mid-write")


def verify_snapshot_file(path: Path) -> str | None:
    """Read a received snapshot file through: every chunk CRC and the SHA-256. None if good."""
    from storage import StorageError, read_snapshot_file

    try:
        with read_snapshot_file(path) as reader:
            for _ in reader:
                pass
    except (StorageError, ValueError, OSError) as exc:
        path.unlink(missing_ok=True)
        return str(exc)
    return None
