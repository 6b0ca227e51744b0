"""A response as its connection received it, for a caller that forwards it (the
proxy): the status, the header lines as bytes with names in the server's case, and
the body read from the connection as it arrives.

Why not :class:`~tether.client.models.Response`: a proxy re-sends the head as bytes,
so decoding every header to ``str`` and wrapping it in :class:`Headers`, then encoding
it back, is work per request that serves nobody (issue 18). The rules are the same:
the connection goes back to the pool only if the body was read to its end, and
closing early closes it.

Must never return a half-read connection to the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Final

from tether.client.connection import HTTPConnection
from tether.client.pool import ConnectionPool

#: a body at most this long with a Content-Length is read whole by :func:`is_small`
#: callers (the proxy's one-write answer, a discarded retryable answer)
SMALL_BODY: Final = 64 * 1024


class RawResponse:
    """One upstream answer: read its body with :meth:`complete_body`,
    :meth:`aread` or :meth:`aiter_bytes`, then :meth:`close` (idempotent)."""

    __slots__ = ("_conn", "_pool", "_timeout", "after", "headers", "status_code")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]],
                 conn: HTTPConnection, pool: ConnectionPool[HTTPConnection],
                 read_timeout: float | None) -> None:
        self.status_code = status_code
        #: the header lines as received (names in the server's case)
        self.headers = headers
        self._conn: HTTPConnection | None = conn
        self._pool = pool
        self._timeout = read_timeout
        #: called once when the response is closed (a cluster lowers its count)
        self.after: Callable[[], None] | None = None

    @property
    def connection(self) -> HTTPConnection:
        """The connection the body is read from (until the response is closed)."""
        assert self._conn is not None, "the response is closed"
        return self._conn

    def complete_body(self) -> bytes | None:
        """The whole body if it has already arrived (no await needed), else None."""
        conn = self._conn
        return None if conn is None else conn.complete_body()

    async def aread(self) -> bytes:
        """The whole body; the connection then goes back to the pool."""
        try:
            body = self.complete_body()
            if body is None:
                body = b"".join([chunk async for chunk in self._chunks()])
        finally:
            self.close()
        return body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; the connection goes back to the pool at its end."""
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            self.close()

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None, "the response is closed"
        while (chunk := await conn.read_body(self._timeout)) is not None:
            yield chunk

    def close(self) -> None:
        """Give the connection back: kept if the body was read to its end and both
        sides keep alive, closed otherwise."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._pool.release(conn)
        after, self.after = self.after, None
        if after is not None:
            after()

    async def aclose(self) -> None:
        self.close()


def is_small(headers: list[tuple[bytes, bytes]]) -> bool:
    """A Content-Length of at most :data:`SMALL_BODY` bytes."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return value.isdigit() and int(value) <= SMALL_BODY
    return False
