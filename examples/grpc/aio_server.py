"""The order service's logic on grpcio's own ``grpc.aio`` server (the benchmark's baseline).

The same functions as ``service.py`` (``logic.py``), served by grpcio instead of tether:
``bench/grpc_unary.py`` compares the two. Only the four transport-independent RPCs are
implemented (``QueryOrder`` and ``ForwardOrder`` need tether and answer UNIMPLEMENTED).
Run from the repository root::

    python -m examples.grpc.aio_server --port 50052

It logs ``serving on 127.0.0.1:PORT`` once it listens and stops on SIGTERM or SIGINT
(letting calls in flight finish for up to 5 s, as ``grpc.aio``'s ``stop(grace)`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc

from examples.grpc import logic
from examples.grpc.gen import orders_pb2 as pb
from examples.grpc.gen import orders_pb2_grpc as pb_grpc

GRACE = 5.0  # seconds calls in flight get on SIGTERM


class OrderServicer(pb_grpc.OrderServiceServicer):
    """grpcio's servicer over logic.py; the deadline is grpcio's own view of it."""

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Order:
        return await logic.get_order(request, context.time_remaining())

    # grpc.aio serves a streaming response only from an async generator *function*
    async def WatchOrder(
        self, request: pb.WatchOrderRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.OrderEvent]:
        async for event in logic.watch_order(request):
            yield event

    async def ImportOrders(
        self, request_iterator: AsyncIterator[pb.Order],
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.ImportSummary:
        return await logic.import_orders(request_iterator)

    async def Chat(
        self, request_iterator: AsyncIterator[pb.Note],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.Note]:
        async for note in logic.chat(request_iterator):
            yield note


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    # protoc's grpcio module has no annotations
    pb_grpc.add_OrderServiceServicer_to_server(OrderServicer(), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"serving on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(GRACE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
