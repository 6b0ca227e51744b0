"""The HTTP/1.1 request cycle on a real socket, driven by httpx and raw bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support import raw_exchange, serve, wait_for
from tether.asgi import Receive, Scope, Send


async def scope_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    shown = {k: v for k, v in scope.items() if k not in ("headers", "state", "asgi")}
    body = repr(shown).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def test_scope_is_complete() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app, root_path="/api") as server, httpx.AsyncClient() as client:
        r = await client.get(f"{server.url}/a%20b/c?x=1&y=%20", headers={"X-Thing": "Yes"})
    assert r.status_code == 204
    scope = seen[0]
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b/c"
    assert scope["raw_path"] == b"/api/a%20b/c"
    assert scope["query_string"] == b"x=1&y=%20"
    assert (b"x-thing", b"Yes") in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {}
    tether_ext = scope["extensions"]["tether"]
    assert tether_ext["deadline"].at is None  # no deadline header, no --request-timeout
    assert tether_ext["cancel_on_disconnect"] is True


async def test_keep_alive_reuses_one_connection() -> None:
    peers: set[object] = set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        peers.add(scope["client"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve(app) as server, httpx.AsyncClient() as client:
        for _ in range(20):
            r = await client.get(server.url)
            assert r.text == "ok"
            assert r.headers["content-length"] == "2"
    assert len(peers) == 1


async def test_pipelined_requests_answered_in_order() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The first request is the slowest: order must still be kept.
        delay = {"/1": 0.05, "/2": 0.0, "/3": 0.01}.get(scope["path"], 0.0)
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    requests = b"".join(
        b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in (1, 2, 3)
    ) + b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with serve(app) as server:
        raw = await raw_exchange(server.port, requests)
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1][:2] for part in raw.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"/1", b"/2", b"/3", b"/4"]
    assert raw.count(b"connection: close") == 1


async def test_http10_closes_unless_keep_alive_requested() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["http_version"].encode()})

    async with serve(app) as server:
        raw = await raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close" in raw
        assert raw.endswith(b"1.0")
        both = await raw_exchange(
            server.port,
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        )
        assert both.count(b"HTTP/1.1 200 OK") == 2
        assert b"connection: keep-alive" in both


async def test_http10_streaming_is_delimited_by_close() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    async with serve(app) as server:
        raw = await raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert b"transfer-encoding" not in raw
    assert raw.endswith(b"\r\n\r\nab")


async def test_client_connection_close_is_honoured() -> None:
    async with serve(scope_app) as server:
        raw = await raw_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert raw.count(b"HTTP/1.1 200 OK") == 1
    assert b"connection: close" in raw


async def test_app_connection_close_closes() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"bye"})

    async with serve(app) as server:
        # The second request must never be answered: the server closed after the first.
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    assert raw.count(b"HTTP/1.1 200") == 1
    assert raw.endswith(b"bye")


async def test_head_sends_no_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    async with serve(app) as server:
        raw = await raw_exchange(
            server.port,
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"content-length: 5" in head
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body bytes after the HEAD response
    assert rest.endswith(b"hello")


async def test_chunked_request_body_and_chunked_response() -> None:
    received: list[tuple[bytes, bool]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            received.append((message["body"], message["more_body"]))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def body() -> AsyncIterator[bytes]:
        for part in (b"abc", b"defg"):
            yield part
            await asyncio.sleep(0.01)

    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.post(server.url, content=body())
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"onetwo"
    assert b"".join(b for b, _ in received) == b"abcdefg"
    assert received[-1][1] is False


async def test_whole_body_without_length_gets_content_length() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"complete"})

    async with serve(app) as server, httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.headers["content-length"] == "8"
    assert "transfer-encoding" not in r.headers


async def test_receive_returns_disconnect_after_response() -> None:
    after: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})
        after.append((await receive())["type"])

    async with serve(app) as server, httpx.AsyncClient() as client:
        await client.get(server.url)
    assert after == ["http.disconnect"]


@pytest.mark.parametrize("cancel_on_disconnect", [True, False])
async def test_disconnect_reaches_a_waiting_app(cancel_on_disconnect: bool) -> None:
    """With cancellation on (the default) the handler is cancelled when its client
    leaves; with it off, the handler sees http.disconnect from receive()."""
    seen: list[str] = []
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) body
        started.set()
        try:
            seen.append((await receive())["type"])  # blocks until the client leaves
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async with serve(app, cancel_on_disconnect=cancel_on_disconnect) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(started.wait(), 5)
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: bool(seen), what="the app to notice")
    assert seen == (["cancelled"] if cancel_on_disconnect else ["http.disconnect"])


async def test_a_head_goes_out_before_a_slow_body() -> None:
    """The head waits for the end of the loop turn (its body usually follows in the
    same write) and no longer: two responses started together, whose bodies wait
    for their client to have read the heads, both finish."""
    heads_read = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await heads_read.wait()
        await send({"type": "http.response.body", "body": b"done"})

    async with serve(app) as server:
        streams = [await asyncio.open_connection(server.host, server.port) for _ in range(2)]
        for _, writer in streams:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            heads = [await reader.readuntil(b"\r\n\r\n") for reader, _ in streams]
            heads_read.set()
            bodies = [await reader.readexactly(4) for reader, _ in streams]
        assert all(h.startswith(b"HTTP/1.1 200") for h in heads) and bodies == [b"done"] * 2
        for _, writer in streams:
            writer.close()
