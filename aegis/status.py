"""What a node says about itself: INFO's fields, CLUSTER INFO / CLUSTER NODES and MEMBER
LIST text. Functions of a running `aegis.server.Node`, read on the trio thread; they
change nothing. The field names are a contract (DESIGN.md §4): extend, never rename."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from . import __version__
from .cluster import ClusterState
from .node import NodeStatus
from .raft import Role

if TYPE_CHECKING:
    from .server import Node

__all__ = ["role_name", "info_fields", "info_text", "cluster_state", "cluster_info_text", "cluster_nodes_text",
           "member_lines"]



def role_name(node: Node) -> str:
    raft = node.raft
    if raft.is_learner():
        return "learner"
    return {Role.LEADER: "leader", Role.CANDIDATE: "candidate", Role.PRE_CANDIDATE: "candidate"}.get(
        raft.role, "follower")


def info_fields(node: Node) -> dict[str, object]:
    raft = node.raft
    m = raft.membership
    snap = raft.log.snapshot_meta()
    leader = raft.leader_id
    return {
        "node_id": node.id,
        "cluster": node.cfg.cluster,
        "role": role_name(node),
        "leader_id": leader or "",
        "leader_addr": node.addresses().get(leader, "") if leader else "",
        "term": raft.term,
        "voted_for": raft.voted_for or "",
        "commit_index": raft.commit_index,
        "applied_index": node.sm.last_applied,
        "last_log_index": raft.log.last_index(),
        "first_log_index": raft.log.first_index(),
        "snapshot_index": snap.index,
        "snapshot_term": snap.term,
        "members": ",".join(sorted(m.members)),
        "voters": ",".join(sorted(m.voters)),
        "learners": ",".join(sorted(m.learners)),
        "cluster_state": cluster_state(node).label,
        "keys": len(node.sm),
        "state_durable_index": node.kv.durable_applied,  # applied state on disk (the log replays the rest)
        "state_pending_keys": node.kv.overlay_keys(),
        "feed_revision": node.feed.current,
        "feed_history_floor": node.kv.history_floor(),  # CHANGES ... FROM resumes from here on
        "connected_clients": node.clients_connected,
        "client_input_bytes": node.client_input.held,  # in unfinished requests (--client-buffer-mb)
        "disk_full": int(node.space.full),  # the leader refuses writes (aegis.space)
        "disk_full_refused": node.space.refused,
        "client_input_refused": node.client_input.refused,
        "tcp_port": node.port,
        "data_dir": os.path.abspath(node.cfg.data_dir),
        "fsync": "always" if node.cfg.fsync else "never (UNSAFE)",
        "uptime_in_seconds": int(time.time() - node.started_at),
        "process_id": os.getpid(),
        "aegis_version": __version__,
        **node.stats,
        **node.zdict.info(),
    }


def info_text(node: Node, sections: tuple[str, ...] = ()) -> str:
    lines = ["# Aegis"]
    lines += [f"{k}:{v}" for k, v in info_fields(node).items()]
    return "\r\n".join(lines) + "\r\n"


def cluster_state(node: Node) -> ClusterState:
    stats = node.cluster.stats()
    if node.raft.leader_id is None and not node.raft.is_leader():
        return ClusterState.NO_QUORUM if not stats.has_quorum else stats.state
    return stats.state


def cluster_info_text(node: Node) -> str:
    s = node.cluster.stats()
    raft = node.raft
    fields = {
        "cluster_name": node.cfg.cluster,
        "cluster_state": cluster_state(node).label,
        "cluster_leader": raft.leader_id or "",
        "cluster_term": raft.term,
        "cluster_commit_index": raft.commit_index,
        "cluster_size": len(raft.membership.voters),
        "cluster_voters": len(raft.membership.voters),
        "cluster_learners": len(raft.membership.learners),
        "cluster_quorum": raft.quorum(),
        "cluster_healthy_nodes": s.healthy_nodes,
        "cluster_suspect_nodes": s.suspect_nodes,
        "cluster_down_nodes": s.down_nodes,
        "cluster_has_quorum": int(s.has_quorum),
        "cluster_my_id": node.id,
    }
    return "".join(f"{k}:{v}\r\n" for k, v in fields.items())


def cluster_nodes_text(node: Node) -> str:
    """One line per member: ``id addr role=… match=… health=… last_heard_ms=… flags=… error=…``."""
    raft = node.raft
    m = raft.membership
    addrs = node.addresses()
    now = time.monotonic()
    lines = []
    for nid in sorted(m.members):
        if nid == node.id:
            role = role_name(node)
        elif nid == raft.leader_id:
            role = "leader"
        elif nid in m.learners:
            role = "learner"
        else:
            role = "follower"
        if raft.is_leader():
            pr = raft.progress.get(nid)
            match = pr.match_index if pr is not None else 0
        else:
            match = raft.log.last_index() if nid == node.id else -1
        try:
            h = node.cluster.health(nid)
            health = h.status.label if hasattr(h.status, "label") else str(h.status)
            heard_ms = int((now - h.last_heard) * 1000) if nid != node.id else 0
            err = (h.error or "-").replace(" ", "_") if h.status != NodeStatus.HEALTHY else "-"
        except KeyError:
            health, heard_ms, err = "Unknown", -1, "-"
        flags = "myself" if nid == node.id else "-"
        lines.append(f"{nid} {addrs.get(nid, '-')} role={role} match={match} health={health} "
                     f"last_heard_ms={heard_ms} flags={flags} error={err}")
    return "\n".join(lines) + "\n"


def member_lines(node: Node) -> list[str]:
    m = node.raft.membership
    addrs = node.addresses()
    out = []
    for nid in sorted(m.members):
        kind = "learner" if nid in m.learners else "voter"
        lead = " leader" if nid == node.raft.leader_id else ""
        out.append(f"{nid} {addrs.get(nid, '-')} {kind}{lead}")
    return out
