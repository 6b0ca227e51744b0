"""A real FastAPI application: JSON, multipart upload, streaming, background task,
and lifespan state that an endpoint returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import BackgroundTasks, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from ._shared import STREAM_CHUNKS, record_background, record_shutdown, stream_chunk, wait_for_gate


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # The yielded mapping becomes scope["state"] for every request (ASGI lifespan state).
    yield {"greeting": "hello from fastapi lifespan", "started": True}
    record_shutdown("fastapi")


app = FastAPI(lifespan=lifespan)


@app.get("/json")
async def json_endpoint(name: str = "world") -> dict[str, Any]:
    return {"framework": "fastapi", "hello": name, "numbers": [1, 2, 3]}


@app.post("/upload")
async def upload(
    title: Annotated[str, Form()],
    file: Annotated[UploadFile, File()],
    tags: Annotated[list[str] | None, Form()] = None,
) -> dict[str, Any]:
    data = await file.read()
    return {
        "title": title,
        "tags": tags or [],
        "filename": file.filename,
        "content_type": file.content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@app.get("/stream")
async def stream(gate: str | None = None) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield stream_chunk(i)
            if i == 0 and gate is not None:
                await wait_for_gate(gate)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.post("/background")
async def background(token: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(record_background, token, "fastapi")
    return {"scheduled": token}


@app.get("/state")
async def state(request: Request) -> dict[str, Any]:
    return {"greeting": request.state.greeting, "started": request.state.started}
