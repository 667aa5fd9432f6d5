"""Two nodes in one process, each with `--metrics` on port 0: separate registries, real HTTP."""

from __future__ import annotations

from pathlib import Path

import trio

from aegis.client import AegisClient
from aegis.server import Node, ServerConfig


async def _get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the scrape")


async def test_two_nodes_in_one_process_have_their_own_metrics(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nodes = []
            for nid in ("a1", "b1"):
                node = Node(ServerConfig(node_id=nid, port=0, data_dir=str(tmp_path / nid), tick_ms=20,
                                         metrics=("127.0.0.1", 0)))
                await nursery.start(node.serve)
                nodes.append(node)
            a, b = nodes
            assert a.metrics_port and b.metrics_port and a.metrics_port != b.metrics_port
            while not (a.raft.is_leader() and b.raft.is_leader()):
                await trio.sleep(0.02)
            client = await AegisClient.connect(f"127.0.0.1:{a.port}")
            for i in range(5):
                await client.execute("SET", f"k{i}", "v")
            await client.aclose()
            status, body = await _get(a.metrics_port, "/metrics")
            assert status == 200
            text_a = body.decode()
            _, body_b = await _get(b.metrics_port, "/metrics")
            text_b = body_b.decode()
            assert 'aegis_node_info{cluster="aegis",node="a1",version=' in text_a
            assert 'node="b1"' in text_b and 'node="a1"' not in text_b
            assert _value(text_a, 'aegis_requests_total{command="set"}') == 5
            assert 'aegis_requests_total{command="set"}' not in text_b
            assert _value(text_a, "aegis_proposals_total") == 6  # the client's SESSION OPEN, 5 SETs
            assert _value(text_a, 'aegis_fsync_duration_seconds_count{db="log"}') >= 1
            assert (await _get(a.metrics_port, "/health"))[0] == 200
            nursery.cancel_scope.cancel()
