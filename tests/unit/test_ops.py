"""The pure parts of `aegis health`: parsing CLUSTER NODES and classifying members."""

from __future__ import annotations

from aegis.ops import Member, classify, parse_cluster_nodes


def m(nid: str, role: str = "follower", leader: str = "n1", term: int = 3, applied: int = 100,
      commit: int = 100, reachable: bool = True) -> Member:
    return Member(nid, f"127.0.0.1:700{nid[-1]}", reachable=reachable, role=role, leader_id=leader, term=term,
                  commit_index=commit, applied_index=applied)


def test_parse_cluster_nodes() -> None:
    text = "n1 127.0.0.1:7001 leader match=10 last_heard_ms=0\nn2 127.0.0.1:7002 follower match=9\n\n"
    rows = parse_cluster_nodes(text)
    assert [(i, a) for i, a, _ in rows] == [("n1", "127.0.0.1:7001"), ("n2", "127.0.0.1:7002")]
    assert rows[0][2]["match"] == "10" and rows[0][2]["_0"] == "leader"


def test_all_healthy_is_exit_0() -> None:
    h = classify([m("n1", "leader"), m("n2"), m("n3")], {"n1", "n2", "n3"})
    assert h.exit_code == 0 and h.leader == "n1" and h.healthy_voters == 3


def test_one_down_or_lagging_or_confused_is_degraded() -> None:
    voters = {"n1", "n2", "n3"}
    assert classify([m("n1", "leader"), m("n2"), m("n3", reachable=False)], voters).exit_code == 1
    h = classify([m("n1", "leader", commit=1000, applied=1000), m("n2", applied=1000), m("n3", applied=10)], voters)
    assert h.exit_code == 1 and "behind" in h.members[2].why
    h = classify([m("n1", "leader"), m("n2"), m("n3", leader="n3", term=2)], voters)
    assert h.exit_code == 1 and "sees leader n3 in term 2" in h.members[2].why


def test_no_quorum_or_no_leader_is_exit_2() -> None:
    voters = {"n1", "n2", "n3"}
    assert classify([m("n1", "leader"), m("n2", reachable=False), m("n3", reachable=False)], voters).exit_code == 2
    assert classify([m("n1", "follower", leader=""), m("n2", leader=""), m("n3", leader="")], voters).exit_code == 2
    assert classify([], set()).exit_code == 2


def test_learners_do_not_count_for_quorum() -> None:
    h = classify([m("n1", "leader"), m("n2"), m("n3"), m("n4", reachable=False)], {"n1", "n2", "n3"})
    assert h.quorum == 2 and h.exit_code == 1 and not h.members[3].voter
