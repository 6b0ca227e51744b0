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
        assert cluster.machine.alive() == (f"127.0.0.1:{server.port}",)
        assert (await cluster.get("/")).status_code == 200


async def test_closing_a_client_passes_on_the_callers_cancellation() -> None:
    """A cancel (Ctrl-C in ``asyncio.run``) that arrives while a client closes must
    still stop the caller: the cluster waits for its background tasks without
    swallowing it (it used to: the close then went on as if nothing happened)."""
    async with serve(ok_app) as server:
        client = tether.Client()
        cluster = client.service("svc", providers=[f"127.0.0.1:{server.port}"])
        await cluster.wait_ready()
        cleaning = asyncio.Event()
        release = asyncio.Event()

        async def slow_to_finish() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cleaning.set()  # cancelled by the close; its cleanup takes a while
                await release.wait()

        cluster._spawn(slow_to_finish())
        closing = asyncio.create_task(client.aclose())
        await wait_for(cleaning.is_set, what="the close to wait for the slow task")
        closing.cancel()
        await asyncio.wait([closing], timeout=5)
        assert closing.cancelled()
        release.set()
        await client.aclose()
