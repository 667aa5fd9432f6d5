"""aegis.metrics and aegis.logs: the pure parts (histograms, labels, health, HTTP, log lines)."""

from __future__ import annotations

import json
import logging

import pytest

from aegis import cli
from aegis.log import Membership
from aegis.logs import JsonFormatter, TextFormatter, event
from aegis.messages import AppendEntriesRequest, AppendEntriesResponse
from aegis.metrics import (
    ERROR_KINDS,
    Histogram,
    HttpError,
    HttpRequest,
    NodeMetrics,
    health_status,
    parse_request_head,
    route,
)


# ---------------------------------------------------------------------- Histogram
def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 2.0, 100.0):
        h.observe(v)
    assert h.buckets() == [("0.1", 2), ("1.0", 3), ("10.0", 4), ("+Inf", 5)]
    assert h.count == 5
    assert h.sum == pytest.approx(102.65)


def test_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))


# ---------------------------------------------------------------------- command labels
def test_command_labels_come_from_the_table_whatever_the_spelling() -> None:
    m = NodeMetrics("n1")
    assert m.command(b"SET") is m.command(b"set") is m.command(b"SeT")
    assert m.command(b"GET") is not m.command(b"SET")
    m.command(b"set").observe(0.001)
    m.command(b"nosuchcommand").observe(0.002)
    m.command(b"\xff\xfe").observe(0.003)
    seen = dict(m.command_histograms())
    assert set(seen) == {"set", "unknown"}
    assert seen["unknown"].count == 2


def test_command_label_cardinality_is_bounded() -> None:
    m = NodeMetrics("n1")
    for i in range(5000):
        m.command(f"junk{i}".encode()).observe(0.0)
    assert len(m._by_raw) <= 256
    assert [name for name, _ in m.command_histograms()] == ["unknown"]


def test_errors_are_counted_by_prefix_from_a_fixed_list() -> None:
    m = NodeMetrics("n1")
    for reply in (b"-ERR wrong\r\n", b"-TIMEOUT no answer\r\n", b"-NOLEADER\r\n", b"-ERR x\r\n",
                  b"-SOMETHINGNEW x\r\n", b"-" + b"A" * 100 + b"\r\n"):
        m.error(reply)
    assert m.errors == {"ERR": 2, "TIMEOUT": 1, "NOLEADER": 1, "other": 2}
    assert set(m.errors) <= ERROR_KINDS | {"other"}


# ---------------------------------------------------------------------- peer round trips
def _hb(to: str, ctx: int = 0) -> AppendEntriesRequest:
    return AppendEntriesRequest(term=1, leader_id="n1", prev_log_index=0, prev_log_term=0, receiver=to,
                                read_ctx=ctx, heartbeat=True)


def _ack(frm: str, ctx: int = 0) -> AppendEntriesResponse:
    return AppendEntriesResponse(term=1, success=True, follower_id=frm, receiver="n1", read_ctx=ctx,
                                 heartbeat=True)


def test_round_trip_is_timed_from_a_heartbeat_to_its_answer() -> None:
    now = [10.0]
    m = NodeMetrics("n1", clock=lambda: now[0])
    m.sent([_hb("n2", ctx=7), _hb("n3", ctx=7)])
    now[0] = 10.002
    m.sent([_hb("n2", ctx=8)])  # one probe per peer at a time: this one is not timed
    m.received("n2", _ack("n2", ctx=99))  # not the probe's answer
    assert "n2" not in m.peer_rtt
    m.received("n2", _ack("n2", ctx=7))
    assert m.peer_rtt["n2"].count == 1 and m.peer_rtt["n2"].sum == pytest.approx(0.002)
    m.peer_lost("n3")  # its heartbeat will never be answered
    now[0] = 50.0
    m.received("n3", _ack("n3", ctx=7))
    assert "n3" not in m.peer_rtt
    m.forget_peers(["n1"])
    assert m.peer_rtt == {}


# ---------------------------------------------------------------------- health
def test_health_needs_a_leader_and_a_small_apply_lag() -> None:
    ok, why = health_status(leader_id=None, commit_index=5, applied_index=5)
    assert not ok and "no leader" in why
    ok, why = health_status(leader_id="n2", commit_index=500, applied_index=100, max_lag=100)
    assert not ok and "400 entries behind" in why
    ok, why = health_status(leader_id="n2", commit_index=150, applied_index=100, max_lag=100)
    assert ok and why.startswith("ok")


# ---------------------------------------------------------------------- HTTP
def test_parse_request_head() -> None:
    assert parse_request_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n") is None  # incomplete
    assert parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n") == HttpRequest("GET", "/metrics")
    assert parse_request_head(b"HEAD /health HTTP/1.0\n\n") == HttpRequest("HEAD", "/health")
    bad = parse_request_head(b"hello\r\n\r\n")
    assert isinstance(bad, HttpError) and bad.status == 400
    big = parse_request_head(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000)
    assert isinstance(big, HttpError) and big.status == 431


def test_route() -> None:
    def metrics() -> bytes:
        return b"aegis_term 3.0\n"

    def down() -> tuple[bool, str]:
        return False, "no leader is known"

    def up() -> tuple[bool, str]:
        return True, "ok"

    r = route(HttpRequest("GET", "/metrics"), metrics, up)
    assert r.startswith(b"HTTP/1.1 200 OK\r\n") and b"version=0.0.4" in r and r.endswith(b"aegis_term 3.0\n")
    assert route(HttpRequest("GET", "/health"), metrics, up).startswith(b"HTTP/1.1 200 ")
    r = route(HttpRequest("GET", "/health"), metrics, down)
    assert r.startswith(b"HTTP/1.1 503 ") and r.endswith(b"no leader is known\n")
    head = route(HttpRequest("HEAD", "/metrics"), metrics, up)
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 15" in head
    assert route(HttpRequest("GET", "/"), metrics, up).startswith(b"HTTP/1.1 404 ")
    post = route(HttpRequest("POST", "/metrics"), metrics, up)
    assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post


# ---------------------------------------------------------------------- events and log lines
def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None)]


def test_leader_transitions_make_one_event_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m = NodeMetrics("n1")
    m.soft_state(1, "candidate", None)  # no leader before, none now: nothing
    m.soft_state(1, "leader", "n1")
    m.soft_state(2, "follower", "n2")
    m.soft_state(2, "follower", "n2")  # nothing changed
    m.soft_state(3, "candidate", None)
    m.soft_state(3, "follower", "n3")
    got = [(r.event, r.node, r.term, r.fields.get("leader")) for r in _records(caplog)]  # type: ignore[attr-defined]
    assert got == [("leader_elected", "n1", 1, "n1"), ("stepped_down", "n1", 2, "n2"),
                   ("leader_changed", "n1", 3, None), ("leader_changed", "n1", 3, "n3")]
    assert m.leader_changes == 3  # n1, n2, n3


def test_membership_changes_make_one_event_per_member(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m = NodeMetrics("n1")
    three = Membership.of(["n1", "n2", "n3"])
    m.membership(1, three)  # first seen: nothing to report
    m.membership(2, Membership.of(["n1", "n2", "n3"], ["n4"], addresses={"n4": "127.0.0.1:7004"}))
    m.membership(2, Membership.of(["n1", "n2", "n3", "n4"]))
    m.membership(3, Membership.of(["n1", "n2", "n4"]))
    got = [(r.event, r.fields) for r in _records(caplog)]  # type: ignore[attr-defined]
    assert got == [("member_added", {"member": "n4", "address": "127.0.0.1:7004", "voter": False}),
                   ("member_promoted", {"member": "n4"}),
                   ("member_removed", {"member": "n3"})]


def test_json_and_text_lines() -> None:
    logger = logging.getLogger("aegis.test.lines")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    logger.addHandler(Keep())
    event(logger, "peer_down", "peer n2 is down", node="n1", term=4, level=logging.WARNING, peer="n2",
          error="connection refused")
    logger.info("a plain line")
    doc = json.loads(JsonFormatter().format(lines[0]))
    assert {k: doc[k] for k in ("level", "node", "term", "event", "msg", "fields")} == {
        "level": "warning", "node": "n1", "term": 4, "event": "peer_down", "msg": "peer n2 is down",
        "fields": {"peer": "n2", "error": "connection refused"}}
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]
    plain = json.loads(JsonFormatter().format(lines[1]))
    assert plain["event"] is None and plain["msg"] == "a plain line" and plain["fields"] == {}
    text = TextFormatter().format(lines[0])
    assert text.endswith('peer n2 is down [peer_down node=n1 term=4 peer=n2 error="connection refused"]')
    with pytest.raises(ValueError):
        event(logger, "no_such_event", "x", node="n1", term=1)


# ---------------------------------------------------------------------- the command line
def test_bad_metrics_address_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("nope", "127.0.0.1:", ":9100", "127.0.0.1:70000", "127.0.0.1:x"):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(["serve", "--id", "n1", "--listen", "127.0.0.1:7001", "--data", "d",
                                           "--metrics", bad])
        assert exc.value.code == 2
        assert "--metrics" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["--log-format", "json", "serve", "--id", "n1", "--listen",
                                          "127.0.0.1:7001", "--data", "d", "--metrics", "127.0.0.1:9101"])
    assert args.metrics == ("127.0.0.1", 9101) and args.log_format == "json"


def test_metrics_on_the_listen_address_is_refused(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["serve", "--id", "n1", "--listen", "127.0.0.1:7001", "--data",
                                          str(tmp_path), "--metrics", "127.0.0.1:7001"])
    rc = cli.cmd_serve(args)
    assert rc == cli.EXIT_USAGE and "port of its own" in capsys.readouterr().err


def test_log_format_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AEGIS_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exc:
        cli.main(["status"])
    assert exc.value.code == 2 and "AEGIS_LOG_FORMAT" in capsys.readouterr().err
