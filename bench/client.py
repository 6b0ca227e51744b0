"""Throughput of ``tether.Client`` next to ``httpx.AsyncClient`` and ``aiohttp.ClientSession``.

One command: a ``tether serve`` process on 127.0.0.1 (a free port) serves a tiny app
(:func:`app`: a 13-byte body plus an ``x-client-port`` header naming the client port
of the connection the request arrived on). Then, in ONE process and ONE uvloop event
loop, each client sends ``--requests`` keep-alive GETs with ``--concurrency`` tasks
and a connection limit equal to the concurrency. Printed per client: requests/s and
the connections opened, counted on the server side (distinct client ports seen in the
responses; for tether also ``Client.stats()``), then the ratios tether/aiohttp and
tether/httpx. Run from anywhere::

    .venv/bin/python bench/client.py                         # 20,000 GETs, 32 at a time
    .venv/bin/python bench/client.py --rounds 3              # median of 3 alternating rounds
    .venv/bin/python bench/client.py --requests 500 --json results.json

The server process (and its process group) is stopped whatever happens, Ctrl-C and
SIGTERM included. Every client run is bounded by ``--run-timeout``. Exit status: 0
when every run completed with only 200s, 1 when some run failed, 2 on bad usage or
a server that does not start, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
import httpx

import tether
from tether.asgi import Receive, Scope, Send

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.harness import HOST, PYTHON, READY_TIMEOUT, ROOT, BenchError  # noqa: E402

CLIENTS: Final = ("tether", "aiohttp", "httpx")
STOP_TIMEOUT: Final = 10.0
BODY: Final = b"Hello, world!"

# -- the server's app -----------------------------------------------------------------------


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """A fixed body, and the client port of this request's connection in a header."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    client = scope.get("client")
    port = str(client[1] if client else 0).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY)),
        (b"x-client-port", port),
    ]})
    await send({"type": "http.response.body", "body": BODY})


# -- the server process ---------------------------------------------------------------------


@contextlib.contextmanager
def server(workers: int) -> Iterator[int]:
    """Run ``tether serve bench.client:app``; yield its port once it answers a GET."""
    port = harness.free_port()
    argv = [
        PYTHON, "-m", "tether", "serve", "bench.client:app", "--app-dir", str(ROOT),
        "--host", HOST, "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]
    with tempfile.TemporaryFile("w+") as log, harness.running(
        argv, log, stop_timeout=STOP_TIMEOUT, term_group=True, reap_timeout=STOP_TIMEOUT,
        stdin=None,
    ) as proc:
        harness.wait_ready(
            proc,
            lambda: (reply := harness.http_get(port)).status == 200 and reply.body == BODY,
            exited=lambda status: f"the server exited with status {status}:\n{_tail(log)}",
            timed_out=lambda _: f"the server did not answer within {READY_TIMEOUT}s:\n"
                                f"{_tail(log)}",
        )
        yield port


def _tail(log: IO[str], lines: int = 20) -> str:
    return "".join(f"{line}\n" for line in harness.tail(log, lines))


# -- the clients ----------------------------------------------------------------------------

Fetch = Callable[[], Awaitable[tuple[int, str]]]  # -> (status, x-client-port)


@dataclass
class Result:
    client: str
    round: int
    requests: int = 0
    seconds: float = 0.0
    requests_per_sec: float = 0.0
    #: distinct client ports the server saw (connections it accepted for this run)
    connections_server: int = 0
    #: connections the client says it opened (tether's stats(); None for the others)
    connections_client: int | None = None
    non_200: int = 0
    error: str | None = None


async def drive(fetch: Fetch, requests: int, concurrency: int) -> tuple[float, set[str], int]:
    """``requests`` calls of ``fetch`` by ``concurrency`` tasks; (seconds, ports, non-200s)."""
    ports: set[str] = set()
    non_200 = 0
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, non_200
        while remaining > 0:
            remaining -= 1
            status, port = await fetch()
            ports.add(port)
            if status != 200:
                non_200 += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started, ports, non_200


async def run_tether(url: str, requests: int, concurrency: int) -> tuple[Result, int]:
    async with tether.Client(max_connections=concurrency,
                             max_connections_per_origin=concurrency, timeout=30.0) as client:

        async def fetch() -> tuple[int, str]:
            response = await client.get(url)
            if response.content != BODY:
                raise BenchError(f"tether: unexpected body {response.content!r}")
            return response.status_code, response.headers.get("x-client-port", "?") or "?"

        seconds, ports, non_200 = await drive(fetch, requests, concurrency)
        opened = int(client.stats()["connections_opened"])
    return _result("tether", requests, seconds, ports, non_200), opened


async def run_httpx(url: str, requests: int, concurrency: int) -> tuple[Result, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def fetch() -> tuple[int, str]:
            response = await client.get(url)
            if response.content != BODY:
                raise BenchError(f"httpx: unexpected body {response.content!r}")
            return response.status_code, response.headers.get("x-client-port", "?")

        seconds, ports, non_200 = await drive(fetch, requests, concurrency)
    return _result("httpx", requests, seconds, ports, non_200), -1


async def run_aiohttp(url: str, requests: int, concurrency: int) -> tuple[Result, int]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def fetch() -> tuple[int, str]:
            async with session.get(url) as response:
                body = await response.read()
                if body != BODY:
                    raise BenchError(f"aiohttp: unexpected body {body!r}")
                return response.status, response.headers.get("x-client-port", "?")

        seconds, ports, non_200 = await drive(fetch, requests, concurrency)
    return _result("aiohttp", requests, seconds, ports, non_200), -1


def _result(name: str, requests: int, seconds: float, ports: set[str], non_200: int) -> Result:
    return Result(client=name, round=0, requests=requests, seconds=seconds,
                  requests_per_sec=requests / seconds if seconds else 0.0,
                  connections_server=len(ports), non_200=non_200)


RUNNERS: Final[dict[str, Callable[[str, int, int], Awaitable[tuple[Result, int]]]]] = {
    "tether": run_tether, "httpx": run_httpx, "aiohttp": run_aiohttp,
}


async def measure(options: Options, url: str, results: list[Result]) -> None:
    """Run every client in every round, appending to ``results`` as runs finish."""
    for round_no in range(1, options.rounds + 1):
        for name in harness.rotated(options.clients, round_no - 1):
            runner = RUNNERS[name]
            result = Result(client=name, round=round_no)
            try:
                async with asyncio.timeout(options.run_timeout):
                    if options.warmup:  # a throwaway client instance: warms the server and code
                        await runner(url, options.warmup, options.concurrency)
                    result, opened = await runner(url, options.requests, options.concurrency)
                result.round = round_no
                if opened >= 0:
                    result.connections_client = opened
            except TimeoutError:
                result.error = f"did not finish within {options.run_timeout}s"
            except Exception as exc:  # one client failing must not hide the others
                result.error = f"{type(exc).__name__}: {exc}"
            results.append(result)
            print(line_for(result), flush=True)


# -- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    requests: int
    concurrency: int
    rounds: int
    warmup: int
    server_workers: int
    run_timeout: float
    loop: str
    clients: list[str]
    json_path: Path | None


@dataclass
class Summary:
    client: str
    rounds_ok: int
    requests_per_sec: float | None  # median over the completed rounds
    rps_rounds: list[float] = field(default_factory=list)
    connections_server: int | None = None  # max over rounds
    connections_client: int | None = None
    errors: list[str] = field(default_factory=list)


def line_for(result: Result) -> str:
    if result.error is not None:
        return f"round {result.round}  {result.client:<8} FAILED: {result.error}"
    client_side = ("" if result.connections_client is None
                   else f" (client stats: {result.connections_client})")
    return (f"round {result.round}  {result.client:<8} {result.requests_per_sec:9.0f} req/s  "
            f"{result.requests} requests in {result.seconds:.2f}s  connections opened: "
            f"{result.connections_server}{client_side}  non-200: {result.non_200}")


def summarize(results: list[Result], clients: list[str]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in clients:
        runs = [r for r in results if r.client == name]
        ok = [r for r in runs if r.error is None]
        rps = [r.requests_per_sec for r in ok]
        client_counts = [r.connections_client for r in ok if r.connections_client is not None]
        out[name] = Summary(
            client=name, rounds_ok=len(ok),
            requests_per_sec=statistics.median(rps) if rps else None, rps_rounds=rps,
            connections_server=max((r.connections_server for r in ok), default=None),
            connections_client=max(client_counts, default=None),
            errors=[r.error for r in runs if r.error is not None],
        )
    return out


def report(summary: dict[str, Summary], options: Options) -> list[str]:
    lines = [
        "",
        f"{options.requests} keep-alive GETs per client and round, concurrency "
        f"{options.concurrency}, connection limit {options.concurrency}, {options.rounds} "
        f"round(s), {options.loop} loop; median of the rounds (min-max)",
        "",
        f"{'client':<8} {'req/s':>9} {'(min-max)':>17}  {'connections opened':>18}",
    ]
    for s in summary.values():
        if s.requests_per_sec is None:
            lines.append(f"{s.client:<8} FAILED: {'; '.join(s.errors)}")
            continue
        spread = f"({min(s.rps_rounds):.0f}-{max(s.rps_rounds):.0f})"
        conns = str(s.connections_server)
        if s.connections_client is not None:
            conns += f" (stats {s.connections_client})"
        lines.append(f"{s.client:<8} {s.requests_per_sec:>9.0f} {spread:>17}  {conns:>18}")
    lines.append("")
    subject = summary.get("tether")
    targets = {"aiohttp": 1.0, "httpx": 2.0}
    for peer, target in targets.items():
        other = summary.get(peer)
        if subject is None or other is None:
            continue
        if subject.requests_per_sec is None or not other.requests_per_sec:
            lines.append(f"tether/{peer:<7} req/s  n/a (a run failed)")
            continue
        ratio = subject.requests_per_sec / other.requests_per_sec
        verdict = "met" if ratio >= target else "NOT met"
        lines.append(f"tether/{peer:<7} req/s  {ratio:.2f}x  (target >= {target:.1f}x: {verdict})")
    return lines


def machine_facts() -> dict[str, Any]:
    cpu = harness.cpu_model(default=platform.processor() or platform.machine())
    versions = harness.package_versions(
        ("tether", "httpx", "httpcore", "aiohttp", "uvloop", "httptools"), None
    )
    try:
        sniffio = importlib.util.find_spec("sniffio") is not None
    except (ImportError, ValueError):
        sniffio = False
    return {
        "date": harness.utc_timestamp(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "sniffio": sniffio,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu, "cpus": os.cpu_count(), "versions": versions,
    }


# -- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="tether.Client vs httpx.AsyncClient vs aiohttp.ClientSession: "
                    "keep-alive GETs to a local tether server.")
    parser.add_argument("--requests", type=int, default=20_000,
                        help="measured requests per client and round (default 20000)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="concurrent tasks, and each client's connection limit (default 32)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds; the client order rotates each round (default 1)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="requests through a throwaway client before each run (default "
                             "1000; 0 skips)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="tether serve --workers for the server (default 1)")
    parser.add_argument("--run-timeout", type=float, default=300.0,
                        help="seconds one client run (warm-up included) may take (default 300)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the clients (default uvloop)")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help="comma list, a subset of tether,aiohttp,httpx")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="also write settings, machine facts, runs and summary here")
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown or not clients:
        parser.error(f"--clients: unknown {unknown}, choose from {','.join(CLIENTS)}")
    for name in ("requests", "concurrency", "rounds", "server_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.run_timeout <= 0:
        parser.error("--warmup must be >= 0 and --run-timeout > 0")
    return Options(
        requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
        warmup=args.warmup, server_workers=args.server_workers, run_timeout=args.run_timeout,
        loop=args.loop, clients=clients, json_path=args.json_path,
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    harness.sigterm_as_interrupt()  # the server is stopped on the way out
    facts = machine_facts()
    print(f"{facts['date']}  {facts['cpu']} x{facts['cpus']}  Python {facts['python']}  "
          f"{' '.join(f'{k} {v}' for k, v in facts['versions'].items())}  load average "
          f"{' '.join(map(str, facts['load_average']))}", flush=True)
    if "httpx" in options.clients and not facts["sniffio"]:
        print("note: sniffio is not installed (anyio no longer requires it): httpcore then "
              "attempts `import sniffio` at every lock and event it sets up, a failed import "
              "each time, which makes httpx slower than where sniffio is present", flush=True)
    results: list[Result] = []
    interrupted = False
    try:
        with server(options.server_workers) as port:
            url = f"http://{HOST}:{port}/"
            with asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
                runner.run(measure(options, url, results))
    except BenchError as exc:
        print(f"bench/client.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupted = True
    summary = summarize(results, options.clients)
    print("\n".join(report(summary, options)), flush=True)
    print(f"load average at the end: {harness.format_loadavg(os.getloadavg())}")
    if options.json_path is not None:
        harness.write_json(options.json_path, {
            "settings": harness.settings_of(options),
            "machine": facts,
            "runs": [asdict(r) for r in results],
            "summary": {k: asdict(v) for k, v in summary.items()},
        }, trailing_newline=False)
    if interrupted:
        return 130
    failed = any(r.error is not None or r.non_200 for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
