"""Unchanged FastAPI and Starlette apps that let tether's errors escape, each from a
different place (a route, a router, a dependency, a mounted app, a middleware, a
background task, a streaming body), and a plain ASGI app that raises the same
errors: what the plain app answers is what the framework apps must answer.

None of these apps imports anything from tether's server or registers a handler,
except ``custom``, whose own handler for ServiceUnavailable must win.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router

import tether
from tether.asgi import Receive, Scope, Send

#: path -> the error a handler lets escape there (the plain app raises the same)
ERRORS: dict[str, Callable[[], Awaitable[None]]] = {}


def error(path: str) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    def register(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        ERRORS[path] = fn
        return fn

    return register


@error("/unavailable")
async def unavailable() -> None:
    raise tether.ServiceUnavailable("orders are down")


@error("/overloaded")
async def overloaded() -> None:
    raise tether.Overloaded("the payments queue is standing")


@error("/deadline")
async def deadline() -> None:
    async with tether.deadline_after(0.01):
        await asyncio.sleep(5)


@error("/no-provider")
async def no_provider() -> None:
    async with tether.Client(timeout=2.0) as client:
        await client.service("orders", providers=[]).get("/orders")


async def crash() -> None:
    raise ValueError("a bug")


async def background_failure() -> None:
    raise tether.ServiceUnavailable("the audit service is down")


# -- the plain ASGI app: tether's own answers -------------------------------------------------


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await ERRORS[scope["path"]]()


# -- FastAPI ----------------------------------------------------------------------------------


class FailInMiddleware(BaseHTTPMiddleware):
    """A user middleware that calls a dependency before the route (and lets it fail)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/middleware/"):
            await ERRORS["/" + request.url.path.split("/", 2)[2]]()
        return await call_next(request)


class FailInPureMiddleware:
    """A pure ASGI middleware that fails before the app for /pure-middleware/..."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/pure-middleware/"):
            await ERRORS["/" + path.split("/", 2)[2]]()
        await self.app(scope, receive, send)


class Wrapper:
    """An outer ASGI wrapper around the whole app (as Sentry's or a tracing one)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def deadline_dependency() -> AsyncIterator[None]:
    await ERRORS["/deadline"]()
    yield


fastapi_app = FastAPI()
fastapi_app.add_middleware(FailInMiddleware)
fastapi_app.add_middleware(FailInPureMiddleware)
router = APIRouter(prefix="/router")


def _route(path: str) -> Callable[[], Awaitable[None]]:
    fail = ERRORS[path]

    async def endpoint() -> None:
        await fail()

    return endpoint


for _path in ERRORS:
    fastapi_app.add_api_route(_path, _route(_path))
    router.add_api_route(_path, _route(_path))
fastapi_app.include_router(router)


@fastapi_app.get("/dependency", dependencies=[Depends(deadline_dependency)])
async def with_dependency() -> dict[str, str]:
    return {"never": "reached"}


@fastapi_app.get("/crash")
async def fastapi_crash() -> None:
    await crash()


@fastapi_app.get("/background")
async def fastapi_background() -> PlainTextResponse:
    return PlainTextResponse("accepted", background=BackgroundTask(background_failure))


@fastapi_app.get("/stream-deadline")
async def fastapi_stream_deadline() -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"first part\n"
        await ERRORS["/deadline"]()

    return StreamingResponse(body(), media_type="text/plain")


fastapi = Wrapper(fastapi_app)


# -- Starlette --------------------------------------------------------------------------------


def _starlette_route(path: str) -> Callable[[Request], Awaitable[Response]]:
    fail = ERRORS[path]

    async def endpoint(request: Request) -> Response:
        await fail()
        return Response("never reached")

    return endpoint


async def starlette_crash(request: Request) -> Response:
    await crash()
    return Response("never reached")


async def starlette_background(request: Request) -> Response:
    return Response("accepted", background=BackgroundTask(background_failure))


async def starlette_stream_deadline(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"first part\n"
        await ERRORS["/deadline"]()

    return StreamingResponse(body(), media_type="text/plain")


# A mounted Starlette app has its own ServerErrorMiddleware: it must answer too.
_mounted = Starlette(routes=[Route(p, _starlette_route(p)) for p in ERRORS])

starlette_app = Starlette(
    routes=[
        *(Route(p, _starlette_route(p)) for p in ERRORS),
        Mount("/router", app=Router(routes=[Route(p, _starlette_route(p)) for p in ERRORS])),
        Mount("/mounted", app=_mounted),
        Route("/crash", starlette_crash),
        Route("/background", starlette_background),
        Route("/stream-deadline", starlette_stream_deadline),
    ],
    middleware=[Middleware(FailInMiddleware), Middleware(FailInPureMiddleware)],
)
starlette = Wrapper(starlette_app)


# -- a FastAPI app with its own handler for ServiceUnavailable: theirs wins --------------------


async def own_handler(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"our own page: {exc}", status_code=503,
                             headers={"x-handled-by": "the app"})


custom = FastAPI(exception_handlers={tether.ServiceUnavailable: own_handler})
for _path in ERRORS:
    custom.add_api_route(_path, _route(_path))
# (no BaseHTTPMiddleware here: it completes a response whose body failed, see
# docs/frameworks.md; this app shows what tether does without it)
custom.add_api_route("/stream-deadline", fastapi_stream_deadline)
custom.add_api_route("/dependency", with_dependency,
                    dependencies=[Depends(deadline_dependency)])
