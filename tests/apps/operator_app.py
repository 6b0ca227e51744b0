"""A plain-ASGI app for the operator-flag tests (tests/test_operator_flags.py).

``/env?NAME``: the value of environment variable NAME as the worker sees it
(``<unset>`` if it has none); ``/own``: a response carrying its own ``server``,
``date`` and ``x-team`` headers; anything else: a plain ``ok``.
"""

from __future__ import annotations

import os

from tether.asgi import Receive, Scope, Send

from ._lifespan import lifespan

#: what /own sends: each name is one tether may add by default in the tests
OWN_HEADERS = [(b"server", b"app-server"), (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT"),
               (b"x-team", b"app")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/env":
        body = os.environ.get(scope["query_string"].decode(), "<unset>").encode()
    elif scope["path"] == "/own":
        body = b"own"
        headers += OWN_HEADERS
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
