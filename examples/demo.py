"""``make demo``: a live topology on the embedded SQLite registry, and what happens to it.

Two ``orders`` providers (2 workers each) and a ``front`` service (2 workers) whose
handler calls ``orders`` through a cluster with deadlines, all ``tether serve``
processes on 127.0.0.1 registered in a registry file in a temp dir. While bounded
traffic runs, the demo performs and narrates the field-report scenarios:

1. a rolling reload of ``front`` (nothing lost, report 3);
2. ``kill -9`` of an ``orders`` provider, and its return on a new port (report 5);
3. clients that disconnect mid-request: the cancellation reaches the provider (report 1);
4. a graceful stop of a provider with requests in flight (report 2);
5. connection reuse between front and orders all along (report 4).

It ends with a table and exits non-zero if any request that should have succeeded
failed. ``QUICK=1`` (or ``--quick``) runs it in about 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import tether

HERE = Path(__file__).resolve().parent
QUICK = os.environ.get("QUICK", "") not in ("", "0") or "--quick" in sys.argv
PACE = 0.5 if QUICK else 2.0  # seconds of steady traffic between scenarios


def say(text: str) -> None:
    print(f"\r{' ' * 78}\r{text}", flush=True)


class Server:
    """One ``tether serve`` process (its own session, so its workers go with it)."""

    def __init__(self, name: str, app: str, registry: str, service: str, *extra: str,
                 port: int = 0) -> None:
        self.name = name
        self.log: list[str] = []
        self.port = 0
        self.admin = ""
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", app, "--port", str(port),
             "--workers", "2", "--no-access-log", "--admin-port", "0",
             "--registry", registry, "--service", service, "--registry-ttl", "2",
             "--graceful-timeout", "10", *extra],
            cwd=HERE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "DEMO_REGISTRY": registry, "PYTHONUNBUFFERED": "1"},
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

    def kill(self) -> None:
        """kill -9 the supervisor and every worker (workers run in their own sessions,
        so they are killed one by one)."""
        pids = self.worker_pids() if self.admin and self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in admin_status(self.admin).get("workers", [])]


def admin_status(admin: str) -> dict[str, Any]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{admin}/status", timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except OSError:
        return {}


TRAFFIC: list[Traffic] = []
SERVERS: list[Server] = []


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            counts = dict(TRAFFIC[0].counts) if TRAFFIC else {}
            if os.environ.get("DEMO_DEBUG"):
                for server in SERVERS:
                    print(f"--- {server.name}", "".join(server.log[-40:]), sep="\n")
            raise SystemExit(f"\ndemo: timed out waiting for {what} (traffic: {counts})")
        await asyncio.sleep(0.05)


class Traffic:
    """Bounded keep-alive traffic to front, each request under a 1 s deadline."""

    def __init__(self, url: str, concurrency: int = 6) -> None:
        self.url = url
        self.concurrency = concurrency
        self.counts: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.client = tether.Client(timeout=5.0)

    async def run(self, limit_seconds: float) -> None:
        stop_at = time.monotonic() + limit_seconds

        async def loop(n: int) -> None:
            i = 0
            while not self.stop.is_set() and time.monotonic() < stop_at:
                i += 1
                self.counts["sent"] += 1
                try:
                    async with tether.deadline_after(1.0):
                        r = await self.client.get(f"{self.url}/order/{n}-{i}")
                    self.counts["ok" if r.status_code == 200 else f"status {r.status_code}"] += 1
                except (tether.client.HTTPError, tether.DeadlineExceeded) as exc:
                    self.counts[type(exc).__name__] += 1

        async def progress() -> None:
            while not self.stop.is_set():
                c = self.counts
                print(f"\r  traffic: {c['sent']:>6} sent {c['ok']:>6} ok "
                      f"{c['sent'] - c['ok']:>3} not ok", end="", flush=True)
                await asyncio.sleep(0.25)

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(loop(n) for n in range(self.concurrency)))
        self.stop.set()
        await reporter
        await self.client.aclose()

    @property
    def failed(self) -> int:
        return self.counts["sent"] - self.counts["ok"]


async def disconnecting_clients(front: Server, count: int) -> None:
    """Ask for slow orders and hang up after 200 ms."""
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: front\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the demo's client hangs up after 200 ms
        writer.close()


def cancelled_at(servers: list[Server]) -> int:
    return sum(admin_status(s.admin).get("counters", {}).get("cancelled_disconnect", 0)
               for s in servers)


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    registry = f"sqlite:///{tmp}/registry.db"
    servers = SERVERS
    events: list[str] = []
    try:
        say(f"registry: {registry}")
        orders_a = Server("orders-a", "orders:app", registry, "orders")
        orders_b = Server("orders-b", "orders:app", registry, "orders")
        front = Server("front", "front:app", registry, "front")
        servers += [orders_a, orders_b, front]
        for s in servers:
            say(f"  {s.name:<9} http://{s.address}  (2 workers, admin {s.admin})")
        async with tether.Client() as probe:
            async def cluster_alive() -> int:
                r = await probe.get(f"http://{front.address}/cluster")
                return sum(p[1] == "alive" for p in r.json()["providers"])

            deadline = time.monotonic() + 20
            while await cluster_alive() < 2:
                if time.monotonic() > deadline:
                    raise SystemExit("front never saw both orders providers")
                await asyncio.sleep(0.1)
        say("front's cluster sees both orders providers alive\n")

        traffic = Traffic(f"http://{front.address}")
        TRAFFIC.append(traffic)
        runner = asyncio.create_task(traffic.run(limit_seconds=120))
        await asyncio.sleep(PACE)  # steady traffic before the first scenario

        say("1. rolling reload of front (SIGHUP): new workers ready before old ones drain")
        front.proc.send_signal(signal.SIGHUP)
        await until(lambda: front.count("reload finished") >= 1, 30, "the reload")
        events.append("front reloaded")
        say("   reload finished")
        await asyncio.sleep(PACE)

        say(f"2. kill -9 orders-a ({orders_a.address}) and all its workers")
        orders_a.kill()
        events.append("orders-a killed")
        await asyncio.sleep(PACE)
        orders_a2 = Server("orders-a2", "orders:app", registry, "orders")
        servers.append(orders_a2)
        events.append("orders-a back on a new port")
        say(f"   orders-a back on a new port: {orders_a2.address}")
        await asyncio.sleep(PACE)

        say("3. five clients ask front for a slow order and hang up after 200 ms")
        before = cancelled_at([orders_b, orders_a2])
        await disconnecting_clients(front, 5)
        await until(lambda: cancelled_at([orders_b, orders_a2]) - before >= 5, 10,
                    "the cancellations to reach orders")
        cancelled = cancelled_at([orders_b, orders_a2]) - before
        events.append(f"{cancelled} orders handlers cancelled by disconnects")
        say(f"   {cancelled} orders handlers were cancelled (front cancelled its calls)")

        say("4. graceful stop of orders-b with slow requests in flight")
        async with tether.Client(timeout=10) as slow_client:
            slow = [asyncio.create_task(slow_client.get(f"http://{orders_b.address}/orders/slow"))
                    for _ in range(5)]
            await asyncio.sleep(0.3)  # let them reach the handlers
            orders_b.proc.send_signal(signal.SIGTERM)
            done = await asyncio.gather(*slow, return_exceptions=True)
        completed = sum(getattr(r, "status_code", 0) == 200 for r in done)
        code = orders_b.proc.wait(30)
        events.append(f"orders-b stopped: {completed}/5 in-flight completed, exit {code}")
        say(f"   {completed}/5 in-flight requests completed; orders-b exited {code}")
        await asyncio.sleep(PACE)

        traffic.stop.set()
        await runner
        async with tether.Client() as probe:
            view = (await probe.get(f"http://{front.address}/cluster")).json()
        stats = view["stats"]
        say("\nfront's view of orders (one worker): " + ", ".join(
            f"{p[0]} {p[1]}" for p in view["providers"]))
        print()
        c = traffic.counts
        rows = [
            ("requests sent", c["sent"]),
            ("succeeded", c["ok"]),
            ("failed", traffic.failed),
            ("retries (one front worker)", stats.get("retries", 0)),
            ("front->orders connection reuse", f"{view['pool']['reuse_ratio']:.3f}"),
            ("provider evictions seen", stats.get("evictions", 0)),
            ("handlers cancelled by disconnect", cancelled),
            ("in-flight completed during stop", f"{completed}/5"),
        ]
        for label, value in rows:
            print(f"  {label:<36} {value}")
        print("\nevents: " + "; ".join(events))
        failures = traffic.failed + (5 - completed) + (cancelled < 5)
        print(f"\n{'all good' if not failures else 'PROBLEMS: see above'}")
        return 1 if failures else 0
    finally:
        for s in servers:
            if s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(s.proc.pid, signal.SIGTERM)
        for s in servers:
            try:
                s.proc.wait(15)
            except subprocess.TimeoutExpired:
                s.kill()
            # workers run in their own sessions: make sure none is left
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
