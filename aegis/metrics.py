"""Prometheus metrics and the health check: `aegis serve --metrics HOST:PORT`.

Theory of operation
-------------------
The write path is the node's hot path (issue 8), so almost nothing here runs per request.
What the node already knows — term, role, indexes, its `stats` counters, each follower's
match index, connected clients — is read *at scrape time* by `NodeCollector`, a custom
Collector registered in a per-node `CollectorRegistry` (several nodes in one process do not
collide, and nothing goes to prometheus-client's global registry). The few figures that
only exist at the moment something happens (latencies, batch sizes, bytes, error kinds)
go into `NodeMetrics`: plain integer attributes and `Histogram`s, a bisect and two
additions each, never a lock — everything is touched on the trio thread only (the fsync
time is measured in the worker thread and *returned* to the trio task, which records it).

Per request: one `time.perf_counter()` per batch of pipelined commands read together, one
per reply, and one `Histogram.observe`. Command labels come from the command table only
(an unknown name is ``unknown``), error kinds from a fixed list (anything else is
``other``), so the number of series is bounded whatever clients send.

`/metrics` and `/health` are served by a minimal HTTP/1.1 GET handler over trio streams in
the node's own nursery (`serve_http`): no thread, no framework, one request per connection,
bounded head size, time and connection count.

`/health` answers 200 when this node sees a leader and has applied within `max_lag`
entries of the commit index it knows, and 503 with the reason otherwise (`health_status`).
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Final, Iterable, Iterator, Sequence

import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import commands as C
from . import status
from .log import Membership
from .logs import event
from .messages import AppendEntriesRequest, AppendEntriesResponse

if TYPE_CHECKING:
    from .server import Node

log = logging.getLogger("aegis.metrics")
events = logging.getLogger("aegis.events")

__all__ = [
    "Histogram", "NodeMetrics", "NodeCollector", "health_status", "parse_request_head",
    "http_response", "serve_http", "new_registry", "render", "HEALTH_MAX_LAG",
]

#: /health: how many entries the applied index may trail the known commit index.
HEALTH_MAX_LAG: Final = 100

LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FSYNC_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SNAPSHOT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: Error prefixes counted by name in aegis_errors_total; any other is "other".
ERROR_KINDS: Final = frozenset({
    "ERR", "TIMEOUT", "NOLEADER", "TRYAGAIN", "MOVED", "NOAUTH", "WRONGPASS", "EXECABORT",
    "COMPACTED", "WRONGTYPE", "NOPROTO",
})
SNAPSHOT_KINDS: Final = ("taken", "installed", "sent", "backup")
ROLES: Final = ("leader", "follower", "candidate", "learner")


class Histogram:
    """A cumulative-on-export histogram for one thread: `observe` is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus's cumulative ``le`` buckets, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((_le(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f"{bound:.1f}"


class _Probe:
    __slots__ = ("sent", "ctx")

    def __init__(self, sent: float, ctx: int) -> None:
        self.sent = sent
        self.ctx = ctx


class NodeMetrics:
    """What only exists when it happens: latencies, batch sizes, bytes, error kinds; and
    the operator events (aegis.logs) that the same transitions make: leader and membership
    changes.

    Hooks are called by the node on its trio thread; see the module docstring."""

    def __init__(self, node_id: str = "", clock: Callable[[], float] = time.perf_counter) -> None:
        self.node_id = node_id
        self.clock = clock
        self._leader: str | None = None
        self._was_leader = False
        self._membership: Membership | None = None
        self._known = {name: Histogram(LATENCY_BUCKETS) for name in C.COMMANDS}
        self._unknown = Histogram(LATENCY_BUCKETS)
        self._by_raw: dict[bytes, Histogram] = {}
        self.errors: dict[str, int] = {}
        self.client_bytes_in = 0
        self.client_bytes_out = 0
        self.peer_bytes_in = 0
        self.proposals = 0
        self.leader_changes = 0
        self.batch_commands = Histogram(SIZE_BUCKETS)  # writes proposed together in one turn
        self.batch_entries = Histogram(SIZE_BUCKETS)  # log entries made durable in one fsync
        self.fsync = {"log": Histogram(FSYNC_BUCKETS), "state": Histogram(FSYNC_BUCKETS)}
        self.apply = Histogram(LATENCY_BUCKETS)
        self.applied_entries = 0
        self.snapshots = {kind: Histogram(SNAPSHOT_BUCKETS) for kind in SNAPSHOT_KINDS}
        self.snapshot_bytes: dict[str, int] = {}
        self.snapshot_started = 0.0  # when the running compaction began
        self.peer_rtt: dict[str, Histogram] = {}
        self._probes: dict[str, _Probe] = {}

    # ------------------------------------------------------------------ transitions
    def soft_state(self, term: int, role: str, leader: str | None) -> None:
        """The node's role or leader changed: count it, log the event."""
        nid = self.node_id
        prev = self._leader
        if leader is not None and leader != prev:
            self.leader_changes += 1
        is_leader = role == "leader"
        if is_leader and not self._was_leader:
            event(events, "leader_elected", f"{nid} is the leader in term {term}", node=nid, term=term,
                  leader=nid)
        elif self._was_leader and not is_leader:
            event(events, "stepped_down", f"{nid} is no longer the leader in term {term} (now {role}; "
                  f"leader: {leader or 'none known'})", node=nid, term=term, level=logging.WARNING,
                  leader=leader, role=role)
        elif leader != prev:
            text = f"{nid} follows {leader} in term {term}" if leader else (
                f"{nid} knows no leader in term {term} (now {role})")
            event(events, "leader_changed", text, node=nid, term=term, leader=leader, role=role)
        self._leader, self._was_leader = leader, is_leader

    def membership(self, term: int, m: Membership) -> None:
        """The configuration changed (or is first seen: nothing logged): one event per member."""
        old, self._membership = self._membership, m
        if old is None or old == m:
            return
        nid = self.node_id
        addrs = m.address_map()
        for pid in sorted(m.members - old.members):
            voter = pid in m.voters
            event(events, "member_added", f"{pid} joined the cluster as a {'voter' if voter else 'learner'} "
                  f"(term {term})", node=nid, term=term, member=pid, address=addrs.get(pid), voter=voter)
        for pid in sorted(m.voters & old.learners):
            event(events, "member_promoted", f"{pid} was promoted from learner to voter (term {term})",
                  node=nid, term=term, member=pid)
        for pid in sorted(old.members - m.members):
            event(events, "member_removed", f"{pid} left the cluster (term {term})", node=nid, term=term,
                  member=pid)
        self.forget_peers(m.members)

    # ------------------------------------------------------------------ requests
    def command(self, name: bytes) -> Histogram:
        """The latency histogram of the command named `name` (as the client spelled it)."""
        h = self._by_raw.get(name)
        if h is None:
            h = self._resolve(name)
        return h

    def _resolve(self, name: bytes) -> Histogram:
        try:
            upper = name.decode("ascii").upper()
        except UnicodeDecodeError:
            return self._unknown
        h = self._known.get(upper, self._unknown)
        if len(self._by_raw) < 256:  # the spellings clients use; a bounded cache
            self._by_raw[bytes(name)] = h
        return h

    def command_histograms(self) -> Iterator[tuple[str, Histogram]]:
        """(command, histogram) for every command seen at least once; "unknown" last."""
        for name, h in self._known.items():
            if h.counts != [0] * len(h.counts):
                yield name.lower(), h
        if self._unknown.count:
            yield "unknown", self._unknown

    def error(self, reply: bytes) -> None:
        """Count an error reply (``-KIND text``) by its kind."""
        end = reply.find(b" ", 1, 24)
        kind = reply[1:end if end > 0 else 24].rstrip(b"\r\n").decode("ascii", "replace")
        if kind not in ERROR_KINDS:
            kind = "other"
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @staticmethod
    def state_disk_bytes(data_dir: str) -> int:
        """Disk space of the state database (what a snapshot of it is made of)."""
        return _disk_bytes(Path(data_dir) / "state" / "data.mdb")

    # ------------------------------------------------------------------ peers
    def sent(self, msgs: Iterable[object]) -> None:
        """Note the first heartbeat to each peer with none outstanding: its answer times the
        round trip (heartbeats are answered in order, on one connection each way)."""
        now = -1.0
        for m in msgs:
            if m.__class__ is AppendEntriesRequest:
                assert isinstance(m, AppendEntriesRequest)
                if m.heartbeat and m.receiver not in self._probes:
                    if now < 0:
                        now = self.clock()
                    self._probes[m.receiver] = _Probe(now, m.read_ctx)

    def received(self, pid: str, msg: object) -> None:
        if msg.__class__ is AppendEntriesResponse:
            assert isinstance(msg, AppendEntriesResponse)
            if msg.heartbeat:
                probe = self._probes.get(pid)
                if probe is not None and probe.ctx == msg.read_ctx:
                    del self._probes[pid]
                    h = self.peer_rtt.get(pid)
                    if h is None:
                        h = self.peer_rtt[pid] = Histogram(LATENCY_BUCKETS)
                    h.observe(self.clock() - probe.sent)

    def peer_lost(self, pid: str) -> None:
        """The connection to `pid` broke: its outstanding heartbeat will not be answered."""
        self._probes.pop(pid, None)

    def forget_peers(self, keep: Iterable[str]) -> None:
        """Drop the figures of peers that are no longer members (bounded series)."""
        wanted = set(keep)
        for pid in [p for p in self.peer_rtt if p not in wanted]:
            del self.peer_rtt[pid]
        for pid in [p for p in self._probes if p not in wanted]:
            del self._probes[pid]


def node_health(node: Node) -> tuple[bool, str]:
    """/health for `node` (see `health_status`)."""
    raft = node.raft
    return health_status(leader_id=raft.leader_id, commit_index=int(raft.commit_index),
                         applied_index=int(node.sm.last_applied), max_lag=node.cfg.health_max_lag)


def health_status(*, leader_id: str | None, commit_index: int, applied_index: int,
                  max_lag: int = HEALTH_MAX_LAG) -> tuple[bool, str]:
    """(healthy, reason): a leader is known and the applied index is within `max_lag`."""
    if leader_id is None:
        return False, "no leader is known"
    lag = commit_index - applied_index
    if lag > max_lag:
        return False, (f"applied index {applied_index} is {lag} entries behind the commit index "
                       f"{commit_index} (more than {max_lag})")
    return True, f"ok: leader {leader_id}, commit index {commit_index}, applied index {applied_index}"


def _disk_bytes(path: Path) -> int:
    """Bytes a file takes on disk (its blocks: LMDB's map file is sparse)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    blocks = getattr(st, "st_blocks", None)
    return int(blocks) * 512 if blocks is not None else int(st.st_size)


class NodeCollector(Collector):
    """Reads a node's state at scrape time; see the README's "Metrics and logs" for names."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        m = node.metrics
        raft = node.raft
        f = status.info_fields(node)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"aegis_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"aegis_{name}", doc, value=value)

        info = GaugeMetricFamily("aegis_node_info", "This node: id, cluster and version (always 1).",
                                 labels=["node", "cluster", "version"])
        info.add_metric([node.id, node.cfg.cluster, C.SERVER_VERSION], 1)
        yield info
        yield gauge("term", "The current Raft term.", raft.term)
        role = GaugeMetricFamily("aegis_role", "1 for this node's current role, 0 for the others.",
                                 labels=["role"])
        current = status.role_name(node)
        for r in ROLES:
            role.add_metric([r], 1 if r == current else 0)
        yield role
        yield gauge("has_leader", "1 when this node knows a leader.", 0 if raft.leader_id is None else 1)
        yield counter("leader_changes", "Times this node saw the leader change to another node.",
                      m.leader_changes)
        healthy, _ = node_health(node)
        yield gauge("healthy", "1 when /health would answer 200.", 1 if healthy else 0)
        for key, doc in (("commit_index", "The highest log index known to be committed."),
                         ("applied_index", "The highest log index applied to the state."),
                         ("last_log_index", "The last index in this node's log."),
                         ("snapshot_index", "The log is compacted up to here."),
                         ("state_durable_index", "The applied index of the state on disk.")):
            yield gauge(key, doc, _num(f[key]))
        yield gauge("members", "Members of the cluster (voters and learners).", len(raft.membership.members))
        yield gauge("voters", "Voting members of the cluster.", len(raft.membership.voters))
        yield gauge("keys", "Keys in the state.", _num(f["keys"]))
        stats = node.stats
        yield counter("proposals", "Client writes proposed to the Raft log by this node as leader.", m.proposals)
        yield counter("writes", "Write commands received from clients (forwarded ones included).",
                      stats["total_writes"])
        yield counter("reads", "Read commands received from clients.", stats["total_reads"])
        yield counter("forwarded", "Commands this follower forwarded to the leader.", stats["forwarded"])
        yield counter("expired_keys", "Keys this leader removed after their deadline.", stats["expired_keys"])
        yield counter("applied_entries", "Committed log entries applied to the state.", m.applied_entries)
        yield _histogram("batch_commands", "Client writes proposed together in one turn of the Raft loop.",
                         m.batch_commands)
        yield _histogram("batch_entries", "Log entries made durable together in one write (one fsync).",
                         m.batch_entries)
        fs = HistogramMetricFamily("aegis_fsync_duration_seconds",
                                   "One durable write and its fsync: db=log (entries, term, vote) or "
                                   "db=state (the applied state, in the background).", labels=["db"])
        for db, h in m.fsync.items():
            fs.add_metric([db], h.buckets(), h.sum)
        yield fs
        yield _histogram("apply_duration_seconds", "Applying one batch of committed entries to the state.",
                         m.apply)
        req_total = CounterMetricFamily("aegis_requests", "Client commands answered, by command.",
                                        labels=["command"])
        req_hist = HistogramMetricFamily("aegis_request_duration_seconds",
                                         "From reading a client command to its reply, by command.",
                                         labels=["command"])
        for name, h in m.command_histograms():
            req_total.add_metric([name], h.count)
            req_hist.add_metric([name], h.buckets(), h.sum)
        yield req_total
        yield req_hist
        errs = CounterMetricFamily("aegis_errors", "Error replies to clients, by kind (the reply's prefix).",
                                   labels=["kind"])
        for kind in sorted(m.errors):
            errs.add_metric([kind], m.errors[kind])
        yield errs
        snaps = CounterMetricFamily("aegis_snapshots", "Snapshots: taken (log compacted), installed (from "
                                    "the leader), sent (to a follower), backup (SNAPSHOT CREATE).", labels=["kind"])
        snap_t = HistogramMetricFamily("aegis_snapshot_duration_seconds", "How long each snapshot took, by kind.",
                                       labels=["kind"])
        snap_b = GaugeMetricFamily("aegis_snapshot_size_bytes", "Size of the latest snapshot of each kind "
                                   "(taken: the state database on disk; others: the snapshot file).",
                                   labels=["kind"])
        for kind, h in m.snapshots.items():
            snaps.add_metric([kind], h.count)
            snap_t.add_metric([kind], h.buckets(), h.sum)
            if kind in m.snapshot_bytes:
                snap_b.add_metric([kind], m.snapshot_bytes[kind])
        yield snaps
        yield snap_t
        yield snap_b
        data = Path(node.cfg.data_dir)
        size = GaugeMetricFamily("aegis_db_size_bytes", "Disk space of the LMDB files: db=log or db=state.",
                                 labels=["db"])
        size.add_metric(["log"], _disk_bytes(data / "data.mdb"))
        size.add_metric(["state"], _disk_bytes(data / "state" / "data.mdb"))
        yield size
        yield from self._peers()
        yield gauge("connected_clients", "Open client connections.", _num(f["connected_clients"]))
        rx = CounterMetricFamily("aegis_network_received_bytes", "Bytes received: traffic=client or peer.",
                                 labels=["traffic"])
        rx.add_metric(["client"], m.client_bytes_in)
        rx.add_metric(["peer"], m.peer_bytes_in)
        yield rx
        tx = CounterMetricFamily("aegis_network_sent_bytes", "Bytes sent: traffic=client or peer.",
                                 labels=["traffic"])
        tx.add_metric(["client"], m.client_bytes_out)
        tx.add_metric(["peer"], node.pool.bytes_sent)
        yield tx

    def _peers(self) -> Iterator[Metric]:
        node = self.node
        raft = node.raft
        m = node.metrics
        last = int(raft.log.last_index())
        lag = GaugeMetricFamily("aegis_peer_replication_lag_entries",
                                "On the leader: its last log index minus the peer's match index.", labels=["peer"])
        match = GaugeMetricFamily("aegis_peer_match_index", "On the leader: the peer's match index.",
                                  labels=["peer"])
        if raft.is_leader():
            for pid in sorted(raft.progress):
                if pid == node.id:
                    continue
                pr = raft.progress[pid]
                lag.add_metric([pid], max(0, last - int(pr.match_index)))
                match.add_metric([pid], int(pr.match_index))
        yield lag
        yield match
        rtt = HistogramMetricFamily("aegis_peer_round_trip_seconds",
                                    "On the leader: heartbeat to its answer, per peer.", labels=["peer"])
        for pid in sorted(m.peer_rtt):
            h = m.peer_rtt[pid]
            rtt.add_metric([pid], h.buckets(), h.sum)
        yield rtt
        up = GaugeMetricFamily("aegis_peer_up", "1 when the failure detector hears from the peer.",
                               labels=["peer"])
        connected = GaugeMetricFamily("aegis_peer_connected", "1 when this node's connection to the peer is up.",
                                      labels=["peer"])
        from .node import NodeStatus

        for pid in sorted(raft.membership.members):
            if pid == node.id:
                continue
            try:
                status = node.cluster.health(pid).status
            except KeyError:
                continue
            up.add_metric([pid], 1 if status is NodeStatus.HEALTHY else 0)
            connected.add_metric([pid], 1 if node.pool.connected.get(pid) else 0)
        yield up
        yield connected


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(f"aegis_{name}", doc)
    fam.add_metric([], h.buckets(), h.sum)
    return fam


def new_registry(node: Node) -> CollectorRegistry:
    """A registry of this node's own (not prometheus-client's global one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node))
    ProcessCollector(registry=reg)
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


# ---------------------------------------------------------------------- HTTP
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD: Final = 8 << 10
HTTP_TIMEOUT: Final = 10.0
MAX_HTTP_CONNECTIONS: Final = 32

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   408: "Request Timeout", 431: "Request Header Fields Too Large",
                   500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    reason: str


def parse_request_head(head: bytes) -> HttpRequest | HttpError | None:
    """The request line of an HTTP/1.x request head; None while the head is incomplete."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end < 0:
        return HttpError(431, "request head too large") if len(head) > MAX_HEAD else None
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return HttpError(400, "expected an HTTP/1.x request line")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return HttpError(400, "the request line is not ASCII")
    path = target.split("?", 1)[0]
    return HttpRequest(method, path)


def http_response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
                  head_only: bool = False, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store",
             *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)


def route(req: HttpRequest, metrics: Callable[[], bytes], health: Callable[[], tuple[bool, str]]) -> bytes:
    """The whole application: GET (or HEAD) /metrics and /health."""
    if req.method not in ("GET", "HEAD"):
        return http_response(405, b"only GET and HEAD\n", extra=[("Allow", "GET, HEAD")])
    head_only = req.method == "HEAD"
    if req.path == "/metrics":
        return http_response(200, metrics(), CONTENT_TYPE, head_only=head_only)
    if req.path == "/health":
        ok, reason = health()
        return http_response(200 if ok else 503, reason.encode() + b"\n", head_only=head_only)
    return http_response(404, b"not found: try /metrics or /health\n", head_only=head_only)


async def serve_http(nursery: trio.Nursery, host: str, port: int, metrics: Callable[[], bytes],
                     health: Callable[[], tuple[bool, str]]) -> int:
    """Listen on host:port in `nursery`; returns the port bound (for port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = trio.Semaphore(MAX_HTTP_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await _send_quietly(stream, http_response(503, b"too many metrics connections\n"))
                return
            try:
                await _serve_one(stream, metrics, health)
            finally:
                slots.release()

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    bound: int = listeners[0].socket.getsockname()[1]
    return bound


async def _serve_one(stream: trio.SocketStream, metrics: Callable[[], bytes],
                     health: Callable[[], tuple[bool, str]]) -> None:
    buf = bytearray()
    parsed: HttpRequest | HttpError | None = None
    with trio.move_on_after(HTTP_TIMEOUT) as scope:
        while parsed is None:
            try:
                data = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            buf += data
            parsed = parse_request_head(bytes(buf))
    if scope.cancelled_caught:
        await _send_quietly(stream, http_response(408, b"no complete request in time\n"))
        return
    if isinstance(parsed, HttpError):
        await _send_quietly(stream, http_response(parsed.status, parsed.reason.encode() + b"\n"))
        return
    assert parsed is not None
    try:
        reply = route(parsed, metrics, health)
    except Exception:  # noqa: BLE001 - a broken scrape must not take the node down
        log.exception("serving %s %s", parsed.method, parsed.path)
        reply = http_response(500, b"internal error (see the node's log)\n")
    await _send_quietly(stream, reply)


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> None:
    try:
        with trio.move_on_after(HTTP_TIMEOUT):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
