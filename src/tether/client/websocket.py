"""WebSocket sessions opened by :class:`~tether.client.Client`: one connection each,
framed by the ``websockets`` library's sans-I/O core (``ClientProtocol``).

The connection is opened by the client's one opener (same :class:`PoolKey`, TLS
context and SNI rules as a request), but it never enters the HTTP pool: a session
owns its socket from the handshake to the close, and closing the session closes it.

Rules of this file:
- Frames are parsed and written by ``ClientProtocol`` (masking, permessage-deflate,
  the size limit, answering pings, the closing handshake); fragmented messages
  are joined by ``tether.ws_messages``, and this file checks text for UTF-8 (1007).
  (The server reads frames with aiohttp's compiled reader instead, for speed:
  ``server/ws_reader.py``. A client session's reading cost is not its bottleneck;
  the ``websockets`` core keeps the client in one library.)
- The handshake is bounded by the caller (the client's timeouts and the current
  deadline); the session is not.
- Received messages queue up to :data:`HIGH_WATER` bytes, then reading pauses until
  the caller takes them: a slow reader slows its peer, never grows the queue.
- A session that ends without a close frame (a reset, EOF) ends with 1006, and
  every ``receive()`` and ``send()`` from then on raises :class:`WebSocketClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tether.client.errors import (
    HTTPError,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    WriteTimeout,
)
from tether.client.models import Headers, Origin
from tether.ws_messages import Assembler

logger = logging.getLogger("tether.client")

#: received message bytes waiting for the caller after which reading pauses
HIGH_WATER: Final = 1024 * 1024
#: the largest message accepted by default (as ``tether serve --ws-max-size``)
MAX_SIZE: Final = 16 * 1024 * 1024
#: seconds ``close()`` waits for the peer's close frame and the end of the connection
CLOSE_TIMEOUT: Final = 10.0
#: the close code of a session that ended without a close frame (never on the wire)
ABNORMAL: Final = 1006

_CLOSE: Final = Opcode.CLOSE
_PONG: Final = Opcode.PONG
_OPEN: Final = State.OPEN

#: handshake headers the protocol writes itself: a caller's (or a proxied client's)
#: would describe another connection
HANDSHAKE_HEADERS: Final = frozenset({
    "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept",
})


class WebSocketRejected(HTTPError):
    """The server answered the handshake with an HTTP response, not ``101``."""

    def __init__(self, message: str, *, status_code: int, headers: Headers, body: bytes,
                 target: str = "") -> None:
        super().__init__(message, target=target, phase="handshake")
        self.status_code = status_code
        self.headers = headers
        self.body = body


class WebSocketClosed(HTTPError):
    """The session is over: ``code`` and ``reason`` say how (1006: no close frame)."""

    def __init__(self, code: int, reason: str, *, target: str = "") -> None:
        super().__init__(f"WebSocket closed with {code}" + (f" ({reason})" if reason else ""),
                         target=target)
        self.code = code
        self.reason = reason


class WebSocketConnection(asyncio.Protocol):
    """The socket side of one session: feeds bytes to ``ClientProtocol``, writes what
    it has to send, queues whole messages for :class:`WebSocket`."""

    def __init__(self, target: str, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self.protocol: ClientProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self.response: HandshakeResponse | None = None
        self.messages: deque[str | bytes] = deque()
        self.queued = 0
        #: joins a fragmented message's frames (tether.ws_messages)
        self.assembler = Assembler()
        self.closed = False  # the TCP connection is gone
        self.pong_pending = False  # a keepalive ping is waiting for its pong
        #: set once the session ended: (code, reason)
        self.ended: tuple[int, str] | None = None
        #: one per task waiting in wait() (a relay receives in one task while it
        #: closes in another): every event wakes them all
        self._waiters: set[asyncio.Future[None]] = set()
        self._read_paused = False
        self._write_paused = False
        #: senders waiting for the transport to take more (any number of tasks)
        self._drainers: set[asyncio.Future[None]] = set()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            self.abort()  # bytes before the handshake was sent: nothing asked for them
            return
        protocol.receive_data(data)
        self._events()

    def eof_received(self) -> bool:
        if self.protocol is not None:
            self.protocol.receive_eof()
            self._events()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        protocol = self.protocol
        if self.ended is None:
            rcvd = protocol.close_rcvd if protocol is not None else None
            self.ended = (rcvd.code, rcvd.reason) if rcvd is not None else (ABNORMAL, "")
        self._wake()
        self._release_drainers()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drainers()

    # -- the protocol's events ----------------------------------------------------------

    def _events(self) -> None:
        protocol = self.protocol
        assert protocol is not None
        for event in protocol.events_received():
            if isinstance(event, HandshakeResponse):
                self.response = event
                continue
            frame = cast(Frame, event)
            opcode = frame.opcode
            if opcode is _PONG:
                self.pong_pending = False
            elif opcode is _CLOSE:
                rcvd = protocol.close_rcvd
                self._end(rcvd.code if rcvd is not None else 1005,
                          rcvd.reason if rcvd is not None else "")
            else:
                message = self.assembler.add(frame)
                if message is not None:
                    self._deliver(*message)
        if protocol.parser_exc is not None and self.response is not None:
            sent = protocol.close_sent
            self._end(sent.code if sent is not None else ABNORMAL, str(protocol.parser_exc))
        self.flush()
        self._wake()

    def _deliver(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        if self.ended is not None:
            return
        message: str | bytes
        if text:
            try:
                message = bytes(data).decode()
            except UnicodeDecodeError as exc:
                assert self.protocol is not None
                self.protocol.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self._end(1007, "invalid UTF-8 in a text message")
                return
        else:
            message = bytes(data)
        self.messages.append(message)
        self.queued += len(data)
        if self.queued > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _end(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)

    def flush(self) -> None:
        """Write what the protocol has to send; close when it says the connection ends."""
        protocol, transport = self.protocol, self.transport
        if protocol is None or transport is None:
            return
        for chunk in protocol.data_to_send():
            if self.closed or transport.is_closing():
                return
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()  # the closing handshake is done: half-close
            else:
                transport.close()  # TLS cannot half-close

    # -- used by WebSocket ------------------------------------------------------------------

    def take(self) -> str | bytes | None:
        """The next queued message, or None."""
        if not self.messages:
            return None
        message = self.messages.popleft()
        self.queued -= len(message)
        if self._read_paused and self.queued <= HIGH_WATER and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return message

    async def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Until ``ready()`` (checked after every event); TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not ready():
                waiter = self.loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

    async def drain(self, timeout: float | None) -> None:
        if self._write_paused and not self.closed:
            waiter = self.loop.create_future()
            self._drainers.add(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise WriteTimeout("the peer does not take the message", target=self.target,
                                   phase="write") from None
            finally:
                self._drainers.discard(waiter)

    def _release_drainers(self) -> None:
        for waiter in self._drainers:
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def abort(self) -> None:
        """Drop the connection now (a cancelled handshake, an abandoned session)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True
        self._end(ABNORMAL, "")
        self._wake()


class WebSocket:
    """An open WebSocket session (from ``client.websocket(url)`` or
    ``client.service(name).websocket(path)``).

    ``await ws.send("text")`` / ``await ws.send(b"bytes")``; ``await ws.receive()``
    returns the next whole message (``str`` or ``bytes``); ``async for message in
    ws`` receives until the session ends; ``await ws.close(code, reason)`` runs the
    closing handshake. Once the session is over, :attr:`close_code` and
    :attr:`close_reason` say how (the peer's close frame, or 1006 without one) and
    ``send``/``receive`` raise :class:`WebSocketClosed`. Pings are answered by the
    protocol. ``async with`` closes the session on exit.
    """

    def __init__(self, connection: WebSocketConnection, url: str, *,
                 write_timeout: float | None = None,
                 on_close: Callable[[], None] | None = None,
                 ping_interval: float | None = None, ping_timeout: float = 20.0) -> None:
        self._conn = connection
        self.url = url
        response = connection.response
        assert response is not None and connection.protocol is not None
        #: the handshake response's headers
        self.headers = Headers(list(response.headers.raw_items()))
        #: the subprotocol the server chose, or None
        self.subprotocol: str | None = connection.protocol.subprotocol
        self._write_timeout = write_timeout
        self._on_close = on_close
        self._done = False
        self._keepalive: asyncio.Task[None] | None = None
        if ping_interval:
            self._keepalive = asyncio.get_running_loop().create_task(
                self._ping_every(ping_interval, ping_timeout))

    async def _ping_every(self, interval: float, timeout: float) -> None:
        """Ping the server every ``interval`` seconds; a pong later than ``timeout``
        means the peer (or the network to it) is gone: drop the connection (1006),
        as ``tether serve`` does to a client (``--ws-ping-timeout``)."""
        conn = self._conn
        protocol = conn.protocol
        assert protocol is not None
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for an event
            if conn.ended is not None or conn.closed or protocol.state is not _OPEN:
                return
            conn.pong_pending = True
            protocol.send_ping(b"tether")
            conn.flush()
            try:
                await conn.wait(lambda: not conn.pong_pending or conn.closed, timeout)
            except TimeoutError:
                logger.warning("WebSocket to %s: no pong within %gs; dropping the "
                               "connection", conn.target, timeout)
                conn.abort()
                return

    @property
    def close_code(self) -> int | None:
        """None while open; then the code the session ended with."""
        ended = self._conn.ended
        return None if ended is None else ended[0]

    @property
    def close_reason(self) -> str:
        ended = self._conn.ended
        return "" if ended is None else ended[1]

    def _closed_error(self) -> WebSocketClosed:
        code, reason = self._conn.ended or (ABNORMAL, "")
        self._finished()
        return WebSocketClosed(code, reason, target=self._conn.target)

    async def send(self, message: str | bytes) -> None:
        """Send one message: ``str`` as a text message, ``bytes`` as binary. Waits
        while the peer is not taking what was sent (back-pressure)."""
        conn = self._conn
        protocol = conn.protocol
        assert protocol is not None
        if conn.ended is not None or conn.closed or protocol.state is not _OPEN:
            raise self._closed_error()
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        conn.flush()
        await conn.drain(self._write_timeout)

    async def receive(self) -> str | bytes:
        """The next whole message; :class:`WebSocketClosed` once the session is over
        (messages that arrived before the close are delivered first)."""
        conn = self._conn
        await conn.wait(lambda: bool(conn.messages) or conn.ended is not None or conn.closed)
        message = conn.take()
        if message is None:
            raise self._closed_error()
        return message

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        """Every message until the session ends, however it ends (see close_code)."""
        while True:
            try:
                yield await self.receive()
            except WebSocketClosed:
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (if the session is still open), wait up to
        :data:`CLOSE_TIMEOUT` for the peer's and for the server to end the
        connection, then drop it. Never raises for a session already over."""
        conn = self._conn
        protocol = conn.protocol
        assert protocol is not None
        try:
            if protocol.state is _OPEN and not conn.closed:
                protocol.send_close(code, reason)
                conn._end(code, reason)  # what the session ends with if the peer never answers
                conn.flush()
            with contextlib.suppress(TimeoutError):
                await conn.wait(lambda: conn.closed, CLOSE_TIMEOUT)
        finally:
            conn.abort()
            self._finished()

    def abort(self) -> None:
        """Drop the connection without a closing handshake (the peer sees 1006)."""
        self._conn.abort()
        self._finished()

    def _finished(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if not self._done:
            self._done = True
            if self._on_close is not None:
                self._on_close()

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Connecting:
    """What ``client.websocket(...)`` returns: ``ws = await client.websocket(url)``,
    or ``async with client.websocket(url) as ws:`` (closed on exit)."""

    def __init__(self, opener: Callable[[], Awaitable[WebSocket]]) -> None:
        self._opener = opener
        self._session: WebSocket | None = None

    def __await__(self) -> Generator[object, None, WebSocket]:
        return self._opener().__await__()

    async def __aenter__(self) -> WebSocket:
        self._session = await self._opener()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


def rejected(conn: WebSocketConnection, url: str) -> HTTPError:
    """The error for a handshake that did not end in ``101``."""
    protocol = conn.protocol
    exc = protocol.handshake_exc if protocol is not None else None
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return WebSocketRejected(
            f"the server answered the WebSocket handshake with {response.status_code}",
            status_code=response.status_code, headers=Headers(list(response.headers.raw_items())),
            body=bytes(response.body), target=conn.target)
    if exc is not None:
        return RemoteProtocolError(f"bad WebSocket handshake response: {exc}",
                                   target=conn.target, phase="handshake")
    return ReadError(f"connection closed during the WebSocket handshake to {url}",
                     target=conn.target, phase="handshake")


def send_handshake(
    conn: WebSocketConnection, origin: Origin, target: str, headers: list[tuple[str, str]],
    *, subprotocols: Sequence[str] | None, compression: bool, max_size: int | None,
    user_agent: str,
) -> None:
    """Write the handshake request on ``conn``, built by ``ClientProtocol``; a ``Host``
    in ``headers`` (a proxy's) replaces the one made from the origin."""
    scheme = "wss" if origin.scheme == "https" else "ws"
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    protocol = conn.protocol = ClientProtocol(
        parse_uri(f"{scheme}://{host}:{origin.port}{target}"),
        extensions=[ClientPerMessageDeflateFactory()] if compression else None,
        subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
        max_size=max_size,
    )
    request = protocol.connect()
    if not any(n.lower() == "user-agent" for n, _ in headers):
        request.headers["User-Agent"] = user_agent
    for name, value in headers:
        if name.lower() == "host":
            del request.headers["Host"]
        request.headers[name] = value
    try:
        protocol.send_request(request)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"header not encodable as latin-1: {exc}") from exc
    conn.flush()
