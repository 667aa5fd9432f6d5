"""Following a stream: CHANGES, SUBSCRIBE and PSUBSCRIBE, live, until Ctrl-C.

Theory of operation
-------------------
After ``CHANGES prefix [FROM revision]`` (or ``SUBSCRIBE`` / ``PSUBSCRIBE``) a connection
only receives: ``["changes", prefix, revision]`` and then one ``["change", revision, [key,
value-or-nil, ...]]`` per log entry, forever (or the subscribe replies and ``message`` /
``pmessage`` arrays). So the shell never sends one on its command connection, whose MULTI,
WATCHes and INFO refresh must keep working: each follow gets a client of its own
(`ShellConnection.stream_client`: the node the shell talks to, the other members as
fallbacks) and closes it at the end, which is how the server is told to stop. The command
connection is not touched, so the prompt is usable the moment the follow ends.

Three parts, one job each:

* `parse_event(reply)`: a reply of the stream as a typed event (`Started`, `Change`,
  `Subscribed`, `Message`), or `Unexpected` for a shape this shell does not know, which is
  shown as it came rather than lost. Pure.
* `Progress`: what the user has seen — the last revision, how many changes or messages —
  and from it the command that resumes: ``CHANGES prefix FROM last`` delivers every change
  after ``last``, nothing twice and nothing missing. Keyspace notifications are not
  resumable (as in Redis); the summary says which CHANGES follows the same keys when there
  is one. Replaced, never mutated.
* `render_event` (rich, one or a few lines per event: revision, key, new value or
  "deleted") and `json_event` (one JSON object per event, ``type`` first, as the server
  names it) say how an event looks; raw mode prints the reply as redis-cli ``--raw`` does.
* `follow(...)`, on the main thread: a trio task (`StreamPump.run`) owns the stream's
  client and puts each reply on a bounded memory channel; the main thread takes them off
  in batches (`StreamPump.next_batch`, through the bridge) and hands each to `on_event`,
  which prints. A slow terminal therefore slows the reading, not the memory: the server
  lets every consumer read the shared history at its own pace. Ctrl-C, ``q`` at a
  terminal, or `stop` ends the loop between two events (during a follow the first SIGINT
  only asks; see `_ctrl_c_sets`) and cancels the task, whose exit closes the stream's
  connection; the main thread waits, bounded, for it to unwind. The resume point is the
  last event `on_event` returned from: replies still in the channel were never shown, so
  they are not counted as seen (they come again after FROM), and none is counted unshown.
"""

from __future__ import annotations

import concurrent.futures
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Final, TypeAlias

import trio
from rich.console import Group, RenderableType
from rich.text import Text

from aegis.client import AegisClient
from aegis.protocol import Reply

from .bridge import BridgeClosedError, TrioBridge
from .dashboard import keyboard_quiet, quit_key_pressed
from .grammar import STREAM_COMMANDS, quote_word
from .render import escape_bulk, format_reply, json_value

__all__ = [
    "STREAM_COMMANDS",
    "Started",
    "Change",
    "Subscribed",
    "Message",
    "Unexpected",
    "StreamEvent",
    "parse_event",
    "render_event",
    "json_event",
    "Progress",
    "FollowResult",
    "StreamPump",
    "follow",
    "is_stream_command",
]

KEYSPACE: Final = b"__keyspace@0__:"
KEYEVENT: Final = b"__keyevent@0__:"
BUFFER: Final = 256  # replies read ahead of the screen
BATCH: Final = 64  # replies handed over per trip through the bridge
_WAIT: Final = 0.1  # how long one trip waits for a reply before the main thread looks up
_UNWIND: Final = 2.0  # how long a stopped stream may take to close


def is_stream_command(argv: Sequence[bytes]) -> bool:
    return bool(argv) and argv[0].decode("utf-8", "replace").upper() in STREAM_COMMANDS


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Started:
    """``["changes", prefix, revision]``: changes after `revision` follow."""

    prefix: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """``["change", revision, [key, value-or-nil, ...]]``: one log entry's changes under
    the prefix; a value of None is a deletion (an expiry included)."""

    revision: int
    items: tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Subscribed:
    """``[subscribe|psubscribe|unsubscribe|punsubscribe, channel, count]``."""

    kind: str
    channel: bytes | None
    count: int


@dataclass(frozen=True, slots=True)
class Message:
    """``["message", channel, payload]`` or ``["pmessage", pattern, channel, payload]``."""

    channel: bytes
    payload: bytes
    pattern: bytes | None = None

    @property
    def key_event(self) -> tuple[bytes, str] | None:
        """(key, event) for a keyspace or keyevent notification, else None."""
        if self.channel.startswith(KEYSPACE):
            return self.channel[len(KEYSPACE):], self.payload.decode("utf-8", "replace")
        if self.channel.startswith(KEYEVENT):
            return self.payload, self.channel[len(KEYEVENT):].decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A reply of a shape this shell does not know (shown as it came)."""

    reply: Reply


StreamEvent: TypeAlias = Started | Change | Subscribed | Message | Unexpected


def _text(value: Reply) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return None


def _int(value: Reply) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (bytes, str)):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _change_items(value: Reply) -> tuple[tuple[bytes, bytes | None], ...] | None:
    if not isinstance(value, list) or len(value) % 2:
        return None
    items: list[tuple[bytes, bytes | None]] = []
    for i in range(0, len(value), 2):
        key, new = _text(value[i]), value[i + 1]
        if key is None or not (new is None or isinstance(new, (bytes, str))):
            return None
        items.append((key, _text(new)))
    return tuple(items)


def parse_event(reply: Reply) -> StreamEvent:
    """The event a stream reply stands for (`Unexpected` when its shape is unknown)."""
    if not isinstance(reply, list) or not reply:
        return Unexpected(reply)
    head = _text(reply[0])
    kind = head.decode("utf-8", "replace").lower() if head is not None else ""
    n = len(reply)
    if kind == "changes" and n == 3:
        prefix, revision = _text(reply[1]), _int(reply[2])
        if prefix is not None and revision is not None:
            return Started(prefix, revision)
    elif kind == "change" and n == 3:
        revision, items = _int(reply[1]), _change_items(reply[2])
        if revision is not None and items is not None:
            return Change(revision, items)
    elif kind in ("subscribe", "psubscribe", "unsubscribe", "punsubscribe") and n == 3:
        count = _int(reply[2])
        if count is not None and (reply[1] is None or _text(reply[1]) is not None):
            return Subscribed(kind, _text(reply[1]), count)
    elif kind == "message" and n == 3:
        channel, payload = _text(reply[1]), _text(reply[2])
        if channel is not None and payload is not None:
            return Message(channel, payload)
    elif kind == "pmessage" and n == 4:
        pattern, channel, payload = _text(reply[1]), _text(reply[2]), _text(reply[3])
        if pattern is not None and channel is not None and payload is not None:
            return Message(channel, payload, pattern)
    return Unexpected(reply)


# --------------------------------------------------------------------------- progress


def _from_revision(argv: Sequence[bytes]) -> int | None:
    if len(argv) == 4 and argv[2].upper() == b"FROM":
        return _int(argv[3])
    return None


@dataclass(frozen=True, slots=True)
class Progress:
    """What the user has been shown of one stream."""

    argv: tuple[bytes, ...]
    started: bool = False
    revision: int | None = None  # CHANGES: the last revision seen (the start one before any)
    changes: int = 0  # CHANGES: log entries shown
    messages: int = 0  # (P)SUBSCRIBE: messages shown
    subscriptions: int = 0

    @classmethod
    def of(cls, argv: Sequence[bytes]) -> Progress:
        return cls(tuple(argv), revision=_from_revision(argv) if _is_changes(argv) else None)

    def after(self, event: StreamEvent) -> Progress:
        match event:
            case Started(revision=revision):
                return replace(self, started=True, revision=revision)
            case Change(revision=revision):
                last = revision if self.revision is None else max(self.revision, revision)
                return replace(self, started=True, revision=last, changes=self.changes + 1)
            case Subscribed(count=count):
                return replace(self, started=True, subscriptions=count)
            case Message():
                return replace(self, messages=self.messages + 1)
        return self

    @property
    def prefix(self) -> bytes | None:
        return self.argv[1] if _is_changes(self.argv) and len(self.argv) > 1 else None

    def resume_command(self) -> str | None:
        """``CHANGES prefix FROM <last revision seen>``, when that resumes this stream."""
        prefix = self.prefix
        if prefix is None or self.revision is None:
            return None
        return f"CHANGES {quote_word(prefix.decode('utf-8', 'surrogateescape'))} FROM {self.revision}"

    def equivalent_changes(self) -> str | None:
        """For keyspace notifications on exactly the keys under one prefix (``PSUBSCRIBE
        __keyspace@0__:user:*``): the CHANGES that follows them resumably."""
        if len(self.argv) != 2 or self.argv[0].upper() != b"PSUBSCRIBE":
            return None
        pattern = self.argv[1]
        if not (pattern.startswith(KEYSPACE) and pattern.endswith(b"*")):
            return None
        prefix = pattern[len(KEYSPACE):-1]
        if not prefix or any(c in prefix for c in b"*?[]\\"):
            return None
        return f"CHANGES {quote_word(prefix.decode('utf-8', 'surrogateescape'))}"

    def summary(self) -> str:
        """One line on what was seen, for when the stream stops."""
        if _is_changes(self.argv):
            if not self.started:
                return "stopped before the stream started"
            n = self.changes
            seen = f"{n} change{'s' if n != 1 else ''}"
            return f"stopped after {seen} (last revision {self.revision})"
        n = self.messages
        return f"unsubscribed after {n} message{'s' if n != 1 else ''}"

    def resume_hint(self) -> str:
        """How to pick up where this left off (or why one cannot)."""
        again = self.resume_command()
        if again is not None:
            return f"resume with: {again}"
        if _is_changes(self.argv):
            return "resume with: " + " ".join(quote_word(a.decode("utf-8", "surrogateescape")) for a in self.argv)
        same = self.equivalent_changes()
        if same is not None:
            return (f"keyspace notifications are not resumable; {same} follows the same keys "
                    f"and resumes with {same} FROM <revision>")
        return "keyspace notifications are not resumable; CHANGES prefix FROM revision is"


def _is_changes(argv: Sequence[bytes]) -> bool:
    return bool(argv) and argv[0].upper() == b"CHANGES"


# --------------------------------------------------------------------------- rendering

_EVENT_STYLES: Final = {"set": "green", "del": "red", "expired": "red", "evicted": "red"}
_VALUE_SHOWN: Final = 200  # bytes of a value shown live; --json has all of it


def _value(value: bytes | None) -> Text:
    if value is None:
        return Text("deleted", style="bold red")
    if len(value) <= _VALUE_SHOWN:
        return Text(escape_bulk(value))
    return Text.assemble(escape_bulk(value[:_VALUE_SHOWN]), (f" … ({len(value)} bytes)", "dim"))


def render_event(event: StreamEvent, *, at: str | None = None, hint: str = "") -> RenderableType:
    """How one event looks live. `at`: the arrival time shown before it (dim); `hint`:
    appended to the line that says the stream started (how to stop it)."""
    stamp = Text(f"{at} ", style="dim") if at else Text("")
    tail = Text(f" · {hint}", style="dim") if hint else Text("")
    match event:
        case Started(prefix=prefix, revision=revision):
            return Text.assemble(
                stamp, ("following changes under ", "dim"), (escape_bulk(prefix), "bold"),
                (f" after revision {revision}", "dim"), tail,
            )
        case Change(revision=revision, items=items):
            lines = Text()
            head = f"{revision}  "
            for i, (key, value) in enumerate(items):
                if i:
                    lines.append("\n")
                    lines.append(" " * (len(stamp) + len(head)))
                else:
                    lines.append_text(stamp)
                    lines.append(head, style="bold cyan")
                lines.append(escape_bulk(key), style="bold")
                lines.append("  ")
                lines.append_text(_value(value))
            if not items:
                lines.append_text(stamp)
                lines.append(head, style="bold cyan")
                lines.append("(no keys)", style="dim")
            return lines
        case Subscribed(kind=kind, channel=channel, count=count):
            name = "(none)" if channel is None else escape_bulk(channel)
            verb = {"subscribe": "subscribed to", "psubscribe": "subscribed to pattern",
                    "unsubscribe": "unsubscribed from", "punsubscribe": "unsubscribed from pattern"}[kind]
            total = f" ({count} subscription{'s' if count != 1 else ''})"
            return Text.assemble(stamp, (verb + " ", "dim"), (name, "bold"), (total, "dim"), tail)
        case Message(channel=channel, payload=payload, pattern=pattern):
            decoded = event.key_event
            if decoded is not None:
                key, what = decoded
                return Text.assemble(
                    stamp, (escape_bulk(key), "bold"), "  ", (what, _EVENT_STYLES.get(what, "yellow")),
                )
            return Text.assemble(stamp, (escape_bulk(channel), "bold"), "  ", escape_bulk(payload),
                                 (f"  ({escape_bulk(pattern)})" if pattern is not None else "", "dim"))
        case Unexpected(reply=reply):
            return Group(Text.assemble(stamp, ("unexpected reply:", "yellow")), format_reply(reply))
    raise AssertionError(f"not a stream event: {event!r}")


def json_event(event: StreamEvent) -> dict[str, Any]:
    """The ``--json`` object of one event (values as `json_value` makes them: null for a
    deletion, ``{"base64": …}`` for bytes that are not UTF-8)."""
    match event:
        case Started(prefix=prefix, revision=revision):
            return {"type": "changes", "prefix": json_value(prefix), "revision": revision}
        case Change(revision=revision, items=items):
            return {"type": "change", "revision": revision,
                    "changes": [{"key": json_value(k), "value": json_value(v)} for k, v in items]}
        case Subscribed(kind=kind, channel=channel, count=count):
            return {"type": kind, "channel": json_value(channel), "count": count}
        case Message(channel=channel, payload=payload, pattern=pattern):
            out: dict[str, Any] = {"type": "message" if pattern is None else "pmessage"}
            if pattern is not None:
                out["pattern"] = json_value(pattern)
            out["channel"] = json_value(channel)
            out["data"] = json_value(payload)
            decoded = event.key_event
            if decoded is not None:
                out["key"], out["event"] = json_value(decoded[0]), decoded[1]
            return out
        case Unexpected(reply=reply):
            return {"type": "unknown", "reply": json_value(reply)}
    raise AssertionError(f"not a stream event: {event!r}")


# --------------------------------------------------------------------------- the pump (trio)


class StreamPump:
    """The trio side of one follow: its own client, and a bounded channel of replies."""

    def __init__(self, client: AegisClient, argv: Sequence[bytes]) -> None:
        self.client = client
        self.argv = list(argv)
        self._send, self._receive = trio.open_memory_channel[Reply](BUFFER)

    async def run(self) -> None:
        """Read the stream into the channel until cancelled or it fails (the error is the
        task's); the channel closes behind the last reply either way."""
        try:
            async with self._send, self.client.stream(*self.argv) as stream:
                while True:
                    await self._send.send(await stream.receive())
        finally:
            await self.client.aclose()

    async def next_batch(self, wait: float = _WAIT) -> list[Reply] | None:
        """The replies waiting (at most `BATCH`), after up to `wait` seconds for a first
        one; [] if none came, None when the stream is over."""
        batch: list[Reply] = []
        with trio.move_on_after(wait):
            try:
                batch.append(await self._receive.receive())
            except trio.EndOfChannel:
                return None
        while batch and len(batch) < BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch


# --------------------------------------------------------------------------- follow (main thread)


@dataclass(frozen=True, slots=True)
class FollowResult:
    """How a follow ended: what was seen, and the error that ended it, if one did."""

    progress: Progress
    error: BaseException | None = None
    interrupted: bool = False  # Ctrl-C, q or `stop`


def follow(
    bridge: TrioBridge,
    make_client: Callable[[], AegisClient],
    argv: Sequence[bytes],
    on_event: Callable[[StreamEvent, Reply], None],
    *,
    keys: bool = False,
    stop: threading.Event | None = None,
) -> FollowResult:
    """Show the stream `argv` starts, reply by reply through `on_event`, until Ctrl-C,
    `stop`, or (with `keys`, at a terminal) ``q``/Esc; or until the stream fails.
    `make_client` runs in the trio thread and gives the stream's own client."""

    async def make() -> StreamPump:
        return StreamPump(make_client(), argv)

    progress = Progress.of(argv)
    asked = threading.Event()  # Ctrl-C, q or `stop`

    def stopping() -> bool:
        if stop is not None and stop.is_set():
            asked.set()
        return asked.is_set()

    pump = bridge.run(make)
    future, scope = bridge.submit(pump.run)
    try:
        with _ctrl_c_sets(asked), keyboard_quiet() if keys else nullcontext(False) as tty:
            while not stopping():
                if tty and quit_key_pressed(sys.stdin.fileno(), 0):
                    asked.set()
                    break
                batch = bridge.run(pump.next_batch)
                if batch is None:
                    break
                for reply in batch:
                    if stopping():
                        break
                    event = parse_event(reply)
                    on_event(event, reply)
                    progress = progress.after(event)
    except KeyboardInterrupt:  # a second Ctrl-C, or one where the handler could not be set
        asked.set()
    finally:
        bridge.cancel(scope)
    error = _settle(future)  # the stream's connection is closed once this returns
    interrupted = asked.is_set()
    return FollowResult(progress, None if interrupted else error, interrupted)


@contextmanager
def _ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """While following, the first Ctrl-C only sets `flag`: the loop stops between two
    events, so an event is never half counted (printed, but not remembered as seen, which
    a KeyboardInterrupt inside the print would do). A second Ctrl-C interrupts at once (a
    blocked write to a full pipe must not hold the shell). An ignored SIGINT stays ignored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN or previous is None:
            yield
            return
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C stays a KeyboardInterrupt
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _settle(future: concurrent.futures.Future[None]) -> BaseException | None:
    """Wait (bounded; a second Ctrl-C stops waiting) for the pump to end; the error that
    ended it, None if it was stopped."""
    try:
        error = future.exception(timeout=_UNWIND)
    except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, KeyboardInterrupt):
        return None
    if isinstance(error, (KeyboardInterrupt, BridgeClosedError)):
        return None  # cancelled by us, or the whole shell is closing
    return error
