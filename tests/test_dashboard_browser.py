"""The admin port's dashboard in a real browser (headless Debian chromium under
chromium-driver, tests/browser.py) over real processes: ``tether serve --workers 2
--admin-port`` of a front whose workers keep a cluster over two ``tether serve``
providers (the topology of tests/test_dashboard_data.py, which checks the data itself).

Everything is read from the RENDERED page (the rows' ``data-*`` attributes and the
text the page shows), never from the data the page was given: both workers with the
pids ``/status`` names; the request count rising while bounded traffic runs; a SIGHUP
showing old workers draining then gone and new ones ready; a provider killed with
``kill -9`` shown as retrying then evicted; the banner when the supervisor is gone,
and gone again when it is back; a 400 px window with nothing wider than it; and no
console errors. The page works on a token-protected port too, opened with its Basic
credentials. One more test serves a saved snapshot and a sparse one (an older
supervisor's) in-process, to check every section renders either without an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import BROWSER_SKIP, MISSING, PAGE_TIMEOUT, chromium
from tests.support import EXAMPLES, free_port, serve, server_process
from tests.test_dashboard_data import TESTS, admin_url, kill_tree, ready_pids, topology
from tether.admin import admin_app

pytestmark = BROWSER_SKIP

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dashboard_data.json"
WAIT = 30.0  # seconds for the page to show what the processes did (a loaded 2-core machine)

# -- reading the rendered page (one script each: a consistent snapshot of the DOM, which
#    the page replaces every second) ----------------------------------------------------

WORKERS_JS = """return Array.from(document.querySelectorAll('#workers-body tr[data-worker-pid]'))
  .map(r => [Number(r.dataset.workerPid), r.dataset.state,
             Number(r.cells[5].dataset.value || 0)]);"""
EVENTS_JS = """return Array.from(document.querySelectorAll('#worker-events-body tr[data-pid]'))
  .reverse().map(r => [Number(r.dataset.pid), r.dataset.state,
                       r.querySelector('.badge').textContent]);"""
PROVIDERS_JS = """return Object.fromEntries(Array.from(
  document.querySelectorAll('#clusters-body tr[data-provider]'))
  .map(r => [r.dataset.provider, r.dataset.state]));"""
TIMELINE_JS = """return Array.from(document.querySelectorAll('#timeline-body tr[data-address]'))
  .reverse().map(r => [Number(r.dataset.worker), r.dataset.address, r.dataset.from,
                       r.dataset.to]);"""


def rendered_workers(driver: Any) -> dict[int, tuple[str | None, int]]:
    """pid -> (state, in flight), as the workers table shows them."""
    return {pid: (state, in_flight)
            for pid, state, in_flight in driver.execute_script(WORKERS_JS)}


def value(driver: Any, element_id: str) -> float | None:
    raw = driver.find_element("id", element_id).get_attribute("data-value")
    return None if raw in (None, "") else float(raw)


def updates(driver: Any) -> int:
    return int(driver.find_element("tag name", "body").get_attribute("data-updates") or 0)


def until(driver: Any, predicate: Callable[[], bool], what: str,
          timeout: float = WAIT) -> None:
    """Poll the page until ``predicate()``; fail naming ``what`` after ``timeout``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1,
                  ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda _: predicate(), f"the page to show {what}")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The page's console messages at warning level or worse (each read only once)."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium keeping the console's messages; quit after the test."""
    if MISSING is not None:
        pytest.fail(f"no browser under CI: {MISSING}")
    with chromium(tmp_path, console_log=True) as driver:
        yield driver


def open_dashboard(driver: Any, admin: str) -> None:
    driver.get(f"{admin}/")
    until(driver, lambda: updates(driver) >= 1, "its first update", PAGE_TIMEOUT)


def status(admin: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{admin}/status", timeout=5).json()
    return body


@contextlib.contextmanager
def bounded_traffic(url: str, limit: int) -> Iterator[list[int]]:
    """At most ``limit`` sequential ``GET url`` on a thread, until the block ends;
    yields the statuses (appended as they come)."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() and len(statuses) < limit:
                statuses.append(client.get(url).status_code)

    thread = threading.Thread(target=run, name="dashboard-traffic")
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(30)


# -- the tests ---------------------------------------------------------------------------


def test_both_workers_and_the_request_count_rising_while_traffic_runs(page: Any) -> None:
    with topology() as (front, _, admin):
        open_dashboard(page, admin)
        until(page, lambda: len(ready_pids({"status": status(admin)})) == 2, "two ready workers")
        pids = ready_pids({"status": status(admin)})
        until(page, lambda: {p for p, (s, _) in rendered_workers(page).items()
                             if s == "ready"} == pids, f"both workers with pids {pids}")
        assert page.find_element("id", "sup-pid").text == str(front.proc.pid)

        seen: list[float] = []

        def rising() -> bool:
            total = value(page, "requests-total")
            if total is not None and (not seen or total > seen[-1]):
                seen.append(total)
            return len(seen) >= 3 and seen[0] < seen[1] < seen[2]

        with bounded_traffic(f"{front.url}/call", limit=20_000) as statuses:
            until(page, rising, "the request count rising three times")
        assert statuses and set(statuses) == {200}, set(statuses)
        # once the traffic stopped, the page settles on what /status says
        until(page, lambda: value(page, "requests-total") == sum(
            w["requests"] for w in status(admin)["workers"]), "the count /status gives")

        # the traffic is in the charts, the cluster and the pools as the page draws them
        assert len(page.find_elements("css selector", "#traffic canvas")) == 3
        until(page, lambda: (value(page, "rps-now") or 0) >= 0 and bool(
            page.find_elements("css selector", "#pools-body tr[data-origin]")),
            "the pools")
        origins = set(page.execute_script(
            "return Array.from(document.querySelectorAll('#pools-body tr[data-origin]'))"
            ".map(r => r.dataset.origin);"))
        assert origins == {p["origin"] for p in status(admin)["pools"]}
        assert console_errors(page) == []


def test_a_reload_shows_old_workers_draining_then_gone_and_new_ones_ready(page: Any) -> None:
    # The front here is cluster_app (it has /slow): requests in flight keep an old
    # worker draining for seconds, long enough for a page polling once a second to show
    # it. A worker with nothing in flight drains in milliseconds: the worker events
    # (also rendered) show that one's draining.
    slow_seconds = 8
    with server_process("apps.cluster_app:app", "--workers", "2", "--admin-port", "0",
                        "--graceful-timeout", "30", cwd=TESTS) as front:
        admin = admin_url(front)
        open_dashboard(page, admin)
        until(page, lambda: [s for s, _ in rendered_workers(page).values()] == ["ready"] * 2,
              "two ready workers")
        old = set(rendered_workers(page))

        results: list[int] = []
        slow = [threading.Thread(target=lambda: results.append(httpx.get(
            f"{front.url}/slow?seconds={slow_seconds}", timeout=60).status_code))
            for _ in range(6)]
        for thread in slow:
            thread.start()
        try:
            until(page, lambda: value(page, "in-flight-total") == 6, "6 requests in flight")
            busy = {pid for pid, (_, in_flight) in rendered_workers(page).items() if in_flight}
            assert busy and busy <= old
            front.proc.send_signal(signal.SIGHUP)

            seen: dict[int, list[str | None]] = {}

            def replaced() -> bool:
                now = rendered_workers(page)
                for pid, (state, _) in now.items():
                    if not seen.get(pid) or seen[pid][-1] != state:
                        seen.setdefault(pid, []).append(state)
                return (len(now) == 2 and not set(now) & old
                        and all(s == "ready" for s, _ in now.values()))

            until(page, replaced, "two new ready workers and the old ones gone",
                  WAIT + slow_seconds)
        finally:
            for thread in slow:
                thread.join(60)
        assert results == [200] * 6  # the reload lost none of them

        for pid in busy:  # drained while the page watched, then gone
            assert seen[pid][-1] == "draining", seen
        new = set(rendered_workers(page))

        def lifecycle_shown() -> bool:
            events = page.execute_script(EVENTS_JS)
            states = {pid: [s for p, s, _ in events if p == pid] for pid in old | new}
            return (all(states[pid][-2:] == ["draining", "exited"] for pid in old)
                    and all(states[pid] == ["starting", "ready"] for pid in new))

        until(page, lambda: lifecycle_shown(), "each old worker draining then exited")
        until(page, lambda: value(page, "sup-reloads") == 1, "one reload")
        # the badges say it in words too, not only in attributes
        assert {"draining", "exited", "starting", "ready"} <= {
            text for _, _, text in page.execute_script(EVENTS_JS)}
        assert console_errors(page) == []


def test_a_provider_killed_with_kill_9_is_shown_retrying_then_evicted(page: Any) -> None:
    with topology() as (_, (a, b), admin):
        open_dashboard(page, admin)
        alive, dead = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        until(page, lambda: page.execute_script(PROVIDERS_JS) == {alive: "alive", dead: "alive"},
              "both providers alive")
        workers = {w["id"] for w in status(admin)["workers"]}
        kill_tree(b)
        until(page, lambda: page.execute_script(PROVIDERS_JS).get(dead) == "evicted",
              "the killed provider evicted by both workers")
        assert page.execute_script(PROVIDERS_JS)[alive] == "alive"

        def timeline_shown() -> bool:
            rows = page.execute_script(TIMELINE_JS)
            changes = {w: [(f, t) for worker, address, f, t in rows
                           if worker == w and address == dead] for w in workers}
            return all(mine[-2:] == [("alive", "retrying"), ("retrying", "evicted")]
                       for mine in changes.values())

        until(page, timeline_shown, "alive -> retrying -> evicted for each worker")
        # one script: the page replaces these rows every second (no stale element)
        row_text, evictions = page.execute_script(
            "const row = document.querySelector(arguments[0]);"
            "const facts = document.querySelector(arguments[1]);"
            "return [row.textContent, facts.dataset.value];",
            f'#clusters-body tr[data-provider="{dead}"]',
            '#clusters-body [data-fact="evictions"] dd')
        assert "evicted" in row_text and "\u00d72" in row_text, row_text
        assert float(evictions) >= 2
        assert console_errors(page) == []


def test_the_banner_when_the_supervisor_is_gone_and_a_narrow_window(page: Any) -> None:
    # a fixed admin port, so the page finds the second supervisor where the first was
    port = free_port()
    args = ("hello:app", "--workers", "2", "--admin-port", str(port))
    admin = f"http://127.0.0.1:{port}"
    with server_process(*args, cwd=EXAMPLES) as first:
        # a phone-sized window: Chromium's own windows are never under 500 px wide
        page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 400, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        open_dashboard(page, admin)
        until(page, lambda: len(rendered_workers(page)) == 2, "two workers")
        width = page.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " Math.max(...Array.from(document.querySelectorAll('canvas'))"
            ".map(c => c.getBoundingClientRect().right))]")
        assert width[1] == 400 and width[0] <= width[1] and width[2] <= 400, width
        first_pids = set(rendered_workers(page))
        assert console_errors(page) == []
        first.stop()

    banner = page.find_element("id", "banner")
    until(page, banner.is_displayed, "the banner")
    assert re.fullmatch(r"supervisor unreachable since \d\d:\d\d:\d\d \(connection failed\).*",
                        banner.text), banner.text
    # the last data stays on screen (what the supervisor said last, as it stopped)
    assert page.find_element("id", "sup-pid").text == str(first.proc.pid)
    assert not set(rendered_workers(page)) - first_pids
    assert "stale" in page.find_element("id", "main").get_attribute("class")

    with server_process(*args, cwd=EXAMPLES) as second:
        until(page, lambda: not banner.is_displayed(), "the banner gone")
        until(page, lambda: page.find_element("id", "sup-pid").text == str(second.proc.pid),
              "the new supervisor")
        # only the polls that found nobody there, nothing from the page's own code
        errors = console_errors(page)
        assert errors and all("/dashboard/data" in e["message"] for e in errors), errors


def test_a_token_protected_admin_port_opened_with_its_credentials(page: Any) -> None:
    # What a browser does after its Basic prompt, here with the credentials in the URL
    # (no prompt in headless mode). Before the page built its data URL from the origin,
    # fetch() refused the relative URL (it inherited the credentials) and the page
    # said the supervisor was unreachable.
    with server_process("hello:app", "--workers", "2", "--admin-port", "0",
                        "--admin-token", "s3cret", cwd=EXAMPLES) as server:
        admin = admin_url(server)
        assert httpx.get(f"{admin}/dashboard/data", timeout=5).status_code == 401
        open_dashboard(page, admin.replace("http://", "http://ops:s3cret@"))
        until(page, lambda: len(rendered_workers(page)) == 2, "two workers")
        assert not page.find_element("id", "banner").is_displayed()
        assert page.find_element("id", "sup-pid").text == str(server.proc.pid)
        assert console_errors(page) == []


@pytest.mark.processes  # Chromium and its driver are processes, even with no tether one
async def test_a_saved_snapshot_and_a_sparse_one_render_without_errors(page: Any) -> None:
    full = json.loads(FIXTURE.read_text())
    sparse = {  # an older supervisor's: most fields absent, the rest null
        "now": full["now"],
        "status": {"pid": 7, "workers": [{"id": 1, "pid": 4242}],
                   "clusters": [{"service": "orders", "retry_budget": None,
                                 "providers": [{"address": "127.0.0.1:9001",
                                                "states": {"retrying": 1, "alive": 1},
                                                "next_probe_in": None}]}],
                   "pools": [{"origin": "http://127.0.0.1:9001", "reuse_ratio": None}]},
        "history": {"t": full["history"]["t"][-3:],
                    "latency_ms": {"p50": [None, None, None]}},
        "timeline": [{"t": full["now"], "address": "127.0.0.1:9001", "to": "retrying"}],
    }
    shown: dict[str, Any] = {"data": full}

    def data() -> dict[str, Any]:
        return copy.deepcopy(shown["data"])

    app = admin_app(lambda: data()["status"], lambda: True, dashboard=data)
    async with serve(app) as server:
        await asyncio.to_thread(open_dashboard, page, server.url)
        workers = await asyncio.to_thread(rendered_workers, page)
        assert workers == {w["pid"]: (w["state"], w["in_flight"])
                           for w in full["status"]["workers"]}
        providers = await asyncio.to_thread(page.execute_script, PROVIDERS_JS)
        assert providers == {
            p["address"]: " ".join(p["states"]) for p in full["status"]["clusters"][0]["providers"]}
        timeline = await asyncio.to_thread(page.execute_script, TIMELINE_JS)
        assert len(timeline) == len(full["timeline"])
        pool = full["status"]["pools"][0]
        cell = await asyncio.to_thread(
            page.execute_script, "return document.querySelector(arguments[0]).dataset.value;",
            f'#pools-body tr[data-origin="{pool["origin"]}"] td:nth-child(4)')
        assert float(cell) == pytest.approx(
            pool["requests"] / pool["connections_opened"])

        before = await asyncio.to_thread(updates, page)
        shown["data"] = sparse
        await asyncio.to_thread(until, page, lambda: updates(page) >= before + 2,
                                "the sparse data")
        workers = await asyncio.to_thread(rendered_workers, page)
        assert workers == {4242: (None, 0)}
        providers = await asyncio.to_thread(page.execute_script, PROVIDERS_JS)
        assert providers == {"127.0.0.1:9001": "alive retrying"}
        text = await asyncio.to_thread(lambda: page.find_element("id", "main").text)
        assert "alive 1" in text and "retrying 1" in text and "NaN" not in text
        assert "undefined" not in text and "null" not in text
        assert await asyncio.to_thread(console_errors, page) == []
