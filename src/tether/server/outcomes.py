"""How a request that did not end with the application's own response ends: one
table from what happened (an exception, a cancellation, an admission refusal) to
the status the client gets, the counter that moves and whether it is logged.

Rules: every protocol (HTTP/1.1 today, HTTP/2 streams and WebSocket sessions next)
maps endings through this file, so a 504 means the same thing everywhere. This
file decides; it writes nothing and logs nothing. Order matters in
:data:`FAILURES`: the first entry whose type matches wins (subclasses first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tether.admission import Outcome
from tether.deadline import DeadlineExceeded
from tether.errors import ClientDisconnected, Overloaded, ResponseAborted, ServiceUnavailable


class CancelReason(enum.Enum):
    """Why tether cancelled a handler (None: cancelled from outside, e.g. a task the
    worker found running at the end of its stop that no connection owned)."""

    DEADLINE = "deadline"
    DISCONNECT = "disconnect"
    #: the worker's grace period ran out while the handler was still running
    STOP = "stop"


class AlreadyReported(RuntimeError):
    """An application error tether has already logged and answered (closed)."""


@dataclass(frozen=True, slots=True)
class Ending:
    """What the server does for one kind of ending.

    ``status`` None: nothing is sent (the client is gone, or it was answered
    already). ``counter``: the ``ServerState.counters`` key that moves.
    ``app_error``: logged once with its traceback as a bug in the application.
    ``aborts_started``: a response already started is cut (closed) without an
    error log, because whoever raised it logged why.
    """

    status: int | None
    detail: str = ""
    counter: str | None = None
    retry_after: bool = False
    app_error: bool = False
    aborts_started: bool = False


NOTHING: Final = Ending(None)

#: exceptions a handler lets escape, first match wins
FAILURES: Final[tuple[tuple[type[BaseException], Ending], ...]] = (
    # tether's own signals, propagated by the app: already handled
    (ClientDisconnected, NOTHING),
    (AlreadyReported, NOTHING),
    # the handler let the request's deadline propagate (a tether.Client call or a
    # tether.db query ran out of time): a 504, not a bug
    (DeadlineExceeded, Ending(504, "Deadline exceeded", "deadline_exceeded")),
    # the proxy gave up on its upstream: 502 if nothing was sent, else a cut
    (ResponseAborted, Ending(502, "Bad gateway: {exc}", aborts_started=True)),
    # a shed from a queue, or a dead backend: the request may succeed later
    (Overloaded, Ending(503, "Service unavailable: {exc}", "overloaded", retry_after=True)),
    (ServiceUnavailable,
     Ending(503, "Service unavailable: {exc}", "unavailable", retry_after=True)),
    (Exception, Ending(500, "Internal Server Error", app_error=True)),
)

#: a handler cancelled by tether, by reason (None: the worker is stopping)
CANCELLATIONS: Final[dict[CancelReason | None, Ending]] = {
    CancelReason.DEADLINE: Ending(504, "Deadline exceeded", "cancelled_deadline"),
    CancelReason.DISCONNECT: Ending(None, counter="cancelled_disconnect"),
    CancelReason.STOP: Ending(503, "Service stopping: request cancelled"),
    None: Ending(503, "Service stopping: request cancelled"),
}

#: admission control said no: the handler never ran
REFUSALS: Final[dict[Outcome, Ending]] = {
    Outcome.EXPIRED: Ending(504, "Deadline exceeded before the request could start",
                            "queue_expired"),
    Outcome.SHED: Ending(503, "Overloaded: request shed from the queue", "queue_shed",
                         retry_after=True),
}


def ending_for(exc: BaseException) -> Ending:
    """The ending for an exception a handler let escape."""
    for kind, ending in FAILURES:
        if isinstance(exc, kind):
            return ending
    return NOTHING  # a BaseException that is not an Exception: not ours to answer


def detail_of(ending: Ending, exc: BaseException) -> str:
    """The response body's text for ``ending`` caused by ``exc``."""
    return ending.detail.format(exc=exc) if "{exc}" in ending.detail else ending.detail
