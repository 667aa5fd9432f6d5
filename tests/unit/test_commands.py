"""aegis.commands: argv → typed request or a definite -ERR, and the command catalogue."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aegis.commands import (
    COMMANDS,
    DEFAULT_LIMITS,
    ERR_NOT_INTEGER,
    GROUPS,
    INFO_SECTIONS,
    ArgKind,
    AuthRequest,
    ClusterRequest,
    CommandLimits,
    CommandSpec,
    ErrorReply,
    ExistsRequest,
    HelloRequest,
    InfoRequest,
    LeaderTransferRequest,
    LocalReply,
    MemberOp,
    MemberRequest,
    ReadRequest,
    WriteRequest,
    allowed_before_auth,
    encode_result,
    lookup,
    parse_command,
)
from aegis.protocol import split_inline
from aegis.state import Command, CommandType, StateMachine


def parse(line: str, limits: CommandLimits = DEFAULT_LIMITS) -> object:
    argv = split_inline(line.encode())
    assert argv is not None
    return parse_command(argv, limits)


def error(line: str, limits: CommandLimits = DEFAULT_LIMITS) -> str:
    result = parse(line, limits)
    assert isinstance(result, ErrorReply), result
    return result.text


def all_specs() -> Iterator[CommandSpec]:
    for spec in COMMANDS.values():
        if spec.subcommands:
            yield from spec.subcommands
        else:
            yield spec


# --------------------------------------------------------------------------- keys


def test_get_set_del_exists() -> None:
    assert parse("GET k") == ReadRequest("k")
    assert parse("get k") == ReadRequest("k")
    assert ReadRequest("k").command == Command.get("k")
    assert parse("SET k v") == WriteRequest(Command.set("k", b"v"))
    assert parse('SET k ""') == WriteRequest(Command.set("k", b""))
    assert parse("DEL a") == WriteRequest(Command.delete("a"))
    assert parse("DEL a b a") == WriteRequest(Command.delete("a", "b", "a"))
    assert parse("EXISTS a b a") == ExistsRequest(("a", "b", "a"))


def test_incr_family() -> None:
    assert parse("INCR n") == WriteRequest(Command.increment("n", 1))
    assert parse("DECR n") == WriteRequest(Command.increment("n", -1))
    assert parse("INCRBY n 10") == WriteRequest(Command.increment("n", 10))
    assert parse("INCRBY n -9223372036854775808") == WriteRequest(
        Command.increment("n", -(2**63))
    )
    assert parse("DECRBY n 5") == WriteRequest(Command.increment("n", -5))
    assert parse("DECRBY n -5") == WriteRequest(Command.increment("n", 5))
    assert error("DECRBY n -9223372036854775808") == "ERR decrement would overflow"


@pytest.mark.parametrize(
    "raw", ["x", "1.5", " 1", "+1", "01", "-0", "", "1_000", "9223372036854775808", "-9223372036854775809"]
)
def test_non_integers_are_rejected_with_redis_wording(raw: str) -> None:
    assert parse_command([b"INCRBY", b"n", raw.encode()]) == ErrorReply(ERR_NOT_INTEGER)
    assert parse_command([b"DECRBY", b"n", raw.encode()]) == ErrorReply(ERR_NOT_INTEGER)


def test_cas() -> None:
    assert parse("CAS k old new") == WriteRequest(Command.compare_and_swap("k", b"old", b"new"))


def test_binary_keys_round_trip_through_surrogateescape() -> None:
    raw = b"\xff\xfe key \x00"
    request = parse_command([b"GET", raw])
    assert isinstance(request, ReadRequest)
    assert request.key.encode("utf-8", "surrogateescape") == raw
    write = parse_command([b"SET", raw, b"\x00\x01"])
    assert isinstance(write, WriteRequest)
    assert write.command.key.encode("utf-8", "surrogateescape") == raw
    assert Command.decode(write.command.encode()) == write.command


def test_set_options_parse_into_one_canonical_op() -> None:
    def op(line: str) -> Command:
        req = parse(line)
        assert isinstance(req, WriteRequest), req
        return req.command

    assert op("SET k v") == Command.set("k", b"v")  # the plain SET keeps its own entry type
    assert op("SET k v nx").args == (b"k", b"v", b"NX", b"", b"", b"0")
    assert op("SET k v XX GET").args == (b"k", b"v", b"XX", b"GET", b"", b"0")
    assert op("SET k v ex 10").args == (b"k", b"v", b"", b"", b"PX", b"10000")
    assert op("SET k v PX 1500 NX").args == (b"k", b"v", b"NX", b"", b"PX", b"1500")
    assert op("SET k v EXAT 2000000000").args[4:] == (b"PXAT", b"2000000000000")
    assert op("SET k v PXAT 5 KEEPTTL".replace(" KEEPTTL", "")).args[4:] == (b"PXAT", b"5")
    assert op("SET k v KEEPTTL GET").args[3:] == (b"GET", b"KEEPTTL", b"0")
    assert error("SET k v bogus") == "ERR syntax error"
    assert error("SET k v NX XX") == "ERR syntax error"
    assert error("SET k v EX 10 PX 5") == "ERR syntax error"
    assert error("SET k v EX 10 KEEPTTL") == "ERR syntax error"
    assert error("SET k v EX") == "ERR syntax error"
    assert error("SET k v EX 0") == "ERR invalid expire time in 'set' command"
    assert error("SET k v PX -5") == "ERR invalid expire time in 'set' command"
    assert error("SET k v EX 9223372036854775807") == "ERR invalid expire time in 'set' command"
    assert error("SET k v EX ten") == "ERR value is not an integer or out of range"


def test_key_value_and_key_count_limits() -> None:
    limits = CommandLimits(max_key_len=4, max_value_len=8, max_keys=2)
    assert parse("GET abcd", limits) == ReadRequest("abcd")
    assert error("GET abcde", limits) == "ERR key is too long (5 bytes; the limit is 4)"
    assert error("SET abcde v", limits) == "ERR key is too long (5 bytes; the limit is 4)"
    assert error("SET k 123456789", limits) == "ERR value is too large (9 bytes; the limit is 8)"
    assert error("CAS k 123456789 x", limits) == "ERR value is too large (9 bytes; the limit is 8)"
    assert error("CAS k x 123456789", limits) == "ERR value is too large (9 bytes; the limit is 8)"
    assert error("DEL a b c", limits) == "ERR too many keys (3; the limit is 2)"
    assert error("EXISTS a b c", limits) == "ERR too many keys (3; the limit is 2)"
    assert error("DEL a abcde", limits) == "ERR key is too long (5 bytes; the limit is 4)"
    with pytest.raises(ValueError):
        CommandLimits(max_keys=0)


# --------------------------------------------------------------------------- cluster


def test_info_and_cluster() -> None:
    assert parse("INFO") == InfoRequest(())
    assert parse("INFO") == InfoRequest()
    assert InfoRequest().section == "default"
    assert parse("INFO Raft CLUSTER") == InfoRequest(("raft", "cluster"))
    assert parse("CLUSTER INFO") == ClusterRequest("info")
    assert parse("cluster nodes") == ClusterRequest("nodes")
    assert error("CLUSTER") == "ERR wrong number of arguments for 'cluster' command"
    assert error("CLUSTER SLOTS") == "ERR unknown subcommand 'SLOTS'. Try CLUSTER HELP."
    assert error("CLUSTER INFO extra") == "ERR wrong number of arguments for 'cluster|info' command"


def test_cluster_help_lists_the_subcommands() -> None:
    reply = parse("CLUSTER HELP")
    assert isinstance(reply, LocalReply)
    assert isinstance(reply.value, list)
    assert "INFO" in reply.value and "NODES" in reply.value and "HELP" in reply.value


def test_member_commands() -> None:
    assert parse("MEMBER LIST") == MemberRequest(MemberOp.LIST)
    assert parse("MEMBER ADD n4 127.0.0.1:7004") == MemberRequest(
        MemberOp.ADD, "n4", "127.0.0.1:7004", False
    )
    for flag in ("LEARNER", "learner", "--learner"):
        assert parse(f"MEMBER ADD n4 host.example:7004 {flag}") == MemberRequest(
            MemberOp.ADD, "n4", "host.example:7004", True
        )
    assert parse("MEMBER ADD n5 [::1]:7005") == MemberRequest(MemberOp.ADD, "n5", "[::1]:7005")
    assert parse("MEMBER REMOVE n4") == MemberRequest(MemberOp.REMOVE, "n4")
    assert parse("MEMBER PROMOTE n4") == MemberRequest(MemberOp.PROMOTE, "n4")
    assert error("MEMBER ADD n4 127.0.0.1:7004 VOTER") == (
        "ERR unknown option 'VOTER' for MEMBER ADD: the only option is LEARNER"
    )
    assert error("MEMBER ADD n4 127.0.0.1:7004 LEARNER x") == (
        "ERR wrong number of arguments for 'member|add' command"
    )
    assert error("MEMBER ADD n4 127.0.0.1") == (
        "ERR bad address '127.0.0.1': expected host:port"
    )
    assert error("MEMBER ADD n4 127.0.0.1:99999") == (
        "ERR bad address '127.0.0.1:99999': port out of range"
    )
    assert error("MEMBER ADD n4 127.0.0.1:0") == (
        "ERR bad address '127.0.0.1:0': port 0 cannot be dialled"
    )
    assert error("MEMBER REMOVE a=b").startswith("ERR invalid node id 'a=b'")
    assert error('MEMBER REMOVE "a b"').startswith("ERR invalid node id 'a b'")
    assert error('MEMBER REMOVE ""').startswith("ERR invalid node id ''")
    assert error("MEMBER REMOVE " + "n" * 129).startswith("ERR invalid node id")


def test_leader_transfer() -> None:
    assert parse("LEADER TRANSFER n2") == LeaderTransferRequest("n2")
    assert error("LEADER TRANSFER") == "ERR wrong number of arguments for 'leader|transfer' command"
    assert error("LEADER ELECT") == "ERR unknown subcommand 'ELECT'. Try LEADER HELP."


# --------------------------------------------------------------------------- connection


def test_auth() -> None:
    assert parse("AUTH s3cret") == AuthRequest(b"s3cret")
    assert parse("AUTH default s3cret") == AuthRequest(b"s3cret", username=b"default")
    assert error("AUTH") == "ERR wrong number of arguments for 'auth' command"
    assert error("AUTH a b c") == "ERR wrong number of arguments for 'auth' command"
    assert allowed_before_auth(b"AUTH")
    assert allowed_before_auth(b"quit")
    assert allowed_before_auth(b"hello")
    assert not allowed_before_auth(b"GET")
    assert not allowed_before_auth(b"PING")
    assert not allowed_before_auth(b"nonsense")


def test_local_replies() -> None:
    assert parse("PING") == LocalReply("PONG")
    ping = parse("PING")
    assert isinstance(ping, LocalReply) and ping.encoded() == b"+PONG\r\n"
    assert parse("PING hi") == LocalReply(b"hi")
    assert parse("ECHO hi") == LocalReply(b"hi")
    assert parse("SELECT 0") == LocalReply("OK")
    assert error("SELECT 1") == "ERR DB index is out of range"
    assert error("SELECT x") == ERR_NOT_INTEGER
    assert parse("QUIT") == LocalReply("OK", close=True)
    assert parse("CLIENT SETNAME shell") == LocalReply("OK")
    assert error('CLIENT SETNAME "a b"') == (
        "ERR Client names cannot contain spaces, newlines or special characters."
    )
    assert parse("CLIENT SETINFO LIB-NAME redis-py") == LocalReply("OK")
    assert parse("CLIENT SETINFO lib-ver 5.0") == LocalReply("OK")
    assert error("CLIENT SETINFO color red") == "ERR Unrecognized option 'color'"
    assert error("CLIENT KILL x") == "ERR unknown subcommand 'KILL'. Try CLIENT HELP."


def test_hello_negotiates_the_protocol() -> None:
    assert parse("HELLO") == HelloRequest()
    assert parse("HELLO 2") == HelloRequest(2)
    assert parse("HELLO 3") == HelloRequest(3)
    assert parse("hello 3 auth default s3cret setname app") == HelloRequest(
        3, AuthRequest(b"s3cret", username=b"default"), b"app"
    )
    assert error("HELLO 1") == "NOPROTO sorry, this protocol version is not supported."
    assert error("HELLO 4") == "NOPROTO sorry, this protocol version is not supported."
    assert error("HELLO x") == "ERR Protocol version is not an integer or out of range"
    assert error("HELLO 3 AUTH onlyuser") == "ERR Syntax error in HELLO option 'AUTH'"
    assert error("HELLO 3 COLOR red") == "ERR Syntax error in HELLO option 'COLOR'"
    assert error('HELLO 3 SETNAME "a b"').startswith("ERR Client names cannot contain")
    assert allowed_before_auth(b"HELLO")


def test_hello_reply_is_a_map_in_resp3_and_pairs_in_resp2() -> None:
    resp3 = HelloRequest(3).encoded()
    assert resp3.startswith(b"%5\r\n$6\r\nserver\r\n$5\r\naegis\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in resp3
    resp2 = HelloRequest(2).encoded()
    assert resp2.startswith(b"*10\r\n") and b"$5\r\nproto\r\n:2\r\n" in resp2
    # A bare HELLO keeps the connection's protocol and says which it is.
    assert b":3\r\n" in HelloRequest().encoded(resp3=True)
    assert b":2\r\n" in HelloRequest().encoded(resp3=False)


def test_command_and_config_for_redis_tools() -> None:
    assert parse("COMMAND DOCS") == LocalReply([])
    assert parse("COMMAND") == LocalReply([])
    assert parse("COMMAND COUNT") == LocalReply(len(COMMANDS))
    listed = parse("COMMAND LIST")
    assert isinstance(listed, LocalReply) and b"get" in listed.value  # type: ignore[operator]
    assert parse("CONFIG GET save") == LocalReply({b"save": b""})
    save = parse("CONFIG GET save")
    assert isinstance(save, LocalReply)
    assert save.encoded() == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"  # what redis-benchmark reads
    assert save.encoded(resp3=True) == b"%1\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert parse("CONFIG GET appendonly") == LocalReply({b"appendonly": b"yes"})
    assert parse("CONFIG GET nosuch") == LocalReply({})
    assert parse("CONFIG GET append* appendonly") == LocalReply(
        {b"appendonly": b"yes", b"appendfsync": b"always"}
    )
    assert error("CONFIG SET save x") == "ERR unknown subcommand 'SET'. Try CONFIG HELP."


# --------------------------------------------------------------------------- errors


def test_unknown_command_uses_redis_wording() -> None:
    assert error("FOO") == "ERR unknown command 'FOO', with args beginning with: "
    assert error("foo a b") == "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
    long = error("FOO " + "x" * 300 + " y")
    assert long == "ERR unknown command 'FOO', with args beginning with: '" + "x" * 128 + "' "
    assert parse_command([]) == ErrorReply("ERR empty command")


def test_every_command_checks_its_arity() -> None:
    for spec in all_specs():
        words = [w.encode() for w in spec.words]
        minimum = abs(spec.arity)
        expected = f"ERR wrong number of arguments for '{spec.fullname}' command"
        if minimum > len(words):
            too_few = words + [b"x"] * (minimum - len(words) - 1)
            assert parse_command(too_few) == ErrorReply(expected), spec.name
        if spec.arity > 0:
            too_many = words + [b"1"] * (spec.arity - len(words) + 1)
            assert parse_command(too_many) == ErrorReply(expected), spec.name
        if spec.max_arity is not None:
            too_many = words + [b"1"] * (spec.max_arity - len(words) + 1)
            assert parse_command(too_many) == ErrorReply(expected), spec.name


def test_every_example_parses_and_the_catalogue_is_complete() -> None:
    for spec in all_specs():
        assert spec.syntax.upper().startswith(spec.name), spec.name
        assert spec.example.upper().startswith(spec.name), spec.name
        assert spec.summary.endswith("."), spec.name
        assert spec.group in GROUPS, spec.name
        assert spec.example_reply, spec.name
        assert spec.handler is not None, spec.name
        assert not isinstance(parse(spec.example), ErrorReply), spec.example
        # A write is never safe to resend, except in a session: that is what sessions are for.
        assert not (spec.write and spec.retry_safe) or spec.name == "SESSION CALL", spec.name
    for spec in COMMANDS.values():
        assert spec.group in GROUPS
        assert spec.name == spec.name.upper()
        for arg in spec.args:
            if arg.kind is ArgKind.KEYWORD:
                assert arg.choices, (spec.name, arg.name)


def test_catalogue_flags() -> None:
    dangerous = {spec.name for spec in all_specs() if spec.dangerous}
    assert dangerous == {"MEMBER REMOVE", "LEADER TRANSFER"}
    writes = {spec.name for spec in all_specs() if spec.write}
    assert {"SET", "DEL", "INCR", "INCRBY", "DECR", "DECRBY", "CAS"} <= writes
    assert {"GET", "EXISTS", "PING", "INFO", "CLUSTER NODES", "MEMBER LIST"} <= {
        spec.name for spec in all_specs() if spec.retry_safe
    }
    assert "raft" in INFO_SECTIONS


def test_lookup() -> None:
    add = lookup("member", "add")
    assert add is not None and add.name == "MEMBER ADD" and add.fullname == "member|add"
    member = lookup("MEMBER")
    assert member is not None and member.subcommands
    assert lookup("member", "nonsense") is member
    assert lookup("get") is COMMANDS["GET"]
    assert lookup("nope") is None
    assert lookup() is None


# --------------------------------------------------------------------------- results


def test_encode_result_against_the_state_machine() -> None:
    sm = StateMachine()
    index = 0

    def run(line: str) -> bytes:
        nonlocal index
        request = parse(line)
        if isinstance(request, ReadRequest):
            command = request.command
            return encode_result(command, sm.get(command.key))
        assert isinstance(request, WriteRequest), request
        index += 1
        result = sm.apply(request.command, index)
        assert result is not None
        return encode_result(request.command, result)

    assert run("GET k") == b"$-1\r\n"
    missing = Command.get("k")
    assert encode_result(missing, sm.get("k"), resp3=True) == b"_\r\n"
    assert run("SET k hello") == b"+OK\r\n"
    assert run("GET k") == b"$5\r\nhello\r\n"
    assert run("CAS k nope x") == b":0\r\n"
    assert run("CAS k hello bye") == b":1\r\n"
    assert run("CAS missing a b") == b":0\r\n"
    assert run("INCR k") == b"-ERR value is not an integer or out of range\r\n"
    assert run("INCRBY n 5") == b":5\r\n"
    assert run("DECR n") == b":4\r\n"
    assert run("INCRBY n 9223372036854775807") == b"-ERR increment or decrement would overflow\r\n"
    assert run("DEL k n missing") == b":2\r\n"
    assert Command.set("a", b"b").type is CommandType.SET
