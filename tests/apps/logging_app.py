"""A plain-ASGI application for the access-log tests: a quick answer, a handler that
outlives any deadline (504), and one that raises (500 with a traceback)."""

from __future__ import annotations

import asyncio

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(60)  # cancelled by its deadline long before
    if path == "/boom":
        raise RuntimeError("sentinel: the handler failed")
    body = b"hello"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
