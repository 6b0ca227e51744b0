"""Throughput and tail latency of tether next to uvicorn, hypercorn and granian.

One command: each server is started with ONE worker on 127.0.0.1 (a free port each)
serving the same plain ASGI app from ``bench/apps.py``, driven by ``wrk --latency``
for a fixed time, then stopped. The table at the end gives requests/s, p99 latency
and the ratios tether/<peer>, per app. Run from anywhere::

    .venv/bin/python bench/server.py                      # all servers, both apps, 10 s
    .venv/bin/python bench/server.py --rounds 3           # median of 3 alternating rounds
    .venv/bin/python bench/server.py --servers tether,uvicorn --apps hello --duration 5

Every process started here is stopped (SIGTERM, then SIGKILL of its whole process
group) whatever happens, including Ctrl-C. A server that fails to start or dies
during its run is reported as failed; the others still run. Exit status: 0 when
every run completed, 1 when some run failed, 2 on bad usage or missing ``wrk``,
130 when interrupted (the results so far are still printed).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
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
from bench.harness import (  # noqa: E402
    HOST,
    PYTHON,
    READY_TIMEOUT,
    BenchError,
    errors_text,
    num_text,
    range_text,
)

STOP_TIMEOUT: Final = 10.0  # seconds a server gets to exit after SIGTERM
WRK_GRACE: Final = 30.0  # seconds wrk may run past its -d before it is killed
OUTPUT_TAIL_LINES: Final = 20

# -- what is benchmarked ----------------------------------------------------------------

#: app name -> ASGI target, importable from the repository root
APPS: Final = {
    "hello": "bench.apps:hello",
    "json": "bench.apps:json",
    "json_bytes": "bench.apps:json_bytes",
}

Command = Callable[[str, int], list[str]]  # (ASGI target, port) -> argv


def tether_cmd(target: str, port: int) -> list[str]:
    return [
        PYTHON, "-m", "tether", "serve", target, "--host", HOST, "--port", str(port),
        "--no-access-log", "--log-level", "warning",
    ]


def uvicorn_cmd(target: str, port: int) -> list[str]:
    return [
        PYTHON, "-m", "uvicorn", target, "--host", HOST, "--port", str(port),
        "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
    ]


def hypercorn_cmd(target: str, port: int) -> list[str]:
    # Hypercorn writes no access log unless --access-logfile is given.
    return [
        PYTHON, "-m", "hypercorn", target, "--bind", f"{HOST}:{port}", "--workers", "1",
        "--worker-class", "uvloop", "--log-level", "warning",
    ]


def granian_cmd(target: str, port: int) -> list[str]:
    return [
        PYTHON, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning", target,
    ]


#: server name -> how to start it; tether first, it is what the ratios are about
SERVERS: Final[dict[str, Command]] = {
    "tether": tether_cmd,
    "uvicorn": uvicorn_cmd,
    "hypercorn": hypercorn_cmd,
    "granian": granian_cmd,
}
SUBJECT: Final = "tether"
VERSIONED: Final = ("tether", "uvicorn", "hypercorn", "granian", "uvloop", "httptools")

# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    duration: int
    connections: int
    threads: int
    warmup: int
    servers: list[str]
    apps: list[str]
    rounds: int
    json_path: Path | None


@dataclass(frozen=True)
class WrkResult:
    """What one ``wrk --latency`` run printed."""

    requests_per_sec: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def socket_error_total(self) -> int:
        return sum(self.socket_errors.values())


@dataclass
class Run:
    """One server on one app in one round: a result, or the reason there is none."""

    server: str
    app: str
    round: int
    result: WrkResult | None = None
    error: str | None = None
    server_output: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """All rounds of one server on one app, reduced to medians."""

    server: str
    app: str
    rounds: int
    rounds_ok: int
    requests_per_sec: float | None
    p99_ms: float | None
    rps_rounds: list[float]  # per completed round, in round order
    p99_rounds: list[float]
    non_2xx: int
    socket_errors: int
    errors: list[str]


# -- wrk ---------------------------------------------------------------------------------

_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_TO_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output. Raises BenchError when a needed line is missing."""
    rps = _RPS.search(output)
    p99 = _P99.search(output)
    total = _TOTAL.search(output)
    if rps is None or p99 is None or total is None:
        raise BenchError(f"could not parse wrk output:\n{output.strip()}")
    non_2xx = _NON_2XX.search(output)
    sock = _SOCKET.search(output)
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if sock is not None:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p99_ms=float(p99.group(1)) * _TO_MS[p99.group(2)],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(port: int, seconds: int, connections: int, threads: int) -> WrkResult:
    """Drive ``http://HOST:port/`` for ``seconds``; wrk stops itself (-d)."""
    argv = [
        "wrk", "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
        f"http://{HOST}:{port}/",
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + WRK_GRACE, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + WRK_GRACE:.0f}s") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise BenchError(f"wrk exited with status {done.returncode}: {detail}")
    return parse_wrk(done.stdout)


# -- servers -----------------------------------------------------------------------------


def check_response(reply: harness.Reply, app: str) -> None:
    """Raise BenchError when the answer to GET / is wrong (then waiting longer would
    not help)."""
    if reply.status != 200:
        raise BenchError(f"GET / answered {reply.status}, expected 200")
    length = reply.header("content-length")
    if length is None or int(length) != len(reply.body):
        raise BenchError(f"GET / content-length {length!r} but {len(reply.body)} body bytes")
    if app == "json":
        try:
            json.loads(reply.body)
        except ValueError as exc:
            raise BenchError(f"GET / on the json app returned invalid JSON: {exc}") from exc


def answers(port: int, app: str) -> bool:
    """One GET /: raises OSError/HTTPException while not listening yet, BenchError
    when the answer is wrong."""
    check_response(harness.http_get(port), app)
    return True


def bench_one(server: str, app: str, rnd: int, opts: Options, workdir: Path) -> Run:
    """Start ``server`` on ``app``, warm up, measure, stop. Never raises BenchError."""
    run = Run(server=server, app=app, round=rnd)
    port = harness.free_port()
    log_path = workdir / f"{server}-{app}-{rnd}.log"
    try:
        with log_path.open("wb") as log, harness.running(
            SERVERS[server](APPS[app], port), log, stop_timeout=STOP_TIMEOUT
        ) as proc:
            try:
                harness.wait_ready(
                    proc, lambda: answers(port, app),
                    exited=lambda status: f"exited with status {status} before answering a "
                                          "request",
                    timed_out=lambda last: f"not answering after {READY_TIMEOUT:.0f}s ({last})",
                )
            except BenchError as exc:
                raise BenchError(f"failed to start: {exc}") from exc
            if opts.warmup > 0:
                run_wrk(port, opts.warmup, opts.connections, opts.threads)
            result = run_wrk(port, opts.duration, opts.connections, opts.threads)
            status = proc.poll()
            if status is not None:
                raise BenchError(f"exited with status {status} during the run")
            run.result = result
    except BenchError as exc:
        run.error = str(exc)
    finally:
        run.server_output = harness.tail(log_path, OUTPUT_TAIL_LINES)
    return run


# -- the whole benchmark -----------------------------------------------------------------


def run_all(opts: Options, runs: list[Run]) -> None:
    """Run every (round, app, server) in turn, appending to ``runs`` as they finish."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        for rnd in range(opts.rounds):
            for app in opts.apps:
                for server in harness.rotated(opts.servers, rnd):
                    run = bench_one(server, app, rnd, opts, Path(tmp))
                    runs.append(run)
                    print(progress_line(run, opts.rounds), flush=True)


def progress_line(run: Run, rounds: int) -> str:
    head = f"[round {run.round + 1}/{rounds}] {run.app:<10} {run.server:<9}"
    if run.result is None:
        return f"{head} FAILED: {(run.error or '').splitlines()[0]}"
    r = run.result
    return (
        f"{head} {r.requests_per_sec:>10,.0f} req/s  p99 {r.p99_ms:8.2f} ms"
        f"{errors_text(r.non_2xx, r.socket_error_total, prefix='  ')}"
    )


def summarize(runs: list[Run], opts: Options) -> list[Summary]:
    summaries = []
    for app in opts.apps:
        for server in opts.servers:
            mine = [r for r in runs if r.app == app and r.server == server]
            ok = [r.result for r in mine if r.result is not None]
            rps = [r.requests_per_sec for r in ok]
            p99 = [r.p99_ms for r in ok]
            summaries.append(
                Summary(
                    server=server,
                    app=app,
                    rounds=len(mine),
                    rounds_ok=len(ok),
                    requests_per_sec=statistics.median(rps) if rps else None,
                    p99_ms=statistics.median(p99) if p99 else None,
                    rps_rounds=rps,
                    p99_rounds=p99,
                    non_2xx=sum(r.non_2xx for r in ok),
                    socket_errors=sum(r.socket_error_total for r in ok),
                    errors=[r.error for r in mine if r.error is not None],
                )
            )
    return summaries


def report(summaries: list[Summary], runs: list[Run], opts: Options) -> str:
    """The final table, the ratio lines and anything that went wrong, as text."""
    lines = [
        "",
        f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s --latency, "
        f"warmup {opts.warmup}s, {opts.rounds} round(s)"
        + (", median of rounds" if opts.rounds > 1 else ""),
        "",
        f"{'app':<11}{'server':<11}{'req/s':>8}  {'(min-max)':<15}"
        f"{'p99 ms':>8}  {'(min-max)':<15}{'ok':>3}  errors",
    ]
    for s in summaries:
        errors = errors_text(s.non_2xx, s.socket_errors) or "-"
        if s.rounds == 0:
            errors = "not run"
        elif s.rounds_ok < s.rounds:
            errors = f"{s.rounds - s.rounds_ok} run(s) FAILED" + (
                f"; {errors}" if errors != "-" else ""
            )
        lines.append(
            f"{s.app:<11}{s.server:<11}{num_text(s.requests_per_sec, ',.0f'):>8}  "
            f"{range_text(s.rps_rounds, ',.0f'):<15}{num_text(s.p99_ms, '.2f'):>8}  "
            f"{range_text(s.p99_rounds, '.2f'):<15}{s.rounds_ok:>1}/{s.rounds:<1}  {errors}"
        )
    lines += ["", "ratios (req/s: above 1 means tether is faster; p99: below 1 means tether"
              " has the lower tail latency)"]
    by_key = {(s.app, s.server): s for s in summaries}
    for app in opts.apps:
        subject = by_key.get((app, SUBJECT))
        for peer in opts.servers:
            if peer == SUBJECT or subject is None:
                continue
            other = by_key[(app, peer)]
            label = f"{app:<11}{SUBJECT}/{peer:<11}"
            if (
                subject.requests_per_sec is None
                or subject.p99_ms is None
                or other.requests_per_sec is None
                or other.p99_ms is None
            ):
                lines.append(f"{label}n/a (no result for one of them)")
                continue
            lines.append(
                f"{label}req/s {subject.requests_per_sec / other.requests_per_sec:5.2f}"
                f"   p99 {subject.p99_ms / other.p99_ms:5.2f}"
            )
    failed = [r for r in runs if r.error is not None]
    if failed:
        lines += ["", "failures:"]
        for run in failed:
            lines.append(f"  {run.server} on {run.app}, round {run.round + 1}: {run.error}")
            lines += harness.quoted(run.server_output)
    noisy = [r for r in runs if r.error is None and r.server_output]
    if noisy:
        lines += ["", "server output (log level warning) during successful runs:"]
        for run in noisy:
            lines.append(f"  {run.server} on {run.app}, round {run.round + 1}:")
            lines += harness.quoted(run.server_output)
    return "\n".join(lines)


# -- environment -------------------------------------------------------------------------


def wrk_version() -> str:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (wrk.stdout.splitlines() or ["?"])[0].split(" Copyright")[0]


def results_json(opts: Options, facts: dict[str, Any], runs: list[Run],
                 summaries: list[Summary], argv: Sequence[str]) -> dict[str, Any]:
    return {
        **harness.json_header(opts, facts, argv),
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
    }


# -- command line ------------------------------------------------------------------------


_positive = harness.count_type(1, "_positive")
_non_negative = harness.count_type(0, "_non_negative")


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark tether against uvicorn, hypercorn and granian with wrk.",
    )
    parser.add_argument("--duration", type=_positive, default=10, metavar="SECONDS",
                        help="measured wrk run per server and app (default: 10)")
    parser.add_argument("--connections", type=_positive, default=64, metavar="N",
                        help="wrk connections (default: 64)")
    parser.add_argument("--threads", type=_positive, default=2, metavar="N",
                        help="wrk threads (default: 2)")
    parser.add_argument("--warmup", type=_non_negative, default=2, metavar="SECONDS",
                        help="discarded wrk run before each measurement; 0 skips (default: 2)")
    parser.add_argument("--servers", type=harness.names_type(list(SERVERS)), default=list(SERVERS),
                        help=f"comma list (default: {','.join(SERVERS)})")
    parser.add_argument("--apps", type=harness.names_type(list(APPS)), default=list(APPS),
                        help=f"comma list (default: {','.join(APPS)})")
    parser.add_argument("--rounds", type=_positive, default=1, metavar="N",
                        help="rounds, the server order rotated each round; medians are "
                             "reported (default: 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", dest="json_path",
                        help="also write every run and the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk needs a connection each)")
    return Options(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found on PATH (install it: scripts/system-deps.sh)",
              file=sys.stderr)
        return 2
    harness.sigterm_as_interrupt()
    facts = harness.machine_facts(VERSIONED)
    facts["versions"]["wrk"] = wrk_version()
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if k != "wrk")
    print(f"{facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}", flush=True)
    print(f"{versions}; {facts['versions']['wrk']}", flush=True)
    print(f"load average before: {harness.record_loadavg(facts, 'before')}", flush=True)
    runs: list[Run] = []
    interrupted = harness.run_interruptibly(lambda: run_all(opts, runs))
    summaries = summarize(runs, opts)
    harness.print_report(facts, report(summaries, runs, opts), skewed="the numbers")
    if opts.json_path is not None:
        harness.save_results(
            opts.json_path, results_json(opts, facts, runs, summaries, [str(Path(__file__)), *argv])
        )
    if interrupted:
        return 130
    return 1 if any(r.error is not None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
