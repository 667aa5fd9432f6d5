"""RESP2 for clients: a sans-IO request parser, a reply encoder and a reply parser.

Theory of operation
-------------------
This module is h11-shaped: bytes in, events out, bytes back. It never touches a socket, a
clock or trio; the server and the client own the I/O and call in here.

`RespParser` (server side) turns the byte stream a client sends into commands, each an
argv (``list[bytes]``). It accepts both framings Redis accepts:

* multibulk: ``*<n>\\r\\n`` followed by n bulk strings ``$<len>\\r\\n<len bytes>\\r\\n``
  (what redis-cli, redis-py and redis-benchmark send), and
* inline: one line of space-separated words, ``SET k v\\r\\n`` typed into ``nc``, split
  with Redis's quoting rules (``"a\\nb"`` with ``\\n``, ``\\x41`` escapes; ``'single'``).

The choice is made per command by its first byte (``*`` means multibulk), as Redis does.
Empty inline lines and ``*0``/``*-1`` headers are skipped.

Invariants:

* Bytes live in one ``bytearray`` with a read offset; a command is parsed in place and the
  consumed prefix is dropped only when the parser runs out of data, so a feed holding many
  pipelined commands costs one buffer append and one compaction.
* Nothing is preallocated from a length the peer declared: a bulk of declared length *n* is
  sliced out only when all *n* bytes have arrived, and argv grows one argument at a time.
  Every length is checked against a limit before any byte is buffered for it, and the
  buffered bytes of one command never exceed ``max_request_len``. Memory per connection is
  therefore bounded by the limits, whatever the peer sends.
* Partial reads are invisible: feeding a stream in chunks split at any byte boundary yields
  exactly the commands of feeding it whole (the tests check every split).
* A framing error is final. Redis closes the connection after one, because the parser no
  longer knows where the next command starts; here `next_command` returns the same
  `ProtocolViolation` forever after, carrying the ``-ERR Protocol error: …`` reply to send
  before closing. Error texts are Redis's, word for word, where Redis has one.

`RespReplyParser` (client side) is the mirror: replies (simple strings as `str`, errors as
`RespError`, integers, bulk strings as `bytes`, nil as ``None``, arrays as nested lists;
and RESP3's null, boolean and map), with the same limits and partial-read behaviour. A malformed reply raises
`RespProtocolError`: the server broke the protocol and the client must drop the connection.

The ``encode_*`` functions build replies (server) and commands (client). ``encode(value)``
maps Python values onto RESP the same way the reply parser maps them back, so
``parse(encode(v)) == v`` for every `Reply`. Aegis speaks RESP2; the encoders also take
``resp3=True`` for connections that switched with ``HELLO 3``, because redis-py 8 asks for
RESP3 on connect and does not fall back. In RESP3 only nil (``_``) and maps (``%``) are
spelled differently for the replies Aegis sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Awaitable, Callable, Final, TypeAlias, Union

__all__ = [
    "DEFAULT_MAX_INLINE_LEN",
    "DEFAULT_MAX_BULK_LEN",
    "DEFAULT_MAX_ARGS",
    "DEFAULT_MAX_REQUEST_LEN",
    "DEFAULT_MAX_DEPTH",
    "RespError",
    "Reply",
    "ProtocolViolation",
    "RespProtocolError",
    "RespParser",
    "RespReplyParser",
    "NeedData",
    "NEED_DATA",
    "split_inline",
    "encode",
    "encode_simple",
    "encode_error",
    "encode_integer",
    "encode_bulk",
    "constant_reply",
    "encode_array",
    "encode_command",
    "OK",
    "PONG",
    "NIL",
    "NIL3",
    "EMPTY_ARRAY",
]

#: Longest inline command line, and longest ``*n``/``$n`` header line (Redis: 64 KiB).
DEFAULT_MAX_INLINE_LEN: Final = 64 * 1024
#: Longest single bulk string (Redis allows 512 MiB; a Raft entry should not).
DEFAULT_MAX_BULK_LEN: Final = 16 * 1024 * 1024
#: Most arguments in one multibulk request (Redis's historical limit).
DEFAULT_MAX_ARGS: Final = 1024 * 1024
#: Most wire bytes one request may occupy while it is being parsed.
DEFAULT_MAX_REQUEST_LEN: Final = 64 * 1024 * 1024
#: Deepest array nesting the reply parser accepts.
DEFAULT_MAX_DEPTH: Final = 32

_CRLF: Final = b"\r\n"
# Redis's string2ll: optional minus, no leading zeros, no plus, no blanks, no underscores.
_INTEGER_RE: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")
# The headers a whole command takes the fast path with (`RespParser._whole`): a positive
# count and non-negative lengths in string2ll's form; anything else takes the careful path.
_BULK_HEAD: Final = re.compile(rb"\$(0|[1-9][0-9]{0,17})\r\n")
_MULTIBULK_FIRST: Final = re.compile(rb"\*([1-9][0-9]{0,8})\r\n\$(0|[1-9][0-9]{0,17})\r\n")
_STAR: Final = ord("*")
_DOLLAR: Final = ord("$")
_LF: Final = ord("\n")
_CR: Final = ord("\r")


def _parse_int(buf: bytes | bytearray, start: int, end: int) -> int | None:
    """The integer in ``buf[start:end]`` if it is exactly one, else None (no copy on failure)."""
    if _INTEGER_RE.fullmatch(buf, start, end) is None:
        return None
    return int(buf[start:end])


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply (``-KIND message``) as a value, so it can sit inside an array.

    `kind` is the first word (``ERR``, ``NOLEADER``, ``TIMEOUT``, ``TRYAGAIN``, …) and
    `message` the rest; `text` is the whole line as sent.
    """

    text: str

    def __post_init__(self) -> None:
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("an error reply cannot contain a line break")

    @property
    def kind(self) -> str:
        return self.text.split(" ", 1)[0]

    @property
    def message(self) -> str:
        parts = self.text.split(" ", 1)
        return parts[1] if len(parts) == 2 else ""

    def __str__(self) -> str:
        return self.text


#: A decoded reply: simple string (str), error, integer, bulk (bytes), nil, array, or map
#: (RESP3 only; see `encode`). Map keys are in practice bytes, str or int.
Reply: TypeAlias = Union[str, RespError, int, bytes, None, list["Reply"], dict["Reply", "Reply"]]


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the framing; send `reply` and close the connection.

    `message` is Redis's wording, e.g. ``"Protocol error: invalid bulk length"``.
    """

    message: str

    @property
    def reply(self) -> bytes:
        return encode_error("ERR " + self.message)


class RespProtocolError(Exception):
    """A peer sent bytes that are not RESP2; the connection cannot be used any more."""


class NeedData:
    """Sentinel type: the reply parser needs more bytes before it can return a reply."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# --------------------------------------------------------------------------- inline split

_BLANK: Final = frozenset(b" \t\n\r\x0b\x0c")  # isspace() in the C locale
_TOKEN_END: Final = frozenset(b" \n\r\t\x00")
_SPECIAL: Final = re.compile(rb"[\"'\x00\x0b\x0c]")
_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes] | None:
    """Split one inline command line like Redis's ``sdssplitargs``; None on bad quoting.

    Words are separated by blanks. ``"…"`` supports ``\\n \\r \\t \\b \\a \\xHH`` and
    ``\\<any>``; ``'…'`` supports ``\\'``. A closing quote must be followed by a blank or the
    end of the line, and an unterminated quote is an error (``"foo"bar`` is invalid).
    """
    if _SPECIAL.search(line) is None:
        return line.split()
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _BLANK:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    return None
                c = line[i]
                if c == 0x5C and i + 1 < n:  # backslash
                    nxt = line[i + 1]
                    if nxt == 0x78 and i + 3 < n and line[i + 2] in _HEX and line[i + 3] in _HEX:
                        current.append(int(line[i + 2 : i + 4], 16))
                        i += 4
                        continue
                    current.append(_ESCAPES.get(nxt, nxt))
                    i += 2
                    continue
                if c == 0x22:  # closing "
                    if i + 1 < n and line[i + 1] not in _BLANK:
                        return None
                    i += 1
                    break
                current.append(c)
                i += 1
            elif in_single:
                if i >= n:
                    return None
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    current.append(0x27)
                    i += 2
                    continue
                if c == 0x27:  # closing '
                    if i + 1 < n and line[i + 1] not in _BLANK:
                        return None
                    i += 1
                    break
                current.append(c)
                i += 1
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _TOKEN_END:
                    i += 1
                    break
                if c == 0x22:
                    in_double = True
                elif c == 0x27:
                    in_single = True
                else:
                    current.append(c)
                i += 1
        args.append(bytes(current))


# --------------------------------------------------------------------------- request parser


class RespParser:
    """Server-side request parser: `feed` bytes, then drain `next_command` until None.

    ::

        parser.feed(data)
        while (cmd := parser.next_command()) is not None:
            if isinstance(cmd, ProtocolViolation):
                send(cmd.reply); close(); break
            handle(cmd)          # cmd is list[bytes], cmd[0] the command name
    """

    __slots__ = (
        "max_inline_len",
        "max_bulk_len",
        "max_args",
        "max_request_len",
        "_buf",
        "_pos",
        "_scan",
        "_scan_at",
        "_argv",
        "_remaining",
        "_bulk_len",
        "_request_bytes",
        "_error",
    )

    def __init__(
        self,
        *,
        max_inline_len: int = DEFAULT_MAX_INLINE_LEN,
        max_bulk_len: int = DEFAULT_MAX_BULK_LEN,
        max_args: int = DEFAULT_MAX_ARGS,
        max_request_len: int = DEFAULT_MAX_REQUEST_LEN,
    ) -> None:
        if min(max_inline_len, max_bulk_len, max_args, max_request_len) < 1:
            raise ValueError("parser limits must be positive")
        self.max_inline_len = max_inline_len
        self.max_bulk_len = max_bulk_len
        self.max_args = max_args
        self.max_request_len = max_request_len
        self._buf = bytearray()
        self._pos = 0  # first unconsumed byte
        # Where the next search for a line end resumes, valid only while `_pos` is still
        # `_scan_at`: a header dripped in byte by byte is scanned once, not quadratically.
        self._scan = 0
        self._scan_at = -1
        self._argv: list[bytes] | None = None  # multibulk in progress
        self._remaining = 0  # bulks still expected for _argv
        self._bulk_len = -1  # declared length of the bulk being read, -1 before its header
        self._request_bytes = 0  # wire bytes consumed by the command in progress
        self._error: ProtocolViolation | None = None

    # -- public

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. An empty `data` means nothing (EOF is the caller's business)."""
        if self._error is None:
            self._buf += data

    @property
    def error(self) -> ProtocolViolation | None:
        """The violation that stopped this parser, if any."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a command."""
        return len(self._buf) - self._pos

    @property
    def held(self) -> int:
        """Bytes kept for the command in progress: what is buffered plus the arguments (and
        headers) of a multibulk parsed so far. Zero between commands; what a node's input
        budget charges a connection for."""
        held = len(self._buf) - self._pos
        if self._argv is not None:
            # `_request_bytes` counts the current bulk's declared size once its header is
            # read; the part of it that has arrived is already in the buffered bytes.
            held += self._request_bytes - (self._bulk_len + 2 if self._bulk_len >= 0 else 0)
        return held

    @property
    def in_request(self) -> bool:
        """Whether a partial command is buffered (an EOF now would cut a request short)."""
        return self._argv is not None or self._pos < len(self._buf)

    def next_command(self) -> list[bytes] | ProtocolViolation | None:
        """The next complete command, a `ProtocolViolation`, or None when more bytes are needed."""
        if self._error is not None:
            return self._error
        buf = self._buf
        while True:
            if self._argv is None:
                if self._pos >= len(buf):
                    self._compact()
                    return None
                if buf[self._pos] == _STAR:
                    whole = self._whole()
                    if whole is not None:
                        return whole
                    started = self._start_multibulk()
                    if started is None:
                        self._compact()
                        return None
                    if isinstance(started, ProtocolViolation):
                        return started
                    if self._argv is None:  # *0 or *-1: nothing to run
                        continue
                else:
                    line = self._inline()
                    if line is None:
                        self._compact()
                        return None
                    if isinstance(line, ProtocolViolation):
                        return line
                    if line:
                        return line
                    continue
            argv = self._read_bulks()
            if argv is None:
                self._compact()
            return argv

    def __iter__(self) -> Iterator[list[bytes] | ProtocolViolation]:
        """Every command now complete; stops after a violation or when data runs out."""
        while (cmd := self.next_command()) is not None:
            yield cmd
            if isinstance(cmd, ProtocolViolation):
                return

    # -- internals

    def _fail(self, message: str) -> ProtocolViolation:
        self._error = ProtocolViolation(message)
        self._buf = bytearray()
        self._pos = 0
        self._argv = None
        return self._error

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._scan_at -= self._pos
            self._pos = 0

    def _find_line(self, too_long: str) -> int | ProtocolViolation | None:
        """Index of the CR ending the header line at `_pos`; None if incomplete."""
        buf = self._buf
        start = self._scan if self._scan_at == self._pos else self._pos
        limit = self._pos + self.max_inline_len + 1
        cr = buf.find(b"\r", start, limit + 1)
        if cr < 0:
            if len(buf) > limit:
                return self._fail(too_long)
            self._scan = len(buf)
            self._scan_at = self._pos
            return None
        if cr + 1 >= len(buf):
            self._scan = cr
            self._scan_at = self._pos
            return None
        return cr

    def _whole(self) -> list[bytes] | None:
        """A whole multibulk command already buffered at `_pos`, well formed and within
        every limit, parsed in one pass; None (and nothing consumed) for anything else,
        which the careful path then reads, errors and waits included. A command that is
        not complete yet is walked here once: the careful path keeps its progress."""
        buf = self._buf
        pos = self._pos
        m = _MULTIBULK_FIRST.match(buf, pos)  # the count and the first bulk's header at once
        if m is None:
            return None
        count = int(m.group(1))
        if count > self.max_args:
            return None
        size = int(m.group(2))
        start = m.end()
        have = len(buf)
        max_bulk = self.max_bulk_len
        head = _BULK_HEAD.match
        argv = []
        while True:
            end = start + size
            if size > max_bulk or end + 2 > have or buf[end] != _CR or buf[end + 1] != _LF:
                return None
            argv.append(bytes(buf[start:end]))
            p = end + 2
            count -= 1
            if not count:
                break
            m = head(buf, p)
            if m is None:
                return None
            size = int(m.group(1))
            start = m.end()
        if p - pos > self.max_request_len:
            return None
        self._pos = p
        return argv

    def _start_multibulk(self) -> ProtocolViolation | bool | None:
        cr = self._find_line("Protocol error: too big mbulk count string")
        if cr is None or isinstance(cr, ProtocolViolation):
            return cr
        count = _parse_int(self._buf, self._pos + 1, cr)
        if count is None or count > self.max_args or self._buf[cr + 1] != _LF:
            return self._fail("Protocol error: invalid multibulk length")
        self._request_bytes = cr + 2 - self._pos
        self._pos = cr + 2
        if count > 0:
            self._argv = []
            self._remaining = count
            self._bulk_len = -1
        return True

    def _inline(self) -> list[bytes] | ProtocolViolation | None:
        buf = self._buf
        start = self._scan if self._scan_at == self._pos else self._pos
        limit = self._pos + self.max_inline_len
        lf = buf.find(b"\n", start, limit + 2)
        if lf < 0:
            if len(buf) - self._pos > self.max_inline_len + 1:  # +1: a CR may end it
                return self._fail("Protocol error: too big inline request")
            self._scan = len(buf)
            self._scan_at = self._pos
            return None
        end = lf - 1 if lf > self._pos and buf[lf - 1] == _CR else lf
        if end - self._pos > self.max_inline_len:
            return self._fail("Protocol error: too big inline request")
        args = split_inline(bytes(buf[self._pos : end]))
        if args is None:
            return self._fail("Protocol error: unbalanced quotes in request")
        self._pos = lf + 1
        return args

    def _bulk_header(self) -> int | ProtocolViolation | None:
        """The careful path for a ``$<len>`` header at `_pos`: every error, every wait."""
        buf = self._buf
        if self._pos >= len(buf):
            return None
        byte = buf[self._pos]
        if byte != _DOLLAR:
            got = chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"
            return self._fail(f"Protocol error: expected '$', got '{got}'")
        cr = self._find_line("Protocol error: too big bulk count string")
        if cr is None or isinstance(cr, ProtocolViolation):
            return cr
        size = _parse_int(buf, self._pos + 1, cr)
        if size is None or size < 0 or size > self.max_bulk_len or buf[cr + 1] != _LF:
            return self._fail("Protocol error: invalid bulk length")
        self._request_bytes += cr + 2 - self._pos
        self._pos = cr + 2
        return size

    def _read_bulks(self) -> list[bytes] | ProtocolViolation | None:
        # The hot loop of the server: state lives in locals and is written back on exit.
        # Headers take a fast path (a short, well-formed ``$n\r\n`` already buffered);
        # anything else goes through `_bulk_header`, which knows every error and wait.
        buf = self._buf
        argv = self._argv
        assert argv is not None
        size = self._bulk_len
        remaining = self._remaining
        pos = self._pos
        have = len(buf)
        max_bulk = self.max_bulk_len
        fullmatch = _INTEGER_RE.fullmatch
        while remaining:
            if size < 0:
                cr = buf.find(b"\r", pos + 1, pos + 22)
                if (
                    cr > 0
                    and cr + 1 < have
                    and buf[pos] == _DOLLAR
                    and buf[cr + 1] == _LF
                    and fullmatch(buf, pos + 1, cr) is not None
                ):
                    size = int(buf[pos + 1 : cr])
                    if size < 0 or size > max_bulk:
                        return self._fail("Protocol error: invalid bulk length")
                    self._request_bytes += cr + 2 - pos
                    pos = cr + 2
                else:
                    self._pos = pos
                    header = self._bulk_header()
                    if header is None or isinstance(header, ProtocolViolation):
                        self._remaining = remaining
                        self._bulk_len = -1
                        return header
                    size = header
                    pos = self._pos
                self._request_bytes += size + 2
                if self._request_bytes > self.max_request_len:
                    return self._fail("Protocol error: request too large")
            end = pos + size
            if end + 2 > have:
                break
            if buf[end] != _CR or buf[end + 1] != _LF:
                return self._fail("Protocol error: expected '\\r\\n' after bulk data")
            argv.append(bytes(buf[pos:end]))
            pos = end + 2
            size = -1
            remaining -= 1
        self._pos = pos
        self._bulk_len = size
        self._remaining = remaining
        if remaining:
            return None
        self._argv = None
        return argv


# --------------------------------------------------------------------------- encoder


def _line_safe(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def encode_simple(text: str) -> bytes:
    """``+text\\r\\n``. A simple string cannot hold a line break (ValueError)."""
    if "\r" in text or "\n" in text:
        raise ValueError("a simple string cannot contain a line break; use a bulk string")
    return b"+" + text.encode("utf-8") + _CRLF


def encode_error(text: str) -> bytes:
    """``-text\\r\\n``, with line breaks flattened to spaces (as Redis does).

    `text` starts with the error kind: ``encode_error("ERR no such key")``.
    """
    return b"-" + _line_safe(text).encode("utf-8", "surrogateescape") + _CRLF


def encode_integer(value: int) -> bytes:
    return b":%d\r\n" % value


def encode_bulk(value: bytes | bytearray | memoryview | None, *, resp3: bool = False) -> bytes:
    """``$len\r\n…\r\n``; None is the nil bulk ``$-1\r\n`` (RESP3: the null ``_\r\n``)."""
    if value is None:
        return NIL3 if resp3 else NIL
    data = value if isinstance(value, bytes) else bytes(value)
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_array(items: Sequence[Reply] | None, *, resp3: bool = False) -> bytes:
    """``*n\r\n`` and each item encoded with `encode`; None is the nil array ``*-1``."""
    if items is None:
        return NIL3 if resp3 else b"*-1\r\n"
    out = bytearray(b"*%d\r\n" % len(items))
    for item in items:
        _encode_into(out, item, resp3)
    return bytes(out)


def _encode_into(out: bytearray, value: Reply, resp3: bool) -> None:
    if isinstance(value, bytes):
        out += b"$%d\r\n%b\r\n" % (len(value), value)
    elif isinstance(value, str):
        out += encode_simple(value)
    elif isinstance(value, bool):
        out += b":1\r\n" if value else b":0\r\n"
    elif isinstance(value, int):
        out += b":%d\r\n" % value
    elif value is None:
        out += NIL3 if resp3 else NIL
    elif isinstance(value, RespError):
        out += encode_error(value.text)
    elif isinstance(value, (list, tuple)):
        out += b"*%d\r\n" % len(value)
        for item in value:
            _encode_into(out, item, resp3)
    elif isinstance(value, dict):
        # RESP3 has maps; RESP2 sends the pairs flat, as Redis does for HELLO and CONFIG GET.
        out += b"%%%d\r\n" % len(value) if resp3 else b"*%d\r\n" % (2 * len(value))
        for key, item in value.items():
            _encode_into(out, key, resp3)
            _encode_into(out, item, resp3)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")


def encode(value: Reply, *, resp3: bool = False) -> bytes:
    """Encode a `Reply`: str→simple, bytes→bulk, int→integer, None→nil, RespError→error,
    list→array, dict→map (nested as deep as given).

    RESP2 (the default) is what Aegis speaks; a connection that negotiated RESP3 with
    ``HELLO 3`` (redis-py ≥ 8 does by default) needs `resp3`: nil becomes ``_`` and a dict a
    ``%`` map instead of a flat array. Every other type is spelled the same in both.
    """
    out = bytearray()
    _encode_into(out, value, resp3)
    return bytes(out)


def _arg_bytes(arg: bytes | bytearray | memoryview | str | int | float) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8", "surrogateescape")
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, bool):
        raise TypeError("refusing to send a bool; pass 0/1 or a string")
    if isinstance(arg, (int, float)):
        return repr(arg).encode("ascii")
    raise TypeError(f"cannot send {type(arg).__name__} as a command argument")


def encode_command(args: Sequence[bytes | bytearray | memoryview | str | int | float]) -> bytes:
    """A command as a multibulk of bulk strings (str is UTF-8 encoded, numbers in decimal)."""
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg_bytes(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
NIL: Final = b"$-1\r\n"
NIL3: Final = b"_\r\n"
EMPTY_ARRAY: Final = b"*0\r\n"


# --------------------------------------------------------------------------- reply parser


class _Frame:
    """An array (or map) being filled: its items and how many are still missing."""

    __slots__ = ("items", "remaining", "is_map")

    def __init__(self, remaining: int, is_map: bool = False) -> None:
        self.items: list[Reply] = []
        self.remaining = remaining
        self.is_map = is_map

    def finish(self) -> Reply:
        if not self.is_map:
            return self.items
        try:
            return dict(zip(self.items[::2], self.items[1::2]))
        except TypeError:
            raise RespProtocolError("unhashable map key") from None


class RespReplyParser:
    """Client-side reply parser: `feed` bytes, then call `next_reply` until `NEED_DATA`.

    Nested arrays are assembled with an explicit stack (no recursion, so a hostile depth
    cannot blow the Python stack, and `max_depth` bounds it anyway). Raises
    `RespProtocolError` on malformed input; the parser is then unusable.
    """

    __slots__ = (
        "max_line_len",
        "max_bulk_len",
        "max_array_len",
        "max_depth",
        "_buf",
        "_pos",
        "_scan",
        "_scan_at",
        "_stack",
        "_bulk_len",
        "_broken",
    )

    def __init__(
        self,
        *,
        max_line_len: int = DEFAULT_MAX_INLINE_LEN,
        max_bulk_len: int = 512 * 1024 * 1024,
        max_array_len: int = DEFAULT_MAX_ARGS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.max_line_len = max_line_len
        self.max_bulk_len = max_bulk_len
        self.max_array_len = max_array_len
        self.max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0
        self._scan_at = -1
        self._stack: list[_Frame] = []
        self._bulk_len = -1  # declared length of a bulk whose payload has not all arrived
        self._broken: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def in_reply(self) -> bool:
        """Whether a reply has started but not finished."""
        return bool(self._stack) or self._pos < len(self._buf)

    def __iter__(self) -> Iterator[Reply]:
        """Every reply now complete."""
        while not isinstance(reply := self.next_reply(), NeedData):
            yield reply

    def _fail(self, message: str) -> RespProtocolError:
        self._broken = message
        self._buf = bytearray()
        self._pos = 0
        self._stack.clear()
        return RespProtocolError(message)

    def _need_data(self) -> NeedData:
        if self._pos:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._scan_at -= self._pos
            self._pos = 0
        return NEED_DATA

    def next_reply(self) -> Reply | NeedData:
        """The next complete reply, or `NEED_DATA`."""
        if self._broken is not None:
            raise RespProtocolError(self._broken)
        buf = self._buf
        while True:
            value: Reply
            if self._bulk_len >= 0:
                end = self._pos + self._bulk_len
                if end + 2 > len(buf):
                    return self._need_data()
                if buf[end] != _CR or buf[end + 1] != _LF:
                    raise self._fail("expected '\\r\\n' after bulk data")
                value = bytes(buf[self._pos : end])
                self._pos = end + 2
                self._bulk_len = -1
            else:
                if self._pos >= len(buf):
                    return self._need_data()
                start = self._scan if self._scan_at == self._pos else self._pos
                limit = self._pos + self.max_line_len + 1
                cr = buf.find(b"\r", start, limit + 1)
                if cr < 0:
                    if len(buf) > limit:
                        raise self._fail("reply line too long")
                    self._scan = len(buf)
                    self._scan_at = self._pos
                    return self._need_data()
                if cr + 1 >= len(buf):
                    self._scan = cr
                    self._scan_at = self._pos
                    return self._need_data()
                if buf[cr + 1] != _LF:
                    raise self._fail("expected '\\n' after '\\r'")
                kind = buf[self._pos]
                body_start = self._pos + 1
                line_end = cr + 2
                if kind == 0x2B:  # +
                    value = buf[body_start:cr].decode("utf-8", "surrogateescape")
                    self._pos = line_end
                elif kind == 0x2D:  # -
                    value = RespError(buf[body_start:cr].decode("utf-8", "surrogateescape"))
                    self._pos = line_end
                elif kind == 0x3A:  # :
                    number = _parse_int(buf, body_start, cr)
                    if number is None:
                        raise self._fail("invalid integer reply")
                    value = number
                    self._pos = line_end
                elif kind == _DOLLAR:
                    size = _parse_int(buf, body_start, cr)
                    if size is None or size < -1 or size > self.max_bulk_len:
                        raise self._fail("invalid bulk length")
                    self._pos = line_end
                    if size >= 0:
                        self._bulk_len = size
                        continue
                    value = None
                elif kind == _STAR:
                    count = _parse_int(buf, body_start, cr)
                    if count is None or count < -1 or count > self.max_array_len:
                        raise self._fail("invalid multibulk length")
                    self._pos = line_end
                    if count > 0:
                        if len(self._stack) >= self.max_depth:
                            raise self._fail("arrays nested too deeply")
                        self._stack.append(_Frame(count))
                        continue
                    value = [] if count == 0 else None
                elif kind == 0x25:  # % (RESP3 map)
                    count = _parse_int(buf, body_start, cr)
                    if count is None or count < 0 or 2 * count > self.max_array_len:
                        raise self._fail("invalid map length")
                    self._pos = line_end
                    if count > 0:
                        if len(self._stack) >= self.max_depth:
                            raise self._fail("arrays nested too deeply")
                        self._stack.append(_Frame(2 * count, is_map=True))
                        continue
                    value = {}
                elif kind == 0x5F:  # _ (RESP3 null)
                    if cr != body_start:
                        raise self._fail("invalid null reply")
                    value = None
                    self._pos = line_end
                elif kind == 0x23:  # # (RESP3 boolean)
                    flag = bytes(buf[body_start:cr])
                    if flag not in (b"t", b"f"):
                        raise self._fail("invalid boolean reply")
                    value = flag == b"t"
                    self._pos = line_end
                else:
                    raise self._fail(f"unexpected reply type byte {chr(kind)!r}")
            # Attach the finished value to the enclosing arrays, closing those now full.
            while self._stack:
                frame = self._stack[-1]
                frame.items.append(value)
                frame.remaining -= 1
                if frame.remaining:
                    break
                self._stack.pop()
                try:
                    value = frame.finish()
                except RespProtocolError as exc:
                    raise self._fail(str(exc)) from None
            else:
                return value


def constant_reply(data: bytes) -> Callable[[], Awaitable[bytes]]:
    """A reply already known, in the shape of one still to come (a node's pipelines await
    each command's reply in order, whatever it is)."""

    async def value() -> bytes:
        return data

    return value
