"""One stop budget bounds every worker in every state (issue 12, bugs 2 and 3).

Real ``tether serve`` processes: a draining worker that hangs (SIGSTOP) is killed at
its budget while its replacement serves; a worker whose stop runs every phase to
its end is left to finish on its own; one whose lifespan shutdown blocks its event
loop is killed at the budget, not before its own timers would have ended it. The
numbers come from :class:`tether.config.StopBudget`, the one the server uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bench.loadgen import run_load
from tests.support import EXAMPLES, ServerProcess, server_process, wait_for
from tests.test_supervisor import (
    admin_url,
    count_lines,
    in_flight,
    lifecycle_server,
    ready_pids,
    status,
    until,
)
from tether.config import STOP_MARGIN, ServerConfig, StopBudget
from tether.server.sockets import bind_tcp
from tether.server.supervisor import Supervisor

TESTS = Path(__file__).resolve().parent
#: how late after its deadline a kill may be observed (process reaping, polling, CI)
SLACK = 3.0


def budget_of(*args: str) -> StopBudget:
    """The budget the server derives from these flags (the same ServerConfig)."""
    options = dict(zip(args[::2], args[1::2], strict=True))
    return ServerConfig(
        app="x:y",
        graceful_timeout=float(options["--graceful-timeout"]),
        force_exit_timeout=float(options["--force-exit-timeout"]),
    ).stop_budget


def test_default_budget() -> None:
    """With the defaults: 30 s grace, 5 s for cancelled handlers, 5 s for lifespan
    shutdown; the worker is done by 40 s, the supervisor kills at 42 s."""
    budget = ServerConfig(app="x:y").stop_budget
    assert budget == StopBudget(graceful=30.0, cancel=5.0, lifespan=5.0, margin=STOP_MARGIN)
    assert (budget.worker, budget.total) == (40.0, 42.0)


def test_budget_follows_the_flags() -> None:
    budget = ServerConfig(app="x:y", graceful_timeout=1, force_exit_timeout=3).stop_budget
    assert (budget.graceful, budget.cancel, budget.lifespan) == (1, 3, 3)
    assert budget.worker == 7 and budget.total == 7 + STOP_MARGIN


def gone(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited and been reaped (a zombie is not gone yet)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def killed_at_exit(pid: int) -> Iterator[psutil.Process]:
    """``pid`` as a psutil.Process, killed (even if stopped) when the block exits."""
    proc = psutil.Process(pid)
    try:
        yield proc
    finally:
        if not gone(proc):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()  # SIGKILL ends a SIGSTOPped process too


def state_of(server: ServerProcess, pid: int) -> str | None:
    for worker in status(server)["workers"]:
        if worker["pid"] == pid:
            return str(worker["state"])
    return None


def forced_stops(server: ServerProcess) -> float:
    """``tether_worker_stops_total{outcome="forced"}`` from the admin /metrics."""
    text = httpx.get(f"{admin_url(server)}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('tether_worker_stops_total{outcome="forced"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_draining_worker_that_hangs_is_killed_at_its_budget(tmp_path: Path) -> None:
    """Bug 2: the watchdog only watched ready workers, so a draining worker that hung
    (here: SIGSTOP, a request still in flight) was there for ever. Now it is killed
    once its stop budget is spent, logged once, counted as forced, while its
    replacement serves."""
    flags = ("--graceful-timeout", "2", "--force-exit-timeout", "1", "--worker-timeout", "2")
    budget = budget_of(*flags)
    marks = tmp_path / "marks"
    marks.mkdir()
    with lifecycle_server(marks, "--workers", "1", *flags) as server:
        (old_pid,) = ready_pids(server)
        with killed_at_exit(old_pid) as old:
            async with httpx.AsyncClient(timeout=60) as client:
                call = asyncio.create_task(client.get(f"{server.url}/slow?s=60"))
                await until(lambda: in_flight(server) == 1, what="a request in flight")
                assert forced_stops(server) == 0
                server.proc.send_signal(signal.SIGHUP)
                await until(lambda: f"worker {old_pid} stopping" in server.output(),
                            what="the old worker to begin draining")
                old.suspend()  # SIGSTOP: it hangs while draining
                hung_at = time.monotonic()
                assert state_of(server, old_pid) == "draining"
                stop_load = asyncio.Event()
                load = asyncio.create_task(run_load(
                    "127.0.0.1", server.port, concurrency=2, stop=stop_load,
                    max_seconds=budget.total + 2 * SLACK))
                try:
                    await until(lambda: gone(old), budget.total + SLACK,
                                "the hung draining worker to be killed")
                    killed_after = time.monotonic() - hung_at
                finally:
                    stop_load.set()
                    served = await load
                with pytest.raises(httpx.TransportError):
                    await call  # it was in flight on the worker that was killed
        # The deadline ran from the drain, which came just before hung_at.
        assert budget.total - 0.5 < killed_after < budget.total + SLACK
        await until(lambda: forced_stops(server) == 1, what="the forced stop to be counted")
        assert served.failed == 0, served.errors
        assert served.ok > 10  # the new worker served all along
        (new_pid,) = ready_pids(server)
        assert new_pid != old_pid
        assert server.stop() == 0  # the service itself stops cleanly
    line = f"pid {old_pid}) did not stop within its stop budget ({budget.total:.1f}s)"
    assert count_lines(server, line) == 1, server.output()
    assert count_lines(server, "did not stop within") == 1


def budget_server(marks: Path, shutdown: str, *flags: str
                  ) -> contextlib.AbstractContextManager[ServerProcess]:
    return server_process(
        "apps.stop_budget_app:app", "--no-access-log", "--admin-port", "0", "--workers", "1",
        *flags, cwd=TESTS,
        env={"STOP_BUDGET_MARKS": str(marks), "STOP_BUDGET_SHUTDOWN": shutdown},
    )


async def stop_timed(server: ServerProcess, worker: psutil.Process,
                     budget: StopBudget) -> tuple[float, int]:
    """SIGTERM the service: how long until its worker was gone, and the exit status."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    await until(lambda: gone(worker), budget.total + SLACK, "the worker to be gone")
    took = time.monotonic() - started
    return took, await asyncio.to_thread(server.proc.wait, 15)


#: a long cancel phase (longer than the old fixed 2 s margin), so that a supervisor
#: that forgot the lifespan phase kills before the worker's own timers run out
SLOW_PHASES = ("--graceful-timeout", "1", "--force-exit-timeout", "3")


async def test_worker_stop_using_every_phase_is_not_killed(tmp_path: Path) -> None:
    """Bug 3: a stop that runs every phase to its end (a handler whose cleanup ignores
    the cancel, then a lifespan shutdown that hangs) ends on the worker's own timers,
    at graceful + cancel + lifespan. The supervisor used to kill it earlier, at
    graceful + force + 2 s: the two budgets disagreed."""
    budget = budget_of(*SLOW_PHASES)
    marks = tmp_path / "marks"
    marks.mkdir()
    with budget_server(marks, "hang", *SLOW_PHASES) as server:
        (pid,) = ready_pids(server)
        with killed_at_exit(pid) as worker:
            async with httpx.AsyncClient(timeout=60) as client:
                call = asyncio.create_task(client.get(f"{server.url}/stubborn"))
                await until(lambda: in_flight(server) == 1, what="the stubborn request")
                took, code = await stop_timed(server, worker, budget)
                with contextlib.suppress(httpx.TransportError):
                    await call
        output = server.output()
        assert budget.worker - 0.5 < took < budget.total, output
        assert "did not stop within" not in output, output
        assert f"pid {pid}) exited with status 4" in output  # forced, by itself
        assert "lifespan shutdown did not finish" in output
        assert list(marks.glob("cancelled-*")) and list(marks.glob("shutdown-*"))
        assert code == 4


async def test_worker_whose_lifespan_shutdown_blocks_is_killed_at_the_budget(
    tmp_path: Path,
) -> None:
    """Bug 3: a lifespan shutdown that blocks the event loop can only be ended by the
    supervisor: it kills at the budget's total, never before the worker's own timers
    would have ended the stop (graceful + cancel + lifespan)."""
    budget = budget_of(*SLOW_PHASES)
    marks = tmp_path / "marks"
    marks.mkdir()
    with budget_server(marks, "block", *SLOW_PHASES) as server:
        (pid,) = ready_pids(server)
        with killed_at_exit(pid) as worker:
            took, code = await stop_timed(server, worker, budget)
        output = server.output()
        assert list(marks.glob("shutdown-*"))  # its lifespan shutdown began, and blocked
        # Not before the worker's own timers would have ended its stop, and at the total.
        assert budget.worker < budget.total - 0.5 < took < budget.total + SLACK, output
        assert output.count("did not stop within") == 1, output
        assert f"pid {pid}) did not stop within its stop budget ({budget.total:.1f}s)" in output
        assert code == 4



@pytest.mark.processes  # the supervisor runs in this process; its workers do not
async def test_stop_awaits_every_task_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task the supervisor started (the watchdog, the reload follower, one
    watcher per worker) is finished, not merely cancelled, when its stop returns;
    they used to be cancelled and left pending."""
    sock = bind_tcp("127.0.0.1", 0, 128)
    config = ServerConfig(app="hello:app", app_dir=str(EXAMPLES), port=0, workers=2,
                          access_log=False, graceful_timeout=1, force_exit_timeout=1)
    sup = Supervisor(config, [sock])
    stop = sup._stop
    unfinished: list[asyncio.Task[Any]] = []

    async def stop_and_look() -> int:
        tasks = set(sup._tasks)
        code = await stop()
        unfinished.extend(t for t in tasks if not t.done())  # as the stop returns
        return code

    monkeypatch.setattr(sup, "_stop", stop_and_look)
    run = asyncio.create_task(sup.run())
    try:
        # The watchdog, a watcher per worker, and the reload follower (started last).
        await wait_for(lambda: sup.is_ready() and len(sup._tasks) == 4, 30,
                       "two ready workers and the supervisor's four tasks")
        started = set(sup._tasks)
        sup.request_stop()
        assert await asyncio.wait_for(asyncio.shield(run), 30) == 0
        assert unfinished == []
        assert all(t.done() for t in started) and not sup._tasks
    finally:
        if not run.done():
            sup.request_force()
            await asyncio.wait({run}, timeout=config.stop_budget.total + 5)
        for worker in list(sup.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()
        sock.close()
