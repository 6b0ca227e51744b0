"""HTTP/1.1 on ``asyncio.Protocol`` + httptools, turned into ASGI 3 ``scope/receive/send``.

This is tether's one request cycle (uvicorn writes it twice, once per parser; we
have one parser and one cycle). Rules of this file:

* Bytes in go through ``httptools``; every limit (request line, header count and
  size, head size, body size, head timeout) is enforced here, before the
  application sees anything.
* Responses are written in request order (pipelining); a bad pipelined request
  is answered only after the ones before it.
* Nothing an application or a client does may escape this module as an
  exception: it becomes a status code, a close, and one log line with the client
  address.
* Flow control both ways: the application waits while the transport's write
  buffer is full, and reading pauses while a request body sits unconsumed.

Theory of operation: one :class:`HttpProtocol` per connection owns the parser
and the timers; one :class:`RequestCycle` per request owns the ASGI
``receive``/``send`` pair and the response framing. ``protocol.cycle`` is the
request being answered; ``protocol.parsing`` is the request whose bytes are
being parsed (the same one, or a later pipelined one waiting in
``protocol.pipeline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final, cast
from urllib.parse import unquote

import httptools

from tether.admission import AdmissionGate, Outcome
from tether.asgi import ASGI_VERSION, ASGIApp, Message
from tether.config import RequestLimits
from tether.deadline import (
    GRPC_HEADER_BYTES,
    HEADER_BYTES,
    NO_DEADLINE,
    Deadline,
    DeadlineExceeded,
    deadline_from_headers,
    set_deadline,
)
from tether.errors import ClientDisconnected, Overloaded, ResponseAborted, ServiceUnavailable
from tether.metrics import HttpMetrics
from tether.server import wire
from tether.tls import tls_extension

error_log = logging.getLogger("tether.error")
access_log = logging.getLogger("tether.access")

#: bytes of unconsumed request body after which reading pauses (per connection)
HIGH_WATER: Final = 64 * 1024

# What the connection's single timer is waiting for.
TIMER_NONE: Final = 0
TIMER_HEAD: Final = 1  # a request head must complete (slowloris protection)
TIMER_KEEPALIVE: Final = 2  # an idle keep-alive connection may wait this long

_DISCONNECT: Final = {"type": "http.disconnect"}
_NO_BODY_STATUS: Final = frozenset({204, 304})


class _AlreadyReported(RuntimeError):
    """An application error tether has already logged and answered (closed)."""


class RequestRejected(Exception):
    """Input the server answers itself, before or instead of the application."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ServerState:
    """What every connection of one worker shares.

    The worker owns it: it sweeps ``connections`` for timeouts, refreshes
    ``date_header`` once a second, and flips ``draining`` when a stop begins.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits,
        *,
        root_path: str = "",
        access_log: bool = True,
        app_state: dict[str, Any] | None = None,
        request_timeout: float | None = None,
        cancel_on_disconnect: bool = True,
        admission: AdmissionGate | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.root_path = root_path
        self.root_path_bytes = root_path.encode("ascii")
        self.access_log = access_log
        self.app_state: dict[str, Any] = app_state if app_state is not None else {}
        self.request_timeout = request_timeout
        self.cancel_on_disconnect = cancel_on_disconnect
        self.admission = admission
        #: what cancellation and admission did (the supervisor shows them in /status)
        self.counters: Counter[str] = Counter()
        #: responses by status class and duration (Prometheus, via the supervisor)
        self.http = HttpMetrics()
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.total_requests = 0
        self.draining = False
        self.date_header = wire.date_header()
        #: called with each completed response (worker counts, recycling)
        self.on_request_done: Callable[[], None] | None = None


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parser callbacks, pipelining, timers, flow control."""

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.limits = state.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.extensions: dict[str, Any] | None = None
        self.client_label = "-"
        self.cycle: RequestCycle | None = None
        self.parsing: RequestCycle | None = None
        self.pipeline: deque[RequestCycle | RequestRejected] = deque()
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.timer_kind = TIMER_NONE
        self.timer_at = 0.0
        # head being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._content_length: int | None = None
        self._expect_100 = False
        self._upgrade: bytes | None = None
        self._chunked_request = False
        self._deadline_headers: list[tuple[bytes, bytes]] = []
        self._head_number = 0

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = _addr(peer)
        self.server = _addr(sock) or ((sock, None) if isinstance(sock, str) and sock else None)
        self.client_label = f"{self.client[0]}:{self.client[1]}" if self.client else "unix"
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.scheme = "https"
            self.extensions = {"tls": tls_extension(sslobj)}
        # A new connection must deliver its first request head within header_timeout;
        # a draining worker waits this long for it too instead of closing early.
        self._set_timer(TIMER_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self.cycle is not None:
            self.cycle.on_disconnect()
        for queued in self.pipeline:
            if isinstance(queued, RequestCycle):
                queued.on_disconnect()
        self.pipeline.clear()
        self._wake_writer()

    def eof_received(self) -> bool:
        # EOF from the client means it went away (as nginx and uvicorn treat it): a
        # half-closed socket cannot be told apart from a closed one until a write
        # fails, and a request must be cancellable the moment its client leaves.
        return False

    def data_received(self, data: bytes) -> None:
        head_before = self._head_number if self._in_head else -1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._reject(cause)
            else:  # a bug in this module: answer, log it, keep the worker alive
                error_log.error("internal error parsing request from %s", self.client_label,
                                exc_info=cause)
                self._reject(RequestRejected(500, "Internal server error"))
        except httptools.HttpParserUpgrade:
            # The request carrying the Upgrade header is complete and being served;
            # tether does not switch protocols, so nothing after it is read.
            self._pause_reading()
        except httptools.HttpParserError as exc:
            detail = exc.args[0] if exc.args else "malformed request"
            self._reject(RequestRejected(400, f"Invalid HTTP request: {detail}"))
        else:
            # httptools buffers an unfinished header line itself, so bound the head by
            # the bytes received: a read that began and ended inside one head was all
            # head. (The read in which a head begins is bounded by the read size.)
            # Comparing head numbers keeps a read that finished one pipelined head
            # and began the next from counting against the next.
            if self._in_head and self._head_number == head_before:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_head_bytes:
                    self._reject(RequestRejected(431, "Request header fields too large"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_number += 1
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_bytes = 0
        self._content_length = None
        self._expect_100 = False
        self._upgrade = None
        self._chunked_request = False
        if self._deadline_headers:
            self._deadline_headers = []
        if self.timer_kind != TIMER_HEAD:
            self._set_timer(TIMER_HEAD, self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.request_line:
            raise RequestRejected(414, "Request-URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A chunked body's trailer fields: never merged into the request headers
            # the application already holds (that would let a trailer smuggle a header
            # past whatever checked the head). tether does not expose trailers.
            return
        if len(self._headers) >= self.limits.request_fields:
            raise RequestRejected(431, "Too many request header fields")
        if len(name) + len(value) > self.limits.request_field_size:
            raise RequestRejected(431, "Request header field too large")
        name = name.lower()
        if name == b"content-length":
            self._check_content_length(value)
        elif name == b"transfer-encoding":
            self._chunked_request = True
            # RFC 9112 section 6.1: a server that does not understand a transfer coding
            # answers 501. httptools would decode "gzip, chunked" as plain chunked.
            for coding in value.lower().split(b","):
                if coding.strip() not in (b"chunked", b""):
                    raise RequestRejected(
                        501, f"Transfer-Encoding {value.decode('latin-1')!r} not implemented"
                    )
        elif name == b"expect":
            self._expect_100 = value.lower() == b"100-continue"
        elif name == b"upgrade":
            self._upgrade = value.lower()
        elif name in (HEADER_BYTES, GRPC_HEADER_BYTES):
            self._deadline_headers.append((name, value))
        self._headers.append((name, value))

    def _check_content_length(self, value: bytes) -> None:
        try:
            length = int(value)
        except ValueError:
            raise RequestRejected(400, "Invalid Content-Length") from None
        limit = self.limits.request_body
        if limit is not None and length > limit:
            raise RequestRejected(413, f"Request body larger than {limit} bytes")
        self._content_length = length

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        if self._upgrade is not None and b"websocket" in self._upgrade and parser.should_upgrade():
            raise RequestRejected(426, "WebSocket is not supported by this server")
        if parser.get_method() == b"CONNECT":
            # A 2xx to CONNECT would make the connection a tunnel, which an ASGI
            # server cannot be; refuse it rather than drop the bytes that follow.
            raise RequestRejected(501, "CONNECT is not supported by this server")
        target = self._url
        if target[:1] == b"/":
            # origin-form, by far the common case: llhttp has already checked its
            # characters, so splitting off the query is all that is left to do.
            raw_path, _, query = target.partition(b"?")
            raw_path, _, _ = raw_path.partition(b"#")
        else:  # absolute-form (a proxy request) or "*"
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise RequestRejected(400, "Invalid request target") from None
            raw_path = url.path or b"/"
            query = url.query or b""
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            path = raw_path.decode("utf-8", "replace")
        if "%" in path:
            path = unquote(path)
        state = self.state
        deadline = self._request_deadline()
        method: str = parser.get_method().decode("ascii")
        http_version: str = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": state.root_path,
            "path": state.root_path + path,
            "raw_path": state.root_path_bytes + raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": state.app_state.copy(),
            "extensions": self._extensions(deadline),
        }
        keep_alive: bool = parser.should_keep_alive() and self._upgrade is None
        # RFC 9110 section 10.1.1: a server ignores Expect from an HTTP/1.0 client.
        expect_100 = self._expect_100 and http_version == "1.1"
        cycle = RequestCycle(self, scope, keep_alive, expect_100, http_version, deadline)
        if self._content_length == 0 or (
            self._content_length is None and not self._chunked_request
        ):
            cycle.more_body = False  # no body follows: receive() need not wait for one
        self.parsing = cycle
        self._clear_timer()
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def _extensions(self, deadline: Deadline) -> dict[str, Any]:
        tether_ext = {"deadline": deadline, "cancel_on_disconnect": self.state.cancel_on_disconnect}
        if self.extensions is None:
            return {"tether": tether_ext}
        return {**self.extensions, "tether": tether_ext}

    def _request_deadline(self) -> Deadline:
        """The request's deadline: its headers' (x-request-timeout-ms, grpc-timeout),
        narrowed by --request-timeout. Counted from the end of the request head."""
        seconds = None
        if self._deadline_headers:
            try:
                seconds = deadline_from_headers(self._deadline_headers)
            except ValueError as exc:
                raise RequestRejected(400, str(exc)) from None
        cap = self.state.request_timeout
        if cap is not None and (seconds is None or cap < seconds):
            seconds = cap
        return NO_DEADLINE if seconds is None else Deadline.after(seconds)

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.body_received += len(body)
        limit = self.limits.request_body
        if limit is not None and cycle.body_received > limit:
            raise RequestRejected(413, f"Request body larger than {limit} bytes")
        if cycle.response_complete:
            return  # answered already: the rest of the body is read and dropped
        cycle.body_chunks.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.more_body = False
        cycle.wake()
        self.parsing = None
        if cycle.keep_alive and not self.parser.should_keep_alive():
            # "Connection: close" arrived in the trailers: httptools will refuse
            # anything after this message, so this connection ends with it.
            cycle.keep_alive = False
            if cycle.response_complete:
                self.close()

    # -- request scheduling -------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self.cycle = cycle
        task = cycle.task = self.loop.create_task(cycle.run_asgi(self.state.app))
        self.state.tasks.add(task)  # run_asgi removes it when it ends
        deadline_at = cycle.deadline.loop_time(self.loop)
        if deadline_at is not None:
            cycle.deadline_handle = self.loop.call_at(deadline_at, cycle.on_deadline)

    def response_complete(self, cycle: RequestCycle) -> None:
        """Called once per request when its last response byte has been written."""
        # Body the application never read is dropped now (and the rest as it
        # arrives): holding it would keep reading paused and stall the connection.
        cycle.body_chunks.clear()
        cycle.buffered = 0
        self.state.total_requests += 1
        if self.state.on_request_done is not None:
            self.state.on_request_done()
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or self.closed:
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            if isinstance(nxt, RequestRejected):
                self._write_rejection(nxt)
                return
            self._start(nxt)
        elif not self._in_head:
            self._set_timer(TIMER_KEEPALIVE, self.limits.keep_alive_timeout)
        self._update_reading()

    def _reject(self, rejection: RequestRejected) -> None:
        """Answer bad input: now, after the requests ahead of it, or by ending the
        request it belongs to if the application is already running it."""
        self._in_head = False
        parsing = self.parsing
        if parsing is not None and parsing is self.cycle:
            parsing.abort(rejection)
        elif self.cycle is not None:
            if parsing is not None:  # a queued pipelined request can no longer complete
                with contextlib.suppress(ValueError):
                    self.pipeline.remove(parsing)
            self.pipeline.append(rejection)
            self._pause_reading()
        else:
            self._write_rejection(rejection)
        self.parsing = None

    def _write_rejection(self, rejection: RequestRejected) -> None:
        error_log.warning(
            "%d %s (client %s)", rejection.status, rejection.detail, self.client_label
        )
        if not self.closed:
            extra = b"upgrade: websocket\r\n" if rejection.status == 426 else b""
            self.transport.write(
                wire.error_response(
                    rejection.status, rejection.detail, self.state.date_header, extra
                )
            )
        self.state.http.observe(rejection.status, 0.0)
        self._log_access_line("-", "-", rejection.status, 0, 0.0)
        self.close()

    # -- reading and writing --------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _update_reading(self) -> None:
        """Resume reading once nothing queued or buffered holds it back."""
        if not self.read_paused or self.closed or self.pipeline:
            return
        parsing = self.parsing
        if parsing is not None and parsing.buffered > HIGH_WATER:
            return
        self.read_paused = False
        self.transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.write_paused and not self.closed:
            waiter = self._drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.close()

    # -- timers (swept by the worker, no per-request timer handles) ----------------

    def _set_timer(self, kind: int, seconds: float) -> None:
        self.timer_kind = kind
        self.timer_at = self.loop.time() + seconds

    def _clear_timer(self) -> None:
        self.timer_kind = TIMER_NONE

    def check_timer(self, now: float) -> None:
        kind = self.timer_kind
        if kind == TIMER_NONE or now < self.timer_at or self.closed:
            return
        if kind == TIMER_HEAD and self.cycle is not None:
            return  # a pipelined head: the requests ahead of it are answered first
        self.timer_kind = TIMER_NONE
        if kind == TIMER_KEEPALIVE:
            self.close()
        else:
            if self._in_head:
                # A slow client (slowloris): answer 408 so it knows why, then close.
                self._write_rejection(RequestRejected(408, "Request head not received in time"))
            else:
                self.close()

    # -- logging ---------------------------------------------------------------------

    def _log_access_line(
        self, method: str, target: str, status: int, size: int, seconds: float
    ) -> None:
        if self.state.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s" %d %d %.1fms',
                self.client_label, method, target, status, size, seconds * 1000.0,
            )


class RequestCycle:
    """One request: the ASGI ``receive`` and ``send`` callables and response framing."""

    __slots__ = (
        "body_chunks",
        "body_received",
        "buffered",
        "bytes_sent",
        "cancel_reason",
        "chunked",
        "conn",
        "deadline",
        "deadline_handle",
        "disconnected",
        "expect_100",
        "expected_length",
        "final_delivered",
        "flush_handle",
        "head",
        "head_request",
        "head_written",
        "http_version",
        "keep_alive",
        "logged",
        "more_body",
        "no_body",
        "response_complete",
        "scope",
        "sent_length",
        "started_at",
        "status",
        "task",
        "waiter",
    )

    def __init__(
        self,
        conn: HttpProtocol,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_100: bool,
        http_version: str,
        deadline: Deadline = NO_DEADLINE,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.http_version = http_version
        self.head_request = scope["method"] == "HEAD"
        # request body
        self.body_chunks: list[bytes] = []
        self.buffered = 0
        self.body_received = 0
        self.more_body = True
        self.final_delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        # response
        self.status = 0
        self.head: list[bytes] = []
        self.head_written = False
        self.flush_handle: asyncio.Handle | None = None
        self.chunked = False
        self.no_body = False
        self.expected_length: int | None = None
        self.sent_length = 0
        self.bytes_sent = 0
        self.response_complete = False
        self.logged = False
        self.started_at = perf_counter()  # uvloop's loop.time() ticks in milliseconds
        self.deadline = deadline
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        #: why tether cancelled the handler: "deadline", "disconnect" (None: a stop)
        self.cancel_reason: str | None = None

    # -- events from the connection ----------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_disconnect(self) -> None:
        self.disconnected = True
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.wake()
        # Field report 1: a handler whose client has gone is cancelled at once (and
        # with it the calls and queries it awaits), unless the server or the route
        # opted out; a response already complete leaves background work alone.
        if not self.response_complete and self.scope["extensions"]["tether"].get(
            "cancel_on_disconnect", True
        ):
            self._cancel("disconnect")

    def on_deadline(self) -> None:
        self.deadline_handle = None
        if not self.response_complete:
            self._cancel("deadline")

    def _cancel(self, reason: str) -> None:
        task = self.task
        if task is not None and not task.done() and self.cancel_reason is None:
            self.cancel_reason = reason
            task.cancel()

    def _response_done(self) -> None:
        """The response is complete: the deadline no longer applies to this request."""
        self.response_complete = True
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None

    def abort(self, rejection: RequestRejected) -> None:
        """The request's own bytes turned out bad (body too large, malformed chunk)
        while the application runs: answer it if nothing was sent yet, then close.
        The application sees ``http.disconnect`` and its sends raise."""
        if not self.head_written and not self.response_complete:
            self._cancel_flush()
            self._response_done()
            self.status = rejection.status
            self.conn._write_rejection(rejection)
            self.logged = True
        else:
            error_log.warning(
                "%d %s (client %s)", rejection.status, rejection.detail, self.conn.client_label
            )
            self.conn.close()
        self.on_disconnect()

    # -- ASGI ----------------------------------------------------------------------

    async def receive(self) -> Message:
        while not (self.disconnected or self.response_complete):
            if self.body_chunks or (not self.more_body and not self.final_delivered):
                chunks = self.body_chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                more = self.more_body
                self.final_delivered = not more
                self.conn._update_reading()
                return {"type": "http.request", "body": body, "more_body": more}
            if self.expect_100 and self.more_body:
                # RFC 9110 section 10.1.1: send 100 only once the application asks for
                # the body, so a request refused without reading never uploads it.
                self.expect_100 = False
                if not self.head_written:
                    self.conn.transport.write(wire.CONTINUE_100)
            self.conn._update_reading()
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected(f"client {self.conn.client_label} disconnected")
        mtype = message["type"]
        if not self.status:
            if mtype != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {mtype!r}")
            self._start_response(message)
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {mtype!r} after the response completed")
        if mtype != "http.response.body":
            raise RuntimeError(f"expected ASGI message 'http.response.body', got {mtype!r}")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self.conn
        if self.head_written:
            out = self._frame(body, more)
        else:
            self._cancel_flush()
            expected = self.expected_length
            if expected is not None and len(body) > expected and not self.no_body:
                # Nothing is on the wire yet, so this can still become a clean 500.
                raise RuntimeError(
                    f"ASGI application sent {len(body)} body bytes with Content-Length {expected}"
                )
            out = self._write_head(body, more) + self._frame(body, more)
        if out:
            conn.transport.write(out)
            self.bytes_sent += len(out)
        if not more:
            self._finish()
        elif conn.write_paused:
            await conn.drain()
            if self.disconnected:
                raise ClientDisconnected(f"client {conn.client_label} disconnected")

    def _start_response(self, message: Message) -> None:
        status = int(message["status"])
        if not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status {status}")
        head = [wire.status_line(status)]
        has_date = False
        render = wire.render_header
        for name, value in message.get("headers", ()):
            try:
                kind, line, argument = render(name, value)
            except ValueError as exc:
                raise RuntimeError(f"ASGI application sent {exc}") from None
            if kind == wire.HEADER_PLAIN:
                pass
            elif kind == wire.HEADER_CONTENT_LENGTH:
                self.expected_length = argument
            elif kind == wire.HEADER_TRANSFER_ENCODING:
                self.chunked = bool(argument)
            elif kind == wire.HEADER_CONNECTION:
                if argument:
                    self.keep_alive = False
                continue  # tether writes the connection header itself
            else:
                has_date = True
            head.append(line)
        if not has_date:
            head.append(self.conn.state.date_header)
        self.status = status
        self.head = head
        self.no_body = status < 200 or status in _NO_BODY_STATUS or self.head_request
        # Defer the head by one loop turn: the body usually follows at once and goes
        # out in the same write (one syscall); a slow body still gets an early head.
        self.flush_handle = self.conn.loop.call_soon(self._flush_head)

    def _cancel_flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None

    def _flush_head(self) -> None:
        self.flush_handle = None
        if not self.head_written and not self.disconnected and not self.response_complete:
            out = self._write_head(b"", True)
            self.conn.transport.write(out)
            self.bytes_sent += len(out)

    def _write_head(self, body: bytes, more: bool) -> bytes:
        """Choose the framing now that the first body chunk is known, and return the head."""
        head = self.head
        status = self.status
        framed = (
            status < 200 or status in _NO_BODY_STATUS
            or self.expected_length is not None or self.chunked
        )
        if framed:
            pass  # no body allowed, or the application chose the framing
        elif not more and not (self.head_request and not body):
            # The whole body is known: a Content-Length beats chunking.
            self.expected_length = len(body)
            head.append(b"content-length: %d\r\n" % len(body))
        elif self.head_request:
            pass
        elif self.http_version == "1.1":
            self.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        else:
            self.keep_alive = False  # HTTP/1.0 streaming: the close delimits the body
        conn = self.conn
        if self.more_body and not self.final_delivered and self.expect_100:
            # The client is holding its body back for a 100 we never sent: the
            # connection cannot be reused safely.
            self.keep_alive = False
        if conn.state.draining:
            self.keep_alive = False
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        elif self.http_version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        self.head_written = True
        return b"".join(head)

    def _frame(self, body: bytes, more: bool) -> bytes:
        if self.no_body:
            return b""
        if self.chunked:
            if body:
                body = b"%x\r\n%s\r\n" % (len(body), body)
            return body if more else body + b"0\r\n\r\n"
        expected = self.expected_length
        if expected is not None:
            self.sent_length += len(body)
            if self.sent_length > expected:
                self._fail_mid_response(
                    f"response body longer than its Content-Length ({expected})"
                )
                raise _AlreadyReported(
                    f"ASGI application sent more than Content-Length ({expected}) bytes"
                )
        return body

    def _finish(self) -> None:
        expected = self.expected_length
        if (
            expected is not None
            and not self.no_body
            and not self.chunked
            and self.sent_length != expected
        ):
            self._fail_mid_response(
                f"response body shorter than its Content-Length "
                f"({self.sent_length} < {expected})"
            )
            return
        self._response_done()
        self._log()
        self.conn.response_complete(self)

    def _fail_mid_response(self, reason: str, *, quiet: bool = False) -> None:
        """The head is on the wire and the body cannot be completed: close."""
        if not quiet:
            error_log.error("%s; closing connection (client %s)", reason,
                            self.conn.client_label)
        self._response_done()
        self.keep_alive = False
        self._log()
        self.conn.close()

    # -- running the application ----------------------------------------------------

    async def run_asgi(self, app: ASGIApp) -> None:
        state = self.conn.state
        gate = state.admission
        admitted = False
        try:
            if self.deadline.at is not None:
                set_deadline(self.deadline)  # this task's context: the app inherits it
            if gate is not None:
                outcome = await gate.enter(self.deadline.at)
                if outcome is not Outcome.ADMITTED:
                    self._refuse(outcome)
                    return
                admitted = True
            elif self.deadline.expired:
                self._refuse(Outcome.EXPIRED)
                return
            await app(self.scope, self.receive, self.send)
        except (ClientDisconnected, _AlreadyReported):
            pass  # our own signals, propagated by the app: already handled
        except DeadlineExceeded:
            # The handler let the request's deadline (a tether.Client call or a
            # tether.db query ran out of time) propagate: that is a 504, not a bug.
            state.counters["deadline_exceeded"] += 1
            self._fail_unanswered(504, "Deadline exceeded")
        except ResponseAborted as exc:
            if self.head_written:
                self._fail_mid_response(str(exc), quiet=True)
            else:
                self._fail_unanswered(502, f"Bad gateway: {exc}")
        except ServiceUnavailable as exc:
            # Overloaded (a shed from a queue), NoProviderAvailable (a dead backend):
            # the request may succeed later, so 503 + Retry-After, not a 500.
            state.counters["overloaded" if isinstance(exc, Overloaded) else "unavailable"] += 1
            self._fail_unanswered(503, f"Service unavailable: {exc}", b"retry-after: 1\r\n")
        except asyncio.CancelledError:
            reason = self.cancel_reason
            if reason == "deadline" and gate is not None and not admitted:
                self._refuse(Outcome.EXPIRED)  # it expired while queued: never ran
            elif reason == "deadline":
                state.counters["cancelled_deadline"] += 1
                self._fail_unanswered(504, "Deadline exceeded")
            elif reason == "disconnect":
                state.counters["cancelled_disconnect"] += 1
            else:
                self._fail_unanswered(503, "Service stopping: request cancelled")
                raise
        except Exception as exc:
            if self.disconnected and isinstance(exc, OSError):
                pass
            else:
                error_log.error(
                    "Exception in ASGI application (client %s, %s %s)",
                    self.conn.client_label, self.scope["method"], self.scope["path"],
                    exc_info=exc,
                )
                self._fail_unanswered(500, "Internal Server Error")
        else:
            if not self.response_complete and not self.disconnected:
                what = "completing" if self.status else "starting"
                error_log.error(
                    "ASGI application returned without %s a response (client %s, %s %s)",
                    what, self.conn.client_label, self.scope["method"], self.scope["path"],
                )
                self._fail_unanswered(500, "Internal Server Error")
        finally:
            if admitted:
                assert gate is not None
                gate.leave()
            self._log()
            if self.task is not None:
                state.tasks.discard(self.task)

    def _refuse(self, outcome: Outcome) -> None:
        """Admission said no: the handler never runs."""
        counters = self.conn.state.counters
        if outcome is Outcome.EXPIRED:
            counters["queue_expired"] += 1
            self._fail_unanswered(504, "Deadline exceeded before the request could start")
        else:
            counters["queue_shed"] += 1
            self._fail_unanswered(
                503, "Overloaded: request shed from the queue", b"retry-after: 1\r\n"
            )

    def _fail_unanswered(self, status: int, detail: str, extra: bytes = b"") -> None:
        if self.response_complete or self.disconnected:
            return
        if self.head_written:
            self._fail_mid_response(f"ASGI application failed mid-response ({detail})")
            return
        self._cancel_flush()
        self.status = status
        self._response_done()
        conn = self.conn
        out = wire.error_response(status, detail, conn.state.date_header, extra)
        conn.transport.write(out)
        self.bytes_sent += len(out)
        self.keep_alive = False
        self._log()
        conn.response_complete(self)

    def _log(self) -> None:
        if self.logged:
            return
        self.logged = True
        conn = self.conn
        status = self.status if self.response_complete else 499
        seconds = perf_counter() - self.started_at
        conn.state.http.observe(status, seconds)
        if not conn.state.access_log:
            return
        scope = self.scope
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        conn._log_access_line(scope["method"], target, status, self.bytes_sent, seconds)
