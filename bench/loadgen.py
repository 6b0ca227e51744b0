"""A small, exact HTTP/1.1 load generator for lifecycle tests and the reload benchmark.

It counts every request that did not get a complete ``200``: connection refused,
reset, closed before or during the response, timed out. Two modes: a new
connection per request, and keep-alive (reconnecting only when the server says
``Connection: close``, as a well-behaved client does). Every loop is bounded by a
request budget and a time limit, and stops by itself.

Each failure is counted in ``LoadResult.errors`` under a kind that says where it
happened: ``connect: <exception>`` (the connection could not be opened),
``new conn: ...`` (first request on a fresh connection) or ``reused conn: ...`` (a
later request on a kept-alive connection), followed by ``closed before response``
(EOF before any byte of the response), ``closed mid-response``, the exception's name
(``ConnectionResetError``, ``TimeoutError``, ...) or ``status <code>``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def failures_per_10k(self) -> float:
        return 10_000.0 * self.failed / self.total if self.total else 0.0

    @property
    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed else 0.0

    def merge(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.errors.update(other.errors)


class ResponseError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server asked to close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = b"close" in value
    try:
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()
            close = True
    except asyncio.IncompleteReadError as exc:
        # The head arrived: whatever is missing now, the response was cut short.
        raise asyncio.IncompleteReadError(head + exc.partial, exc.expected) from None
    return status, close


def _failure_kind(exc: BaseException) -> str:
    """A short name for what went wrong with one request."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed mid-response" if exc.partial else "closed before response"
    return type(exc).__name__


async def _client(
    host: str, port: int, path: str, keep_alive: bool, result: LoadResult,
    budget: list[int], stop_at: float, stop: asyncio.Event, timeout: float,
) -> None:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "\r\n"
    ).encode()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    where = "connect"
    try:
        while not stop.is_set() and budget[0] > 0 and time.monotonic() < stop_at:
            budget[0] -= 1
            try:
                if conn is None:
                    where = "connect"
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                    where = "new conn"
                reader, writer = conn
                writer.write(request)
                status, close = await asyncio.wait_for(read_response(reader), timeout)
                if status == 200:
                    result.ok += 1
                else:
                    result.failed += 1
                    result.errors[f"{where}: status {status}"] += 1
                if close or not keep_alive:
                    writer.close()
                    conn = None
                else:
                    where = "reused conn"
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError,
                    IndexError, asyncio.LimitOverrunError) as exc:
                result.failed += 1
                result.errors[f"{where}: {_failure_kind(exc)}"] += 1
                if conn is not None:
                    conn[1].close()
                    conn = None
    finally:
        if conn is not None:
            conn[1].close()


async def run_load(
    host: str, port: int, *, path: str = "/", concurrency: int = 8, keep_alive: bool = False,
    max_requests: int = 100_000, max_seconds: float = 60.0,
    stop: asyncio.Event | None = None, timeout: float = 10.0,
) -> LoadResult:
    """Send requests from ``concurrency`` clients until ``stop`` is set or a bound is hit."""
    result = LoadResult()
    budget = [max_requests]
    started = time.monotonic()
    stop = stop or asyncio.Event()
    await asyncio.gather(*(
        _client(host, port, path, keep_alive, result, budget, started + max_seconds, stop,
                timeout)
        for _ in range(concurrency)
    ))
    result.elapsed = time.monotonic() - started
    return result
