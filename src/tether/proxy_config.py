"""What ``tether proxy`` forwards where: routes, upstreams, and how they are read from
``--route`` flags and a TOML file.

Rules:

1. A route is a path prefix and an upstream. The longest matching prefix wins. A
   prefix matches a path equal to it or continuing it after a ``/`` (``/api/orders``
   matches ``/api/orders`` and ``/api/orders/7``, never ``/api/ordersx``); ``/``
   matches every path.
2. An upstream is a cluster: a service found in the registry, or a static list of
   ``host:port`` providers. Everything about reaching it (scheme, TLS server name
   and CA, balancer, health path, timeouts, connection limit) belongs to the
   upstream, so two routes to one upstream share its connections.
3. Configuration errors are found before any socket is bound, and name the flag or
   the TOML key at fault.

TOML (``--config tether.toml``)::

    registry = "sqlite:///var/lib/tether/registry.db"   # optional

    [[routes]]
    prefix = "/api/orders"
    upstream = "orders"        # a name from [upstreams], or a registry service
    timeout = 2.0              # optional: at most this long per request
    strip_prefix = false       # optional: send /7 instead of /api/orders/7
                               # (on the command line: --route /api/orders=orders,strip_prefix)

    [[routes]]
    prefix = "/static"
    providers = ["127.0.0.1:9001", "127.0.0.1:9002"]   # a static upstream, inline

    [upstreams.orders]
    service = "orders"         # registry service (default: the upstream's name)
    scheme = "https"
    sni = "orders.internal"    # the TLS server name sent and verified
    ca = "/etc/tether/ca.pem"  # CA bundle to verify the upstream with
    health_path = "*"          # the probe: OPTIONS * (default), or GET of a path
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import quote

from tether.errors import ConfigError

BALANCERS: Final = ("p2c", "round_robin")
#: What may follow a ``--route`` upstream after a comma to strip the prefix: the
#: TOML route key's name (spelt with ``-`` too, as flags are).
STRIP_PREFIX_WORDS: Final = frozenset({"strip_prefix", "strip-prefix"})
#: ``--listen PORT`` alone binds this host, as ``tether status --admin PORT`` reads it.
DEFAULT_LISTEN_HOST: Final = "127.0.0.1"
#: The health probe by default: a question to the server itself (RFC 9110 section
#: 9.3.7) that ``tether serve`` answers without the application and leaves out of
#: its access log. An application's own health path (``/healthz``) is opt-in.
DEFAULT_HEALTH_PATH: Final = "*"


@dataclass(frozen=True)
class Upstream:
    """A cluster the proxy forwards to (rule 2)."""

    name: str
    #: the registry service; None for a static upstream
    service: str | None = None
    providers: tuple[str, ...] | None = None
    scheme: str = "http"
    #: TLS server name to send (and verify the certificate against); default: the host
    sni: str | None = None
    #: CA bundle to verify the upstream's certificate; None: the system store
    ca: str | None = None
    verify: bool = True
    balancer: str = "p2c"
    #: what a probe asks: ``*`` for ``OPTIONS *``, or a path for ``GET path``
    health_path: str | None = DEFAULT_HEALTH_PATH
    connect_timeout: float = 5.0
    #: longest wait for the response head, and between body chunks (nginx: 60 s)
    read_timeout: float = 60.0
    #: connections per provider, per worker
    max_connections: int = 100
    max_attempts: int = 3
    #: WebSocket sessions to this upstream: ping it this often (0: never), and end a
    #: session whose pong takes longer than ws_ping_timeout (a dead upstream network)
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0

    def __post_init__(self) -> None:
        where = f"upstream {self.name!r}"
        if (self.service is None) == (self.providers is None):
            raise ConfigError(f"{where}: give a registry service or providers, not both")
        if self.providers is not None:
            if not self.providers:
                raise ConfigError(f"{where}: providers is empty")
            for address in self.providers:
                _check_address(address, where)
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"{where}: scheme must be http or https, got {self.scheme!r}")
        if self.scheme == "http" and (self.sni or self.ca):
            raise ConfigError(f"{where}: sni and ca need scheme = \"https\"")
        if self.health_path is not None and self.health_path != "*" \
                and not self.health_path.startswith("/"):
            raise ConfigError(f"{where}: health_path must be \"*\" (OPTIONS *) or a path "
                              f"starting with '/', got {self.health_path!r}")
        if self.balancer not in BALANCERS:
            raise ConfigError(f"{where}: balancer must be one of {', '.join(BALANCERS)}")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}: {name} must be positive")
        if self.max_connections < 1 or self.max_attempts < 1:
            raise ConfigError(f"{where}: max_connections and max_attempts must be >= 1")
        if self.ws_ping_interval < 0 or self.ws_ping_timeout <= 0:
            raise ConfigError(f"{where}: ws_ping_interval must be >= 0 and "
                              "ws_ping_timeout positive")


#: what a route's ``host`` may not hold: it is sent upstream as the Host header
_NOT_IN_HOST: Final = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Route:
    """A path prefix and the upstream it forwards to (rule 1)."""

    prefix: str
    upstream: str
    #: at most this many seconds per request (narrowing the client's own deadline)
    timeout: float | None = None
    strip_prefix: bool = False
    #: the Host header to send upstream; None keeps the client's
    host: str | None = None

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ConfigError(f"route {self.prefix!r}: a prefix starts with '/'")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"route {self.prefix!r}: timeout must be positive")
        if self.host is not None and (not self.host or _NOT_IN_HOST.search(self.host)):
            raise ConfigError(f"route {self.prefix!r}: host {self.host!r} is not a host name "
                              "(no spaces or control characters)")

    def matches(self, path: str) -> bool:
        base = self.prefix.rstrip("/")
        return not base or path == base or path.startswith(base + "/")

    def upstream_path(self, raw_path: str, path: str) -> str:
        """The path sent upstream: the raw (percent-encoded) one as received, minus the
        prefix with ``strip_prefix``. The route matched the decoded ``path``; if the
        raw path spells the prefix differently (``/api/%6Frders``, ``/api/orders%2F7``),
        the rest of the decoded path is sent, encoded again, so what is stripped is
        exactly what was matched."""
        if not self.strip_prefix:
            return raw_path
        base = self.prefix.rstrip("/")
        if raw_path.startswith(base) and raw_path[len(base):len(base) + 1] in ("", "/"):
            rest = raw_path[len(base):]
        else:
            rest = quote(path[len(base):], safe="/:@!$&'()*+,;=~")
        return rest if rest.startswith("/") else "/" + rest


@dataclass(frozen=True)
class ProxyConfig:
    routes: tuple[Route, ...]
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    registry: str | None = None

    def __post_init__(self) -> None:
        if not self.routes:
            raise ConfigError("the proxy needs at least one route (--route PREFIX=UPSTREAM)")
        seen: set[str] = set()
        for route in self.routes:
            if route.prefix in seen:
                raise ConfigError(f"route {route.prefix!r} is given twice")
            seen.add(route.prefix)
            if route.upstream not in self.upstreams:
                raise ConfigError(f"route {route.prefix!r}: no upstream {route.upstream!r}")
        for upstream in self.upstreams.values():
            if upstream.service is not None and self.registry is None:
                raise ConfigError(
                    f"upstream {upstream.name!r} is a registry service: give --registry URL "
                    "(or providers = [...] for a static list)")
        # Longest prefix first: the first match is the longest (rule 1).
        ordered = tuple(sorted(self.routes, key=lambda r: len(r.prefix.rstrip("/")),
                               reverse=True))
        object.__setattr__(self, "routes", ordered)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None

    # -- carried to the workers (they build the config again, so a reload re-reads
    # the TOML file: a broken file fails the new worker and the old ones keep serving)

    @staticmethod
    def inputs_to_json(
        route_flags: tuple[str, ...] | list[str], registry: str | None, config_path: str | None
    ) -> str:
        return json.dumps({"routes": list(route_flags), "registry": registry,
                           "config": config_path})

    @staticmethod
    def from_inputs_json(text: str) -> ProxyConfig:
        data = json.loads(text)
        return build_proxy_config(data["routes"], data["registry"], data["config"])


def _check_address(address: str, where: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: provider {address!r} is not host:port")


def _static_providers(target: str) -> tuple[str, tuple[str, ...]] | None:
    """``host:port,host:port`` or ``https://host:port,...`` -> (scheme, providers)."""
    if ":" not in target:
        return None  # a service name
    schemes, providers = set(), []
    for item in target.split(","):
        scheme, sep, rest = item.strip().partition("://")
        if not sep:
            scheme, rest = "http", item.strip()
        schemes.add(scheme)
        providers.append(rest.rstrip("/"))
    if len(schemes) != 1:
        raise ConfigError(f"--route target {target!r} mixes http and https providers")
    return schemes.pop(), tuple(providers)


def parse_route_flag(flag: str) -> tuple[Route, Upstream | None]:
    """``PREFIX=SERVICE`` or ``PREFIX=host:port[,host:port...]`` (a static upstream),
    optionally followed by ``,strip_prefix`` (the TOML route key of that name)."""
    prefix, sep, target = flag.partition("=")
    items = [item.strip() for item in target.split(",")]
    strip = any(item in STRIP_PREFIX_WORDS for item in items)
    target = ",".join(item for item in items if item not in STRIP_PREFIX_WORDS)
    if not sep or not prefix or not target:
        raise ConfigError("--route must be PREFIX=SERVICE or PREFIX=host:port,... "
                          f"(then ,strip_prefix if wanted), got {flag!r}")
    static = _static_providers(target)
    if static is None:
        if "," in target:
            raise ConfigError(f"--route {flag!r}: {target!r} is neither a service name nor "
                              "host:port,...; the only option is strip_prefix")
        return Route(prefix, target, strip_prefix=strip), None
    scheme, providers = static
    name = f"static:{prefix}"
    upstream = Upstream(name, providers=providers, scheme=scheme)
    return Route(prefix, name, strip_prefix=strip), upstream


def parse_listen(value: str) -> tuple[str, int]:
    """``--listen``: ``HOST:PORT``, ``[IPv6]:PORT``, or ``PORT`` alone for
    :data:`DEFAULT_LISTEN_HOST` (never every interface by accident)."""
    value = value.strip()
    if value.isdigit():
        host, port = DEFAULT_LISTEN_HOST, value
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"{value!r} is not HOST:PORT or PORT (such as 127.0.0.1:8080, "
                              "[::1]:8080, 0.0.0.0:8080 or 8080)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(f"{value!r}: write an IPv6 address in brackets, "
                              f"[{host}]:{port}")
    if int(port) > 65535:
        raise ConfigError(f"{value!r}: port {port} is not a port number (0-65535)")
    return host, int(port)


_ROUTE_KEYS: Final = frozenset(f.name for f in fields(Route)) | {"providers", "service"}
_UPSTREAM_KEYS: Final = frozenset(f.name for f in fields(Upstream)) - {"name"}


def load_toml(path: str) -> tuple[list[Route], dict[str, Upstream], str | None]:
    """Routes, upstreams and the registry URL from a TOML file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(data) - {"routes", "upstreams", "registry"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    upstreams: dict[str, Upstream] = {}
    for name, table in data.get("upstreams", {}).items():
        _no_unknown(table, _UPSTREAM_KEYS, f"{path}: [upstreams.{name}]")
        table = dict(table)
        if table.get("providers") is not None:
            table["providers"] = tuple(table["providers"])
        elif "service" not in table:
            table["service"] = name
        upstreams[name] = _build(Upstream, f"{path}: [upstreams.{name}]", name=name, **table)
    routes = []
    for i, table in enumerate(data.get("routes", [])):
        where = f"{path}: routes[{i}]"
        _no_unknown(table, _ROUTE_KEYS, where)
        table = dict(table)
        providers = table.pop("providers", None)
        service = table.pop("service", None)
        if "prefix" not in table:
            raise ConfigError(f"{where}: prefix is required")
        if providers is not None:
            name = f"static:{table['prefix']}"
            upstreams[name] = _build(Upstream, where, name=name, providers=tuple(providers))
            table["upstream"] = name
        elif "upstream" not in table and service is not None:
            table["upstream"] = service
        if "upstream" not in table:
            raise ConfigError(f"{where}: give upstream, service or providers")
        routes.append(_build(Route, where, **table))
    registry = data.get("registry")
    return routes, upstreams, registry


def _no_unknown(table: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _build(cls: Any, where: str, **values: Any) -> Any:
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def build_proxy_config(
    route_flags: tuple[str, ...] | list[str], registry: str | None, config_path: str | None
) -> ProxyConfig:
    """Merge the TOML file (if any) and the ``--route`` flags (which win on a prefix
    given in both); upstreams named by a route but not declared are registry services."""
    routes: dict[str, Route] = {}
    upstreams: dict[str, Upstream] = {}
    if config_path is not None:
        file_routes, upstreams, file_registry = load_toml(config_path)
        routes = {r.prefix: r for r in file_routes}
        registry = registry or file_registry
    for flag in route_flags:
        route, upstream = parse_route_flag(flag)
        routes[route.prefix] = route
        if upstream is not None:
            upstreams[upstream.name] = upstream
    for route in routes.values():
        if route.upstream not in upstreams:
            upstreams[route.upstream] = Upstream(route.upstream, service=route.upstream)
    return ProxyConfig(tuple(routes.values()), upstreams, registry)
