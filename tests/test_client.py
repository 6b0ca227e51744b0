"""tether.Client against real servers on loopback: the request API, the pool's
limits and reuse, stale connections, timeouts, malformed responses, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import tether
from tests.support import read_body, serve, with_limits
from tether.asgi import Receive, Scope, Send
from tether.client import (
    ConnectError,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    Timeout,
)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(float(scope["query_string"].decode().split("=")[1]))
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/status":
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"teapot"})
        return
    reply = json.dumps({
        "method": scope["method"],
        "path": path,
        "query": scope["query_string"].decode(),
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "body": body.decode("latin-1"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json; charset=utf-8")]})
    await send({"type": "http.response.body", "body": reply})


async def test_request_api() -> None:
    async with serve(echo_app) as server, tether.Client(base_url=server.url) as client:
        r = await client.get("/a", params={"x": "1"}, headers={"X-Test": "yes"})
        assert r.status_code == 200 and r.is_success
        got = r.json()
        assert got["query"] == "x=1" and got["headers"]["x-test"] == "yes"
        assert got["headers"]["host"] == f"127.0.0.1:{server.port}"
        assert (await client.post("/p", json={"a": 1})).json()["body"] == '{"a":1}'
        form = (await client.post("/p", data={"k": "v w"})).json()
        assert form["body"] == "k=v+w"
        assert form["headers"]["content-type"] == "application/x-www-form-urlencoded"
        assert (await client.put("/p", content="text")).json()["body"] == "text"
        assert (await client.patch("/p", content=b"raw")).json()["method"] == "PATCH"
        assert (await client.delete("/p")).json()["method"] == "DELETE"
        assert (await client.options("/p")).json()["method"] == "OPTIONS"
        head = await client.head("/p")
        assert head.status_code == 200 and head.content == b""

        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"ab", b"cd", b"ef"):
                yield part

        streamed = await client.post("/p", content=chunks())
        assert streamed.json()["body"] == "abcdef"
        assert streamed.json()["headers"]["transfer-encoding"] == "chunked"
        teapot = await client.get("/status")
        assert teapot.status_code == 418 and teapot.text == "teapot"
        with pytest.raises(tether.client.HTTPStatusError):
            teapot.raise_for_status()
        async with client.stream("GET", "/stream") as response:
            parts = [chunk async for chunk in response.aiter_bytes()]
        assert b"".join(parts) == b"part0;part1;part2;"
        assert client.stats()["connections_opened"] == 1  # all of it on one connection


async def test_keep_alive_reuse_ratio() -> None:
    """Field report 4: steady keep-alive traffic to one origin reuses >= 99%."""
    async with serve(echo_app) as server, tether.Client() as client:
        for _ in range(1000):
            assert (await client.get(server.url)).status_code == 200
        stats = client.stats()
    assert stats["outgoing_requests"] == 1000
    assert stats["connections_opened"] == 1
    assert stats["reuse_ratio"] >= 0.99


async def test_limits_and_fair_queue() -> None:
    async with serve(echo_app) as server, tether.Client(
        max_connections=4, max_connections_per_origin=2
    ) as client:
        results = await asyncio.gather(*(client.get(f"{server.url}/slow?s=0.02")
                                         for _ in range(20)))
        assert all(r.status_code == 200 for r in results)
        stats = client.stats()
        assert stats["connections_opened"] == 2
        assert stats["pool_wait_seconds"] > 0
        assert stats["active"] == 0 and stats["idle"] == 2


async def test_pool_timeout() -> None:
    async with serve(echo_app) as server, tether.Client(
        max_connections_per_origin=1, timeout=Timeout(pool=0.05, read=5, connect=5, write=5)
    ) as client:
        slow = asyncio.create_task(client.get(f"{server.url}/slow?s=0.5"))
        await asyncio.sleep(0.05)  # let the slow request take the only slot
        with pytest.raises(PoolTimeout) as info:
            await client.get(server.url)
        assert "pool" in str(info.value) and str(server.port) in str(info.value)
        assert (await slow).status_code == 200


async def test_read_timeout_closes_connection() -> None:
    async with serve(echo_app) as server, tether.Client(timeout=0.1) as client:
        with pytest.raises(ReadTimeout) as info:
            await client.get(f"{server.url}/slow?s=2")
        assert "read" in str(info.value)
        assert client.stats()["active"] == 0
        assert (await client.get(server.url)).status_code == 200


async def test_the_read_timeout_guards_each_request_on_a_reused_connection() -> None:
    """One timer per connection, re-armed lazily (issue 18): a timer armed for an
    earlier request must neither cut a later one short nor let it wait forever."""
    loop = asyncio.get_running_loop()
    timeout = Timeout(connect=5, read=1.0, write=5, pool=5)
    async with serve(echo_app) as server, tether.Client(timeout=timeout) as client:
        first = loop.time()
        assert (await client.get(server.url)).status_code == 200  # arms the timer
        # Then a request that starts 0.5 s later and takes 0.8 s: it is still waiting
        # when the first request's timer (1 s after it) fires, within its own 1 s.
        await asyncio.sleep(max(0.0, first + 0.5 - loop.time()))
        assert (await client.get(f"{server.url}/slow?s=0.8")).status_code == 200
        # Same connection, and one that overruns its own timeout fails at it.
        started = loop.time()
        with pytest.raises(ReadTimeout, match=r"within 1\.0s"):
            await client.get(f"{server.url}/slow?s=5")
        assert 0.9 <= loop.time() - started < 3.0
        assert client.stats()["connections_opened"] == 1


async def test_connect_error_names_target() -> None:
    async with serve(echo_app) as server:
        port = server.port
    async with tether.Client() as client:
        with pytest.raises(ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
    assert f"127.0.0.1:{port}" in str(info.value) and "connect" in str(info.value)


async def test_idle_connection_closed_by_server_is_not_reused() -> None:
    limits = with_limits(keep_alive_timeout=0.1)
    async with serve(echo_app, limits=limits) as server, tether.Client() as client:
        assert (await client.get(server.url)).status_code == 200
        # The server closes the idle connection; the client must notice, not reuse it.
        await wait_until(lambda: not server.worker.state.connections)
        assert (await client.get(server.url)).status_code == 200
        assert client.stats()["connections_opened"] == 2


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


async def test_stale_connection_retried_once_for_idempotent_requests() -> None:
    """The server answers one request per connection but claims keep-alive: a reused
    connection dies before any response byte; GET is retried, POST with a body is not."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: dropped unanswered
        writer.close()

    server, url = await raw_server(handler)
    async with server, tether.Client() as client:
        for _ in range(5):
            assert (await client.get(url)).text == "ok"
        assert connections >= 5
        with pytest.raises(RemoteProtocolError):
            await client.post(url, content=b"not replayable")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"",  # closed without a byte
    ],
)
async def test_malformed_responses_raise_and_never_hang(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server, url = await raw_server(handler)
    async with server, tether.Client(timeout=5) as client:
        with pytest.raises(tether.client.TransportError):
            await asyncio.wait_for(client.get(url), 10)
        assert client.stats()["active"] == 0


async def test_close_delimited_response_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    server, url = await raw_server(handler)
    async with server, tether.Client() as client:
        assert (await client.get(url)).text == "until the end"
        assert client.stats()["idle"] == 0  # not reusable


async def test_cancellation_stress_leaves_pool_consistent() -> None:
    """1,000 requests cancelled at random moments (before connect, while sending,
    while receiving): no active connection, no leaked slot, later requests succeed."""
    rng = random.Random(1234)
    async with serve(echo_app) as server, tether.Client(
        max_connections=8, max_connections_per_origin=8
    ) as client:
        url = f"{server.url}/slow?s=0.002"
        for batch in range(50):
            tasks = [asyncio.create_task(client.post(url, content=b"x" * rng.randint(0, 5000)))
                     for _ in range(20)]
            await asyncio.sleep(rng.uniform(0, 0.004))
            for task in tasks:
                if rng.random() < 0.7:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stats = client.stats()
            assert stats["active"] == 0, (batch, stats)
            assert stats["waiting"] == 0
        results = await asyncio.gather(*(client.get(server.url) for _ in range(16)))
        assert all(r.status_code == 200 for r in results)
        assert client.stats()["active"] == 0
        assert client.stats()["idle"] <= 8


async def test_a_response_head_too_large_is_refused() -> None:
    """A hostile or broken server cannot grow the client's memory with its head."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(2_000):  # ~16 MB of headers if nobody stops it
                writer.write(b"x-filler-%d: %s\r\n" % (i, b"a" * 8000))
                await writer.drain()
        writer.close()

    server, url = await raw_server(handler)
    async with server, tether.Client(timeout=5) as client:
        with pytest.raises(RemoteProtocolError, match="response head over"):
            await client.get(url)
        assert client.stats()["active"] == 0


async def test_an_early_answer_to_a_streamed_upload_is_the_response() -> None:
    """The server refuses the upload (413) after the head and closes: the caller gets
    the 413, not a write error."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n"
                     b"Connection: close\r\n\r\ntoo big\n")
        await writer.drain()
        writer.close()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(400):  # 25 MB: far more than the socket buffers hold
            yield b"x" * 65536

    server, url = await raw_server(handler)
    async with server, tether.Client(timeout=5) as client:
        response = await client.post(url, content=body())
        assert response.status_code == 413
        assert response.text == "too big\n"
        assert client.stats()["idle"] == 0


async def test_a_streamed_body_must_match_its_declared_length() -> None:
    async def body(chunks: list[bytes]) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with serve(echo_app) as server, tether.Client() as client:
        ok = await client.post(server.url, content=body([b"ab", b"cde"]),
                               headers={"content-length": "5"})
        assert ok.status_code == 200
        for chunks in ([b"abc", b"def"], [b"ab"]):
            with pytest.raises(tether.client.LocalProtocolError, match="Content-Length"):
                await client.post(server.url, content=body(chunks),
                                  headers={"content-length": "5"})
        assert client.stats()["active"] == 0
