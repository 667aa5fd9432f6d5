"""``DASHBOARD``: the full-screen live cluster dashboard.

Theory of operation
-------------------
Every tick the `Collector` (trio thread) asks **every member directly** for ``INFO``, in
parallel, each on its own connection with a deadline shorter than the tick, so a dead or
hung node costs one timeout, never a stalled screen. Then it asks the leader (or, with no
leader, any node that answered) for ``CLUSTER INFO`` and ``CLUSTER NODES`` in one pipeline:
the leader's view supplies the cluster state, each member's health, match index and when
it was last heard from, and any member the dashboard did not know yet. Members are
remembered across ticks, so a node that dies stays on screen as a red row with its error.

Rates are deltas between two ticks: writes per second from the leader's ``total_writes``
(every write passes through the leader; followers forward theirs), or from the growth of its
``commit_index`` when INFO has no such counter; reads per second from the sum of every
member's ``total_reads`` (each node serves the reads it receives). Lag is how far a member trails the leader: the
leader's last log index minus the member's match index, or, without match indexes, the
leader's commit index minus what the member has applied.

The `Snapshot` is immutable and carries everything the screen needs; `render_snapshot`
turns it into rich renderables without I/O, so the dashboard is unit-tested on hand-made
snapshots. `run_dashboard` (main thread) shows it in a rich `Live` on the alternate screen,
modal: it owns the terminal until Ctrl-C (or ``q``), re-rendering at once on resize, with
keyboard echo off so keystrokes do not scribble over it. When every node is unreachable
the screen says so and keeps polling.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

import trio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aegis.client import AegisClient, parse_info
from aegis.errors import AegisError
from aegis.protocol import RespError

from .bridge import TrioBridge
from .connection import describe_error
from .render import HEALTH_STYLES, LEADER_MARK, ROLE_STYLES, STATE_STYLES
from .status import MemberRow, info_int, parse_member_lines, parse_members_field, pick, reply_text

__all__ = [
    "MemberStatus", "Snapshot", "Collector", "render_snapshot", "run_dashboard", "derive_state",
    "keyboard_quiet", "quit_key_pressed",
]

_WRITE_COUNTERS: Final = ("total_writes", "writes_total", "total_write_commands", "writes", "proposals_total", "total_proposals")
_READ_COUNTERS: Final = ("total_reads", "reads_total", "total_read_commands", "reads")


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One row of the dashboard."""

    node_id: str
    address: str
    reachable: bool
    role: str = ""
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_log_index: int | None = None
    match_index: int | None = None
    lag: int | None = None
    health: str = ""
    last_heard: str = ""
    error: str = ""
    is_leader: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole screen at one tick."""

    members: tuple[MemberStatus, ...]
    cluster_state: str = ""
    leader_id: str = ""
    leader_address: str = ""
    term: int | None = None
    write_rate: float | None = None
    read_rate: float | None = None
    write_rate_source: str = ""
    taken_at: float = 0.0  # wall clock, for the "updated" line
    error: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


def derive_state(members: Sequence[MemberStatus]) -> str:
    """Healthy / Degraded / NoQuorum from what the dashboard itself could reach (used only
    when CLUSTER INFO does not say)."""
    voters = [m for m in members if m.role != "learner"]
    if not voters:
        return "NoQuorum"
    up = sum(1 for m in voters if m.reachable)
    if up * 2 <= len(voters) or not any(m.is_leader and m.reachable for m in members):
        return "NoQuorum"
    return "Healthy" if up == len(voters) and all(m.reachable for m in members) else "Degraded"


class Collector:
    """Polls the cluster; lives in the trio thread; one `poll()` per tick."""

    def __init__(self, seeds: Mapping[str, str], *, token: str | None = None, timeout: float = 0.8) -> None:
        #: node id (or the address itself, until the id is known) -> address
        self.known: dict[str, str] = dict(seeds)
        self._token = token
        self._timeout = timeout
        self._clients: dict[str, AegisClient] = {}
        # (when, the leader's write counter, each member's read counter, the leader's id)
        self._last_counters: tuple[float, int | None, dict[str, int], str] | None = None

    def _client(self, address: str) -> AegisClient:
        client = self._clients.get(address)
        if client is None:
            client = AegisClient(
                [address], token=self._token, timeout=self._timeout,
                connect_timeout=min(self._timeout, 0.5), client_name="aegis-dashboard",
            )
            self._clients[address] = client
        return client

    async def _info(self, address: str, out: dict[str, dict[str, str] | str]) -> None:
        try:
            with trio.fail_after(self._timeout + 0.2):
                reply = await self._client(address).execute("INFO", timeout=self._timeout)
            out[address] = parse_info(reply_text(reply) or "")
        except (AegisError, OSError, trio.TooSlowError) as exc:
            out[address] = "no answer in time" if isinstance(exc, trio.TooSlowError) else _short(exc)

    async def poll(self) -> Snapshot:
        addresses = list(dict.fromkeys(self.known.values()))
        infos: dict[str, dict[str, str] | str] = {}
        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(self._info, address, infos)
        answered = {a: i for a, i in infos.items() if isinstance(i, dict)}
        self._learn_from_infos(answered)

        # The leader's view of the cluster, or any live node's.
        leader_addr = next((a for a, i in answered.items() if (pick(i, ("role",)) or "").lower() == "leader"), "")
        order = ([leader_addr] if leader_addr else []) + [a for a in answered if a != leader_addr]
        cluster: dict[str, str] = {}
        rows: list[MemberRow] = []
        for address in order[:2]:
            try:
                with trio.fail_after(self._timeout + 0.2):
                    replies = await self._client(address).pipeline(
                        [["CLUSTER", "INFO"], ["CLUSTER", "NODES"]], timeout=self._timeout,
                        raise_on_error=False,
                    )
            except (AegisError, OSError, trio.TooSlowError):
                continue
            if not isinstance(replies[0], RespError):
                cluster = parse_info(reply_text(replies[0]) or "")
            if not isinstance(replies[1], RespError):
                rows = parse_member_lines(reply_text(replies[1]) or "")
            break
        for row in rows:
            if row.node_id and row.address:
                self._remember(row.node_id, row.address)
        return self._snapshot(infos, cluster, rows)

    def _remember(self, node_id: str, address: str) -> None:
        # One address is one node: a placeholder name (the address itself, before the
        # node said who it is) or a stale id for the same address gives way to this id.
        for name in [n for n, a in self.known.items() if a == address and n != node_id]:
            del self.known[name]
        self.known[node_id] = address

    def _learn_from_infos(self, infos: Mapping[str, Mapping[str, str]]) -> None:
        for address, info in infos.items():
            node_id = pick(info, ("node_id", "id"))
            if node_id:
                self._remember(node_id, address)
            members = pick(info, ("members", "peers"))
            for member_id, member_address in parse_members_field(members or ""):
                if member_id and member_address:
                    self._remember(member_id, member_address)

    def _snapshot(
        self,
        infos: Mapping[str, dict[str, str] | str],
        cluster: Mapping[str, str],
        rows: Sequence[MemberRow],
    ) -> Snapshot:
        by_id = {r.node_id: r for r in rows}
        leader_info: Mapping[str, str] = {}
        leader_id = pick(cluster, ("leader_id", "leader")) or ""
        for address, info in infos.items():
            if isinstance(info, dict) and (pick(info, ("role",)) or "").lower() == "leader":
                leader_info = info
                leader_id = pick(info, ("node_id", "id")) or leader_id
        if not leader_id:
            leader_id = next((pick(i, ("leader_id",)) or "" for i in infos.values() if isinstance(i, dict) and pick(i, ("leader_id",))), "")
        leader_last = info_int(leader_info, "last_log_index") if leader_info else None
        leader_commit = info_int(leader_info, "commit_index") if leader_info else None

        members: list[MemberStatus] = []
        for node_id, address in sorted(self.known.items(), key=lambda kv: kv[0]):
            info = infos.get(address, "not polled")
            row = by_id.get(node_id)
            members.append(_member(node_id, address, info, row, leader_id, leader_last, leader_commit))

        state = pick(cluster, ("cluster_state", "state")) or ""
        if not state:
            state = derive_state(members)
        now = time.monotonic()
        writes = _counter(leader_info, _WRITE_COUNTERS)
        source = "counters"
        if writes is None:
            writes, source = leader_commit, "commit index"
        # Every node serves the reads it receives, so reads are summed over the members
        # that answered both now and last tick (a node coming back adds no spike).
        reads: dict[str, int] = {}
        for address, info in infos.items():
            if isinstance(info, dict) and (count := _counter(info, _READ_COUNTERS)) is not None:
                reads[address] = count
        write_rate = read_rate = None
        last = self._last_counters
        if last is not None and now > last[0]:
            dt = now - last[0]
            if last[3] == leader_id and writes is not None and last[1] is not None and writes >= last[1]:
                write_rate = (writes - last[1]) / dt
            common = [a for a in reads if a in last[2] and reads[a] >= last[2][a]]
            if common:
                read_rate = sum(reads[a] - last[2][a] for a in common) / dt
        self._last_counters = (now, writes, reads, leader_id)
        error = ""
        if not any(m.reachable for m in members):
            error = "no member answers; still trying every known address"
        return Snapshot(
            members=tuple(members),
            cluster_state=state,
            leader_id=leader_id,
            leader_address=self.known.get(leader_id, ""),
            term=info_int(leader_info, "term") if leader_info else info_int(cluster, "term", "current_term"),
            write_rate=write_rate,
            read_rate=read_rate,
            write_rate_source=source,
            taken_at=time.time(),
            error=error,
        )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _counter(info: Mapping[str, str], names: Sequence[str]) -> int | None:
    return info_int(info, *names) if info else None


def _short(exc: BaseException) -> str:
    text = describe_error(exc)
    if text.startswith("cannot reach any node: ") and "(" in text:
        return text.split("(", 1)[-1].rstrip(")")
    return text


def _member(
    node_id: str,
    address: str,
    info: Mapping[str, str] | str,
    row: MemberRow | None,
    leader_id: str,
    leader_last: int | None,
    leader_commit: int | None,
) -> MemberStatus:
    match = row.match_index if row is not None else None
    health = row.health if row is not None else ""
    heard = row.last_heard if row is not None else ""
    if isinstance(info, str):
        if not health or health.lower() in ("healthy", "starting"):
            health = "Unreachable"
        return MemberStatus(
            node_id, address, False, role=row.role if row is not None else "", match_index=match,
            lag=max(0, leader_last - match) if match is not None and leader_last is not None else None,
            health=health, last_heard=heard, error=info, is_leader=False,
        )
    role = (pick(info, ("role",)) or "").lower()
    applied = info_int(info, "applied_index", "last_applied")
    commit = info_int(info, "commit_index")
    lag: int | None = None
    if role == "leader":
        lag = 0
    elif match is not None and leader_last is not None:
        lag = max(0, leader_last - match)
    elif applied is not None and leader_commit is not None:
        lag = max(0, leader_commit - applied)
    return MemberStatus(
        node_id=node_id,
        address=address,
        reachable=True,
        role=role,
        term=info_int(info, "term", "current_term"),
        commit_index=commit,
        applied_index=applied,
        last_log_index=info_int(info, "last_log_index"),
        match_index=match,
        lag=lag,
        health=health or "Healthy",
        last_heard="—" if role == "leader" else heard,
        is_leader=role == "leader" or (bool(leader_id) and node_id == leader_id),
    )


# --------------------------------------------------------------------------- rendering


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "…"
    return f"{value:,.0f}/s" if value >= 10 else f"{value:.1f}/s"


def render_snapshot(snapshot: Snapshot, *, interval: float, width: int | None = None) -> RenderableType:
    """The dashboard screen for one snapshot (pure). `width` is the terminal's: when the
    table with an error column would not fit, errors go on lines of their own below it."""
    state = snapshot.cluster_state or "?"
    header = Text()
    header.append(" Aegis ", style="bold reverse")
    header.append("  state ")
    header.append(state, style=STATE_STYLES.get(state.lower().replace(" ", ""), "bold"))
    header.append(" · leader ")
    if snapshot.leader_id:
        header.append(snapshot.leader_id, style="bold green")
        if snapshot.leader_address:
            header.append(f" ({snapshot.leader_address})")
    else:
        header.append("none", style="bold red")
    header.append(f" · term {_num(snapshot.term) or '?'} · writes ")
    header.append(_rate(snapshot.write_rate), style="bold")
    if snapshot.write_rate_source and snapshot.write_rate_source != "counters":
        header.append(f" (from {snapshot.write_rate_source})", style="dim")
    header.append(" · reads ")
    header.append(_rate(snapshot.read_rate), style="bold")

    members = snapshot.members
    widths = {
        "id": max([2, *(len(m.node_id) for m in members)]),
        "address": max([7, *(len(m.address) for m in members)]),
        "role": max([4, *(len(m.role) for m in members)]),
        "term": 4, "commit": 6, "applied": 7, "lag": 3,
        "health": max([6, *(len(m.health) for m in members)]),
        "last heard": max([10, *(len(m.last_heard) for m in members)]),
    }
    longest_error = max([0, *(len(m.error) for m in members)])
    # Columns are separated by one space (collapsed padding); the mark column takes 2.
    needed = 2 + sum(w + 1 for w in widths.values()) + max(5, longest_error)
    errors_below = width is not None and longest_error > 0 and needed > width

    # Fixed columns keep their full width (min_width), so ids and addresses never turn
    # into "…"; the error column, when shown, is the one that wraps.
    table = Table(box=box.SIMPLE_HEAVY, pad_edge=False, collapse_padding=True, show_edge=False)
    table.add_column("", width=1, no_wrap=True)
    right = {"term", "commit", "applied", "lag"}
    for name, min_width in widths.items():
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True, min_width=min_width)
    if not errors_below:
        table.add_column("error", overflow="fold", min_width=5)
    for m in members:
        cells: list[RenderableType] = [
            Text(LEADER_MARK, style="bold yellow") if m.is_leader else Text(""),
            Text(m.node_id, style="bold"),
            Text(m.address),
            Text(m.role or "?", style=ROLE_STYLES.get(m.role, "")),
            Text(_num(m.term)),
            Text(_num(m.commit_index)),
            Text(_num(m.applied_index)),
            Text(_num(m.lag), style="yellow" if (m.lag or 0) > 0 else ""),
            Text(m.health, style=HEALTH_STYLES.get(m.health.lower(), "")),
            Text(m.last_heard),
        ]
        if not errors_below:
            cells.append(Text(m.error, style="bold red" if m.error else ""))
        table.add_row(*cells, style="red" if not m.reachable else "")

    parts: list[RenderableType] = [header, Text(""), table]
    if errors_below:
        for m in members:
            if m.error:
                parts.append(Text(f" ✗ {m.node_id} ({m.address}): {m.error}", style="bold red"))
    if snapshot.error:
        parts.append(Text(" " + snapshot.error, style="bold red"))
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at)) if snapshot.taken_at else "--:--:--"
    parts.append(Text(f" updated {stamp} · every {interval:g}s · Ctrl-C or q: back to the prompt", style="dim"))
    return Group(*parts)


# --------------------------------------------------------------------------- the screen


@contextlib.contextmanager
def keyboard_quiet() -> Iterator[bool]:
    """No echo, no line buffering (Ctrl-C still signals); yields whether stdin is a TTY."""
    try:
        import termios
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0:
        yield False
        return
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ECHO | termios.ICANON)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, new)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def quit_key_pressed(fd: int, wait: float) -> bool:
    """Wait up to `wait` seconds for a key; True if it was q, Q or Esc."""
    readable, _, _ = select.select([fd], [], [], max(0.0, wait))
    if not readable:
        return False
    data = os.read(fd, 64)
    return any(b in b"qQ\x1b" for b in data)


def run_dashboard(
    bridge: TrioBridge,
    collector: Collector,
    console: Console,
    *,
    interval: float = 1.0,
    max_ticks: int | None = None,
) -> None:
    """Show the dashboard until Ctrl-C or q (or `max_ticks`, for tests)."""
    resized = False

    def on_resize(signum: int, frame: FrameType | None) -> None:
        nonlocal resized
        resized = True

    previous = None
    if hasattr(signal, "SIGWINCH"):
        with contextlib.suppress(ValueError):  # not the main thread
            previous = signal.signal(signal.SIGWINCH, on_resize)
    ticks = 0
    snapshot = Snapshot(members=())
    try:
        with keyboard_quiet() as tty, Live(
            Text("connecting…"), console=console, screen=True, auto_refresh=False,
            redirect_stdout=False, redirect_stderr=False, transient=True,
        ) as live:
            while max_ticks is None or ticks < max_ticks:
                started = time.monotonic()
                try:
                    snapshot = bridge.run(collector.poll, timeout=interval + 3)
                except TimeoutError:
                    snapshot = Snapshot(snapshot.members, snapshot.cluster_state, error="polling timed out")
                live.update(render_snapshot(snapshot, interval=interval, width=console.width), refresh=True)
                ticks += 1
                deadline = started + interval
                while (left := deadline - time.monotonic()) > 0:
                    if resized:
                        resized = False
                        live.update(render_snapshot(snapshot, interval=interval, width=console.width), refresh=True)
                    step = min(left, 0.1)
                    if tty:
                        if quit_key_pressed(sys.stdin.fileno(), step):
                            return
                    else:
                        time.sleep(step)
    except KeyboardInterrupt:
        return
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        with contextlib.suppress(Exception):
            bridge.run(collector.aclose, timeout=2)
