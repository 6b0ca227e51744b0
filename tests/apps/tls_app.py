"""A plain-ASGI application for the server-side TLS tests (``tests/test_client_tls.py``).

Every request is answered with JSON holding what the server put in the scope about
the connection: ``scheme``, the ``client`` address and ``extensions["tls"]`` (the
ASGI TLS extension; ``null`` when the server did not provide one).
"""

from __future__ import annotations

import json

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    while True:  # drain the request body, if any
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    body = json.dumps({
        "scheme": scope["scheme"],
        "client": scope["client"],
        "tls": (scope.get("extensions") or {}).get("tls"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
