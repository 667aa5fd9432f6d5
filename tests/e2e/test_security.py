"""Peer secrets and TLS against real `aegis serve` processes (issue 11).

* `aegis up` writes one private cluster secret into every node's data directory, and its
  nodes use it (no "no cluster secret" warning; writes replicate through HMAC handshakes).
* A TLS cluster: peers over mutual TLS, clients through redis-py `ssl=True`, `redis-cli
  --tls`, `aegis status`, `aegis snapshot save` and `aegis-shell` with `--tls-ca`; a peer
  with a certificate of another CA, or with none, is refused.

The CA, keys and certificates are made at test time in the test's temporary directory
(the `cryptography` package); nothing secret is committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from aegis.peerauth import SECRET_FILE
from aegis.peers import FRAME_MSG, FRAME_REJECT, PEER_MAGIC, frame
from aegis.transport import Handshake, encode

from .harness import LocalCluster, free_port_run, wait_until

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


# ---------------------------------------------------------------------- certificates
def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(d: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = d / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_cert(d: Path, name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]) -> tuple[Path, Path]:
    ca_key, ca_cert, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, pem = d / f"{name}.crt", d / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pem)
    return crt, pem


# ---------------------------------------------------------------------- aegis up
def test_aegis_up_generates_one_private_secret_and_its_nodes_use_it(tmp_path: Path) -> None:
    base = free_port_run(3)
    data = tmp_path / "data"
    up = subprocess.Popen([sys.executable, "-m", "aegis.cli", "up", "--data", str(data), "--port", str(base),
                           "--tick-ms", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    try:
        clients = [redis.Redis(port=base + i, socket_timeout=5) for i in range(3)]
        wait_until(lambda: clients[0].set("up", "secret"), 20, what="the cluster to serve")
        for c in clients:  # replicated, so the nodes' HMAC handshakes succeeded
            wait_until(lambda: c.get("up") == b"secret", 10, what="every node to replicate")
        files = [data / f"n{i}" / SECRET_FILE for i in (1, 2, 3)]
        secrets = {f.read_bytes() for f in files}
        assert len(secrets) == 1 and len(secrets.pop().strip()) == 64
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, err = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            out, err = up.communicate()
    assert up.returncode == 0, err
    assert "new cluster secret" in out
    assert "no cluster secret" not in err and "refused peer connection" not in err, err


# ---------------------------------------------------------------------- TLS
class Pki:
    def __init__(self, d: Path) -> None:
        d.mkdir()
        self.dir = d
        self.ca = make_ca(d, "cluster-ca")
        self.ca_file = self.ca[2]
        self.nodes = {f"n{i}": make_cert(d, f"n{i}", self.ca) for i in (1, 2, 3)}
        self.client = make_cert(d, "client", self.ca)
        self.rogue_ca = make_ca(d, "rogue-ca")
        self.rogue = make_cert(d, "rogue", self.rogue_ca)


class TlsCluster(LocalCluster):
    def __init__(self, root: Path, pki: Pki) -> None:
        super().__init__(root, n=3)
        self.pki = pki

    def command(self, nid: str) -> list[str]:
        crt, key = self.pki.nodes[nid]
        return [*super().command(nid), "--tls-cert", str(crt), "--tls-key", str(key),
                "--tls-ca", str(self.pki.ca_file)]

    def tls_client(self, nid: str) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.nodes[nid].port, ssl=True,
                           ssl_ca_certs=str(self.pki.ca_file), socket_timeout=10)

    def role(self, nid: str) -> str:
        return str(self.tls_client(nid).execute_command("INFO").get("role", ""))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls") / "pki")


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: Pki) -> Iterator[TlsCluster]:
    c = TlsCluster(tmp_path, pki)
    try:
        c.start(wait=False)
        for nid in c.nodes:
            wait_until(c.tls_client(nid).ping, 15, what=f"{nid} to serve TLS")
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop_all()



def leader_of(c: TlsCluster) -> str:
    def find() -> str | None:
        leaders = [n for n in c.nodes if c.role(n) == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    return str(wait_until(find, 15, what="a leader over TLS"))


def test_a_tls_cluster_serves_redis_py_redis_cli_and_the_aegis_tools(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    try:
        check_tls_cluster_serves(tls_cluster, tmp_path)
    except BaseException:
        print(tls_cluster.logs())
        raise


def check_tls_cluster_serves(c: TlsCluster, tmp_path: Path) -> None:
    leader = leader_of(c)  # elected over mutual-TLS peer connections
    follower = next(n for n in c.nodes if n != leader)
    # redis-py with ssl=True, through a follower (forwarded to the leader over peer TLS).
    assert c.tls_client(follower).set("tls", "yes")
    for nid in c.nodes:
        wait_until(lambda: c.tls_client(nid).get("tls") == b"yes", 10, what=f"{nid} to replicate")
    # A plaintext client gets nothing from a TLS port.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=c.nodes[leader].port, socket_timeout=3).ping()
    port = str(c.nodes[follower].port)
    ca = str(c.pki.ca_file)
    if shutil.which("redis-cli"):
        out = subprocess.run(["redis-cli", "--tls", "--cacert", ca, "-p", port, "SET", "cli", "tls"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "OK", out
        out = subprocess.run(["redis-cli", "--tls", "--cacert", ca, "-p", port, "GET", "cli"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "tls", out
    addr = f"127.0.0.1:{port}"
    status = subprocess.run([sys.executable, "-m", "aegis.cli", "status", "--addr", addr, "--tls-ca", ca, "--json"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert '"node_id": "%s"' % follower in status.stdout
    shell = subprocess.run([sys.executable, "-m", "shell", "--addr", addr, "--tls-ca", ca, "GET", "tls"],
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0 and "yes" in shell.stdout, shell
    backup = tmp_path / "tls.snap"
    save = subprocess.run([sys.executable, "-m", "aegis.cli", "snapshot", "save", str(backup), "--addr", addr,
                           "--tls-ca", ca], capture_output=True, text=True, timeout=60)
    assert save.returncode == 0, save.stderr
    assert backup.exists() and backup.stat().st_size > 0
    # Without TLS, the tools say what went wrong, in a line.
    plain = subprocess.run([sys.executable, "-m", "aegis.cli", "status", "--addr", addr],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "cannot reach" in plain.stderr and "Traceback" not in plain.stderr


def peer_over_tls(port: int, ctx: ssl.SSLContext) -> bytes:
    """Open a TLS connection and start a peer handshake claiming to be n2; the first frame
    that came back (b"" if the node closed it, as after a failed TLS handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(PEER_MAGIC + frame(FRAME_MSG + encode(Handshake("n2", "aegis", nonce=b"n" * 32))))
                data = b""
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    more = s.recv(4096)
                    if not more:
                        break
                    data += more
                return data
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_peers_need_a_certificate_of_the_cluster_ca(tls_cluster: TlsCluster) -> None:
    try:
        check_peers_need_a_certificate(tls_cluster)
    except BaseException:
        print(tls_cluster.logs())
        raise


def check_peers_need_a_certificate(c: TlsCluster) -> None:
    pki = c.pki
    node = c.nodes["n1"]

    def ctx(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        x = ssl.create_default_context(cafile=str(pki.ca_file))
        x.check_hostname = False
        if cert is not None:
            x.load_cert_chain(*map(str, cert))
        return x

    # A certificate from another CA: the TLS handshake itself fails, nothing is read.
    assert peer_over_tls(node.port, ctx(pki.rogue)) == b""
    # No certificate at all: TLS is fine for a client, but a peer is refused.
    reply = peer_over_tls(node.port, ctx(None))
    assert reply[4:5] == FRAME_REJECT and b"must present a TLS certificate" in reply
    # A certificate of the cluster CA gets as far as the HMAC challenge.
    assert peer_over_tls(node.port, ctx(pki.client))[4:5] == b"C"
    time.sleep(0.2)
    log = node.log.read_text()
    assert "TLS handshake with 127.0.0.1:" in log and "failed" in log
    assert "refused a peer connection that presented no TLS certificate" in log
    # A whole node with a certificate of another CA: n3 restarted with one is refused by
    # the others (its client certificate), and refuses nothing less from them (its server
    # certificate does not verify for them either), so it hears nothing and joins nothing.
    leader = leader_of(c)
    rogue = "n3" if leader != "n3" else "n2"
    c.kill(rogue)
    c.pki.nodes[rogue] = pki.rogue
    c.start(rogue, wait=False)
    other = next(n for n in c.nodes if n not in (leader, rogue))
    wait_until(lambda: f"cannot connect to peer {rogue}: TLS" in c.nodes[leader].log.read_text(), 15,
               what=f"{leader} to refuse {rogue}'s certificate")
    wait_until(lambda: "cannot connect to peer" in c.nodes[rogue].log.read_text(), 15,
               what=f"{rogue} to be refused")
    assert c.tls_client(leader).set("after", "rogues")
    wait_until(lambda: c.tls_client(other).get("after") == b"rogues", 10, what=f"{other} to replicate")
    rogue_client = redis.Redis(host="127.0.0.1", port=c.nodes[rogue].port, ssl=True,
                               ssl_ca_certs=str(pki.rogue_ca[2]), socket_timeout=5)
    with pytest.raises(redis.ResponseError, match="NOLEADER"):  # it has no leader: cut off
        rogue_client.get("after")
