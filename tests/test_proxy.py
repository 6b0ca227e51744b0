"""``tether proxy`` against real processes, real sockets (127.0.0.1) and real clients.

Every upstream is a ``tether serve`` process running ``tests/apps/proxy_upstream.py``
(or, where tether serve would hide what is being tested, a tiny raw HTTP server in
a thread of the test); every proxy is a real ``python -m tether proxy --listen
127.0.0.1:0`` supervisor with its workers; clients are httpx, curl and raw sockets.

Proved here: bodies stream both ways without being held (the proxy worker's RSS is
sampled during 50 MB transfers, chunked and with a Content-Length; curl's
``Expect: 100-continue``); hop-by-hop headers are dropped both ways and end-to-end
ones kept, repeated ones too, in order; Forwarded / X-Forwarded-* / Via;
longest-prefix routing; a client that leaves cancels the upstream handler within
200 ms; upstream TLS with a server name per route; upstream connections are reused
under load (10,000 requests by ``curl --parallel``, read back from the admin
``/metrics``); failures map to 502/503/504 before the response starts and to a
closed connection after; configuration errors exit 2 naming the problem; a SIGHUP
reload loses no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.proxy_upstream import CHUNK, pattern
from tests.support import ServerProcess, free_port, tether_command, tether_process

TESTS = Path(__file__).resolve().parent
UPSTREAM_APP = "apps.proxy_upstream:app"
#: seconds any single HTTP exchange of the test may take before it is a failure
HTTP_TIMEOUT = 30.0
MB = 1024 * 1024


# -- processes ----------------------------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any TETHER_* variable (they would change the flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(extra or {})
    return env


@dataclass
class Tether:
    """A running ``tether serve`` or ``tether proxy`` supervisor."""

    process: ServerProcess
    port: int
    scheme: str = "http"
    admin: str | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.proc.pid


@contextlib.contextmanager
def tether(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0
           ) -> Iterator[Tether]:
    """Run ``python -m tether ARGS`` (cwd: tests/); yield once it serves."""
    with tether_process(*args, cwd=TESTS, env=_env(env), timeout=timeout) as running:
        line = running.wait_for_line("serving on http", timeout).strip()
        scheme = line.rsplit(" ", 1)[1].split("://", 1)[0]
        admin = None
        if "--admin-port" in args:
            admin = running.wait_for_line("admin listening on http://", timeout).split()[-1]
        yield Tether(running, running.port, scheme, admin)


@contextlib.contextmanager
def upstream(name: str, marks: Path, *extra: str) -> Iterator[Tether]:
    """``tether serve`` of the upstream app, answering as ``name``."""
    with tether("serve", UPSTREAM_APP, "--port", "0", "--no-access-log", *extra,
                env={"PROXY_UPSTREAM_NAME": name, "PROXY_MARKS": str(marks)}) as running:
        yield running


@contextlib.contextmanager
def proxy(*args: str) -> Iterator[Tether]:
    """``tether proxy --listen 127.0.0.1:0 ARGS``."""
    with tether("proxy", "--listen", "127.0.0.1:0", "--no-access-log", *args) as running:
        yield running


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the upstream handlers leave their marks (cancellations, deadlines)."""
    return tmp_path_factory.mktemp("proxy-marks")


@pytest.fixture(scope="module")
def upstream_a(marks: Path) -> Iterator[Tether]:
    with upstream("A", marks) as running:
        yield running


@pytest.fixture(scope="module")
def upstream_b(marks: Path) -> Iterator[Tether]:
    with upstream("B", marks) as running:
        yield running


# -- a raw upstream, for what tether serve would not put on the wire -----------------------------


Responder = Callable[[str, str], bytes | None]


class RawUpstream:
    """A minimal HTTP/1.1 server on its own thread and event loop.

    ``respond(method, target)`` returns the raw response bytes to write, or None to
    close the connection without answering; with ``close_after`` the connection is
    closed after every answer (so a response cut short ends there). Request bodies
    (Content-Length only) are read and ignored. Requests seen are in ``requests``.
    """

    def __init__(self, respond: Responder, *, close_after: bool = False) -> None:
        self.respond = respond
        self.close_after = close_after
        self.port = 0
        self.requests: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("the raw upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                self.requests.append((method, target))
                answer = self.respond(method, target)
                if answer is None:
                    return  # close without a word
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


def _healthz_or(answer: bytes | None) -> Responder:
    """Answer the proxy's health probes with 200 and every other request with ``answer``."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

    def respond(method: str, target: str) -> bytes | None:
        return ok if target == "*" or target.endswith("/healthz") else answer

    return respond


# -- small helpers --------------------------------------------------------------------------------


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Await ``check()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def admin_json(admin: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        status: dict[str, Any] = (await client.get(f"{admin}/status")).json()
        return status


async def scrape(admin: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` parsed by the reference parser: sample name -> [(labels, value)]."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{admin}/metrics")).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def headers_of(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The echo handler's header list as name -> values."""
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name, []).append(value)
    return out


async def ready_worker_pids(admin: str, count: int) -> list[int]:
    pids: list[int] = []

    async def check() -> bool:
        nonlocal pids
        workers = (await admin_json(admin))["workers"]
        pids = [w["pid"] for w in workers if w["state"] == "ready"]
        return len(pids) == count and len(workers) == count

    await poll(check, 20, f"{count} ready worker(s) in /status")
    return pids


class PeakRss:
    """Samples a process's RSS on a thread (every ~2 ms) while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.before: int = self.process.memory_info().rss
        self.peak: int = self.before
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            self._done.wait(0.002)  # the sampling period, not a synchronisation

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.before


# -- 1. streaming both ways, in bounded memory --------------------------------------------------

TRANSFER = 50 * MB
#: how much the proxy worker's RSS may grow during a 50 MB transfer. Streaming needs
#: a few 64 KiB buffers; holding the body would need >= 50 MB.
RSS_BOUND = 20 * MB


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_streams_50mb_both_ways_in_bounded_memory(
    upstream_a: Tether, framing: str
) -> None:
    with proxy("--route", f"/={upstream_a.address}", "--admin-port", "0") as px:
        assert px.admin is not None
        [worker] = await ready_worker_pids(px.admin, 1)
        rng = random.Random(1)
        chunks = [rng.randbytes(CHUNK) for _ in range(16)]  # 1 MiB of distinct blocks

        async def body(size: int, digest: Any) -> AsyncIterator[bytes]:
            sent = 0
            while sent < size:
                piece = chunks[(sent // CHUNK) % len(chunks)][: size - sent]
                digest.update(piece)
                sent += len(piece)
                yield piece

        async with httpx.AsyncClient(base_url=px.url, timeout=HTTP_TIMEOUT) as client:

            async def upload(size: int) -> tuple[dict[str, Any], str]:
                digest = hashlib.sha256()
                headers = {} if framing == "chunked" else {"content-length": str(size)}
                r = await client.post("/upload", content=body(size, digest), headers=headers)
                assert r.status_code == 200, r.text
                return r.json(), digest.hexdigest()

            async def download(size: int) -> tuple[int, str]:
                digest, count = hashlib.sha256(), 0
                async with client.stream("GET", "/download", params={"size": size}) as r:
                    assert r.status_code == 200
                    async for piece in r.aiter_raw():
                        digest.update(piece)
                        count += len(piece)
                return count, digest.hexdigest()

            # Warm up (imports, pools, buffers) so the baseline is the steady state.
            await download(2 * MB)
            await upload(2 * MB)

            with PeakRss(worker) as up_rss:
                answer, sent_sha = await upload(TRANSFER)
            assert answer == {"count": TRANSFER, "sha256": sent_sha}, (
                f"the upstream received {answer['count']} of {TRANSFER} bytes ({framing})")

            with PeakRss(worker) as down_rss:
                count, got_sha = await download(TRANSFER)
            expected = hashlib.sha256()
            for _ in range(TRANSFER // CHUNK):
                expected.update(pattern(CHUNK))
            assert count == TRANSFER
            assert got_sha == expected.hexdigest()

        for what, rss in (("upload", up_rss), ("download", down_rss)):
            assert rss.samples > 10, f"{what}: too few RSS samples ({rss.samples})"
            assert rss.growth < RSS_BOUND, (
                f"{what}: proxy worker RSS grew {rss.growth / MB:.1f} MB during a "
                f"{TRANSFER // MB} MB transfer (bound {RSS_BOUND // MB} MB)")


async def test_curl_upload_with_expect_100_continue(upstream_a: Tether, tmp_path: Path) -> None:
    """curl holds a large body back until it sees ``100 Continue``: the proxy must
    send one (by reading the body) and carry the body through."""
    data = random.Random(2).randbytes(3 * MB)
    (tmp_path / "body").write_bytes(data)
    with proxy("--route", f"/={upstream_a.address}") as px:
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "20", "-H", "Expect: 100-continue",
            "--data-binary", f"@{tmp_path / 'body'}", f"{px.url}/upload",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await curl.communicate()
    assert curl.returncode == 0, err.decode()
    assert json.loads(out) == {"count": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- 2. hop-by-hop headers ---------------------------------------------------------------------

HOP_REQUEST = {
    "Connection": "keep-alive, X-Secret",
    "X-Secret": "1",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Proxy-Authorization": "x",
    "Proxy-Connection": "keep-alive",
    "Upgrade": "foo",
}
END_TO_END = {"X-Custom": "1", "Authorization": "Bearer t0ken"}
HOP_NAMES = {name.lower() for name in HOP_REQUEST}


async def test_hop_by_hop_request_headers_are_dropped(upstream_a: Tether) -> None:
    with proxy("--route", f"/={upstream_a.address}") as px:
        # curl
        args = ["curl", "-sS", "--max-time", "10", f"{px.url}/echo"]
        for name, value in {**HOP_REQUEST, **END_TO_END}.items():
            args += ["-H", f"{name}: {value}"]
        curl = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await curl.communicate()
        assert curl.returncode == 0, err.decode()
        # httpx
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.get(f"{px.url}/echo", headers={**HOP_REQUEST, **END_TO_END})
            assert r.status_code == 200
        for client_name, echo in (("curl", json.loads(out)), ("httpx", r.json())):
            seen = headers_of(echo)
            # The proxy's client may send a Connection header of its own, naming nothing.
            tokens = {t.strip().lower() for v in seen.pop("connection", []) for t in v.split(",")}
            assert tokens <= {"keep-alive", "close"}, f"{client_name}: Connection: {tokens}"
            leaked = HOP_NAMES & set(seen)
            assert not leaked, f"{client_name}: hop-by-hop headers reached the upstream: {seen}"
            for name, value in END_TO_END.items():
                assert seen.get(name.lower()) == [value], (client_name, seen)


async def test_hop_by_hop_response_headers_are_dropped() -> None:
    body = b'{"ok": true}'
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: keep-alive, X-Resp\r\n"
        b"X-Resp: 1\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"Proxy-Authenticate: Basic realm=x\r\n"
        b"X-Kept: yes\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with RawUpstream(_healthz_or(answer)) as raw, proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.get(f"{px.url}/anything")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert ("GET", "/anything") in raw.requests
        for name in ("x-resp", "keep-alive", "proxy-authenticate"):
            assert name not in r.headers, f"{name} reached the client: {r.headers}"
        assert r.headers["x-kept"] == "yes"
        assert r.headers["via"] == "1.1 tether"
        # Any Connection header the client sees is the proxy's own, naming no header.
        tokens = {t.strip().lower() for t in r.headers.get("connection", "").split(",")}
        assert tokens <= {"", "close", "keep-alive"}, r.headers


async def test_repeated_request_headers_are_kept_in_order(upstream_a: Tether) -> None:
    """A list header sent on several lines is one list (RFC 9110 section 5.3): every
    line reaches the upstream, in order, and the proxy's own hop comes last."""
    with proxy("--route", f"/={upstream_a.address}") as px:
        args = ["curl", "-sS", "--max-time", "10", f"{px.url}/echo"]
        for name, value in (("X-Dup", "a"), ("X-Dup", "b"), ("X-Forwarded-For", "1.2.3.4"),
                            ("X-Forwarded-For", "5.6.7.8")):
            args += ["-H", f"{name}: {value}"]
        curl = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await curl.communicate()
        assert curl.returncode == 0, err.decode()
    seen = headers_of(json.loads(out))
    assert ", ".join(seen.get("x-dup", [])) == "a, b", seen
    assert ", ".join(seen.get("x-forwarded-for", [])) == "1.2.3.4, 5.6.7.8, 127.0.0.1", seen


# -- 3. forwarded headers and longest-prefix routing -------------------------------------------


async def test_forwarded_headers_and_via(upstream_a: Tether) -> None:
    with proxy("--route", f"/api={upstream_a.address}") as px:
        host = f"127.0.0.1:{px.port}"
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.get(f"{px.url}/api/echo", headers={"X-Forwarded-For": "1.2.3.4"})
        assert r.status_code == 200
        assert r.headers["via"] == "1.1 tether"
        seen = headers_of(r.json())
        assert seen["x-forwarded-for"] == ["1.2.3.4, 127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == [host]
        assert seen["forwarded"] == [f'for=127.0.0.1;proto=http;host="{host}"']
        assert len(seen["via"]) == 1 and "1.1 tether" in seen["via"][0]
        assert seen["host"] == [host]
        assert r.json()["path"] == "/api/echo"


async def test_the_client_cannot_forge_this_hop(upstream_a: Tether) -> None:
    """A Host cannot add Forwarded parameters (one that is not host[:port] is 400,
    as nginx answers); X-Forwarded-Proto/-Host describe the hop the proxy received,
    whatever the client claimed. (The client connects from 127.0.0.2: 127.0.0.1 is
    a trusted proxy by default, whose X-Forwarded-Proto the proxy would believe.)"""
    with proxy("--route", f"/api={upstream_a.address}") as px:
        forged = 'x";for=10.0.0.1;by="y'
        untrusted = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, transport=untrusted) as client:
            r = await client.get(f"{px.url}/api/echo", headers={"Host": forged})
            assert r.status_code == 400
            r = await client.get(f"{px.url}/api/echo", headers={
                "Host": "shop.example:8443", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil"})
        seen = headers_of(r.json())
        assert seen["forwarded"] == ['for=127.0.0.2;proto=http;host="shop.example:8443"']
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == ["shop.example:8443"]


def test_strip_prefix_strips_what_was_matched() -> None:
    from tether.proxy_config import Route

    route = Route("/api/orders", "orders", strip_prefix=True)
    assert route.upstream_path("/api/orders/7", "/api/orders/7") == "/7"
    assert route.upstream_path("/api/orders", "/api/orders") == "/"
    assert route.upstream_path("/api/orders/a%20b", "/api/orders/a b") == "/a%20b"
    # Spelled differently in the raw path: the decoded rest, encoded again.
    assert route.upstream_path("/api/%6Frders/7", "/api/orders/7") == "/7"
    assert route.upstream_path("/api/orders%2F7", "/api/orders/7") == "/7"


async def test_longest_prefix_routing(upstream_a: Tether, upstream_b: Tether) -> None:
    with proxy("--route", f"/api={upstream_a.address}",
               "--route", f"/api/orders={upstream_b.address}") as px:
        expected = {
            "/api/orders/7": "B", "/api/orders": "B", "/api/x": "A", "/api/ordersx": "A",
            "/api": "A",
        }
        async with httpx.AsyncClient(base_url=px.url, timeout=HTTP_TIMEOUT) as client:
            for path, name in expected.items():
                r = await client.get(path)
                assert r.status_code == 200, (path, r.text)
                assert r.json() == {"name": name, "path": path, "tls": None}, path
            r = await client.get("/other")
            assert r.status_code == 404
            assert "no route" in r.text


# -- 4. a client that leaves cancels the upstream handler --------------------------------------


async def test_client_disconnect_cancels_upstream_handler(
    upstream_a: Tether, marks: Path
) -> None:
    with proxy("--route", f"/={upstream_a.address}") as px:
        for attempt in range(3):
            token = f"disconnect-{os.getpid()}-{attempt}"
            mark = marks / f"cancelled-{token}"
            reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
            try:
                writer.write(f"GET /hang?token={token} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                await writer.drain()
                received = b""
                async with asyncio.timeout(10):
                    while b"first bytes" not in received:
                        piece = await reader.read(4096)
                        assert piece, f"connection closed early: {received!r}"
                        received += piece
                assert received.startswith(b"HTTP/1.1 200"), received
                assert not mark.exists()
            finally:
                closed_at = time.time()
                writer.close()
            await poll(functools.partial(_exists, mark), 5, "the upstream handler's cancellation")
            cancelled_at = float(mark.read_text())
            delay = cancelled_at - closed_at
            assert delay < 0.2, f"upstream handler cancelled {delay * 1000:.0f} ms after close"


async def _exists(path: Path) -> bool:
    return path.exists()


# -- 5. upstream TLS with a server name per route ----------------------------------------------


async def test_upstream_tls_with_sni_per_route(tmp_path: Path, marks: Path) -> None:
    ca = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    files: dict[str, tuple[str, str]] = {}
    for name in ("orders.internal", "users.internal"):
        leaf = ca.issue_cert(name)
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        files[name] = (str(cert), str(key))

    with contextlib.ExitStack() as stack:
        ups = {
            name: stack.enter_context(upstream(
                name.split(".")[0], marks, "--ssl-certfile", files[name][0],
                "--ssl-keyfile", files[name][1]))
            for name in files
        }
        assert all(u.scheme == "https" for u in ups.values())
        orders, users = ups["orders.internal"], ups["users.internal"]

        def tls_upstream(address: str, sni: str) -> str:
            return (f'providers = ["{address}"]\nscheme = "https"\n'
                    f'sni = "{sni}"\nca = "{ca_pem}"\n')

        config = tmp_path / "proxy.toml"
        config.write_text(
            '[[routes]]\nprefix = "/orders"\nupstream = "orders"\n\n'
            '[[routes]]\nprefix = "/users"\nupstream = "users"\n\n'
            '[[routes]]\nprefix = "/wrong"\nupstream = "wrong"\n\n'
            f"[upstreams.orders]\n{tls_upstream(orders.address, 'orders.internal')}\n"
            f"[upstreams.users]\n{tls_upstream(users.address, 'users.internal')}\n"
            # the orders provider, asked for the users name: its certificate does not match
            f"[upstreams.wrong]\n{tls_upstream(orders.address, 'users.internal')}\n"
        )
        px = stack.enter_context(proxy("--config", str(config)))
        async with httpx.AsyncClient(base_url=px.url, timeout=HTTP_TIMEOUT) as client:
            for _ in range(3):  # alternate: each route keeps its own name
                for route, sni in (("orders", "orders.internal"), ("users", "users.internal")):
                    r = await client.get(f"/{route}/who")
                    assert r.status_code == 200, r.text
                    who = r.json()
                    assert who["name"] == route
                    assert who["tls"] is not None and who["tls"]["server_name"] == sni, who
            # A certificate that does not match the route's server name is a broken
            # upstream (a misconfiguration), not an absent one: 502, not 503.
            r = await client.get("/wrong/who")
            assert r.status_code == 502, (
                f"a route whose sni does not match the upstream's certificate got "
                f"{r.status_code}: {r.text!r}")


# -- 6. upstream connections are reused under load ----------------------------------------------

LOAD_REQUESTS = 10_000
CONCURRENCY = 16
PROXY_WORKERS = 2


async def _request_loop(
    url: str, count: int, concurrency: int, stop: asyncio.Event
) -> tuple[int, list[str]]:
    """Send GETs with httpx from ``concurrency`` tasks over keep-alive connections
    until ``count`` were sent or ``stop`` is set; return (sent, failures)."""
    sent = 0
    failures: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < count and not stop.is_set():
            sent += 1
            try:
                r = await client.get(url)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    async with httpx.AsyncClient(limits=limits, timeout=HTTP_TIMEOUT) as client:
        await asyncio.gather(*(one(client) for _ in range(concurrency)))
    return sent, failures


async def curl_parallel(
    url: str, count: int, concurrency: int, directory: Path, timeout: float = 90.0
) -> list[tuple[int, int]]:
    """GET ``url`` ``count`` times with one ``curl --parallel`` (keep-alive connections,
    at most ``concurrency`` at once); return (status, connections opened) per transfer
    (status 0: the transfer failed)."""
    config = directory / "curl.cfg"
    config.write_text(f'url = "{url}"\noutput = "/dev/null"\n' * count)
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--parallel", "--parallel-max", str(concurrency), "--max-time", "30",
        "-K", str(config), "-w", "%{http_code} %{num_connects}\n",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await curl.communicate()
    finally:
        if curl.returncode is None:
            curl.kill()
            await curl.wait()
    results = [(int(code), int(connects))
               for code, connects in (line.split() for line in out.decode().splitlines())]
    assert len(results) == count, (len(results), err.decode()[-2000:])
    return results


async def test_connections_are_reused_under_load(
    upstream_a: Tether, upstream_b: Tether, tmp_path: Path
) -> None:
    with proxy("--route", f"/={upstream_a.address},{upstream_b.address}",
               "--workers", str(PROXY_WORKERS), "--admin-port", "0") as px:
        assert px.admin is not None
        admin = px.admin
        await ready_worker_pids(admin, PROXY_WORKERS)
        results = await curl_parallel(f"{px.url}/who", LOAD_REQUESTS, CONCURRENCY, tmp_path)
        failed = [code for code, _ in results if code != 200]
        assert failed == [], f"{len(failed)} of {LOAD_REQUESTS} failed: {failed[:10]}"
        # The client side kept its connections alive too.
        assert sum(connects for _, connects in results) <= CONCURRENCY

        samples: dict[str, list[tuple[dict[str, str], float]]] = {}

        async def counted() -> bool:
            nonlocal samples
            samples = await scrape(admin)
            return total(samples, "tether_client_requests_total") >= LOAD_REQUESTS

        await poll(counted, 10, "the proxy's heartbeats to count every request")
        requests = total(samples, "tether_client_requests_total")
        opened = total(samples, "tether_client_connections_opened_total")
        origins = {labels["origin"] for labels, _ in samples["tether_client_requests_total"]}
        assert origins == {f"http://{upstream_a.address}", f"http://{upstream_b.address}"}
        assert opened <= PROXY_WORKERS * CONCURRENCY, (
            f"{opened:.0f} upstream connections opened for {requests:.0f} requests")
        assert 1 - opened / requests >= 0.99, (opened, requests)
        for labels, ratio in samples["tether_client_connection_reuse_ratio"]:
            assert ratio >= 0.99, (labels, ratio)


# -- 7. failures map to 502 / 503 / 504 ---------------------------------------------------------


async def test_no_provider_alive_is_503() -> None:
    closed = free_port()  # nothing listens there
    with proxy("--route", f"/=127.0.0.1:{closed}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            started = time.monotonic()
            r = await client.get(f"{px.url}/who")
            elapsed = time.monotonic() - started
        assert r.status_code == 503, (r.status_code, r.text)
        assert elapsed < 5, f"503 took {elapsed:.1f}s"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upstream_closing_without_response_is_502(method: str) -> None:
    with RawUpstream(_healthz_or(None)) as raw, proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.request(method, f"{px.url}/vanish")
        assert r.status_code == 502, (r.status_code, r.text)
        assert (method, "/vanish") in raw.requests  # it did reach the upstream


async def test_route_timeout_is_504(upstream_a: Tether, marks: Path, tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[[routes]]\nprefix = "/"\ntimeout = 0.2\nproviders = ["{upstream_a.address}"]\n')
    with proxy("--config", str(config)) as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            await client.get(f"{px.url}/who")  # the cluster has probed its provider
            token = f"route-timeout-{os.getpid()}"
            started = time.monotonic()
            r = await client.get(f"{px.url}/slow", params={"token": token, "s": "2"})
            elapsed = time.monotonic() - started
        await _assert_504_with_deadline_upstream(r, elapsed, marks / f"deadline-{token}")


async def _assert_504_with_deadline_upstream(
    r: httpx.Response, elapsed: float, mark: Path
) -> None:
    """A 504 well before the upstream's 2 s, and the upstream saw a deadline < 200 ms."""
    assert r.status_code == 504, (r.status_code, r.text)
    assert elapsed < 1.0, f"504 took {elapsed:.2f}s"
    await poll(functools.partial(_exists, mark), 5, "the upstream handler's mark")
    seen = mark.read_text()
    assert seen != "none", "the upstream got no deadline header"
    assert 0 < int(seen) < 200, seen


async def test_client_deadline_is_504_and_travels_upstream(
    upstream_a: Tether, marks: Path
) -> None:
    with proxy("--route", f"/={upstream_a.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            await client.get(f"{px.url}/who")
            token = f"client-deadline-{os.getpid()}"
            started = time.monotonic()
            r = await client.get(f"{px.url}/slow", params={"token": token, "s": "2"},
                                 headers={"x-request-timeout-ms": "200"})
            elapsed = time.monotonic() - started
        await _assert_504_with_deadline_upstream(r, elapsed, marks / f"deadline-{token}")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_failing_mid_response_is_never_a_complete_response(
    framing: str
) -> None:
    """After the response started, an upstream failure closes the client's connection:
    a truncated body must never look complete (rule 5)."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" if framing == "content-length"
            else b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n")
    answer = head + b"0123456789"
    with RawUpstream(_healthz_or(answer), close_after=True) as raw, \
            proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("GET", f"{px.url}/cut") as r:
                    assert r.status_code == 200
                    async for _ in r.aiter_raw():
                        pass
        assert ("GET", "/cut") in raw.requests


# -- 8. configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no-routes", "bad-route", "toml-unknown-key",
                                  "toml-unknown-route-key", "service-without-registry",
                                  "bad-listen"])
def test_config_errors_exit_2(case: str, tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    args: list[str]
    if case == "no-routes":
        args, needle = [], "at least one route"
    elif case == "bad-route":
        args, needle = ["--route", "bad"], "'bad'"
    elif case == "toml-unknown-key":
        config.write_text('bogus = 1\n[[routes]]\nprefix = "/"\nproviders = ["127.0.0.1:9"]\n')
        args, needle = ["--config", str(config)], "unknown key(s) bogus"
    elif case == "toml-unknown-route-key":
        config.write_text('[[routes]]\nprefix = "/"\ntimout = 1\nproviders = ["127.0.0.1:9"]\n')
        args, needle = ["--config", str(config)], "routes[0]: unknown key(s) timout"
    elif case == "service-without-registry":
        args, needle = ["--route", "/orders=orders"], "--registry"
    else:
        args, needle = ["--listen", "nowhere", "--route", "/=127.0.0.1:9"], "--listen"
    if case != "bad-listen":
        args = ["--listen", "127.0.0.1:0", *args]
    done = subprocess.run(
        tether_command("proxy", *args), cwd=TESTS, env=_env(), capture_output=True, text=True,
        timeout=30,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if case == "service-without-registry":
        assert "'orders'" in done.stderr


# -- 9. a reload loses nothing -----------------------------------------------------------------


async def test_sighup_reload_loses_no_request(upstream_a: Tether, upstream_b: Tether) -> None:
    with proxy("--route", f"/={upstream_a.address},{upstream_b.address}",
               "--workers", "2", "--admin-port", "0") as px:
        assert px.admin is not None
        admin = px.admin
        old = set(await ready_worker_pids(admin, 2))
        stop = asyncio.Event()
        loop = asyncio.create_task(_request_loop(f"{px.url}/who", 20_000, 8, stop))
        try:
            async def traffic_flowing() -> bool:
                s = await admin_json(admin)
                return bool(sum(w["requests"] for w in s["workers"]) >= 200)

            await poll(traffic_flowing, 15, "traffic through the proxy")
            os.kill(px.pid, signal.SIGHUP)

            async def reloaded() -> bool:
                s = await admin_json(admin)
                pids = {w["pid"] for w in s["workers"]}
                return bool(s["reloads"] == 1 and len(pids) == 2 and not pids & old and all(
                    w["state"] == "ready" for w in s["workers"]))

            await poll(reloaded, 30, "the rolling reload to replace both workers")

            async def new_workers_served() -> bool:
                s = await admin_json(admin)
                return bool(sum(w["requests"] for w in s["workers"]) >= 200)

            await poll(new_workers_served, 15, "traffic through the new workers")
        finally:
            stop.set()
            sent, failures = await asyncio.wait_for(loop, 60)
        assert failures == [], f"{len(failures)} of {sent} failed, first: {failures[:3]}"
        assert sent >= 400

