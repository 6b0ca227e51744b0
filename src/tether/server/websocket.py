"""WebSocket sessions (RFC 6455, permessage-deflate RFC 7692) on the one request cycle.

A WebSocket session is a request whose response is a stream of frames: the HTTP/1.1
protocol parses the upgrade request like any other request, builds its scope with
``build_scope``, and on a valid upgrade creates a :class:`WebSocketCycle` (a
:class:`~tether.server.cycle.RequestCycle`) instead of a plain one. Everything the
request cycle does is the same for both: admission, the deadline, cancellation when
the client vanishes, the endings table, the access log. What differs is here: the
ASGI ``websocket`` messages, the handshake, frames both ways, and how an ending is
told to a client that already has its ``101`` (a close frame instead of a status).

Frames are read by aiohttp's compiled reader (``ws_reader.py`` says why and what it
checks) and everything else is the ``websockets`` library's sans-I/O core
(``websockets.server.ServerProtocol``): it validates the handshake, negotiates
permessage-deflate, compresses, serializes every frame the server writes but the
plain data frames of :func:`data_frame_head`, and keeps the closing handshake's state.
Neither parses frames by hand here, and neither is ``wsproto``: ``websockets`` parses
and echoes frames 2.3x (1 KB messages) and 1.6x (64 KB) faster than wsproto, and
aiohttp's reader reads a 1 KB frame six times faster than ``websockets``.

Rules:
- Before ``websocket.accept`` the session is an HTTP request: the deadline bounds
  it, an error is an HTTP status, ``websocket.close`` is a 403, and the denial
  extension (``websocket.http.response.*``) sends the app's own response.
- After it, an ending is a close frame: :data:`CLOSE_FOR_STATUS` maps the status
  the endings table chose; the deadline no longer applies (it bounded the handshake).
- A client that vanishes (no close frame: a reset, or pings unanswered) ends the
  session at once: a handler waiting in ``receive()`` gets ``websocket.disconnect``
  with 1006; one blocked elsewhere is cancelled, as an HTTP handler is.
- A close from the client is answered with its code (RFC 6455 5.5.1), then the server
  closes the TCP connection (7.1.1); a close the server sent first ends when the
  client's answer comes.
- Protocol errors are logged once per connection, at warning, with the client.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter, deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from websockets.exceptions import ProtocolError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from tether.asgi import Message
from tether.config import WebSocketSettings
from tether.deadline import NO_DEADLINE, Deadline, set_deadline
from tether.errors import ClientDisconnected
from tether.metrics import series
from tether.server import wire
from tether.server.cycle import Channel, RequestCycle
from tether.server.request_head import RequestRejected
from tether.server.ws_reader import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    message_reader,
)

if TYPE_CHECKING:
    from aiohttp.http import WebSocketReader

    from tether.server.state import ServerState

error_log = logging.getLogger("tether.error")

#: close code for the status an ending chose after the handshake (RFC 6455 7.4.1 and
#: the IANA registry): anything else is 1011 (internal error)
CLOSE_FOR_STATUS: Final = {
    502: 1014,  # bad gateway
    503: 1013,  # try again later
}
#: the client left without a close frame (never sent on the wire, RFC 6455 7.4.1)
ABNORMAL: Final = 1006
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
INTERNAL_ERROR: Final = 1011
SERVICE_RESTART: Final = 1012
NO_STATUS: Final = 1005
PROTOCOL_ERROR: Final = 1002
MESSAGE_TOO_BIG: Final = 1009

# The first byte of an unfragmented data frame: FIN, no RSV bits, the opcode.
_FIN_BINARY: Final = 0x82
_FIN_TEXT: Final = 0x81
#: payloads below this are joined to their frame head (one small copy, one write);
#: larger ones go out as two buffers (no copy of the payload)
_JOIN_BELOW: Final = 16 * 1024


def data_frame_head(first: int, length: int) -> bytes:
    """The head of an unmasked server frame (RFC 6455 5.2) carrying ``length`` bytes.

    Written by hand, and only this: the ``websockets`` library still parses every
    frame, answers control frames, runs the closing handshake and compresses
    (permessage-deflate sessions never take this path). Its send path builds a Frame
    and serializes it through its extension chain, 3.1 us per 1 KB message against
    0.5 us here (timeit on this machine), about a tenth of the server's CPU per echo
    (bench/websocket.py). tests/test_websocket.py checks these bytes are the
    library's own for every length class."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _HEAD16(first, 126, length)
    return _HEAD64(first, 127, length)


_HEAD16: Final = struct.Struct("!BBH").pack
_HEAD64: Final = struct.Struct("!BBQ").pack

#: received message bytes waiting for the application after which reading pauses
HIGH_WATER: Final = 1024 * 1024

_OPEN: Final = State.OPEN
_CLOSING: Final = State.CLOSING


class WebSocketChannel(Channel, Protocol):
    """What a WebSocket session needs of its connection beyond a request's channel."""

    #: where frames are written: straight, not through ``send_body`` (a session's
    #: bytes have no HTTP framing, and this is its per-message path)
    transport: asyncio.Transport
    read_paused: bool

    def pause_reading(self) -> None: ...

    def websocket_opened(self, cycle: WebSocketCycle) -> None: ...


def websocket_values(counts: Counter[str]) -> dict[str, float]:
    """The Prometheus series of a worker's WebSocket counts (``ServerState.websocket_counts``)."""
    out: dict[str, float] = {}
    for key, value in counts.items():
        if key.startswith("closed_"):
            out[series("tether_websocket_closes_total", code=key[7:])] = value
        elif key in ("messages_in", "messages_out"):
            out[series("tether_websocket_messages_total", direction=key[9:])] = value
    return out


def websocket_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The ASGI ``websocket`` scope, made from the ``http`` scope ``build_scope``
    built for the upgrade request (one scope builder for every protocol)."""
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    scope["subprotocols"] = subprotocols(scope["headers"])
    scope["extensions"]["websocket.http.response"] = {}
    return scope


def subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a client offers (``Sec-WebSocket-Protocol``, in order)."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return offered


def handshake(
    state: ServerState, headers: list[tuple[bytes, bytes]], target: bytes
) -> tuple[ServerProtocol, Response]:
    """Validate an upgrade request; return the session's protocol and the ``101`` it
    will send when the application accepts. A bad handshake raises
    :class:`RequestRejected` with websockets' status (400, 426) and reason."""
    for name, value in headers:
        if name == b"sec-websocket-version" and value != b"13":
            # RFC 6455 4.2.2: 426 naming the version this server speaks (websockets
            # would answer 400)
            raise RequestRejected(426, "WebSocket version 13 is required, got "
                                  f"{value.decode('latin-1')!r}")
    ws = state.websocket
    protocol = ServerProtocol(
        extensions=[ServerPerMessageDeflateFactory()] if ws.per_message_deflate else None,
        select_subprotocol=_app_chooses,
        max_size=ws.max_size,
    )
    # The head is handed over as bytes, websockets' public way in (its parser then
    # reads frames): a second parse of a few hundred bytes, once per session.
    protocol.receive_data(b"".join((
        b"GET ", target, b" HTTP/1.1\r\n",
        *(b"%s: %s\r\n" % field for field in headers),
        b"\r\n",
    )))
    events = protocol.events_received()
    if len(events) != 1 or not isinstance(events[0], Request):
        raise RequestRejected(400, f"WebSocket handshake failed: {protocol.handshake_exc}")
    response = protocol.accept(events[0])
    if response.status_code != 101:
        reason = str(protocol.handshake_exc or response.reason_phrase)
        raise RequestRejected(response.status_code, f"WebSocket handshake failed: {reason}")
    return protocol, response


def _app_chooses(protocol: ServerProtocol, offered: Any) -> None:
    return None  # the application picks in websocket.accept, not the library


class WebSocketCycle(RequestCycle):
    """One WebSocket session: the ASGI ``websocket`` messages over a request cycle."""

    __slots__ = (
        "close_code",
        "close_reason",
        "connect_delivered",
        "connection_done",
        "counts",
        "handshake_response",
        "loop",
        "mask_head",
        "max_size",
        "opened",
        "pending",
        "ping_outstanding",
        "ping_sent_at",
        "plain",
        "protocol",
        "queued",
        "queued_bytes",
        "reader",
        "reported",
    )

    channel: WebSocketChannel

    def __init__(
        self,
        channel: WebSocketChannel,
        scope: dict[str, Any],
        http_version: str,
        deadline: Deadline,
        protocol: ServerProtocol,
        response: Response,
    ) -> None:
        super().__init__(channel, scope, False, False, http_version, deadline)
        websocket_scope(scope)
        self.more_body = False  # an upgrade request has no body
        self.final_delivered = True
        self.protocol = protocol
        self.handshake_response = response
        self.opened = False
        #: the session has no extension transforming its frames (no permessage-deflate)
        self.plain = False
        self.connect_delivered = False
        #: received messages the application has not taken, with their sizes
        self.queued: deque[tuple[Message, int]] = deque()
        self.queued_bytes = 0
        self.loop = channel.loop
        self.counts = channel.state.websocket_counts
        #: reads the client's frames once the application has accepted (ws_reader)
        self.reader: WebSocketReader | None = None
        self.max_size = channel.state.websocket.max_size
        #: the first bytes of the first frame, until its mask bit is checked (None: done)
        self.mask_head: bytes | None = b""
        #: bytes that arrived before the application accepted (fed once it has)
        self.pending: list[bytes] = []
        #: why the session ended, as the application is told (None: still open)
        self.close_code: int | None = None
        self.close_reason = ""
        self.connection_done = False
        self.ping_outstanding = False
        self.ping_sent_at = 0.0
        self.reported = False

    # -- the connection's bytes --------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client after the upgrade request's head."""
        if self.connection_done:
            return  # closed or failed: nothing more is read (the reader would go on)
        reader = self.reader
        if reader is None:  # not accepted yet
            self.pending.append(data)  # a client must wait for the 101; some do not
            return
        mask_head = self.mask_head
        if mask_head is not None and not self._first_frame_masked(mask_head + data[:2]):
            return
        reader.feed_data(data)

    def _first_frame_masked(self, head: bytes) -> bool:
        """RFC 6455 5.1: a client masks its frames. aiohttp's reader does not check;
        the first frame starts the session's bytes, and its second byte's top bit is
        the mask bit. A client that does not mask is refused here, at its first frame."""
        if len(head) < 2:
            self.mask_head = head
            return True
        self.mask_head = None
        if head[1] & 0x80:
            return True
        self._fail(PROTOCOL_ERROR, "the client's frames are not masked")
        return False

    def _on_message(self, message: tuple[Any, ...], size: int) -> None:
        """A whole message from the reader (ws_reader.message_reader)."""
        if self.connection_done:
            return  # what followed a close or a fault in the same read
        kind = message[0]
        if kind in (BINARY, TEXT):
            if self.close_code is None:
                self._deliver(message[1], size, kind == TEXT)
        elif kind == PING:
            state = self.protocol.state
            if state is _OPEN or state is _CLOSING:
                self.protocol.send_pong(message[1])
                self._flush()
        elif kind == PONG:
            self.ping_outstanding = False
        elif kind == CLOSE:
            self._close_received(message[1] or NO_STATUS, message[2])

    def _close_received(self, code: int, reason: str) -> None:
        if self.connection_done:
            return
        protocol = self.protocol
        if code != NO_STATUS:
            try:
                Close(code, reason).check()  # the codes a peer may send (websockets')
            except ProtocolError as exc:
                self._fail(PROTOCOL_ERROR, f"close frame: {exc}")
                return
        if protocol.state is _OPEN:
            # RFC 6455 5.5.1: answer a close with a close, echoing its code
            if code == NO_STATUS:
                protocol.send_close()
            else:
                protocol.send_close(code, reason)
        self._ended(code, reason)
        self._flush()
        self._connection_done()  # 7.1.1: the server closes the TCP connection first

    def _fail(self, code: int, reason: str) -> None:
        """The client's frames broke a rule: close with its code, log it once."""
        if self.connection_done:
            return
        state = self.protocol.state
        if state is _OPEN or state is _CLOSING:
            self.protocol.fail(code, reason)  # a close frame (if none was sent), then EOF
        self._protocol_error(reason)
        self._flush()

    def _deliver(self, data: bytes | str, size: int, text: bool) -> None:
        if size > self.max_size:  # (an inflated message can pass the reader's limit)
            self._fail(MESSAGE_TOO_BIG, f"message of {size} bytes over {self.max_size}")
            return
        message: Message = ({"type": "websocket.receive", "text": data} if text
                            else {"type": "websocket.receive", "bytes": data})
        self.queued.append((message, size))
        self.queued_bytes += size
        self.counts["messages_in"] += 1
        if self.queued_bytes > HIGH_WATER:
            self.channel.pause_reading()
        self.wake()

    def _protocol_error(self, reason: str) -> None:
        close = self.protocol.close_sent
        code = close.code if close is not None else ABNORMAL
        if not self.reported:
            self.reported = True
            error_log.warning("WebSocket closed with %d: %s (client %s)", code, reason,
                              self.client_label)
        self._ended(code, reason)

    def _flush(self) -> None:
        """Write what the protocol has to send; end the connection when it says so."""
        writes = self.protocol.data_to_send()
        if not writes or self.disconnected:
            return  # nothing, or the connection is gone: nothing can be written any more
        transport = self.channel.transport
        for chunk in writes:
            if chunk:
                transport.write(chunk)
                self.bytes_sent += len(chunk)
            else:  # websockets' SEND_EOF: the closing handshake is done (or failed)
                self._connection_done()

    def _connection_done(self) -> None:
        self._ended(ABNORMAL, "")
        if not self.connection_done:
            self.connection_done = True
            self._completed()  # the channel closes the connection

    def _ended(self, code: int, reason: str) -> None:
        """The session is over for the application: every receive() from now on
        says ``websocket.disconnect`` with this code."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.counts[f"closed_{code}"] += 1
            self._response_done()  # the session is complete: what comes after is late
            self.wake()

    @property
    def is_open(self) -> bool:
        """Accepted and not ended (for the sessions gauge)."""
        return self.opened and self.close_code is None

    # -- events from the connection ------------------------------------------------------

    def on_disconnect(self) -> None:
        """The TCP connection is gone. A handler waiting in receive() is told (1006);
        one blocked elsewhere is cancelled, as an HTTP handler is."""
        waiting = self.waiter is not None and not self.waiter.done()
        if self.opened and self.close_code is None:
            self.close_code = ABNORMAL
            self.counts[f"closed_{ABNORMAL}"] += 1
        if waiting or (self.response_complete and self.opened):
            self.disconnected = True
            self._cancel_flush()
            self.wake()
            return
        super().on_disconnect()

    def on_ping_timer(self, now: float, settings: WebSocketSettings) -> float | None:
        """The connection's ping timer ran out: send a ping, or find the last one
        unanswered. Returns the seconds until the timer should run out again, or None
        when the peer is gone (the caller drops the connection: 1006)."""
        if self.ping_outstanding:
            if not self.reported:
                self.reported = True
                error_log.warning("WebSocket client did not answer a ping within %gs; "
                                  "dropping it (client %s)", settings.ping_timeout,
                                  self.client_label)
            return None
        interval = settings.ping_interval
        since = now - self.ping_sent_at
        if interval is not None and since < interval:
            return interval - since  # the pong came: the next ping is due later
        if self.protocol.state is not _OPEN:
            return settings.ping_timeout  # closing: the close handshake is under way
        self.ping_outstanding = True
        self.ping_sent_at = now
        self.protocol.send_ping(b"tether")
        self._flush()
        return settings.ping_timeout

    def may_read(self) -> bool:
        """Reading may resume: the application has taken its queued messages."""
        return self.queued_bytes <= HIGH_WATER

    def going_away(self, code: int, reason: str) -> None:
        """The worker is leaving: close the session with ``code`` (1012 on a reload,
        1001 on a stop). The application sees the disconnect; the client reconnects."""
        if self.opened and self.protocol.state is _OPEN:
            self.protocol.send_close(code, reason)
            self._ended(code, reason)
            self._flush()

    # -- ASGI ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        queued = self.queued
        while not queued:
            if self.close_code is not None or self.disconnected:
                code = ABNORMAL if self.close_code is None else self.close_code
                return {"type": "websocket.disconnect", "code": code,
                        "reason": self.close_reason}
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        message, size = queued.popleft()
        self.queued_bytes -= size
        if self.channel.read_paused and self.queued_bytes <= HIGH_WATER:
            self.channel.body_consumed(self)
        return message

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        if not self.opened:
            await self._send_before_accept(mtype, message)
            return
        if self.close_code is not None or self.disconnected:
            raise ClientDisconnected(
                f"WebSocket client {self.client_label} disconnected"
                f" ({ABNORMAL if self.close_code is None else self.close_code})")
        protocol = self.protocol
        if mtype == "websocket.send":
            data = message.get("bytes")
            if data is not None:
                first = _FIN_BINARY
            else:
                text = message.get("text")
                if text is None:
                    raise RuntimeError("ASGI 'websocket.send' needs 'bytes' or 'text'")
                data, first = text.encode(), _FIN_TEXT
            channel = self.channel
            if self.plain and not protocol.writes:
                # The common case, written here (see data_frame_head): one whole
                # message (tether never sends fragments), no extension to transform
                # it, nothing queued before it, and the session open: the library's
                # state leaves OPEN only through a close sent or received or a
                # protocol error, and each of those sets close_code (checked above).
                head = data_frame_head(first, len(data))
                if len(data) < _JOIN_BELOW:
                    channel.transport.write(head + data)
                else:  # a large payload is not copied to put 2-10 bytes before it
                    channel.transport.writelines((head, data))
                self.bytes_sent += len(head) + len(data)
            else:
                if first == _FIN_BINARY:
                    protocol.send_binary(data)
                else:
                    protocol.send_text(data)
                self._flush()
            self.counts["messages_out"] += 1
            if channel.write_paused:
                await channel.drain()
        elif mtype == "websocket.close":
            code = message.get("code") or NORMAL
            reason = message.get("reason") or ""
            protocol.send_close(code, reason)
            self._ended(code, reason)
            self._flush()
        else:
            raise RuntimeError(
                f"expected ASGI message 'websocket.send' or 'websocket.close', got {mtype!r}")

    async def _send_before_accept(self, mtype: str, message: Message) -> None:
        if self.status:  # a denial response has started: its body follows
            if mtype != "websocket.http.response.body":
                raise RuntimeError(f"expected 'websocket.http.response.body', got {mtype!r}")
            await RequestCycle.send(self, {**message, "type": "http.response.body"})
            return
        if mtype == "websocket.accept":
            self._accept(message)
        elif mtype == "websocket.close":
            # ASGI: a close before accept is an HTTP 403
            await RequestCycle.send(self, _FORBIDDEN_START)
            await RequestCycle.send(self, _FORBIDDEN_BODY)
        elif mtype == "websocket.http.response.start":
            await RequestCycle.send(self, {**message, "type": "http.response.start"})
        else:
            raise RuntimeError(f"expected ASGI message 'websocket.accept', 'websocket.close' "
                               f"or 'websocket.http.response.start', got {mtype!r}")

    def _accept(self, message: Message) -> None:
        response = self.handshake_response
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
            self.protocol.subprotocol = subprotocol
        for name, value in message.get("headers", ()):
            problem = wire.invalid_header(name, value)
            if problem is not None:
                raise RuntimeError(f"ASGI application sent {problem}")
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.protocol.send_response(response)
        self.status = 101
        self.opened = True
        self.plain = not self.protocol.extensions
        self.reader = message_reader(self._on_message, self._fail,
                                     max_size=self.max_size, inflate=not self.plain,
                                     loop=self.loop)
        self.head_written = True
        # The deadline bounded the handshake; the session may last as long as it lasts.
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None
        set_deadline(NO_DEADLINE)
        self.leave_admission()  # the handshake took a slot; the session does not
        self._flush()
        self.counts["opened"] += 1
        self.channel.websocket_opened(self)
        pending, self.pending = self.pending, []
        for data in pending:
            self.feed(data)

    # -- endings --------------------------------------------------------------------------

    def run_asgi(self, app: Any) -> Coroutine[Any, Any, None]:
        """The request cycle's, with the session closed when the application returns.
        (Not a coroutine itself: the session's task resumes one frame less on every
        message.)"""
        async def session(scope: Any, receive: Any, send: Any) -> None:
            await app(scope, receive, send)
            self._app_returned()

        return RequestCycle.run_asgi(self, session)

    def _app_returned(self) -> None:
        if self.opened:
            if self.protocol.state is _OPEN:
                self.protocol.send_close(NORMAL, "")
                self._ended(NORMAL, "")
                self._flush()
        elif not self.status and not self.disconnected:
            # returned without accepting: ASGI says the handshake is refused with 403
            self._fail_unanswered(403, "WebSocket connection refused")

    def _fail_mid_response(self, reason: str, *, quiet: bool = False,
                           status: int = 500) -> None:
        if not self.opened:
            super()._fail_mid_response(reason, quiet=quiet, status=status)
            return
        self._close_for(INTERNAL_ERROR, reason, quiet)

    def _fail_unanswered(self, status: int, detail: str, retry_after: bool = False) -> None:
        if not self.opened:
            super()._fail_unanswered(status, detail, retry_after)
            return
        self._close_for(CLOSE_FOR_STATUS.get(status, INTERNAL_ERROR), detail, True)

    def _close_for(self, code: int, reason: str, quiet: bool) -> None:
        if not quiet:
            error_log.error("%s; closing WebSocket with %d (client %s)", reason, code,
                            self.client_label)
        if self.protocol.state is _OPEN:
            self.protocol.send_close(code, reason[:120])
            self._ended(code, reason)
            self._flush()


_FORBIDDEN_START: Final = {"type": "http.response.start", "status": 403,
                           "headers": [(b"content-type", b"text/plain; charset=utf-8")]}
_FORBIDDEN_BODY: Final = {"type": "http.response.body", "body": b"WebSocket connection refused\n"}
