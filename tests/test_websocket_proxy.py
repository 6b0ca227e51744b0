"""WebSocket through ``tether proxy``, on real processes: ``tether serve`` upstreams
(tests/apps/ws_app.py), a ``tether proxy`` supervisor with its workers, and the
``websockets`` library as the client.

Proved here: messages and the subprotocol pass both ways; a close from either side
reaches the other with its code and reason; an upstream's rolling reload ends every
session through the proxy with 1012 and the clients reconnect to the new worker; a
dead provider is skipped before the upgrade, no provider is 503 and an upstream's
refusal reaches the client as it was; a client that vanishes ends the upstream
handler within a second; a client that floods a session without reading is held
back (every hop's queue is bounded) and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.support import APPS, ServerProcess, free_port, server_process, tether_process, wait_for

TIMEOUT = 20.0


def _env() -> dict[str, str]:
    """This environment without any TETHER_* variable (they would change the flags)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


@contextlib.contextmanager
def upstream(marks: Path, *extra: str) -> Iterator[ServerProcess]:
    """``tether serve ws_app:app``; its handlers leave marks in ``marks``."""
    with server_process("ws_app:app", "--no-access-log", *extra, cwd=APPS,
                        env={"WS_MARKS": str(marks)}) as running:
        yield running


@contextlib.contextmanager
def proxy(*providers: str, flags: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    """``tether proxy`` routing every path to ``providers``."""
    with tether_process("proxy", "--listen", "127.0.0.1:0", "--no-access-log", *flags,
                        "--route", f"/={','.join(providers)}", cwd=APPS, env=_env()
                        ) as running:
        yield running


def _address(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


def _ws(server: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def _marks(folder: Path, name: str) -> list[str]:
    return sorted(p.read_text() for p in folder.glob(f"{name}.*"))


async def _close_code(ws: websockets.ClientConnection) -> tuple[int, str] | None:
    """Wait for the session to end; the close frame received (None: none)."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else (closed.rcvd.code, closed.rcvd.reason)


async def test_messages_subprotocol_and_headers_pass_both_ways(tmp_path: Path) -> None:
    with upstream(tmp_path) as up, proxy(_address(up)) as px:
        offered = [Subprotocol("chat.v2"), Subprotocol("chat.v1")]
        async with websockets.connect(_ws(px, "/echo"), subprotocols=offered,
                                      open_timeout=TIMEOUT, max_size=None) as ws:
            assert ws.subprotocol == "chat.v2"  # the upstream's choice
            assert ws.response is not None
            assert ws.response.headers["x-session"] == "tether"
            assert ws.response.headers["via"] == "1.1 tether"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            big = os.urandom(4 * 1024 * 1024)  # over every high water mark on the way
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == big
            for i in range(100):
                await ws.send(f"message {i}")
            assert [await ws.recv() for _ in range(100)] == [f"message {i}" for i in range(100)]


async def test_a_close_from_either_side_reaches_the_other(tmp_path: Path) -> None:
    with upstream(tmp_path) as up, proxy(_address(up)) as px:
        ws = await websockets.connect(_ws(px, "/reason"), open_timeout=TIMEOUT)
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(4000, "client done")
        await wait_for(lambda: bool(_marks(tmp_path, "reason")), TIMEOUT,
                       "the upstream handler to see the close")
        assert _marks(tmp_path, "reason") == ["4000 client done"]

        ws = await websockets.connect(_ws(px, "/bye"), open_timeout=TIMEOUT)
        assert await ws.recv() == "bye"
        assert await asyncio.wait_for(_close_code(ws), TIMEOUT) == (1000, "done")


async def test_an_upstream_reload_ends_sessions_with_1012_and_they_reconnect(
    tmp_path: Path
) -> None:
    sessions = 100
    with upstream(tmp_path, "--graceful-timeout", "10") as up, proxy(_address(up)) as px:

        async def session() -> tuple[websockets.ClientConnection, int]:
            ws = await websockets.connect(_ws(px, "/pid"), open_timeout=TIMEOUT)
            return ws, int(await asyncio.wait_for(ws.recv(), TIMEOUT))

        opened = await asyncio.gather(*(session() for _ in range(sessions)))
        old = {pid for _, pid in opened}
        ending = [asyncio.create_task(_close_code(ws)) for ws, _ in opened]
        up.proc.send_signal(signal.SIGHUP)
        codes = await asyncio.wait_for(asyncio.gather(*ending), TIMEOUT)
        assert {code for code, _ in filter(None, codes)} == {1012}
        assert None not in codes

        again = await asyncio.gather(*(session() for _ in range(sessions)))
        assert not {pid for _, pid in again} & old  # all on the new worker
        for ws, _ in again:
            await ws.send("after the reload")
            assert await ws.recv() == "after the reload"
            await ws.close()


async def test_a_dead_provider_is_skipped_before_the_upgrade(tmp_path: Path) -> None:
    with upstream(tmp_path) as alive, upstream(tmp_path) as dying, \
            proxy(_address(alive), _address(dying)) as px:
        # both providers serve sessions, so the cluster has seen both alive
        pids: set[int] = set()
        async with asyncio.timeout(TIMEOUT):
            while len(pids) < 2:
                async with websockets.connect(_ws(px, "/pid")) as ws:
                    pids.add(int(await ws.recv()))
        dying.stop()
        for i in range(10):  # the proxy meets the dead one, and goes to the other
            async with websockets.connect(_ws(px, "/echo"), open_timeout=TIMEOUT) as ws:
                await ws.send(f"#{i}")
                assert await ws.recv() == f"#{i}"


async def test_no_provider_is_503_and_a_refusal_passes_through(tmp_path: Path) -> None:
    with proxy(f"127.0.0.1:{free_port()}") as px:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(_ws(px, "/echo"), open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 503
    with upstream(tmp_path) as up, proxy(_address(up)) as px:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(_ws(px, "/teapot"), open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 418
        assert refused.value.response.body == b"no websocket for you"


async def test_a_vanished_client_ends_the_upstream_handler(tmp_path: Path) -> None:
    with upstream(tmp_path) as up, proxy(_address(up)) as px:
        ws = await websockets.connect(_ws(px, "/record"), open_timeout=TIMEOUT)
        await ws.send("x")
        assert await ws.recv() == "x"
        gone = time.monotonic()
        ws.transport.abort()  # a reset, no close frame
        await wait_for(lambda: bool(_marks(tmp_path, "record")), 5,
                       "the upstream handler to end")
        assert time.monotonic() - gone < 1.0
        assert _marks(tmp_path, "record") == ["1001"]  # told the client went away


async def test_back_pressure_reaches_a_client_that_sends_without_reading(
    tmp_path: Path
) -> None:
    """The client floods an echo session and reads nothing: each hop's queue fills to
    its mark and stops reading, until the client's own sends stall. Nothing on the
    way holds the flood; then every message comes back, in order."""
    chunk_size, most = 1024 * 1024, 256
    with upstream(tmp_path) as up, proxy(_address(up)) as px:
        # no compression: the flood must weigh what it says on the wire
        async with websockets.connect(_ws(px, "/echo"), open_timeout=TIMEOUT,
                                      max_size=None, max_queue=1, compression=None) as ws:
            noise = os.urandom(chunk_size - 4)
            sent = 0
            stalled: asyncio.Task[None] | None = None
            while sent < most:
                task = asyncio.create_task(ws.send(sent.to_bytes(4, "big") + noise))
                done, _ = await asyncio.wait({task}, timeout=2.0)
                sent += 1
                if not done:
                    stalled = task
                    break
            assert stalled is not None, f"{sent} MiB sent and none held back"
            assert sent < 64, f"{sent} MiB were taken before the client was held back"
            for i in range(sent):
                message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert message[:4] == i.to_bytes(4, "big") and len(message) == chunk_size
            await asyncio.wait_for(stalled, TIMEOUT)


async def test_handshake_headers_as_for_http_and_the_route_timeout_bounds_only_it(
    tmp_path: Path
) -> None:
    with upstream(tmp_path) as up:
        config = tmp_path / "proxy.toml"
        config.write_text(f'[[routes]]\nprefix = "/"\ntimeout = 0.2\n'
                          f'providers = ["{_address(up)}"]\n')
        with tether_process("proxy", "--listen", "127.0.0.1:0", "--no-access-log",
                            "--config", str(config), cwd=APPS, env=_env()) as px:
            async with websockets.connect(
                    _ws(px, "/headers"), open_timeout=TIMEOUT,
                    additional_headers={"x-custom": "kept", "x-forwarded-proto": "forged"},
            ) as ws:
                assert ws.request is not None
                key = ws.request.headers["sec-websocket-key"]
                seen: dict[str, list[str]] = {}
                for name, value in json.loads(await ws.recv()):
                    seen.setdefault(name, []).append(value)
                assert seen["x-custom"] == ["kept"]
                assert seen["x-forwarded-proto"] == ["http"]  # this hop's, not the client's
                assert seen["x-forwarded-for"] == ["127.0.0.1"]
                assert seen["via"] == ["1.1 tether"]
                assert seen["forwarded"][0].startswith("for=127.0.0.1;proto=http")
                # the upstream hop has a handshake of its own
                assert seen["sec-websocket-key"] != [key]
                assert "x-request-timeout-ms" in seen  # the route's deadline travels
                # the session outlives the route's timeout (0.2 s): it bounds the handshake
                opened = time.monotonic()
                for i in range(100_000):
                    await ws.send(str(i))
                    assert await ws.recv() == str(i)
                    if time.monotonic() - opened > 0.6:
                        break
                assert time.monotonic() - opened > 0.6
            # an upstream slower to accept than the route's timeout: 504
            with pytest.raises(InvalidStatus) as late:
                await websockets.connect(_ws(px, "/slow-accept"), open_timeout=TIMEOUT)
            assert late.value.response.status_code == 504


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGHUP, 1012), (signal.SIGTERM, 1001)])
async def test_the_proxys_own_reload_and_stop_end_both_sides_with_their_code(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    sessions = 10
    with upstream(tmp_path) as up, proxy(
            _address(up), flags=("--graceful-timeout", "1", "--force-exit-timeout", "1")
    ) as px:
        opened = [await websockets.connect(_ws(px, "/reason"), open_timeout=TIMEOUT)
                  for _ in range(sessions)]
        for ws in opened:
            await ws.send("x")
            assert await ws.recv() == "x"
        ending = [asyncio.create_task(_close_code(ws)) for ws in opened]
        px.proc.send_signal(sig)
        codes = await asyncio.wait_for(asyncio.gather(*ending), TIMEOUT)
        assert [c for c, _ in filter(None, codes)] == [code] * sessions
        await wait_for(lambda: len(_marks(tmp_path, "reason")) == sessions, TIMEOUT,
                       "every upstream handler to see the close")
        assert {m.split()[0] for m in _marks(tmp_path, "reason")} == {str(code)}
        if sig == signal.SIGTERM:
            assert await asyncio.to_thread(px.proc.wait, TIMEOUT) == 0, px.output()


async def test_an_upstream_that_stops_answering_pings_ends_the_session_with_1014(
    tmp_path: Path
) -> None:
    """The upstream's worker is frozen (SIGSTOP: its host and network look alive, but
    nothing answers): the proxy's pings go unanswered, and the client is closed with
    1014 (bad gateway) within the ping timeout, not left on a dead session."""
    with upstream(tmp_path) as up:
        config = tmp_path / "proxy.toml"
        config.write_text(
            '[[routes]]\nprefix = "/"\nupstream = "up"\n\n'
            f'[upstreams.up]\nproviders = ["{_address(up)}"]\n'
            "ws_ping_interval = 0.2\nws_ping_timeout = 0.5\n")
        with tether_process("proxy", "--listen", "127.0.0.1:0", "--no-access-log",
                            "--config", str(config), cwd=APPS, env=_env()) as px:
            async with websockets.connect(_ws(px, "/echo"), open_timeout=TIMEOUT) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                workers = psutil.Process(up.proc.pid).children(recursive=True)
                assert workers
                frozen = time.monotonic()
                for worker in workers:
                    worker.suspend()
                try:
                    ended = await asyncio.wait_for(_close_code(ws), TIMEOUT)
                    took = time.monotonic() - frozen
                finally:
                    for worker in workers:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            worker.resume()
            assert ended is not None and ended[0] == 1014, ended
            assert took < 3.0, f"the client was closed {took:.1f}s after the upstream froze"
