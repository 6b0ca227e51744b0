"""HTTP/1.1 rules a server must keep, sent as raw bytes to a real server on a real
socket (the pure rules are in tests/test_request_head.py). Each case was found by
sending a public corpus of requests to tether and to uvicorn, hypercorn, granian."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from tests.support import raw_exchange, read_body, serve, status_of, with_limits
from tether.asgi import Receive, Scope, Send


async def echo_scope(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what the application was told: path, query and headers."""
    body = await read_body(receive)
    payload = json.dumps({
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})



def json_body(raw: bytes) -> dict[str, object]:
    result: dict[str, object] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return result


async def test_two_host_headers_are_400_and_never_reach_the_app() -> None:
    """RFC 9112 section 3.2. nginx answers 400 too."""
    async with serve(echo_scope) as server:
        raw = await raw_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"
        )
    assert status_of(raw) == 400
    assert b"More than one Host header" in raw
    assert b"connection: close" in raw


async def test_transfer_encoding_in_http10_is_400_and_closes() -> None:
    """RFC 9112 section 6.1: faulty framing; the body is never decoded and served."""
    async with serve(echo_scope) as server:
        raw = await raw_exchange(
            server.port,
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.0\r\n\r\n",
        )
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1  # closed: the second request is never read
    assert b"hello" not in raw


async def test_unspoken_http_version_is_505() -> None:
    async with serve(echo_scope) as server:
        for version in (b"2.0", b"3.0"):
            raw = await raw_exchange(
                server.port, b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n"
            )
            assert status_of(raw) == 505, raw
            assert b"not supported" in raw


async def test_fragment_reaches_neither_path_nor_query() -> None:
    async with serve(echo_scope) as server:
        raw = await raw_exchange(
            server.port,
            b"GET /x?page=1#posts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert status_of(raw) == 200
    seen = json_body(raw)
    assert (seen["path"], seen["raw_path"], seen["query_string"]) == ("/x", "/x", "page=1")


async def test_whitespace_around_field_values_is_not_part_of_them() -> None:
    """RFC 9110 section 5.5: trailing SP/HTAB used to stay in the value."""
    async with serve(echo_scope) as server:
        raw = await raw_exchange(
            server.port,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one \t \r\nX-B:\t two\t\r\n"
            b"X-C: in  side\r\nConnection: close\r\n\r\n",
        )
    pairs = json_body(raw)["headers"]
    assert isinstance(pairs, list)
    headers = {name: value for name, value in pairs}
    assert headers["x-a"] == "one"
    assert headers["x-b"] == "two"
    assert headers["x-c"] == "in  side"


async def test_a_trickled_body_is_408_after_the_body_timeout() -> None:
    """A client that stops sending its body no longer holds its handler for ever."""
    ran: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ran.append("disconnect")
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"all read"})

    limits = with_limits(body_timeout=0.5, header_timeout=1.0)
    async with serve(app, limits=limits) as server:
        started = time.monotonic()
        raw = await raw_exchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            timeout=10.0,
        )
        waited = time.monotonic() - started
    assert status_of(raw) == 408
    assert b"Request body not received in time" in raw
    assert ran == ["disconnect"]  # the handler saw its request end
    assert waited < 5.0  # bounded by the body timeout, not by the client


async def test_a_steady_body_and_a_handler_that_reads_late_are_not_cut() -> None:
    """The body timeout is between two reads from a client that is sending: a body
    arriving in pieces within the timeout, and a client that waits for a 100
    Continue the handler asks for late, are both served."""

    async def late_reader(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(1.0)  # the handler's own work, longer than the timeout
        await echo_scope(scope, receive, send)

    limits = with_limits(body_timeout=0.6, header_timeout=1.0)
    async with serve(late_reader, limits=limits) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            for piece in (b"ab", b"cd", b"ef", b"gh"):
                await asyncio.sleep(0.3)  # the client's pace, under the timeout
                writer.write(piece)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert status_of(head) == 200

            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            # (the first response's body is still in the reader: skip to the 100)
            continued = await asyncio.wait_for(reader.readuntil(b"100 Continue\r\n\r\n"), 10)
            assert b"abcdefgh" in continued
            writer.write(b"hello")
            rest = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    assert b"HTTP/1.1 200" in rest
    assert b'"body": "hello"' in rest


async def test_host_must_be_present_once_and_valid() -> None:
    """RFC 9112 section 3.2: 400 for an HTTP/1.1 request with no Host, or with a Host
    that is not host[:port]. nginx answers 400 to each. HTTP/1.0 may omit it."""
    async with serve(echo_scope) as server:
        for head in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@example.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.test/evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
        ):
            raw = await raw_exchange(server.port, head)
            assert status_of(raw) == 400, head
        raw = await raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
        assert status_of(raw) == 200
        raw = await raw_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n"
        )
        assert status_of(raw) == 200


async def test_only_the_three_request_target_forms_are_served() -> None:
    """Origin-form, absolute-form (routed by its path: the host it names is not
    where anything connects) and ``OPTIONS *`` (answered by the server itself, RFC
    9110 section 9.3.7: it never reaches the app). ``*@127.0.0.1:9/secret``, which a
    proxy gluing strings would turn into userinfo, is 400 (nginx: 400)."""
    async with serve(echo_scope) as server:
        for target in (b"*@127.0.0.1:9/secret", b"http://u:p@127.0.0.1:9/x", b"x/y",
                       b"example.test:443"):
            raw = await raw_exchange(
                server.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert status_of(raw) == 400, target
            assert b"Invalid" in raw  # (llhttp refuses some itself: "Invalid HTTP request")
        raw = await raw_exchange(server.port, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 400
        raw = await raw_exchange(
            server.port,
            b"GET http://127.0.0.1:9/p?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        seen = json_body(raw)
        assert (seen["path"], seen["query_string"]) == ("/p", "q=1")
        raw = await raw_exchange(
            server.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(raw) == 200
        assert b"allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in raw
        assert raw.endswith(b"\r\n\r\n")  # no body: echo_scope did not answer it
        # a prober's connection stays open: two pings, then a request, on one connection
        raw = await raw_exchange(
            server.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert raw.count(b"HTTP/1.1 200 ") == 3
        assert json_body(raw.split(b"HTTP/1.1 200 ", 3)[3])["path"] == "/after"


async def test_a_body_that_stops_after_an_early_answer_gets_no_second_response() -> None:
    """The application answered without reading the body; the client then stops
    sending it. The body timeout ends the connection without writing anything after
    the response (a stray 408 there would answer a request nobody sent)."""

    async def early(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early"})

    async with serve(early, limits=with_limits(body_timeout=0.5, header_timeout=1.0)) as server:
        raw = await raw_exchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nsome",
            timeout=10.0,
        )
    assert status_of(raw) == 200 and raw.endswith(b"early"), raw
    assert raw.count(b"HTTP/1.1 ") == 1
