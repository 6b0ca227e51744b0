"""Failed requests during rolling reloads under load: tether next to its peers.

What it measures: each server runs the same tiny ASGI app (``bench.apps:hello``)
with TWO workers on 127.0.0.1. Two load clients from ``bench/loadgen.py`` run at
the same time, ``--concurrency`` connections each: one opens a new connection per
request, the other keeps connections alive (reconnecting only when the server
answers ``Connection: close``). Under that load the server is reloaded
``--reloads`` times: wait ``--interval`` seconds, send the reload signal, wait
until the reload has been carried out (every worker process replaced; for tether
also its ``reload finished`` log line), and again; after the last reload the load
runs one more interval and stops. Every request that did not get a complete
``200`` counts as failed (refused, reset, closed before or during the response,
timed out, other status), by kind. The table gives, per server and client mode,
requests, failed, failures per 10,000 requests, requests/s, the reloads carried
out of those signalled, and the failure kinds. tether's target is 0 failures.

Servers (``P`` is a free port; every command runs from the repository root):

* tether: ``python -m tether serve bench.apps:hello --workers 2 --no-access-log``;
  reload = SIGHUP to the supervisor.
* uvicorn: ``python -m uvicorn bench.apps:hello --workers 2 --no-access-log
  --log-level warning``; SIGHUP makes its multiprocess supervisor replace the
  workers one at a time (``Multiprocess.restart_all``: start a new worker, wait for
  its health check, SIGTERM the old one).
* gunicorn: ``python -m gunicorn -k uvicorn_worker.UvicornWorker -w 2``; SIGHUP to
  the master starts 2 new workers, then gracefully stops the old ones.
* granian: ``python -m granian --interface asgi --workers 2 --no-access-log``; SIGHUP
  is handled without any flag: each worker in turn is respawned, the old one
  stopped ``--respawn-interval`` (default 3.5 s) after the new one was started.
* hypercorn: ``python -m hypercorn --workers 2 --worker-class uvloop``; SIGHUP stops
  all workers, then starts new ones.

Reproduce (from anywhere; 20-50 s per server and round)::

    .venv/bin/python bench/reload.py                         # all servers, 5 reloads 2 s apart
    .venv/bin/python bench/reload.py --servers tether,uvicorn --reloads 3 --interval 1
    .venv/bin/python bench/reload.py --rounds 3 --json reload.json --keep-logs logs/

Every loop is bounded (a request budget per client mode, ``--max-seconds`` per run,
deadlines on readiness, reloads and stops). Every server is started in its own
session and stopped at the end of its run, even on an error or Ctrl-C: SIGTERM,
then SIGKILL of its process group and of every worker process seen (tether's
workers run in sessions of their own). Exit status: 0 when every run completed and
tether failed no request and carried out every reload, 1 when some run could not
be completed, 2 on bad usage, 3 when tether failed requests or missed a reload,
130 when interrupted (the results so far are still printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.harness import HOST, PYTHON, READY_TIMEOUT, BenchError  # noqa: E402
from bench.loadgen import LoadResult, run_load  # noqa: E402

APP: Final = "bench.apps:hello"
WORKERS: Final = 2

STOP_TIMEOUT: Final = 20.0  # seconds a server gets to exit after SIGTERM
POLL: Final = 0.02  # seconds between looks at /proc and at the server log
REQUEST_TIMEOUT: Final = 10.0  # seconds one request may take before it counts as failed
OUTPUT_TAIL_LINES: Final = 15

MODES: Final = ("new-conn", "keep-alive")  # client modes, in table order
SUBJECT: Final = "tether"
VERSIONED: Final = (
    "tether", "uvicorn", "gunicorn", "uvicorn-worker", "granian", "hypercorn", "uvloop",
    "httptools",
)

T = TypeVar("T")

# -- what is benchmarked ----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """How to start one server with WORKERS workers and how to see its reloads."""

    name: str
    argv: Callable[[int], list[str]]  # port -> command line
    reload_signal: signal.Signals = signal.SIGHUP
    reload_log_line: str | None = None  # a line the server logs once per finished reload


def _tether(port: int) -> list[str]:
    return [
        PYTHON, "-m", "tether", "serve", APP, "--workers", str(WORKERS), "--host", HOST,
        "--port", str(port), "--no-access-log",
    ]


def _uvicorn(port: int) -> list[str]:
    return [
        PYTHON, "-m", "uvicorn", APP, "--workers", str(WORKERS), "--host", HOST,
        "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]


def _gunicorn(port: int) -> list[str]:
    # No access log unless --access-logfile is given.
    return [
        PYTHON, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(WORKERS),
        "-b", f"{HOST}:{port}", APP,
    ]


def _granian(port: int) -> list[str]:
    return [
        PYTHON, "-m", "granian", "--interface", "asgi", "--workers", str(WORKERS),
        "--host", HOST, "--port", str(port), "--no-access-log", APP,
    ]


def _hypercorn(port: int) -> list[str]:
    # No access log unless --access-logfile is given; uvloop like every other server.
    return [
        PYTHON, "-m", "hypercorn", APP, "--workers", str(WORKERS), "--worker-class", "uvloop",
        "--bind", f"{HOST}:{port}",
    ]


SERVERS: Final[dict[str, Server]] = {
    s.name: s
    for s in (
        Server("tether", _tether, reload_log_line="reload finished"),
        Server("uvicorn", _uvicorn),
        Server("gunicorn", _gunicorn),
        Server("granian", _granian),
        Server("hypercorn", _hypercorn),
    )
}

# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    servers: list[str]
    reloads: int
    interval: float
    concurrency: int
    budget: int
    max_seconds: float
    reload_timeout: float
    rounds: int
    json_path: Path | None
    keep_logs: Path | None


@dataclass
class ModeResult:
    """What one client mode saw during one run."""

    mode: str
    requests: int
    ok: int
    failed: int
    errors: dict[str, int]
    seconds: float
    rate: float
    budget_exhausted: bool

    @property
    def failures_per_10k(self) -> float:
        return 10_000.0 * self.failed / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, mode: str, result: LoadResult, budget: int) -> ModeResult:
        return cls(
            mode=mode, requests=result.total, ok=result.ok, failed=result.failed,
            errors=dict(result.errors.most_common()), seconds=round(result.elapsed, 3),
            rate=round(result.rate, 1), budget_exhausted=result.total >= budget,
        )


@dataclass
class Run:
    """One server in one round: the load results, or the reason there are none."""

    server: str
    round: int
    modes: list[ModeResult] = field(default_factory=list)
    reloads_sent: int = 0
    reloads_done: int | None = None  # None when it could not be told
    reloads_seen_in_log: int | None = None  # servers with a reload_log_line
    reload_seconds: list[float] = field(default_factory=list)  # signal -> carried out
    exit_status: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    server_output: list[str] = field(default_factory=list)


# -- processes ---------------------------------------------------------------------------


ProcessKey = tuple[int, str]  # (pid, start time in clock ticks): survives pid reuse


def _start_time(pid: int) -> str | None:
    try:
        return harness.proc_stat(pid)[19]
    except OSError:
        return None


def workers_of(pid: int) -> set[ProcessKey]:
    """The worker processes of ``pid``: its children, minus multiprocessing's helper."""
    found: set[ProcessKey] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" in cmdline:
                continue
            started = _start_time(child)
            if started is not None:
                found.add((child, started))
    return found


def alive(key: ProcessKey) -> bool:
    return _start_time(key[0]) == key[1]


class ServerProcess:
    """A started server: its Popen, log file and every worker process seen so far."""

    def __init__(self, server: Server, port: int, log_path: Path) -> None:
        self.server = server
        self.port = port
        self.log_path = log_path
        self.seen_workers: set[ProcessKey] = set()
        self.exit_status: int | None = None
        with log_path.open("wb") as log:
            self.proc = harness.start_process(server.argv(port), log, name=server.name)

    def workers(self) -> set[ProcessKey]:
        current = workers_of(self.proc.pid)
        self.seen_workers |= current
        return current

    def log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def check_alive(self) -> None:
        status = self.proc.poll()
        if status is not None:
            raise BenchError(f"exited with status {status} during the run")

    def stop(self) -> None:
        """SIGTERM and wait (bounded); then SIGKILL the group and any worker left."""
        try:
            if self.proc.poll() is None:
                self.workers()  # remember the current workers before they go
        finally:
            try:
                # SIGKILL of its group reaches workers in the same group (all but
                # tether's, which get their own session): those are killed below.
                self.exit_status = harness.stop_process(self.proc, STOP_TIMEOUT)
            finally:
                self._kill_seen_workers()

    def _kill_seen_workers(self) -> None:
        for key in self.seen_workers:
            if alive(key):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(key[0], signal.SIGKILL)


@contextlib.contextmanager
def running(server: Server, port: int, log_path: Path) -> Iterator[ServerProcess]:
    """Start ``server``; always stop it (and its workers) when the block exits."""
    process = ServerProcess(server, port, log_path)
    try:
        yield process
    finally:
        process.stop()


def answers(port: int) -> bool:
    """One GET /: True on a complete 200 hello; raises OSError/HTTPException while not
    answering yet, BenchError on a wrong answer."""
    reply = harness.http_get(port)
    if reply.status != 200 or reply.body != b"Hello, world!":
        raise BenchError(f"GET / answered {reply.status} {reply.body[:40]!r}, expected 200 hello")
    return True


def wait_until_ready(process: ServerProcess) -> None:
    """Poll until GET / answers and all WORKERS workers exist, or fail at the deadline."""
    harness.wait_ready(
        process.proc,
        lambda: answers(process.port) and len(process.workers()) >= WORKERS,
        exited=lambda status: f"exited with status {status} before it was ready",
        timed_out=lambda _: f"not ready after {READY_TIMEOUT:.0f}s "
                            f"({len(process.workers())} worker process(es))",
    )


# -- the scenario ------------------------------------------------------------------------


async def wait_reloaded(
    process: ServerProcess, before: set[ProcessKey], number: int, timeout: float
) -> bool:
    """Wait until reload ``number`` is carried out: none of the workers from ``before``
    is left, WORKERS new ones run, and (if the server logs it) the log says so."""
    needle = process.server.reload_log_line
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        current = process.workers()
        replaced = not (current & before) and len(current) >= WORKERS
        logged = needle is None or process.log_count(needle) >= number
        if replaced and logged:
            return True
        await asyncio.sleep(POLL)
    return False


async def sleep_while_loading(seconds: float, load: list[asyncio.Task[LoadResult]]) -> bool:
    """Sleep ``seconds``; False if the load ended (budget or time bound) before that."""
    _, pending = await asyncio.wait(load, timeout=seconds)
    return len(pending) == len(load)


async def scenario(process: ServerProcess, opts: Options, run: Run) -> None:
    """Load in both modes, ``opts.reloads`` reloads ``opts.interval`` apart, then stop."""
    stop = asyncio.Event()
    started = time.monotonic()
    load = [
        asyncio.create_task(run_load(
            HOST, process.port, concurrency=opts.concurrency, keep_alive=mode == "keep-alive",
            stop=stop, max_requests=opts.budget, max_seconds=opts.max_seconds,
            timeout=REQUEST_TIMEOUT,
        ))
        for mode in MODES
    ]
    done_count = 0
    try:
        for number in range(1, opts.reloads + 1):
            if not await sleep_while_loading(opts.interval, load):
                run.notes.append(f"load ended (budget or time bound) before reload {number}")
                break
            process.check_alive()
            before = process.workers()
            sent_at = time.monotonic()
            os.kill(process.proc.pid, process.server.reload_signal)
            run.reloads_sent += 1
            remaining = max(0.0, opts.max_seconds - (sent_at - started))
            if await wait_reloaded(process, before, number, min(opts.reload_timeout, remaining)):
                done_count += 1
                run.reload_seconds.append(round(time.monotonic() - sent_at, 2))
            else:
                run.notes.append(
                    f"reload {number} not carried out within {opts.reload_timeout:.0f}s"
                )
        else:
            if not await sleep_while_loading(opts.interval, load):
                run.notes.append("load ended (budget or time bound) before the last interval")
        process.check_alive()
    finally:
        stop.set()
        results = await asyncio.gather(*load, return_exceptions=True)
    run.reloads_done = done_count
    if process.server.reload_log_line is not None:
        run.reloads_seen_in_log = process.log_count(process.server.reload_log_line)
    for mode, result in zip(MODES, results, strict=True):
        if isinstance(result, BaseException):
            raise BenchError(f"{mode} load client failed: {result!r}") from result
        run.modes.append(ModeResult.of(mode, result, opts.budget))


async def _interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; SIGINT/SIGTERM cancel it (so its cleanup runs) and then raise
    KeyboardInterrupt here, rather than in whatever callback the loop was running."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    signals = [s for s in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.getsignal(s) for s in signals}
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, interrupt)
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when installed (the servers use it too), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_interruptible(coro))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_interruptible(coro))


def bench_one(server: Server, rnd: int, opts: Options, logdir: Path) -> Run:
    """Start ``server``, run the scenario, stop it. Never raises BenchError."""
    run = Run(server=server.name, round=rnd)
    log_path = logdir / f"{server.name}-round{rnd + 1}.log"
    process: ServerProcess | None = None
    try:
        with running(server, harness.free_port(), log_path) as process:
            try:
                wait_until_ready(process)
            except BenchError as exc:
                raise BenchError(f"failed to start: {exc}") from exc
            run_async(scenario(process, opts, run))
    except BenchError as exc:
        run.error = str(exc)
    finally:
        if process is not None:
            run.exit_status = process.exit_status
        run.server_output = harness.tail(log_path, OUTPUT_TAIL_LINES)
    if run.reloads_seen_in_log is not None and run.reloads_seen_in_log != run.reloads_sent:
        run.notes.append(
            f"log shows {run.reloads_seen_in_log} finished reload(s) for "
            f"{run.reloads_sent} signal(s)"
        )
    return run


# -- the whole benchmark -----------------------------------------------------------------


def run_all(opts: Options, runs: list[Run], logdir: Path) -> None:
    for rnd in range(opts.rounds):
        for name in harness.rotated(opts.servers, rnd):
            run = bench_one(SERVERS[name], rnd, opts, logdir)
            runs.append(run)
            for line in progress_lines(run, opts.rounds):
                print(line, flush=True)


def _reloads_text(run: Run) -> str:
    done = "?" if run.reloads_done is None else str(run.reloads_done)
    return f"{done}/{run.reloads_sent}"


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in errors.items()) or "-"


def progress_lines(run: Run, rounds: int) -> list[str]:
    head = f"[round {run.round + 1}/{rounds}] {run.server:<9}"
    if run.error is not None:
        return [f"{head} FAILED: {run.error.splitlines()[0]}"]
    lines = []
    for m in run.modes:
        lines.append(
            f"{head} {m.mode:<10} {m.requests:>8,} req  {m.failed:>5} failed "
            f"({m.failures_per_10k:7.2f}/10k)  {m.rate:>7,.0f} req/s  "
            f"reloads {_reloads_text(run)}  {_errors_text(m.errors)}"
        )
    lines += [f"{head} note: {note}" for note in run.notes]
    return lines


@dataclass
class Row:
    """All rounds of one server in one client mode."""

    server: str
    mode: str
    runs: int
    runs_ok: int
    requests: int
    failed: int
    failures_per_10k: float
    failures_per_10k_rounds: list[float]
    rate_median: float | None
    rate_rounds: list[float]
    reloads_done: int
    reloads_sent: int
    errors: dict[str, int]


def summarize(runs: list[Run], opts: Options) -> list[Row]:
    rows = []
    for name in opts.servers:
        mine = [r for r in runs if r.server == name]
        ok = [r for r in mine if r.error is None]
        for mode in MODES:
            results = [m for r in ok for m in r.modes if m.mode == mode]
            requests = sum(m.requests for m in results)
            failed = sum(m.failed for m in results)
            errors: Counter[str] = Counter()
            for m in results:
                errors.update(m.errors)
            rates = [m.rate for m in results]
            rows.append(Row(
                server=name, mode=mode, runs=len(mine), runs_ok=len(ok), requests=requests,
                failed=failed,
                failures_per_10k=round(10_000.0 * failed / requests, 2) if requests else 0.0,
                failures_per_10k_rounds=[round(m.failures_per_10k, 2) for m in results],
                rate_median=statistics.median(rates) if rates else None, rate_rounds=rates,
                reloads_done=sum(r.reloads_done or 0 for r in ok),
                reloads_sent=sum(r.reloads_sent for r in ok),
                errors=dict(errors.most_common()),
            ))
    return rows


def report(rows: list[Row], runs: list[Run], opts: Options) -> str:
    """The final table and anything that went wrong, as text."""
    lines = [
        "",
        f"{WORKERS} workers, {opts.reloads} reload(s) {opts.interval:g}s apart, "
        f"{opts.concurrency} client connections per mode (both modes at once), "
        f"{opts.rounds} round(s)" + (", totals over rounds" if opts.rounds > 1 else ""),
        "",
        f"{'server':<10}{'mode':<11}{'requests':>10}{'failed':>8}{'per 10k':>9}"
        f"{'req/s':>8}{'reloads':>9}  errors",
    ]
    for row in rows:
        if row.runs_ok == 0:
            lines.append(f"{row.server:<10}{row.mode:<11}{'FAILED' if row.runs else 'not run'}")
            continue
        rate = "-" if row.rate_median is None else f"{row.rate_median:,.0f}"
        errors = _errors_text(row.errors)
        if row.runs_ok < row.runs:
            errors = f"{row.runs - row.runs_ok} run(s) FAILED; {errors}"
        lines.append(
            f"{row.server:<10}{row.mode:<11}{row.requests:>10,}{row.failed:>8,}"
            f"{row.failures_per_10k:>9.2f}{rate:>8}{row.reloads_done:>5}/{row.reloads_sent:<3}"
            f"  {errors}"
        )
    if opts.rounds > 1:
        lines += ["", "per round: failures per 10k | req/s"]
        for row in rows:
            per = " ".join(f"{v:.2f}" for v in row.failures_per_10k_rounds)
            rates = " ".join(f"{v:,.0f}" for v in row.rate_rounds)
            lines.append(f"  {row.server:<10}{row.mode:<11}{per}  |  {rates}")
    noted = [r for r in runs if r.notes]
    if noted:
        lines += ["", "notes:"]
        for run in noted:
            lines += [f"  {run.server}, round {run.round + 1}: {note}" for note in run.notes]
    failed = [r for r in runs if r.error is not None]
    if failed:
        lines += ["", "failed runs:"]
        for run in failed:
            lines.append(f"  {run.server}, round {run.round + 1}: {run.error}")
            lines += harness.quoted(run.server_output)
    subject = [r for r in runs if r.server == SUBJECT and r.error is None]
    if subject:
        clean = subject_clean(runs)
        lines += ["", f"target: {SUBJECT} 0 failed requests and every reload carried out "
                      f"in every run: {'MET' if clean else 'NOT MET'}"]
    return "\n".join(lines)


def subject_clean(runs: list[Run]) -> bool:
    """tether failed no request and carried out every reload it was sent, in every run."""
    return all(
        r.error is None
        and all(m.failed == 0 for m in r.modes)
        and r.reloads_done == r.reloads_sent
        and r.reloads_seen_in_log == r.reloads_sent
        for r in runs
        if r.server == SUBJECT
    )


# -- environment -------------------------------------------------------------------------


def machine_facts_with_sysctl() -> dict[str, Any]:
    facts = harness.machine_facts(VERSIONED)
    sysctl: dict[str, str] = {}
    for key in ("net/ipv4/tcp_migrate_req", "net/core/somaxconn"):
        with contextlib.suppress(OSError):
            sysctl[key.replace("/", ".")] = Path(f"/proc/sys/{key}").read_text().strip()
    facts["sysctl"] = sysctl
    return facts


def results_json(opts: Options, facts: dict[str, Any], runs: list[Run],
                 rows: list[Row], argv: Sequence[str]) -> dict[str, Any]:
    return {
        **harness.json_header(opts, facts, argv),
        "commands": {name: SERVERS[name].argv(0) for name in opts.servers},
        "runs": [
            {**asdict(r), "modes": [{**asdict(m), "failures_per_10k": m.failures_per_10k}
                                    for m in r.modes]}
            for r in runs
        ],
        "summary": [asdict(row) for row in rows],
        "subject_clean": subject_clean(runs),
    }


# -- command line ------------------------------------------------------------------------


_positive_int = harness.count_type(1, "_positive_int")
_non_negative_int = harness.count_type(0, "_non_negative_int")


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Failed requests per 10,000 during rolling reloads under load: tether, "
                    "uvicorn, gunicorn (UvicornWorker), granian and hypercorn, 2 workers each.",
    )
    parser.add_argument("--servers", type=harness.names_type(list(SERVERS)), default=list(SERVERS),
                        help=f"comma list (default: {','.join(SERVERS)})")
    parser.add_argument("--reloads", type=_non_negative_int, default=5, metavar="N",
                        help="reload signals per run (default: 5)")
    parser.add_argument("--interval", type=_positive_float, default=2.0, metavar="SECONDS",
                        help="load before each reload, and after the last (default: 2)")
    parser.add_argument("--concurrency", type=_positive_int, default=8, metavar="N",
                        help="client connections per mode; both modes run at once (default: 8)")
    parser.add_argument("--budget", type=_positive_int, default=1_000_000, metavar="N",
                        help="at most N requests per mode and run (default: 1000000)")
    parser.add_argument("--max-seconds", type=_positive_float, default=180.0, metavar="S",
                        help="time bound of one run's load (default: 180)")
    parser.add_argument("--reload-timeout", type=_positive_float, default=60.0, metavar="S",
                        help="how long one reload may take to be carried out (default: 60)")
    parser.add_argument("--rounds", type=_positive_int, default=1, metavar="N",
                        help="rounds, the server order rotated each round (default: 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", dest="json_path",
                        help="also write settings, every run and the summary as JSON")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="keep each server's output in DIR (default: a temporary dir)")
    return Options(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    harness.sigterm_as_interrupt()
    facts = machine_facts_with_sysctl()
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
    print(f"{facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}", flush=True)
    print(versions, flush=True)
    print(f"sysctl: {facts['sysctl']}", flush=True)
    print(f"load average before: {harness.record_loadavg(facts, 'before')}", flush=True)
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        if opts.keep_logs is not None:
            opts.keep_logs.mkdir(parents=True, exist_ok=True)
            logdir = opts.keep_logs
        else:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reload-")))
        interrupted = harness.run_interruptibly(lambda: run_all(opts, runs, logdir))
    rows = summarize(runs, opts)
    harness.print_report(facts, report(rows, runs, opts), skewed="req/s")
    if opts.json_path is not None:
        harness.save_results(
            opts.json_path, results_json(opts, facts, runs, rows, [str(Path(__file__)), *argv])
        )
    if interrupted:
        return 130
    if any(r.error is not None for r in runs):
        return 1
    return 0 if subject_clean(runs) else 3


if __name__ == "__main__":
    sys.exit(main())
