"""Pure helpers of the node driver."""

from __future__ import annotations

from pathlib import Path

from aegis.log import LogIndex, Membership, SnapshotMeta, Term
from aegis.peer_service import verify_snapshot_file
from aegis.state import StateMachine
from storage import write_snapshot_file


def _snapshot_file(tmp_path: Path) -> Path:
    from aegis.state import Command

    sm = StateMachine()
    for i in range(2000):
        sm.apply(Command.set(f"k{i}", b"v" * 50 + str(i).encode()), i + 1)
    path = tmp_path / "s.snap"
    write_snapshot_file(path, SnapshotMeta(LogIndex(2000), Term(3), Membership.of(["a"])), sm.snapshot_chunks())
    return path


def test_a_received_snapshot_that_verifies_is_kept(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    assert verify_snapshot_file(path) is None
    assert path.exists()


def test_a_received_snapshot_damaged_in_transit_is_discarded(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    problem = verify_snapshot_file(path)
    assert problem and not path.exists()


def test_a_truncated_snapshot_is_discarded(tmp_path: Path) -> None:
    path = _snapshot_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    assert verify_snapshot_file(path) and not path.exists()


async def test_a_full_raft_inbox_answers_tryagain_and_changes_nothing(tmp_path: Path) -> None:
    from aegis import commands as C
    from aegis.driver import TICK, Waiter
    from aegis.server import OVERLOADED, Node, ServerConfig

    node = Node(ServerConfig(node_id="solo", port=0, data_dir=str(tmp_path / "solo"), inbox_depth=2))
    node._open()
    try:
        node.raft.campaign(pre_vote=False)  # a cluster of one: leader at once
        assert node.raft.is_leader()
        assert node.driver.submit(TICK) and node.driver.submit(TICK)
        assert not node.driver.submit(TICK)  # full: dropped, not raised
        # Client reads and writes wait in their own bounded list; fill it too.
        assert node.driver.client_op(b"x", Waiter()) and node.driver.client_op(None, Waiter())
        assert not node.driver.client_op(None, Waiter())
        for argv in ([b"SET", b"k", b"v"], [b"GET", b"k"], [b"MEMBER", b"ADD", b"n2", b"127.0.0.1:1"]):
            reply = await node._prepare(C.parse_command(argv), argv=argv)()
            assert reply == OVERLOADED
        assert node.raft.log.last_index() == 1 and len(node.sm) == 0  # only the election's no-op
    finally:
        node.store.close()


async def test_the_set_get_fast_path_matches_the_general_path(tmp_path: Path) -> None:
    from aegis.server import Node, ServerConfig, _fast_kind, _Session
    from aegis.state import Command

    node = Node(ServerConfig(node_id="solo", port=0, data_dir=str(tmp_path / "solo")))
    node._open()
    try:
        node.raft.campaign(pre_vote=False)
        state = _Session(authed=True)
        def fast(argv: list[bytes], session: _Session = state) -> object:
            kind = _fast_kind(argv)
            return node._fast_path(argv, session, kind) if kind else None

        # SET k v and GET k take it; anything else does not.
        assert fast([b"SET", b"k", b"\xffv"]) is not None
        assert node.driver._client_ops[-1][0] == Command.set("k", b"\xffv").encode()  # the general path's payload
        assert fast([b"set", b"k", b"v"]) is not None
        assert fast([b"GET", b"k"]) is not None and node.driver._client_ops[-1][0] is None
        for argv in ([b"SET", b"k", b"v", b"NX"], [b"SeT", b"k", b"v"], [b"GET", b"k" * 70_000],
                     [b"SET", b"k", b"v" * (node.cfg.limits.max_value_len + 1)], [b"DEL", b"k"]):
            assert fast(argv) is None, argv
        assert fast([b"GET", b"k"], _Session(authed=False)) is None
        # The GETs of one run share one read point; once it is resolved (the connection
        # awaited the run's replies) the next GET asks for a new one.
        state.read_point = None
        ops = len(node.driver._client_ops)
        assert fast([b"GET", b"a"]) is not None and fast([b"GET", b"b"]) is not None
        assert len(node.driver._client_ops) == ops + 1 and state.read_point is node.driver._client_ops[-1][1]
        state.read_point = None
        assert fast([b"GET", b"a"]) is not None and len(node.driver._client_ops) == ops + 2
        node.driver._client_ops[-1][1].set(7)
        assert fast([b"GET", b"a"]) is not None and len(node.driver._client_ops) == ops + 3
        node.raft.leader_id = None
        assert fast([b"SET", b"k", b"v"]) is None  # mid-election: the general path waits
    finally:
        node.store.close()


async def test_a_wait_for_a_leader_wakes_when_the_driver_sees_one(tmp_path: Path) -> None:
    """Mid-election requests and LEADER TRANSFER wait on the driver's leader-change event
    (set by the Ready that carries the new soft state), not by polling with sleeps."""
    import trio

    from aegis.driver import TICK
    from aegis.server import Node, ServerConfig

    node = Node(ServerConfig(node_id="solo", port=0, data_dir=str(tmp_path / "solo")))
    node._open()
    try:
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            node.driver.start(nursery)
            await node.driver.leader_changed(0.05)  # nothing changes: it returns at its timeout
            assert node.raft.leader_id is None
            t0 = trio.current_time()
            node.raft.campaign(pre_vote=False)  # a cluster of one: leader at once
            node.driver.submit(TICK)  # the loop runs the Ready that says so
            await node.driver.leader_changed(10)
            assert node.raft.is_leader() and trio.current_time() - t0 < 2
            nursery.cancel_scope.cancel()
    finally:
        node.store.close()


def test_trimming_the_heap_gives_freed_memory_back() -> None:
    """After a big state flush the driver trims the C heap: records freed in the middle of
    the heap (something allocated later pins its top) stay resident until then."""
    import sys

    from aegis.driver import trim_heap

    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("malloc_trim and /proc/self/status are Linux's")

    def rss_anon_mib() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no RssAnon in /proc/self/status")

    blobs = [bytes(600) + i.to_bytes(4, "little") for i in range(200_000)]  # above pymalloc's size: malloc
    pin = [bytes(600) for _ in range(10)]
    del blobs
    before = rss_anon_mib()
    trim_heap()
    after = rss_anon_mib()
    assert before - after > 60, (before, after)  # about 120 MiB were freed
    assert len(pin) == 10


def test_a_reopened_node_takes_its_state_clock_from_the_last_applied_entry(tmp_path: Path) -> None:
    """The state's clock (the time reads hide expired keys by, at the least) is the time of
    the last applied entry; a node reopened with all of it flushed has applied nothing since
    and still reads by it. Entries after the stored applied index do not count (not applied)."""
    from aegis.log import EntryType, HardState, LogEntry
    from aegis.server import Node, ServerConfig
    from aegis.state import Command

    cfg = ServerConfig(node_id="solo", port=0, data_dir=str(tmp_path / "solo"))
    node = Node(cfg)
    node._open()
    base = int(node.store.last_index())
    times = [1_900_000_000.125, 1_900_000_001.5, 1_900_000_009.0]
    entries = [LogEntry(LogIndex(base + i + 1), Term(1), EntryType.COMMAND, Command.set(f"k{i}", b"v").encode(), t)
               for i, t in enumerate(times)]
    node.store.write_batch(entries=entries, hard_state=HardState(Term(1), "solo", LogIndex(base + 2)))
    node.sm.apply_entries(entries[:2])  # the third is in the log, not applied
    flush = node.kv.take_flush()
    assert flush is not None and node.kv.write_flush(*flush)
    node.kv.flush_done(True)
    assert node.sm.clock == 1_900_000_001_500
    node.store.close()

    again = Node(cfg)
    again._open()
    try:
        assert again.sm.last_applied == base + 2
        assert again.sm.clock == 1_900_000_001_500
    finally:
        again.store.close()
