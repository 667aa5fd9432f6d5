"""`aegis member …`, `aegis leader transfer`, `aegis health`, `aegis status --cluster`.

Theory of operation
-------------------
Every command here starts from the addresses the operator gives (`--addr`, any nodes, not
necessarily the leader) and asks each node about itself: one pipeline of ``INFO``,
``CLUSTER NODES`` and ``MEMBER LIST`` per node (a *probe*). Nothing is taken on one node's
word when the node concerned can be asked directly:

* The membership comes from the leader's ``MEMBER LIST`` (the latest configuration), or,
  with no leader in sight, from the node with the highest term and commit index. Members
  not yet probed are probed at the address that list gives.
* The leader is a node that says ``role:leader`` about itself; with several (a deposed leader
  that has not heard yet), the one with the highest term. A node that only *knows* a leader
  (``leader_addr``) adds that address to the next round.
* Membership changes go to the leader found that way (a follower would forward them, which
  is the fallback when the leader's address is not reachable from here). While there is no
  leader the CLI retries for ``--wait`` seconds. ``-TRYAGAIN`` (nothing written) is retried by
  the client; ``-NOLEADER``/``-TIMEOUT`` after sending leave the outcome unknown and are
  reported as such, never resent.

Health (`classify`) is a pure function of the probes, so the rules are unit-tested: a member
is healthy when it answers, sees the same leader in the same term, is within ``max_lag``
entries of the leader's commit index, and the leader does not mark it ``Down``. The cluster
is *healthy* (exit 0) with a leader and every member healthy, *degraded* (1) with a leader
and a majority of voters healthy, *unavailable* (2) otherwise.

JSON documents (``--json``) use the field names of the dataclasses below; they are part of
the CLI contract (README, "Operating Aegis"): extend, never rename.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TextIO, TypeVar

from .errors import AegisError, CommandError

_T = TypeVar("_T")

EXIT_OK: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_UNAVAILABLE: Final = 2
EXIT_FAILED: Final = 1

DEFAULT_ADDR: Final = "127.0.0.1:7001"
DEFAULT_MAX_LAG: Final = 1000
PROBE_TIMEOUT: Final = 3.0


class OpsError(AegisError):
    """A CLI operation that cannot go ahead (no node answers, no leader, refused locally)."""


# --------------------------------------------------------------------------- parsing


def parse_addrs(text: str) -> list[str]:
    """``"127.0.0.1:7001,7002"`` → normalised, de-duplicated ``HOST:PORT`` list."""
    from .client import normalize_address

    out: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            addr = normalize_address(item)
        except ValueError as exc:
            raise ValueError(f"bad address {item!r} in --addr: {exc}") from None
        if addr not in out:
            out.append(addr)
    if not out:
        raise ValueError("--addr needs at least one HOST:PORT")
    return out


@dataclass(frozen=True, slots=True)
class Member:
    """One line of ``MEMBER LIST``: ``<id> <addr> voter|learner [leader]``."""

    id: str
    addr: str
    role: str  # "voter" or "learner": the configuration, not what the node is doing
    is_leader: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "addr": self.addr, "role": self.role, "is_leader": self.is_leader}


def parse_member_list(reply: object) -> list[Member]:
    """MEMBER LIST's reply (an array of lines) as members; ValueError on anything else."""
    if not isinstance(reply, list):
        raise ValueError(f"MEMBER LIST replied with {type(reply).__name__}, not an array")
    members: list[Member] = []
    for item in reply:
        line = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        words = line.split()
        if len(words) < 3 or words[2] not in ("voter", "learner"):
            raise ValueError(f"unexpected MEMBER LIST line {line!r}")
        members.append(Member(words[0], words[1], words[2], "leader" in words[3:]))
    return members


def _int(fields: dict[str, str] | None, name: str) -> int | None:
    if fields is None:
        return None
    try:
        return int(fields[name])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Probe:
    """What one address said about its node (``info`` is None when it did not answer)."""

    addr: str
    info: dict[str, str] | None = None
    nodes: tuple[dict[str, str], ...] = ()
    members: tuple[Member, ...] = ()
    error: str | None = None
    took_ms: float = 0.0

    @property
    def reachable(self) -> bool:
        return self.info is not None

    @property
    def node_id(self) -> str | None:
        return self.info.get("node_id") if self.info else None

    @property
    def role(self) -> str | None:
        return self.info.get("role") if self.info else None

    @property
    def leader_id(self) -> str | None:
        return (self.info.get("leader_id") or None) if self.info else None

    @property
    def term(self) -> int | None:
        return _int(self.info, "term")

    @property
    def commit_index(self) -> int | None:
        return _int(self.info, "commit_index")

    @property
    def applied_index(self) -> int | None:
        return _int(self.info, "applied_index")

    def recency(self) -> tuple[int, int]:
        return (self.term or 0, self.commit_index or 0)


# --------------------------------------------------------------------------- health (pure)


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as `health` and `status --cluster` report it (the JSON row)."""

    id: str | None  # None: an address that did not answer, when no member list is known
    addr: str
    membership: str  # "voter" / "learner" (configuration); "unknown" with no member list
    reachable: bool
    healthy: bool
    reason: str | None  # why not healthy; None when healthy
    role: str | None = None  # what the node says it is doing: leader, follower, candidate, learner
    leader_id: str | None = None
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_log_index: int | None = None
    lag: int | None = None  # entries between the leader's commit index and this member's applied index
    last_heard_ms: int | None = None  # by the leader; 0 for the leader itself
    leader_view: str | None = None  # the leader's health label for it (Healthy, Suspect, Down …)
    version: str | None = None
    took_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "addr": self.addr, "membership": self.membership, "role": self.role,
            "reachable": self.reachable, "healthy": self.healthy, "reason": self.reason,
            "leader_id": self.leader_id, "term": self.term, "commit_index": self.commit_index,
            "applied_index": self.applied_index, "last_log_index": self.last_log_index, "lag": self.lag,
            "last_heard_ms": self.last_heard_ms, "leader_view": self.leader_view, "version": self.version,
            "took_ms": None if self.took_ms is None else round(self.took_ms, 2),
        }


@dataclass(frozen=True, slots=True)
class ClusterReport:
    health: str  # "healthy", "degraded", "unavailable"
    exit_code: int
    summary: str
    leader_id: str | None
    term: int | None
    voters: int
    quorum: int
    healthy_voters: int
    members: tuple[MemberStatus, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "health": self.health, "exit_code": self.exit_code, "summary": self.summary,
            "leader_id": self.leader_id, "term": self.term, "voters": self.voters, "quorum": self.quorum,
            "healthy_voters": self.healthy_voters, "members": [m.to_json() for m in self.members],
        }


def pick_leader(probes: Iterable[Probe]) -> Probe | None:
    """The node that says it leads, in the highest term (a deposed leader may not know yet)."""
    leaders = [p for p in probes if p.reachable and p.role == "leader"]
    return max(leaders, key=lambda p: p.recency()) if leaders else None


def pick_view(probes: Iterable[Probe]) -> Probe | None:
    """Whose MEMBER LIST to believe: the leader's, else the most up-to-date node's."""
    answered = [p for p in probes if p.reachable and p.members]
    if not answered:
        return None
    return pick_leader(answered) or max(answered, key=lambda p: p.recency())


def classify(members: Sequence[Member], by_id: dict[str, Probe], *, max_lag: int = DEFAULT_MAX_LAG,
             unreached: dict[str, str] | None = None) -> ClusterReport:
    """The health of every member and of the cluster, from each member's own probe.

    `by_id` maps a member id to the probe of that node (missing: it did not answer);
    `unreached` gives, per member id, why it could not be reached.
    """
    unreached = unreached or {}
    leader = pick_leader(p for nid, p in by_id.items() if any(m.id == nid for m in members))
    leader_id = leader.node_id if leader else None
    leader_term = leader.term if leader else None
    leader_commit = leader.commit_index if leader else None
    leader_nodes = {n.get("id", ""): n for n in leader.nodes} if leader else {}
    rows: list[MemberStatus] = []
    for m in members:
        p = by_id.get(m.id)
        seen = leader_nodes.get(m.id, {})
        heard = _maybe_int(seen.get("last_heard_ms"))
        view = seen.get("health")
        if p is None or not p.reachable:
            why = unreached.get(m.id) or (p.error if p is not None else None) or "unreachable: no answer"
            rows.append(MemberStatus(m.id, m.addr, m.role, False, False, why,
                                     last_heard_ms=heard, leader_view=view))
            continue
        info = p.info or {}
        applied = p.applied_index
        lag = max(0, leader_commit - applied) if leader_commit is not None and applied is not None else None
        reason: str | None = None
        if leader is None:
            reason = "no leader" if p.leader_id is None else f"sees leader {p.leader_id}, which does not lead"
        elif p.leader_id != leader_id:
            reason = "sees no leader" if p.leader_id is None else f"sees leader {p.leader_id}, not {leader_id}"
        elif p.term != leader_term:
            reason = f"in term {p.term}, the leader in {leader_term}"
        elif lag is not None and lag > max_lag:
            reason = f"{lag} entries behind (more than {max_lag})"
        elif m.id != leader_id and view == "Down":
            reason = f"the leader has not heard from it for {heard} ms"
        rows.append(MemberStatus(
            m.id, m.addr, m.role, True, reason is None, reason, role=p.role, leader_id=p.leader_id,
            term=p.term, commit_index=p.commit_index, applied_index=applied,
            last_log_index=_maybe_int(info.get("last_log_index")), lag=lag,
            last_heard_ms=0 if m.id == leader_id else heard, leader_view=view,
            version=info.get("aegis_version") or None, took_ms=p.took_ms,
        ))
    voters = [r for r in rows if r.membership == "voter"]
    quorum = len(voters) // 2 + 1
    healthy_voters = sum(1 for r in voters if r.healthy)
    if not members:
        health, code = "unavailable", EXIT_UNAVAILABLE
        summary = "unavailable: no node answered"
    elif leader is None:
        health, code = "unavailable", EXIT_UNAVAILABLE
        answering = sum(1 for r in voters if r.reachable)
        summary = f"unavailable: no leader ({answering} of {len(voters)} voters answer)"
    elif healthy_voters < quorum:
        health, code = "unavailable", EXIT_UNAVAILABLE
        summary = (f"unavailable: {healthy_voters} of {len(voters)} voters healthy, "
                   f"quorum is {quorum} (leader {leader_id}, term {leader_term})")
    elif all(r.healthy for r in rows):
        health, code = "healthy", EXIT_OK
        summary = f"healthy: {_plural(len(rows), 'member')}, leader {leader_id}, term {leader_term}"
    else:
        bad = sum(1 for r in rows if not r.healthy)
        health, code = "degraded", EXIT_DEGRADED
        summary = (f"degraded: {bad} of {len(rows)} members unhealthy, {healthy_voters} of {len(voters)} "
                   f"voters healthy (quorum {quorum}), leader {leader_id}, term {leader_term}")
    return ClusterReport(health, code, summary, leader_id, leader_term, len(voters), quorum, healthy_voters,
                         tuple(rows))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _maybe_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- formatting (pure)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain text columns, left-aligned, two spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None,
                *, title: str | None = None) -> None:
    """A rich table on a terminal wide enough for it, plain aligned text otherwise (pipes,
    files, tests, narrow terminals: rich would drop or cut columns to fit, and this never does)."""
    out = out or sys.stdout
    plain = format_table(headers, rows)
    if out.isatty():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        needed = max(len(line) for line in plain.splitlines()) + len(headers) + 2
        if needed <= console.width:
            table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
            for h in headers:
                table.add_column(h, no_wrap=True)
            for row in rows:
                table.add_row(*("-" if c is None else str(c) for c in row))
            console.print(table)
            return
    if title:
        out.write(title + "\n")
    out.write(plain)


MEMBER_HEADERS: Final = ("ID", "ADDRESS", "ROLE", "LEADER")


def member_rows(members: Sequence[Member]) -> list[list[object]]:
    return [[m.id, m.addr, m.role, "*" if m.is_leader else ""] for m in members]


def _ago(ms: int | None) -> str:
    if ms is None or ms < 0:
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.0f} s"


STATUS_HEADERS: Final = ("ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "HEALTH",
                         "LAST HEARD", "VERSION")


def status_rows(report: ClusterReport) -> list[list[object]]:
    rows: list[list[object]] = []
    for r in report.members:
        health = "healthy" if r.healthy else (r.reason or "unhealthy")
        role = r.role if r.reachable else r.membership
        rows.append([r.id, r.addr, role, r.term, r.commit_index, r.applied_index, r.lag, health,
                     _ago(r.last_heard_ms), r.version])
    return rows


def health_lines(report: ClusterReport) -> str:
    """`aegis health`: one line per member, then the verdict."""
    rows = []
    for r in report.members:
        role = r.role if r.reachable else r.membership
        verdict = "healthy" if r.healthy else f"unhealthy: {r.reason}"
        took = f"took {r.took_ms:.1f} ms" if r.reachable and r.took_ms is not None else ""
        rows.append([r.id, r.addr, role, verdict, took])
    body = format_table(("ID", "ADDRESS", "ROLE", "HEALTH", ""), rows) if rows else ""
    return body + f"cluster is {report.summary}\n"


# --------------------------------------------------------------------------- talking to nodes


async def probe(addr: str, token: str | None, timeout: float = PROBE_TIMEOUT) -> Probe:
    """INFO, CLUSTER NODES and MEMBER LIST from one address, in one pipeline."""
    import trio

    from .client import AegisClient, AuthenticationError, parse_cluster_nodes, parse_info
    from .protocol import RespError

    start = trio.current_time()
    client = AegisClient([addr], token=token, timeout=timeout, connect_timeout=min(timeout, 2.0))
    try:
        replies = await client.pipeline([["INFO"], ["CLUSTER", "NODES"], ["MEMBER", "LIST"]],
                                        raise_on_error=False)
        took = (trio.current_time() - start) * 1000
        info_r, nodes_r, members_r = replies
        if isinstance(info_r, RespError):
            refused = info_r.kind in ("NOAUTH", "WRONGPASS")
            return Probe(addr, error=_access(info_r.text) if refused else f"error: {info_r.text}", took_ms=took)
        info = parse_info(info_r if isinstance(info_r, (bytes, str)) else b"")
        if "node_id" not in info:
            return Probe(addr, error="INFO has no node_id: not an Aegis node?", took_ms=took)
        nodes = tuple(parse_cluster_nodes(nodes_r)) if isinstance(nodes_r, (bytes, str)) else ()
        try:
            members = tuple(parse_member_list(members_r))
        except ValueError:
            members = ()
        return Probe(addr, info, nodes, members, None, took)
    except AuthenticationError as exc:
        return Probe(addr, error=_access(exc.message), took_ms=(trio.current_time() - start) * 1000)
    except AegisError as exc:
        return Probe(addr, error=f"unreachable: {_why(exc)}", took_ms=(trio.current_time() - start) * 1000)
    except (OSError, ValueError) as exc:
        return Probe(addr, error=f"unreachable: {exc or type(exc).__name__}",
                     took_ms=(trio.current_time() - start) * 1000)
    finally:
        await client.aclose()


def _access(text: str) -> str:
    return f"refused access: {text.rstrip('.')} (give --token or set AEGIS_TOKEN)"


def _why(exc: AegisError) -> str:
    text = exc.message
    prefix = "cannot reach any node: "
    if text.startswith(prefix):  # one address: "cannot reach any node: 127.0.0.1:7003 (connection refused)"
        text = text[len(prefix):]
        _, _, rest = text.partition(" (")
        text = rest.rstrip(")") if rest else text
    return text


async def probe_all(addrs: Sequence[str], token: str | None, timeout: float = PROBE_TIMEOUT) -> list[Probe]:
    import trio

    results: list[Probe | None] = [None] * len(addrs)

    async def one(i: int, addr: str) -> None:
        results[i] = await probe(addr, token, timeout)

    async with trio.open_nursery() as nursery:
        for i, addr in enumerate(addrs):
            nursery.start_soon(one, i, addr)
    return [p for p in results if p is not None]


@dataclass
class Survey:
    """Every address asked so far and what it said, keyed by address."""

    probes: dict[str, Probe] = field(default_factory=dict)

    def by_node(self) -> dict[str, Probe]:
        out: dict[str, Probe] = {}
        for p in self.probes.values():
            nid = p.node_id
            if nid is not None and (nid not in out or p.recency() > out[nid].recency()):
                out[nid] = p
        return out


async def survey(seeds: Sequence[str], token: str | None, timeout: float = PROBE_TIMEOUT,
                 *, rounds: int = 3) -> tuple[Survey, list[Member]]:
    """Probe the seeds, then every member (and leader address) they name, until nothing new."""
    from .client import normalize_address

    s = Survey()
    pending = list(dict.fromkeys(seeds))
    for _ in range(rounds):
        if not pending:
            break
        for p in await probe_all(pending, token, timeout):
            s.probes[p.addr] = p
        known_ids = set(s.by_node())
        more: list[str] = []
        view = pick_view(s.probes.values())
        candidates = [m.addr for m in (view.members if view else ()) if m.id not in known_ids]
        candidates += [p.info.get("leader_addr", "") for p in s.probes.values()
                       if p.info and p.leader_id and p.leader_id not in known_ids]
        for addr in candidates:
            try:
                addr = normalize_address(addr)
            except ValueError:
                continue
            if addr not in s.probes and addr not in more:
                more.append(addr)
        pending = more
    view = pick_view(s.probes.values())
    return s, list(view.members) if view else []


async def gather_report(seeds: Sequence[str], token: str | None, max_lag: int,
                        timeout: float = PROBE_TIMEOUT) -> tuple[ClusterReport, Survey]:
    s, members = await survey(seeds, token, timeout)
    by_id = s.by_node()
    unreached: dict[str, str] = {}
    for m in members:
        if m.id not in by_id:
            p = s.probes.get(m.addr)
            unreached[m.id] = p.error if p is not None and p.error else "unreachable: no answer"
    if not members:  # nobody answered: one row per address asked
        rows = tuple(MemberStatus(p.node_id, p.addr, "unknown", False, False, p.error)
                     for p in s.probes.values())
        report = classify([], {}, max_lag=max_lag)
        answered = [p for p in s.probes.values() if p.reachable]
        summary = (f"unavailable: no node answered (asked {', '.join(seeds)}; name more nodes with --addr)"
                   if not answered
                   else "unavailable: the nodes that answered list no members")
        return replace(report, members=rows, summary=summary), s
    return classify(members, by_id, max_lag=max_lag, unreached=unreached), s


async def find_leader(seeds: Sequence[str], token: str | None, wait: float,
                      timeout: float = PROBE_TIMEOUT) -> tuple[Probe, Survey]:
    """The leader's probe (or, if the leader cannot be reached from here, a node that knows
    it and will forward), retrying while there is none for up to `wait` seconds."""
    import trio

    deadline = trio.current_time() + wait
    while True:
        s, _ = await survey(seeds, token, timeout)
        leader = pick_leader(s.probes.values())
        if leader is not None:
            return leader, s
        answered = [p for p in s.probes.values() if p.reachable]
        forwarders = [p for p in answered if p.leader_id]
        if trio.current_time() >= deadline:
            if forwarders:  # the leader is not reachable from here; a follower forwards
                return max(forwarders, key=lambda p: p.recency()), s
            if not answered:
                errors = "; ".join(f"{p.addr}: {p.error}" for p in s.probes.values())
                raise OpsError(f"no node answered ({errors})")
            raise OpsError(f"no leader after {wait:g} s: {len(answered)} node(s) answer, none leads "
                           "(is a majority of the voters up?)")
        await trio.sleep(0.2)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Options:
    addrs: tuple[str, ...]
    token: str | None
    as_json: bool
    wait: float = 5.0
    timeout: float = 15.0


def _emit_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2))


def _fail(prog: str, message: str, opts: Options, *, outcome: str = "refused", **extra: Any) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    if opts.as_json:
        _emit_json({"error": message, "outcome": outcome, **extra})
    return EXIT_FAILED


def _error_text(exc: AegisError) -> str:
    """The error as the server put it (``ERR n2 is already a voter``), with a note when the
    outcome is unknown."""
    if isinstance(exc, CommandError):
        text = f"{exc.resp_prefix} {exc.message}" if type(exc) is CommandError else exc.message
    else:
        text = exc.resp_error()
    if not exc.definite:
        text += " (the change may or may not have been made: check `aegis member list`)"
    return text


def _run(fn: Callable[[], Awaitable[_T]]) -> _T:
    import trio

    return trio.run(fn)


def _membership_doc(leader: Probe, members: Sequence[Member]) -> dict[str, Any]:
    lid = next((m.id for m in members if m.is_leader), None) or leader.leader_id
    return {"leader_id": lid, "members": [m.to_json() for m in members]}


def _print_members(members: Sequence[Member]) -> None:
    print_table(MEMBER_HEADERS, member_rows(members))


async def _execute(addr: str, token: str | None, timeout: float, *args: str) -> object:
    from .client import AegisClient

    client = await AegisClient.connect([addr], token=token, timeout=timeout)
    try:
        return await client.execute(*args)
    finally:
        await client.aclose()


def member(action: str, opts: Options, *, node_id: str | None = None, address: str | None = None,
           learner: bool = False, yes: bool = False, stdin: TextIO | None = None) -> int:
    """`aegis member list|add|promote|remove`."""
    prog = f"aegis member {action}"
    stdin = stdin or sys.stdin

    async def locate() -> tuple[Probe, Survey]:
        return await find_leader(opts.addrs, opts.token, opts.wait)

    try:
        leader, s = _run(locate)
    except (OpsError, AegisError) as exc:
        return _fail(prog, exc.message, opts)
    members = list(leader.members)
    if action == "list":
        if opts.as_json:
            _emit_json(_membership_doc(leader, members))
        else:
            _print_members(members)
        return EXIT_OK
    assert node_id is not None
    target = next((m for m in members if m.id == node_id), None)
    if action == "remove":
        if target is None:
            return _fail(prog, f"ERR {node_id} is not a member", opts)
        if not yes:
            if not stdin.isatty():
                return _fail(prog, f"refusing to remove {node_id} without confirmation: stdin is not a "
                                   "terminal; pass --yes to remove it", opts)
            what = "the leader: leadership moves to another voter" if target.is_leader else f"a {target.role}"
            sys.stderr.write(f"Remove {node_id} ({target.addr}, {what}) from the cluster? [y/N] ")
            sys.stderr.flush()
            answer = stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                return _fail(prog, f"not removed: {node_id} stays a member", opts)
    argv: list[str]
    if action == "add":
        assert address is not None
        argv = ["MEMBER", "ADD", node_id, address] + (["LEARNER"] if learner else [])
    else:
        argv = ["MEMBER", action.upper(), node_id]
    known = list(dict.fromkeys([*opts.addrs, *(m.addr for m in members)]))
    if action == "remove" and target is not None:
        known = [a for a in known if a != target.addr] or known

    async def change() -> tuple[Probe, Survey]:
        await _execute(leader.addr, opts.token, opts.timeout, *argv)
        return await find_leader(known, opts.token, opts.wait)

    try:
        after, _ = _run(change)
    except (OpsError, AegisError) as exc:
        if isinstance(exc, OpsError):  # the change was answered OK; only the listing failed
            print(f"{prog}: the change is made, but listing the membership failed: {exc.message}",
                  file=sys.stderr)
            return EXIT_FAILED
        return _fail(prog, _error_text(exc), opts, outcome="refused" if exc.definite else "unknown")
    result = list(after.members)
    done = {
        "add": f"Added {node_id} ({address}) as a {'learner' if learner else 'voter'}.",
        "promote": f"Promoted {node_id} to a voter.",
        "remove": f"Removed {node_id}.",
    }[action]
    if opts.as_json:
        doc: dict[str, Any] = {"action": action, "node_id": node_id}
        if action == "add":
            doc.update(addr=address, learner=learner)
        doc.update(_membership_doc(after, result))
        _emit_json(doc)
    else:
        print(done)
        _print_members(result)
    return EXIT_OK


def leader_transfer(node_id: str, opts: Options) -> int:
    """`aegis leader transfer ID`."""
    prog = "aegis leader transfer"

    async def locate() -> tuple[Probe, Survey]:
        return await find_leader(opts.addrs, opts.token, opts.wait)

    try:
        leader, _ = _run(locate)
    except (OpsError, AegisError) as exc:
        return _fail(prog, exc.message, opts)
    previous = leader.node_id if leader.role == "leader" else leader.leader_id
    members = list(leader.members)
    if previous == node_id:
        after = leader
        note = f"{node_id} is already the leader; nothing to do."
    else:
        known = list(dict.fromkeys([*opts.addrs, *(m.addr for m in members)]))

        async def transfer() -> tuple[Probe, Survey]:
            await _execute(leader.addr, opts.token, opts.timeout, "LEADER", "TRANSFER", node_id)
            return await find_leader(known, opts.token, opts.wait)

        try:
            after, _ = _run(transfer)
        except OpsError as exc:
            print(f"{prog}: leadership moved, but listing the membership failed: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        except AegisError as exc:
            return _fail(prog, _error_text(exc).replace("check `aegis member list`", "check `aegis status --cluster`"),
                         opts, outcome="refused" if exc.definite else "unknown")
        note = f"Leadership moved from {previous} to {node_id}."
    result = list(after.members)
    if opts.as_json:
        _emit_json({"action": "transfer", "node_id": node_id, "previous_leader_id": previous,
                    **_membership_doc(after, result)})
    else:
        print(note)
        _print_members(result)
    return EXIT_OK


def health(opts: Options, *, max_lag: int = DEFAULT_MAX_LAG) -> int:
    """`aegis health`: 0 healthy, 1 degraded, 2 no quorum / nobody answers."""

    async def gather() -> tuple[ClusterReport, Survey]:
        return await gather_report(opts.addrs, opts.token, max_lag)

    report, _ = _run(gather)
    if opts.as_json:
        _emit_json(report.to_json())
    else:
        sys.stdout.write(health_lines(report))
    return report.exit_code


def status_cluster(opts: Options, *, max_lag: int = DEFAULT_MAX_LAG) -> int:
    """`aegis status --cluster`: one row per member, from each member's own INFO."""
    started = time.monotonic()

    async def gather() -> tuple[ClusterReport, Survey]:
        return await gather_report(opts.addrs, opts.token, max_lag)

    report, _ = _run(gather)
    if opts.as_json:
        _emit_json(report.to_json())
    else:
        took = (time.monotonic() - started) * 1000
        print_table(STATUS_HEADERS, status_rows(report), title=f"cluster is {report.summary} ({took:.0f} ms)")
    answered = any(r.reachable for r in report.members)
    return EXIT_OK if answered else EXIT_FAILED
