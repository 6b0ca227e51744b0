"""Issue 14, the operator tools, on real processes: ``tether status --once`` piped
(wide) and on a terminal (its width); ``tether registry ls`` / ``watch`` naming the
registry they read and refusing one that does not exist; ``tether proxy --route
PREFIX=UPSTREAM,strip_prefix`` and ``--listen PORT``; the proxy's health probes
(``OPTIONS *``, answered by ``tether serve`` itself) leaving the providers' access
logs alone while a dead provider is still found out.

Every process is stopped (killed if need be) even when a test fails; every wait is
a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import EXAMPLES, free_port, run_tether, server_process, tether_command
from tests.test_cli import Tether as ServeProcess
from tests.test_cli import spawn
from tests.test_proxy import Tether, proxy
from tether.errors import ConfigError
from tether.proxy_config import parse_listen, parse_route_flag

HTTP_TIMEOUT = 30.0


def _env_without(*names: str) -> dict[str, str]:
    """This environment without TETHER_* variables and without ``names``."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("TETHER_") and k not in names}


def _status_of_proxy(admin: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{admin}/status", timeout=5).json()
    return body


def _provider_states(admin: str) -> dict[str, dict[str, int]]:
    """Every provider address the proxy's workers see, with their states."""
    return {p["address"]: p.get("states", {})
            for cluster in _status_of_proxy(admin).get("clusters", [])
            for p in cluster.get("providers", [])}


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- a proxy in front of two tether serve providers whose access logs are read ------------


@pytest.fixture(scope="module")
def provider_a() -> Iterator[ServeProcess]:
    with spawn("hello:app", "--port", "0") as running:  # access log on (stdout)
        yield running


@pytest.fixture(scope="module")
def provider_b() -> Iterator[ServeProcess]:
    with spawn("hello:app", "--port", "0") as running:
        yield running


@pytest.fixture(scope="module")
def front(provider_a: ServeProcess, provider_b: ServeProcess) -> Iterator[Tether]:
    """``tether proxy`` to both providers, with an admin port, routes:
    ``/`` to both, ``/api`` stripped to A only, ``/kept`` unstripped to A."""
    a, b = f"127.0.0.1:{provider_a.port}", f"127.0.0.1:{provider_b.port}"
    with proxy("--admin-port", "0", "--route", f"/={a},{b}",
               "--route", f"/api={a},strip_prefix", "--route", f"/kept={a}") as running:
        assert running.admin is not None
        admin = running.admin
        asyncio.run(_wait(
            lambda: {s for states in _provider_states(admin).values() for s in states}
            == {"alive"}, 20, "both providers alive"))
        yield running


def test_the_proxy_admin_port_serves_the_dashboard(front: Tether) -> None:
    """``tether proxy`` runs the same supervisor: its admin port has the dashboard,
    whose data shows the proxy's upstream clusters."""
    assert front.admin is not None
    page = httpx.get(f"{front.admin}/", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/dashboard.js" in page.text
    data = httpx.get(f"{front.admin}/dashboard/data", timeout=HTTP_TIMEOUT).json()
    providers = {p["address"] for c in data["status"]["clusters"] for p in c["providers"]}
    assert providers == set(_provider_states(front.admin))
    assert providers and {"history", "timeline", "worker_events"} <= set(data)


def test_route_flag_strips_the_prefix(front: Tether, provider_a: ServeProcess) -> None:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        stripped = client.get(f"{front.url}/api/json", params={"via": "api"})
        kept = client.get(f"{front.url}/kept/json", params={"via": "kept"})
    assert stripped.status_code == 200, stripped.text
    assert stripped.json()  # hello:app's /json
    assert kept.status_code == 404  # /kept/json reached the app as is
    provider_a.stdout.wait_for(r'"GET /json\?via=api" 200 ')
    provider_a.stdout.wait_for(r'"GET /kept/json\?via=kept" 404 ')


async def test_probes_stay_out_of_the_access_log_and_a_dead_provider_is_found(
    front: Tether, provider_a: ServeProcess, provider_b: ServeProcess
) -> None:
    """Both providers were probed (they are alive: only a probe makes a provider
    alive) and heartbeated; neither access log has a probe line. Killed, B is
    found out by the probes alone (no request is sent meanwhile) while A stays."""
    assert front.admin is not None
    admin = front.admin
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        for i in range(4):
            r = await client.get(f"{front.url}/json", params={"n": str(i)})
            assert r.status_code == 200
    b = f"127.0.0.1:{provider_b.port}"
    os.killpg(provider_b.proc.pid, signal.SIGKILL)
    provider_b.proc.wait(10)

    def b_not_alive() -> bool:
        return "alive" not in _provider_states(admin).get(b, {"alive": 1})

    # A heartbeat is due every 5 s; its failure takes B out.
    await _wait(b_not_alive, 30, "the killed provider to leave the alive state")
    assert set(_provider_states(admin)[f"127.0.0.1:{provider_a.port}"]) == {"alive"}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        r = await client.get(f"{front.url}/json", params={"marker": "last"})
        assert r.status_code == 200
    provider_a.stdout.wait_for(r'"GET /json\?marker=last" 200 ')  # the log is flushed to here
    for provider in (provider_a, provider_b):
        log = provider.stdout.text()
        probes = [line for line in log.splitlines() if "OPTIONS" in line or "healthz" in line]
        assert probes == [], probes
    # A served what it got through the proxy, and nothing else of the proxy's.
    assert all('"GET /' in line for line in provider_a.stdout.lines), provider_a.stdout.text()


def test_options_asterisk_is_answered_by_the_server(provider_a: ServeProcess) -> None:
    """What the probe gets from tether serve: 200 and Allow, without the app, and no
    access-log line (RFC 9110 section 9.3.7: a ping of the server)."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        # httpx cannot send asterisk-form; curl can.
        done = subprocess.run(
            ["curl", "-sS", "-i", "-X", "OPTIONS", "--request-target", "*",
             f"http://127.0.0.1:{provider_a.port}"],
            capture_output=True, timeout=HTTP_TIMEOUT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), done.stdout
        assert b"\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in done.stdout
        assert done.stdout.endswith(b"\r\n\r\n")  # no body
        client.get(f"{provider_a.url}/json", params={"after": "options"})
    provider_a.stdout.wait_for(r'"GET /json\?after=options" 200 ')
    assert "OPTIONS" not in provider_a.stdout.text()


# -- tether status --once -----------------------------------------------------------------


def _row_with(text: str, needle: str) -> str:
    rows = [line for line in text.splitlines() if needle in line]
    assert rows, text
    return rows[0]


def test_status_once_piped_is_not_cut(front: Tether) -> None:
    """Through a pipe (no terminal, no COLUMNS) the Clusters table, wider than 80
    columns, is printed whole: every column of a provider's row, no ellipsis."""
    assert front.admin is not None
    done = subprocess.run(tether_command("status", "--admin", front.admin, "--once"),
                          capture_output=True, text=True, timeout=HTTP_TIMEOUT,
                          env=_env_without("COLUMNS", "LINES", "FORCE_COLOR"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out  # no colours into a pipe
    assert "…" not in out, out
    header = _row_with(out, "provider")
    for column in ("service", "provider", "state", "requests", "retries", "ejections",
                   "evictions"):
        assert column in header, header
    assert len(header) > 80
    address = next(iter(_provider_states(front.admin)))
    row = _row_with(out, address)
    assert re.search(rf"│ {re.escape(address)} +│ \w+", row), row
    assert row.count("│") == header.count("┃"), (header, row)  # one line, every cell


def test_status_once_on_a_terminal_keeps_its_width(front: Tether) -> None:
    """On a 70-column terminal (a pty) no line is wider than 70."""
    assert front.admin is not None
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 70, 0, 0))
    try:
        proc = subprocess.Popen(tether_command("status", "--admin", front.admin, "--once"),
                                stdin=slave, stdout=slave, stderr=slave,
                                env=_env_without("COLUMNS", "LINES"), close_fds=True)
    finally:
        os.close(slave)
    try:
        chunks: list[bytes] = []
        deadline = time.monotonic() + HTTP_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(10) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    lines = text.replace("\r", "").splitlines()
    assert any("Clusters" in line for line in lines), text
    assert max(len(line) for line in lines) <= 70, text


# -- tether registry ls / watch ------------------------------------------------------------


@pytest.mark.parametrize("command", [["ls"], ["watch", "hello"]])
def test_registry_readers_refuse_a_registry_that_does_not_exist(
    command: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nothere" / "registry.db"
    url = f"sqlite:///{missing}"  # an absolute path: sqlite:////tmp/...
    done = run_tether("registry", *command, "--registry", url, timeout=HTTP_TIMEOUT)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"registry {url}: no registry file {missing} (tether serve --registry creates it" \
        in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_registry_ls_names_the_registry_a_server_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'registry.db'}"
    with server_process("hello:app", "--registry", url, "--service", "hello",
                        "--no-access-log") as server:
        server.wait_for_line("registered hello at")
        done = run_tether("registry", "ls", "hello", "--registry", url, timeout=HTTP_TIMEOUT)
    assert done.returncode == 0, done.stderr
    # The registry on stderr; stdout is the table alone, as scripts read it.
    assert done.stderr == f"registry {url}: 1 provider\n"
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "ADDRESS", "TTL", "LEFT", "METADATA"]
    assert re.match(rf"hello +127\.0\.0\.1:{server.port} ", lines[1]), done.stdout


async def test_registry_watch_names_the_registry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with server_process("hello:app", "--registry", url, "--service", "hello",
                        "--no-access-log") as server:
        server.wait_for_line("registered hello at")
        proc = await asyncio.create_subprocess_exec(
            *tether_command("registry", "watch", "hello", "--registry", url),
            cwd=EXAMPLES, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = await asyncio.wait_for(proc.stderr.readline(), HTTP_TIMEOUT)
            snapshot = await asyncio.wait_for(proc.stdout.readline(), HTTP_TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()
    assert first.decode() == f"watching hello in registry {url}\n"
    assert f"hello rev 1: 127.0.0.1:{server.port}" in snapshot.decode()


def test_registry_ls_redacts_the_password(tmp_path: Path) -> None:
    closed = free_port()
    done = run_tether("registry", "ls", "--registry",
                      f"etcd://admin:hunter2@127.0.0.1:{closed}/x", timeout=HTTP_TIMEOUT)
    assert done.returncode == 1
    assert "hunter2" not in done.stdout + done.stderr
    assert f"registry etcd://admin:***@127.0.0.1:{closed}/x: " in done.stderr, done.stderr


# -- tether proxy --listen and --route, the flags alone ------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("8080", ("127.0.0.1", 8080)), ("0", ("127.0.0.1", 0)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:8080", ("::1", 8080)),
    ("localhost:80", ("localhost", 80)),
])
def test_listen_forms(given: str, expected: tuple[str, int]) -> None:
    assert parse_listen(given) == expected


@pytest.mark.parametrize(("flag", "strip", "upstream"), [
    ("/api=orders", False, "orders"),
    ("/api=orders,strip_prefix", True, "orders"),
    ("/api=orders,strip-prefix", True, "orders"),
    ("/api=127.0.0.1:1,127.0.0.1:2,strip_prefix", True, "static:/api"),
])
def test_route_flag_forms(flag: str, strip: bool, upstream: str) -> None:
    route, _ = parse_route_flag(flag)
    assert (route.prefix, route.upstream, route.strip_prefix) == ("/api", upstream, strip)


@pytest.mark.parametrize("flag", ["/api=strip_prefix", "/api=orders,stripprefix"])
def test_bad_route_flags(flag: str) -> None:
    with pytest.raises(ConfigError, match="strip_prefix"):
        parse_route_flag(flag)


def test_listen_port_alone_serves_on_loopback() -> None:
    port = free_port()
    with proxy("--listen", str(port), "--route", "/=127.0.0.1:9") as running:
        line = running.process.wait_for_line("serving on http")
    assert line.strip().endswith(f"http://127.0.0.1:{port}"), line


@pytest.mark.parametrize("listen", ["nowhere", ":8080", "::1:8080", "127.0.0.1:70000",
                                    "localhost:", "127.0.0.1:http"])
def test_bad_listen_is_a_usage_error(listen: str) -> None:
    done = subprocess.run(
        tether_command("proxy", "--listen", listen, "--route", "/=127.0.0.1:9"),
        cwd=EXAMPLES, env=_env_without(), capture_output=True, text=True,
        timeout=HTTP_TIMEOUT)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Invalid value for '--listen'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_help_documents_the_route_option_and_listen_port() -> None:
    done = run_tether("proxy", "--help", timeout=HTTP_TIMEOUT)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "strip_prefix" in text and "PORT alone means 127.0.0.1:PORT" in text



def test_an_upstream_may_still_probe_its_own_health_path(tmp_path: Path) -> None:
    """``health_path = "/healthz"`` in TOML: the probe is that GET again (the app
    answers and logs it); a health_path that is neither ``*`` nor a path is exit 2."""
    with spawn("hello:app", "--port", "0") as provider:
        config = tmp_path / "proxy.toml"
        config.write_text(
            '[[routes]]\nprefix = "/"\nupstream = "app"\n\n'
            f'[upstreams.app]\nproviders = ["127.0.0.1:{provider.port}"]\n'
            'health_path = "/healthz"\n')
        with proxy("--config", str(config)):
            provider.stdout.wait_for(r'"GET /healthz" 404 ')  # hello:app has none: alive
    config.write_text(
        '[[routes]]\nprefix = "/"\nupstream = "app"\n\n'
        '[upstreams.app]\nproviders = ["127.0.0.1:9"]\nhealth_path = "healthz"\n')
    done = subprocess.run(
        tether_command("proxy", "--listen", "0", "--config", str(config)),
        cwd=EXAMPLES, env=_env_without(), capture_output=True, text=True,
        timeout=HTTP_TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "health_path must be \"*\" (OPTIONS *) or a path starting with '/'" in done.stderr
