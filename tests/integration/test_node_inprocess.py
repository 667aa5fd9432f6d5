"""Three `Node`s in one trio run, over real loopback TCP, driven by `aegis.client`.

Faster to start than processes and easier to debug: a node is stopped by cancelling its
own scope (a clean stop; `kill -9` lives in tests/e2e). Every test runs under `fail_after`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

from aegis.client import AegisClient
from aegis.errors import CommandError
from aegis.server import Node, ServerConfig


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


class InProcessCluster:
    def __init__(self, root: Path, nursery: trio.Nursery, n: int = 3) -> None:
        self.root = root
        self.nursery = nursery
        ids = [f"n{i + 1}" for i in range(n)]
        self.ports = dict(zip(ids, _free_ports(n)))
        self.peers = {nid: f"127.0.0.1:{port}" for nid, port in self.ports.items()}
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, nid: str) -> None:
        cfg = ServerConfig(node_id=nid, port=self.ports[nid], data_dir=str(self.root / nid), peers=self.peers,
                           tick_ms=20, request_timeout=3)
        node = Node(cfg)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await node.serve(task_status=task_status)

        self.nodes[nid], self.scopes[nid] = node, scope
        await self.nursery.start(run)

    def stop(self, nid: str) -> None:
        self.scopes.pop(nid).cancel()
        del self.nodes[nid]

    async def leader(self) -> str:
        while True:
            leaders = [nid for nid, node in self.nodes.items() if node.raft.is_leader()]
            if len(leaders) == 1:
                return leaders[0]
            await trio.sleep(0.02)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    async with trio.open_nursery() as nursery:
        c = InProcessCluster(tmp_path, nursery)
        for nid in c.ports:
            await c.start(nid)
        yield c
        nursery.cancel_scope.cancel()


async def test_write_anywhere_read_everywhere(cluster: InProcessCluster) -> None:
    with trio.fail_after(20):
        await cluster.leader()
        for nid, port in cluster.ports.items():
            client = await AegisClient.connect(f"127.0.0.1:{port}")
            try:
                await client.set(f"from-{nid}", nid.encode())
            finally:
                await client.aclose()
        for port in cluster.ports.values():
            client = await AegisClient.connect(f"127.0.0.1:{port}")
            try:
                assert [await client.get(f"from-{nid}") for nid in cluster.ports] == [b"n1", b"n2", b"n3"]
                with pytest.raises(CommandError):
                    await client.execute("INCR", "from-n1")
            finally:
                await client.aclose()
        # Every node applied the same commands in the same order.
        digests = {nid: node.sm.digest() for nid, node in cluster.nodes.items()}
        while len(set(digests.values())) != 1:
            await trio.sleep(0.02)
            digests = {nid: node.sm.digest() for nid, node in cluster.nodes.items()}


async def test_stopping_the_leader_elects_another_and_keeps_the_data(cluster: InProcessCluster) -> None:
    with trio.fail_after(30):
        old = await cluster.leader()
        client = await AegisClient.connect(",".join(cluster.peers.values()))
        try:
            for i in range(50):
                await client.set(f"k{i}", b"%d" % i)
            cluster.stop(old)
            new = await cluster.leader()
            assert new != old
            survivor = AegisClient(cluster.peers[new])
            try:
                assert await survivor.get("k49") == b"49"
                await survivor.set("after", b"1")
            finally:
                await survivor.aclose()
            await cluster.start(old)  # comes back from its data and catches up
            while cluster.nodes[old].sm.get("after").value != b"1":
                await trio.sleep(0.02)
            assert cluster.nodes[old].raft.leader_id == new
        finally:
            await client.aclose()


async def test_linearizable_reads_on_a_follower_see_acknowledged_writes(cluster: InProcessCluster) -> None:
    with trio.fail_after(20):
        leader = await cluster.leader()
        follower = next(nid for nid in cluster.ports if nid != leader)
        writer = await AegisClient.connect(cluster.peers[leader])
        reader = await AegisClient.connect(cluster.peers[follower])
        try:
            for i in range(30):
                await writer.set("counter", b"%d" % i)
                # Acknowledged on the leader, so a read that starts now must see it.
                assert await reader.get("counter") == b"%d" % i
        finally:
            await writer.aclose()
            await reader.aclose()
