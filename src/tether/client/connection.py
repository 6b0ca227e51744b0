"""One outbound HTTP/1.1 connection: ``asyncio.Protocol`` + httptools' response parser.

Rules of this file: a connection serves one request at a time (it never pipelines);
it is reusable only after a response was read to its end with keep-alive on both
sides; any surprise (unexpected bytes while idle, a parse error, EOF mid-response, a
cancelled caller) closes it for good. It never decides whether to retry: it reports
*how* it failed (:class:`StaleConnection` when a reused connection died before any
response byte), and the client decides.

Bytes after a complete response answer nothing (issue 13): the parser is stopped at
their first byte, before any callback of a second response can touch the first, the
first response is delivered as it came, and the connection is closed (nginx drops
such bytes and disables keepalive on that upstream connection too).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Final, cast

import httptools

from tether.client.errors import (
    LocalProtocolError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    WriteTimeout,
)

if TYPE_CHECKING:
    from tether.client.identity import PoolKey

logger = logging.getLogger("tether.client")

#: bytes of unread response body after which reading from the socket pauses
HIGH_WATER: Final = 256 * 1024

#: a response head larger than this (bytes of names and values), or with more header
#: lines, is refused: a broken or hostile server must not exhaust a worker's memory
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 256

Body = bytes | Iterable[bytes] | AsyncIterable[bytes] | None


class StaleConnection(RemoteProtocolError):
    """A reused keep-alive connection was closed by the server before any byte of the
    response arrived (it timed out idle just as we wrote). Safe to retry if the
    method is idempotent or the body was not sent."""

    def __init__(self, message: str, *, target: str, body_sent: bool) -> None:
        super().__init__(message, target=target, phase="read")
        self.body_sent = body_sent


class _AfterResponse(Exception):
    """Raised inside a parser callback to stop the parser at a byte that follows a
    complete response; data_received drops the connection, the response stands."""


class HTTPConnection(asyncio.Protocol):
    """A single HTTP/1.1 connection, opened for exactly one :class:`PoolKey`."""

    def __init__(self, key: PoolKey, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.target = str(key.origin)
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.requests = 0  # requests sent on this connection so far
        self.idle_since = 0.0
        #: set by the pool once this connection's slot has been given back
        self.slot_released = False
        self._in_request = False
        self._status = 0
        #: the response's header lines as received (names in the server's case)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._got_bytes = False
        self._body_sent = False
        self._head_request = False
        self._reset_parser = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: the read timeout: when the current wait fails, what it waits for, the timer
        self._read_deadline: float | None = None
        self._read_what = ("response", 0.0)
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request:
            # A server must not send anything between responses; whatever this is
            # (a 408 before an idle close, the tail of a response smuggled in earlier),
            # the connection can no longer be trusted.
            if not self.closed:
                logger.info("closed an idle connection to %s: %d bytes arrived unasked",
                            self.target, len(data))
            self.close()
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:
                # The parser stopped at bytes after the complete response: a callback
                # raised _AfterResponse, or llhttp refused data after Connection: close.
                self._drop_after_response()
            elif isinstance(exc, httptools.HttpParserCallbackError):
                self._fail(RemoteProtocolError(
                    f"bad response: {exc.__context__}", target=self.target, phase="read"))
            else:
                detail = exc.args[0] if exc.args else "malformed response"
                self._fail(RemoteProtocolError(
                    f"malformed response: {detail}", target=self.target, phase="read"))
        # Whatever the callbacks saw (a head, body, the end, an error): the waiter
        # learns it once per read, not once per callback.
        self._wake()

    def _drop_after_response(self) -> None:
        """Bytes followed a complete response in the same exchange. tether never
        pipelines, so they answer nothing: a broken server, or a response to a request
        smuggled past it, that would otherwise answer the next request on this
        connection (another client's, behind a proxy). Nothing of them is kept."""
        if not self.closed:
            logger.warning(
                "dropped the connection to %s: it sent bytes after a complete response "
                "(a second response, or garbage); the %d response before them is "
                "delivered as sent", self.target, self._status)
        self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._in_request and not self._complete and self._error is None:
            if self._head_done and not _framed(self._headers):
                self._complete = True  # a close-delimited body ends here
                self._keep_alive = False
            elif not self._got_bytes and self.requests > 1:
                self._error = StaleConnection(
                    "server closed the keep-alive connection before responding",
                    target=self.target, body_sent=self._body_sent,
                )
            else:
                when = "while sending the response" if self._head_done else "without a response"
                self._error = RemoteProtocolError(
                    f"server disconnected {when}", target=self.target, phase="read")
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        # The first byte of a message (llhttp skips blank lines before it). After the
        # final response of this exchange that is a second response: stop here, so
        # none of its callbacks runs (its headers went into the first's list before).
        if self._complete:
            raise _AfterResponse

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            # Raised inside the parser's callback: data_received turns it into a
            # RemoteProtocolError and closes the connection.
            raise ValueError(f"response head over {MAX_HEAD_BYTES} bytes")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if len(self._headers) > MAX_HEADERS:  # (their bytes are bounded as they come)
            raise ValueError(f"response head over {MAX_HEADERS} header lines")
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                # tether never asks to switch protocols (the proxy drops Upgrade), and
                # what follows a 101 is not HTTP: refused here, never handed on (llhttp
                # would stop at it, and its HttpParserUpgrade escaped data_received).
                raise ValueError("101 Switching Protocols, but no upgrade was asked for")
            self._headers = []  # informational (100 Continue): the real head follows
            self._head_bytes = 0
            return
        self._status = status
        self._head_done = True
        if self._head_request or status in (204, 304):
            # No body follows whatever the headers say; httptools cannot be told
            # so, so this parser is replaced before the next request.
            self._complete = True
            self._keep_alive = self.parser.should_keep_alive()
            self._reset_parser = True

    def on_body(self, body: bytes) -> None:
        if self._complete:
            # A body after a head that has none (a HEAD response's Content-Length
            # describes the GET body): bytes after a complete response.
            raise _AfterResponse
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an informational response
        self._complete = True
        # (llhttp never keeps a close-delimited message alive, and completes one only
        # at EOF: connection_lost)
        self._keep_alive = self.parser.should_keep_alive()

    # -- used by the client ---------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """True if the last response was read to its end and both sides keep alive."""
        return self._complete and self._keep_alive and not self.closed and self._error is None

    def is_idle_usable(self) -> bool:
        """A pooled connection is usable if the server has not closed it meanwhile."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    async def send_request(
        self, head: bytes, body: Body, *, head_request: bool,
        write_timeout: float | None, read_timeout: float | None,
        declared_length: int | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Write one request and wait for the response head; return (status, headers
        as received: bytes, names in the server's case).

        A streamed body is sent chunked, or as it comes when the head declares its
        Content-Length (``declared_length``: a proxy passing a length through), which
        it must then match exactly.
        """
        assert self.transport is not None
        if self._reset_parser:
            self.parser = httptools.HttpResponseParser(self)
            self._reset_parser = False
        self.requests += 1
        self._in_request = True
        self._status = 0
        self._headers = []
        self._head_bytes = 0
        self._head_done = self._complete = self._keep_alive = False
        self._got_bytes = self._body_sent = False
        self._head_request = head_request
        self._body.clear()
        self._buffered = 0
        self._error = None
        transport = self.transport
        if self.closed or transport.is_closing():
            raise StaleConnection("connection closed before the request was sent",
                                  target=self.target, body_sent=False)
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            self._body_sent = bool(body)
            if self._write_paused or self.closed:
                await self._drain(write_timeout)
        else:
            transport.write(head)
            try:
                await self._write_stream(body, write_timeout, declared_length)
            except WriteError:
                if not self._head_done:
                    raise
                # The server answered before taking the whole body (a 413, a 401) and
                # closed: its answer is the response, not a write error.
        while not self._head_done:
            # (the wait inline, not through _wait_for: one coroutine less per request)
            waiter = self._new_waiter(read_timeout, "response head")
            try:
                await waiter
            finally:
                self._waiter = self._read_deadline = None
        return self._status, self._headers

    async def _write_stream(
        self, body: Iterable[bytes] | AsyncIterable[bytes], timeout: float | None,
        declared: int | None,
    ) -> None:
        assert self.transport is not None
        chunked = declared is None
        sent = 0
        chunks = body if isinstance(body, AsyncIterable) else _aiter(body)
        async for chunk in chunks:
            sent += len(chunk)
            if declared is not None and sent > declared:
                # Writing past the declared length would leave bytes the server reads
                # as the next request.
                raise LocalProtocolError(
                    f"request body longer than its Content-Length ({declared})")
            await self._write_chunk(chunk, timeout, chunked)
        if declared is not None and sent != declared:
            raise LocalProtocolError(
                f"request body of {sent} bytes, but its Content-Length is {declared}")
        if self.closed:
            raise WriteError("connection closed while sending the body", target=self.target,
                             phase="write")
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        await self._drain(timeout)

    async def _write_chunk(self, chunk: bytes, timeout: float | None, chunked: bool) -> None:
        assert self.transport is not None
        if not chunk:
            return
        if self.closed:
            raise WriteError("connection closed while sending the body", target=self.target,
                             phase="write")
        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        self._body_sent = True
        await self._drain(timeout)

    def complete_body(self) -> bytes | None:
        """The whole response body if it has all arrived (a small response usually
        comes in the same read as its head), else None: taking it needs no await."""
        if not self._complete or self._error is not None:
            return None
        body = self._body
        chunk = b"" if not body else body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        self._in_request = False
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return chunk

    async def read_body(self, timeout: float | None = None) -> bytes | None:
        """The next piece of the response body, or None once it is complete."""
        while True:
            if self._body:
                chunk = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._buffered = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                self._in_request = False
                return None
            await self._wait_for(lambda: bool(self._body) or self._complete, timeout,
                                 "response body")

    async def _drain(self, timeout: float | None) -> None:
        if self._write_paused and not self.closed:
            waiter = self._drain_waiter = self.loop.create_future()
            handle = None if timeout is None else self.loop.call_later(
                timeout, _expire, waiter, self._write_timeout)
            try:
                await waiter
            finally:
                self._drain_waiter = None
                if handle is not None:
                    handle.cancel()
        if self.closed and self._error is not None and not self._head_done:
            raise self._error

    async def _wait_for(self, ready: Callable[[], bool], timeout: float | None, what: str) -> None:
        while not ready():
            waiter = self._new_waiter(timeout, what)
            try:
                await waiter
            finally:
                self._waiter = self._read_deadline = None

    def _new_waiter(self, timeout: float | None, what: str) -> asyncio.Future[None]:
        """The future the next event from the server completes (under the read
        timeout); the error already seen, or a closed connection, instead."""
        if self._error is not None:
            raise self._error
        if self.closed:
            raise ReadError(f"connection closed while waiting for the {what}",
                            target=self.target, phase="read")
        waiter = self._waiter = self.loop.create_future()
        if timeout is not None:
            self._arm_read_timer(timeout, what)
        return waiter

    def _arm_read_timer(self, timeout: float, what: str) -> None:
        """Fail the waiter if nothing arrives within ``timeout``. One timer per
        connection, re-armed lazily: a handle per wait (``call_later`` and its cancel)
        cost about 2 us, paid by every request for a timer that almost never fires.
        The timer finds the deadline it guards moved on, and goes again for it."""
        deadline = self._read_deadline = self.loop.time() + timeout
        self._read_what = (what, timeout)
        timer = self._read_timer
        if timer is not None and timer.when() <= deadline:
            return  # it fires first, and re-arms then for what is current
        if timer is not None:
            timer.cancel()
        self._read_timer = self.loop.call_at(deadline, self._read_timer_fired)

    def _read_timer_fired(self) -> None:
        self._read_timer = None
        deadline = self._read_deadline
        if deadline is None or self.closed:
            return  # nothing waits: stay disarmed until something does
        if self.loop.time() < deadline:
            self._read_timer = self.loop.call_at(deadline, self._read_timer_fired)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            what, timeout = self._read_what
            waiter.set_exception(ReadTimeout(f"no {what} within {timeout}s",
                                             target=self.target, phase="read"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def _write_timeout(self) -> Exception:
        return WriteTimeout("sending the request timed out", target=self.target,
                            phase="write")

    def close(self) -> None:
        """Close for good (idempotent). Used on any error and on cancellation."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._wake()


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """A Content-Length or a chunked Transfer-Encoding: the body does not end at EOF.
    Asked only when the server closes mid-response, not on every response."""
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length" or (
            lname == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            return True
    return False


async def _aiter(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def _expire(waiter: asyncio.Future[None], error: Callable[[], Exception]) -> None:
    if not waiter.done():
        waiter.set_exception(error())
