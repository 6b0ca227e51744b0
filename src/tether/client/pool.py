"""The connection pool: idle connections by full identity, limits, a fair wait queue.

Connections are kept and counted per :class:`~tether.client.identity.PoolKey`, the
whole identity of a connection (field report 4, docs/incidents.md), and opened
by the injected opener only: the pool never touches a socket, and sees a connection only through
:class:`PooledConnection` (tests drive it with fakes).

Must never hand out a connection the server already closed, never hand one to two
requests, and never leak a slot, whatever is cancelled when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from tether import metrics
from tether.client.errors import PoolTimeout
from tether.client.identity import PoolKey


class PooledConnection(Protocol):
    """What the pool needs of a connection (``HTTPConnection`` is the real one)."""

    key: PoolKey  # the identity it was opened with, and is pooled under
    idle_since: float  # set by the pool when the connection goes idle
    slot_released: bool  # set by the pool once the connection's slot was given back

    @property
    def reusable(self) -> bool:
        """The last exchange ended cleanly and both sides keep the connection alive."""
        ...

    def is_idle_usable(self) -> bool:
        """While idle: the peer has not closed it."""
        ...

    def close(self) -> None: ...


C = TypeVar("C", bound=PooledConnection)

#: opens a connection for a key within a timeout (seconds, None: no limit)
Opener = Callable[[PoolKey, float | None], Awaitable[C]]


@dataclass
class PoolStats:
    outgoing_requests: int = 0
    connections_opened: int = 0
    connections_reused: int = 0
    pool_wait_seconds: float = 0.0


@dataclass(eq=False)
class _Waiter(Generic[C]):
    key: PoolKey
    future: asyncio.Future[C | None] = field(repr=False)


class ConnectionPool(Generic[C]):
    """Keeps idle connections per :class:`PoolKey` and enforces the limits.

    A slot is counted from the moment a connection is decided on (before it is
    opened) until it is closed, so limits hold even while connects are in flight.
    """

    def __init__(
        self,
        opener: Opener[C],
        *,
        max_connections: int = 100,
        max_connections_per_origin: int = 20,
        keepalive_expiry: float | None = 30.0,
    ) -> None:
        if max_connections < 1 or max_connections_per_origin < 1:
            raise ValueError("connection limits must be at least 1")
        self._open = opener
        self.max_connections = max_connections
        self.max_per_origin = max_connections_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[PoolKey, list[C]] = {}
        self._slots: dict[PoolKey, int] = {}
        self._total = 0
        self._waiters: deque[_Waiter[C]] = deque()
        self.stats = PoolStats()
        self.closed = False
        #: (host, port) of providers that left their cluster: no connection to them
        #: goes back to the idle pool
        self._retired: set[tuple[str, int]] = set()
        self._dispatching = False
        #: the Prometheus series each key counts under (built once per key)
        self._series: dict[PoolKey, tuple[str, str]] = {}
        metrics.PROCESS.add_gauges(self, ConnectionPool.gauges)

    # -- acquiring ---------------------------------------------------------------------

    async def acquire(
        self, key: PoolKey, timeout: float | None, connect_timeout: float | None = None,
        *, fresh: bool = False,
    ) -> C:
        """A connection for ``key``: the most recently used idle one, or a new one.

        ``timeout`` bounds the wait for a slot, ``connect_timeout`` the opening of a
        new connection. ``fresh`` skips idle connections (a retry after a stale one).
        """
        names = self._count_request(key)
        conn = None if fresh else self._pop_idle(key)
        if conn is None and not self._reserve(key):
            conn = await self._wait(key, timeout)
        if conn is not None:
            self.stats.connections_reused += 1
            return conn
        try:
            conn = await self._open(key, connect_timeout)
        except BaseException:
            self._free_slot(key)
            raise
        self.stats.connections_opened += 1
        metrics.PROCESS.counters[names[1]] += 1
        return conn

    def take_idle(self, key: PoolKey) -> C | None:
        """:meth:`acquire` for the common case, without an await: an idle connection
        for ``key`` if there is one (counted as a reused one), else None."""
        conn = self._pop_idle(key)
        if conn is not None:
            self._count_request(key)
            self.stats.connections_reused += 1
        return conn

    def _count_request(self, key: PoolKey) -> tuple[str, str]:
        self.stats.outgoing_requests += 1
        names = self._series.get(key) or self._name_series(key)
        metrics.PROCESS.counters[names[0]] += 1
        return names

    def _name_series(self, key: PoolKey) -> tuple[str, str]:
        origin = str(key.origin)
        names = self._series[key] = (
            metrics.series("tether_client_requests_total", origin=origin),
            metrics.series("tether_client_connections_opened_total", origin=origin),
        )
        return names

    async def _wait(self, key: PoolKey, timeout: float | None) -> C | None:
        loop = asyncio.get_running_loop()
        waiter: _Waiter[C] = _Waiter(key, loop.create_future())
        self._waiters.append(waiter)
        started = loop.time()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
            # that races with the hand-over, and the caller would get a connection.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            self._abandon(waiter)
            raise PoolTimeout(
                f"no connection available within {timeout}s "
                f"({self._total}/{self.max_connections} open, "
                f"{self._slots.get(key, 0)}/{self.max_per_origin} for this connection key)",
                target=str(key.origin), phase="pool",
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            self.stats.pool_wait_seconds += loop.time() - started

    def _abandon(self, waiter: _Waiter[C]) -> None:
        """The waiter gave up (timeout, cancel): return whatever it was handed."""
        fut = waiter.future
        if not fut.done():
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            return
        if fut.cancelled() or fut.exception() is not None:
            return
        conn = fut.result()
        if conn is None:
            self._free_slot(waiter.key)  # a reserved slot it will not use
        else:
            self.release(conn)

    def _pop_idle(self, key: PoolKey) -> C | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        now = time.monotonic()
        expiry = self.keepalive_expiry
        while stack:
            conn = stack.pop()  # LIFO: the most recently used is the least likely stale
            if conn.is_idle_usable() and (expiry is None or now - conn.idle_since < expiry):
                return conn
            self._discard(conn)
        return None

    def _reserve(self, key: PoolKey) -> bool:
        if self._slots.get(key, 0) >= self.max_per_origin:
            return False
        if self._total >= self.max_connections and not self._evict_idle(other_than=key):
            return False
        self._slots[key] = self._slots.get(key, 0) + 1
        self._total += 1
        return True

    def _evict_idle(self, other_than: PoolKey) -> bool:
        """Close the longest-idle connection of another origin to make room."""
        oldest: C | None = None
        for key, stack in self._idle.items():
            if key != other_than and stack and (
                oldest is None or stack[0].idle_since < oldest.idle_since
            ):
                oldest = stack[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest.close()
        oldest.slot_released = True
        self._release_slot(oldest.key)  # no dispatch: the caller takes this room
        return True

    # -- releasing -------------------------------------------------------------------

    def retire(self, host: str, port: int) -> None:
        """A provider left: close its idle connections now; in-flight ones finish and
        are closed when released (drained, not cut)."""
        self._retired.add((host, port))
        for key, stack in list(self._idle.items()):
            if (key.host, key.port) == (host, port):
                for conn in list(stack):
                    stack.remove(conn)
                    self._discard(conn)

    def unretire(self, host: str, port: int) -> None:
        self._retired.discard((host, port))

    def prune(self, host: str, port: int) -> None:
        """Close the idle connections to one address that the server closed or that
        expired. Otherwise they are found only when a request next takes one, and a
        provider that died takes no more requests: its dead connections would hold
        their slots (and show in the gauges) for good."""
        now = time.monotonic()
        expiry = self.keepalive_expiry
        for key, stack in list(self._idle.items()):
            if (key.host, key.port) == (host, port):
                # the test of _pop_idle, which stays inline there (the request path)
                dead = [c for c in stack if not c.is_idle_usable()
                        or (expiry is not None and now - c.idle_since >= expiry)]
                for conn in dead:
                    stack.remove(conn)
                    self._discard(conn)

    def open_to(self, host: str, port: int) -> int:
        """Connections open (idle or busy) to one address, whatever their key."""
        return sum(n for key, n in self._slots.items() if (key.host, key.port) == (host, port))

    def release(self, conn: C) -> None:
        """Return a connection: kept idle if reusable, closed otherwise."""
        key = conn.key
        if self.closed or not conn.reusable or (
                self._retired and (key.host, key.port) in self._retired):
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        for waiter in self._waiters:  # hand it straight to the first waiter for its key
            if waiter.key == key and not waiter.future.done():
                self._waiters.remove(waiter)
                waiter.future.set_result(conn)
                return
        stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = []
        stack.append(conn)
        if self._waiters:
            # Waiters for other keys may be stuck on the total limit: this idle
            # connection can be closed to make room for them (_reserve evicts it).
            self._dispatch()

    def discard(self, conn: C) -> None:
        """Close a connection that must not be reused (error, cancel, half-read)."""
        self._discard(conn)

    def _discard(self, conn: C) -> None:
        conn.close()
        if conn.slot_released:
            return
        conn.slot_released = True
        self._free_slot(conn.key)

    def _free_slot(self, key: PoolKey) -> None:
        self._release_slot(key)
        self._dispatch()

    def _release_slot(self, key: PoolKey) -> None:
        left = self._slots.get(key, 0) - 1
        if left > 0:
            self._slots[key] = left
        else:
            self._slots.pop(key, None)
        self._total -= 1

    def _dispatch(self) -> None:
        """Give freed capacity to waiters, first come first served."""
        if self._dispatching:
            return  # closing a stale idle connection below frees a slot: no re-entry
        self._dispatching = True
        try:
            for waiter in list(self._waiters):
                if waiter.future.done():
                    self._waiters.remove(waiter)
                    continue
                conn = self._pop_idle(waiter.key)
                if conn is not None or self._reserve(waiter.key):
                    self._waiters.remove(waiter)
                    waiter.future.set_result(conn)
        finally:
            self._dispatching = False

    # -- inspection and shutdown --------------------------------------------------------

    def counts(self) -> dict[str, int]:
        idle = sum(len(stack) for stack in self._idle.values())
        return {"idle": idle, "active": self._total - idle, "waiting": len(self._waiters)}

    def by_origin(self) -> dict[str, dict[str, int]]:
        """Connections held now per origin: {"http://h:p": {"idle": n, "active": n}}."""
        out: dict[str, dict[str, int]] = {}
        for key in set(self._slots) | set(self._idle):
            entry = out.setdefault(str(key.origin), {"idle": 0, "active": 0})
            idle = len(self._idle.get(key, []))
            entry["idle"] += idle
            entry["active"] += self._slots.get(key, 0) - idle
        return out

    def gauges(self) -> metrics.Values:
        """``tether_client_connections`` by origin and state."""
        out: metrics.Values = {}
        for origin, held in self.by_origin().items():
            for state, n in held.items():
                out[metrics.series("tether_client_connections", origin=origin, state=state)] = n
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-key view for status pages."""
        return [
            {"key": key, "open": self._slots.get(key, 0), "idle": len(self._idle.get(key, []))}
            for key in set(self._slots) | set(self._idle)
        ]

    async def aclose(self) -> None:
        self.closed = True
        for stack in self._idle.values():
            for conn in list(stack):
                self._discard(conn)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        self._waiters.clear()
