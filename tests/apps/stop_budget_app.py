"""An app for the stop-budget tests: handlers and a lifespan shutdown that overstay.

``/``: 200 with the worker's pid. ``/stubborn``: never answers; the first
cancellation is caught and its "cleanup" never ends on its own (only a second
cancellation ends it), after touching ``$STOP_BUDGET_MARKS/cancelled-<pid>``.

Lifespan shutdown, by ``$STOP_BUDGET_SHUTDOWN`` (after touching ``shutdown-<pid>``):
``hang`` waits for ever without blocking the loop (the worker's own timer ends it),
``block`` blocks the event loop for ever (only a kill ends it); anything else
finishes at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan

MARKS = Path(os.environ.get("STOP_BUDGET_MARKS", "/tmp"))
SHUTDOWN = os.environ.get("STOP_BUDGET_SHUTDOWN", "")


def _touch(name: str) -> None:
    (MARKS / f"{name}-{os.getpid()}").write_text(str(time.time()))


async def _shutdown() -> None:
    _touch("shutdown")
    if SHUTDOWN == "hang":
        await asyncio.Event().wait()
    elif SHUTDOWN == "block":
        while True:
            time.sleep(0.1)  # deliberately blocks the event loop


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, shutdown=_shutdown)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/stubborn":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _touch("cancelled")
            await asyncio.Event().wait()  # a cleanup that ignores the first cancel
    body = f"ok {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
