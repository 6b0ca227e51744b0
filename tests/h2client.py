"""A raw HTTP/2 client for tests: frames written and read one by one over a plain socket.

Why not ``h2`` in client mode: its state machine ends the connection at the first
GOAWAY (it refuses the DATA a graceful GOAWAY still lets through) and refuses to
produce the floods the server must survive. Here framing is ``hyperframe``'s and
header compression ``hpack``'s (both maintained, both what ``h2`` itself uses), and
only as much client state is kept as a test needs to read: each stream's answer,
every frame received in order, and both flow-control windows for sending bodies.

Everything blocks on a socket with a timeout; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
MAX_STREAM_ID = 2**31 - 1

# RFC 9113 section 7 error codes the tests check
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    """What the server sent on one stream."""

    headers: Headers = field(default_factory=list)
    #: every HEADERS block, in order (informational, final, trailers)
    blocks: list[Headers] = field(default_factory=list)
    data: bytes = b""
    trailers: Headers | None = None
    ended: bool = False
    #: RST_STREAM error code, if the server reset the stream
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)

    def trailer(self, name: bytes) -> bytes | None:
        return None if self.trailers is None else dict(self.trailers).get(name)

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """One HTTP/2 connection to ``127.0.0.1:port`` (h2c with prior knowledge).

    ``settings``: our SETTINGS (``SettingsFrame.INITIAL_WINDOW_SIZE``...);
    ``auto_window``: give back the window of every DATA received at once (False: the
    test opens it itself); ``answer_pings``: acknowledge the server's PINGs.
    """

    def __init__(self, port: int, *, settings: dict[int, int] | None = None,
                 auto_window: bool = True, answer_pings: bool = True,
                 timeout: float = 10.0, handshake: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.auto_window = auto_window
        self.answer_pings = answer_pings
        #: every frame received, in order
        self.frames: list[Frame] = []
        self.answers: dict[int, Answer] = {}
        self.goaways: list[GoAwayFrame] = []
        #: the server closed the connection (FIN); ``reset``: it reset it (RST)
        self.closed = False
        self.reset = False
        self.server_settings: dict[int, int] = {}
        self.next_stream_id = 1
        # our send windows: the connection's, and each stream's (for request bodies)
        self.send_window = DEFAULT_WINDOW
        self._stream_send_windows: dict[int, int] = {}
        self._initial_send_window = DEFAULT_WINDOW
        self._buffer = b""
        self._header_block: tuple[HeadersFrame, bytes] | None = None
        if handshake:
            self.send_raw(PREFACE)
            self.send(SettingsFrame(0, settings=settings or {}))

    # -- sending -------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        self.send_raw(b"".join(frame.serialize() for frame in frames))

    def header_block(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode(list(headers)))

    def request(self, path: bytes = b"/", *, method: bytes = b"GET",
                headers: Iterable[tuple[bytes, bytes]] = (), body: bytes | None = None,
                end: bool = True) -> int:
        """Open a stream: HEADERS (and ``body``, window permitting); ``end``: the
        request ends with it. Returns the stream id."""
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        fields = [(b":method", method), (b":scheme", b"http"), (b":path", path),
                  (b":authority", b"127.0.0.1"), *headers]
        frame = HeadersFrame(stream_id, data=self.header_block(fields))
        frame.flags.add("END_HEADERS")
        if end and not body:
            frame.flags.add("END_STREAM")
        self.answers[stream_id] = Answer()
        self._stream_send_windows[stream_id] = self._initial_send_window
        self.send(frame)
        if body:
            self.send_body(stream_id, body, end=end)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, *, end: bool = True,
                  timeout: float = 20.0) -> None:
        """Send ``body`` on ``stream_id`` within the server's flow-control windows,
        reading (and waiting for WINDOW_UPDATEs) while they are closed."""
        max_frame = self.server_settings.get(SettingsFrame.MAX_FRAME_SIZE, 16384)
        view = memoryview(body)
        while view:
            self.wait(lambda: min(self.send_window,
                                  self._stream_send_windows[stream_id]) > 0 or
                      self.answers[stream_id].done,
                      timeout, f"window to send on stream {stream_id}")
            if self.answers[stream_id].done:
                return
            size = min(len(view), max_frame, self.send_window,
                       self._stream_send_windows[stream_id])
            chunk, view = view[:size], view[size:]
            self.send_window -= size
            self._stream_send_windows[stream_id] -= size
            frame = DataFrame(stream_id, data=bytes(chunk))
            if end and not view:
                frame.flags.add("END_STREAM")
            self.send(frame)
        if end and not body:
            frame = DataFrame(stream_id, data=b"")
            frame.flags.add("END_STREAM")
            self.send(frame)

    def rst(self, stream_id: int, code: int = CANCEL) -> None:
        self.send(RstStreamFrame(stream_id, error_code=code))

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(WindowUpdateFrame(stream_id, window_increment=increment))

    # -- receiving ------------------------------------------------------------------

    def read_frame(self, timeout: float) -> Frame | None:
        """The next frame (handled: answers, windows, SETTINGS ACK...), or None when
        the connection ended or nothing came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
                if len(self._buffer) >= 9 + length:
                    body, self._buffer = self._buffer[9:9 + length], self._buffer[9 + length:]
                    frame.parse_body(memoryview(body))
                    self._handle(frame)
                    return frame
            if self.closed or self.reset:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                self.reset = True
                return None
            if not data:
                self.closed = True
            self._buffer += data

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0,
             what: str = "condition") -> None:
        """Read frames until ``predicate()``; fail after ``timeout`` or at the end of
        the connection."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"frames: {self.describe()}")
            if self.read_frame(remaining) is None and (self.closed or self.reset):
                if predicate():
                    return
                raise AssertionError(f"connection ended waiting for {what}; "
                                     f"frames: {self.describe()}")

    def answer(self, stream_id: int, timeout: float = 10.0) -> Answer:
        """The stream's whole answer (ended or reset)."""
        self.wait(lambda: self.answers[stream_id].done, timeout, f"stream {stream_id}")
        return self.answers[stream_id]

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Read (and keep) everything until the server ends the connection."""
        deadline = time.monotonic() + timeout
        while not (self.closed or self.reset):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the connection stayed open; frames: {self.describe()}"
            self.read_frame(remaining)

    def describe(self) -> str:
        return ", ".join(_describe(frame) for frame in self.frames[-30:])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- frame handling ----------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self._on_header_fragment(frame)
        elif isinstance(frame, DataFrame):
            answer = self.answers.setdefault(frame.stream_id, Answer())
            answer.data += frame.data
            if "END_STREAM" in frame.flags:
                answer.ended = True
            size = frame.flow_controlled_length
            if self.auto_window and size:
                updates = [WindowUpdateFrame(0, window_increment=size)]
                if not answer.ended:
                    updates.append(WindowUpdateFrame(frame.stream_id, window_increment=size))
                self._reply(*updates)
        elif isinstance(frame, RstStreamFrame):
            self.answers.setdefault(frame.stream_id, Answer()).reset = frame.error_code
        elif isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self._on_settings(frame.settings)
                self._reply(SettingsFrame(0, flags=("ACK",)))
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags and self.answer_pings:
                self._reply(PingFrame(0, opaque_data=frame.opaque_data, flags=("ACK",)))
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append(frame)
        elif isinstance(frame, WindowUpdateFrame):
            if frame.stream_id:
                if frame.stream_id in self._stream_send_windows:
                    self._stream_send_windows[frame.stream_id] += frame.window_increment
            else:
                self.send_window += frame.window_increment

    def _reply(self, *frames: Frame) -> None:
        """What a client answers by itself; the server may have closed already."""
        with contextlib.suppress(OSError):
            self.send(*frames)

    def _on_settings(self, settings: dict[int, int]) -> None:
        self.server_settings.update(settings)
        window = settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
        if window is not None:
            delta = window - self._initial_send_window
            self._initial_send_window = window
            for stream_id in self._stream_send_windows:
                self._stream_send_windows[stream_id] += delta

    def _on_header_fragment(self, frame: HeadersFrame | ContinuationFrame) -> None:
        if isinstance(frame, HeadersFrame):
            self._header_block = (frame, frame.data)
        else:
            assert self._header_block is not None, "CONTINUATION without HEADERS"
            first, block = self._header_block
            self._header_block = (first, block + frame.data)
        if "END_HEADERS" not in frame.flags:
            return
        first, block = self._header_block
        self._header_block = None
        headers = [(bytes(name), bytes(value))
                   for name, value in self.decoder.decode(block, raw=True)]
        answer = self.answers.setdefault(first.stream_id, Answer())
        answer.blocks.append(headers)
        status = dict(headers).get(b":status")
        if status is not None and not status.startswith(b"1"):
            answer.headers = headers
        elif status is None:
            answer.trailers = headers
        if "END_STREAM" in first.flags:
            answer.ended = True


def _describe(frame: Frame) -> str:
    name = type(frame).__name__.removesuffix("Frame")
    flags = "|".join(sorted(frame.flags))
    extra = ""
    if isinstance(frame, GoAwayFrame):
        extra = f" last={frame.last_stream_id} code={frame.error_code} {frame.additional_data!r}"
    elif isinstance(frame, RstStreamFrame):
        extra = f" code={frame.error_code}"
    elif isinstance(frame, DataFrame):
        extra = f" {len(frame.data)}B"
    elif isinstance(frame, WindowUpdateFrame):
        extra = f" +{frame.window_increment}"
    return f"{name}[{frame.stream_id}]{'(' + flags + ')' if flags else ''}{extra}"
