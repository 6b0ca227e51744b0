"""An app for the supervisor tests: routes that are slow, block the loop, or never finish.

``/``: 200 with the worker's pid. ``/slow?s=S``: answers after S seconds (async).
``/block?s=S``: blocks the worker's event loop for S seconds (so connections queue
in the kernel), after touching ``$LIFECYCLE_MARKS/block-<pid>``. ``/stuck``: never
answers; when cancelled it touches ``$LIFECYCLE_MARKS/cancelled-<pid>``.
``/spin``: blocks the loop forever (heartbeats stop).

Lifespan: when ``$LIFECYCLE_MARKS/slow-start`` exists at startup, the worker touches
``starting-<pid>`` and then takes as many seconds as that file says to start.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

from tether.asgi import Receive, Scope, Send

MARKS = Path(os.environ.get("LIFECYCLE_MARKS", "/tmp"))
VERSION = os.environ.get("LIFECYCLE_VERSION", "1")


def _touch(name: str) -> None:
    (MARKS / f"{name}-{os.getpid()}").write_text(str(time.time()))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            slow = MARKS / "slow-start"
            if slow.exists():
                _touch("starting")
                await asyncio.sleep(float(slow.read_text()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    seconds = float(query.get("s", ["0"])[0])
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(seconds)
    elif path == "/block":
        _touch("block")
        time.sleep(seconds)  # deliberately blocks the event loop
    elif path == "/stuck":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _touch("cancelled")
            raise
    elif path == "/spin":
        while True:
            time.sleep(0.1)
    body = f"ok {os.getpid()} v{VERSION}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
