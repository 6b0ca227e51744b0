"""WebSocket applications for tests/test_websocket.py: a plain ASGI one with a route
per behaviour, and unchanged FastAPI and Starlette apps with WebSocket routes.

``WS_MARKS`` (a directory), when set, is where handlers leave marks a test reads
from another process: ``<name>.<pid>`` files holding how a session ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket

from tether.asgi import Message, Receive, Scope, Send
from tether.errors import ClientDisconnected

#: in-process tests read what handlers saw here (path -> what happened)
SEEN: dict[str, list[object]] = {}


def mark(name: str, text: str) -> None:
    SEEN.setdefault(name, []).append(text)
    marks = os.environ.get("WS_MARKS")
    if marks:
        stem = f"{name}.{os.getpid()}.{time.monotonic_ns()}"
        # written aside, then renamed: a reader never sees the mark half-written
        aside = Path(marks) / f".writing-{stem}"
        aside.write_text(text)
        os.replace(aside, Path(marks) / stem)


async def _http(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/echo``: echoes every message (text and bytes), picks the first offered
    subprotocol and adds a header; ``/deny``: closes before accepting (403);
    ``/teapot``: answers the handshake with its own HTTP response; ``/blocked``:
    accepts, then waits on something else than the client; ``/record``: echoes and
    marks how the session ended; ``/pid``: sends its worker's pid, then echoes;
    ``/crash``: accepts, then raises; ``/bye``: says bye and closes (1000, "done");
    ``/slow-accept``: accepts after 0.5 s; ``/headers``: sends the handshake's
    headers as a JSON list of pairs, then echoes; ``/reason``: echoes and marks the close
    code and reason it was told. Plain HTTP requests get 200 "http"."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await _http(send, 200, b"http")
        return
    path = scope["path"]
    connect = await receive()
    assert connect["type"] == "websocket.connect"
    if path == "/deny":
        await send({"type": "websocket.close"})
        return
    if path == "/teapot":
        await send({"type": "websocket.http.response.start", "status": 418,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no websocket for you"})
        return
    if path == "/slow-accept":
        await asyncio.sleep(0.5)  # longer than the test's handshake deadline
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None,
                "headers": [(b"x-session", b"tether")]})
    if path == "/blocked":
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            mark("blocked", "cancelled")
            raise
        return
    if path == "/bye":
        await send({"type": "websocket.send", "text": "bye"})
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})
        return
    if path == "/crash":
        raise RuntimeError("a bug after accept")
    if path == "/headers":
        await send({"type": "websocket.send", "text": json.dumps(
            [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]])})
    if path == "/pid":
        await send({"type": "websocket.send", "text": str(os.getpid())})
    await _echo(path, receive, send)


async def _echo(path: str, receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            said = str(message["code"])
            if path == "/reason":
                said += f" {message.get('reason') or ''}"
            mark(path.strip("/"), said)
            if path == "/record":
                try:
                    await send({"type": "websocket.send", "text": "too late"})
                except ClientDisconnected:
                    mark("send-after-disconnect", "ClientDisconnected")
            return
        reply: Message = {"type": "websocket.send"}
        if message.get("text") is not None:
            reply["text"] = message["text"]
        else:
            reply["bytes"] = message["bytes"]
        await send(reply)


# -- FastAPI and Starlette, unchanged ---------------------------------------------------------

fastapi = FastAPI()


@fastapi.websocket("/chat/{room}")
async def chat(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"room": room, "echo": text})
    except WebSocketDisconnect as exc:
        mark("fastapi", str(exc.code))


async def starlette_echo(websocket: StarletteWebSocket) -> None:
    await websocket.accept()
    async for data in websocket.iter_bytes():
        await websocket.send_bytes(data[::-1])
    mark("starlette", "done")


starlette = Starlette(routes=[WebSocketRoute("/reverse", starlette_echo)])
