"""Flags of uvicorn, gunicorn and granian that tether spells differently or has no
equivalent for: the one table the CLI's "No such option" hint and docs/migrating.md
are written from.

Only flags that do *not* exist in tether under the same name are listed: one that
does (``--workers``, ``--root-path``, ``--env-file``...) simply works. A test checks
that every tether flag named here exists, so the table cannot name a flag tether
no longer has.
"""

from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass(frozen=True, slots=True)
class ForeignFlag:
    """One flag of another server and what a tether user gives instead."""

    #: the server it belongs to: uvicorn, gunicorn or granian
    server: str
    #: its spellings (short and long)
    flags: tuple[str, ...]
    #: tether's equivalents; empty when there is none
    tether: tuple[str, ...]
    #: what differs, or what to do instead when there is no equivalent
    note: str = ""


def _f(server: str, flags: str, tether: str = "", note: str = "") -> ForeignFlag:
    return ForeignFlag(server, tuple(flags.split()), tuple(tether.split()), note)


FLAGS: tuple[ForeignFlag, ...] = (
    # -- uvicorn ---------------------------------------------------------------------
    _f("uvicorn", "--timeout-keep-alive", "--keep-alive-timeout"),
    _f("uvicorn", "--timeout-graceful-shutdown", "--graceful-timeout",
       "then --force-exit-timeout for cancelled handlers and lifespan shutdown"),
    _f("uvicorn", "--limit-max-requests", "--max-requests",
       "a rolling recycle: nothing in flight is lost"),
    _f("uvicorn", "--limit-max-requests-jitter", "--max-requests-jitter"),
    _f("uvicorn", "--timeout-worker-healthcheck", "--worker-timeout"),
    _f("uvicorn", "--h11-max-incomplete-event-size",
       "--limit-request-line --limit-request-fields --limit-request-field-size",
       "the request head is bounded by these three"),
    _f("uvicorn", "--ws", "", "tether has one WebSocket implementation (the websockets "
       "library's sans-I/O core); --ws-max-size, --ws-ping-interval, --ws-ping-timeout and "
       "--ws-per-message-deflate are the same as uvicorn's"),
    _f("uvicorn", "--ws-max-queue", "", "received messages are queued up to 1 MiB per "
       "session, then tether stops reading from the client until the app catches up"),
    _f("uvicorn", "--interface", "", "tether serves ASGI 3 applications only; wrap a WSGI "
       "app in an ASGI adapter (a2wsgi)"),
    _f("uvicorn", "--reload-delay", "", "--reload gathers a burst of saves for 200 ms "
       "and reloads once; there is nothing to set"),
    _f("uvicorn", "--use-colors", "", "tether's logs are plain text"),
    _f("uvicorn", "--ssl-version", "", "tether's TLS context already refuses protocols "
       "older than TLS 1.2"),
    # -- gunicorn --------------------------------------------------------------------
    _f("gunicorn", "-b --bind", "--host --port --uds",
       "HOST:PORT becomes --host HOST --port PORT; unix:PATH becomes --uds PATH"),
    _f("gunicorn", "-w", "--workers"),
    _f("gunicorn", "-t --timeout", "--worker-timeout",
       "--request-timeout caps each request's deadline instead (504)"),
    _f("gunicorn", "--keep-alive", "--keep-alive-timeout"),
    _f("gunicorn", "--limit-request-field_size", "--limit-request-field-size"),
    _f("gunicorn", "--worker-connections", "--limit-concurrency",
       "requests run at once per worker; the rest queue (deadline-aware)"),
    _f("gunicorn", "-k --worker-class", "", "tether is the worker: there is no class to "
       "choose; --loop picks uvloop or asyncio"),
    _f("gunicorn", "--threads", "", "one event loop per worker: run blocking calls with "
       "asyncio.to_thread"),
    _f("gunicorn", "--preload", "", "each worker imports the app itself, so a reload "
       "(SIGHUP, tether reload) picks up new code"),
    _f("gunicorn", "-p --pid", "--pid-file"),
    _f("gunicorn", "--certfile", "--ssl-certfile"),
    _f("gunicorn", "--keyfile", "--ssl-keyfile"),
    _f("gunicorn", "--ca-certs", "--ssl-ca-certs"),
    _f("gunicorn", "--cert-reqs", "--ssl-cert-reqs"),
    _f("gunicorn", "--ciphers", "--ssl-ciphers"),
    _f("gunicorn", "--chdir", "--app-dir",
       "--app-dir puts the directory first on sys.path; it does not change directory"),
    _f("gunicorn", "-e --env", "--env-file", "or set the variable in the environment"),
    _f("gunicorn", "--access-logfile", "--access-log", "tether logs to stdout and stderr; "
       "redirect them, or let systemd or the container runtime collect them"),
    _f("gunicorn", "--error-logfile --log-file", "", "tether logs to stderr: redirect it"),
    _f("gunicorn", "-D --daemon", "", "tether stays in the foreground: run it under "
       "systemd or a container runtime"),
    _f("gunicorn", "-c --config", "", "every tether flag has a TETHER_* environment "
       "variable (--max-requests: TETHER_MAX_REQUESTS)"),
    _f("gunicorn", "-n --name", "", "process titles are set already: "
       "'tether worker: SERVICE APP #N'"),
    _f("gunicorn", "-u --user -g --group --umask", "", "run tether as the right user "
       "(systemd's User=, the container's USER)"),
    _f("gunicorn", "--statsd-host", "--admin-port",
       "metrics are served as Prometheus text on the admin port's /metrics"),
    # -- granian ---------------------------------------------------------------------
    _f("granian", "--interface", "", "tether serves ASGI 3 applications only "
       "(granian's --interface asgi)"),
    _f("granian", "--blocking-threads --runtime-threads --runtime-mode", "",
       "one event loop thread per worker process; scale with --workers"),
    _f("granian", "--backpressure", "--limit-concurrency"),
    _f("granian", "--http1-keep-alive --no-http1-keep-alive", "--keep-alive-timeout",
       "keep-alive is always on; this bounds how long an idle connection stays"),
    _f("granian", "--http1-header-read-timeout", "--header-timeout",
       "in seconds, not milliseconds"),
    _f("granian", "--ssl-certificate", "--ssl-certfile"),
    _f("granian", "--ssl-ca", "--ssl-ca-certs"),
    _f("granian", "--ssl-client-verify", "--ssl-cert-reqs"),
    _f("granian", "--url-path-prefix", "--root-path"),
    _f("granian", "--working-dir", "--app-dir",
       "--app-dir puts the directory first on sys.path; it does not change directory"),
    _f("granian", "--env-files", "--env-file"),
    _f("granian", "--reload-paths", "--reload-dir"),
    _f("granian", "--reload-ignore-dirs --reload-ignore-patterns", "--reload-exclude"),
    _f("granian", "--workers-lifetime", "--max-requests",
       "workers are recycled by request count, not by age"),
    _f("granian", "--workers-kill-timeout", "--graceful-timeout --force-exit-timeout"),
    _f("granian", "--respawn-failed-workers --respawn-interval", "",
       "the supervisor always replaces a worker that dies (with backoff; "
       "--max-start-failures bounds failed starts)"),
    _f("granian", "--process-name", "", "process titles are set already: "
       "'tether worker: SERVICE APP #N'"),
    _f("granian", "--workers-max-rss", "", "no memory-based recycling; use --max-requests "
       "or the container's memory limit"),
    _f("granian", "--static-path-route --static-path-mount", "",
       "serve static files from the application (Starlette's StaticFiles) or a CDN"),
)


def entries_for(flag: str) -> list[ForeignFlag]:
    """The table's entries for ``flag`` as typed (``--no-x`` also finds ``--x``)."""
    name = flag.split("=", 1)[0]
    found = [e for e in FLAGS if name in e.flags]
    if not found and name.startswith("--no-"):
        found = [e for e in FLAGS if "--" + name[5:] in e.flags]
    return found


def describe(entry: ForeignFlag, flag: str) -> str:
    """``uvicorn's --limit-max-requests is tether's --max-requests (...)``."""
    if entry.tether:
        text = f"{entry.server}'s {flag} is tether's {', '.join(entry.tether)}"
        return f"{text} ({entry.note})" if entry.note else text
    return f"{entry.server}'s {flag} has no tether equivalent: {entry.note}"


def hint(flag: str) -> str | None:
    """What to tell a user who typed another server's ``flag``, or None."""
    found = entries_for(flag)
    if not found:
        return None
    name = flag.split("=", 1)[0]
    lines = [describe(entry, name) + "." for entry in found]
    lines.append("See docs/migrating.md for every uvicorn, gunicorn and granian flag.")
    return "\n".join(lines)


class MigratingCommand(click.Command):
    """A click command whose "No such option" error also says which tether flag
    another server's flag corresponds to (see :data:`FLAGS`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            extra = hint(exc.option_name)
            if extra is None:
                raise
            # A new error without click's "Did you mean" guesses: they would compete
            # with the table's answer (--bind: "Did you mean --backlog?").
            raise click.NoSuchOption(
                exc.option_name, message=f"{exc.message}\n{extra}", ctx=exc.ctx
            ) from None
