"""``client.service(name)``: a Cluster, the I/O side of the provider state machine.

It feeds :class:`~tether.client.providers.ProviderStateMachine` with registry
snapshots and the typed outcome of every probe and request, carries out its actions
(probe, close, log), balances requests over alive providers and resends safely on a
*different* one. It reaches its client only through a :class:`ClientLink`.

Must never judge a provider itself (the state machine does, from what was seen),
never hang when no provider is alive (:class:`NoProviderAvailable` at once), never
retry past the request's deadline or the retry budget, and never let a provider that
left the registry keep a pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from tether import metrics
from tether.client.balancer import Balancer
from tether.client.errors import HTTPError, TransportError
from tether.client.models import Origin, Response, origin_form
from tether.client.providers import (
    Action,
    Answered,
    Close,
    ClusterConfig,
    ConnectFailed,
    Log,
    Probe,
    Probed,
    ProviderState,
    ProviderStateMachine,
    outcome_of,
)
from tether.client.raw import SMALL_BODY, RawResponse, is_small
from tether.client.retries import RETRYABLE_STATUS, RetryBudget, may_resend
from tether.client.websocket import Connecting, WebSocketRejected
from tether.deadline import current_deadline
from tether.errors import ServiceUnavailable
from tether.registry.base import Provider, Snapshot, Unreachable
from tether.tasks import cancel_and_wait

if TYPE_CHECKING:
    from tether.client.connection import Body
    from tether.client.websocket import WebSocket
    from tether.registry.base import Registry

__all__ = ["ClientLink", "Cluster", "ClusterConfig", "NoProviderAvailable", "ProviderState"]

logger = logging.getLogger("tether.cluster")


class _Answer(Protocol):
    """What the request cycle needs of a response: a Response or a RawResponse."""

    @property
    def status_code(self) -> int: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


_R = TypeVar("_R", bound=_Answer)


@dataclass(frozen=True, slots=True)
class ClientLink:
    """Everything a cluster may ask of its client; the client builds it (bound methods,
    so a request pays no extra call), a test may build one of fakes."""

    #: one attempt: ``send(method, origin, target, url, **options)``, returning once
    #: the response head is in. The origin (where it connects) and the origin-form
    #: target are given apart and never re-parsed from one string. Options are
    #: ``Client.request``'s but params: headers, content, data, json, timeout,
    #: sni_hostname.
    send: Callable[..., Awaitable[Response]]
    #: bound the block by the current deadline; cancelling it closes the connection
    #: in flight
    deadline_scope: Callable[[], AbstractAsyncContextManager[None]]
    #: ``probe(origin_url, target, timeout)``: ``GET target`` (``OPTIONS *`` when the
    #: target is ``*``) at ``origin_url`` (``http://host:port``), bounded by timeout
    #: seconds, on a connection reserved for probes, never waiting behind the
    #: requests' pool; returns the status code
    probe: Callable[[str, str, float], Awaitable[int]]
    #: a provider left: close its idle connections now, its busy ones once released
    retire: Callable[[str, int], None]
    #: a provider is about to be probed: its connections may be pooled again, and its
    #: idle ones that died meanwhile (a killed provider's) are closed now
    probing: Callable[[str, int], None]
    #: one WebSocket handshake: ``websocket(origin, target, url, **options)``, returning
    #: the open session (options: ``Client.websocket``'s but params, and ``on_close``)
    websocket: Callable[..., Awaitable[WebSocket]] | None = None
    #: one forwarded attempt: ``forward(method, origin, start, fields, body,
    #: declared_length)``, the request line and header lines given as bytes, returning
    #: the response as received (see :meth:`Cluster.forward`)
    forward: Callable[..., Awaitable[RawResponse]] | None = None


class NoProviderAvailable(ServiceUnavailable):
    """No provider of the service is alive; the message lists what each one is doing."""

    def __init__(
        self, service: str, states: Sequence[tuple[str, str]],
        errors: Sequence[BaseException] = (),
    ) -> None:
        self.service = service
        self.states = list(states)
        #: the last probe or request error of each provider that has one
        self.errors = list(errors)
        listing = ", ".join(f"{a} {s}" for a, s in states) or "none listed"
        super().__init__(f"no provider of {service!r} is available ({listing})")


class Cluster:
    """Every provider of one service, tracked alive / retrying / ejected / evicted."""

    def __init__(
        self,
        link: ClientLink,
        name: str,
        *,
        registry: Registry | None = None,
        providers: Sequence[str] | None = None,
        balancer: str = "p2c",
        health_path: str | None = "/healthz",
        probe_timeout: float = 1.0,
        scheme: str = "http",
        retry_budget_percent: float = 20.0,
        max_attempts: int = 3,
        config: ClusterConfig | None = None,
    ) -> None:
        if registry is None and providers is None:
            raise ValueError(f"service {name!r}: give providers=[...] or a client registry")
        self.link = link
        self.name = name
        self.registry = registry
        self.static = list(providers) if providers is not None else None
        if health_path is not None and health_path != "*" and not health_path.startswith("/"):
            raise ValueError(f"service {name!r}: health_path must be '*' (OPTIONS *) or a "
                             f"path starting with '/', not {health_path!r}")
        self.health_path = health_path
        self.probe_timeout = probe_timeout
        self.scheme = scheme
        self.max_attempts = max_attempts
        self.machine = ProviderStateMachine(name, config)
        self.balancer = Balancer(balancer)
        self.budget = RetryBudget(retry_budget_percent)
        self.outstanding: Counter[str] = Counter()
        self.metrics: Counter[str] = Counter()
        self.registry_reachable = True
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # set whenever the state machine acted
        self._probing: set[str] = set()
        #: each provider's last probe or connect failure (None once it answers again)
        self.last_error: dict[str, BaseException | None] = {}
        #: each provider's origin and URL prefix, built from its address once
        self._origins: dict[str, tuple[Origin, str]] = {}
        #: each provider's "a forwarded response is done" callback, built once
        self._ended: dict[str, Callable[[], None]] = {}
        self._ready = asyncio.Event()
        # Prometheus: the series this cluster counts under, and the machine's counts
        # already exported (the machine keeps plain totals; we export the deltas).
        self._series = {
            what: metrics.series(f"tether_cluster_{what}_total", cluster=name)
            for what in ("requests", "ejections", "evictions", "retries", "no_provider")
        }
        self._exported = {"ejections": 0, "evictions": 0}
        metrics.PROCESS.add_gauges(self, Cluster.gauges)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start following the registry and checking providers now (by default the
        first request does); needs a running event loop."""
        self._start()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.static is not None:
            providers = [Provider(self.name, a, (), "static") for a in self.static]
            self._apply(self.machine.on_snapshot(providers, time.monotonic()))
            self._ready.set()
        else:
            self._spawn(self._follow_registry())
        self._spawn(self._timers())

    @property
    def started(self) -> bool:
        """Whether the cluster has started following its providers."""
        return self._started

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # A fresh context: the cluster's own work (watch, timers, probes) must not
        # inherit the deadline of whichever request happened to start it, or every
        # probe would fail once that request's deadline passed.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for error in await cancel_and_wait(self._tasks):
            logger.warning("%s: background task failed: %r", self.name, error)

    async def _follow_registry(self) -> None:
        assert self.registry is not None
        async for event in self.registry.watch(self.name):
            now = time.monotonic()
            if isinstance(event, Unreachable):
                # Keep the last snapshot; keep health-checking what we know.
                self.registry_reachable = False
                self.metrics["registry_unreachable"] += 1
                metrics.PROCESS.inc(
                    metrics.series("tether_registry_watch_errors_total", service=self.name))
                logger.warning("%s: registry unreachable (%s); keeping %d known providers",
                               self.name, event.error, len(self.machine.records))
                continue
            assert isinstance(event, Snapshot)
            self.registry_reachable = True
            self._apply(self.machine.on_snapshot(event.providers, now))
            self._ready.set()

    async def _timers(self) -> None:
        while True:
            wakeup = self.machine.next_wakeup()
            delay = 1.0 if wakeup is None else max(0.0, min(1.0, wakeup - time.monotonic()))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
            # that races with the event, and this task must always be stoppable.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            self._apply(self.machine.due(time.monotonic()), from_timer=True)

    # -- carrying out the state machine's actions -------------------------------------------

    def _apply(self, actions: Sequence[Action], *, from_timer: bool = False) -> None:
        for action in actions:
            if isinstance(action, Probe):
                self._spawn(self._probe(action.address))
            elif isinstance(action, Close):
                # Cleanup is unconditional (never behind a log-level check): the
                # pool closes idle connections now and in-flight ones on release.
                self.link.retire(*_split(action.address))
            elif isinstance(action, Log):
                logger.log(logging.INFO if action.level == "info" else logging.WARNING,
                           "%s", action.message)
        self._export_counts()
        if not from_timer:
            self._wake.set()  # timers may have moved; the timer loop itself never wakes itself
        self._changed.set()

    async def _probe(self, address: str) -> None:
        if address in self._probing:
            return  # one probe per provider at a time: each failure is one attempt
        self._probing.add(address)
        try:
            await self._probe_once(address)
        finally:
            self._probing.discard(address)

    async def _probe_once(self, address: str) -> None:
        host, port = _split(address)
        self.link.probing(host, port)
        ok = False
        try:
            if self.health_path is None:
                async with asyncio.timeout(self.probe_timeout):
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                ok = True
            else:
                # On the probes' own connection: a probe that queued behind this
                # client's busy pool would fail for the client's congestion (issue 12).
                status = await self.link.probe(
                    f"{self.scheme}://{address}", self.health_path, self.probe_timeout)
                ok = status < 500
            error: BaseException | None = None
        except (HTTPError, OSError, TimeoutError) as exc:
            ok, error = False, exc
        self._note_error(address, error)
        self.metrics["probes"] += 1
        # Always applied, even when no state changes: the next probe is due anew.
        self._apply(self.machine.on_outcome(Probed(address, ok), time.monotonic()))

    def _note_error(self, address: str, error: BaseException | None) -> None:
        """Keep a provider's last failure, and log it when it changes (a provider that
        keeps failing the same way is logged once, not at every backoff step)."""
        previous = self.last_error.get(address)
        self.last_error[address] = error
        if error is not None and (previous is None or type(previous) is not type(error)):
            logger.warning("%s: provider %s failed: %s", self.name, address, error)

    def _export_counts(self) -> None:
        machine = self.machine
        for what, now in (("ejections", machine.ejections), ("evictions", machine.evictions)):
            if now != self._exported[what]:
                metrics.PROCESS.inc(self._series[what], now - self._exported[what])
                self._exported[what] = now

    def gauges(self) -> metrics.Values:
        """``tether_cluster_providers`` by state (every state, zeros included)."""
        by_state = Counter(r.state.value for r in self.machine.records.values())
        return {
            metrics.series("tether_cluster_providers", cluster=self.name, state=s.value):
            by_state[s.value] for s in ProviderState
        }

    def status(self) -> dict[str, Any]:
        """This cluster in ``/status``: every provider's state, failures and next probe
        (seconds from now), the counts, the retry budget's tokens left, and the timeline
        of state changes (wall-clock ``t``, newest last)."""
        now = time.monotonic()
        wall = time.time() - now  # the machine's monotonic clock -> wall clock
        self.budget.try_refill(now)
        return {
            "service": self.name,
            "providers": [
                {"address": address, "state": state, "outstanding": outstanding,
                 "failures": failures,
                 "next_probe_in": None if at is None else round(max(0.0, at - now), 3)}
                for address, state, outstanding, failures, at in self.providers()
            ],
            "ejections": self.machine.ejections,
            "evictions": self.machine.evictions,
            "retries": self.metrics["retries"],
            "requests": self.metrics["requests"],
            "retry_budget": round(self.budget.tokens, 2),
            "timeline": [
                {"t": round(wall + change.at, 3), "address": change.address,
                 "from": change.before.value, "to": change.after.value,
                 "trigger": change.trigger.value}
                for change in self.machine.timeline
            ],
        }

    # -- requests ------------------------------------------------------------------------------

    def providers(self) -> list[tuple[str, str, int, int, float | None]]:
        """(address, state, outstanding, consecutive failures, next probe at) per provider."""
        self._start()
        return [
            (a, r.state.value, self.outstanding[a], r.consecutive_failures or r.attempts,
             None if r.next_probe_at == float("inf") else r.next_probe_at)
            for a, r in sorted(self.machine.records.items())
        ]

    def stats(self) -> dict[str, Any]:
        by_state = Counter(r.state.value for r in self.machine.records.values())
        return {
            "service": self.name,
            "providers": dict(by_state),
            "ejections": self.machine.ejections,
            "evictions": self.machine.evictions,
            **self.metrics,
        }

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait until the first snapshot arrived and a provider is alive (or timeout)."""
        self._start()
        async with asyncio.timeout(timeout):
            await self._ready.wait()
            while not self.machine.alive():
                self._changed.clear()
                await self._changed.wait()

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """Send to a chosen provider and read the response; retry on a different
        provider when it is safe."""
        method = method.upper()
        async with self.link.deadline_scope():
            response, _ = await self._exchange(
                method, _replayable(kwargs), self._attempt(method, path, kwargs), read=True)
            return response

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[Response]:
        """Like :meth:`request`, but yield the response before its body is read (as
        :meth:`Client.stream`). Retries happen only before the response is yielded,
        and a streamed request body (an iterator) is sent once: only a failed connect
        is retried with it."""
        method = method.upper()
        async with self.link.deadline_scope():
            response, address = await self._exchange(
                method, _replayable(kwargs), self._attempt(method, path, kwargs), read=False)
            try:
                yield response
            finally:
                # Outstanding until the body is done: p2c must see long streams.
                self.outstanding[address] -= 1
                await response.aclose()

    def _attempt(
        self, method: str, path: str, kwargs: dict[str, Any]
    ) -> Callable[[str], Awaitable[Response]]:
        """One attempt of a :meth:`request` or :meth:`stream` at a provider's address."""
        # Validated before any provider is chosen: a path that is not origin-form is
        # the caller's error, never evidence against a provider (issue 13).
        target = origin_form(path, kwargs.pop("params", None))
        send = self.link.send

        def attempt(address: str) -> Awaitable[Response]:
            origin, prefix = self._origin(address)
            url = prefix + target if target != "*" else prefix
            return send(method, origin, target, url, **kwargs)

        return attempt

    async def forward(
        self, method: str, start: bytes, fields: bytes, body: Body,
        declared_length: int | None = None,
    ) -> RawResponse:
        """A proxy's request, with the same choice, outcome reports, retries and
        deadline as :meth:`stream`, its head already rendered: ``start`` is the
        request line (origin-form target, checked by the caller), ``fields`` the
        header lines with the request's framing; the client adds the time left before
        the deadline. Returns the response as received; its ``close()`` gives the
        connection back and ends the provider's outstanding count."""
        forward = self.link.forward
        if forward is None:
            raise RuntimeError("this cluster's client cannot forward requests")
        replayable = body is None or isinstance(body, bytes)

        def attempt(address: str) -> Awaitable[RawResponse]:
            return forward(method, self._origin(address)[0], start, fields, body,
                           declared_length)

        if current_deadline().at is None:  # (deadline_scope would do nothing: skip it)
            response, address = await self._exchange(method, replayable, attempt, read=False)
        else:
            async with self.link.deadline_scope():
                response, address = await self._exchange(
                    method, replayable, attempt, read=False)
        response.after = self._ended.get(address) or self._ended_callback(address)
        return response

    def _ended_callback(self, address: str) -> Callable[[], None]:
        if len(self._ended) > 4096:  # addresses come and go: keep it bounded
            self._ended.clear()
        ended = self._ended[address] = functools.partial(self._session_ended, address)
        return ended

    async def _exchange(
        self, method: str, replayable: bool, attempt: Callable[[str], Awaitable[_R]], *,
        read: bool,
    ) -> tuple[_R, str]:
        """The one request cycle of a cluster: choose, send (``attempt`` at the chosen
        address), report, maybe retry.

        Returns the response and its provider. With ``read=False`` the provider's
        outstanding count stays raised for the caller to lower when the body is done.
        """
        if self._ready.is_set():  # (the common case, without a coroutine)
            self._count()
        else:
            await self._begin()
        avoid: set[str] = set()
        attempts = 0
        while True:
            attempts += 1
            # The common case needs no await: providers are alive, pick one now.
            address = self._pick(avoid) or await self._choose(avoid)
            self.outstanding[address] += 1
            kept = False
            try:
                try:
                    response = await attempt(address)
                    if read:
                        await response.aread()
                except TransportError as exc:
                    if not self._transport_failed(address, exc, method, replayable, attempts):
                        raise
                    avoid.add(address)
                    continue
                if self._answered(address, response.status_code, method, replayable,
                                  attempts):
                    await _discard(response)
                    avoid.add(address)
                    continue
                kept = not read
                return response, address
            finally:
                if not kept:
                    self.outstanding[address] -= 1

    def websocket(self, path: str, **kwargs: Any) -> Connecting:
        """Open a WebSocket session to a provider chosen by the balancer:
        ``async with cluster.websocket("/ws") as ws:`` (options as
        :meth:`Client.websocket`). A handshake that fails (no connection, a dropped
        connection, a retryable 5xx) is tried again on another provider, within
        ``max_attempts``, the retry budget and the deadline; once upgraded, a session
        is never retried. The provider counts the session as outstanding until it
        ends, so p2c sees long sessions."""
        return Connecting(functools.partial(self._open_websocket, path, kwargs))

    async def _open_websocket(self, path: str, kwargs: dict[str, Any]) -> WebSocket:
        websocket = self.link.websocket
        if websocket is None:
            raise RuntimeError("this cluster's client cannot open WebSocket sessions")
        async with self.link.deadline_scope():
            target = origin_form(path, kwargs.pop("params", None))
            await self._begin()
            avoid: set[str] = set()
            attempt = 0
            while True:
                attempt += 1
                address = await self._choose(avoid)
                self.outstanding[address] += 1
                opened = False
                try:
                    origin, prefix = self._origin(address)
                    session = await websocket(
                        origin, target, prefix + target,
                        on_close=functools.partial(self._session_ended, address), **kwargs)
                    opened = True
                except TransportError as exc:
                    if not self._transport_failed(address, exc, "GET", True, attempt):
                        raise
                    avoid.add(address)
                    continue
                except WebSocketRejected as exc:
                    if not self._answered(address, exc.status_code, "GET", True, attempt):
                        raise
                    avoid.add(address)
                    continue
                finally:
                    if not opened:
                        self.outstanding[address] -= 1
                self._report(self.machine.on_outcome(Answered(address, 101), time.monotonic()))
                return session

    async def _begin(self) -> None:
        """Before a request's first attempt: start watching the providers, wait (at
        most the probe timeout) for a first view of them, and count the request (the
        retry budget, metrics)."""
        if not self._started:
            self._start()
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    await self._ready.wait()
        self._count()

    def _count(self) -> None:
        """Count a request: the retry budget, metrics."""
        self.budget.on_request(time.monotonic())
        self.metrics["requests"] += 1
        metrics.PROCESS.inc(self._series["requests"])

    def _transport_failed(self, address: str, exc: TransportError, method: str,
                          replayable: bool, attempt: int) -> bool:
        """A send to ``address`` failed in transport: note it (what
        NoProviderAvailable shows) and report it; whether it may go to another
        provider now."""
        failed = outcome_of(address, exc)
        if isinstance(failed, ConnectFailed):
            self._note_error(address, exc)
        self._report(self.machine.on_outcome(failed, time.monotonic()))
        return may_resend(failed, method, replayable) and self._may_retry(attempt)

    def _answered(self, address: str, status: int, method: str, replayable: bool,
                  attempt: int) -> bool:
        """``address`` answered ``status``: report it; whether the request may go to
        another provider now (a retryable status, a method that allows it, the
        budget, the deadline)."""
        self._report(self.machine.on_answer(address, status, time.monotonic()))
        return (status in RETRYABLE_STATUS
                and may_resend(Answered(address, status), method, replayable)
                and self._may_retry(attempt))

    def _session_ended(self, address: str) -> None:
        self.outstanding[address] -= 1

    def _origin(self, address: str) -> tuple[Origin, str]:
        """The origin a request to ``address`` connects to (from the registry's
        address, never from a request), and the URL prefix that names it."""
        known = self._origins.get(address)
        if known is None:
            host, port = _split(address)
            if len(self._origins) > 4096:  # addresses come and go: keep it bounded
                self._origins.clear()
            known = self._origins[address] = (
                Origin(self.scheme, host, port), f"{self.scheme}://{address}")
        return known

    def _report(self, actions: Sequence[Action]) -> None:
        """Carry out what the state machine made of a request's outcome. Most outcomes
        change nothing (no actions): then nothing is woken, as no state or timer moved."""
        if actions:
            self._apply(actions)

    def _pick(self, avoid: set[str]) -> str | None:
        """An alive provider chosen by the balancer (a different one than ``avoid``
        when there is one), or None when none is alive."""
        alive = self.machine.alive()
        return self.balancer.pick(alive, self.outstanding, avoid) if alive else None

    async def _choose(self, avoid: set[str]) -> str:
        machine = self.machine
        if not machine.alive() and machine.connecting():
            # Providers just listed are being probed: wait for the first verdict
            # (bounded by the probe timeout and the deadline) rather than fail.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    while not machine.alive() and machine.connecting():
                        self._changed.clear()
                        await self._changed.wait()
        address = self._pick(avoid)
        if address is None:
            self.metrics["no_provider"] += 1
            metrics.PROCESS.inc(self._series["no_provider"])
            raise NoProviderAvailable(
                self.name, [(a, r.state.value) for a, r in sorted(machine.records.items())],
                [e for a in sorted(machine.records)
                 if (e := self.last_error.get(a)) is not None])
        return address

    def _may_retry(self, attempt: int) -> bool:
        if attempt >= self.max_attempts or current_deadline().expired:
            return False
        if not self.budget.try_retry(time.monotonic()):
            self.metrics["retry_budget_exhausted"] += 1
            return False
        self.metrics["retries"] += 1
        metrics.PROCESS.inc(self._series["retries"])
        return True

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> Response:
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)


async def _discard(response: _Answer) -> None:
    """Let go of a response we will not use: read a small framed body so the
    connection is kept (a 503 storm must not open a connection per retry), else close."""
    if isinstance(response, RawResponse):
        small = is_small(response.headers)
    else:
        length = cast("Response", response).headers.get("content-length")
        small = length is not None and length.isdigit() and int(length) <= SMALL_BODY
    if small:
        with contextlib.suppress(TransportError):
            await response.aread()
            return
    await response.aclose()


def _replayable(kwargs: dict[str, Any]) -> bool:
    """A body in memory can be sent again; an iterator was consumed by the first try."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | str)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)

