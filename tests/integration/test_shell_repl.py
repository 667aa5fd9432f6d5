"""The interactive shell driven through prompt-toolkit's pipe input against a real
three-node cluster (`python -m aegis.cli serve` processes on free 127.0.0.1 ports).

Each typed line goes through the real `PromptSession` (key bindings, completion, the
validator, history) and then through `Repl.handle_line`, which sends it over the trio
bridge to the cluster; the test reads what the user would see from a recording console.
Every process started here is killed by PID in a `finally`; every wait has a deadline.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import PipeInput
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from shell.bridge import TrioBridge
from shell.connection import ShellConnection
from shell.history import FilteredFileHistory
from shell.repl import Repl, ShellOptions, prompt_text

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (ROOT / "aegis" / "server.py").exists(), reason="aegis/server.py (the node) is not there yet"
)

START_TIMEOUT = 20.0


# --------------------------------------------------------------------------- a real cluster


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def info(port: int, timeout: float = 1.0) -> dict[str, str]:
    """INFO over a plain socket (independent of the code under test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"*1\r\n$4\r\nINFO\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and len(rest) >= int(head[1:]) + 2:
                break
    _, _, body = data.partition(b"\r\n")
    fields = {}
    for line in body.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value
    return fields


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


@dataclass
class Cluster:
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]]

    def address(self, node_id: str) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    def leader(self, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        def find() -> str | None:
            for node_id, port in self.ports.items():
                if node_id in exclude:
                    continue
                fields = info(port)
                if fields.get("role") == "leader":
                    return node_id
            return None

        return str(wait_for(find, START_TIMEOUT, "a leader"))

    def kill(self, node_id: str) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_cluster(data: Path) -> Iterator[Cluster]:
    ids = ["n1", "n2", "n3"]
    ports = dict(zip(ids, free_ports(3)))
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in ports.items())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node_id, port in ports.items():
            procs[node_id] = subprocess.Popen(
                [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", node_id,
                 "--listen", f"127.0.0.1:{port}", "--data", str(data / node_id), "--peers", peers],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        cluster = Cluster(ports, procs)
        cluster.leader()
        yield cluster
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from start_cluster(tmp_path_factory.mktemp("shell-cluster"))


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster for a test that kills nodes."""
    yield from start_cluster(tmp_path / "data")


# --------------------------------------------------------------------------- the shell


@dataclass
class Shell:
    repl: Repl
    input: PipeInput
    out: io.StringIO
    history_path: Path

    def type(self, keys: str, timeout: float = 15.0) -> str:
        """Type `keys` into the prompt; the line prompt-toolkit accepts.

        Completion runs asynchronously, so after each Tab the feeder waits (bounded) for
        the buffer to change before typing on, as a person would. If the line is never
        accepted, the watchdog closes the input: prompt() then raises EOFError.
        """
        buffer = self.repl.session.default_buffer
        pieces = [p for p in re.split(r"(\t)", keys) if p]
        app = self.repl.session.app

        def settle(done: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 3
            while not done() and time.monotonic() < deadline:
                time.sleep(0.02)

        def feed() -> None:
            settle(lambda: app.is_running)
            time.sleep(0.05)
            for i, piece in enumerate(pieces):
                before = buffer.text
                self.input.send_text(piece)
                if piece == "\t":
                    settle(lambda: buffer.text != before)
                elif i + 1 < len(pieces) and pieces[i + 1] == "\t":
                    settle(lambda: buffer.complete_state is not None and buffer.text.endswith(piece.lstrip()))

        feeder = threading.Thread(target=feed, daemon=True)
        watchdog = threading.Timer(timeout, self.input.close)
        feeder.start()
        watchdog.start()
        try:
            return self.repl.session.prompt()
        finally:
            watchdog.cancel()
            feeder.join(timeout=5)

    def run(self, keys: str) -> str:
        """Type a line, run it like the shell does, return what it printed."""
        line = self.type(keys)
        before = len(self.out.getvalue())
        assert self.repl.handle_line(line)
        return self.out.getvalue()[before:]


def open_shell(address: str, history_path: Path, *, monitor: bool = True) -> Iterator[Shell]:
    with create_pipe_input() as pipe:
        bridge = TrioBridge()
        repl: Repl | None = None
        try:
            async def make() -> ShellConnection:
                return ShellConnection([address], timeout=5.0)

            connection = bridge.run(make)
            out = io.StringIO()
            console = Console(file=out, width=160, color_system=None, force_terminal=False)
            options = ShellOptions(addresses=[address], pager=False)
            repl = Repl(options, bridge, connection, console, history=FilteredFileHistory(history_path),
                        input=pipe, output=DummyOutput(), monitor=monitor)
            repl.greet(repl.start())
            yield Shell(repl, pipe, out, history_path)
        finally:
            if repl is not None:
                repl.stop()
            bridge.close()


@pytest.fixture
def shell(cluster: Cluster, tmp_path: Path) -> Iterator[Shell]:
    yield from open_shell(cluster.address(cluster.leader()), tmp_path / "history", monitor=False)


# --------------------------------------------------------------------------- tests


def test_prompt_shows_address_and_role(shell: Shell, cluster: Cluster) -> None:
    leader = cluster.leader()
    assert f"Connected to {cluster.address(leader)} ({leader}, leader)" in shell.out.getvalue()
    assert prompt_text(shell.repl.conn.view) == f"{cluster.address(leader)} (leader)> "


def test_commands_render_like_redis_cli(shell: Shell) -> None:
    assert shell.run("SET greeting hello\r").strip() == "OK"
    assert shell.run("GET greeting\r").strip() == '"hello"'
    assert shell.run("GET no-such-key\r").strip() == "(nil)"
    shell.run("DEL counter\r")
    assert shell.run("INCR counter\r").strip() == "(integer) 1"
    assert shell.run('SET "two words" "a b"\r').strip() == "OK"
    assert shell.run('GET "two words"\r').strip() == '"a b"'
    assert shell.repl.failures == 0


def test_errors_render_in_red_and_are_counted(shell: Shell) -> None:
    shell.run("SET notanumber abc\r")
    out = shell.run("INCR notanumber\r")
    assert "(error) ERR value is not an integer or out of range" in out
    assert shell.repl.failures == 1


def test_completion_offers_commands_and_seen_keys(shell: Shell) -> None:
    assert shell.type("CLUS\t NOD\t\r") == "CLUSTER NODES"
    shell.run("SET user:42 alice\r")
    assert shell.type("GET user:4\t\r") == "GET user:42"
    # Keys are only those this session has seen: nothing else is offered.
    assert shell.type("GET zz\t\r") == "GET zz"


def test_validator_keeps_a_bad_line_from_being_sent(shell: Shell) -> None:
    # Enter on "INCRBY k x" is refused; Ctrl-U clears the line, then a good one goes through.
    assert shell.type("INCRBY k x\r\x15GET k\r") == "GET k"


def test_history_keeps_commands_but_never_auth(shell: Shell) -> None:
    shell.run("SET h 1\r")
    out = shell.run("AUTH supersecret\r")
    assert "(error)" in out  # this cluster has no token
    shell.run("GET h\r")
    text = shell.history_path.read_text()
    assert "SET h 1" in text and "GET h" in text
    assert "supersecret" not in text
    # Up arrow recalls the last kept command, not the AUTH line; Ctrl-R searches back.
    assert shell.type("\x1b[A\r") == "GET h"
    assert shell.type("\x1b[A\x1b[A\r") == "SET h 1"
    assert shell.type("\x12AUTH\r\x15\r") == ""  # nothing to find
    assert shell.type("\x12SET h\r\r") == "SET h 1"


def test_help_and_status_tables(shell: Shell, cluster: Cluster) -> None:
    out = shell.run("HELP SET\r")
    assert "SET key value" in out and "example: SET greeting hello" in out
    out = shell.run("CLUSTER NODES\r")
    leader = cluster.leader()
    leader_row = next(line for line in out.splitlines() if f" {leader} " in line)
    assert "★" in leader_row and "Healthy" in leader_row
    out = shell.run("MEMBER LIST\r")
    assert all(node_id in out for node_id in cluster.ports)
    out = shell.run("INFO\r")
    assert any(line.split()[:2] == ["role", "leader"] for line in out.splitlines() if line.strip())
    # Node ids and addresses learned from the tables complete now.
    assert set(shell.repl.knowledge.node_ids.newest_first()) == set(cluster.ports)
    assert shell.type(f"CONNECT {cluster.address(leader)[:-1]}\t\x15\r") == ""
    assert cluster.address(leader) in shell.repl.knowledge.addresses


def test_dangerous_commands_ask_first(shell: Shell, cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ports if n != leader)
    line = shell.type(f"MEMBER REMOVE {follower}\r")
    shell.input.send_text("n\r")
    before = len(shell.out.getvalue())
    assert shell.repl.handle_line(line)
    assert "not sent" in shell.out.getvalue()[before:]
    assert follower in info(cluster.ports[leader])["members"]
    # CONFIRM off switches the question off (here the target is unknown, so the node refuses).
    assert "off" in shell.run("CONFIRM off\r")
    out = shell.run("LEADER TRANSFER nosuchnode\r")
    assert "(error)" in out and "not sent" not in out
    assert cluster.leader() == leader


def test_a_killed_node_is_reported_and_the_shell_moves_on(own_cluster: Cluster, tmp_path: Path) -> None:
    cluster = own_cluster
    old_leader = cluster.leader()
    for shell in open_shell(cluster.address(old_leader), tmp_path / "history"):
        assert shell.run("SET before-kill 1\r").strip() == "OK"
        cluster.kill(old_leader)
        # The background probe notices while the shell sits at the prompt.
        wait_for(lambda: not shell.repl.conn.view.reachable, 10, "the prompt to say the node is down")
        assert prompt_text(shell.repl.conn.view) == f"{cluster.address(old_leader)} (down)> "
        new_leader = cluster.leader(exclude={old_leader})
        out = shell.run("GET before-kill\r")
        assert f"lost {cluster.address(old_leader)}" in out
        assert '"1"' in out
        deadline = time.monotonic() + 10
        while "leader changed" not in out and time.monotonic() < deadline:
            out += shell.run("PING\r")
        assert f"leader changed: {old_leader} → {new_leader}" in out
        assert shell.run("SET after-kill 2\r").strip().endswith("OK")
        assert shell.repl.conn.view.reachable
        assert shell.repl.conn.view.address != cluster.address(old_leader)


def test_connect_moves_to_another_node(shell: Shell, cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.ports if n != leader)
    out = shell.run(f"CONNECT {cluster.address(follower)}\r")
    assert f"Connected to {cluster.address(follower)} ({follower}, follower)" in out
    assert prompt_text(shell.repl.conn.view) == f"{cluster.address(follower)} (follower)> "
    assert shell.run("SET via-follower 1\r").strip() == "OK"  # the follower forwards


# --------------------------------------------------------------------------- scripted use


def aegis_shell(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shell", *args], input=stdin, capture_output=True, text=True,
        cwd=ROOT, timeout=30, env={**os.environ, **(env or {})},
    )


def test_one_command_piped_lines_json_and_exit_codes(cluster: Cluster) -> None:
    addr = ",".join(cluster.address(n) for n in cluster.ports)
    done = aegis_shell("--addr", addr, "SET", "script key", "a value")
    assert (done.returncode, done.stdout) == (0, "OK\n")
    done = aegis_shell("--addr", addr, "GET", "script key")
    assert (done.returncode, done.stdout) == (0, "a value\n")
    done = aegis_shell("--addr", addr, stdin="SET n 5\nINCR n\nGET n\nINCRBY n x\nGET nothing\n")
    assert done.stdout == "OK\n6\n6\n\n" and done.returncode == 1
    assert "(error) ERR value is not an integer" in done.stderr
    done = aegis_shell("--addr", addr, "--json", stdin="GET n\nMEMBER REMOVE n2\n")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0] == "6" and "--no-confirm" in lines[1]["error"] and done.returncode == 1


@pytest.fixture
def solo_with_token(tmp_path: Path) -> Iterator[int]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "serve", "--id", "solo",
         "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "solo"), "--token", "s3cret"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def serving() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_for(serving, START_TIMEOUT, "the node to listen")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_token_from_flag_or_environment(solo_with_token: int) -> None:
    addr = f"127.0.0.1:{solo_with_token}"
    denied = aegis_shell("--addr", addr, "PING", env={"AEGIS_TOKEN": ""})
    assert denied.returncode == 1 and ("NOAUTH" in denied.stderr or "token" in denied.stderr)
    assert aegis_shell("--addr", addr, "--token", "s3cret", "PING").stdout == "PONG\n"
    assert aegis_shell("--addr", addr, "PING", env={"AEGIS_TOKEN": "s3cret"}).stdout == "PONG\n"
    wrong = aegis_shell("--addr", addr, "--token", "nope", "PING")
    assert wrong.returncode == 1


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_polls_the_real_cluster(cluster: Cluster) -> None:
    from shell.dashboard import Collector, run_dashboard

    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None, force_terminal=False)
    bridge = TrioBridge()
    try:
        seeds = {"seed": cluster.address("n1")}
        collector = Collector(seeds, timeout=0.5)
        run_dashboard(bridge, collector, console, interval=0.2, max_ticks=3)
        snapshot = bridge.run(collector.poll)
        bridge.run(collector.aclose)
    finally:
        bridge.close()
    assert sorted(m.node_id for m in snapshot.members) == sorted(cluster.ports)
    assert snapshot.cluster_state == "Healthy" and snapshot.leader_id == cluster.leader()
    assert all(m.reachable and m.health == "Healthy" for m in snapshot.members)
    assert snapshot.write_rate is not None and snapshot.read_rate is not None
