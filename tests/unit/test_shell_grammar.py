"""shell.grammar, shell.lexer and shell.history's filter: splitting, analysis, validation,
highlighting, the toolbar hint, and which lines never reach the history."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prompt_toolkit.document import Document
from prompt_toolkit.validation import ValidationError

from aegis.commands import COMMANDS
from shell.grammar import (
    META_COMMANDS,
    LineSyntaxError,
    analyze,
    is_sensitive,
    split_line,
    tokenize,
    validate_argv,
)
from shell.lexer import AegisLexer, AegisValidator, line_problem, syntax_hint


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("GET k", [b"GET", b"k"]),
        ("  SET   k   v  ", [b"SET", b"k", b"v"]),
        ('SET k "hello world"', [b"SET", b"k", b"hello world"]),
        ("SET k 'it\\'s'", [b"SET", b"k", b"it's"]),
        ('SET k "a\\nb\\t\\"q\\"\\\\"', [b"SET", b"k", b'a\nb\t"q"\\']),
        ('SET k "\\xff\\x00"', [b"SET", b"k", b"\xff\x00"]),
        ("SET k 'no \\n escape'", [b"SET", b"k", b"no \\n escape"]),
        ("SET k ''", [b"SET", b"k", b""]),
        ("SET clé värde", [b"SET", "clé".encode(), "värde".encode()]),
        ("", []),
    ],
)
def test_split_line(line: str, argv: list[bytes]) -> None:
    assert split_line(line) == argv


@pytest.mark.parametrize("line", ['SET k "open', "SET k 'open", 'SET k "a"b'])
def test_split_line_rejects_unbalanced_quotes(line: str) -> None:
    with pytest.raises(LineSyntaxError):
        split_line(line)


def test_tokenize_tolerates_an_open_quote_and_keeps_positions() -> None:
    tokens = tokenize('SET "my key')
    assert [(t.start, t.end) for t in tokens] == [(0, 3), (4, 11)]
    assert tokens[1].quoted and not tokens[1].closed
    assert tokens[1].value == b"my key"


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=12), max_size=6))
def test_quoted_words_round_trip(words: list[str]) -> None:
    from shell.completer import quote_word

    line = " ".join(quote_word(w) for w in words)
    assert split_line(line) == [w.encode("utf-8") for w in words]


# --------------------------------------------------------------------------- analysis


def test_analyze_finds_subcommand_and_argument_position() -> None:
    a = analyze("MEMBER ADD n4 ")
    assert a.spec is not None and a.spec.name == "MEMBER ADD"
    assert a.arg_start == 2
    assert a.arg_for(1) is not None and a.arg_for(1).name == "address"  # type: ignore[union-attr]
    assert a.arg_for(3) is None


def test_analyze_container_without_subcommand_yet() -> None:
    a = analyze("cluster")
    assert a.spec is COMMANDS["CLUSTER"]
    assert analyze("CLUSTER NODES").spec is COMMANDS["CLUSTER"]  # still typing the sub-command
    assert analyze("CLUSTER NODES ").spec.name == "CLUSTER NODES"  # type: ignore[union-attr]


def test_analyze_meta_and_unknown() -> None:
    assert analyze("help get").meta
    assert analyze("dashboard 2").spec is META_COMMANDS["DASHBOARD"]
    assert analyze("watch k").spec is COMMANDS["WATCH"] and not analyze("watch k").meta
    assert analyze("exit").meta
    assert analyze("FOO bar").unknown
    assert not analyze("FOO").unknown  # may still become a command name


def test_repeating_argument() -> None:
    a = analyze("DEL a b c ")
    assert a.arg_for(7) is not None and a.arg_for(7).name == "key"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("GET", "wrong number of arguments"),
        ("GET a b", "wrong number of arguments"),
        ("INCRBY k ten", "not an integer"),
        ("FOO", "unknown command 'FOO'"),
        ("MEMBER FLY n1", "unknown subcommand"),
        ("MEMBER ADD n4 nowhere", "bad address"),
        ("DASHBOARD soon", "interval in seconds"),
        ("DASHBOARD 0.01", "between"),
        ("CONFIRM maybe", "on or off"),
        ("HELP a b c", "wrong number"),
        ('SET k "x', "unbalanced"),
    ],
)
def test_line_problem(line: str, fragment: str) -> None:
    problem = line_problem(line)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    "line",
    ["GET k", "SET k v", "DEL a b", "INFO", "INFO raft", "CLUSTER NODES", "MEMBER ADD n4 127.0.0.1:7004 LEARNER",
     "LEADER TRANSFER n2", "HELP", "HELP member add", "DASHBOARD", "DASHBOARD 0.5", "CONFIRM off", "exit", "quit",
     "  ", "WATCH k", "WATCH", "MULTI", "EXEC"],
)
def test_valid_lines_pass(line: str) -> None:
    assert line_problem(line) is None


def test_validator_blocks_with_the_reason() -> None:
    with pytest.raises(ValidationError) as info:
        AegisValidator().validate(Document("INCR"))
    assert "wrong number of arguments" in info.value.message
    AegisValidator().validate(Document("INCR k"))


def test_every_catalogue_example_validates() -> None:
    for spec in COMMANDS.values():
        for s in (spec, *spec.subcommands):
            assert validate_argv(split_line(s.example)) is None, s.example


# --------------------------------------------------------------------------- lexer and hint


def _styles(line: str) -> list[tuple[str, str]]:
    get_line = AegisLexer().lex_document(Document(line))
    return [(style, text) for style, text, *_ in get_line(0) if text.strip()]


def test_lexer_colours_by_argument_kind() -> None:
    assert _styles("SET user:1 alice") == [
        ("class:command", "SET"), ("class:key", "user:1"), ("class:value", "alice"),
    ]
    assert _styles("INCRBY k 5") == [("class:command", "INCRBY"), ("class:key", "k"), ("class:number", "5")]
    assert _styles("member add n4 ")[1] == ("class:subcommand", "add")
    assert _styles("LEADER TRANSFER n2")[0] == ("class:command.dangerous", "LEADER")
    assert _styles("help get")[0] == ("class:meta", "help")


def test_lexer_marks_errors_once_a_word_is_finished() -> None:
    assert _styles("INCRBY k x")[-1] == ("class:number", "x")  # still being typed
    assert _styles("INCRBY k x ")[-1] == ("class:error", "x")
    assert _styles("FOO bar")[0] == ("class:error", "FOO")
    assert _styles("GET a b ")[-1] == ("class:error", "b")


def test_lexer_keeps_the_text_intact() -> None:
    line = '  SET  "a b"  c '
    get_line = AegisLexer().lex_document(Document(line))
    assert "".join(text for _style, text, *_ in get_line(0)) == line


def _hint(line: str) -> tuple[str, str]:
    frags = syntax_hint(line)
    current = "".join(t for s, t, *_ in frags if s.endswith("current"))
    return current, "".join(t for _s, t, *_ in frags)


def test_syntax_hint_emphasises_the_argument_under_the_cursor() -> None:
    assert _hint("SET ")[0] == "key"
    assert _hint("SET k")[0] == "key"
    assert _hint("SET k ")[0] == "value"
    assert _hint("MEMBER ADD n4 ")[0] == "address"
    assert "LIST|ADD" in _hint("MEMBER ")[0]
    assert "too many arguments" in _hint("GET a b")[1]
    assert "unknown command" in _hint("FOO x")[1]
    assert "Tab completes" in _hint("")[1]


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("AUTH s3cret", True),
        ("  auth user s3cret", True),
        ("HELLO 3 AUTH default s3cret", True),
        ('AUTH "open quote', True),
        ("HELLO 3", False),
        ("GET auth", False),
        ("SET AUTH x", False),
        ("", False),
    ],
)
def test_is_sensitive(line: str, secret: bool) -> None:
    assert is_sensitive(line) is secret


# --------------------------------------------------------------------------- the data API's shapes


def test_bare_watch_is_answered_by_the_shell() -> None:
    from shell.grammar import shell_refusal

    message = shell_refusal([b"watch"])
    assert message is not None and "DASHBOARD" in message and "WATCH key" in message
    assert "nothing was sent" in message
    assert shell_refusal([b"WATCH", b"k"]) is None and shell_refusal([b"DASHBOARD"]) is None
    assert line_problem("watch") is None  # Enter goes through; the shell prints the pointer
    assert validate_argv([b"WATCH"]) == message  # …and a script gets it as its error
    assert "DASHBOARD" in _hint("WATCH")[1]


def test_options_with_values_are_not_mistaken_for_options() -> None:
    assert _styles("SET k v EX 60 NX") == [
        ("class:command", "SET"), ("class:key", "k"), ("class:value", "v"),
        ("class:keyword", "EX"), ("class:number", "60"), ("class:keyword", "NX"),
    ]
    assert _styles("SET k v EX soon ")[-1] == ("class:error", "soon")
    assert _styles("SET k v FOO ")[-1] == ("class:error", "FOO")
    assert _styles("SCAN 0 MATCH user:* COUNT 10")[2:] == [
        ("class:keyword", "MATCH"), ("class:string", "user:*"), ("class:keyword", "COUNT"), ("class:number", "10"),
    ]
    assert _styles("RANGE [a (b LIMIT 5 KEYSONLY")[3:] == [
        ("class:keyword", "LIMIT"), ("class:number", "5"), ("class:keyword", "KEYSONLY"),
    ]
    assert _styles("EXPIRE k 10 GT") == [
        ("class:command", "EXPIRE"), ("class:key", "k"), ("class:number", "10"), ("class:keyword", "GT"),
    ]
    assert _styles("EXPIRE k 10 SOON ")[-1] == ("class:error", "SOON")
    assert _styles("CASV k 3 new")[2:] == [("class:number", "3"), ("class:value", "new")]


def test_repeated_groups_alternate() -> None:
    assert [s for s, _ in _styles("MSET a 1 b 2 c")[1:]] == [
        "class:key", "class:value", "class:key", "class:value", "class:key",
    ]
    assert [s for s, _ in _styles("WATCH a b c")] == ["class:command", "class:key", "class:key", "class:key"]


def test_syntax_hint_for_options() -> None:
    everything = "[NX|XX][GET][EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]"
    assert _hint("SET k v ")[0] == everything
    assert _hint("SET k v NX ")[0] == "[GET][EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]"
    assert _hint("SET k v E")[0] == "[EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]"
    assert _hint("SET k v EX ")[0] == "[EX seconds|PX ms|EXAT unix-s|PXAT unix-ms|KEEPTTL]"
    assert _hint("SCAN 0 MATCH ")[0] == "[MATCH pattern]"
    assert _hint("SCAN 0 ")[0] == "[MATCH pattern][COUNT count][TYPE type]"
    assert _hint("EXPIRE k 10 ")[0] == "[NX|XX|GT|LT]"
    assert _hint("EXPIRE k ")[0] == "seconds"
    assert _hint("GETV ")[0] == "key"
    assert "too many arguments" in _hint("GETV a b")[1]
    assert "too many arguments" in _hint("EXPIRE k 1 NX XX")[1]


@pytest.mark.parametrize(
    "line",
    ["SET k v NX GET EX 10", "SET k v KEEPTTL", "SETEX k 5 v", "MSET a 1 b 2", "GETV k", "CASV k 0 v",
     "EXPIRE k 10 NX", "TTL k", "SCAN 0 MATCH a* COUNT 5", "KEYS a*", "DBSIZE", "RANGE - + LIMIT 3",
     "PREFIX user: KEYSONLY", "MULTI", "EXEC", "DISCARD", "WATCH a b", "UNWATCH"],
)
def test_new_commands_validate(line: str) -> None:
    assert line_problem(line) is None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("SET k v EX", "syntax error"), ("SET k v NX XX", "syntax error"), ("EXPIRE k 10 NX XX", "wrong number"),
     ("SCAN x", "invalid cursor"), ("MSET a", "wrong number"), ("GETV", "wrong number")],
)
def test_new_commands_refused_before_sending(line: str, fragment: str) -> None:
    problem = line_problem(line)
    assert problem is not None and fragment in problem
