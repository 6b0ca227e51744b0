"""WebSocket sessions against clients no one here wrote (the ``websockets`` library,
aiohttp): messages both ways, the handshake and its refusals, limits and protocol
errors, clients that vanish, and FastAPI/Starlette routes, unchanged.

The reload and stop of sessions on real processes is in tests/test_websocket_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.apps import ws_app
from tests.support import (
    APPS,
    RunningServer,
    raw_exchange,
    serve,
    server_process,
    status_of,
    wait_for,
)
from tether.config import WebSocketSettings


@pytest.fixture(autouse=True)
def _fresh_marks() -> None:
    ws_app.SEEN.clear()


def _url(server: RunningServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def test_echo_text_and_bytes_with_subprotocol_headers_and_deflate() -> None:
    async with serve(ws_app.app) as server, websockets.connect(
        _url(server, "/echo?x=1"), subprotocols=["chat.v2", "chat.v1"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        assert ws.response.headers["x-session"] == "tether"
        assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        big = os.urandom(200_000)
        await ws.send(big)
        assert await ws.recv() == big
        # a fragmented message arrives whole
        await ws.send(["frag", "mented"])
        assert await ws.recv() == "fragmented"


async def test_the_scope_is_a_websocket_scope() -> None:
    scopes: list[dict[str, object]] = []

    async def app(scope: dict[str, object], receive: Callable[..., object],
                  send: Callable[..., object]) -> None:
        scopes.append(dict(scope))
        await ws_app.app(scope, receive, send)  # type: ignore[arg-type]

    async with serve(app) as server, websockets.connect(  # type: ignore[arg-type]
        _url(server, "/echo?room=1")
    ) as ws:
        await ws.send("x")
        await ws.recv()
    scope = scopes[0]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/echo" and scope["query_string"] == b"room=1"
    assert "method" not in scope
    assert scope["subprotocols"] == []
    extensions = scope["extensions"]
    assert isinstance(extensions, dict)
    assert "websocket.http.response" in extensions and "tether" in extensions


async def test_aiohttp_client() -> None:
    async with serve(ws_app.app) as server, aiohttp.ClientSession() as session, \
            session.ws_connect(_url(server, "/echo"), compress=15) as ws:
        await ws.send_str("from aiohttp")
        assert (await ws.receive_str()) == "from aiohttp"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes()) == b"\x00\x01"
        await ws.close()
    await wait_for(lambda: ws_app.SEEN.get("echo") == ["1000"], 5, "the handler to see 1000")


async def test_close_before_accept_is_403_and_denial_response_is_the_apps() -> None:
    async with serve(ws_app.app) as server:
        with pytest.raises(InvalidStatus) as denied:
            async with websockets.connect(_url(server, "/deny")):
                pass
        assert denied.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as teapot:
            async with websockets.connect(_url(server, "/teapot")):
                pass
        assert teapot.value.response.status_code == 418
        assert teapot.value.response.body == b"no websocket for you"


def _handshake(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==", version: bytes = b"13",
               path: bytes = b"/echo") -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
            b"\r\nSec-WebSocket-Version: " + version + b"\r\n\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (_handshake(key=b"not base64 of 16 bytes"), 400),
    (_handshake(version=b"8"), 426),
    (_handshake().replace(b"GET", b"POST", 1), 400),
])
async def test_bad_handshakes_are_refused_with_a_reason(request_bytes: bytes, status: int) -> None:
    async with serve(ws_app.app) as server:
        raw = await raw_exchange(server.port, request_bytes)
    assert status_of(raw) == status
    assert b"WebSocket" in raw.split(b"\r\n\r\n", 1)[1]
    if status == 426:
        assert b"sec-websocket-version: 13" in raw.lower()


def _frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame, built here only to send what a correct client never would."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([(0x80 if mask else 0) | length])
    else:
        head += bytes([(0x80 if mask else 0) | 126]) + struct.pack("!H", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _raw_session(port: int, path: bytes = b"/echo") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(_handshake(key=key, path=path))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def _close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames until a close frame; return its code."""
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length)
        if first & 0x0F == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])


@pytest.mark.parametrize(("frame", "code"), [
    (_frame(0x1, b"\xff\xfe not utf-8"), 1007),
    (_frame(0x2, b"unmasked", mask=False), 1002),
    (_frame(0x0, b"a continuation with nothing to continue"), 1002),
    (_frame(0x8, struct.pack("!H", 1006)), 1002),  # a code no endpoint may send
    (_frame(0x8, struct.pack("!H", 5000)), 1002),  # outside the registry's ranges
    (_frame(0x9, b"p" * 126), 1002),  # a control frame over 125 bytes
], ids=["invalid-utf8", "unmasked", "stray-continuation", "close-1006", "close-5000",
        "long-ping"])
async def test_protocol_errors_close_with_their_code_and_log_once(
    frame: bytes, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(ws_app.app) as server:
        reader, writer = await _raw_session(server.port)
        writer.write(frame)
        assert await asyncio.wait_for(_close_code(reader), 5) == code
        writer.close()
        await wait_for(lambda: ws_app.SEEN.get("echo") == [str(code)], 5, "handler ended")
        # the worker serves on
        async with websockets.connect(_url(server, "/echo")) as ws:
            await ws.send("still here")
            assert await ws.recv() == "still here"
    lines = [r for r in caplog.records if f"WebSocket closed with {code}" in r.getMessage()]
    assert len(lines) == 1


async def test_a_message_over_max_size_closes_with_1009() -> None:
    settings = WebSocketSettings(max_size=1000)
    async with serve(ws_app.app, websocket=settings) as server, websockets.connect(
        _url(server, "/echo"), max_size=None
    ) as ws:
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
        await ws.send("x" * 1001)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def _vanish(writer: asyncio.StreamWriter) -> None:
    """Leave without a close frame: a TCP reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_vanished_client_ends_its_handler_at_once() -> None:
    async with serve(ws_app.app) as server:
        _, writer = await _raw_session(server.port, b"/record")
        _, blocked = await _raw_session(server.port, b"/blocked")
        started = time.monotonic()
        await _vanish(writer)
        await _vanish(blocked)
        # waiting in receive(): told 1006; blocked elsewhere: cancelled
        await wait_for(lambda: ws_app.SEEN.get("record") == ["1006"], 5, "record handler")
        await wait_for(lambda: ws_app.SEEN.get("blocked") == ["cancelled"], 5, "blocked handler")
        assert time.monotonic() - started < 1.0
        await wait_for(lambda: ws_app.SEEN.get("send-after-disconnect") == ["ClientDisconnected"],
                       5, "send after the disconnect raised ClientDisconnected")


async def test_a_client_that_stops_answering_pings_is_dropped() -> None:
    settings = WebSocketSettings(ping_interval=0.2, ping_timeout=0.3)
    async with serve(ws_app.app, websocket=settings) as server:
        _, writer = await _raw_session(server.port, b"/record")
        # this client reads nothing and answers no ping
        await wait_for(lambda: ws_app.SEEN.get("record") == ["1006"], 5, "the handler to end")
        writer.close()
    # and one that answers (the websockets library does) is kept
    async with serve(ws_app.app, websocket=settings) as server, websockets.connect(
        _url(server, "/echo"), ping_interval=None
    ) as ws:
        deadline = time.monotonic() + 1.5  # five ping intervals
        while time.monotonic() < deadline:
            await ws.send("alive?")
            assert await ws.recv() == "alive?"
            await asyncio.sleep(0.1)  # pacing the client, not synchronising


async def test_an_error_after_accept_closes_with_1011() -> None:
    async with serve(ws_app.app) as server, websockets.connect(_url(server, "/crash")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_plain_http_on_the_same_server() -> None:
    async with serve(ws_app.app) as server:
        raw = await raw_exchange(server.port,
                                 b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200


@pytest.fixture
async def fastapi_server() -> AsyncIterator[RunningServer]:
    async with serve(ws_app.fastapi, lifespan="on") as server:
        yield server


async def test_fastapi_and_starlette_routes_unchanged(fastapi_server: RunningServer) -> None:
    async with websockets.connect(_url(fastapi_server, "/chat/lobby")) as ws:
        await ws.send("hi")
        assert await ws.recv() == '{"room":"lobby","echo":"hi"}'
    await wait_for(lambda: ws_app.SEEN.get("fastapi") == ["1000"], 5, "WebSocketDisconnect")
    async with serve(ws_app.starlette, lifespan="on") as server, websockets.connect(
        _url(server, "/reverse")
    ) as ws:
        await ws.send(b"abc")
        assert await ws.recv() == b"cba"
    await wait_for(lambda: ws_app.SEEN.get("starlette") == ["done"], 5, "the loop to end")


async def test_the_app_closing_ends_the_session_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tether")
    async with serve(ws_app.app) as server, websockets.connect(_url(server, "/bye")) as ws:
        assert await ws.recv() == "bye"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "done")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_clients_close_is_answered_with_its_code_and_reaches_the_app() -> None:
    async with serve(ws_app.app) as server:
        ws = await websockets.connect(_url(server, "/reason"))
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.close(4001, "bye now")
        # the server answered with the same code and closed the TCP connection itself
        answer = ws.protocol.close_rcvd
        assert answer is not None and (answer.code, answer.reason) == (4001, "bye now")
        await wait_for(lambda: ws_app.SEEN.get("reason") == ["4001 bye now"], 5,
                       "the app told the client's code and reason")
        reader, writer = await _raw_session(server.port, b"/reason")
        writer.write(_frame(0x8, b""))  # a close with no code: the app is told 1005
        first, second = await asyncio.wait_for(reader.readexactly(2), 5)
        assert (first, second) == (0x88, 0)  # answered with an empty close
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server's EOF
        writer.close()
        await wait_for(lambda: ws_app.SEEN.get("reason") == ["4001 bye now", "1005 "], 5,
                       "the app told 1005")


async def test_nothing_after_the_clients_close_is_read() -> None:
    async with serve(ws_app.app) as server:
        reader, writer = await _raw_session(server.port)
        writer.write(_frame(0x8, b"") + _frame(0x9, b"a") + _frame(0x1, b"late"))
        # the empty close answered, then the server's EOF: no pong, no echo
        assert await asyncio.wait_for(reader.read(), 5) == bytes([0x88, 0])
        writer.close()


async def test_pings_are_answered_and_fragments_joined_between_them() -> None:
    async with serve(ws_app.app) as server:
        reader, writer = await _raw_session(server.port)
        writer.write(_frame(0x1, b"one ", fin=False) + _frame(0x9, b"still there?")
                     + _frame(0x0, b"two ", fin=False) + _frame(0x0, b"three"))
        pong = await asyncio.wait_for(reader.readexactly(2 + 12), 5)
        assert pong == bytes([0x8A, 12]) + b"still there?"
        echo = await asyncio.wait_for(reader.readexactly(2 + 13), 5)
        assert echo == bytes([0x81, 13]) + b"one two three"
        writer.close()
    # and through a real client, with permessage-deflate negotiated
    async with serve(ws_app.app) as server, websockets.connect(_url(server, "/echo")) as ws:
        assert ws.protocol.extensions  # deflated both ways
        await ws.send(["fragmented ", "and ", "deflated " * 100])
        assert await ws.recv() == "fragmented and " + "deflated " * 100
        await asyncio.wait_for(await ws.ping(b"x"), 5)  # its pong came


async def test_a_deadline_bounds_the_handshake_not_the_session() -> None:
    deadline = {"x-request-timeout-ms": "200"}
    async with serve(ws_app.app) as server:
        with pytest.raises(InvalidStatus) as late:
            async with websockets.connect(_url(server, "/slow-accept"),
                                          additional_headers=deadline):
                pass
        assert late.value.response.status_code == 504
        async with websockets.connect(_url(server, "/echo"), additional_headers=deadline) as ws:
            await asyncio.sleep(0.4)  # the handshake's deadline passes; the session stays
            await ws.send("after the deadline")
            assert await ws.recv() == "after the deadline"


async def test_open_sessions_do_not_hold_admission_slots() -> None:
    async with serve(ws_app.app, limit_concurrency=1) as server:
        sessions = [await websockets.connect(_url(server, "/echo")) for _ in range(3)]
        raw = await raw_exchange(server.port,
                                 b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(raw) == 200
        for ws in sessions:
            await ws.close()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("text", [False, True])
def test_hand_written_frame_heads_are_the_librarys_own(length: int, text: bool) -> None:
    """The one thing tether writes itself on a WebSocket (server/websocket.py,
    data_frame_head) is byte for byte what the websockets library would send."""
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from tether.server.websocket import data_frame_head

    protocol = ServerProtocol()
    protocol.state = State.OPEN
    payload = b"x" * length
    if text:
        protocol.send_text(payload)
    else:
        protocol.send_binary(payload)
    [library] = protocol.data_to_send()
    assert data_frame_head(0x81 if text else 0x82, length) + payload == library


async def test_a_session_over_tls_on_a_real_worker(tmp_path: Path) -> None:
    """wss:// to a real ``tether serve`` worker (uvloop's TLS transport): text, a large
    binary message both ways (frames written as two buffers), and a clean close."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with server_process("ws_app:app", "--ssl-certfile", str(tmp_path / "server.pem"),
                        cwd=APPS) as server:
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/echo",
                                      ssl=client_context, max_size=None) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            big = os.urandom(300_000)
            await ws.send(big)
            assert await ws.recv() == big
            small = os.urandom(1000)
            await ws.send(small)
            assert await ws.recv() == small
        assert ws.close_code == 1000
