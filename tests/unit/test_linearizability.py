"""The fault harness's linearizability checker, on hand-written and generated histories."""

from __future__ import annotations

import random
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fault.linearizability import Op, RegisterModel, check, check_key, format_op, minimize

_ids = iter(range(1, 10**9))


def op(kind: str, args: tuple[Any, ...] | list[Any], result: Any, invoke: float, complete: float | None,
       proc: int = 0, key: str = "k") -> Op:
    return Op(proc, key, kind, tuple(args), result, invoke, complete, next(_ids))


def verdict(*ops: Op) -> str:
    return check(ops).verdict


# ----------------------------------------------------------------------------- good histories


def test_sequential_history_of_every_kind_is_linearizable() -> None:
    h = [
        op("get", [], None, 0, 1),
        op("del", [], 0, 1.5, 2),
        op("incr", [], 1, 2.5, 3),
        op("incr", [], 2, 3.5, 4),
        op("cas", ["2", "10"], 1, 4.5, 5),
        op("cas", ["2", "11"], 0, 5.5, 6),
        op("get", [], "10", 6.5, 7),
        op("set", ["x"], "OK", 7.5, 8),
        op("incr", [], "ERR", 8.5, 9),  # not an integer: fails and changes nothing
        op("get", [], "x", 9.5, 10),
        op("del", [], 1, 10.5, 11),
        op("get", [], None, 11.5, 12),
    ]
    assert verdict(*h) == "ok"


def test_concurrent_writes_linearizable_only_in_the_order_the_reads_saw() -> None:
    # SET a and SET b overlap; a read during them saw b, a read after both saw a:
    # only b-then-a explains both, though SET a was invoked first and completed last.
    h = [
        op("set", ["a"], "OK", 0, 10, proc=1),
        op("set", ["b"], "OK", 1, 6, proc=2),
        op("get", [], "b", 7, 8, proc=3),
        op("get", [], "a", 11, 12, proc=3),
    ]
    assert verdict(*h) == "ok"
    # The same reads the other way round cannot be explained: after SET b completed and a
    # read saw a, the register can only hold b again if SET b took effect after a — but then
    # the final read of a needs a second SET a.
    bad = [
        op("set", ["a"], "OK", 0, 10, proc=1),
        op("set", ["b"], "OK", 1, 6, proc=2),
        op("get", [], "a", 7, 8, proc=3),
        op("get", [], "b", 8.5, 9, proc=3),
        op("get", [], "a", 11, 12, proc=3),
    ]
    assert verdict(*bad) == "violation"


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in ("old", "new"):
        h = [
            op("set", ["old"], "OK", 0, 1),
            op("set", ["new"], "OK", 2, 5, proc=1),
            op("get", [], seen, 3, 4, proc=2),
        ]
        assert verdict(*h) == "ok", seen


def test_unknown_write_may_have_taken_effect_or_not() -> None:
    base = [op("set", ["1"], "OK", 0, 1)]
    maybe = op("set", ["2"], None, 2, None, proc=1)  # timed out
    assert verdict(*base, maybe, op("get", [], "2", 3, 4)) == "ok"  # it took effect
    assert verdict(*base, maybe, op("get", [], "1", 3, 4)) == "ok"  # it did not
    # ... or it took effect late: after a read that did not see it.
    assert verdict(*base, maybe, op("get", [], "1", 3, 4), op("get", [], "2", 5, 6)) == "ok"


def test_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    h = [
        op("set", ["1"], "OK", 0, 1),
        op("get", [], "2", 2, 3),
        op("set", ["2"], None, 4, None, proc=1),
    ]
    assert verdict(*h) == "violation"


def test_unknown_write_takes_effect_at_most_once() -> None:
    # 2 -> 1 -> 2 would need the unknown SET 2 twice (SET 1 completed in between).
    h = [
        op("set", ["0"], "OK", 0, 1),
        op("set", ["2"], None, 1.5, None, proc=1),
        op("get", [], "2", 2, 3),
        op("set", ["1"], "OK", 4, 5),
        op("get", [], "2", 6, 7),
    ]
    assert verdict(*h) == "violation"


def test_several_unknown_incrs_are_counted_not_ordered() -> None:
    h = [op("set", ["0"], "OK", 0, 1)]
    h += [op("incr", [], None, 1 + i * 0.01, None, proc=10 + i) for i in range(30)]
    h += [op("get", [], "17", 5, 6)]
    r = check(h)
    assert r.verdict == "ok"
    assert r.keys[0].configs < 200  # symmetry: which 17 of the 30 does not matter
    assert verdict(*h[:-1], op("get", [], "31", 5, 6)) == "violation"


def test_many_unknown_sets_stay_cheap() -> None:
    h = [op("set", ["0"], "OK", 0, 1)]
    h += [op("set", [f"u{i}"], None, 1 + i * 0.01, None, proc=100 + i) for i in range(60)]
    t = 2.0
    for i in range(300):  # a long tail of completed ops after the unknowns
        h.append(op("set", [str(i)], "OK", t, t + 0.5))
        h.append(op("get", [], str(i) if i % 7 else "u3", t + 0.6, t + 0.8, proc=2))
        t += 1
    started = time.perf_counter()
    assert verdict(*h) == "violation"  # u3 can only be seen once
    assert time.perf_counter() - started < 10


# ----------------------------------------------------------------------------- bad histories


def test_stale_read_is_a_violation_and_the_report_names_it() -> None:
    h = [
        op("set", ["1"], "OK", 0, 1, proc=1),
        op("set", ["2"], "OK", 2, 3, proc=1),
        op("get", [], "1", 4, 5, proc=2),  # stale: SET 2 completed before this read began
    ]
    r = check(h)
    assert r.verdict == "violation"
    k = r.failures[0]
    assert [o.kind for o, _ in k.prefix] == ["set", "set"]
    assert [o.result for o, _, _ in k.stuck] == ["1"]
    assert k.stuck[0][1] == "2" and k.stuck[0][2] == "2"
    text = r.report()
    assert "NOT LINEARIZABLE" in text and "GET() -> '1'" in text and "would return '2'" in text
    assert "proc=2" in text and "[4.000, 5.000]" in text


def test_lost_write_is_a_violation() -> None:
    h = [
        op("set", ["1"], "OK", 0, 1),
        op("set", ["2"], "OK", 2, 3, proc=1),  # acknowledged...
        op("get", [], "1", 10, 11, proc=2),  # ...but gone
    ]
    assert verdict(*h) == "violation"
    # A read of nil after an acknowledged write (the key lost altogether) is one too.
    assert verdict(op("set", ["1"], "OK", 0, 1), op("get", [], None, 2, 3)) == "violation"


def test_double_applied_incr_is_a_violation() -> None:
    assert verdict(op("set", ["5"], "OK", 0, 1), op("incr", [], 6, 2, 3), op("get", [], "7", 4, 5)) == "violation"
    # Two INCRs both answering 6: one of them was applied twice, or not at all.
    assert verdict(op("set", ["5"], "OK", 0, 1), op("incr", [], 6, 2, 4, proc=1),
                   op("incr", [], 6, 2, 4, proc=2)) == "violation"
    assert verdict(op("set", ["5"], "OK", 0, 1), op("incr", [], 6, 2, 4, proc=1),
                   op("incr", [], 7, 2, 4, proc=2)) == "ok"


def test_wrong_cas_and_del_results_are_violations() -> None:
    base = [op("set", ["a"], "OK", 0, 1)]
    assert verdict(*base, op("cas", ["b", "c"], 1, 2, 3)) == "violation"  # swapped on a mismatch
    assert verdict(*base, op("cas", ["a", "c"], 0, 2, 3)) == "violation"  # refused a match
    assert verdict(*base, op("cas", ["a", "c"], 1, 2, 3), op("get", [], "a", 4, 5)) == "violation"
    assert verdict(op("cas", ["a", "c"], 1, 0, 1)) == "violation"  # a missing key matches nothing
    assert verdict(*base, op("del", [], 0, 2, 3)) == "violation"
    assert verdict(*base, op("del", [], 1, 2, 3), op("del", [], 1, 4, 5)) == "violation"


def test_keys_are_checked_independently() -> None:
    h = [
        op("set", ["1"], "OK", 0, 1, key="a"),
        op("set", ["2"], "OK", 0, 1, key="b"),
        op("get", [], "2", 2, 3, key="a"),  # a never held 2
        op("get", [], "2", 2, 3, key="b"),
    ]
    r = check(h)
    assert r.verdict == "violation" and [k.key for k in r.failures] == ["a"]


def test_minimal_offending_ops_are_the_few_that_conflict() -> None:
    rng = random.Random(5)
    h: list[Op] = []
    t = 0.0
    for i in range(200):  # a long good history...
        h.append(op("set", [str(i)], "OK", t, t + 0.5, proc=rng.randrange(4)))
        h.append(op("get", [], str(i), t + 0.6, t + 0.9, proc=rng.randrange(4)))
        t += 1
    h.insert(250, op("get", [], "3", 125.6, 125.9, proc=9))  # ...with one stale read in it
    r = check(h, minimize_seconds=30)
    assert r.verdict == "violation"
    k = r.failures[0]
    assert k.minimal is not None
    assert len(k.minimal) <= 3
    assert any(o.process == 9 for o in k.minimal)
    # The minimal set is a proof on its own: with the other writes' outcomes forgotten it
    # still cannot be linearized.
    others = [o.relaxed() for o in h if o not in k.minimal and o.kind == "set"]
    assert check_key([*k.minimal, *others]).ok is False
    assert "minimal offending operations" in r.report()


def test_minimize_keeps_a_violation() -> None:
    h = [op("set", ["1"], "OK", 0, 1), op("set", ["2"], "OK", 2, 3), op("get", [], "1", 4, 5)]
    core = minimize(h, RegisterModel())
    assert sorted(o.kind for o in core if o.complete is not None) == ["get", "set", "set"]


def test_search_budget_is_inconclusive_never_ok() -> None:
    h = [op("set", ["1"], "OK", 0, 1), op("set", ["2"], "OK", 2, 3), op("get", [], "1", 4, 5)]
    r = check(h, max_configs=1)
    assert r.verdict == "inconclusive" and not r.ok


def test_format_op_is_readable() -> None:
    assert format_op(op("cas", ["5", "6"], 1, 10.25, 10.5, proc=3, key="x"), t0=10) == \
        "key=x proc=3 CAS('5', '6') -> 1  [0.250, 0.500]"
    assert "outcome unknown" in format_op(op("set", ["1"], None, 1, None))


# ----------------------------------------------------------------------------- generated histories


def sequential_history(rng: random.Random, *, clients: int, ops: int, keys: int, unknown: float = 0.0,
                       never: float = 0.0, overlap: float = 1.0) -> list[Op]:
    """A history from a real sequential execution: each op gets a linearization point inside
    a random window around it, so windows overlap; results come from replaying the ops in
    the order of their points. `unknown` of the writes forget their outcome (they took
    effect), and `never` extra writes are added that never took effect at all."""
    model = RegisterModel()
    now = [rng.random() for _ in range(clients)]
    planned: list[tuple[float, int, str, str, tuple[Any, ...], float, float]] = []
    uid = 0
    for _ in range(ops):
        c = rng.randrange(clients)
        invoke = now[c]
        complete = invoke + rng.expovariate(1 / overlap)
        point = rng.uniform(invoke, complete)
        key = f"k{rng.randrange(keys)}"
        kind = rng.choice(["get", "get", "set", "del", "incr", "incr", "cas"])
        uid += 1
        args: tuple[Any, ...] = ()
        if kind == "set":
            args = (str(uid * 1000),)
        elif kind == "cas":
            args = ("?", str(uid * 1000))  # the expected value is filled in at replay time
        planned.append((point, c, key, kind, args, invoke, complete))
        now[c] = complete + rng.expovariate(10 / overlap)
    state: dict[str, Any] = {}
    out: list[Op] = []
    for point, c, key, kind, args, invoke, complete in sorted(planned):
        s = state.get(key, model.init())
        if kind == "cas":
            args = (s if s is not None and rng.random() < 0.7 else "nope", args[1])
        o = Op(c, key, kind, args, None, invoke, complete, len(out) + 1)
        result = model.expected(s, o)
        state[key] = model.apply(s, o)
        if kind != "get" and rng.random() < unknown:
            out.append(Op(c, key, kind, args, None, invoke, None, len(out) + 1))
        else:
            out.append(Op(c, key, kind, args, result, invoke, complete, len(out) + 1))
    for _ in range(int(ops * never)):
        key = f"k{rng.randrange(keys)}"
        kind = rng.choice(["set", "del", "incr", "cas"])
        args = {"set": ("never",), "cas": ("x", "never"), "del": (), "incr": ()}[kind]
        out.append(Op(99, key, kind, args, None, rng.uniform(0, max(now)), None, len(out) + 1))
    return out


def test_large_generated_good_history_is_accepted_quickly() -> None:
    h = sequential_history(random.Random(11), clients=8, ops=20_000, keys=5, unknown=0.02, never=0.01)
    started = time.perf_counter()
    r = check(h)
    elapsed = time.perf_counter() - started
    assert r.verdict == "ok", r.report()
    assert elapsed < 20, f"{elapsed:.1f}s for 20,000 ops"


def test_generated_history_with_one_corrupted_result_is_rejected() -> None:
    rng = random.Random(3)
    h = sequential_history(rng, clients=4, ops=400, keys=1)
    reads = [i for i, o in enumerate(h) if o.kind == "get" and o.result is not None]
    i = reads[len(reads) // 2]
    h[i] = Op(h[i].process, h[i].key, "get", (), "999999999", h[i].invoke, h[i].complete, h[i].id)
    r = check(h, minimize_seconds=5)
    assert r.verdict == "violation"
    assert r.failures[0].minimal is not None and any(o.result == "999999999" for o in r.failures[0].minimal)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(1, 6), ops=st.integers(1, 150),
       keys=st.integers(1, 3), unknown=st.sampled_from([0.0, 0.1, 0.3]), never=st.sampled_from([0.0, 0.1]),
       overlap=st.sampled_from([0.1, 1.0, 5.0]))
def test_histories_from_a_sequential_execution_are_always_accepted(
        seed: int, clients: int, ops: int, keys: int, unknown: float, never: float, overlap: float) -> None:
    h = sequential_history(random.Random(seed), clients=clients, ops=ops, keys=keys, unknown=unknown,
                           never=never, overlap=overlap)
    r = check(h, minimize_seconds=0)
    assert r.verdict == "ok", r.report()
