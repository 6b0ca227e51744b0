"""The order service as an ASGI app (connect-python), served by ``tether serve``.

Run from the repository root::

    tether serve examples.grpc.service:app --port 50051

and call it with any gRPC client over h2c, e.g. grpcio (``client.py``). Every call
runs under tether's request cycle: a ``grpc-timeout`` becomes tether's deadline
(``tether.time_remaining()``), a cancelled call cancels its handler, a reload or a
stop lets calls in flight finish (see docs/grpc.md).

Environment (read at startup, in each worker):

* ``ORDERS_DSN``: PostgreSQL for ``QueryOrder`` (without it ``QueryOrder`` answers
  FAILED_PRECONDITION); ``ORDERS_APP_NAME``: the pool's ``application_name``.
* ``ORDERS_NEXT_HOP``: base URL of the HTTP service ``ForwardOrder`` calls
  (``examples/grpc/next_hop.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

import tether
from examples.grpc import logic
from examples.grpc.gen import orders_pb2 as pb
from examples.grpc.gen.orders_connect import OrderServiceASGIApplication
from tether.db.asyncpg import Pool

#: the handlers read nothing from connect-python's context (tether's deadline is the
#: one that counts), so its request and response types are left open
Context = RequestContext[Any, Any]

#: a tag goes into the SQL text as a comment, so it is held to this
_TAG = re.compile(r"[A-Za-z0-9-]{1,64}")


class OrderService:
    """The handlers: connect-python calls them with the decoded request and a context."""

    def __init__(self, pool: Pool | None, client: tether.Client | None) -> None:
        self.pool = pool
        self.client = client

    async def get_order(self, request: pb.GetOrderRequest, ctx: Context) -> pb.Order:
        return await logic.get_order(request, tether.time_remaining())

    def watch_order(
        self, request: pb.WatchOrderRequest, ctx: Context
    ) -> AsyncIterator[pb.OrderEvent]:
        return logic.watch_order(request)

    async def import_orders(
        self, request: AsyncIterator[pb.Order], ctx: Context
    ) -> pb.ImportSummary:
        return await logic.import_orders(request)

    def chat(self, request: AsyncIterator[pb.Note], ctx: Context) -> AsyncIterator[pb.Note]:
        return logic.chat(request)

    async def query_order(
        self, request: pb.QueryOrderRequest, ctx: Context
    ) -> pb.QueryOrderReply:
        info = logic.call_info(tether.time_remaining())
        if self.pool is None:
            raise ConnectError(Code.FAILED_PRECONDITION, "ORDERS_DSN is not set")
        if not _TAG.fullmatch(request.tag):
            raise ConnectError(Code.INVALID_ARGUMENT, "tag: letters, digits and '-' only")
        # tether.db bounds the query by the call's deadline and cancels it (in
        # PostgreSQL too) when the call is cancelled: nothing to do here for that.
        await self.pool.execute(f"SELECT /* grpc:{request.tag} */ pg_sleep($1)",
                                request.sleep_s)
        return pb.QueryOrderReply(tag=request.tag, call=info)

    async def forward_order(
        self, request: pb.ForwardOrderRequest, ctx: Context
    ) -> pb.ForwardOrderReply:
        info = logic.call_info(tether.time_remaining())
        if self.client is None:
            raise ConnectError(Code.FAILED_PRECONDITION, "ORDERS_NEXT_HOP is not set")
        # tether.Client sends what is left of this call's deadline to the next hop
        # (x-request-timeout-ms) and gives up when it runs out.
        response = await self.client.get(request.path or "/budget")
        if response.status_code == 504:
            # The next hop got what was left of this call's deadline and ran out of it
            # (tether answers 504 then), a few milliseconds before this call's own
            # deadline would have: the caller gets DEADLINE_EXCEEDED either way.
            raise ConnectError(Code.DEADLINE_EXCEEDED,
                               f"the next hop ran out of the deadline: {response.text}")
        return pb.ForwardOrderReply(status=response.status_code, body=response.text,
                                    call=info)


async def _service() -> AsyncGenerator[OrderService]:
    """The service for one worker: its PostgreSQL pool and HTTP client live as long as
    the worker does (ASGI lifespan; connect-python runs this generator)."""
    dsn = os.environ.get("ORDERS_DSN")
    next_hop = os.environ.get("ORDERS_NEXT_HOP")
    pool = None
    if dsn:
        pool = await Pool.create(dsn, min_size=1, max_size=8, server_settings={
            "application_name": os.environ.get("ORDERS_APP_NAME", "tether-grpc-orders")})
    client = tether.Client(base_url=next_hop, timeout=30.0) if next_hop else None
    try:
        yield OrderService(pool, client)
    finally:
        if client is not None:
            await client.aclose()
        if pool is not None:
            await asyncio.wait_for(pool.close(), 5)


app = OrderServiceASGIApplication(_service())
