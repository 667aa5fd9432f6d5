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
    json_value,
    print_paged,
    raw_text,
    render_error,
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
    assert "WATCH" in text_of(help_command(META_COMMANDS["WATCH"]))


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
