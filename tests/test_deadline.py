"""Deadlines as values, their wire codec, and their enforcement in the server and the
client (in-process, real sockets). The PostgreSQL cascade is in test_db_cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

import tether
from tests.support import raw_exchange, serve, wait_for
from tether.asgi import Receive, Scope, Send
from tether.deadline import (
    Deadline,
    deadline_from_headers,
    parse_grpc_timeout,
    parse_timeout_ms,
    set_deadline,
)


def test_deadline_only_narrows() -> None:
    later, sooner = Deadline.after(10), Deadline.after(1)
    assert later.narrow(sooner) is sooner
    assert sooner.narrow(later) is sooner
    assert Deadline().narrow(sooner) is sooner
    assert sooner.narrow(Deadline()) is sooner
    assert Deadline().remaining() is None and not Deadline().expired
    assert Deadline(time.monotonic() - 1).expired


def test_wire_codec() -> None:
    assert parse_timeout_ms(b"250") == 0.25
    assert parse_grpc_timeout(b"2S") == 2.0
    assert parse_grpc_timeout(b"100m") == 0.1
    assert parse_grpc_timeout(b"1H") == 3600.0
    assert parse_grpc_timeout(b"5000u") == pytest.approx(0.005)
    assert parse_grpc_timeout(b"7n") == pytest.approx(7e-9)
    for bad in (b"", b"-1", b"1.5", b"abc", b"9" * 13):
        with pytest.raises(ValueError):
            parse_timeout_ms(bad)
    for bad in (b"", b"S", b"123456789S", b"10x", b"1.0S"):
        with pytest.raises(ValueError):
            parse_grpc_timeout(bad)
    headers = [(b"grpc-timeout", b"1S"), (b"x-request-timeout-ms", b"300")]
    assert deadline_from_headers(headers) == 0.3  # the smaller wins
    assert deadline_from_headers([(b"other", b"1")]) is None


def test_header_value_keeps_a_margin() -> None:
    value = Deadline.after(1.0).header_value(margin=0.1)
    assert value is not None and 880 <= int(value) <= 900
    assert Deadline.after(-5).header_value() == b"1"  # never 0 or negative on the wire
    assert Deadline().header_value() is None


async def test_deadline_after_raises_and_nests() -> None:
    with pytest.raises(tether.DeadlineExceeded):
        async with tether.deadline_after(0.05):
            await asyncio.sleep(5)
    async with tether.deadline_after(0.5) as outer, tether.deadline_after(60) as inner:
        assert inner.at == outer.at  # a nested scope cannot extend the deadline
        remaining = tether.time_remaining()
        assert remaining is not None and remaining <= 0.5
    assert tether.time_remaining() is None


def recording_app(log: list[str]) -> tether.asgi.ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        log.append(f"remaining={tether.time_remaining()}")
        try:
            await asyncio.sleep(float(scope["query_string"].decode() or "0"))
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def test_server_answers_504_at_the_deadline_and_cancels_the_handler() -> None:
    log: list[str] = []
    async with serve(recording_app(log)) as server, httpx.AsyncClient() as client:
        started = time.monotonic()
        r = await client.get(f"{server.url}/?5", headers={"x-request-timeout-ms": "150"})
        took = time.monotonic() - started
        counters = server.worker.state.counters
    assert r.status_code == 504
    assert 0.1 < took < 2.0
    assert log[-1] == "cancelled"
    remaining = float(log[0].split("=")[1])
    assert 0 < remaining <= 0.15
    assert counters["cancelled_deadline"] == 1


async def test_grpc_timeout_and_server_cap() -> None:
    log: list[str] = []
    async with serve(recording_app(log), request_timeout=0.2) as server, \
            httpx.AsyncClient() as client:
        assert (await client.get(f"{server.url}/?5")).status_code == 504  # the cap alone
        r = await client.get(f"{server.url}/?5", headers={"grpc-timeout": "50m"})
        assert r.status_code == 504
        fast = await client.get(f"{server.url}/?0", headers={"x-request-timeout-ms": "60000"})
        assert fast.status_code == 200
    capped = float(log[-1].split("=")[1])
    assert capped <= 0.2  # 60 s asked, the server cap wins


async def test_malformed_deadline_header_is_400() -> None:
    async with serve(recording_app([])) as server:
        raw = await raw_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nx-request-timeout-ms: soon\r\n\r\n"
        )
    assert raw.startswith(b"HTTP/1.1 400") and b"x-request-timeout-ms" in raw


async def test_expired_on_arrival_never_runs() -> None:
    log: list[str] = []
    async with serve(recording_app(log)) as server:
        raw = await raw_exchange(
            server.port, b"GET / HTTP/1.1\r\nHost: x\r\nx-request-timeout-ms: 0\r\n\r\n"
        )
    assert raw.startswith(b"HTTP/1.1 504")
    assert log == []


async def test_deadline_propagates_to_the_next_hop_and_disconnect_cascades() -> None:
    """front -> back over tether.Client: back gets a smaller budget; when the client
    of front disconnects, front's handler, its outbound call and back's handler are
    all cancelled (and the connection front->back is closed, not pooled)."""
    back_log: list[str] = []
    back_seen: list[str] = []
    front_log: list[str] = []

    async def back(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        back_seen.append(headers.get(b"x-request-timeout-ms", b"-").decode())
        await recording_app(back_log)(scope, receive, send)

    async with serve(back) as back_server, tether.Client() as client:
        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                r = await client.get(f"{back_server.url}/?{scope['query_string'].decode()}")
            except asyncio.CancelledError:
                front_log.append("cancelled")
                raise
            except tether.DeadlineExceeded:
                front_log.append("deadline")
                raise
            await send({"type": "http.response.start", "status": r.status_code, "headers": []})
            await send({"type": "http.response.body", "body": r.content})

        async with serve(front) as front_server:
            # 1. deadline propagation
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{front_server.url}/?0",
                                   headers={"x-request-timeout-ms": "2000"})
            assert r.status_code == 200
            assert 1000 < int(back_seen[-1]) < 2000
            # 2. disconnect cascade
            _reader, writer = await asyncio.open_connection("127.0.0.1", front_server.port)
            writer.write(b"GET /?30 HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(lambda: len(back_seen) == 2, what="the request to reach back")
            writer.close()
            await wait_for(lambda: front_log == ["cancelled"] and back_log[-1] == "cancelled",
                           timeout=2.0, what="the cancellation to cascade")
            assert client.stats()["active"] == 0
            assert front_server.worker.state.counters["cancelled_disconnect"] == 1
            assert back_server.worker.state.counters["cancelled_disconnect"] == 1


async def test_opt_out_runs_to_completion_but_keeps_its_deadline() -> None:
    log: list[str] = []
    app = tether.no_cancel_on_disconnect(recording_app(log))
    async with serve(app) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /?0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: len(log) == 1, what="the handler to start")
        writer.close()
        await wait_for(lambda: not server.worker.state.tasks, what="the handler to finish")
        assert "cancelled" not in log  # it ran to completion after the disconnect
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{server.url}/?5", headers={"x-request-timeout-ms": "100"})
        assert r.status_code == 504 and log[-1] == "cancelled"


async def test_client_refuses_work_past_the_deadline() -> None:
    log: list[str] = []
    async with serve(recording_app(log)) as server, tether.Client() as client:
        # With propagation the server knows the deadline (minus the margin) and
        # cancels the handler itself; its 504 usually beats the client's own bound.
        status: int | None = None
        with contextlib.suppress(tether.DeadlineExceeded):
            async with tether.deadline_after(0.2):
                status = (await client.get(f"{server.url}/?5")).status_code
        assert status in (504, None)
        counters = server.worker.state.counters
        await wait_for(
            lambda: counters["cancelled_deadline"] + counters["cancelled_disconnect"] == 1,
            what="the server to cancel the handler",
        )
        server_budget = float(log[0].split("=")[1])
        assert 0 < server_budget < 0.2  # the deadline reached the server, less the margin
        # Without it, only the client's local bound stops the call: the connection
        # in flight is closed and DeadlineExceeded raised.
        blind = tether.Client(propagate_deadline=False)
        with pytest.raises(tether.DeadlineExceeded):
            async with tether.deadline_after(0.1):
                await blind.get(f"{server.url}/?5")
        assert blind.stats()["active"] == 0
        await blind.aclose()
        sent = client.stats()["outgoing_requests"]

        async def call_when_already_expired() -> None:
            set_deadline(Deadline(time.monotonic() - 0.001))  # this task's context only
            await client.get(server.url)

        with pytest.raises(tether.DeadlineExceeded):
            await asyncio.create_task(call_when_already_expired())
        assert client.stats()["outgoing_requests"] == sent  # nothing was sent


async def test_deadline_and_overload_errors_from_the_handler_map_to_504_and_503() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/late":
            raise tether.DeadlineExceeded("a downstream call ran out of time")
        raise tether.Overloaded("database pool overloaded")

    async with serve(app) as server, httpx.AsyncClient() as client:
        late = await client.get(f"{server.url}/late")
        busy = await client.get(f"{server.url}/busy")
        counters = server.worker.state.counters
    assert late.status_code == 504
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert counters["deadline_exceeded"] == 1 and counters["overloaded"] == 1


async def test_an_inner_timeout_is_not_reported_as_the_deadline() -> None:
    with pytest.raises(TimeoutError) as info:
        async with tether.deadline_after(10):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
    assert not isinstance(info.value, tether.DeadlineExceeded)


def test_wire_deadlines_are_capped_both_ways() -> None:
    """Issue 13: ``grpc-timeout: 99999999H`` through the proxy became a 15-digit
    ``x-request-timeout-ms`` that the next tether refused with 400. Accepted
    deadlines are capped (an hour by default), and what tether writes is always
    readable by the next tether, which narrows it to its own maximum."""
    assert deadline_from_headers([(b"grpc-timeout", b"99999999H")]) == 3600.0
    assert deadline_from_headers([(b"x-request-timeout-ms", b"999999999999")]) == 3600.0
    assert deadline_from_headers([(b"grpc-timeout", b"2S")], maximum=1.0) == 1.0
    written = Deadline.after(10**12).header_value()
    assert written == b"999999999999"  # the most digits any tether reads
    assert deadline_from_headers([(b"x-request-timeout-ms", written)]) == 3600.0
    assert int(Deadline.after(7200).header_value() or b"0") > 7_100_000  # not cut to an hour
    with pytest.raises(ValueError):
        parse_grpc_timeout(b"123456789S")  # the gRPC spec: at most 8 digits
