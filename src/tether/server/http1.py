"""HTTP/1.1 on ``asyncio.Protocol`` + httptools: a thin adapter that turns bytes
into request cycles (``cycle.py``) and their responses back into bytes.

Rules of this file:

* Bytes in go through ``httptools`` (llhttp, C); the head rules live in
  ``request_head.py`` and every limit (request line, header count and size, head
  size, body size, head and body timeouts) is enforced before the application
  sees anything.
* Responses are written in request order (pipelining); a bad pipelined request
  is answered only after the ones before it.
* Nothing a client does escapes this module as an exception: it becomes a
  status code, a close, and one log line with the client address.
* Flow control both ways: the application waits while the transport's write
  buffer is full, and reading pauses while a request body sits unconsumed.

Theory of operation: one :class:`HttpProtocol` per connection owns the parser and
the connection's single timer (swept by the worker, no handle per request);
``protocol.cycle`` is the request being answered; ``protocol.parsing`` is the
request whose bytes are being parsed (the same one, or a later pipelined one
waiting in ``protocol.pipeline``). As the cycle's :class:`~tether.server.cycle.Channel`
it frames response bodies (``framing.py``) and decides keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from typing import Any, Final, cast

import httptools

from tether.deadline import GRPC_HEADER_BYTES, HEADER_BYTES, NO_DEADLINE, Deadline
from tether.server import forwarded, framing, request_head, wire
from tether.server.cycle import RequestCycle, ServerOptionsCycle, build_scope
from tether.server.framing import Framing
from tether.server.http2 import PREFACE, Http2Connection
from tether.server.request_head import RequestRejected, ServerOptions
from tether.server.state import ServerState, TimerKind
from tether.server.websocket import WebSocketCycle, handshake
from tether.tls import tls_extension

error_log = logging.getLogger("tether.error")

#: bytes of unconsumed request body after which reading pauses (per connection)
HIGH_WATER: Final = 64 * 1024

_RETRY_AFTER: Final = b"retry-after: " + wire.RETRY_AFTER + b"\r\n"
#: longest request target a refused request's access line shows (a 414's is long)
_LOGGED_TARGET_MAX: Final = 256
#: what a 426 names: the protocol and version to upgrade to (RFC 6455 4.2.2)
_UPGRADE_WEBSOCKET: Final = b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
_WELL_FORMED_VERSION: Final = re.compile(rb" HTTP/[0-9]\.[0-9]\r?\n")
_OWS: Final = b" \t"
#: enough of the HTTP/2 preface to tell it from an HTTP/1.x request ("PRI" is no
#: method an HTTP/1.1 application serves)
_PREFACE_START: Final = PREFACE[:3]

# Host values already checked (clients send the same few again and again): most
# requests skip the regex. Bounded: a client sending random hosts only clears it.
_valid_hosts: set[bytes] = set()
_VALID_HOSTS_MAX: Final = 1024

# The request fields the server itself reads, by lower-case name.
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _UPGRADE, _DEADLINE, _FORWARDED = range(7)
_SPECIAL_FIELDS: Final = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    HEADER_BYTES: _DEADLINE,
    GRPC_HEADER_BYTES: _DEADLINE,
    **dict.fromkeys(forwarded.FIELD_NAMES, _FORWARDED),
}

# Enum members bound once: attribute access on an Enum class costs ~90 ns on 3.11,
# and these are read several times per request.
TIMER_NONE: Final = TimerKind.NONE
TIMER_HEAD: Final = TimerKind.HEAD
TIMER_BODY: Final = TimerKind.BODY
TIMER_KEEPALIVE: Final = TimerKind.KEEPALIVE
TIMER_PING: Final = TimerKind.PING
_LENGTH: Final = Framing.LENGTH
_CHUNKED: Final = Framing.CHUNKED


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
        #: the WebSocket session this connection became (its bytes go there)
        self.upgraded: WebSocketCycle | None = None
        self.pipeline: deque[RequestCycle | RequestRejected] = deque()
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        #: complete responses written at the end of this loop turn (see _write_soon)
        self._out: bytes | None = None
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
        self._hosts = 0
        # Deadline fields, and proxy headers from a trusted peer: kept in one list so
        # a request with neither costs one check (deadline_from_headers and
        # forwarded.resolve each skip the other's names).
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_number = 0
        #: the trust list when the peer's proxy headers are believed, else None
        #: (decided once, when it connects: nothing per request for anyone else)
        self.proxy_trust: forwarded.TrustList | None = None
        #: the first read is still to come and may be the HTTP/2 preface (--http auto|2)
        self.sniff = state.http2.mode != "1"

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
        trust = self.state.forwarded_trust
        if trust is not None and trust.trusts(self.client[0] if self.client else None):
            self.proxy_trust = trust
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.scheme = "https"
            self.extensions = {"tls": tls_extension(sslobj)}
            if sslobj.selected_alpn_protocol() == "h2":
                self._become_http2(b"")
                return
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
        if self.upgraded is not None:
            self.upgraded.feed(data)
            return
        if self.sniff:
            self.sniff = False
            if data[:3] == _PREFACE_START:  # h2c with prior knowledge (RFC 9113 3.3)
                self._become_http2(data)
                return
            if self.state.http2.mode == "2":
                self._reject(RequestRejected(
                    505, "This server speaks HTTP/2 only (--http 2): use prior knowledge "
                         "or TLS with ALPN h2"))
                return
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
        except httptools.HttpParserUpgrade as exc:
            if self.upgraded is not None:
                # A WebSocket: the rest of this read (and every later one) is frames.
                offset = exc.args[0] if exc.args else len(data)
                if offset < len(data):
                    self.upgraded.feed(data[offset:])
                return
            # Another protocol (h2c...): the request carrying the Upgrade header is
            # complete and served as HTTP/1.1; nothing after it is read.
            self._pause_reading()
        except httptools.HttpParserError as exc:
            detail = exc.args[0] if exc.args else "malformed request"
            if data[:3] == _PREFACE_START and self.state.http2.mode == "1":
                # (llhttp pauses on the HTTP/2 preface: "Pause on PRI/Upgrade")
                self._reject(RequestRejected(505, "HTTP/2 is not served here (--http 1)"))
            elif detail == "Invalid HTTP version" and _WELL_FORMED_VERSION.search(data):
                # llhttp refuses versions it does not know (HTTP/3.0) as malformed;
                # a well-formed version we do not speak is 505 (RFC 9110 15.6.6).
                self._reject(RequestRejected(505, "HTTP version not supported"))
            else:
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

    def _become_http2(self, data: bytes) -> None:
        """Hand the connection to HTTP/2 (``http2.py``), with what was read of it."""
        self.closed = True  # this protocol object is done; the connection is not
        self.state.connections.discard(self)
        conn = Http2Connection(self)
        self.transport.set_protocol(conn)
        conn.start(data)

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
        self._hosts = 0
        if self._fields:
            self._fields = []
        if self.timer_kind is not TIMER_HEAD:
            self.timer_kind = TIMER_HEAD
            self.timer_at = self.loop.time() + self.limits.header_timeout

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
        if value and value[-1] in _OWS:  # llhttp has already dropped leading OWS
            value = request_head.field_value(value)
        special = _SPECIAL_FIELDS.get(name)
        if special is None:
            pass  # most fields: one dict lookup instead of a chain of comparisons
        elif special == _HOST:
            self._hosts += 1
            if value not in _valid_hosts:
                request_head.check_host(value)
                if len(_valid_hosts) >= _VALID_HOSTS_MAX:
                    _valid_hosts.clear()
                _valid_hosts.add(value)
        elif special == _CONTENT_LENGTH:
            self._content_length = request_head.content_length(value, self.limits.request_body)
        elif special == _TRANSFER_ENCODING:
            self._chunked_request = True
            request_head.transfer_coding(value)
        elif special == _EXPECT:
            self._expect_100 = value.lower() == b"100-continue"
        elif special == _UPGRADE:
            self._upgrade = value.lower()
        elif special == _DEADLINE or self.proxy_trust is not None:
            self._fields.append((name, value))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        http_version: str = parser.get_http_version()
        if http_version != "1.1" or self._hosts != 1:
            request_head.check_head(http_version, self._chunked_request, self._hosts)
        method_bytes: bytes = parser.get_method()
        if self._upgrade is not None and self._upgrade == b"websocket" and parser.should_upgrade():
            self._start_websocket(http_version, method_bytes)
            return
        if method_bytes == b"CONNECT":
            # A 2xx to CONNECT would make the connection a tunnel, which an ASGI
            # server cannot be; refuse it rather than drop the bytes that follow.
            raise RequestRejected(501, "CONNECT is not supported by this server")
        try:
            path, raw_path, query = request_head.split_target(self._url, method_bytes)
            kind: type[RequestCycle] = RequestCycle
        except ServerOptions:
            path, raw_path, query, kind = "*", b"*", b"", ServerOptionsCycle
        state = self.state
        fields = self._fields
        deadline = self._deadline() if fields or state.request_timeout is not None \
            else NO_DEADLINE
        scope = build_scope(
            state, http_version, method_bytes.decode("ascii"), self.scheme, path, raw_path,
            query, self._headers, self.client, self.server, self.extensions, deadline,
        )
        keep_alive: bool = parser.should_keep_alive() and self._upgrade is None
        # RFC 9110 section 10.1.1: a server ignores Expect from an HTTP/1.0 client.
        expect_100 = self._expect_100 and http_version == "1.1"
        cycle = kind(self, scope, keep_alive, expect_100, http_version, deadline)
        if fields and self.proxy_trust is not None:
            self._apply_forwarded(cycle, self.scheme)
        self.parsing = cycle
        if self._content_length == 0 or (
            self._content_length is None and not self._chunked_request
        ):
            cycle.more_body = False  # no body follows: receive() need not wait for one
            self._clear_timer()
        else:
            # A body follows: each piece must come within body_timeout of the last
            # (nginx's client_body_timeout), or a trickling client holds its handler.
            self._set_timer(TIMER_BODY, self.limits.body_timeout)
        if self.cycle is None:
            self.cycle = cycle
            cycle.start()
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def _deadline(self) -> Deadline:
        """The request's deadline: its deadline headers, narrowed by the server's cap."""
        state = self.state
        return request_head.request_deadline(
            self._fields, state.request_timeout, self.limits.max_deadline)

    def _apply_forwarded(self, cycle: RequestCycle, scheme: str) -> None:
        """What a trusted proxy's headers say about the request (server/forwarded.py)."""
        assert self.proxy_trust is not None
        view = self.proxy_trust.view(tuple(self._fields), scheme)
        if view is not None:
            cycle.set_forwarded(view)

    def _start_websocket(self, http_version: str, method: bytes) -> None:
        """A WebSocket upgrade: the same scope and request cycle as any request (its
        deadline bounds the handshake), served as a session (``websocket.py``)."""
        if method != b"GET" or http_version != "1.1":
            raise RequestRejected(400, "WebSocket handshake failed: must be GET over HTTP/1.1")
        protocol, response = handshake(self.state, self._headers, self._url)
        if self.state.draining:
            # This worker is leaving: a session opened now would be closed at once.
            # The client retries, and reaches a worker that stays.
            raise RequestRejected(503, "Service restarting: open the WebSocket again")
        if self.cycle is not None or self.pipeline:
            raise RequestRejected(400, "WebSocket upgrade pipelined behind another request")
        path, raw_path, query = request_head.split_target(self._url, method)
        deadline = self._deadline()
        scope = build_scope(
            self.state, http_version, "GET", self.scheme, path, raw_path, query,
            self._headers, self.client, self.server, self.extensions, deadline,
        )
        cycle = WebSocketCycle(self, scope, http_version, deadline, protocol, response)
        self.flush()  # the session writes to the transport itself, after what is done
        if self._fields and self.proxy_trust is not None:
            self._apply_forwarded(cycle, scope["scheme"])
        self.parsing = cycle
        self.upgraded = cycle
        self._clear_timer()  # the handshake is bounded by the deadline and admission
        self.cycle = cycle
        cycle.start()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.body_received += len(body)
        limit = self.limits.request_body
        if limit is not None and cycle.body_received > limit:
            raise RequestRejected(413, f"Request body larger than {limit} bytes")
        if self.timer_kind is TIMER_BODY:
            self.timer_at = self.loop.time() + self.limits.body_timeout
        cycle.feed_body(body)
        if cycle.buffered > HIGH_WATER:
            self._pause_reading()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.end_body()
        self.parsing = None
        if self.timer_kind is TIMER_BODY:
            if self.cycle is None and not self.pipeline and cycle.response_complete:
                # answered before its body ended: the connection is idle from now on
                self._set_timer(TIMER_KEEPALIVE, self.limits.keep_alive_timeout)
            else:
                self._clear_timer()
        if cycle.keep_alive and not self.parser.should_keep_alive():
            # "Connection: close" arrived in the trailers: httptools will refuse
            # anything after this message, so this connection ends with it.
            cycle.keep_alive = False
            if cycle.response_complete:
                self.close()

    # -- request scheduling -------------------------------------------------------

    def response_complete(self, cycle: RequestCycle) -> None:
        """Called once per request when its last response byte has been written
        (counted and its unread body dropped by the cycle)."""
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or self.closed:
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            if isinstance(nxt, RequestRejected):
                self.reject(nxt)
                return
            self.cycle = nxt
            nxt.start()
        elif not self._in_head and self.parsing is None:
            self._set_timer(TIMER_KEEPALIVE, self.limits.keep_alive_timeout)
        self._update_reading()

    def _reject(self, rejection: RequestRejected) -> None:
        """Answer bad input: now, after the requests ahead of it, or by ending the
        request it belongs to if the application is already running it."""
        self._note_request(rejection)
        self._in_head = False
        parsing = self.parsing
        if parsing is not None and parsing is self.cycle:
            parsing.abort(rejection)
        elif parsing is not None and parsing.response_complete:
            # Answered before its body ended (the application did not read it): the
            # client has its response, so nothing more is written; the rest of the
            # body will not come, and the connection ends here.
            error_log.warning("%d %s after the response (client %s); closing",
                              rejection.status, rejection.detail, self.client_label)
            self.close()
        elif self.cycle is not None:
            if parsing is not None:  # a queued pipelined request can no longer complete
                with contextlib.suppress(ValueError):
                    self.pipeline.remove(parsing)
            self.pipeline.append(rejection)
            self._pause_reading()
        else:
            self.reject(rejection)
        self.parsing = None

    # -- the cycle's channel: putting responses on the wire --------------------------

    def send_head(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        head = cycle.head
        status = cycle.status
        chosen = framing.choose_framing(
            status, cycle.expected_length is not None or cycle.chunked, cycle.head_request,
            cycle.http_version, body, more,
        )
        if chosen is _LENGTH:
            cycle.expected_length = len(body)
            head.append(b"content-length: %d\r\n" % len(body))
        elif chosen is _CHUNKED:
            cycle.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        keep_alive = cycle.keep_alive = framing.keeps_alive(
            cycle.keep_alive,
            chosen,
            cycle.more_body and not cycle.final_delivered and cycle.expect_100,
            self.state.draining,
        )
        if not keep_alive:
            head.append(b"connection: close\r\n")
        elif cycle.http_version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        if not cycle.no_body:
            head.append(framing.chunk(body, more) if cycle.chunked else body)
        out = b"".join(head)
        cycle.bytes_sent += len(out)
        if more or not keep_alive:
            self._write(out)
        else:
            self._write_soon(out)

    def send_body(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        if cycle.no_body:
            return
        out = framing.chunk(body, more) if cycle.chunked else body
        if out:
            self._write(out)
            cycle.bytes_sent += len(out)

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]],
                      more: bool) -> None:
        """Trailers end a chunked body (RFC 9112 section 7.1.2); a body framed by length
        cannot carry them, so they are dropped there. (HTTP/1.1 does not advertise the
        trailers extension: an application uses it on HTTP/2, where gRPC needs it.)
        Only the last ``http.response.trailers`` message's fields are written."""
        if more or cycle.no_body or not cycle.chunked:
            return
        out = b"0\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in fields) \
            + b"\r\n"
        self._write(out)
        cycle.bytes_sent += len(out)

    def send_error(self, cycle: RequestCycle, status: int, detail: str, retry_after: bool) -> None:
        out = wire.error_response(status, detail, self.state.default_head,
                                  _RETRY_AFTER if retry_after else b"")
        self._write(out)
        cycle.bytes_sent += len(out)

    def send_continue(self, cycle: RequestCycle) -> None:
        self._write(wire.CONTINUE_100)
        if self.timer_kind is TIMER_BODY:  # the client may start its body only now
            self.timer_at = self.loop.time() + self.limits.body_timeout

    def cut(self, cycle: RequestCycle) -> None:
        self.close()

    def reject(self, rejection: RequestRejected) -> None:
        error_log.warning(
            "%d %s (client %s)", rejection.status, rejection.detail, self.client_label
        )
        size = 0
        if not self.closed:
            extra = _UPGRADE_WEBSOCKET if rejection.status == 426 else b""
            out = wire.error_response(
                rejection.status, rejection.detail, self.state.default_head, extra
            )
            self._write(out)
            size = len(out)
        self.state.http.observe(rejection.status, 0.0)
        self.state.log_access(self.client_label, rejection.method or "-",
                              rejection.target or "-", rejection.status, size, 0.0,
                              NO_DEADLINE, None)
        self.close()

    def _note_request(self, rejection: RequestRejected) -> None:
        """Put on ``rejection`` the method and target of the request it refuses, as far
        as they were read: the access line says what was refused, not ``"- -"``. Called
        when the rejection is found (a pipelined one is answered later, when the head
        being parsed is another one). ``_url`` is emptied at each message's begin, so a
        non-empty one belongs to the head being parsed."""
        if rejection.method is not None:
            return
        parsing = self.parsing
        if parsing is not None:
            scope = parsing.scope
            rejection.method = scope.get("method", "GET")  # (a WebSocket scope has none)
            target = scope["raw_path"] + (b"?" + scope["query_string"]
                                          if scope["query_string"] else b"")
        elif self._url:
            rejection.method = self.parser.get_method().decode("latin-1")
            target = self._url
        else:
            return
        if len(target) > _LOGGED_TARGET_MAX:  # a 414's target: enough to recognise it
            target = target[:_LOGGED_TARGET_MAX] + b"..."
        rejection.target = target.decode("latin-1")

    def body_consumed(self, cycle: RequestCycle) -> None:
        self._update_reading()

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
        if self.upgraded is not None and not self.upgraded.may_read():
            return
        self.read_paused = False
        self.transport.resume_reading()
        if self.timer_kind is TIMER_BODY:  # the body's clock runs from when we read again
            self.timer_at = self.loop.time() + self.limits.body_timeout

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
            if self._out is not None:
                self.flush()  # the responses already complete go first
            self.transport.close()

    # -- writing ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now, after the complete responses still waiting for the turn's end."""
        out = self._out
        if out is not None:
            self._out = None
            data = out + data
        self.transport.write(data)

    def _write_soon(self, data: bytes) -> None:
        """A complete response on a kept-alive connection: written at the end of the
        loop turn, with every other response completed in it (ServerState.flush_later:
        a client waiting for several is woken once)."""
        out = self._out
        if out is None:
            self._out = data
            self.state.flush_later(self, self.loop)
        else:
            self._out = out + data  # pipelined responses: in order

    def flush(self) -> None:
        """The end of the loop turn: the complete responses go out."""
        out = self._out
        if out is not None:
            self._out = None
            if not self.closed and not self.transport.is_closing():
                self.transport.write(out)

    # -- timers (swept by the worker, no per-request timer handles) ----------------

    def _set_timer(self, kind: TimerKind, seconds: float) -> None:
        self.timer_kind = kind
        self.timer_at = self.loop.time() + seconds

    def _clear_timer(self) -> None:
        self.timer_kind = TIMER_NONE

    def websocket_opened(self, cycle: WebSocketCycle) -> None:
        """The application accepted: the session is open; ping it from now on."""
        interval = self.state.websocket.ping_interval
        if interval is not None:
            self._set_timer(TIMER_PING, interval)

    def pause_reading(self) -> None:
        """Stop reading until the session's queued messages are taken."""
        self._pause_reading()

    def going_away(self, code: int, reason: str) -> None:
        """The worker is leaving: an open WebSocket session is closed with ``code``."""
        if self.upgraded is not None:
            self.upgraded.going_away(code, reason)

    def running(self) -> list[RequestCycle]:
        return [c for c in (self.cycle, *self.pipeline) if isinstance(c, RequestCycle)]

    def begin_drain(self) -> None:
        """Nothing to announce on HTTP/1.1: each response says ``connection: close``."""

    def check_timer(self, now: float) -> None:
        kind = self.timer_kind
        if kind is TIMER_NONE or now < self.timer_at or self.closed:
            return
        if kind is TIMER_PING:
            upgraded = self.upgraded
            after = None if upgraded is None else upgraded.on_ping_timer(
                now, self.state.websocket)
            if after is None:
                self.timer_kind = TIMER_NONE
                self.transport.abort()  # the peer is gone: its handler ends (1006)
            else:
                self.timer_at = now + after
            return
        if kind is TIMER_HEAD and self.cycle is not None:
            return  # a pipelined head: the requests ahead of it are answered first
        parsing = self.parsing
        if kind is TIMER_BODY and (
            self.read_paused or parsing is None or (parsing.expect_100 and parsing.more_body)
        ):
            # Reading is paused by us (the application has not taken what it has, or
            # pipelining), or the client waits for a 100 Continue the application has
            # not asked for: the client is not slow. Count from when we read again.
            self.timer_at = now + self.limits.body_timeout
            return
        self.timer_kind = TIMER_NONE
        if kind is TIMER_KEEPALIVE:
            self.close()
        elif kind is TIMER_BODY:
            self._reject(RequestRejected(408, "Request body not received in time"))
        elif self._in_head:
            # A slow client (slowloris): answer 408 so it knows why, then close.
            rejection = RequestRejected(408, "Request head not received in time")
            self._note_request(rejection)
            self.reject(rejection)
        else:
            self.close()
