"""The shell's command grammar: how a typed line splits into words, and what each word is.

Theory of operation
-------------------
Everything the shell knows about commands comes from `aegis.commands.COMMANDS`, the same
table the server validates with, plus a handful of *meta-commands* that the shell answers
itself (``HELP``, ``DASHBOARD``, ``CONFIRM``, ``CONNECT``, ``EXIT``). A meta-command never
takes a name the server uses: ``WATCH`` is Redis's (keys for the next EXEC), so the live
dashboard is ``DASHBOARD``, and a bare ``WATCH`` is answered by the shell with a pointer to
both (`shell_refusal`). Completion, highlighting, the toolbar and validation all start from
`analyze(text)`, which never raises: it tolerates half-typed input (an open quote, a missing
argument) and reports what it found.

Which catalogue argument a word is (`Analysis.arg_at`) also reads the command's syntax line
for two shapes the argument list alone does not tell: options that take a value
(``[EX seconds|PX ms]``, ``[MATCH pattern]``: the word after ``EX`` is the seconds, not
another option) and repeated groups (``MSET key value [key value ...]``).

Words are split the way redis-cli splits them: whitespace separates; ``"…"`` allows the
escapes ``\\n \\r \\t \\\\ \\" \\xHH``; ``'…'`` is literal except ``\\'``. A closing quote must be
followed by a space or the end of the line. `split_line` turns a finished line into the
argv that is sent (bytes, so ``\\xff`` reaches the server as one byte).

This module does no I/O and imports no UI library.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aegis.commands import COMMANDS, Arg, ArgKind, CommandSpec, ErrorReply, parse_command

__all__ = [
    "Token",
    "Analysis",
    "MetaCommand",
    "META_COMMANDS",
    "STREAM_COMMANDS",
    "LineSyntaxError",
    "tokenize",
    "split_line",
    "quote_word",
    "analyze",
    "validate_argv",
    "shell_refusal",
    "is_sensitive",
    "all_command_names",
    "syntax_groups",
    "option_groups",
    "option_values",
    "argument_roles",
]


class LineSyntaxError(ValueError):
    """The line cannot be split: an unbalanced quote or a bad escape."""


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a line: its decoded value and where it sits in the text."""

    value: bytes
    start: int
    end: int  # exclusive
    quoted: bool = False
    closed: bool = True  # False for a quote still open at the end of the line

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", "replace")


_ESCAPES: Final = {"n": b"\n", "r": b"\r", "t": b"\t", "b": b"\b", "a": b"\a", "\\": b"\\", '"': b'"'}
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens without ever failing (an open quote runs to the end)."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        out = bytearray()
        quoted = False
        closed = True
        if text[i] in "\"'":
            quote = text[i]
            quoted = True
            closed = False
            i += 1
            while i < n:
                c = text[i]
                if c == quote:
                    closed = True
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if quote == '"':
                        if nxt == "x" and i + 3 < n and text[i + 2] in _HEX and text[i + 3] in _HEX:
                            out.append(int(text[i + 2 : i + 4], 16))
                            i += 4
                            continue
                        if nxt in _ESCAPES:
                            out += _ESCAPES[nxt]
                            i += 2
                            continue
                    elif nxt == "'":
                        out += b"'"
                        i += 2
                        continue
                out += c.encode("utf-8", "surrogateescape")
                i += 1
            # A closing quote glued to more text ("a"b) is a syntax error for split_line (as
            # in redis-cli); for the tokenizer the rest of the word joins the token.
            while i < n and not text[i].isspace():
                out += text[i].encode("utf-8", "surrogateescape")
                closed = False
                i += 1
        else:
            while i < n and not text[i].isspace():
                out += text[i].encode("utf-8", "surrogateescape")
                i += 1
        tokens.append(Token(bytes(out), start, i, quoted, closed))
    return tokens


def quote_word(word: str) -> str:
    """`word` as it must be typed to come back from `split_line` as one argument (the
    inverse of the splitting; used for completions, one-shot commands and hints)."""
    if word and not any(c.isspace() or c in "\"'\\" for c in word) and word.isprintable():
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def split_line(text: str) -> list[bytes]:
    """The argv of a finished line; `LineSyntaxError` for an unbalanced quote."""
    tokens = tokenize(text)
    for token in tokens:
        if token.quoted and not token.closed:
            raise LineSyntaxError(
                f"unbalanced quotes in the argument at column {token.start + 1} "
                "(a closing quote must end the word)"
            )
    return [token.value for token in tokens]


# --------------------------------------------------------------------------- meta-commands


@dataclass(frozen=True, slots=True)
class MetaCommand:
    """A command the shell answers itself; shaped like a `CommandSpec` for help and hints."""

    name: str
    summary: str
    syntax: str
    example: str
    args: tuple[Arg, ...] = ()
    min_args: int = 0
    max_args: int = 0
    group: str = "shell"
    dangerous: bool = False
    subcommands: tuple[CommandSpec, ...] = ()

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name,)


def _all_names() -> tuple[str, ...]:
    names: list[str] = []
    for spec in COMMANDS.values():
        names.append(spec.name)
    return tuple(names)


META_COMMANDS: Final[Mapping[str, MetaCommand]] = {
    m.name: m
    for m in (
        MetaCommand(
            "HELP", "Describe a command with an example, or list every command.",
            "HELP [command [subcommand]]", "HELP MEMBER ADD",
            (
                Arg("command", ArgKind.KEYWORD, optional=True),
                Arg("subcommand", ArgKind.KEYWORD, optional=True),
            ),
            0,
            2,
        ),
        MetaCommand(
            "DASHBOARD", "Full-screen live cluster dashboard; Ctrl-C (or q) returns to the prompt.",
            "DASHBOARD [interval-seconds]", "DASHBOARD 0.5",
            (Arg("interval", ArgKind.STRING, optional=True),), 0, 1,
        ),
        MetaCommand(
            "CONFIRM", "Ask before dangerous commands (MEMBER REMOVE, LEADER TRANSFER), or not.",
            "CONFIRM [on|off]", "CONFIRM off",
            (Arg("mode", ArgKind.KEYWORD, optional=True, choices=("on", "off")),), 0, 1,
        ),
        MetaCommand(
            "CONNECT", "Connect to another node (the cluster's other members stay as fallbacks).",
            "CONNECT host:port", "CONNECT 127.0.0.1:7002",
            (Arg("address", ArgKind.ADDRESS),), 1, 1,
        ),
        MetaCommand(
            "CLEAR", "Clear the screen.", "CLEAR", "CLEAR",
        ),
        MetaCommand(
            "EXIT", "Leave the shell (so does Ctrl-D).", "EXIT", "EXIT",
        ),
    )
}

#: Words that leave the shell (QUIT is a server command, but in the shell it means this).
EXIT_WORDS: Final = frozenset({"EXIT", "QUIT"})

#: Commands after which a connection only receives: the shell follows them live on a
#: connection of their own (see `shell.stream`).
STREAM_COMMANDS: Final = frozenset({"CHANGES", "SUBSCRIBE", "PSUBSCRIBE"})

BARE_WATCH: Final = (
    "WATCH needs keys: WATCH key [key ...] makes the next EXEC fail if one of them changes "
    "(nothing was sent). The live dashboard is DASHBOARD [interval] now."
)


def shell_refusal(argv: Sequence[bytes]) -> str | None:
    """A line the shell answers with an error itself, sending nothing: a bare ``WATCH``,
    which was the dashboard's name before it became Redis's WATCH."""
    if len(argv) == 1 and argv[0].upper() == b"WATCH":
        return BARE_WATCH
    return None


def all_command_names() -> tuple[str, ...]:
    """Every top-level word the shell accepts, server commands first."""
    return _all_names() + tuple(n for n in META_COMMANDS if n not in COMMANDS)


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Analysis:
    """What a (possibly half-typed) line is.

    `spec` is the deepest known spec (the sub-command when one is typed), or a
    `MetaCommand`; `arg_start` is the index in `tokens` of its first argument.
    """

    tokens: tuple[Token, ...]
    spec: CommandSpec | MetaCommand | None
    arg_start: int
    trailing_space: bool
    meta: bool = False
    unknown: bool = False  # the first word is not a command
    problems: tuple[str, ...] = field(default=())

    @property
    def command_words(self) -> int:
        return self.arg_start

    def arg_for(self, index: int) -> Arg | None:
        """The catalogue argument at position `index` (0 = first argument), if any; by
        position alone (see `arg_at` for what the words typed before it change)."""
        if self.spec is None:
            return None
        args = self.spec.args
        if not args:
            return None
        if index < len(args):
            return args[index]
        last = args[-1]
        return last if last.multiple else None

    def words(self, upto: int) -> list[str]:
        """The argument words before token `upto` ("" for positions not typed yet)."""
        typed = [t.text for t in self.tokens[self.arg_start : upto]]
        return typed + [""] * max(0, upto - self.arg_start - len(typed))

    def arg_at(self, token_index: int) -> Arg | None:
        """What the token at `token_index` (or the word about to be typed there) is: the
        argument by position, or an option's value after an option that takes one."""
        if self.spec is None or token_index < self.arg_start:
            return None
        return argument_roles(self.spec, self.words(token_index + 1))[-1]

    def used_options(self, token_index: int) -> frozenset[str]:
        """The option keywords typed before `token_index` (their values excluded)."""
        if self.spec is None or token_index <= self.arg_start:
            return frozenset()
        words = self.words(token_index)
        roles = argument_roles(self.spec, words)
        return frozenset(
            w.upper() for w, arg in zip(words, roles)
            if arg is not None and arg.kind is ArgKind.KEYWORD and arg.multiple
        )


# --------------------------------------------------------------------------- syntax shapes

#: Option values that are numbers (the rest are strings: a pattern, a type name).
_NUMBER_PLACEHOLDERS: Final = frozenset({"seconds", "milliseconds", "ms", "unix-s", "unix-ms", "count"})
_OPTION_WORD: Final = re.compile(r"[A-Z][A-Z0-9-]*")


@functools.lru_cache(maxsize=512)
def syntax_groups(syntax: str) -> tuple[str, ...]:
    """A syntax line in words, a bracketed group being one word:
    ``SET key value [NX|XX] [EX seconds|PX ms]`` → ``SET``, ``key``, …, ``[EX seconds|PX ms]``."""
    groups: list[str] = []
    depth = 0
    current = ""
    for ch in syntax:
        if ch.isspace() and depth == 0:
            if current:
                groups.append(current)
            current = ""
            continue
        depth += ch == "["
        depth -= ch == "]" and depth > 0
        current += ch
    if current:
        groups.append(current)
    return tuple(groups)


def _alternatives(group: str) -> list[list[str]]:
    inner = group[1:-1] if group.startswith("[") and group.endswith("]") else group
    return [alt.split() for alt in inner.split("|") if alt.strip()]


@functools.lru_cache(maxsize=512)
def option_groups(syntax: str) -> tuple[frozenset[str], ...]:
    """The option keywords of each bracketed group; one group's options exclude each other
    (``[NX|XX]``), so a keyword used once takes its whole group off the table."""
    out: list[frozenset[str]] = []
    for group in syntax_groups(syntax):
        if not group.startswith("["):
            continue
        words = {alt[0] for alt in _alternatives(group) if alt and _OPTION_WORD.fullmatch(alt[0])}
        if words:
            out.append(frozenset(words))
    return tuple(out)


@functools.lru_cache(maxsize=512)
def option_values(syntax: str) -> Mapping[str, Arg]:
    """Options that take a value, with that value's argument: ``EX`` → ``seconds`` (an
    integer), ``MATCH`` → ``pattern`` (a string)."""
    out: dict[str, Arg] = {}
    for group in syntax_groups(syntax):
        if not group.startswith("["):
            continue
        for alt in _alternatives(group):
            if len(alt) == 2 and _OPTION_WORD.fullmatch(alt[0]) and not _OPTION_WORD.fullmatch(alt[1]):
                kind = ArgKind.INTEGER if alt[1] in _NUMBER_PLACEHOLDERS else ArgKind.STRING
                out[alt[0]] = Arg(alt[1], kind)
    return out


def _repeated(spec: CommandSpec | MetaCommand) -> tuple[Arg, ...]:
    """For ``MSET key value [key value ...]``: the arguments that repeat (key, value)."""
    groups = syntax_groups(spec.syntax)
    if not groups or not spec.args or not spec.args[-1].multiple:
        return ()
    match = re.fullmatch(r"\[(.+) \.\.\.\]", groups[-1])
    if match is None:
        return ()
    names = match.group(1).split()
    by_name = {a.name: a for a in spec.args[:-1]}
    if len(names) < 2 or any(n not in by_name for n in names):
        return ()
    return tuple(by_name[n] for n in names)


def argument_roles(spec: CommandSpec | MetaCommand, words: Sequence[str]) -> list[Arg | None]:
    """The catalogue argument each of `words` (the arguments after the command words) is:
    by position, except past the fixed arguments, where a repeated group cycles and an
    option that takes a value makes the next word that value. None: one word too many."""
    args = spec.args
    roles: list[Arg | None] = []
    if not args:
        return [None] * len(words)
    last = args[-1]
    fixed = len(args) - 1 if last.multiple else len(args)
    repeat = _repeated(spec)
    values = option_values(spec.syntax) if last.kind is ArgKind.KEYWORD and last.multiple else {}
    pending: Arg | None = None  # the value an option just typed asks for
    for i, word in enumerate(words):
        if i < fixed:
            roles.append(args[i])
        elif not last.multiple:
            roles.append(None)
        elif repeat:
            roles.append(repeat[(i - fixed) % len(repeat)])
        elif pending is not None:
            roles.append(pending)
            pending = None
        else:
            roles.append(last)
            pending = values.get(word.upper())
    return roles


def analyze(text: str) -> Analysis:
    tokens = tuple(tokenize(text))
    trailing = bool(text) and text[-1].isspace()
    if not tokens:
        return Analysis(tokens, None, 0, trailing)
    first = tokens[0].text.upper()
    if first in META_COMMANDS and first not in COMMANDS:
        return Analysis(tokens, META_COMMANDS[first], 1, trailing, meta=True)
    if first in EXIT_WORDS:
        return Analysis(tokens, META_COMMANDS["EXIT"], 1, trailing, meta=True)
    spec = COMMANDS.get(first)
    if spec is None:
        return Analysis(tokens, None, 1, trailing, unknown=len(tokens) > 1 or trailing)
    if spec.subcommands and len(tokens) >= 2 and (len(tokens) > 2 or trailing):
        sub = spec.subcommand(tokens[1].text)
        if sub is not None:
            return Analysis(tokens, sub, 2, trailing)
        return Analysis(tokens, spec, 1, trailing)
    return Analysis(tokens, spec, 1, trailing)


def validate_argv(argv: list[bytes]) -> str | None:
    """Why the server would reject `argv` outright (its own `parse_command`), or None.

    Meta-commands are checked against their own arity.
    """
    if not argv:
        return None
    name = argv[0].decode("utf-8", "replace").upper()
    if name in EXIT_WORDS:
        return None
    meta = META_COMMANDS.get(name)
    if meta is not None and name not in COMMANDS:
        count = len(argv) - 1
        if not meta.min_args <= count <= meta.max_args:
            return f"wrong number of arguments: {meta.syntax}"
        if name == "DASHBOARD" and count == 1:
            try:
                interval = float(argv[1])
            except ValueError:
                return "DASHBOARD wants an interval in seconds, e.g. DASHBOARD 0.5"
            if not 0.1 <= interval <= 60:
                return "DASHBOARD interval must be between 0.1 and 60 seconds"
        if name == "CONFIRM" and count == 1 and argv[1].lower() not in (b"on", b"off"):
            return "CONFIRM takes on or off"
        return None
    if name not in COMMANDS:
        return f"unknown command '{argv[0].decode('utf-8', 'replace')}' (HELP lists the commands)"
    refusal = shell_refusal(argv)
    if refusal is not None:
        return refusal
    request = parse_command(argv)
    if isinstance(request, ErrorReply):
        text = request.text
        return text[4:] if text.startswith("ERR ") else text
    return None


def is_sensitive(text: str) -> bool:
    """Whether a line carries a secret and must never reach the history file.

    AUTH, and HELLO with an AUTH option; checked on the words, so case and spacing do not
    matter, and a line that does not even split is treated as sensitive if it starts so.
    """
    words = [t.text.upper() for t in tokenize(text)]
    if not words:
        return False
    if words[0] == "AUTH":
        return True
    return words[0] == "HELLO" and "AUTH" in words[1:]
