"""HTTP/2 (RFC 9113) on ``asyncio.Protocol`` + the ``h2`` library: each stream is
one request cycle (``cycle.py``), the same one HTTP/1.1 drives.

Rules of this file:

* Framing, HPACK and the protocol's state machines are ``h2``'s (sans-I/O,
  maintained, used by hypercorn and httpx): none of it is written here. This
  module maps h2's events onto request cycles and their answers back onto h2.
* A stream is a :class:`~tether.server.cycle.Channel`: scope building, deadlines,
  cancellation, admission and the status of every ending are the cycle's. What is
  HTTP/2's is here: flow control both ways (``send()`` waits on the stream's and
  the connection's windows; request body is acknowledged only as the application
  reads it), trailers, RST_STREAM (the stream's handler is cancelled as a
  disconnect cancels an HTTP/1.1 one; the other streams go on), and gRPC's way of
  reporting tether's own answers (``grpc.py``).
* Bad input ends the smallest thing it can: a bad request head answers that
  stream only; a protocol error or a flood ends the connection with GOAWAY. Each is
  logged once, with the client's address, and counted.
* Floods the library lets through are bounded here, per connection and per second
  (table below): RST_STREAM (rapid reset, CVE-2023-44487), PING and SETTINGS.
  CONTINUATION floods and HPACK bombs are refused by h2 itself (64 CONTINUATION
  frames per header block; the decoded header list bounded by
  SETTINGS_MAX_HEADER_LIST_SIZE), and end here as protocol errors.
* Leaving is two-phase (RFC 9113 section 6.8): GOAWAY with the largest stream id
  and a PING; when the PING returns (every stream the client sent before it has
  arrived), GOAWAY with the real last stream id. Streams up to it finish within
  the grace period; later ones get REFUSED_STREAM, which clients retry elsewhere.
  An idle connection is closed with GOAWAY, never reset.

Theory of operation: :class:`HttpProtocol` (``http1.py``) accepts every
connection and hands it to :class:`Http2Connection` when ALPN chose ``h2`` or the
first bytes are the HTTP/2 connection preface (h2c with prior knowledge). Writes
made while the event loop runs application code are gathered and written once
per loop turn (``_schedule_write``): sixteen streams answering in one turn cost
one ``write``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from tether.deadline import GRPC_HEADER_BYTES, HEADER_BYTES, NO_DEADLINE
from tether.server import forwarded, grpc, h2_fields, request_head, wire
from tether.server.cycle import RequestCycle, ServerOptionsCycle, build_scope
from tether.server.hpack_encoder import StaticTableEncoder
from tether.server.request_head import RequestRejected, ServerOptions

if TYPE_CHECKING:
    from tether.server.forwarded import TrustList
    from tether.server.http1 import HttpProtocol
    from tether.server.websocket import WebSocketCycle

error_log = logging.getLogger("tether.error")

#: what a client sends first on an HTTP/2 connection (RFC 9113 section 3.4)
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Floods: more of these frames in one second ends the connection with GOAWAY
# ENHANCE_YOUR_CALM. Generous for real clients (a gRPC client cancelling many calls,
# a keepalive PING every few seconds), far below what an attack needs to hurt.
RESETS_PER_SECOND: Final = 200
PINGS_PER_SECOND: Final = 50
SETTINGS_PER_SECOND: Final = 50
#: frames that carry nothing: an empty DATA frame that does not end its stream, a
#: PRIORITY frame (tether does not prioritise): CVE-2019-9518's "empty frames" flood
EMPTY_FRAMES_PER_SECOND: Final = 200

#: seconds the first GOAWAY's PING may take to come back before the second GOAWAY
#: goes anyway (a client that never answers PINGs must not hold the stop)
GOAWAY_PING_WAIT: Final = 1.0
_GOAWAY_PING: Final = b"tether\x00\x01"
#: seconds a closed connection keeps reading (and dropping) before the socket closes,
#: unless the client closes first
LINGER: Final = 2.0
_MAX_STREAM_ID: Final = 2**31 - 1

_CONFIG: Final = h2.config.H2Configuration(
    client_side=False, header_encoding=None,
    # tether builds its response headers from already validated ones (wire.py)
    validate_outbound_headers=False, normalize_outbound_headers=False,
    # ... and checks request fields itself, once per distinct field (h2_fields.py)
    validate_inbound_headers=False,
)

# The request fields the server itself reads (beyond the pseudo-headers).
_DEADLINE, _FORWARDED, _CONTENT_TYPE, _EXPECT, _COOKIE = range(5)
_SPECIAL_FIELDS: Final = {
    HEADER_BYTES: _DEADLINE,
    GRPC_HEADER_BYTES: _DEADLINE,
    b"content-type": _CONTENT_TYPE,
    b"expect": _EXPECT,
    b"cookie": _COOKIE,
    **dict.fromkeys(forwarded.FIELD_NAMES, _FORWARDED),
}
#: response headers HTTP/2 forbids (RFC 9113 section 8.2.2): tether's HTTP/1.1
#: framing never reaches an HTTP/2 client
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
#: a request target's characters (the HTTP/1.1 parser checks these; h2 does not)
_BAD_TARGET_BYTES: Final = frozenset(range(0x21)) | {0x7F}

_STATUS: Final = {status: b"%d" % status for status in range(100, 1000)}
_RETRY_AFTER_FIELD: Final = (b"retry-after", wire.RETRY_AFTER)
_ERROR_CONTENT_TYPE_FIELD: Final = (b"content-type", wire.ERROR_CONTENT_TYPE)
_GRPC_CONTENT_TYPE_FIELD: Final = (b"content-type", grpc.GRPC_CONTENT_TYPE)
#: what the scope's extensions advertise on HTTP/2 (ASGI HTTP Trailers extension)
TRAILERS_EXTENSION: Final = "http.response.trailers"

# Header blocks rendered for HTTP/1.1 (the cycle's head lines, the default head)
# parsed once into HTTP/2 fields: the same few blocks come back on every response.
_fields_cache: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
_FIELDS_CACHE_MAX: Final = 1024


def _fields_of(block: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """HTTP/2 fields of rendered ``name: value\\r\\n`` lines (names lower-cased,
    connection-specific ones left out)."""
    hit = _fields_cache.get(block)
    if hit is None:
        fields = []
        for line in block.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name not in _CONNECTION_SPECIFIC:
                    fields.append((name, value.strip()))
        hit = tuple(fields)
        if len(_fields_cache) >= _FIELDS_CACHE_MAX:
            _fields_cache.clear()
        _fields_cache[block] = hit
    return hit


def response_fields(status: int, head: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list of a response whose head the cycle rendered as
    HTTP/1.1 lines (``head[0]`` is its status line)."""
    fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
    for block in head[1:]:
        fields.extend(_fields_of(block))
    return fields


class Http2Stream:
    """One stream: the :class:`~tether.server.cycle.Channel` of its request cycle."""

    __slots__ = (
        "body_at",
        "client_label",
        "conn",
        "cycle",
        "drain_waiter",
        "end_queued",
        "ended",
        "grpc",
        "loop",
        "pending",
        "remote_ended",
        "reset",
        "state",
        "stream_id",
        "trailer_fields",
        "unacked",
    )

    def __init__(self, conn: Http2Connection, stream_id: int, grpc_call: bool) -> None:
        self.conn = conn
        self.state = conn.state
        self.loop = conn.loop
        self.client_label = conn.client_label
        self.stream_id = stream_id
        self.grpc = grpc_call
        self.cycle: RequestCycle | None = None
        #: response data waiting for flow-control window, in order
        self.pending: deque[bytes] = deque()
        #: the response ends once ``pending`` (and trailers) are out
        self.end_queued = False
        #: END_STREAM sent (or the stream reset): nothing more is written
        self.ended = False
        #: the client's side is done (END_STREAM received)
        self.remote_ended = False
        #: the client reset the stream, or the connection is gone
        self.reset = False
        self.trailer_fields: list[tuple[bytes, bytes]] = []
        #: request body bytes the application has not read yet (not yet acknowledged)
        self.unacked = 0
        #: when the request's body last moved (the stream's own body timeout)
        self.body_at = conn.loop.time()
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- the Channel interface -------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return bool(self.pending) or self.conn.write_paused

    def send_head(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        if self.ended:
            return
        fields = response_fields(cycle.status, cycle.head)
        if cycle.no_body:
            body = b""
        cycle.bytes_sent += len(body)
        conn = self.conn
        if not more and not body:
            conn.send_headers(self, fields, end=True)
            return
        conn.send_headers(self, fields, end=False)
        self.queue(body, not more)

    def send_body(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        if self.ended:
            return
        if cycle.no_body:
            body = b""
        cycle.bytes_sent += len(body)
        self.queue(body, not more)

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]],
                      more: bool) -> None:
        if self.ended:
            return
        self.trailer_fields.extend(fields)
        if not more:
            self.queue(b"", True)

    def send_error(self, cycle: RequestCycle, status: int, detail: str, retry_after: bool) -> None:
        if self.ended:
            return
        cycle.bytes_sent += self.conn.send_answer(self, status, detail, retry_after)

    def send_continue(self, cycle: RequestCycle) -> None:
        if not self.ended:
            self.conn.send_headers(self, [(b":status", b"100")], end=False)

    def cut(self, cycle: RequestCycle) -> None:
        """The response cannot be completed. A gRPC call whose messages are all out
        still gets a status in its trailers (DEADLINE_EXCEEDED, UNAVAILABLE...);
        anything else is reset, so the client never takes it for complete."""
        if self.ended:
            return
        if self.grpc and not self.pending:
            self.trailer_fields = grpc.status_fields(cycle.failure, "")
            self.queue(b"", True)
        else:
            self.conn.reset_stream(self, ErrorCodes.INTERNAL_ERROR)

    def reject(self, rejection: RequestRejected) -> None:
        self.conn.refuse(self, rejection)

    def body_consumed(self, cycle: RequestCycle) -> None:
        # (also called as the application starts waiting: the body timeout runs from
        # then, and from the window this opens, not from the last piece it read)
        self.body_at = self.loop.time()
        if self.unacked and not cycle.buffered:
            self.conn.acknowledge(self, self.unacked)
            self.unacked = 0

    async def drain(self) -> None:
        while self.write_paused and not (self.ended or self.reset or self.conn.closed):
            waiter = self.drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.drain_waiter = None

    def response_complete(self, cycle: RequestCycle) -> None:
        # Data may still wait for window: the stream leaves the connection when its
        # END_STREAM is out (Http2Connection.stream_ended).
        if self.unacked:  # body the application never read: give its window back
            self.conn.acknowledge(self, self.unacked)
            self.unacked = 0
        if self.ended and not self.remote_ended:
            self.conn.stream_ended(self)  # stop the client's upload, forget the stream

    # -- writing ----------------------------------------------------------------------

    def queue(self, data: bytes, end: bool) -> None:
        """Send ``data`` as the window allows; ``end``: the response ends after it."""
        if data:
            self.pending.append(data)
        if end:
            self.end_queued = True
        self.conn.flush_stream(self)

    def wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, except that a client's graceful GOAWAY leaves it open.

    RFC 9113 6.8: after a GOAWAY with NO_ERROR the streams the client already opened
    still get their responses. h2 closes its state machine on any GOAWAY and clears
    what it had queued, after which it refuses to send those responses and treats any
    later frame of the same read (a SETTINGS ACK, a WINDOW_UPDATE) as a protocol error.
    Here a graceful GOAWAY only reports itself; an error GOAWAY goes through h2.
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> Any:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2's events in, streams' answers out, its timers."""

    #: a WebSocket session this connection became: never (RFC 8441 is not served)
    upgraded: WebSocketCycle | None = None

    def __init__(self, http1: HttpProtocol) -> None:
        """Take over the connection ``http1`` accepted (its peer facts are reused)."""
        state = self.state = http1.state
        self.loop = http1.loop
        self.transport = http1.transport
        self.client = http1.client
        self.server = http1.server
        self.scheme = http1.scheme
        self.client_label = http1.client_label
        self.proxy_trust: TrustList | None = http1.proxy_trust
        self.limits = state.limits
        extensions: dict[str, Any] = dict(http1.extensions or {})
        extensions[TRAILERS_EXTENSION] = {}
        self.extensions = extensions
        settings = state.http2
        conn = self.h2 = _ServerH2Connection(config=_CONFIG)
        codes = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            codes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            codes.MAX_FRAME_SIZE: settings.max_frame_size,
            codes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        })
        # The HPACK decoder's bound applies from the first header block (h2 moves it
        # only when the client acknowledges the SETTINGS).
        conn.decoder.max_header_list_size = settings.max_header_list_size
        conn.encoder = StaticTableEncoder()  # type: ignore[assignment]  # hpack_encoder.py
        conn.max_inbound_frame_size = settings.max_frame_size
        self.streams: dict[int, Http2Stream] = {}
        self.closed = False
        #: close() has begun: the last GOAWAY is written, the client's bytes are dropped
        self.closing = False
        self.linger_until = 0.0
        self.write_paused = False
        self._write_handle: asyncio.Handle | None = None
        # GOAWAY: 0 none sent, 1 the first (with its PING) sent, 2 the last one sent
        self.goaway_phase = 0
        self.goaway_at = 0.0
        #: streams above this id are refused (set by the second GOAWAY)
        self.last_stream_id = _MAX_STREAM_ID
        self.peer_goaway = False
        now = self.loop.time()
        #: when the connection last had no stream (the idle timer counts from it)
        self.idle_since = now
        #: since when a response has waited on a closed flow-control window (None: none
        #: waits; a WINDOW_UPDATE clears it, the next wait starts it again)
        self.stalled_since: float | None = None
        self.served_any = False
        # flood accounting: counts in the current one-second window
        self._flood_window = now
        self._resets = 0
        self._pings = 0
        self._settings = 0
        self._empty = 0

    def start(self, data: bytes) -> None:
        """Begin HTTP/2 on the transport: our SETTINGS, then ``data`` (read already)."""
        state = self.state
        state.connections.add(self)
        state.counters["h2_connections"] += 1
        self.h2.initiate_connection()
        window = state.http2.initial_window_size
        if window > 65535:  # the connection's window follows the streams'
            self.h2.increment_flow_control_window(window - 65535)
        if state.draining:
            self._goaway_begin()
        if data:
            self.data_received(data)
        else:
            self._write()

    # -- the Connection interface (the worker's view) --------------------------------

    @property
    def cycle(self) -> RequestCycle | None:
        """A request in flight on this connection, if any (the worker waits for them)."""
        for stream in self.streams.values():
            if stream.cycle is not None and not stream.ended:
                return stream.cycle
        return None

    @property
    def open_streams(self) -> int:
        """Streams whose response is not complete yet (``/status``)."""
        return sum(1 for stream in self.streams.values() if not stream.ended)

    def running(self) -> list[RequestCycle]:
        return [stream.cycle for stream in self.streams.values() if stream.cycle is not None]

    def going_away(self, code: int, reason: str) -> None:
        """WebSocket sessions only: HTTP/2 streams leave by GOAWAY (begin_drain)."""

    def begin_drain(self) -> None:
        """The worker is leaving: the first GOAWAY now (server/worker.py)."""
        if self.goaway_phase == 0 and not self.closed:
            self._goaway_begin()

    def close(self) -> None:
        """Close gracefully: a last GOAWAY, what is written, then the socket."""
        if self.closed or self.closing or self.transport.is_closing():
            return
        self.closing = True
        for stream in list(self.streams.values()):
            if not stream.ended:
                self.reset_stream(stream, ErrorCodes.CANCEL)
        self._send_goaway(self._last_processed(), ErrorCodes.NO_ERROR)
        self._write_pending()
        if self.transport.can_write_eof():
            # A lingering close: what the client sends meanwhile (a WINDOW_UPDATE, the
            # PING's answer) is read and dropped, so the kernel never answers it with a
            # reset that could destroy the GOAWAY and the last responses in flight.
            self.transport.write_eof()
            self.linger_until = self.loop.time() + LINGER
        else:
            self.transport.close()

    def _last_processed(self) -> int:
        """The last stream id a GOAWAY names: never more than an earlier GOAWAY named
        (RFC 9113 6.8), though h2 counts the refused streams above it too."""
        return min(self.h2.highest_inbound_stream_id, self.last_stream_id)

    def check_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.closing:
            if now >= self.linger_until:
                self.transport.close()
            return
        if self.goaway_phase == 1 and now - self.goaway_at >= GOAWAY_PING_WAIT:
            self._goaway_final()
        elif self.goaway_phase == 0 and self.state.draining:
            self._goaway_begin()
        if self.streams:
            self._check_bodies(now)
            stalled = self.stalled_since
            if stalled is not None and now - stalled > self.limits.body_timeout and any(
                    stream.pending for stream in self.streams.values()):
                # A peer that never opens its window would hold its handlers and
                # their buffers for ever (zero-window stall).
                self._fail(ErrorCodes.FLOW_CONTROL_ERROR,
                           "HTTP/2 flow-control window stayed closed", "h2_window_timeouts")
            return
        limit = self.limits.keep_alive_timeout if self.served_any \
            else self.limits.header_timeout
        if now - self.idle_since > limit or self.goaway_phase == 2 or self.peer_goaway:
            self.close()

    def _check_bodies(self, now: float) -> None:
        """A request body that stops coming while its application waits for it is
        answered 408 on its stream, as on HTTP/1.1 (--body-timeout): a client cannot
        hold handlers by opening streams and sending nothing."""
        limit = self.limits.body_timeout
        for stream in list(self.streams.values()):
            cycle = stream.cycle
            if (cycle is not None and cycle.more_body and cycle.waiter is not None
                    and not stream.remote_ended and now - stream.body_at > limit):
                cycle.abort(RequestRejected(408, "Request body not received in time"))

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self._write_handle is not None:
            self._write_handle.cancel()
            self._write_handle = None
        for stream in list(self.streams.values()):
            stream.reset = True
            stream.ended = True
            if stream.cycle is not None:
                stream.cycle.on_disconnect()
                stream.cycle = None  # (see _forget)
            stream.wake_writer()
        self.streams.clear()

    def eof_received(self) -> bool:
        return False  # the client went away (as http1.py treats it)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in self.streams.values():
            stream.wake_writer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering after the last GOAWAY (close)
        if self._write_handle is not None:
            # Out first: a GOAWAY in ``data`` would make h2 drop what it holds unsent.
            self._write_pending()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the error's code already.
            self._fail(None, f"HTTP/2 protocol error: {exc}", "h2_protocol_errors")
            return
        opened = 0  # the stream a HEADERS frame just opened (its priority is not a frame)
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                opened = event.stream_id  # type: ignore[attr-defined]
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is h2.events.DataReceived:
                if not event.flow_controlled_length and event.stream_ended is None:  # type: ignore[attr-defined]
                    self._empty += 1
                    if not self._within_bounds():
                        return
                self._on_data(event)  # type: ignore[arg-type]
            elif kind is h2.events.PriorityUpdated:
                if event.stream_id != opened:  # type: ignore[attr-defined]
                    self._empty += 1
                    if not self._within_bounds():
                        return
            elif kind is h2.events.StreamEnded:
                self._on_stream_ended(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                self._on_reset(event)  # type: ignore[arg-type]
            elif kind is h2.events.WindowUpdated:
                self._on_window(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.TrailersReceived:
                pass  # request trailers are not exposed (as on HTTP/1.1); END_STREAM follows
            elif kind is h2.events.RemoteSettingsChanged:
                self._settings += 1
                if not self._within_bounds():
                    return
                self._on_window(0)  # a new initial window may unblock streams
            elif kind is h2.events.PingReceived:
                self._pings += 1
                if not self._within_bounds():
                    return
            elif kind is h2.events.PingAckReceived:
                if event.ping_data == _GOAWAY_PING and self.goaway_phase == 1:  # type: ignore[attr-defined]
                    self._goaway_final()
            elif kind is h2.events.ConnectionTerminated:
                self.peer_goaway = True  # the client opens no more streams
                if event.error_code != ErrorCodes.NO_ERROR:  # type: ignore[attr-defined]
                    self._fail(ErrorCodes.NO_ERROR, "HTTP/2 client ended the connection "
                               f"with {event.error_code!r}", "h2_protocol_errors")  # type: ignore[attr-defined]
                    return
                # graceful: the streams it opened finish (see _ServerH2Connection)
            if self.closed:
                return
        self._write()
        if self.peer_goaway and not self.streams:
            self.close()

    # -- events ------------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id: int = event.stream_id
        state = self.state
        if stream_id > self.last_stream_id:
            # After the last GOAWAY: never started here, so safe to retry elsewhere.
            state.counters["h2_refused_streams"] += 1
            self._reset_id(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.served_any = True
        method = path = scheme = authority = None
        headers: list[tuple[bytes, bytes]] = []
        fields: list[tuple[bytes, bytes]] = []
        content_type = None
        expect_100 = False
        cookies: list[bytes] = []
        limits = self.limits
        rejection: RequestRejected | None = None
        malformed: str | None = None
        regular_seen = False
        for field in event.headers:
            name, value = field
            if name[:1] == b":":
                if regular_seen or name not in h2_fields.PSEUDO_HEADERS:
                    malformed = f"pseudo-header {name[:32]!r} misplaced or unknown"
                    break
                if name == b":method":
                    duplicate, method = method is not None, value
                elif name == b":path":
                    duplicate, path = path is not None, value
                elif name == b":scheme":
                    duplicate, scheme = scheme is not None, value
                else:
                    duplicate, authority = authority is not None, value
                malformed = f"pseudo-header {name!r} repeated" if duplicate \
                    else h2_fields.invalid_field(field)
                if malformed is not None:
                    break
                continue
            regular_seen = True
            malformed = h2_fields.invalid_field(field)
            if malformed is not None:
                break
            if len(name) + len(value) > limits.request_field_size:
                rejection = RequestRejected(431, "Request header field too large")
            special = _SPECIAL_FIELDS.get(name)
            if special is None:
                pass
            elif special == _COOKIE:
                # RFC 9113 section 8.2.3: cookie crumbs are joined for the application
                cookies.append(value)
                continue
            elif special == _CONTENT_TYPE:
                content_type = value
            elif special == _EXPECT:
                expect_100 = value.lower() == b"100-continue"
            elif special == _DEADLINE or self.proxy_trust is not None:
                fields.append((name, value))
            headers.append((name, value))
        if malformed is None and (method is None or (method != b"CONNECT" and (
                scheme is None or not path))):
            malformed = "no :method, :scheme or :path"
        if malformed is not None:
            self._malformed(stream_id, malformed)
            return
        if cookies:
            headers.append((b"cookie", b"; ".join(cookies)))
        if authority is not None and not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", authority))
        stream = Http2Stream(self, stream_id, grpc.is_grpc(content_type))
        self.streams[stream_id] = stream
        state.counters["h2_grpc_streams" if stream.grpc else "h2_streams"] += 1
        if len(headers) > limits.request_fields:
            rejection = RequestRejected(431, "Too many request header fields")
        if rejection is not None:
            self.refuse(stream, rejection)
            return
        try:
            cycle = self._cycle_for(stream, method, path, scheme, headers, fields, expect_100)
        except RequestRejected as rejected:
            self.refuse(stream, rejected, method, path)
            return
        stream.cycle = cycle
        if event.stream_ended is not None:
            stream.remote_ended = True
            cycle.more_body = False
        cycle.start()

    def _malformed(self, stream_id: int, reason: str) -> None:
        """A malformed request (RFC 9113 8.1.1): reset its stream, logged once."""
        error_log.warning("malformed HTTP/2 request: %s; stream %d reset (client %s)",
                          reason, stream_id, self.client_label)
        self.state.counters["h2_malformed"] += 1
        self._reset_id(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _cycle_for(
        self, stream: Http2Stream, method: bytes | None, path: bytes | None,
        scheme: bytes | None, headers: list[tuple[bytes, bytes]],
        fields: list[tuple[bytes, bytes]], expect_100: bool,
    ) -> RequestCycle:
        if method is None or path is None or method == b"CONNECT":
            raise RequestRejected(501, "CONNECT is not supported by this server")
        if len(path) > self.limits.request_line:
            raise RequestRejected(414, "Request-URI too long")
        if not path or not _BAD_TARGET_BYTES.isdisjoint(path):
            raise RequestRejected(400, "Invalid HTTP/2 request: bad :path")
        try:
            target, raw_path, query = request_head.split_target(path, method)
            kind: type[RequestCycle] = RequestCycle
        except ServerOptions:
            target, raw_path, query, kind = "*", b"*", b"", ServerOptionsCycle
        state = self.state
        deadline = request_head.request_deadline(
            fields, state.request_timeout, self.limits.max_deadline) \
            if fields or state.request_timeout is not None else NO_DEADLINE
        scope_scheme = self.scheme if scheme is None else scheme.decode("latin-1")
        scope = build_scope(
            state, "2", method.decode("latin-1"), scope_scheme, target, raw_path, query,
            headers, self.client, self.server, self.extensions, deadline,
        )
        cycle = kind(stream, scope, True, expect_100, "2", deadline)
        if fields and self.proxy_trust is not None:
            view = self.proxy_trust.view(tuple(fields), scope_scheme)
            if view is not None:
                cycle.set_forwarded(view)
        return cycle

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id: int = event.stream_id
        size: int = event.flow_controlled_length
        stream = self.streams.get(stream_id)
        cycle = None if stream is None else stream.cycle
        if cycle is None or cycle.response_complete or stream is None:
            # Refused or answered already: the body is dropped, its window given back.
            if size:
                self.h2.acknowledge_received_data(size, stream_id)
            return
        data: bytes = event.data
        cycle.body_received += len(data)
        limit = self.limits.request_body
        if limit is not None and cycle.body_received > limit:
            self.h2.acknowledge_received_data(size, stream_id)
            cycle.abort(RequestRejected(413, f"Request body larger than {limit} bytes"))
            return
        stream.unacked += size
        stream.body_at = self.loop.time()
        if data:
            cycle.feed_body(data)
        elif size:
            stream.body_consumed(cycle)  # padding only

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_ended = True
        if stream.cycle is not None:
            stream.cycle.end_body()
        if stream.ended:
            self._forget(stream)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        state = self.state
        state.counters["h2_resets_received"] += 1
        self._resets += 1
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            stream.reset = True
            stream.ended = True
            if stream.cycle is not None:
                # The client cancelled this stream: its handler (and the queries and
                # calls it awaits) is cancelled, as on an HTTP/1.1 disconnect.
                stream.cycle.on_disconnect()
                stream.cycle = None  # (see _forget)
            stream.wake_writer()
        self._within_bounds()

    def _on_window(self, stream_id: int) -> None:
        self.stalled_since = None
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and (stream.pending or stream.end_queued):
                self.flush_stream(stream)
            return
        for stream in list(self.streams.values()):
            if stream.pending:
                self.flush_stream(stream)

    def _within_bounds(self) -> bool:
        """Flood control: False (and the connection ends) past a per-second bound."""
        now = self.loop.time()
        if now - self._flood_window >= 1.0:
            self._flood_window = now
            self._resets = self._pings = self._settings = self._empty = 0
            return True
        for count, bound, what in (
            (self._resets, RESETS_PER_SECOND, "RST_STREAM"),
            (self._pings, PINGS_PER_SECOND, "PING"),
            (self._settings, SETTINGS_PER_SECOND, "SETTINGS"),
            (self._empty, EMPTY_FRAMES_PER_SECOND, "empty frame"),
        ):
            if count > bound:
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM,
                           f"HTTP/2 {what} flood (more than {bound} a second)", "h2_floods")
                return False
        return True

    # -- writing -------------------------------------------------------------------------

    def send_headers(self, stream: Http2Stream, fields: list[tuple[bytes, bytes]],
                     end: bool) -> None:
        try:
            self.h2.send_headers(stream.stream_id, fields, end_stream=end)
        except h2.exceptions.ProtocolError:
            self._stream_gone(stream)
            return
        if end:
            self.stream_ended(stream)
        self._schedule_write()

    def flush_stream(self, stream: Http2Stream) -> None:
        """Send what the flow-control windows allow of ``stream``'s pending data, then
        its trailers or END_STREAM once nothing is left."""
        if stream.ended:
            return
        conn = self.h2
        stream_id = stream.stream_id
        pending = stream.pending
        try:
            while pending:
                window = min(conn.local_flow_control_window(stream_id),
                             conn.max_outbound_frame_size)
                if window <= 0:
                    if self.stalled_since is None:
                        self.stalled_since = self.loop.time()
                    break
                data = pending[0]
                if len(data) <= window:
                    pending.popleft()
                    last = not pending and stream.end_queued and not stream.trailer_fields
                    conn.send_data(stream_id, data, end_stream=last)
                    if last:
                        self.stream_ended(stream)
                        break
                else:
                    conn.send_data(stream_id, data[:window])
                    pending[0] = data[window:]
            else:
                if stream.end_queued and not stream.ended:
                    if stream.trailer_fields:
                        conn.send_headers(stream_id, stream.trailer_fields, end_stream=True)
                    else:
                        conn.send_data(stream_id, b"", end_stream=True)
                    self.stream_ended(stream)
        except h2.exceptions.ProtocolError:
            self._stream_gone(stream)
        if not pending:
            stream.wake_writer()
        self._schedule_write()

    def send_answer(self, stream: Http2Stream, status: int, detail: str,
                    retry_after: bool) -> int:
        """A complete answer of tether's own (an error): ``text/plain``, or for a
        gRPC call a trailers-only response with its ``grpc-status``. Returns the body
        size (what the access log counts)."""
        state = self.state
        defaults = _fields_of(state.default_head)
        if stream.grpc:
            fields = [(b":status", b"200"), _GRPC_CONTENT_TYPE_FIELD,
                      *grpc.status_fields(status, detail), *defaults]
            self.send_headers(stream, fields, end=True)
            return 0
        body = wire.error_body(detail)
        fields = [(b":status", _STATUS[status]), _ERROR_CONTENT_TYPE_FIELD,
                  (b"content-length", b"%d" % len(body))]
        if retry_after:
            fields.append(_RETRY_AFTER_FIELD)
        fields.extend(defaults)
        self.send_headers(stream, fields, end=False)
        stream.queue(body, True)
        return len(body)

    def refuse(self, stream: Http2Stream, rejection: RequestRejected,
               method: bytes | None = None, path: bytes | None = None) -> None:
        """Answer bad input on one stream (logged once); the connection goes on."""
        error_log.warning("%d %s (client %s, HTTP/2 stream %d)", rejection.status,
                          rejection.detail, self.client_label, stream.stream_id)
        size = 0
        if not stream.ended:
            size = self.send_answer(stream, rejection.status, rejection.detail, False)
        state = self.state
        state.http.observe(rejection.status, 0.0)
        cycle = stream.cycle
        if cycle is not None:
            method = cycle.scope["method"].encode("latin-1")
            path = cycle.scope["raw_path"]
        state.log_access(self.client_label, (method or b"-").decode("latin-1"),
                         (path or b"-")[:256].decode("latin-1"), rejection.status, size, 0.0,
                         NO_DEADLINE, None)
        self._schedule_write()

    def acknowledge(self, stream: Http2Stream, size: int) -> None:
        if stream.reset or self.closed:
            return
        try:
            self.h2.acknowledge_received_data(size, stream.stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._schedule_write()

    def reset_stream(self, stream: Http2Stream, code: ErrorCodes) -> None:
        self._reset_id(stream.stream_id, code)
        self._stream_gone(stream)

    def _reset_id(self, stream_id: int, code: ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed on h2's side
            self.h2.reset_stream(stream_id, code)
        self._schedule_write()

    def stream_ended(self, stream: Http2Stream) -> None:
        """END_STREAM is out: the stream is done once the client's side is too. A
        client still sending a body it will never need is told to stop (RFC 9113
        section 8.1: RST_STREAM NO_ERROR after a complete response)."""
        stream.ended = True
        stream.pending.clear()
        cycle = stream.cycle
        if not stream.remote_ended and (cycle is None or cycle.response_complete
                                        or cycle.disconnected):
            self._reset_id(stream.stream_id, ErrorCodes.NO_ERROR)
            stream.remote_ended = True
        if stream.remote_ended:
            self._forget(stream)

    def _stream_gone(self, stream: Http2Stream) -> None:
        stream.ended = True
        stream.pending.clear()
        stream.wake_writer()
        self._forget(stream)

    def _forget(self, stream: Http2Stream) -> None:
        # The stream and its cycle point at each other: unlinked here (nothing looks
        # a forgotten stream's cycle up), both are freed when the handler's task ends
        # instead of waiting for the cycle collector (a cycle per request was 6% of
        # a busy worker's CPU in the collector).
        stream.cycle = None
        if self.streams.pop(stream.stream_id, None) is not None and not self.streams:
            self.idle_since = self.loop.time()
            if self.goaway_phase == 2 or self.peer_goaway:
                self._schedule_write()  # _write closes an idle leaving connection

    def _schedule_write(self) -> None:
        if self._write_handle is None and not self.closed:
            self._write_handle = self.loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_handle = None
        if self.closed or self.closing:
            return
        self._write_pending()
        if not self.streams and (self.goaway_phase == 2 or self.peer_goaway):
            self.close()

    # -- leaving -------------------------------------------------------------------------

    def _goaway_begin(self) -> None:
        """The first GOAWAY: "no new streams soon", with a PING whose answer tells
        when every stream the client sent before it has arrived."""
        self.goaway_phase = 1
        self.goaway_at = self.loop.time()
        self._send_goaway(_MAX_STREAM_ID, ErrorCodes.NO_ERROR)
        try:
            self.h2.ping(_GOAWAY_PING)
        except h2.exceptions.ProtocolError:
            self._goaway_final()
            return
        self._write()

    def _goaway_final(self) -> None:
        """The second GOAWAY names the last stream served; later ones are refused."""
        self.goaway_phase = 2
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self._send_goaway(self.last_stream_id, ErrorCodes.NO_ERROR)
        self._write()

    def _send_goaway(self, last_stream_id: int, code: ErrorCodes) -> None:
        # Written as a frame of its own: h2's close_connection() would end the
        # connection's state machine, and the streams in flight must still finish.
        self._write_pending()
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=code)
        self.transport.write(frame.serialize())
        self.state.counters["h2_goaways_sent"] += 1

    def _write_pending(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def _fail(self, code: ErrorCodes | None, reason: str, counter: str) -> None:
        """End the connection for what its client did (logged once): GOAWAY with
        ``code`` (None: h2 queued its own already), then close; its streams'
        handlers see a disconnect."""
        error_log.warning("%s; closing connection (client %s)", reason, self.client_label)
        self.state.counters[counter] += 1
        if code is not None:
            self._send_goaway(self._last_processed(), code)
        else:  # h2 queued its GOAWAY with the error's code: out with the rest
            self._write_pending()
            self.state.counters["h2_goaways_sent"] += 1
        self.transport.close()
        self.connection_lost(None)
