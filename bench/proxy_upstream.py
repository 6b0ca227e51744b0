"""The upstream both proxies in ``bench/proxy.py`` forward to: ``bench.apps:hello``
plus a count of the connections it was reached on.

ASGI tells an app nothing about connections, but every request's ``scope["client"]``
is the peer's (host, port), and one TCP connection keeps one port. So
:func:`app` records the (host, port) pair of every request it answers; the number of
distinct pairs is the number of connections opened to it (exact as long as no
ephemeral port is used twice, which takes tens of thousands of connections).
``GET /_conns`` (not itself counted) answers ``{"connections": N, "requests": M}``
as JSON. One worker, so one process holds the whole count.

Served with ``python -m tether serve bench.proxy_upstream:app``.
"""

from __future__ import annotations

import json
from typing import Final

from bench.apps import Receive, Scope, Send, hello

COUNT_PATH: Final = "/_conns"

_peers: set[tuple[str, int]] = set()
_requests = 0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``bench.apps:hello``, counting connections; ``GET /_conns`` reports the count."""
    global _requests
    if scope["type"] == "http":
        if scope["path"] == COUNT_PATH:
            body = json.dumps({"connections": len(_peers), "requests": _requests}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        _requests += 1
        client = scope.get("client")
        if client is not None:
            _peers.add((client[0], client[1]))
    await hello(scope, receive, send)

