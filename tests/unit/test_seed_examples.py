"""The seed's three README examples, in their most literal Python form, and its public names.

The seed (the aegis-replication crate) shows three examples: a Raft node, a replication
engine and a cluster. Each is below as the code a user types: ``use aegis_replication::*``
is ``from aegis import *``, every ``let x = ...`` is bound and then checked, ``println!`` is
``print``. The snippets are strings so they run exactly as the README shows them (a star
import only works at a module's top level, as in a user's script); one test checks that the
README carries each of them word for word. If one changes, change both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def run(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__seed_example__"}
    exec(compile(code, "<seed example>", "exec"), namespace)
    return namespace


# --- 1. a Raft node ---------------------------------------------------------------------------

RAFT_NODE = '''\
from aegis import *

# Create a Raft node
node_info = NodeInfo("node1", "127.0.0.1", 5000)
config = RaftConfig()
node = RaftNode("node1", config)

# Add peers
node.add_peer(NodeId("node2"))

# Start election: term 1; the copy for node2 waits in node.take_messages()
vote_request = node.start_election()

# Handle vote response: node2's vote is the winning one
response = VoteResponse(term=1, vote_granted=True, voter_id=NodeId("node2"))
became_leader = node.handle_vote_response(response)

# Propose command (if leader)
if node.is_leader():
    command = Command.set("key", b"value")
    index = node.propose(command)  # 2: a new leader's first entry is a no-op

# Apply committed entries: none yet, node2 has not acknowledged the entry
results = node.apply_committed()
print(vote_request.term, became_leader, index, results)

# node2 for real: carry each message to its receiver until all is quiet
node2 = RaftNode("node2", RaftConfig())
node2.add_peer(NodeId("node1"))
nodes = {"node1": node, "node2": node2}
queue = node.take_messages()
while queue:
    message = queue.pop(0)
    nodes[message.receiver].step(message)
    queue += node.take_messages() + node2.take_messages()

results = node.apply_committed()  # a majority has the entry: committed, applied
print(results)
'''


def test_raft_node_example(capsys: pytest.CaptureFixture[str]) -> None:
    from aegis import CommandResult, RaftNode, VoteRequest

    ns = run(RAFT_NODE)
    vote_request = ns["vote_request"]
    assert isinstance(vote_request, VoteRequest)
    assert (vote_request.term, vote_request.candidate_id, vote_request.pre_vote) == (1, "node1", False)
    assert ns["became_leader"] is True
    assert isinstance(ns["index"], int) and ns["index"] == 2
    [result] = ns["results"]
    assert isinstance(result, CommandResult) and result.success and result.applied_index == ns["index"]
    node, node2 = ns["node"], ns["node2"]
    assert isinstance(node, RaftNode) and node.is_leader() and node2.leader_id == "node1"
    assert node2.commit_index == node.commit_index == ns["index"]
    assert node.handle_vote_response(ns["response"]) is False  # true exactly once
    first, second = capsys.readouterr().out.splitlines()
    assert first == "1 True 2 []" and "applied_index=2" in second


# --- 2. a replication engine ------------------------------------------------------------------

ENGINE = '''\
from aegis import *

# Create a replication engine
node_info = NodeInfo("node1", "127.0.0.1", 5000)
config = ReplicationConfig()
engine = ReplicationEngine(node_info, config)

# Start election: alone, the engine elects itself and commits on its own
engine.start_election()

# Write (if leader)
if engine.is_leader():
    engine.set("key1", b"value1")
    engine.delete("key2")

# Apply committed entries, then read
results = engine.apply_committed()
value = engine.get("key1")
print(len(results), value)
'''

ENGINE_WITH_A_PEER = '''\
from aegis import *

node_info = NodeInfo("node1", "127.0.0.1", 5000)
config = ReplicationConfig()
engine = ReplicationEngine(node_info, config)
engine.add_peer(NodeId("node2"))

# node2, and the network: deliver each message (and its answers) until all is quiet
node2 = ReplicationEngine(NodeInfo("node2", "127.0.0.1", 5001), config)
node2.add_peer(NodeId("node1"))
engines = {"node1": engine, "node2": node2}

def network():
    queue = engine.take_messages() + node2.take_messages()
    while queue:
        message = queue.pop(0)
        queue.extend(engines[message.receiver].step(message).messages)

vote_request = engine.start_election()
network()  # node2 votes

if engine.is_leader():
    engine.set("key1", b"value1")
    engine.delete("key2")
network()  # node2 acknowledges: both commands commit

results = engine.apply_committed()
value = engine.get("key1")
stats = engine.cluster.stats()  # the engine's view: node2 heard from, node1 leads
print(len(results), value, stats.healthy_nodes, stats.leader)
'''


def test_replication_engine_example(capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(ENGINE)
    set_result, delete_result = ns["results"]
    assert set_result.success and delete_result.success and delete_result.value == 0
    assert set_result.applied_index < delete_result.applied_index
    assert ns["value"] == b"value1"
    assert capsys.readouterr().out == "2 b'value1'\n"


def test_replication_engine_example_with_its_peer(capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(ENGINE_WITH_A_PEER)
    assert ns["vote_request"].term == 1 and ns["vote_request"].candidate_id == "node1"
    assert [r.success for r in ns["results"]] == [True, True]
    assert ns["value"] == b"value1" and ns["node2"].get("key1") == b"value1"
    assert ns["stats"].has_quorum
    assert capsys.readouterr().out == "2 b'value1' 2 node1\n"


def test_the_seed_engine_example_as_written_waits_for_its_peer() -> None:
    """Word for word, the seed adds node2 and never hears from it: no leader, nothing
    written, and nothing pretends otherwise."""
    code = ENGINE.replace(
        "engine = ReplicationEngine(node_info, config)\n",
        "engine = ReplicationEngine(node_info, config)\nengine.add_peer(NodeId(\"node2\"))\n",
    )
    ns = run(code)
    assert not ns["engine"].is_leader() and ns["results"] == [] and ns["value"] is None
    [request] = ns["engine"].take_messages()  # the vote request, for node2
    assert (request.term, request.receiver) == (1, "node2")


# --- 3. a cluster -----------------------------------------------------------------------------

CLUSTER = '''\
from datetime import timedelta

from aegis import *

local_node = NodeInfo("node1", "127.0.0.1", 5000)
config = ClusterConfig("my-cluster").with_replication_factor(3).with_heartbeat_interval(timedelta(seconds=1))
cluster = Cluster(local_node, config)

cluster.add_node(NodeInfo("node2", "127.0.0.1", 5001))
cluster.add_node(NodeInfo("node3", "127.0.0.1", 5002))
cluster.heartbeat(NodeId("node2"))

failed = cluster.check_failures()  # the nodes that went down: none, everyone is new
stats = cluster.stats()
print(f"Healthy nodes: {stats.healthy_nodes}")
print(f"Has quorum: {stats.has_quorum}")
'''


def test_cluster_example(capsys: pytest.CaptureFixture[str]) -> None:
    ns = run(CLUSTER)
    assert ns["failed"] == []
    assert ns["stats"].healthy_nodes == 2 and ns["stats"].has_quorum
    assert capsys.readouterr().out == "Healthy nodes: 2\nHas quorum: True\n"


def test_the_readme_shows_the_same_code() -> None:
    text = README.read_text()
    section = text[text.index("## The seed's API"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    for snippet in (RAFT_NODE, ENGINE, ENGINE_WITH_A_PEER, CLUSTER):
        assert snippet in blocks


# --- the package's public names ---------------------------------------------------------------

#: What the seed exports, module by module (its sections; ours spell its Rust names).
SEED_MODULES: dict[str, list[str]] = {
    "node": ["NodeId", "NodeStatus", "NodeRole", "NodeInfo", "NodeMetadata", "NodeHealth"],
    "log": ["LogIndex", "Term", "LogEntry", "EntryType", "ReplicatedLog"],
    "state": ["Command", "CommandType", "CommandResult", "StateMachine", "Snapshot"],
    "raft": [
        "RaftConfig", "RaftState", "RaftNode", "VoteRequest", "VoteResponse", "AppendEntriesRequest",
        "AppendEntriesResponse", "InstallSnapshotRequest", "InstallSnapshotResponse",
    ],
    "cluster": ["ClusterConfig", "ClusterState", "Cluster", "ClusterStats", "MembershipChange"],
    "transport": ["MessageType", "Message", "MessagePayload", "Transport", "InMemoryTransport", "ConnectionPool"],
    "engine": ["ReplicationConfig", "ReplicationEngine", "TickResult"],
}

#: Ours on top: the seams, the Ready batch, and the error hierarchy.
OUR_NAMES = """
LogStore MemoryLogStore Ready AegisError CommandError ProtocolError CodecError UnknownOutcomeError
NoLeaderError RequestTimeoutError TryAgainError NotLeaderError ProposalDroppedError ConfigChangeError
__version__
""".split()


def test_star_import_gives_every_seed_name() -> None:
    import aegis

    namespace: dict[str, object] = {}
    exec("from aegis import *", namespace)
    for module, names in SEED_MODULES.items():
        missing = [n for n in names if n not in namespace]
        assert missing == [], f"{module}: {missing}"
    assert [n for n in OUR_NAMES if n not in namespace] == []
    assert all(hasattr(aegis, n) for n in aegis.__all__)
    assert len(set(aegis.__all__)) == len(aegis.__all__)


def test_version_matches_the_distribution() -> None:
    import tomllib

    import aegis

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert aegis.__version__ == tomllib.loads(pyproject.read_text())["project"]["version"]


def _in_a_fresh_interpreter(code: str) -> str:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    return out.stdout.strip()


def test_importing_aegis_stays_light() -> None:
    code = (
        "import sys, aegis; "
        "heavy = sorted(m for m in ('trio', 'lmdb', 'socket', 'aegis.client', 'aegis.server', 'aegis.peers', "
        "'storage') if m in sys.modules); print(heavy)"
    )
    assert _in_a_fresh_interpreter(code) == "[]"


def test_connection_pool_is_a_lazy_attribute() -> None:
    code = (
        "import sys, aegis; before = 'trio' in sys.modules; pool = aegis.ConnectionPool; "
        "from aegis.peers import ConnectionPool; print(before, pool is ConnectionPool, 'trio' in sys.modules)"
    )
    assert _in_a_fresh_interpreter(code) == "False True True"
    import aegis

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        aegis.Nope  # type: ignore[attr-defined]  # noqa: B018


# --- MessagePayload and MessageType (the seed's spellings) -------------------------------------


def test_message_payload_is_any_wire_message() -> None:
    from aegis import ClientRequest, LogIndex, Message, MessagePayload, Term, VoteRequest, VoteResponse

    request = VoteRequest(term=Term(1), candidate_id="n1", last_log_index=LogIndex(0), last_log_term=Term(0),
                          receiver="n2")
    for payload in (request, VoteResponse(term=Term(1), vote_granted=True), ClientRequest(1, (b"GET", b"k"))):
        assert isinstance(payload, MessagePayload)
    assert not isinstance(b"bytes", MessagePayload)
    envelope = Message.wrap(request)
    assert isinstance(envelope.unwrap(), MessagePayload)


def test_message_type_has_the_seed_spellings() -> None:
    from aegis import MessageType

    seed = [
        "VoteRequest", "VoteResponse", "AppendEntries", "AppendEntriesResponse", "Heartbeat", "InstallSnapshot",
        "InstallSnapshotResponse", "TimeoutNow", "ReadIndex", "ReadIndexResponse", "ClientRequest",
        "ClientResponse", "ClientBatchRequest", "ClientBatchResponse", "Handshake",
    ]
    assert sorted(t.name for t in MessageType) == sorted(seed)
    # The upper-case names the codec uses are the same members.
    assert MessageType.VOTE_REQUEST is MessageType.VoteRequest
    assert MessageType.APPEND_ENTRIES_REQUEST is MessageType.AppendEntries
    assert MessageType.INSTALL_SNAPSHOT_REQUEST is MessageType.InstallSnapshot
    assert MessageType.HEARTBEAT is MessageType.Heartbeat
    assert MessageType.Heartbeat is not MessageType.AppendEntries


def test_a_heartbeat_is_its_own_kind_but_travels_as_an_append() -> None:
    import msgpack

    from aegis import AppendEntriesRequest, CodecError, LogIndex, Message, MessageType, Term
    from aegis.transport import decode, encode

    beat = AppendEntriesRequest(term=Term(2), leader_id="n1", prev_log_index=LogIndex(3), prev_log_term=Term(1),
                                receiver="n2", heartbeat=True)
    append = AppendEntriesRequest(term=Term(2), leader_id="n1", prev_log_index=LogIndex(3), prev_log_term=Term(1),
                                  receiver="n2")
    assert MessageType.of(beat) is MessageType.Heartbeat
    assert MessageType.of(append) is MessageType.AppendEntries
    frame = encode(beat)
    assert msgpack.unpackb(frame)[0] == MessageType.AppendEntries  # the wire is unchanged
    assert decode(frame) == beat
    envelope = Message.wrap(beat)
    assert envelope.type is MessageType.Heartbeat
    assert Message.decode(envelope.encode()).unwrap() == beat
    with pytest.raises(CodecError, match="unknown message type"):
        decode(msgpack.packb([int(MessageType.Heartbeat), 2, "n1", "n2", 3, 1, 0, 0, True, []]))
