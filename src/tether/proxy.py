"""``tether proxy``: an ASGI reverse proxy over tether's clusters and connection pool.

It is an ordinary ASGI app run by the ordinary supervisor, so reloads, graceful
stops, deadlines, admission and metrics behave exactly as for ``tether serve``.
Field report 4 (docs/incidents.md, Traffic Server's origin pool) is why every upstream has its own
client and pool keyed by the full connection identity (TLS server name included),
and why connection reuse is measured per origin.

Rules, in order:

1. Route by the longest matching prefix (see :mod:`tether.proxy_config`); no
   route: ``404``. The upstream request is built from parts: the provider's
   address from the cluster, the origin-form path from the route and the
   request's path (the server has already refused any other target form, and an
   absolute-form target is routed by its path alone). Nothing a client writes
   decides where the proxy connects. ``OPTIONS *`` is answered by the proxy.
2. Request headers: drop the hop-by-hop ones (RFC 9110 section 7.6.1: Connection,
   the headers it names, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
   Upgrade, Proxy-Authorization/-Authenticate); append the peer the request came
   from to ``Forwarded`` and ``X-Forwarded-For``, set ``X-Forwarded-Proto`` (the
   client's scheme) and ``X-Forwarded-Host``, append ``Via``. The deadline header
   is not copied: the client writes a fresh one with the time actually left.
3. Bodies stream both ways with back-pressure; nothing holds a whole body, except
   a request body of at most :data:`BUFFER_LIMIT` bytes with a Content-Length,
   kept so an idempotent request can be retried on another provider, and a response
   body of at most that size with a Content-Length, read whole before the response
   starts (one write less per request; an upstream failing while sending it gets
   the client a clean ``502``, not a cut response).
4. Deadlines: the client's deadline (``x-request-timeout-ms``), narrowed by the
   route's ``timeout``, bounds the upstream exchange and travels upstream. A client
   that disconnects cancels the handler (the server's cancel-on-disconnect), which
   closes the upstream connection at once, which cancels the upstream handler.
5. Failures before the response starts: no provider ``503``, deadline or upstream
   timeout ``504``, anything else from the upstream ``502``; logged once, as one
   warning line. After it started: the connection is closed (a truncated response
   must never look complete).
6. WebSocket upgrades follow rules 1, 2, 4 and 5 for the handshake, then are relayed
   message by message (:mod:`tether.proxy_websocket`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Final, NamedTuple

from tether.asgi import Receive, Scope, Send
from tether.client import Client
from tether.client.cluster import Cluster, NoProviderAvailable
from tether.client.errors import LocalProtocolError, TimeoutException, TLSError, TransportError
from tether.client.models import Timeout, origin_form
from tether.deadline import HEADER_BYTES as DEADLINE_HEADER_BYTES
from tether.deadline import DeadlineExceeded, deadline_after
from tether.errors import ClientDisconnected, ResponseAborted
from tether.proxy_config import ProxyConfig, Route, Upstream
from tether.proxy_websocket import forward_websocket
from tether.registry.base import Registry
from tether.registry.urls import open_registry
from tether.server import grpc, wire

logger = logging.getLogger("tether.proxy")

#: the environment variable that carries the configuration to the worker processes
ENV_CONFIG: Final = "TETHER_PROXY_INPUTS"
#: request bodies up to this size (with a Content-Length) are read before sending, so
#: they can be sent again to another provider; larger ones stream and are sent once
BUFFER_LIMIT: Final = 64 * 1024
VIA: Final = b"1.1 tether"
ALLOWED_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_NO_SCOPE: Final = contextlib.nullcontext()
#: methods that get ``content-length: 0`` when the client sent no body
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

HOP_BY_HOP: Final = frozenset({
    b"connection", b"proxy-connection", b"keep-alive", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})
#: request headers not copied upstream: hop-by-hop, and those the proxy writes itself
#: (the client writes a fresh deadline header with the time actually left)
_REQUEST_DROP: Final = HOP_BY_HOP | {
    DEADLINE_HEADER_BYTES, b"grpc-timeout", b"x-forwarded-proto", b"x-forwarded-host"}
#: the request headers rule 2 looks at; every other one is copied as it is
_REQUEST_SPECIAL: Final = _REQUEST_DROP | {
    b"host", b"content-length", b"x-forwarded-for", b"forwarded", b"via"}
#: the response headers rule 2 looks at
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length", b"via"}


def _quoted(value: bytes) -> bytes:
    """An RFC 7230 quoted-string: a client's Host cannot add Forwarded parameters."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _node(host: bytes) -> bytes:
    """A Forwarded node: IPv6 in brackets and quotes (RFC 7239 section 6)."""
    return b'"[%s]"' % host if b":" in host else host


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


class HopFields(NamedTuple):
    """The headers this hop adds after the ones it copies (rule 2): X-Forwarded-Proto,
    X-Forwarded-Host, the three chains with this hop last, the route's Host."""

    pairs: tuple[tuple[bytes, bytes], ...]
    #: the same, rendered as header lines ("name: value\r\n" each)
    lines: bytes


def upstream_request_head(
    scope: Scope, host_override: str | None
) -> tuple[list[tuple[bytes, bytes]], HopFields, bytes | None, bool]:
    """The headers sent upstream (rule 2): those copied from the client and those
    this hop adds; the request's Content-Length and whether it is chunked. One pass
    over what the client sent (this runs for every request: it works on the bytes
    the server parsed, and allocates nothing per header it drops). Repeated headers
    keep their order, and each chain (X-Forwarded-For, Forwarded, Via) gets this hop
    last."""
    out: list[tuple[bytes, bytes]] = []
    chains: tuple[list[bytes], list[bytes], list[bytes]] | None = None
    host = length = None
    chunked = False
    named: set[bytes] | None = None  # what Connection names: hop-by-hop too
    for name, value in scope["headers"]:
        name = name.lower()  # already lower case from tether's server: no copy made
        if name in _REQUEST_SPECIAL:
            if name == b"host":
                host = value
                if host_override is not None:
                    continue
            elif name == b"content-length":
                if length is None:
                    length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                named = _tokens(value) if named is None else named | _tokens(value)
            if name in _REQUEST_DROP:
                continue
            chain = _CHAINS.get(name)
            if chain is not None:  # X-Forwarded-For, Forwarded, Via
                if chains is None:
                    chains = ([], [], [])
                chains[chain].append(value)
                continue
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n not in named]
        if chains is not None:
            forwarded_for, forwarded, via = chains
            chains = ([] if b"x-forwarded-for" in named else forwarded_for,
                      [] if b"forwarded" in named else forwarded,
                      [] if b"via" in named else via)
    # X-Forwarded-For and Forwarded are chains: each proxy appends the peer it
    # received the request from (the upstream decides how many hops to trust). When
    # the server's proxy headers named an earlier client, the peer is in
    # extensions["tether"]["transport"]: appending the named client instead would
    # drop a hop and make the upstream trust what this proxy trusted.
    extensions = scope.get("extensions")
    tether_ext = extensions.get("tether") if extensions else None
    transport = (tether_ext.get("transport") if tether_ext else None) or scope
    client = transport.get("client")
    proto = scope.get("scheme", "http")
    key = (client[0] if client else None, proto, transport.get("scheme", proto), host,
           host_override)
    if chains is None or not any(chains):
        hop = _hops.get(key) or _hop(*key)  # the common case: rendered once
    else:
        hop = _hop_fields(*key, chains)
    return out, hop, length, chunked


#: the chains a request may carry, and their order in HopFields
_CHAIN_NAMES: Final = (b"x-forwarded-for", b"forwarded", b"via")
_CHAINS: Final = {name: i for i, name in enumerate(_CHAIN_NAMES)}
_NO_CHAINS: Final[tuple[list[bytes], list[bytes], list[bytes]]] = ([], [], [])

#: this hop's fields for a request that brought no chains, by (peer, scheme, the
#: hop's scheme, Host, the route's Host): a connection's requests share them, so
#: each is rendered once
_hops: dict[tuple[str | None, str, str, bytes | None, str | None], HopFields] = {}


def _hop(peer: str | None, proto: str, hop_proto: str, host: bytes | None,
         host_override: str | None) -> HopFields:
    if len(_hops) >= 4096:  # peers and hosts come and go: keep it bounded
        _hops.clear()
    hop = _hops[(peer, proto, hop_proto, host, host_override)] = _hop_fields(
        peer, proto, hop_proto, host, host_override, _NO_CHAINS)
    return hop


def _hop_fields(peer: str | None, proto: str, hop_proto: str, host: bytes | None,
                host_override: str | None,
                chains: tuple[list[bytes], list[bytes], list[bytes]]) -> HopFields:
    """This hop's fields, after the chains the client sent."""
    client_host = peer.encode("latin-1") if peer is not None else b"unknown"
    # Proto is the scheme the client used (as the server resolved it: a trusted
    # proxy in front may have ended TLS), set, never taken from the client's headers;
    # the Forwarded element describes this hop, so it has the hop's own scheme.
    forwarded = b"for=%s;proto=%s" % (_node(client_host), hop_proto.encode("latin-1"))
    if host is not None:
        forwarded += b";host=" + _quoted(host)
    pairs = [(b"x-forwarded-proto", proto.encode("latin-1"))]
    if host is not None:
        pairs.append((b"x-forwarded-host", host))
    this_hop = (client_host, forwarded, VIA)
    for name, values, node in zip(_CHAIN_NAMES, chains, this_hop, strict=True):
        pairs.append((name, b", ".join([*values, node])))
    if host_override is not None:
        pairs.append((b"host", host_override.encode("latin-1")))
    return HopFields(tuple(pairs), _header_lines(pairs))


def _header_lines(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``name: value\r\n`` for each field (nothing for none)."""
    return b"\r\n".join([b": ".join(field) for field in fields]) + b"\r\n" if fields else b""


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers for the client (rule 2): end-to-end ones,
    names lower-cased, then Via with this hop appended."""
    return _end_to_end(headers)[0]


def response_head(headers: list[tuple[bytes, bytes]]) -> tuple[wire.CheckedHead, bool]:
    """:func:`response_headers` rendered for the server (``wire.CHECKED_HEAD``: the
    lines, the Content-Length, the default headers they replace), and whether the
    body is small enough to read whole before answering (a Content-Length of at most
    :data:`BUFFER_LIMIT`).

    The server writes the lines as they are: tether's client parser (llhttp, strict)
    has already refused every name that is not a token, every value holding a
    control character (CR, LF, NUL...) and a Content-Length that is not digits,
    which is all the server's own check would refuse; Transfer-Encoding and
    Connection are dropped here, so the server frames the response itself."""
    fields, length, overridden = _end_to_end(headers)
    small = length is not None and length <= BUFFER_LIMIT
    return (_header_lines(fields), length, overridden), small


def _end_to_end(
    headers: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[bytes, bytes]], int | None, int]:
    """:func:`response_headers`, the Content-Length among them, and the bits of the
    server's default headers (date, server) they set: one pass over the headers."""
    out: list[tuple[bytes, bytes]] = []
    via: list[bytes] = []
    named: set[bytes] | None = None
    length = None
    overridden = 0
    defaults = wire.DEFAULT_BITS
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            if lname == b"content-length":
                length = int(value)  # digits: the client's parser checked them
            elif lname == b"via":
                via.append(value)
                continue
            elif lname == b"connection":
                named = _tokens(value) if named is None else named | _tokens(value)
                continue
            else:  # hop-by-hop
                continue
        elif lname in defaults:  # date, server, --header names: the upstream's win
            overridden |= defaults[lname]
        out.append((lname, value))
    if named:  # headers the upstream's Connection named are hop-by-hop too (rare)
        out = [(n, v) for n, v in out if n not in named]
        via = [] if b"via" in named else via
        length = next((int(v) for n, v in out if n == b"content-length"), None)
        overridden = 0
        for n, _ in out:
            overridden |= defaults.get(n, 0)
    via.append(VIA)
    out.append((b"via", b", ".join(via)))
    return out, length, overridden


def upstream_target(route: Route, scope: Scope) -> str:
    """The target sent upstream (rule 1): the route's path for the request's, and
    its query."""
    path = scope["path"]
    target = route.upstream_path(scope["raw_path"].decode("latin-1") or path, path)
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    return target


def request_line(method: str, target: str) -> bytes:
    """The upstream request line for the origin-form ``target`` (rule 1), checked as
    every client request target is (:class:`LocalProtocolError` otherwise)."""
    try:
        return b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"),
                                        origin_form(target).encode("latin-1"))
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"request target not encodable as latin-1: {exc}") from exc


def framed_fields(
    fields: list[tuple[bytes, bytes]], hop: HopFields, method: str, length: bytes | None,
    chunked: bool,
) -> tuple[bytes, int | None]:
    """The header lines sent upstream (the copied ``fields``, then ``hop``'s), with
    the body's framing, and the length a streamed body must have (None: chunked, or a
    body held whole).

    The names and values come from tether's own parsers (HTTP/1.1 and HTTP/2 refuse
    CR, LF and NUL in them) and from the proxy's configuration (a route's ``host`` is
    checked when it is loaded), so nothing here can end a line early; counting the
    line ends makes sure of it in one scan in C, instead of a check per header."""
    lines = _header_lines(fields) + hop.lines
    expected = len(fields) + len(hop.pairs)
    declared = None
    if length is not None:
        if not length.isdigit():
            raise LocalProtocolError(f"invalid Content-Length {length[:32]!r}")
        if int(length) > BUFFER_LIMIT:
            declared = int(length)  # streamed: it must match exactly
    elif chunked:
        lines += b"transfer-encoding: chunked\r\n"
        expected += 1
    elif method in _BODY_METHODS:
        lines += b"content-length: 0\r\n"
        expected += 1
    if lines.count(b"\n") != expected:
        raise LocalProtocolError("a header name or value holds a line feed")
    return lines, declared


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client left while sending the request body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def request_body(
    length: bytes | None, chunked: bool, receive: Receive
) -> bytes | AsyncIterator[bytes] | None:
    """None without a body; the bytes of a small one (replayable); else a stream."""
    if length is None:
        return _stream_body(receive) if chunked else None
    if int(length) > BUFFER_LIMIT:
        return _stream_body(receive)
    parts = [chunk async for chunk in _stream_body(receive)]
    return b"".join(parts)


class Proxy:
    """The proxy app. One :class:`~tether.client.Client` (pool) and cluster per
    upstream, created at lifespan startup in each worker."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.clients: dict[str, Client] = {}
        self.clusters: dict[str, Cluster] = {}
        self._registry: Registry | None = None

    async def startup(self) -> None:
        if self.config.registry is not None:
            self._registry = open_registry(self.config.registry)
        for name, upstream in self.config.upstreams.items():
            self.clients[name] = client = self._client(upstream)
            self.clusters[name] = cluster = self._cluster(client, upstream)
            cluster.start()  # find and probe providers before the first request

    def _client(self, upstream: Upstream) -> Client:
        verify: bool | str = upstream.ca if upstream.ca is not None else upstream.verify
        return Client(
            timeout=Timeout(connect=upstream.connect_timeout, read=upstream.read_timeout,
                            write=upstream.read_timeout, pool=upstream.connect_timeout),
            verify=verify, sni_hostname=upstream.sni, registry=self._registry,
            max_connections=upstream.max_connections * 16,
            max_connections_per_origin=upstream.max_connections,
        )

    def _cluster(self, client: Client, upstream: Upstream) -> Cluster:
        options: dict[str, Any] = {
            "balancer": upstream.balancer, "health_path": upstream.health_path,
            "scheme": upstream.scheme, "max_attempts": upstream.max_attempts,
        }
        if upstream.providers is not None:
            options["providers"] = list(upstream.providers)
        return client.service(upstream.service or upstream.name, **options)

    async def shutdown(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        if self._registry is not None:
            await self._registry.close()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI application. (Not a coroutine itself: it returns the handler's, so
        a request's task resumes one frame less on every event.)"""
        kind = scope["type"]
        if kind == "http":
            return self.forward(scope, receive, send)
        if kind == "websocket":
            return self.forward_websocket(scope, receive, send)
        if kind == "lifespan":
            return self._lifespan(receive, send)
        raise ValueError(f"tether proxy does not serve {kind!r} scopes")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one request (rules 1-5)."""
        path = scope["path"]
        if scope["raw_path"] == b"*":
            # ``OPTIONS *`` (the server lets only OPTIONS use this form) asks about the
            # proxy itself, not about any upstream resource: the proxy answers it.
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"allow", ALLOWED_METHODS), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        route = self.config.match(path)
        if route is None:
            await _answer(send, 404, f"no route for {path}\n")
            return
        if scope["http_version"] == "2" and _is_grpc_call(scope):
            # Upstreams are reached over HTTP/1.1, which cannot carry gRPC (it needs
            # trailers): say so as gRPC does, instead of a response no client reads.
            logger.warning("%s %s: gRPC call not forwarded: upstream %s is HTTP/1.1",
                           scope["method"], path, route.upstream)
            await _answer_grpc(send, grpc.UNIMPLEMENTED,
                               f"tether proxy reaches upstream {route.upstream} over "
                               "HTTP/1.1, which cannot carry gRPC: call the service directly")
            return
        fields, hop, length, chunked = upstream_request_head(scope, route.host)
        method = scope["method"]
        cluster = self.clusters[route.upstream]
        started = False
        try:
            start = request_line(method, upstream_target(route, scope))
            head, declared = framed_fields(fields, hop, method, length, chunked)
            # Framing comes from what the client sent (Transfer-Encoding is hop-by-hop
            # and already gone from ``fields``).
            body = (None if length is None and not chunked
                    else await request_body(length, chunked, receive))
            async with deadline_after(route.timeout) if route.timeout is not None else _NO_SCOPE:
                response = await cluster.forward(method, start, head, body, declared)
                try:
                    checked, small = response_head(response.headers)
                    start_message = {"type": "http.response.start",
                                     "status": response.status_code, wire.CHECKED_HEAD: checked}
                    if small:
                        # A small body with a length (most responses): read whole, then
                        # head and body go out in two sends. A failure while reading it
                        # is still a clean 502/504, not a cut response.
                        content = response.complete_body()
                        if content is None:
                            content = await response.aread()
                        await send(start_message)
                        started = True
                        await send({"type": "http.response.body", "body": content})
                    else:
                        await send(start_message)
                        started = True
                        async for chunk in response.aiter_bytes():
                            await send({"type": "http.response.body", "body": chunk,
                                        "more_body": True})
                        await send({"type": "http.response.body", "body": b""})
                finally:
                    response.close()
        except TransportError as exc:
            self._failed(method, path, route.upstream, exc, started)
            if started:
                raise ResponseAborted(f"upstream failed mid-response: {exc}") from exc
            if isinstance(exc, TimeoutException):
                await _answer(send, 504, f"upstream {route.upstream} timed out\n")
            else:
                await _answer(send, 502, f"bad gateway: upstream {route.upstream} failed\n")
        except NoProviderAvailable as exc:
            self._failed(method, path, route.upstream, exc, started)
            if exc.errors and all(isinstance(e, TLSError) for e in exc.errors):
                # Every provider fails the TLS handshake: a misconfiguration (CA, server
                # name), not an outage that waiting would cure.
                await _answer(send, 502, f"bad gateway: upstream {route.upstream} fails "
                              "TLS verification\n")
            else:
                await _answer(send, 503, f"no provider of upstream {route.upstream} is "
                              "available\n", retry_after=True)
        except DeadlineExceeded as exc:
            if started:
                raise
            self._failed(method, path, route.upstream, exc, started)
            await _answer(send, 504, f"deadline exceeded waiting for {route.upstream}\n")
        except LocalProtocolError as exc:
            # What the client sent cannot be forwarded (a target or header the
            # upstream request may not carry): the client's error, no provider's.
            logger.warning("%s %s: not forwarded: %s", method, path, exc)
            await _answer(send, 400, "bad request: cannot be forwarded\n")

    async def forward_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one WebSocket session: routed and headed as a request (rules 1, 2
        and 4), then relayed (see :mod:`tether.proxy_websocket`)."""
        path = scope["path"]
        route = self.config.match(path)
        if route is None:
            await receive()  # websocket.connect
            await send({"type": "websocket.http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "websocket.http.response.body",
                        "body": f"no route for {path}\n".encode()})
            return
        target = upstream_target(route, scope)
        # X-Forwarded-Proto and Forwarded's proto name the HTTP scheme of the hop
        # (http/https), which frameworks expect, not the ws/wss of the ASGI scope.
        hop = {**scope, "scheme": "https" if scope["scheme"] == "wss" else "http"}
        upstream = self.config.upstreams[route.upstream]
        fields, added, _, _ = upstream_request_head(hop, route.host)
        await forward_websocket(
            scope, receive, send, cluster=self.clusters[route.upstream],
            upstream=route.upstream, target=target,
            headers=[(n.decode("latin-1"), v.decode("latin-1"))
                     for n, v in (*fields, *added.pairs)],
            timeout=route.timeout, ping=(upstream.ws_ping_interval or None,
                                         upstream.ws_ping_timeout))

    @staticmethod
    def _failed(method: str, path: str, upstream: str, exc: Exception, started: bool) -> None:
        when = "mid-response" if started else "before responding"
        logger.warning("%s %s: upstream %s failed %s: %s", method, path, upstream, when, exc)


def _is_grpc_call(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return grpc.is_grpc(value)
    return False


async def _answer_grpc(send: Send, code: int, message: str) -> None:
    """A gRPC trailers-only response: HTTP 200, the outcome in ``grpc-status``."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", grpc.GRPC_CONTENT_TYPE), *grpc.code_fields(code, message)]})
    await send({"type": "http.response.body", "body": b""})


async def _answer(send: Send, status: int, text: str, *, retry_after: bool = False) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", b"%d" % len(body))]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def from_environment() -> Proxy:
    """The app factory the workers import (``tether.proxy:from_environment``)."""
    return Proxy(ProxyConfig.from_inputs_json(os.environ[ENV_CONFIG]))
