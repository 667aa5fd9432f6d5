"""TLS contexts for the node's one port, its peer connections, and clients (Python's ssl).

A node with `--tls-cert/--tls-key/--tls-ca` speaks only TLS on its port, to clients and
peers alike (the first bytes after the TLS handshake still tell them apart). Peers use
mutual TLS: a node dialing a peer presents its own certificate and requires the peer's to
chain to `--tls-ca`; a node accepting a peer connection requires the dialer to have
presented a certificate that chains to `--tls-ca` (`peer_cert_presented`). Host names are
not checked between peers: a peer is known by node id, not by address (DESIGN.md §3:
proxies, NAT), and the HMAC handshake inside the TLS session proves which node it is. The
CA is the trust root of the cluster: give it only to the nodes' certificates.

Clients are verified against `--tls-ca` if they present a certificate, and must present
one with `--tls-verify-clients`. Clients verify the node against their CA, host name
included unless told otherwise (`client_context(check_hostname=False)`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TlsConfig", "TlsConfigError", "client_context", "peer_cert_presented"]


class TlsConfigError(Exception):
    """A certificate, key or CA file that cannot be used: a clear message, nothing started."""


@dataclass(frozen=True)
class TlsConfig:
    cert: str
    key: str
    ca: str
    verify_clients: bool = False

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(ctx, self.cert, self.key)
        _load_ca(ctx, self.ca)
        # Clients may present a certificate (then it must verify); peers must (checked once
        # the connection says it is a peer), every client too with --tls-verify-clients.
        ctx.verify_mode = ssl.CERT_REQUIRED if self.verify_clients else ssl.CERT_OPTIONAL
        # No session tickets after the handshake: a client that polls an idle connection to
        # see whether the node closed it would otherwise find these bytes there.
        ctx.num_tickets = 0
        return ctx

    def peer_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # by id, not address (see the module's docstring)
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_chain(ctx, self.cert, self.key)
        _load_ca(ctx, self.ca)
        return ctx


def client_context(ca: str | None = None, *, cert: str | None = None, key: str | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """A client's context: the node verified against `ca` (the system's CAs if None)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(ctx, ca)
    ctx.check_hostname = check_hostname
    if cert is not None:
        _load_chain(ctx, cert, key)
    return ctx


def peer_cert_presented(stream: object) -> bool:
    """Whether a TLS stream's other side presented a certificate that verified (always
    false for a plain TCP stream)."""
    getpeercert = getattr(stream, "getpeercert", None)
    return bool(getpeercert()) if getpeercert is not None else False


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"cannot read the TLS certificate or key: {exc.filename}: {exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use the TLS certificate {cert} with key {key}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"cannot read the TLS CA file {exc.filename or ca}: {exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use the TLS CA file {ca}: {exc}") from None
