"""Highlighting, validation and the toolbar's syntax hint, all from `grammar.analyze`.

Theory of operation
-------------------
Three views of the line being typed, each recomputed from the text on every keystroke
(lines are short, the analysis is linear):

* `AegisLexer` colours each word by what it is: a command, a sub-command, a key, a value,
  an integer, a keyword, a node id; a word that cannot be right (an unknown command, a
  non-integer where an integer goes, an argument too many, an open quote) is marked
  ``class:error`` as soon as it is typed.
* `syntax_hint` gives the toolbar's first line: the syntax of the command being typed with
  the argument under the cursor emphasised (for options, the bracketed groups the word may
  belong to: ``[EX seconds|PX ms|…]`` while typing ``SET k v EX``), and what is wrong with
  the line so far.
* `AegisValidator` runs when Enter is pressed: a line the server would reject anyway (the
  check is the server's own `aegis.commands.parse_command`) stays in the buffer with the
  reason shown, so nothing is sent. Checking only on Enter keeps a half-typed ``GET`` from
  flashing "wrong number of arguments" at every keystroke; the lexer and the toolbar give
  the live feedback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.lexers import Lexer
from prompt_toolkit.styles import Style
from prompt_toolkit.validation import ValidationError, Validator

from aegis.commands import Arg, ArgKind

from .grammar import (
    Analysis,
    LineSyntaxError,
    MetaCommand,
    analyze,
    option_groups,
    option_values,
    shell_refusal,
    split_line,
    syntax_groups,
    validate_argv,
)

__all__ = ["AegisLexer", "AegisValidator", "syntax_hint", "SHELL_STYLE", "line_problem"]

_INT_RE: Final = re.compile(r"-?[0-9]+")

SHELL_STYLE: Final = Style.from_dict(
    {
        "command": "bold #5fafff",
        "command.dangerous": "bold #ff5f5f",
        "subcommand": "#5fafff",
        "meta": "bold #af87ff",
        "key": "#ffd75f",
        "value": "#87d787",
        "number": "#d7875f",
        "keyword": "#5fd7d7",
        "node": "#d787d7",
        "string": "#87d787",
        "error": "bg:#5f0000 #ffffff",
        "prompt.address": "bold",
        "prompt.role.leader": "bold #87d787",
        "prompt.role.follower": "#5fafff",
        "prompt.role.other": "#ffaf00",
        "prompt.down": "bold #ff5f5f",
        "prompt.tx": "bold #ffaf00",
        "bottom-toolbar": "noreverse bg:#262626 #bcbcbc",
        "bottom-toolbar.syntax": "#d0d0d0",
        "bottom-toolbar.current": "bold underline #ffd75f",
        "bottom-toolbar.problem": "#ff8787",
        "bottom-toolbar.ok": "#87d787",
        "bottom-toolbar.down": "bold #ff5f5f",
        "bottom-toolbar.dim": "#808080",
        "bottom-toolbar.tx": "bold #ffaf00",
        "auto-suggestion": "#6c6c6c",
    }
)

_KIND_STYLE: Final = {
    ArgKind.KEY: "class:key",
    ArgKind.VALUE: "class:value",
    ArgKind.INTEGER: "class:number",
    ArgKind.NODE_ID: "class:node",
    ArgKind.ADDRESS: "class:node",
    ArgKind.TOKEN: "class:value",
    ArgKind.KEYWORD: "class:keyword",
    ArgKind.STRING: "class:string",
}


def _arg_ok(arg: Arg, text: str) -> bool:
    if arg.kind is ArgKind.INTEGER:
        return _INT_RE.fullmatch(text) is not None
    if arg.kind is ArgKind.KEYWORD and arg.choices:
        return text.upper() in (c.upper() for c in arg.choices)
    return True


def _fragments(analysis: Analysis, text: str) -> StyleAndTextTuples:
    out: StyleAndTextTuples = []
    pos = 0
    tokens = analysis.tokens
    spec = analysis.spec
    for i, token in enumerate(tokens):
        if token.start > pos:
            out.append(("", text[pos : token.start]))
        word = text[token.start : token.end]
        last_being_typed = i == len(tokens) - 1 and not analysis.trailing_space
        if token.quoted and not token.closed and not last_being_typed:
            style = "class:error"
        elif i == 0:
            if spec is None:
                style = "" if last_being_typed else "class:error"
            elif isinstance(spec, MetaCommand):
                style = "class:meta"
            else:
                style = "class:command.dangerous" if spec.dangerous else "class:command"
        elif i < analysis.arg_start:
            style = "class:subcommand"
        elif spec is None:
            style = ""
        else:
            arg = analysis.arg_at(i)
            if isinstance(spec, MetaCommand) and spec.name == "HELP":
                style = "class:keyword"
            elif arg is None:
                # Containers (CLUSTER FOO) and meta-commands get no argument styling; a word
                # past the last argument of a known command is an error.
                has_subs = bool(getattr(spec, "subcommands", ()))
                style = "" if has_subs or last_being_typed else "class:error"
            elif not last_being_typed and not _arg_ok(arg, token.text):
                style = "class:error"
            else:
                style = _KIND_STYLE.get(arg.kind, "")
        out.append((style, word))
        pos = token.end
    if pos < len(text):
        out.append(("", text[pos:]))
    return out


class AegisLexer(Lexer):
    """Colours a line by the grammar (one logical line; every line is lexed alone)."""

    def lex_document(self, document: Document) -> Callable[[int], StyleAndTextTuples]:
        lines = document.lines

        def get_line(lineno: int) -> StyleAndTextTuples:
            if lineno >= len(lines):
                return []
            line = lines[lineno]
            return _fragments(analyze(line), line)

        return get_line


def line_problem(text: str) -> str | None:
    """What the server (or the shell) would reject about this finished line, or None.

    A line the shell refuses itself with an explanation (a bare WATCH) passes: Enter then
    prints that explanation, which is easier to read than the toolbar's one line."""
    if not text.strip():
        return None
    try:
        argv = split_line(text)
    except LineSyntaxError as exc:
        return str(exc)
    if shell_refusal(argv) is not None:
        return None
    return validate_argv(argv)


class AegisValidator(Validator):
    """Blocks Enter on a line that would certainly fail, with the reason."""

    def validate(self, document: Document) -> None:
        problem = line_problem(document.text)
        if problem is not None:
            raise ValidationError(cursor_position=len(document.text), message=problem)


def syntax_hint(text: str) -> StyleAndTextTuples:
    """The syntax of the command being typed, the current argument emphasised, then a
    short note when the line looks wrong so far (empty when nothing is typed)."""
    analysis = analyze(text)
    spec = analysis.spec
    if not analysis.tokens:
        return [("class:bottom-toolbar.dim", "Tab completes · HELP [command] · DASHBOARD for the live view · Ctrl-D exits")]
    if spec is None:
        if analysis.unknown:
            return [("class:bottom-toolbar.problem", f"unknown command {analysis.tokens[0].text!r} (HELP lists them)")]
        return [("class:bottom-toolbar.dim", "command")]
    words = syntax_groups(spec.syntax)
    # Which syntax word is under the cursor: command words first, then arguments.
    typing_index = len(analysis.tokens) if analysis.trailing_space else len(analysis.tokens) - 1
    current = _current_groups(analysis, words, typing_index)
    out: StyleAndTextTuples = []
    for i, word in enumerate(words):
        if out:
            out.append(("class:bottom-toolbar.syntax", " "))
        style = "class:bottom-toolbar.current" if i in current else "class:bottom-toolbar.syntax"
        out.append((style, word))
    extra = len(analysis.tokens) - analysis.arg_start - len(spec.args)
    too_many = (
        not getattr(spec, "subcommands", ())
        and not (spec.args and spec.args[-1].multiple)
        and extra > 0
    )
    if too_many:
        out.append(("class:bottom-toolbar.problem", "  ✗ too many arguments"))
    elif spec.name == "WATCH" and len(analysis.tokens) == 1:
        out.append(("class:bottom-toolbar.dim", "  " + spec.summary + " (the live dashboard is DASHBOARD)"))
    else:
        out.append(("class:bottom-toolbar.dim", "  " + spec.summary))
    return out


def _current_groups(analysis: Analysis, words: tuple[str, ...], typing_index: int) -> set[int]:
    """The syntax words to emphasise for the word at `typing_index`: its argument's, or for
    an option (or an option's value) the bracketed groups it can belong to."""
    spec = analysis.spec
    assert spec is not None
    fixed = len(spec.words)
    if typing_index < fixed or not spec.args:
        return set()
    arg_index = typing_index - analysis.arg_start
    last = spec.args[-1]
    if arg_index < len(spec.args) - 1 or (arg_index < len(spec.args) and not last.multiple):
        return {fixed + arg_index}
    if not last.multiple:
        return set()
    first_option = fixed + len(spec.args) - 1
    if last.kind is not ArgKind.KEYWORD or not option_groups(spec.syntax):
        return {first_option}
    # Options: the groups holding the option being typed, or whose value is being typed.
    arg = analysis.arg_at(typing_index)
    if arg is not None and arg is not last:
        previous = analysis.tokens[typing_index - 1].text.upper()
        wanted = {previous} if option_values(spec.syntax).get(previous) == arg else set()
    else:
        typed = "" if typing_index >= len(analysis.tokens) else analysis.tokens[typing_index].text.upper()
        used = analysis.used_options(typing_index)
        taken = set().union(*(g for g in option_groups(spec.syntax) if g & used))
        wanted = {c for c in last.choices if c.startswith(typed) and c not in taken}
    return {
        i for i in range(first_option, len(words))
        if wanted & {alt[0] for alt in (a.split() for a in words[i].strip("[]").split("|")) if alt}
    }
