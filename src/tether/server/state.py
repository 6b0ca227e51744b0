"""What every connection of one worker shares: the application, the limits, the
counters, the open connections and running handlers, and the access log.

The worker owns it: it sweeps ``connections`` for timeouts (one sweep per worker,
no timer handle per request), refreshes the ``date`` line once a second, and flips
``draining`` when a stop begins. Must never hold per-request state.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tether.admission import AdmissionGate
from tether.asgi import ASGIApp
from tether.config import Http2Settings, RequestLimits, WebSocketSettings
from tether.deadline import Deadline
from tether.metrics import HttpMetrics
from tether.server import wire
from tether.server.forwarded import TrustList
from tether.server.outcomes import CancelReason

if TYPE_CHECKING:
    from tether.server.cycle import RequestCycle
    from tether.server.websocket import WebSocketCycle

access_log = logging.getLogger("tether.access")
error_log = logging.getLogger("tether.error")
_INFO = logging.INFO
_ACCESS_LINE = '%s "%s %s" %d %d %.1fms'


class TimerKind(enum.Enum):
    """What a connection's single timer is waiting for (checked by the worker's sweep)."""

    NONE = "none"
    HEAD = "head"  # a request head must complete (slowloris protection) -> 408
    BODY = "body"  # the next piece of a request body must arrive -> 408
    KEEPALIVE = "keep-alive"  # an idle keep-alive connection may wait this long
    PING = "ping"  # an open WebSocket: the next ping is due, or its pong is late


class Connection(Protocol):
    """What the worker needs of an open connection, whatever its protocol."""

    @property
    def cycle(self) -> RequestCycle | None:
        """The request being answered, if any."""
    transport: asyncio.Transport
    upgraded: WebSocketCycle | None  # the WebSocket session it became, if any

    def check_timer(self, now: float) -> None: ...

    def going_away(self, code: int, reason: str) -> None:
        """The worker is leaving: close an open WebSocket session with ``code``."""

    def begin_drain(self) -> None:
        """The worker is leaving: say so now if the protocol can (HTTP/2's GOAWAY)."""

    def running(self) -> list[RequestCycle]:
        """The request cycles this connection carries now (the stop cancels them)."""

    def close(self) -> None: ...


class Deferred(Protocol):
    """What waits for the end of the loop turn (see ServerState.flush_later): a
    response head that may go out on its own, a connection's complete responses."""

    def flush(self) -> None: ...


class ServerState:
    """The state one worker's connections share (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits,
        *,
        root_path: str = "",
        access_log: bool = True,
        app_state: dict[str, Any] | None = None,
        request_timeout: float | None = None,
        cancel_on_disconnect: bool = True,
        admission: AdmissionGate | None = None,
        websocket: WebSocketSettings | None = None,
        http2: Http2Settings | None = None,
        forwarded_trust: TrustList | None = None,
        defaults: wire.ResponseDefaults | None = None,
        access_fields: bool = False,
        access_exclude: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.limits = limits
        self.root_path = root_path
        self.root_path_bytes = root_path.encode("ascii")
        self.access_log = access_log
        #: paths (scope["path"]) whose requests leave no access line (health probes)
        self.access_exclude = access_exclude
        # Decided once: the plain line costs no dict per request; the structured one
        # (JSON, --access-log-format, --log-config) carries the fields as ``extra``.
        self.access_fields = access_fields
        self.app_state: dict[str, Any] = app_state if app_state is not None else {}
        self.request_timeout = request_timeout
        self.cancel_on_disconnect = cancel_on_disconnect
        self.admission = admission
        self.websocket = websocket if websocket is not None else WebSocketSettings()
        self.http2 = http2 if http2 is not None else Http2Settings()
        #: WebSocket sessions: opened, messages_in/out, closed_<code>
        self.websocket_counts: Counter[str] = Counter()
        #: whose proxy headers are believed (None: --no-proxy-headers)
        self.forwarded_trust = forwarded_trust
        #: what cancellation and admission did (the supervisor shows them in /status)
        self.counters: Counter[str] = Counter()
        #: responses by status class and duration (Prometheus, via the supervisor)
        self.http = HttpMetrics()
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.total_requests = 0
        self.draining = False
        #: the headers tether adds to every response (server, --header, date)
        self.defaults = defaults if defaults is not None else wire.ResponseDefaults()
        self.date_header = b""
        self.default_head = b""
        #: defaults_without's answers for this second, by bit set
        self._without: dict[int, bytes] = {}
        self.refresh_date()
        #: called with each completed response (worker counts, recycling)
        self.on_request_done: Callable[[], None] | None = None
        #: what waits for the end of this loop turn (see flush_later)
        self._deferred: list[Deferred] = []

    def flush_later(self, deferred: Deferred, loop: asyncio.AbstractEventLoop) -> None:
        """Call ``deferred.flush()`` at the end of this loop turn (once). One scheduled
        callback serves everything deferred in the turn: a handle each (``call_soon``
        and its cancel) cost about 1 us, paid by nearly every response for nothing.

        Two things wait: a response head (its body usually follows at once, and both
        go out in one write), and an HTTP/1.1 connection's complete responses (the
        responses finished in one turn go out back to back at its end: a client
        waiting for several is woken once, not once per response, which saved 3-6%
        of the CPU per request behind ``tether proxy``)."""
        deferred_list = self._deferred
        deferred_list.append(deferred)
        if len(deferred_list) == 1:
            loop.call_soon(self._flush_deferred)

    def _flush_deferred(self) -> None:
        deferred_list, self._deferred = self._deferred, []
        for deferred in deferred_list:
            try:
                deferred.flush()
            except Exception:  # one response's failure must not hold back the others
                error_log.exception("writing a deferred response failed")

    def refresh_date(self) -> None:
        """Render this second's ``date`` line and the default head that carries it
        (the worker calls it once a second: no response formats a date)."""
        self.date_header = wire.date_header() if self.defaults.date else b""
        #: what a response gets after its own headers: the defaults, then the date
        self.default_head = self.defaults.static + self.date_header
        self._without = {}

    def defaults_without(self, overridden: int) -> bytes:
        """The default head minus the headers the application sent itself (their
        bits in ``overridden``, from wire.render_header): the application's wins.
        Kept for the second: a proxied response carries its upstream's date and
        server on every response."""
        lines = self._without.get(overridden)
        if lines is None:
            date = b"" if overridden & wire.DATE_BIT else self.date_header
            lines = self._without[overridden] = self.defaults.without(overridden) + date
        return lines

    def log_access(
        self, client: str, method: str, target: str, status: int, size: int, seconds: float,
        deadline: Deadline, cancel: CancelReason | None,
    ) -> None:
        """One access-log line per request, nginx-style (499: the client left first).

        The plain line's call comes first in this function on purpose: logging looks
        up its caller's line number, a scan of the line table up to the call, so a
        call further down costs more on every request (callgrind: ~1,000 instructions)."""
        if self.access_log and access_log.isEnabledFor(_INFO):
            if not self.access_fields:
                access_log.info(_ACCESS_LINE, client, method, target, status, size,
                                seconds * 1000.0)
            else:
                self._log_access_fields(client, method, target, status, size, seconds,
                                        deadline, cancel)

    def _log_access_fields(
        self, client: str, method: str, target: str, status: int, size: int, seconds: float,
        deadline: Deadline, cancel: CancelReason | None,
    ) -> None:
        """The same line, its fields also on the record (see tether.logs.ACCESS_FIELDS):
        ``deadline`` is the budget the request arrived with, in ms (null: none)."""
        duration = seconds * 1000.0
        budget = None if deadline.at is None else round(
            (deadline.at - time.monotonic() + seconds) * 1000.0, 1)
        access_log.info(
            _ACCESS_LINE, client, method, target, status, size, duration,
            extra={"client": client, "method": method, "path": target, "status": status,
                   "bytes": size, "duration": round(duration, 3), "deadline": budget,
                   "cancel": None if cancel is None else cancel.value},
        )
