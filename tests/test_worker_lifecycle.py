"""The worker lifecycle table (tether.server.lifecycle), directly: no processes, no clock.

Every (state, event) pair is checked against a matrix written out here on its own,
so a change to the table shows up as a change to this picture, including the pairs
the table ignores on purpose.
"""

from __future__ import annotations

import itertools

import pytest

from tether.backoff import Backoff
from tether.config import ServerConfig
from tether.server import supervisor as supervisor_mod
from tether.server.lifecycle import (
    BOUNDS,
    EXIT_KINDS,
    RESTART_BACKOFF,
    TRANSITIONS,
    Bound,
    ExitKind,
    WorkerEvent,
    WorkerLimits,
    WorkerState,
    deadline,
    exit_kind,
    transition,
)

S = WorkerState
E = WorkerEvent
KEEP: None = None  # ignored: the state stays as it is

#: rows: states; columns: REPORTED_READY, DRAIN_SENT, STOP_SENT, EXITED
MATRIX: dict[WorkerState, tuple[WorkerState | None, ...]] = {
    S.STARTING: (S.READY, S.DRAINING, S.STOPPING, S.EXITED),
    S.READY: (KEEP, S.DRAINING, S.STOPPING, S.EXITED),
    # Already leaving: a late "ready" and a second leave message change nothing
    # (the stop budget keeps running from the first message).
    S.DRAINING: (KEEP, KEEP, KEEP, S.EXITED),
    S.STOPPING: (KEEP, KEEP, KEEP, S.EXITED),
    S.EXITED: (KEEP, KEEP, KEEP, KEEP),  # a second exit report changes nothing
}
COLUMNS = (E.REPORTED_READY, E.DRAIN_SENT, E.STOP_SENT, E.EXITED)


def test_matrix_covers_every_state_and_event() -> None:
    assert set(MATRIX) == set(WorkerState)
    assert set(COLUMNS) == set(WorkerEvent)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(WorkerState, WorkerEvent)),
                         ids=lambda v: v.name)
def test_every_state_and_event(state: WorkerState, event: WorkerEvent) -> None:
    expected = MATRIX[state][COLUMNS.index(event)]
    assert transition(state, event) is (state if expected is None else expected)
    # The table lists exactly the pairs that change something.
    assert ((state, event) in TRANSITIONS) is (expected is not None)


def test_exited_is_final() -> None:
    for event in WorkerEvent:
        assert transition(S.EXITED, event) is S.EXITED


@pytest.mark.parametrize(("state", "kind"), [
    (S.STARTING, ExitKind.START_FAILED),
    (S.READY, ExitKind.CRASHED),
    (S.DRAINING, ExitKind.EXPECTED),
    (S.STOPPING, ExitKind.EXPECTED),
], ids=lambda v: v.name)
def test_exit_kinds(state: WorkerState, kind: ExitKind) -> None:
    assert exit_kind(state) is kind


def test_exit_kind_covers_every_live_state() -> None:
    assert set(EXIT_KINDS) == set(WorkerState) - {S.EXITED}


def test_every_live_state_has_one_bound() -> None:
    assert BOUNDS == {
        S.STARTING: Bound.START,
        S.READY: Bound.HEARTBEAT,
        S.DRAINING: Bound.STOP,
        S.STOPPING: Bound.STOP,
    }


LIMITS = WorkerLimits(start=30.0, heartbeat=10.0, stop=42.0)


@pytest.mark.parametrize(("state", "expected"), [
    (S.STARTING, 100.0 + 30.0),  # from entering the state (the spawn)
    (S.READY, 150.0 + 10.0),  # from the last heartbeat, not from becoming ready
    (S.DRAINING, 100.0 + 42.0),  # from the first drain or stop
    (S.STOPPING, 100.0 + 42.0),
    (S.EXITED, None),
], ids=lambda v: getattr(v, "name", str(v)))
def test_deadline_per_state(state: WorkerState, expected: float | None) -> None:
    assert deadline(state, entered_at=100.0, last_beat=150.0, limits=LIMITS) == expected


def test_a_stop_does_not_restart_a_draining_workers_budget() -> None:
    """Drained on a reload at t=100, the service stops at t=120: the table ignores
    the stop, so the time the state was entered, and the kill, stay where they were."""
    assert transition(S.DRAINING, E.STOP_SENT) is S.DRAINING
    assert deadline(S.DRAINING, entered_at=100.0, last_beat=0.0, limits=LIMITS) == 142.0


def test_limits_come_from_the_config_and_its_stop_budget() -> None:
    config = ServerConfig(app="x:y", worker_start_timeout=7, worker_timeout=3,
                          graceful_timeout=2, force_exit_timeout=1)
    limits = WorkerLimits.from_config(config)
    assert limits == WorkerLimits(start=7, heartbeat=3, stop=config.stop_budget.total)
    assert limits.stop == 2 + 1 + 1 + config.stop_budget.margin
    assert [limits.of(b) for b in Bound] == [7, 3, limits.stop]


def test_restart_backoff_schedule() -> None:
    """0 for the first replacement, then 0.1 s doubling to 5 s, and it stays there."""
    delays = [RESTART_BACKOFF.delay(n) for n in range(10)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_registration_backoff_schedule() -> None:
    """The supervisor retries a registration that failed at start: 0.2 s doubling to
    10 s, and it stays there."""
    delays = [supervisor_mod.REGISTER_BACKOFF.delay(n) for n in range(1, 10)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]


class RecordingBackoff:
    """Records the failure counts a retry loop asks about; never waits."""

    def __init__(self, schedule: Backoff) -> None:
        self.schedule = schedule
        self.asked: list[int] = []

    def delay(self, attempt: int) -> float:
        self.asked.append(attempt)
        return 0.0


async def test_registration_retries_count_failures_until_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_register_until_done asks the backoff for failure 1, 2, 3 ... (never back to the
    first step), logs once, and ends on the first success."""
    config = ServerConfig(app="x:y", registry="sqlite:///unused.db", service="svc")
    sup = supervisor_mod.Supervisor(config, [])
    outcomes = iter([False] * 6 + [True])
    tries: list[bool] = []

    async def register_once(*, log_failure: bool) -> bool:
        tries.append(log_failure)
        return next(outcomes)

    recorder = RecordingBackoff(supervisor_mod.REGISTER_BACKOFF)
    monkeypatch.setattr(supervisor_mod, "REGISTER_BACKOFF", recorder)
    monkeypatch.setattr(sup, "_register_once", register_once)
    await sup._register_until_done()
    assert recorder.asked == [1, 2, 3, 4, 5, 6]
    assert tries == [True] + [False] * 6  # the failure is logged once, not per try
