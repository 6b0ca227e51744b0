"""An app for the raw HTTP/2 tests (tests/test_http2_raw.py).

Handlers leave marks in ``$H2_MARKS`` (a directory) named ``<what>-<id>``, ``id``
from the query string: ``started`` when they begin, ``cancelled`` when tether
cancels them, ``ended`` when they end whichever way.

``/``: 200 ``ok <pid>``. ``/scope``: the scope's ``http_version``, extension names
and ``tether.time_remaining()`` as JSON. ``/echo``: the size and SHA-256 of the
request body as JSON. ``/trailers``: a body in two parts, then trailers.
``/slow?s=S``: answers after S seconds. ``/big?n=N``: N bytes of body in 16 KB parts.
``/hop``: HTTP/1.1 connection-specific response headers (HTTP/2 forbids them).
``/fail``: raises after its head and a first part (``?grpc=1``: as a gRPC call).
``/grpc?s=S``: a gRPC-shaped answer after S seconds (``&started=1``: its head and
one message first).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import tether
from tether.asgi import Receive, Scope, Send

MARKS = Path(os.environ.get("H2_MARKS", "/tmp"))
#: a gRPC message: not compressed, 5 bytes long, "hello"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"


def _mark(what: str, ident: str) -> None:
    (MARKS / f"{what}-{ident}").write_text(str(time.time()))


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _trailers(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
    await send({"type": "http.response.body", "body": b"part two"})
    await send({"type": "http.response.trailers",
                "headers": [(b"x-checksum", b"abc123"), (b"x-parts", b"2")]})


async def _big(send: Send, size: int) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", b"%d" % size)]})
    sent = 0
    while sent < size:
        part = min(16384, size - sent)
        sent += part
        await send({"type": "http.response.body", "body": b"x" * part,
                    "more_body": sent < size})


async def _grpc(send: Send, seconds: float, started: bool) -> None:
    if started:
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"application/grpc")]})
        await send({"type": "http.response.body", "body": GRPC_MESSAGE, "more_body": True})
    await asyncio.sleep(seconds)
    if not started:
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"application/grpc")]})
    await send({"type": "http.response.body", "body": b"" if started else GRPC_MESSAGE})
    await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    ident = query.get("id", "-")
    path = scope["path"]
    _mark("started", ident)
    try:
        if path == "/scope":
            facts = {"http_version": scope["http_version"],
                     "extensions": sorted(scope.get("extensions") or {}),
                     "time_remaining": tether.time_remaining()}
            await _answer(send, json.dumps(facts).encode(), b"application/json")
        elif path == "/echo":
            body = await _read_body(receive)
            facts = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            await _answer(send, json.dumps(facts).encode(), b"application/json")
        elif path == "/trailers":
            await _trailers(send)
        elif path == "/slow":
            await asyncio.sleep(float(query.get("s", "0")))
            await _answer(send, f"slow ok {os.getpid()}\n".encode())
        elif path == "/big":
            await _big(send, int(query.get("n", "0")))
        elif path == "/hop":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"connection", b"keep-alive"),
                                    (b"keep-alive", b"timeout=5"),
                                    (b"proxy-connection", b"keep-alive"),
                                    (b"x-kept", b"yes")]})
            await send({"type": "http.response.body", "body": b"hop"})
        elif path == "/fail":
            ctype = b"application/grpc" if query.get("grpc") == "1" else b"text/plain"
            await send({"type": "http.response.start", "status": 200, "trailers": True,
                        "headers": [(b"content-type", ctype)]})
            await send({"type": "http.response.body", "body": GRPC_MESSAGE, "more_body": True})
            raise RuntimeError("h2_app: failing mid-response on purpose")
        elif path == "/grpc":
            await _grpc(send, float(query.get("s", "0")), query.get("started") == "1")
        else:
            await _answer(send, f"ok {os.getpid()}\n".encode())
    except asyncio.CancelledError:
        _mark("cancelled", ident)
        raise
    finally:
        _mark("ended", ident)
