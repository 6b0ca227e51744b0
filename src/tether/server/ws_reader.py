"""A WebSocket session's incoming frames, made whole messages by aiohttp's compiled reader.

Why this library for reading, when ``websockets``' sans-I/O core does the rest of a
session (the handshake, permessage-deflate's negotiation and compression, every frame
the server writes, the closing handshake's state: see ``websocket.py``): reading is
the per-message cost, and ``websockets`` reads in Python generators. Measured on this
machine for one masked 1 KB binary frame:

- ``websockets`` ``ServerProtocol.receive_data`` then ``events_received``: 3.56 us;
- aiohttp's ``WebSocketReader`` (Cython) through :class:`MessageSink`: 0.56 us.

The whole server's CPU per 1 KB echo fell from 14.3 to 10.8 us with it
(``bench/websocket.py``). Neither library is written around here: aiohttp's reader
parses the frames (never by hand), unmasks them, joins fragments, inflates
permessage-deflate messages and checks what RFC 6455 asks of a peer's frames: reserved
bits, opcodes, the rules of fragments and of control frames, close codes, the UTF-8 of
text (1007) and the size of a message (1009); any other fault is a protocol error
(1002).

What it does not check: that a client masks its frames (RFC 6455 5.1). The session
checks the first frame's mask bit itself (``WebSocketCycle.feed``), which catches a
client that does not mask; browsers always mask, and the rule protects intermediaries
from browser scripts, not the server.

Contract with aiohttp (tests/test_ws_reader.py pins it): ``WebSocketReader(queue,
max_msg_size, compress, decode_text)`` hands each message to ``queue.feed_data(message,
size)`` and a failure to ``set_exception(exc)``; its queue class is compiled, and a
Python subclass's methods override both (Cython dispatches ``cpdef`` methods to Python
overrides). The subclass never stores a message, so the reader never stalls on the
queue's limit: the session applies its own backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from typing import Any, Final

from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.http import WebSocketError, WebSocketReader, WSMsgType

#: message kinds (``message[0]``), as plain ints for quick comparison
TEXT: Final = int(WSMsgType.TEXT)
BINARY: Final = int(WSMsgType.BINARY)
CLOSE: Final = int(WSMsgType.CLOSE)
PING: Final = int(WSMsgType.PING)
PONG: Final = int(WSMsgType.PONG)

#: aiohttp keeps the largest message size in a C ``unsigned int``
_LARGEST_LIMIT: Final = 2**32 - 1
PROTOCOL_ERROR: Final = 1002
INTERNAL_ERROR: Final = 1011

error_log = logging.getLogger("tether.error")

#: a message (kind, data, extra) and its payload size in bytes
OnMessage = Callable[[tuple[Any, ...], int], None]
#: a fault in the client's frames: its close code and what was wrong
OnError = Callable[[int, str], None]


class MessageSink(WebSocketDataQueue):
    """Where the reader puts each message: straight to the session, never queued."""

    def __init__(self, on_message: OnMessage, on_error: OnError,
                 loop: asyncio.AbstractEventLoop) -> None:
        # The queue's own protocol and limit are never used: feed_data is replaced.
        super().__init__(None, 1, loop=loop)  # type: ignore[arg-type]
        self.on_message = on_message
        self.on_error = on_error

    def feed_data(self, data: Any, size: int) -> None:
        self.on_message(data, size)

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        # The reader reports here any exception raised while it ran, the session's own
        # included: only its WebSocketError and a corrupt deflate stream are the peer's.
        if isinstance(exc, WebSocketError):
            self.on_error(exc.code, str(exc))
        elif isinstance(exc, zlib.error):
            self.on_error(PROTOCOL_ERROR, f"corrupt permessage-deflate data: {exc}")
        else:
            error_log.error("WebSocket session failed reading a message",
                            exc_info=(type(exc), exc, exc.__traceback__))
            self.on_error(INTERNAL_ERROR, "internal error")


def message_reader(on_message: OnMessage, on_error: OnError, *, max_size: int,
                   inflate: bool, loop: asyncio.AbstractEventLoop) -> WebSocketReader:
    """A reader of one session's frames: ``feed_data(bytes)`` as they arrive; each whole
    message goes to ``on_message`` (text already decoded to ``str``), a fault to
    ``on_error`` (once: the reader reads nothing after it). ``inflate``: the session
    negotiated permessage-deflate. Messages larger than ``max_size`` bytes fail with
    1009 (but an inflated one may pass by a byte: the session checks sizes too)."""
    # aiohttp refuses a message of max_msg_size bytes or more (0 would mean no limit:
    # never passed); above its C type's range the reader caps at 4 GiB
    limit = min(max_size + 1, _LARGEST_LIMIT)
    return WebSocketReader(MessageSink(on_message, on_error, loop), limit,
                           compress=inflate, decode_text=True)
