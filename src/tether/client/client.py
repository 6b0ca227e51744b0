"""``tether.Client``: an asyncio HTTP/1.1 client over an identity-keyed connection pool.

The request cycle lives here once: build the head, take a connection, send, read,
give the connection back (or close it), retry once on a stale keep-alive
connection when that is safe. Every connection is opened by :meth:`Client._open`,
the single code path that turns a :class:`PoolKey` into a socket, so the identity
a connection is pooled under is the one it was opened with (field report 4, docs/incidents.md). Its
clusters reach it only through the :class:`~tether.client.cluster.ClientLink` it
hands them.

Must never return a half-read connection to the pool, and never leak a slot when
the caller is cancelled: cancellation closes the in-flight connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from tether import metrics
from tether._version import __version__
from tether.client.cluster import ClientLink, Cluster
from tether.client.connection import Body, HTTPConnection, StaleConnection
from tether.client.errors import (
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    ReadTimeout,
    TLSError,
)
from tether.client.identity import PoolKey, TLSIdentity
from tether.client.models import (
    Content,
    Headers,
    HeaderTypes,
    Origin,
    Response,
    Timeout,
    encode_body,
    origin_form,
    parse_url,
)
from tether.client.pool import ConnectionPool
from tether.client.raw import RawResponse
from tether.client.retries import IDEMPOTENT
from tether.client.websocket import (
    HANDSHAKE_HEADERS,
    MAX_SIZE,
    Connecting,
    WebSocket,
    WebSocketConnection,
    rejected,
    send_handshake,
)
from tether.deadline import HEADER as DEADLINE_HEADER
from tether.deadline import DeadlineExceeded, current_deadline, deadline_at
from tether.registry.base import Registry
from tether.registry.urls import open_registry
from tether.tls import client_context

#: characters that would let a header name or value end the line (header injection)
_BAD_NAME: Final = re.compile(r"[\r\n:]")
_BAD_VALUE: Final = re.compile(r"[\r\n\0]")
#: the header names the head is built around
_FRAMING_NAMES: Final = frozenset(
    {"host", "user-agent", "content-type", "content-length", "transfer-encoding"})
USER_AGENT: Final = f"tether/{__version__}"
#: the deadline header line a forwarded request gets (the milliseconds left)
DEADLINE_LINE: Final = DEADLINE_HEADER.encode() + b": %s\r\n"


class _Unset:
    pass


UNSET: Final = _Unset()

VerifyTypes = bool | str | ssl.SSLContext
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class Client:
    """An asyncio HTTP/1.1 client.

    ``timeout``: seconds for every phase, or a :class:`Timeout` per phase.
    ``verify``: True (system CAs), False, a CA bundle path, or an ``ssl.SSLContext``.
    ``cert``: a client certificate path, or (certfile, keyfile).
    ``sni_hostname``: the TLS server name to send (and check the certificate
    against) instead of the URL's host; per request too.
    """

    def __init__(
        self,
        *,
        timeout: float | Timeout | None = 5.0,
        verify: VerifyTypes = True,
        cert: str | tuple[str, str] | None = None,
        sni_hostname: str | None = None,
        headers: HeaderTypes = None,
        base_url: str = "",
        max_connections: int = 100,
        max_connections_per_origin: int = 20,
        keepalive_expiry: float | None = 30.0,
        minimum_tls_version: str = "TLSv1_2",
        propagate_deadline: bool = True,
        deadline_margin: float = 0.005,
        registry: str | Registry | None = None,
    ) -> None:
        self.timeout = Timeout.of(timeout)
        self.verify = verify
        self.cert: tuple[str, ...] | None = (cert,) if isinstance(cert, str) else cert
        self.sni_hostname = sni_hostname
        self.headers = Headers(headers)
        self.base_url = base_url.rstrip("/")
        self.minimum_tls_version = minimum_tls_version
        self.propagate_deadline = propagate_deadline
        self.deadline_margin = deadline_margin
        self._pool: ConnectionPool[HTTPConnection] = ConnectionPool(
            self._open,
            max_connections=max_connections,
            max_connections_per_origin=max_connections_per_origin,
            keepalive_expiry=keepalive_expiry,
        )
        # Cluster probes (heartbeats, reconnects) have connections of their own: a probe
        # that waited behind a pool full of slow requests would fail for this client's
        # own congestion and take a healthy provider out (issue 12). No limits: a cluster
        # runs one probe per provider at a time, which is the bound.
        self._probes: ConnectionPool[HTTPConnection] = ConnectionPool(
            self._open,
            max_connections=sys.maxsize,
            max_connections_per_origin=sys.maxsize,
            keepalive_expiry=keepalive_expiry,
        )
        #: pool keys of forwarded requests by origin (built once per origin)
        self._forward_keys: dict[Origin, PoolKey] = {}
        self._link = ClientLink(
            send=self._request_to, forward=self._forward_to,
            deadline_scope=self._deadline_scope, probe=self._probe,
            retire=self._retire, probing=self._probing, websocket=self._websocket_to,
        )
        self._contexts: dict[TLSIdentity, ssl.SSLContext] = {}
        self._registry_arg = registry
        self._registry: Registry | None = None
        self._services: dict[str, Cluster] = {}
        #: open WebSocket sessions: aclose() drops those still open
        self._sessions: set[WebSocket] = set()
        metrics.PROCESS.add_status(self, Client._status_part)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            for cluster in self._services.values():
                await cluster.aclose()
        finally:
            # Even when the close itself is cancelled (Ctrl-C): no socket is left open.
            for session in list(self._sessions):
                session.abort()
            if self._registry is not None and isinstance(self._registry_arg, str):
                await self._registry.close()  # we opened it, we close it
            await self._pool.aclose()
            await self._probes.aclose()

    def service(self, name: str, **options: Any) -> Cluster:
        """The cluster of ``name``'s providers (created once per name).

        Providers come from the client's ``registry=`` or a static
        ``providers=["host:port", ...]``. Options: ``balancer`` ("p2c" or
        "round_robin"), ``health_path`` ("/healthz"; "*" for ``OPTIONS *``, which
        tether serve answers itself; None for a plain connect),
        ``probe_timeout``, ``scheme``, ``retry_budget_percent``, ``max_attempts``,
        and ``config=ClusterConfig(...)`` for heartbeats, backoff, eviction, ejection
        and the empty-snapshot policy (see docs/cluster.md).
        """
        cluster = self._services.get(name)
        if cluster is None:
            registry = None
            if "providers" not in options:
                registry = self._open_registry()
            cluster = self._services[name] = Cluster(
                self._link, name, registry=registry, **options)
        return cluster

    def _open_registry(self) -> Registry:
        if self._registry is None:
            arg = self._registry_arg
            if arg is None:
                raise ValueError("client.service(name) needs Client(registry=URL) "
                                 "or providers=[...]")
            self._registry = open_registry(arg) if isinstance(arg, str) else arg
        return self._registry

    # -- the public request API ---------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: HeaderTypes = None,
        content: Content = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | Timeout | _Unset | None = UNSET,
        sni_hostname: str | None = None,
    ) -> Response:
        """Send a request and read the whole response body.

        Under a deadline (inside a tether handler, or ``async with
        tether.deadline_after(...)``) the whole exchange is bounded by it, and the
        time left (minus ``deadline_margin``) travels in ``x-request-timeout-ms``.
        """
        async with self._deadline_scope():
            origin, target = parse_url(self._absolute(url), params)
            response = await self._request_to(
                method, origin, target, url, headers=headers, content=content, data=data,
                json=json, timeout=timeout, sni_hostname=sni_hostname,
            )
            await response.aread()  # returns the connection to the pool (or closes it)
        return response

    @contextlib.asynccontextmanager
    async def _deadline_scope(self) -> AsyncIterator[None]:
        """Bound the block by the current deadline; cancelling it closes the connection
        in flight (see _send), so nothing half-done returns to the pool."""
        deadline = current_deadline()
        if deadline.at is None:
            yield
            return
        async with deadline_at(deadline.at):
            yield

    async def get(self, url: str, **kwargs: Any) -> Response:
        return await self.request("GET", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> Response:
        return await self.request("HEAD", url, **kwargs)

    async def options(self, url: str, **kwargs: Any) -> Response:
        return await self.request("OPTIONS", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", url, **kwargs)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: HeaderTypes = None,
        content: Content = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | Timeout | _Unset | None = UNSET,
        sni_hostname: str | None = None,
    ) -> AsyncIterator[Response]:
        """Send a request and yield the response before its body is read.

        Leaving the block returns the connection to the pool if the body was read
        to its end, and closes it otherwise.
        """
        async with self._deadline_scope():
            origin, target = parse_url(self._absolute(url), params)
            response = await self._request_to(
                method, origin, target, url, headers=headers, content=content, data=data,
                json=json, timeout=timeout, sni_hostname=sni_hostname,
            )
            try:
                yield response
            finally:
                await response.aclose()

    async def _request_to(
        self,
        method: str,
        origin: Origin,
        target: str,
        url: str,
        *,
        headers: HeaderTypes = None,
        content: Content = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | Timeout | _Unset | None = UNSET,
        sni_hostname: str | None = None,
    ) -> Response:
        """One request, up to its response head (the body is left to the caller), to
        ``origin`` for the origin-form ``target``: never parsed as a URL, the caller
        chose where it connects. ``url`` names it in errors."""
        timeouts = self.timeout if isinstance(timeout, _Unset) else Timeout.of(timeout)
        method = method.upper()
        body, content_type = encode_body(content, data, json)
        ms = self._deadline_header(method, url)
        if ms is not None:
            headers = Headers(headers)
            if DEADLINE_HEADER not in headers:
                headers[DEADLINE_HEADER] = ms
        head, declared = self._head(method, origin, target, headers, body, content_type)
        key = self._key(origin, sni_hostname or self.sni_hostname)
        return await self._send(method, key, head, body, timeouts, url, declared, self._pool)

    def _deadline_header(self, method: str | None, url: str) -> str | None:
        """The deadline header's value for a request (``method``) or a WebSocket
        handshake (None) to ``url`` about to be sent (None: no deadline, or not
        propagated); DeadlineExceeded if the deadline has passed already."""
        deadline = current_deadline()
        if deadline.at is None:
            return None
        if deadline.expired:
            raise DeadlineExceeded(
                f"deadline passed before {method} {url} was sent" if method is not None
                else f"deadline passed before the handshake to {url}")
        if not self.propagate_deadline:
            return None
        ms = deadline.header_value(self.deadline_margin)
        assert ms is not None
        return ms.decode()

    # -- WebSocket sessions ---------------------------------------------------------------

    def websocket(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: HeaderTypes = None,
        subprotocols: Sequence[str] | None = None,
        compression: bool = True,
        max_size: int | None = MAX_SIZE,
        timeout: float | Timeout | _Unset | None = UNSET,
        sni_hostname: str | None = None,
        ping_interval: float | None = None,
        ping_timeout: float = 20.0,
    ) -> Connecting:
        """Open a WebSocket session to ``url`` (``ws://``, ``wss://``, or ``http(s)://``
        naming the same origins): ``async with client.websocket(url) as ws:``, or
        ``ws = await client.websocket(url)`` (then ``await ws.close()``).

        The connection is opened like a request's (same TLS verification, client
        certificate and SNI) but is the session's own, never pooled. The handshake
        is bounded by ``timeout`` (connect, then read for the ``101``) and by the
        current deadline, which travels in ``x-request-timeout-ms``; the session is
        not. ``subprotocols``: offered in order (the server's choice is
        ``ws.subprotocol``); ``compression``: offer permessage-deflate;
        ``max_size``: the largest message accepted (larger: the session closes with
        1009); ``ping_interval``: ping the server this often (None: never), and drop
        the connection (1006) when a pong takes longer than ``ping_timeout``. A
        refused handshake raises :class:`~tether.client.WebSocketRejected` with the
        server's status, headers and body.
        """
        http_url = "http" + url[2:] if url.startswith(("ws://", "wss://")) else url
        origin, target = parse_url(self._absolute(http_url), params)
        return Connecting(functools.partial(
            self._websocket_to, origin, target, url, headers=headers,
            subprotocols=subprotocols, compression=compression, max_size=max_size,
            timeout=timeout, sni_hostname=sni_hostname, ping_interval=ping_interval,
            ping_timeout=ping_timeout))

    async def _websocket_to(
        self,
        origin: Origin,
        target: str,
        url: str,
        *,
        headers: HeaderTypes = None,
        subprotocols: Sequence[str] | None = None,
        compression: bool = True,
        max_size: int | None = MAX_SIZE,
        timeout: float | Timeout | _Unset | None = UNSET,
        sni_hostname: str | None = None,
        ping_interval: float | None = None,
        ping_timeout: float = 20.0,
        on_close: Callable[[], None] | None = None,
    ) -> WebSocket:
        """One WebSocket handshake to ``origin`` for the origin-form ``target`` (as
        :meth:`_request_to`: the caller chose where it connects)."""
        timeouts = self.timeout if isinstance(timeout, _Unset) else Timeout.of(timeout)
        loop = asyncio.get_running_loop()
        key = self._key(origin, sni_hostname or self.sni_hostname)
        async with self._deadline_scope():
            extra = self._websocket_headers(headers)
            ms = self._deadline_header(None, url)
            if ms is not None and not any(n.lower() == DEADLINE_HEADER for n, _ in extra):
                extra.append((DEADLINE_HEADER, ms))
            conn = await self._connect(
                key, timeouts.connect, lambda: WebSocketConnection(str(origin), loop))
            try:
                send_handshake(conn, origin, target, extra, subprotocols=subprotocols,
                               compression=compression, max_size=max_size,
                               user_agent=USER_AGENT)
                try:
                    await conn.wait(lambda: conn.response is not None or conn.closed,
                                    timeouts.read)
                except TimeoutError:
                    raise ReadTimeout(f"no WebSocket handshake response within "
                                      f"{timeouts.read}s", target=str(origin),
                                      phase="handshake") from None
                assert conn.protocol is not None
                if conn.response is None or conn.protocol.handshake_exc is not None:
                    raise rejected(conn, url)
            except BaseException:
                conn.abort()  # includes cancellation: a half-open session is dropped
                raise
        session = WebSocket(conn, url, write_timeout=timeouts.write,
                            on_close=lambda: self._session_ended(session, on_close),
                            ping_interval=ping_interval, ping_timeout=ping_timeout)
        self._sessions.add(session)
        return session

    def _session_ended(self, session: WebSocket, on_close: Callable[[], None] | None) -> None:
        self._sessions.discard(session)
        if on_close is not None:
            on_close()

    def _websocket_headers(self, headers: HeaderTypes) -> list[tuple[str, str]]:
        """The client's and the call's headers (the call's replace the client's of the
        same name), validated, without those the protocol writes itself."""
        given = Headers(headers).items() if headers else []
        names = {n.lower() for n, _ in given}
        merged = [(n, v) for n, v in self.headers.items() if n.lower() not in names] + given
        out = []
        for name, value in merged:
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                raise LocalProtocolError(f"invalid header {name!r}: {value!r}")
            if name.lower() not in HANDSHAKE_HEADERS:
                out.append((name, value))
        return out

    async def _probe(self, origin_url: str, target: str, timeout: float) -> int:
        """``GET target`` (``OPTIONS *`` for ``*``) at ``origin_url`` on the probes'
        own pool (every phase bounded by ``timeout``); the status code. For
        clusters: see :class:`ClientLink`."""
        origin, _ = parse_url(origin_url, None)
        target = origin_form(target)  # never glued to the origin and parsed again
        method = "OPTIONS" if target == "*" else "GET"
        url = f"{origin_url}{target}" if target != "*" else origin_url
        head, _ = self._head(method, origin, target, None, None, None)
        key = self._key(origin, self.sni_hostname)
        response = await self._send(method, key, head, None, Timeout.of(timeout), url, None,
                                    self._probes)
        await response.aread()
        return response.status_code

    def _retire(self, host: str, port: int) -> None:
        for pool in (self._pool, self._probes):
            pool.retire(host, port)

    def _probing(self, host: str, port: int) -> None:
        for pool in (self._pool, self._probes):
            pool.unretire(host, port)
            pool.prune(host, port)

    def stats(self) -> dict[str, Any]:
        """Requests sent, connections opened and reused, the reuse ratio, pool state
        (cluster probes included)."""
        pools = (self._pool, self._probes)
        sent = sum(p.stats.outgoing_requests for p in pools)
        reused = sum(p.stats.connections_reused for p in pools)
        counts = [p.counts() for p in pools]
        return {
            "outgoing_requests": sent,
            "connections_opened": sum(p.stats.connections_opened for p in pools),
            "connections_reused": reused,
            "reuse_ratio": reused / sent if sent else 0.0,
            "idle": sum(c["idle"] for c in counts),
            "active": sum(c["active"] for c in counts),
            "waiting": sum(c["waiting"] for c in counts),
            "pool_wait_seconds": sum(p.stats.pool_wait_seconds for p in pools),
        }

    def _by_origin(self) -> dict[str, dict[str, int]]:
        """Connections held per origin, cluster probes' included."""
        out = self._pool.by_origin()
        for origin, held in self._probes.by_origin().items():
            entry = out.setdefault(origin, {"idle": 0, "active": 0})
            for state, n in held.items():
                entry[state] = entry.get(state, 0) + n
        return out

    def _status_part(self) -> dict[str, list[dict[str, Any]]]:
        """This client's clusters and pools, for the worker's ``/status``."""
        return {
            "clusters": [c.status() for c in self._services.values() if c.started],
            "pools": [{"origin": origin, **held}
                      for origin, held in sorted(self._by_origin().items())],
        }

    # -- the request cycle ------------------------------------------------------------------

    async def _send(
        self, method: str, key: PoolKey, head: bytes, body: Body, timeouts: Timeout, url: str,
        declared_length: int | None, pool: ConnectionPool[HTTPConnection],
    ) -> Response:
        raw = await self._attempt(method, key, head, body, timeouts, declared_length, pool)
        conn = raw.connection
        return Response(
            raw.status_code, Headers.from_raw([(n.decode("latin-1"), v.decode("latin-1"))
                                               for n, v in raw.headers]),
            url=url, method=method,
            reader=lambda t=timeouts.read: conn.read_body(t),  # type: ignore[misc]
            # release() keeps it only if reusable (read to its end, keep-alive)
            on_close=raw.close,
        )

    async def _attempt(
        self, method: str, key: PoolKey, head: bytes, body: Body, timeouts: Timeout,
        declared_length: int | None, pool: ConnectionPool[HTTPConnection],
    ) -> RawResponse:
        """One request on a pooled connection, up to its response head; the
        connection is the response's until it is closed."""
        retryable = method in IDEMPOTENT
        for attempt in (0, 1):
            conn = (None if attempt else pool.take_idle(key)) or await pool.acquire(
                key, timeouts.pool, timeouts.connect, fresh=attempt > 0)
            try:
                status, raw_headers = await conn.send_request(
                    head, body, head_request=method == "HEAD",
                    write_timeout=timeouts.write, read_timeout=timeouts.read,
                    declared_length=declared_length,
                )
            except StaleConnection as exc:
                pool.discard(conn)
                # The server closed an idle connection as we reused it: nothing was
                # processed. Retry once on a fresh connection when that is safe.
                if attempt == 0 and (retryable or not exc.body_sent) and _replayable(body):
                    continue
                raise
            except BaseException:
                pool.discard(conn)  # includes cancellation: never reuse a half-done exchange
                raise
            return RawResponse(status, raw_headers, conn, pool, timeouts.read)
        raise AssertionError("unreachable")  # pragma: no cover

    def _forward_to(
        self, method: str, origin: Origin, start: bytes, fields: bytes, body: Body,
        declared_length: int | None,
    ) -> Awaitable[RawResponse]:
        """One forwarded request (the proxy's path, issue 18) to ``origin``: ``start``
        is the request line, ``fields`` the header lines the caller built and checked
        (framing included, no deadline header); the time left before the deadline is
        added here as for any request. Returns the response as received. (Not a
        coroutine itself: the attempt's is awaited directly, one frame less to resume
        on every upstream event.)"""
        if current_deadline().at is None:
            head = start + fields + b"\r\n"
        else:
            ms = self._deadline_header(method, start.decode("latin-1").rstrip())
            head = (start + fields + b"\r\n" if ms is None
                    else start + DEADLINE_LINE % ms.encode() + fields + b"\r\n")
        key = self._forward_keys.get(origin)
        if key is None:
            if len(self._forward_keys) > 4096:  # origins come and go: keep it bounded
                self._forward_keys.clear()
            key = self._forward_keys[origin] = self._key(origin, self.sni_hostname)
        return self._attempt(method, key, head, body, self.timeout, declared_length, self._pool)

    def _absolute(self, url: str) -> str:
        if self.base_url and not url.startswith(("http://", "https://")):
            return self.base_url + ("" if url.startswith("/") else "/") + url
        return url

    def _head(
        self, method: str, origin: Origin, target: str, headers: HeaderTypes,
        body: Body, content_type: str | None,
    ) -> tuple[bytes, int | None]:
        """The request head, and the Content-Length the caller declared for a streamed
        body (None: a streamed body goes chunked)."""
        default_port = 443 if origin.scheme == "https" else 80
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        if origin.port != default_port:
            host = f"{host}:{origin.port}"
        merged = self.headers.items()
        if headers:
            # The request's headers replace the client's of the same name; a header
            # given on several lines keeps every line, in order.
            given = headers.items() if isinstance(headers, Headers) else Headers(headers).items()
            if merged:
                names = {n.lower() for n, _ in given}
                merged = [(n, v) for n, v in merged if n.lower() not in names] + given
            else:
                merged = given
        # One pass over the headers: validate, and note the names that matter here.
        present: dict[str, str] = {}
        for name, value in merged:
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                raise LocalProtocolError(f"invalid header {name!r}: {value!r}")
            lname = name.lower()
            if lname in _FRAMING_NAMES:
                present[lname] = f"{present[lname]}, {value}" if lname in present else value
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        if "host" not in present:
            lines.append(f"Host: {host}\r\n")
        if "user-agent" not in present:
            lines.append(f"User-Agent: {USER_AGENT}\r\n")
        if content_type and "content-type" not in present:
            lines.append(f"Content-Type: {content_type}\r\n")
        declared: int | None = None
        if isinstance(body, bytes):
            if "content-length" not in present:
                lines.append(f"Content-Length: {len(body)}\r\n")
        elif body is not None and "content-length" in present:
            value = present["content-length"]
            if not value.isdigit():
                raise LocalProtocolError(f"invalid Content-Length {value!r}")
            declared = int(value)
        elif body is not None and "transfer-encoding" not in present:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif body is None and method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0\r\n")
        for name, value in merged:
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        try:
            return "".join(lines).encode("latin-1"), declared
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"header or URL not encodable as latin-1: {exc}") from exc

    # -- connection identity and opening ----------------------------------------------------

    def _key(self, origin: Origin, sni: str | None) -> PoolKey:
        if origin.scheme != "https":
            return PoolKey(origin.scheme, origin.host, origin.port)
        verify = self.verify
        if isinstance(verify, ssl.SSLContext):
            tls = TLSIdentity(verify=True, ca=f"context:{id(verify)}", cert=self.cert)
        else:
            tls = TLSIdentity(
                verify=bool(verify), ca=verify if isinstance(verify, str) else "default",
                cert=self.cert, minimum_version=self.minimum_tls_version,
            )
        return PoolKey(origin.scheme, origin.host, origin.port, sni or origin.host, tls)

    def _context(self, tls: TLSIdentity) -> ssl.SSLContext:
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        ctx = self._contexts.get(tls)
        if ctx is None:
            ctx = self._contexts[tls] = client_context(
                verify=tls.verify, ca=None if tls.ca == "default" else tls.ca, cert=tls.cert,
                minimum_version=tls.minimum_version, alpn=tls.alpn,
            )
        return ctx

    async def _open(self, key: PoolKey, timeout: float | None) -> HTTPConnection:
        """A pooled HTTP connection for ``key`` (see :meth:`_connect`)."""
        loop = asyncio.get_running_loop()
        return await self._connect(key, timeout, lambda: HTTPConnection(key, loop))

    async def _connect(
        self, key: PoolKey, timeout: float | None, factory: Callable[[], _P]
    ) -> _P:
        """The one place a connection is opened, from its key and nothing else: an
        HTTP connection for the pool, or a WebSocket session's own."""
        loop = asyncio.get_running_loop()
        target = str(key.origin)
        ctx = None if key.tls is None else self._context(key.tls)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    factory, key.host, key.port,
                    ssl=ctx, server_hostname=key.sni if ctx is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout}s", target=target,
                                 phase="connect") from None
        except ssl.SSLError as exc:  # includes certificate and hostname failures
            # A verification failure says which name or CA was wrong in verify_message.
            detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            sni = f" (SNI {key.sni})" if key.sni and key.sni != key.host else ""
            raise TLSError(f"TLS handshake failed: {detail}{sni}", target=target,
                           phase="tls") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect: {exc.strerror or exc}", target=target,
                               phase="connect") from exc
        return conn


def _replayable(body: Body) -> bool:
    """Only a body held in memory can be sent again; a stream was consumed."""
    return body is None or isinstance(body, bytes)
