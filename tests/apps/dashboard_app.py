"""A front for the dashboard tests: every worker's ``tether.Client`` keeps a cluster
``backends`` over the static providers in ``DASHBOARD_PROVIDERS`` (comma-separated
``host:port``), tuned to find a dead provider out within seconds (probes every 0.2 s,
evicted after 3 failed reconnects), so a test sees alive -> retrying -> evicted.

* ``GET /call``: ``GET /`` on a provider through the cluster (its status, or 503
  when none is left).
* any other path: 200 ``hello``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import tether
from tether.asgi import Receive, Scope, Send
from tether.client import ClusterConfig

from ._lifespan import lifespan

_state: dict[str, Any] = {}
FAST = ClusterConfig(heartbeat_interval=0.2, backoff_initial=0.1, backoff_max=0.3,
                     max_reconnect_attempts=3)


async def _startup() -> None:
    client = _state["client"] = tether.Client(timeout=2.0)
    providers = [p for p in os.environ.get("DASHBOARD_PROVIDERS", "").split(",") if p]
    cluster = _state["cluster"] = client.service("backends", providers=providers,
                                                 health_path=None, config=FAST)
    with contextlib.suppress(TimeoutError):  # start watching before the first request
        await cluster.wait_ready(timeout=2.0)


async def _shutdown() -> None:
    await _state["client"].aclose()


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, _startup, _shutdown)
        return
    if scope["path"] != "/call":
        await _answer(send, 200, b"hello")
        return
    try:
        response = await _state["cluster"].get("/")
    except tether.ServiceUnavailable as exc:
        await _answer(send, 503, str(exc).encode())
        return
    await _answer(send, response.status_code, response.content)
