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
    assert complete("GE") == ["GET", "GETSET", "GETDEL", "GETV"]  # table order
    assert complete("ge") == ["get", "getset", "getdel", "getv"]
    assert set(complete("IN")) == {"INCR", "INCRBY", "INFO"}
    assert "DASHBOARD" in complete("")
    assert complete("dash") == ["dashboard"]
    assert complete("WAT") == ["WATCH"]  # Redis's WATCH, a server command
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


def test_set_options_once_each_and_not_their_alternatives() -> None:
    assert complete("SET k v ") == ["NX", "XX", "GET", "EX", "PX", "EXAT", "PXAT", "KEEPTTL"]
    assert complete("set k v nx ") == ["GET", "EX", "PX", "EXAT", "PXAT", "KEEPTTL"]
    assert complete("set k v e") == ["ex", "exat"]
    assert complete("SET k v EX ") == []  # the seconds: nothing to offer
    assert complete("SET k v EX 10 ") == ["NX", "XX", "GET"]
    assert complete("SET k v NX GET PX 5 ") == []


def test_expire_conditions_and_scan_options() -> None:
    assert complete("EXPIRE k 10 ") == ["NX", "XX", "GT", "LT"]
    assert complete("pexpire k 10 g") == ["gt"]
    assert complete("EXPIRE k ") == []  # the seconds
    assert complete("SCAN 0 ") == ["MATCH", "COUNT", "TYPE"]
    assert complete("SCAN 0 COUNT 10 ") == ["MATCH", "TYPE"]
    assert complete("PREFIX user: ") == ["LIMIT", "KEYSONLY"]
    assert complete("RANGE a b KEYSONLY ") == ["LIMIT"]


def test_keys_complete_in_the_new_commands() -> None:
    knowledge = Knowledge()
    knowledge.learn_command([b"MSET", b"a", b"1", b"b", b"2"])  # both keys, not the values
    assert complete("GETV ", knowledge) == ["b", "a"]
    assert complete("WATCH a ", knowledge) == ["b", "a"]
    assert complete("MSET x 1 ", knowledge) == ["b", "a"]
    assert complete("MSET x ", knowledge) == []  # a value
    assert complete("EXPIRE ", knowledge) == ["b", "a"]
    assert complete("CASV a ", knowledge) == []  # the version


def test_keys_listed_by_replies_are_learned() -> None:
    knowledge = Knowledge()
    knowledge.learn_reply([b"SCAN", b"0"], [b"17", [b"user:1", b"user:2"]])
    knowledge.learn_reply([b"KEYS", b"*"], [b"k"])
    knowledge.learn_reply([b"PREFIX", b"p"], [b"p1", b"value-not-a-key", b"p2", b"v"])
    knowledge.learn_reply([b"RANGE", b"-", b"+", b"KEYSONLY"], [b"r1", b"r2"])
    knowledge.learn_reply([b"GET", b"x"], b"not-a-key")
    knowledge.learn_reply([b"SCAN", b"0"], "QUEUED")
    assert set(knowledge.keys.newest_first()) == {"user:1", "user:2", "k", "p1", "p2", "r1", "r2"}
