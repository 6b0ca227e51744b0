"""The ASGI lifespan protocol, once, for the test apps that need startup/shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tether.asgi import Receive, Send

Hook = Callable[[], Awaitable[None]]


async def lifespan(receive: Receive, send: Send, startup: Hook | None = None,
                   shutdown: Hook | None = None) -> None:
    """Answer ``lifespan.startup`` after ``startup()`` (``startup.failed`` with its
    error if it raises) and ``lifespan.shutdown`` after ``shutdown()``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                if startup is not None:
                    await startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
