"""How replies look: rich for a terminal, raw text for pipes, JSON for programs.

Theory of operation
-------------------
A reply is rendered from its value and the command that produced it. Generic values follow
redis-cli, which users already read fluently: ``"bulk"`` quoted with escapes, ``(integer) 5``,
``(nil)``, numbered nested lists, ``(error) ERR …`` in red. Status commands get tables:
INFO and CLUSTER INFO as field/value tables grouped by section; CLUSTER NODES and MEMBER
LIST as one row per member with the leader starred. Data replies whose shape means more
than a list say so: SCAN's keys with the command that continues the walk, GETV's value,
version and revision labelled, RANGE and PREFIX as a key/value table, TTL's -1 and -2 in
words, and EXEC's array item by item under the command that produced each reply (its nil
array: a WATCHed key changed). When a reply does not have the expected shape (an error, a
``QUEUED`` inside MULTI, a new server format), the generic rendering is used, so it is
shown rather than lost.

`raw_text` is what a script gets when stdout is not a terminal (redis-cli's raw mode: bulk
strings as they are, integers as digits, nil as an empty line, one list item per line) and
`json_reply` the ``--json`` form: `json_value` of the reply, except that SCAN, GETV, RANGE
and PREFIX become labelled objects (``{"cursor": …, "keys": […]}``, ``{"value": …,
"version": …, "revision": …}``, ``[{"key": …, "value": …}]``) and EXEC's items follow their
commands. `print_paged` sends output taller than the terminal through the pager
(``$PAGER``, else ``less -R``).

Rendering never does I/O other than printing to the console it is given.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.pager import Pager
from rich.table import Table
from rich.text import Text

from aegis.client import parse_info_sections
from aegis.commands import COMMANDS, GROUPS, CommandSpec, prefix_end
from aegis.protocol import Reply, RespError

from .grammar import META_COMMANDS, STREAM_COMMANDS, MetaCommand, quote_word
from .status import MemberRow, members_from_reply, reply_text

__all__ = [
    "escape_bulk",
    "format_reply",
    "render_reply",
    "render_error",
    "info_table",
    "members_table",
    "help_overview",
    "help_command",
    "raw_text",
    "json_value",
    "json_reply",
    "render_exec",
    "print_paged",
    "command_name",
]

STATE_STYLES: Final = {
    "healthy": "bold green",
    "degraded": "bold yellow",
    "noquorum": "bold red",
    "no_quorum": "bold red",
    "forming": "yellow",
    "initializing": "yellow",
}
HEALTH_STYLES: Final = {
    "healthy": "green",
    "starting": "yellow",
    "suspect": "yellow",
    "down": "bold red",
    "unreachable": "bold red",
    "leaving": "yellow",
    "left": "dim",
}
ROLE_STYLES: Final = {
    "leader": "bold green",
    "follower": "cyan",
    "candidate": "yellow",
    "precandidate": "yellow",
    "learner": "magenta",
}
LEADER_MARK: Final = "★"


def command_name(argv: Sequence[bytes]) -> str:
    """``"CLUSTER NODES"`` for a container command with its sub-command, else ``"GET"``."""
    if not argv:
        return ""
    first = argv[0].decode("utf-8", "replace").upper()
    spec = COMMANDS.get(first)
    if spec is not None and spec.subcommands and len(argv) > 1:
        return f"{first} {argv[1].decode('utf-8', 'replace').upper()}"
    return first


def escape_bulk(value: bytes) -> str:
    """redis-cli's quoting: printable ASCII as is, common escapes, ``\\xHH`` for the rest."""
    out = ['"']
    for byte in value:
        ch = chr(byte)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)


def _scalar(reply: Reply) -> Text:
    if reply is None:
        return Text("(nil)", style="dim")
    if isinstance(reply, RespError):
        return Text(f"(error) {reply.text}", style="bold red")
    if isinstance(reply, bool):
        return Text(f"(integer) {int(reply)}", style="cyan")
    if isinstance(reply, int):
        return Text(f"(integer) {reply}", style="cyan")
    if isinstance(reply, str):
        return Text(reply, style="green" if reply == "OK" else "")
    if isinstance(reply, bytes):
        return Text(escape_bulk(reply))
    return Text(repr(reply))


def format_reply(reply: Reply, indent: int = 0) -> Text:
    """The redis-cli rendering of any reply, as styled text."""
    if isinstance(reply, list):
        if not reply:
            return Text("(empty array)", style="dim")
        width = len(str(len(reply)))
        lines = Text()
        for i, item in enumerate(reply, 1):
            prefix = f"{i:>{width}}) "
            if i > 1:
                lines.append("\n" + " " * indent)
            lines.append(prefix, style="dim")
            lines.append_text(format_reply(item, indent + len(prefix)))
        return lines
    if isinstance(reply, dict):
        if not reply:
            return Text("(empty hash)", style="dim")
        width = len(str(len(reply)))
        lines = Text()
        for i, (key, value) in enumerate(reply.items(), 1):
            prefix = f"{i:>{width}}# "
            if i > 1:
                lines.append("\n" + " " * indent)
            lines.append(prefix, style="dim")
            lines.append_text(_scalar(key))
            lines.append(" => ", style="dim")
            lines.append_text(format_reply(value, indent + len(prefix) + 4))
        return lines
    return _scalar(reply)


def render_error(message: str) -> Text:
    """An error line as the user sees it: ``(error) NOLEADER …`` in red."""
    return Text(f"(error) {message}", style="bold red")


# --------------------------------------------------------------------------- tables


def _styled_value(field: str, value: str) -> Text:
    lowered = value.lower()
    if field in ("role", "raft_role"):
        return Text(value, style=ROLE_STYLES.get(lowered, ""))
    if field in ("cluster_state", "state"):
        return Text(value, style=STATE_STYLES.get(lowered, ""))
    if field in ("health", "status"):
        return Text(value, style=HEALTH_STYLES.get(lowered, ""))
    return Text(value)


def info_table(text: str, title: str = "INFO") -> Table | None:
    """INFO / CLUSTER INFO text as a table grouped by section (None when nothing parses)."""
    sections = parse_info_sections(text)
    if not sections:
        return None
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    first = True
    for name, fields in sections.items():
        if name:
            if not first:
                table.add_row("", "")
            table.add_row(Text(f"# {name.capitalize()}", style="bold magenta"), "")
        for field, value in fields.items():
            table.add_row(Text(f"  {field}" if name else field), _styled_value(field, value))
        first = False
    return table


def members_table(rows: Sequence[MemberRow], title: str = "Members") -> Table:
    """One row per member, the leader starred; extra fields become extra columns."""
    extras: list[str] = []
    for row in rows:
        for key in row.extra:
            if key not in extras:
                extras.append(key)
    has_match = any(r.match_index is not None for r in rows)
    has_health = any(r.health for r in rows)
    has_heard = any(r.last_heard for r in rows)
    table = Table(title=title, title_justify="left")
    table.add_column("", width=1, no_wrap=True)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("role", no_wrap=True, min_width=6)
    if has_match:
        table.add_column("match", justify="right", no_wrap=True, min_width=5)
    if has_health:
        table.add_column("health", no_wrap=True, min_width=6)
    if has_heard:
        table.add_column("last heard", no_wrap=True, min_width=10)
    for key in extras:
        table.add_column(Text(key.replace("_", " ")), min_width=len(key))
    for row in rows:
        cells: list[RenderableType] = [
            Text(LEADER_MARK, style="bold yellow") if row.is_leader else Text(""),
            Text(row.node_id + (" (you)" if row.myself else "")),
            Text(row.address),
            Text(row.role or "?", style=ROLE_STYLES.get(row.role, "")),
        ]
        if has_match:
            cells.append(Text("" if row.match_index is None else str(row.match_index)))
        if has_health:
            cells.append(Text(row.health, style=HEALTH_STYLES.get(row.health.lower(), "")))
        if has_heard:
            cells.append(Text(row.last_heard))
        cells.extend(Text(row.extra.get(key, "")) for key in extras)
        table.add_row(*cells, style="red" if row.is_down else "")
    return table


# --------------------------------------------------------------------------- data replies

Queued = Sequence[Sequence[bytes]]


def _words(argv: Sequence[bytes]) -> str:
    return " ".join(quote_word(a.decode("utf-8", "replace")) for a in argv)


def _option(argv: Sequence[bytes], name: bytes) -> bytes | None:
    """The value after option `name` in `argv` (the last one given), if any."""
    found = None
    for i, word in enumerate(argv[:-1]):
        if word.upper() == name:
            found = argv[i + 1]
    return found


def _scan_shape(reply: Reply) -> tuple[bytes, list[Reply]] | None:
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], (bytes, str)):
        keys = reply[1]
        if isinstance(keys, list):
            cursor = reply[0].encode() if isinstance(reply[0], str) else reply[0]
            return cursor, keys
    return None


def _render_scan(argv: Sequence[bytes], reply: Reply) -> RenderableType | None:
    shape = _scan_shape(reply)
    if shape is None:
        return None
    cursor, keys = shape
    done = cursor == b"0"
    body = format_reply(keys) if keys else Text(
        "(no keys in this step)" if not done else "(no keys)", style="dim"
    )
    if done:
        note = Text("cursor 0: the scan is complete", style="dim")
    else:
        again = [argv[0], cursor, *argv[2:]] if len(argv) >= 2 else [b"SCAN", cursor]
        note = Text.assemble(
            (f"cursor {cursor.decode('ascii', 'replace')} · continue with ", "dim"), (_words(again), "bold"),
        )
    return Group(body, note)


def _render_getv(reply: Reply) -> RenderableType | None:
    if reply is None:
        return Text.assemble(("(nil)", "dim"), ("  no such key", "dim"))
    if not (isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], int) and isinstance(reply[2], int)):
        return None
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("value", format_reply(reply[0]))
    table.add_row("version", Text(str(reply[1]), style="cyan"))
    table.add_row("revision", Text(str(reply[2]), style="cyan"))
    return table


def _is_pairs(argv: Sequence[bytes], reply: Reply) -> bool:
    return (
        isinstance(reply, list) and len(reply) % 2 == 0
        and not any(a.upper() == b"KEYSONLY" for a in argv[2:])
        and all(isinstance(item, bytes) for item in reply)
    )


def _continue_range(argv: Sequence[bytes], last: bytes, limit: bytes) -> list[bytes] | None:
    """The RANGE that picks up after `last`, for a reply that filled its LIMIT."""
    if argv[0].upper() == b"RANGE" and len(argv) >= 3:
        return [b"RANGE", b"(" + last, argv[2], b"LIMIT", limit]
    if argv[0].upper() == b"PREFIX" and len(argv) >= 2:
        end = prefix_end(argv[1])
        return [b"RANGE", b"(" + last, b"+" if end is None else b"(" + end, b"LIMIT", limit]
    return None


def _render_pairs(argv: Sequence[bytes], reply: Reply) -> RenderableType | None:
    if not _is_pairs(argv, reply) or not reply:
        return None
    assert isinstance(reply, list)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("key", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    pairs = [(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]
    for key, value in pairs:
        assert isinstance(key, bytes) and isinstance(value, bytes)
        table.add_row(escape_bulk(key), escape_bulk(value))
    count = len(pairs)
    note = Text(f"{count} key{'s' if count != 1 else ''}", style="dim")
    limit = _option(argv, b"LIMIT")
    if limit is not None and limit.isdigit() and int(limit) == count:
        last = pairs[-1][0]
        assert isinstance(last, bytes)
        again = _continue_range(argv, last, limit)
        if again is not None:
            note.append(" · LIMIT reached; the next page: ", style="dim")
            note.append(_words(again), style="bold")
    return Group(table, note)


def _duration(ms: int) -> str:
    if ms < 10_000:
        return f"{ms / 1000:.1f} s" if ms % 1000 else f"{ms // 1000} s"
    seconds = ms // 1000
    if seconds < 120:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _render_ttl(name: str, reply: Reply) -> RenderableType | None:
    if not isinstance(reply, int) or isinstance(reply, bool):
        return None
    if reply == -1:
        meaning = "the key has no deadline (it never expires)"
    elif reply == -2:
        meaning = "no such key (or it has expired)"
    elif reply >= 0:
        meaning = _duration(reply * 1000 if name == "TTL" else reply) + " left"
    else:
        return None
    return Text.assemble(format_reply(reply), ("  " + meaning, "dim"))


def render_exec(reply: Reply, queued: Queued = ()) -> RenderableType:
    """EXEC's reply: the nil array (a WATCHed key changed), or each reply under the
    command that produced it (when `queued` lines up with the array)."""
    if reply is None:
        return Text.assemble(("(nil)", "dim"), ("  a WATCHed key changed: nothing was written", "bold yellow"))
    if not isinstance(reply, list):
        return format_reply(reply)
    if not reply:
        return Text.assemble(("(empty array)", "dim"), ("  nothing was queued", "dim"))
    if len(queued) != len(reply):
        return format_reply(reply)
    width = len(str(len(reply)))
    parts: list[RenderableType] = []
    for i, (argv, item) in enumerate(zip(queued, reply), 1):
        parts.append(Text.assemble((f"{i:>{width}}) ", "dim"), (_words(argv), "dim")))
        parts.append(Padding(render_reply(argv, item), (0, 0, 0, width + 2), expand=False))
    return Group(*parts)


def render_reply(argv: Sequence[bytes], reply: Reply, queued: Queued = ()) -> RenderableType:
    """The rich rendering of `reply` to the command `argv` (`queued`: for EXEC, the
    commands its array answers)."""
    name = command_name(argv)
    special: RenderableType | None = None
    if isinstance(reply, RespError):
        return format_reply(reply)
    if name == "EXEC":
        return render_exec(reply, queued)
    if name == "SCAN":
        special = _render_scan(argv, reply)
    elif name == "GETV":
        special = _render_getv(reply)
    elif name in ("RANGE", "PREFIX"):
        special = _render_pairs(argv, reply)
    elif name in ("TTL", "PTTL"):
        special = _render_ttl(name, reply)
    if special is not None:
        return special
    text = reply_text(reply)
    if name in ("INFO", "CLUSTER INFO") and text is not None:
        table = info_table(text, title=name)
        if table is not None:
            return table
    if name in ("CLUSTER NODES", "MEMBER LIST"):
        rows = members_from_reply(reply)
        if rows:
            return members_table(rows, title=name)
    if name.endswith(" HELP") and isinstance(reply, list):
        return Text("\n".join(reply_text(r) or "" for r in reply))
    return format_reply(reply)


# --------------------------------------------------------------------------- help


def help_overview() -> RenderableType:
    """Every command by group, with its one-line summary."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("command", style="bold cyan", no_wrap=True)
    table.add_column("summary")
    groups: dict[str, list[CommandSpec | MetaCommand]] = {g: [] for g in GROUPS}
    spec: CommandSpec | MetaCommand
    for spec in COMMANDS.values():
        if spec.subcommands:
            groups.setdefault(spec.group, []).extend(spec.subcommands)
        else:
            groups.setdefault(spec.group, []).append(spec)
    groups["shell"] = [m for n, m in META_COMMANDS.items() if n not in COMMANDS]
    descriptions = dict(GROUPS)
    descriptions["shell"] = "answered by the shell itself"
    for group, specs in groups.items():
        if not specs:
            continue
        table.add_row(Text(group.upper(), style="bold magenta"), Text(descriptions.get(group, ""), style="dim"))
        for spec in specs:
            syntax = spec.syntax
            table.add_row(Text(f"  {syntax}"), Text(spec.summary))
        table.add_row("", "")
    footer = Text("HELP <command> shows a command with an example. Tab completes; "
                  "Ctrl-R searches history.", style="dim")
    return Group(table, footer)


def help_command(spec: CommandSpec | MetaCommand) -> RenderableType:
    """One command: syntax, description, example (with its reply), sub-commands."""
    parts: list[RenderableType] = []
    head = Text(spec.syntax, style="bold cyan")
    if spec.dangerous:
        head.append("   (asks for confirmation)", style="bold red")
    parts.append(head)
    parts.append(Text("  " + spec.summary))
    group = spec.group
    parts.append(Text(f"  group: {group}", style="dim"))
    if spec.name in STREAM_COMMANDS:
        parts.append(Text("  in this shell: shown live, on a connection of its own, until Ctrl-C (or q); "
                          "then how to resume", style="dim"))
    if spec.subcommands:
        parts.append(Text(""))
        for sub in spec.subcommands:
            parts.append(Text.assemble(("  " + sub.syntax, "cyan"), ("  " + sub.summary, "")))
    parts.append(Text(""))
    parts.append(Text.assemble(("  example: ", "dim"), (spec.example, "bold")))
    example_reply = getattr(spec, "example_reply", "")
    if example_reply:
        for i, line in enumerate(str(example_reply).splitlines()):
            parts.append(Text.assemble(("  reply:   " if i == 0 else "           ", "dim"), line))
    return Group(*parts)


# --------------------------------------------------------------------------- raw and JSON


def raw_text(reply: Reply) -> str:
    """redis-cli ``--raw``: what a script reads from a pipe (no trailing newline)."""
    if reply is None:
        return ""
    if isinstance(reply, RespError):
        return reply.text
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "surrogateescape")
    if isinstance(reply, (str, int)):
        return str(reply)
    if isinstance(reply, list):
        return "\n".join(raw_text(item) for item in reply)
    if isinstance(reply, dict):
        return "\n".join(f"{raw_text(k)}\n{raw_text(v)}" for k, v in reply.items())
    return str(reply)


def json_reply(argv: Sequence[bytes], reply: Reply, queued: Queued = ()) -> Any:
    """The ``--json`` value of `reply` to `argv`: labelled objects for the replies whose
    positions mean something (see the module docstring), else `json_value`."""
    name = command_name(argv)
    if isinstance(reply, RespError):
        return json_value(reply)
    if name == "EXEC" and isinstance(reply, list) and len(queued) == len(reply):
        return [json_reply(q, item) for q, item in zip(queued, reply)]
    if name == "SCAN" and (shape := _scan_shape(reply)) is not None:
        return {"cursor": shape[0].decode("ascii", "replace"), "keys": json_value(shape[1])}
    if name == "GETV" and isinstance(reply, list) and len(reply) == 3:
        return {"value": json_value(reply[0]), "version": json_value(reply[1]), "revision": json_value(reply[2])}
    if name in ("RANGE", "PREFIX") and _is_pairs(argv, reply):
        assert isinstance(reply, list)
        return [{"key": json_value(reply[i]), "value": json_value(reply[i + 1])} for i in range(0, len(reply), 2)]
    return json_value(reply)


def json_value(reply: Reply) -> Any:
    """A JSON-ready value: bulk strings as text (``{"base64": …}`` when not UTF-8), nil as
    null, errors as ``{"error": "ERR …"}``, lists and maps kept."""
    if reply is None or isinstance(reply, (int, str)):
        return reply
    if isinstance(reply, RespError):
        return {"error": reply.text}
    if isinstance(reply, bytes):
        try:
            return reply.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(reply).decode("ascii")}
    if isinstance(reply, list):
        return [json_value(item) for item in reply]
    if isinstance(reply, dict):
        return {str(raw_text(k)): json_value(v) for k, v in reply.items()}
    return str(reply)


# --------------------------------------------------------------------------- paging


class _CommandPager(Pager):
    """``$AEGIS_PAGER``, ``$PAGER`` or ``less -R``, fed through a pipe; if the pager cannot
    start, the text is printed as it is."""

    def _command(self) -> str:
        return os.environ.get("AEGIS_PAGER") or os.environ.get("PAGER") or "less -R"

    def show(self, content: str) -> None:
        env = dict(os.environ)
        env.setdefault("LESS", "-R")
        try:
            proc = subprocess.Popen(self._command(), shell=True, stdin=subprocess.PIPE, env=env)
        except OSError:
            sys.stdout.write(content)
            return
        assert proc.stdin is not None
        try:
            with proc.stdin as pipe:
                pipe.write(content.encode("utf-8", "replace"))
        except (OSError, KeyboardInterrupt):
            pass  # the user quit the pager early
        while True:
            try:
                proc.wait()
                return
            except KeyboardInterrupt:
                continue  # the pager owns the terminal until it exits


def print_paged(console: Console, renderable: RenderableType, *, pager: bool = True) -> None:
    """Print; through the pager when taller than the terminal (and paging is on)."""
    if pager and console.is_terminal:
        lines = console.render_lines(renderable, console.options, pad=False)
        if len(lines) > max(1, console.height - 2):
            with console.pager(pager=_CommandPager(), styles=True):
                console.print(renderable)
            return
    console.print(renderable)
