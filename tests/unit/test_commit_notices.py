"""Deferred commit notices (`RaftConfig.defer_commit_notices`, the node's --commit-notice-ms).

A leader that has sent a follower all its entries owes it only the new commit index once
they commit. With notices deferred, that index rides on the next entries, or goes out when
the driver calls `send_commit_notices`, or at the next tick; a follower read is told at once.
"""

from __future__ import annotations

from aegis.messages import AppendEntriesRequest, ReadIndexResponse

from .raft_net import Net

VOTERS = ["n1", "n2", "n3"]


def appends_to(net: Net, nid: str) -> list[AppendEntriesRequest]:
    return [m for m in net.trace if isinstance(m, AppendEntriesRequest) and m.receiver == nid and not m.heartbeat]


def started(defer: bool) -> Net:
    net = Net(VOTERS, defer_commit_notices=defer)
    net.elect("n1")
    net.propose("n1", b"first")  # every follower now in REPLICATE, all of it committed and known
    net.trace.clear()
    return net


def test_without_deferral_every_write_costs_a_follower_two_appends() -> None:
    net = started(defer=False)
    net.propose("n1", b"w1")
    sent = appends_to(net, "n2")
    assert [len(m.entries) for m in sent] == [1, 0]  # the entry, then the commit index alone
    assert net["n2"].commit_index == net["n1"].commit_index


def test_deferred_the_commit_index_rides_on_the_next_entries() -> None:
    net = started(defer=True)
    i1 = net.propose("n1", b"w1")
    assert net["n1"].commit_index == i1
    assert net["n1"].commit_notices_due
    assert net["n2"].commit_index == i1 - 1  # it has the entry, not yet the news
    i2 = net.propose("n1", b"w2")
    sent = appends_to(net, "n2")
    assert [len(m.entries) for m in sent] == [1, 1]  # one append per write, nothing else
    assert sent[1].leader_commit == i1
    assert net["n2"].commit_index == i1 and net["n1"].commit_index == i2


def test_deferred_notices_go_out_when_the_driver_asks_or_at_the_next_tick() -> None:
    net = started(defer=True)
    i1 = net.propose("n1", b"w1")
    net["n1"].send_commit_notices()
    net.deliver()
    assert not net["n1"].commit_notices_due
    assert net["n2"].commit_index == i1 and net["n3"].commit_index == i1
    assert [len(m.entries) for m in appends_to(net, "n2")] == [1, 0]

    i2 = net.propose("n1", b"w2")
    assert net["n2"].commit_index == i1
    net.tick("n1")  # the driver never asked: the tick sends them
    assert net["n2"].commit_index == i2 and net["n3"].commit_index == i2
    assert not net["n1"].commit_notices_due


def test_a_follower_read_is_told_the_commit_index_before_its_read_point() -> None:
    """Here the read round's heartbeat tells it (a heartbeat carries the commit index up to
    what the follower has); `_release_read` sends a notice when the follower acknowledged
    the entries only after that heartbeat left."""
    net = started(defer=True)
    i1 = net.propose("n1", b"w1")
    assert net["n2"].commit_index < i1
    net["n2"].read_index(7)
    net.deliver()  # the leader's heartbeat round confirms the read point: no tick needed
    order = [type(m).__name__ for m in net.trace if m.receiver == "n2" and
             (isinstance(m, ReadIndexResponse) or (isinstance(m, AppendEntriesRequest) and not m.heartbeat))]
    assert order.index("AppendEntriesRequest") < order.index("ReadIndexResponse")
    assert (7, i1) in net.peers["n2"].read_states
    assert net["n2"].commit_index >= i1  # so the follower can apply up to the read point at once
