"""The demo's WebSocket service: a numbered stream that survives reloads.

``/ticks?from=N`` streams ``{"seq": N}``, ``{"seq": N+1}``, ... every 20 ms. When
its worker leaves (a rolling reload), tether closes the session with 1012 (Service
Restart); the client reconnects with ``from=`` the next number it expects and the
stream goes on from there, on the new worker: no number is skipped or repeated.
"""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import parse_qs

from tether.asgi import Receive, Scope, Send
from tether.errors import ClientDisconnected

TICK = 0.02


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":  # /healthz for the proxy's probes
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    query = parse_qs(scope["query_string"].decode())
    seq = int(query.get("from", ["0"])[0])
    await send({"type": "websocket.accept"})
    pid = os.getpid()

    async def stream() -> None:
        nonlocal seq
        try:
            while True:
                await send({"type": "websocket.send",
                            "text": json.dumps({"seq": seq, "pid": pid})})
                seq += 1
                await asyncio.sleep(TICK)
        except ClientDisconnected:
            return  # the session ended between two ticks

    streaming = asyncio.create_task(stream())
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass  # the client says nothing; we only wait for the end
    finally:
        streaming.cancel()
