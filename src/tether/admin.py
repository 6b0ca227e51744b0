"""The admin ASGI app the supervisor serves on ``--admin-port``: health, readiness,
status, Prometheus metrics, and the live dashboard (``/``, its files under
``/dashboard/``, its data at ``/dashboard/data``).

Routes are a table from path to handler, so later subsystems (``/metrics``) add a
row rather than a branch. Must never touch a worker directly: it only reads what
the supervisor hands it.

Two guards come before every route that shows something (``/status``,
``/metrics``, the dashboard). The Host must be a loopback name or address (or one of the names the
operator allowed): a web page that rebinds its own DNS name to 127.0.0.1 (DNS
rebinding) reaches the port, but its requests carry its own name and are refused
with 403. With a token configured (required when the port is bound beyond loopback),
such a request must carry ``Authorization: Bearer <token>``, or HTTP Basic
credentials whose password is the token (any user name): a browser asks for those
itself when told ``WWW-Authenticate: Basic``, and then sends them with the
dashboard's every request, which a bearer token cannot do. ``/healthz`` and
``/readyz`` say only "ok" or "ready" and stay open to any Host: orchestrators probe
them by address (Kubernetes sends ``Host: <pod IP>:<port>``) and without a header.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from tether import dashboard as dashboard_files
from tether.asgi import ASGIApp, Receive, Scope, Send

StatusFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], bool]
DashboardFn = Callable[[], dict[str, Any]]
MetricsFn = Callable[[], bytes]
#: the Prometheus text exposition format
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[], Awaitable[tuple[int, bytes, bytes]]]
#: where the dashboard's files are served from
DASHBOARD_PREFIX: Final = "/dashboard/"
#: the page's own requests never go anywhere but this port
DASHBOARD_CSP: Final = (b"default-src 'none'; script-src 'self'; "
                        b"style-src 'self' 'unsafe-inline'; "
                        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                        b"base-uri 'none'; form-action 'none'")
#: Host names the admin port answers to without configuration
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def host_name(host: str) -> str:
    """``name`` of a Host header value ``name[:port]`` (IPv6 keeps its brackets),
    lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def basic_password(value: str) -> str | None:
    """The password of an ``Authorization: Basic`` value, or None."""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


async def _send(send: Send, status: int, body: bytes, ctype: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
               *(extra or ())]
    if ctype.startswith(b"text/html"):
        headers.append((b"content-security-policy", DASHBOARD_CSP))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def admin_app(
    status: StatusFn,
    ready: ReadyFn,
    metrics: MetricsFn | None = None,
    dashboard: DashboardFn | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
) -> ASGIApp:
    """Build the admin app over the supervisor's ``status``, ``ready``, ``metrics``
    and ``dashboard`` (the page's data) callables. ``allowed_hosts``: names answered
    besides loopback ones (``*`` for any); ``token``: required as
    ``Authorization: Bearer <token>`` when set."""
    text = b"text/plain; charset=utf-8"
    hosts = LOOPBACK_HOSTS | {host_name(h) for h in allowed_hosts}
    any_host = "*" in hosts
    expected = None if token is None else f"Bearer {token}".encode()
    expected_password = None if token is None else token.encode()
    challenge = [(b"www-authenticate", b'Basic realm="tether admin", charset="UTF-8"')]

    async def healthz() -> tuple[int, bytes, bytes]:
        return 200, b"ok\n", text  # the supervisor is alive and answering

    async def readyz() -> tuple[int, bytes, bytes]:
        if ready():
            return 200, b"ready\n", text
        return 503, b"not ready\n", text

    async def status_json() -> tuple[int, bytes, bytes]:
        return 200, json.dumps(status(), indent=2).encode() + b"\n", b"application/json"

    async def metrics_text() -> tuple[int, bytes, bytes]:
        assert metrics is not None
        return 200, metrics(), PROMETHEUS_TEXT

    # open to any Host and without a token: they tell only whether it is up
    probes: dict[str, Handler] = {"/healthz": healthz, "/readyz": readyz}
    routes: dict[str, Handler] = {"/status": status_json}
    if metrics is not None:
        routes["/metrics"] = metrics_text
    if dashboard is not None:
        html = b"text/html; charset=utf-8"

        async def page() -> tuple[int, bytes, bytes]:
            return 200, dashboard_files.index(), html

        async def data() -> tuple[int, bytes, bytes]:
            return 200, json.dumps(dashboard()).encode(), b"application/json"

        routes["/"] = page
        routes[DASHBOARD_PREFIX + "data"] = data

    def _asset(name: str) -> Handler | None:
        found = dashboard_files.asset(name)
        if found is None:
            return None
        body, ctype = found

        async def file() -> tuple[int, bytes, bytes]:
            return 200, body, ctype

        return file

    def _refusal(scope: Scope) -> tuple[int, bytes] | None:
        """Why a request for what the port shows is refused, or None."""
        host = _header(scope, b"host")
        if not any_host and (host is None or host_name(host) not in hosts):
            return 403, (b"forbidden: this admin port answers only to loopback host "
                         b"names (see --admin-allow-host)\n")
        if expected is not None and not _authorized(_header(scope, b"authorization")):
            return 401, b"unauthorized: admin token required\n"
        return None

    def _authorized(given: str | None) -> bool:
        assert expected is not None and expected_password is not None
        if given is None:
            return False
        if hmac.compare_digest(given.encode("latin-1"), expected):
            return True
        password = basic_password(given)
        return password is not None and hmac.compare_digest(
            password.encode("utf-8"), expected_password)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        handler = probes.get(path)
        if handler is None:
            refusal = _refusal(scope)
            if refusal is not None:
                await _send(send, *refusal, text, challenge if refusal[0] == 401 else None)
                return
            handler = routes.get(path)
            if handler is None and dashboard is not None and path.startswith(DASHBOARD_PREFIX):
                handler = _asset(path[len(DASHBOARD_PREFIX):])
        if handler is None:
            await _send(send, 404, b"not found\n", text)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"method not allowed\n", text)
            return
        await _send(send, *await handler())

    return app
