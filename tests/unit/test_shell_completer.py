"""shell.completer: commands, sub-commands, keywords and names seen in the session."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from shell.completer import AegisCompleter, Knowledge, quote_word


def complete(line: str, knowledge: Knowledge | None = None) -> list[str]:
    completer = AegisCompleter(knowledge or Knowledge())
    doc = Document(line, len(line))
    return [c.text for c in completer.get_completions(doc, CompleteEvent(completion_requested=True))]


def apply(line: str, knowledge: Knowledge) -> str:
    """The line after taking the first completion (as Tab would)."""
    completer = AegisCompleter(knowledge)
    doc = Document(line, len(line))
    first = next(iter(completer.get_completions(doc, CompleteEvent(completion_requested=True))))
    return line[: len(line) + first.start_position] + first.text


def test_commands_by_prefix_in_the_users_case() -> None:
    assert complete("GE") == ["GET"]
    assert complete("ge") == ["get"]
    assert set(complete("IN")) == {"INCR", "INCRBY", "INFO"}
    assert "WATCH" in complete("")
    assert "HELP" in complete("he".upper())


def test_subcommands() -> None:
    assert set(complete("MEMBER ")) == {"LIST", "ADD", "REMOVE", "PROMOTE", "HELP"}
    assert complete("cluster n") == ["nodes"]
    assert complete("LEADER T") == ["TRANSFER"]


def test_keyword_choices() -> None:
    assert "raft" in complete("INFO r")
    assert complete("MEMBER ADD n4 127.0.0.1:7004 L") == ["LEARNER"]
    assert complete("CONFIRM o") == ["on", "off"]


def test_keys_come_only_from_what_the_session_saw() -> None:
    knowledge = Knowledge()
    assert complete("GET ", knowledge) == []
    knowledge.learn_command([b"SET", b"user:1", b"alice"])
    knowledge.learn_command([b"SET", b"user:2", b"bob"])
    knowledge.learn_command([b"INCR", b"visits"])
    assert complete("GET user:", knowledge) == ["user:2", "user:1"]  # newest first
    assert complete("DEL visits user:1 ", knowledge) == ["visits", "user:2", "user:1"]
    assert "alice" not in complete("GET ", knowledge)  # values are not keys
    assert complete("SET user:1 ", knowledge) == []  # a value, not a key


def test_keys_with_spaces_complete_quoted() -> None:
    knowledge = Knowledge()
    knowledge.learn_command([b"SET", b"my key", b"v"])
    assert complete("GET my", knowledge) == ['"my key"']
    assert apply("GET my", knowledge) == 'GET "my key"'


def test_node_ids_and_addresses_from_status_replies() -> None:
    knowledge = Knowledge()
    knowledge.learn_node("n2", "127.0.0.1:7002")
    knowledge.learn_node("n3", "127.0.0.1:7003")
    assert complete("LEADER TRANSFER ", knowledge) == ["n3", "n2"]
    assert complete("member remove n2", knowledge) == ["n2"]
    assert complete("CONNECT 127", knowledge) == ["127.0.0.1:7003", "127.0.0.1:7002"]


def test_help_completes_commands_and_subcommands() -> None:
    assert complete("HELP CL") == ["CLUSTER", "CLIENT", "CLEAR"]
    assert complete("help member a") == ["add"]


def test_nothing_past_the_last_argument() -> None:
    knowledge = Knowledge()
    knowledge.learn_command([b"GET", b"k"])
    assert complete("GET k ", knowledge) == []
    assert complete("NOSUCH ", knowledge) == []


def test_knowledge_is_bounded_and_recency_ordered() -> None:
    knowledge = Knowledge(max_keys=3)
    for key in ("a", "b", "c", "a", "d"):
        knowledge.learn_command([b"GET", key.encode()])
    assert knowledge.keys.newest_first() == ["d", "a", "c"]


def test_quote_word() -> None:
    assert quote_word("plain") == "plain"
    assert quote_word("two words") == '"two words"'
    assert quote_word('say "hi"') == '"say \\"hi\\""'
    assert quote_word("") == '""'
