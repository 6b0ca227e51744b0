"""The next hop of ``ForwardOrder``: a plain HTTP ASGI app that says what deadline it got.

``GET /budget``: JSON ``{"header": <x-request-timeout-ms received or null>,
"remaining_ms": <tether.time_remaining() in ms or null>}``. Run it with
``tether serve examples.grpc.next_hop:app`` and point ``ORDERS_NEXT_HOP`` at it.
"""

from __future__ import annotations

import json

import tether
from tether.asgi import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    header = next((bytes(v).decode("latin-1") for k, v in scope["headers"]
                   if k == b"x-request-timeout-ms"), None)
    remaining = tether.time_remaining()
    status, payload = (200, {"header": header,
                             "remaining_ms": None if remaining is None else remaining * 1000})
    if scope["path"] != "/budget":
        status, payload = 404, {"error": "not found"}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
