"""Unary gRPC calls/s: the connect-python order service on tether next to the same logic
on grpcio's own ``grpc.aio`` server, in the same run.

Each server gets ONE process (tether: ``--workers 1``; grpc.aio: one event loop) on
127.0.0.1 and a free port, serving ``examples/grpc`` (``service.py`` on tether,
``aio_server.py`` on grpc.aio: both call ``logic.get_order``). A grpcio client in this
process runs ``--concurrency`` calls at a time on one channel (one HTTP/2 connection),
each a closed loop of ``GetOrder`` with a deadline, for a warmup then a measured window.
It prints calls/s, p50/p99 latency and errors per server, and the ratio
tether/grpc.aio (target: >= 0.7)::

    .venv/bin/python bench/grpc_unary.py            # 2 rounds, 5 s windows, 32 at a time
    .venv/bin/python bench/grpc_unary.py --quick    # the CI smoke: 1 round, 1 s, 8 at a time

``bench/http2.py`` calls :func:`run` for its gRPC section. Every process started here is
stopped whatever happens (SIGTERM, then SIGKILL of its process group); every load is
bounded in time and in count. Exit status: 0 when every run completed, 1 when one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` and ``examples`` importable
    sys.path.insert(0, _ROOT)

import grpc  # noqa: E402

from bench import harness  # noqa: E402
from bench.harness import HOST, PYTHON, BenchError  # noqa: E402
from examples.grpc.gen import orders_pb2 as pb  # noqa: E402
from examples.grpc.gen import orders_pb2_grpc as pb_grpc  # noqa: E402

STOP_TIMEOUT: Final = 10.0  # seconds a server gets to exit after SIGTERM
CALL_TIMEOUT: Final = 10.0  # each call's gRPC deadline
MAX_CALLS: Final = 2_000_000  # a bound on the count of one measured run, whatever its length
TARGET_RATIO: Final = 0.7
#: grpcio honours http_proxy and friends; the servers are on 127.0.0.1
CHANNEL_OPTIONS: Final = [("grpc.enable_http_proxy", 0)]

Command = Callable[[int], list[str]]  # port -> argv


def tether_cmd(port: int) -> list[str]:
    return [PYTHON, "-m", "tether", "serve", "examples.grpc.service:app", "--host", HOST,
            "--port", str(port), "--workers", "1", "--no-access-log", "--log-level",
            "warning"]


def aio_cmd(port: int) -> list[str]:
    return [PYTHON, "-m", "examples.grpc.aio_server", "--host", HOST, "--port", str(port)]


SERVERS: Final[dict[str, Command]] = {"tether": tether_cmd, "grpc.aio": aio_cmd}


@dataclass(frozen=True)
class Options:
    concurrency: int = 32
    warmup: float = 1.0
    duration: float = 5.0
    rounds: int = 2
    quick: bool = False

    @classmethod
    def of(cls, quick: bool) -> Options:
        return cls(concurrency=8, warmup=0.3, duration=1.0, rounds=1, quick=True) if quick \
            else cls()


@dataclass
class Result:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if len(self.latencies) < 2:
            return None
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1]


@dataclass
class Run:
    server: str
    round: int
    result: Result | None = None
    error: str | None = None


# -- the load ---------------------------------------------------------------------------


async def unary_load(port: int, opts: Options) -> Result:
    """``opts.concurrency`` closed loops of GetOrder on one channel; count the calls that
    end inside the measured window (after the warmup)."""
    result = Result()
    async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS) as channel:
        # protoc's grpcio stub module has no annotations
        stub = pb_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetOrderRequest(id="bench")
        start = time.monotonic()
        measure_from = start + opts.warmup
        end = measure_from + opts.duration

        async def loop() -> None:
            while (now := time.monotonic()) < end and result.calls < MAX_CALLS:
                try:
                    await stub.GetOrder(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError:
                    if now >= measure_from:
                        result.errors += 1
                    continue
                done = time.monotonic()
                if now >= measure_from and done <= end:
                    result.calls += 1
                    result.latencies.append(done - now)

        await asyncio.wait_for(
            asyncio.gather(*(loop() for _ in range(opts.concurrency))),
            opts.warmup + opts.duration + CALL_TIMEOUT + 5)
        result.seconds = opts.duration
    return result


def answers(port: int) -> bool:
    """One GetOrder answered: the server is ready."""

    async def call() -> bool:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}",
                                             options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.OrderServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                order = await stub.GetOrder(pb.GetOrderRequest(id="ready"), timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
            if order.id != "ready":
                raise BenchError(f"wrong answer to GetOrder: {order}")
            return True

    return asyncio.run(call())


def bench_one(server: str, rnd: int, opts: Options, workdir: Path) -> Run:
    run = Run(server, rnd)
    port = harness.free_port()
    log_path = workdir / f"{server}-{rnd}.log"
    try:
        with log_path.open("w") as log, harness.running(
                SERVERS[server](port), log, stop_timeout=STOP_TIMEOUT, name=server) as proc:
            harness.wait_ready(
                proc, lambda: answers(port),
                exited=lambda status: f"{server} exited with status {status}",
                timed_out=lambda last: f"{server} not ready ({last})")
            run.result = asyncio.run(unary_load(port, opts))
            if proc.poll() is not None:
                raise BenchError(f"{server} died during the run")
    except (BenchError, TimeoutError, OSError) as exc:
        run.error = f"{exc}\n" + "".join(harness.quoted(harness.tail(log_path, 10)))
    return run


# -- the report -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def report_lines(runs: list[Run], opts: Options) -> list[str]:
    """The table (median over rounds) and the ratio line, as printable lines."""
    lines = [f"gRPC unary GetOrder: {opts.concurrency} concurrent calls on one grpcio "
             f"channel, {opts.duration:g} s after {opts.warmup:g} s warmup, "
             f"{opts.rounds} round(s), one server process each",
             f"  {'server':<10} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    rates: dict[str, float | None] = {}
    for server in SERVERS:
        done = [r.result for r in runs if r.server == server and r.result is not None]
        failed = [r.error for r in runs if r.server == server and r.error is not None]
        rates[server] = harness.median_known([r.rate for r in done])
        if not done:
            lines.append(f"  {server:<10} failed: {failed[0].splitlines()[0] if failed else '?'}")
            continue
        lines.append(
            f"  {server:<10} {rates[server] or 0:>10.0f} "
            f"{_ms(harness.median_known(r.percentile(50) for r in done)):>8} "
            f"{_ms(harness.median_known(r.percentile(99) for r in done)):>8} "
            f"{sum(r.errors for r in done):>7}")
    tether, aio = rates.get("tether"), rates.get("grpc.aio")
    if tether and aio:
        ratio = tether / aio
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        lines.append(f"  tether/grpc.aio {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")
    else:
        lines.append("  tether/grpc.aio - (a run failed)")
    return lines


def run_rounds(opts: Options) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-grpc-") as tmp:
        for rnd in range(opts.rounds):
            # alternate the order, so neither server always runs on a warmer machine
            order = list(SERVERS) if rnd % 2 == 0 else list(reversed(SERVERS))
            for server in order:
                run = bench_one(server, rnd, opts, Path(tmp))
                runs.append(run)
                if run.error is not None:
                    print(f"{server} round {rnd + 1} failed: {run.error}", file=sys.stderr)
    return runs


def run(quick: bool) -> list[str]:
    """Run the comparison (``quick``: the CI smoke's settings) and return its report
    lines; ``bench/http2.py`` prints them in its gRPC section."""
    opts = Options.of(quick)
    return report_lines(run_rounds(opts), opts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the CI smoke: 1 round, 1 s window, 8 calls at a time")
    parser.add_argument("--concurrency", type=int, help="calls at a time (default 32)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, help="rounds, alternating order (default 2)")
    args = parser.parse_args(argv)
    base = Options.of(args.quick)
    opts = Options(
        concurrency=args.concurrency or base.concurrency, warmup=base.warmup,
        duration=args.duration or base.duration, rounds=args.rounds or base.rounds,
        quick=args.quick)
    if opts.concurrency < 1 or opts.duration <= 0 or opts.rounds < 1:
        parser.error("--concurrency, --duration and --rounds must be positive")
    runs = run_rounds(opts)
    print("\n".join(report_lines(runs, opts)))
    return 1 if any(r.error is not None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
