"""Other people's HTTP clients talk to tether without complaint.

``examples/hello.py`` runs under a real ``tether serve`` process and is driven by
aiohttp's client, by h11 used as a strict validating client (h11 raises on any
protocol violation it sees), and by curl. ``Expect: 100-continue`` is checked on
raw sockets: the 100 is sent only when the application asks for the body, and never
to an HTTP/1.0 client.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import h11
import pytest

from tests.support import ServerProcess, raw_exchange, serve, server_process
from tether.asgi import Message, Receive, Scope, Send

STREAM_PARTS = [f"part {i}\n".encode() for i in range(5)]
STREAM_BODY = b"".join(STREAM_PARTS)
HELLO = b"hello, world\n"  # the greeting comes from hello.py's lifespan state
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def hello() -> Iterator[ServerProcess]:
    with server_process("hello:app") as proc:
        yield proc


# -- aiohttp ---------------------------------------------------------------------------


async def test_aiohttp_keep_alive_reuses_one_connection(hello: ServerProcess) -> None:
    created: list[object] = []
    reused: list[object] = []

    async def on_create(*args: object) -> None:
        created.append(args)

    async def on_reuse(*args: object) -> None:
        reused.append(args)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(trace_configs=[trace], timeout=timeout) as session:
        for _ in range(10):
            async with session.get(f"{hello.url}/") as r:
                assert r.status == 200
                assert await r.read() == HELLO
                assert r.headers["Content-Length"] == str(len(HELLO))
        async with session.get(f"{hello.url}/json") as r:
            assert await r.json() == {"method": "GET", "path": "/json"}
    assert len(created) == 1
    assert len(reused) == 10


async def test_aiohttp_post_echo(hello: ServerProcess) -> None:
    payload = bytes(range(256)) * 1000  # 256 KB: the server pauses reading while it waits
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.post(f"{hello.url}/echo", data=payload) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert await r.read() == payload


async def test_aiohttp_post_chunked_echo(hello: ServerProcess) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(20):
            yield b"%d," % i

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.post(f"{hello.url}/echo", data=body()) as r,
    ):
        assert await r.read() == b"".join(b"%d," % i for i in range(20))


async def test_aiohttp_stream_chunk_by_chunk(hello: ServerProcess) -> None:
    """Each ASGI ``http.response.body`` message is one HTTP chunk on the wire."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.get(f"{hello.url}/stream") as r,
    ):
        assert r.status == 200
        assert r.headers["Transfer-Encoding"] == "chunked"
        http_chunks: list[bytes] = []
        current = b""
        async for data, end_of_http_chunk in r.content.iter_chunks():
            current += data
            if end_of_http_chunk and current:  # aiohttp ends with (b"", True) at EOF
                http_chunks.append(current)
                current = b""
    assert current == b""
    assert http_chunks == STREAM_PARTS


# -- h11 as a strict client --------------------------------------------------------------


class H11Client:
    """A blocking HTTP/1.1 client over one socket; every byte is checked by h11."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def receive(self) -> tuple[h11.Response, list[h11.Data]]:
        """Read one whole response: the head and every Data event up to its end."""
        response: h11.Response | None = None
        data: list[h11.Data] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.InformationalResponse):
                raise AssertionError(f"unexpected informational response {event}")
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data.append(event)
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, data
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: list[bytes] | None = None,
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        self.send(h11.Request(method=method, target=target,
                              headers=[("Host", "tether.test"), *(headers or [])]))
        for piece in body or []:
            self.send(h11.Data(data=piece))
        self.send(h11.EndOfMessage())
        response, data = self.receive()
        return response, b"".join(bytes(d.data) for d in data)


@contextlib.contextmanager
def h11_client(port: int) -> Iterator[H11Client]:
    client = H11Client(port)
    try:
        yield client
    finally:
        client.close()


def header(response: h11.Response | h11.InformationalResponse, name: bytes) -> bytes | None:
    values = [v for n, v in response.headers if n == name]
    assert len(values) <= 1, f"{name!r} sent {len(values)} times"
    return values[0] if values else None


def test_h11_get_and_head(hello: ServerProcess) -> None:
    with h11_client(hello.port) as client:
        response, body = client.request("GET", "/")
        assert response.status_code == 200
        assert response.http_version == b"1.1"
        assert body == HELLO
        assert header(response, b"content-length") == b"%d" % len(HELLO)
        assert header(response, b"date") is not None

        # HEAD: same headers, no body. Any body bytes would be parsed by h11 as the
        # start of the next response and make the GET below fail.
        response, body = client.request("HEAD", "/")
        assert response.status_code == 200
        assert body == b""
        assert header(response, b"content-length") == b"%d" % len(HELLO)

        response, body = client.request("GET", "/json")
        assert response.status_code == 200
        assert body == b'{"method": "GET", "path": "/json"}'


def test_h11_post_chunked_body(hello: ServerProcess) -> None:
    pieces = [b"first,", b"x" * 70000, b",last"]
    with h11_client(hello.port) as client:
        response, body = client.request(
            "POST", "/echo", headers=[("Transfer-Encoding", "chunked")], body=pieces
        )
    assert response.status_code == 200
    assert body == b"".join(pieces)


def test_h11_keep_alive_many_requests_then_close(hello: ServerProcess) -> None:
    with h11_client(hello.port) as client:
        for i in range(5):
            response, body = client.request(
                "POST", "/echo", headers=[("Content-Length", "1")], body=[b"%d" % i]
            )
            assert response.status_code == 200
            assert body == b"%d" % i
            assert header(response, b"connection") is None  # keep-alive is the default
        response, body = client.request("GET", "/", headers=[("Connection", "close")])
        assert body == HELLO
        assert header(response, b"connection") == b"close"
        assert client.conn.their_state is h11.MUST_CLOSE
        assert client.sock.recv(1) == b""  # the server closed its side


def test_h11_chunked_stream_response(hello: ServerProcess) -> None:
    with h11_client(hello.port) as client:
        client.send(h11.Request(method="GET", target="/stream", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        response, data = client.receive()
        assert response.status_code == 200
        assert header(response, b"transfer-encoding") == b"chunked"
        assert header(response, b"content-length") is None
        # h11 marks where each wire chunk starts and ends.
        chunks: list[bytes] = []
        for event in data:
            if event.chunk_start:
                chunks.append(b"")
            assert chunks, "chunk data before any chunk started"
            chunks[-1] += bytes(event.data)
        assert data[-1].chunk_end
        assert chunks == STREAM_PARTS
        # The connection is still usable after a chunked response.
        _, body = client.request("GET", "/")
        assert body == HELLO


@pytest.mark.parametrize(
    ("target", "expected"), [("/", HELLO), ("/stream", STREAM_BODY)]
)
def test_h11_http10_request(hello: ServerProcess, target: str, expected: bytes) -> None:
    """h11 only sends HTTP/1.1, so the HTTP/1.0 request goes out as raw bytes while h11
    (told of an equivalent request with ``Connection: close``) validates the response."""
    with h11_client(hello.port) as client:
        client.conn.send(h11.Request(method="GET", target=target,
                                     headers=[("Host", "x"), ("Connection", "close")]))
        client.conn.send(h11.EndOfMessage())
        client.sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        response, data = client.receive()
        assert response.status_code == 200
        assert header(response, b"transfer-encoding") is None  # no chunking for HTTP/1.0
        assert header(response, b"connection") == b"close"
        assert b"".join(bytes(d.data) for d in data) == expected
        assert client.sock.recv(1) == b""


# -- curl ------------------------------------------------------------------------------

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr.decode()
    return result


def split_response(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


@needs_curl
def test_curl_get(hello: ServerProcess) -> None:
    lines, body = split_response(curl("-i", "--http1.1", f"{hello.url}/").stdout)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"content-length: 13" in lines
    assert body == HELLO


@needs_curl
def test_curl_reuses_connection(hello: ServerProcess) -> None:
    result = curl("-v", "--http1.1", f"{hello.url}/", f"{hello.url}/json")
    assert result.stdout == HELLO + b'{"method": "GET", "path": "/json"}'
    assert b"Re-using existing connection" in result.stderr


@needs_curl
def test_curl_post_form_data(hello: ServerProcess) -> None:
    raw = curl("-i", "--http1.1", "-d", "a=1&b=two", f"{hello.url}/echo").stdout
    lines, body = split_response(raw)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert body == b"a=1&b=two"


@needs_curl
def test_curl_expect_100_continue(hello: ServerProcess) -> None:
    """curl holds the body back until the 100 arrives (a long --expect100-timeout makes
    sure it is the server's 100, not curl's patience, that releases it)."""
    payload = b"".join(b"line %05d\n" % i for i in range(500))  # 5 KB
    with tempfile.TemporaryDirectory(prefix="tether-curl-") as tmp:
        path = Path(tmp) / "body"
        path.write_bytes(payload)
        raw = curl(
            "-i", "--http1.1", "-H", "Expect: 100-continue", "--expect100-timeout", "60",
            "--data-binary", f"@{path}", f"{hello.url}/echo",
        ).stdout
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    lines, body = split_response(raw[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
    assert b"content-length: %d" % len(payload) in lines
    assert body == payload


@needs_curl
def test_curl_raw_shows_chunked_framing(hello: ServerProcess) -> None:
    lines, body = split_response(curl("-i", "--raw", "--http1.1", f"{hello.url}/stream").stdout)
    assert b"transfer-encoding: chunked" in lines
    assert body == b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in STREAM_PARTS) + b"0\r\n\r\n"


@needs_curl
@pytest.mark.parametrize("target", ["/", "/stream"])
def test_curl_head(hello: ServerProcess, target: str) -> None:
    raw = curl("-I", "--http1.1", f"{hello.url}{target}").stdout
    lines, body = split_response(raw)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert body == b""
    if target == "/":
        assert b"content-length: 13" in lines


# -- Expect: 100-continue on raw sockets --------------------------------------------------

EXPECT_BODY = b"0123456789abcdef" * 128  # 2 KiB
EXPECT_HEAD = (
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(EXPECT_BODY)
)


async def test_expect_100_refused_without_reading_gets_no_continue() -> None:
    received: list[object] = []

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not you"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def tracking_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        await refuse(scope, tracking_receive, send)

    async with serve(app) as server:
        # The client waits for the 100 and never sends the body: the server must
        # answer and close (it cannot reuse a connection whose body never came).
        raw = await raw_exchange(server.port, EXPECT_HEAD)
    assert received == []
    assert b"100 Continue" not in raw
    lines, body = split_response(raw)
    assert lines[0] == b"HTTP/1.1 403 Forbidden"
    assert b"connection: close" in lines
    assert body == b"not you"


async def test_expect_100_sent_when_app_reads_body() -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        more = True
        while more:
            message = await receive()
            assert message["type"] == "http.request"
            chunks.append(message["body"])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async with serve(echo) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(EXPECT_HEAD)
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"

            writer.write(EXPECT_BODY)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.1 200 OK"
            assert b"content-length: %d" % len(EXPECT_BODY) in lines
            assert not any(line.startswith(b"connection:") for line in lines)
            body = await asyncio.wait_for(reader.readexactly(len(EXPECT_BODY)), TIMEOUT)
            assert body == EXPECT_BODY

            # The connection stays usable: a second request on it is answered.
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\nok")
            await writer.drain()
            rest = await asyncio.wait_for(reader.read(), TIMEOUT)
            assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"100 Continue" not in rest
            assert rest.endswith(b"\r\n\r\nok")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.mark.parametrize(("version", "continue_expected"), [("1.1", True), ("1.0", False)])
async def test_expect_100_only_for_http11(version: str, continue_expected: bool) -> None:
    """RFC 9110 section 10.1.1: a 100-continue expectation in an HTTP/1.0 request is
    ignored (an HTTP/1.0 client cannot parse a 1xx response)."""
    waiting = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # receive() runs until it waits for the body (any 100 is written by then);
        # only then is the test told to send the body.
        first = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        waiting.set()
        message = await first
        body = message["body"]
        while message.get("more_body", False):
            message = await receive()
            body += message["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    head = (
        f"POST / HTTP/{version}\r\nHost: x\r\nContent-Length: 5\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    async with serve(app) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.wait_for(waiting.wait(), TIMEOUT)
            writer.write(b"hello")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert raw.startswith(interim) == continue_expected, raw
    final = raw.removeprefix(interim)
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert final.endswith(b"\r\n\r\nhello")
