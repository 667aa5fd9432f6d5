# The seed spells ids and terms as plain str/int (NodeInfo("node1", ...), term=1), where the
# annotations say NodeId/Term NewTypes: fine at runtime, an arg-type error under mypy.
# mypy: disable-error-code="arg-type"
"""The seed's three usage examples, exactly as the README shows them.

Each test body below is one self-contained README snippet (imports included): paste it into
a Python 3.11 session after `pip install -e .` and it runs as is. Keep them in step with the
README: if one changes, change both.
"""

from __future__ import annotations


def test_raft_node_example() -> None:
    from aegis import AppendEntriesResponse, Command, NodeId, NodeInfo, RaftConfig, RaftNode, VoteResponse

    info = NodeInfo("node1", "127.0.0.1", 5000)
    node = RaftNode("node1", RaftConfig())
    node.add_peer(NodeId("node2"))

    node.start_election()  # term 1; the vote request waits in node.take_messages()
    node.handle_vote_response(VoteResponse(term=1, vote_granted=True, voter_id=NodeId("node2")))
    assert node.is_leader()

    index = node.propose(Command.set("key", b"value"))
    assert node.apply_committed() == []  # persisted here, but node2 has not acknowledged it yet

    node.step(AppendEntriesResponse(term=1, success=True, follower_id=NodeId("node2"), match_index=index))
    [result] = node.apply_committed()  # a majority (node1 and node2) has it: committed, applied
    assert result.success and result.applied_index == index
    print(info, node)


def test_replication_engine_example() -> None:
    from aegis import NodeId, NodeInfo, ReplicationConfig, ReplicationEngine

    # A cluster of one elects itself and commits on its own.
    engine = ReplicationEngine(NodeInfo("node1", "127.0.0.1", 5000), ReplicationConfig())
    engine.start_election()
    assert engine.is_leader()
    engine.set("key", b"value")
    [result] = engine.apply_committed()  # persist, commit, apply
    assert result.success and engine.get("key") == b"value"
    engine.delete("key")
    engine.apply_committed()
    assert engine.get("key") is None

    # Three engines: add peers before the first election, then carry messages between them.
    engines = {
        name: ReplicationEngine(NodeInfo(name, "127.0.0.1", port), ReplicationConfig())
        for name, port in [("node1", 5001), ("node2", 5002), ("node3", 5003)]
    }
    for engine in engines.values():
        for peer in engines:
            if peer != engine.node_id:
                engine.add_peer(NodeId(peer))

    def pump() -> None:
        """The network: deliver messages (and their answers) until all is quiet."""
        queue = [m for e in engines.values() for m in e.take_messages()]
        while queue:
            message = queue.pop(0)
            queue.extend(engines[message.receiver].step(message).messages)

    leader = engines["node1"]
    leader.start_election()
    pump()
    assert leader.is_leader()
    leader.set("key", b"value")
    pump()
    assert [e.get("key") for e in engines.values()] == [b"value", b"value", b"value"]


def test_cluster_example() -> None:
    from datetime import timedelta

    from aegis import Cluster, ClusterConfig, NodeId, NodeInfo

    local = NodeInfo("node1", "127.0.0.1", 5000)
    config = ClusterConfig("my-cluster").with_replication_factor(3).with_heartbeat_interval(timedelta(seconds=1))
    cluster = Cluster(local, config)
    cluster.add_node(NodeInfo("node2", "127.0.0.1", 5001))
    cluster.add_node(NodeInfo("node3", "127.0.0.1", 5002))

    cluster.heartbeat(NodeId("node2"))
    cluster.heartbeat(NodeId("node3"))
    stats = cluster.stats()
    assert stats.healthy_nodes == 3 and stats.has_quorum

    assert cluster.check_failures() == []  # everyone was heard from just now


# --- the package's public names ------------------------------------------------------------

SEED_NAMES = """
NodeId NodeStatus NodeRole NodeInfo NodeMetadata NodeHealth LogIndex Term LogEntry EntryType
ReplicatedLog LogStore MemoryLogStore Command CommandType CommandResult StateMachine Snapshot
RaftConfig RaftState RaftNode Ready VoteRequest VoteResponse AppendEntriesRequest
AppendEntriesResponse InstallSnapshotRequest InstallSnapshotResponse ClusterConfig ClusterState
Cluster ClusterStats MembershipChange MessageType Message InMemoryTransport Transport
ReplicationConfig ReplicationEngine TickResult AegisError CommandError ProtocolError CodecError
UnknownOutcomeError NoLeaderError RequestTimeoutError TryAgainError NotLeaderError
ProposalDroppedError ConfigChangeError __version__
""".split()


def test_star_import_gives_every_seed_name() -> None:
    import aegis

    namespace: dict[str, object] = {}
    exec("from aegis import *", namespace)
    missing = [n for n in SEED_NAMES if n not in namespace]
    assert missing == []
    assert all(hasattr(aegis, n) for n in aegis.__all__)
    assert len(set(aegis.__all__)) == len(aegis.__all__)


def test_version_matches_the_distribution() -> None:
    import tomllib
    from pathlib import Path

    import aegis

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert aegis.__version__ == tomllib.loads(pyproject.read_text())["project"]["version"]


def test_importing_aegis_stays_light() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, aegis; "
        "heavy = sorted(m for m in ('trio', 'lmdb', 'socket', 'aegis.client', 'aegis.server', 'storage') "
        "if m in sys.modules); print(heavy)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
