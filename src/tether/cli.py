"""The ``tether`` command. Flags and ``TETHER_*`` environment variables map onto
:class:`~tether.config.ServerConfig`; this module holds no behaviour of its own.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from tether import __version__
from tether.config import RequestLimits, ServerConfig
from tether.errors import ConfigError
from tether.logs import LEVELS, configure_logging
from tether.server.sockets import BindError, adopt_fd, bind_tcp, bind_unix
from tether.server.worker import EXIT_ERROR, run_worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """tether: a reliability-first runtime for Python asyncio services."""


def _env(name: str) -> str:
    return f"TETHER_{name}"


@main.command()
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
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
              show_default=True, envvar=_env("LOOP"),
              help="Event loop: uvloop when installed (auto), or stdlib asyncio.")
@click.option("--keep-alive-timeout", default=5.0, show_default=True, type=float,
              envvar=_env("KEEP_ALIVE_TIMEOUT"),
              help="Seconds an idle keep-alive connection is kept open.")
@click.option("--header-timeout", default=10.0, show_default=True, type=float,
              envvar=_env("HEADER_TIMEOUT"),
              help="Seconds allowed to receive a full request head (slowloris protection).")
@click.option("--limit-request-line", default=8190, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_LINE"), help="Longest request target, bytes (414).")
@click.option("--limit-request-fields", default=100, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_FIELDS"), help="Most header fields (431).")
@click.option("--limit-request-field-size", default=8190, show_default=True, type=int,
              envvar=_env("LIMIT_REQUEST_FIELD_SIZE"), help="Longest header field, bytes (431).")
@click.option("--limit-request-body", default=None, type=int, envvar=_env("LIMIT_REQUEST_BODY"),
              help="Largest request body, bytes (413). Default: no limit.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              envvar=_env("ACCESS_LOG"), help="One line per request on stdout.")
@click.option("--log-level", type=click.Choice(list(LEVELS)), default="info",
              show_default=True, envvar=_env("LOG_LEVEL"))
@click.option("--graceful-timeout", default=30.0, show_default=True, type=float,
              envvar=_env("GRACEFUL_TIMEOUT"),
              help="Seconds a stop waits for in-flight requests before cancelling them.")
@click.option("--force-exit-timeout", default=5.0, show_default=True, type=float,
              envvar=_env("FORCE_EXIT_TIMEOUT"),
              help="Seconds after cancelling before the process exits regardless.")
@click.option("--app-dir", default=None, envvar=_env("APP_DIR"),
              help="Directory put first on sys.path to find APP (default: current).")
def serve(**opts: Any) -> None:
    """Serve the ASGI application APP, given as MODULE:ATTR."""
    config = build_config(opts)
    configure_logging(config.log_level, access_log=config.access_log)
    try:
        if config.fd is not None:
            socks = [adopt_fd(config.fd)]
        elif config.uds is not None:
            socks = [bind_unix(config.uds, config.backlog)]
        else:
            socks = [bind_tcp(config.host, config.port, config.backlog)]
    except BindError as exc:
        click.echo(f"tether: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(run_worker(config, socks))


def build_config(opts: dict[str, Any]) -> ServerConfig:
    """Turn parsed CLI options into a validated config, or exit 2 with the reason."""
    try:
        limits = RequestLimits(
            request_line=opts.pop("limit_request_line"),
            request_fields=opts.pop("limit_request_fields"),
            request_field_size=opts.pop("limit_request_field_size"),
            request_body=opts.pop("limit_request_body"),
            header_timeout=opts.pop("header_timeout"),
            keep_alive_timeout=opts.pop("keep_alive_timeout"),
        )
        return ServerConfig(limits=limits, **opts)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
