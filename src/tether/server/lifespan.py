"""ASGI lifespan: run the application's startup before serving and its shutdown after.

Must never let a lifespan failure pass silently: in ``on`` mode (and in ``auto``
mode once the app has shown it speaks lifespan) a failure stops the worker with
the application's own message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tether.asgi import ASGI_VERSION, ASGIApp, Message
from tether.config import LifespanMode
from tether.errors import LifespanFailure

logger = logging.getLogger("tether.error")


class Lifespan:
    """Drives one application through ``lifespan.startup`` and ``lifespan.shutdown``.

    ``state`` is the dict the application fills during startup; every request's
    ``scope["state"]`` is a shallow copy of it.
    """

    def __init__(self, app: ASGIApp, mode: LifespanMode) -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self._unsupported = False
        self._spoke_lifespan = False
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run startup; raise :class:`LifespanFailure` if the application reports failure."""
        if self.mode == "off":
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._wait(self._startup_done)
        if self._failure is not None:
            raise LifespanFailure(f"lifespan startup failed: {self._failure}")

    async def shutdown(self) -> None:
        """Run shutdown; raise :class:`LifespanFailure` if the application reports failure."""
        if self._task is None or self._unsupported or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._wait(self._shutdown_done)
        if self._failure is not None:
            raise LifespanFailure(f"lifespan shutdown failed: {self._failure}")

    async def _wait(self, event: asyncio.Event) -> None:
        assert self._task is not None
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self.mode == "auto" and not self._spoke_lifespan:
                # Many plain ASGI callables raise on a scope type they do not know,
                # before ever calling receive(): in auto mode that means "no
                # lifespan", not a failure. An app that did call receive() and then
                # raised has failed, whatever the mode.
                self._unsupported = True
                logger.info("ASGI 'lifespan' protocol appears unsupported; continuing without it")
            else:
                self._failure = f"{type(exc).__name__}: {exc}"
                logger.error("Exception in ASGI lifespan", exc_info=exc)
        else:
            if not self._startup_done.is_set() and self.mode == "on":
                self._failure = "application returned without completing lifespan startup"
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> Message:
        self._spoke_lifespan = True
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        mtype = message["type"]
        if mtype == "lifespan.startup.complete":
            self._startup_done.set()
        elif mtype == "lifespan.startup.failed":
            self._failure = str(message.get("message", "")) or "lifespan.startup.failed"
            self._startup_done.set()
        elif mtype == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif mtype == "lifespan.shutdown.failed":
            self._failure = str(message.get("message", "")) or "lifespan.shutdown.failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {mtype!r}")
