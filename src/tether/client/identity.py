"""The full identity of an outbound connection: what the pool keys on.

Field report 4 (docs/incidents.md, Apache Traffic Server) is why :class:`PoolKey`
holds everything that makes a connection distinct (scheme, host, port, SNI name, TLS
identity): two requests that differ in any of these never share a connection, two
that agree always may. httpcore keys on (scheme, host, port) only; that is the bug
to avoid. Plain values: this module must never open, hold or look up a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.client.models import Origin


@dataclass(frozen=True, slots=True)
class TLSIdentity:
    """What makes two TLS connections to the same address different."""

    verify: bool
    #: CA file or directory, "default" for the system store, or "context:<id>" for a
    #: caller-supplied ssl.SSLContext (which may hold anything, so it is its own identity)
    ca: str
    #: client certificate (certfile, keyfile), if any
    cert: tuple[str, ...] | None = None
    minimum_version: str = "TLSv1_2"
    alpn: tuple[str, ...] = ("http/1.1",)


@dataclass(frozen=True, slots=True)
class PoolKey:
    """The full identity of a connection. Every field is part of the key."""

    scheme: str
    host: str
    port: int
    sni: str | None = None
    tls: TLSIdentity | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.scheme, self.host, self.port)
