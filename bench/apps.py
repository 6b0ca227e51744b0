"""The ASGI applications every server in ``bench/server.py`` is measured on.

Plain ASGI 3 callables with no framework and no tether import, so each server runs
exactly the same code:

* :func:`hello` answers every request with a fixed 13-byte ``text/plain`` body.
* :func:`json_bytes` answers every request with the same ~10 KB JSON document,
  serialized once at import: the server's cost for a 10 KB body, without the
  application's serialization in the measurement.
* :func:`json` answers every request with a ~10 KB JSON document. The document
  is built once at import (:data:`DOCUMENT`) but **serialized with ``json.dumps``
  on every request**, as a real endpoint would, so the server's cost is measured
  next to a realistic amount of per-request application work.

Both set ``content-length`` themselves (no chunked framing) and implement the
lifespan protocol, so no server logs a lifespan warning. The attribute names are
the app names ``bench/server.py --apps`` takes (``bench.apps:hello``, ``bench.apps:json``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from json import dumps
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY: Final = b"Hello, world!"
_HELLO_HEADERS: Final = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(HELLO_BODY)).encode()),
]


def _build_document() -> dict[str, Any]:
    """A deterministic, API-shaped document that serializes to about 10 KB."""
    users = [
        {
            "id": i,
            "name": f"user-{i:03d}",
            "email": f"user-{i:03d}@example.com",
            "active": i % 3 != 0,
            "score": round(i * 1.37, 2),
            "tags": ["alpha", "beta", "gamma"][: 1 + i % 3],
            "address": {"city": "Springfield", "zip": f"{10000 + i}"},
        }
        for i in range(57)
    ]
    return {"page": 1, "per_page": len(users), "total": 1234, "users": users}


DOCUMENT: Final = _build_document()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Fixed plain-text body: measures the server's own per-request cost."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
    await send({"type": "http.response.body", "body": HELLO_BODY})


async def json(scope: Scope, receive: Receive, send: Send) -> None:
    """~10 KB JSON body, serialized per request from :data:`DOCUMENT`."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = dumps(DOCUMENT).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


DOCUMENT_BYTES: Final = dumps(DOCUMENT).encode()
_DOCUMENT_HEADERS: Final = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(DOCUMENT_BYTES)).encode()),
]


async def json_bytes(scope: Scope, receive: Receive, send: Send) -> None:
    """The same ~10 KB JSON, serialized once: the server's cost for a 10 KB body."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _DOCUMENT_HEADERS})
    await send({"type": "http.response.body", "body": DOCUMENT_BYTES})


async def websocket_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """``bench/websocket.py``'s app: a WebSocket at any path that echoes every message
    as it came (bytes or text); a plain request gets 200 "ok" (the readiness check)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        data = message.get("bytes")
        if data is not None:
            await send({"type": "websocket.send", "bytes": data})
        else:
            await send({"type": "websocket.send", "text": message["text"]})


_OK_HEADERS: Final = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
