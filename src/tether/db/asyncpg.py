"""asyncpg under the current deadline: acquire and every query are bounded by it,
and a query that must stop is cancelled *on the server*.

Field report 1 (docs/incidents.md, Boulder): when a request is cancelled or its deadline passes, its
query must actually stop in PostgreSQL, not just be abandoned by Python, and the
pool must stay stable while that happens (cancelling 1,000 queries must not open
1,000 new connections). asyncpg does the server side for us: on a ``timeout=`` or
a cancelled task it sends PostgreSQL's CancelRequest on a short-lived side
connection (the postmaster answers it; it is not a backend session) and, when the
connection goes back to the pool, waits for the cancel to land so the connection
is returned healthy. This module makes every query carry the remaining time as
its ``timeout=`` and turns an expiry into :class:`~tether.deadline.DeadlineExceeded`.

Must never run a query with more time than the deadline allows, and never hide a
cancellation from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from tether.admission import AdmissionGate, Outcome
from tether.db import counters
from tether.deadline import DeadlineExceeded, current_deadline, time_remaining
from tether.errors import Overloaded

InitHook = Callable[[asyncpg.Connection], Awaitable[None]]


def _budget(timeout: float | None) -> float | None:
    """The smaller of the caller's timeout and the time left before the deadline."""
    remaining = time_remaining()
    if remaining is None:
        return timeout
    if remaining <= 0:
        counters["db_deadline_refused"] += 1
        raise DeadlineExceeded("deadline passed before the query could start")
    return remaining if timeout is None else min(timeout, remaining)


class Connection:
    """An acquired connection whose queries are bounded by the current deadline."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.raw = conn

    async def _run(self, method: Callable[..., Awaitable[Any]], query: str, args: tuple[Any, ...],
                   timeout: float | None) -> Any:
        budget = _budget(timeout)
        deadline_bound = budget is not None and budget != timeout
        counters["db_queries"] += 1
        try:
            return await method(query, *args, timeout=budget)
        except TimeoutError as exc:
            counters["db_queries_cancelled"] += 1
            if deadline_bound:
                raise DeadlineExceeded(f"deadline exceeded during query: {query[:60]!r}") from exc
            raise
        except asyncio.CancelledError:
            counters["db_queries_cancelled"] += 1  # asyncpg cancels it on the server
            raise

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        result: list[Any] = await self._run(self.raw.fetch, query, args, timeout)
        return result

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run(self.raw.fetchrow, query, args, timeout)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run(self.raw.fetchval, query, args, timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        status: str = await self._run(self.raw.execute, query, args, timeout)
        return status


class Pool:
    """An asyncpg pool whose ``acquire()`` and queries obey the current deadline.

    ``await Pool.create(dsn, min_size=1, max_size=10)``; then ``await pool.fetch(...)``
    or ``async with pool.acquire() as conn: await conn.fetch(...)``.
    """

    def __init__(self, pool: asyncpg.Pool, max_size: int, *, adaptive_queue: bool = True) -> None:
        self.raw = pool
        # Requests wait for a connection in tether's queue, not asyncpg's FIFO: a
        # deadline-aware, adaptive-LIFO queue (admission.py). Under overload the
        # newest waiter gets the next connection and the stale ones are shed, so
        # the connections do work for requests that can still succeed.
        self.gate = AdmissionGate(max_size) if adaptive_queue else None

    @classmethod
    async def create(
        cls, dsn: str | None = None, *, min_size: int = 1, max_size: int = 10,
        init: InitHook | None = None, adaptive_queue: bool = True, **kwargs: Any,
    ) -> Pool:
        """Create the asyncpg pool. ``adaptive_queue=False`` leaves waiting for a
        connection to asyncpg's plain FIFO (bounded by the deadline all the same)."""
        async def counted_init(conn: asyncpg.Connection) -> None:
            counters["db_connections_opened"] += 1
            if init is not None:
                await init(conn)

        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=counted_init, **kwargs
        )
        return cls(pool, max_size, adaptive_queue=adaptive_queue)

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection, waited for no longer than the deadline allows."""
        budget = _budget(timeout)
        gate = self.gate
        outcome = Outcome.ADMITTED if gate is None else await gate.enter(current_deadline().at)
        if outcome is Outcome.EXPIRED:
            counters["db_acquire_timeouts"] += 1
            raise DeadlineExceeded("no database connection free before the deadline")
        if outcome is Outcome.SHED:
            counters["db_acquire_shed"] += 1
            raise Overloaded("database pool overloaded: request shed from its queue")
        try:
            try:
                # Bound the wait ourselves: a timeout= given to asyncpg's acquire is
                # remembered as the release timeout, and a release too short to wait
                # for a pending cancel terminates the connection (pool churn).
                async with asyncio.timeout(_budget(budget)):
                    conn = await self.raw.acquire()
            except TimeoutError as exc:
                counters["db_acquire_timeouts"] += 1
                raise DeadlineExceeded(
                    "no database connection free before the deadline") from exc
            try:
                yield Connection(conn)
            finally:
                # asyncpg's release waits for an in-progress cancel to finish and
                # resets the session: the connection goes back healthy, not discarded.
                await self.raw.release(conn)
        finally:
            if gate is not None:
                gate.leave()

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args, timeout=timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args, timeout=timeout)

    async def close(self) -> None:
        await self.raw.close()

    def size(self) -> dict[str, int]:
        return {"size": self.raw.get_size(), "idle": self.raw.get_idle_size()}
