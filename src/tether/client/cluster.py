"""The provider state machine of a cluster: pure, events in, actions out, clock injected.

Field report 5 (SOFARPC) is why this file exists: a provider that restarted under a
new address was retried forever (the registry never said it was gone), and with a
single provider a restart emptied the list but cleanup compared against an aliased
copy and sat behind ``if logger.isWarnEnabled()``. Here:

Rules
* Every provider is in exactly one :class:`ProviderState`; every change goes through
  :data:`TRANSITIONS` and is reported by exactly one ``Log`` action.
* Registry snapshots are immutable; the core diffs the new set against its own
  records and never keeps a reference to the caller's collections.
* A provider absent from the latest snapshot gets a ``Close`` action, always: no
  branch here depends on logging.
* Reconnects follow gRPC's backoff (1 s, x1.6, +/-20 % jitter, at most 120 s); after
  ``max_reconnect_attempts`` or ``max_retry_duration`` the provider is EVICTED even
  if the registry still lists it, and then probed only every ``evicted_probe_interval``.
* Passive outlier detection: ``ejection_failures`` consecutive failed requests eject a
  provider for ``base_ejection`` x times ejected (capped), never more than
  ``max_ejection_percent`` of providers at once.

This file does no I/O and reads no clock: ``health.py`` feeds it events and carries
out its actions.

    CONNECTING --probe ok--> ALIVE --probe/heartbeat failed--> RETRYING --probe ok--> ALIVE
    RETRYING --attempts or duration exhausted--> EVICTED --rare probe ok / re-listed--> ...
    ALIVE --consecutive request failures--> EJECTED --timer or heartbeat ok--> ALIVE
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

from tether.registry.base import Provider


class ProviderState(enum.Enum):
    CONNECTING = "connecting"  # just listed: first probe in progress
    ALIVE = "alive"  # takes traffic
    RETRYING = "retrying"  # unreachable: reconnect at next_retry_at (backoff)
    EJECTED = "ejected"  # reachable but failing requests: benched until ejected_until
    EVICTED = "evicted"  # gave up: probed only rarely, or when re-listed


class Event(enum.Enum):
    PROBE_OK = "probe ok"
    PROBE_FAILED = "probe failed"
    GAVE_UP = "gave up"
    REQUESTS_FAILING = "requests failing"
    EJECTION_OVER = "ejection over"


TRANSITIONS: dict[tuple[ProviderState, Event], ProviderState] = {
    (ProviderState.CONNECTING, Event.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.CONNECTING, Event.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.CONNECTING, Event.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.ALIVE, Event.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.ALIVE, Event.REQUESTS_FAILING): ProviderState.EJECTED,
    (ProviderState.ALIVE, Event.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.RETRYING, Event.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.RETRYING, Event.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.RETRYING, Event.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.EJECTED, Event.PROBE_OK): ProviderState.ALIVE,
    (ProviderState.EJECTED, Event.EJECTION_OVER): ProviderState.ALIVE,
    (ProviderState.EJECTED, Event.PROBE_FAILED): ProviderState.RETRYING,
    (ProviderState.EJECTED, Event.GAVE_UP): ProviderState.EVICTED,
    (ProviderState.EVICTED, Event.PROBE_OK): ProviderState.ALIVE,
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


# -- actions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Check the provider now (heartbeat or reconnect); report with on_probe()."""

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


class ClusterCore:
    """The decision core for one service's providers."""

    def __init__(self, service: str, config: ClusterConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.service = service
        self.config = config or ClusterConfig()
        self.rng = rng or random.Random()
        self.records: dict[str, ProviderRecord] = {}
        self.evictions = 0
        self.ejections = 0

    # -- inputs -------------------------------------------------------------------------

    def on_snapshot(self, providers: Iterable[Provider], now: float) -> list[Action]:
        """A full registry snapshot. Unlisted providers are closed, unconditionally."""
        listed = {p.address: p for p in providers}  # our own dict: nothing aliases
        actions: list[Action] = []
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

    def on_probe(self, address: str, ok: bool, now: float) -> list[Action]:
        """The result of a probe (connect or heartbeat)."""
        record = self.records.get(address)
        if record is None:
            return []  # it left meanwhile
        if ok:
            return self._move(record, Event.PROBE_OK, now, attempts=0, first_failure_at=None,
                              consecutive_failures=0,
                              next_probe_at=now + self.config.heartbeat_interval)
        if record.state is ProviderState.EVICTED:
            return self._set(record, next_probe_at=now + self.config.evicted_probe_interval)
        attempts = record.attempts + 1
        first = record.first_failure_at if record.first_failure_at is not None else now
        config = self.config
        if attempts >= config.max_reconnect_attempts or now - first >= config.max_retry_duration:
            # Give up even though the registry may still list it (the SOFARPC bug was
            # retrying such a provider forever); probe it only rarely from now on.
            self.evictions += 1
            return self._move(record, Event.GAVE_UP, now, attempts=attempts,
                              first_failure_at=first,
                              next_probe_at=now + config.evicted_probe_interval,
                              detail=f" after {attempts} failed attempts")
        return self._move(record, Event.PROBE_FAILED, now, attempts=attempts,
                          first_failure_at=first,
                          next_probe_at=now + self.backoff(attempts))

    def on_request(self, address: str, ok: bool, now: float) -> list[Action]:
        """The outcome of a request (ok=False: connect error, timeout or 5xx)."""
        record = self.records.get(address)
        if record is None:
            return []
        if ok:
            if record.consecutive_failures:
                self.records[address] = replace(record, consecutive_failures=0)
            return []
        failures = record.consecutive_failures + 1
        config = self.config
        if (record.state is ProviderState.ALIVE and failures >= config.ejection_failures
                and self._may_eject()):
            times = record.times_ejected + 1
            duration = min(config.max_ejection, config.base_ejection * times)
            self.ejections += 1
            return self._move(record, Event.REQUESTS_FAILING, now, consecutive_failures=0,
                              times_ejected=times, ejected_until=now + duration,
                              next_probe_at=now + config.heartbeat_interval,
                              detail=f" after {failures} failed requests, for {duration:.0f}s")
        self.records[address] = replace(record, consecutive_failures=failures)
        return []

    def due(self, now: float) -> list[Action]:
        """Timers: probes that are due, ejections that are over."""
        actions: list[Action] = []
        for record in list(self.records.values()):
            if record.state is ProviderState.EJECTED and now >= record.ejected_until:
                actions += self._move(record, Event.EJECTION_OVER, now,
                                      next_probe_at=now + self.config.heartbeat_interval)
                continue
            if now >= record.next_probe_at and record.state is not ProviderState.CONNECTING:
                # the next probe is scheduled when this one reports back
                self.records[record.address] = replace(record, next_probe_at=float("inf"))
                actions.append(Probe(record.address))
        return actions

    # -- queries ------------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [a for a, r in self.records.items() if r.state is ProviderState.ALIVE]

    def next_wakeup(self) -> float | None:
        """When :meth:`due` next has something to do (a CONNECTING provider's first
        probe is in flight: it reports back by itself)."""
        times = [r.ejected_until if r.state is ProviderState.EJECTED else r.next_probe_at
                 for r in self.records.values() if r.state is not ProviderState.CONNECTING]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    def backoff(self, attempts: int) -> float:
        """gRPC's schedule: initial x multiplier^(n-1), capped, +/- jitter."""
        config = self.config
        base = min(config.backoff_max,
                   config.backoff_initial * config.backoff_multiplier ** (attempts - 1))
        return float(base * (1 + self.rng.uniform(-config.backoff_jitter, config.backoff_jitter)))

    def _may_eject(self) -> bool:
        total = len(self.records)
        ejected = sum(r.state is ProviderState.EJECTED for r in self.records.values())
        return total > 0 and (ejected + 1) * 100 <= self.config.max_ejection_percent * total

    # -- transitions --------------------------------------------------------------------

    def _move(self, record: ProviderRecord, event: Event, now: float, *, detail: str = "",
              **changes: object) -> list[Action]:
        state = TRANSITIONS.get((record.state, event), record.state)
        updated = replace(record, state=state, **changes)  # type: ignore[arg-type]
        self.records[record.address] = updated
        if state is record.state:
            return []  # no change of state: nothing to log (never once per retry)
        level = "info" if state is ProviderState.ALIVE else "warning"
        return [Log(level, f"{self.service}: provider {record.address} "
                           f"{record.state.value} -> {state.value}{detail}")]

    def _set(self, record: ProviderRecord, **changes: object) -> list[Action]:
        self.records[record.address] = replace(record, **changes)  # type: ignore[arg-type]
        return []
