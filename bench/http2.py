"""HTTP/2 throughput of tether next to hypercorn and granian, and (when
``bench/grpc_unary.py`` is there) unary gRPC calls/s on tether next to ``grpc.aio``.

One command: each server is started with ONE worker on 127.0.0.1 (a free port each)
serving the same plain ASGI app (``bench.apps:hello``) over h2c with prior knowledge,
driven by ``h2load -c 8 -m 16`` (8 connections, 16 concurrent streams each): a
discarded warmup run, then a measured run of a fixed number of requests, each bounded
by a time limit; then it is stopped. The table gives requests/s, h2load's mean and
worst time per request and the server's CPU per request, then the ratios
tether/hypercorn and tether/granian against the issue's targets (>= 2 and >= 0.8).
Then, in the same run, the gRPC lines of ``bench.grpc_unary.run(quick)``. Run from
anywhere::

    .venv/bin/python bench/http2.py                     # every server, then gRPC
    .venv/bin/python bench/http2.py --rounds 3          # median of 3 alternating rounds
    .venv/bin/python bench/http2.py --quick             # the CI smoke: 2,000 requests
    .venv/bin/python bench/http2.py --servers tether,granian --no-grpc

The servers: tether with its defaults (``--http auto``: HTTP/1.1 and h2c on one port,
as it is run), hypercorn (h2c with prior knowledge on a plain socket is built in) and
granian with ``--http 2`` (its ``auto`` does not take h2c prior knowledge). Access logs
off everywhere, log level warning, uvloop where the server offers a choice.

Every process started here is stopped (SIGTERM, then SIGKILL of its whole process
group) whatever happens, including Ctrl-C. A server that fails to start, dies, or
answers a request with anything but a 2xx is reported as failed; the others still run.
Exit status: 0 when every run completed, 1 when some run failed, 2 on bad usage, 130
when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.h2load import H2loadError, H2loadResult, run_h2load  # noqa: E402
from bench.harness import HOST, PYTHON, READY_TIMEOUT, BenchError, num_text, range_text  # noqa: E402
from bench.websocket import server_cpu_seconds  # noqa: E402

STOP_TIMEOUT: Final = 10.0  # seconds a server gets to exit after SIGTERM
OUTPUT_TAIL_LINES: Final = 20
TARGET: Final = "bench.apps:hello"
READY_LIMIT: Final = 5.0  # seconds one readiness probe (a single h2load request) may take
GRPC_MODULE: Final = "bench.grpc_unary"

# -- what is benchmarked ----------------------------------------------------------------

Command = Callable[[int, Path], list[str]]  # (port, a directory for its files) -> argv

#: Hypercorn closes an HTTP/2 connection after 1,000 requests by default
#: (``keep_alive_max_requests``); h2load does not reconnect, so every request after
#: those would fail. tether and granian have no such limit: lifted to match.
HYPERCORN_CONFIG: Final = "keep_alive_max_requests = 1_000_000_000\n"


def tether_cmd(port: int, workdir: Path) -> list[str]:
    return [PYTHON, "-m", "tether", "serve", TARGET, "--host", HOST, "--port", str(port),
            "--workers", "1", "--no-access-log", "--log-level", "warning"]


def hypercorn_cmd(port: int, workdir: Path) -> list[str]:
    # Hypercorn answers the h2c preface on a plain socket; no access log unless asked.
    config = workdir / "hypercorn.toml"
    config.write_text(HYPERCORN_CONFIG)
    return [PYTHON, "-m", "hypercorn", TARGET, "--config", str(config),
            "--bind", f"{HOST}:{port}", "--workers", "1", "--worker-class", "uvloop",
            "--log-level", "warning"]


def granian_cmd(port: int, workdir: Path) -> list[str]:
    return [PYTHON, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--http", "2", "--no-access-log", "--log-level", "warning",
            TARGET]


#: server name -> how to start it; tether first, it is what the ratios are about.
SERVERS: Final[dict[str, Command]] = {
    "tether": tether_cmd,
    "hypercorn": hypercorn_cmd,
    "granian": granian_cmd,
}
SUBJECT: Final = "tether"
#: peer -> the issue's target for tether's requests/s over the peer's
TARGETS: Final = {"hypercorn": 2.0, "granian": 0.8}
VERSIONED: Final = ("tether", "hypercorn", "granian", "h2", "uvloop", "grpcio", "connect-python")
FULL: Final = {"requests": 50_000, "warmup_requests": 5_000, "time_limit": 120.0}
QUICK: Final = {"requests": 2_000, "warmup_requests": 0, "time_limit": 60.0}

# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    requests: int
    warmup_requests: int
    time_limit: float
    connections: int
    streams: int
    servers: list[str]
    rounds: int
    quick: bool
    grpc: bool
    json_path: Path | None


@dataclass
class Run:
    server: str
    round: int
    result: H2loadResult | None = None
    cpu_us: float | None = None  # server CPU microseconds per request
    error: str | None = None
    server_output: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    server: str
    rounds: int
    rounds_ok: int
    requests_per_sec: float | None
    mean_ms: float | None
    max_ms: float | None
    cpu_us: float | None
    rps_rounds: list[float]
    errors: list[str]


# -- one run -----------------------------------------------------------------------------


def url_of(port: int) -> str:
    return f"http://{HOST}:{port}/"


def answers_h2(port: int) -> bool:
    """One h2c request answered with a 2xx; False while the server is not up yet.
    (granian with ``--http 2`` answers no HTTP/1.1, so the probe speaks HTTP/2.)"""
    try:
        probe = run_h2load(url_of(port), requests=1, connections=1, streams=1,
                           time_limit=READY_LIMIT)
    except H2loadError:
        return False
    return probe.all_2xx


def bench_one(server: str, rnd: int, opts: Options, workdir: Path) -> Run:
    """Start ``server``, warm it up, measure it, stop it. Never raises BenchError."""
    run = Run(server=server, round=rnd)
    port = harness.free_port()
    log_path = workdir / f"{server}-{rnd}.log"
    try:
        with log_path.open("wb") as log, harness.running(
            SERVERS[server](port, workdir), log, stop_timeout=STOP_TIMEOUT
        ) as proc:
            try:
                harness.wait_ready(
                    proc, lambda: answers_h2(port),
                    exited=lambda status: f"exited with status {status} before answering",
                    timed_out=lambda last: f"no HTTP/2 answer after {READY_TIMEOUT:.0f}s",
                )
            except BenchError as exc:
                raise BenchError(f"failed to start: {exc}") from exc
            family = harness.ProcessFamily(proc.pid)
            if opts.warmup_requests:
                _load(port, opts.warmup_requests, opts)
            cpu_before = server_cpu_seconds(family)
            result = _load(port, opts.requests, opts)
            cpu = server_cpu_seconds(family) - cpu_before
            status = proc.poll()
            if status is not None:
                raise BenchError(f"exited with status {status} during the run")
            problems = result.problems()
            if problems is not None:
                raise BenchError(problems)
            run.result = result
            run.cpu_us = cpu * 1e6 / result.requests if cpu > 0 else None
    except BenchError as exc:
        run.result = None
        run.error = str(exc)
    finally:
        run.server_output = harness.tail(log_path, OUTPUT_TAIL_LINES)
    return run


def _load(port: int, requests: int, opts: Options) -> H2loadResult:
    try:
        return run_h2load(url_of(port), requests=requests, connections=opts.connections,
                          streams=opts.streams, time_limit=opts.time_limit)
    except H2loadError as exc:
        raise BenchError(f"load failed: {exc}") from exc


# -- gRPC ---------------------------------------------------------------------------------


def grpc_lines(quick: bool) -> tuple[list[str], bool]:
    """The lines of ``bench.grpc_unary.run(quick)`` and whether it ran cleanly.

    The module is another script's (unary RPCs/s, tether against grpc.aio); while it
    is absent the HTTP/2 numbers stand alone and a line says so. Any failure inside it
    is shown, never raised: the HTTP/2 results above are already measured."""
    try:
        module = importlib.import_module(GRPC_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != GRPC_MODULE:
            return [f"gRPC: {GRPC_MODULE} could not be imported: {exc}"], False
        return [f"gRPC: skipped ({GRPC_MODULE.replace('.', '/')}.py is not there)"], True
    try:
        lines = [str(line) for line in module.run(quick)]
    except Exception:  # any failure of the other benchmark is reported, not raised
        return ["gRPC: bench.grpc_unary.run failed:",
                *harness.quoted(traceback.format_exc().splitlines())], False
    return lines, True


# -- the whole benchmark -----------------------------------------------------------------


def run_all(opts: Options, runs: list[Run]) -> None:
    """Every (round, server) in turn, appending to ``runs`` as they finish."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-h2-") as tmp:
        for rnd in range(opts.rounds):
            for server in harness.rotated(opts.servers, rnd):
                run = bench_one(server, rnd, opts, Path(tmp))
                runs.append(run)
                print(progress_line(run, opts.rounds), flush=True)


def progress_line(run: Run, rounds: int) -> str:
    head = f"[round {run.round + 1}/{rounds}] {run.server:<10}"
    if run.result is None:
        return f"{head} FAILED: {(run.error or '').splitlines()[0]}"
    r = run.result
    return (f"{head} {r.requests_per_sec:>9,.0f} req/s  mean {r.mean_ms:7.2f} ms  "
            f"max {r.max_ms:8.2f} ms  server CPU {num_text(run.cpu_us, '.1f')} us/req")


def summarize(runs: list[Run], opts: Options) -> list[Summary]:
    summaries = []
    for server in opts.servers:
        mine = [r for r in runs if r.server == server]
        ok = [r for r in mine if r.result is not None]
        rps = [r.result.requests_per_sec for r in ok if r.result is not None]
        summaries.append(Summary(
            server=server, rounds=len(mine), rounds_ok=len(ok),
            requests_per_sec=statistics.median(rps) if rps else None,
            mean_ms=harness.median_known([r.result.mean_ms for r in ok if r.result is not None]),
            max_ms=harness.median_known([r.result.max_ms for r in ok if r.result is not None]),
            cpu_us=harness.median_known([r.cpu_us for r in ok]),
            rps_rounds=rps,
            errors=[r.error for r in mine if r.error is not None],
        ))
    return summaries


def ratio_lines(summaries: list[Summary]) -> list[str]:
    """tether's requests/s over each peer's, against the issue's target, and server CPU
    per request peer/tether: above 1 means tether is better in both columns."""
    by_server = {s.server: s for s in summaries}
    subject = by_server.get(SUBJECT)
    if subject is None:
        return []
    lines = []
    for peer, other in by_server.items():
        if peer == SUBJECT:
            continue
        head = f"  {SUBJECT}/{peer:<10}"
        if subject.requests_per_sec is None or not other.requests_per_sec:
            lines.append(f"{head}n/a (no result for one of them)")
            continue
        ratio = subject.requests_per_sec / other.requests_per_sec
        cpu = ("-" if subject.cpu_us is None or other.cpu_us is None
               else f"{other.cpu_us / subject.cpu_us:5.2f}")
        target = TARGETS.get(peer)
        verdict = ("" if target is None
                   else f"   target >= {target:g}: {'met' if ratio >= target else 'NOT met'}")
        lines.append(f"{head}{ratio:5.2f}   CPU {cpu}{verdict}")
    return lines


def report(summaries: list[Summary], runs: list[Run], opts: Options) -> str:
    """The final table, the ratio lines and anything that went wrong, as text."""
    lines = [
        "",
        f"h2load, h2c prior knowledge, GET / of {TARGET}: {opts.connections} connections x "
        f"{opts.streams} streams, {opts.requests:,} requests measured after "
        f"{opts.warmup_requests:,} discarded, {opts.rounds} round(s)"
        + (", median of rounds" if opts.rounds > 1 else ""),
        "",
        f"  {'server':<10}{'req/s':>10}  {'(min-max)':<16}{'mean ms':>9}{'max ms':>9}"
        f"{'CPU us/req':>12}{'ok':>5}",
    ]
    for s in summaries:
        state = "" if s.rounds_ok == s.rounds else f"  {s.rounds - s.rounds_ok} FAILED"
        lines.append(
            f"  {s.server:<10}{num_text(s.requests_per_sec, ',.0f'):>10}"
            f"  {range_text(s.rps_rounds, ',.0f'):<16}{num_text(s.mean_ms, '.2f'):>9}"
            f"{num_text(s.max_ms, '.2f'):>9}{num_text(s.cpu_us, '.1f'):>12}"
            f"{s.rounds_ok:>3}/{s.rounds}{state}")
    lines += ["", "ratios (above 1: tether is better): req/s tether/peer, then server CPU "
              "per request peer/tether", *ratio_lines(summaries)]
    failed = [r for r in runs if r.error is not None]
    if failed:
        lines += ["", "failures:"]
        for run in failed:
            lines.append(f"  {run.server}, round {run.round + 1}: {run.error}")
            lines += harness.quoted(run.server_output)
    return "\n".join(lines)


def results_json(opts: Options, facts: dict[str, Any], runs: list[Run],
                 summaries: list[Summary], grpc: list[str],
                 argv: Sequence[str]) -> dict[str, Any]:
    return {
        **harness.json_header(opts, facts, argv),
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "grpc": grpc,
    }


# -- command line ------------------------------------------------------------------------


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return seconds


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark tether's HTTP/2 against hypercorn and granian with h2load, "
                    "then unary gRPC against grpc.aio (bench/grpc_unary.py).")
    parser.add_argument("--requests", type=harness.count_type(1, "requests"),
                        default=FULL["requests"], metavar="N",
                        help=f"measured requests per server (default: {FULL['requests']:,})")
    parser.add_argument("--warmup-requests", type=harness.count_type(0, "warmup requests"),
                        default=FULL["warmup_requests"], metavar="N",
                        help="discarded requests before each measured run "
                             f"(default: {FULL['warmup_requests']:,})")
    parser.add_argument("--time-limit", type=_seconds, default=FULL["time_limit"],
                        metavar="SECONDS", help="longest one h2load run may take before it "
                        f"counts as failed (default: {FULL['time_limit']:g})")
    parser.add_argument("--connections", type=harness.count_type(1, "connections"),
                        default=8, metavar="N", help="h2load -c (default: 8)")
    parser.add_argument("--streams", type=harness.count_type(1, "streams"), default=16,
                        metavar="N", help="h2load -m, concurrent streams per connection "
                        "(default: 16)")
    parser.add_argument("--servers", type=harness.names_type(list(SERVERS)),
                        default=list(SERVERS), help=f"comma list (default: {','.join(SERVERS)})")
    parser.add_argument("--rounds", type=harness.count_type(1, "rounds"), default=1,
                        metavar="N", help="rounds, the server order rotated each round; "
                        "medians are reported (default: 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the CI smoke: {QUICK['requests']:,} requests, no warmup "
                             "(and bench.grpc_unary.run(quick=True))")
    parser.add_argument("--no-grpc", action="store_false", dest="grpc",
                        help="skip the gRPC part (bench/grpc_unary.py)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", dest="json_path",
                        help="also write every run and the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
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
    grpc: list[str] = []
    grpc_ok = True

    def everything() -> None:
        nonlocal grpc, grpc_ok
        run_all(opts, runs)
        if opts.grpc:
            grpc, grpc_ok = grpc_lines(opts.quick)

    interrupted = harness.run_interruptibly(everything)
    summaries = summarize(runs, opts)
    text = report(summaries, runs, opts)
    if grpc:
        text += "\n\n" + "\n".join(grpc)
    harness.print_report(facts, text, skewed="the numbers")
    if opts.json_path is not None:
        command = [str(Path(__file__)), *argv]
        harness.save_results(opts.json_path,
                             results_json(opts, facts, runs, summaries, grpc, command))
    if interrupted:
        return 130
    return 1 if any(r.error is not None for r in runs) or not grpc_ok else 0


if __name__ == "__main__":
    sys.exit(main())
