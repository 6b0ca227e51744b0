"""One worker: import the app, run lifespan, accept on already-bound sockets, drain, stop.

A worker never binds: the sockets it is given outlive it (field report 3). Its
stop is graceful and bounded (field report 2): stop accepting, serve what the
kernel already queued, let in-flight requests finish, then cancel what is left,
then close whatever remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import dataclass

from tether.asgi import ASGIApp
from tether.config import ServerConfig
from tether.errors import AppImportError, LifespanFailure
from tether.importer import load_app
from tether.loops import loop_factory
from tether.server import sockets as sockets_mod
from tether.server import wire
from tether.server.lifespan import Lifespan
from tether.server.protocol import HttpProtocol, ServerState

logger = logging.getLogger("tether.server")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STARTUP_FAILED = 3
EXIT_FORCED_STOP = 4


@dataclass(frozen=True, slots=True)
class StopReport:
    """How a stop went: what finished on its own and what had to be cut."""

    drained: int
    cancelled: int
    forced: bool


class Worker:
    """Serves one ASGI application on a set of listening sockets until stopped."""

    def __init__(self, app: ASGIApp, config: ServerConfig, socks: list[socket.socket]) -> None:
        self.app = app
        self.config = config
        self.socks = socks
        self.lifespan = Lifespan(app, config.lifespan)
        self.state = ServerState(
            app,
            config.limits,
            root_path=config.root_path,
            access_log=config.access_log,
            app_state=self.lifespan.state,
        )
        self.servers: list[asyncio.Server] = []
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        limits = config.limits
        # Timeouts are checked by one sweep per worker instead of a timer per request.
        self._tick = max(0.01, min(0.5, limits.header_timeout / 4, limits.keep_alive_timeout / 4))

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.state, asyncio.get_running_loop())

    async def start(self) -> None:
        """Run lifespan startup, then begin accepting. Raises LifespanFailure."""
        await self.lifespan.startup()
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            # The server gets a duplicate: closing it stops accepting while the
            # original keeps the kernel's backlog alive for the final drain.
            server = await loop.create_server(
                self._protocol, sock=sock.dup(), backlog=self.config.backlog
            )
            self.servers.append(server)
        self._sweep()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.state.date_header = wire.date_header()
        for conn in list(self.state.connections):
            conn.check_timer(now)
        self._sweeper = loop.call_later(self._tick, self._sweep)

    async def stop(self) -> StopReport:
        """Graceful, bounded stop. Returns what was drained and what was cancelled."""
        config = self.config
        state = self.state
        state.draining = True
        served_before = state.total_requests
        for server in self.servers:
            server.close()
        await self._accept_backlog()
        for sock in self.socks:
            sock.close()

        # In-flight requests finish; idle keep-alive connections stay until their own
        # timer (a client may be sending its next request right now: it is answered
        # with Connection: close rather than reset).
        forced = False
        cancelled = 0
        if not await self._wait_idle(config.graceful_timeout):
            forced = True
            cancelled = len(state.tasks)
            for task in list(state.tasks):
                task.cancel()
            await self._wait_tasks(config.force_exit_timeout)
        for conn in list(state.connections):
            conn.transport.abort()  # only after a forced stop can any remain
        if self._sweeper is not None:
            self._sweeper.cancel()
        drained = state.total_requests - served_before
        return StopReport(drained=drained, cancelled=cancelled, forced=forced)

    async def _accept_backlog(self) -> None:
        """Serve connections the kernel accepted before the listener stopped."""
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    logger.warning("accept during drain failed: %s", exc)
                    break
                await loop.connect_accepted_socket(self._protocol, sock=conn)

    async def _wait_idle(self, timeout: float) -> bool:
        """Wait until no request runs and no connection is open (or a force stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = self.state
        while state.connections or state.tasks:
            if self.force_requested.is_set() or loop.time() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.force_requested.wait(), 0.02)
        return True

    async def _wait_tasks(self, timeout: float) -> None:
        tasks = list(self.state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def serve(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; return the exit status."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except LifespanFailure as exc:
            logger.error("%s", exc)
            return EXIT_STARTUP_FAILED
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGQUIT, self.force_requested.set)
        for sock in self.socks:
            logger.info("tether serving on %s", sockets_mod.describe(sock))
        await self.stop_requested.wait()
        logger.info("stop requested: draining in-flight requests")
        report = await self.stop()
        logger.info(
            "stopped: %d requests drained, %d cancelled%s",
            report.drained, report.cancelled, " (forced)" if report.forced else "",
        )
        try:
            await asyncio.wait_for(self.lifespan.shutdown(), self.config.force_exit_timeout)
        except LifespanFailure as exc:
            logger.error("%s", exc)
            return EXIT_ERROR
        except TimeoutError:
            logger.error("lifespan shutdown did not finish within the force-exit timeout")
            return EXIT_FORCED_STOP
        return EXIT_FORCED_STOP if report.forced else EXIT_OK

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self.stop_requested.is_set():
            # A second SIGINT/SIGTERM means "now": skip the rest of the grace period.
            self.force_requested.set()
        self.stop_requested.set()


def run_worker(config: ServerConfig, socks: list[socket.socket]) -> int:
    """Import the app and serve it on ``socks`` in a fresh event loop; return the exit status."""
    try:
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    except AppImportError as exc:
        cause = exc.__cause__
        logger.error("%s", exc, exc_info=cause if cause is not None else None)
        return EXIT_STARTUP_FAILED

    async def main() -> int:
        worker = Worker(app, config, socks)
        return await worker.serve()

    with asyncio.Runner(loop_factory=loop_factory(config.loop)) as runner:
        return runner.run(main())
