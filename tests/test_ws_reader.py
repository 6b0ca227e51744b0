"""The contract tether relies on with aiohttp's compiled WebSocket reader
(src/tether/server/ws_reader.py): what a session gets for the bytes a client sends.

Frames are made by the ``websockets`` library (a real client's encoder), except the
few broken ones a correct client never sends. The real-peer tests are in
tests/test_websocket.py; these pin the reader itself, deterministically.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode

from tether.server.ws_reader import BINARY, CLOSE, PING, PONG, TEXT, message_reader


def client_frame(opcode: Opcode, data: bytes, *, fin: bool = True,
                 deflate: PerMessageDeflate | None = None) -> bytes:
    """A frame as a client sends it (masked), serialized by the websockets library."""
    return Frame(opcode, data, fin).serialize(
        mask=True, extensions=[deflate] if deflate is not None else None)


def broken_frame(first: int, data: bytes) -> bytes:
    """A masked frame with the first byte given (FIN, RSV bits, opcode): built here only
    for what a correct client, and so the websockets library, never sends."""
    length = len(data)
    head = bytes([first, 0x80 | length]) if length < 126 else (
        bytes([first, 0x80 | 126]) + struct.pack("!H", length))
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


class Session:
    """What a session is told: messages (kind, data, extra, size) and faults."""

    def __init__(self, *, max_size: int = 1 << 20, inflate: bool = False) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.faults: list[tuple[int, str]] = []
        self.loop = asyncio.new_event_loop()
        self.reader = message_reader(self.on_message, self.on_error, max_size=max_size,
                                     inflate=inflate, loop=self.loop)

    def on_message(self, message: tuple[Any, ...], size: int) -> None:
        self.messages.append((*message, size))

    def on_error(self, code: int, reason: str) -> None:
        self.faults.append((code, reason))

    def feed(self, data: bytes) -> None:
        self.reader.feed_data(data)


@pytest.fixture
def session() -> Iterator[Session]:
    made = Session()
    yield made
    made.loop.close()


def test_a_binary_and_a_text_message(session: Session) -> None:
    payload = os.urandom(1024)
    session.feed(client_frame(Opcode.BINARY, payload))
    session.feed(client_frame(Opcode.TEXT, "héllo".encode()))
    assert session.messages == [(BINARY, payload, "", 1024), (TEXT, "héllo", "", 6)]
    assert session.faults == []


def test_any_split_of_the_bytes_gives_the_same_messages() -> None:
    stream = (client_frame(Opcode.BINARY, b"a" * 300) + client_frame(Opcode.PING, b"p")
              + client_frame(Opcode.TEXT, b"z" * 70_000))
    for step in (1, 2, 3, 7, 1000):
        split = Session()
        for start in range(0, len(stream), step):
            split.feed(stream[start:start + step])
        assert [m[0] for m in split.messages] == [BINARY, PING, TEXT]
        assert split.messages[2][1] == "z" * 70_000
        split.loop.close()


def test_fragments_are_joined_and_control_frames_between_them_come_first(
        session: Session) -> None:
    session.feed(client_frame(Opcode.TEXT, b"one ", fin=False))
    session.feed(client_frame(Opcode.PING, b"are you there"))
    session.feed(client_frame(Opcode.CONT, b"two ", fin=False))
    session.feed(client_frame(Opcode.CONT, b"three"))
    assert session.messages == [(PING, b"are you there", "", 13),
                                (TEXT, "one two three", "", 13)]


def test_pong_and_close_with_its_code_and_reason(session: Session) -> None:
    session.feed(client_frame(Opcode.PONG, b"tether"))
    session.feed(client_frame(Opcode.CLOSE, Close(4001, "bye").serialize()))
    session.feed(client_frame(Opcode.CLOSE, b""))
    assert session.messages == [(PONG, b"tether", "", 6), (CLOSE, 4001, "bye", 0),
                                (CLOSE, 0, "", 0)]


def test_a_deflated_message_is_inflated() -> None:
    inflating = Session(inflate=True)
    deflate = PerMessageDeflate(False, False, 15, 15)
    text = "compress me " * 500
    for _ in range(2):  # the second message uses the first one's window
        inflating.feed(client_frame(Opcode.TEXT, text.encode(), deflate=deflate))
    assert inflating.messages == [(TEXT, text, "", len(text))] * 2
    inflating.loop.close()


def test_max_size_passes_and_one_byte_more_is_1009() -> None:
    limited = Session(max_size=100)
    limited.feed(client_frame(Opcode.BINARY, b"x" * 100))
    assert limited.messages == [(BINARY, b"x" * 100, "", 100)]
    limited.feed(client_frame(Opcode.BINARY, b"x" * 101))
    assert [code for code, _ in limited.faults] == [1009]
    limited.loop.close()


@pytest.mark.parametrize(("stream", "code"), [
    (client_frame(Opcode.TEXT, b"\xff\xfe"), 1007),
    (client_frame(Opcode.CONT, b"nothing to continue"), 1002),
    (broken_frame(0x89, b"p" * 126), 1002),  # a ping over 125 bytes
    (broken_frame(0x09, b"p"), 1002),  # a fragmented ping
    (broken_frame(0xC2, b"rsv1"), 1002),  # RSV1 without permessage-deflate
    (broken_frame(0x83, b"opcode 3"), 1002),  # a reserved opcode
    (client_frame(Opcode.CLOSE, struct.pack("!H", 999)), 1002),
    (client_frame(Opcode.CLOSE, b"\x03"), 1002),  # a one-byte close payload
], ids=["invalid-utf8", "stray-continuation", "long-control", "fragmented-control",
        "rsv1", "reserved-opcode", "bad-close-code", "short-close"])
def test_a_fault_is_told_once_with_its_code(stream: bytes, code: int,
                                            session: Session) -> None:
    session.feed(stream)
    session.feed(client_frame(Opcode.BINARY, b"after the fault"))
    assert [c for c, _ in session.faults] == [code]
    assert session.faults[0][1]  # a reason to log
    assert session.messages == []  # nothing is read after a fault
