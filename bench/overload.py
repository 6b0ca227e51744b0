"""Pile-up under overload (field report 1): does the service keep doing useful work?

A service with a known capacity (every request is one ~20 ms PostgreSQL query on a
pool of 5: about 250 requests/s) is offered 3x its capacity for 20 s, open loop, by
clients that give up after 500 ms. Three configurations of the same service:

* ``off``: no deadline propagation, no cancellation on disconnect, no admission
  control, asyncpg's FIFO queue for connections (what uvicorn/gunicorn + asyncpg
  do today): abandoned requests keep running and queue in front of the pool.
* ``defaults``: tether's defaults: the client's deadline travels in
  ``x-request-timeout-ms``, the handler (and its query) is cancelled at the
  deadline or on disconnect, and ``tether.db`` queues for a connection
  deadline-aware and newest-first under a standing queue (503 for the shed).
* ``admission``: the defaults plus ``--limit-concurrency 5`` (deadline-aware queue,
  adaptive LIFO, CoDel shedding).

Printed per configuration: goodput (responses that arrived within the deadline)
as a fraction of the measured capacity, p99 latency of those successes, and the
database work done per success (queries started / completed per success).

    .venv/bin/python bench/overload.py [--seconds 20] [--factor 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, _ROOT)

import tether  # noqa: E402
from bench import harness  # noqa: E402
from bench.harness import PYTHON, ROOT, BenchError  # noqa: E402
from tests.postgres import throwaway_postgres  # noqa: E402

DEADLINE = 0.5
STOP_TIMEOUT = 15.0

CONFIGS: dict[str, tuple[list[str], bool, str]] = {
    # name: (extra tether serve flags, client propagates its deadline, DB queue)
    "off": (["--no-cancel-on-disconnect"], False, "fifo"),
    "defaults": ([], True, "adaptive"),
    "admission": (["--limit-concurrency", "5"], True, "adaptive"),
}


@dataclass
class Outcome:
    offered: int = 0
    successes: list[float] = field(default_factory=list)
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def server(dsn: str, flags: list[str], port: int, db_queue: str) -> Iterator[str]:
    """Run the service on ``port``; yield its URL once GET /stats answers; always stop it
    (its output goes to ours)."""
    env = {**os.environ, "OVERLOAD_DSN": dsn, "PYTHONPATH": str(ROOT),
           "OVERLOAD_DB_QUEUE": db_queue}
    argv = [PYTHON, "-m", "tether", "serve", "bench.overload_app:app", "--port", str(port),
            "--no-access-log", "--log-level", "warning", *flags]
    url = f"http://127.0.0.1:{port}"
    with harness.running(argv, None, stop_timeout=STOP_TIMEOUT, term_group=True, env=env,
                 stdin=None) as proc:
        try:
            harness.wait_ready(
                proc, lambda: harness.http_get(port, "/stats", timeout=1.0).status == 200,
                exited=str, timed_out=str, interval=0.1,
            )
        except BenchError:  # exited, or no answer in time: the same message either way
            raise SystemExit(f"server at {url} did not start") from None
        yield url


async def stats(url: str) -> dict[str, int]:
    async with tether.Client(timeout=5.0) as client:
        body: dict[str, int] = (await client.get(f"{url}/stats")).json()
        return body


async def measure_capacity(url: str, seconds: float = 3.0) -> float:
    """Closed loop with as many clients as the pool has connections."""
    done = 0
    stop_at = time.monotonic() + seconds
    async with tether.Client(timeout=5.0) as client:
        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                if (await client.get(f"{url}/work")).status_code == 200:
                    done += 1

        await asyncio.gather(*(loop() for _ in range(5)))
    return done / seconds


async def offer(url: str, rate: float, seconds: float, propagate: bool) -> Outcome:
    """Open loop: one request every 1/rate s, each abandoned after DEADLINE."""
    outcome = Outcome()
    total = int(rate * seconds)
    async with tether.Client(timeout=5.0, max_connections=2000,
                             max_connections_per_origin=2000,
                             propagate_deadline=propagate) as client:
        async def one() -> None:
            started = time.monotonic()
            try:
                async with tether.deadline_after(DEADLINE):
                    r = await client.get(f"{url}/work")
                took = time.monotonic() - started
                if r.status_code == 200 and took <= DEADLINE:
                    outcome.successes.append(took)
                else:
                    key = f"status {r.status_code}"
                    outcome.errors[key] = outcome.errors.get(key, 0) + 1
            except tether.DeadlineExceeded:
                outcome.late += 1
            except tether.client.HTTPError as exc:
                key = type(exc).__name__
                outcome.errors[key] = outcome.errors.get(key, 0) + 1

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            outcome.offered += 1
        if tasks:
            await asyncio.wait(tasks, timeout=DEADLINE + 5)
    return outcome


async def run_config(name: str, dsn: str, seconds: float, factor: float) -> dict[str, Any]:
    flags, propagate, db_queue = CONFIGS[name]
    with server(dsn, flags, harness.free_port(), db_queue) as url:
        capacity = await measure_capacity(url)
        before = await stats(url)
        outcome = await offer(url, capacity * factor, seconds, propagate)
        # let abandoned work that keeps running (the "off" case) show up in the stats
        await asyncio.sleep(DEADLINE * 2)
        after = await stats(url)
    successes = len(outcome.successes)
    goodput = successes / seconds
    started = after["started"] - before["started"]
    completed = after["completed"] - before["completed"]
    p99 = (statistics.quantiles(outcome.successes, n=100)[98] * 1000
           if len(outcome.successes) >= 2 else float("nan"))
    return {
        "config": name,
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(capacity * factor, 1),
        "offered": outcome.offered,
        "successes": successes,
        "goodput_fraction": round(goodput / capacity, 3) if capacity else 0.0,
        "p99_success_ms": round(p99, 1),
        "late": outcome.late,
        "errors": outcome.errors,
        "queries_per_success": round(started / successes, 2) if successes else None,
        "queries_completed_per_success": round(completed / successes, 2) if successes else None,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--configs", default="off,defaults,admission")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with throwaway_postgres() as dsn:
        for name in args.configs.split(","):
            result = await run_config(name, dsn, args.seconds, args.factor)
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(f"{'config':<10} {'capacity/s':>10} {'offered/s':>10} {'goodput':>8} "
          f"{'p99 ok ms':>10} {'queries/ok':>11}  errors")
    for r in results:
        work = r["queries_per_success"]
        print(f"{r['config']:<10} {r['capacity_rps']:>10} {r['offered_rps']:>10} "
              f"{r['goodput_fraction']:>8} {r['p99_success_ms']:>10} "
              f"{work if work is not None else '-':>11}  late={r['late']} {r['errors']}")
    if args.json:
        harness.write_json(args.json, results, trailing_newline=False)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
