"""``tether proxy`` for WebSocket: forward the handshake to a provider, then relay
messages both ways until either side closes.

Rules (the HTTP rules of :mod:`tether.proxy` hold for the handshake: routing,
hop-by-hop and forwarded headers, deadlines, 502/503/504):

1. The upstream handshake goes to a provider chosen by the route's cluster, and is
   tried on another provider only before it succeeded (a refused connect, a dropped
   connection, a retryable 5xx); once upgraded, never again. The client's own
   handshake headers (key, version, extensions, protocol) describe its hop only and
   are not copied; its offered subprotocols are, and the proxy accepts the client
   with the upstream's choice.
2. An upstream that answers the handshake with an HTTP response (a 403, a 404) has
   that response passed to the client as it is (the ASGI denial extension); no
   upstream upgrade at all is 502, 503 or 504, as for a request.
3. Messages are relayed one at a time, each side waiting for the other to take the
   last one (back-pressure both ways; nothing is buffered here beyond one message).
4. Both sides close together: a close from either side reaches the other with its
   code and reason (a reloading provider's 1012 reaches the client). Codes that
   never go on the wire are mapped: a client that vanished (1006) closes the
   upstream with 1001 (going away); an upstream that vanished closes the client
   with 1014 (bad gateway); no code (1005) becomes 1000.
5. Permessage-deflate is per hop: the client's hop negotiates it with tether serve;
   the upstream hop (a local network) goes uncompressed, sparing the proxy's CPU.
6. Both hops are pinged: the client's by the server (``--ws-ping-interval``), the
   upstream's by the proxy (the upstream's ``ws_ping_interval``): an upstream that
   stops answering (a dead host or network) ends the session, and the client is
   closed with 1014, never left waiting on a dead socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from tether.asgi import Message, Receive, Scope, Send
from tether.client.cluster import Cluster, NoProviderAvailable
from tether.client.errors import LocalProtocolError, TimeoutException, TLSError, TransportError
from tether.client.websocket import (
    HANDSHAKE_HEADERS,
    WebSocket,
    WebSocketClosed,
    WebSocketRejected,
)
from tether.deadline import DeadlineExceeded, deadline_after
from tether.errors import ClientDisconnected

logger = logging.getLogger("tether.proxy")

#: close codes that are never sent (RFC 6455 7.4.1), by the side that "sent" them:
#: what the other side is closed with instead
CLIENT_GONE: Final = 1001  # going away
UPSTREAM_GONE: Final = 1014  # bad gateway
_NOT_ON_THE_WIRE: Final = frozenset({1005, 1006, 1015})
#: seconds the second half of the relay may take to end once the first has
CLOSE_TIMEOUT: Final = 10.0
VIA: Final = "1.1 tether"
#: upstream handshake response headers not passed on: hop-by-hop ones (as for HTTP),
#: and those the client's hop has its own of (its handshake, framing, date, server)
_RESPONSE_DROP: Final = HANDSHAKE_HEADERS | {
    "date", "server", "content-length", "transfer-encoding", "keep-alive", "te", "trailer",
    "proxy-connection", "proxy-authenticate"}


def wire_code(code: int | None, gone: int) -> int:
    """A close code that may go on the wire: ``gone`` for a side that vanished,
    1000 for no code at all."""
    if code is None or code == 1006 or code == 1015:
        return gone
    return 1000 if code in _NOT_ON_THE_WIRE else code


def upstream_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The proxy's upstream request headers (rule 2 of tether.proxy) without the
    client's handshake headers (rule 1)."""
    return [(n, v) for n, v in headers if n not in HANDSHAKE_HEADERS]


async def forward_websocket(
    scope: Scope, receive: Receive, send: Send, *, cluster: Cluster, upstream: str,
    target: str, headers: list[tuple[str, str]], timeout: float | None,
    ping: tuple[float | None, float] = (None, 20.0),
) -> None:
    """Forward one WebSocket session (rules 1-6) to ``upstream``'s ``cluster``;
    ``ping``: the upstream session's ping interval (None: never) and timeout."""
    path = scope["path"]
    first = await receive()
    if first["type"] != "websocket.connect":
        return  # the client left before its handshake was handled
    offered = scope.get("subprotocols") or None
    try:
        async with deadline_after(timeout) if timeout is not None else _no_scope():
            session = await cluster.websocket(
                target, headers=upstream_headers(headers), subprotocols=offered,
                compression=False, ping_interval=ping[0], ping_timeout=ping[1])
    except WebSocketRejected as exc:
        await _deny(send, exc.status_code, exc.body, _passed_on(exc.headers.items()))
        return
    except TransportError as exc:
        _failed(path, upstream, exc)
        if isinstance(exc, TimeoutException):
            await _deny_text(send, 504, f"upstream {upstream} timed out\n")
        else:
            await _deny_text(send, 502, f"bad gateway: upstream {upstream} failed\n")
        return
    except NoProviderAvailable as exc:
        _failed(path, upstream, exc)
        if exc.errors and all(isinstance(e, TLSError) for e in exc.errors):
            await _deny_text(send, 502, f"bad gateway: upstream {upstream} fails "
                             "TLS verification\n")
        else:
            await _deny_text(send, 503, f"no provider of upstream {upstream} is available\n",
                             retry_after=True)
        return
    except DeadlineExceeded as exc:
        _failed(path, upstream, exc)
        await _deny_text(send, 504, f"deadline exceeded waiting for {upstream}\n")
        return
    except LocalProtocolError as exc:
        logger.warning("WebSocket %s: not forwarded: %s", path, exc)
        await _deny_text(send, 400, "bad request: cannot be forwarded\n")
        return
    try:
        extra = _passed_on(session.headers.items())
        await send({"type": "websocket.accept", "subprotocol": session.subprotocol,
                    "headers": extra})
        await _relay(receive, send, session)
    finally:
        session.abort()  # a no-op after a clean close; else (cancelled) the upstream ends


async def _relay(receive: Receive, send: Send, session: WebSocket) -> None:
    """Relay until both directions ended; the second gets :data:`CLOSE_TIMEOUT`."""
    tasks = [asyncio.create_task(_client_to_upstream(receive, session)),
             asyncio.create_task(_upstream_to_client(send, session))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.warning("WebSocket relay failed: %r", outcome)


async def _client_to_upstream(receive: Receive, session: WebSocket) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            try:
                await session.send(data)
            except WebSocketClosed:
                return  # the upstream ended: the other direction closes the client
        elif message["type"] == "websocket.disconnect":
            await session.close(wire_code(message.get("code"), CLIENT_GONE),
                                message.get("reason") or "")
            return


async def _upstream_to_client(send: Send, session: WebSocket) -> None:
    outgoing: Message
    async for data in session:
        if isinstance(data, str):
            outgoing = {"type": "websocket.send", "text": data}
        else:
            outgoing = {"type": "websocket.send", "bytes": data}
        try:
            await send(outgoing)
        except ClientDisconnected:
            return  # the client left: the other direction closes the upstream
    with contextlib.suppress(ClientDisconnected):
        await send({"type": "websocket.close",
                    "code": wire_code(session.close_code, UPSTREAM_GONE),
                    "reason": session.close_reason})


def _passed_on(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's handshake response headers for the client, plus this hop's Via."""
    out = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers
           if n.lower() not in _RESPONSE_DROP and n.lower() != "via"]
    via = [v for n, v in headers if n.lower() == "via"]
    out.append((b"via", ", ".join([*via, VIA]).encode("latin-1")))
    return out


def _failed(path: str, upstream: str, exc: Exception) -> None:
    logger.warning("WebSocket %s: upstream %s failed before the upgrade: %s",
                   path, upstream, exc)


async def _deny(send: Send, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _deny_text(send: Send, status: int, text: str, *, retry_after: bool = False) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await _deny(send, status, text.encode(), headers)


@contextlib.asynccontextmanager
async def _no_scope() -> AsyncIterator[None]:
    yield
