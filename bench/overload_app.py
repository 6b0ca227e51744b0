"""The service ``bench/overload.py`` overloads: every request runs one ~20 ms
PostgreSQL query on a small pool, so its capacity is known (pool size / 20 ms).

Routes: ``/work`` (the query), ``/stats`` (queries sent and completed, JSON).
Configured by environment: ``OVERLOAD_DSN``, ``OVERLOAD_POOL`` (5),
``OVERLOAD_QUERY_SECONDS`` (0.02), ``OVERLOAD_DB_QUEUE`` (``adaptive``, or ``fifo``:
asyncpg's own queue).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tether import db
from tether.asgi import Receive, Scope, Send
from tether.db.asyncpg import Pool

STATS = {"started": 0, "completed": 0}
QUERY_SECONDS = float(os.environ.get("OVERLOAD_QUERY_SECONDS", "0.02"))
_pool: list[Pool] = []


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message: Any = await receive()
            if message["type"] == "lifespan.startup":
                size = int(os.environ.get("OVERLOAD_POOL", "5"))
                adaptive = os.environ.get("OVERLOAD_DB_QUEUE", "adaptive") == "adaptive"
                _pool.append(await Pool.create(os.environ["OVERLOAD_DSN"], min_size=size,
                                               max_size=size, adaptive_queue=adaptive))
                await send({"type": "lifespan.startup.complete"})
            else:
                await _pool[0].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/stats":
        STATS["started"] = db.counters["db_queries"]  # queries actually sent
        await _reply(send, 200, json.dumps(STATS).encode())
        return
    await _pool[0].fetchval("SELECT 1 FROM pg_sleep($1)", QUERY_SECONDS)
    STATS["completed"] += 1
    await _reply(send, 200, b"done")
