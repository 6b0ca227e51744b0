"""The WebSocket echo load ``bench/websocket.py`` drives every server with.

N connections, each a closed loop: send one binary message of ``size`` bytes, wait for
its echo (checked byte for byte), send the next. It counts round trips and their
latency during a measured window after a warmup, then closes every connection.

It is as light as a client can be, because on a small machine it competes with the
server for the CPU: the ``websockets`` library's sans-I/O client driven straight from
an asyncio protocol on uvloop, one message in flight per connection, no per-message
task or future, and one frame masked once per run (:func:`masked_frame`). It offers no
permessage-deflate (the payload is random bytes: compression would only cost CPU), so
every server sends plain frames. The same client measures every server, so its cost
is the same in every ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds for all connections to open
CLOSE_TIMEOUT: Final = 5.0  # seconds for the closing handshakes at the end
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
_CLOSE: Final = Opcode.CLOSE


class LoadError(Exception):
    """The load could not run (no handshake, a wrong echo, a dropped connection)."""


@dataclass(frozen=True)
class LoadResult:
    """What one measured window saw."""

    round_trips: int
    seconds: float
    round_trips_per_sec: float
    mb_per_sec: float  # payload megabytes (10^6) echoed per second, each way
    p50_ms: float
    p99_ms: float
    #: CPU seconds the server's processes used during the window (None: not sampled)
    server_cpu_seconds: float | None = None

    @property
    def server_cpu_us_per_round_trip(self) -> float | None:
        """The server's CPU cost of one echo: steadier than round trips/s on a shared
        machine, where other load takes wall-clock time but not this process's CPU."""
        if self.server_cpu_seconds is None or not self.round_trips:
            return None
        return self.server_cpu_seconds / self.round_trips * 1e6


class _EchoClient(asyncio.Protocol):
    """One connection: the handshake, then send / await echo / send, until stopped."""

    def __init__(self, url: str, payload: bytes, frame: bytes, stats: _Stats) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.payload = payload
        self.frame = frame
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parts: list[bytes] = []
        self.sent_at = 0.0
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport, but are one)
        self.transport = cast(asyncio.Transport, transport)
        self.protocol.send_request(self.protocol.connect())
        self._write()

    def _write(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()

    def _send_next(self) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.frame)  # the message, masked once for the whole run

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self._fail(f"handshake answered {event.status_code}")
                    return
                self.opened.set_result(None)
                self._send_next()
            elif isinstance(event, Frame):
                opcode = event.opcode
                if opcode is _BINARY or opcode is _CONT:
                    if not event.fin:
                        self.parts.append(bytes(event.data))
                        continue
                    echo: bytes | bytearray | memoryview
                    if self.parts:
                        self.parts.append(bytes(event.data))
                        echo = b"".join(self.parts)
                        self.parts = []
                    else:
                        echo = event.data
                    if echo != self.payload:
                        self._fail(f"wrong echo: {len(echo)} bytes for {len(self.payload)}")
                        return
                    self.stats.record(time.perf_counter() - self.sent_at)
                    if self.running:
                        self._send_next()
                elif opcode is _CLOSE and self.running:
                    self._fail(f"the server closed the connection: {protocol.close_rcvd}")
                    return
        if protocol.handshake_exc is not None:
            self._fail(f"handshake failed: {protocol.handshake_exc}")
        self._write()

    def _fail(self, reason: str) -> None:
        self.stats.error = self.stats.error or reason
        if not self.opened.done():
            self.opened.set_exception(LoadError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.running:
            self.stats.error = self.stats.error or f"connection lost: {exc or 'closed'}"
            if not self.opened.done():
                self.opened.set_exception(LoadError(self.stats.error))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Stop after the message in flight; start the closing handshake."""
        self.running = False
        with contextlib.suppress(Exception):
            self.protocol.send_close(1000)
            self._write()


class _Stats:
    """Round trips seen while measuring (latencies kept only then)."""

    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.error: str | None = None

    def record(self, seconds: float) -> None:
        if self.measuring:
            self.latencies.append(seconds)


def masked_frame(payload: bytes) -> bytes:
    """The one binary frame every connection sends, serialized and masked once by the
    library. Its mask is the same for every message: RFC 6455 asks a client for a fresh
    unpredictable mask per frame (so that a browser's script cannot steer the bytes an
    intermediary sees), which protects nothing between a benchmark and a server on
    loopback. Masking and serializing each message anew made the client cost ~0.9x the
    server's CPU per 1 KB echo (~0.8x at 64 KB; ~0.75x and ~0.7x without): sharing 2
    cores with the server, it capped how much faster than another a server could look."""
    return Frame(_BINARY, payload).serialize(mask=True)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


async def echo_load(
    host: str, port: int, *, size: int, connections: int, duration: float, warmup: float,
    cpu_seconds: Callable[[], float] | None = None,
) -> LoadResult:
    """Open ``connections`` sessions to ``ws://host:port/``, echo ``size``-byte messages
    for ``warmup`` then ``duration`` seconds; the round trips of the second window.
    ``cpu_seconds``, sampled as the window opens and closes, is the server's CPU time.
    Raises LoadError when a connection fails (the whole run is then worthless)."""
    loop = asyncio.get_running_loop()
    payload = os.urandom(size)
    frame = masked_frame(payload)
    stats = _Stats()
    url = f"ws://{host}:{port}/"
    clients: list[_EchoClient] = []
    try:
        for _ in range(connections):
            _, client = await asyncio.wait_for(loop.create_connection(
                lambda: _EchoClient(url, payload, frame, stats), host, port), HANDSHAKE_TIMEOUT)
            clients.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in clients)), HANDSHAKE_TIMEOUT)
        await _watch(stats, warmup)
        cpu_before = None if cpu_seconds is None else cpu_seconds()
        stats.measuring = True
        started = time.perf_counter()
        await _watch(stats, duration)
        stats.measuring = False
        elapsed = time.perf_counter() - started
        cpu_used = None if cpu_seconds is None or cpu_before is None \
            else cpu_seconds() - cpu_before
    except TimeoutError as exc:
        raise LoadError(f"no handshake within {HANDSHAKE_TIMEOUT:.0f}s") from exc
    finally:
        for client in clients:
            client.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), CLOSE_TIMEOUT)
        for client in clients:
            if client.transport is not None:
                client.transport.abort()
    if stats.error is not None:
        raise LoadError(stats.error)
    latencies = sorted(stats.latencies)
    count = len(latencies)
    return LoadResult(
        round_trips=count,
        seconds=elapsed,
        round_trips_per_sec=count / elapsed,
        mb_per_sec=count * size / elapsed / 1e6,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        server_cpu_seconds=cpu_used,
    )


async def _watch(stats: _Stats, seconds: float) -> None:
    """Let the load run ``seconds``, stopping early when a connection failed."""
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        if stats.error is not None:
            raise LoadError(stats.error)
        await asyncio.sleep(min(left, 0.1))  # the load runs meanwhile; this only watches
