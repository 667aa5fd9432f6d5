"""Unit tests for aegis.state: commands, their codec, the state machine, snapshots."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.log import EntryType, LogEntry, LogIndex, Term
from aegis.state import (
    NOT_AN_INTEGER,
    OVERFLOW,
    Command,
    CommandResult,
    CommandType,
    Snapshot,
    StateMachine,
    StateView,
    read_snapshot_header,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def entry(index: int, data: bytes = b"", etype: EntryType = EntryType.COMMAND, term: int = 1) -> LogEntry:
    return LogEntry(LogIndex(index), Term(term), etype, data)


class Applier:
    """Applies commands at consecutive indexes."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm if sm is not None else StateMachine()

    def __call__(self, cmd: Command) -> CommandResult:
        r = self.sm.apply(cmd, self.sm.last_applied + 1)
        assert r is not None
        return r


# --- strategies ---------------------------------------------------------------------------

# Keys as the server makes them: arbitrary client bytes decoded with surrogateescape.
keys = st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape"))
small_keys = st.sampled_from(["a", "b", "c", "\udcff", "ключ"])
values = st.binary(max_size=24)
int64 = st.integers(INT64_MIN, INT64_MAX)

commands = st.one_of(
    st.builds(Command.get, keys),
    st.builds(Command.set, keys, values),
    st.builds(lambda k, more: Command.delete(k, *more), keys, st.lists(keys, max_size=3)),
    st.builds(Command.compare_and_swap, keys, values, values),
    st.builds(Command.increment, keys, int64),
    st.builds(lambda n, a: Command.custom(n, *a), st.text(min_size=1, max_size=8), st.lists(values, max_size=3)),
)


# --- CommandType and Command --------------------------------------------------------------


def test_command_type_has_camelcase_aliases() -> None:
    assert CommandType.Get is CommandType.GET
    assert CommandType.Set is CommandType.SET
    assert CommandType.Delete is CommandType.DELETE
    assert CommandType.CompareAndSwap is CommandType.COMPARE_AND_SWAP
    assert CommandType.Increment is CommandType.INCREMENT
    assert CommandType.Custom is CommandType.CUSTOM
    assert CommandType.Op is CommandType.OP and CommandType.Transaction is CommandType.TRANSACTION
    assert CommandType.Session is CommandType.SESSION and CommandType.SessionOpen is CommandType.SESSION_OPEN
    assert len(list(CommandType)) == 10


def test_constructors_fill_the_right_fields() -> None:
    assert Command.get("k") == Command(CommandType.GET, "k")
    s = Command.set("k", b"v")
    assert (s.type, s.key, s.value) == (CommandType.SET, "k", b"v")
    d = Command.delete("a", "b", "c")
    assert d.all_keys == ("a", "b", "c") and d.keys == ("b", "c")
    c = Command.compare_and_swap("k", b"old", b"new")
    assert (c.expected, c.value) == (b"old", b"new")
    assert Command.cas("k", b"old", b"new") == c
    assert Command.increment("k").delta == 1
    assert Command.increment("k", -7).delta == -7
    cu = Command.custom("append", b"x", b"y")
    assert (cu.name, cu.args, cu.all_keys) == ("append", (b"x", b"y"), ())
    assert Command.get("k").is_read_only and not s.is_read_only


def test_constructors_accept_bytes_like_values() -> None:
    assert Command.set("k", bytearray(b"v")).value == b"v"
    assert Command.set("k", memoryview(b"v")).value == b"v"


def test_str_values_are_utf8_as_the_seed_reads() -> None:
    # The seed's `b"value".to_vec()` is bytes in Rust; Python users pass text (issue 9, item 9).
    assert Command.set("k", "text").value == b"text"
    assert Command.set("k", "héllo").value == "héllo".encode()
    assert Command.compare_and_swap("k", "old", "new") == Command.compare_and_swap("k", b"old", b"new")
    assert Command.custom("f", "arg").args == (b"arg",)
    sm = StateMachine()
    sm.apply(Command.set("greeting", "hello"), 1)
    assert sm.get("greeting").value == b"hello"


@pytest.mark.parametrize(
    "build",
    [
        lambda: Command.set("k", 42),  # type: ignore[arg-type]
        lambda: Command.set(b"k", b"v"),  # type: ignore[arg-type]
        lambda: Command.get(1),  # type: ignore[arg-type]
        lambda: Command.increment("k", 1.5),  # type: ignore[arg-type]
        lambda: Command.increment("k", True),
        lambda: Command.compare_and_swap("k", 1, b"b"),  # type: ignore[arg-type]
        lambda: Command.custom("f", None),  # type: ignore[arg-type]
        lambda: Command.delete("a", 3),  # type: ignore[arg-type]
    ],
)
def test_wrong_types_are_rejected_when_built(build: object) -> None:
    with pytest.raises(TypeError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Command.increment("k", 2**63),
        lambda: Command.increment("k", INT64_MIN - 1),
        lambda: Command.custom(""),
        lambda: Command(CommandType.GET, "k", value=b"v"),  # a field GET does not take
        lambda: Command(CommandType.SET, "k", value=b"v", delta=3),
        lambda: Command(CommandType.CUSTOM, "k", name="f"),  # CUSTOM names no key
        lambda: Command.set("\ud800", b"v"),  # a lone surrogate no bytes decode to
        lambda: Command.set("\udcc3\udca9", b"v"),  # escapes that re-decode as "é"
    ],
)
def test_bad_values_are_rejected_when_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_command_is_frozen() -> None:
    c = Command.set("k", b"v")
    with pytest.raises(AttributeError):
        c.key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "cmd",
    [
        Command.get(""),
        Command.set("k", b""),
        Command.set("k", b"\x00\xff" * 100),
        Command.delete("a", "b"),
        Command.cas("k", b"", b"x"),
        Command.increment("k", INT64_MIN),
        Command.increment("k", INT64_MAX),
        Command.custom("f"),
        Command.custom("f", b"", b"\x00"),
    ],
)
def test_encode_decode_roundtrip(cmd: Command) -> None:
    assert Command.decode(cmd.encode()) == cmd


def test_encoding_is_compact_and_not_pickle() -> None:
    data = Command.set("k", b"v").encode()
    assert len(data) <= 8
    assert not data.startswith(b"\x80")  # pickle protocol 2+ opcode


def test_binary_keys_roundtrip_through_surrogateescape() -> None:
    raw = b"\xff\xfe caf\xc3\xa9 \x80"
    key = raw.decode("utf-8", "surrogateescape")
    cmd = Command.set(key, b"v")
    back = Command.decode(cmd.encode())
    assert back.key == key
    assert back.key.encode("utf-8", "surrogateescape") == raw


@FAST
@given(commands)
def test_any_command_roundtrips(cmd: Command) -> None:
    assert Command.decode(cmd.encode()) == cmd


@FAST
@given(st.binary(max_size=64))
def test_any_client_key_roundtrips(raw: bytes) -> None:
    key = raw.decode("utf-8", "surrogateescape")
    back = Command.decode(Command.get(key).encode())
    assert back.key.encode("utf-8", "surrogateescape") == raw


@FAST
@given(st.binary(max_size=64))
def test_decoding_garbage_raises_only_value_error(data: bytes) -> None:
    try:
        Command.decode(data)
    except ValueError:
        pass


@FAST
@given(commands, st.data())
def test_decoding_mutated_payloads_raises_only_value_error(cmd: Command, data: st.DataObject) -> None:
    raw = bytearray(cmd.encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        out = Command.decode(bytes(raw[:cut]))
    except ValueError:
        return
    assert isinstance(out, Command)
    assert Command.decode(out.encode()) == out


@pytest.mark.parametrize(
    "payload",
    [
        [],
        [99, b"k"],
        [True, b"k"],
        [0],
        [0, "k"],  # keys travel as binary
        [1, b"k", "v"],
        [1, b"k", b"v", b"extra"],
        [2, b"k", b"notalist"],
        [4, b"k", 2**63],
        [5, "", []],
        [5, "f", [1]],
        {"type": 0},
    ],
)
def test_malformed_payloads_are_value_errors(payload: object) -> None:
    with pytest.raises(ValueError):
        Command.decode(msgpack.packb(payload, use_bin_type=True))


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(ValueError):
        Command.decode(Command.get("k").encode() + b"\x00")


# --- CommandResult ------------------------------------------------------------------------


def test_result_constructors() -> None:
    ok = CommandResult.ok(b"v", version=3, applied_index=9)
    assert ok.success and ok.value == b"v" and ok.version == 3 and ok.applied_index == 9 and ok.error is None
    bad = CommandResult.fail("nope", applied_index=2)
    assert not bad.success and bad.error == "nope" and bad.value is None
    with pytest.raises(ValueError):
        CommandResult(True, error="x")
    with pytest.raises(ValueError):
        CommandResult(False)


# --- the state machine: semantics ---------------------------------------------------------


def test_set_get_and_versions() -> None:
    do = Applier()
    r = do(Command.set("k", b"a"))
    assert r.success and r.value is None and r.version == 1 and r.applied_index == 1
    assert do(Command.set("k", b"b")).version == 2
    got = do(Command.get("k"))
    assert (got.value, got.version, got.applied_index) == (b"b", 2, 3)
    missing = do(Command.get("nope"))
    assert missing.success and missing.value is None and missing.version == 0
    assert do.sm.version("k") == 2 and do.sm.version("nope") == 0


def test_local_get_reads_state_without_the_log() -> None:
    do = Applier()
    do(Command.set("k", b"v"))
    r = do.sm.get("k")
    assert (r.value, r.version, r.applied_index) == (b"v", 1, 1)
    assert do.sm.last_applied == 1  # a local read does not advance anything
    assert do.sm.get("x").value is None


def test_delete_counts_existing_keys_once() -> None:
    do = Applier()
    do(Command.set("a", b"1"))
    do(Command.set("b", b"2"))
    r = do(Command.delete("a", "b", "missing", "a"))
    assert r.success and r.value == 2
    assert len(do.sm) == 0
    assert do(Command.delete("a")).value == 0


def test_a_deleted_key_starts_again_at_version_one() -> None:
    do = Applier()
    do(Command.set("k", b"1"))
    do(Command.set("k", b"2"))
    do(Command.delete("k"))
    assert do(Command.set("k", b"3")).version == 1


def test_increment_of_missing_key_starts_from_zero() -> None:
    do = Applier()
    r = do(Command.increment("n"))
    assert r.success and r.value == 1 and r.version == 1
    assert do.sm.get("n").value == b"1"
    r = do(Command.increment("n", -11))
    assert r.value == -10 and do.sm.get("n").value == b"-10" and r.version == 2


@pytest.mark.parametrize(
    "stored, expected",
    [
        (b"0", 0),
        (b"-1", -1),
        (b"42", 42),
        (str(INT64_MAX).encode(), INT64_MAX),
        (str(INT64_MIN + 1).encode(), INT64_MIN + 1),
    ],
)
def test_increment_parses_redis_integers(stored: bytes, expected: int) -> None:
    do = Applier()
    do(Command.set("n", stored))
    r = do(Command.increment("n", 0))
    assert r.success and r.value == expected


@pytest.mark.parametrize(
    "stored",
    [b"", b"abc", b" 1", b"1 ", b"+1", b"01", b"-0", b"1.0", b"1e3", b"\xd9\xa1", b"9223372036854775808",
     b"-9223372036854775809", b"0x10", b"--1", b"-"],
)
def test_increment_of_a_non_integer_fails_and_changes_nothing(stored: bytes) -> None:
    do = Applier()
    do(Command.set("n", stored))
    before = do.sm.digest()
    r = do(Command.increment("n", 1))
    assert not r.success and r.error == NOT_AN_INTEGER
    assert r.version == 1 and r.applied_index == 2
    assert do.sm.get("n").value == stored and do.sm.version("n") == 1
    assert do.sm.digest() == before
    assert do.sm.last_applied == 2  # the entry is still consumed


@pytest.mark.parametrize("start, delta", [(INT64_MAX, 1), (INT64_MIN, -1), (-5, INT64_MIN), (5, INT64_MAX)])
def test_increment_overflow_fails_and_changes_nothing(start: int, delta: int) -> None:
    do = Applier()
    do(Command.set("n", str(start).encode()))
    r = do(Command.increment("n", delta))
    assert not r.success and r.error == OVERFLOW
    assert do.sm.get("n").value == str(start).encode() and do.sm.version("n") == 1


def test_compare_and_swap() -> None:
    do = Applier()
    do(Command.set("k", b"old"))
    miss = do(Command.cas("k", b"wrong", b"new"))
    assert miss.success and miss.value == 0 and miss.version == 1
    assert do.sm.get("k").value == b"old"
    hit = do(Command.cas("k", b"old", b"new"))
    assert hit.success and hit.value == 1 and hit.version == 2
    assert do.sm.get("k").value == b"new"


@pytest.mark.parametrize("expected", [b"", b"anything"])
def test_compare_and_swap_on_a_missing_key_matches_nothing(expected: bytes) -> None:
    do = Applier()
    r = do(Command.cas("k", expected, b"new"))
    assert r.success and r.value == 0 and r.version == 0
    assert "k" not in do.sm


# --- custom handlers ----------------------------------------------------------------------


def append(view: StateView, args: tuple[bytes, ...]) -> int:
    (key, suffix) = args
    k = key.decode()
    view.set(k, (view.get(k) or b"") + suffix)
    return len(view.get(k) or b"")


def test_custom_handler_writes_and_returns() -> None:
    sm = StateMachine()
    sm.register_handler("append", append)
    do = Applier(sm)
    assert do(Command.custom("append", b"k", b"ab")).value == 2
    r = do(Command.custom("append", b"k", b"c"))
    assert r.success and r.value == 3 and r.applied_index == 2
    assert sm.get("k").value == b"abc" and sm.version("k") == 2
    assert sm.handlers == ("append",)


def test_handlers_can_be_given_to_the_constructor() -> None:
    sm = StateMachine({"append": append})
    assert Applier(sm)(Command.custom("append", b"k", b"x")).success


def test_unknown_handler_is_a_failed_result() -> None:
    r = Applier()(Command.custom("nope"))
    assert not r.success and "nope" in (r.error or "")


def test_registering_twice_needs_replace() -> None:
    sm = StateMachine()
    sm.register_handler("f", append)
    with pytest.raises(ValueError):
        sm.register_handler("f", append)
    sm.register_handler("f", append, replace=True)
    with pytest.raises(ValueError):
        sm.register_handler("", append)
    with pytest.raises(TypeError):
        sm.register_handler("g", 3)  # type: ignore[arg-type]


def test_a_raising_handler_changes_nothing() -> None:
    def boom(view: StateView, args: tuple[bytes, ...]) -> None:
        view.set("k", b"half-done")
        view.delete("keep")
        raise RuntimeError("kaput")

    sm = StateMachine({"boom": boom})
    do = Applier(sm)
    do(Command.set("keep", b"1"))
    before = sm.digest()
    r = do(Command.custom("boom"))
    assert not r.success and "kaput" in (r.error or "") and r.applied_index == 2
    assert sm.digest() == before and sm.last_applied == 2


def test_a_handler_returning_failure_changes_nothing() -> None:
    def refuse(view: StateView, args: tuple[bytes, ...]) -> CommandResult:
        view.set("k", b"x")
        return CommandResult.fail("refused")

    sm = StateMachine({"refuse": refuse})
    r = Applier(sm)(Command.custom("refuse"))
    assert not r.success and r.error == "refused" and r.applied_index == 1
    assert "k" not in sm


def test_handler_results_are_normalised() -> None:
    def gives(value: object) -> object:
        return lambda view, args: value

    sm = StateMachine()
    for name, value in [("none", None), ("bytes", b"x"), ("int", 7), ("bool", True), ("float", 1.5)]:
        sm.register_handler(name, gives(value))  # type: ignore[arg-type]
    do = Applier(sm)
    assert do(Command.custom("none")).value is None
    assert do(Command.custom("bytes")).value == b"x"
    assert do(Command.custom("int")).value == 7
    assert not do(Command.custom("bool")).success
    assert not do(Command.custom("float")).success


def test_state_view_delete_and_exists() -> None:
    def move(view: StateView, args: tuple[bytes, ...]) -> int:
        src, dst = (a.decode() for a in args)
        value = view.get(src)
        if value is None:
            return 0
        assert view.delete(src) and not view.exists(src)
        view.set(dst, value)
        return view.version(dst)

    sm = StateMachine({"move": move})
    do = Applier(sm)
    do(Command.set("a", b"v"))
    assert do(Command.custom("move", b"a", b"b")).value == 0  # committed version before
    assert "a" not in sm and sm.get("b").value == b"v" and sm.version("b") == 1


# --- applying entries ---------------------------------------------------------------------


def test_stale_indexes_are_ignored() -> None:
    sm = StateMachine()
    assert sm.apply(Command.set("k", b"1"), 5) is not None
    assert sm.apply(Command.set("k", b"2"), 5) is None
    assert sm.apply(Command.set("k", b"3"), 3) is None
    assert sm.get("k").value == b"1" and sm.last_applied == 5


def test_apply_entry_decodes_commands() -> None:
    sm = StateMachine()
    r = sm.apply_entry(entry(1, Command.set("k", b"v").encode()))
    assert r is not None and r.success and r.applied_index == 1
    assert sm.get("k").value == b"v"


@pytest.mark.parametrize("etype", [EntryType.NO_OP, EntryType.CONFIG_CHANGE])
def test_non_command_entries_only_advance(etype: EntryType) -> None:
    sm = StateMachine()
    assert sm.apply_entry(entry(1, b"whatever", etype)) is None
    assert sm.last_applied == 1 and len(sm) == 0


def test_replay_after_restart_is_idempotent() -> None:
    log = [entry(i + 1, Command.increment("n").encode()) for i in range(5)]
    sm = StateMachine()
    for e in log[:3]:
        sm.apply_entry(e)
    for e in log:  # the driver replays from the start
        sm.apply_entry(e)
    assert sm.get("n").value == b"5" and sm.last_applied == 5


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x93\x01", msgpack.packb([1, b"k", 3])])
def test_a_malformed_committed_entry_never_raises(payload: bytes) -> None:
    sm = StateMachine()
    sm.apply(Command.set("k", b"v"), 1)
    before = sm.digest()
    r = sm.apply_entry(entry(2, payload))
    assert r is not None and not r.success and r.applied_index == 2 and r.error
    assert sm.last_applied == 2 and sm.digest() == before


@FAST
@given(st.lists(st.binary(max_size=20), max_size=10))
def test_any_payload_applies_without_raising(payloads: list[bytes]) -> None:
    sm = StateMachine()
    for i, p in enumerate(payloads, start=1):
        sm.apply_entry(entry(i, p))
    assert sm.last_applied == len(payloads)


# --- a reference model --------------------------------------------------------------------

model_commands = st.one_of(
    st.builds(Command.get, small_keys),
    st.builds(Command.set, small_keys, st.sampled_from([b"", b"1", b"-3", b"x", b"99"])),
    st.builds(lambda k, more: Command.delete(k, *more), small_keys, st.lists(small_keys, max_size=2)),
    st.builds(Command.cas, small_keys, st.sampled_from([b"1", b"x", b""]), st.sampled_from([b"2", b"y"])),
    st.builds(Command.increment, small_keys, st.sampled_from([1, -1, 5, INT64_MAX, INT64_MIN])),
)


def canonical_int(raw: bytes) -> int | None:
    """An independent oracle for Redis's rule: the bytes are exactly str(n) of an int64."""
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if str(n).encode() == raw and INT64_MIN <= n <= INT64_MAX else None


@FAST
@given(st.lists(model_commands, max_size=30))
def test_state_machine_matches_a_simple_model(cmds: list[Command]) -> None:
    model: dict[str, tuple[bytes, int]] = {}
    sm = StateMachine()
    for i, c in enumerate(cmds, start=1):
        r = sm.apply(c, i)
        assert r is not None and r.applied_index == i
        cur = model.get(c.key)
        if c.type == CommandType.GET:
            assert r.value == (cur[0] if cur else None)
        elif c.type == CommandType.SET:
            assert c.value is not None
            model[c.key] = (c.value, cur[1] + 1 if cur else 1)
        elif c.type == CommandType.DELETE:
            present = [k for k in dict.fromkeys(c.all_keys) if k in model]
            assert r.value == len(present)
            for k in present:
                del model[k]
        elif c.type == CommandType.COMPARE_AND_SWAP:
            swapped = cur is not None and cur[0] == c.expected
            assert r.value == int(swapped)
            if swapped and cur is not None and c.value is not None:
                model[c.key] = (c.value, cur[1] + 1)
        elif c.type == CommandType.INCREMENT:
            n = canonical_int(cur[0] if cur else b"0")
            if n is not None:
                n += c.delta
            if n is None or not INT64_MIN <= n <= INT64_MAX:
                assert not r.success
            else:
                assert r.value == n
                model[c.key] = (str(n).encode(), cur[1] + 1 if cur else 1)
        assert {k: sm.get(k).value for k in sm.keys()} == {k: v for k, (v, _) in model.items()}
        assert {k: sm.version(k) for k in sm.keys()} == {k: ver for k, (_, ver) in model.items()}


# --- digest -------------------------------------------------------------------------------


def test_digest_depends_on_contents_not_history() -> None:
    a, b = Applier(), Applier()
    a(Command.set("x", b"1"))
    a(Command.set("y", b"2"))
    b(Command.set("y", b"2"))
    b(Command.get("zzz"))
    b(Command.set("x", b"1"))
    assert a.sm.digest() == b.sm.digest()
    b(Command.set("x", b"1"))  # same value, new version: different contents
    assert a.sm.digest() != b.sm.digest()
    assert StateMachine().digest() == StateMachine().digest()


def test_digest_changes_with_every_write() -> None:
    do = Applier()
    seen = {do.sm.digest()}
    for cmd in [Command.set("k", b"1"), Command.increment("k"), Command.cas("k", b"2", b"z"), Command.delete("k")]:
        do(cmd)
        seen.add(do.sm.digest())
    assert len(seen) == 4  # the last delete returns to the empty state
    assert do.sm.digest() == StateMachine().digest()


# --- snapshots ----------------------------------------------------------------------------


def filled(n: int = 50) -> StateMachine:
    do = Applier()
    for i in range(n):
        do(Command.set(f"key{i:03d}", bytes([i]) * i))
    do(Command.set("\udcff-binary", b"\x00"))
    do(Command.set("key001", b"again"))
    return do.sm


def test_snapshot_chunks_roundtrip() -> None:
    sm = filled()
    chunks = list(sm.snapshot_chunks(chunk_size=100))
    assert all(len(c) == 100 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 100
    other = StateMachine()
    assert other.restore_chunks(chunks) == sm.last_applied
    assert other.digest() == sm.digest() and other.last_applied == sm.last_applied
    assert len(other) == len(sm) and other.version("key001") == 2


def test_snapshot_of_empty_state() -> None:
    other = StateMachine()
    other.apply(Command.set("x", b"y"), 3)
    other.restore_chunks(StateMachine().snapshot_chunks())
    assert len(other) == 0 and other.last_applied == 0


def test_snapshot_bytes_are_deterministic() -> None:
    a, b = Applier(), Applier()
    a(Command.set("x", b"1"))
    a(Command.set("y", b"2"))
    b(Command.set("x", b"1"))
    b(Command.set("y", b"2"))
    assert b"".join(a.sm.snapshot_chunks()) == b"".join(b.sm.snapshot_chunks())
    # Records carry the revision that last wrote them, so another write order gives other
    # bytes, though the same contents.
    c = Applier()
    c(Command.set("y", b"2"))
    c(Command.set("x", b"1"))
    assert b"".join(c.sm.snapshot_chunks()) != b"".join(a.sm.snapshot_chunks())
    assert c.sm.digest() == a.sm.digest()


def test_snapshot_captures_state_when_called() -> None:
    sm = filled(5)
    it = sm.snapshot_chunks()
    sm.apply(Command.set("later", b"x"), sm.last_applied + 1)
    other = StateMachine()
    other.restore_chunks(it)
    assert "later" not in other and other.last_applied == sm.last_applied - 1


def test_an_empty_state_machine_is_still_truthy() -> None:
    # It has a length, but `sm or default` must not silently replace an empty one.
    assert StateMachine() and len(StateMachine()) == 0


def test_restore_keeps_handlers() -> None:
    sm = StateMachine({"append": append})
    sm.restore_chunks(filled(3).snapshot_chunks())
    assert Applier(sm)(Command.custom("append", b"k", b"x")).success


def corrupt_cases() -> list[tuple[str, bytes]]:
    good = b"".join(filled(5).snapshot_chunks())
    packb = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    header = packb(["aegis-sm", 1, 7, 1])
    rec = packb([b"k", b"v", 1])
    import zlib

    crc = zlib.crc32((1).to_bytes(8, "big"), zlib.crc32(b"v", zlib.crc32(b"k")))
    return [
        ("empty", b""),
        ("garbage", b"\xc1\xc1\xc1"),
        ("truncated", good[:-3]),
        ("no trailer", header + rec),
        ("trailing bytes", good + b"\x01"),
        ("trailing partial", good + b"\x92"),
        ("bad magic", packb(["nope", 1, 7, 1]) + rec + packb(["end", 1, crc])),
        ("bad version", packb(["aegis-sm", 9, 7, 1]) + rec + packb(["end", 1, crc])),
        ("negative index", packb(["aegis-sm", 1, -1, 1]) + rec + packb(["end", 1, crc])),
        ("count mismatch", packb(["aegis-sm", 1, 7, 2]) + rec + packb(["end", 2, crc])),
        ("bad crc", header + rec + packb(["end", 1, crc ^ 1])),
        ("duplicate key", packb(["aegis-sm", 1, 7, 2]) + rec + rec + packb(["end", 2, 0])),
        ("version zero", header + packb([b"k", b"v", 0]) + packb(["end", 1, crc])),
        ("str value", header + packb([b"k", "v", 1]) + packb(["end", 1, crc])),
        ("record shape", header + packb([b"k", b"v"]) + packb(["end", 1, crc])),
        ("map", header + packb({"k": b"v"}) + packb(["end", 1, crc])),
    ]


@pytest.mark.parametrize("name, data", corrupt_cases(), ids=[c[0] for c in corrupt_cases()])
def test_corrupt_snapshots_are_rejected_and_change_nothing(name: str, data: bytes) -> None:
    sm = filled(3)
    before = (sm.digest(), sm.last_applied)
    with pytest.raises(ValueError):
        sm.restore_chunks([data])
    assert (sm.digest(), sm.last_applied) == before


def test_restore_rejects_non_bytes_chunks() -> None:
    with pytest.raises(ValueError):
        StateMachine().restore_chunks(["text"])  # type: ignore[list-item]


def test_restore_checks_the_expected_index() -> None:
    sm = filled(3)
    with pytest.raises(ValueError):
        StateMachine().restore_chunks(sm.snapshot_chunks(), expect_index=sm.last_applied + 1)


def test_read_snapshot_header() -> None:
    sm = filled(10)
    first = next(iter(sm.snapshot_chunks(chunk_size=64)))
    assert read_snapshot_header(first) == (sm.last_applied, len(sm))
    with pytest.raises(ValueError):
        read_snapshot_header(first[:3])
    with pytest.raises(ValueError):
        read_snapshot_header(b"\xc1")


def test_snapshot_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StateMachine().snapshot_chunks(0)


@FAST
@given(
    st.dictionaries(keys, values, max_size=20),
    st.integers(1, 300),
    st.integers(0, 50),
)
def test_any_state_roundtrips_through_snapshot_chunks(contents: dict[str, bytes], chunk: int, extra: int) -> None:
    sm = StateMachine()
    i = 0
    for k, v in contents.items():
        i += 1
        sm.apply(Command.set(k, v), i)
    sm.apply(Command.get("x"), i + 1 + extra)
    other = StateMachine()
    other.restore_chunks(sm.snapshot_chunks(chunk))
    assert other.digest() == sm.digest() and other.last_applied == sm.last_applied


@FAST
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_restoring_garbage_raises_only_value_error(chunks: list[bytes]) -> None:
    sm = StateMachine()
    try:
        sm.restore_chunks(chunks)
    except ValueError:
        assert sm.last_applied == 0


@FAST
@given(st.data())
def test_restoring_a_mutated_snapshot_never_raises_anything_else(data: st.DataObject) -> None:
    good = bytearray(b"".join(filled(4).snapshot_chunks()))
    pos = data.draw(st.integers(0, len(good) - 1))
    good[pos] ^= data.draw(st.integers(1, 255))
    sm = StateMachine()
    try:
        sm.restore_chunks([bytes(good)])
    except ValueError:
        assert len(sm) == 0


def test_snapshot_object_roundtrip() -> None:
    sm = filled(20)
    snap = Snapshot.from_state_machine(sm, term=4)
    assert snap.index == sm.last_applied and snap.term == 4 and snap.key_count == len(sm)
    raw = snap.serialize()
    back = Snapshot.deserialize(raw)
    assert back == snap and back.checksum() == snap.checksum()
    other = StateMachine()
    back.restore_into(other)
    assert other.digest() == sm.digest() and other.last_applied == snap.index


def test_snapshot_validation() -> None:
    data = b"".join(filled(2).snapshot_chunks())
    with pytest.raises(ValueError):
        Snapshot(-1, 0, data)
    with pytest.raises(TypeError):
        Snapshot(1, 0, "text")  # type: ignore[arg-type]
    mislabelled = Snapshot(999, 1, data)
    with pytest.raises(ValueError):
        mislabelled.restore_into(StateMachine())
    with pytest.raises(ValueError):
        Snapshot.deserialize(mislabelled.serialize())


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", msgpack.packb(["aegis-snapshot", 1, 1, 1]), msgpack.packb(["other", 1, 1, 1, b""]),
     msgpack.packb(["aegis-snapshot", 1, 1, 1, "text"])],
)
def test_snapshot_deserialize_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Snapshot.deserialize(raw)
