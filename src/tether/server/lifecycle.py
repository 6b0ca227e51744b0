"""The worker lifecycle as the supervisor sees it: states, a transition table, the
bound on each state, and the restart backoff. No I/O, no clock: times are passed in.

Rules (everything that decides a worker's state lives in this file):

1. Every state change of a worker goes through :func:`transition`. An event the
   table does not list for the current state is ignored (a late ``ready`` from a
   worker already told to leave, a ``stop`` to a worker already draining, a second
   exit report) rather than corrupting the state.
2. What an exit *means* depends only on the state the worker exited from.
3. Every live state has exactly one bound (:data:`BOUNDS`), and a worker past its
   bound is killed, whatever the state: a worker starting too long, a ready one
   that stopped beating, and a draining or stopping one that outlived the stop
   budget alike. The bound of a leaving worker runs from the moment it was first
   told to leave; a later ``stop`` does not restart it (rule 1 ignores it).

Theory of operation::

              ready
    STARTING --------> READY
        |                |
        +---- drain -----+----> DRAINING ---exited---> EXITED
        |                |      (reload, recycle: the others keep serving)
        +---- stop ------+----> STOPPING ---exited---> EXITED
        |                |      (the service stops: serve the backlog too)
        +---- exited ----+-------------------------> EXITED

A worker *draining* leaves while the others keep accepting from the shared sockets;
one *stopping* leaves with everyone and also serves what the kernel queued. Both
have the same bound: the stop budget (:class:`tether.config.StopBudget`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tether.backoff import Backoff
from tether.config import ServerConfig


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned; importing the app, lifespan startup
    READY = "ready"  # accepting and serving
    DRAINING = "draining"  # told to leave while the others serve: finishing what it accepted
    STOPPING = "stopping"  # told to stop with the whole service: also serving the backlog
    EXITED = "exited"


class WorkerEvent(enum.Enum):
    REPORTED_READY = "ready"
    DRAIN_SENT = "drain"  # a reload or a recycle replaced it
    STOP_SENT = "stop"  # the whole service stops
    EXITED = "exited"


class ExitKind(enum.Enum):
    START_FAILED = "failed to start"  # exited before it was ever ready
    CRASHED = "crashed"  # exited while serving, unasked (or killed for silence)
    EXPECTED = "stopped"  # exited after being told to leave (or killed for overstaying)


class Bound(enum.Enum):
    """What limits a worker's stay in a state; past it, the worker is killed."""

    START = "start"  # --worker-start-timeout, from the spawn
    HEARTBEAT = "heartbeat"  # --worker-timeout, from the last heartbeat
    STOP = "stop"  # the stop budget's total, from the first drain or stop


TRANSITIONS: dict[tuple[WorkerState, WorkerEvent], WorkerState] = {
    (WorkerState.STARTING, WorkerEvent.REPORTED_READY): WorkerState.READY,
    (WorkerState.STARTING, WorkerEvent.DRAIN_SENT): WorkerState.DRAINING,
    (WorkerState.STARTING, WorkerEvent.STOP_SENT): WorkerState.STOPPING,
    (WorkerState.STARTING, WorkerEvent.EXITED): WorkerState.EXITED,
    (WorkerState.READY, WorkerEvent.DRAIN_SENT): WorkerState.DRAINING,
    (WorkerState.READY, WorkerEvent.STOP_SENT): WorkerState.STOPPING,
    (WorkerState.READY, WorkerEvent.EXITED): WorkerState.EXITED,
    (WorkerState.DRAINING, WorkerEvent.EXITED): WorkerState.EXITED,
    (WorkerState.STOPPING, WorkerEvent.EXITED): WorkerState.EXITED,
}

EXIT_KINDS: dict[WorkerState, ExitKind] = {
    WorkerState.STARTING: ExitKind.START_FAILED,
    WorkerState.READY: ExitKind.CRASHED,
    WorkerState.DRAINING: ExitKind.EXPECTED,
    WorkerState.STOPPING: ExitKind.EXPECTED,
}

BOUNDS: dict[WorkerState, Bound] = {
    WorkerState.STARTING: Bound.START,
    WorkerState.READY: Bound.HEARTBEAT,
    WorkerState.DRAINING: Bound.STOP,
    WorkerState.STOPPING: Bound.STOP,
}

#: the wait before replacing a worker after ``n`` failed starts in a row: 0 for the
#: first replacement, then 0.1 s doubling to 5 s
RESTART_BACKOFF = Backoff(initial=0.1, maximum=5.0)


def transition(state: WorkerState, event: WorkerEvent) -> WorkerState:
    """The state after ``event``; unchanged if the table has no such transition."""
    return TRANSITIONS.get((state, event), state)


def exit_kind(state: WorkerState) -> ExitKind:
    """What an exit from ``state`` means for the supervisor."""
    return EXIT_KINDS.get(state, ExitKind.EXPECTED)


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """The length of each :class:`Bound`, in seconds, from the configuration."""

    start: float
    heartbeat: float
    stop: float

    @classmethod
    def from_config(cls, config: ServerConfig) -> WorkerLimits:
        return cls(start=config.worker_start_timeout, heartbeat=config.worker_timeout,
                   stop=config.stop_budget.total)

    def of(self, bound: Bound) -> float:
        return {Bound.START: self.start, Bound.HEARTBEAT: self.heartbeat,
                Bound.STOP: self.stop}[bound]


def deadline(
    state: WorkerState, *, entered_at: float, last_beat: float, limits: WorkerLimits
) -> float | None:
    """When a worker in ``state`` is overdue (None: never, it has exited).

    ``entered_at`` is when it entered ``state`` (for a leaving worker: when it was
    first told to leave), ``last_beat`` when it last sent a heartbeat.
    """
    bound = BOUNDS.get(state)
    if bound is None:
        return None
    since = last_beat if bound is Bound.HEARTBEAT else entered_at
    return since + limits.of(bound)
