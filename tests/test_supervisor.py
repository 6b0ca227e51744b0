"""The supervisor with real worker processes under real load (field reports 2 and 3).

Every test runs ``tether serve`` as a real process on loopback, counts what a
client saw, and cleans up its processes and temp dirs even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import start_time
from bench.loadgen import LoadResult, run_load
from tests.support import (
    EXAMPLES,
    ServerProcess,
    get_when_serving,
    run_tether,
    server_process,
    wait_for,
)

TESTS = Path(__file__).resolve().parent
APP = "apps.lifecycle_app:app"


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def lifecycle_server(
    marks: Path, *args: str, **env: str
) -> contextlib.AbstractContextManager[ServerProcess]:
    return server_process(
        APP, "--no-access-log", "--admin-port", "0", *args,
        cwd=TESTS, env={"LIFECYCLE_MARKS": str(marks), **env},
    )


def admin_url(server: ServerProcess) -> str:
    line = server.wait_for_line("admin listening on http://")
    return line.strip().rsplit(" ", 1)[1]


def status(server: ServerProcess) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(httpx.get(f"{admin_url(server)}/status", timeout=5).text)
    return body


def ready_pids(server: ServerProcess) -> set[int]:
    return {w["pid"] for w in status(server)["workers"] if w["state"] == "ready"}


def in_flight(server: ServerProcess) -> int:
    return sum(w["in_flight"] for w in status(server)["workers"])


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "it") -> None:
    await wait_for(predicate, timeout, what)


def count_lines(server: ServerProcess, needle: str) -> int:
    return server.output().count(needle)


def reloads_at_least(server: ServerProcess, n: int) -> bool:
    return count_lines(server, "reload finished") >= n


def blocked_at_least(marks: Path, n: int) -> bool:
    return len(list(marks.glob("block-*"))) >= n


async def test_reload_under_load_loses_nothing(marks: Path) -> None:
    """Proof 1: 5 SIGHUPs 2 s apart under load, both client modes: zero failures."""
    with lifecycle_server(marks, "--workers", "2") as server:
        stop = asyncio.Event()
        fresh = asyncio.create_task(run_load(
            "127.0.0.1", server.port, concurrency=4, keep_alive=False, stop=stop,
            max_requests=200_000, max_seconds=60))
        kept = asyncio.create_task(run_load(
            "127.0.0.1", server.port, concurrency=4, keep_alive=True, stop=stop,
            max_requests=200_000, max_seconds=60))
        for n in range(1, 6):
            await asyncio.sleep(2.0)  # the scenario's own pacing, not synchronisation
            server.proc.send_signal(signal.SIGHUP)
            await until(partial(reloads_at_least, server, n), what=f"reload {n} to finish")
        stop.set()
        results: list[LoadResult] = [await fresh, await kept]
        assert count_lines(server, "reload finished") == 5  # each SIGHUP carried out
        assert server.stop() == 0
    for result in results:
        assert result.failed == 0, result.errors
        assert result.ok > 100


async def test_backlog_survives_reload(marks: Path) -> None:
    """Proof 2: connections queued while every worker is busy are all answered."""
    with lifecycle_server(marks, "--workers", "2") as server:
        async with httpx.AsyncClient(timeout=30) as client:
            blockers = []
            for _ in range(2):  # block both workers' event loops for a while
                blockers.append(asyncio.create_task(client.get(f"{server.url}/block?s=3")))
                await until(partial(blocked_at_least, marks, len(blockers)),
                            what="a worker to block")
            assert len({p.name for p in marks.glob("block-*")}) == 2  # two distinct workers
            queued = asyncio.create_task(run_load(
                "127.0.0.1", server.port, concurrency=40, max_requests=40, max_seconds=30,
                timeout=30))
            server.proc.send_signal(signal.SIGHUP)
            result = await queued
            assert [r.status_code for r in await asyncio.gather(*blockers)] == [200, 200]
        await until(lambda: count_lines(server, "reload finished") == 1, what="the reload")
    assert result.failed == 0, result.errors
    assert result.ok == 40


async def test_kill_9_worker_is_replaced_and_queue_served(marks: Path) -> None:
    """Proof 3: only requests in flight on the killed worker may fail."""
    with lifecycle_server(marks, "--workers", "2") as server:
        before = ready_pids(server)
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(
            "127.0.0.1", server.port, concurrency=4, stop=stop, max_seconds=30))
        await asyncio.sleep(1.0)  # let load build up before the kill
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: len(ready_pids(server) - before) == 1 and victim not in
                    ready_pids(server), what="a replacement worker")
        await asyncio.sleep(1.0)  # keep the load running on the new worker set
        stop.set()
        result = await load
        assert "crashed" in server.output()
    assert result.failed <= 4, result.errors  # at most the 4 clients' in-flight requests
    assert result.ok > 100


async def test_graceful_stop_drains_in_flight(marks: Path) -> None:
    """Proof 4: 20 slow requests all complete; /readyz is 503 during the drain."""
    with lifecycle_server(marks, "--workers", "2", "--graceful-timeout", "10") as server:
        admin = admin_url(server)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(f"{admin}/readyz")).status_code == 200
            url = f"{server.url}/slow?s=2"
            calls = [asyncio.create_task(client.get(url)) for _ in range(20)]
            await until(lambda: in_flight(server) == 20, what="20 requests in flight")
            server.proc.send_signal(signal.SIGTERM)
            await until(lambda: "stop begun" in server.output(), what="the stop to begin")
            assert (await client.get(f"{admin}/readyz")).status_code == 503
            responses = await asyncio.gather(*calls)
            last = time.monotonic()
        assert [r.status_code for r in responses] == [200] * 20
        assert server.proc.wait(10) == 0
        assert time.monotonic() - last < 5
        assert "20 request(s) drained, 0 cancelled" in server.output()


async def test_stuck_handler_is_cancelled_and_stop_is_bounded(marks: Path) -> None:
    """Proof 5: a handler that never ends sees CancelledError; exit is bounded and 4."""
    with lifecycle_server(
        marks, "--graceful-timeout", "1", "--force-exit-timeout", "2"
    ) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            call = asyncio.create_task(client.get(f"{server.url}/stuck"))
            await until(lambda: in_flight(server) == 1, what="the stuck request")
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 15)
            took = time.monotonic() - started
            response = await call
        assert code == 4
        assert took < 1 + 2 + 2
        assert list(marks.glob("cancelled-*"))
        assert response.status_code == 503


def test_worker_import_failure_exits_quickly() -> None:
    """Proof 6: a worker that cannot import the app: non-zero exit, error logged, no storm."""
    started = time.monotonic()
    result = run_tether("serve", "apps.broken_import:app", "--workers", "2", "--port", "0",
                        cwd=TESTS, timeout=30)
    assert result.returncode == 3
    assert time.monotonic() - started < 15
    assert "nosuchdependency_xyz" in result.stderr
    assert result.stderr.count("started") <= 2  # no respawn storm


async def test_reload_with_broken_new_version_keeps_old_workers(marks: Path,
                                                                tmp_path: Path) -> None:
    """Proof 7: the new code fails to import; the old workers keep serving; logged once."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / "versioned.py"
    module.write_text((TESTS / "apps" / "lifecycle_app.py").read_text())
    with server_process("versioned:app", "--workers", "2", "--app-dir", str(app_dir),
                        "--no-access-log", "--admin-port", "0", cwd=tmp_path,
                        env={"LIFECYCLE_MARKS": str(marks)}) as server:
        pids = ready_pids(server)
        module.write_text("raise RuntimeError('broken deploy')\n")
        server.proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload aborted" in server.output(), what="the reload to fail")
        assert server.output().count("reload aborted") == 1
        assert "broken deploy" in server.output()
        assert ready_pids(server) == pids
        async with httpx.AsyncClient() as client:
            for _ in range(10):
                assert (await client.get(server.url)).status_code == 200
        assert server.stop() == 0


async def test_max_requests_recycles_without_loss(marks: Path) -> None:
    """2,000 requests over 2 workers that recycle after at most 250: whatever the
    kernel's spread, the first two workers cannot serve them all, so at least one is
    recycled (through the rolling path), and no request fails meanwhile."""
    with lifecycle_server(marks, "--workers", "2", "--max-requests", "200",
                          "--max-requests-jitter", "50") as server:
        before = ready_pids(server)
        fresh = asyncio.create_task(run_load("127.0.0.1", server.port, concurrency=2,
                                             keep_alive=False, max_requests=1000,
                                             max_seconds=60))
        kept = await run_load("127.0.0.1", server.port, concurrency=2, keep_alive=True,
                              max_requests=1000, max_seconds=60)
        result = await fresh
        result.merge(kept)
        await until(lambda: count_lines(server, "recycling after") >= 1, what="recycling")
        await until(lambda: len(ready_pids(server)) == 2 and ready_pids(server) != before,
                    what="the replacement to take over")
    assert result.failed == 0, result.errors


async def test_silent_worker_is_killed_and_replaced(marks: Path) -> None:
    with lifecycle_server(marks, "--workers", "1", "--worker-timeout", "1") as server:
        (pid,) = ready_pids(server)
        async with httpx.AsyncClient(timeout=15) as client:
            # The spinning worker is killed: its request is lost (it was in flight).
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{server.url}/spin")
        await until(lambda: "sent no heartbeat" in server.output(), what="the heartbeat check")
        await until(lambda: len(ready_pids(server)) == 1 and pid not in ready_pids(server),
                    what="a replacement")
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).status_code == 200


async def test_worker_started_as_its_supervisor_dies_never_serves(marks: Path) -> None:
    """``kill -9`` of a supervisor while it replaces a crashed worker: the new worker
    finds its supervisor gone and exits without accepting, so nothing answers for a
    service that is gone (it used to serve what the kernel had queued, then leave)."""
    with lifecycle_server(marks, "--workers", "1") as server:
        (first,) = ready_pids(server)
        (marks / "slow-start").write_text("1.0")  # the replacement takes 1 s to start
        os.kill(first, signal.SIGKILL)
        await until(lambda: any(marks.glob("starting-*")), what="a replacement to start")
        orphan = int(next(marks.glob("starting-*")).name.split("-", 1)[1])
        orphan_started = start_time(orphan)
        try:
            server.proc.kill()
            server.proc.wait()
            # Queued in the kernel's backlog of the socket the orphan holds: it must
            # never be answered, only dropped when the orphan exits.
            async with httpx.AsyncClient(timeout=15) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(server.url)
            await until(lambda: start_time(orphan) != orphan_started, 10,
                        "the orphaned worker to exit")
        finally:
            if start_time(orphan) == orphan_started:
                os.kill(orphan, signal.SIGKILL)
        await until(lambda: "its supervisor is gone; exiting without serving"
                    in server.output(), 5, "the orphan's log line")


async def test_pid_file_reload_and_stop_commands(marks: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "tether.pid"
    with lifecycle_server(marks, "--pid-file", str(pid_file)) as server:
        assert int(pid_file.read_text()) == server.proc.pid
        assert run_tether("reload", "--pid-file", str(pid_file)).returncode == 0
        await until(lambda: "reload finished" in server.output(), what="the reload")
        result = run_tether("stop", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        assert server.proc.wait(10) == 0
    assert not pid_file.exists()


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """LISTEN_FDS/LISTEN_PID: the activated socket (fd 3) is served by the workers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # A tiny stand-in for systemd: put the socket at fd 3, set LISTEN_PID to the pid
    # that will exec tether, and exec it.
    launcher = (
        "import os, sys\n"
        f"os.dup2({listener.fileno()}, 3)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.environ['LISTEN_FDS'] = '1'\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'tether', 'serve', 'hello:app',"
        " '--workers', '2', '--no-access-log'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=EXAMPLES,
                            pass_fds=[listener.fileno()], stderr=subprocess.PIPE, text=True)
    listener.close()  # only the server holds it now
    try:
        def still_running() -> None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""

        r = get_when_serving(f"http://127.0.0.1:{port}/", 20, "the activated socket",
                             still_running)
        assert r.text == "hello, world\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_unix_socket_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "tether.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "hello:app", "--uds", str(path),
         "--workers", "2", "--no-access-log"],
        cwd=EXAMPLES, stderr=subprocess.DEVNULL,
    )
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport) as client:
            async def served() -> bool:
                try:
                    return (await client.get("http://tether/")).status_code == 200
                except httpx.TransportError:
                    return False

            deadline = time.monotonic() + 20
            while not await served():
                assert time.monotonic() < deadline and proc.poll() is None
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGHUP)  # reload on a Unix socket too
            results = await asyncio.gather(*(client.get("http://tether/") for _ in range(50)))
            assert all(r.status_code == 200 for r in results)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
