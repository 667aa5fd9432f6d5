"""aegis-shell in a real terminal: tmux runs the shell against `aegis up`, the test types
into it (send-keys) and reads the screen (capture-pane).

The story: start a three-node cluster with `aegis up` on free ports in a temporary data
directory; open the shell; SET and GET a key; run a MULTI … EXEC (the prompt says (TX)
meanwhile); a bare `watch` is answered by the shell with a pointer to DASHBOARD; open
`dashboard`; kill -9 one follower by PID; the dashboard keeps refreshing and shows that
node's row as Down/Unreachable and the cluster Degraded; Ctrl-C returns to the prompt,
where the shell still works.

Everything started here (the tmux session, `aegis up` and its nodes) is stopped in a
`finally`, by name and PID; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import free_port_run, info_at, wait_until

ROOT = Path(__file__).resolve().parents[2]
TMUX_FOUND = shutil.which("tmux")
TMUX: str = TMUX_FOUND or "tmux"

pytestmark = [
    pytest.mark.skipif(TMUX_FOUND is None, reason="tmux is not installed"),
    pytest.mark.skipif(not (ROOT / "aegis" / "server.py").exists(), reason="aegis/server.py is not there yet"),
]


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    base: int
    pids: dict[str, int]
    log: Path

    def port(self, node_id: str) -> int:
        return self.base + int(node_id[1:]) - 1


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    base = free_port_run(3)
    log = tmp_path / "up.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aegis.cli", "--log-level", "warning", "up", "--port", str(base),
             "--data", str(tmp_path / "data")],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    pids: dict[str, int] = {}
    try:
        def started() -> bool:
            pids.update({m[0]: int(m[1]) for m in re.findall(r"(n\d)\s+listening on \S+.*?pid (\d+)", log.read_text())})
            return len(pids) == 3

        wait_until(started, 20, 0.2, "aegis up to start three nodes", log.read_text)
        wait_until(lambda: any(info_at(base + i, timeout=1.0).get("role") == "leader" for i in range(3)), 20, 0.2,
                   "a leader", log.read_text)
        yield Up(proc, base, pids, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # aegis up stops its nodes cleanly
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def rows(screen: str) -> dict[str, str]:
    """The dashboard's member rows by node id."""
    found = (re.match(r"^[★ ]*(n\d)\s+127\.0\.0\.1:\d+\s", line) for line in screen.splitlines())
    return {m.group(1): m.string for m in found if m}


@dataclass
class Pane:
    name: str

    def send(self, *keys: str) -> None:
        subprocess.run([TMUX, "send-keys", "-t", self.name, *keys], check=True, timeout=5)

    def type_line(self, text: str) -> None:
        self.send("-l", text)
        self.send("Enter")

    def size(self) -> str:
        result = subprocess.run(
            [TMUX, "display", "-p", "-t", self.name, "#{window_width}x#{window_height}"],
            capture_output=True, text=True, timeout=5,
        )
        return result.stdout.strip()

    def screen(self) -> str:
        result = subprocess.run(
            [TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, timeout=5,
        )
        return result.stdout

    def wait_for(self, predicate: Callable[[str], bool], what: str, timeout: float = 15) -> str:
        return str(wait_until(lambda: (s := self.screen()) and predicate(s) and s, timeout, 0.2, what,
                              lambda: f"window {self.size()}:\n{self.screen()}"))


@pytest.fixture
def pane(up: Up, tmp_path: Path) -> Iterator[Pane]:
    name = f"aegis-shell-e2e-{uuid.uuid4().hex[:8]}"
    command = (
        f"cd {ROOT} && env -u COLUMNS -u LINES AEGIS_HISTFILE={tmp_path / 'history'} PAGER=cat "
        f"{sys.executable} -m shell --addr 127.0.0.1:{up.base}"
    )
    subprocess.run(
        [TMUX, "new-session", "-d", "-s", name, "-x", "160", "-y", "50", command],
        check=True, timeout=10,
    )
    try:
        yield Pane(name)
    finally:
        subprocess.run([TMUX, "kill-session", "-t", name], capture_output=True, timeout=10)


def test_shell_and_dashboard_in_a_real_terminal(up: Up, pane: Pane) -> None:
    prompt = f"127.0.0.1:{up.base} ("
    pane.wait_for(lambda s: prompt in s and ")>" in s, "the prompt")
    assert "Connected to" in pane.screen()

    pane.type_line("SET e2e hello")
    pane.wait_for(lambda s: "\nOK" in s, "SET's reply")
    pane.type_line("GET e2e")
    pane.wait_for(lambda s: '"hello"' in s, "GET's reply")

    pane.type_line("MULTI")
    pane.wait_for(lambda s: "(TX)>" in s, "the prompt to show the open transaction")
    pane.type_line("INCR e2e:n")
    pane.wait_for(lambda s: "QUEUED" in s, "INCR to be queued")
    pane.type_line("EXEC")
    pane.wait_for(lambda s: "1) INCR e2e:n" in s and "(integer) 1" in s, "EXEC's replies, item by item")

    def last_prompt(screen: str) -> str:
        return next((line.rstrip() for line in reversed(screen.splitlines()) if line.startswith(prompt)), "")

    pane.wait_for(lambda s: last_prompt(s).endswith(("(leader)>", "(follower)>")), "the prompt without (TX)")

    pane.type_line("watch")
    pane.wait_for(lambda s: "The live dashboard is DASHBOARD" in s, "the pointer from a bare WATCH")

    pane.type_line("dashboard")
    screen = pane.wait_for(
        lambda s: " Aegis " in s and "state Healthy" in s and sorted(rows(s)) == ["n1", "n2", "n3"],
        "the dashboard with three healthy members",
    )
    leader = next(n for n in ("n1", "n2", "n3") if info_at(up.port(n), timeout=1.0).get("role") == "leader")
    victim = next(n for n in ("n3", "n2", "n1") if n != leader)
    os.kill(up.pids[victim], signal.SIGKILL)

    def victim_row(s: str) -> str:
        return rows(s).get(victim, "")

    screen = pane.wait_for(
        lambda s: ("Down" in victim_row(s) or "Unreachable" in victim_row(s)) and "state Degraded" in s,
        f"{victim}'s row to turn Down and the cluster Degraded", timeout=20,
    )
    assert "refused" in victim_row(screen) or "no answer" in victim_row(screen)
    # The other rows keep refreshing as healthy members.
    others = [line for node_id, line in rows(screen).items() if node_id != victim]
    assert len(others) == 2 and all("Healthy" in line for line in others), screen

    pane.send("C-c")
    pane.wait_for(lambda s: "left the dashboard" in s and s.rstrip().splitlines()[-3:] != [], "the prompt again")
    pane.type_line("GET e2e")
    pane.wait_for(lambda s: s.count('"hello"') >= 2, "the shell working after the dashboard")
