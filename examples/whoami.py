"""The demo's FastAPI service, unchanged from what it was under uvicorn.

``GET /whoami``: who the app thinks its client is (behind ``tether proxy``, the real
client, from the proxy's forwarded headers) and the scheme it used.
``GET /whoami/inventory``: calls a dependency that is down; the app lets tether's
``ServiceUnavailable`` escape and the client gets 503 with ``Retry-After`` (not
Starlette's 500: see docs/frameworks.md). Nothing here imports tether's server.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

import tether

app = FastAPI()


@app.get("/whoami")
async def whoami(request: Request) -> dict[str, str | None]:
    client = request.client
    return {"client": client.host if client else None, "scheme": request.url.scheme}


@app.get("/whoami/inventory")
async def inventory() -> dict[str, int]:
    raise tether.ServiceUnavailable("inventory is down for maintenance")


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}
