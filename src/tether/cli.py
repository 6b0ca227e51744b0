"""The ``tether`` command. Flags and ``TETHER_*`` environment variables map onto
:class:`~tether.config.ServerConfig`; this module holds no behaviour of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any

import click
from setproctitle import setproctitle

from tether import __version__
from tether.config import (
    STOP_MARGIN,
    Http2Settings,
    RequestLimits,
    ServerConfig,
    WebSocketSettings,
)
from tether.envfile import load_env_file
from tether.errors import ConfigError
from tether.logs import LEVELS, LOG_FORMATS, LogConfigError, configure_for
from tether.migrating import MigratingCommand
from tether.proctitle import supervisor_title
from tether.registry import DEFAULT_URL, Provider, RegistryError, Unreachable, open_registry
from tether.registry.urls import redact
from tether.server.forwarded import DEFAULT_TRUST
from tether.server.sockets import BindError, adopt_fd, bind_tcp, bind_unix
from tether.server.supervisor import run_supervisor
from tether.server.worker import EXIT_ERROR, server_ssl_context
from tether.statusview import status_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """tether: a reliability-first runtime for Python asyncio services."""


def _env(name: str) -> str:
    return f"TETHER_{name}"


@main.command(cls=MigratingCommand)
@click.argument("app", envvar=_env("APP"))
@click.option("--host", default="127.0.0.1", show_default=True, envvar=_env("HOST"),
              help="Address to bind (IPv4, IPv6 or a name).")
@click.option("--port", default=8000, show_default=True, type=int, envvar=_env("PORT"),
              help="Port to bind; 0 picks a free one.")
@click.option("--uds", default=None, envvar=_env("UDS"), help="Bind a Unix domain socket.")
@click.option("--fd", default=None, type=int, envvar=_env("FD"),
              help="Serve on an inherited, already listening file descriptor.")
@click.option("--backlog", default=2048, show_default=True, type=int, envvar=_env("BACKLOG"),
              help="Listen backlog (connections the kernel queues before accept).")
@click.option("--factory", is_flag=True, default=False, envvar=_env("FACTORY"),
              help="APP is a callable returning the ASGI application.")
@click.option("--lifespan", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, envvar=_env("LIFESPAN"), help="ASGI lifespan handling.")
@click.option("--root-path", default="", envvar=_env("ROOT_PATH"),
              help="ASGI root_path, for an app mounted below a prefix.")
@click.option("--proxy-headers/--no-proxy-headers", default=True, show_default=True,
              envvar=_env("PROXY_HEADERS"),
              help="Take the client, scheme and host from X-Forwarded-For/-Proto/-Host/"
                   "-Prefix or Forwarded, when the peer is in --forwarded-allow-ips.")
@click.option("--forwarded-allow-ips", default=DEFAULT_TRUST, show_default=True,
              envvar=[_env("FORWARDED_ALLOW_IPS"), "FORWARDED_ALLOW_IPS"],
              help="Comma list of proxy addresses and networks whose proxy headers are "
                   "believed; '*' for any (also read from $FORWARDED_ALLOW_IPS).")
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
              show_default=True, envvar=_env("LOOP"),
              help="Event loop: uvloop when installed (auto), or stdlib asyncio.")
@click.option("--keep-alive-timeout", default=5.0, show_default=True, type=float,
              envvar=_env("KEEP_ALIVE_TIMEOUT"),
              help="Seconds an idle keep-alive connection is kept open.")
@click.option("--header-timeout", default=10.0, show_default=True, type=float,
              envvar=_env("HEADER_TIMEOUT"),
              help="Seconds allowed to receive a full request head (slowloris protection).")
@click.option("--body-timeout", default=60.0, show_default=True, type=float,
              envvar=_env("BODY_TIMEOUT"),
              help="Seconds allowed between two reads of a request body (408 and close).")
@click.option("--max-deadline", default=3600.0, show_default=True, type=float,
              envvar=_env("MAX_DEADLINE"),
              help="Longest deadline a request may ask for (x-request-timeout-ms, "
                   "grpc-timeout), in seconds; longer ones are narrowed to it.")
@click.option("--limit-request-line", default=8190, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_LINE"), help="Longest request target, bytes (414).")
@click.option("--limit-request-fields", default=100, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_FIELDS"), help="Most header fields (431).")
@click.option("--limit-request-field-size", default=8190, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_FIELD_SIZE"), help="Longest header field, bytes (431).")
@click.option("--limit-request-body", default=None, type=int, envvar=_env("LIMIT_REQUEST_BODY"),
              help="Largest request body, bytes (413). Default: no limit.")
@click.option("--ws-max-size", default=16 * 1024 * 1024, show_default=True, type=int,
              envvar=_env("WS_MAX_SIZE"),
              help="Largest WebSocket message, bytes; a larger one closes the session (1009).")
@click.option("--ws-ping-interval", default=20.0, show_default=True, type=float,
              envvar=_env("WS_PING_INTERVAL"),
              help="Seconds between pings to a WebSocket client; 0 never pings.")
@click.option("--ws-ping-timeout", default=20.0, show_default=True, type=float,
              envvar=_env("WS_PING_TIMEOUT"),
              help="Seconds a ping waits for its pong before the client is taken for gone "
                   "(its handler sees the disconnect, 1006).")
@click.option("--ws-per-message-deflate/--no-ws-per-message-deflate", default=True,
              show_default=True, envvar=_env("WS_PER_MESSAGE_DEFLATE"),
              help="Compress WebSocket messages (RFC 7692) when the client offers it.")
@click.option("--http", "http_mode", type=click.Choice(["auto", "1", "2"]), default="auto",
              show_default=True, envvar=_env("HTTP"),
              help="Protocols served: auto (HTTP/1.1, and HTTP/2 as h2c with prior knowledge "
                   "or ALPN h2 on TLS), 1 (HTTP/1.1 only) or 2 (HTTP/2 only).")
@click.option("--h2-max-concurrent-streams", default=100, show_default=True, type=int,
              envvar=_env("H2_MAX_CONCURRENT_STREAMS"),
              help="Streams one HTTP/2 connection may have open at once.")
@click.option("--h2-initial-window-size", default=65535, show_default=True, type=int,
              envvar=_env("H2_INITIAL_WINDOW_SIZE"),
              help="Request body bytes a stream may send before the application reads it.")
@click.option("--h2-max-frame-size", default=16384, show_default=True, type=int,
              envvar=_env("H2_MAX_FRAME_SIZE"), help="Largest HTTP/2 frame payload accepted.")
@click.option("--h2-max-header-list-size", default=65536, show_default=True, type=int,
              envvar=_env("H2_MAX_HEADER_LIST_SIZE"),
              help="Largest decoded HTTP/2 request header list, bytes.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              envvar=_env("ACCESS_LOG"), help="One line per request on stdout.")
@click.option("--log-level", type=click.Choice(list(LEVELS)), default="info",
              show_default=True, envvar=_env("LOG_LEVEL"))
@click.option("--log-config", default=None, envvar=_env("LOG_CONFIG"),
              type=click.Path(exists=True, dir_okay=False, resolve_path=True),
              help="Logging configuration applied in every process: dictConfig as .json "
                   "or .yaml/.yml (needs PyYAML), else INI fileConfig (see docs/logging.md).")
@click.option("--log-format", type=click.Choice(list(LOG_FORMATS)), default="text",
              show_default=True, envvar=_env("LOG_FORMAT"),
              help="json: one JSON object per line (access lines with their fields).")
@click.option("--access-log-format", default=None, envvar=_env("ACCESS_LOG_FORMAT"),
              help="%-style format of access lines, e.g. '%(client)s \"%(method)s "
                   "%(path)s\" %(status)s %(bytes)s %(duration).1fms' (docs/logging.md).")
@click.option("--access-log-exclude", multiple=True, envvar=_env("ACCESS_LOG_EXCLUDE"),
              metavar="PATH", help="Leave requests for PATH out of the access log "
                                   "(exact path, e.g. /healthz; repeatable).")
@click.option("--graceful-timeout", default=30.0, show_default=True, type=float,
              envvar=_env("GRACEFUL_TIMEOUT"),
              help="Seconds a stop waits for in-flight requests before cancelling them.")
@click.option("--force-exit-timeout", default=5.0, show_default=True, type=float,
              envvar=_env("FORCE_EXIT_TIMEOUT"),
              help="Seconds cancelled handlers get to finish, and again lifespan "
                   f"shutdown; a worker still there {STOP_MARGIN:g} s later is killed.")
@click.option("--app-dir", default=None, envvar=_env("APP_DIR"),
              help="Directory put first on sys.path to find APP (default: current).")
@click.option("--env-file", default=None, type=click.Path(exists=True, dir_okay=False),
              envvar=_env("ENV_FILE"),
              help="Load KEY=VALUE lines (dotenv) into the environment the app sees, before "
                   "the workers start. Variables already set win; TETHER_* lines are "
                   "skipped (options come from flags and the real environment).")
@click.option("--header", "headers", multiple=True, metavar="NAME:VALUE",
              help="Send this header with every response (repeatable); the app's own "
                   "header of the same name wins.")
@click.option("--server-header/--no-server-header", default=True, show_default=True,
              envvar=_env("SERVER_HEADER"),
              help="Send 'server: tether' (the app's own server header wins).")
@click.option("--date-header/--no-date-header", default=True, show_default=True,
              envvar=_env("DATE_HEADER"),
              help="Send a 'date' header (the app's own date header wins).")
@click.option("--request-timeout", default=None, type=float, envvar=_env("REQUEST_TIMEOUT"),
              help="Cap every request's deadline at this many seconds (504 when it passes).")
@click.option("--cancel-on-disconnect/--no-cancel-on-disconnect", default=True,
              show_default=True, envvar=_env("CANCEL_ON_DISCONNECT"),
              help="Cancel a handler as soon as its client disconnects.")
@click.option("--framework-handlers/--no-framework-handlers", default=True,
              show_default=True, envvar=_env("FRAMEWORK_HANDLERS"),
              help="Starlette and FastAPI apps answer tether's errors as tether does "
                   "(503 with Retry-After, 504) instead of Starlette's 500; an app's own "
                   "handler wins. See docs/frameworks.md.")
@click.option("--limit-concurrency", default=None, type=int, envvar=_env("LIMIT_CONCURRENCY"),
              help="Requests run at once per worker; the rest queue (deadline-aware, "
                   "adaptive LIFO, CoDel shedding with 503).")
@click.option("--workers", default=1, show_default=True, type=int, envvar=_env("WORKERS"),
              help="Worker processes (a supervisor always runs, even for one).")
@click.option("--worker-start-timeout", default=30.0, show_default=True, type=float,
              envvar=_env("WORKER_START_TIMEOUT"),
              help="Seconds a new worker has to import the app, start up and accept.")
@click.option("--worker-timeout", default=30.0, show_default=True, type=float,
              envvar=_env("WORKER_TIMEOUT"),
              help="Seconds without a heartbeat before a worker is killed and replaced.")
@click.option("--max-requests", default=None, type=int, envvar=_env("MAX_REQUESTS"),
              help="Recycle a worker (rolling, nothing lost) after this many requests.")
@click.option("--max-requests-jitter", default=0, show_default=True, type=int,
              envvar=_env("MAX_REQUESTS_JITTER"),
              help="Add up to this many requests at random per worker.")
@click.option("--max-start-failures", default=5, show_default=True, type=int,
              envvar=_env("MAX_START_FAILURES"),
              help="Consecutive failed worker starts after which the supervisor exits.")
@click.option("--admin-port", default=None, type=int, envvar=_env("ADMIN_PORT"),
              help="Serve /healthz, /readyz and /status from the supervisor on this port.")
@click.option("--admin-host", default="127.0.0.1", show_default=True,
              envvar=_env("ADMIN_HOST"), help="Address of the admin listener.")
@click.option("--admin-allow-host", "admin_allow_hosts", multiple=True,
              envvar=_env("ADMIN_ALLOW_HOST"), metavar="NAME",
              help="Host name the admin port answers to besides loopback ones "
                   "(repeatable; '*' for any). Others get 403 (DNS rebinding).")
@click.option("--admin-token", default=None, envvar=_env("ADMIN_TOKEN"),
              help="Bearer token every admin request must carry (required when "
                   "--admin-host is not loopback). Prefer TETHER_ADMIN_TOKEN or "
                   "--admin-token-file: a command line is visible to local users.")
@click.option("--admin-token-file", default=None, type=click.Path(dir_okay=False),
              help="Read the admin token from this file.")
@click.option("--reload", is_flag=True, default=False, envvar=_env("RELOAD"),
              help="Development only, not for production: watch the app's files and "
                   "roll the workers (nothing in flight fails) when one changes; a change "
                   "that does not import keeps the old workers serving.")
@click.option("--reload-dir", "reload_dirs", multiple=True, envvar=_env("RELOAD_DIR"),
              type=click.Path(file_okay=False), metavar="DIR",
              help="Directory to watch with --reload (repeatable; default: --app-dir or "
                   "the current directory).")
@click.option("--reload-include", "reload_includes", multiple=True,
              envvar=_env("RELOAD_INCLUDE"), metavar="GLOB",
              help="Files whose change reloads, besides *.py (repeatable).")
@click.option("--reload-exclude", "reload_excludes", multiple=True,
              envvar=_env("RELOAD_EXCLUDE"), metavar="GLOB",
              help="Files or directories that never reload (repeatable; default: .*, "
                   ".py[cod], .sw.*, ~*).")
@click.option("--pid-file", default=None, envvar=_env("PID_FILE"),
              help="Write the supervisor's PID here (for tether reload/stop).")
@click.option("--registry", default=None, envvar=_env("REGISTRY"),
              help="Register in this registry (sqlite:///path.db, etcd://host:port/prefix).")
@click.option("--service", default=None, envvar=_env("SERVICE"),
              help="Service name to register under (with --registry).")
@click.option("--advertise", default=None, envvar=_env("ADVERTISE"),
              help="HOST:PORT clients should use (default: the bound address).")
@click.option("--meta", multiple=True, envvar=_env("META"), metavar="KEY=VALUE",
              help="Metadata to register (repeatable).")
@click.option("--registry-ttl", default=10.0, show_default=True, type=float,
              envvar=_env("REGISTRY_TTL"),
              help="Seconds an entry lives without a refresh (refreshed every ttl/3).")
@click.option("--registry-required", is_flag=True, default=False,
              envvar=_env("REGISTRY_REQUIRED"),
              help="Exit if the registry is unreachable at start (default: serve, retry).")
@click.option("--ssl-certfile", default=None, envvar=_env("SSL_CERTFILE"),
              help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", default=None, envvar=_env("SSL_KEYFILE"),
              help="Private key for --ssl-certfile (PEM), if not in the same file.")
@click.option("--ssl-keyfile-password", default=None, envvar=_env("SSL_KEYFILE_PASSWORD"),
              help="Password of an encrypted --ssl-keyfile. Prefer "
                   "TETHER_SSL_KEYFILE_PASSWORD or --ssl-keyfile-password-file: a command "
                   "line is visible to local users.")
@click.option("--ssl-keyfile-password-file", default=None, type=click.Path(dir_okay=False),
              help="Read the --ssl-keyfile password from this file.")
@click.option("--ssl-ca-certs", default=None, envvar=_env("SSL_CA_CERTS"),
              help="CA bundle to verify client certificates against.")
@click.option("--ssl-cert-reqs", type=click.Choice(["none", "optional", "required"]),
              default="none", show_default=True, envvar=_env("SSL_CERT_REQS"),
              help="Whether clients must present a certificate.")
@click.option("--ssl-ciphers", default=None, envvar=_env("SSL_CIPHERS"),
              help="OpenSSL cipher list (TLS 1.2).")
def serve(**opts: Any) -> None:
    """Serve the ASGI application APP, given as MODULE:ATTR.

    A supervisor binds the sockets and runs --workers worker processes that
    accept from them. SIGHUP reloads the workers one at a time; SIGTERM or
    SIGINT stops gracefully; a second SIGINT, or SIGQUIT, stops at once.
    """
    env_file: str | None = opts.pop("env_file", None)
    config = build_config(opts)
    try:
        configure_for(config)
    except LogConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if env_file is not None:
        try:
            skipped = load_env_file(env_file)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        if skipped:
            click.echo(f"tether: --env-file {env_file}: skipped {', '.join(skipped)} "
                       "(tether's options are not read from the file)", err=True)
    setproctitle(supervisor_title(config.app, config.service))
    try:
        server_ssl_context(config)  # fail now, with the reason, not in every worker
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        socks = listening_sockets(config)
        admin_sock = (
            None if config.admin_port is None
            else bind_tcp(config.admin_host, config.admin_port, 128)
        )
    except BindError as exc:
        click.echo(f"tether: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(run_supervisor(config, socks, admin_sock))


def listening_sockets(config: ServerConfig) -> list[socket.socket]:
    """The service sockets: systemd's (LISTEN_FDS), --fd, --uds, or --host/--port."""
    activated = systemd_sockets()
    if activated:
        return activated
    if config.fd is not None:
        return [adopt_fd(config.fd)]
    if config.uds is not None:
        return [bind_unix(config.uds, config.backlog)]
    return [bind_tcp(config.host, config.port, config.backlog)]


def systemd_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (sd_listen_fds: fds 3.. LISTEN_FDS)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # our children are not the activated process
    return [adopt_fd(3 + i) for i in range(count)]


@main.command()
@click.option("--pid-file", required=True, envvar=_env("PID_FILE"),
              help="The pid file given to tether serve.")
def reload(pid_file: str) -> None:
    """Reload the workers one at a time (sends SIGHUP to the supervisor)."""
    _signal_supervisor(pid_file, signal.SIGHUP)
    click.echo("reload requested")


@main.command()
@click.option("--pid-file", required=True, envvar=_env("PID_FILE"),
              help="The pid file given to tether serve.")
@click.option("--timeout", default=60.0, show_default=True, type=float,
              help="Seconds to wait for the supervisor to exit.")
def stop(pid_file: str, timeout: float) -> None:
    """Stop gracefully (sends SIGTERM to the supervisor) and wait until it has exited."""
    pid = _signal_supervisor(pid_file, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            click.echo("stopped")
            return
        time.sleep(0.05)
    click.echo(f"tether: pid {pid} still running after {timeout}s", err=True)
    sys.exit(EXIT_ERROR)


@main.group()
def registry() -> None:
    """Inspect a service registry."""


@registry.command("ls")
@click.argument("service", required=False)
@click.option("--registry", "url", default=DEFAULT_URL, show_default=True,
              envvar=_env("REGISTRY"), help="Registry URL.")
def registry_ls(service: str | None, url: str) -> None:
    """List registered providers (of SERVICE, or of every service).

    Names the registry read on stderr; a sqlite file that does not exist is an
    error (only `tether serve --registry` creates one)."""

    async def main() -> list[tuple[Provider, float]]:
        reg = open_registry(url, create=False)
        try:
            return await reg.list(service)
        finally:
            await reg.close()

    try:
        rows = asyncio.run(main())
    except (ConfigError, RegistryError) as exc:
        raise click.ClickException(f"registry {redact(url)}: {exc}") from exc
    # On stderr: the table on stdout stays the same for scripts that read it.
    click.echo(f"registry {redact(url)}: {len(rows)} provider{'' if len(rows) == 1 else 's'}",
               err=True)
    click.echo(f"{'SERVICE':<20} {'ADDRESS':<24} {'TTL LEFT':>8}  METADATA")
    for provider, left in rows:
        meta = " ".join(f"{k}={v}" for k, v in provider.metadata)
        click.echo(f"{provider.service:<20} {provider.address:<24} {left:>7.1f}s  {meta}")


@registry.command("watch")
@click.argument("service")
@click.option("--registry", "url", default=DEFAULT_URL, show_default=True,
              envvar=_env("REGISTRY"), help="Registry URL.")
def registry_watch(service: str, url: str) -> None:
    """Print every snapshot of SERVICE's providers as it arrives (Ctrl-C to stop).

    Names the registry watched on stderr; a sqlite file that does not exist is an
    error (only `tether serve --registry` creates one)."""

    async def main() -> None:
        reg = open_registry(url, create=False)
        click.echo(f"watching {service} in registry {redact(url)}", err=True)
        try:
            async for event in reg.watch(service):
                stamp = time.strftime("%H:%M:%S")
                if isinstance(event, Unreachable):
                    click.echo(f"{stamp} {service}: registry unreachable ({event.error}); "
                               "keeping the last snapshot")
                    continue
                addresses = ", ".join(sorted(event.addresses)) or "(no providers)"
                click.echo(f"{stamp} {service} rev {event.revision}: {addresses}", )
        finally:
            await reg.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (ConfigError, RegistryError) as exc:
        raise click.ClickException(f"registry {redact(url)}: {exc}") from exc


main.add_command(status_command)


def _listen_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    from tether.proxy_config import parse_listen

    try:
        return parse_listen(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(cls=MigratingCommand)
@click.option("--listen", default="127.0.0.1:8080", show_default=True,
              envvar=_env("LISTEN"), metavar="HOST:PORT", callback=_listen_option,
              help="Address to serve on; a PORT alone means 127.0.0.1:PORT.")
@click.option("--route", "routes", multiple=True, metavar="PREFIX=UPSTREAM[,strip_prefix]",
              help="Forward paths under PREFIX to a registry service, or to a static "
                   "list host:port[,host:port...] (http:// or https:// allowed). "
                   "',strip_prefix' sends /7 for PREFIX/7. Repeat.")
@click.option("--registry", "proxy_registry", default=None, envvar=_env("REGISTRY"),
              help="Registry URL where the routes' services are found.")
@click.option("--config", "config_path", default=None, envvar=_env("PROXY_CONFIG"),
              type=click.Path(dir_okay=False),
              help="TOML file with routes and upstreams (see docs/proxy.md).")
def proxy(listen: tuple[str, int], routes: tuple[str, ...], proxy_registry: str | None,
          config_path: str | None, **opts: Any) -> None:
    """Run a reverse proxy: longest-prefix routes to services' clusters.

    The same supervisor as `tether serve` runs it (--workers, SIGHUP reload, graceful
    stop, --admin-port with /metrics); every `serve` option applies. --service with
    --registry also registers the proxy itself.
    """
    from tether.proxy import ENV_CONFIG
    from tether.proxy_config import ProxyConfig, build_proxy_config

    try:
        build_proxy_config(routes, proxy_registry, config_path)  # fail here, not in workers
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    host, port = listen
    os.environ[ENV_CONFIG] = ProxyConfig.inputs_to_json(routes, proxy_registry, config_path)
    if opts.get("service") is not None:
        opts["registry"] = proxy_registry
    opts.update(app="tether.proxy:from_environment", factory=True, host=host,
                port=port, lifespan="on", app_dir=None, uds=None, fd=None)
    serve.callback(**opts)  # type: ignore[misc]


# Every `serve` option except those naming the app and the address (--listen does),
# and --reload (the proxy's code is not the user's to edit).
proxy.params.extend(
    p for p in serve.params
    if p.name not in {"app", "host", "port", "uds", "fd", "factory", "lifespan", "app_dir",
                      "registry", "reload", "reload_dirs", "reload_includes",
                      "reload_excludes"}
)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited process its parent has not reaped yet is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_supervisor(pid_file: str, sig: signal.Signals) -> int:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read a pid from {pid_file}: {exc}") from exc
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise click.ClickException(f"no process {pid} (stale pid file {pid_file}?)") from None
    return pid


def _secret(opts: dict[str, Any], name: str, file_option: str) -> str | None:
    """A secret given directly (flag or environment) or in a file (one line; a
    trailing newline is not part of it). Both at once is an error."""
    value: str | None = opts.pop(name, None)
    path: str | None = opts.pop(file_option, None)
    if path is None:
        return value
    flag = "--" + file_option.replace("_", "-")
    if value is not None:
        raise click.UsageError(f"{flag} and --{name.replace('_', '-')} (or its "
                               "environment variable) exclude each other")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise click.UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def build_config(opts: dict[str, Any]) -> ServerConfig:
    """Turn parsed CLI options into a validated config, or exit 2 with the reason."""
    meta = []
    for item in opts.pop("meta", ()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--meta must be KEY=VALUE, got {item!r}")
        meta.append((key, value))
    opts["meta"] = tuple(meta)
    opts["admin_allow_hosts"] = tuple(opts.get("admin_allow_hosts", ()))
    for name in ("reload_dirs", "reload_includes", "reload_excludes"):
        opts[name] = tuple(opts.get(name, ()))
    headers = []
    for item in opts.pop("headers", ()):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"--header must be NAME:VALUE, got {item!r}")
        headers.append((name.strip(), value.strip()))
    opts["headers"] = tuple(headers)
    opts["admin_token"] = _secret(opts, "admin_token", "admin_token_file")
    opts["ssl_keyfile_password"] = _secret(
        opts, "ssl_keyfile_password", "ssl_keyfile_password_file")
    try:
        limits = RequestLimits(
            request_line=opts.pop("limit_request_line"),
            request_fields=opts.pop("limit_request_fields"),
            request_field_size=opts.pop("limit_request_field_size"),
            request_body=opts.pop("limit_request_body"),
            header_timeout=opts.pop("header_timeout"),
            body_timeout=opts.pop("body_timeout"),
            keep_alive_timeout=opts.pop("keep_alive_timeout"),
            max_deadline=opts.pop("max_deadline"),
        )
        interval = opts.pop("ws_ping_interval")
        websocket = WebSocketSettings(
            max_size=opts.pop("ws_max_size"),
            ping_interval=interval if interval else None,
            ping_timeout=opts.pop("ws_ping_timeout"),
            per_message_deflate=opts.pop("ws_per_message_deflate"),
        )
        http2 = Http2Settings(
            mode=opts.pop("http_mode"),
            max_concurrent_streams=opts.pop("h2_max_concurrent_streams"),
            initial_window_size=opts.pop("h2_initial_window_size"),
            max_frame_size=opts.pop("h2_max_frame_size"),
            max_header_list_size=opts.pop("h2_max_header_list_size"),
        )
        return ServerConfig(limits=limits, websocket=websocket, http2=http2, **opts)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
