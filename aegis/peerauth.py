"""Peer authentication: the cluster secret and the HMAC challenge-response of the handshake.

Theory of operation
-------------------
Every member of a cluster knows one secret (`aegis up` writes it into each node's data
directory as `SECRET_FILE`; `aegis serve` takes it from `--secret-file`, that file, or
`--token`). A peer connection proves knowledge of it in both directions, and the secret
itself never crosses the wire:

1. the dialer sends its `Handshake` (its id, the cluster, and a fresh random nonce ``Nd``);
2. the acceptor answers with its own fresh nonce ``Na``, its id, and
   ``HMAC-SHA256(secret, "acceptor" | Nd | dialer | acceptor | cluster)``;
3. the dialer checks that proof, then sends
   ``HMAC-SHA256(secret, "dialer" | Na | Nd | dialer | acceptor | cluster)``;
4. the acceptor checks it (`hmac.compare_digest`) and accepts, or refuses and closes.

Each side's proof covers a nonce the *other* side has just drawn, so a recorded proof is
worthless on any other connection (no replay). The two proofs carry different labels, so
the acceptor, which answers any stranger's nonce in step 2, is no oracle for a dialer's
proof (no reflection). Every field is length-prefixed, so no two different field lists MAC
the same bytes. Ids and cluster are bound in, so a proof for one pair of nodes or one
cluster says nothing about another.

A node with no secret uses the empty key: it still runs the same exchange (so a node with
a secret and one without refuse each other, loudly), but anyone can compute the proofs;
`aegis serve` warns about that at start.

Pure: no I/O but reading and writing the secret file; no trio.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NONCE_LEN",
    "PROOF_LEN",
    "SECRET_FILE",
    "PeerAuth",
    "SecretFileError",
    "ensure_cluster_secret",
    "generate_secret",
    "new_nonce",
    "read_secret_file",
    "resolve_secret",
    "write_secret_file",
]

NONCE_LEN = 32
PROOF_LEN = 32  # SHA-256
SECRET_FILE = "cluster.secret"  # in a node's data directory
_LABEL = b"aegis-peer-auth/2 "
MIN_SECRET_LEN = 16


class SecretFileError(Exception):
    """A secret file that cannot be used (missing, empty, unreadable): a clear message."""


def generate_secret() -> str:
    """A new cluster secret: 256 random bits, as hex (printable, so a file an operator copies)."""
    return secrets.token_hex(32)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_LEN)


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` to `path` readable by its owner only (mode 0600), durably; never
    overwrites an existing file (O_EXCL), so two writers cannot leave different secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_secret_file(path: Path) -> tuple[bytes, str | None]:
    """The secret in `path` (surrounding whitespace stripped), and a warning if the file can
    be read by others than its owner."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise SecretFileError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    secret = raw.strip()
    if len(secret) < MIN_SECRET_LEN:
        raise SecretFileError(f"the secret file {path} holds {len(secret)} bytes; a cluster secret needs at "
                              f"least {MIN_SECRET_LEN} (aegis up writes 64 hex digits)")
    warning = None
    if stat.S_IMODE(st.st_mode) & 0o077:
        warning = (f"the secret file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                   f"run: chmod 600 {path}")
    return secret, warning


def _mac(key: bytes, label: bytes, *fields: bytes) -> bytes:
    msg = bytearray(_LABEL + label)
    for f in fields:
        msg += len(f).to_bytes(4, "big") + f
    return hmac.new(key, bytes(msg), hashlib.sha256).digest()


@dataclass(frozen=True)
class PeerAuth:
    """What a node needs to prove itself to peers and check their proofs. The secret is
    kept out of `repr` (and so out of every log line)."""

    secret: bytes = field(repr=False)

    @property
    def open(self) -> bool:
        """No secret: any process that can reach the port can act as a peer."""
        return not self.secret

    def acceptor_proof(self, dialer_nonce: bytes, dialer: str, acceptor: str, cluster: str) -> bytes:
        return _mac(self.secret, b"acceptor", dialer_nonce, dialer.encode(), acceptor.encode(), cluster.encode())

    def dialer_proof(self, acceptor_nonce: bytes, dialer_nonce: bytes, dialer: str, acceptor: str,
                     cluster: str) -> bytes:
        return _mac(self.secret, b"dialer", acceptor_nonce, dialer_nonce, dialer.encode(), acceptor.encode(),
                    cluster.encode())

    def check_acceptor(self, proof: bytes, dialer_nonce: bytes, dialer: str, acceptor: str, cluster: str) -> bool:
        return hmac.compare_digest(proof, self.acceptor_proof(dialer_nonce, dialer, acceptor, cluster))

    def check_dialer(self, proof: bytes, acceptor_nonce: bytes, dialer_nonce: bytes, dialer: str, acceptor: str,
                     cluster: str) -> bool:
        return hmac.compare_digest(proof, self.dialer_proof(acceptor_nonce, dialer_nonce, dialer, acceptor, cluster))


def resolve_secret(secret_file: str | None, data_dir: str, token: str | None) -> tuple[bytes | None, str, list[str]]:
    """The peer secret `aegis serve` uses, where it came from, and warnings to log.

    `--secret-file` first, then `SECRET_FILE` in the data directory (written by `aegis up`),
    then `--token` (which is also what clients AUTH with). None: no secret at all."""
    warnings: list[str] = []
    if secret_file is not None:
        secret, warning = read_secret_file(Path(secret_file))
        return secret, secret_file, [warning] if warning else []
    in_data = Path(data_dir) / SECRET_FILE
    if in_data.exists():
        secret, warning = read_secret_file(in_data)
        return secret, str(in_data), [warning] if warning else []
    if token:
        return token.encode(), "--token", warnings
    return None, "", warnings


def ensure_cluster_secret(data_dirs: list[Path]) -> bool:
    """Give every data directory of a local cluster the same `SECRET_FILE` (`aegis up`):
    a new secret if none has one, else the one they have. True if a new one was made."""
    found: dict[bytes, list[Path]] = {}
    for d in data_dirs:
        if (d / SECRET_FILE).exists():
            secret, _ = read_secret_file(d / SECRET_FILE)
            found.setdefault(secret, []).append(d)
    if len(found) > 1:
        where = "; ".join(", ".join(str(d) for d in dirs) for dirs in found.values())
        raise SecretFileError(f"the nodes' {SECRET_FILE} files differ ({where}): one cluster has one secret")
    secret_text = next(iter(found)).decode() if found else generate_secret()
    for d in data_dirs:
        d.mkdir(parents=True, exist_ok=True)
        if not (d / SECRET_FILE).exists():
            write_secret_file(d / SECRET_FILE, secret_text)
    return not found
