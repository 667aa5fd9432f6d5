"""Unit tests for aegis.errors: the hierarchy and the RESP prefixes."""

from __future__ import annotations

import pytest

from aegis.errors import (
    AegisError,
    CodecError,
    CommandError,
    NoLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TryAgainError,
    UnknownOutcomeError,
)


@pytest.mark.parametrize(
    "cls, prefix, definite",
    [
        (AegisError, "ERR", True),
        (CommandError, "ERR", True),
        (ProtocolError, "ERR", True),
        (CodecError, "ERR", True),
        (UnknownOutcomeError, "TRYAGAIN", False),
        (NoLeaderError, "NOLEADER", False),
        (RequestTimeoutError, "TIMEOUT", False),
        (TryAgainError, "TRYAGAIN", False),
    ],
)
def test_prefixes_and_definiteness(cls: type[AegisError], prefix: str, definite: bool) -> None:
    assert cls.resp_prefix == prefix and cls.definite is definite
    assert issubclass(cls, AegisError)


def test_definite_and_unknown_outcomes_are_disjoint() -> None:
    assert issubclass(ProtocolError, CommandError) and issubclass(CodecError, ProtocolError)
    for cls in (NoLeaderError, RequestTimeoutError, TryAgainError):
        assert issubclass(cls, UnknownOutcomeError) and not issubclass(cls, CommandError)
    assert not issubclass(CommandError, UnknownOutcomeError)


def test_resp_error_lines() -> None:
    assert CommandError("wrong number of arguments for 'get'").resp_error() == (
        "ERR wrong number of arguments for 'get'"
    )
    assert RequestTimeoutError("not committed in 5s").resp_error() == "TIMEOUT not committed in 5s"
    assert TryAgainError().resp_error() == "TRYAGAIN TryAgainError"
    assert ProtocolError("bad\r\nline").resp_error() == "ERR bad line"  # no CRLF inside a RESP error


def test_no_leader_carries_a_hint() -> None:
    e = NoLeaderError(leader_hint="n2")
    assert e.leader_hint == "n2" and e.resp_error() == "NOLEADER no leader is known"
    assert NoLeaderError("election in progress").leader_hint is None
