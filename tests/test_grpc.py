"""gRPC services on tether: examples/grpc served by ``tether serve``, called by grpcio.

grpcio (the reference gRPC client, which no one here wrote) calls the connect-python
order service (examples/grpc/service.py) over h2c. What is proved: the four kinds of
RPC; a grpcio deadline arrives as tether's deadline; past a deadline the handler and
its PostgreSQL query are cancelled and the client reads DEADLINE_EXCEEDED; a grpcio
``cancel()`` cancels them too; the next hop gets what is left of the deadline; a
rolling reload under a stream of RPCs fails none; a graceful stop lets a call in
flight finish.

A query is seen from PostgreSQL's side (``pg_stat_activity``, by the tag the SQL text
carries), never inferred from the client. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import grpc
import pytest

from examples.grpc.gen import orders_pb2 as pb
from examples.grpc.gen import orders_pb2_grpc as pb_grpc
from tests.support import ROOT, ServerProcess, server_process
from tests.test_proxy import RawUpstream

SERVICE = "examples.grpc.service:app"
NEXT_HOP = "examples.grpc.next_hop:app"
_tags = itertools.count()

#: grpcio honours http_proxy and friends; these tests talk to 127.0.0.1 only
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def tag(what: str) -> str:
    """A fresh tag for one query (it goes into the SQL text: letters, digits, '-')."""
    return f"{what}-{os.getpid()}-{next(_tags)}"


@contextlib.contextmanager
def order_service(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``tether serve examples.grpc.service:app ARGS`` from the repository root."""
    with server_process(SERVICE, *args, cwd=ROOT, env=env, timeout=60) as server:
        yield server


@contextlib.asynccontextmanager
async def stub_for(server: ServerProcess) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         options=CHANNEL_OPTIONS) as channel:
        # protoc's grpcio stub module has no annotations
        yield pb_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def running(monitor: asyncpg.Connection, query_tag: str) -> int:
    """Backends actively running the query tagged ``query_tag``."""
    n: int = await monitor.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 "
        "AND pid <> pg_backend_pid()", f"%grpc:{query_tag} %")
    return n


@contextlib.asynccontextmanager
async def monitoring(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def db_env(dsn: str) -> dict[str, str]:
    return {"ORDERS_DSN": dsn, "ORDERS_APP_NAME": "tether-test-grpc"}


# -- the four kinds of RPC ------------------------------------------------------------


async def test_grpcio_calls_all_four_kinds_of_rpc() -> None:
    with order_service() as server:
        async with stub_for(server) as stub:
            order = await stub.GetOrder(pb.GetOrderRequest(id="o-1"), timeout=30)
            assert (order.id, order.status) == ("o-1", "shipped")

            events = [event async for event in stub.WatchOrder(
                pb.WatchOrderRequest(id="o-2", count=4, interval_ms=5), timeout=30)]
            assert [(e.seq, e.status) for e in events] == [
                (0, "moving"), (1, "moving"), (2, "moving"), (3, "delivered")]

            async def orders() -> AsyncIterator[pb.Order]:
                for i in range(5):
                    yield pb.Order(id=f"i-{i}")

            summary = await stub.ImportOrders(orders(), timeout=30)
            assert (summary.count, list(summary.ids)) == (5, [f"i-{i}" for i in range(5)])

            # bidirectional: each note comes back before the next one is written
            chat = stub.Chat(timeout=30)
            for i, text in enumerate(["a", "bb", "ccc"]):
                await chat.write(pb.Note(text=text))
                reply = await chat.read()
                assert isinstance(reply, pb.Note)
                assert (reply.seq, reply.text) == (i, text)
            await chat.done_writing()
            assert await chat.read() is grpc.aio.EOF
            assert await chat.code() == grpc.StatusCode.OK


# -- deadlines ------------------------------------------------------------------------


async def test_grpcio_deadline_arrives_as_tethers_deadline() -> None:
    with order_service() as server:
        async with stub_for(server) as stub:
            with_deadline = await stub.GetOrder(pb.GetOrderRequest(id="d"), timeout=5)
            without = await stub.GetOrder(pb.GetOrderRequest(id="d"))
    # grpc-timeout (sent by grpcio) became tether.time_remaining() in the handler
    assert 3000 < with_deadline.call.time_remaining_ms <= 5000
    assert without.call.time_remaining_ms == -1  # no deadline: none invented


async def test_call_past_its_deadline_has_its_query_cancelled(postgres_dsn: str) -> None:
    """The deadline here is tether's own (x-request-timeout-ms in the metadata, no
    grpcio timeout): the client waits, so only the server can end the query."""
    query_tag = tag("deadline")
    with order_service(env=db_env(postgres_dsn)) as server:
        async with stub_for(server) as stub, monitoring(postgres_dsn) as monitor:
            call = stub.QueryOrder(pb.QueryOrderRequest(tag=query_tag, sleep_s=30),
                                   metadata=[("x-request-timeout-ms", "1500")])
            await until(lambda: _is_running(monitor, query_tag), 10, "the query to start")
            await until(lambda: _is_gone(monitor, query_tag), 5, "the query to be cancelled")
            with contextlib.suppress(grpc.aio.AioRpcError):  # its status: the next test
                await asyncio.wait_for(call, 20)


async def test_call_past_tethers_deadline_gets_deadline_exceeded() -> None:
    """x-request-timeout-ms (tether's deadline, no grpcio timeout): DEADLINE_EXCEEDED can
    only come from the server's trailers. connect-python turns the cancellation into an
    error of its own and then sends grpc-status 0 from a finally block: tether must not
    forward that (it did before 808897f; grpcio then read OK with no message)."""
    with order_service() as server:
        async with stub_for(server) as stub:
            call = stub.GetOrder(pb.GetOrderRequest(id="late", delay_ms=10_000),
                                 metadata=[("x-request-timeout-ms", "500")])
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(call, 20)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
            assert time.monotonic() - started < 5


async def test_grpcio_timeout_cancels_the_handlers_query(postgres_dsn: str) -> None:
    query_tag = tag("timeout")
    with order_service(env=db_env(postgres_dsn)) as server:
        async with stub_for(server) as stub, monitoring(postgres_dsn) as monitor:
            call = stub.QueryOrder(pb.QueryOrderRequest(tag=query_tag, sleep_s=30), timeout=2)
            await until(lambda: _is_running(monitor, query_tag), 10, "the query to start")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(call, 20)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
            await until(lambda: _is_gone(monitor, query_tag), 5, "the query to be cancelled")


async def test_grpcio_cancel_cancels_the_handler_and_its_query(postgres_dsn: str) -> None:
    query_tag = tag("cancel")
    with order_service(env=db_env(postgres_dsn)) as server:
        async with stub_for(server) as stub, monitoring(postgres_dsn) as monitor:
            call = stub.QueryOrder(pb.QueryOrderRequest(tag=query_tag, sleep_s=30))
            await until(lambda: _is_running(monitor, query_tag), 10, "the query to start")
            assert call.cancel()
            # RST_STREAM(CANCEL) reached the worker: the handler is cancelled and
            # tether.db cancels the query in PostgreSQL (30 s it would otherwise run)
            await until(lambda: _is_gone(monitor, query_tag), 5, "the query to be cancelled")
            # the connection's other streams go on
            order = await stub.GetOrder(pb.GetOrderRequest(id="after"), timeout=10)
            assert order.id == "after"


async def _is_running(monitor: asyncpg.Connection, query_tag: str) -> bool:
    return await running(monitor, query_tag) > 0


async def _is_gone(monitor: asyncpg.Connection, query_tag: str) -> bool:
    return await running(monitor, query_tag) == 0


async def test_next_hop_gets_what_is_left_of_the_grpc_deadline() -> None:
    with server_process(NEXT_HOP, cwd=ROOT, timeout=60) as hop, \
            order_service(env={"ORDERS_NEXT_HOP": hop.url}) as server:
        async with stub_for(server) as stub:
            reply = await stub.ForwardOrder(pb.ForwardOrderRequest(path="/budget"), timeout=4)
            unbounded = await stub.ForwardOrder(pb.ForwardOrderRequest(path="/budget"))
    assert reply.status == 200
    seen = json.loads(reply.body)
    # grpc-timeout 4 s -> the handler's deadline -> tether.Client's x-request-timeout-ms
    # -> the next hop's own deadline, each no more than what the caller had left
    assert 2000 < int(seen["header"]) <= reply.call.time_remaining_ms <= 4000
    assert 0 < seen["remaining_ms"] <= int(seen["header"])
    assert json.loads(unbounded.body) == {"header": None, "remaining_ms": None}


async def test_a_next_hop_out_of_the_deadline_is_the_calls_deadline_exceeded() -> None:
    """The next hop answers 504 when the deadline it was handed runs out, which can
    come a few milliseconds before the call's own: the caller sees DEADLINE_EXCEEDED
    either way, never OK with a 504 inside (the demo's chain once did, under load)."""
    timed_out = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 18\r\n\r\ndeadline exceeded\n"
    with RawUpstream(lambda method, target: timed_out) as hop, \
            order_service(env={"ORDERS_NEXT_HOP": f"http://{hop.address}"}) as server:
        async with stub_for(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ForwardOrder(pb.ForwardOrderRequest(path="/query"), timeout=10)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    assert ("GET", "/query") in hop.requests


# -- reload and stop ------------------------------------------------------------------


async def test_rolling_reload_under_a_stream_of_rpcs_fails_none() -> None:
    calls = 4  # concurrent callers on one channel
    per_caller = 1000  # a bound on the count; the loop ends once a new worker answered
    outcomes: Counter[str] = Counter()
    pids: set[int] = set()
    before: set[int] = set()  # the workers that served calls before the SIGHUP
    reloaded = asyncio.Event()
    with order_service("--workers", "2") as server:
        async with stub_for(server) as stub:

            async def caller(n: int) -> None:
                for i in range(per_caller):
                    try:
                        order = await stub.GetOrder(
                            pb.GetOrderRequest(id=f"{n}-{i}", delay_ms=20), timeout=20)
                    except grpc.aio.AioRpcError as exc:
                        outcomes[f"{exc.code().name}: {exc.details()}"] += 1
                    else:
                        outcomes["ok"] += 1
                        pids.add(order.call.pid)
                    # "reload finished" is logged when the last old worker starts to
                    # drain: go on until a call has reached a new worker
                    if reloaded.is_set() and pids - before:
                        return

            tasks = [asyncio.create_task(caller(n)) for n in range(calls)]
            await until(lambda: _at_least(outcomes, 20), 30, "calls to be served")
            before.update(pids)
            server.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for_line, "reload finished", 60)
            reloaded.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
        log = server.output()
    assert set(outcomes) == {"ok"}, outcomes
    assert pids - before, f"no call reached a new worker: {pids}\n{log}"


async def _at_least(outcomes: Counter[str], n: int) -> bool:
    return outcomes.total() >= n


async def test_graceful_stop_lets_an_rpc_in_flight_finish() -> None:
    with order_service("--workers", "1") as server:
        async with stub_for(server) as stub:
            stream = stub.WatchOrder(
                pb.WatchOrderRequest(id="stop", count=5, interval_ms=300), timeout=30)
            first = await stream.read()
            assert isinstance(first, pb.OrderEvent) and first.seq == 0
            server.proc.send_signal(signal.SIGTERM)  # the call is now in flight
            rest = []
            while (event := await stream.read()) is not grpc.aio.EOF:
                assert isinstance(event, pb.OrderEvent)
                rest.append(event.seq)
            assert rest == [1, 2, 3, 4]
            assert await stream.code() == grpc.StatusCode.OK
        assert await asyncio.to_thread(server.proc.wait, 30) == 0


async def _stop_past_the_grace_period() -> tuple[grpc.StatusCode, str, str]:
    """A WatchOrder stream that outlives a 1 s --graceful-timeout (its first event is
    read, so it is in flight, then the server waits 20 s): the call's code and details,
    and the server's output."""
    with order_service("--workers", "1", "--graceful-timeout", "1") as server:
        async with stub_for(server) as stub:
            stream = stub.WatchOrder(
                pb.WatchOrderRequest(id="long", count=2, interval_ms=20_000), timeout=30)
            assert isinstance(await stream.read(), pb.OrderEvent)
            server.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await asyncio.wait_for(stream.read(), 20)
            code, details = await stream.code(), await stream.details()
        await asyncio.to_thread(server.proc.wait, 30)
        return code, details, server.output()


async def test_call_cancelled_past_the_grace_period_gets_unavailable() -> None:
    code, details, output = await _stop_past_the_grace_period()
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details, output)


async def test_stop_past_the_grace_period_closes_the_connection_cleanly() -> None:
    """Http2Connection.close() and _write() called each other (RecursionError) at the end
    of a stop that cancelled a stream, before f28a2b5."""
    _, _, output = await _stop_past_the_grace_period()
    assert "RecursionError" not in output, output
