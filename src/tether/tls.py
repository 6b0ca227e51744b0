"""TLS contexts for both directions, built in one place.

Client side: one context per :class:`~tether.client.pool.TLSIdentity`, so the
identity a connection is pooled under is exactly the one it was opened with.
Server side: a context from ``--ssl-*`` flags that records each connection's SNI
name for the ASGI ``tls`` extension. Must never turn verification off unless asked.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from tether.errors import ConfigError

logger = logging.getLogger("tether.server")

MINIMUM_VERSIONS = {
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


def client_context(
    *, verify: bool, ca: str | None, cert: tuple[str, ...] | None,
    minimum_version: str = "TLSv1_2", alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    """A client context: system CAs (or ``ca``), hostname checking, ALPN http/1.1."""
    ctx = ssl.create_default_context(cafile=ca if ca and not _is_dir(ca) else None,
                                     capath=ca if ca and _is_dir(ca) else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    ctx.minimum_version = MINIMUM_VERSIONS[minimum_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def server_context(
    certfile: str, keyfile: str | None, *, password: str | None = None,
    ca_certs: str | None = None, cert_reqs: str = "none", ciphers: str | None = None,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    """A server context for ``--ssl-*``; raises ConfigError with the reason if unusable.
    ``alpn``: the protocols offered, most preferred first (``h2`` when HTTP/2 is on)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        # ssl reports a missing file without its name: check first, say which.
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag}: cannot read {path!r}")
    try:
        ctx.load_cert_chain(certfile, keyfile, password=password)
    except FileNotFoundError as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: cannot read {exc.filename}") from exc
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--ssl-certfile/--ssl-keyfile: the key does not match the certificate, or one "
            f"of them is not valid PEM ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: {exc}") from exc
    if ca_certs:
        try:
            ctx.load_verify_locations(ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-ca-certs: cannot load {ca_certs}: {exc}") from exc
    ctx.verify_mode = CERT_REQS[cert_reqs]
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ssl-ciphers: no usable cipher in {ciphers!r}") from exc
    ctx.set_alpn_protocols(list(alpn))
    ctx.sni_callback = _record_sni
    ctx.sslobject_class = _HandshakeLoggingSSLObject
    return ctx


class _HandshakeLoggingSSLObject(ssl.SSLObject):
    """Logs a failed handshake once, at debug level. asyncio and uvloop report these
    only in loop debug mode; a client that cannot do TLS (plain HTTP on the TLS
    port, a wrong CA, a scanner) concerns itself alone, so never more than debug."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not a failure: the handshake needs more bytes
        except ssl.SSLError as exc:
            logger.debug("TLS handshake failed: %s", exc.reason or exc)
            raise


def _record_sni(sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
    # The ASGI tls extension has no SNI field; tether keeps it on the SSL object
    # so the protocol can expose it in scope["extensions"]["tls"]["server_name"].
    sslobj.tether_sni = server_name


def tls_extension(sslobj: Any) -> dict[str, Any]:
    """The ASGI TLS extension for a server-side connection."""
    if sslobj is None:
        return {}
    peer = sslobj.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(peer)] if peer else []
    name = None
    info = sslobj.getpeercert() if peer else None
    if info:
        for rdn in info.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    name = f"CN={value}"
    cipher = sslobj.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(sslobj.version()),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
        "server_name": getattr(sslobj, "tether_sni", None),
        "alpn_protocol": sslobj.selected_alpn_protocol(),
    }


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
