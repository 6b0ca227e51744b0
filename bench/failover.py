"""Failover under load: a cluster of 3 providers, one killed and one hung mid-run.

What it does (issue 7, field report 5):

1. Starts 3 providers, ``python -m tether serve apps.cluster_app:app --workers 1
   --registry sqlite:///<temp dir>/registry.db --service failover --registry-ttl T``
   (the app, ``tests/apps/cluster_app.py``, answers ``GET /`` with the ``host:port``
   that served it), each in a session of its own, and waits until each is registered.
2. Runs ``--concurrency`` loops of idempotent ``GET /`` through
   ``tether.Client(registry=...).service("failover")`` (p2c balancing, retries on a
   different provider, the retry budget: all defaults) for the whole run. Every request
   is recorded with its start time, latency and outcome.
3. After ``--warmup`` + ``--before`` seconds: ``SIGKILL`` to provider 1 (its supervisor
   and its worker at once: a crash), and ``--stagger`` seconds later ``SIGSTOP`` to
   provider 2 (supervisor and worker: it reads and answers nothing; the kernel still
   completes TCP handshakes into its listen backlog, so connecting "works" and then
   nothing comes back: the hardest kind of dead).
4. Waits (at most ``--settle-timeout``) until the cluster has finished reacting: both
   faulty providers evicted (or gone from the registry), then runs ``--after`` more
   seconds, and stops.

``cluster.providers()`` is sampled every 5 ms throughout, which gives, per fault, the
time to detect (fault -> first sample where the provider is not ``alive``) and the time
to evict (fault -> first ``evicted``), and whether it left the registry meanwhile.

Phases, by request START time: ``before`` = [warmup end, first fault), ``during`` =
[first fault, both faulty providers evicted), ``after`` = the rest. Per phase: requests,
failed (anything but a 200 after the cluster's retries), req/s, p50/p99/max latency.
Target (issue 7): 0 failed idempotent requests, and p99 during < 2 x p99 before.

Reproduce (from anywhere; about 25 s)::

    .venv/bin/python bench/failover.py
    .venv/bin/python bench/failover.py --before 3 --after 3 --json failover.json
    .venv/bin/python bench/failover.py --heartbeat 5 --backoff 1 --attempts 10   # tether's defaults

Every process it starts is stopped however the run ends (SIGCONT first, then SIGKILL
of the supervisor and every worker seen), and the temp dir is deleted. Exit status: 0
the run completed (the verdict on the target is printed), 1 the run could not be
completed (a provider did not start, a fault was not detected in time), 2 bad usage,
3 with ``--check`` when the target was missed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import tether
from tether.client import Cluster, ClusterConfig
from tether.errors import TetherError

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, _ROOT)

from bench.harness import ProcessFamily  # noqa: E402

ROOT: Final = Path(__file__).resolve().parent.parent

SERVICE: Final = "failover"
APP: Final = "apps.cluster_app:app"
APP_DIR: Final = ROOT / "tests"
HOST: Final = "127.0.0.1"
START_TIMEOUT: Final = 30.0
SAMPLE_PERIOD: Final = 0.005

T = TypeVar("T")


class BenchError(Exception):
    """The run could not be completed."""


@dataclass(frozen=True)
class Options:
    concurrency: int = 8
    warmup: float = 1.0
    before: float = 5.0
    stagger: float = 1.3  # not a multiple of the heartbeat: no phase-aligned luck
    after: float = 5.0
    settle_timeout: float = 60.0
    heartbeat: float = 1.0
    probe_timeout: float = 0.5
    backoff: float = 0.2
    attempts: int = 5
    request_timeout: float = 1.0
    ttl: float = 30.0
    check: bool = False
    json_path: str | None = None

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(heartbeat_interval=self.heartbeat, backoff_initial=self.backoff,
                             max_reconnect_attempts=self.attempts)


# -- providers ---------------------------------------------------------------------------


class Provider:
    """One ``tether serve`` in its own session, its log in a file."""

    def __init__(self, index: int, registry: str, ttl: float, workdir: Path) -> None:
        self.index = index
        self.log_path = workdir / f"provider-{index}.log"
        self.port = 0
        command = [sys.executable, "-m", "tether", "serve", APP, "--workers", "1",
                   "--host", HOST, "--port", "0", "--no-access-log",
                   "--registry", registry, "--service", SERVICE, "--registry-ttl", str(ttl)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=APP_DIR, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.family = ProcessFamily(self.proc.pid)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.log()
            if f"registered {SERVICE} at" in text:
                for line in text.splitlines():
                    if "serving on http://" in line:
                        self.port = int(line.strip().rsplit(":", 1)[1])
                self.family.pids()  # remember the workers now
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"provider {self.index} did not start:\n{text[-2000:]}")
            await asyncio.sleep(0.02)

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the supervisor and every worker; returns when."""
        self.family.signal(sig)
        return time.monotonic()

    def cleanup(self) -> None:
        self.signal(signal.SIGCONT)  # a stopped process must be able to die
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    start: float
    seconds: float
    served_by: str  # "" unless a 200
    error: str  # "" for a 200


@dataclass
class Fault:
    kind: str
    address: str
    at: float = 0.0
    detected: float | None = None  # seconds after the fault
    evicted: float | None = None
    left_registry: float | None = None
    states: list[tuple[float, str]] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return self.evicted is not None or self.left_registry is not None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Phase:
    name: str
    start: float
    end: float
    requests: int
    failed: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_100ms: int
    errors: dict[str, int]
    served_by: dict[str, int]

    @classmethod
    def of(cls, name: str, start: float, end: float, requests: list[Request],
           origin: float) -> Phase:
        mine = [r for r in requests if start <= r.start < end]
        latencies = [r.seconds * 1000 for r in mine]
        errors = Counter(r.error.split(":")[0] for r in mine if r.error)
        span = max(end - start, 1e-9)
        return cls(name, start - origin, end - origin, len(mine), sum(errors.values()),
                   len(mine) / span, percentile(latencies, 50), percentile(latencies, 99),
                   max(latencies, default=math.nan), sum(ms > 100 for ms in latencies),
                   dict(errors),
                   dict(Counter(r.served_by for r in mine if not r.error)))


class Run:
    def __init__(self, opts: Options, cluster: Cluster) -> None:
        self.opts = opts
        self.cluster = cluster
        self.requests: list[Request] = []
        self.stop = asyncio.Event()
        self.history: dict[str, list[tuple[float, str]]] = {}

    async def load(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                response = await self.cluster.get("/")
            except TetherError as exc:
                self.requests.append(Request(start, time.monotonic() - start, "",
                                             f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(0.01)  # a fast failure must not spin the loop
                continue
            elapsed = time.monotonic() - start
            if response.status_code == 200:
                self.requests.append(
                    Request(start, elapsed, response.headers.get("x-served-by") or "?", ""))
            else:
                self.requests.append(Request(start, elapsed, "",
                                             f"status {response.status_code}"))

    async def sample(self) -> None:
        while True:
            now = time.monotonic()
            listed = {a: s for a, s, *_ in self.cluster.providers()}
            for address in set(listed) | set(self.history):
                state = listed.get(address, "absent")
                changes = self.history.setdefault(address, [])
                if not changes or changes[-1][1] != state:
                    changes.append((now, state))
            await asyncio.sleep(SAMPLE_PERIOD)

    def observe(self, fault: Fault) -> None:
        changes = [(t, s) for t, s in self.history.get(fault.address, []) if t >= fault.at]
        fault.states = [(round(t - fault.at, 3), s) for t, s in changes]
        for t, state in changes:
            if fault.detected is None and state != "alive":
                fault.detected = t - fault.at
            if fault.evicted is None and state == "evicted":
                fault.evicted = t - fault.at
            if fault.left_registry is None and state == "absent":
                fault.left_registry = t - fault.at


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


async def scenario(opts: Options, workdir: Path, providers: list[Provider]) -> dict[str, Any]:
    registry = f"sqlite:///{workdir}/registry.db"
    providers += [Provider(i, registry, opts.ttl, workdir) for i in range(3)]
    await asyncio.gather(*(p.ready() for p in providers))
    async with tether.Client(registry=registry, timeout=opts.request_timeout,
                             max_connections_per_origin=max(20, opts.concurrency)) as client:
        cluster = client.service(SERVICE, config=opts.cluster_config(),
                                 probe_timeout=opts.probe_timeout)
        run = Run(opts, cluster)
        await wait_until(lambda: sorted(s for _, s, *_ in cluster.providers()) == ["alive"] * 3,
                         START_TIMEOUT, "three alive providers")
        origin = time.monotonic()
        sampler = asyncio.get_running_loop().create_task(run.sample())
        loops = [asyncio.get_running_loop().create_task(run.load())
                 for _ in range(opts.concurrency)]
        try:
            await asyncio.sleep(opts.warmup + opts.before)  # the scenario's own pacing
            killed, hung = providers[1], providers[2]
            faults = [Fault("SIGKILL (crash)", killed.address), Fault("SIGSTOP (hung)",
                                                                      hung.address)]
            faults[0].at = killed.signal(signal.SIGKILL)
            await asyncio.sleep(opts.stagger)
            faults[1].at = hung.signal(signal.SIGSTOP)

            def settled() -> bool:
                for fault in faults:
                    run.observe(fault)
                return all(f.settled for f in faults)

            await wait_until(settled, opts.settle_timeout,
                             "both faulty providers evicted or gone from the registry")
            settled_at = time.monotonic()
            await asyncio.sleep(opts.after)
        finally:
            run.stop.set()
            _, pending = await asyncio.wait(loops, timeout=3 * opts.request_timeout + 5)
            for task in pending:
                task.cancel()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        end = time.monotonic()
        for fault in faults:
            run.observe(fault)
        stats = cluster.stats()
    phases = [
        Phase.of("before", origin + opts.warmup, faults[0].at, run.requests, origin),
        Phase.of("during", faults[0].at, settled_at, run.requests, origin),
        Phase.of("after", settled_at, end, run.requests, origin),
    ]
    return {
        "providers": [p.address for p in providers],
        "phases": [asdict(p) for p in phases],
        "faults": [asdict(f) for f in faults],
        "cluster_stats": stats,
        "requests_total": len(run.requests),
        "failed_total": sum(1 for r in run.requests if r.error),  # warmup included
    }


# -- report ------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def report(opts: Options, result: dict[str, Any]) -> tuple[str, bool]:
    phases = {p["name"]: p for p in result["phases"]}
    lines = [
        f"failover: 3 providers ({APP}, 1 worker each, sqlite registry, TTL {opts.ttl:g}s), "
        f"{opts.concurrency} loops of GET / through client.service (p2c)",
        f"cluster: heartbeat {opts.heartbeat:g}s, probe timeout {opts.probe_timeout:g}s, "
        f"backoff {opts.backoff:g}s x1.6 +/-20%, {opts.attempts} attempts; "
        f"request timeout {opts.request_timeout:g}s",
        "",
        f"{'phase':<8}{'from s':>8}{'to s':>8}{'requests':>10}{'failed':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'>100 ms':>9}",
    ]
    for p in result["phases"]:
        lines.append(
            f"{p['name']:<8}{p['start']:>8.2f}{p['end']:>8.2f}{p['requests']:>10,}"
            f"{p['failed']:>8}{p['rate']:>9,.0f}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
            f"{p['max_ms']:>9.1f}{p['over_100ms']:>9}")
    lines += ["", f"{'fault':<18}{'provider':<18}{'detected after':>16}{'evicted after':>15}"
                  f"{'left registry':>15}"]
    for f in result["faults"]:
        lines.append(f"{f['kind']:<18}{f['address']:<18}{_s(f['detected']):>16}"
                     f"{_s(f['evicted']):>15}{_s(f['left_registry']):>15}")
    lines += ["", "states after each fault (seconds after it, state):"]
    for f in result["faults"]:
        lines.append(f"  {f['address']}: {f['states']}")
    stats = result["cluster_stats"]
    lines.append(f"cluster: retries {stats.get('retries', 0)}, retry budget exhausted "
                 f"{stats.get('retry_budget_exhausted', 0)}, no provider "
                 f"{stats.get('no_provider', 0)}, evictions {stats.get('evictions', 0)}, "
                 f"ejections {stats.get('ejections', 0)}, probes {stats.get('probes', 0)}")
    for p in result["phases"]:
        if p["errors"]:
            lines.append(f"errors {p['name']}: {p['errors']}")
    ratio = phases["during"]["p99_ms"] / phases["before"]["p99_ms"]
    failed = result["failed_total"]
    met = failed == 0 and ratio < 2.0
    lines += ["", f"target: 0 failed requests ({failed}: {'MET' if failed == 0 else 'MISSED'}), "
                  f"p99 during / before < 2 ({ratio:.2f}: {'MET' if ratio < 2 else 'MISSED'})"]
    return "\n".join(lines), met


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": os.getloadavg(), "commit": commit}


# -- command line ------------------------------------------------------------------------------


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return number


def parse_args(argv: Sequence[str]) -> Options:
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=d.concurrency,
                        help=f"request loops (default {d.concurrency})")
    parser.add_argument("--warmup", type=_non_negative, default=d.warmup,
                        help=f"seconds of load not measured (default {d.warmup})")
    parser.add_argument("--before", type=_positive, default=d.before,
                        help=f"seconds measured before the faults (default {d.before})")
    parser.add_argument("--stagger", type=_non_negative, default=d.stagger,
                        help=f"seconds between the kill and the hang (default {d.stagger})")
    parser.add_argument("--after", type=_positive, default=d.after,
                        help=f"seconds measured once both are evicted (default {d.after})")
    parser.add_argument("--settle-timeout", type=_positive, default=d.settle_timeout,
                        help=f"seconds allowed for eviction (default {d.settle_timeout})")
    parser.add_argument("--heartbeat", type=_positive, default=d.heartbeat,
                        help=f"ClusterConfig.heartbeat_interval (default {d.heartbeat})")
    parser.add_argument("--probe-timeout", type=_positive, default=d.probe_timeout,
                        help=f"service(probe_timeout=) (default {d.probe_timeout})")
    parser.add_argument("--backoff", type=_positive, default=d.backoff,
                        help=f"ClusterConfig.backoff_initial (default {d.backoff})")
    parser.add_argument("--attempts", type=int, default=d.attempts,
                        help=f"ClusterConfig.max_reconnect_attempts (default {d.attempts})")
    parser.add_argument("--request-timeout", type=_positive, default=d.request_timeout,
                        help=f"Client(timeout=) per attempt (default {d.request_timeout})")
    parser.add_argument("--ttl", type=_positive, default=d.ttl,
                        help=f"providers' --registry-ttl (default {d.ttl})")
    parser.add_argument("--check", action="store_true",
                        help="exit 3 when the target is missed")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write the results here")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.attempts < 1:
        parser.error("--concurrency and --attempts must be at least 1")
    return Options(**vars(args))


async def interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGINT or SIGTERM cancel it (its cleanup runs) and raise
    KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await coro
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    # the cluster's own log lines (one per state change) go to stderr, time-stamped
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("tether.registry").setLevel(logging.WARNING)
    providers: list[Provider] = []
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="tether-failover-") as tmp:
        try:
            result = asyncio.run(interruptible(scenario(opts, Path(tmp), providers)))
        except BenchError as exc:
            print(f"failover: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("failover: interrupted", file=sys.stderr)
            return 130
        finally:
            for provider in providers:
                provider.cleanup()
    text, met = report(opts, result)
    print(text)
    if opts.json_path is not None:
        data = {"date": started.isoformat(timespec="seconds"), "command": sys.argv,
                "options": asdict(opts), "machine": machine_facts(), **result,
                "target_met": met}
        Path(opts.json_path).write_text(json.dumps(data, indent=2) + "\n")
    return 3 if opts.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
