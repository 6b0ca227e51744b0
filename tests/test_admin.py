"""The admin app's guards, on a real socket: loopback Host names only (against DNS
rebinding), and a bearer token when one is configured."""

from __future__ import annotations

import base64
from typing import Any

from tests.support import raw_exchange, serve, status_of
from tether.admin import admin_app, host_name


def status() -> dict[str, Any]:
    return {"workers": []}



def get(path: str, host: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close", *extra, "", ""]
    return "\r\n".join(lines).encode()


def test_host_names() -> None:
    assert host_name("127.0.0.1:9100") == "127.0.0.1"
    assert host_name("[::1]:9100") == "[::1]"
    assert host_name("LocalHost") == "localhost"
    assert host_name("evil.example:80") == "evil.example"


async def test_loopback_names_only_by_default() -> None:
    """A rebound DNS name (evil.example resolving to 127.0.0.1) reaches the port, but
    its requests say ``Host: evil.example`` and are refused before any route."""
    app = admin_app(status, lambda: True)
    async with serve(app) as server:
        for host in ("127.0.0.1:1", "localhost", "[::1]:9100"):
            raw = await raw_exchange(server.port, get("/status", host))
            assert status_of(raw) == 200, host
        for host in ("evil.example", "evil.example:9100", "127.0.0.2"):
            raw = await raw_exchange(server.port, get("/status", host))
            assert status_of(raw) == 403, host
            assert b"workers" not in raw


async def test_allowed_names_and_token() -> None:
    app = admin_app(status, lambda: True, allowed_hosts=["ops.internal"], token="s3cret")
    async with serve(app) as server:
        raw = await raw_exchange(server.port, get("/status", "ops.internal:9100"))
        assert status_of(raw) == 401
        raw = await raw_exchange(
            server.port, get("/status", "ops.internal", "Authorization: Bearer wrong")
        )
        assert status_of(raw) == 401
        raw = await raw_exchange(
            server.port, get("/status", "ops.internal", "Authorization: Bearer s3cret")
        )
        assert status_of(raw) == 200 and b"workers" in raw
        raw = await raw_exchange(
            server.port, get("/status", "evil.example", "Authorization: Bearer s3cret")
        )
        assert status_of(raw) == 403


async def test_probes_stay_open_to_orchestrators() -> None:
    """/healthz and /readyz say only whether it is up: a Kubernetes probe sends
    ``Host: <pod IP>:<port>`` and no token, and gets its answer."""
    app = admin_app(status, lambda: False, token="s3cret")
    async with serve(app) as server:
        raw = await raw_exchange(server.port, get("/healthz", "10.1.2.3:9100"))
        assert status_of(raw) == 200
        raw = await raw_exchange(server.port, get("/readyz", "10.1.2.3:9100"))
        assert status_of(raw) == 503 and b"not ready" in raw
        raw = await raw_exchange(server.port, get("/status", "10.1.2.3:9100"))
        assert status_of(raw) == 403


def dashboard_data() -> dict[str, Any]:
    return {"now": 1.0, "status": status(), "history": {}, "timeline": [],
            "worker_events": []}


async def test_the_dashboard_is_guarded_like_status_and_serves_only_its_files() -> None:
    """``/`` is the page (under a Content-Security-Policy that lets it reach nothing
    but this port), ``/dashboard/data`` its data, ``/dashboard/...`` its files; a
    rebound DNS name gets none of them, and no path leaves the package."""
    app = admin_app(status, lambda: True, dashboard=dashboard_data)
    async with serve(app) as server:
        page = await raw_exchange(server.port, get("/", "127.0.0.1"))
        head = page.split(b"\r\n\r\n", 1)[0].lower()
        assert status_of(page) == 200 and b"content-type: text/html" in head
        assert b"content-security-policy: default-src 'none'" in head
        assert b"connect-src 'self'" in head and b"x-content-type-options: nosniff" in head
        data = await raw_exchange(server.port, get("/dashboard/data", "localhost"))
        assert status_of(data) == 200 and b'"worker_events"' in data
        for path in ("/", "/dashboard/data"):
            raw = await raw_exchange(server.port, get(path, "evil.example"))
            assert status_of(raw) == 403, path
        for path in ("/dashboard/../admin.py", "/dashboard/__init__.py",
                     "/dashboard/%2e%2e/admin.py", "/dashboard/nothing.js", "/dashboard/"):
            raw = await raw_exchange(server.port, get(path, "127.0.0.1"))
            assert status_of(raw) == 404, path
        raw = await raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert status_of(raw) == 405  # read-only


async def test_without_a_dashboard_there_is_no_page() -> None:
    app = admin_app(status, lambda: True)
    async with serve(app) as server:
        for path in ("/", "/dashboard/data"):
            assert status_of(await raw_exchange(server.port, get(path, "127.0.0.1"))) == 404


async def test_a_browser_passes_the_token_as_basic_credentials() -> None:
    """A browser cannot send a bearer token with a page load; told ``WWW-Authenticate:
    Basic`` it asks for credentials and sends them with every request of the page."""
    app = admin_app(status, lambda: True, dashboard=dashboard_data, token="s3cret")
    async with serve(app) as server:
        raw = await raw_exchange(server.port, get("/", "127.0.0.1"))
        assert status_of(raw) == 401
        assert b'www-authenticate: basic realm="tether admin"' in raw.lower()
        good = base64.b64encode(b"anyone:s3cret").decode()
        for path in ("/", "/dashboard/data", "/status"):
            raw = await raw_exchange(server.port, get(path, "127.0.0.1",
                                                      f"Authorization: Basic {good}"))
            assert status_of(raw) == 200, path
        for bad in (base64.b64encode(b"anyone:wrong").decode(),
                    base64.b64encode(b"s3cret").decode(), "!!notbase64"):
            raw = await raw_exchange(server.port, get("/", "127.0.0.1",
                                                      f"Authorization: Basic {bad}"))
            assert status_of(raw) == 401, bad
