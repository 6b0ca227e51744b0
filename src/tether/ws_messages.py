"""Whole WebSocket messages from frames, for the client's sessions
(``client/websocket.py``; the server's reader joins fragments itself: ``server/ws_reader.py``).

Why this exists: the client uses the ``websockets`` library's sans-I/O core, which
parses frames but, unlike its asyncio layer, does not join a fragmented message's
frames. (The client checks a text message is UTF-8 as it hands it over, closing with
1007 if not.)
"""

from __future__ import annotations

from typing import Final

from websockets.frames import Frame, Opcode

_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT


class Assembler:
    """Joins data frames into messages (RFC 6455 section 5.4); control frames, which
    may come between fragments, are the caller's."""

    __slots__ = ("parts", "text")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.text = False

    def add(self, frame: Frame) -> tuple[bytes | bytearray | memoryview, bool] | None:
        """The message ``frame`` completes, as (payload, is text), or None. The
        library has already refused frames out of order (a stray continuation)."""
        opcode = frame.opcode
        if opcode is _CONT:
            self.parts.append(bytes(frame.data))
            if not frame.fin:
                return None
            whole = b"".join(self.parts)
            self.parts = []
            return whole, self.text
        if opcode is not _TEXT and opcode is not _BINARY:
            return None
        if frame.fin:
            return frame.data, opcode is _TEXT
        self.text = opcode is _TEXT
        self.parts = [bytes(frame.data)]
        return None

