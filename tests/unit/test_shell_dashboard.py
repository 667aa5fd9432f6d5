"""shell.dashboard: the collector against tiny in-test RESP nodes (one of them dead), the
derived cluster state, rates and lag, and the rendered screen."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable

import trio

from rich.console import Console

from aegis.protocol import RespParser, encode
from shell.dashboard import Collector, MemberStatus, Snapshot, derive_state, render_snapshot


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeNode:
    """Answers INFO, CLUSTER INFO and CLUSTER NODES from mutable text."""

    def __init__(self, info: Callable[[], str], cluster_info: str = "", nodes: str = "") -> None:
        self.info = info
        self.cluster_info = cluster_info
        self.nodes = nodes
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        parser = RespParser()
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                parser.feed(data)
                while (argv := parser.next_command()) is not None:
                    assert isinstance(argv, list)
                    words = b" ".join(argv).upper()
                    if words == b"INFO":
                        reply = self.info().encode()
                    elif words == b"CLUSTER INFO":
                        reply = self.cluster_info.encode()
                    elif words == b"CLUSTER NODES":
                        reply = self.nodes.encode()
                    else:
                        reply = "OK"  # type: ignore[assignment]
                    await stream.send_all(encode(reply))

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self.handle, 0)
        self.port = listeners[0].socket.getsockname()[1]


async def test_collector_polls_every_member_and_reports_the_dead_one() -> None:
    writes = {"n": 100}

    def leader_info() -> str:
        return (f"node_id:n1\r\nrole:leader\r\nleader_id:n1\r\nterm:4\r\ncommit_index:{writes['n']}\r\n"
                f"applied_index:{writes['n']}\r\nlast_log_index:{writes['n']}\r\n"
                f"total_writes:{writes['n']}\r\ntotal_reads:{2 * writes['n']}\r\nmembers:n1,n2,n3\r\n")

    dead = _closed_port()
    async with trio.open_nursery() as nursery:
        follower = FakeNode(lambda: "node_id:n2\r\nrole:follower\r\nleader_id:n1\r\nterm:4\r\n"
                            "commit_index:98\r\napplied_index:97\r\nlast_log_index:99\r\n")
        await follower.start(nursery)
        leader = FakeNode(leader_info, "cluster_state:Degraded\r\ncluster_leader:n1\r\n")
        await leader.start(nursery)
        leader.nodes = (
            f"n1 127.0.0.1:{leader.port} role=leader match=100 health=Healthy last_heard_ms=0 flags=myself error=-\n"
            f"n2 127.0.0.1:{follower.port} role=follower match=99 health=Healthy last_heard_ms=40 flags=- error=-\n"
            f"n3 127.0.0.1:{dead} role=follower match=60 health=Down last_heard_ms=9000 flags=- error=-\n"
        )
        # The dashboard starts knowing only the follower's address; it learns the rest.
        collector = Collector({f"127.0.0.1:{follower.port}": f"127.0.0.1:{follower.port}",
                               "n1": f"127.0.0.1:{leader.port}"}, timeout=0.5)
        first = await collector.poll()
        writes["n"] = 150
        await trio.sleep(0.2)
        snap = await collector.poll()
        await collector.aclose()
        nursery.cancel_scope.cancel()

    assert [m.node_id for m in first.members] == ["n1", "n2", "n3"]
    by_id = {m.node_id: m for m in snap.members}
    assert snap.cluster_state == "Degraded" and snap.leader_id == "n1" and snap.term == 4
    assert by_id["n1"].is_leader and by_id["n1"].lag == 0
    assert by_id["n2"].reachable and by_id["n2"].lag == 150 - 99 and by_id["n2"].applied_index == 97
    n3 = by_id["n3"]
    assert not n3.reachable and n3.health == "Down" and "refused" in n3.error
    assert n3.lag == 150 - 60
    assert snap.write_rate is not None and 100 < snap.write_rate < 50 / 0.2 + 1
    assert snap.read_rate is not None and snap.read_rate > snap.write_rate
    assert first.write_rate is None  # no previous sample yet


async def test_collector_with_nobody_answering_keeps_going() -> None:
    dead = f"127.0.0.1:{_closed_port()}"
    collector = Collector({"n1": dead}, timeout=0.3)
    with trio.fail_after(5):
        snap = await collector.poll()
        snap2 = await collector.poll()
    await collector.aclose()
    assert snap.members[0].node_id == "n1" and not snap.members[0].reachable
    assert snap.members[0].health == "Unreachable"
    assert snap.cluster_state == "NoQuorum" and "no member answers" in snap.error
    assert snap2.members == snap.members or len(snap2.members) == 1


def m(node_id: str, reachable: bool = True, role: str = "follower", leader: bool = False) -> MemberStatus:
    return MemberStatus(node_id, f"h:{node_id}", reachable, role=role, is_leader=leader)


def test_derive_state() -> None:
    assert derive_state([m("a", leader=True, role="leader"), m("b"), m("c")]) == "Healthy"
    assert derive_state([m("a", leader=True, role="leader"), m("b"), m("c", False)]) == "Degraded"
    assert derive_state([m("a", leader=True, role="leader"), m("b", False), m("c", False)]) == "NoQuorum"
    assert derive_state([m("a"), m("b"), m("c")]) == "NoQuorum"  # nobody leads
    assert derive_state([]) == "NoQuorum"


def screen(snapshot: Snapshot, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(render_snapshot(snapshot, interval=1.0, width=width))
    return console.export_text()


def test_screen_shows_every_column_and_the_dead_row() -> None:
    snap = Snapshot(
        members=(
            MemberStatus("n1", "127.0.0.1:7001", True, role="leader", term=3, commit_index=50,
                         applied_index=50, lag=0, health="Healthy", last_heard="—", is_leader=True),
            MemberStatus("n2", "127.0.0.1:7002", True, role="follower", term=3, commit_index=49,
                         applied_index=48, lag=2, health="Healthy", last_heard="0.1s ago"),
            MemberStatus("n3", "127.0.0.1:7003", False, role="follower", health="Down",
                         last_heard="12s ago", error="connection refused"),
        ),
        cluster_state="Degraded", leader_id="n1", leader_address="127.0.0.1:7001", term=3,
        write_rate=1234.4, read_rate=5.25, write_rate_source="counters", taken_at=0.0,
    )
    out = screen(snap)
    for word in ("id", "address", "role", "term", "commit", "applied", "lag", "health", "last heard"):
        assert word in out
    assert "state Degraded" in out and "leader n1 (127.0.0.1:7001)" in out
    assert "writes 1,234/s" in out and "reads 5.2/s" in out
    n3 = next(line for line in out.splitlines() if " n3 " in line)
    assert "Down" in n3 and "connection refused" in n3
    assert [line.split()[1] for line in out.splitlines() if line.startswith("★")] == ["n1"]
    assert "Ctrl-C" in out


def test_errors_move_below_the_table_on_a_narrow_terminal() -> None:
    snap = Snapshot(members=(
        MemberStatus("n1", "127.0.0.1:7001", True, role="leader", health="Healthy", is_leader=True),
        MemberStatus("n3", "127.0.0.1:7003", False, role="follower", health="Down", error="connection refused"),
    ), cluster_state="Degraded", leader_id="n1")
    narrow = screen(snap, width=80)
    assert "✗ n3 (127.0.0.1:7003): connection refused" in narrow
    assert " n1 " in narrow and "127.0.0.1:7001" in narrow  # fixed columns are never truncated
    wide = screen(snap, width=160)
    assert "✗" not in wide and "connection refused" in next(line for line in wide.splitlines() if " n3 " in line)


def test_screen_without_leader_or_rates() -> None:
    out = screen(Snapshot(members=(m("n1", False),), cluster_state="NoQuorum", error="no member answers"))
    assert "leader none" in out and "writes …" in out and "no member answers" in out
