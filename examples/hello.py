"""A small plain-ASGI application for ``make demo`` and the tests.

Routes: ``/`` (hello), ``/json``, ``/echo`` (POST body back), ``/stream`` (a chunked
response in several parts), ``/slow?seconds=S`` (answers after S seconds).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from tether.asgi import Message, Receive, Scope, Send


async def _respond(send: Send, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/":
        greeting = scope["state"].get("greeting", "hi")
        await _respond(send, 200, f"{greeting}, world\n".encode())
    elif path == "/json":
        body = json.dumps({"method": scope["method"], "path": path}).encode()
        await _respond(send, 200, body, b"application/json")
    elif path == "/echo":
        await _respond(send, 200, await _read_body(receive), b"application/octet-stream")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(5):
            await send({"type": "http.response.body", "body": f"part {i}\n".encode(),
                        "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        query = parse_qs(scope["query_string"].decode())
        seconds = float(query.get("seconds", ["1"])[0])
        await asyncio.sleep(seconds)
        await _respond(send, 200, f"slept {seconds}s\n".encode())
    else:
        await _respond(send, 404, b"not found\n")
