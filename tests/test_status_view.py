"""``tether status``: the renderer on synthetic answers (new and old servers), and the
command against a real ``tether serve --workers 2 --admin-port`` and a dead port.

Every process a test starts is stopped (killed if need be) even when it fails; waits
are conditions with deadlines, never bare sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.support import free_port, server_process, wait_for
from tether.statusview import admin_base_url, render, status_command

#: SIGINT back to Python's default first: a test run started in the background by a
#: non-interactive shell (``cmd &``) inherits SIGINT ignored, and so would the view;
#: a user's terminal never starts it that way.
STATUS_COMMAND = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                  "from tether.statusview import status_command; status_command()")

NEW_STATUS: dict[str, Any] = {
    "pid": 4242, "state": "serving", "uptime_seconds": 3725.5, "reloads": 2,
    "registered": "127.0.0.1:8001",
    "counters": {"cancelled_disconnect": 3, "cancelled_deadline": 1, "queue_shed": 0},
    "workers": [
        {"id": 1, "pid": 50001, "state": "ready", "age_seconds": 10.2, "requests": 1234,
         "in_flight": 2, "connections": 5, "websockets": 3, "h2_connections": 2,
         "h2_streams": 7,
         "clusters": [{"service": "orders", "providers": [
             {"address": "127.0.0.1:9001", "state": "alive", "outstanding": 0, "failures": 0}],
             "ejections": 0, "evictions": 0, "retries": 2, "requests": 100}],
         "pools": [{"origin": "http://127.0.0.1:9001", "idle": 3, "active": 1}]},
        {"id": 2, "pid": 50002, "state": "draining", "age_seconds": 99.0, "requests": 7,
         "in_flight": 0, "connections": 1},
    ],
    "clusters": [
        {"service": "orders", "providers": [
            {"address": "127.0.0.1:9001", "states": {"alive": 2}},
            {"address": "127.0.0.1:9002", "states": {"retrying": 1, "alive": 1}},
            {"address": "127.0.0.1:9003", "states": {"ejected": 2}},
        ], "ejections": 4, "evictions": 1, "retries": 3, "requests": 200},
        {"service": "billing", "providers": [],
         "ejections": 0, "evictions": 0, "retries": 0, "requests": 0},
    ],
    "pools": [
        {"origin": "http://127.0.0.1:9001", "requests": 10000, "connections_opened": 12,
         "reuse_ratio": 0.9988, "idle": 6, "active": 2},
        {"origin": "http://[::1]:9002", "requests": 0, "connections_opened": 0,
         "reuse_ratio": None, "idle": 0, "active": 0},
    ],
}

OLD_STATUS: dict[str, Any] = {
    "pid": 4243, "state": "stopping", "uptime_seconds": 12.3, "reloads": 0,
    "registered": None, "counters": {},
    "workers": [{"id": 3, "pid": 60003, "state": "ready", "age_seconds": 12.0,
                 "requests": 5, "in_flight": 0}],
}


def text_of(status: dict[str, Any]) -> str:
    # file=StringIO keeps the test output quiet; the recording has it all.
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(status))
    return console.export_text()


def row_with(text: str, needle: str) -> str:
    rows = [line for line in text.splitlines() if needle in line]
    assert rows, f"no row with {needle!r} in:\n{text}"
    return rows[0]


def cells(text: str, needle: str) -> list[str]:
    """The cells of the first table row containing ``needle``."""
    return [cell.strip() for cell in row_with(text, needle).split("\u2502")[1:-1]]


# -- rendering -------------------------------------------------------------------------


def test_render_shows_workers_clusters_pools_and_counters() -> None:
    text = text_of(NEW_STATUS)
    assert "pid 4242" in text and "serving" in text and "1h02m05s" in text
    assert "registered 127.0.0.1:8001" in text
    assert cells(text, "50001") == ["1", "50001", "ready", "10.2s", "1,234", "2", "5", "3",
                                    "2", "7"]
    assert cells(text, "50002") == ["2", "50002", "draining", "1m39s", "7", "0", "1", "-",
                                    "-", "-"]
    # Every worker agrees on 9001; they disagree on 9002.
    assert "alive \u00d72" in row_with(text, "127.0.0.1:9001 ")
    assert "alive 1 / retrying 1" in row_with(text, "127.0.0.1:9002")
    assert "ejected \u00d72" in row_with(text, "127.0.0.1:9003")
    # requests, retries, ejections, evictions: once per service
    assert cells(text, "orders")[-4:] == ["200", "3", "4", "1"]
    assert cells(text, "127.0.0.1:9002")[-4:] == ["", "", "", ""]
    assert "no providers" in row_with(text, "billing")
    assert cells(text, "http://127.0.0.1:9001") == [
        "http://127.0.0.1:9001", "10,000", "12", "99.9%", "6", "2"]
    assert cells(text, "http://[::1]:9002")[3] == "-"  # no requests, no ratio
    assert "[::1]:9002" in text  # printed as is, not taken for markup
    counters = row_with(text, "Counters")
    assert "cancelled_disconnect 3" in counters and "cancelled_deadline 1" in counters
    assert "queue_shed" not in text  # zero counters are left out


def test_render_an_older_server_without_the_new_keys() -> None:
    text = text_of(OLD_STATUS)
    # connections: not reported by an older server
    assert cells(text, "60003") == ["3", "60003", "ready", "12.0s", "5", "0", "-", "-", "-",
                                    "-"]
    assert "stopping" in text
    assert "registered no" in text
    assert "no clusters" in text and "no pools" in text and "no counters" in text


def test_render_survives_an_almost_empty_answer() -> None:
    assert "no workers" in text_of({})


@pytest.mark.parametrize(("given", "url"), [
    ("9100", "http://127.0.0.1:9100"),
    ("127.0.0.1:9100", "http://127.0.0.1:9100"),
    ("http://127.0.0.1:9100/", "http://127.0.0.1:9100"),
    ("[::1]:9100", "http://[::1]:9100"),
])
def test_admin_address_forms(given: str, url: str) -> None:
    assert admin_base_url(given) == url


# -- the command -----------------------------------------------------------------------


@dataclass
class Supervisor:
    admin_port: int
    pid: int
    worker_pids: set[int]


def get_status(admin: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{admin}/status", timeout=5).json()
    return body


@pytest.fixture(scope="module")
def supervisor() -> Iterator[Supervisor]:
    """A real ``tether serve --workers 2 --admin-port`` with both workers ready."""
    with server_process("hello:app", "--workers", "2", "--no-access-log",
                        "--admin-port", "0") as server:
        # Port 0 and the logged address, so no other process can take the port first.
        line = server.wait_for_line("admin listening on http://")
        admin = line.strip().rsplit(" ", 1)[1]

        def both_ready() -> bool:
            workers = get_status(admin)["workers"]
            return [w["state"] for w in workers] == ["ready", "ready"]

        asyncio.run(wait_for(both_ready, 20, "two ready workers"))
        status = get_status(admin)
        yield Supervisor(int(admin.rsplit(":", 1)[1]), status["pid"],
                         {w["pid"] for w in status["workers"]})


@contextlib.asynccontextmanager
async def status_process(
    *args: str, tty: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``status_command ARGS`` as a real process; kill it on exit if it still runs.

    ``tty``: make rich draw every live frame although stdout is a pipe.
    """
    # A big "terminal", so that no line we look for is wrapped or cropped.
    env = {**os.environ, "COLUMNS": "200", "LINES": "100"}
    if tty:
        env["FORCE_COLOR"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STATUS_COMMAND, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def read_until(
    proc: asyncio.subprocess.Process, done: Callable[[str], bool], *,
    timeout: float = 10.0, what: str = "output",
) -> str:
    """Read the process's stdout (colours and cursor moves stripped) until ``done``."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while not done(seen):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{seen}")
        with contextlib.suppress(TimeoutError):
            chunk = await asyncio.wait_for(proc.stdout.read(65536), remaining)
            if not chunk:
                raise AssertionError(f"the status process exited while waiting for {what}")
            seen += ANSI.sub("", chunk.decode(errors="replace"))
    return seen


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> tuple[str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return out.decode(), err.decode()


async def test_once_against_a_real_server(supervisor: Supervisor) -> None:
    # The bare port form of --admin, as an operator on the same host would type it.
    async with status_process("--admin", str(supervisor.admin_port), "--once") as proc:
        out, err = await finish(proc)
    assert proc.returncode == 0, err
    assert f"pid {supervisor.pid}" in out and "serving" in out
    for pid in supervisor.worker_pids:
        assert re.search(rf"│\s+{pid}\s+│\s+ready", out), out
    assert "no clusters" in out and "no pools" in out  # hello:app calls nothing


def test_once_through_click(supervisor: Supervisor) -> None:
    result = CliRunner().invoke(
        status_command, ["--once"],
        env={"TETHER_ADMIN": f"127.0.0.1:{supervisor.admin_port}", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert all(str(pid) in result.output for pid in supervisor.worker_pids)


async def test_live_view_rides_out_an_unreachable_admin() -> None:
    """The view stays up while nobody listens, then shows the server once it is there."""
    port = free_port()
    async with status_process("--admin", str(port), "--interval", "0.1", tty=True) as proc:
        error = f"cannot reach the admin endpoint at http://127.0.0.1:{port}"
        frames = await read_until(proc, lambda seen: seen.count(error) >= 2,
                                  what="two frames with the error")
        assert proc.returncode is None, frames
        with server_process("hello:app", "--workers", "2", "--no-access-log",
                            "--admin-port", str(port)) as server:
            line = server.wait_for_line("admin listening on http://")
            assert line.strip().endswith(f":{port}")

            def server_drawn(seen: str) -> bool:
                # Two consecutive "ready" rows: one frame with both workers up.
                recent = seen[-4000:]
                return f"pid {server.proc.pid}" in recent and \
                    re.search(r"ready.*\n.*ready", recent) is not None

            await read_until(proc, server_drawn, timeout=20, what="the server in a frame")
            proc.send_signal(signal.SIGINT)
            _, err = await finish(proc)
    assert proc.returncode == 0, err


def test_once_against_a_dead_port_fails_with_the_url() -> None:
    port = free_port()  # bound and closed again: nobody listens there
    result = CliRunner().invoke(status_command, ["--admin", f"127.0.0.1:{port}", "--once"])
    assert result.exit_code == 1
    assert f"cannot reach the admin endpoint at http://127.0.0.1:{port}" in result.output


async def test_once_against_a_dead_port_in_a_real_process() -> None:
    port = free_port()
    async with status_process("--admin", str(port), "--once") as proc:
        out, err = await finish(proc)
    assert proc.returncode == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cannot reach the admin endpoint at http://127.0.0.1:{port}: ")


def test_invalid_admin_is_a_usage_error() -> None:
    result = CliRunner().invoke(status_command, ["--admin", "70000", "--once"])
    assert result.exit_code == 2
    assert "not a port number" in result.output
