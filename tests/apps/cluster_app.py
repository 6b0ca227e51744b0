"""A provider for the cluster tests and ``bench/failover.py``: it says who answered, and
fails on demand.

* ``GET /healthz``: 200 ``ok``.
* ``GET /slow?seconds=S``: the same as any path, answered after S seconds.
* Any other path: 200, body and header ``x-served-by`` = the ``host:port`` the request
  came in on (ASGI ``scope["server"]``), so a client can tell its providers apart.
* ``CLUSTER_FAIL_FILE=PATH``: while that file exists, every path but ``/healthz``
  answers 503, or the status the file's text starts with (``500``, ``502``...): a
  provider that is up, and says so, but fails its requests, which is what passive
  outlier detection is for. If the text contains ``healthz``, ``/healthz`` fails too.
  The file is read on every request, so a test switches the failure on and off by
  creating and deleting it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import parse_qs

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan

FAIL_FILE_ENV = "CLUSTER_FAIL_FILE"
SERVED_BY = b"x-served-by"


def _failure(path: str) -> int | None:
    """The status to fail this request with, or None."""
    name = os.environ.get(FAIL_FILE_ENV)
    if not name:
        return None
    try:
        text = Path(name).read_text()
    except OSError:
        return None
    if path == "/healthz" and "healthz" not in text:
        return None
    digits = text[:3]
    return int(digits) if digits.isdigit() else 503


async def _respond(send: Send, status: int, body: bytes, served_by: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (SERVED_BY, served_by)],
    })
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    assert scope["type"] == "http"
    host, port = scope["server"] or ("?", 0)
    served_by = f"{host}:{port}".encode()
    path = scope["path"]
    status = _failure(path)
    if status is not None:
        await _respond(send, status, b"failing on purpose\n", served_by)
    elif path == "/healthz":
        await _respond(send, 200, b"ok\n", served_by)
    else:
        if path == "/slow":
            query = parse_qs(scope["query_string"].decode())
            await asyncio.sleep(float(query.get("seconds", ["1"])[0]))
        await _respond(send, 200, served_by, served_by)
