"""Starlette and FastAPI applications answer tether's errors the way tether does.

Why this exists: Starlette's ``ServerErrorMiddleware`` (the outermost layer of every
Starlette and FastAPI app) turns any exception into ``500 Internal Server Error``
before the server sees it. An unchanged FastAPI app that let
:class:`~tether.ServiceUnavailable` escape, or a :class:`~tether.DeadlineExceeded`
from ``tether.deadline_after(...)``, or called a cluster with no provider alive,
answered 500 where a plain ASGI app answers 503 with ``Retry-After`` or 504.

How: when a worker loads the application it finds the Starlette applications in it
(the app itself, apps under ASGI middleware that keeps the conventional ``.app``
attribute, and apps mounted inside them) and registers, in each, exception handlers
for tether's error types (:data:`HANDLED`). The handler answers exactly what the
server answers a plain ASGI app (one table: ``outcomes.FAILURES``; the same body and
headers as ``wire.error_response``) and moves the same counter. Starlette's own
mechanism does the rest, so routers, dependencies, ``Depends`` with ``yield``,
exception groups and ``BaseHTTPMiddleware`` all behave as Starlette documents.

Rules:
- The user's handler wins: nothing is registered for a type when the app already
  handles it or any of its bases other than ``Exception`` (a handler for
  ``TetherError``, ``TimeoutError`` or ``ServiceUnavailable`` is theirs to keep).
- An error raised *outside* Starlette's ``ExceptionMiddleware`` (in a user middleware)
  reaches ``ServerErrorMiddleware``. Unless the app has its own 500 handler, tether
  installs one that answers tether's errors as above and anything else exactly as
  Starlette's default does (``500 Internal Server Error``, plain text).
- An error the adapter answered is marked (:data:`ANSWERED`), so when Starlette
  re-raises it the server neither answers nor counts it again.
- Only ``http`` scopes are answered here; in a ``websocket`` scope the error
  propagates to the server unchanged.
- Turned off with ``--no-framework-handlers`` (``ServerConfig.framework_handlers``).

Nothing here imports Starlette unless the application already did: an app that does
not use it pays nothing.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

from tether.asgi import Message, Receive, Scope, Send
from tether.deadline import DeadlineExceeded
from tether.errors import ResponseAborted, ServiceUnavailable
from tether.server import wire
from tether.server.outcomes import Ending, detail_of, ending_for

logger = logging.getLogger("tether.error")

#: the exception types tether answers on the application's behalf (subclasses
#: included: Overloaded, NoProviderAvailable are ServiceUnavailable)
HANDLED: Final = (DeadlineExceeded, ServiceUnavailable, ResponseAborted)

#: attribute set on an exception the adapter has answered and counted
ANSWERED: Final = "_tether_answered"

#: how Starlette reports an exception whose handler came too late (the response had
#: started): the server treats it as the exception itself
_STARTED_MESSAGE: Final = "Caught handled exception, but response already started."

#: the module of Starlette's ClientDisconnect
_REQUESTS: Final = "starlette.requests"

#: how deep to look for Starlette apps under middleware and mounts
_MAX_DEPTH: Final = 16


def install(app: Any, counters: Counter[str]) -> int:
    """Register tether's handlers in every Starlette app found in ``app``; return
    how many apps were changed. ``counters`` is the worker's outcome counters."""
    starlette = sys.modules.get("starlette.applications")
    if starlette is None:
        return 0  # the application never imported Starlette: nothing can be one
    changed = 0
    for found in _starlette_apps(app, starlette.Starlette):
        if _install_one(found, counters):
            changed += 1
    return changed


def unwrap(exc: BaseException) -> BaseException:
    """The exception the server should act on, when Starlette replaced one of tether's:

    - a ``RuntimeError("Caught handled exception, but response already started.")``
      raised ``from`` it, when its handler came after the response started;
    - a ``ClientDisconnect`` raised while handling it: Starlette's ``StreamingResponse``
      takes any ``OSError`` from the body for a client gone, and ``DeadlineExceeded`` is
      a ``TimeoutError``.
    """
    if type(exc) is RuntimeError:
        cause = exc.__cause__
        if isinstance(cause, HANDLED) and exc.args == (_STARTED_MESSAGE,):
            return cause
    elif type(exc).__name__ == "ClientDisconnect" and type(exc).__module__ == _REQUESTS:
        context = exc.__context__
        if isinstance(context, HANDLED):
            return context
    return exc


def _starlette_apps(app: Any, starlette_type: type) -> Iterator[Any]:
    """Starlette apps in ``app``: itself, under ``.app`` wrappers, and mounted ones."""
    seen: set[int] = set()
    pending: list[tuple[Any, int]] = [(app, 0)]
    while pending:
        obj, depth = pending.pop()
        if obj is None or id(obj) in seen or depth > _MAX_DEPTH:
            continue
        seen.add(id(obj))
        if isinstance(obj, starlette_type):
            yield obj
            pending.extend((route, depth + 1) for route in getattr(obj, "routes", ()))
            continue
        inner = getattr(obj, "app", None)  # middleware, Mount, Host
        if inner is not None:
            pending.append((inner, depth + 1))
        routes = getattr(obj, "routes", None)  # a Router, or a Mount of one
        if isinstance(routes, list):
            pending.extend((route, depth + 1) for route in routes)


def _install_one(app: Any, counters: Counter[str]) -> bool:
    handlers: dict[Any, Any] = app.exception_handlers
    answer = _handler(counters)
    added = False
    for kind in HANDLED:
        if not _handled_by_user(handlers, kind):
            handlers[kind] = answer
            added = True
    if 500 not in handlers and Exception not in handlers:
        handlers[Exception] = _server_error_handler(counters)
        added = True
    if added and getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = None  # built already: rebuilt with the handlers on next call
    return added


def _handled_by_user(handlers: dict[Any, Any], kind: type[BaseException]) -> bool:
    return any(
        base in handlers for base in kind.__mro__ if base not in (Exception, BaseException)
    )


Handler = Callable[[Any, Exception], Awaitable[Any]]


def _handler(counters: Counter[str]) -> Handler:
    async def answer_as_tether(conn: Any, exc: Exception) -> Any:
        if conn.scope["type"] != "http":
            raise exc  # not an HTTP response to give: the server ends the session
        return TetherAnswer(exc, ending_for(exc), counters)

    return answer_as_tether


def _server_error_handler(counters: Counter[str]) -> Handler:
    from starlette.responses import PlainTextResponse

    async def answer_or_500(conn: Any, exc: Exception) -> Any:
        if isinstance(exc, HANDLED) and conn.scope["type"] == "http":
            return TetherAnswer(exc, ending_for(exc), counters)
        # Starlette's own default (ServerErrorMiddleware.error_response), unchanged
        return PlainTextResponse("Internal Server Error", status_code=500)

    return answer_or_500


class TetherAnswer:
    """An ASGI response: what the server sends a plain ASGI app for ``exc``.

    Starlette calls it only when no response has started; sending it counts the
    ending once and marks the exception :data:`ANSWERED`.
    """

    def __init__(self, exc: Exception, ending: Ending, counters: Counter[str]) -> None:
        self.exc = exc
        self.ending = ending
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ending = self.ending
        assert ending.status is not None  # every HANDLED type has a status
        body = wire.error_body(detail_of(ending, self.exc))
        headers = [
            (b"content-type", wire.ERROR_CONTENT_TYPE),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        if ending.retry_after:
            headers.append((b"retry-after", wire.RETRY_AFTER))
        start: Message = {"type": "http.response.start", "status": ending.status,
                          "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})
        setattr(self.exc, ANSWERED, True)
        if ending.counter is not None:
            self.counters[ending.counter] += 1
