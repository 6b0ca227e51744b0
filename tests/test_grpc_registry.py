"""A gRPC service registers in the registry and is found there, as an HTTP one is.

``tether serve examples.grpc.service:app --registry ... --service orders-grpc``: the
provider appears under its service name, a ``tether.Client`` cluster of that service
probes it alive (``OPTIONS *`` over HTTP/1.1, answered by the server itself on the
same port that serves gRPC over h2c), and grpcio reaches the service at the address
the registry gave.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

import tether
from examples.grpc.gen import orders_pb2 as pb
from examples.grpc.gen import orders_pb2_grpc as pb_grpc
from tests.support import ROOT, server_process, wait_for
from tether.registry import open_registry

SERVICE = "orders-grpc"


async def test_a_grpc_service_registers_is_probed_alive_and_called_where_found(
        tmp_path: Path) -> None:
    registry = f"sqlite:///{tmp_path}/registry.db"
    with server_process("examples.grpc.service:app", "--registry", registry,
                        "--service", SERVICE, "--registry-ttl", "2", cwd=ROOT,
                        timeout=60) as server:
        reg = open_registry(registry)
        found: list[str] = []
        deadline = time.monotonic() + 20
        try:
            while not found:
                assert time.monotonic() < deadline, "the gRPC service never registered"
                found = [provider.address for provider, _ in await reg.list(SERVICE)]
                await asyncio.sleep(0.05)  # polling the registry, bounded above
        finally:
            await reg.close()
        assert found == [f"127.0.0.1:{server.port}"]

        async with tether.Client(registry=registry) as client:
            cluster = client.service(SERVICE, health_path="*")
            await wait_for(lambda: [state for _, state, *_ in cluster.providers()] == ["alive"],
                           20, "the cluster to probe the gRPC service alive")

        async with grpc.aio.insecure_channel(
                found[0], options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = pb_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.GetOrder(pb.GetOrderRequest(id="42"), timeout=10)
        assert reply.id == "42" and reply.call.time_remaining_ms > 0
