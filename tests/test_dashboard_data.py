"""The dashboard's data on real processes: ``tether serve --workers 2 --admin-port``
of a front whose workers each keep a cluster over two ``tether serve`` providers.
What ``/dashboard/data`` says must be what happened: the traffic of the last seconds,
a rolling reload (old workers draining then exited, new ones ready), a provider killed
with ``kill -9`` going alive -> retrying -> evicted in the clients' timeline.

(The page itself, in a real browser, is tests/test_dashboard_browser.py.)
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.support import APPS, ServerProcess, server_process, wait_for

pytestmark = pytest.mark.processes
TESTS = APPS.parent

FRONT = "apps.dashboard_app:app"
PROVIDER = "apps.cluster_app:app"


def admin_url(server: ServerProcess) -> str:
    return server.wait_for_line("admin listening on http://").rsplit(" ", 1)[1].strip()


def data(admin: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{admin}/dashboard/data", timeout=5).json()
    return body


def kill_tree(server: ServerProcess) -> None:
    """``kill -9`` the provider's supervisor and workers at once: a dead machine."""
    procs = [psutil.Process(server.proc.pid),
             *psutil.Process(server.proc.pid).children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


@contextlib.contextmanager
def topology() -> Iterator[tuple[ServerProcess, list[ServerProcess], str]]:
    """The front (2 workers, an admin port) and its two providers."""
    with server_process(PROVIDER, cwd=TESTS) as a, server_process(PROVIDER, cwd=TESTS) as b:
        providers = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with server_process(FRONT, "--workers", "2", "--admin-port", "0", cwd=TESTS,
                            env={"DASHBOARD_PROVIDERS": providers}) as front:
            yield front, [a, b], admin_url(front)


@pytest.fixture
def running() -> Iterator[tuple[ServerProcess, list[ServerProcess], str]]:
    with topology() as parts:
        yield parts


def ready_pids(snapshot: dict[str, Any]) -> set[int]:
    return {w["pid"] for w in snapshot["status"]["workers"] if w["state"] == "ready"}


async def test_traffic_of_the_last_seconds_is_in_the_history(
        running: tuple[ServerProcess, list[ServerProcess], str]) -> None:
    front, _, admin = running
    await wait_for(lambda: len(ready_pids(data(admin))) == 2, 20, "two ready workers")
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(60):  # bounded: 60 calls through the cluster
            assert (await client.get(f"{front.url}/call")).status_code == 200
        await client.get(f"{front.url}/nothing-here-but-200")

    def served() -> bool:
        snapshot = data(admin)
        history = snapshot["history"]
        return sum(history["rps"]["2xx"]) > 0 and any(
            v is not None for v in history["latency_ms"]["p50"]) and sum(
            pool["requests"] for pool in snapshot["status"]["pools"]) >= 60

    await wait_for(served, 15, "the calls to show up in the traffic history")
    snapshot = data(admin)
    history = snapshot["history"]
    assert len(history["t"]) == len(history["rps"]["2xx"]) == len(history["latency_ms"]["p99"])
    assert history["t"] == sorted(history["t"]) and history["t"][-1] <= snapshot["now"]
    (cluster,) = snapshot["status"]["clusters"]
    assert cluster["service"] == "backends" and cluster["retry_budget"] is not None
    assert {p["address"] for p in cluster["providers"]} == {
        p["address"] for p in cluster["providers"] if p["states"] == {"alive": 2}}
    pools = snapshot["status"]["pools"]
    assert len(pools) == 2 and all(pool["reuse_ratio"] > 0.5 for pool in pools), pools


async def test_a_rolling_reload_is_seen_worker_by_worker(
        running: tuple[ServerProcess, list[ServerProcess], str]) -> None:
    front, _, admin = running
    await wait_for(lambda: len(ready_pids(data(admin))) == 2, 20, "two ready workers")
    old = ready_pids(data(admin))
    front.proc.send_signal(signal.SIGHUP)

    def replaced() -> bool:
        now = ready_pids(data(admin))
        return len(now) == 2 and not now & old

    await wait_for(replaced, 30, "two new ready workers")
    new = ready_pids(data(admin))
    events = data(admin)["worker_events"]

    def states(pid: int) -> list[str]:
        return [e["state"] for e in events if e["pid"] == pid]

    for pid in old:
        await wait_for(lambda pid=pid: "exited" in [  # type: ignore[misc]
            e["state"] for e in data(admin)["worker_events"] if e["pid"] == pid],
            30, f"old worker {pid} to exit")
    events = data(admin)["worker_events"]
    for pid in old:
        assert states(pid)[-2:] == ["draining", "exited"], events
    for pid in new:
        assert states(pid) == ["starting", "ready"], events
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    status = data(admin)["status"]
    assert (status["reloads"], status["worker_starts"], status["worker_crashes"]) == (1, 4, 0)


async def test_a_killed_provider_goes_retrying_then_evicted_in_the_timeline(
        running: tuple[ServerProcess, list[ServerProcess], str]) -> None:
    _, (a, b), admin = running
    await wait_for(lambda: len(ready_pids(data(admin))) == 2, 20, "two ready workers")
    dead = f"127.0.0.1:{b.port}"

    def seen(snapshot: dict[str, Any]) -> dict[str, dict[str, int]]:
        return {p["address"]: p["states"]
                for c in snapshot["status"]["clusters"] for p in c["providers"]}

    await wait_for(lambda: seen(data(admin)).get(dead) == {"alive": 2}, 20, "B alive")
    kill_tree(b)
    await wait_for(lambda: seen(data(admin)).get(dead) == {"evicted": 2}, 30,
                   "both workers to evict the killed provider")
    snapshot = data(admin)
    changes = [(c["worker"], c["from"], c["to"]) for c in snapshot["timeline"]
               if c["address"] == dead]
    for worker in {w["id"] for w in snapshot["status"]["workers"]}:
        mine = [(before, after) for w, before, after in changes if w == worker]
        assert mine[-2:] == [("alive", "retrying"), ("retrying", "evicted")], changes
    assert all(c["service"] == "backends" and c["trigger"] for c in snapshot["timeline"])
    assert seen(snapshot)[f"127.0.0.1:{a.port}"] == {"alive": 2}
    # the workers' own entries in /status carry no copy of the timeline
    assert all("timeline" not in c for w in snapshot["status"]["workers"]
               for c in w["clusters"])
