"""A cluster's background work (registry watch, timers, probes) must not inherit the
deadline of the request that happened to start it (found by the demo: once that
request's deadline passed, every probe failed and healthy providers were evicted)."""

from __future__ import annotations

import asyncio

import tether
from tests.support import serve, wait_for
from tether.asgi import Receive, Scope, Send
from tether.client import ClusterConfig


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_probes_outlive_the_first_requests_deadline() -> None:
    async with serve(ok_app) as server, tether.Client() as client:
        cluster = client.service(
            "svc", providers=[f"127.0.0.1:{server.port}"],
            config=ClusterConfig(heartbeat_interval=0.05),
        )
        async with tether.deadline_after(0.2):
            assert (await cluster.get("/")).status_code == 200  # starts the cluster
        probes = cluster.metrics["probes"]
        await asyncio.sleep(0.5)  # let heartbeats run well past that deadline
        await wait_for(lambda: cluster.metrics["probes"] >= probes + 3,
                       what="heartbeats after the deadline")
        assert cluster.core.alive() == [f"127.0.0.1:{server.port}"]
        assert (await cluster.get("/")).status_code == 200
