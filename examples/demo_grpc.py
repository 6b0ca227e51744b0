"""``make demo`` step 8: a gRPC call chain whose deadline runs out mid-chain.

grpcio (the reference client) -> ``orders-grpc`` (the connect-python service of
``examples/grpc``, on ``tether serve`` over h2c, registered in the registry and found
there) -> ``ForwardOrder`` calls the next hop through ``tether.Client`` ->
``orders-next`` (``examples/grpc/next_hop.py``) runs ``pg_sleep`` in a throwaway
PostgreSQL through ``tether.db``.

1. A call with a 2 s deadline asks the next hop for ``/budget``: the deadline reaches
   the gRPC handler as ``tether.time_remaining()`` and the next hop as
   ``x-request-timeout-ms``, each hop a little less.
2. A call with a 1 s deadline asks for a 5 s query: the deadline runs out in the
   middle of the chain. The client gets DEADLINE_EXCEEDED after about 1 s; the query
   is cancelled in PostgreSQL (the next hop's ``tether_db_queries_cancelled_total``
   moves and ``pg_stat_activity`` shows no ``pg_sleep`` left running).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import grpc

from examples.grpc.gen import orders_pb2 as pb
from examples.grpc.gen import orders_pb2_grpc as pb_grpc
from tether.registry import open_registry

FIRST_DEADLINE = 2.0
SHORT_DEADLINE = 1.0
QUERY_SECONDS = 5.0


@dataclass
class ChainResult:
    registered: str = ""
    handler_budget_ms: float = 0.0
    next_hop_header_ms: str = ""
    short_code: str = ""
    short_seconds: float = 0.0
    queries_cancelled: float = 0.0
    queries_left_running: int = -1

    @property
    def ok(self) -> bool:
        return (bool(self.registered) and 0 < self.handler_budget_ms <= FIRST_DEADLINE * 1000
                and bool(self.next_hop_header_ms)
                and self.short_code == "DEADLINE_EXCEEDED"
                and self.short_seconds < SHORT_DEADLINE + 1.0
                and self.queries_cancelled >= 1 and self.queries_left_running == 0)


async def registered_address(registry: str, service: str) -> str:
    """Where the registry says ``service`` is served (the first provider)."""
    reg = open_registry(registry, create=False)
    try:
        providers = await reg.list(service)
    finally:
        await reg.close()
    return providers[0][0].address if providers else ""


async def run_chain(registry: str, dsn: str, cancelled: Callable[[], float],
                    until: Callable[[Callable[[], bool], float, str], Awaitable[None]],
                    ) -> ChainResult:
    """Steps 1 and 2 above; ``cancelled()`` reads the next hop's cancelled-query count."""
    result = ChainResult()
    result.registered = await registered_address(registry, "orders-grpc")
    # (grpcio would honour http_proxy: the chain is on 127.0.0.1 only)
    async with grpc.aio.insecure_channel(
            result.registered, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = pb_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.ForwardOrder(pb.ForwardOrderRequest(path="/budget"),
                                        timeout=FIRST_DEADLINE)
        result.handler_budget_ms = reply.call.time_remaining_ms
        result.next_hop_header_ms = json.loads(reply.body).get("header") or ""

        before = cancelled()
        started = time.monotonic()
        try:
            await stub.ForwardOrder(
                pb.ForwardOrderRequest(path=f"/query?sleep={QUERY_SECONDS}"),
                timeout=SHORT_DEADLINE)
            result.short_code = "OK"
        except grpc.aio.AioRpcError as exc:
            result.short_code = exc.code().name
        result.short_seconds = time.monotonic() - started
    await until(lambda: cancelled() - before >= 1, 10, "the next hop's query to be cancelled")
    result.queries_cancelled = cancelled() - before
    conn = await asyncpg.connect(dsn)
    try:
        # The query stops in PostgreSQL, not only in Python: no pg_sleep of the next hop
        # is left running (the cancel lands within moments; its 5 s would still be on).
        deadline = time.monotonic() + QUERY_SECONDS / 2
        while True:
            result.queries_left_running = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%next-hop%pg_sleep%' AND pid <> pg_backend_pid()")
            if not result.queries_left_running or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # polling PostgreSQL, bounded by the deadline above
    finally:
        await conn.close()
    return result
