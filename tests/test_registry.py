"""The service registry, the same behaviour on every backend (issue 6, field report 5).

Each behavioural test runs against SQLite (a temp file), etcd (a throwaway server, a
fresh key prefix per test) and, when everything happens in this process, the memory
backend. Servers are real ``tether serve`` processes on loopback; watchers record
every event with its arrival time so that "gone before the drain finished" and "gone
within TTL + one refresh" are measured, not assumed. Every process and temp dir is
cleaned up even when a test fails; waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps.registry_share import address as share_address
from tests.apps.registry_share import register_share
from tests.etcd import EtcdServer
from tests.support import (
    EXAMPLES,
    ROOT,
    ServerProcess,
    free_port,
    opened,
    run_tether,
    server_process,
    tether_command,
    tether_process,
    wait_for,
)
from tether.cli import _alive
from tether.errors import ConfigError
from tether.registry import (
    Registry,
    RegistryUnreachable,
    Snapshot,
    Unreachable,
    WatchEvent,
    open_registry,
)
from tether.registry.base import Provider
from tether.registry.lease import KeptRegistration
from tether.registry.urls import etcd_endpoints, sqlite_path

TESTS = Path(__file__).resolve().parent
BACKENDS = ["sqlite", "etcd", "memory"]
PROCESS_BACKENDS = ["sqlite", "etcd"]  # memory:// cannot be shared by two processes
#: etcd revokes expired leases in a loop every 0.5 s; the rest is scheduling slack
EXPIRY_ALLOWANCE = 0.75


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry URL of the backend named by the test's ``backend`` parameter, private
    to this test."""
    backend: str = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"  # tmp_path is absolute: sqlite:////...
    if backend == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        return etcd.url(f"/t-{uuid.uuid4().hex[:12]}")
    assert backend == "memory"
    return f"memory://{request.node.nodeid}-{uuid.uuid4().hex[:8]}"


def backends(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("registry_url", list(names), indirect=True)


class Watching:
    """Consumes ``registry.watch(service)`` in a task and keeps every event with the
    monotonic time it arrived."""

    def __init__(self, registry: Registry, service: str) -> None:
        self.service = service
        self.events: list[tuple[float, WatchEvent]] = []
        self._task = asyncio.get_running_loop().create_task(self._run(registry))

    async def _run(self, registry: Registry) -> None:
        async for event in registry.watch(self.service):
            self.events.append((time.monotonic(), event))

    @property
    def snapshots(self) -> list[Snapshot]:
        return [e for _, e in self.events if isinstance(e, Snapshot)]

    @property
    def last(self) -> Snapshot | None:
        snapshots = self.snapshots
        return snapshots[-1] if snapshots else None

    def addresses(self) -> frozenset[str] | None:
        last = self.last
        return None if last is None else last.addresses

    def unreachable(self) -> list[Unreachable]:
        return [e for _, e in self.events if isinstance(e, Unreachable)]

    def _check(self) -> None:
        if self._task.done() and not self._task.cancelled():
            raise AssertionError(f"the watch of {self.service} ended: {self._task.exception()!r}")

    async def until(
        self, predicate: Callable[[Snapshot], bool], timeout: float = 10.0, what: str = "it"
    ) -> float:
        """Wait for a snapshot satisfying ``predicate``; return when it arrived."""
        def ok() -> bool:
            self._check()
            last = self.last
            return last is not None and predicate(last)

        await wait_for(ok, timeout, f"{self.service} watcher: {what} (saw {self.addresses()})")
        return next(t for t, e in reversed(self.events) if isinstance(e, Snapshot))

    async def until_event(self, predicate: Callable[[WatchEvent], bool], timeout: float = 10.0,
                          what: str = "an event") -> float:
        def ok() -> bool:
            self._check()
            return any(predicate(e) for _, e in self.events)

        await wait_for(ok, timeout, f"{self.service} watcher: {what}")
        return next(t for t, e in self.events if predicate(e))

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(registry: Registry, service: str) -> AsyncIterator[Watching]:
    watcher = Watching(registry, service)
    try:
        yield watcher
    finally:
        await watcher.stop()


def has(address: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: address in snapshot.addresses


def lacks(address: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: address not in snapshot.addresses


def exactly(addresses: frozenset[str]) -> Callable[[Snapshot], bool]:
    return lambda snapshot: snapshot.addresses == addresses


def registered_line(server: ServerProcess, timeout: float = 20.0) -> str:
    """The address the server registered under (from its log)."""
    line = server.wait_for_line("registered ", timeout)
    match = re.search(r"registered \S+ at (\S+) in ", line)
    assert match is not None, line
    return match.group(1)


def registry_server(url: str, service: str, *args: str, app: str = "hello:app",
                    cwd: Path = EXAMPLES, env: dict[str, str] | None = None,
                    ) -> contextlib.AbstractContextManager[ServerProcess]:
    return server_process(app, "--no-access-log", "--registry", url, "--service", service,
                          *args, cwd=cwd, env=env)


def worker_pids(server: ServerProcess) -> set[int]:
    return {int(m) for m in re.findall(r"worker \d+ \(pid (\d+)\) ready", server.output())}


@contextlib.contextmanager
def reaping(pids: Callable[[], set[int]]) -> Iterator[None]:
    """Kill whatever of ``pids()`` still runs at the end (workers of a killed server)."""
    try:
        yield
    finally:
        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- URLs ------------------------------------------------------------------------------


def test_sqlite_urls_follow_sqlalchemy() -> None:
    assert sqlite_path("sqlite:///.tether/registry.db") == ".tether/registry.db"
    assert sqlite_path("sqlite:///rel/dir/r.db") == "rel/dir/r.db"
    assert sqlite_path("sqlite:////abs/dir/r.db") == "/abs/dir/r.db"


def test_etcd_urls() -> None:
    assert etcd_endpoints("etcd://a:2379/svc") == ([("a", 2379)], "/svc")
    assert etcd_endpoints("etcd://a:1,b:2,10.0.0.3:3/x/y/") == (
        [("a", 1), ("b", 2), ("10.0.0.3", 3)], "/x/y")
    assert etcd_endpoints("etcd://a:2379") == ([("a", 2379)], "/tether")
    assert etcd_endpoints("etcd://[::1]:2379/p") == ([("::1", 2379)], "/p")


@pytest.mark.parametrize("url", [
    "sqlite://relative.db", "sqlite://", "sqlite:/x.db",
    "etcd://", "etcd://host/prefix", "etcd://host:port/p", "etcd://:2379/p",
    "etcd://a:2379,/p", "etcd://a:0/p", "etcd://a:70000/p", "etcd://a:2379/p?x=1",
    "zookeeper://a:2181", "nonsense", "",
])
def test_bad_registry_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_registry(url)


def test_open_registry_opens_each_backend(tmp_path: Path) -> None:
    from tether.registry.etcd import EtcdRegistry
    from tether.registry.memory import MemoryRegistry
    from tether.registry.sqlite import SQLiteRegistry

    etcd = open_registry("etcd://127.0.0.1:1,127.0.0.1:2/p")
    assert isinstance(etcd, EtcdRegistry)
    assert etcd.endpoints == [("127.0.0.1", 1), ("127.0.0.1", 2)] and etcd.prefix == "/p"
    assert isinstance(open_registry(f"sqlite:///{tmp_path}/r.db"), SQLiteRegistry)
    assert isinstance(open_registry(f"memory://{uuid.uuid4().hex}"), MemoryRegistry)


# -- 1. register -> seen; deregister -> gone; the first snapshot is full ----------------


@backends(*BACKENDS)
async def test_register_watch_deregister(registry_url: str) -> None:
    async with opened(registry_url) as owner, opened(registry_url) as reader:
        a = await owner.register("api", "127.0.0.1:1001", {"zone": "a"}, ttl=5)
        b = await owner.register("api", "127.0.0.1:1002", {"zone": "b"}, ttl=5)
        await owner.register("other", "127.0.0.1:2001", ttl=5)
        async with watching(reader, "api") as w1, watching(reader, "api") as w2:
            await w1.until(lambda s: True, what="a first snapshot")
            await w2.until(lambda s: True, what="a first snapshot")
            for w in (w1, w2):  # the first snapshot is already the whole set
                first = w.snapshots[0]
                assert isinstance(w.events[0][1], Snapshot)
                assert first.providers == frozenset({a.provider, b.provider})
                assert first.service == "api"
                assert {p.meta["zone"] for p in first.providers} == {"a", "b"}

            c = await owner.register("api", "127.0.0.1:1003", ttl=5)
            for w in (w1, w2):
                await w.until(has("127.0.0.1:1003"), what="the new provider")
                assert w.last is not None
                assert w.last.providers == frozenset({a.provider, b.provider, c.provider})

            await owner.deregister(a)
            for w in (w1, w2):
                await w.until(lacks("127.0.0.1:1001"), what="the deregistered one gone")
                assert w.last is not None
                assert w.last.providers == frozenset({b.provider, c.provider})
                revisions = [s.revision for s in w.snapshots]
                assert revisions == sorted(revisions)
                assert not w.unreachable()

        rows = await reader.list("api")
        assert [p for p, _ in rows] == sorted([b.provider, c.provider], key=lambda p: p.address)
        assert all(0 <= left <= 5 for _, left in rows)
        everything = {p.service for p, _ in await reader.list()}
        assert everything == {"api", "other"}


@backends(*BACKENDS)
async def test_a_new_registration_at_the_same_address_is_a_new_provider(
    registry_url: str,
) -> None:
    async with opened(registry_url) as owner, opened(registry_url) as reader:
        first = await owner.register("api", "127.0.0.1:1001", ttl=5)
        async with watching(reader, "api") as w:
            await w.until(has("127.0.0.1:1001"))
            await owner.deregister(first)
            await w.until(lambda s: not s.providers, what="an explicit empty snapshot")
            second = await owner.register("api", "127.0.0.1:1001", ttl=5)
            await w.until(lambda s: s.providers == {second.provider}, what="the new one")
            assert first.provider.registration != second.provider.registration
            assert not w.unreachable()


@backends(*BACKENDS)
async def test_entry_of_an_owner_that_stopped_refreshing_expires(registry_url: str) -> None:
    """The in-process half of proof 2: no deregistration, only the TTL."""
    async with opened(registry_url) as owner, opened(registry_url) as reader:
        kept = await owner.register("api", "127.0.0.1:1001", ttl=1)
        stays = await owner.register("api", "127.0.0.1:1002", ttl=1)
        async with watching(reader, "api") as w:
            await w.until(lambda s: len(s.providers) == 2)
            assert isinstance(kept, KeptRegistration)
            await kept.stop()  # the owner "crashed": no refresh, no deregister
            stopped = time.monotonic()
            gone = await w.until(lacks("127.0.0.1:1001"), timeout=5, what="expiry")
            assert gone - stopped <= 1 + 1 / 3 + EXPIRY_ALLOWANCE
            assert w.last is not None and w.last.providers == {stays.provider}
            # the refreshed one is still there after several TTLs
            await wait_for(lambda: time.monotonic() - stopped > 2, 5, "two TTLs of refreshes")
            assert (await reader.list("api"))[0][0] == stays.provider


# -- 2. kill -9 a registered server -----------------------------------------------------


@backends(*PROCESS_BACKENDS)
async def test_kill_9_server_entry_gone_within_ttl(registry_url: str) -> None:
    with registry_server(registry_url, "hello", "--registry-ttl", "1") as server, \
            reaping(lambda: worker_pids(server)):
        addr = registered_line(server)
        async with opened(registry_url) as reader, watching(reader, "hello") as w:
            await w.until(has(addr))
            workers = worker_pids(server)
            os.kill(server.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            gone = await w.until(lacks(addr), timeout=10, what="the killed server's entry gone")
            assert gone - killed <= 1 + 1 / 3 + EXPIRY_ALLOWANCE, gone - killed
            assert w.last is not None and not w.last.providers
            assert not w.unreachable()
        # its workers noticed their supervisor was gone and left too
        await wait_for(lambda: not any(_alive(p) for p in workers), 15, "orphan workers to exit")


# -- 3. graceful stop: gone before the drain finishes -----------------------------------


@backends(*PROCESS_BACKENDS)
async def test_graceful_stop_leaves_registry_before_draining(
    registry_url: str, tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with registry_server(
        registry_url, "life", "--admin-port", "0", "--graceful-timeout", "10",
        app="apps.lifecycle_app:app", cwd=TESTS, env={"LIFECYCLE_MARKS": str(marks)},
    ) as server:
        addr = registered_line(server)
        async with opened(registry_url) as reader, watching(reader, "life") as w, \
                httpx.AsyncClient(timeout=30) as client:
            await w.until(has(addr))
            slow = asyncio.create_task(client.get(f"{server.url}/slow?s=2"))
            await wait_for(lambda: in_flight(server) == 1, 10, "the slow request in flight")
            server.proc.send_signal(signal.SIGTERM)
            gone = await w.until(lacks(addr), timeout=10, what="the stopping server gone")
            assert not slow.done(), "the entry outlived the in-flight request"
            response = await slow
            finished = time.monotonic()
            assert response.status_code == 200
            assert gone < finished
            assert not w.unreachable()
        assert server.proc.wait(15) == 0
        output = server.output()
        assert output.index("deregistered") < output.index("stop begun")
        assert "1 request(s) drained, 0 cancelled" in output


def in_flight(server: ServerProcess) -> int:
    """Requests in flight in the server's workers (the supervisor's /status)."""
    line = server.wait_for_line("admin listening on http://")
    admin = line.strip().rsplit(" ", 1)[1]
    body = httpx.get(f"{admin}/status", timeout=5).json()
    return sum(int(w["in_flight"]) for w in body["workers"])


# -- reload: the registration stays -----------------------------------------------------


@backends(*PROCESS_BACKENDS)
async def test_reload_does_not_deregister(registry_url: str) -> None:
    with registry_server(registry_url, "hello", "--registry-ttl", "1",
                         "--workers", "2") as server:
        addr = registered_line(server)
        async with opened(registry_url) as reader, watching(reader, "hello") as w:
            await w.until(has(addr))
            assert w.last is not None
            (before,) = w.last.providers
            server.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for_line, "reload finished")
            server.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: server.output().count("reload finished") == 2, 20,
                           "the second reload")
            # a few refresh periods after the reloads, still the same registration
            rows = await reader.list("hello")
            assert [p for p, _ in rows] == [before]
            assert [s.providers for s in w.snapshots] == [frozenset({before})]
            assert not w.unreachable()
        assert "deregistered" not in server.output()
        assert server.stop() == 0
        assert "deregistered" in server.output()


# -- 4. etcd restarted under a watcher --------------------------------------------------


@pytest.mark.parametrize("wipe", [False, True], ids=["data-kept", "data-lost"])
@backends("etcd")
async def test_etcd_restart_under_a_watcher(
    registry_url: str, etcd_server: EtcdServer, wipe: bool,
) -> None:
    """etcd goes away (and, in the data-lost case, comes back empty, so every lease is
    gone): the watcher says Unreachable, keeps its last snapshot, then shows exactly
    the providers whose owners are alive, re-registered by the owners themselves. One
    owner is killed while etcd is down: it must not come back."""
    with registry_server(registry_url, "hello", "--registry-ttl", "1") as stays, \
            registry_server(registry_url, "hello", "--registry-ttl", "1") as dies, \
            reaping(lambda: worker_pids(dies)):
        kept_addr, dead_addr = registered_line(stays), registered_line(dies)
        async with opened(registry_url) as reader, watching(reader, "hello") as w:
            await w.until(lambda s: s.addresses == {kept_addr, dead_addr})
            assert w.last is not None
            before = w.last
            try:
                etcd_server.stop()
                lost_at = await w.until_event(lambda e: isinstance(e, Unreachable), 10,
                                              "Unreachable")
                os.kill(dies.proc.pid, signal.SIGKILL)  # dies while etcd is down
                # the living owner noticed too (its keep-alive failed) before etcd returns
                await asyncio.to_thread(stays.wait_for_line, "cannot refresh registration")
                if wipe:
                    shutil.rmtree(etcd_server.data_dir)
            finally:
                restarting_at = time.monotonic()
                await asyncio.to_thread(etcd_server.start)
            await w.until(lambda s: s.addresses == {kept_addr}, 15, "exactly the living owner")
            # Unreachable once, and no snapshot at all while etcd was down: the watcher's
            # owner keeps the last one (which had both providers)
            assert len(w.unreachable()) == 1
            assert w.snapshots[-1] is w.last
            while_down = [e for t, e in w.events if lost_at <= t < restarting_at]
            assert [type(e) for e in while_down] == [Unreachable]
            assert before.addresses == {kept_addr, dead_addr}
            after = [s for t, s in w.events if t >= restarting_at and isinstance(s, Snapshot)]
            if not wipe:  # etcd kept the keys: nothing was ever missing
                assert all(kept_addr in s.addresses for s in after)
            assert w.last is not None
            (provider,) = w.last.providers
            assert provider in before.providers  # the same registration, put back
        if wipe:  # etcd forgot the lease: the owner's keep-alive put it back
            await asyncio.to_thread(stays.wait_for_line, "had expired: registered again")
        else:  # etcd kept the lease (and extended it on restart): refreshed again
            await asyncio.to_thread(stays.wait_for_line, "refreshed again")
        assert stays.output().count("cannot refresh registration") == 1  # said once


# -- 5. scale: 50 services x 20 providers from several processes ------------------------


SERVICES, PROVIDERS, PROCESSES = 50, 20, 4


@backends(*BACKENDS)
async def test_many_services_from_many_processes_converge(registry_url: str) -> None:
    expected = {f"svc-{s}": frozenset(share_address(s, p) for p in range(PROVIDERS))
                for s in range(SERVICES)}
    owners = {f"svc-{s}": {share_address(s, p): str((s * PROVIDERS + p) % PROCESSES)
                           for p in range(PROVIDERS)} for s in range(SERVICES)}
    async with opened(registry_url) as reader, contextlib.AsyncExitStack() as stack:
        early = [await stack.enter_async_context(watching(reader, s)) for s in expected]
        async with registering(registry_url) as finished:
            late = [await stack.enter_async_context(watching(reader, s)) for s in expected]
            for w in early + late:
                await w.until(exactly(expected[w.service]), 30, "the exact set")
                assert w.last is not None
                assert {p.address: p.meta["owner"] for p in w.last.providers} == \
                    owners[w.service]
                assert not w.unreachable()
            assert len(await reader.list()) == SERVICES * PROVIDERS
            await finished()  # every owner deregistered its share
        for w in early + late:
            await w.until(lambda s: not s.providers, 30, "every provider gone")


@contextlib.asynccontextmanager
async def registering(url: str) -> AsyncIterator[Callable[[], Any]]:
    """PROCESSES owners register their share (processes; tasks for memory://); yields
    once all are registered a coroutine function that makes them deregister and waits
    until they have. Leaving the block kills what is left."""
    ttl = "10"
    if url.startswith("memory://"):
        registry = open_registry(url)
        try:
            handles = [
                h for i in range(PROCESSES) for h in
                await register_share(registry, i, PROCESSES, SERVICES, PROVIDERS, float(ttl))
            ]

            async def deregistered() -> None:
                await asyncio.gather(*(registry.deregister(h) for h in handles))

            yield deregistered
        finally:
            await registry.close()
        return
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.apps.registry_share", url, str(i), str(PROCESSES),
             str(SERVICES), str(PROVIDERS), ttl],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        lines = await asyncio.gather(*(
            asyncio.wait_for(asyncio.to_thread(_readline, p), 60) for p in procs))
        assert all(line.startswith("registered ") for line in lines), lines
        total = sum(int(line.split()[1]) for line in lines)
        assert total == SERVICES * PROVIDERS

        async def done() -> None:
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()
            codes = await asyncio.gather(*(asyncio.to_thread(p.wait, 60) for p in procs))
            assert codes == [0] * PROCESSES

        yield done
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


# -- unreachable at start ---------------------------------------------------------------


def test_registry_required_with_unreachable_etcd_exits_quickly() -> None:
    url = f"etcd://127.0.0.1:{free_port()}/nobody"  # nothing listens there
    started = time.monotonic()
    result = run_tether("serve", "hello:app", "--port", "0", "--registry", url,
                        "--service", "hello", "--registry-required", timeout=30)
    assert result.returncode != 0
    assert time.monotonic() - started < 10
    assert "cannot register hello" in result.stderr
    assert "unreachable" in result.stderr


async def test_unreachable_registry_serves_logs_once_and_registers_later(
    etcd_server: EtcdServer,
) -> None:
    """Without --registry-required: serve anyway, say so once, keep retrying, register
    as soon as etcd is there."""
    url = etcd_server.url(f"/t-{uuid.uuid4().hex[:12]}")
    etcd_server.stop()
    try:
        with registry_server(url, "hello") as server:
            server.wait_for_line("serving without being registered")
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(server.url)).status_code == 200
            # let the retry loop fail a few times (0.2 + 0.4 + 0.8 s) before etcd returns
            first = time.monotonic()
            await wait_for(lambda: time.monotonic() - first > 1.5, 5, "a few retries")
            await asyncio.to_thread(etcd_server.start)
            await asyncio.to_thread(server.wait_for_line, "the registry is reachable again")
            addr = registered_line(server)
            async with opened(url) as reader:
                assert [p.address for p, _ in await reader.list("hello")] == [addr]
            output = server.output()
            assert output.count("cannot register hello") == 1, output
            assert output.count("serving without being registered") == 1, output
    finally:
        if not etcd_server.running:
            etcd_server.start()


async def test_etcd_unreachable_is_typed(etcd_server: EtcdServer) -> None:
    """register/list raise RegistryUnreachable; a watch yields Unreachable, never an
    empty snapshot; a second endpoint that works is used."""
    dead = f"127.0.0.1:{free_port()}"
    async with opened(f"etcd://{dead}/x") as registry:
        with pytest.raises(RegistryUnreachable):
            await registry.register("api", "127.0.0.1:1", ttl=1)
        with pytest.raises(RegistryUnreachable):
            await registry.list()
        async with watching(registry, "api") as w:
            await w.until_event(lambda e: isinstance(e, Unreachable), 5, "Unreachable")
            assert not w.snapshots
    prefix = f"/t-{uuid.uuid4().hex[:12]}"
    async with opened(f"etcd://{dead},{etcd_server.endpoint}{prefix}") as registry:
        registration = await registry.register("api", "127.0.0.1:1", ttl=1)
        async with watching(registry, "api") as w:
            await w.until(has("127.0.0.1:1"))
        assert [p for p, _ in await registry.list("api")] == [registration.provider]
        await registry.deregister(registration)
        assert await registry.list("api") == []


# -- the CLI ------------------------------------------------------------------------------


@backends(*PROCESS_BACKENDS)
async def test_registry_ls_and_watch_commands(registry_url: str) -> None:
    async with opened(registry_url) as owner:
        registration = await owner.register("api", "127.0.0.1:4242", {"zone": "z1"}, ttl=30)
        result = run_tether("registry", "ls", "--registry", registry_url, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.splitlines()
        assert header.split() == ["SERVICE", "ADDRESS", "TTL", "LEFT", "METADATA"]
        assert len(rows) == 1 and rows[0].split()[:2] == ["api", "127.0.0.1:4242"]
        assert rows[0].split()[-1] == "zone=z1"
        assert run_tether("registry", "ls", "nothing", "--registry", registry_url,
                          cwd=ROOT).stdout.splitlines()[1:] == []

        proc = subprocess.Popen(
            tether_command("registry", "watch", "api", "--registry", registry_url),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            first = await asyncio.wait_for(asyncio.to_thread(_readline, proc), 20)
            assert re.search(r"api rev \d+: 127\.0\.0\.1:4242$", first.strip()), first
            await owner.deregister(registration)
            second = await asyncio.wait_for(asyncio.to_thread(_readline, proc), 20)
            assert second.strip().endswith("(no providers)"), second
        finally:
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def test_registry_ls_unreachable_etcd_fails_clearly() -> None:
    result = run_tether("registry", "ls", "--registry",
                        f"etcd://127.0.0.1:{free_port()}/x", cwd=ROOT)
    assert result.returncode != 0
    assert "unreachable" in result.stderr


def test_provider_address_parts() -> None:
    provider = Provider("api", "[::1]:8080")
    assert (provider.host, provider.port) == ("::1", 8080)


async def test_sqlite_watch_cancelled_mid_poll_closes_its_connection_after_the_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watch cancelled while its poll runs on the registry's thread must not close
    the connection under that call (closing it mid-statement crashed a test run with
    a segfault inside sqlite3). It is closed right after the poll, on that thread."""
    import sqlite3
    import threading

    from tether.registry import sqlite as sqlite_mod
    from tether.registry.base import Snapshot

    real = sqlite_mod._data_version
    polls: list[sqlite3.Connection] = []
    in_slow_poll = threading.Event()
    outcome: list[str] = []

    def slow_second_poll(db: sqlite3.Connection) -> int:
        polls.append(db)
        if len(polls) == 2:
            in_slow_poll.set()
            time.sleep(0.3)  # the cancel arrives while this call runs
            try:
                return real(db)
            except sqlite3.ProgrammingError as exc:  # closed under us
                outcome.append(f"error: {exc}")
                raise
            finally:
                outcome.append("done")
        return real(db)

    monkeypatch.setattr(sqlite_mod, "_data_version", slow_second_poll)
    registry = sqlite_mod.SQLiteRegistry(str(tmp_path / "registry.db"))
    try:
        watch = registry.watch("svc")
        assert isinstance(watch, AsyncGenerator)
        assert isinstance(await anext(watch), Snapshot)

        async def next_event() -> object:
            return await anext(watch)

        polling = asyncio.create_task(next_event())
        await wait_for(in_slow_poll.is_set, 5, "the second poll")
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await watch.aclose()
        await wait_for(lambda: "done" in outcome, 5, "the slow poll to return")
        assert outcome == ["done"], outcome
        await registry._run(lambda: None)  # whatever was queued behind it has run
        with pytest.raises(sqlite3.ProgrammingError):
            polls[-1].execute("SELECT 1")  # and the watch's connection is closed
    finally:
        await registry.close()


async def test_sqlite_registry_closed_under_an_open_watch(tmp_path: Path) -> None:
    """Closing the registry closes the connections of watches still open (on the
    registry's thread), and such a watch then ends with a clear RegistryError."""
    from tether.registry.base import RegistryError, Snapshot
    from tether.registry.sqlite import SQLiteRegistry

    registry = SQLiteRegistry(str(tmp_path / "registry.db"))
    watch = registry.watch("svc")
    assert isinstance(watch, AsyncGenerator)
    try:
        assert isinstance(await anext(watch), Snapshot)
        assert len(registry._watching) == 1
        await registry.close()
        assert registry._watching == set()
        with pytest.raises(RegistryError, match="is closed"):
            await anext(watch)
    finally:
        await watch.aclose()
        await registry.close()


def test_a_registry_client_that_cannot_even_load_is_said_once_and_served_through(
        tmp_path: Path) -> None:
    """A registration that fails inside the client library (here: its import, shadowed by
    a broken module first on the path, as examples/grpc once shadowed grpcio for aetcd)
    is logged once with its cause, and the service keeps serving, unregistered."""
    (tmp_path / "aetcd.py").write_text("raise ImportError('broken install')\n")
    with tether_process("serve", "hello:app", "--app-dir", str(EXAMPLES), "--port", "0",
                        "--registry", "etcd://127.0.0.1:9/t", "--service", "hello",
                        cwd=tmp_path, env=dict(os.environ)) as server:
        line = server.wait_for_line("cannot register hello")
        assert "needs the etcd client" in line and "broken install" in line
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
        server.wait_for_line("serving without being registered")
        assert server.output().count("cannot register hello") == 1
