"""The order service's logic, independent of the server it runs on.

``service.py`` serves it with connect-python on ``tether serve``; ``aio_server.py``
serves the very same functions on grpcio's own ``grpc.aio`` server (the benchmark's
baseline). Each function takes the request message(s) and returns the reply; the
deadline the handler saw is passed in, because each server has its own way to read it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from examples.grpc.gen import orders_pb2 as pb


def call_info(remaining: float | None) -> pb.CallInfo:
    """What the handler saw: the seconds left before its deadline (-1: none) and its pid."""
    return pb.CallInfo(time_remaining_ms=-1.0 if remaining is None else remaining * 1000.0,
                       pid=os.getpid())


async def get_order(request: pb.GetOrderRequest, remaining: float | None) -> pb.Order:
    """One order; waits ``delay_ms`` first (a call in flight during a reload or a stop)."""
    info = call_info(remaining)
    if request.delay_ms > 0:
        await asyncio.sleep(request.delay_ms / 1000.0)
    return pb.Order(id=request.id, status="shipped", call=info)


async def watch_order(request: pb.WatchOrderRequest) -> AsyncIterator[pb.OrderEvent]:
    """``count`` events, ``interval_ms`` apart."""
    for seq in range(request.count):
        if seq and request.interval_ms > 0:
            await asyncio.sleep(request.interval_ms / 1000.0)
        yield pb.OrderEvent(id=request.id, seq=seq,
                            status="delivered" if seq == request.count - 1 else "moving")


async def import_orders(orders: AsyncIterator[pb.Order]) -> pb.ImportSummary:
    """Count the orders sent and list their ids."""
    ids = [order.id async for order in orders]
    return pb.ImportSummary(count=len(ids), ids=ids)


async def chat(notes: AsyncIterator[pb.Note]) -> AsyncIterator[pb.Note]:
    """Every note back as soon as it arrives, numbered from 0 by the server."""
    seq = 0
    async for note in notes:
        yield pb.Note(seq=seq, text=note.text)
        seq += 1
