"""The etcd registry at scale: change-to-watcher latency and etcd's steady-state load.

What it does, on a throwaway etcd of its own (``tests/etcd.py``: Debian's
``etcd-server``, temp data dir, 127.0.0.1, heartbeat 10 ms, election 100 ms):

1. ``--owners`` processes (``tests/apps/registry_share.py``) register
   ``--providers`` providers spread evenly over ``--services`` services, each on its
   own lease of ``--ttl`` seconds refreshed every ttl/3 by tether's keep-alive.
2. ``--watchers`` watchers in this process (watcher i watches service i mod services),
   spread over ``--watch-clients`` registry clients (one gRPC connection, one watch
   stream each), wait until every one of them shows its service's exact set.
3. Steady state: nothing changes for ``--steady`` seconds; etcd's ``/metrics``
   counters are read before and after (RPCs started per method, lease renewals,
   etcd's CPU seconds), and so is the owners' CPU time (``/proc``).
4. ``--changes`` changes, one at a time, alternately registering a new provider in a
   random service and deregistering it again, from a separate client. For each, the
   time from just before the register/deregister call to the moment the LAST watcher
   of that service received the snapshot showing it (the arrival time each watcher
   stamps itself) is recorded; p50/p99/max are printed.

Reproduce (from anywhere)::

    .venv/bin/python bench/registry_scale.py            # 1,000 providers, 50 services, 200 watchers
    .venv/bin/python bench/registry_scale.py --providers 50 --services 5 --watchers 10 \\
        --changes 5 --steady 2                          # the smoke test's size
    .venv/bin/python bench/registry_scale.py --json registry.json

Every process it starts (etcd, the owners) is stopped however the run ends. Exit
status: 0 when every watcher converged and saw every change, 1 otherwise, 2 on bad
usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, _ROOT)

from bench import harness  # noqa: E402
from bench.harness import PYTHON, ROOT  # noqa: E402
from tests.apps.registry_share import address  # noqa: E402
from tests.etcd import EtcdServer, throwaway_etcd  # noqa: E402
from tether.registry import Registration, Snapshot, open_registry  # noqa: E402
from tether.registry.etcd import EtcdRegistry  # noqa: E402

CHANGE_TIMEOUT = 10.0  # a change no watcher saw within this counts as lost
CONVERGE_TIMEOUT = 60.0


@dataclass
class Watcher:
    service: str
    addresses: frozenset[str] = frozenset()
    arrived: float = 0.0
    snapshots: int = 0
    unreachable: list[str] = field(default_factory=list)


@dataclass
class Board:
    """Every watcher's latest view; ``changed`` is set on each snapshot."""

    watchers: list[Watcher] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, service: str) -> list[Watcher]:
        return [w for w in self.watchers if w.service == service]

    async def until(self, ok: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ok():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True


async def follow(registry: EtcdRegistry, watcher: Watcher, board: Board) -> None:
    async for event in registry.watch(watcher.service):
        if isinstance(event, Snapshot):
            watcher.addresses, watcher.arrived = event.addresses, time.monotonic()
            watcher.snapshots += 1
        else:
            watcher.unreachable.append(event.error)
        board.changed.set()


def counters(etcd: EtcdServer) -> dict[str, float]:
    """The etcd counters we diff: RPCs started per method, renewals, CPU seconds."""
    result: dict[str, float] = defaultdict(float)
    for line in etcd.metrics().splitlines():
        if line.startswith("grpc_server_started_total{"):
            method = re.search(r'grpc_method="([^"]+)"', line)
            if method:
                result[f"rpc:{method.group(1)}"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("grpc_server_msg_received_total{"):
            result["messages"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith(("etcd_debugging_lease_renewed_total ",
                              "process_cpu_seconds_total ")):
            name, value = line.rsplit(" ", 1)
            result[name] = float(value)
    return result


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (and its reaped children: none here)."""
    fields = harness.proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 50 samples is the largest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine() -> dict[str, Any]:
    cpu = harness.cpu_model()
    etcd_version = subprocess.run(["/usr/bin/etcd", "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[:1]
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "etcd": " ".join(etcd_version),
            "loadavg": os.getloadavg()}


class Owners:
    """The owner processes; ``stop()`` makes them deregister, ``kill()`` is the fallback."""

    def __init__(self, url: str, count: int, services: int, per_service: int,
                 ttl: float) -> None:
        self.procs = [
            subprocess.Popen(
                [PYTHON, "-m", "tests.apps.registry_share", url, str(i), str(count),
                 str(services), str(per_service), str(ttl)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for i in range(count)
        ]

    async def registered(self) -> int:
        def line(proc: subprocess.Popen[str]) -> str:
            assert proc.stdout is not None
            return proc.stdout.readline()

        lines = await asyncio.gather(*(
            asyncio.wait_for(asyncio.to_thread(line, p), 120) for p in self.procs))
        if not all(x.startswith("registered ") for x in lines):
            raise RuntimeError(f"an owner failed to register: {lines}")
        return sum(int(x.split()[1]) for x in lines)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    async def stop(self) -> bool:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        codes = await asyncio.gather(*(asyncio.to_thread(p.wait, 60) for p in self.procs))
        return all(code == 0 for code in codes)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


async def run(args: argparse.Namespace, etcd: EtcdServer) -> dict[str, Any]:
    per_service = args.providers // args.services
    url = etcd.url("/bench")
    services = [f"svc-{s}" for s in range(args.services)]
    expected = {f"svc-{s}": frozenset(address(s, p) for p in range(per_service))
                for s in range(args.services)}
    result: dict[str, Any] = {"ok": True}
    owners = Owners(url, args.owners, args.services, per_service, args.ttl)
    clients = [open_registry(url) for _ in range(args.watch_clients)]
    changer = open_registry(url)
    board = Board([Watcher(services[i % args.services]) for i in range(args.watchers)])
    tasks: list[asyncio.Task[None]] = []
    try:
        started = time.monotonic()
        total = await owners.registered()
        result["register_seconds"] = time.monotonic() - started
        result["registered"] = total
        print(f"registered {total} providers in {result['register_seconds']:.2f} s "
              f"({total / result['register_seconds']:.0f}/s) from {args.owners} processes",
              flush=True)

        started = time.monotonic()
        for i, watcher in enumerate(board.watchers):
            client = clients[i % len(clients)]
            assert isinstance(client, EtcdRegistry)
            tasks.append(asyncio.get_running_loop().create_task(follow(client, watcher, board)))
        converged = await board.until(
            lambda: all(w.addresses == expected[w.service] for w in board.watchers),
            CONVERGE_TIMEOUT)
        result["converge_seconds"] = time.monotonic() - started
        result["converged"] = converged
        print(f"{args.watchers} watchers converged: {converged} in "
              f"{result['converge_seconds']:.2f} s", flush=True)
        if not converged:
            result["ok"] = False
            return result

        # -- steady state: nothing changes; what does keeping 1,000 leases alive cost?
        before, owners_before, t0 = counters(etcd), owners.cpu(), time.monotonic()
        await asyncio.sleep(args.steady)  # the measurement window itself
        after, owners_after, t1 = counters(etcd), owners.cpu(), time.monotonic()
        span = t1 - t0
        rates = {k[4:]: (after[k] - before.get(k, 0.0)) / span
                 for k in after if k.startswith("rpc:") and after[k] > before.get(k, 0.0)}
        steady = {
            "seconds": span,
            "rpcs_per_second": sum(rates.values()),
            "rpcs_per_second_by_method": dict(sorted(rates.items())),
            "messages_per_second": (after["messages"] - before["messages"]) / span,
            "lease_renewals_per_second": (after["etcd_debugging_lease_renewed_total"]
                                          - before["etcd_debugging_lease_renewed_total"]) / span,
            "expected_renewals_per_second": total / (args.ttl / 3),
            "etcd_cpu_percent": 100 * (after["process_cpu_seconds_total"]
                                       - before["process_cpu_seconds_total"]) / span,
            "owners_cpu_percent": 100 * (owners_after - owners_before) / span,
        }
        result["steady"] = steady
        print(f"steady state over {span:.1f} s: etcd started {steady['rpcs_per_second']:.0f} "
              f"RPCs/s ({', '.join(f'{k} {v:.0f}' for k, v in rates.items())}); lease "
              f"renewals {steady['lease_renewals_per_second']:.0f}/s (expected "
              f"{steady['expected_renewals_per_second']:.0f}/s = providers / (ttl/3)); "
              f"etcd CPU {steady['etcd_cpu_percent']:.1f}% of a core, owners' CPU "
              f"{steady['owners_cpu_percent']:.1f}%", flush=True)

        # -- changes: one at a time, register then deregister a provider
        rng = random.Random(6)
        latencies: dict[str, list[float]] = {"register": [], "deregister": []}
        calls: list[float] = []
        lost = 0
        added: tuple[str, Registration] | None = None
        for n in range(args.changes):
            if added is None:
                service = rng.choice(services)
                addr = f"10.9.{n % 250}.{rng.randrange(250)}:9000"
                target = expected[service] | {addr}
                begun = time.monotonic()
                registration = await changer.register(service, addr, ttl=args.ttl)
                kind = "register"
                added = (service, registration)
            else:
                service, registration = added
                target = expected[service]
                begun = time.monotonic()
                await changer.deregister(registration)
                kind = "deregister"
                added = None
            calls.append(time.monotonic() - begun)
            watchers = board.of(service)
            seen = await board.until(
                lambda ws=watchers, t=target: all(w.addresses == t for w in ws),
                CHANGE_TIMEOUT)
            if not seen:
                lost += 1
                continue
            latencies[kind].append(max(w.arrived for w in watchers) - begun)
        if added is not None:
            await changer.deregister(added[1])
        every = latencies["register"] + latencies["deregister"]
        result["changes"] = {
            "count": args.changes, "lost": lost,
            "watchers_per_service": args.watchers / args.services,
            "p50_ms": 1000 * quantile(every, 0.5) if every else None,
            "p99_ms": 1000 * quantile(every, 0.99) if every else None,
            "max_ms": 1000 * max(every) if every else None,
            "call_p50_ms": 1000 * quantile(calls, 0.5) if calls else None,
            "by_kind_p50_ms": {k: 1000 * quantile(v, 0.5) for k, v in latencies.items() if v},
        }
        if every:
            print(f"change -> every watcher of the service ({args.watchers // args.services} "
                  f"each), {len(every)} changes: p50 {1000 * quantile(every, 0.5):.1f} ms, "
                  f"p99 {1000 * quantile(every, 0.99):.1f} ms, max {1000 * max(every):.1f} ms "
                  f"(the register/deregister call itself: p50 "
                  f"{1000 * quantile(calls, 0.5):.1f} ms); lost: {lost}", flush=True)
        errors = [e for w in board.watchers for e in w.unreachable]
        unreachable = len(errors)
        result["watch_unreachable_events"] = unreachable
        result["watch_unreachable_errors"] = sorted(set(errors))
        if errors:
            print(f"{unreachable} Unreachable event(s) seen by watchers: "
                  f"{'; '.join(sorted(set(errors)))}", flush=True)
        result["ok"] = lost == 0 and unreachable == 0 and bool(every)
        result["owners_stopped_cleanly"] = await owners.stop()
        gone = await board.until(lambda: all(not w.addresses for w in board.watchers),
                                 CONVERGE_TIMEOUT)
        print(f"owners deregistered everything; watchers saw it: {gone}", flush=True)
        result["ok"] = result["ok"] and gone and result["owners_stopped_cleanly"]
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for registry in [*clients, changer]:
            await registry.close()
        owners.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--steady", type=float, default=10.0,
                        help="seconds of steady state to measure etcd's request rate over")
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--owners", type=int, default=4, help="registering processes")
    parser.add_argument("--watch-clients", type=int, default=4,
                        help="registry clients (gRPC connections) the watchers share")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if (args.providers < args.services or args.providers % args.services
            or min(args.services, args.watchers, args.owners, args.watch_clients) < 1
            or args.watchers < args.services or args.changes < 0 or args.steady <= 0):
        parser.error("need providers a multiple of services, watchers >= services, "
                     "and positive counts")
    if args.steady < args.ttl / 3:
        print(f"registry_scale: warning: --steady {args.steady:g} is shorter than one refresh "
              f"period (ttl/3 = {args.ttl / 3:g} s): the rates will be off", file=sys.stderr)
    if not Path("/usr/bin/etcd").exists():
        print("registry_scale: /usr/bin/etcd missing: install Debian's etcd-server "
              "(scripts/system-deps.sh)", file=sys.stderr)
        return 2
    facts = machine()
    print(f"registry_scale: {args.providers} providers ({args.services} services x "
          f"{args.providers // args.services}, {args.owners} owner processes, ttl "
          f"{args.ttl:g} s), {args.watchers} watchers over {args.watch_clients} clients; "
          f"{facts['etcd']}; {facts['nproc']} CPUs, load {facts['loadavg'][0]:.2f}",
          flush=True)
    try:
        with throwaway_etcd() as etcd:
            result = asyncio.run(run(args, etcd))
    except KeyboardInterrupt:
        return 130
    result.update(settings=vars(args), machine=facts, date=harness.utc_timestamp())
    if args.json:
        harness.write_json(Path(args.json), result, trailing_newline=False, default=str)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
