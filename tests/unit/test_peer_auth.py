"""aegis.peerauth and the handshake of aegis.peers: peers prove the cluster secret by HMAC
challenge-response, both ways, and the secret never crosses the wire (issue 11).

The two sides run against each other over in-memory streams that record every byte sent.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from aegis.peerauth import (
    NONCE_LEN,
    SECRET_FILE,
    PeerAuth,
    SecretFileError,
    ensure_cluster_secret,
    new_nonce,
    resolve_secret,
)
from aegis.peers import (
    FRAME_ACCEPT,
    FRAME_CHALLENGE,
    FRAME_MSG,
    FRAME_PROOF,
    FRAME_REJECT,
    PEER_MAGIC,
    PeerRefusedError,
    accept_handshake,
    dial_handshake,
    frame,
    read_frame,
)
from aegis.transport import Handshake, encode

SECRET = b"correct horse battery staple 42"
GOOD = PeerAuth(SECRET)
WRONG = PeerAuth(b"another cluster's secret, 1234")


def accept_members(hs: Handshake) -> str | None:
    return None if hs.node_id in ("n1", "n2", "n3") else f"{hs.node_id!r} is not a member"


class Recorder(trio.abc.Stream):
    """A stream that records every byte sent through it."""

    def __init__(self, inner: trio.abc.Stream, sent: bytearray) -> None:
        self.inner = inner
        self.sent = sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def hello(node_id: str = "n2") -> Handshake:
    return Handshake(node_id=node_id, cluster="aegis", nonce=new_nonce())


async def run_pair(dialer_auth: PeerAuth, acceptor_auth: PeerAuth, *, expected: str = "n1",
                   dialer_id: str = "n2") -> tuple[Handshake | None, BaseException | None, bytes]:
    """An honest dialer against an acceptor; returns what the acceptor accepted, the
    dialer's error, and every byte both sides sent."""
    a, b = trio.testing.memory_stream_pair()
    sent = bytearray()
    dialer, acceptor = Recorder(a, sent), Recorder(b, sent)
    accepted: list[Handshake | None] = []
    error: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async def accept() -> None:
            accepted.append(await accept_handshake(acceptor, bytearray(), accept_members, auth=acceptor_auth,
                                                   me="n1"))

        nursery.start_soon(accept)
        try:
            await dial_handshake(dialer, hello(dialer_id), dialer_auth, expected, "127.0.0.1:1")
        except PeerRefusedError as exc:
            error.append(exc)
            await dialer.aclose()  # as the pool does: the connection is closed
    return accepted[0], (error or [None])[0], bytes(sent)


async def test_peers_that_know_the_secret_accept_each_other_and_it_never_crosses_the_wire() -> None:
    hs, error, sent = await run_pair(GOOD, GOOD)
    assert error is None and hs is not None and hs.node_id == "n2"
    assert SECRET not in sent
    # Nor any fragment of it long enough to matter, in any encoding.
    for i in range(len(SECRET) - 8):
        assert SECRET[i : i + 8] not in sent
    assert SECRET.hex().encode() not in sent
    # The exchange: hello, challenge, proof, accept.
    assert FRAME_ACCEPT in sent and frame(FRAME_ACCEPT) == sent[-5:]


async def test_a_dialer_with_the_wrong_secret_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """The honest dialer notices first (the acceptor's proof does not verify) and closes."""
    hs, error, _ = await run_pair(WRONG, GOOD)
    assert hs is None
    assert isinstance(error, PeerRefusedError) and "did not prove it knows the cluster secret" in str(error)


async def forged_dialer(stream: trio.abc.Stream, claimed: str, proof_for: "bytes | None" = None,
                        auth: PeerAuth = WRONG, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """A dialer that ignores the acceptor's proof and answers the challenge anyway (with
    `proof_for` if given, else its own MAC under `auth`). Returns the challenge and the answer."""
    hs = Handshake(node_id=claimed, cluster="aegis", nonce=nonce or new_nonce())
    await stream.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(hs)))
    challenge = await read_frame(stream, bytearray())
    assert challenge is not None and challenge[:1] == FRAME_CHALLENGE
    na = challenge[1 : 1 + NONCE_LEN]
    proof = proof_for if proof_for is not None else auth.dialer_proof(na, hs.nonce, claimed, "n1", "aegis")
    await stream.send_all(frame(FRAME_PROOF + proof))
    answer = await read_frame(stream, bytearray())
    return challenge, answer or b""


async def accept_one(stream: trio.abc.Stream, into: list[Handshake | None]) -> None:
    into.append(await accept_handshake(stream, bytearray(), accept_members, auth=GOOD, me="n1"))


async def test_a_forged_proof_is_refused_logged_and_nothing_after_it_is_read(
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = trio.testing.memory_stream_pair()
    result: list[Handshake | None] = []
    with caplog.at_level(logging.WARNING, "aegis.peers"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_one, b, result)
            _, answer = await forged_dialer(a, "n3")
            # Whatever it sends next (a forged vote request, say) is never read.
            await a.send_all(frame(FRAME_MSG + b"\x93\x01\x02\x03"))
    assert result == [None]
    assert answer == FRAME_REJECT + b"the caller did not prove it knows the cluster secret"
    assert any("refused peer connection from 'n3': the caller did not prove it knows the cluster secret"
               in r.getMessage() for r in caplog.records)
    leftover = await b.receive_some(100)  # still in the stream: the acceptor never read it
    assert leftover == frame(FRAME_MSG + b"\x93\x01\x02\x03")


async def test_a_replayed_proof_is_refused() -> None:
    """An eavesdropper records an honest dialer's bytes and plays them back on a new
    connection: the acceptor's fresh nonce makes the recorded proof worthless."""
    _, _, sent = await run_pair(GOOD, GOOD)
    a, b = trio.testing.memory_stream_pair()
    dialer_bytes = bytearray()
    recorder = Recorder(a, dialer_bytes)
    result: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one, b, result)
        await dial_handshake(recorder, hello("n2"), GOOD, "n1", "x")
    assert result[0] is not None
    # Replay exactly what the honest dialer sent: its hello, then its proof.
    a2, b2 = trio.testing.memory_stream_pair()
    result2: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one, b2, result2)
        await a2.send_all(bytes(dialer_bytes))
        buf = bytearray()
        challenge = await read_frame(a2, buf)
        answer = await read_frame(a2, buf)
    assert challenge is not None and challenge[:1] == FRAME_CHALLENGE
    assert result2 == [None] and answer == FRAME_REJECT + b"the caller did not prove it knows the cluster secret"


async def test_a_replayed_challenge_does_not_fool_a_dialer() -> None:
    """A fake acceptor replays a real node's challenge (nonce and proof) to a new dialer:
    the proof covers the *first* dialer's nonce, so the second refuses."""
    a, b = trio.testing.memory_stream_pair()
    acceptor_bytes = bytearray()
    result: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one, Recorder(b, acceptor_bytes), result)
        await dial_handshake(a, hello("n2"), GOOD, "n1", "x")
    recorded_challenge = bytes(acceptor_bytes[: len(acceptor_bytes) - len(frame(FRAME_ACCEPT))])
    a2, b2 = trio.testing.memory_stream_pair()
    await b2.send_all(recorded_challenge)
    with pytest.raises(PeerRefusedError, match="did not prove it knows the cluster secret"):
        await dial_handshake(a2, hello("n2"), GOOD, "n1", "x")


async def test_the_acceptor_is_no_oracle_for_a_dialer_proof() -> None:
    """The acceptor answers any stranger's nonce with a MAC (step 2). A forger that sends
    the nonce of one connection's challenge as its own nonce on a second connection gets a
    MAC over it, and offers that as its proof on the first: refused (different labels)."""
    a1, b1 = trio.testing.memory_stream_pair()
    a2, b2 = trio.testing.memory_stream_pair()
    results: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one, b1, results)
        nursery.start_soon(accept_one, b2, results)
        nonce1 = new_nonce()
        await a1.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(Handshake(node_id="n2", cluster="aegis",
                                                                          nonce=nonce1))))
        buf1 = bytearray()
        ch1 = await read_frame(a1, buf1)
        assert ch1 is not None
        na1 = ch1[1 : 1 + NONCE_LEN]
        await a2.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(Handshake(node_id="n2", cluster="aegis",
                                                                          nonce=na1))))
        buf2 = bytearray()
        ch2 = await read_frame(a2, buf2)
        assert ch2 is not None
        oracle = ch2[1 + NONCE_LEN : 1 + NONCE_LEN + 32]
        await a1.send_all(frame(FRAME_PROOF + oracle))
        answer = await read_frame(a1, buf1)
        await a2.aclose()
    assert answer == FRAME_REJECT + b"the caller did not prove it knows the cluster secret"
    assert results == [None, None]


async def test_an_acceptor_with_another_secret_or_id_is_refused_by_the_dialer() -> None:
    hs, error, _ = await run_pair(GOOD, WRONG)
    assert hs is None and isinstance(error, PeerRefusedError)
    assert "n1 at 127.0.0.1:1 did not prove it knows the cluster secret" in str(error)
    hs, error, _ = await run_pair(GOOD, GOOD, expected="n3")
    assert hs is None and isinstance(error, PeerRefusedError)
    assert "the node at 127.0.0.1:1 is 'n1', not 'n3'" in str(error)


async def test_a_stranger_is_refused_before_any_challenge() -> None:
    hs, error, sent = await run_pair(GOOD, GOOD, dialer_id="intruder")
    # Refused at its hello (no challenge, so no MAC computed for a stranger).
    assert hs is None and isinstance(error, PeerRefusedError)
    assert "n1 at 127.0.0.1:1 refused the handshake: 'intruder' is not a member" in str(error)


async def test_the_old_handshake_with_a_token_in_the_clear_is_refused() -> None:
    a, b = trio.testing.memory_stream_pair()
    result: list[Handshake | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_one, b, result)
        await a.send_all(PEER_MAGIC + frame(FRAME_MSG + encode(Handshake("n2", "aegis", 1, b"s3cret"))))
        reply = await read_frame(a, bytearray())
    assert result == [None] and reply is not None and reply.startswith(FRAME_REJECT + b"peer protocol 1 is not")


def test_the_secret_stays_out_of_repr() -> None:
    assert "correct horse" not in repr(GOOD) and "correct horse" not in str(GOOD)


def test_proofs_bind_ids_cluster_and_direction() -> None:
    n1, n2 = new_nonce(), new_nonce()
    base = GOOD.dialer_proof(n1, n2, "n2", "n1", "aegis")
    assert GOOD.check_dialer(base, n1, n2, "n2", "n1", "aegis")
    assert not GOOD.check_dialer(base, n1, n2, "n3", "n1", "aegis")
    assert not GOOD.check_dialer(base, n1, n2, "n2", "n3", "aegis")
    assert not GOOD.check_dialer(base, n1, n2, "n2", "n1", "other")
    assert not GOOD.check_dialer(base, n2, n1, "n2", "n1", "aegis")
    assert GOOD.acceptor_proof(n1, "n2", "n1", "aegis") != GOOD.dialer_proof(n1, b"", "n2", "n1", "aegis")
    # Length prefixes: moving a byte from one field to the next changes the MAC.
    assert GOOD.acceptor_proof(n1, "n2", "n1", "aegis") != GOOD.acceptor_proof(n1, "n2n", "1", "aegis")


def test_aegis_up_gives_every_node_the_same_private_secret(tmp_path: Path) -> None:
    dirs = [tmp_path / f"n{i}" for i in (1, 2, 3)]
    assert ensure_cluster_secret(dirs) is True
    secrets = {(d / SECRET_FILE).read_bytes() for d in dirs}
    assert len(secrets) == 1 and len(secrets.pop().strip()) == 64
    assert all(stat.S_IMODE((d / SECRET_FILE).stat().st_mode) == 0o600 for d in dirs)
    # Again (a restart), and with a fourth node: the same secret, nothing new.
    before = (dirs[0] / SECRET_FILE).read_bytes()
    dirs.append(tmp_path / "n4")
    assert ensure_cluster_secret(dirs) is False
    assert {(d / SECRET_FILE).read_bytes() for d in dirs} == {before}
    (dirs[1] / SECRET_FILE).unlink()
    (dirs[1] / SECRET_FILE).write_text("a different secret of enough length\n")
    with pytest.raises(SecretFileError, match="differ"):
        ensure_cluster_secret(dirs)


def test_serve_takes_the_secret_file_then_the_data_dir_then_the_token(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    data.mkdir()
    assert resolve_secret(None, str(data), None) == (None, "", [])
    assert resolve_secret(None, str(data), "tok")[:2] == (b"tok", "--token")
    ensure_cluster_secret([data])
    in_data = (data / SECRET_FILE).read_bytes().strip()
    secret, source, warnings = resolve_secret(None, str(data), "tok")
    assert (secret, source, warnings) == (in_data, str(data / SECRET_FILE), [])
    explicit = tmp_path / "explicit.secret"
    explicit.write_text("an explicit secret, long enough")
    explicit.chmod(0o644)
    secret, source, warnings = resolve_secret(str(explicit), str(data), "tok")
    assert secret == b"an explicit secret, long enough" and source == str(explicit)
    assert len(warnings) == 1 and "readable by others (mode 0644)" in warnings[0]
    explicit.write_text("short\n")
    with pytest.raises(SecretFileError, match="at least 16"):
        resolve_secret(str(explicit), str(data), None)
    with pytest.raises(SecretFileError, match="cannot read the secret file"):
        resolve_secret(str(tmp_path / "missing"), str(data), None)


class Ragged(trio.abc.Stream):
    """A stream that delivers `data`, then fails as a TLS stream does at a ragged EOF."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        pass

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.data:
            data, self.data = self.data, b""
            return data
        raise trio.BrokenResourceError("ragged EOF")

    async def aclose(self) -> None:
        pass


async def test_a_caller_that_vanishes_mid_handshake_is_just_forgotten() -> None:
    """Over TLS a caller that closes without close_notify makes receive_some raise: the
    acceptor returns None (it used to raise, and the exception took the node down)."""
    hs = Handshake(node_id="n2", cluster="aegis", nonce=new_nonce())
    for data in (b"", PEER_MAGIC[:3], PEER_MAGIC + frame(FRAME_MSG + encode(hs))):
        assert await accept_handshake(Ragged(data), bytearray(), accept_members, auth=GOOD, me="n1") is None
