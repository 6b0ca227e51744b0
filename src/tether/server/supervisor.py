"""The supervisor: bind once, spawn and watch workers, replace them one at a time, stop in order.

Field report 3 (docs/incidents.md, Granian) is why the supervisor owns the listening sockets and the
workers only accept: a worker that leaves takes no queued connection with it.
Field report 2 (SPIRE) is why a stop is graceful and bounded, and covers every
listener the process owns (service sockets and the admin port) under one deadline.

Must never import the application (a reload must load new code from disk), never
close the service sockets while a worker may still accept from them, and never
let a worker that keeps failing make it spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tether import admin, metrics
from tether.backoff import Backoff
from tether.config import SECRET_ENV, SECRET_FIELDS, ServerConfig
from tether.errors import ConfigError
from tether.proctitle import worker_title
from tether.registry import Registration, Registry, RegistryError, open_registry
from tether.registry.urls import redact
from tether.server import control as control_mod
from tether.server import history, reloader
from tether.server import sockets as sockets_mod
from tether.server.control import ControlChannel
from tether.server.lifecycle import (
    BOUNDS,
    RESTART_BACKOFF,
    Bound,
    ExitKind,
    WorkerEvent,
    WorkerLimits,
    WorkerState,
    deadline,
    exit_kind,
    transition,
)
from tether.server.worker import (
    EXIT_ERROR,
    EXIT_FORCED_STOP,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    Worker,
)
from tether.tasks import cancel_and_wait

logger = logging.getLogger("tether.supervisor")

WORKER_ENTRY = "from tether.server.worker import worker_main; worker_main()"

#: what the supervisor tells a worker when it must leave
LEAVE_MESSAGES = {WorkerEvent.DRAIN_SENT: "drain", WorkerEvent.STOP_SENT: "stop"}
#: retries of a registration that failed at start (the service serves meanwhile)
REGISTER_BACKOFF = Backoff(initial=0.2, maximum=10.0)
#: how long a stop waits for the kernel to reap a worker it killed before giving up on it
REAP_TIMEOUT = 5.0


@dataclass(eq=False)
class WorkerHandle:
    """The supervisor's view of one worker process."""

    id: int
    proc: asyncio.subprocess.Process
    control: ControlChannel
    started_at: float
    ready: asyncio.Future[bool]
    exited: asyncio.Future[int]
    state: WorkerState = WorkerState.STARTING
    #: loop time it entered ``state`` (a leaving worker: when first told to leave)
    entered_at: float = 0.0
    last_beat: float = 0.0
    requests: int = 0
    in_flight: int = 0
    recycle_requested: bool = False
    killed: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    connections: int = 0
    websockets: int = 0
    #: open HTTP/2 connections and their open streams
    h2_connections: int = 0
    h2_streams: int = 0
    #: the worker's Prometheus series: monotonic ones, and gauges (tether.metrics)
    metrics: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    #: the clusters and pools of the worker's clients, as its last heartbeat saw them
    status: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the newest provider state change taken from its heartbeats (wall clock)
    timeline_seen: float = 0.0

    @property
    def label(self) -> str:
        return f"worker {self.id} (pid {self.proc.pid})"


class Supervisor:
    """Runs ``config.workers`` worker processes on the given listening sockets."""

    def __init__(
        self,
        config: ServerConfig,
        socks: list[socket.socket],
        admin_sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.socks = socks
        self.admin_sock = admin_sock
        self.workers: dict[int, WorkerHandle] = {}
        self.stopping = False
        self.exit_code = EXIT_OK
        self.reloads_done = 0
        self.started_at = time.monotonic()
        self._next_id = 1
        self._start_failures = 0
        self._pending_reloads = 0
        self._rolling = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._force_requested = asyncio.Event()
        #: every task the supervisor starts, cancelled and awaited at the end of a stop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._limits = WorkerLimits.from_config(config)
        #: set when a worker's bound may have moved earlier: the watchdog looks again
        self._bounds_changed = asyncio.Event()
        self._admin: Worker | None = None
        self._registry: Registry | None = None
        self._registration: Registration | None = None
        self._registering: asyncio.Task[None] | None = None
        self._forced = False
        self._metrics = metrics.Aggregate()
        #: the supervisor's own series: worker starts, exits, stops, reloads
        self._own: Counter[str] = Counter()
        self._drained = 0
        self._cancelled = 0
        #: ends the --reload watch
        self._stop_watching: asyncio.Event | None = None
        #: the dashboard's memory: traffic samples, worker lifecycle, providers' changes
        self.traffic = history.TrafficHistory()
        self.worker_events = history.EventLog()
        self.provider_changes = history.EventLog()

    # -- running ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGQUIT, self.request_force)
        self._spawn_task(self._watchdog())  # bounds every worker from its spawn on
        await self._start_admin()
        if self.admin_sock is not None:
            self._spawn_task(self._sample_traffic())
        if not await self._boot():
            await self._stop()
            return EXIT_STARTUP_FAILED
        for sock in self.socks:
            logger.info("tether serving on %s", sockets_mod.describe(sock, tls=self.config.tls))
        logger.info("%d worker(s) ready", len(self.workers))
        if self.config.registry is not None:
            if self.config.registry_required:
                if not await self._register_once(log_failure=True):
                    await self._stop()
                    return EXIT_ERROR
            else:
                self._registering = asyncio.get_running_loop().create_task(
                    self._register_until_done())
        self._spawn_task(self._follow_reloads())
        if self.config.reload:
            self._spawn_task(self._reload_on_changes())
        await self._stop_requested.wait()
        return await self._stop()

    def request_reload(self) -> None:
        """SIGHUP: queue one full rolling reload (each request is carried out)."""
        if self.stopping:
            return
        self._pending_reloads += 1
        self._wakeup.set()

    def request_code_reload(self, paths: list[Path], root: Path) -> None:
        """--reload: files changed. One rolling reload, however many saves come
        while one is pending (each new worker imports the newest code anyway)."""
        if self.stopping:
            return
        logger.info("changes in %s: reloading", reloader.describe(paths, root))
        self._pending_reloads = max(self._pending_reloads, 1)
        self._wakeup.set()

    async def _reload_on_changes(self) -> None:
        config = self.config
        dirs = reloader.watch_dirs(config.reload_dirs, config.app_dir)
        accept = reloader.FileFilter(config.reload_includes, config.reload_excludes)
        logger.info("watching %s for changes (--reload: for development, not production)",
                    ", ".join(map(str, dirs)))
        stop = asyncio.Event()
        self._stop_watching = stop
        await reloader.watch(dirs, accept, lambda paths: self.request_code_reload(
            paths, dirs[0]), stop)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: graceful stop; a second one forces it."""
        if self._stop_requested.is_set():
            self.request_force()
        self._stop_requested.set()

    def request_force(self) -> None:
        """SIGQUIT, or a second SIGINT: cancel what is running now and exit."""
        self._force_requested.set()
        self._stop_requested.set()
        for worker in list(self.workers.values()):
            worker.control.send("force")

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _boot(self) -> bool:
        started = [await self._spawn() for _ in range(self.config.workers)]
        results = await asyncio.gather(*(self._wait_ready(w) for w in started))
        if all(results):
            return True
        logger.error("a worker failed to start; not serving (see the worker's error above)")
        return False

    # -- workers -------------------------------------------------------------------

    async def _spawn(self) -> WorkerHandle:
        parent, child = socket.socketpair()
        worker_id = self._next_id
        self._next_id += 1
        fds = [s.fileno() for s in self.socks]
        env = {
            **{k: v for k, v in os.environ.items() if k not in SECRET_ENV},
            control_mod.ENV_CONFIG: self.config.to_json(),
            control_mod.ENV_LISTEN_FDS: ",".join(map(str, fds)),
            control_mod.ENV_CONTROL_FD: str(child.fileno()),
            control_mod.ENV_WORKER_ID: str(worker_id),
            control_mod.ENV_SUPERVISOR_PID: str(os.getpid()),
            control_mod.ENV_WORKER_TITLE: worker_title(
                self.config.app, self.config.service, worker_id),
        }
        if self.config.reload:
            # Python trusts a .pyc whose source kept its size and mtime second: an edit
            # saved within a second of the last import could load the old code.
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        # A new session: a terminal's Ctrl-C reaches only the supervisor, which then
        # stops the workers in order instead of every process racing on its own.
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER_ENTRY,
                pass_fds=[*fds, child.fileno()], env=env, start_new_session=True,
            )
        finally:
            child.close()
        try:
            control = await ControlChannel.open(parent)
            # The first message, always: what may not travel in the environment.
            control.send("secrets", **{name: getattr(self.config, name)
                                      for name in SECRET_FIELDS})
        except BaseException:
            # Cancelled (a stop) or failed before the worker has a handle: no one
            # else knows about this process, so it must not outlive this call.
            parent.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        loop = asyncio.get_running_loop()
        now = loop.time()
        handle = WorkerHandle(
            id=worker_id, proc=proc, control=control,
            started_at=time.monotonic(), ready=loop.create_future(),
            exited=loop.create_future(), entered_at=now, last_beat=now,
        )
        self.workers[worker_id] = handle
        self._own["tether_worker_starts_total"] += 1
        self._worker_event(handle, "spawned")
        self._spawn_task(self._watch(handle))
        self._bounds_changed.set()
        logger.info("%s started", handle.label)
        if self.stopping:  # spawned by a reload or a respawn that a stop overtook
            self._leave(handle, WorkerEvent.STOP_SENT)
        return handle

    async def _wait_ready(self, worker: WorkerHandle) -> bool:
        """True once ``worker`` is ready; False if it exits first (the watchdog kills
        one still starting after --worker-start-timeout)."""
        return await asyncio.shield(worker.ready)

    async def _watch(self, worker: WorkerHandle) -> None:
        while (message := await worker.control.receive()) is not None:
            self._on_message(worker, message)
        code = await worker.proc.wait()
        await worker.control.close()
        self._on_exit(worker, code)

    def _on_message(self, worker: WorkerHandle, message: dict[str, Any]) -> None:
        mtype = message.get("type")
        if mtype == "heartbeat":
            worker.last_beat = asyncio.get_running_loop().time()
            worker.requests = int(message.get("requests", 0))
            worker.in_flight = int(message.get("in_flight", 0))
            worker.connections = int(message.get("connections", 0))
            worker.websockets = int(message.get("websockets", 0))
            worker.h2_connections = int(message.get("h2_connections", 0))
            worker.h2_streams = int(message.get("h2_streams", 0))
            worker.metrics = dict(message.get("metrics", {}))
            worker.gauges = dict(message.get("gauges", {}))
            worker.status = dict(message.get("status", {}))
            self._take_timelines(worker)
        elif mtype == "ready":
            worker.last_beat = asyncio.get_running_loop().time()
            # A worker told to leave before it was ready stays leaving: it reads the
            # message already sent as soon as it listens to the channel.
            if self._set_state(worker, WorkerEvent.REPORTED_READY):
                self._start_failures = 0
                logger.info("%s ready", worker.label)
                if not worker.ready.done():
                    worker.ready.set_result(True)
        elif mtype == "recycle":
            if not worker.recycle_requested and not self.stopping:
                worker.recycle_requested = True
                self._spawn_task(self._recycle(worker, int(message.get("requests", 0))))
        elif mtype == "stopped":
            worker.report = message
            # The final counts, newer than the last heartbeat's.
            worker.metrics = dict(message.get("metrics", worker.metrics))
            # It serves no more: its gauges (in flight, connections) no longer hold.
            worker.gauges = {}
            worker.status = {}
        else:
            logger.warning("%s sent an unknown control message %r", worker.label, message)

    def _on_exit(self, worker: WorkerHandle, code: int) -> None:
        kind = exit_kind(worker.state)
        self._set_state(worker, WorkerEvent.EXITED)
        self.workers.pop(worker.id, None)
        if not worker.ready.done():
            worker.ready.set_result(False)
        worker.exited.set_result(code)
        self._metrics.retire(worker.metrics)  # counts outlive the worker
        drained = int(worker.report.get("drained", 0))
        cancelled = int(worker.report.get("cancelled", 0))
        self._drained += drained
        self._cancelled += cancelled
        self._count_exit(worker, kind, code, drained, cancelled)
        if self.stopping and (
            worker.killed or worker.report.get("forced") or code == EXIT_FORCED_STOP
        ):
            self._forced = True
        status = f"signal {-code}" if code < 0 else f"status {code}"
        if kind is ExitKind.EXPECTED:
            logger.info("%s exited with %s", worker.label, status)
        elif kind is ExitKind.START_FAILED:
            logger.error("%s failed to start: exited with %s", worker.label, status)
        else:
            logger.error("%s crashed: exited with %s", worker.label, status)
            if not self.stopping:
                self._spawn_task(self._respawn())

    def _set_state(self, worker: WorkerHandle, event: WorkerEvent) -> bool:
        """Apply ``event`` (lifecycle.TRANSITIONS); True if the state changed."""
        state = transition(worker.state, event)
        if state is worker.state:
            return False
        worker.state = state
        worker.entered_at = asyncio.get_running_loop().time()
        self._bounds_changed.set()
        self._worker_event(worker, event.value)
        return True

    def _worker_event(self, worker: WorkerHandle, why: str) -> None:
        self.worker_events.add({"t": round(time.time(), 3), "worker": worker.id,
                                "pid": worker.proc.pid, "state": worker.state.value,
                                "reason": why})

    def _take_timelines(self, worker: WorkerHandle) -> None:
        """Move the providers' state changes of a heartbeat into the supervisor's
        timeline (each change once: a heartbeat repeats a cluster's recent ones)."""
        seen = worker.timeline_seen
        for cluster in worker.status.get("clusters", []):
            for change in cluster.pop("timeline", ()):
                if change["t"] > seen:
                    self.provider_changes.add(
                        {**change, "worker": worker.id, "service": cluster["service"]})
                    worker.timeline_seen = max(worker.timeline_seen, change["t"])

    async def _sample_traffic(self) -> None:
        """One traffic sample a second for the dashboard, while the supervisor runs."""
        while True:
            self.traffic.sample(self._totals(list(self.workers.values())), time.time())
            await asyncio.sleep(1.0)

    def dashboard_data(self) -> dict[str, Any]:
        """``/dashboard/data``: the present (``/status``) and the recent past."""
        return {
            "now": round(time.time(), 3),
            "status": self.status(),
            "history": self.traffic.as_json(),
            "timeline": self.provider_changes.as_json(),
            "worker_events": self.worker_events.as_json(),
        }

    def _leave(self, worker: WorkerHandle, event: WorkerEvent) -> None:
        """Tell a worker to leave: DRAIN_SENT (the others keep serving) or STOP_SENT
        (the service stops). A worker already leaving is told nothing new: its stop
        budget keeps running from the first message."""
        if self._set_state(worker, event):
            worker.control.send(LEAVE_MESSAGES[event])
            logger.info("%s %s", worker.label, worker.state.value)

    def _kill(self, worker: WorkerHandle) -> None:
        worker.killed = True
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()

    def _deadline(self, worker: WorkerHandle) -> float | None:
        return deadline(worker.state, entered_at=worker.entered_at,
                        last_beat=worker.last_beat, limits=self._limits)

    async def _watchdog(self) -> None:
        """Kill every worker past its state's bound (lifecycle.BOUNDS): starting too
        long, silent while ready, or still there when its stop budget is spent.
        Sleeps until the next bound falls due or a state changes; runs until the
        stop cancels it, after the last worker has exited."""
        loop = asyncio.get_running_loop()
        while True:
            self._bounds_changed.clear()
            now = loop.time()
            upcoming: list[float] = []
            for worker in list(self.workers.values()):
                due = None if worker.killed else self._deadline(worker)
                if due is None:
                    continue
                if now >= due:
                    self._kill_overdue(worker, now)
                else:
                    upcoming.append(due)
            # A heartbeat only moves a bound later: waking at the old one is enough.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(upcoming) if upcoming else None):
                    await self._bounds_changed.wait()

    def _kill_overdue(self, worker: WorkerHandle, now: float) -> None:
        bound = BOUNDS[worker.state]
        limits = self._limits
        if bound is Bound.START:
            logger.error("%s did not become ready within %.1fs: killing it",
                         worker.label, limits.start)
        elif bound is Bound.HEARTBEAT:
            logger.error("%s sent no heartbeat for %.1fs: killing it",
                         worker.label, now - worker.last_beat)
        else:
            logger.error("%s did not stop within its stop budget (%.1fs): killing it",
                         worker.label, limits.stop)
        self._kill(worker)

    async def _respawn(self) -> None:
        """Replace a crashed worker, backing off while replacements keep failing."""
        async with self._rolling:
            while not self.stopping:
                delay = RESTART_BACKOFF.delay(self._start_failures)
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_requested.wait(), delay)
                    if self.stopping:
                        return
                if await self._wait_ready(await self._spawn()):
                    return
                self._start_failures += 1
                if self._start_failures >= self.config.max_start_failures:
                    logger.error(
                        "workers failed to start %d times in a row: giving up",
                        self._start_failures,
                    )
                    self.exit_code = EXIT_STARTUP_FAILED
                    self._stop_requested.set()
                    return

    async def _replace(self, old: WorkerHandle) -> bool:
        """Start a replacement, wait until it is ready, then drain ``old``."""
        new = await self._spawn()
        if not await self._wait_ready(new):
            return False
        if old.state is WorkerState.READY:
            self._leave(old, WorkerEvent.DRAIN_SENT)
        return True

    async def _follow_reloads(self) -> None:
        while not self.stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending_reloads and not self.stopping:
                self._pending_reloads -= 1
                await self._reload()

    async def _reload(self) -> None:
        async with self._rolling:
            old = [w for w in self.workers.values() if w.state is WorkerState.READY]
            logger.info("reload begun: replacing %d worker(s) one at a time", len(old))
            for worker in old:
                if self.stopping:
                    return
                if worker.state is not WorkerState.READY:
                    continue  # crashed or recycled meanwhile; already replaced
                if not await self._replace(worker):
                    if self.stopping:
                        return  # the stop stopped the new worker: nothing failed
                    logger.error(
                        "reload aborted: a new worker failed to start; "
                        "the old workers keep serving"
                    )
                    return
            self.reloads_done += 1
            self._own["tether_reloads_total"] += 1
            logger.info("reload finished")

    async def _recycle(self, worker: WorkerHandle, requests: int) -> None:
        async with self._rolling:
            if worker.state is not WorkerState.READY or self.stopping:
                return
            logger.info("%s recycling after %d requests", worker.label, requests)
            if not await self._replace(worker) and not self.stopping:
                logger.error("%s: its replacement failed to start; it keeps serving",
                             worker.label)

    # -- the service registry -----------------------------------------------------------

    def advertised_address(self) -> str:
        """What clients should dial: --advertise, else the first TCP listener."""
        if self.config.advertise:
            return self.config.advertise
        for sock in self.socks:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host, port = sock.getsockname()[:2]
                if host in ("0.0.0.0", "::"):
                    host = "127.0.0.1"
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError("--registry with only Unix sockets needs --advertise HOST:PORT")

    async def _register_once(self, *, log_failure: bool) -> bool:
        config = self.config
        assert config.registry is not None and config.service is not None
        try:
            if self._registry is None:
                self._registry = open_registry(config.registry)
            self._registration = await asyncio.wait_for(self._registry.register(
                config.service, self.advertised_address(), dict(config.meta),
                config.registry_ttl,
            ), timeout=5.0)
        except (RegistryError, OSError, TimeoutError) as exc:
            if log_failure:
                logger.error("cannot register %s in %s: %s", config.service,
                             redact(config.registry), exc or type(exc).__name__)
            return False
        except Exception as exc:
            # Not the registry's answer: the client library itself failed (a broken
            # install, a module shadowing one it imports). Said once, with the cause,
            # and retried like any failure: never a silently dead registration task.
            if log_failure:
                logger.error("cannot register %s in %s: %s: %s", config.service,
                             redact(config.registry), type(exc).__name__, exc,
                             exc_info=exc)
            return False
        logger.info("registered %s at %s in %s", config.service,
                    self._registration.provider.address, redact(config.registry))
        return True

    async def _register_until_done(self) -> None:
        """Serve meanwhile; retry with capped backoff; say it once, not per try."""
        failures = 0
        while not self.stopping:
            if await self._register_once(log_failure=failures == 0):
                if failures:
                    logger.info("the registry is reachable again")
                return
            if not failures:
                logger.warning("serving without being registered; retrying in the background")
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(),
                                       REGISTER_BACKOFF.delay(failures))

    async def _leave_registry(self) -> None:
        """First step of a stop: no new traffic is sent our way while we drain."""
        task, self._registering = self._registering, None
        if task is not None:
            # A registration still in flight must not land after we left: stop it;
            # if it completed meanwhile, it is deregistered just below.
            for error in await cancel_and_wait([task]):
                logger.warning("registering failed: %r", error)
        registry, registration = self._registry, self._registration
        self._registration = None
        if registry is None:
            return
        if registration is not None:
            try:
                await asyncio.wait_for(registry.deregister(registration), timeout=2.0)
                logger.info("deregistered %s", registration.provider.address)
            except (RegistryError, OSError, TimeoutError) as exc:
                logger.warning("could not deregister (the entry will expire): %s", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(registry.close(), timeout=2.0)

    # -- stopping ------------------------------------------------------------------

    async def _stop(self) -> int:
        """Stop every worker under the one stop budget, then the admin listener.

        Each worker is bounded by the watchdog (its stop budget runs from the first
        drain or stop it was sent), so this only tells, waits, and cleans up: every
        task the supervisor started is cancelled and awaited before it returns.
        """
        self.stopping = True  # /readyz says 503 from now on
        self._wakeup.set()
        if self._stop_watching is not None:
            self._stop_watching.set()  # --reload: the watch ends before its task is cancelled
        await self._leave_registry()
        loop = asyncio.get_running_loop()
        stop_deadline = loop.time() + self.config.stop_budget.total
        logger.info("stop begun: %d worker(s) draining", len(self.workers))
        # Close our copies first: once the workers close theirs, new connections are
        # refused by the kernel instead of queueing where no one will accept them.
        for sock in self.socks:
            sock.close()
        for worker in list(self.workers.values()):
            self._leave(worker, WorkerEvent.STOP_SENT)
        if self._force_requested.is_set():
            for worker in list(self.workers.values()):
                worker.control.send("force")
        await self._wait_workers_exited()
        for error in await cancel_and_wait(list(self._tasks)):
            logger.error("supervisor task failed: %r", error, exc_info=error)
        if self._admin is not None:
            remaining = max(0.1, stop_deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admin.stop(serve_backlog=False), remaining)
        forced = self._forced
        logger.info(
            "stop finished: %d request(s) drained, %d cancelled%s",
            self._drained, self._cancelled, " (forced)" if forced else "",
        )
        if self.exit_code != EXIT_OK:
            return self.exit_code
        return EXIT_FORCED_STOP if forced else EXIT_OK

    async def _wait_workers_exited(self) -> None:
        """Until no worker is left, including one a reload spawned during the stop
        (it is told to stop at once). The watchdog kills each at its bound; a worker
        the kernel still has not reaped well after that is given up on, loudly."""
        loop = asyncio.get_running_loop()
        while self.workers:
            workers = list(self.workers.values())
            bounds = [due for w in workers if (due := self._deadline(w)) is not None]
            wait = max([0.0, *(due - loop.time() for due in bounds)]) + REAP_TIMEOUT
            done, _ = await asyncio.wait({w.exited for w in workers}, timeout=wait)
            if not done:
                logger.error("%d worker(s) still there after being killed: giving up on them",
                             len(workers))
                self._forced = True
                return

    # -- admin -----------------------------------------------------------------------

    async def _start_admin(self) -> None:
        if self.admin_sock is None:
            return
        app = admin.admin_app(self.status, self.is_ready, self.metrics_text,
                              self.dashboard_data, allowed_hosts=self.config.admin_allow_hosts,
                              token=self.config.admin_token)
        config = replace(
            self.config, app="tether.admin:app", lifespan="off", access_log=False,
            graceful_timeout=self.config.graceful_timeout,
            limits=replace(self.config.limits, keep_alive_timeout=1.0),
        )
        self._admin = Worker(app, config, [self.admin_sock])
        await self._admin.start()
        logger.info("admin listening on %s",
                    sockets_mod.describe(self.admin_sock, tls=self.config.tls))

    def is_ready(self) -> bool:
        ready = [w for w in self.workers.values() if w.state is WorkerState.READY]
        return not self.stopping and len(ready) >= self.config.workers

    def _count_exit(
        self, worker: WorkerHandle, kind: ExitKind, code: int, drained: int, cancelled: int
    ) -> None:
        own = self._own
        own[metrics.series("tether_worker_exits_total", kind=kind.name.lower())] += 1
        if kind is ExitKind.EXPECTED:  # it was asked to stop (drain, stop, recycle)
            forced = worker.killed or bool(worker.report.get("forced")) \
                or code == EXIT_FORCED_STOP
            own[metrics.series("tether_worker_stops_total",
                               outcome="forced" if forced else "drained")] += 1
            own['tether_stop_requests_total{outcome="drained"}'] += drained
            own['tether_stop_requests_total{outcome="cancelled"}'] += cancelled

    def _totals(self, live: list[WorkerHandle]) -> metrics.Values:
        """Every series: the workers' (live and exited) and the supervisor's own."""
        gauges = [w.gauges for w in live]
        by_state = Counter(w.state.value for w in live)
        gauges.append({metrics.series("tether_workers", state=s): n
                       for s, n in by_state.items()})
        return self._metrics.total([w.metrics for w in live], gauges, self._own)

    def metrics_text(self) -> bytes:
        """``/metrics``: every worker's series (live and exited) and the supervisor's."""
        return metrics.render(self._totals(list(self.workers.values())))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        live = sorted(self.workers.values(), key=lambda w: w.id)
        values = self._totals(live)
        return {
            "pid": os.getpid(),
            "state": "stopping" if self.stopping else "serving",
            "uptime_seconds": round(now - self.started_at, 3),
            "reloads": self.reloads_done,
            # every worker process started (replacements included) and those that crashed
            "worker_starts": int(self._own["tether_worker_starts_total"]),
            "worker_crashes": int(self._own[
                metrics.series("tether_worker_exits_total", kind="crashed")]),
            "registered": None if self._registration is None
            else self._registration.provider.address,
            # cancellation, admission and database counts, summed over every worker
            # (exited ones too), by their plain names
            "counters": metrics.plain_counters(values),
            "workers": [
                {
                    "id": w.id,
                    "pid": w.proc.pid,
                    "state": w.state.value,
                    "age_seconds": round(now - w.started_at, 3),
                    "requests": w.requests,
                    "in_flight": w.in_flight,
                    "connections": w.connections,
                    "websockets": w.websockets,
                    "h2_connections": w.h2_connections,
                    "h2_streams": w.h2_streams,
                    "clusters": w.status.get("clusters", []),
                    "pools": w.status.get("pools", []),
                }
                for w in live
            ],
            **self._clusters_and_pools(live, values),
        }

    def _clusters_and_pools(
        self, live: list[WorkerHandle], values: metrics.Values
    ) -> dict[str, Any]:
        """Clusters: providers' states as the ready workers see them, counts over every
        worker (exited ones too). Pools, per upstream origin: counts over every
        worker, and the connections the live ones hold now."""
        ready = [w for w in live if w.state is WorkerState.READY]
        clusters = merged_clusters(w.status.get("clusters", []) for w in ready)
        for cluster in clusters:
            for what in ("requests", "ejections", "evictions", "retries"):
                key = metrics.series(f"tether_cluster_{what}_total", cluster=cluster["service"])
                cluster[what] = int(values.get(key, 0))
        pools: dict[str, dict[str, Any]] = {}

        def pool(origin: str) -> dict[str, Any]:
            return pools.setdefault(origin, {
                "origin": origin, "requests": 0, "connections_opened": 0,
                "reuse_ratio": None, "idle": 0, "active": 0,
            })

        for key, value in values.items():
            name, labels = metrics.parse_series(key)
            if "origin" not in labels:
                continue
            entry = pool(labels["origin"])
            if name == "tether_client_requests_total":
                entry["requests"] = int(value)
            elif name == "tether_client_connections_opened_total":
                entry["connections_opened"] = int(value)
            elif name == "tether_client_connection_reuse_ratio":
                entry["reuse_ratio"] = round(value, 4)
            elif name == "tether_client_connections" and labels.get("state") in ("idle",
                                                                                  "active"):
                entry[labels["state"]] = int(value)
        return {"clusters": clusters, "pools": [pools[o] for o in sorted(pools)]}


def merged_clusters(per_worker: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per service over every live worker: each provider's states as counts
    of workers ("alive": 2), its most failures in a row and its soonest next probe as
    any worker sees them; the services' counts summed, the smallest retry budget."""
    merged: dict[str, dict[str, Any]] = {}
    for clusters in per_worker:
        for cluster in clusters:
            entry = merged.setdefault(cluster["service"], {
                "service": cluster["service"], "providers": {},
                "ejections": 0, "evictions": 0, "retries": 0, "requests": 0,
                "retry_budget": None,
            })
            for key in ("ejections", "evictions", "retries", "requests"):
                entry[key] += int(cluster.get(key, 0))
            budget = cluster.get("retry_budget")
            if budget is not None:
                entry["retry_budget"] = budget if entry["retry_budget"] is None \
                    else min(budget, entry["retry_budget"])
            for provider in cluster.get("providers", []):
                seen = entry["providers"].setdefault(provider["address"], {
                    "address": provider["address"], "states": Counter(), "failures": 0,
                    "next_probe_in": None})
                seen["states"][provider["state"]] += 1
                seen["failures"] = max(seen["failures"], int(provider.get("failures", 0)))
                probe = provider.get("next_probe_in")
                if probe is not None and (seen["next_probe_in"] is None
                                          or probe < seen["next_probe_in"]):
                    seen["next_probe_in"] = probe
    out = []
    for service in sorted(merged):
        entry = merged[service]
        entry["providers"] = [
            {**seen, "states": dict(seen["states"])}
            for _, seen in sorted(entry["providers"].items())
        ]
        out.append(entry)
    return out


def run_supervisor(
    config: ServerConfig, socks: list[socket.socket], admin_sock: socket.socket | None = None
) -> int:
    """Run the supervisor until it stops; return the process exit status."""
    if config.pid_file:
        with open(config.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        with asyncio.Runner() as runner:
            return runner.run(Supervisor(config, socks, admin_sock).run())
    except Exception:
        logger.exception("supervisor failed")
        return EXIT_ERROR
    finally:
        removable = [config.pid_file]
        if config.uds and config.fd is None:
            removable.append(config.uds)  # the socket file we bound, as uvicorn does
        for path in removable:
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
