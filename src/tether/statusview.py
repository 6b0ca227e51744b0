"""``tether status``: a live terminal view of a running supervisor.

It polls the supervisor's admin endpoint (``GET /status``, see docs/status.md) and
draws the workers, the cancellation and admission counters, the clusters every
worker sees and the upstream connection pools. It only reads that JSON, so it works
against any tether server with ``--admin-port``; keys an older server does not
send are shown as missing, never an error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tether.client import Client, HTTPError
from tether.errors import TetherError

MISSING: Final = "-"
#: Columns of a view written to a pipe or a file (no terminal to fit): wide enough
#: that no table is cut. Tables take only the width they need, so this adds nothing.
PIPE_WIDTH: Final = 10_000
TIMES: Final = "\u00d7"  # the multiplication sign, as in "alive x2"

# Healthiest first: a provider's states are listed in this order.
STATE_ORDER: Final = ("ready", "alive", "starting", "connecting", "draining", "retrying",
                      "ejected", "evicted", "exited")
STATE_STYLES: Final = {
    "serving": "green", "ready": "green", "alive": "green",
    "stopping": "yellow", "starting": "yellow", "draining": "yellow",
    "connecting": "yellow", "retrying": "yellow",
    "ejected": "red", "evicted": "red", "exited": "dim",
}


class AdminError(TetherError):
    """The admin endpoint could not be reached or did not answer a status."""


def admin_base_url(admin: str) -> str:
    """Turn ``--admin`` (a URL, ``host:port`` or a port) into ``http://host:port``."""
    admin = admin.strip().rstrip("/")
    if admin.isdigit():
        if not 0 < int(admin) < 65536:
            raise ValueError(f"{admin} is not a port number")
        return f"http://127.0.0.1:{admin}"
    if not admin:
        raise ValueError("empty admin address")
    return admin if "://" in admin else f"http://{admin}"


async def fetch_status(admin_url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET ``/status`` from the admin endpoint; raise :class:`AdminError` with a
    one-line message naming the URL if it cannot be read."""
    base = admin_base_url(admin_url)
    try:
        # The client's timeout is per phase; this bounds the whole exchange.
        async with asyncio.timeout(timeout), Client(timeout=timeout) as client:
            response = await client.get(f"{base}/status")
    except TimeoutError:
        raise AdminError(f"cannot reach the admin endpoint at {base}: "
                         f"no answer within {timeout:g}s") from None
    except (HTTPError, OSError) as exc:
        raise AdminError(f"cannot reach the admin endpoint at {base}: {exc}") from exc
    if response.status_code != 200:
        # Typically --admin names the service port, whose app answers 404.
        raise AdminError(f"the admin endpoint at {base} answered {response.status_code} "
                         f"{response.reason_phrase} to GET /status (is it the admin port?)")
    try:
        status = response.json()
    except ValueError as exc:
        raise AdminError(f"the admin endpoint at {base} did not answer JSON: {exc}") from exc
    if not isinstance(status, dict):
        raise AdminError(f"the admin endpoint at {base} answered a {type(status).__name__}, "
                         "not a status object")
    return status


# -- rendering --------------------------------------------------------------------------


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return MISSING
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    return f"{minutes}m{s:02d}s"


def _count(value: Any) -> Text:
    # bool is an int too, but never a count.
    if isinstance(value, int) and not isinstance(value, bool):
        return Text(f"{value:,}")
    return Text(MISSING, style="dim")


def _plain(value: Any) -> Text:
    # Text, never a markup string: an address like "[::1]:80" must print as is.
    return Text(MISSING if value is None else str(value), style="dim" if value is None else "")


def _state(name: str, count: int | None = None) -> Text:
    label = name if count is None else f"{name} {count}"
    return Text(label, style=STATE_STYLES.get(name, ""))


def _states(provider: Mapping[str, Any]) -> Text:
    """How many workers see the provider in each state: ``alive`` TIMES 2 when they
    all agree, else ``alive 1 / retrying 1``."""
    states: Mapping[str, int] = provider.get("states") or (
        {provider["state"]: 1} if "state" in provider else {})  # one worker's view
    if not states:
        return Text(MISSING, style="dim")
    ordered = sorted(states.items(), key=lambda kv: (
        STATE_ORDER.index(kv[0]) if kv[0] in STATE_ORDER else len(STATE_ORDER), kv[0]))
    if len(ordered) == 1:
        name, count = ordered[0]
        return Text.assemble(_state(name), f" {TIMES}{count}")
    return Text(" / ").join(_state(name, count) for name, count in ordered)


def _ratio(value: Any) -> Text:
    if not isinstance(value, int | float):
        return Text(MISSING, style="dim")  # no requests yet: no ratio
    return Text(f"{value * 100:.1f}%")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False)
    for column in columns:
        numeric = column not in ("service", "provider", "state", "origin")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    return table


def _empty(what: str) -> Text:
    return Text(f"no {what}", style="dim")


def _header(status: Mapping[str, Any]) -> Text:
    state = str(status.get("state", "unknown"))
    registered = status.get("registered")
    return Text.assemble(
        ("tether ", "bold"), "pid ", (str(status.get("pid", MISSING)), "bold"), "  ",
        _state(state), "  up ", _duration(status.get("uptime_seconds")),
        "  reloads ", str(status.get("reloads", MISSING)),
        "  registered ", (str(registered), "") if registered else ("no", "dim"),
    )


def _workers(workers: list[Mapping[str, Any]]) -> RenderableType:
    if not workers:
        return _empty("workers")
    table = _table("Workers", "id", "pid", "state", "age", "requests", "in flight",
                   "connections", "websockets", "h2 conns", "h2 streams")
    for w in workers:
        table.add_row(
            _plain(w.get("id")), _plain(w.get("pid")), _state(str(w.get("state", MISSING))),
            Text(_duration(w.get("age_seconds"))), _count(w.get("requests")),
            _count(w.get("in_flight")), _count(w.get("connections")),
            _count(w.get("websockets")), _count(w.get("h2_connections")),
            _count(w.get("h2_streams")),
        )
    return table


def _counters(counters: Mapping[str, Any]) -> Text:
    shown = [(name, value) for name, value in sorted(counters.items()) if value]
    if not shown:
        return _empty("counters")
    return Text.assemble(("Counters  ", "bold"), Text("  ").join(
        Text.assemble((name, "dim"), " ", (f"{value:,}" if isinstance(value, int)
                                           else str(value), "bold"))
        for name, value in shown))


def _clusters(clusters: list[Mapping[str, Any]]) -> RenderableType:
    if not clusters:
        return _empty("clusters")
    table = _table("Clusters", "service", "provider", "state", "requests", "retries",
                   "ejections", "evictions")
    for cluster in clusters:
        totals = [_count(cluster.get(key))
                  for key in ("requests", "retries", "ejections", "evictions")]
        providers = _list(cluster.get("providers"))
        if not providers:
            table.add_row(_plain(cluster.get("service")), Text("no providers", style="dim"),
                          Text(""), *totals, end_section=True)
            continue
        # The per-service totals go on the service's first row only.
        for i, provider in enumerate(providers):
            first = i == 0
            table.add_row(
                _plain(cluster.get("service")) if first else Text(""),
                _plain(provider.get("address")), _states(provider),
                *(totals if first else [Text("")] * len(totals)),
                end_section=i == len(providers) - 1,
            )
    return table


def _pools(pools: list[Mapping[str, Any]]) -> RenderableType:
    if not pools:
        return _empty("pools")
    table = _table("Pools", "origin", "requests", "opened", "reuse", "idle", "active")
    for pool in pools:
        table.add_row(
            _plain(pool.get("origin")), _count(pool.get("requests")),
            _count(pool.get("connections_opened")), _ratio(pool.get("reuse_ratio")),
            _count(pool.get("idle")), _count(pool.get("active")),
        )
    return table


def _list(value: Any) -> list[Mapping[str, Any]]:
    # Tolerate a missing (older server) or malformed section rather than failing the view.
    return [item for item in value if isinstance(item, Mapping)] \
        if isinstance(value, list) else []


def render(status: Mapping[str, Any]) -> Group:
    """Draw one ``/status`` answer: header, workers, counters, clusters and pools."""
    counters = status.get("counters")
    return Group(
        _header(status),
        _workers(_list(status.get("workers"))),
        _counters(counters if isinstance(counters, Mapping) else {}),
        _clusters(_list(status.get("clusters"))),
        _pools(_list(status.get("pools"))),
    )


# -- running ----------------------------------------------------------------------------


def _error_line(message: str) -> Text:
    return Text(message, style="bold red")


async def _watch(admin_url: str, interval: float, live: Live) -> None:
    """Redraw every ``interval`` seconds, forever; an unreachable admin is drawn as
    an error line (the supervisor may be restarting) and tried again next time."""
    while True:
        started = time.monotonic()
        try:
            view: RenderableType = render(await fetch_status(admin_url))
        except AdminError as exc:
            view = _error_line(str(exc))
        footer = Text(f"{time.strftime('%H:%M:%S')}  every {interval:g}s  Ctrl-C quits",
                      style="dim")
        live.update(Group(view, footer), refresh=True)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def output_console() -> Console:
    """A console for stdout: a terminal keeps its width; a pipe or a file gets
    :data:`PIPE_WIDTH` columns, unless ``COLUMNS`` says otherwise (rich would crop
    provider addresses at 80 columns, whatever reads the pipe)."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=PIPE_WIDTH)


def run(admin_url: str, *, once: bool, interval: float = 1.0,
        console: Console | None = None) -> int:
    """Show the status of the supervisor at ``admin_url``; return the exit status.

    ``once``: print one view and return 0, or 1 with an error on stderr if the admin
    endpoint cannot be read. Otherwise redraw every ``interval`` seconds until Ctrl-C.
    """
    console = console or output_console()
    if once:
        try:
            status = asyncio.run(fetch_status(admin_url))
        except AdminError as exc:
            # soft_wrap: the error stays one line however narrow the terminal.
            Console(stderr=True).print(_error_line(str(exc)), soft_wrap=True)
            return 1
        console.print(render(status))
        return 0
    try:
        # Live outside the event loop, so it restores the terminal after Ctrl-C.
        with Live(console=console, auto_refresh=False) as live:
            asyncio.run(_watch(admin_url, interval, live))
    except KeyboardInterrupt:
        pass
    return 0


def _admin_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return admin_base_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("status")
@click.option("--admin", required=True, envvar="TETHER_ADMIN", callback=_admin_option,
              help="admin endpoint: URL, host:port or port")
@click.option("--once", is_flag=True, default=False, help="Print the status once and exit.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes of the live view.")
def status_command(admin: str, once: bool, interval: float) -> None:
    """Show a running server's workers, counters, clusters and pools (live)."""
    sys.exit(run(admin, once=once, interval=interval))
