"""WebSocket echo throughput of tether next to uvicorn (each of its WebSocket
implementations), hypercorn and granian.

One command: for each message size (1 KB and 64 KB by default) each server is started
with ONE worker on 127.0.0.1 (a free port each) serving the same plain ASGI echo app
(``bench.apps:websocket_echo``), driven by ``bench/ws_load.py`` (32 connections, each
a closed loop of one binary message and its echo) for a warmup then a measured window,
then stopped. The table gives round trips/s, MB/s (payload, each way) and p99, and the
ratios tether/<peer> and tether/(uvicorn's best implementation) per size. Run from
anywhere::

    .venv/bin/python bench/websocket.py                    # every server, 1 KB and 64 KB
    .venv/bin/python bench/websocket.py --rounds 3         # median of 3 alternating rounds
    .venv/bin/python bench/websocket.py --quick            # the CI smoke: 1 s, 8 connections
    .venv/bin/python bench/websocket.py --servers tether,uvicorn-sansio --sizes 1024

Every process started here is stopped (SIGTERM, then SIGKILL of its whole process
group) whatever happens, including Ctrl-C; each measured run is bounded by its warmup,
duration and fixed timeouts. A server that fails to start, dies, or drops or garbles an
echo is reported as failed; the others still run. Exit status: 0 when every run
completed, 1 when some run failed, 2 on bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.harness import HOST, PYTHON, READY_TIMEOUT, BenchError, num_text, range_text  # noqa: E402
from bench.ws_load import LoadError, LoadResult, echo_load  # noqa: E402

STOP_TIMEOUT: Final = 10.0  # seconds a server gets to exit after SIGTERM
LOAD_GRACE: Final = 30.0  # seconds a load may run past warmup + duration (handshakes, close)
OUTPUT_TAIL_LINES: Final = 20
TARGET: Final = "bench.apps:websocket_echo"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

# -- what is benchmarked ----------------------------------------------------------------

Command = Callable[[int], list[str]]  # port -> argv


def tether_cmd(port: int) -> list[str]:
    return [PYTHON, "-m", "tether", "serve", TARGET, "--host", HOST, "--port", str(port),
            "--no-access-log", "--log-level", "warning"]


def uvicorn_cmd(ws: str) -> Command:
    def command(port: int) -> list[str]:
        return [PYTHON, "-m", "uvicorn", TARGET, "--host", HOST, "--port", str(port),
                "--http", "httptools", "--loop", "uvloop", "--ws", ws,
                "--no-access-log", "--log-level", "warning"]
    return command


def hypercorn_cmd(port: int) -> list[str]:
    # Hypercorn speaks WebSocket with wsproto; it writes no access log unless asked.
    return [PYTHON, "-m", "hypercorn", TARGET, "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "uvloop", "--log-level", "warning"]


def granian_cmd(port: int) -> list[str]:
    return [PYTHON, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--no-access-log", "--log-level", "warning", TARGET]


#: server name -> how to start it; tether first, it is what the ratios are about.
#: uvicorn three times, once per WebSocket implementation it offers: ``websockets``
#: (the library's asyncio layer, uvicorn's default), ``websockets-sansio`` (the
#: library's sans-I/O core, as tether uses it) and ``wsproto``.
SERVERS: Final[dict[str, Command]] = {
    "tether": tether_cmd,
    "uvicorn-websockets": uvicorn_cmd("websockets"),
    "uvicorn-sansio": uvicorn_cmd("websockets-sansio"),
    "uvicorn-wsproto": uvicorn_cmd("wsproto"),
    "hypercorn": hypercorn_cmd,
    "granian": granian_cmd,
}
SUBJECT: Final = "tether"
UVICORNS: Final = ("uvicorn-websockets", "uvicorn-sansio", "uvicorn-wsproto")
VERSIONED: Final = ("tether", "uvicorn", "hypercorn", "granian", "uvloop", "httptools",
                    "websockets", "wsproto")
DEFAULT_SIZES: Final = [1024, 65536]
QUICK: Final = {"duration": 1.0, "warmup": 0.0, "connections": 8}

# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    duration: float
    warmup: float
    connections: int
    sizes: list[int]
    servers: list[str]
    rounds: int
    quick: bool
    json_path: Path | None


@dataclass
class Run:
    server: str
    size: int
    round: int
    result: LoadResult | None = None
    error: str | None = None
    server_output: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    server: str
    size: int
    rounds: int
    rounds_ok: int
    round_trips_per_sec: float | None
    mb_per_sec: float | None
    p99_ms: float | None
    cpu_us: float | None  # server CPU microseconds per round trip
    rtps_rounds: list[float]
    errors: list[str]


# -- one run -----------------------------------------------------------------------------


def answers(port: int) -> bool:
    """The echo app's plain 200 "ok": raises OSError/HTTPException while not listening."""
    reply = harness.http_get(port)
    if reply.status != 200:
        raise BenchError(f"GET / answered {reply.status}")
    return True


def bench_one(server: str, size: int, rnd: int, opts: Options, workdir: Path) -> Run:
    """Start ``server``, run the echo load, stop it. Never raises BenchError."""
    run = Run(server=server, size=size, round=rnd)
    port = harness.free_port()
    log_path = workdir / f"{server}-{size}-{rnd}.log"
    try:
        with log_path.open("wb") as log, harness.running(
            SERVERS[server](port), log, stop_timeout=STOP_TIMEOUT
        ) as proc:
            try:
                harness.wait_ready(
                    proc, lambda: answers(port),
                    exited=lambda status: f"exited with status {status} before answering",
                    timed_out=lambda last: f"not answering after {READY_TIMEOUT:.0f}s ({last})",
                )
            except BenchError as exc:
                raise BenchError(f"failed to start: {exc}") from exc
            run.result = _load(port, size, opts, harness.ProcessFamily(proc.pid))
            status = proc.poll()
            if status is not None:
                raise BenchError(f"exited with status {status} during the run")
    except BenchError as exc:
        run.result = None
        run.error = str(exc)
    finally:
        run.server_output = harness.tail(log_path, OUTPUT_TAIL_LINES)
    return run


def server_cpu_seconds(family: harness.ProcessFamily) -> float:
    """CPU seconds (user + system) used so far by a server and its workers."""
    ticks = 0
    for pid in family.pids():
        with contextlib.suppress(OSError):
            fields = harness.proc_stat(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def _load(port: int, size: int, opts: Options, family: harness.ProcessFamily) -> LoadResult:
    async def bounded() -> LoadResult:
        return await asyncio.wait_for(
            echo_load(HOST, port, size=size, connections=opts.connections,
                      duration=opts.duration, warmup=opts.warmup,
                      cpu_seconds=lambda: server_cpu_seconds(family)),
            opts.warmup + opts.duration + LOAD_GRACE)

    try:
        return _run_on_uvloop(bounded)
    except LoadError as exc:
        raise BenchError(f"load failed: {exc}") from exc
    except TimeoutError as exc:
        raise BenchError("load did not finish in time") from exc


def _run_on_uvloop(main: Callable[[], Any]) -> LoadResult:
    """The load on uvloop when it is installed (as the servers are), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        result: LoadResult = asyncio.run(main())
        return result
    result = uvloop.run(main())
    return result


# -- the whole benchmark -----------------------------------------------------------------


def run_all(opts: Options, runs: list[Run]) -> None:
    """Every (round, size, server) in turn, appending to ``runs`` as they finish."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-ws-") as tmp:
        for rnd in range(opts.rounds):
            for size in opts.sizes:
                for server in harness.rotated(opts.servers, rnd):
                    run = bench_one(server, size, rnd, opts, Path(tmp))
                    runs.append(run)
                    print(progress_line(run, opts.rounds), flush=True)


def size_text(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def progress_line(run: Run, rounds: int) -> str:
    head = f"[round {run.round + 1}/{rounds}] {size_text(run.size):>6} {run.server:<19}"
    if run.result is None:
        return f"{head} FAILED: {(run.error or '').splitlines()[0]}"
    r = run.result
    return (f"{head} {r.round_trips_per_sec:>9,.0f} round trips/s {r.mb_per_sec:8.1f} MB/s"
            f"  p99 {r.p99_ms:7.2f} ms  server CPU "
            f"{num_text(r.server_cpu_us_per_round_trip, '.1f')} us/round trip")


def summarize(runs: list[Run], opts: Options) -> list[Summary]:
    summaries = []
    for size in opts.sizes:
        for server in opts.servers:
            mine = [r for r in runs if r.size == size and r.server == server]
            ok = [r.result for r in mine if r.result is not None]
            rtps = [r.round_trips_per_sec for r in ok]
            summaries.append(Summary(
                server=server, size=size, rounds=len(mine), rounds_ok=len(ok),
                round_trips_per_sec=statistics.median(rtps) if rtps else None,
                mb_per_sec=statistics.median([r.mb_per_sec for r in ok]) if ok else None,
                p99_ms=statistics.median([r.p99_ms for r in ok]) if ok else None,
                cpu_us=harness.median_known([r.server_cpu_us_per_round_trip for r in ok]),
                rtps_rounds=rtps,
                errors=[r.error for r in mine if r.error is not None],
            ))
    return summaries


def ratio_lines(summaries: list[Summary], opts: Options) -> list[str]:
    """Per size, tether against each peer and against uvicorn's best implementation:
    round trips/s (tether/peer) and server CPU per round trip (peer/tether), so that
    above 1 means tether is better in both columns."""
    by_key = {(s.size, s.server): s for s in summaries}
    lines = []
    for size in opts.sizes:
        subject = by_key.get((size, SUBJECT))
        if subject is None:
            continue
        peers = [(p, p) for p in opts.servers if p != SUBJECT]
        uvicorns = [(by_key[(size, u)].round_trips_per_sec or 0.0, u)
                    for u in UVICORNS if u in opts.servers]
        if uvicorns and max(uvicorns)[0] > 0:
            best = max(uvicorns)[1]
            peers.append((f"uvicorn's best ({best})", best))
        for label, peer in peers:
            other = by_key[(size, peer)]
            head = f"{size_text(size):>6}  {SUBJECT}/{label:<32}"
            if subject.round_trips_per_sec is None or not other.round_trips_per_sec:
                lines.append(f"{head}n/a (no result for one of them)")
                continue
            cpu = ("-" if subject.cpu_us is None or other.cpu_us is None
                   else f"{other.cpu_us / subject.cpu_us:5.2f}")
            lines.append(f"{head}{subject.round_trips_per_sec / other.round_trips_per_sec:5.2f}"
                         f"   CPU {cpu}")
    return lines


def report(summaries: list[Summary], runs: list[Run], opts: Options) -> str:
    """The final table, the ratio lines and anything that went wrong, as text."""
    lines = [
        "",
        f"echo of binary messages: {opts.connections} connections, warmup {opts.warmup:g}s, "
        f"{opts.duration:g}s measured, {opts.rounds} round(s)"
        + (", median of rounds" if opts.rounds > 1 else ""),
        "",
        f"{'size':>6}  {'server':<19}{'round trips/s':>14}  {'(min-max)':<16}"
        f"{'MB/s':>7}{'p99 ms':>9}{'CPU us/rt':>11}{'ok':>5}",
    ]
    for s in summaries:
        state = "" if s.rounds_ok == s.rounds else f"  {s.rounds - s.rounds_ok} FAILED"
        lines.append(
            f"{size_text(s.size):>6}  {s.server:<19}{num_text(s.round_trips_per_sec, ',.0f'):>14}"
            f"  {range_text(s.rtps_rounds, ',.0f'):<16}{num_text(s.mb_per_sec, '.1f'):>7}"
            f"{num_text(s.p99_ms, '.2f'):>9}{num_text(s.cpu_us, '.1f'):>11}"
            f"{s.rounds_ok:>3}/{s.rounds}{state}")
    lines += ["", "ratios (above 1: tether is better): round trips/s tether/peer, then server "
              "CPU per round trip peer/tether; the issue's target: >= 1.20 against "
              "uvicorn's best",
              *ratio_lines(summaries, opts)]
    failed = [r for r in runs if r.error is not None]
    if failed:
        lines += ["", "failures:"]
        for run in failed:
            lines.append(f"  {run.server} at {size_text(run.size)}, round {run.round + 1}: "
                         f"{run.error}")
            lines += harness.quoted(run.server_output)
    return "\n".join(lines)


def results_json(opts: Options, facts: dict[str, Any], runs: list[Run],
                 summaries: list[Summary], argv: Sequence[str]) -> dict[str, Any]:
    return {
        **harness.json_header(opts, facts, argv),
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
    }


# -- command line ------------------------------------------------------------------------


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return seconds


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a comma list of byte counts: {exc}") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected byte counts of at least 1, got {value!r}")
    return sizes


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark tether's WebSocket echo against uvicorn, hypercorn and granian.")
    parser.add_argument("--duration", type=_seconds, default=5.0, metavar="SECONDS",
                        help="measured window per server and size (default: 5)")
    parser.add_argument("--warmup", type=_seconds, default=1.0, metavar="SECONDS",
                        help="discarded load before each window (default: 1)")
    parser.add_argument("--connections", type=harness.count_type(1, "connections"),
                        default=32, metavar="N", help="WebSocket connections (default: 32)")
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, metavar="BYTES,...",
                        help="message sizes (default: 1024,65536)")
    parser.add_argument("--servers", type=harness.names_type(list(SERVERS)),
                        default=list(SERVERS), help=f"comma list (default: {','.join(SERVERS)})")
    parser.add_argument("--rounds", type=harness.count_type(1, "rounds"), default=1,
                        metavar="N", help="rounds, the server order rotated each round; "
                        "medians are reported (default: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI smoke: 1 s windows, no warmup, 8 connections")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", dest="json_path",
                        help="also write every run and the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.duration <= 0:
        parser.error("--duration must be more than 0")
    return Options(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    harness.sigterm_as_interrupt()
    facts = harness.machine_facts(VERSIONED)
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
    print(f"{facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}", flush=True)
    print(versions, flush=True)
    print(f"load average before: {harness.record_loadavg(facts, 'before')}", flush=True)
    runs: list[Run] = []
    interrupted = harness.run_interruptibly(lambda: run_all(opts, runs))
    summaries = summarize(runs, opts)
    harness.print_report(facts, report(summaries, runs, opts), skewed="the numbers")
    if opts.json_path is not None:
        command = [str(Path(__file__)), *argv]
        harness.save_results(opts.json_path, results_json(opts, facts, runs, summaries, command))
    if interrupted:
        return 130
    return 1 if any(r.error is not None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
