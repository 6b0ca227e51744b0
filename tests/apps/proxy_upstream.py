"""The upstream app behind ``tether proxy`` in ``tests/test_proxy.py`` (plain ASGI 3).

Routes (any prefix before them is ignored, so ``/api/orders/echo`` is ``echo``;
the last path segment picks the handler):

- ``healthz``: 200 ``ok`` (the proxy's clusters probe it).
- ``who`` (and any path not listed here): JSON ``{"name": $PROXY_UPSTREAM_NAME,
  "path": ..., "tls": <ASGI tls extension or null>}``: which upstream answered, for
  which path, and with which SNI.
- ``echo``: JSON ``{"headers": [[name, value], ...], "path": ...}``: the request
  headers exactly as received (lowercase names, in order).
- ``upload``: reads the body chunk by chunk, counting and hashing as it goes;
  answers JSON ``{"count": N, "sha256": hex}``.
- ``download?size=N``: streams ``N`` bytes of :func:`pattern` in 64 KiB chunks.
- ``hang?token=T``: sends a first chunk, then waits (60 s at most); when cancelled
  writes ``time.time()`` to ``$PROXY_MARKS/cancelled-T``.
- ``wait?token=T``: writes ``$PROXY_MARKS/started-T``, then waits (60 s at most)
  before a small JSON answer (a Content-Length: the proxy's small-response path);
  when cancelled writes ``time.time()`` to ``$PROXY_MARKS/cancelled-T``.
- ``slow?token=T&s=S``: writes the ``x-request-timeout-ms`` header it received
  (or ``none``) to ``$PROXY_MARKS/deadline-T``, then answers after ``S`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan

CHUNK = 64 * 1024
#: the longest a handler that "waits forever" actually waits (so nothing leaks forever)
HANG_LIMIT = 60.0


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking content of ``size`` bytes (the download)."""
    block = hashlib.sha256(b"tether-proxy").digest() * (CHUNK // 32)
    whole, rest = divmod(size, CHUNK)
    return block * whole + block[:rest]


def _marks() -> Path:
    return Path(os.environ["PROXY_MARKS"])


def _write_mark(name: str, text: str) -> None:
    marks = _marks()
    tmp = marks / f"{name}.tmp"
    tmp.write_text(text)
    tmp.rename(marks / name)  # atomic: the test never reads a half-written mark


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _json(send: Send, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    action = path.rstrip("/").rsplit("/", 1)[-1]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
    if action == "upload":
        count, digest = 0, hashlib.sha256()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunk = message.get("body", b"")
            count += len(chunk)
            digest.update(chunk)
            if not message.get("more_body", False):
                break
        await _json(send, {"count": count, "sha256": digest.hexdigest()})
        return
    await _drain(receive)
    if action == "healthz":
        body = b"ok\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif action == "echo":
        await _json(send, {"headers": headers, "path": path})
    elif action == "download":
        size = int(query["size"])
        block = pattern(CHUNK)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += len(piece)
        await send({"type": "http.response.body", "body": b""})
    elif action == "hang":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first bytes\n", "more_body": True})
        try:
            await asyncio.sleep(HANG_LIMIT)
        except asyncio.CancelledError:
            _write_mark(f"cancelled-{query['token']}", repr(time.time()))
            raise
        await send({"type": "http.response.body", "body": b"too late\n"})
    elif action == "wait":
        _write_mark(f"started-{query['token']}", repr(time.time()))
        try:
            await asyncio.sleep(HANG_LIMIT)
        except asyncio.CancelledError:
            _write_mark(f"cancelled-{query['token']}", repr(time.time()))
            raise
        await _json(send, {"waited": HANG_LIMIT})
    elif action == "slow":
        seen = next((v for n, v in headers if n == "x-request-timeout-ms"), "none")
        _write_mark(f"deadline-{query['token']}", seen)
        await asyncio.sleep(float(query.get("s", "2")))
        await _json(send, {"slept": query.get("s", "2")})
    else:  # "who", and any other path
        tls = (scope.get("extensions") or {}).get("tls")
        await _json(send, {"name": os.environ.get("PROXY_UPSTREAM_NAME", ""), "path": path,
                           "tls": tls})
