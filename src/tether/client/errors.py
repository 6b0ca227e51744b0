"""Typed client errors. Each names the target (``scheme://host:port``) and the phase
that failed (``pool``, ``connect``, ``tls``, ``write``, ``read``), so a log line says
what went wrong where without a traceback.

Names follow httpx, which users already know.
"""

from __future__ import annotations

from tether.errors import TetherError


class HTTPError(TetherError):
    """Base class of every error a request can raise."""

    def __init__(self, message: str, *, target: str = "", phase: str = "") -> None:
        self.target = target
        self.phase = phase
        where = " ".join(part for part in (phase, target and f"to {target}") if part)
        super().__init__(f"{message} ({where})" if where else message)


class TransportError(HTTPError):
    """The connection failed: nothing useful came back."""


class TimeoutException(TransportError):
    """A phase took longer than its timeout."""


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class PoolTimeout(TimeoutException):
    """No connection slot became free within the pool timeout."""


class NetworkError(TransportError):
    pass


class ConnectError(NetworkError):
    pass


class TLSError(ConnectError):
    """The TLS handshake failed (certificate, hostname, protocol)."""


class ReadError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class RemoteProtocolError(TransportError):
    """The server broke HTTP/1.1: a malformed response, or it closed mid-response."""


class LocalProtocolError(HTTPError):
    """The request itself is invalid (bad URL, bad header)."""


class HTTPStatusError(HTTPError):
    """Raised by :meth:`Response.raise_for_status` for 4xx and 5xx answers."""

    def __init__(self, message: str, *, status_code: int, target: str = "") -> None:
        super().__init__(message, target=target)
        self.status_code = status_code


class StreamConsumed(HTTPError):
    """The response body was already read (or closed) and cannot be read again."""
