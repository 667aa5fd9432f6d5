"""aegis.budget: a node-wide byte budget shared by connection accounts."""

from __future__ import annotations

import pytest

from aegis.budget import ByteBudget, format_bytes
from aegis.protocol import RespParser


def test_accounts_share_the_budget_and_a_refusal_records_nothing() -> None:
    b = ByteBudget(100, "unfinished requests")
    x, y = b.account(), b.account()
    assert x.hold(60) is None and y.hold(40) is None and b.held == 100
    why = y.hold(41)
    assert why == "the node's budget for unfinished requests (100 bytes) is used up; this connection would hold 41 bytes"
    assert (b.held, y.held, b.refused) == (100, 40, 1)
    assert x.hold(10) is None and y.hold(90) is None  # shrinking frees room for others
    x.close()
    x.close()  # idempotent
    assert b.held == 90


def test_a_connection_allowance_caps_one_connection_alone() -> None:
    b = ByteBudget(1 << 20, "unfinished requests")
    a = b.account()
    why = a.hold(70_000, 64 << 10, "a connection that has not authenticated")
    assert why == ("a connection that has not authenticated would hold 70000 bytes of unfinished requests; "
                   "its limit is 64 KiB")
    assert b.held == 0 and a.hold(64 << 10, 64 << 10) is None


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (100, 1024, 3 << 20, 256 << 20, 1 << 30, 1025)] == [
        "100 bytes", "1 KiB", "3 MiB", "256 MiB", "1 GiB", "1025 bytes"]
    with pytest.raises(ValueError):
        ByteBudget(0, "x")


def test_a_parser_account_follows_a_request_dripped_in() -> None:
    """What the server does after every read: charge the parser's holding."""
    b = ByteBudget(64, "unfinished requests")
    acct = b.account()
    p = RespParser()
    p.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$40\r\n" + b"v" * 20)
    assert p.next_command() is None and acct.hold(p.held) is None
    p.feed(b"v" * 20 + b"\r\n*1\r\n$4\r\nPI")
    assert p.next_command() == [b"SET", b"k", b"v" * 40]
    assert p.next_command() is None and acct.hold(p.held) is None and b.held == p.held < 16
    p.feed(b"NG\r\n")
    assert p.next_command() == [b"PING"] and p.next_command() is None
    assert acct.hold(p.held) is None and b.held == 0
