"""The ``orders`` provider of the demo: a plain ASGI app.

``GET /orders/<id>``: a small JSON order after ~5 ms of "work".
``GET /orders/slow``: takes 1.5 s (used to show graceful stops and cancellation).
``GET /healthz``: 200. Cancellations are counted by tether itself (see /status on
the admin port: ``cancelled_disconnect``).
"""

from __future__ import annotations

import asyncio
import json
import os

from tether.asgi import Receive, Scope, Send


async def _json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/healthz":
        await _json(send, 200, {"ok": True})
    elif path == "/orders/slow":
        await asyncio.sleep(1.5)
        await _json(send, 200, {"slow": True, "pid": os.getpid()})
    elif path.startswith("/orders/"):
        await asyncio.sleep(0.005)
        order_id = path.rsplit("/", 1)[1]
        await _json(send, 200, {"id": order_id, "status": "shipped", "pid": os.getpid()})
    else:
        await _json(send, 404, {"error": "not found"})
