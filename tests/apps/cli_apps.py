"""Tiny plain-ASGI applications for the ``tether serve`` command-line tests."""

from __future__ import annotations

import asyncio
import json

from tether.asgi import ASGIApp, Receive, Scope, Send

from ._lifespan import lifespan


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json(send: Send, status: int, data: object) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def scope_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with what the server told it (and how long the body was)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = await _read_body(receive)
    await _json(send, 200, {
        "root_path": scope["root_path"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "client": scope["client"],
        "server": scope["server"],
        "http_version": scope["http_version"],
        "body_length": len(body),
        "loop": type(asyncio.get_running_loop()).__module__,
    })


def create_app() -> ASGIApp:
    """An application factory for ``--factory``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await _json(send, 200, {"made_by": "factory"})

    return app


def broken_factory() -> ASGIApp:
    raise RuntimeError("sentinel: the factory could not build the app")


async def startup_failed_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reports lifespan startup failure with a message, as the ASGI spec describes."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed",
                    "message": "sentinel: database unreachable"})
        return
    await _json(send, 200, {"should": "never be served"})


async def startup_raises_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Raises during lifespan startup (after receiving ``lifespan.startup``)."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("sentinel: startup exploded")
    await _json(send, 200, {"should": "never be served"})


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A plain ASGI app that knows only HTTP and raises on any other scope type at once."""
    if scope["type"] != "http":
        raise ValueError(f"sentinel: unsupported scope type {scope['type']!r}")
    await _json(send, 200, {"lifespan": "none"})


not_callable = {"this": "is not an application"}
