"""shell.status and shell.render: tolerant status parsers and what replies look like
(rendered to a recording rich Console), raw and JSON forms, help, paging decisions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console, RenderableType

from aegis.commands import COMMANDS
from aegis.protocol import Reply, RespError
from shell.grammar import META_COMMANDS
from shell.render import (
    escape_bulk,
    format_reply,
    help_command,
    help_overview,
    json_reply,
    json_value,
    print_paged,
    raw_text,
    render_error,
    render_exec,
    render_reply,
)
from shell.status import (
    format_age,
    members_from_reply,
    parse_member_lines,
    parse_members_field,
)

# What aegis/server.py sends (CLUSTER NODES from the leader and from a follower, MEMBER LIST).
NODES_FROM_LEADER = (
    "n1 127.0.0.1:7001 role=leader match=12 health=Healthy last_heard_ms=0 flags=myself error=-\n"
    "n2 127.0.0.1:7002 role=follower match=12 health=Healthy last_heard_ms=48 flags=- error=-\n"
    "n3 127.0.0.1:7003 role=follower match=7 health=Down last_heard_ms=5210 flags=- "
    "error=connection_refused\n"
)
NODES_FROM_FOLLOWER = (
    "n1 127.0.0.1:7001 role=leader match=-1 health=Healthy last_heard_ms=40 flags=- error=-\n"
    "n2 127.0.0.1:7002 role=follower match=12 health=Healthy last_heard_ms=0 flags=myself error=-\n"
)
MEMBER_LIST: list[Reply] = [b"n1 127.0.0.1:7001 voter leader", b"n2 127.0.0.1:7002 voter", b"n4 127.0.0.1:7004 learner"]
INFO = (
    "# Aegis\r\nnode_id:n1\r\nrole:leader\r\nleader_id:n1\r\nterm:3\r\ncommit_index:12\r\n"
    "applied_index:12\r\nmembers:n1,n2,n3\r\ncluster_state:Healthy\r\n"
)


def text_of(renderable: RenderableType, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------- status parsers


def test_cluster_nodes_from_the_leader() -> None:
    rows = parse_member_lines(NODES_FROM_LEADER)
    assert [r.node_id for r in rows] == ["n1", "n2", "n3"]
    n1, n2, n3 = rows
    assert n1.is_leader and n1.myself and n1.role == "leader" and n1.last_heard == "—"
    assert n2.match_index == 12 and n2.health == "Healthy" and n2.last_heard == "0.0s ago"
    assert n3.is_down and n3.extra == {"error": "connection_refused"}
    assert n3.last_heard == "5.2s ago"
    assert "error" not in n1.extra  # "-" means nothing


def test_cluster_nodes_from_a_follower_hides_unknown_match() -> None:
    n1, n2 = parse_member_lines(NODES_FROM_FOLLOWER)
    assert n1.match_index is None and n1.is_leader
    assert n2.match_index == 12 and n2.myself


@pytest.mark.parametrize(
    "text",
    [
        "n1 127.0.0.1:7001 leader healthy\nn2 127.0.0.1:7002 follower down\n",
        "1) n1 127.0.0.1:7001 state=leader status=healthy\n2) n2 127.0.0.1:7002 state=follower status=down\n",
        "n1 127.0.0.1:7001 role=leader health=HEALTHY last_heard=0.5s\n"
        "n2 127.0.0.1:7002 role=follower health=down last_heard=12s\n",
    ],
)
def test_member_lines_in_other_plausible_formats(text: str) -> None:
    n1, n2 = parse_member_lines(text)
    assert (n1.node_id, n1.address, n1.is_leader, n1.health) == ("n1", "127.0.0.1:7001", True, "Healthy")
    assert (n2.role, n2.health, n2.is_down) == ("follower", "Down", True)


def test_member_list_reply_shapes() -> None:
    rows = members_from_reply(MEMBER_LIST)
    assert rows is not None
    assert [(r.node_id, r.role, r.is_leader) for r in rows] == [
        ("n1", "leader", True), ("n2", "voter", False), ("n4", "learner", False),
    ]
    nested = members_from_reply([[b"n1", b"127.0.0.1:7001", b"voter"]], leader_id="n1")
    assert nested is not None and nested[0].is_leader
    assert members_from_reply(5) is None
    assert members_from_reply([{b"a": 1}]) is None
    assert members_from_reply(b"") is None


def test_members_field() -> None:
    assert parse_members_field("n1,n2,n3") == [("n1", ""), ("n2", ""), ("n3", "")]
    assert parse_members_field("n1=127.0.0.1:7001, n2@h:7002") == [("n1", "127.0.0.1:7001"), ("n2", "h:7002")]
    assert parse_members_field("n1:127.0.0.1:7001") == [("n1", "127.0.0.1:7001")]
    assert parse_members_field("127.0.0.1:7001") == [("", "127.0.0.1:7001")]
    assert parse_members_field("") == []


def test_format_age() -> None:
    assert format_age(None) == ""
    assert format_age(-1) == "never"
    assert format_age(0.25) == "0.2s ago" or format_age(0.25) == "0.3s ago"
    assert format_age(42) == "42s ago"
    assert format_age(190) == "3m10s ago"
    assert format_age(7300) == "2h01m ago"


def test_garbage_never_raises() -> None:
    for text in ("", "\n\n", "=", "a b c d e f", "x=1 y=2", "n1 - role= match=abc"):
        parse_member_lines(text)
        text_of(render_reply([b"CLUSTER", b"NODES"], text.encode()))
        text_of(render_reply([b"INFO"], text.encode()))


# --------------------------------------------------------------------------- generic replies


def test_redis_cli_style_scalars() -> None:
    assert text_of(format_reply("OK")).strip() == "OK"
    assert text_of(format_reply(b"hello")).strip() == '"hello"'
    assert text_of(format_reply(42)).strip() == "(integer) 42"
    assert text_of(format_reply(None)).strip() == "(nil)"
    assert text_of(format_reply(RespError("ERR boom"))).strip() == "(error) ERR boom"
    assert text_of(format_reply([])).strip() == "(empty array)"


def test_escape_bulk() -> None:
    assert escape_bulk(b'a"b\\c\n\x00\xff') == '"a\\"b\\\\c\\n\\x00\\xff"'


def test_nested_lists_are_numbered_and_indented() -> None:
    out = text_of(format_reply([b"a", [b"b", 2], None]))
    assert out.splitlines() == ['1) "a"', '2) 1) "b"', "   2) (integer) 2", "3) (nil)"]


def test_maps_render_as_pairs() -> None:
    out = text_of(format_reply({b"server": b"aegis", b"proto": 2}))
    assert '1# "server" => "aegis"' in out and '2# "proto" => (integer) 2' in out


def test_errors_are_red() -> None:
    text = render_error("NOLEADER no leader is known")
    assert str(text) == "(error) NOLEADER no leader is known"
    assert "red" in str(text.style)


# --------------------------------------------------------------------------- tables


def test_info_renders_as_a_sectioned_table() -> None:
    out = text_of(render_reply([b"INFO"], INFO.encode()))
    assert "# Aegis" in out
    assert any(line.split() == ["role", "leader"] for line in out.splitlines())
    assert any(line.split() == ["commit_index", "12"] for line in out.splitlines())


def test_cluster_nodes_table_marks_the_leader_and_down_rows() -> None:
    out = text_of(render_reply([b"cluster", b"nodes"], NODES_FROM_LEADER.encode()))
    lines = out.splitlines()
    n1 = next(line for line in lines if " n1 " in line)
    n3 = next(line for line in lines if " n3 " in line)
    assert "★" in n1 and "(you)" in n1
    assert "Down" in n3 and "connection_refused" in n3 and "★" not in n3
    assert "match" in out and "last heard" in out


def test_member_list_table() -> None:
    out = text_of(render_reply([b"MEMBER", b"LIST"], MEMBER_LIST))
    assert "★" in next(line for line in out.splitlines() if " n1 " in line)
    assert "learner" in out


def test_unparsable_status_falls_back_to_generic() -> None:
    assert text_of(render_reply([b"MEMBER", b"LIST"], 7)).strip() == "(integer) 7"
    assert text_of(render_reply([b"INFO"], b"")).strip() == '""'


def test_container_help_lines_print_plain() -> None:
    out = text_of(render_reply([b"CLUSTER", b"HELP"], ["CLUSTER <subcommand>", "INFO"]))
    assert out.splitlines() == ["CLUSTER <subcommand>", "INFO"]


# --------------------------------------------------------------------------- help


def test_help_overview_lists_every_command_literally() -> None:
    out = text_of(help_overview(), width=160)
    for spec in COMMANDS.values():
        for s in spec.subcommands or (spec,):
            assert s.syntax in out, s.syntax  # "[key ...]" is not eaten as markup
    for name in META_COMMANDS:
        assert name in out


def test_help_for_every_command_has_description_and_example() -> None:
    for spec in COMMANDS.values():
        for s in (spec, *spec.subcommands):
            out = text_of(help_command(s), width=160)
            assert s.summary[:40] in out and "example: " + s.example in out
    out = text_of(help_command(COMMANDS["MEMBER"].subcommand("REMOVE")))  # type: ignore[arg-type]
    assert "asks for confirmation" in out
    assert "DASHBOARD [interval-seconds]" in text_of(help_command(META_COMMANDS["DASHBOARD"]))


# --------------------------------------------------------------------------- raw and JSON


def test_raw_text() -> None:
    assert raw_text(b"hello") == "hello"
    assert raw_text(None) == ""
    assert raw_text(3) == "3"
    assert raw_text("OK") == "OK"
    assert raw_text([b"a", [b"b"], None]) == "a\nb\n"
    assert raw_text(RespError("ERR x")) == "ERR x"


def test_json_value() -> None:
    value: list[Reply] = [b"text", b"\xff", None, 3, "OK", RespError("ERR no"), {b"k": b"v"}]
    assert json.loads(json.dumps(json_value(value))) == [
        "text", {"base64": "/w=="}, None, 3, "OK", {"error": "ERR no"}, {"k": "v"},
    ]


# --------------------------------------------------------------------------- paging


def test_short_output_and_non_terminals_are_not_paged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_PAGER", "false-pager-that-must-not-run")
    console = Console(file=io.StringIO(), width=80, height=10, force_terminal=False)
    print_paged(console, format_reply([b"x"] * 50))
    assert console.file.getvalue().count("\n") == 50  # type: ignore[attr-defined]


def test_tall_output_goes_through_the_pager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "paged.txt"
    monkeypatch.setenv("AEGIS_PAGER", f"cat > {out}")
    console = Console(file=io.StringIO(), width=80, height=10, force_terminal=True)
    print_paged(console, format_reply([b"x"] * 50))
    assert out.read_text().count('"x"') == 50
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]
    print_paged(console, format_reply([b"y"] * 50), pager=False)
    assert console.file.getvalue().count('"y"') == 50  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the data API's replies


def test_scan_shows_the_keys_and_how_to_go_on() -> None:
    out = text_of(render_reply([b"SCAN", b"0", b"MATCH", b"user:*"], [b"17", [b"user:1", b"user:2"]]))
    assert '1) "user:1"' in out and '2) "user:2"' in out
    assert "cursor 17 · continue with SCAN 17 MATCH user:*" in out
    out = text_of(render_reply([b"scan", b"17"], [b"0", []]))
    assert "(no keys)" in out and "cursor 0: the scan is complete" in out
    assert "(no keys in this step)" in text_of(render_reply([b"SCAN", b"0"], [b"9", []]))
    assert json_reply([b"SCAN", b"0"], [b"17", [b"a"]]) == {"cursor": "17", "keys": ["a"]}


def test_getv_is_labelled() -> None:
    out = text_of(render_reply([b"GETV", b"config"], [b"v1", 3, 1207]))
    lines = [line.split() for line in out.splitlines()]
    assert ["value", '"v1"'] in lines and ["version", "3"] in lines and ["revision", "1207"] in lines
    assert "(nil)" in text_of(render_reply([b"GETV", b"nope"], None))
    assert json_reply([b"GETV", b"k"], [b"v1", 3, 1207]) == {"value": "v1", "version": 3, "revision": 1207}
    assert json_reply([b"GETV", b"k"], None) is None


def test_range_and_prefix_are_key_value_tables() -> None:
    reply: list[Reply] = [b"user:1", b"alice", b"user:2", b"bob smith"]
    out = text_of(render_reply([b"PREFIX", b"user:"], reply))
    rows = [line for line in out.splitlines() if "user:" in line]
    assert len(rows) == 2 and '"alice"' in rows[0] and '"bob smith"' in rows[1]
    assert "key" in out and "value" in out and "2 keys" in out
    assert json_reply([b"RANGE", b"-", b"+"], reply) == [
        {"key": "user:1", "value": "alice"}, {"key": "user:2", "value": "bob smith"},
    ]
    # KEYSONLY is a plain list of keys, in both forms.
    keys: list[Reply] = [b"user:1", b"user:2"]
    assert text_of(render_reply([b"PREFIX", b"user:", b"KEYSONLY"], keys)).splitlines() == ['1) "user:1"', '2) "user:2"']
    assert json_reply([b"PREFIX", b"user:", b"KEYSONLY"], keys) == ["user:1", "user:2"]
    assert text_of(render_reply([b"RANGE", b"a", b"b"], [])).strip() == "(empty array)"


def test_a_full_page_says_how_to_get_the_next() -> None:
    reply: list[Reply] = [b"user:1", b"a", b"user:2", b"b"]
    out = text_of(render_reply([b"RANGE", b"[user:", b"(user;", b"LIMIT", b"2"], reply), width=160)
    assert "LIMIT reached; the next page: RANGE (user:2 (user; LIMIT 2" in out
    out = text_of(render_reply([b"PREFIX", b"user:", b"LIMIT", b"2"], reply), width=160)
    assert "the next page: RANGE (user:2 (user; LIMIT 2" in out
    out = text_of(render_reply([b"PREFIX", b"user:", b"LIMIT", b"3"], reply), width=160)
    assert "next page" not in out


def test_ttl_explains_minus_one_and_minus_two() -> None:
    assert "no deadline" in text_of(render_reply([b"TTL", b"k"], -1))
    assert "no such key" in text_of(render_reply([b"PTTL", b"k"], -2))
    out = text_of(render_reply([b"TTL", b"k"], 59)).strip()
    assert out.startswith("(integer) 59") and "59 s left" in out
    assert "1.5 s left" in text_of(render_reply([b"PTTL", b"k"], 1500))
    assert "2m05s left" in text_of(render_reply([b"TTL", b"k"], 125))
    assert json_reply([b"TTL", b"k"], -2) == -2  # programs get Redis's integer
    assert raw_text(-1) == "-1"


def test_exec_renders_each_reply_under_its_command() -> None:
    queued = [(b"SET", b"a", b"1"), (b"INCR", b"a"), (b"GETV", b"a"), (b"INCR", b"s")]
    reply: list[Reply] = ["OK", 2, [b"2", 2, 41], RespError("ERR value is not an integer or out of range")]
    out = text_of(render_reply([b"EXEC"], reply, queued))
    lines = out.splitlines()
    assert lines[:4] == ["1) SET a 1", "   OK", "2) INCR a", "   (integer) 2"]
    assert "3) GETV a" in lines and any(line.split() == ["revision", "41"] for line in lines)
    assert lines[-2:] == ["4) INCR s", "   (error) ERR value is not an integer or out of range"]
    assert json_reply([b"EXEC"], reply, queued) == [
        "OK", 2, {"value": "2", "version": 2, "revision": 41}, {"error": "ERR value is not an integer or out of range"},
    ]
    # Without the commands (they were not seen) it is the generic list.
    assert text_of(render_exec(["OK", 1])).splitlines() == ["1) OK", "2) (integer) 1"]


def test_exec_nil_array_means_a_watched_key_changed() -> None:
    out = text_of(render_reply([b"EXEC"], None, [(b"SET", b"a", b"1")]))
    assert out.startswith("(nil)") and "WATCHed key changed" in out and "nothing was written" in out
    assert json_reply([b"EXEC"], None) is None
    assert "nothing was queued" in text_of(render_reply([b"EXEC"], []))


def test_replies_of_another_shape_fall_back_to_generic() -> None:
    for argv in ([b"SCAN", b"0"], [b"GETV", b"k"], [b"RANGE", b"-", b"+"], [b"TTL", b"k"], [b"EXEC"]):
        assert text_of(render_reply(argv, "QUEUED")).strip() == "QUEUED"  # inside MULTI
        assert text_of(render_reply(argv, RespError("ERR boom"))).strip() == "(error) ERR boom"
        assert json_reply(argv, "QUEUED") == "QUEUED"
    assert text_of(render_reply([b"RANGE", b"-", b"+"], [b"odd"])).strip() == '1) "odd"'
