"""Bad input and bad applications get the right status, never a crash or a wedged worker."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from tests.support import raw_exchange, read_body, serve, status_of, wait_for, with_limits
from tether.asgi import Receive, Scope, Send
from tether.server.http1 import HttpProtocol


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"got %d" % len(body)})



async def still_serves(port: int) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/")
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),  # well-formed, not spoken (RFC 9110 15.6.6)
        (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        # a WebSocket upgrade without its key, or of a version tether does not speak
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
    ],
)
async def test_malformed_requests(
    request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tether.error")
    async with serve(ok_app) as server:
        raw = await raw_exchange(server.port, request_bytes)
        assert status_of(raw) == status
        assert b"connection: close" in raw
        await still_serves(server.port)
    problems = [r for r in caplog.records if r.name == "tether.error"]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    assert "client 127.0.0.1:" in problems[0].getMessage()


async def test_limits() -> None:
    limits = with_limits(request_line=100, request_fields=5, request_field_size=50,
                         request_body=10)
    async with serve(ok_app, limits=limits) as server:
        long_url = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert status_of(await raw_exchange(server.port, long_url)) == 414
        many = (b"GET / HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(6)) + b"\r\n")
        assert status_of(await raw_exchange(server.port, many)) == 431
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 60 + b"\r\n\r\n"
        assert status_of(await raw_exchange(server.port, big)) == 431
        declared = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"x" * 11
        assert status_of(await raw_exchange(server.port, declared)) == 413
        chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"6\r\nxxxxxx\r\n" * 2)
        assert status_of(await raw_exchange(server.port, chunked + b"0\r\n\r\n")) == 413
        within = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                  b"Connection: close\r\n\r\n" + b"y" * 10)
        raw = await raw_exchange(server.port, within)
        assert status_of(raw) == 200 and raw.endswith(b"got 10")


async def test_head_streamed_in_pieces_is_still_bounded() -> None:
    # A head that never ends (no CRLFCRLF) must not grow the server's buffer forever.
    limits = with_limits(request_fields=4, request_field_size=100, request_line=100)
    async with serve(ok_app, limits=limits) as server:
        pieces = [b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "] + [b"a" * 100] * 50
        raw = await raw_exchange(server.port, pieces)
        assert status_of(raw) == 431


async def test_slow_head_is_closed_at_header_timeout() -> None:
    limits = with_limits(header_timeout=0.3)
    async with serve(ok_app, limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        # The client never finishes its head; the server must answer 408 and close.
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert status_of(raw) == 408
        # A connection that sends nothing at all is closed silently.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await still_serves(server.port)


async def test_idle_keep_alive_closed_after_timeout() -> None:
    limits = with_limits(keep_alive_timeout=0.2)
    async with serve(ok_app, limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"got 0"), 5)
        assert status_of(first) == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()


async def test_app_raises_before_response_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    caplog.set_level(logging.ERROR, "tether.error")
    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.status_code == 500
    assert r.headers["connection"] == "close"
    errors = [r for r in caplog.records if r.name == "tether.error"]
    assert len(errors) == 1 and "127.0.0.1" in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_app_raises_after_start_but_before_body_is_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("boom")

    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.status_code == 500


async def test_app_raises_mid_body_closes_connection() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    async with serve(app) as server:
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 200
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # the chunked body was never terminated


async def test_app_returns_without_response_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return

    caplog.set_level(logging.ERROR, "tether.error")
    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.status_code == 500
    assert any("without starting" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("declared", "sent", "status"), [(b"3", b"toolong", b"500"), (b"10", b"short", b"200")]
)
async def test_content_length_mismatch_closes(declared: bytes, sent: bytes, status: bytes) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", declared)]})
        await send({"type": "http.response.body", "body": sent})

    async with serve(app) as server:
        # Two pipelined requests: the connection closes after the bad first response
        # (a 500 if nothing was sent yet, else the truncated 200).
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert raw.count(b"HTTP/1.1 ") == 1
        assert raw.startswith(b"HTTP/1.1 " + status)


async def test_invalid_response_header_is_refused() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-evil", b"a\r\nset-cookie: owned")]})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.status_code == 500
    assert "set-cookie" not in r.headers


async def test_bad_pipelined_request_answered_after_good_one() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first"})

    async with serve(app) as server:
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNONSENSE\r\n\r\n")
    first, _, second = raw.partition(b"first")
    assert status_of(first) == 200
    assert status_of(second) == 400


async def test_flow_control_pauses_reading_for_unread_body() -> None:
    release = asyncio.Event()
    got: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        got.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    size = 8 * 1024 * 1024
    async with serve(app) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"z" * size)
        conn = next(iter(server.worker.state.connections))
        assert isinstance(conn, HttpProtocol)
        await wait_for(lambda: conn.read_paused, what="server to pause reading")
        cycle = conn.cycle
        assert cycle is not None
        assert cycle.buffered < 1024 * 1024  # bounded, not the whole 8 MiB
        release.set()
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"done"), 10)
        writer.close()
    assert status_of(raw) == 200
    assert got == [size]


async def test_flow_control_waits_for_slow_reader() -> None:
    sent_chunks: list[int] = []
    chunk = b"x" * 65536

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(200):  # 12.5 MiB total, far beyond socket buffers
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent_chunks.append(i)
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=2**16)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        conn = next(iter(server.worker.state.connections))
        assert isinstance(conn, HttpProtocol)
        await wait_for(lambda: conn.write_paused, what="transport to pause writing")
        paused_at = len(sent_chunks)
        assert paused_at < 200  # the app is held back while the client does not read
        total = 0
        while not (await reader.read(1 << 20)).endswith(b"0\r\n\r\n"):
            total += 1
        writer.close()
    assert len(sent_chunks) == 200
