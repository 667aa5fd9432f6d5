"""The pure parts of `aegis.ops`: parsing, health classification, table formatting."""

from __future__ import annotations

import io
import json

import pytest

from aegis.cli import build_parser
from aegis.ops import (
    EXIT_DEGRADED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    STATUS_HEADERS,
    Member,
    Probe,
    classify,
    format_table,
    health_lines,
    parse_addrs,
    parse_member_list,
    pick_leader,
    pick_view,
    print_table,
    status_rows,
)

MEMBERS = [Member("n1", "127.0.0.1:7001", "voter", True), Member("n2", "127.0.0.1:7002", "voter"),
           Member("n3", "127.0.0.1:7003", "voter")]


def probe(nid: str, role: str = "follower", *, leader: str | None = "n1", term: int = 3, commit: int = 100,
          applied: int | None = None, nodes: tuple[dict[str, str], ...] = (),
          members: tuple[Member, ...] = ()) -> Probe:
    info = {"node_id": nid, "role": role, "leader_id": leader or "", "term": str(term),
            "commit_index": str(commit), "applied_index": str(commit if applied is None else applied),
            "last_log_index": str(commit), "aegis_version": "0.1.0"}
    return Probe(f"127.0.0.1:700{nid[1:]}", info, nodes, members, None, 1.5)


def healthy_cluster() -> dict[str, Probe]:
    seen = tuple({"id": n, "health": "Healthy", "last_heard_ms": "12"} for n in ("n1", "n2", "n3"))
    return {"n1": probe("n1", "leader", nodes=seen), "n2": probe("n2"), "n3": probe("n3")}


# ------------------------------------------------------------------ parsing

def test_parse_addrs_normalises_dedupes_and_refuses_bad_input() -> None:
    assert parse_addrs("127.0.0.1:7001, 7002,127.0.0.1:7001") == ["127.0.0.1:7001", "127.0.0.1:7002"]
    with pytest.raises(ValueError, match="bad address"):
        parse_addrs("127.0.0.1:notaport")
    with pytest.raises(ValueError, match="at least one"):
        parse_addrs(" , ")


def test_parse_member_list_reads_role_and_leader_flag() -> None:
    reply = [b"n1 127.0.0.1:7001 voter leader", b"n2 127.0.0.1:7002 voter", b"n4 127.0.0.1:7004 learner"]
    assert parse_member_list(reply) == [
        Member("n1", "127.0.0.1:7001", "voter", True), Member("n2", "127.0.0.1:7002", "voter", False),
        Member("n4", "127.0.0.1:7004", "learner", False)]
    with pytest.raises(ValueError, match="unexpected"):
        parse_member_list([b"n1 127.0.0.1:7001 boss"])
    with pytest.raises(ValueError, match="not an array"):
        parse_member_list(b"OK")


def test_cli_parses_the_member_commands() -> None:
    p = build_parser()
    a = p.parse_args(["member", "add", "n4", "127.0.0.1:7004", "--learner", "--addr", "7001,7002", "--json"])
    assert (a.cmd, a.member_cmd, a.node_id, a.address, a.learner, a.json) == (
        "member", "add", "n4", "127.0.0.1:7004", True, True)
    assert a.addr == ["127.0.0.1:7001", "127.0.0.1:7002"]
    a = p.parse_args(["member", "remove", "n3", "--yes"])
    assert a.yes and a.addr == ["127.0.0.1:7001"]
    a = p.parse_args(["leader", "transfer", "n2"])
    assert (a.cmd, a.leader_cmd, a.node_id) == ("leader", "transfer", "n2")
    a = p.parse_args(["status", "--cluster", "--json"])
    assert a.cluster and a.json
    with pytest.raises(SystemExit):
        p.parse_args(["health", "--addr", "nohost:"])


# ------------------------------------------------------------------ leader and view

def test_pick_leader_prefers_the_highest_term() -> None:
    stale = probe("n1", "leader", term=3)
    new = probe("n2", "leader", leader="n2", term=4)
    assert pick_leader([stale, new, probe("n3", leader="n2", term=4)]) is new
    assert pick_leader([probe("n3")]) is None
    unreachable = Probe("127.0.0.1:7009", error="connection refused")
    assert pick_leader([unreachable]) is None


def test_pick_view_takes_the_leaders_member_list() -> None:
    old = (Member("n1", "a:1", "voter"),)
    new = (Member("n1", "a:1", "voter"), Member("n4", "a:4", "learner"))
    follower = probe("n2", term=9, commit=999, members=old)  # higher term, but not the leader
    leader = probe("n1", "leader", term=3, members=new)
    assert pick_view([follower, leader]) is leader
    assert pick_view([follower]) is follower


# ------------------------------------------------------------------ classification

def test_every_member_up_and_caught_up_is_healthy() -> None:
    r = classify(MEMBERS, healthy_cluster())
    assert (r.health, r.exit_code, r.leader_id, r.term) == ("healthy", EXIT_OK, "n1", 3)
    assert (r.voters, r.quorum, r.healthy_voters) == (3, 2, 3)
    assert all(m.healthy and m.reason is None for m in r.members)
    assert [m.last_heard_ms for m in r.members] == [0, 12, 12]


def test_one_of_three_down_is_degraded_two_down_is_unavailable() -> None:
    probes = healthy_cluster()
    del probes["n3"]
    r = classify(MEMBERS, probes, unreached={"n3": "unreachable: connection refused"})
    assert (r.health, r.exit_code, r.healthy_voters) == ("degraded", EXIT_DEGRADED, 2)
    bad = r.members[2]
    assert not bad.reachable and bad.reason == "unreachable: connection refused"
    del probes["n2"]
    r = classify(MEMBERS, probes)
    assert (r.health, r.exit_code, r.healthy_voters) == ("unavailable", EXIT_UNAVAILABLE, 1)
    assert "quorum is 2" in r.summary


def test_no_leader_or_no_answer_is_unavailable() -> None:
    r = classify(MEMBERS, {"n1": probe("n1", "candidate", leader=None)})
    assert (r.health, r.exit_code) == ("unavailable", EXIT_UNAVAILABLE)
    assert r.members[0].reason == "no leader" and "1 of 3 voters answer" in r.summary
    r = classify([], {})
    assert r.exit_code == EXIT_UNAVAILABLE and r.members == ()


@pytest.mark.parametrize("follower, reason", [
    (probe("n3", leader=None), "sees no leader"),
    (probe("n3", leader="n2"), "sees leader n2, not n1"),
    (probe("n3", term=2), "in term 2, the leader in 3"),
    (probe("n3", commit=100, applied=50), "50 entries behind (more than 10)"),
])
def test_a_member_that_disagrees_or_lags_is_unhealthy(follower: Probe, reason: str) -> None:
    probes = healthy_cluster()
    probes["n3"] = follower
    r = classify(MEMBERS, probes, max_lag=10)
    assert r.members[2].reason == reason and not r.members[2].healthy
    assert r.exit_code == EXIT_DEGRADED


def test_lag_within_the_limit_is_healthy() -> None:
    probes = healthy_cluster()
    probes["n3"] = probe("n3", applied=95)
    r = classify(MEMBERS, probes, max_lag=10)
    assert r.members[2].healthy and r.members[2].lag == 5 and r.exit_code == EXIT_OK


def test_a_member_the_leader_marks_down_is_unhealthy() -> None:
    probes = healthy_cluster()
    seen = ({"id": "n1", "health": "Healthy", "last_heard_ms": "0"},
            {"id": "n2", "health": "Healthy", "last_heard_ms": "10"},
            {"id": "n3", "health": "Down", "last_heard_ms": "4000"})
    probes["n1"] = probe("n1", "leader", nodes=seen)
    r = classify(MEMBERS, probes)
    assert r.members[2].reason == "the leader has not heard from it for 4000 ms"
    assert r.exit_code == EXIT_DEGRADED


def test_learners_count_for_health_but_not_for_quorum() -> None:
    members = [*MEMBERS, Member("n4", "127.0.0.1:7004", "learner")]
    probes = healthy_cluster()
    r = classify(members, probes)  # n4 does not answer
    assert (r.voters, r.quorum, r.healthy_voters, r.exit_code) == (3, 2, 3, EXIT_DEGRADED)
    probes["n4"] = probe("n4", "learner")
    assert classify(members, probes).exit_code == EXIT_OK


def test_report_json_has_stable_snake_case_fields() -> None:
    doc = classify(MEMBERS, healthy_cluster()).to_json()
    json.dumps(doc)
    assert set(doc) == {"health", "exit_code", "summary", "leader_id", "term", "voters", "quorum",
                        "healthy_voters", "members"}
    assert set(doc["members"][0]) == {
        "id", "addr", "membership", "role", "reachable", "healthy", "reason", "leader_id", "term",
        "commit_index", "applied_index", "last_log_index", "lag", "last_heard_ms", "leader_view",
        "version", "took_ms"}
    assert all(k == k.lower() and " " not in k for k in doc["members"][0])


# ------------------------------------------------------------------ formatting

def test_format_table_aligns_columns_and_shows_missing_values_as_dashes() -> None:
    text = format_table(("ID", "ADDRESS", "LAG"), [["n1", "127.0.0.1:7001", 0], ["n10", "h:1", None]])
    assert text == ("ID   ADDRESS         LAG\n"
                    "n1   127.0.0.1:7001  0\n"
                    "n10  h:1             -\n")


def test_status_rows_say_why_a_member_is_not_healthy() -> None:
    probes = healthy_cluster()
    del probes["n2"]
    r = classify(MEMBERS, probes, unreached={"n2": "unreachable: connection refused"})
    rows = status_rows(r)
    assert len(rows[0]) == len(STATUS_HEADERS)
    assert rows[0] == ["n1", "127.0.0.1:7001", "leader", 3, 100, 100, 0, "healthy", "0 ms", "0.1.0"]
    assert rows[1][:3] == ["n2", "127.0.0.1:7002", "voter"]
    assert rows[1][7] == "unreachable: connection refused" and rows[1][3] is None


def test_health_lines_one_per_member_then_the_verdict() -> None:
    probes = healthy_cluster()
    del probes["n3"]
    lines = health_lines(classify(MEMBERS, probes, unreached={"n3": "unreachable: timed out"})).splitlines()
    assert len(lines) == 5  # header, three members, verdict
    assert lines[1].split()[:4] == ["n1", "127.0.0.1:7001", "leader", "healthy"]
    assert "unhealthy: unreachable: timed out" in lines[3]
    assert lines[4].startswith("cluster is degraded")


def test_print_table_is_plain_text_when_not_a_terminal() -> None:
    out = io.StringIO()
    print_table(("A", "B"), [[1, 2]], out, title="t")
    assert out.getvalue() == "t\nA  B\n1  2\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_print_table_uses_rich_on_a_terminal_only_when_every_column_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [["n1", "127.0.0.1:7001", "unreachable: connection refused"]]
    monkeypatch.setenv("COLUMNS", "120")
    wide = _Tty()
    print_table(("ID", "ADDRESS", "HEALTH"), rows, wide)
    assert "─" in wide.getvalue() and "unreachable: connection refused" in wide.getvalue()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = _Tty()
    print_table(("ID", "ADDRESS", "HEALTH"), rows, narrow)
    assert narrow.getvalue() == format_table(("ID", "ADDRESS", "HEALTH"), rows)  # nothing cut
