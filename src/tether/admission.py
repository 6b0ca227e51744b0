"""Admission control: a concurrency limit with a deadline-aware, adaptive queue.

Field report 1 (docs/incidents.md, Boulder) is why: under load, abandoned requests kept running and
new ones queued behind them until they timed out too, and the queue grew without
bound. Here a request whose deadline passes while it waits never reaches the
handler (504), and when a *standing* queue forms the queue turns newest-first and
sheds what has waited too long (503 + Retry-After), as in Facebook's "Fail at
Scale" (adaptive LIFO + CoDel: target 5 ms over a 100 ms interval).

Rules: :class:`AdmissionQueue` is pure (no I/O, the clock is passed in) and is the
only place that decides; :class:`AdmissionGate` only wires it to asyncio futures.
A slot is held from admission until :meth:`AdmissionGate.leave`, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter, deque
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    ADMITTED = "admitted"
    EXPIRED = "expired"  # its deadline passed while queued: 504, the handler never runs
    SHED = "shed"  # queued longer than the CoDel bound: 503 + Retry-After


@dataclass(eq=False)
class Ticket:
    enqueued_at: float
    deadline_at: float | None  # same clock as enqueued_at
    outcome: Outcome | None = None


@dataclass
class AdmissionQueue:
    """The decision core. Times are seconds on one monotonic clock, given by the caller."""

    limit: int
    target: float = 0.005
    interval: float = 0.1
    active: int = 0
    queue: deque[Ticket] = field(default_factory=deque)
    #: when the queue last was empty; a queue non-empty for longer than ``interval``
    #: is a standing queue (CoDel's signal that load exceeds capacity)
    last_empty: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)

    def arrive(self, ticket: Ticket, now: float) -> Outcome | None:
        """A request arrives: admitted at once, refused, or queued (None)."""
        if ticket.deadline_at is not None and now >= ticket.deadline_at:
            return self._decide(ticket, Outcome.EXPIRED).outcome
        if self.active < self.limit and not self.queue:
            self.active += 1
            return self._decide(ticket, Outcome.ADMITTED).outcome
        if not self.queue:
            self.last_empty = now
        self.queue.append(ticket)
        return None

    def release(self, now: float) -> list[Ticket]:
        """A request finished: free its slot and decide for queued tickets.
        Returns every ticket that got an outcome."""
        self.active -= 1
        return self.pump(now)

    def pump(self, now: float) -> list[Ticket]:
        """Shed and expire what must go, then admit while there is room."""
        decided: list[Ticket] = []
        queue = self.queue
        standing = bool(queue) and now - self.last_empty > self.interval
        bound = self.target if standing else self.interval
        # The oldest tickets sit at the left end: drop the expired and the stale.
        for ticket in list(queue):
            if ticket.deadline_at is not None and now >= ticket.deadline_at:
                queue.remove(ticket)
                decided.append(self._decide(ticket, Outcome.EXPIRED))
            elif now - ticket.enqueued_at > bound and standing:
                queue.remove(ticket)
                decided.append(self._decide(ticket, Outcome.SHED))
        while queue and self.active < self.limit:
            # Adaptive LIFO: under a standing queue the newest request is the one
            # most likely to still have a client waiting for it.
            ticket = queue.pop() if standing else queue.popleft()
            self.active += 1
            decided.append(self._decide(ticket, Outcome.ADMITTED))
        if not queue:
            self.last_empty = now
        return decided

    def withdraw(self, ticket: Ticket) -> None:
        """A queued ticket's waiter went away (deadline timer, cancellation)."""
        if ticket in self.queue:
            self.queue.remove(ticket)

    def _decide(self, ticket: Ticket, outcome: Outcome) -> Ticket:
        ticket.outcome = outcome
        self.counts[outcome.value] += 1
        return ticket


class AdmissionGate:
    """The asyncio side: waits on a ticket, wakes waiters when slots free."""

    def __init__(self, limit: int, *, target: float = 0.005, interval: float = 0.1) -> None:
        self.core = AdmissionQueue(limit, target, interval, last_empty=time.monotonic())
        self._waiters: dict[Ticket, asyncio.Future[None]] = {}

    @property
    def counts(self) -> Counter[str]:
        return self.core.counts

    async def enter(self, deadline_at: float | None) -> Outcome:
        """Wait for a slot; ``deadline_at`` is on ``time.monotonic()``'s clock."""
        now = time.monotonic()
        ticket = Ticket(now, deadline_at)
        outcome = self.core.arrive(ticket, now)
        if outcome is not None:
            return outcome
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        try:
            if deadline_at is None:
                await waiter
            else:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline_at - now):
                        await asyncio.shield(waiter)
        except BaseException:
            self._abandon(ticket)
            raise
        finally:
            self._waiters.pop(ticket, None)
        if ticket.outcome is None:  # its deadline passed while it waited
            self.core.withdraw(ticket)
            self.core._decide(ticket, Outcome.EXPIRED)
        assert ticket.outcome is not None
        return ticket.outcome

    def leave(self) -> None:
        """An admitted request finished (however): free its slot."""
        self._wake(self.core.release(time.monotonic()))

    def _abandon(self, ticket: Ticket) -> None:
        if ticket.outcome is Outcome.ADMITTED:
            self.leave()  # admitted as it was cancelled: give the slot back
        else:
            self.core.withdraw(ticket)

    def _wake(self, decided: list[Ticket]) -> None:
        for ticket in decided:
            waiter = self._waiters.get(ticket)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
