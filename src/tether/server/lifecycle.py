"""The worker lifecycle as the supervisor sees it: a transition table, no I/O.

Rules: every state change of a worker goes through :func:`transition`; an event
that the table does not list for the current state is ignored (a late heartbeat
from a draining worker, a second exit report) rather than corrupting the state.
What an exit *means* depends only on the state the worker exited from.

    STARTING --ready--> READY --drain--> DRAINING --exited--> EXITED
        |                 |
        +----exited-------+----exited-------------------------> EXITED
"""

from __future__ import annotations

import enum


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned; importing the app, lifespan startup
    READY = "ready"  # accepting and serving
    DRAINING = "draining"  # told to leave: finishing what it accepted
    EXITED = "exited"


class WorkerEvent(enum.Enum):
    REPORTED_READY = "ready"
    DRAIN_SENT = "drain"  # reload, recycle, stop, or a kill after missed heartbeats
    EXITED = "exited"


class ExitKind(enum.Enum):
    START_FAILED = "failed to start"  # exited before it was ever ready
    CRASHED = "crashed"  # exited while serving, unasked
    EXPECTED = "stopped"  # exited after being told to


TRANSITIONS: dict[tuple[WorkerState, WorkerEvent], WorkerState] = {
    (WorkerState.STARTING, WorkerEvent.REPORTED_READY): WorkerState.READY,
    (WorkerState.STARTING, WorkerEvent.DRAIN_SENT): WorkerState.DRAINING,
    (WorkerState.STARTING, WorkerEvent.EXITED): WorkerState.EXITED,
    (WorkerState.READY, WorkerEvent.DRAIN_SENT): WorkerState.DRAINING,
    (WorkerState.READY, WorkerEvent.EXITED): WorkerState.EXITED,
    (WorkerState.DRAINING, WorkerEvent.EXITED): WorkerState.EXITED,
}

EXIT_KINDS: dict[WorkerState, ExitKind] = {
    WorkerState.STARTING: ExitKind.START_FAILED,
    WorkerState.READY: ExitKind.CRASHED,
    WorkerState.DRAINING: ExitKind.EXPECTED,
}


def transition(state: WorkerState, event: WorkerEvent) -> WorkerState:
    """The state after ``event``; unchanged if the table has no such transition."""
    return TRANSITIONS.get((state, event), state)


def exit_kind(state: WorkerState) -> ExitKind:
    """What an exit from ``state`` means for the supervisor."""
    return EXIT_KINDS.get(state, ExitKind.EXPECTED)


def restart_delay(consecutive_failures: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff between replacing workers that keep failing (0 for the first)."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(cap, base * 2.0 ** (consecutive_failures - 1)))
