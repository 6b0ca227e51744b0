"""A plain-ASGI application for the HTTP/2 client tests (``tests/test_http2_clients.py``),
served by a real ``tether serve apps.h2_app:app``.

* ``/echo``: JSON of what the scope and the body held: ``http_version``, ``scheme``,
  ``method``, ``path``, the request headers (names as sent, lower case), the
  ``client`` address (one connection, one client port), the extensions advertised and
  the body's length and SHA-256. A request header ``x-echo`` comes back as a response
  header ``x-echoed``.
* ``/gather?n=N&batch=NAME``: answers only once N requests of batch NAME have arrived
  in this worker, all still in flight (or 503 after :data:`GATHER_TIMEOUT`): N
  concurrent streams on one connection pass, streams served one after another do not.
* ``/trailers``: a chunked body, then trailer fields through the ASGI
  ``http.response.trailers`` extension (a 501 when the scope does not advertise it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Final
from urllib.parse import parse_qs

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan

GATHER_TIMEOUT: Final = 15.0
TRAILERS_EXTENSION: Final = "http.response.trailers"
#: what /trailers sends: its body chunks, then its trailer fields
TRAILER_CHUNKS: Final = (b"first chunk\n", b"second chunk\n")
TRAILER_FIELDS: Final = [(b"x-checksum", hashlib.sha256(b"".join(TRAILER_CHUNKS)).hexdigest()
                          .encode()), (b"x-outcome", b"complete")]


#: /gather batches in this worker: batch name -> (requests arrived, all arrived)
_batches: dict[str, tuple[list[int], asyncio.Event]] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/echo":
        await _echo(scope, receive, send)
    elif path == "/gather":
        await _gather(scope, send)
    elif path == "/trailers":
        await _trailers(scope, send)
    else:
        await _plain(send, 404, b"not found\n")


async def _plain(send: Send, status: int, body: bytes,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", b"%d" % len(body)), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    headers = scope["headers"]
    document = json.dumps({
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "method": scope["method"],
        "path": scope["path"],
        "query_string": scope["query_string"].decode(),
        "headers": [[name.decode(), value.decode()] for name, value in headers],
        "client": scope["client"],
        "extensions": sorted(scope.get("extensions") or {}),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }).encode()
    echoed = [(b"x-echoed", value) for name, value in headers if name == b"x-echo"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(document)), *echoed]})
    await send({"type": "http.response.body", "body": document})


async def _gather(scope: Scope, send: Send) -> None:
    query = parse_qs(scope["query_string"].decode())
    wanted = int(query.get("n", ["1"])[0])
    arrived, everyone = _batches.setdefault(query.get("batch", [""])[0], ([0], asyncio.Event()))
    arrived[0] += 1
    if arrived[0] >= wanted:
        everyone.set()
    try:
        await asyncio.wait_for(everyone.wait(), GATHER_TIMEOUT)
    except TimeoutError:
        await _plain(send, 503, b"only %d arrived\n" % arrived[0])
        return
    await _plain(send, 200, b"gathered\n")


async def _trailers(scope: Scope, send: Send) -> None:
    if TRAILERS_EXTENSION not in (scope.get("extensions") or {}):
        await _plain(send, 501, b"no http.response.trailers extension in the scope\n")
        return
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"content-type", b"text/plain")]})
    for chunk in TRAILER_CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "headers": TRAILER_FIELDS,
                "more_trailers": False})
