"""A real Starlette application: JSON, multipart upload, streaming, background task,
and lifespan state that an endpoint returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._shared import STREAM_CHUNKS, record_background, record_shutdown, stream_chunk, wait_for_gate


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from starlette lifespan", "started": True}
    record_shutdown("starlette")


async def json_endpoint(request: Request) -> Response:
    name = request.query_params.get("name", "world")
    return JSONResponse({"framework": "starlette", "hello": name, "numbers": [1, 2, 3]})


async def upload(request: Request) -> Response:
    async with request.form() as form:
        file = form["file"]
        if not isinstance(file, UploadFile):
            return JSONResponse({"error": "file is not a file"}, status_code=400)
        data = await file.read()
        return JSONResponse(
            {
                "title": form["title"],
                "tags": form.getlist("tags"),
                "filename": file.filename,
                "content_type": file.content_type,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )


async def stream(request: Request) -> Response:
    gate = request.query_params.get("gate")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield stream_chunk(i)
            if i == 0 and gate is not None:
                await wait_for_gate(gate)

    return StreamingResponse(chunks(), media_type="text/plain")


async def background(request: Request) -> Response:
    token = request.query_params["token"]
    task = BackgroundTask(record_background, token, "starlette")
    return JSONResponse({"scheduled": token}, background=task)


async def state(request: Request) -> Response:
    return JSONResponse(
        {"greeting": request.state.greeting, "started": request.state.started}
    )


app = Starlette(
    routes=[
        Route("/json", json_endpoint),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background, methods=["POST"]),
        Route("/state", state),
    ],
    lifespan=lifespan,
)
