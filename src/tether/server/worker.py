"""One worker: import the app, run lifespan, accept on already-bound sockets, drain, stop.

A worker never binds: the sockets it is given outlive it (field report 3, docs/incidents.md). Its
stop is graceful and bounded (field report 2): stop accepting, serve what the
kernel already queued, let in-flight requests finish, then cancel what is left,
then close whatever remains, then run lifespan shutdown. Every one of those timers
comes from the one stop budget (:class:`tether.config.StopBudget`), the same one the
supervisor kills by: a worker must never time its stop on numbers of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from setproctitle import setproctitle

from tether import metrics
from tether.admission import AdmissionGate
from tether.asgi import ASGIApp
from tether.config import SECRET_FIELDS, ServerConfig
from tether.errors import AppImportError, LifespanFailure
from tether.importer import load_app
from tether.logs import LogConfigError, configure_for
from tether.loops import loop_factory
from tether.server import control as control_mod
from tether.server import frameworks, wire
from tether.server import sockets as sockets_mod
from tether.server.control import ControlChannel
from tether.server.fdlimit import FdLimitWatch
from tether.server.http1 import HttpProtocol
from tether.server.http2 import Http2Connection
from tether.server.lifespan import Lifespan
from tether.server.state import ServerState
from tether.server.tuning import tune_gc, tune_malloc
from tether.server.websocket import GOING_AWAY, SERVICE_RESTART, websocket_values
from tether.tls import server_context

logger = logging.getLogger("tether.server")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STARTUP_FAILED = 3
EXIT_FORCED_STOP = 4


class SupervisorGone(Exception):
    """The supervisor exited before this worker began accepting: it must not serve."""


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
            access_fields=config.access_fields,
            access_exclude=frozenset(config.access_log_exclude),
            app_state=self.lifespan.state,
            request_timeout=config.request_timeout,
            cancel_on_disconnect=config.cancel_on_disconnect,
            admission=None if config.limit_concurrency is None
            else AdmissionGate(config.limit_concurrency),
            websocket=config.websocket,
            http2=config.http2,
            forwarded_trust=config.forwarded_trust,
            defaults=wire.ResponseDefaults(server=config.server_header, date=config.date_header,
                                           headers=config.headers),
        )
        if config.framework_handlers:
            frameworks.install(app, self.state.counters)
        self.servers: list[asyncio.Server] = []
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        #: False when only this worker leaves and the others serve the shared backlog
        self.serve_backlog_on_stop = True
        self._sweeper: asyncio.TimerHandle | None = None
        self._fd_watch: FdLimitWatch | None = None
        self.ssl: ssl.SSLContext | None = None
        limits = config.limits
        # Timeouts are checked by one sweep per worker instead of a timer per request.
        self._tick = max(0.01, min(0.5, limits.header_timeout / 4, limits.keep_alive_timeout / 4,
                                   limits.body_timeout / 4))

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.state, asyncio.get_running_loop())

    async def start(self, *, supervised: bool = False) -> None:
        """Run lifespan startup, then begin accepting. Raises LifespanFailure, and
        SupervisorGone when ``supervised`` and the supervisor exited meanwhile."""
        await self.lifespan.startup()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_handshake_failures)
        self.ssl = server_ssl_context(self.config)
        for sock in self.socks:
            # The server gets a duplicate: closing it stops accepting while the
            # original keeps the kernel's backlog alive for the final drain.
            server = await loop.create_server(
                self._protocol, sock=sock.dup(), backlog=self.config.backlog, ssl=self.ssl,
                start_serving=False,
            )
            self.servers.append(server)
        # Checked last, right before the first accept can happen.
        if supervised and control_mod.supervisor_gone():
            for server in self.servers:
                server.close()
            raise SupervisorGone
        for server in self.servers:
            await server.start_serving()
        self._fd_watch = FdLimitWatch()
        self._sweep()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.state.refresh_date()
        for conn in list(self.state.connections):
            conn.check_timer(now)
        if self._fd_watch is not None and self._fd_watch.check(
            now, len(self.state.connections)
        ):
            self.state.counters["fd_limit_reached"] += 1
        self._sweeper = loop.call_later(self._tick, self._sweep)

    async def stop(self, *, serve_backlog: bool = True) -> StopReport:
        """Graceful, bounded stop. Returns what was drained and what was cancelled.

        ``serve_backlog``: also accept and serve what the kernel queued on the
        listeners. True when the whole service stops; False when only this worker
        leaves (a reload) and the others keep accepting from the shared sockets.
        """
        budget = self.config.stop_budget
        loop = asyncio.get_running_loop()
        # The grace period runs from the stop, not from the end of the backlog accept.
        graceful_until = loop.time() + budget.graceful
        state = self.state
        state.draining = True
        for conn in list(state.connections):
            conn.begin_drain()  # HTTP/2: the first GOAWAY, before the backlog is served
        served_before = state.total_requests
        for server in self.servers:
            server.close()
        if serve_backlog:
            await self._accept_backlog()
        for sock in self.socks:
            sock.close()

        # In-flight requests finish; idle keep-alive connections stay until their own
        # timer (a client may be sending its next request right now: it is answered
        # with Connection: close rather than reset).
        forced = False
        cancelled = 0
        # WebSocket sessions never end by themselves. A reload closes them with 1012
        # (Service Restart) once the requests in flight are done, and their clients
        # reconnect to the new worker; a stop leaves the application the grace
        # period, then closes them with 1001 (Going Away). Never 1006: a close frame.
        if not serve_backlog and await self._wait_requests(graceful_until):
            self._close_websockets(SERVICE_RESTART, "server restarting")
        idle = await self._wait_idle(graceful_until)
        if not idle and self._close_websockets(GOING_AWAY, "server stopping"):
            # half the cancel budget for the closing handshakes and handlers to end
            idle = await self._wait_idle(loop.time() + budget.cancel / 2)
        if not idle and state.tasks:
            forced = True
            cancelled = len(state.tasks)
            for conn in list(state.connections):
                for cycle in conn.running():
                    cycle.cancel_for_stop()  # marked: its later sends are refused
            for task in list(state.tasks):
                if not task.cancelling():  # (those just marked are cancelled already)
                    task.cancel()
            await self._wait_tasks(budget.cancel)
        # What is left now is idle (the grace period ended before its keep-alive
        # timer) or was just cancelled: close it, the grace period bounds the stop.
        for conn in list(state.connections):
            if conn.cycle is None and (not forced or conn.upgraded is None):
                conn.close()  # (after a forced stop too: the 503s written go out first)
            else:
                conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._fd_watch is not None:
            self._fd_watch.close()
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
                await loop.connect_accepted_socket(self._protocol, sock=conn, ssl=self.ssl)

    def _close_websockets(self, code: int, reason: str) -> bool:
        """Close every open WebSocket session with ``code``; False if there was none."""
        sessions = [conn for conn in self.state.connections if conn.upgraded is not None]
        for conn in sessions:
            conn.going_away(code, reason)
        return bool(sessions)

    async def _wait_requests(self, deadline: float) -> bool:
        """Wait until no HTTP request is in flight (WebSocket sessions may stay), until
        the loop time ``deadline`` (or a force stop)."""
        return await self._wait_until(
            lambda: not any(conn.cycle is not None and conn.upgraded is None
                            for conn in self.state.connections), deadline)

    async def _wait_idle(self, deadline: float) -> bool:
        """Wait until no request runs and no connection is open, until the loop time
        ``deadline`` (or a force stop)."""
        state = self.state
        return await self._wait_until(lambda: not (state.connections or state.tasks), deadline)

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``done()``; False if the loop time ``deadline`` or a force stop
        comes first."""
        loop = asyncio.get_running_loop()
        while not done():
            if self.force_requested.is_set() or loop.time() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await self.force_requested.wait()
        return True

    async def _wait_tasks(self, timeout: float) -> None:
        tasks = list(self.state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def serve(self, control: ControlChannel | None = None) -> int:
        """Start, serve until told to stop, stop gracefully; return the exit status.

        Alone (no ``control``), SIGTERM/SIGINT stop it. Under a supervisor, the
        supervisor's messages do, SIGINT is ignored (a terminal's Ctrl-C reaches the
        supervisor, which stops the workers in order) and a closed control channel
        means the supervisor is gone: stop.
        """
        loop = asyncio.get_running_loop()
        try:
            await self.start(supervised=control is not None)
        except LifespanFailure as exc:
            logger.error("%s", exc)
            return EXIT_STARTUP_FAILED
        except SupervisorGone:
            logger.warning("worker %d: its supervisor is gone; exiting without serving",
                           os.getpid())
            await self._shut_down_app()
            return EXIT_STARTUP_FAILED
        # The app has started; before this worker says it is ready (server/tuning.py)
        tune_gc()
        tune_malloc()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal)
        if control is None:
            loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        else:
            loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGQUIT, self._on_force_signal)
        async with asyncio.TaskGroup() as tasks:
            if control is None:
                for sock in self.socks:
                    logger.info("tether serving on %s",
                                sockets_mod.describe(sock, tls=self.config.tls))
            else:
                control.send("ready", pid=os.getpid())
                self._install_recycling(control)
                listener = tasks.create_task(self._follow_supervisor(control))
                beats = tasks.create_task(self._heartbeat(control))
            await self.stop_requested.wait()
            logger.info("worker %d stopping: draining in-flight requests", os.getpid())
            report = await self.stop(serve_backlog=self.serve_backlog_on_stop)
            logger.info(
                "worker %d stopped: %d requests drained, %d cancelled%s",
                os.getpid(), report.drained, report.cancelled,
                " (forced)" if report.forced else "",
            )
            if control is not None:
                beats.cancel()
                listener.cancel()
                # The last word on what this worker counted: the supervisor keeps it
                # after the process is gone, so nothing counted since the last
                # heartbeat is lost on a reload or a stop.
                control.send(
                    "stopped", drained=report.drained, cancelled=report.cancelled,
                    forced=report.forced, requests=self.state.total_requests,
                    metrics=self.metric_counters(),
                )
                await control.writer.drain()
        status = await self._shut_down_app()
        if status == EXIT_OK and report.forced:
            return EXIT_FORCED_STOP
        return status

    async def _shut_down_app(self) -> int:
        """Lifespan shutdown, bounded by the stop budget's lifespan part; the exit status."""
        limit = self.config.stop_budget.lifespan
        try:
            await asyncio.wait_for(self.lifespan.shutdown(), limit)
        except LifespanFailure as exc:
            logger.error("%s", exc)
            return EXIT_ERROR
        except TimeoutError:
            logger.error("lifespan shutdown did not finish within %.1fs (the force-exit "
                         "timeout): giving up on it", limit)
            return EXIT_FORCED_STOP
        return EXIT_OK

    def _on_stop_signal(self) -> None:
        if self.stop_requested.is_set():
            # A second SIGINT/SIGTERM means "now": skip the rest of the grace period.
            self.force_requested.set()
        self.stop_requested.set()

    def _on_force_signal(self) -> None:
        self.force_requested.set()
        self.stop_requested.set()

    async def _follow_supervisor(self, control: ControlChannel) -> None:
        while True:
            message = await control.receive()
            mtype = None if message is None else message.get("type")
            if mtype == "drain":
                self.serve_backlog_on_stop = False
                self.stop_requested.set()
            elif mtype == "force":
                self._on_force_signal()
            elif mtype == "stop" or message is None:
                self.stop_requested.set()
                if message is None:
                    return  # the supervisor is gone: nobody else will tell us anything
            else:
                logger.warning("worker %d: unknown control message %r", os.getpid(), message)

    async def _heartbeat(self, control: ControlChannel) -> None:
        # Sent from the event loop itself: a loop blocked by a stuck handler stops
        # beating, and the supervisor replaces the worker after --worker-timeout.
        interval = max(0.05, min(1.0, self.config.worker_timeout / 4))
        state = self.state
        while True:
            gauges = self.metric_gauges()
            control.send(
                "heartbeat", requests=state.total_requests, in_flight=len(state.tasks),
                connections=len(state.connections),
                websockets=int(gauges["tether_websocket_sessions"]),  # (one count, not two)
                h2_connections=int(gauges["tether_http2_connections"]),
                h2_streams=int(gauges["tether_http2_streams_open"]),
                metrics=self.metric_counters(), gauges=gauges,
                status=metrics.PROCESS.status(),
            )
            await asyncio.sleep(interval)

    def counters(self) -> dict[str, int]:
        """What cancellation, admission and the database layer did in this worker."""
        from tether import db  # the db layer is optional (asyncpg); its counters are plain

        return {**self.state.counters, **db.counters}

    def metric_counters(self) -> metrics.Values:
        """Every monotonic series this worker counted (see tether.metrics, rule 2)."""
        out = metrics.counter_values(self.counters())
        out.update(self.state.http.values())
        out.update(metrics.PROCESS.counters)
        out.update(websocket_values(self.state.websocket_counts))
        return out

    def websocket_sessions(self) -> int:
        """Open WebSocket sessions: accepted and not closed."""
        return sum(1 for conn in self.state.connections
                   if conn.upgraded is not None and conn.upgraded.is_open)

    def http2_counts(self) -> tuple[int, int]:
        """Open HTTP/2 connections, and their open streams."""
        connections = streams = 0
        for conn in self.state.connections:
            if isinstance(conn, Http2Connection):
                connections += 1
                streams += conn.open_streams
        return connections, streams

    def metric_gauges(self) -> metrics.Values:
        state = self.state
        h2_connections, h2_streams = self.http2_counts()
        return {
            "tether_http2_connections": h2_connections,
            "tether_http2_streams_open": h2_streams,
            "tether_http_requests_in_flight": len(state.tasks),
            "tether_http_connections": len(state.connections),
            "tether_websocket_sessions": self.websocket_sessions(),
            **metrics.PROCESS.gauges(),
        }

    def _install_recycling(self, control: ControlChannel) -> None:
        limit = self.config.max_requests
        if limit is None:
            return
        limit += random.randint(0, self.config.max_requests_jitter)
        state = self.state

        def count() -> None:
            if state.total_requests == limit:
                logger.info("worker %d served %d requests: asking to be recycled",
                            os.getpid(), limit)
                control.send("recycle", requests=limit)

        state.on_request_done = count


#: what ALPN offers for each --http mode, most preferred first
ALPN: dict[str, tuple[str, ...]] = {
    "auto": ("h2", "http/1.1"), "1": ("http/1.1",), "2": ("h2",)}


def server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's TLS context from ``--ssl-*``, or None for plain HTTP."""
    if config.ssl_certfile is None:
        return None
    return server_context(
        config.ssl_certfile, config.ssl_keyfile, password=config.ssl_keyfile_password,
        ca_certs=config.ssl_ca_certs, cert_reqs=config.ssl_cert_reqs, ciphers=config.ssl_ciphers,
        alpn=ALPN[config.http2.mode],
    )


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A client that fails the TLS handshake (wrong CA, plain HTTP on the TLS port, a
    # scanner) concerns only itself: one debug line, never an error on every attempt.
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionResetError) or "handshake" in str(
        context.get("message", "")
    ):
        logger.debug("TLS handshake failed: %s", exc or context.get("message"))
        return
    loop.default_exception_handler(context)


async def _receive_secrets(control: ControlChannel, config: ServerConfig) -> ServerConfig:
    """The supervisor's first message carries what may not travel in the environment
    (the TLS key password, the admin token). A supervisor already gone sends
    nothing: the worker then finds it gone before accepting (control.py)."""
    message = await control.receive()
    if message is None or message.get("type") != "secrets":
        return config
    secrets: dict[str, Any] = {name: message.get(name) for name in SECRET_FIELDS}
    return replace(config, **secrets)


def run_worker(
    config: ServerConfig, socks: list[socket.socket], control_sock: socket.socket | None = None
) -> int:
    """Import the app and serve it on ``socks`` in a fresh event loop; return the exit status."""
    try:
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    except AppImportError as exc:
        cause = exc.__cause__
        logger.error("%s", exc, exc_info=cause if cause is not None else None)
        return EXIT_STARTUP_FAILED

    async def main() -> int:
        control = None if control_sock is None else await ControlChannel.open(control_sock)
        settings = config
        if control is not None:
            settings = await _receive_secrets(control, config)
        worker = Worker(app, settings, socks)
        try:
            return await worker.serve(control)
        finally:
            if control is not None:
                await control.close()

    with asyncio.Runner(loop_factory=loop_factory(config.loop)) as runner:
        return runner.run(main())


def worker_main() -> None:
    """Entry point of a worker process started by the supervisor (see control.py)."""
    title = os.environ.get(control_mod.ENV_WORKER_TITLE)
    if title:
        setproctitle(title)  # first: `ps` says what this is even while the app imports
    config = ServerConfig.from_json(os.environ[control_mod.ENV_CONFIG])
    try:
        configure_for(config)
    except LogConfigError as exc:
        # The supervisor checked the file at start; it changed since (a reload).
        # A dictConfig may have failed halfway: set tether's own handlers again.
        configure_for(replace(config, log_config=None))
        logger.error("%s; this worker keeps tether's default logging", exc)
    fds = os.environ[control_mod.ENV_LISTEN_FDS].split(",")
    socks = [socket.socket(fileno=int(fd)) for fd in fds]
    control_sock = socket.socket(fileno=int(os.environ[control_mod.ENV_CONTROL_FD]))
    sys.exit(run_worker(config, socks, control_sock))
