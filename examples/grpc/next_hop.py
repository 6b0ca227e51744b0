"""The next hop of ``ForwardOrder``: a plain HTTP ASGI app that says what deadline it got.

``GET /budget``: JSON ``{"header": <x-request-timeout-ms received or null>,
"remaining_ms": <tether.time_remaining() in ms or null>}``.

``GET /query?sleep=S``: ``SELECT pg_sleep(S)`` through ``tether.db`` on ``ORDERS_DSN``
(the hop where a deadline that runs out mid-chain cancels a query: ``make demo``);
JSON ``{"slept": S}``. Without ``ORDERS_DSN``: 503.

Run it with ``tether serve examples.grpc.next_hop:app`` and point ``ORDERS_NEXT_HOP``
at it.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import tether
from tether.asgi import Receive, Scope, Send
from tether.db.asyncpg import Pool

_pool: Pool | None = None


async def _query_pool() -> Pool | None:
    """This worker's pool, made on first use (the app has no lifespan to make it in)."""
    global _pool
    dsn = os.environ.get("ORDERS_DSN")
    if _pool is None and dsn:
        _pool = await Pool.create(dsn, min_size=1, max_size=4, server_settings={
            "application_name": "tether-grpc-next-hop"})
    return _pool


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    header = next((bytes(v).decode("latin-1") for k, v in scope["headers"]
                   if k == b"x-request-timeout-ms"), None)
    remaining = tether.time_remaining()
    status, payload = (200, {"header": header,
                             "remaining_ms": None if remaining is None else remaining * 1000})
    if scope["path"] == "/query":
        pool = await _query_pool()
        sleep = float(parse_qs(scope["query_string"].decode()).get("sleep", ["1"])[0])
        if pool is None:
            status, payload = 503, {"error": "ORDERS_DSN is not set"}
        else:
            # Bounded by the request's deadline, and cancelled in PostgreSQL when it
            # passes or the caller goes away (tether.db).
            await pool.execute("SELECT /* next-hop */ pg_sleep($1)", sleep)
            payload = {"slept": sleep}
    elif scope["path"] != "/budget":
        status, payload = 404, {"error": "not found"}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
