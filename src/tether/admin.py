"""The admin ASGI app the supervisor serves on ``--admin-port``: health, readiness,
status, Prometheus metrics.

Routes are a table from path to handler, so later subsystems (``/metrics``) add a
row rather than a branch. Must never touch a worker directly: it only reads what
the supervisor hands it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from tether.asgi import ASGIApp, Receive, Scope, Send

StatusFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], bool]
MetricsFn = Callable[[], bytes]
#: the Prometheus text exposition format
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[], Awaitable[tuple[int, bytes, bytes]]]


async def _send(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]})
    await send({"type": "http.response.body", "body": body})


def admin_app(status: StatusFn, ready: ReadyFn, metrics: MetricsFn | None = None) -> ASGIApp:
    """Build the admin app over the supervisor's ``status``, ``ready`` and ``metrics``
    callables."""
    text = b"text/plain; charset=utf-8"

    async def healthz() -> tuple[int, bytes, bytes]:
        return 200, b"ok\n", text  # the supervisor is alive and answering

    async def readyz() -> tuple[int, bytes, bytes]:
        if ready():
            return 200, b"ready\n", text
        return 503, b"not ready\n", text

    async def status_json() -> tuple[int, bytes, bytes]:
        return 200, json.dumps(status(), indent=2).encode() + b"\n", b"application/json"

    async def metrics_text() -> tuple[int, bytes, bytes]:
        assert metrics is not None
        return 200, metrics(), PROMETHEUS_TEXT

    routes: dict[str, Handler] = {
        "/healthz": healthz,
        "/readyz": readyz,
        "/status": status_json,
    }
    if metrics is not None:
        routes["/metrics"] = metrics_text

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        handler = routes.get(scope["path"])
        if handler is None:
            await _send(send, 404, b"not found\n", text)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"method not allowed\n", text)
            return
        await _send(send, *await handler())

    return app
