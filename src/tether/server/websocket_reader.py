"""How an upgraded connection's bytes reach its WebSocket session: read into one
buffer and handed over as a view of it, never as a new ``bytes`` per read.

Why: a ``data_received`` protocol gets every read as a fresh ``bytes`` object, which
the event loop copies out of its own read buffer; the ``websockets`` library then
copies it again into its frame buffer. For a 64 KB message that first copy is a
64 KB allocation and write per message, on the path ``bench/websocket.py`` measures.
asyncio's :class:`~asyncio.BufferedProtocol` (uvloop and asyncio's own transports,
TLS included, support it and the switch to it with ``set_protocol``) lets the
transport read straight into a buffer we own, and the library copies from there.

Rules:
- The HTTP/1.1 protocol (``http1.HttpProtocol``) still owns the connection: the
  reader passes it every event but the bytes (loss, EOF, write flow control).
- One buffer per thread (an event loop runs in one), shared by every session: a
  read is fed to its session before the next read starts, and nothing keeps a view
  of it (the library copies what it parses; bytes that come before the session is
  accepted are copied too, ``WebSocketCycle.feed``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tether.server.websocket import WebSocketCycle

#: bytes one read may bring: as much as uvloop's own read buffer (250 KB), so that a
#: large message arrives in as few reads as the socket allows
READ_BUFFER_SIZE: Final = 256 * 1024


class _Buffers(threading.local):
    view: memoryview | None = None


_buffers = _Buffers()


def read_buffer() -> memoryview:
    """This thread's read buffer (made on first use)."""
    view = _buffers.view
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_BUFFER_SIZE))
    return view


class SessionReader(asyncio.BufferedProtocol):
    """The transport's protocol once its connection is a WebSocket session: bytes go
    to the session, everything else to the connection's HTTP/1.1 protocol."""

    __slots__ = ("buffer", "connection", "session")

    def __init__(self, connection: asyncio.Protocol, session: WebSocketCycle) -> None:
        self.connection = connection
        self.session = session
        self.buffer = read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.session.feed(self.buffer[:nbytes])

    def eof_received(self) -> bool | None:
        return self.connection.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()


def read_into_session(
    transport: asyncio.BaseTransport, connection: asyncio.Protocol, session: WebSocketCycle
) -> None:
    """From now on, ``transport``'s bytes go to ``session`` through a shared buffer."""
    transport.set_protocol(SessionReader(connection, session))
