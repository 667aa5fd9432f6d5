"""shell.app (arguments, scripted mode, exit codes) and shell.bridge (the trio thread),
with a fake connection: no network. Real nodes are in tests/integration and tests/e2e."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import trio

from aegis.errors import CommandError, NoLeaderError
from aegis.protocol import Reply
from shell.app import _mode, parse_args, run_script
from shell.bridge import BridgeClosedError, TrioBridge
from shell.connection import NodeView, Outcome, describe_error
from shell.grammar import quote_word, split_line


@pytest.fixture
def bridge() -> Iterator[TrioBridge]:
    b = TrioBridge()
    try:
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------- arguments


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEGIS_TOKEN", raising=False)
    monkeypatch.delenv("AEGIS_ADDR", raising=False)
    args = parse_args([])
    assert args.addresses == ["127.0.0.1:7001"]
    assert args.token is None and args.confirm and args.pager and args.command == []


def test_several_seeds_token_and_a_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_TOKEN", "from-env")
    args = parse_args(["--addr", "7001, 127.0.0.1:7002", "--json", "--no-confirm", "SET", "k", "-1"])
    assert args.addresses == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert args.token == "from-env" and args.json and not args.confirm
    assert args.command == ["SET", "k", "-1"]
    assert parse_args(["--token", "flag"]).token == "flag"


@pytest.mark.parametrize("argv", [["--addr", "nope"], ["--addr", ","], ["--timeout", "0"], ["--json", "--raw"]])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2


def test_output_mode() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert _mode(parse_args([]), io.StringIO()) == "raw"
    assert _mode(parse_args([]), Tty()) == "pretty"
    assert _mode(parse_args(["--no-raw"]), io.StringIO()) == "pretty"
    assert _mode(parse_args(["--raw"]), Tty()) == "raw"
    assert _mode(parse_args(["--json"]), Tty()) == "json"


@pytest.mark.parametrize("word", ["plain", "two words", 'q"uote', "back\\slash", "", "new\nline"])
def test_command_line_words_survive_the_grammar(word: str) -> None:
    assert split_line("SET k " + quote_word(word)) == [b"SET", b"k", word.encode()]


# --------------------------------------------------------------------------- scripted mode


class FakeConnection:
    """Replies from a table; records what was sent."""

    def __init__(self, replies: dict[bytes, Reply | Exception]) -> None:
        self.replies = replies
        self.sent: list[list[bytes]] = []

    async def execute(self, argv: Sequence[bytes]) -> Outcome:
        self.sent.append(list(argv))
        view = NodeView("127.0.0.1:7001", reachable=True, checked=True)
        reply = self.replies.get(argv[0].upper(), "OK")
        if isinstance(reply, Exception):
            return Outcome(tuple(argv), error=reply, before=view, after=view)
        return Outcome(tuple(argv), reply=reply, before=view, after=view)


def script(
    bridge: TrioBridge, lines: list[str], replies: dict[bytes, Reply | Exception] | None = None,
    *, mode: str = "raw", confirm: bool = True,
) -> tuple[int, str, str, FakeConnection]:
    conn = FakeConnection(replies or {})
    out, err = io.StringIO(), io.StringIO()
    code = run_script(lines, conn, bridge, mode=mode, confirm=confirm, stdout=out, stderr=err)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue(), conn


def test_lines_run_in_order_raw(bridge: TrioBridge) -> None:
    code, out, err, conn = script(
        bridge, ["SET k v\n", "\n", "# a comment\n", "GET k\n", "INCR n\n", "GET nothing"],
        {b"GET": b"v", b"INCR": 1},
    )
    assert code == 0 and err == ""
    assert out == "OK\nv\n1\nv\n"
    assert [a[0] for a in conn.sent] == [b"SET", b"GET", b"INCR", b"GET"]


def test_a_failed_command_sets_the_exit_code_and_later_lines_still_run(bridge: TrioBridge) -> None:
    code, out, err, conn = script(
        bridge, ["INCR k", 'SET "open', "GET k"],
        {b"INCR": CommandError("value is not an integer or out of range"), b"GET": b"x"},
    )
    assert code == 1
    assert out == "x\n"
    assert "(error) ERR value is not an integer" in err and "unbalanced" in err
    assert len(conn.sent) == 2


def test_json_mode(bridge: TrioBridge) -> None:
    code, out, _err, _ = script(
        bridge, ["GET k", "GET k", "SET k v"],
        {b"GET": b"v", b"SET": NoLeaderError("no leader is known")}, mode="json",
    )
    assert code == 1
    assert [json.loads(line) for line in out.splitlines()] == [
        "v", "v", {"error": "NOLEADER no leader is known"},
    ]


def test_dangerous_commands_need_no_confirm_in_scripts(bridge: TrioBridge) -> None:
    code, _out, err, conn = script(bridge, ["MEMBER REMOVE n3", "LEADER TRANSFER n2"])
    assert code == 1 and conn.sent == []
    assert "--no-confirm" in err
    code, out, _err, conn = script(bridge, ["MEMBER REMOVE n3"], confirm=False)
    assert code == 0 and conn.sent == [[b"MEMBER", b"REMOVE", b"n3"]]
    code, _out, _err, conn = script(bridge, ["CONFIRM off", "LEADER TRANSFER n2"])
    assert code == 0 and len(conn.sent) == 1


def test_meta_commands_in_scripts(bridge: TrioBridge) -> None:
    code, out, _err, conn = script(bridge, ["HELP GET", "EXIT", "GET never-sent"], mode="pretty")
    assert code == 0 and conn.sent == []
    assert "GET key" in out and "example:" in out
    code, _out, err, _ = script(bridge, ["DASHBOARD"])
    assert code == 1 and "interactive" in err


def test_a_bare_watch_is_refused_locally_and_watch_with_keys_is_sent(bridge: TrioBridge) -> None:
    code, _out, err, conn = script(bridge, ["watch", "WATCH k1 k2", "GET k1"], {b"GET": b"v"})
    assert code == 1
    assert "DASHBOARD" in err and "WATCH key [key ...]" in err and "nothing was sent" in err
    assert conn.sent == [[b"WATCH", b"k1", b"k2"], [b"GET", b"k1"]]


def test_describe_error() -> None:
    assert describe_error(CommandError("boom")) == "ERR boom"
    assert describe_error(NoLeaderError()) == "NOLEADER no leader is known"
    assert describe_error(ValueError("x")) == "ValueError: x"


# --------------------------------------------------------------------------- the bridge


def test_bridge_runs_coroutines_in_its_own_thread(bridge: TrioBridge) -> None:
    async def where() -> str:
        await trio.sleep(0)
        return threading.current_thread().name

    assert bridge.run(where) == "aegis-shell-trio"
    assert threading.current_thread().name != "aegis-shell-trio"


def test_bridge_propagates_errors(bridge: TrioBridge) -> None:
    async def boom() -> None:
        raise CommandError("nope")

    with pytest.raises(CommandError):
        bridge.run(boom)
    assert bridge.alive  # an error in one call does not stop the thread


def test_bridge_timeout_cancels_the_task(bridge: TrioBridge) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        bridge.run(forever, timeout=0.2)
    assert time.monotonic() - start < 2
    assert cancelled.wait(2)


def test_background_tasks_are_cancelled_on_close() -> None:
    bridge = TrioBridge()
    finished = threading.Event()

    async def background() -> None:
        try:
            await trio.sleep_forever()
        finally:
            finished.set()

    future, scope = bridge.submit(background)
    bridge.close()
    assert finished.wait(2)
    assert isinstance(future.exception(timeout=2), BridgeClosedError)
    with pytest.raises(BridgeClosedError):
        bridge.run(background)


def test_cancel_a_submitted_task(bridge: TrioBridge) -> None:
    async def forever() -> None:
        await trio.sleep_forever()

    future, scope = bridge.submit(forever)
    bridge.cancel(scope)
    assert isinstance(future.exception(timeout=2), KeyboardInterrupt)
