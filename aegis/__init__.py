"""Aegis: a Raft-replicated, durable key-value server.

``from aegis import *`` gives every type the seed names (its ``use aegis_replication::*``):
node identity and health, the log, commands and the state machine, the Raft core and its
messages, the cluster view, the transport's envelope, payload and in-memory transport, the
TCP ConnectionPool, the replication engine, and the errors.

Importing ``aegis`` stays light: no trio, lmdb or socket. `ConnectionPool` is the one name
that needs trio, so it is a lazy attribute: ``aegis.ConnectionPool`` (and the star import,
which asks for every name) imports `aegis.peers` on first use. The trio client
(`aegis.client`) and the server are imported on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cluster import (
    Cluster,
    ClusterConfig,
    ClusterState,
    ClusterStateChange,
    ClusterStats,
    MembershipChange,
    MembershipChangeType,
    StatusChange,
)
from .engine import ReplicationConfig, ReplicationEngine, RoleChange, TickResult
from .errors import (
    AegisError,
    CodecError,
    CommandError,
    NoLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TryAgainError,
    UnknownOutcomeError,
)
from .log import (
    CompactedError,
    EntryType,
    HardState,
    LogEntry,
    LogError,
    LogIndex,
    LogInvariantError,
    LogStore,
    Membership,
    MemoryLogStore,
    ReplicatedLog,
    SnapshotMeta,
    Term,
    UnavailableError,
)
from .messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ConfigChange,
    ConfigChangeType,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RaftMessage,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .node import NodeHealth, NodeId, NodeInfo, NodeMetadata, NodeRole, NodeStatus
from .raft import (
    ConfigChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftError,
    RaftNode,
    RaftState,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from .state import Command, CommandResult, CommandType, Snapshot, StateMachine
from .transport import (
    ClientRequest,
    ClientResponse,
    InMemoryTransport,
    Message,
    MessagePayload,
    MessageType,
    Transport,
)

if TYPE_CHECKING:
    from .peers import ConnectionPool

__version__ = "0.1.0"

# Attributes imported on first use, each with the module that holds it (they need trio).
_LAZY = {"ConnectionPool": ".peers"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value

__all__ = [
    "__version__",
    # node.py
    "NodeId",
    "NodeStatus",
    "NodeRole",
    "NodeInfo",
    "NodeMetadata",
    "NodeHealth",
    # log.py
    "LogIndex",
    "Term",
    "LogEntry",
    "EntryType",
    "ReplicatedLog",
    "LogStore",
    "MemoryLogStore",
    "Membership",
    "SnapshotMeta",
    "HardState",
    # state.py
    "Command",
    "CommandType",
    "CommandResult",
    "StateMachine",
    "Snapshot",
    # raft.py and messages.py
    "RaftConfig",
    "RaftState",
    "RaftNode",
    "Ready",
    "ReadState",
    "SoftState",
    "Role",
    "RaftMessage",
    "VoteRequest",
    "VoteResponse",
    "AppendEntriesRequest",
    "AppendEntriesResponse",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "TimeoutNow",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ConfigChange",
    "ConfigChangeType",
    # cluster.py
    "ClusterConfig",
    "ClusterState",
    "Cluster",
    "ClusterStats",
    "MembershipChange",
    "MembershipChangeType",
    "StatusChange",
    "ClusterStateChange",
    # transport.py and peers.py
    "MessageType",
    "Message",
    "MessagePayload",
    "ConnectionPool",
    "ClientRequest",
    "ClientResponse",
    "Transport",
    "InMemoryTransport",
    # engine.py
    "ReplicationConfig",
    "ReplicationEngine",
    "TickResult",
    "RoleChange",
    # errors: the client-facing hierarchy (errors.py) and the core's own (log.py, raft.py)
    "AegisError",
    "CommandError",
    "ProtocolError",
    "CodecError",
    "UnknownOutcomeError",
    "NoLeaderError",
    "RequestTimeoutError",
    "TryAgainError",
    "RaftError",
    "NotLeaderError",
    "ProposalDroppedError",
    "ConfigChangeError",
    "LogError",
    "LogInvariantError",
    "CompactedError",
    "UnavailableError",
]
