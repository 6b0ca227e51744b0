"""The app behind ``tests/test_proxy_headers.py`` (plain ASGI 3): every request is
answered with JSON of what the server put in its scope about where it came from
(``client``, ``scheme``, ``server``, ``root_path``, ``path``, ``raw_path``, and the
``transport`` tether keeps when proxy headers changed them); ``/healthz`` is
``ok`` for the proxy's probes."""

from __future__ import annotations

import json

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/healthz":
        body = b"ok"
    else:
        body = json.dumps({
            "client": scope["client"],
            "scheme": scope["scheme"],
            "server": scope["server"],
            "root_path": scope["root_path"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "transport": scope["extensions"]["tether"].get("transport"),
        }).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
