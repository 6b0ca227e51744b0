"""The provider state machine of a cluster: pure, typed events in, actions out, clock injected.

Field report 5 (docs/incidents.md, SOFARPC) is why this file exists: a provider that
restarted under a new address was retried forever (the registry never said it was
gone), and with a single provider a restart emptied the list but cleanup compared
against an aliased copy and sat behind ``if logger.isWarnEnabled()``. This file does
no I/O and reads no clock: ``cluster.py`` feeds it events and carries out its
actions.

Rules
* Every provider is in exactly one :class:`ProviderState`; every change goes through
  :data:`TRANSITIONS` and is reported by exactly one ``Log`` action.
* Every verdict on a provider is made here, from a typed :data:`Outcome` saying what
  the I/O side *saw* (a probe's result, a failed connect, a request never sent, a
  request that failed after it was sent, a status), never what it concluded.
  :class:`NotSent` (this client's own pool had no free slot) is no evidence at all: a
  client's own congestion never ejects or retries a provider (issue 12).
* Registry snapshots are immutable; the machine diffs the new set against its own
  records and never keeps a reference to the caller's collections.
* A provider absent from the latest snapshot gets a ``Close`` action, always: no
  branch here depends on logging.
* Reconnects follow :meth:`ClusterConfig.reconnect_backoff` (gRPC's: 1 s, x1.6,
  +/-20 %, at most 120 s); after ``max_reconnect_attempts`` or ``max_retry_duration``
  the provider is EVICTED even if the registry still lists it, and then probed only
  every ``evicted_probe_interval``.
* Passive outlier detection: ``ejection_failures`` failed requests in a row (a
  transport error after the request was sent, or any 5xx: Envoy's consecutive_5xx)
  eject an ALIVE provider for ``base_ejection`` x times ejected (capped), never more
  than ``max_ejection_percent`` of providers at once. The ejection ends at its timer,
  or early when the heartbeat scheduled ``heartbeat_interval`` after it succeeds. A
  probe is about reachability: no other probe ends an ejection, and none resets a run
  of failed requests (only a response below 500 does).

    CONNECTING --probe ok--> ALIVE --probe failed / connect failed--> RETRYING --probe ok--> ALIVE
    RETRYING --attempts or duration exhausted--> EVICTED --rare probe ok / re-listed--> ...
    ALIVE --consecutive request failures--> EJECTED --timer or heartbeat ok--> ALIVE
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from tether.backoff import Backoff
from tether.client.errors import ConnectError, ConnectTimeout, PoolTimeout, TransportError
from tether.registry.base import Provider


class ProviderState(enum.Enum):
    CONNECTING = "connecting"  # just listed: first probe in progress
    ALIVE = "alive"  # takes traffic
    RETRYING = "retrying"  # unreachable: reconnect at next_probe_at (backoff)
    EJECTED = "ejected"  # reachable but failing requests: benched until ejected_until
    EVICTED = "evicted"  # gave up: probed only rarely, or when re-listed


class Trigger(enum.Enum):
    """What moves a provider from one state to another (the keys of the table)."""

    PROBE_OK = "probe ok"
    PROBE_FAILED = "probe failed"
    GAVE_UP = "gave up"
    REQUESTS_FAILING = "requests failing"
    EJECTION_OVER = "ejection over"


TRANSITIONS: Final[dict[tuple[ProviderState, Trigger], ProviderState]] = {
    (ProviderState.CONNECTING, Trigger.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.CONNECTING, Trigger.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.CONNECTING, Trigger.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.ALIVE, Trigger.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.ALIVE, Trigger.REQUESTS_FAILING): ProviderState.EJECTED,
    (ProviderState.ALIVE, Trigger.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.RETRYING, Trigger.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.RETRYING, Trigger.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.RETRYING, Trigger.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.EJECTED, Trigger.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.EJECTED, Trigger.EJECTION_OVER): ProviderState.ALIVE,
    (ProviderState.EJECTED, Trigger.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.EJECTED, Trigger.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.EVICTED, Trigger.PROBE_OK): ProviderState.ALIVE,
}


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Every knob of a cluster, defaulted as gRPC and Envoy do."""

    heartbeat_interval: float = 5.0
    #: gRPC connection backoff
    backoff_initial: float = 1.0
    backoff_multiplier: float = 1.6
    backoff_jitter: float = 0.2
    backoff_max: float = 120.0
    max_reconnect_attempts: int = 10
    max_retry_duration: float = 600.0
    evicted_probe_interval: float = 300.0
    #: passive outlier detection (Envoy's defaults)
    ejection_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 50.0
    #: what an empty snapshot means: keep the last providers (still health-checked,
    #: so dead ones get evicted) or clear them
    empty: str = "keep"

    def __post_init__(self) -> None:
        if self.empty not in ("keep", "clear"):
            raise ValueError(f"empty must be 'keep' or 'clear', not {self.empty!r}")
        self.reconnect_backoff()  # refuses impossible backoff knobs now, not at a failure

    def reconnect_backoff(self) -> Backoff:
        """The schedule of reconnect probes, from the four ``backoff_*`` knobs."""
        return Backoff(initial=self.backoff_initial, maximum=self.backoff_max,
                       multiplier=self.backoff_multiplier, jitter=self.backoff_jitter)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One provider's move from one state to another, for the timeline operators see."""

    at: float  # the state machine's clock (monotonic)
    address: str
    before: ProviderState
    after: ProviderState
    trigger: Trigger


#: state changes a cluster remembers for its timeline (the dashboard's), newest last
TIMELINE_LENGTH: Final = 50


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """What the cluster knows about one provider. Replaced, never mutated."""

    provider: Provider
    state: ProviderState = ProviderState.CONNECTING
    attempts: int = 0  # failed reconnects in a row
    first_failure_at: float | None = None
    next_probe_at: float = 0.0
    consecutive_failures: int = 0  # failed requests in a row
    times_ejected: int = 0
    ejected_until: float = 0.0

    @property
    def address(self) -> str:
        return self.provider.address


# -- events: what the I/O side saw -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probed:
    """A heartbeat or reconnect probe finished: ``ok`` (connected; with a health path,
    any status below 500) or not."""

    address: str
    ok: bool


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """A request could not connect (refused, connect timeout, TLS handshake): as good
    as a failed probe."""

    address: str


@dataclass(frozen=True, slots=True)
class NotSent:
    """The request never left this client: its own pool had no free slot in time.
    Nothing about the provider follows from it."""

    address: str


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The request was sent and no usable response came back (read timeout, reset,
    malformed response)."""

    address: str


@dataclass(frozen=True, slots=True)
class Answered:
    """A response arrived, with this status."""

    address: str
    status: int


Outcome = Probed | ConnectFailed | NotSent | RequestFailed | Answered


def outcome_of(address: str, error: TransportError) -> ConnectFailed | NotSent | RequestFailed:
    """The event a request's transport error stands for."""
    if isinstance(error, PoolTimeout):
        return NotSent(address)
    if isinstance(error, ConnectError | ConnectTimeout):  # TLSError is a ConnectError
        return ConnectFailed(address)
    return RequestFailed(address)


# -- actions: what the I/O side must do ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Check the provider now (heartbeat or reconnect); report a :class:`Probed`."""

    address: str


@dataclass(frozen=True, slots=True)
class Close:
    """The provider left: drain its in-flight requests, close its connections."""

    address: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # "info" | "warning"
    message: str


Action = Probe | Close | Log

#: the answer to most events: shared, so the request path allocates no list for it
NO_ACTIONS: Final[Sequence[Action]] = ()


class ProviderStateMachine:
    """The decisions about one service's providers."""

    def __init__(self, service: str, config: ClusterConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.service = service
        self.config = config or ClusterConfig()
        self.rng = rng or random.Random()
        self.backoff = self.config.reconnect_backoff()
        self.records: dict[str, ProviderRecord] = {}
        #: alive()'s answer until a provider is listed, unlisted or changes state
        self._alive: tuple[str, ...] | None = None
        self.evictions = 0
        self.ejections = 0
        #: the last state changes, newest last: what an operator reads to see a
        #: provider go alive -> retrying -> evicted (a change is rare: never per request)
        self.timeline: deque[StateChange] = deque(maxlen=TIMELINE_LENGTH)

    # -- inputs -------------------------------------------------------------------------

    def on_snapshot(self, providers: Iterable[Provider], now: float) -> list[Action]:
        """A full registry snapshot. Unlisted providers are closed, unconditionally."""
        listed = {p.address: p for p in providers}  # our own dict: nothing aliases
        actions: list[Action] = []
        self._alive = None
        if not listed and self.config.empty == "keep" and self.records:
            actions.append(Log("warning", f"{self.service}: the registry lists no providers; "
                                          f"keeping the last {len(self.records)} (empty=keep)"))
            return actions
        for address, gone in list(self.records.items()):
            if address not in listed:
                del self.records[address]
                actions.append(Close(address))
                actions.append(Log("info", f"{self.service}: provider {address} left the "
                                           f"registry ({gone.state.value}): closing"))
        for address, provider in listed.items():
            known = self.records.get(address)
            if known is None or known.provider.registration != provider.registration:
                # New, or the same address registered again (a restart): start over,
                # promptly, whatever state the old registration had reached.
                if known is not None:
                    actions.append(Close(address))
                self.records[address] = ProviderRecord(provider, next_probe_at=now)
                actions.append(Probe(address))
                actions.append(Log("info", f"{self.service}: provider {address} listed"))
            elif known.provider != provider:
                self.records[address] = replace(known, provider=provider)
        return actions

    def on_outcome(self, outcome: Outcome, now: float) -> Sequence[Action]:
        """What a probe or a request saw; the whole failure policy is here."""
        if isinstance(outcome, Answered):  # first: the request path's common case
            return self.on_answer(outcome.address, outcome.status, now)
        record = self.records.get(outcome.address)
        if record is None:
            return NO_ACTIONS  # it left meanwhile
        if isinstance(outcome, NotSent):
            return NO_ACTIONS  # our own congestion: no evidence against the provider
        if isinstance(outcome, Probed):
            return self._probed(record, outcome.ok, now)
        if isinstance(outcome, ConnectFailed):
            # Unreachable: a failed probe, but only the first one counts. Requests
            # already on their way fail together and are not N reconnect attempts;
            # from RETRYING on, the probes' backoff schedule alone decides.
            if record.state is ProviderState.ALIVE:
                return self._probed(record, False, now)
            return NO_ACTIONS
        # RequestFailed: it took the request and failed it. Count it, and probe it now
        # to tell a dead provider (-> retrying) from one that fails requests.
        return [*self._request_failed(record, now), Probe(record.address)]

    def on_answer(self, address: str, status: int, now: float) -> Sequence[Action]:
        """``on_outcome(Answered(address, status), now)``, for the request path: no
        outcome object per response."""
        record = self.records.get(address)
        if record is None:
            return NO_ACTIONS  # it left meanwhile
        if status >= 500:
            # Every 5xx counts (Envoy's consecutive_5xx), a 500 too: only whether it is
            # *retried* depends on the status (see retries.py).
            return self._request_failed(record, now)
        if record.consecutive_failures:
            self.records[address] = replace(record, consecutive_failures=0)
        return NO_ACTIONS

    def due(self, now: float) -> list[Action]:
        """Timers: probes that are due, ejections that are over."""
        actions: list[Action] = []
        for record in list(self.records.values()):
            if record.state is ProviderState.EJECTED and now >= record.ejected_until:
                actions += self._move(record, Trigger.EJECTION_OVER, now,
                                      next_probe_at=now + self.config.heartbeat_interval)
                continue
            if now >= record.next_probe_at and record.state is not ProviderState.CONNECTING:
                # the next probe is scheduled when this one reports back
                self.records[record.address] = replace(record, next_probe_at=float("inf"))
                actions.append(Probe(record.address))
        return actions

    # -- queries ------------------------------------------------------------------------

    def alive(self) -> tuple[str, ...]:
        """The alive providers' addresses: a snapshot, kept until a provider is
        listed, unlisted or changes state (it is asked for on every request)."""
        alive = self._alive
        if alive is None:
            alive = self._alive = tuple(
                a for a, r in self.records.items() if r.state is ProviderState.ALIVE)
        return alive

    def connecting(self) -> bool:
        """Whether a just-listed provider still waits for its first probe's verdict."""
        return any(r.state is ProviderState.CONNECTING for r in self.records.values())

    def next_wakeup(self) -> float | None:
        """When :meth:`due` next has something to do (a CONNECTING provider's first
        probe is in flight: it reports back by itself)."""
        # an ejected provider has two timers: its ejection's end and its heartbeat
        times = [min(r.ejected_until, r.next_probe_at) if r.state is ProviderState.EJECTED
                 else r.next_probe_at
                 for r in self.records.values() if r.state is not ProviderState.CONNECTING]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    # -- the decisions ------------------------------------------------------------------

    def _probed(self, record: ProviderRecord, ok: bool, now: float) -> Sequence[Action]:
        config = self.config
        if ok:
            # A probe shows that the provider is up, not that its requests succeed: the
            # probe sent after each failed request must neither end an ejection (only
            # the heartbeat scheduled at the ejection does: its time is inf while it is
            # in flight) nor reset a run of failed requests. It did both, and a provider
            # timing out every request with a fine /healthz was never ejected for long.
            if record.state is ProviderState.EJECTED and record.next_probe_at != float("inf"):
                return NO_ACTIONS
            failures = record.consecutive_failures if record.state is ProviderState.ALIVE else 0
            return self._move(record, Trigger.PROBE_OK, now, attempts=0, first_failure_at=None,
                              consecutive_failures=failures,
                              next_probe_at=now + config.heartbeat_interval)
        if record.state is ProviderState.EVICTED:
            return self._set(record, next_probe_at=now + config.evicted_probe_interval)
        attempts = record.attempts + 1
        first = record.first_failure_at if record.first_failure_at is not None else now
        if attempts >= config.max_reconnect_attempts or now - first >= config.max_retry_duration:
            # Give up even though the registry may still list it (the SOFARPC bug was
            # retrying such a provider forever); probe it only rarely from now on.
            self.evictions += 1
            return self._move(record, Trigger.GAVE_UP, now, attempts=attempts,
                              first_failure_at=first,
                              next_probe_at=now + config.evicted_probe_interval,
                              detail=f" after {attempts} failed attempts")
        return self._move(record, Trigger.PROBE_FAILED, now, attempts=attempts,
                          first_failure_at=first,
                          next_probe_at=now + self.backoff.delay(attempts, self.rng))

    def _request_failed(self, record: ProviderRecord, now: float) -> Sequence[Action]:
        failures = record.consecutive_failures + 1
        config = self.config
        if (record.state is ProviderState.ALIVE and failures >= config.ejection_failures
                and self._may_eject()):
            times = record.times_ejected + 1
            duration = min(config.max_ejection, config.base_ejection * times)
            self.ejections += 1
            return self._move(record, Trigger.REQUESTS_FAILING, now, consecutive_failures=0,
                              times_ejected=times, ejected_until=now + duration,
                              next_probe_at=now + config.heartbeat_interval,
                              detail=f" after {failures} failed requests, for {duration:.0f}s")
        self.records[record.address] = replace(record, consecutive_failures=failures)
        return NO_ACTIONS

    def _may_eject(self) -> bool:
        total = len(self.records)
        ejected = sum(r.state is ProviderState.EJECTED for r in self.records.values())
        return total > 0 and (ejected + 1) * 100 <= self.config.max_ejection_percent * total

    # -- transitions --------------------------------------------------------------------

    def _move(self, record: ProviderRecord, trigger: Trigger, now: float, *, detail: str = "",
              **changes: object) -> Sequence[Action]:
        state = TRANSITIONS.get((record.state, trigger), record.state)
        updated = replace(record, state=state, **changes)  # type: ignore[arg-type]
        self.records[record.address] = updated
        if state is record.state:
            return NO_ACTIONS  # no change of state: nothing to log (never once per retry)
        self._alive = None
        self.timeline.append(StateChange(now, record.address, record.state, state, trigger))
        level = "info" if state is ProviderState.ALIVE else "warning"
        return [Log(level, f"{self.service}: provider {record.address} "
                           f"{record.state.value} -> {state.value}{detail}")]

    def _set(self, record: ProviderRecord, **changes: object) -> Sequence[Action]:
        self.records[record.address] = replace(record, **changes)  # type: ignore[arg-type]
        return NO_ACTIONS
