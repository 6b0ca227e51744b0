"""Typed configuration for ``tether serve``: one frozen object, validated once.

The CLI and the ``TETHER_*`` environment variables map onto these fields; nothing
else in tether reads flags or the environment. Invalid values raise
:class:`~tether.errors.ConfigError` naming the option, never a bare traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from tether.errors import ConfigError
from tether.loops import LoopName
from tether.server.forwarded import DEFAULT_TRUST, TrustList
from tether.server.wire import invalid_default_header

LifespanMode = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on what one request may make the server hold in memory or wait for."""

    #: longest request target (the URL in the request line) accepted, in bytes -> 414
    request_line: int = 8190
    #: most header fields in one request -> 431
    request_fields: int = 100
    #: longest single header field (name + value), in bytes -> 431
    request_field_size: int = 8190
    #: largest request body, in bytes; None for no limit -> 413
    request_body: int | None = None
    #: seconds allowed from a request's first byte (or the connection's start)
    #: to the end of its head; a slower client is closed (slowloris protection)
    header_timeout: float = 10.0
    #: seconds allowed between two reads of a request body (nginx's client_body_timeout);
    #: a client that trickles its body is answered 408 and closed
    body_timeout: float = 60.0
    #: seconds an idle keep-alive connection is kept open waiting for its next request
    keep_alive_timeout: float = 5.0
    #: longest deadline a request may ask for on the wire (x-request-timeout-ms,
    #: grpc-timeout); longer ones are narrowed to it
    max_deadline: float = 3600.0

    @property
    def max_head_bytes(self) -> int:
        """Upper bound on a request head's size: more than this is 431 before parsing ends."""
        return self.request_line + 64 + self.request_fields * (self.request_field_size + 4)


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """How WebSocket sessions are served (``--ws-*``)."""

    #: largest message accepted, in bytes; a larger one closes the session with 1009
    max_size: int = 16 * 1024 * 1024
    #: seconds between pings to an open session's client (None: never ping)
    ping_interval: float | None = 20.0
    #: seconds a ping may wait for its pong before the client is taken for gone
    ping_timeout: float = 20.0
    #: negotiate permessage-deflate (RFC 7692) when the client offers it
    per_message_deflate: bool = True


HttpMode = Literal["auto", "1", "2"]


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """How HTTP/2 connections are served (``--http``, ``--h2-*``).

    The limits are what this server advertises in its SETTINGS frame: a client
    that goes past them is refused by the ``h2`` library (a stream error or GOAWAY).
    """

    #: "auto": HTTP/1.1 and HTTP/2 (h2c with prior knowledge, ALPN ``h2`` on TLS);
    #: "1": HTTP/1.1 only; "2": HTTP/2 only
    mode: HttpMode = "auto"
    #: streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS)
    max_concurrent_streams: int = 100
    #: bytes of request body a stream may send before the application reads it
    #: (SETTINGS_INITIAL_WINDOW_SIZE; the connection's window follows the streams')
    initial_window_size: int = 65535
    #: largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE, 16384..16777215)
    max_frame_size: int = 16384
    #: largest decoded request header list, in bytes (SETTINGS_MAX_HEADER_LIST_SIZE):
    #: the bound that defeats HPACK bombs
    max_header_list_size: int = 65536


#: ServerConfig fields never written to a worker's environment (see ServerConfig.to_json)
SECRET_FIELDS = ("ssl_keyfile_password", "admin_token")
#: ServerConfig fields only the supervisor uses: a worker gets their defaults
SUPERVISOR_FIELDS = ("admin_port", "admin_host", "admin_allow_hosts", "registry", "service",
                     "advertise", "meta", "registry_required")
#: environment variables that carry secrets: not passed on to worker processes
SECRET_ENV = ("TETHER_SSL_KEYFILE_PASSWORD", "TETHER_ADMIN_TOKEN")

#: seconds a worker gets, after its own stop timers have all run out, to report and
#: exit before the supervisor kills it (sending the report, closing sockets, exiting)
STOP_MARGIN = 2.0


@dataclass(frozen=True, slots=True)
class StopBudget:
    """How long a worker's stop may last, phase by phase, from the moment it is told
    to leave (a ``drain`` on reload or recycle, a ``stop`` when the service stops).

    Derived once from the configuration (:attr:`ServerConfig.stop_budget`) and read by
    everyone who times a stop: the worker runs its phases on these timers, and the
    supervisor kills a worker still there after :attr:`total`, whatever its state.
    Two budgets that disagreed (the supervisor killing before the worker's own
    timers ran out) is the bug this type exists to prevent; gunicorn's arbiter has
    one ``limit`` for the same reason.

        0 ............ graceful ......... +cancel ......... +lifespan ... +margin
        stop begins    handlers still     cancelled         lifespan       SIGKILL
                       running are        handlers given    shutdown
                       cancelled          up on             given up on
    """

    #: in-flight requests finish (``--graceful-timeout``)
    graceful: float
    #: cancelled handlers finish their cleanup (``--force-exit-timeout``)
    cancel: float
    #: the application's lifespan shutdown (``--force-exit-timeout`` again)
    lifespan: float
    #: time to report and exit once every timer above has run out
    margin: float = STOP_MARGIN

    @property
    def worker(self) -> float:
        """The longest the worker's own timers let its stop last."""
        return self.graceful + self.cancel + self.lifespan

    @property
    def total(self) -> float:
        """When the supervisor kills a worker that is still there (SIGKILL)."""
        return self.worker + self.margin


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``tether serve`` needs to run one service."""

    app: str
    factory: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    fd: int | None = None
    backlog: int = 2048
    lifespan: LifespanMode = "auto"
    root_path: str = ""
    loop: LoopName = "auto"
    limits: RequestLimits = field(default_factory=RequestLimits)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    http2: Http2Settings = field(default_factory=Http2Settings)
    access_log: bool = True
    log_level: LogLevel = "info"
    #: seconds a stop waits for in-flight requests before cancelling them
    graceful_timeout: float = 30.0
    #: seconds cancelled handlers get to finish, and again for lifespan shutdown
    #: (see StopBudget: the supervisor kills a worker STOP_MARGIN after both)
    force_exit_timeout: float = 5.0
    app_dir: str | None = None
    # -- proxy headers (docs/server.md, "Behind a proxy") ---------------------------------
    #: believe X-Forwarded-* and Forwarded from trusted peers (uvicorn's --proxy-headers)
    proxy_headers: bool = True
    #: peers whose proxy headers are believed: addresses and networks, or "*"
    forwarded_allow_ips: str = DEFAULT_TRUST
    # -- logging (docs/logging.md) -------------------------------------------------------
    #: logging configuration file applied in every process: dictConfig as .json or
    #: .yaml/.yml, anything else an INI fileConfig (uvicorn's rule)
    log_config: str | None = None
    #: "text" (tether's lines) or "json" (one JSON object per line)
    log_format: LogFormat = "text"
    #: %-style format of an access line over its fields (None: tether's line)
    access_log_format: str | None = None
    #: request paths (scope["path"], exact) whose requests leave no access line
    access_log_exclude: tuple[str, ...] = ()
    # -- deadlines and cancellation ------------------------------------------------------
    #: server cap on every request's deadline, seconds (None: only the client's)
    request_timeout: float | None = None
    #: cancel a handler the moment its client disconnects
    cancel_on_disconnect: bool = True
    #: requests run at once per worker; more wait in the admission queue (None: no limit)
    limit_concurrency: int | None = None
    #: Starlette/FastAPI apps answer tether's errors as a plain ASGI app does (503 with
    #: Retry-After, 504) instead of Starlette's 500 (see server/frameworks.py)
    framework_handlers: bool = True
    # -- supervisor ---------------------------------------------------------------
    #: worker processes; there is always a supervisor, even for one
    workers: int = 1
    #: seconds a new worker has to import the app, run lifespan startup and accept
    worker_start_timeout: float = 30.0
    #: seconds without a heartbeat after which a worker is killed and replaced
    worker_timeout: float = 30.0
    #: recycle a worker after this many requests (None: never)
    max_requests: int | None = None
    #: add up to this many requests, at random per worker, so they do not recycle together
    max_requests_jitter: int = 0
    #: consecutive failed worker starts after which the supervisor gives up
    max_start_failures: int = 5
    #: port of the supervisor's admin listener (/healthz, /readyz, /status); None: off
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    #: Host names the admin port answers to besides loopback ones (DNS rebinding)
    admin_allow_hosts: tuple[str, ...] = ()
    #: bearer token every admin request must carry; required beyond loopback
    admin_token: str | None = None
    pid_file: str | None = None
    # -- --reload (development) --------------------------------------------------------
    #: watch the app's files and roll the workers on a change (server/reloader.py)
    reload: bool = False
    #: directories watched (default: --app-dir, or the current directory)
    reload_dirs: tuple[str, ...] = ()
    #: glob patterns of files whose change reloads, besides *.py
    reload_includes: tuple[str, ...] = ()
    #: glob patterns (or directories) of files that never reload
    reload_excludes: tuple[str, ...] = ()
    # -- service registry ---------------------------------------------------------------
    #: registry URL (sqlite:///path.db, etcd://host:port/prefix); None: do not register
    registry: str | None = None
    service: str | None = None
    #: host:port clients should use (default: the bound TCP address)
    advertise: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    registry_ttl: float = 10.0
    #: fail at start if the registry is unreachable (default: serve, keep retrying)
    registry_required: bool = False
    # -- TLS (server side) -----------------------------------------------------------
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: Literal["none", "optional", "required"] = "none"
    ssl_ciphers: str | None = None
    # -- response headers (uvicorn's --header, --server-header, --date-header) ----------
    #: (name, value) headers added to every response unless the app sends that name
    headers: tuple[tuple[str, str], ...] = ()
    #: send ``server: tether`` unless the app sends its own server header
    server_header: bool = True
    #: send a ``date`` header unless the app sends its own
    date_header: bool = True

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @property
    def forwarded_trust(self) -> TrustList | None:
        """The peers whose proxy headers are believed (None: --no-proxy-headers)."""
        return TrustList.parse(self.forwarded_allow_ips) if self.proxy_headers else None

    @property
    def access_fields(self) -> bool:
        """Whether access records carry their fields (``extra``): only when a handler
        may read them, so tether's default line costs no dict per request."""
        return (self.log_format == "json" or self.access_log_format is not None
                or self.log_config is not None)

    @property
    def stop_budget(self) -> StopBudget:
        """The one stop budget: every timer of a stop, in the worker and the supervisor."""
        return StopBudget(graceful=self.graceful_timeout, cancel=self.force_exit_timeout,
                          lifespan=self.force_exit_timeout)

    def __post_init__(self) -> None:
        if ":" not in self.app:
            raise ConfigError(f'APP must be "MODULE:ATTR", got {self.app!r}')
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd are mutually exclusive")
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"--fd must be a non-negative descriptor, got {self.fd}")
        if self.backlog < 1:
            raise ConfigError(f"--backlog must be at least 1, got {self.backlog}")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"--lifespan must be auto, on or off, not {self.lifespan!r}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(f"--loop must be auto, asyncio or uvloop, not {self.loop!r}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError(
                f"--root-path must start with '/' and not end with one, got {self.root_path!r}"
            )
        try:
            TrustList.parse(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, not {self.log_format!r}")
        if self.log_format == "json" and self.access_log_format is not None:
            raise ConfigError("--access-log-format applies to text lines; a --log-format "
                              "json line already has every field")
        for path in self.access_log_exclude:
            if not path.startswith("/"):
                raise ConfigError(f"--access-log-exclude must be a path starting with '/', "
                                  f"got {path!r}")
        _positive("--keep-alive-timeout", self.limits.keep_alive_timeout)
        _positive("--header-timeout", self.limits.header_timeout)
        _positive("--body-timeout", self.limits.body_timeout)
        _positive("--max-deadline", self.limits.max_deadline)
        _positive("--graceful-timeout", self.graceful_timeout, allow_zero=True)
        _positive("--force-exit-timeout", self.force_exit_timeout, allow_zero=True)
        if self.request_timeout is not None:
            _positive("--request-timeout", self.request_timeout)
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ConfigError(
                f"--limit-concurrency must be at least 1, got {self.limit_concurrency}"
            )
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        _positive("--worker-start-timeout", self.worker_start_timeout)
        _positive("--worker-timeout", self.worker_timeout)
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"--max-requests must be at least 1, got {self.max_requests}")
        if self.max_requests_jitter < 0:
            raise ConfigError(
                f"--max-requests-jitter must be non-negative, got {self.max_requests_jitter}"
            )
        if self.max_start_failures < 1:
            raise ConfigError(
                f"--max-start-failures must be at least 1, got {self.max_start_failures}"
            )
        if self.admin_port is not None and not 0 <= self.admin_port <= 65535:
            raise ConfigError(f"--admin-port must be between 0 and 65535, got {self.admin_port}")
        if self.admin_port is not None and self.admin_token is None and not _is_loopback(
            self.admin_host
        ):
            raise ConfigError(
                f"--admin-host {self.admin_host} is reachable beyond this machine: set an "
                "admin token (--admin-token-file or TETHER_ADMIN_TOKEN); see docs/security.md"
            )
        if not self.reload and (self.reload_dirs or self.reload_includes or
                                self.reload_excludes):
            raise ConfigError("--reload-dir, --reload-include and --reload-exclude need --reload")
        for directory in self.reload_dirs:
            if not os.path.isdir(directory):
                raise ConfigError(f"--reload-dir {directory!r} is not a directory")
        if (self.registry is None) != (self.service is None):
            raise ConfigError("--registry and --service go together")
        _positive("--registry-ttl", self.registry_ttl)
        if self.advertise is not None and not _is_host_port(self.advertise):
            raise ConfigError(f"--advertise must be HOST:PORT, got {self.advertise!r}")
        if self.ssl_cert_reqs not in ("none", "optional", "required"):
            raise ConfigError(
                f"--ssl-cert-reqs must be none, optional or required, not {self.ssl_cert_reqs!r}"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("--ssl-keyfile needs --ssl-certfile")
        for name, value in (
            ("--limit-request-line", self.limits.request_line),
            ("--limit-request-fields", self.limits.request_fields),
            ("--limit-request-field-size", self.limits.request_field_size),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.websocket.max_size < 1:
            raise ConfigError(f"--ws-max-size must be at least 1, got {self.websocket.max_size}")
        if self.websocket.ping_interval is not None:
            _positive("--ws-ping-interval", self.websocket.ping_interval)
        _positive("--ws-ping-timeout", self.websocket.ping_timeout)
        h2 = self.http2
        if h2.mode not in ("auto", "1", "2"):
            raise ConfigError(f"--http must be auto, 1 or 2, got {h2.mode!r}")
        if not 1 <= h2.max_concurrent_streams <= 2**31 - 1:
            raise ConfigError("--h2-max-concurrent-streams must be at least 1, got "
                              f"{h2.max_concurrent_streams}")
        if not 1 <= h2.initial_window_size <= 2**31 - 1:
            raise ConfigError("--h2-initial-window-size must be 1..2147483647, got "
                              f"{h2.initial_window_size}")
        if not 16384 <= h2.max_frame_size <= 16777215:
            raise ConfigError("--h2-max-frame-size must be 16384..16777215, got "
                              f"{h2.max_frame_size}")
        if h2.max_header_list_size < 1024:
            raise ConfigError("--h2-max-header-list-size must be at least 1024, got "
                              f"{h2.max_header_list_size}")
        if self.limits.request_body is not None and self.limits.request_body < 0:
            raise ConfigError(
                f"--limit-request-body must be non-negative, got {self.limits.request_body}"
            )
        # -- response headers --
        for header, header_value in self.headers:
            reason = invalid_default_header(header, header_value)
            if reason is not None:
                raise ConfigError(f"--header {header}:{header_value}: {reason}")


    def to_json(self) -> str:
        """Serialise for a worker process (the supervisor passes it in the environment).
        Secrets are left out: a process's environment is readable by its user and by
        root tools; the supervisor sends them over the private control channel."""
        fields = asdict(self)
        for name in SECRET_FIELDS:
            fields[name] = None
        # What only the supervisor uses stays with it: the admin listener (whose
        # rules need the token, which the worker gets later, over the channel) and the
        # registry URL (which may carry a password).
        for name in SUPERVISOR_FIELDS:
            fields[name] = _DEFAULTS[name]
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        fields = json.loads(text)
        fields["limits"] = RequestLimits(**fields["limits"])
        fields["websocket"] = WebSocketSettings(**fields["websocket"])
        fields["http2"] = Http2Settings(**fields["http2"])
        fields["meta"] = tuple(tuple(pair) for pair in fields["meta"])
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            fields[name] = tuple(fields[name])
        fields["headers"] = tuple(tuple(pair) for pair in fields["headers"])
        fields["access_log_exclude"] = tuple(fields["access_log_exclude"])
        return cls(**fields)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        rule = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be {rule}, got {value}")


#: defaults of the fields a worker's copy of the configuration leaves out
_DEFAULTS = {name: ServerConfig.__dataclass_fields__[name].default for name in SUPERVISOR_FIELDS}
