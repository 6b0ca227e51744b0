"""Reverse proxy throughput, tail latency and upstream connection reuse: ``tether
proxy`` next to nginx.

Both proxies run ONE worker (``--workers`` changes it) on 127.0.0.1 in front of the same upstream, a
``tether serve`` of ``bench.proxy_upstream:app`` (``bench.apps:hello`` that also
counts the connections it is reached on), and keep connections to it alive. Each
is driven by ``wrk --latency -t2 -c64`` for a fixed time. Printed per proxy:
requests/s, p99 latency, the CPU time the proxy's processes used per request, the
upstream connections opened during the measured run and per 1,000 requests, and
the ratios tether/nginx. Run from anywhere::

    .venv/bin/python bench/proxy.py                        # 10 s per proxy
    .venv/bin/python bench/proxy.py --repeat 3             # median of 3 alternating runs
    .venv/bin/python bench/proxy.py --quick                # 2 s, 1 s warm-up (smoke test)

The proxies (``U`` is the upstream's port, ``P`` the proxy's, ``A`` tether's admin
port; each a free port picked per run):

* tether: ``python -m tether proxy --listen 127.0.0.1:P --route /=127.0.0.1:U
  --workers N --no-access-log --log-level warning --admin-port A`` (``N`` is
  ``--workers``, 1 by default).
* nginx: ``nginx -c <tmp>/nginx.conf -p <tmp> -e <tmp>/error.log`` with the
  configuration of :func:`nginx_conf`: ``worker_processes N``, ``access_log off``,
  an ``upstream`` block with ``keepalive 64``, ``proxy_http_version 1.1`` and an
  empty ``Connection`` header (so upstream connections are kept alive), and the
  request headers tether's proxy adds (X-Forwarded-For/-Proto/-Host, Forwarded,
  Via, the client's Host) so the upstream gets the same requests from both. All
  other settings are nginx's defaults (among them ``keepalive_requests 1000``: an
  upstream, or client, connection is closed after 1,000 requests).

Each run starts a fresh upstream and a fresh proxy, checks that ``GET /`` through
the proxy answers the hello body, runs a discarded warm-up, reads the upstream's
connection count (``GET /_conns`` on the upstream itself), runs the measured wrk,
reads the count again, and stops both. The difference is the connections the
proxy opened to the upstream during the measured run. For tether the proxy's own
count (``tether_client_connections_opened_total`` on its admin ``/metrics``) is
read at the same two points as a cross-check. The proxy's CPU time is the user +
system time (``/proc/<pid>/stat``) of the proxy process and its children (tether's
supervisor and worker; nginx's master and worker) over the measured run, divided
by the requests wrk completed: on a 2-core machine shared by wrk, the upstream and
the proxy, it is the proxy's own cost, which requests/s alone does not show once the
cores are saturated. With ``--repeat N`` the two proxies alternate N times (the
order swapped every repeat) and the medians are reported.

Every process started here is stopped (SIGTERM, then SIGKILL of its process
group) whatever happens, including Ctrl-C; every wait is bounded. Exit status: 0
when every run completed, 1 when some run failed, 2 on bad usage or a missing
``wrk`` or nginx, 130 when interrupted (the results so far are still printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.apps import HELLO_BODY  # noqa: E402
from bench.harness import (  # noqa: E402
    HOST,
    PYTHON,
    READY_TIMEOUT,
    BenchError,
    errors_text,
    num_text,
    range_text,
)
from bench.proxy_upstream import COUNT_PATH  # noqa: E402
from bench.server import WrkResult, run_wrk, wrk_version  # noqa: E402

UPSTREAM_APP: Final = "bench.proxy_upstream:app"
PROXIES: Final = ("tether", "nginx")
SUBJECT: Final = "tether"
REFERENCE: Final = "nginx"
VERSIONED: Final = ("tether", "uvloop", "httptools")
NGINX_DEFAULT: Final = "/usr/sbin/nginx"

STOP_TIMEOUT: Final = 10.0  # seconds a process gets to exit after SIGTERM
METRICS_SYNC_TIMEOUT: Final = 5.0  # seconds for the proxy's admin /metrics to catch up
OUTPUT_TAIL_LINES: Final = 20
QUICK_SECONDS: Final = 2
QUICK_WARMUP: Final = 1

# -- options and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    seconds: int
    warmup: int
    repeat: int
    connections: int
    threads: int
    nginx: str
    json_path: Path | None
    # Worker processes of each proxy (tether --workers, nginx worker_processes): the
    # issue's comparison is 1 each; 2 shows what a second core buys.
    workers: int = 1


@dataclass
class Run:
    """One proxy in one repeat: a result, or the reason there is none."""

    proxy: str
    repeat: int
    result: WrkResult | None = None
    #: connections the upstream saw opened during the measured run
    upstream_connections: int | None = None
    #: requests the upstream answered during the measured run (health probes included)
    upstream_requests: int | None = None
    #: tether only: the proxy's own count of connections opened during the measured run
    proxy_count: int | None = None
    #: tether only: why proxy_count could not be read (the run itself still counts)
    cross_check_error: str | None = None
    #: CPU seconds (user + system) the proxy's processes used during the measured run
    proxy_cpu_seconds: float | None = None
    error: str | None = None
    output: list[str] = field(default_factory=list)

    @property
    def per_1k(self) -> float | None:
        """Upstream connections opened per 1,000 requests served by the proxy."""
        if self.result is None or self.upstream_connections is None:
            return None
        return 1000.0 * self.upstream_connections / max(1, self.result.requests)

    @property
    def cpu_us(self) -> float | None:
        """The proxy's CPU time per request, in microseconds."""
        if self.result is None or self.proxy_cpu_seconds is None:
            return None
        return 1e6 * self.proxy_cpu_seconds / max(1, self.result.requests)


@dataclass
class Summary:
    """Every repeat of one proxy, reduced to medians."""

    proxy: str
    runs: int
    runs_ok: int
    requests_per_sec: float | None
    p99_ms: float | None
    cpu_us: float | None
    upstream_connections: float | None
    per_1k: float | None
    rps_runs: list[float]  # per completed run, in order
    p99_runs: list[float]
    cpu_us_runs: list[float]
    per_1k_runs: list[float]
    non_2xx: int
    socket_errors: int


# -- the upstream ----------------------------------------------------------------------


def upstream_cmd(port: int) -> list[str]:
    return [
        PYTHON, "-m", "tether", "serve", UPSTREAM_APP, "--host", HOST, "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
        # it counts connections by scope["client"]: the peer itself, not the client a
        # proxy names in X-Forwarded-For (which tether serve believes from 127.0.0.1)
        "--no-proxy-headers",
    ]


def upstream_counts(port: int) -> tuple[int, int]:
    """(connections, requests) the upstream has seen so far."""
    reply = harness.http_get(port, COUNT_PATH, timeout=5.0)
    if reply.status != 200:
        raise BenchError(f"upstream GET {COUNT_PATH} answered {reply.status}")
    data = json.loads(reply.body)
    return int(data["connections"]), int(data["requests"])


def answers_hello(port: int, what: str) -> bool:
    """One GET /: raises OSError/HTTPException while not listening yet, BenchError
    when the answer is wrong (waiting longer would not help)."""
    reply = harness.http_get(port)
    if reply.status != 200 or reply.body != HELLO_BODY:
        raise BenchError(f"GET / through {what} answered {reply.status} "
                         f"{reply.body[:200]!r}, expected 200 {HELLO_BODY!r}")
    return True


# -- the proxies ---------------------------------------------------------------------------


def tether_cmd(port: int, upstream: int, admin: int, workers: int = 1) -> list[str]:
    return [
        PYTHON, "-m", "tether", "proxy", "--listen", f"{HOST}:{port}",
        "--route", f"/={HOST}:{upstream}", "--workers", str(workers), "--no-access-log",
        "--log-level", "warning", "--admin-port", str(admin),
    ]


def nginx_conf(tmp: Path, port: int, upstream: int, workers: int = 1) -> str:
    """The nginx configuration: ``workers`` workers (one by default), upstream
    keep-alive, tether's headers."""
    # As root the worker would switch to user nobody, who cannot enter ``tmp``.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
daemon off;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream up {{
        server {HOST}:{upstream};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\\"$http_host\\"";
            proxy_set_header Via "1.1 nginx";
        }}
    }}
}}
"""


def nginx_version(nginx: str) -> str:
    try:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stderr or done.stdout).strip()
    return text.removeprefix("nginx version: ") or "?"


def find_nginx() -> str:
    return shutil.which("nginx") or NGINX_DEFAULT


_OPENED = re.compile(
    r'^tether_client_connections_opened_total\{origin="([^"]*)"\}\s+([\d.e+]+)\s*$', re.M
)
_REQUESTS = re.compile(
    r'^tether_client_requests_total\{origin="([^"]*)"\}\s+([\d.e+]+)\s*$', re.M
)


def tether_counts(admin: int, upstream: int) -> tuple[int, int]:
    """(connections opened, requests sent) to the upstream, from tether's admin /metrics."""
    reply = harness.http_get(admin, "/metrics", timeout=5.0)
    text = reply.body.decode()
    origin = f"http://{HOST}:{upstream}"
    opened = {o: int(float(v)) for o, v in _OPENED.findall(text)}
    sent = {o: int(float(v)) for o, v in _REQUESTS.findall(text)}
    return opened.get(origin, 0), sent.get(origin, 0)


def synced_tether_count(admin: int, upstream: int, proxied: int) -> int:
    """Connections tether opened to the upstream, once its admin /metrics (workers
    report with their heartbeats, about every second) counts at least the ``proxied``
    requests the upstream answered from it (tether counts a request when it asks its
    pool for a connection, so also requests cancelled before they were sent). Raises
    BenchError when it does not catch up in time."""
    deadline = time.monotonic() + METRICS_SYNC_TIMEOUT
    while True:
        opened, sent = tether_counts(admin, upstream)
        if sent >= proxied:
            return opened
        if time.monotonic() >= deadline:
            raise BenchError(
                f"tether's /metrics counted {sent} upstream requests after "
                f"{METRICS_SYNC_TIMEOUT:.0f}s, the upstream answered {proxied} from it"
            )
        time.sleep(0.1)  # waiting for the next worker heartbeat


# -- CPU time ------------------------------------------------------------------------------

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (tether's workers run in
    sessions of their own, so they are found by parent, not by process group)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                if int(harness.proc_stat(int(entry.name))[1]) == pid:
                    pids.append(int(entry.name))
    ticks = 0
    for each in pids:
        with suppress(OSError, IndexError):
            fields = harness.proc_stat(each)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TICKS


# -- one run -------------------------------------------------------------------------------


def wait_up(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    try:
        harness.wait_ready(
            proc, ready,
            exited=lambda status: f"exited with status {status} before answering",
            timed_out=lambda last: f"not answering after {READY_TIMEOUT:.0f}s ({last})",
        )
    except BenchError as exc:
        raise BenchError(f"{what} failed to start: {exc}") from exc


def measure(run: Run, opts: Options, proxy_port: int, upstream: int, direct: int,
            procs: Sequence[tuple[str, subprocess.Popen[bytes]]],
            admin: int | None) -> None:
    """Warm up, count, measure, count again; fills ``run``. ``procs[0]`` is the proxy;
    ``direct`` the requests the upstream answered before the proxy started (our
    readiness checks), which tether's count cannot include."""
    if opts.warmup > 0:
        run_wrk(proxy_port, opts.warmup, opts.connections, opts.threads)
    conns_before, requests_before = upstream_counts(upstream)
    own_before: int | None = None
    if admin is not None:
        try:
            own_before = synced_tether_count(admin, upstream, requests_before - direct)
        except BenchError as exc:
            run.cross_check_error = str(exc)
    proxy_pid = procs[0][1].pid
    cpu_before = cpu_seconds(proxy_pid)
    result = run_wrk(proxy_port, opts.seconds, opts.connections, opts.threads)
    run.proxy_cpu_seconds = cpu_seconds(proxy_pid) - cpu_before
    conns_after, requests_after = upstream_counts(upstream)
    if admin is not None and own_before is not None:
        try:
            run.proxy_count = (synced_tether_count(admin, upstream, requests_after - direct)
                               - own_before)
        except BenchError as exc:
            run.cross_check_error = str(exc)
    for what, proc in procs:
        status = proc.poll()
        if status is not None:
            raise BenchError(f"{what} exited with status {status} during the run")
    run.result = result
    run.upstream_connections = conns_after - conns_before
    run.upstream_requests = requests_after - requests_before


def bench_one(proxy: str, rep: int, opts: Options, workdir: Path) -> Run:
    """Start a fresh upstream and ``proxy``, warm up, measure, stop both. Never raises
    BenchError (the run carries the error)."""
    run = Run(proxy=proxy, repeat=rep)
    upstream, port = harness.free_port(), harness.free_port()
    up_log = workdir / f"upstream-{proxy}-{rep}.log"
    proxy_log = workdir / f"{proxy}-{rep}.log"
    nginx_dir = workdir / f"nginx-{rep}"
    admin: int | None = None
    if proxy == "tether":
        admin = harness.free_port()
        argv = tether_cmd(port, upstream, admin, opts.workers)
    else:
        nginx_dir.mkdir()
        conf = nginx_dir / "nginx.conf"
        conf.write_text(nginx_conf(nginx_dir, port, upstream, opts.workers))
        argv = [opts.nginx, "-c", str(conf), "-p", f"{nginx_dir}/",
                "-e", str(nginx_dir / "error.log")]
    try:
        with up_log.open("wb") as ulog, harness.running(
            upstream_cmd(upstream), ulog, stop_timeout=STOP_TIMEOUT
        ) as up_proc:
            wait_up(up_proc, lambda: answers_hello(upstream, "the upstream"), "the upstream")
            _, direct = upstream_counts(upstream)
            with proxy_log.open("wb") as plog, harness.running(
                argv, plog, stop_timeout=STOP_TIMEOUT, name=proxy
            ) as proc:
                wait_up(proc, lambda: answers_hello(port, proxy), proxy)
                measure(run, opts, port, upstream, direct,
                        [(proxy, proc), ("the upstream", up_proc)], admin)
    except BenchError as exc:
        run.error = str(exc)
    finally:
        run.output = [f"[{proxy}] {line}" for line in harness.tail(proxy_log, OUTPUT_TAIL_LINES)]
        if proxy == "nginx":
            run.output += [f"[nginx error.log] {line}"
                           for line in harness.tail(nginx_dir / "error.log", OUTPUT_TAIL_LINES)]
        run.output += [f"[upstream] {line}" for line in harness.tail(up_log, OUTPUT_TAIL_LINES)]
    return run


# -- the whole benchmark -------------------------------------------------------------------


def run_all(opts: Options, runs: list[Run]) -> None:
    """Every repeat, both proxies in alternating order, appending to ``runs``."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-proxy-") as tmp:
        for rep in range(opts.repeat):
            for proxy in harness.rotated(PROXIES, rep):
                run = bench_one(proxy, rep, opts, Path(tmp))
                runs.append(run)
                print(progress_line(run, opts.repeat), flush=True)


def progress_line(run: Run, repeat: int) -> str:
    head = f"[run {run.repeat + 1}/{repeat}] {run.proxy:<7}"
    if run.result is None:
        return f"{head} FAILED: {(run.error or '').splitlines()[0]}"
    r = run.result
    own = "" if run.proxy_count is None else f" (tether counted {run.proxy_count})"
    return (
        f"{head} {r.requests_per_sec:>10,.0f} req/s  p99 {r.p99_ms:8.2f} ms  "
        f"CPU {num_text(run.cpu_us, '.0f')} us/req  "
        f"upstream conns {run.upstream_connections}{own} "
        f"= {run.per_1k:.3f} per 1k req"
        f"{errors_text(r.non_2xx, r.socket_error_total, prefix='  ')}"
    )


def summarize(runs: list[Run]) -> list[Summary]:
    summaries = []
    for proxy in PROXIES:
        mine = [r for r in runs if r.proxy == proxy]
        ok = [r for r in mine if r.result is not None]
        rps = [r.result.requests_per_sec for r in ok if r.result is not None]
        p99 = [r.result.p99_ms for r in ok if r.result is not None]
        per_1k = [r.per_1k for r in ok if r.per_1k is not None]
        cpu = [r.cpu_us for r in ok if r.cpu_us is not None]
        conns = [r.upstream_connections for r in ok if r.upstream_connections is not None]
        summaries.append(Summary(
            proxy=proxy,
            runs=len(mine),
            runs_ok=len(ok),
            requests_per_sec=statistics.median(rps) if rps else None,
            p99_ms=statistics.median(p99) if p99 else None,
            cpu_us=statistics.median(cpu) if cpu else None,
            upstream_connections=statistics.median(conns) if conns else None,
            per_1k=statistics.median(per_1k) if per_1k else None,
            rps_runs=rps,
            p99_runs=p99,
            cpu_us_runs=cpu,
            per_1k_runs=per_1k,
            non_2xx=sum(r.result.non_2xx for r in ok if r.result is not None),
            socket_errors=sum(r.result.socket_error_total for r in ok if r.result is not None),
        ))
    return summaries


def report(summaries: list[Summary], runs: list[Run], opts: Options) -> str:
    """The final table, the ratio line and anything that went wrong, as text."""
    lines = [
        "",
        f"wrk -t{opts.threads} -c{opts.connections} -d{opts.seconds}s --latency, "
        f"warmup {opts.warmup}s, {opts.repeat} run(s) each"
        + (", median of runs" if opts.repeat > 1 else ""),
        "",
        f"{'proxy':<8}{'req/s':>8}  {'(min-max)':<15}{'p99 ms':>8}  {'(min-max)':<13}"
        f"{'CPU us/req':>10}  {'(min-max)':<10}"
        f"{'up conns':>8}  {'per 1k req':>10}  {'(min-max)':<13}{'ok':>3}  errors",
    ]
    for s in summaries:
        errors = errors_text(s.non_2xx, s.socket_errors) or "-"
        if s.runs == 0:
            errors = "not run"
        elif s.runs_ok < s.runs:
            errors = f"{s.runs - s.runs_ok} run(s) FAILED" + (
                f"; {errors}" if errors != "-" else "")
        lines.append(
            f"{s.proxy:<8}{num_text(s.requests_per_sec, ',.0f'):>8}  "
            f"{range_text(s.rps_runs, ',.0f'):<15}{num_text(s.p99_ms, '.2f'):>8}  "
            f"{range_text(s.p99_runs, '.2f'):<13}{num_text(s.cpu_us, '.0f'):>10}  "
            f"{range_text(s.cpu_us_runs, '.0f'):<10}{num_text(s.upstream_connections, '.0f'):>8}  "
            f"{num_text(s.per_1k, '.3f'):>10}  {range_text(s.per_1k_runs, '.3f'):<13}"
            f"{s.runs_ok:>1}/{s.runs:<1}  {errors}"
        )
    lines += ["", "CPU us/req: user + system CPU time of the proxy's processes per request; "
                  "up conns: connections",
              "opened to the upstream during the measured run (as the upstream counted "
              "them); per 1k req: the same per 1,000 requests"]
    by_name = {s.proxy: s for s in summaries}
    subject, reference = by_name[SUBJECT], by_name[REFERENCE]
    lines += ["", f"ratio (req/s: above 1 means {SUBJECT} is faster; p99: below 1 means "
                  f"{SUBJECT} has the lower tail latency)"]
    label = f"{SUBJECT}/{REFERENCE}  "
    if (subject.requests_per_sec is None or subject.p99_ms is None
            or reference.requests_per_sec is None or reference.p99_ms is None):
        lines.append(f"{label}n/a (no result for one of them)")
    else:
        cpu = ("" if subject.cpu_us is None or not reference.cpu_us
               else f"   CPU per request {subject.cpu_us / reference.cpu_us:5.2f}")
        lines.append(
            f"{label}req/s {subject.requests_per_sec / reference.requests_per_sec:5.2f}"
            f"   p99 {subject.p99_ms / reference.p99_ms:5.2f}{cpu}"
        )
    own = [(r.upstream_connections, r.proxy_count) for r in runs
           if r.proxy == SUBJECT and r.proxy_count is not None]
    if own:
        pairs = ", ".join(f"{u}/{t}" for u, t in own)
        agree = "agree" if all(u == t for u, t in own) else "DISAGREE"
        lines += ["", f"cross-check, connections opened per run as counted by the upstream/"
                      f"by tether's /metrics: {pairs} ({agree})"]
    unchecked = [r for r in runs if r.cross_check_error is not None]
    if unchecked:
        lines += ["", "cross-check not made:"]
        lines += [f"  {r.proxy}, run {r.repeat + 1}: {r.cross_check_error}" for r in unchecked]
    failed = [r for r in runs if r.error is not None]
    if failed:
        lines += ["", "failures:"]
        for run in failed:
            lines.append(f"  {run.proxy}, run {run.repeat + 1}: {run.error}")
            lines += harness.quoted(run.output)
    noisy = [r for r in runs if r.error is None and r.output]
    if noisy:
        lines += ["", "output (log level warning) during successful runs:"]
        for run in noisy:
            lines.append(f"  {run.proxy}, run {run.repeat + 1}:")
            lines += harness.quoted(run.output)
    return "\n".join(lines)


def results_json(opts: Options, facts: dict[str, Any], runs: list[Run],
                 summaries: list[Summary], argv: Sequence[str]) -> dict[str, Any]:
    return {
        **harness.json_header(opts, facts, argv),
        "runs": [{**asdict(r), "per_1k": r.per_1k, "cpu_us": r.cpu_us} for r in runs],
        "summary": [asdict(s) for s in summaries],
    }


# -- command line ----------------------------------------------------------------------------


_positive = harness.count_type(1, "_positive")
_non_negative = harness.count_type(0, "_non_negative")


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark tether proxy against nginx (1 worker each by default) with wrk.",
    )
    parser.add_argument("--seconds", type=_positive, default=None, metavar="S",
                        help="measured wrk run per proxy and repeat (default: 10)")
    parser.add_argument("--warmup", type=_non_negative, default=None, metavar="S",
                        help="discarded wrk run before each measurement; 0 skips (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SECONDS} s runs after a {QUICK_WARMUP} s warm-up "
                             "(for the smoke test); --seconds/--warmup still win")
    parser.add_argument("--repeat", type=_positive, default=1, metavar="N",
                        help="runs per proxy, alternating tether/nginx; medians are "
                             "reported (default: 1)")
    parser.add_argument("--connections", type=_positive, default=64, metavar="N",
                        help="wrk connections (default: 64)")
    parser.add_argument("--threads", type=_positive, default=2, metavar="N",
                        help="wrk threads (default: 2)")
    parser.add_argument("--workers", type=_positive, default=1, metavar="N",
                        help="worker processes of each proxy: tether --workers, nginx "
                             "worker_processes (default: 1)")
    parser.add_argument("--nginx", default=None, metavar="PATH",
                        help=f"the nginx binary (default: nginx on PATH, else {NGINX_DEFAULT})")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", dest="json_path",
                        help="also write every run and the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections (wrk needs a connection each)")
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else 2)
    return Options(
        seconds=seconds, warmup=warmup, repeat=args.repeat, connections=args.connections,
        threads=args.threads, nginx=args.nginx or find_nginx(), json_path=args.json_path,
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found on PATH (install it: scripts/system-deps.sh)",
              file=sys.stderr)
        return 2
    if not os.access(opts.nginx, os.X_OK):
        print(f"bench: nginx not found at {opts.nginx} (install it: scripts/system-deps.sh)",
              file=sys.stderr)
        return 2
    harness.sigterm_as_interrupt()
    facts = harness.machine_facts(VERSIONED)
    facts["versions"]["wrk"] = wrk_version()
    facts["versions"]["nginx"] = nginx_version(opts.nginx)
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
    print(f"{facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}", flush=True)
    print(versions, flush=True)
    print(f"load average before: {harness.record_loadavg(facts, 'before')}", flush=True)
    runs: list[Run] = []
    interrupted = harness.run_interruptibly(lambda: run_all(opts, runs))
    summaries = summarize(runs)
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
