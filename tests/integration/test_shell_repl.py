"""The interactive shell driven through prompt-toolkit's pipe input against a real
three-node cluster (`python -m aegis.cli serve` processes on free 127.0.0.1 ports).

Each typed line goes through the real `PromptSession` (key bindings, completion, the
validator, history) and then through `Repl.handle_line`, which sends it over the trio
bridge to the cluster; the test reads what the user would see from a recording console.
Every process started here is killed by PID in a `finally`; every wait has a deadline.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import PipeInput
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from shell.bridge import TrioBridge
from shell.connection import ShellConnection
from shell.history import FilteredFileHistory
from shell.repl import Repl, ShellOptions, prompt_text
from tests.e2e.harness import LocalCluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (ROOT / "aegis" / "server.py").exists(), reason="aegis/server.py (the node) is not there yet"
)

START_TIMEOUT = 20.0


# --------------------------------------------------------------------------- a real cluster


def start_cluster(root: Path) -> Iterator[LocalCluster]:
    # --tick-ms 50 is `aegis serve`'s own default: the shell sees the timing a user would.
    cluster = LocalCluster(root, tick_ms=50)
    try:
        cluster.start()
        cluster.leader(timeout=START_TIMEOUT)
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("shell-cluster"))


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster for a test that kills nodes."""
    yield from start_cluster(tmp_path)


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
def shell(cluster: LocalCluster, tmp_path: Path) -> Iterator[Shell]:
    leader = cluster.leader(timeout=START_TIMEOUT)
    yield from open_shell(cluster.addr(leader), tmp_path / "history", monitor=False)


# --------------------------------------------------------------------------- tests


def test_prompt_shows_address_and_role(shell: Shell, cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    assert f"Connected to {cluster.addr(leader)} ({leader}, leader)" in shell.out.getvalue()
    assert prompt_text(shell.repl.conn.view) == f"{cluster.addr(leader)} (leader)> "


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


def test_help_and_status_tables(shell: Shell, cluster: LocalCluster) -> None:
    out = shell.run("HELP SET\r")
    assert "SET key value" in out and "example: SET session:1 alice EX 60" in out
    out = shell.run("CLUSTER NODES\r")
    leader = cluster.leader(timeout=START_TIMEOUT)
    leader_row = next(line for line in out.splitlines() if f" {leader} " in line)
    assert "★" in leader_row and "Healthy" in leader_row
    out = shell.run("MEMBER LIST\r")
    assert all(node_id in out for node_id in cluster.nodes)
    out = shell.run("INFO\r")
    assert any(line.split()[:2] == ["role", "leader"] for line in out.splitlines() if line.strip())
    # Node ids and addresses learned from the tables complete now.
    assert set(shell.repl.knowledge.node_ids.newest_first()) == set(cluster.nodes)
    assert shell.type(f"CONNECT {cluster.addr(leader)[:-1]}\t\x15\r") == ""
    assert cluster.addr(leader) in shell.repl.knowledge.addresses


def test_dangerous_commands_ask_first(shell: Shell, cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    follower = next(n for n in cluster.nodes if n != leader)
    line = shell.type(f"MEMBER REMOVE {follower}\r")
    shell.input.send_text("n\r")
    before = len(shell.out.getvalue())
    assert shell.repl.handle_line(line)
    assert "not sent" in shell.out.getvalue()[before:]
    assert follower in cluster.info(leader)["members"]
    # CONFIRM off switches the question off (here the target is unknown, so the node refuses).
    assert "off" in shell.run("CONFIRM off\r")
    out = shell.run("LEADER TRANSFER nosuchnode\r")
    assert "(error)" in out and "not sent" not in out
    assert cluster.leader(timeout=START_TIMEOUT) == leader


def test_a_killed_node_is_reported_and_the_shell_moves_on(own_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = own_cluster
    old_leader = cluster.leader(timeout=START_TIMEOUT)
    for shell in open_shell(cluster.addr(old_leader), tmp_path / "history"):
        assert shell.run("SET before-kill 1\r").strip() == "OK"
        cluster.kill(old_leader)
        # The background probe notices while the shell sits at the prompt.
        wait_until(lambda: not shell.repl.conn.view.reachable, 10, 0.1, "the prompt to say the node is down")
        assert prompt_text(shell.repl.conn.view) == f"{cluster.addr(old_leader)} (down)> "
        new_leader = cluster.leader(timeout=START_TIMEOUT)  # among the live nodes
        out = shell.run("GET before-kill\r")
        assert f"lost {cluster.addr(old_leader)}" in out
        assert '"1"' in out
        deadline = time.monotonic() + 10
        while "leader changed" not in out and time.monotonic() < deadline:
            out += shell.run("PING\r")
        assert f"leader changed: {old_leader} → {new_leader}" in out
        assert shell.run("SET after-kill 2\r").strip().endswith("OK")
        assert shell.repl.conn.view.reachable
        assert shell.repl.conn.view.address != cluster.addr(old_leader)


def test_connect_moves_to_another_node(shell: Shell, cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    follower = next(n for n in cluster.nodes if n != leader)
    out = shell.run(f"CONNECT {cluster.addr(follower)}\r")
    assert f"Connected to {cluster.addr(follower)} ({follower}, follower)" in out
    assert prompt_text(shell.repl.conn.view) == f"{cluster.addr(follower)} (follower)> "
    assert shell.run("SET via-follower 1\r").strip() == "OK"  # the follower forwards


# --------------------------------------------------------------------------- the data API


def test_multi_exec_shows_tx_and_renders_item_by_item(shell: Shell) -> None:
    shell.run("DEL tx:a tx:n\r")
    assert shell.run("MULTI\r").strip() == "OK"
    assert prompt_text(shell.repl.conn.view, shell.repl.conn.session).endswith(" (TX)> ")
    assert shell.run("SET tx:a hello\r").strip() == "QUEUED"
    assert shell.run("INCR tx:n\r").strip() == "QUEUED"
    assert shell.run("GETV tx:a\r").strip() == "QUEUED"
    assert shell.run("INCR tx:a\r").strip() == "QUEUED"  # fails when applied, inside the array
    out = shell.run("EXEC\r")
    lines = [line.rstrip() for line in out.splitlines()]
    assert lines[:4] == ["1) SET tx:a hello", "   OK", "2) INCR tx:n", "   (integer) 1"]
    assert "3) GETV tx:a" in lines and any(line.split()[:2] == ["value", '"hello"'] for line in lines)
    assert "4) INCR tx:a" in lines and "(error) ERR value is not an integer or out of range" in out
    assert not shell.repl.conn.session.pinned
    assert not prompt_text(shell.repl.conn.view, shell.repl.conn.session).endswith(" (TX)> ")
    assert shell.run("GET tx:n\r").strip() == '"1"'
    # A command that cannot be queued dooms the transaction, and the shell says so.
    shell.run("MULTI\r")
    out = shell.run("SCAN 0\r")
    assert "(error)" in out and "EXECABORT" in out
    assert "EXECABORT" in shell.run("EXEC\r")
    assert shell.run("MULTI\r").strip() == "OK"
    assert shell.run("DISCARD\r").strip() == "OK" and not shell.repl.conn.session.in_multi


def test_watch_conflict_renders_the_nil_array(shell: Shell, cluster: LocalCluster) -> None:
    shell.run("SET tx:balance 10\r")
    assert shell.run("WATCH tx:balance\r").strip() == "OK"
    assert shell.repl.conn.session.watched == ("tx:balance",)
    other = cluster.nodes[next(iter(cluster.nodes))].client()
    other.set("tx:balance", "99")  # someone else writes it before EXEC
    shell.run("MULTI\r")
    shell.run("SET tx:balance 0\r")
    out = shell.run("EXEC\r")
    assert out.startswith("(nil)") and "WATCHed key changed" in out and "nothing was written" in out
    assert shell.run("GET tx:balance\r").strip() == '"99"'
    # Without a conflict the same transaction commits.
    shell.run("WATCH tx:balance\r")
    shell.run("MULTI\r")
    shell.run("SET tx:balance 0\r")
    assert shell.run("EXEC\r").splitlines()[1].strip() == "OK"


def test_bare_watch_points_at_dashboard_and_sends_nothing(shell: Shell) -> None:
    failures = shell.repl.failures
    out = shell.run("watch\r")
    assert "DASHBOARD" in out and "WATCH key [key ...]" in out and "nothing was sent" in out
    assert shell.repl.failures == failures + 1 and not shell.repl.conn.session.pinned
    # WATCH with one number is Redis's WATCH of that key; the old habit gets a reminder.
    out = shell.run("WATCH 0.5\r")
    assert out.startswith("OK") and "DASHBOARD 0.5" in out
    assert shell.repl.conn.session.watched == ("0.5",)
    assert shell.run("UNWATCH\r").strip() == "OK" and not shell.repl.conn.session.pinned
    assert "DASHBOARD [interval-seconds]" in shell.run("HELP DASHBOARD\r")
    assert shell.type("DASH\t\x15\r") == ""  # completes (then the line is cleared)


def test_data_replies_render_labelled(shell: Shell) -> None:
    shell.run("MSET scan:1 a scan:2 b scan:3 c\r")
    out = shell.run("SCAN 0 MATCH scan:* COUNT 1000\r")
    assert all(f'"scan:{i}"' in out for i in (1, 2, 3)) and "cursor" in out
    out = shell.run("GETV scan:1\r")
    assert any(line.split() == ["value", '"a"'] for line in out.splitlines())
    assert any(line.split()[:1] == ["revision"] for line in out.splitlines())
    out = shell.run("PREFIX scan:\r")
    assert any(line.split() == ['"scan:2"', '"b"'] for line in out.splitlines()) and "3 keys" in out
    assert "no deadline" in shell.run("TTL scan:1\r")
    assert "no such key" in shell.run("TTL scan:none\r")
    shell.run("EXPIRE scan:1 100\r")
    assert "s left" in shell.run("TTL scan:1\r")
    # Keys listed by a reply complete now; SET's options complete, each once.
    shell.repl.knowledge.keys.discard("scan:3")
    shell.run("KEYS scan:3\r")
    assert "scan:3" in shell.repl.knowledge.keys
    assert shell.type("SET k v N\t\r") == "SET k v NX"


def test_a_transaction_lost_with_its_node_is_discarded(own_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = own_cluster
    leader = cluster.leader(timeout=START_TIMEOUT)
    follower = next(n for n in cluster.nodes if n != leader)
    for shell in open_shell(cluster.addr(follower), tmp_path / "history", monitor=False):
        shell.run("CLUSTER NODES\r")  # every member becomes a fallback seed
        assert shell.run("MULTI\r").strip() == "OK"
        assert shell.run("SET lost:k 1\r").strip() == "QUEUED"
        out = shell.run("CONNECT " + cluster.addr(leader) + "\r")
        assert "EXEC or DISCARD first" in out  # CONNECT would lose it quietly: refused
        cluster.kill(follower)
        out = shell.run("SET lost:j 2\r")
        assert "transaction was discarded" in out and "nothing was written" in out
        assert not shell.repl.conn.session.pinned
        # The next command goes to a live member, outside any transaction.
        assert shell.run("GET lost:k\r").strip().endswith("(nil)")
        assert shell.run("SET after 1\r").strip().endswith("OK")


# --------------------------------------------------------------------------- streams


def follow_in_background(shell: Shell, keys: str, writes: Callable[[], None], until: str) -> str:
    """Type `keys` at the prompt and run the line, as the user would, on the main thread;
    meanwhile, once the
    stream has started, do `writes` and, when the output shows `until`, press Ctrl-C
    (KeyboardInterrupt on the main thread, as the terminal's SIGINT gives). What it printed."""
    line = shell.type(keys)
    before = len(shell.out.getvalue())
    failure: list[BaseException] = []

    def driver() -> None:
        try:
            wait_until(lambda: " · Ctrl-C" in shell.out.getvalue()[before:], 10, 0.02, "the stream to start")
            writes()
            wait_until(lambda: until in shell.out.getvalue()[before:], 10, 0.02, f"{until!r} to be shown",
                       detail=lambda: shell.out.getvalue()[before:])
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failure.append(exc)
        finally:
            _thread.interrupt_main()

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    try:
        assert shell.repl.handle_line(line)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C must end the follow, not escape it
        pytest.fail("Ctrl-C escaped the follow")
    thread.join(10)
    if failure:
        raise failure[0]
    return shell.out.getvalue()[before:]


def test_changes_live_then_ctrl_c_returns_to_a_working_prompt(shell: Shell, cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    writer = cluster.nodes[leader].client()
    address = shell.repl.conn.client.address

    def writes() -> None:
        writer.set("live:a", "1")
        writer.mset({"live:b": "2", "live:c": "3"})
        writer.set("elsewhere", "x")  # not under the prefix: not shown
        writer.delete("live:a")

    out = follow_in_background(shell, "CHANGES live:\r", writes, "deleted")
    lines = [line.rstrip() for line in out.splitlines()]
    assert "following changes under \"live:\" after revision" in lines[0] and "Ctrl-C" in lines[0]
    # "HH:MM:SS revision  key  value" per entry; an entry's further keys on indented lines.
    revisions = [int(m[1]) for line in lines if (m := re.match(r"\d\d:\d\d:\d\d (\d+)  ", line))]
    assert revisions == sorted(revisions) and len(revisions) == 3
    assert any('"live:a"  "1"' in line for line in lines)
    assert any('"live:b"  "2"' in line for line in lines) and any('"live:c"  "3"' in line for line in lines)
    assert any('"live:a"  deleted' in line for line in lines) and "elsewhere" not in out
    last = revisions[-1]
    assert f"stopped after 3 changes (last revision {last})" in out
    assert f"resume with: CHANGES live: FROM {last}" in out
    # The stream's connection is closed; the shell's own is where it was, and works.
    wait_until(lambda: cluster.info(leader)["feed_subscribers"] == "0", 5, 0.05, "the stream to be closed")
    assert shell.repl.conn.client.connected and shell.repl.conn.client.address == address
    assert shell.run("GET live:b\r").strip() == '"2"'
    assert "live:c" in shell.repl.knowledge.keys  # keys a stream showed complete at the prompt
    # Resuming from the revision it printed gives what came after, nothing twice.
    writer.set("live:d", "4")
    stop = threading.Event()
    before = len(shell.out.getvalue())
    threading.Thread(target=lambda: (wait_until(lambda: "live:d" in shell.out.getvalue()[before:], 10, 0.02),
                                     stop.set()), daemon=True).start()
    result = shell.repl.follow([b"CHANGES", b"live:", b"FROM", str(last).encode()], stop=stop)
    again = shell.out.getvalue()[before:]
    assert result.progress.changes == 1 and '"live:d"  "4"' in again and "live:a" not in again


def test_psubscribe_live_on_a_follower(shell: Shell, cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    follower = next(n for n in cluster.nodes if n != leader)
    shell.run(f"CONNECT {cluster.addr(follower)}\r")
    writer = cluster.nodes[leader].client()
    out = follow_in_background(
        shell, "PSUBSCRIBE __keyspace@0__:ks:*\r",
        lambda: (writer.set("ks:1", "a"), writer.delete("ks:1")), '"ks:1"  del',
    )
    assert 'subscribed to pattern "__keyspace@0__:ks:*" (1 subscription)' in out
    assert '"ks:1"  set' in out and "unsubscribed after 2 messages" in out
    assert "CHANGES ks: FROM <revision>" in out  # what resumes, since this does not
    wait_until(lambda: cluster.info(follower)["pubsub_clients"] == "0", 5, 0.05, "the subscription to be closed")
    assert shell.run("PING\r").strip() == "PONG"


# --------------------------------------------------------------------------- scripted use


def aegis_shell(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shell", *args], input=stdin, capture_output=True, text=True,
        cwd=ROOT, timeout=30, env={**os.environ, **(env or {})},
    )


def test_json_changes_in_a_script_until_sigint(cluster: LocalCluster) -> None:
    leader = cluster.leader(timeout=START_TIMEOUT)
    follower = next(n for n in cluster.nodes if n != leader)
    writer = cluster.nodes[leader].client()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shell", "--addr", cluster.addr(follower), "--json", "CHANGES", "script:"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "changes" and first["prefix"] == "script:"
        writer.set("script:1", "one")
        writer.delete("script:1")
        got = [json.loads(proc.stdout.readline()) for _ in range(2)]  # each as it is committed
        assert [g["changes"] for g in got] == [[{"key": "script:1", "value": "one"}],
                                               [{"key": "script:1", "value": None}]]
        assert got[0]["revision"] < got[1]["revision"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130 and out == ""
    assert f"resume with: CHANGES script: FROM {got[1]['revision']}" in err
    wait_until(lambda: cluster.info(follower)["feed_subscribers"] == "0", 5, 0.05, "the stream to be closed")


def test_one_command_piped_lines_json_and_exit_codes(cluster: LocalCluster) -> None:
    addr = ",".join(cluster.addr(n) for n in cluster.nodes)
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
    solo = LocalCluster(tmp_path, n=1, tick_ms=50, extra=["--token", "s3cret"])
    try:
        solo.start(wait=False)
        port = solo.nodes["n1"].port
        wait_until(solo.nodes["n1"].client(password="s3cret").ping, START_TIMEOUT, 0.1, "the node to listen")
        yield port
    finally:
        solo.stop_all()


def test_token_from_flag_or_environment(solo_with_token: int) -> None:
    addr = f"127.0.0.1:{solo_with_token}"
    denied = aegis_shell("--addr", addr, "PING", env={"AEGIS_TOKEN": ""})
    assert denied.returncode == 1 and ("NOAUTH" in denied.stderr or "token" in denied.stderr)
    assert aegis_shell("--addr", addr, "--token", "s3cret", "PING").stdout == "PONG\n"
    assert aegis_shell("--addr", addr, "PING", env={"AEGIS_TOKEN": "s3cret"}).stdout == "PONG\n"
    wrong = aegis_shell("--addr", addr, "--token", "nope", "PING")
    assert wrong.returncode == 1


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_polls_the_real_cluster(cluster: LocalCluster) -> None:
    from shell.dashboard import Collector, run_dashboard

    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None, force_terminal=False)
    bridge = TrioBridge()
    try:
        seeds = {"seed": cluster.addr("n1")}
        collector = Collector(seeds, timeout=0.5)
        run_dashboard(bridge, collector, console, interval=0.2, max_ticks=3)
        snapshot = bridge.run(collector.poll)
        bridge.run(collector.aclose)
    finally:
        bridge.close()
    assert sorted(m.node_id for m in snapshot.members) == sorted(cluster.nodes)
    assert snapshot.cluster_state == "Healthy" and snapshot.leader_id == cluster.leader(timeout=START_TIMEOUT)
    assert all(m.reachable and m.health == "Healthy" for m in snapshot.members)
    assert snapshot.write_rate is not None and snapshot.read_rate is not None
