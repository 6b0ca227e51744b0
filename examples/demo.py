"""``make demo``: a live topology on the embedded SQLite registry, and what happens to it.

Two ``orders`` providers and a ``front`` service whose handler calls ``orders``
through a cluster with deadlines, a ``tether proxy`` in front of ``front``: every
process a real ``tether`` on 127.0.0.1 with 2 workers, registered in a registry file
in a temp dir. Bounded traffic goes through the proxy (each request under a 1 s
deadline) while the demo performs and narrates the five field-report scenarios:

1. steady traffic through the proxy, reusing its upstream connections (report 4);
2. a rolling reload of ``front``: nothing lost (report 3);
3. ``kill -9`` of an ``orders`` provider, and its return on a new port (report 5);
4. clients that disconnect mid-request: the cancellation travels proxy -> front ->
   orders (report 1);
5. a graceful stop of a provider with requests in flight (report 2);
6. a FastAPI service moved from uvicorn unchanged (``whoami``), behind the proxy: it
   sees the real client's address (the demo's client uses 127.0.0.2), and a
   ``tether.ServiceUnavailable`` it lets escape is a 503 with ``Retry-After``;
7. a WebSocket stream through the proxy (``ticker``, numbered messages, read with
   ``tether.Client``) across a rolling reload of its service: the session ends with
   1012, the client reconnects from the next number, and no number is lost;
8. a gRPC call chain (``demo_grpc.py``): grpcio -> the ``examples/grpc`` service over
   HTTP/2, found in the registry -> its next hop through ``tether.Client`` -> a query in
   a throwaway PostgreSQL. One deadline reaches every hop; a shorter one runs out
   mid-chain: the client gets DEADLINE_EXCEEDED and the query is cancelled in
   PostgreSQL.

While it runs, ``front``'s live dashboard is at the admin URL printed at the start
(every process has one); a headless Chromium saves a screenshot of it near the end
(``demo-output/dashboard.png``, path printed last; skipped, saying why, without
Debian's chromium and chromium-driver).

It ends with a table read from the processes' own ``/metrics`` and exits non-zero
if any request that should have succeeded failed. ``QUICK=1`` (or ``--quick``)
runs it in about 15 s; the full run takes about a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Step 8 imports the gRPC example by its package name (examples.grpc.*); examples/grpc
# has no __init__.py, so this directory on sys.path never shadows grpcio.
sys.path.insert(0, str(HERE.parent))

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

import tether  # noqa: E402
from examples import demo_grpc  # noqa: E402
from tether.metrics import parse_series  # noqa: E402
from tether.testing.browser import (  # noqa: E402
    BrowserUnavailable,
    chromium,
    full_page_screenshot,
)
from tether.testing.postgres import throwaway_postgres  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0") or "--quick" in sys.argv
PACE = 0.6 if QUICK else 9.0  # seconds of steady traffic around each scenario
DISCONNECTS = 5
IN_FLIGHT = 5
console = Console(highlight=False)
#: where the dashboard's screenshot goes (git ignores it)
SCREENSHOT = HERE.parent / "demo-output" / "dashboard.png"


class Proc:
    """One ``tether`` process (its own session). ``port``/``admin`` are read from its
    log lines, so every port is picked by the kernel (``--port 0``)."""

    def __init__(self, name: str, *args: str, env: dict[str, str]) -> None:
        self.name = name
        self.log: list[str] = []
        self.port = 0
        self.admin = ""
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", *args, "--workers", "2", "--no-access-log",
             "--admin-port", "0", "--graceful-timeout", "10"],
            cwd=HERE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30) or not self.port:
            self.kill()
            raise SystemExit(f"{name} did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "admin listening on " in line:
                self.admin = line.strip().rsplit(" ", 1)[1]
            if "serving on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self._ready.set()
        self._ready.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.log))

    def metrics(self) -> dict[str, float]:
        return scrape(self.admin)

    def kill(self) -> None:
        """kill -9 the supervisor and every worker (workers run in their own sessions,
        so they are killed one by one)."""
        pids = worker_pids(self.admin) if self.admin and self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def serve(name: str, app: str, registry: str, service: str, *args: str,
          env: dict[str, str] | None = None) -> Proc:
    return Proc(name, "serve", app, "--port", "0", "--registry", registry,
                "--service", service, "--registry-ttl", "2", *args,
                env={"DEMO_REGISTRY": registry, **(env or {})})


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return b""


def scrape(admin: str) -> dict[str, float]:
    """A process's ``/metrics``, as {series: value} (empty if it is gone)."""
    out: dict[str, float] = {}
    for line in _get(f"{admin}/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def worker_pids(admin: str) -> list[int]:
    import json

    body = _get(f"{admin}/status")
    return [w["pid"] for w in json.loads(body).get("workers", [])] if body else []


def total(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s series whose labels include ``labels``."""
    out = 0.0
    for key, value in values.items():
        series_name, series_labels = parse_series(key)
        if series_name == name and all(series_labels.get(k) == v for k, v in labels.items()):
            out += value
    return out


def reuse(values: dict[str, float]) -> float:
    sent = total(values, "tether_client_requests_total")
    opened = total(values, "tether_client_connections_opened_total")
    return 1.0 - opened / sent if sent else 0.0


class Traffic:
    """Bounded keep-alive traffic through the proxy, each request under a 1 s deadline.

    It runs on a thread and event loop of its own: the narration blocks now and then
    (starting a process, waiting for one to exit), and a loop blocked for a second
    would see its requests' deadlines pass while they were answered in time."""

    def __init__(self, url: str, concurrency: int = 6) -> None:
        self.url = url
        self.concurrency = concurrency
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, limit_seconds: float, limit_requests: int) -> None:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self.run(limit_seconds, limit_requests),),
            name="demo-traffic", daemon=True)
        self._thread.start()

    async def finish(self) -> None:
        """Stop sending, and wait for the requests in flight to end."""
        self.stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def run(self, limit_seconds: float, limit_requests: int) -> None:
        self.client = tether.Client(timeout=5.0)
        stop_at = time.monotonic() + limit_seconds

        async def loop(n: int) -> None:
            i = 0
            while (not self.stop.is_set() and time.monotonic() < stop_at
                   and self.counts["sent"] < limit_requests):
                i += 1
                self.counts["sent"] += 1
                try:
                    async with tether.deadline_after(1.0):
                        r = await self.client.get(f"{self.url}/order/{n}-{i}")
                    self.counts["ok" if r.status_code == 200 else f"status {r.status_code}"] += 1
                except (tether.client.HTTPError, tether.DeadlineExceeded) as exc:
                    self.counts[type(exc).__name__] += 1

        await asyncio.gather(*(loop(n) for n in range(self.concurrency)))
        await self.client.aclose()

    @property
    def failed(self) -> int:
        """Requests answered with anything but 200, or not answered (in flight excluded)."""
        counts = dict(self.counts)  # one copy: the traffic thread adds keys as it goes
        return sum(n for k, n in counts.items() if k not in ("sent", "ok"))


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise SystemExit(f"\ndemo: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def hang_up_clients(proxy: Proc, count: int) -> None:
    """Ask the proxy for slow orders and hang up after 200 ms."""
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: demo\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the demo's client gives up after 200 ms
        writer.close()


def cancelled(procs: list[Proc]) -> int:
    return int(sum(total(p.metrics(), "tether_requests_cancelled_total", reason="disconnect")
                   for p in procs))


class TickerStream:
    """Reads ``ticker``'s numbered WebSocket stream through the proxy with
    ``tether.Client``; when a session ends (1012 on a reload) it reconnects from the
    next number it expects, and counts any number lost or repeated. Bounded: 60 s,
    100,000 messages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.next = 0
        self.received = 0
        self.since_reconnect = 0
        self.reconnects = 0
        self.gaps = 0
        self.repeats = 0
        self.errors = 0
        self.closes: Counter[int | None] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        deadline = time.monotonic() + 60
        async with tether.Client(timeout=5) as client:
            while not self._stop.is_set() and time.monotonic() < deadline \
                    and self.received < 100_000:
                try:
                    async with client.websocket(f"{self.url}?from={self.next}") as ws:
                        async for message in ws:
                            self._count(json.loads(message)["seq"])
                            if self._stop.is_set():
                                break
                        if not self._stop.is_set():
                            self.closes[ws.close_code] += 1  # the server ended it
                except (tether.TetherError, OSError):
                    self.errors += 1  # a failed handshake: counted as a problem
                    await asyncio.sleep(0.1)  # back off before trying again
                    continue
                if not self._stop.is_set():
                    self.reconnects += 1
                    self.since_reconnect = 0

    def _count(self, seq: int) -> None:
        if seq > self.next:
            self.gaps += seq - self.next
        elif seq < self.next:
            self.repeats += 1
            return
        self.next = seq + 1
        self.received += 1
        self.since_reconnect += 1

    async def finish(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


class DashboardCamera:
    """A headless Chromium that opens a dashboard at the start (on a thread of its
    own: starting a browser takes seconds the narration should not wait for) and saves
    a screenshot of it when asked. Without a browser it says why, and the demo goes on."""

    def __init__(self, url: str, path: Path, profile: Path) -> None:
        self.url = url
        self.path = path
        self.profile = profile
        self.problem: str | None = None
        self._shoot = threading.Event()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-browser", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with chromium(self.profile, width=1280, height=900) as driver:
                driver.get(self.url)
                self._shoot.wait(300)  # bounded: the demo asks within minutes
                if self._shoot.is_set() and not self._cancelled.is_set():
                    # two updates at least: the charts have their data
                    stop_at = time.monotonic() + 20
                    while time.monotonic() < stop_at and int(driver.find_element(
                            "tag name", "body").get_attribute("data-updates") or 0) < 2:
                        time.sleep(0.1)  # polling the page (a thread of its own)
                    full_page_screenshot(driver, self.path)
        except BrowserUnavailable as exc:
            self.problem = str(exc)
        except Exception as exc:  # a screenshot is a bonus: never the demo's failure
            self.problem = f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()

    async def shoot(self, timeout: float = 60) -> Path | None:
        """The screenshot's path, or None (``problem`` says why)."""
        self._shoot.set()
        if not await asyncio.to_thread(self._done.wait, timeout):
            self.problem = f"no screenshot within {timeout:.0f} s"
        return self.path if self._done.is_set() and self.problem is None else None

    def close(self) -> None:
        self._cancelled.set()
        self._shoot.set()  # a browser waiting for its cue quits now
        self._thread.join(30)


#: the source address the demo's client uses towards the proxy (any 127/8 address is
#: this machine), so the app behind the proxy can tell it from the proxy's own
WHOAMI_CLIENT = "127.0.0.2"


def ask_whoami(proxy_port: int) -> tuple[dict[str, Any], tuple[int, str | None]]:
    """``GET /whoami`` and ``/whoami/inventory`` through the proxy, from 127.0.0.2."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=5,
                                      source_address=(WHOAMI_CLIENT, 0))
    try:
        conn.request("GET", "/whoami")
        seen: dict[str, Any] = json.loads(conn.getresponse().read())
        conn.request("GET", "/whoami/inventory")
        response = conn.getresponse()
        response.read()
        return seen, (response.status, response.getheader("retry-after"))
    finally:
        conn.close()


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    registry = f"sqlite:///{tmp}/registry.db"
    procs: list[Proc] = []
    events: list[str] = []
    stack = contextlib.ExitStack()
    camera: DashboardCamera | None = None
    try:
        console.print(f"[bold]tether demo[/]  registry {registry}")
        dsn = stack.enter_context(throwaway_postgres())
        orders_a = serve("orders-a", "orders:app", registry, "orders")
        orders_b = serve("orders-b", "orders:app", registry, "orders")
        front = serve("front", "front:app", registry, "front")
        whoami = serve("whoami", "whoami:app", registry, "whoami")
        ticks = serve("ticker", "ticker:app", registry, "ticker")
        proxy = Proc("proxy", "proxy", "--listen", "127.0.0.1:0", "--route", "/=front",
                     "--route", "/whoami=whoami", "--route", "/ticks=ticker",
                     "--registry", registry, env={})
        # step 8's chain: the gRPC service (found through the registry) and its next hop
        package = ("--app-dir", str(HERE.parent))
        grpc_next = serve("grpc-next", "examples.grpc.next_hop:app", registry, "orders-next",
                          *package, env={"ORDERS_DSN": dsn})
        grpc_orders = serve("grpc", "examples.grpc.service:app", registry, "orders-grpc",
                            *package, env={"ORDERS_NEXT_HOP": f"http://{grpc_next.address}"})
        procs += [orders_a, orders_b, front, whoami, ticks, proxy, grpc_next, grpc_orders]
        for p in procs:
            console.print(f"  {p.name:<9} http://{p.address}  2 workers, admin {p.admin}")
        console.print(f"  [bold]dashboard[/] of front (its workers, its orders cluster, its "
                      f"pools), live while the demo runs: [bold]{front.admin}/[/]")
        camera = DashboardCamera(f"{front.admin}/", SCREENSHOT, tmp / "browser")
        camera.start()
        await until(lambda: total(front.metrics(), "tether_cluster_providers",
                                  state="alive") >= 2, 20, "front to see both orders")
        await until(lambda: total(proxy.metrics(), "tether_cluster_providers",
                                  state="alive") >= 3, 20,
                    "the proxy to see front, whoami and ticker")
        console.print("  the proxy sees front, whoami and ticker alive; front sees both "
                      "orders providers alive\n")

        traffic = Traffic(f"http://{proxy.address}")
        traffic.start(limit_seconds=150, limit_requests=200_000)
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} scenarios"), TimeElapsedColumn(),
            console=console, transient=True,
        )
        with progress:
            step = progress.add_task("", total=8)

            async def show() -> None:
                while True:
                    c = traffic.counts
                    progress.update(step, description=(
                        f"traffic via proxy: {c['sent']:>6} sent {c['ok']:>6} ok "
                        f"{traffic.failed:>2} failed"))
                    await asyncio.sleep(0.1)

            ticker = asyncio.create_task(show())

            async def pace() -> None:
                await asyncio.sleep(PACE)  # steady traffic between scenarios (not a sync)

            console.print("[bold]1.[/] steady traffic through the proxy (report 4: "
                          "reuse upstream connections)")
            await pace()
            await until(lambda: total(proxy.metrics(), "tether_client_requests_total") > 100,
                        10, "the proxy's first metrics")
            ratio = reuse(proxy.metrics())
            console.print(f"   proxy -> front connection reuse so far: {ratio:.3f}")
            progress.advance(step)

            console.print("[bold]2.[/] rolling reload of front (SIGHUP), one worker at a "
                          "time (report 3)")
            front.proc.send_signal(signal.SIGHUP)
            await until(lambda: front.count("reload finished") >= 1, 30, "the reload")
            events.append("front reloaded")
            console.print(f"   reload finished; failed requests so far: {traffic.failed}")
            progress.advance(step)
            await pace()

            console.print(f"[bold]3.[/] kill -9 orders-a ({orders_a.address}) and its "
                          "workers (report 5)")
            orders_a.kill()
            events.append("orders-a killed")
            await pace()
            orders_a2 = serve("orders-a2", "orders:app", registry, "orders")
            procs.append(orders_a2)
            events.append("orders-a back on a new port")
            await until(lambda: total(front.metrics(), "tether_cluster_providers",
                                      state="alive") >= 2, 20, "front to see orders-a2")
            console.print(f"   orders-a back on a new port ({orders_a2.address}), alive "
                          "in front's cluster")
            progress.advance(step)
            await pace()

            console.print(f"[bold]4.[/] {DISCONNECTS} clients ask for a slow order and "
                          "hang up after 200 ms (report 1)")
            providers = [orders_b, orders_a2]
            before = {p.name: cancelled([p]) for p in (proxy, front, orders_b, orders_a2)}

            def reached_everywhere() -> bool:
                return all(cancelled([p]) - before[p.name] >= DISCONNECTS
                           for p in (proxy, front)) and \
                    sum(cancelled([p]) - before[p.name] for p in providers) >= DISCONNECTS

            await hang_up_clients(proxy, DISCONNECTS)
            await until(reached_everywhere, 10, "the cancellations to reach orders")
            reached = sum(cancelled([p]) - before[p.name] for p in providers)
            events.append(f"{reached} orders handlers cancelled by disconnects")
            console.print(f"   handlers cancelled: proxy {cancelled([proxy])}, front "
                          f"{cancelled([front])}, orders {reached}")
            progress.advance(step)

            console.print(f"[bold]5.[/] graceful stop of orders-b, {IN_FLIGHT} slow "
                          "requests in flight (report 2)")
            async with tether.Client(timeout=10) as slow_client:
                slow = [asyncio.create_task(
                    slow_client.get(f"http://{orders_b.address}/orders/slow"))
                    for _ in range(IN_FLIGHT)]
                await until(lambda: total(orders_b.metrics(), "tether_http_requests_in_flight")
                            >= IN_FLIGHT, 10, "the slow requests to reach orders-b")
                orders_b.proc.send_signal(signal.SIGTERM)
                done = await asyncio.gather(*slow, return_exceptions=True)
            completed = sum(getattr(r, "status_code", 0) == 200 for r in done)
            code = orders_b.proc.wait(30)
            events.append(f"orders-b stopped: {completed}/{IN_FLIGHT} in flight completed")
            console.print(f"   {completed}/{IN_FLIGHT} in-flight requests completed; "
                          f"orders-b exited with status {code}")
            progress.advance(step)

            console.print("[bold]6.[/] a FastAPI service moved from uvicorn (whoami), "
                          "behind the proxy; the client connects from 127.0.0.2")
            seen, unavailable = await asyncio.to_thread(ask_whoami, proxy.port)
            events.append(f"whoami saw client {seen.get('client')}")
            console.print(f"   the app saw client {seen.get('client')} "
                          f"(scheme {seen.get('scheme')}); /whoami/inventory answered "
                          f"{unavailable[0]} with Retry-After {unavailable[1]}")
            progress.advance(step)

            console.print("[bold]7.[/] a WebSocket stream through the proxy, across a "
                          "rolling reload of its service (ticker)")
            stream = TickerStream(f"ws://{proxy.address}/ticks")
            stream.start()
            await until(lambda: stream.received >= 20, 10, "the stream to flow")
            ticks.proc.send_signal(signal.SIGHUP)
            await until(lambda: ticks.count("reload finished") >= 1, 30, "ticker's reload")
            await until(lambda: stream.reconnects >= 1 and stream.since_reconnect >= 20, 15,
                        "the stream to flow again after the reload")
            await stream.finish()
            events.append(f"ticker reloaded: stream closes {dict(stream.closes)}")
            console.print(f"   {stream.received} numbers received, sessions closed with "
                          f"{dict(stream.closes)}, {stream.reconnects} reconnect(s), "
                          f"{stream.gaps} lost, {stream.repeats} repeated")
            progress.advance(step)

            console.print("[bold]8.[/] a gRPC call chain: grpcio -> orders-grpc (HTTP/2, "
                          "found in the registry) -> next hop -> PostgreSQL")
            chain = await demo_grpc.run_chain(
                registry, dsn,
                lambda: total(grpc_next.metrics(), "tether_db_queries_cancelled_total"),
                until)
            events.append(f"gRPC chain: short deadline ended {chain.short_code}")
            console.print(
                f"   orders-grpc found at {chain.registered}; a {demo_grpc.FIRST_DEADLINE:.0f} s "
                f"deadline reached the handler as {chain.handler_budget_ms:.0f} ms and the "
                f"next hop as x-request-timeout-ms {chain.next_hop_header_ms}")
            console.print(
                f"   a {demo_grpc.SHORT_DEADLINE:.0f} s deadline over a "
                f"{demo_grpc.QUERY_SECONDS:.0f} s query: {chain.short_code} after "
                f"{chain.short_seconds:.2f} s; queries cancelled at the next hop "
                f"{chain.queries_cancelled:.0f}, left running in PostgreSQL "
                f"{chain.queries_left_running}")
            progress.advance(step)
            await pace()
            shot = await camera.shoot()  # with the traffic still flowing
            await traffic.finish()
            ticker.cancel()

        proxy_m, front_m = proxy.metrics(), front.metrics()
        c = traffic.counts
        table = Table(title="what happened", title_justify="left", show_header=False)
        table.add_column("")
        table.add_column("", justify="right")
        rows = [
            ("requests sent through the proxy", f"{c['sent']:,}"),
            ("succeeded", f"{c['ok']:,}"),
            ("failed", str(c["sent"] - c["ok"])),
            ("handlers cancelled by disconnect (proxy/front/orders)",
             f"{cancelled([proxy])}/{cancelled([front])}/{reached}"),
            ("front reloads / front workers started",
             f"{total(front_m, 'tether_reloads_total'):.0f} / "
             f"{total(front_m, 'tether_worker_starts_total'):.0f}"),
            ("front -> orders retries on another provider",
             f"{total(front_m, 'tether_cluster_retries_total'):.0f}"),
            ("in-flight requests completed during the stop", f"{completed}/{IN_FLIGHT}"),
            ("connection reuse proxy -> front", f"{reuse(proxy_m):.4f}"),
            ("connection reuse front -> orders", f"{reuse(front_m):.4f}"),
            ("client the FastAPI app saw (sent from 127.0.0.2)",
             str(seen.get("client"))),
            ("FastAPI app's ServiceUnavailable", f"{unavailable[0]}, Retry-After "
                                                 f"{unavailable[1]}"),
            ("WebSocket numbers received / lost / repeated across ticker's reload",
             f"{stream.received} / {stream.gaps} / {stream.repeats}"),
            ("WebSocket sessions closed by the reload with 1012", str(stream.closes[1012])),
            ("gRPC deadline at the handler / at the next hop (of 2000 ms)",
             f"{chain.handler_budget_ms:.0f} / {chain.next_hop_header_ms}"),
            ("gRPC call whose deadline ran out mid-chain",
             f"{chain.short_code} in {chain.short_seconds:.2f} s"),
            ("its PostgreSQL query: cancelled / left running",
             f"{chain.queries_cancelled:.0f} / {chain.queries_left_running}"),
        ]
        for label, value in rows:
            table.add_row(label, value)
        console.print(table)
        console.print("events: " + "; ".join(events))
        if c["sent"] - c["ok"]:
            console.print(f"not ok: {({k: v for k, v in c.items() if k not in ('sent', 'ok')})}")
        problems = (c["sent"] - c["ok"]) + (IN_FLIGHT - completed) + (reached < DISCONNECTS)
        problems += (seen.get("client") != WHOAMI_CLIENT) + (unavailable != (503, "1"))
        problems += stream.gaps + stream.repeats + (stream.closes[1012] < 1) + stream.errors
        problems += not chain.ok
        if shot is not None:
            console.print(f"dashboard screenshot: {shot}")
        else:
            console.print(f"no dashboard screenshot: {camera.problem}")
        console.print("[green]all good[/]" if not problems else "[red]PROBLEMS: see above[/]")
        return 1 if problems else 0
    finally:
        if camera is not None:
            camera.close()
        for p in procs:
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
