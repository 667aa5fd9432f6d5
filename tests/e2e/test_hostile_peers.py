"""Forged peers against real nodes (issue 11): frames in flight cannot make a node hold
more than a handshake before a peer is accepted, nor more than one frame per member after;
and a forger without the cluster secret is refused at the handshake, so it cannot change a
node's term."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from aegis.log import LogIndex, Term
from aegis.messages import TimeoutNow, VoteRequest
from aegis.peerauth import NONCE_LEN, PeerAuth, new_nonce
from aegis.peers import (
    FRAME_ACCEPT,
    FRAME_CHALLENGE,
    FRAME_MSG,
    FRAME_PROOF,
    FRAME_REJECT,
    HANDSHAKE_FRAME_LIMIT,
    MAX_PEER_FRAME,
    PEER_MAGIC,
    frame,
)
from aegis.transport import Handshake, encode

from .harness import LocalCluster, rss_anon_mib, running, wait_until

FORGERS = 16
SEND = 48 << 20  # of a declared 64 MiB frame: 768 MiB in all if it were held


def read_reply(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        more = s.recv(65536)
        if not more:
            return b""
        buf += more
    return buf[4 : 4 + int.from_bytes(buf[:4], "big")]


def forge_handshake(s: socket.socket, claimed: str, to: str, secret: bytes) -> bytes:
    """Run the peer handshake claiming to be `claimed`, proving with `secret` (right or
    wrong), against node `to`; returns the node's final answer (ACCEPT or REJECT + why)."""
    hs = Handshake(node_id=claimed, cluster="aegis", nonce=new_nonce())
    s.sendall(PEER_MAGIC + frame(FRAME_MSG + encode(hs)))
    challenge = read_reply(s)
    if not challenge.startswith(FRAME_CHALLENGE):
        return challenge
    na = challenge[1 : 1 + NONCE_LEN]
    s.sendall(frame(FRAME_PROOF + PeerAuth(secret).dialer_proof(na, hs.nonce, claimed, to, "aegis")))
    return read_reply(s)


def send_big_frame(s: socket.socket) -> None:
    """A legal frame header (64 MiB) and most of its body; stops if the node closes."""
    chunk = b"\x00" * (1 << 20)
    try:
        s.sendall(MAX_PEER_FRAME.to_bytes(4, "big") + FRAME_MSG)
        for _ in range(SEND // len(chunk)):
            s.sendall(chunk)
    except OSError:
        pass


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with running(LocalCluster(tmp_path, n=getattr(request, "param", 3))) as c:
        yield c


def test_a_stranger_may_send_only_a_small_handshake_frame(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=1, extra=["--token", "s3cret"])
    try:
        c.start(wait=False)
        n1 = c.nodes["n1"]
        wait_until(lambda: n1.client(password="s3cret").ping(), 15, what="n1 to serve")
        assert n1.proc is not None
        baseline = rss_anon_mib(n1.proc.pid)
        socks = []
        for _ in range(FORGERS):
            s = socket.create_connection(("127.0.0.1", n1.port), timeout=10)
            socks.append(s)
            s.sendall(PEER_MAGIC)
            send_big_frame(s)  # as its "handshake"
        grown = rss_anon_mib(n1.proc.pid) - baseline
        replies = [read_reply(s) for s in socks]
        for s in socks:
            s.close()
        print(f"{FORGERS} strangers with 64 MiB frames: RssAnon +{grown:.0f} MiB")
        assert grown < 20, f"RssAnon grew by {grown:.0f} MiB"
        # Refused from the frame's header, or as soon as the connection holds more than a
        # handshake's worth (when the header arrived with the first 64 KiB of the body).
        too_big = FRAME_REJECT + (f"handshake refused: peer frame of {MAX_PEER_FRAME} bytes exceeds the limit "
                                  f"of {HANDSHAKE_FRAME_LIMIT}").encode()
        too_much = FRAME_REJECT + b"handshake refused: this peer connection would hold"
        assert all(r == too_big or r.startswith(too_much) for r in replies), replies
        assert n1.client(password="s3cret").set("k", "v")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()


def test_forged_members_hold_at_most_one_frame_each(cluster: LocalCluster) -> None:
    """Without --token anyone may claim a member's id; 16 such forgers each sending a 64 MiB
    frame used to push a leader past 1 GiB. Now a member has one connection in at a time."""
    leader = cluster.leader()
    node = cluster.nodes[leader]
    assert node.proc is not None
    members = [n for n in cluster.nodes if n != leader]
    baseline = rss_anon_mib(node.proc.pid)
    peak = 0.0
    socks = []
    for i in range(FORGERS):
        s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        socks.append(s)
        # No secret on this cluster (the warned-about default of a bare `aegis serve`): the
        # forger computes the proofs with the empty key, as the nodes do.
        assert forge_handshake(s, members[i % len(members)], leader, b"") == FRAME_ACCEPT
        send_big_frame(s)
        peak = max(peak, rss_anon_mib(node.proc.pid) - baseline)
    time.sleep(0.5)
    peak = max(peak, rss_anon_mib(node.proc.pid) - baseline)
    for s in socks:
        s.close()
    print(f"{FORGERS} forged members with 64 MiB frames: RssAnon peak +{peak:.0f} MiB")
    # Two members' frames (and their copies while parsed) at most, not sixteen.
    assert peak < 2 * 64 * 2 + 40, f"RssAnon grew by {peak:.0f} MiB"
    # The real members got their connections back: the cluster writes and replicates.
    c = cluster.nodes[cluster.leader()].client()
    assert c.set("after", "forgers")
    for nid in cluster.nodes:
        wait_until(lambda: cluster.nodes[nid].client().get("after") == b"forgers", 10, what=f"{nid} to replicate")


def test_a_forged_peer_without_the_secret_cannot_change_a_term(tmp_path: Path) -> None:
    """The issue 11 attack (a transfer vote request at a huge term, then TimeoutNow), from a
    connection claiming to be a member, against a cluster with a secret: refused at the
    handshake and logged; nothing it sends after is read; no node changes term."""
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text("the real cluster secret, 0123456789abcdef\n")
    secret_file.chmod(0o600)
    with running(LocalCluster(tmp_path, n=3, extra=["--secret-file", str(secret_file)]), leader=True) as c:
        leader = c.leader()
        term = c.info(leader)["term"]
        attack = [VoteRequest(term=Term(int(term) + 1000), candidate_id="n2", last_log_index=LogIndex(1 << 40),
                              last_log_term=Term(int(term)), transfer=True),
                  TimeoutNow(term=Term(int(term)), leader_id="n2")]
        answers = []
        for target in c.nodes:
            if target == "n2":
                continue
            for secret in (b"", b"a guess at the secret, 0123456789"):
                with socket.create_connection(("127.0.0.1", c.nodes[target].port), timeout=10) as s:
                    answers.append(forge_handshake(s, "n2", target, secret))
                    try:  # sent anyway, as if accepted: never read
                        s.sendall(b"".join(frame(FRAME_MSG + encode(replace_receiver(m, target))) for m in attack))
                    except OSError:
                        pass
            # The old handshake, with a token in the clear, is refused too.
            with socket.create_connection(("127.0.0.1", c.nodes[target].port), timeout=10) as s:
                s.sendall(PEER_MAGIC + frame(FRAME_MSG + encode(Handshake("n2", "aegis", 1, b"s3cret"))))
                answers.append(read_reply(s))
        assert all(a == FRAME_REJECT + b"the caller did not prove it knows the cluster secret"
                   for a in answers[:2] + answers[3:5]), answers
        assert answers[2].startswith(FRAME_REJECT + b"peer protocol 1 is not spoken here")
        time.sleep(1.0)  # ample time for any effect of the attack to show
        assert {c.info(n)["term"] for n in c.nodes} == {term}
        assert c.leader() == leader
        assert c.nodes[leader].client().set("after", "forgery")
        for nid in c.nodes:
            wait_until(lambda: c.nodes[nid].client().get("after") == b"forgery", 10, what=f"{nid} to replicate")
        logs = "".join(c.nodes[n].log.read_text() for n in c.nodes if n != "n2")
        assert "refused peer connection from 'n2': the caller did not prove it knows the cluster secret" in logs
        assert "no cluster secret" not in logs  # the nodes have one: no warning
        assert "ImpossibleTermError" not in logs and "refused VoteRequest" not in logs  # never got that far


def replace_receiver(m: VoteRequest | TimeoutNow, receiver: str) -> VoteRequest | TimeoutNow:
    from dataclasses import replace

    return replace(m, receiver=receiver)
