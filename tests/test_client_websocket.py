"""``tether.Client`` WebSocket sessions against real servers on 127.0.0.1: tether serve
(in this event loop, tests/apps/ws_app.py) and the ``websockets`` library's own
server (``websockets.asyncio.server.serve``), plain and with TLS (``trustme``), and
through a cluster with a dead provider and one that refuses the handshake with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as WSResponse

from tests.apps import ws_app
from tests.support import RunningServer, free_port, wait_for
from tests.support import serve as serve_tether
from tether.client import Client, TLSError, WebSocketClosed, WebSocketRejected
from tether.deadline import DeadlineExceeded, deadline_after

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def tether_ws() -> AsyncIterator[RunningServer]:
    async with serve_tether(ws_app.app) as server:
        yield server


async def test_echo_subprotocol_headers_and_close_against_tether_serve() -> None:
    async with tether_ws() as server, Client(timeout=TIMEOUT) as client:
        url = f"ws://127.0.0.1:{server.port}/echo"
        async with client.websocket(url, subprotocols=["chat.v2", "chat.v1"],
                                    headers={"x-who": "test"}) as ws:
            assert ws.subprotocol == "chat.v2"
            assert ws.headers.get("x-session") == "tether"
            await ws.send("hello")
            assert await ws.receive() == "hello"
            big = bytes(range(256)) * 8192  # 2 MiB: over the reader's high water mark
            await ws.send(big)
            assert await ws.receive() == big
            assert ws.close_code is None
        assert ws.close_code == 1000
        with pytest.raises(WebSocketClosed):
            await ws.send("after close")
        # a session's connection is its own: nothing went through the HTTP pool
        assert client.stats()["connections_opened"] == 0

        # the server's close: its code and reason, after the messages before it
        ws = await client.websocket(f"http://127.0.0.1:{server.port}/bye")
        assert [m async for m in ws] == ["bye"]
        assert (ws.close_code, ws.close_reason) == (1000, "done")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1000


async def test_closing_the_client_drops_its_open_sessions() -> None:
    ws_app.SEEN.clear()
    async with tether_ws() as server:
        client = Client(timeout=TIMEOUT)
        ws = await client.websocket(f"ws://127.0.0.1:{server.port}/record")
        await ws.send("x")
        assert await ws.receive() == "x"
        await client.aclose()
        assert ws.close_code == 1006
        await wait_for(lambda: ws_app.SEEN.get("record") == ["1006"], TIMEOUT,
                       "the server's handler to see the client go")


async def test_a_refused_handshake_is_the_servers_answer() -> None:
    async with tether_ws() as server, Client(timeout=TIMEOUT) as client:
        with pytest.raises(WebSocketRejected) as refused:
            await client.websocket(f"ws://127.0.0.1:{server.port}/teapot")
        assert refused.value.status_code == 418
        assert refused.value.body == b"no websocket for you"
        with pytest.raises(WebSocketRejected) as denied:
            await client.websocket(f"ws://127.0.0.1:{server.port}/deny")
        assert denied.value.status_code == 403


async def test_the_deadline_bounds_the_handshake() -> None:
    async with tether_ws() as server, Client(timeout=TIMEOUT, propagate_deadline=False
                                             ) as client:
        url = f"ws://127.0.0.1:{server.port}/slow-accept"  # accepts after 0.5 s
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.1):
                await client.websocket(url)
        async with deadline_after(5):  # enough for the handshake
            ws = await client.websocket(url)
        await ws.send("the session outlives the block")
        assert await ws.receive() == "the session outlives the block"
        await ws.close()


@contextlib.asynccontextmanager
async def websockets_server(
    ssl_context: ssl.SSLContext | None = None, refuse_with: int | None = None,
) -> AsyncIterator[tuple[int, list[ServerConnection], list[tuple[int, str]]]]:
    """The ``websockets`` library's server, echoing; yields (port, connections, the
    close frames it received). ``refuse_with``: answer every handshake with that
    status (``/healthz`` still gets 200). It pings every 50 ms."""
    connections: list[ServerConnection] = []
    closes: list[tuple[int, str]] = []

    def process_request(conn: ServerConnection, request: Request) -> WSResponse | None:
        if request.path == "/healthz":
            return conn.respond(200, "ok\n")
        if refuse_with is not None:
            return WSResponse(refuse_with, "Refused", WSHeaders({"Content-Length": "8"}),
                              b"refused\n")
        return None

    async def echo(conn: ServerConnection) -> None:
        connections.append(conn)
        try:
            async for message in conn:
                await conn.send(message)
        except ConnectionClosed:
            pass
        rcvd = conn.protocol.close_rcvd
        if rcvd is not None:
            closes.append((rcvd.code, rcvd.reason))

    async with serve(echo, "127.0.0.1", 0, ssl=ssl_context, process_request=process_request,
                     ping_interval=0.05, ping_timeout=5) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield port, connections, closes


async def test_against_the_websockets_library_server_pings_answered_close_code_sent() -> None:
    async with websockets_server() as (port, connections, closes), Client(
            timeout=TIMEOUT) as client:
        async with client.websocket(f"ws://127.0.0.1:{port}/any") as ws:
            await ws.send(b"\x00\x01")
            assert await ws.receive() == b"\x00\x01"
            # the server pings every 50 ms; it measures a latency once a pong came back
            await wait_for(lambda: bool(connections) and connections[0].latency > 0,
                           TIMEOUT, "a pong to the server's ping")
            await ws.send("still open")
            assert await ws.receive() == "still open"
            await ws.close(4000, "done here")
        await wait_for(lambda: bool(closes), TIMEOUT, "the server's handler to end")
        assert closes == [(4000, "done here")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ssl.SSLContext]:
    ca = trustme.CA()
    folder: Path = tmp_path_factory.mktemp("ws-tls")
    ca_pem = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("chat.internal").configure_cert(context)
    return str(ca_pem), context


async def test_tls_verifies_the_server_name_given_by_sni(
    certs: tuple[str, ssl.SSLContext]
) -> None:
    ca, context = certs
    async with websockets_server(context) as (port, _, _), Client(
            timeout=TIMEOUT, verify=ca) as client:
        url = f"wss://127.0.0.1:{port}/tls"
        async with client.websocket(url, sni_hostname="chat.internal") as ws:
            await ws.send("over tls")
            assert await ws.receive() == "over tls"
        # the certificate is for chat.internal, not for the address dialled
        with pytest.raises(TLSError):
            await client.websocket(url)
        assert client.stats()["connections_opened"] == 0


async def test_through_a_cluster_a_dead_and_a_refusing_provider_are_skipped() -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with websockets_server(refuse_with=503) as (refusing, _, _), \
            websockets_server() as (port, connections, _), Client(timeout=TIMEOUT) as client:
        chat = client.service("chat", providers=[dead, f"127.0.0.1:{refusing}",
                                                 f"127.0.0.1:{port}"],
                              balancer="round_robin", health_path=None)
        for i in range(6):
            async with chat.websocket("/ws", params={"n": str(i)}) as ws:
                await ws.send(f"message {i}")
                assert await ws.receive() == f"message {i}"
            assert chat.outstanding[f"127.0.0.1:{port}"] == 0  # the session ended
        assert len(connections) == 6  # every session reached the good provider
        assert chat.metrics["retries"] > 0  # some handshake was refused first, and retried
        # once upgraded, a session is not retried: it ends with its close code
        async with chat.websocket("/ws") as ws:
            server_side = connections[-1]
            await server_side.close(1012, "restart")
            with pytest.raises(WebSocketClosed) as closed:
                await asyncio.wait_for(ws.receive(), TIMEOUT)
            assert closed.value.code == 1012
        assert len(connections) == 7
