"""WebSocket sessions across a rolling reload and a stop, on real processes, with the
``websockets`` library as the client: a reload ends every session with 1012 (Service
Restart) and its client reconnects to the new worker without one failed handshake; a
stop ends them with 1001 (Going Away) and the exit is bounded. Never 1006.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.support import server_process, wait_for
from tether import metrics

APPS = Path(__file__).resolve().parent / "apps"
SESSIONS = 100


async def _open(url: str) -> tuple[websockets.ClientConnection, int]:
    """A session to ``/pid``: the connection and the pid of the worker serving it."""
    ws = await websockets.connect(url, open_timeout=10)
    pid = int(await asyncio.wait_for(ws.recv(), 10))
    return ws, pid


async def _close_code(ws: websockets.ClientConnection) -> int | None:
    """Wait for the server to end the session; the code it sent (None: no close frame)."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


async def test_reload_ends_sessions_with_1012_and_clients_reconnect_to_the_new_worker() -> None:
    with server_process("ws_app:app", "--graceful-timeout", "10", cwd=APPS) as server:
        url = f"ws://127.0.0.1:{server.port}/pid"
        sessions = await asyncio.gather(*(_open(url) for _ in range(SESSIONS)))
        old_pids = {pid for _, pid in sessions}
        ending = [asyncio.create_task(_close_code(ws)) for ws, _ in sessions]

        server.proc.send_signal(signal.SIGHUP)
        codes = await asyncio.wait_for(asyncio.gather(*ending), 30)
        assert codes == [1012] * SESSIONS

        # every client reconnects at once: no handshake fails, all reach the new worker
        again = await asyncio.gather(*(_open(url) for _ in range(SESSIONS)))
        new_pids = {pid for _, pid in again}
        assert not new_pids & old_pids
        for ws, _ in again:
            await ws.send("still there?")
            assert await ws.recv() == "still there?"
            await ws.close()
        server.wait_for_line("reload finished")


async def test_stop_ends_sessions_with_1001_within_the_stop_budget() -> None:
    with server_process("ws_app:app", "--graceful-timeout", "1", "--force-exit-timeout", "1",
                        cwd=APPS) as server:
        url = f"ws://127.0.0.1:{server.port}/echo"
        sessions = await asyncio.gather(*(websockets.connect(url) for _ in range(20)))
        for ws in sessions:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        ending = [asyncio.create_task(_close_code(ws)) for ws in sessions]
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*ending), 30)
        assert codes == [1001] * 20
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
        # the stop budget (graceful 1 + cancel 1 + lifespan 1 + margin 2) bounds it
        assert time.monotonic() - started < 5
        assert "1006" not in server.output()


def _scrape(admin: str) -> dict[str, float]:
    text = httpx.get(f"{admin}/metrics", timeout=5).text
    return {metrics.series(s.name, **s.labels): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_sessions_messages_and_closes_are_counted() -> None:
    with server_process("ws_app:app", "--admin-port", "0", cwd=APPS) as server:
        admin = server.wait_for_line("admin listening on http://").rsplit(" ", 1)[1].strip()
        url = f"ws://127.0.0.1:{server.port}/echo"
        sessions = [await websockets.connect(url) for _ in range(3)]
        for ws in sessions:
            for _ in range(4):
                await ws.send("ping")
                await ws.recv()
        await wait_for(lambda: _scrape(admin).get("tether_websocket_sessions") == 3, 10,
                       "three open sessions in the gauge")
        status = (await asyncio.to_thread(httpx.get, f"{admin}/status", timeout=5)).json()
        assert sum(w["websockets"] for w in status["workers"]) == 3
        for ws in sessions:
            await ws.close(4000, "done here")
        await wait_for(
            lambda: _scrape(admin).get('tether_websocket_closes_total{code="4000"}') == 3, 10,
            "three closes with 4000 counted")
        values = _scrape(admin)
        assert values['tether_websocket_messages_total{direction="in"}'] == 12
        assert values['tether_websocket_messages_total{direction="out"}'] == 12
        assert values["tether_websocket_sessions"] == 0
