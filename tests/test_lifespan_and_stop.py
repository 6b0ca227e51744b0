"""Lifespan startup/shutdown, and a worker's graceful, bounded stop (in-process)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support import serve, wait_for
from tether.asgi import Receive, Scope, Send
from tether.config import ServerConfig
from tether.errors import LifespanFailure
from tether.server.lifespan import Lifespan
from tether.server.sockets import bind_tcp
from tether.server.worker import Worker


def lifespan_app(events: list[str], fail: str | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    events.append("startup")
                    if fail == "message":
                        await send({"type": "lifespan.startup.failed", "message": "no db"})
                        return
                    if fail == "raise":
                        raise RuntimeError("cannot start")
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["state"]["db"].encode()})

    return app


async def test_lifespan_state_reaches_requests() -> None:
    events: list[str] = []
    async with serve(lifespan_app(events), lifespan="on") as server:
        async with httpx.AsyncClient() as client:
            r = await client.get(server.url)
        assert r.text == "connected"
        await server.worker.lifespan.shutdown()
    assert events == ["startup", "shutdown"]


@pytest.mark.parametrize("fail", ["message", "raise"])
@pytest.mark.parametrize("mode", ["on", "auto"])
async def test_lifespan_startup_failure(fail: str, mode: str) -> None:
    lifespan = Lifespan(lifespan_app([], fail), mode)  # type: ignore[arg-type]
    with pytest.raises(LifespanFailure) as info:
        await lifespan.startup()
    assert ("no db" if fail == "message" else "cannot start") in str(info.value)


async def test_auto_lifespan_tolerates_apps_without_it() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"  # raises for "lifespan", before any receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve(app, lifespan="auto") as server, httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "ok"


def slow_app(started: list[str], cancelled: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.append(scope["path"])
        try:
            await asyncio.sleep(float(scope["query_string"].decode() or "0.3"))
        except asyncio.CancelledError:
            cancelled.append(scope["path"])
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def start_worker(app: Any, **config: Any) -> tuple[Worker, str]:
    sock = bind_tcp("127.0.0.1", 0, 128)
    cfg = ServerConfig(app="x:y", port=0, lifespan="off", access_log=False, **config)
    worker = Worker(app, cfg, [sock])
    await worker.start()
    return worker, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_stop_lets_in_flight_requests_finish() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    worker, url = await start_worker(slow_app(started, cancelled), graceful_timeout=10)
    async with httpx.AsyncClient() as client:
        calls = [asyncio.create_task(client.get(f"{url}/{i}?0.3")) for i in range(10)]
        await wait_for(lambda: len(started) == 10, what="10 requests in flight")
        report = await worker.stop()
        responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 10
    assert all(r.headers["connection"] == "close" for r in responses)
    assert report.drained == 10 and report.cancelled == 0 and not report.forced
    assert cancelled == []
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        async with httpx.AsyncClient() as client:
            await client.get(url)


async def test_stop_cancels_stuck_handlers_after_grace() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    worker, url = await start_worker(
        slow_app(started, cancelled), graceful_timeout=0.2, force_exit_timeout=1
    )
    async with httpx.AsyncClient() as client:
        call = asyncio.create_task(client.get(f"{url}/stuck?3600"))
        await wait_for(lambda: started == ["/stuck"], what="the stuck request")
        report = await worker.stop()
        response = await call
    assert cancelled == ["/stuck"]  # the handler saw CancelledError
    assert response.status_code == 503
    assert report.forced and report.cancelled == 1


async def test_stop_serves_connections_queued_in_backlog() -> None:
    started: list[str] = []
    worker, url = await start_worker(slow_app(started, []), graceful_timeout=10)
    port = int(url.rsplit(":", 1)[1])
    # Pause accepting so connections pile up in the kernel's backlog.
    for server in worker.servers:
        server.close()
    worker.servers.clear()
    queued = []
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /q?0 HTTP/1.1\r\nHost: x\r\n\r\n")
        queued.append((reader, writer))
    await worker.stop()
    for reader, writer in queued:
        raw = await asyncio.wait_for(reader.read(), 5)
        assert raw.startswith(b"HTTP/1.1 200"), raw
        writer.close()
