"""`aegis health`: ask every member of a cluster how it is, from the outside.

The members are the addresses given plus every member that an answering node's
``CLUSTER NODES`` names. Each is asked for its own ``INFO`` (never one node's view of the
others). A member is healthy when it answers, knows the same leader in the same term as the
leader itself, and has applied to within `MAX_LAG` entries of the leader's commit index.

Exit codes (etcdctl endpoint health's spirit): 0 the cluster has a leader and every member
is healthy; 1 degraded: a leader and a healthy quorum of voters, but not everyone; 2 no
leader, no healthy quorum, or no node answered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

MAX_LAG = 100
TIMEOUT_S = 2.0


@dataclasses.dataclass
class Member:
    id: str
    addr: str
    voter: bool = True
    reachable: bool = False
    role: str = ""
    leader_id: str = ""
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    healthy: bool = False
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Health:
    leader: str | None
    term: int
    members: list[Member]
    quorum: int
    healthy_voters: int
    voters: int

    @property
    def exit_code(self) -> int:
        if self.leader is None or self.healthy_voters < self.quorum:
            return 2
        return 0 if all(m.healthy for m in self.members) else 1

    @property
    def verdict(self) -> str:
        return {0: "healthy", 1: "degraded", 2: "unavailable"}[self.exit_code]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.verdict, "exit_code": self.exit_code, "leader": self.leader, "term": self.term,
                "voters": self.voters, "quorum": self.quorum, "healthy_voters": self.healthy_voters,
                "members": [m.to_json() for m in self.members]}

    def lines(self) -> list[str]:
        out = []
        width = max([len(m.id) for m in self.members] + [2])
        awidth = max([len(m.addr) for m in self.members] + [4])
        for m in self.members:
            kind = "voter" if m.voter else "learner"
            state = "healthy" if m.healthy else f"unhealthy: {m.why}"
            role = m.role or "-"
            out.append(f"{m.id:<{width}}  {m.addr:<{awidth}}  {kind:<7}  {role:<9}  {state}")
        leader = f"leader {self.leader} (term {self.term})" if self.leader else "no leader"
        out.append(f"cluster {self.verdict}: {leader}, {self.healthy_voters} of {self.voters} voters healthy "
                   f"(quorum {self.quorum})")
        return out


def parse_cluster_nodes(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """``CLUSTER NODES`` lines: ``id addr role k=v ...`` -> (id, addr, fields)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        fields: dict[str, str] = {}
        for i, p in enumerate(parts[2:]):
            k, eq, v = p.partition("=")
            fields[k if eq else f"_{i}"] = v if eq else k
        out.append((parts[0], parts[1], fields))
    return out


def classify(members: list[Member], voters: set[str], max_lag: int = MAX_LAG) -> Health:
    """Decide each member's health and the cluster's, from what each member said itself."""
    leaders = [m for m in members if m.reachable and m.role == "leader"]
    leader = max(leaders, key=lambda m: m.term) if leaders else None
    for m in members:
        m.voter = m.id in voters if voters else m.voter
        if not m.reachable:
            m.why = m.why or "unreachable"
            continue
        if leader is None:
            m.why = "no leader"
        elif m.term != leader.term or m.leader_id != leader.id:
            m.why = f"sees leader {m.leader_id or 'none'} in term {m.term}, not {leader.id} in term {leader.term}"
        elif leader.commit_index - m.applied_index > max_lag:
            m.why = f"applied {m.applied_index}, {leader.commit_index - m.applied_index} behind the leader's commit"
        else:
            m.healthy = True
    nvoters = len(voters) if voters else sum(m.voter for m in members)
    quorum = nvoters // 2 + 1
    healthy_voters = sum(1 for m in members if m.healthy and m.voter)
    return Health(leader.id if leader else None, leader.term if leader else 0, members, quorum, healthy_voters,
                  nvoters)


async def _ask(addr: str, token: str | None) -> tuple[dict[str, str], str]:
    from .client import AegisClient

    with trio.fail_after(TIMEOUT_S):
        client = await AegisClient.connect(addr, token=token, timeout=TIMEOUT_S)
        try:
            info = await client.info()
            nodes = await client.execute("CLUSTER", "NODES")
        finally:
            await client.aclose()
    return info, nodes.decode() if isinstance(nodes, bytes) else str(nodes)


async def gather(addrs: list[str], token: str | None = None) -> Health:
    answers: dict[str, tuple[dict[str, str], str] | Exception] = {}

    async def ask(addr: str) -> None:
        try:
            answers[addr] = await _ask(addr, token)
        except Exception as exc:  # an unreachable member is a finding, not a failure
            answers[addr] = exc

    async with trio.open_nursery() as nursery:
        for a in dict.fromkeys(addrs):
            nursery.start_soon(ask, a)
    # Members named by any answering node that were not asked yet.
    known: dict[str, str] = {}  # addr -> id
    voters: set[str] = set()
    for ans in answers.values():
        if isinstance(ans, Exception):
            continue
        info, nodes = ans
        for nid, addr, _ in parse_cluster_nodes(nodes):
            known.setdefault(addr, nid)
        voters |= {v for v in info.get("voters", "").split(",") if v}
    missing = [a for a in known if a not in answers]
    if missing:
        async with trio.open_nursery() as nursery:
            for a in missing:
                nursery.start_soon(ask, a)
    members: list[Member] = []
    for addr, ans in answers.items():
        if isinstance(ans, Exception):
            members.append(Member(known.get(addr, "?"), addr, why=f"unreachable ({ans or type(ans).__name__})"))
            continue
        info = ans[0]
        members.append(Member(
            info.get("node_id", known.get(addr, "?")), addr, reachable=True, role=info.get("role", ""),
            leader_id=info.get("leader_id", ""), term=int(info.get("term", 0) or 0),
            commit_index=int(info.get("commit_index", 0) or 0),
            applied_index=int(info.get("applied_index", 0) or 0)))
    members.sort(key=lambda m: (m.id, m.addr))
    return classify(members, voters)
