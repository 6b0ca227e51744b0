"""Admission control: the pure queue with an injected clock (deterministic), and the
gate in a real server."""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import serve, wait_for
from tether.admission import AdmissionQueue, Outcome, Ticket
from tether.asgi import Receive, Scope, Send


def test_fifo_until_a_standing_queue_then_lifo_and_shedding() -> None:
    q = AdmissionQueue(limit=1, target=0.005, interval=0.1)
    assert q.arrive(Ticket(0.0, None), 0.0) is Outcome.ADMITTED
    a, b = Ticket(0.0, None), Ticket(0.001, None)
    assert q.arrive(a, 0.0) is None and q.arrive(b, 0.001) is None
    # A short queue (not standing): oldest first.
    assert q.release(0.002) == [a] and a.outcome is Outcome.ADMITTED
    # Now the queue has been non-empty for over an interval: newest first, and
    # anything queued longer than the 5 ms target is shed.
    c, d = Ticket(0.2, None), Ticket(0.2049, None)
    q.arrive(c, 0.2)
    q.arrive(d, 0.2049)
    decided = q.release(0.2051)
    assert b.outcome is Outcome.SHED and c.outcome is Outcome.SHED
    assert d.outcome is Outcome.ADMITTED
    assert decided == [b, c, d]
    assert q.counts == {"admitted": 3, "shed": 2}


def test_expired_tickets_never_run() -> None:
    q = AdmissionQueue(limit=1)
    assert q.arrive(Ticket(0.0, None), 0.0) is Outcome.ADMITTED
    late = Ticket(0.0, deadline_at=0.01)
    q.arrive(late, 0.0)
    q.release(0.02)
    assert late.outcome is Outcome.EXPIRED
    assert q.arrive(Ticket(0.03, deadline_at=0.02), 0.03) is Outcome.EXPIRED
    assert q.active == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 0.05), st.one_of(st.none(),
                                                                      st.floats(0, 0.2))),
                max_size=60),
       st.integers(1, 4))
def test_invariants_hold_for_any_arrival_pattern(
    events: list[tuple[bool, float, float | None]], limit: int
) -> None:
    """Never more than ``limit`` admitted at once; every ticket decided at most once;
    an admitted ticket's deadline had not passed when it was admitted."""
    q = AdmissionQueue(limit=limit)
    now = 0.0
    running: list[Ticket] = []
    for arrive, step, budget in events:
        now += step
        if arrive or not running:
            ticket = Ticket(now, None if budget is None else now + budget)
            outcome = q.arrive(ticket, now)
            if outcome is Outcome.ADMITTED:
                running.append(ticket)
        else:
            running.pop(0)
            for ticket in q.release(now):
                if ticket.outcome is Outcome.ADMITTED:
                    assert ticket.deadline_at is None or ticket.deadline_at > now
                    running.append(ticket)
        assert q.active == len(running) <= limit
        assert all(t.outcome is None for t in q.queue)


async def test_queued_requests_whose_deadline_passed_never_reach_the_handler() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/hold":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve(app, limit_concurrency=2) as server, httpx.AsyncClient() as client:
        holders = [asyncio.create_task(client.get(f"{server.url}/hold")) for _ in range(2)]
        await wait_for(lambda: calls.count("/hold") == 2, what="both slots taken")
        late = await asyncio.gather(*(
            client.get(f"{server.url}/late", headers={"x-request-timeout-ms": "100"})
            for _ in range(5)
        ))
        release.set()
        assert [r.status_code for r in await asyncio.gather(*holders)] == [200, 200]
        assert [r.status_code for r in late] == [504] * 5
        assert "/late" not in calls
        assert server.worker.state.counters["queue_expired"] == 5
        assert (await client.get(f"{server.url}/after")).status_code == 200
