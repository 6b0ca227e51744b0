"""Two services for the cancellation cascade (field report 1): client -> front -> back -> PG.

Run as ``tether serve apps.cascade_app:front`` and ``tether serve apps.cascade_app:back``
(cwd: tests/). Plain ASGI, configured by the environment:

* ``CASCADE_MARKS``: a directory where handlers leave marks, one file per event, named
  ``<service>-<event>-<id>``; events: ``budget`` (its content: the
  ``x-request-timeout-ms`` the handler received, or ``none``), ``cancelled`` (the
  handler task was cancelled), ``deadline`` (DeadlineExceeded reached the handler),
  ``completed`` (it finished its work).
* back: ``CASCADE_DSN``, ``CASCADE_APP_NAME`` (the pool's ``application_name``, so the
  test can find its backends in ``pg_stat_activity``), ``CASCADE_POOL_MAX``.
* front: ``CASCADE_BACK_URL``.

back ``GET /query?id=ID&s=SECONDS`` runs ``SELECT /* cascade:ID */ pg_sleep(SECONDS)`` on
a :class:`tether.db.asyncpg.Pool`; ``/optout/query`` is the same handler behind
:func:`tether.no_cancel_on_disconnect`. front ``GET /?id=ID&s=SECONDS[&route=optout]``
calls back's ``/query`` (or ``/optout/query``) through :class:`tether.Client` and relays
its status.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import tether
from tether.asgi import Receive, Scope, Send
from tether.db.asyncpg import Pool

from ._lifespan import lifespan

_state: dict[str, Any] = {}


def mark(service: str, event: str, rid: str, content: str = "") -> None:
    """Leave ``<service>-<event>-<id>`` in the marks dir (atomically: written, renamed)."""
    marks = Path(os.environ["CASCADE_MARKS"])
    name = f"{service}-{event}-{rid}"
    tmp = marks / f".{name}.tmp"
    tmp.write_text(content)
    tmp.rename(marks / name)


def _params(scope: Scope) -> tuple[str, float]:
    query = parse_qs(scope["query_string"].decode("latin-1"))
    rid = query.get("id", ["0"])[0]
    if not rid.replace("-", "").isalnum():  # it goes into a SQL comment
        raise ValueError(f"bad id {rid!r}")
    return rid, float(query.get("s", ["30"])[0])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


# -- back: the service that talks to PostgreSQL ------------------------------------------


async def _back_startup() -> None:
    _state["pool"] = await Pool.create(
        os.environ["CASCADE_DSN"], min_size=1, max_size=int(os.environ["CASCADE_POOL_MAX"]),
        server_settings={"application_name": os.environ["CASCADE_APP_NAME"]},
    )


async def _back_shutdown() -> None:
    pool: Pool | None = _state.pop("pool", None)
    if pool is not None:
        await asyncio.wait_for(pool.close(), 5)


async def _query(scope: Scope, receive: Receive, send: Send) -> None:
    rid, seconds = _params(scope)
    mark("back", "budget", rid, _header(scope, b"x-request-timeout-ms") or "none")
    pool: Pool = _state["pool"]
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"SELECT /* cascade:{rid} */ pg_sleep($1)", seconds)
    except asyncio.CancelledError:
        mark("back", "cancelled", rid)
        raise
    except tether.DeadlineExceeded:
        mark("back", "deadline", rid)
        raise
    mark("back", "completed", rid)
    await _respond(send, 200, b"completed")


_optout_query = tether.no_cancel_on_disconnect(_query)


async def back(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, _back_startup, _back_shutdown)
    elif scope["path"] == "/query":
        await _query(scope, receive, send)
    elif scope["path"] == "/optout/query":
        await _optout_query(scope, receive, send)
    else:
        await _respond(send, 404, b"not found")


# -- front: calls back through tether.Client ----------------------------------------------


async def _front_startup() -> None:
    _state["client"] = tether.Client(base_url=os.environ["CASCADE_BACK_URL"], timeout=60)


async def _front_shutdown() -> None:
    client: tether.Client | None = _state.pop("client", None)
    if client is not None:
        await client.aclose()


async def front(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, _front_startup, _front_shutdown)
        return
    if scope["path"] != "/":
        await _respond(send, 404, b"not found")
        return
    rid, seconds = _params(scope)
    route = parse_qs(scope["query_string"].decode("latin-1")).get("route", ["query"])[0]
    path = "/optout/query" if route == "optout" else "/query"
    mark("front", "budget", rid, _header(scope, b"x-request-timeout-ms") or "none")
    client: tether.Client = _state["client"]
    try:
        response = await client.get(f"{path}?id={rid}&s={seconds}")
    except asyncio.CancelledError:
        mark("front", "cancelled", rid)
        raise
    except tether.DeadlineExceeded:
        mark("front", "deadline", rid)
        raise
    mark("front", "completed", rid, str(response.status_code))
    await _respond(send, response.status_code, response.content)
