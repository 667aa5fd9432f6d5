"""aegis.protocol: the RESP2 request parser, the encoders and the reply parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis.protocol import (
    NEED_DATA,
    NIL,
    OK,
    ProtocolViolation,
    Reply,
    RespError,
    RespParser,
    RespProtocolError,
    RespReplyParser,
    encode,
    encode_array,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
    encode_simple,
    split_inline,
)

# --------------------------------------------------------------------------- helpers


def parse_all(data: bytes, **limits: int) -> list[list[bytes] | ProtocolViolation]:
    parser = RespParser(**limits)
    parser.feed(data)
    return list(parser)


def parse_chunks(chunks: list[bytes], **limits: int) -> list[list[bytes] | ProtocolViolation]:
    parser = RespParser(**limits)
    out: list[list[bytes] | ProtocolViolation] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser)
        if parser.error is not None:
            break
    return out


def replies_of(chunks: list[bytes]) -> list[Reply]:
    parser = RespReplyParser()
    out: list[Reply] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser)
    assert not parser.in_reply
    return out


def violation(data: bytes, **limits: int) -> str:
    out = parse_all(data, **limits)
    assert out and isinstance(out[-1], ProtocolViolation), out
    return out[-1].message


# A pipelined stream mixing every framing feature the parser has.
PIPELINE = (
    b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n"  # CRLF inside a bulk payload
    b"PING\r\n"
    b"\r\n"  # empty inline line: skipped
    b"*0\r\n"  # empty multibulk: skipped
    b'set "a\\x41\\n" \'it\\\'s\'  plain\n'  # inline, LF only, both quote styles
    b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"  # empty bulk
    b"*-1\r\n"
    b"*1\r\n$4\r\n\x00\xff\r\n\r\n"  # binary
    b"  DEL   a b  \r\n"
)
PIPELINE_COMMANDS = [
    [b"SET", b"key", b"va\r\nl"],
    [b"PING"],
    [b"set", b"aA\n", b"it's", b"plain"],
    [b"GET", b""],
    [b"\x00\xff\r\n"],
    [b"DEL", b"a", b"b"],
]


# --------------------------------------------------------------------------- requests


def test_pipelined_stream_whole() -> None:
    assert parse_all(PIPELINE) == PIPELINE_COMMANDS


def test_pipelined_stream_split_at_every_byte_boundary() -> None:
    for cut in range(len(PIPELINE) + 1):
        assert parse_chunks([PIPELINE[:cut], PIPELINE[cut:]]) == PIPELINE_COMMANDS, cut


def test_pipelined_stream_split_at_every_pair_of_boundaries() -> None:
    n = len(PIPELINE)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 2):
            chunks = [PIPELINE[:a], PIPELINE[a:b], PIPELINE[b:]]
            assert parse_chunks(chunks) == PIPELINE_COMMANDS, (a, b)


def test_pipelined_stream_one_byte_at_a_time() -> None:
    chunks = [PIPELINE[i : i + 1] for i in range(len(PIPELINE))]
    assert parse_chunks(chunks) == PIPELINE_COMMANDS


def test_every_prefix_is_a_prefix_of_the_commands_and_never_an_error() -> None:
    for cut in range(len(PIPELINE) + 1):
        parser = RespParser()
        parser.feed(PIPELINE[:cut])
        got = list(parser)
        assert parser.error is None
        assert got == PIPELINE_COMMANDS[: len(got)]


def test_next_command_returns_none_until_complete() -> None:
    parser = RespParser()
    assert parser.next_command() is None
    parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r")
    assert parser.next_command() is None
    assert parser.in_request
    parser.feed(b"\nk")
    assert parser.next_command() is None
    parser.feed(b"\r\n")
    assert parser.next_command() == [b"GET", b"k"]
    assert parser.next_command() is None
    assert not parser.in_request
    assert parser.buffered == 0


def test_many_pipelined_commands_in_one_feed() -> None:
    stream = b"".join(encode_command([b"SET", b"key:%06d" % i, b"x" * 3]) for i in range(5000))
    cmds = parse_all(stream)
    assert len(cmds) == 5000
    assert cmds[4999] == [b"SET", b"key:004999", b"xxx"]


def test_inline_crlf_and_lf_both_end_a_line() -> None:
    assert parse_all(b"GET a\r\nGET b\nGET c\r\n") == [[b"GET", b"a"], [b"GET", b"b"], [b"GET", b"c"]]


def test_inline_line_of_blanks_is_skipped() -> None:
    assert parse_all(b"   \t \r\n\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"SET k v", [b"SET", b"k", b"v"]),
        (b'SET k "hello world"', [b"SET", b"k", b"hello world"]),
        (b'"\\x41\\x4a\\x4G"', [b"AJ" + b"x4G"]),
        (b'"a\\nb\\r\\t\\b\\a\\"\\\\z"', [b"a\nb\r\t\b\x07\"\\z"]),
        (b"'single \\' quote' 'no \\n escape'", [b"single ' quote", b"no \\n escape"]),
        (b'a"b c"', [b"ab c"]),
        (b'""', [b""]),
        (b"''", [b""]),
        (b"\x0bPING\x0c", [b"PING\x0c"]),
        (b"a\x00b", [b"a", b"b"]),
        (b"", []),
        (b'"unterminated', None),
        (b"'unterminated", None),
        (b'"closed"but', None),
        (b"'closed'but", None),
        (b'"trailing backslash\\', None),
    ],
)
def test_split_inline_follows_redis_quoting(line: bytes, expected: list[bytes] | None) -> None:
    assert split_inline(line) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*abc\r\n", "Protocol error: invalid multibulk length"),
        (b"*+1\r\n", "Protocol error: invalid multibulk length"),
        (b"* 1\r\n", "Protocol error: invalid multibulk length"),
        (b"*01\r\n", "Protocol error: invalid multibulk length"),
        (b"*-0\r\n", "Protocol error: invalid multibulk length"),
        (b"*1_0\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\rX", "Protocol error: invalid multibulk length"),
        (b"*2000000\r\n", "Protocol error: invalid multibulk length"),
        (b"*99999999999999999999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$99999999999\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\nx", "Protocol error: expected '$', got 'x'"),
        (b"*1\r\n\x01", "Protocol error: expected '$', got '\\x01'"),
        (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
        (b"*1\r\n$3\r\nabcXY", "Protocol error: expected '\\r\\n' after bulk data"),
        (b'SET k "abc\r\n', "Protocol error: unbalanced quotes in request"),
        (b'"foo"bar\n', "Protocol error: unbalanced quotes in request"),
        (b"A" * (64 * 1024 + 2), "Protocol error: too big inline request"),
        (b"A" * (64 * 1024 + 1) + b"\n", "Protocol error: too big inline request"),
        (b"*" + b"1" * (64 * 1024 + 2), "Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b"1" * (64 * 1024 + 2), "Protocol error: too big bulk count string"),
    ],
)
def test_protocol_errors_use_redis_wording(data: bytes, message: str) -> None:
    assert violation(data) == message


def test_limits_are_settings() -> None:
    assert violation(b"*3\r\n", max_args=2) == "Protocol error: invalid multibulk length"
    assert violation(b"*1\r\n$11\r\n", max_bulk_len=10) == "Protocol error: invalid bulk length"
    assert parse_all(b"*1\r\n$10\r\n0123456789\r\n", max_bulk_len=10) == [[b"0123456789"]]
    assert violation(b"PING PING\r\n", max_inline_len=8) == "Protocol error: too big inline request"
    assert parse_all(b"PING PIN\r\n", max_inline_len=8) == [[b"PING", b"PIN"]]
    big = encode_command([b"SET", b"k", b"v" * 100])
    assert violation(big, max_request_len=100) == "Protocol error: request too large"
    assert parse_all(big, max_request_len=200) == [[b"SET", b"k", b"v" * 100]]
    with pytest.raises(ValueError):
        RespParser(max_args=0)


def test_inline_line_exactly_at_the_limit_with_crlf_is_accepted() -> None:
    line = b"A" * 16
    parser = RespParser(max_inline_len=16)
    parser.feed(line + b"\r")
    assert parser.next_command() is None
    parser.feed(b"\n")
    assert parser.next_command() == [line]


def test_error_is_final_and_commands_before_it_are_delivered() -> None:
    parser = RespParser()
    parser.feed(b"PING\r\n*1\r\nx\r\nPING\r\n")
    assert parser.next_command() == [b"PING"]
    err = parser.next_command()
    assert isinstance(err, ProtocolViolation)
    assert err.reply == b"-ERR Protocol error: expected '$', got 'x'\r\n"
    parser.feed(b"PING\r\n")
    assert parser.next_command() is err
    assert parser.error is err
    assert parser.buffered == 0


def test_iteration_stops_at_a_violation() -> None:
    parser = RespParser()
    parser.feed(b"PING\r\n*x\r\n")
    out = list(parser)
    assert out[0] == [b"PING"]
    assert isinstance(out[1], ProtocolViolation)
    assert len(out) == 2


def test_huge_declared_lengths_do_not_preallocate() -> None:
    parser = RespParser()
    parser.feed(b"*1048576\r\n")
    assert parser.next_command() is None
    parser.feed(b"$16777216\r\nabc")
    assert parser.next_command() is None
    assert parser.buffered == 3


def test_a_slow_drip_header_is_not_rescanned_quadratically() -> None:
    # Functional check of the resumable line scan: a long header dripped byte by byte.
    parser = RespParser()
    for byte in b"*1\r\n$10\r\n0123456789\r\n":
        parser.feed(bytes([byte]))
        got = parser.next_command()
    assert got == [b"0123456789"]


# --------------------------------------------------------------------------- fuzzing

ARGV = st.lists(st.binary(max_size=40), min_size=1, max_size=6)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=200, deadline=None)
@given(st.lists(ARGV, max_size=8), st.lists(st.integers(min_value=0), max_size=8))
def test_fuzz_encoded_commands_round_trip_under_any_chunking(
    commands: list[list[bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_command(argv) for argv in commands)
    assert parse_chunks(_chunked(stream, cuts)) == commands


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=5))
def test_fuzz_random_bytes_give_commands_or_a_violation_never_a_crash(
    data: bytes, cuts: list[int]
) -> None:
    limits = {"max_inline_len": 64, "max_bulk_len": 64, "max_args": 16, "max_request_len": 256}
    parser = RespParser(**limits)
    for chunk in _chunked(data, cuts):
        parser.feed(chunk)
        for cmd in parser:
            if isinstance(cmd, ProtocolViolation):
                assert cmd.message.startswith("Protocol error: ")
            else:
                assert cmd and all(isinstance(a, bytes) for a in cmd)
                assert len(cmd) <= max(16, 64)
        # Bounded memory: never more than one request's worth plus a header line buffered.
        assert parser.buffered <= 256 + 64 + 2 + len(chunk)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"*", b"*1\r\n$"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=20),
)
def test_fuzz_any_declared_length_is_a_request_a_wait_or_a_clear_error(
    prefix: bytes, length: int, tail: bytes
) -> None:
    parser = RespParser(max_bulk_len=1024, max_args=1024)
    parser.feed(prefix + str(length).encode() + b"\r\n" + tail)
    for cmd in parser:
        if isinstance(cmd, ProtocolViolation):
            assert cmd.message.startswith("Protocol error: ")
    assert parser.buffered <= len(tail) + 40


@settings(max_examples=200, deadline=None)
@given(st.lists(ARGV, min_size=1, max_size=5), st.data())
def test_fuzz_truncated_streams_never_error(commands: list[list[bytes]], data: st.DataObject) -> None:
    stream = b"".join(encode_command(argv) for argv in commands)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    parser = RespParser()
    parser.feed(stream[:cut])
    got = list(parser)
    assert parser.error is None
    assert got == commands[: len(got)]


class _CarefulOnly(RespParser):
    """The parser without its whole-command fast path: the reference it must agree with."""

    __slots__ = ()

    def _whole(self) -> None:
        return None


def _near_resp(data: st.DataObject) -> bytes:
    """Valid commands with a few bytes changed, cut or inserted: the headers, lengths and
    line ends the fast path checks are where the mutations land."""
    stream = bytearray(b"".join(encode_command(argv) for argv in data.draw(st.lists(ARGV, max_size=6))))
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(stream)))
        junk = data.draw(st.sampled_from([b"*", b"$", b"\r", b"\n", b"-", b"0", b"9", b"+", b" ", b"x", b""]))
        how = data.draw(st.sampled_from(["put", "insert", "cut"]))
        if how == "put" and at < len(stream) and junk:
            stream[at : at + 1] = junk
        elif how == "insert":
            stream[at:at] = junk
        else:
            del stream[at : at + data.draw(st.integers(min_value=0, max_value=3))]
    return bytes(stream)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_the_whole_command_fast_path_agrees_with_the_careful_path(data: st.DataObject) -> None:
    stream = _near_resp(data)
    cuts = data.draw(st.lists(st.integers(min_value=0), max_size=6))
    limits = data.draw(st.fixed_dictionaries({
        "max_inline_len": st.integers(min_value=8, max_value=128),
        "max_bulk_len": st.integers(min_value=1, max_value=64),
        "max_args": st.integers(min_value=1, max_value=8),
        "max_request_len": st.integers(min_value=16, max_value=300),
    }))
    fast, careful = RespParser(**limits), _CarefulOnly(**limits)
    for chunk in _chunked(stream, cuts):
        fast.feed(chunk)
        careful.feed(chunk)
        got = [c.message if isinstance(c, ProtocolViolation) else c for c in fast]
        want = [c.message if isinstance(c, ProtocolViolation) else c for c in careful]
        assert got == want
        assert (fast.buffered, fast.held, fast.in_request) == (careful.buffered, careful.held, careful.in_request)


def test_the_fast_path_takes_whole_commands_and_leaves_the_rest_to_the_careful_path() -> None:
    parser = RespParser(max_bulk_len=8)
    parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$2\r\nk")
    assert parser._whole() == [b"GET", b"k"]
    assert parser._whole() is None  # the second is not all here: nothing consumed
    assert parser.buffered == len(b"*2\r\n$3\r\nGET\r\n$2\r\nk")
    parser.feed(b"2\r\n*1\r\n$9\r\n123456789\r\n")
    assert parser.next_command() == [b"GET", b"k2"]
    assert parser._whole() is None  # a bulk past max_bulk_len: the careful path says why
    got = parser.next_command()
    assert isinstance(got, ProtocolViolation) and got.message == "Protocol error: invalid bulk length"


# --------------------------------------------------------------------------- encoders


def test_encoders() -> None:
    assert encode_simple("OK") == OK
    assert encode_error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert encode_integer(-42) == b":-42\r\n"
    assert encode_bulk(b"hi") == b"$2\r\nhi\r\n"
    assert encode_bulk(bytearray(b"hi")) == b"$2\r\nhi\r\n"
    assert encode_bulk(memoryview(b"hi")) == b"$2\r\nhi\r\n"
    assert encode_bulk(None) == NIL
    assert encode_array([b"a", 1, ["x", None]]) == (
        b"*3\r\n$1\r\na\r\n:1\r\n*2\r\n+x\r\n$-1\r\n"
    )
    assert encode_array([]) == b"*0\r\n"
    assert encode_array(None) == b"*-1\r\n"
    assert encode(True) == b":1\r\n"
    assert encode(RespError("NOLEADER no leader")) == b"-NOLEADER no leader\r\n"
    with pytest.raises(ValueError):
        encode_simple("two\nlines")
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


def test_resp3_spelling_of_nil_and_maps() -> None:
    assert encode(None, resp3=True) == b"_\r\n"
    assert encode_bulk(None, resp3=True) == b"_\r\n"
    assert encode_array(None, resp3=True) == b"_\r\n"
    assert encode({b"a": 1}, resp3=True) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert encode({b"a": 1}) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode([None, {b"k": [None]}], resp3=True) == b"*2\r\n_\r\n%1\r\n$1\r\nk\r\n*1\r\n_\r\n"
    # Everything else is spelled the same in both.
    same: list[Reply] = ["OK", 7, b"bulk", [b"x", 1], RespError("ERR no")]
    for value in same:
        assert encode(value, resp3=True) == encode(value)


def test_reply_parser_reads_resp3_null_boolean_and_maps() -> None:
    stream = encode({b"a": [1, None], b"b": {}}, resp3=True) + b"#t\r\n#f\r\n_\r\n%0\r\n"
    assert replies_of([stream]) == [{b"a": [1, None], b"b": {}}, True, False, None, {}]
    for bad in (b"#x\r\n", b"_x\r\n", b"%-1\r\n", b"%1\r\n*1\r\n:1\r\n:2\r\n"):
        parser = RespReplyParser()
        parser.feed(bad)
        with pytest.raises(RespProtocolError):
            parser.next_reply()


def test_encode_command() -> None:
    assert encode_command(["SET", b"k", 12, 1.5]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )
    assert encode_command(["caf\u00e9"]) == b"*1\r\n$5\r\ncaf\xc3\xa9\r\n"
    with pytest.raises(ValueError):
        encode_command([])
    with pytest.raises(TypeError):
        encode_command([True])


def test_resp_error_parts() -> None:
    err = RespError("NOLEADER no leader is known")
    assert err.kind == "NOLEADER"
    assert err.message == "no leader is known"
    assert str(err) == "NOLEADER no leader is known"
    assert RespError("ERR").message == ""
    with pytest.raises(ValueError):
        RespError("a\nb")


# --------------------------------------------------------------------------- replies

REPLIES: list[Reply] = [
    "OK",
    RespError("ERR unknown command 'FOO', with args beginning with: "),
    0,
    -(2**63),
    b"",
    b"bulk\r\nwith crlf",
    None,
    [],
    [b"a", ["nested", [1, None, []]], RespError("TRYAGAIN later")],
]


def test_reply_round_trip_split_at_every_byte_boundary() -> None:
    stream = b"".join(encode(r) for r in REPLIES) + b"*-1\r\n"
    expected = [*REPLIES, None]
    for cut in range(len(stream) + 1):
        assert replies_of([stream[:cut], stream[cut:]]) == expected, cut


def test_reply_parser_needs_data() -> None:
    parser = RespReplyParser()
    assert parser.next_reply() is NEED_DATA
    parser.feed(b"*2\r\n:1\r\n")
    assert parser.next_reply() is NEED_DATA
    assert parser.in_reply
    parser.feed(b"$-1\r\n")
    assert parser.next_reply() == [1, None]
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize(
    "data",
    [b"?what\r\n", b":12x\r\n", b"$-2\r\n", b"$3\r\nabcde", b"*-5\r\n", b"+OK\rX", b"+" + b"x" * 70000],
)
def test_reply_parser_rejects_malformed_replies_for_good(data: bytes) -> None:
    parser = RespReplyParser()
    parser.feed(data)
    with pytest.raises(RespProtocolError):
        parser.next_reply()
    parser.feed(b"+OK\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_reply()


def test_reply_parser_bounds_nesting_and_lengths() -> None:
    parser = RespReplyParser(max_depth=3)
    parser.feed(b"*1\r\n" * 4 + b":1\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_reply()
    parser = RespReplyParser(max_depth=3)
    parser.feed(b"*1\r\n" * 3 + b":1\r\n")
    assert parser.next_reply() == [[[1]]]
    parser = RespReplyParser(max_bulk_len=4)
    parser.feed(b"$5\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_reply()
    parser = RespReplyParser()
    parser.feed(b"$536870912\r\nab")
    assert parser.next_reply() is NEED_DATA
    assert parser.buffered == 2


REPLY_VALUES: st.SearchStrategy[Reply] = st.recursive(
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=20)
    | st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10)
    | st.builds(
        RespError,
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10),
    ),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.binary(max_size=5) | st.integers(-(2**63), 2**63 - 1), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(REPLY_VALUES, max_size=5), st.lists(st.integers(min_value=0), max_size=6))
def test_fuzz_reply_round_trip(values: list[Reply], cuts: list[int]) -> None:
    stream = b"".join(encode(v, resp3=True) for v in values)
    assert replies_of(_chunked(stream, cuts)) == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_reply_parser_random_bytes_never_crash(data: bytes) -> None:
    parser = RespReplyParser(max_bulk_len=64, max_array_len=16, max_line_len=64)
    parser.feed(data)
    try:
        list(parser)
    except RespProtocolError:
        pass
    assert parser.buffered <= len(data)


def test_held_counts_what_an_unfinished_request_keeps() -> None:
    """`held` is what a node's input budget charges: buffered bytes plus the arguments
    parsed so far; never the declared size of a bulk not yet received."""
    p = RespParser()
    assert p.held == 0
    head = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n"
    p.feed(head + b"$1000000\r\n")
    assert p.next_command() is None
    assert len(head) <= p.held <= len(head) + 12  # the 1 MB declared is not counted
    p.feed(b"x" * 5000)
    assert p.next_command() is None
    assert len(head) + 5000 <= p.held <= len(head) + 5012
    p.feed(b"x" * 995_000 + b"\r\n")
    assert p.next_command() == [b"SET", b"key", b"x" * 1_000_000]
    assert p.next_command() is None and p.held == 0
    p.feed(b"PING")  # inline, no line end yet
    assert p.next_command() is None and p.held == 4
