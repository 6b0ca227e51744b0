"""The ``front`` service of the demo: calls ``orders`` through a cluster, with deadlines.

``GET /order/<id>`` -> ``orders`` ``/orders/<id>`` (provider chosen by p2c, retried
elsewhere when one dies, under the caller's deadline). ``GET /slow`` -> ``orders``
``/orders/slow``. ``GET /cluster``: this worker's view of the ``orders`` providers.
``GET /healthz``: 200 (for a cluster with ``health_path="/healthz"``; ``tether proxy``
probes with ``OPTIONS *``, which tether serve answers without the app).
The registry URL comes from ``DEMO_REGISTRY``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import tether
from tether.asgi import Receive, Scope, Send
from tether.client import ClusterConfig

_state: dict[str, Any] = {}


async def _json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            client = tether.Client(registry=os.environ["DEMO_REGISTRY"], timeout=2.0)
            _state["client"] = client
            _state["orders"] = client.service(
                "orders",
                config=ClusterConfig(heartbeat_interval=0.5, backoff_initial=0.1,
                                     max_reconnect_attempts=4),
            )
            # Start watching now (a cluster otherwise starts on its first request),
            # and give the providers a moment to be found before serving.
            with contextlib.suppress(TimeoutError):
                await _state["orders"].wait_ready(timeout=2.0)
            await send({"type": "lifespan.startup.complete"})
        else:
            await _state["client"].aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    orders = _state["orders"]
    path = scope["path"]
    if path == "/healthz":
        await _json(send, 200, {"ok": True})
        return
    if path == "/cluster":
        await _json(send, 200, {"providers": orders.providers(), "stats": orders.stats(),
                                "pool": _state["client"].stats()})
        return
    target = "/orders/slow" if path == "/slow" else "/orders/" + path.rsplit("/", 1)[-1]
    response = await orders.get(target)  # deadline and cancellation travel with it
    await _json(send, response.status_code, response.json())
