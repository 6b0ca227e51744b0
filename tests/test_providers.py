"""The provider state machine (``tether.client.providers``), without sockets: driven by
hypothesis with a fake clock (random interleavings of snapshots, typed outcomes of
probes and requests, and time), and the failure policy one outcome at a time."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tether.client.errors import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TLSError,
    TransportError,
    WriteError,
)
from tether.client.providers import (
    TIMELINE_LENGTH,
    Action,
    Answered,
    Close,
    ClusterConfig,
    ConnectFailed,
    Log,
    NotSent,
    Outcome,
    Probe,
    Probed,
    ProviderState,
    ProviderStateMachine,
    RequestFailed,
    outcome_of,
)
from tether.registry.base import Provider

ADDRESSES = [f"127.0.0.1:{8000 + i}" for i in range(5)]
CONFIG = ClusterConfig(max_reconnect_attempts=4, max_retry_duration=1000.0,
                       ejection_failures=3, heartbeat_interval=5.0)


class Providers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ProviderStateMachine("svc", CONFIG, random.Random(7))
        self.now = 0.0
        self.generation = 0

    def _check_logs(self, before: dict[str, ProviderState], actions: Sequence[object]) -> None:
        """Exactly one Log per state change; none for a repeated failure."""
        changed = sum(
            1 for a, r in self.core.records.items() if a in before and before[a] is not r.state
        )
        state_logs = [a for a in actions if isinstance(a, Log) and "->" in a.message]
        assert len(state_logs) == changed, (state_logs, changed)

    @rule(listed=st.sets(st.sampled_from(ADDRESSES)), restart=st.booleans())
    def snapshot(self, listed: set[str], restart: bool) -> None:
        self.generation += restart
        providers = {Provider("svc", a, (), f"reg-{a}-{self.generation}") for a in listed}
        before = set(self.core.records)
        actions = self.core.on_snapshot(frozenset(providers), self.now)
        closed = {a.address for a in actions if isinstance(a, Close)}
        if listed or CONFIG.empty == "clear" or not before:
            # Cleanup is unconditional: whatever left the registry is closed now.
            assert before - listed <= closed
            assert set(self.core.records) == listed
        else:
            assert set(self.core.records) == before  # empty="keep"
        for address in listed:
            assert address in self.core.records

    @rule(index=st.integers(0, 4), ok=st.booleans())
    def probe_result(self, index: int, ok: bool) -> None:
        address = ADDRESSES[index]
        record = self.core.records.get(address)
        before = {a: r.state for a, r in self.core.records.items()}
        actions = self.core.on_outcome(Probed(address, ok), self.now)
        self._check_logs(before, actions)
        if record is None or ok:
            return
        after = self.core.records[address]
        if record.state is ProviderState.EVICTED:
            assert after.state is ProviderState.EVICTED
            return
        first = after.first_failure_at
        assert first is not None
        exhausted = (after.attempts >= CONFIG.max_reconnect_attempts
                     or self.now - first >= CONFIG.max_retry_duration)
        if exhausted:
            assert after.state is ProviderState.EVICTED  # always gives up at the limit
        else:
            assert after.state is ProviderState.RETRYING
            delay = after.next_probe_at - self.now
            n = after.attempts
            nominal = min(CONFIG.backoff_max,
                          CONFIG.backoff_initial * CONFIG.backoff_multiplier ** (n - 1))
            assert nominal * (1 - CONFIG.backoff_jitter) - 1e-9 <= delay
            assert delay <= CONFIG.backoff_max * (1 + CONFIG.backoff_jitter) + 1e-9

    @rule(index=st.integers(0, 4),
          kind=st.sampled_from(["connect", "not sent", "failed", "status"]),
          status=st.sampled_from([200, 404, 500, 503]))
    def request_result(self, index: int, kind: str, status: int) -> None:
        address = ADDRESSES[index]
        outcomes: dict[str, Outcome] = {
            "connect": ConnectFailed(address), "not sent": NotSent(address),
            "failed": RequestFailed(address), "status": Answered(address, status)}
        outcome = outcomes[kind]
        before_record = self.core.records.get(address)
        before = {a: r.state for a, r in self.core.records.items()}
        actions = self.core.on_outcome(outcome, self.now)
        self._check_logs(before, actions)
        if isinstance(outcome, NotSent):
            # the client's own congestion: nothing about the provider changes
            assert actions == ()
            assert self.core.records.get(address) == before_record

    @rule(seconds=st.floats(0.0, 400.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        before = {a: r.state for a, r in self.core.records.items()}
        actions = self.core.due(self.now)
        self._check_logs(before, actions)
        for action in actions:
            if isinstance(action, Probe):
                assert action.address in self.core.records

    @invariant()
    def ejection_never_exceeds_the_cap(self) -> None:
        records = self.core.records.values()
        ejected = sum(r.state is ProviderState.EJECTED for r in records)
        assert ejected * 100 <= CONFIG.max_ejection_percent * len(records)

    @invariant()
    def alive_is_exactly_the_alive_providers(self) -> None:
        # (alive() is kept between state changes: never stale in either direction)
        assert self.core.alive() == tuple(
            a for a, r in self.core.records.items() if r.state is ProviderState.ALIVE)


TestProviders = Providers.TestCase
TestProviders.settings = settings(max_examples=150, stateful_step_count=60,
                                       deadline=None)


def test_dead_provider_is_evicted_and_logged_a_bounded_number_of_times() -> None:
    core = ProviderStateMachine("svc", ClusterConfig(max_reconnect_attempts=10), random.Random(1))
    logs: list[str] = []
    provider = Provider("svc", "127.0.0.1:9", (), "r1")
    now = 0.0
    actions: Sequence[Action] = core.on_snapshot([provider], now)
    for _ in range(1000):  # a dead provider probed for a long simulated time
        for action in actions:
            if isinstance(action, Log):
                logs.append(action.message)
            if isinstance(action, Probe):
                actions = core.on_outcome(Probed(action.address, False), now)
                break
        else:
            now = core.next_wakeup() or now + 1
            actions = core.due(now)
    assert core.records["127.0.0.1:9"].state is ProviderState.EVICTED
    assert len(logs) < 20, logs
    # The timeline has each change once (never each failed probe), in order.
    assert [(c.before, c.after) for c in core.timeline] == [
        (ProviderState.CONNECTING, ProviderState.RETRYING),
        (ProviderState.RETRYING, ProviderState.EVICTED)]
    assert [c.address for c in core.timeline] == ["127.0.0.1:9"] * 2
    assert core.timeline[0].at <= core.timeline[1].at


def test_the_timeline_is_bounded() -> None:
    core = ProviderStateMachine("svc", ClusterConfig(ejection_failures=1))
    provider = Provider("svc", "127.0.0.1:9", (), "r1")
    core.on_snapshot([provider], 0.0)
    for i in range(TIMELINE_LENGTH * 2):  # alive <-> retrying, many times
        core.on_outcome(Probed("127.0.0.1:9", i % 2 == 0), float(i))
    assert len(core.timeline) == TIMELINE_LENGTH
    assert core.timeline[-1].at == float(TIMELINE_LENGTH * 2 - 1)


def test_same_address_new_registration_reconnects_promptly() -> None:
    core = ProviderStateMachine("svc", ClusterConfig(max_reconnect_attempts=2), random.Random(1))
    old = Provider("svc", "127.0.0.1:9", (), "old")
    core.on_snapshot([old], 0.0)
    core.on_outcome(Probed(old.address, False), 0.0)
    core.on_outcome(Probed(old.address, False), 2.0)
    assert core.records[old.address].state is ProviderState.EVICTED
    new = Provider("svc", "127.0.0.1:9", (), "new")
    actions = core.on_snapshot([new], 3.0)
    assert Probe(old.address) in actions and Close(old.address) in actions
    assert core.records[old.address].state is ProviderState.CONNECTING
    core.on_outcome(Probed(old.address, True), 3.1)
    assert core.alive() == (old.address,)


def test_empty_snapshot_policies() -> None:
    provider = Provider("svc", "127.0.0.1:9", (), "r")
    keep = ProviderStateMachine("svc", ClusterConfig(empty="keep"))
    keep.on_snapshot([provider], 0.0)
    assert not any(isinstance(a, Close) for a in keep.on_snapshot([], 1.0))
    assert provider.address in keep.records
    clear = ProviderStateMachine("svc", ClusterConfig(empty="clear"))
    clear.on_snapshot([provider], 0.0)
    assert Close(provider.address) in clear.on_snapshot([], 1.0)
    assert not clear.records


def test_ejection_respects_the_percentage_and_heals() -> None:
    core = ProviderStateMachine("svc", ClusterConfig(ejection_failures=2, max_ejection_percent=50))
    providers = [Provider("svc", f"127.0.0.1:{9000 + i}", (), "r") for i in range(2)]
    core.on_snapshot(providers, 0.0)
    for p in providers:
        core.on_outcome(Probed(p.address, True), 0.0)
    for p in providers:
        for _ in range(2):
            core.on_outcome(Answered(p.address, 503), 1.0)
    states = sorted(r.state.value for r in core.records.values())
    assert states == ["alive", "ejected"]  # never more than 50 %
    ejected = next(a for a, r in core.records.items() if r.state is ProviderState.EJECTED)
    # A probe that was not the heartbeat due after the ejection (one sent after a failed
    # request) does not end it: it shows the provider is up, not that it serves.
    assert core.on_outcome(Probed(ejected, True), 2.0) == ()
    assert core.records[ejected].state is ProviderState.EJECTED
    heartbeat_at = core.records[ejected].next_probe_at
    assert heartbeat_at == 1.0 + core.config.heartbeat_interval
    assert Probe(ejected) in core.due(heartbeat_at)
    core.on_outcome(Probed(ejected, True), heartbeat_at)  # that heartbeat: back early
    assert core.records[ejected].state is ProviderState.ALIVE


# -- the failure policy, one typed outcome at a time -------------------------------------------

ADDRESS = "127.0.0.1:9000"


def alive_machine(config: ClusterConfig, n: int = 1) -> ProviderStateMachine:
    machine = ProviderStateMachine("svc", config, random.Random(3))
    providers = [Provider("svc", f"127.0.0.1:{9000 + i}", (), "r") for i in range(n)]
    machine.on_snapshot(providers, 0.0)
    for p in providers:
        machine.on_outcome(Probed(p.address, True), 0.0)
    assert len(machine.alive()) == n
    return machine


def test_transport_errors_map_onto_typed_outcomes() -> None:
    never_sent: list[TransportError] = [PoolTimeout("full")]
    unreachable: list[TransportError] = [ConnectError("refused"), ConnectTimeout("slow"),
                                         TLSError("bad certificate")]
    failed: list[TransportError] = [ReadTimeout("slow"), ReadError("reset"),
                                    RemoteProtocolError("garbage"), WriteError("reset")]
    assert {type(outcome_of(ADDRESS, e)) for e in never_sent} == {NotSent}
    assert {type(outcome_of(ADDRESS, e)) for e in unreachable} == {ConnectFailed}
    assert {type(outcome_of(ADDRESS, e)) for e in failed} == {RequestFailed}
    assert outcome_of(ADDRESS, PoolTimeout("full")) == NotSent(ADDRESS)


def test_the_clients_own_congestion_never_counts_against_a_provider() -> None:
    """Issue 12, bug 1, without sockets: any number of NotSent leave an alive provider
    alive, untouched, and do not even break a run of real failures."""
    machine = alive_machine(ClusterConfig(ejection_failures=3, max_ejection_percent=100))
    record = machine.records[ADDRESS]
    for _ in range(100):
        assert machine.on_outcome(NotSent(ADDRESS), 1.0) == ()
    assert machine.records[ADDRESS] is record
    machine.on_outcome(Answered(ADDRESS, 503), 2.0)
    machine.on_outcome(Answered(ADDRESS, 503), 2.0)
    machine.on_outcome(NotSent(ADDRESS), 2.0)  # neither a failure nor a success
    assert machine.records[ADDRESS].consecutive_failures == 2
    actions = machine.on_outcome(Answered(ADDRESS, 503), 2.0)
    assert machine.records[ADDRESS].state is ProviderState.EJECTED
    assert [a for a in actions if isinstance(a, Log)], actions


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_every_5xx_counts_toward_ejection(status: int) -> None:
    machine = alive_machine(ClusterConfig(ejection_failures=3, max_ejection_percent=100))
    for _ in range(2):
        assert machine.on_outcome(Answered(ADDRESS, status), 1.0) == ()
    machine.on_outcome(Answered(ADDRESS, status), 1.0)
    assert machine.records[ADDRESS].state is ProviderState.EJECTED
    assert machine.ejections == 1


@pytest.mark.parametrize("status", [200, 204, 301, 404, 429])
def test_any_other_status_resets_the_count(status: int) -> None:
    machine = alive_machine(ClusterConfig(ejection_failures=3, max_ejection_percent=100))
    machine.on_outcome(Answered(ADDRESS, 500), 1.0)
    machine.on_outcome(RequestFailed(ADDRESS), 1.0)
    assert machine.records[ADDRESS].consecutive_failures == 2
    assert machine.on_outcome(Answered(ADDRESS, status), 1.0) == ()
    assert machine.records[ADDRESS].consecutive_failures == 0
    assert machine.records[ADDRESS].state is ProviderState.ALIVE


def test_a_request_that_failed_after_sending_counts_and_asks_for_a_probe() -> None:
    machine = alive_machine(ClusterConfig(ejection_failures=2, max_ejection_percent=100))
    assert machine.on_outcome(RequestFailed(ADDRESS), 1.0) == [Probe(ADDRESS)]
    assert machine.records[ADDRESS].state is ProviderState.ALIVE
    actions = machine.on_outcome(RequestFailed(ADDRESS), 1.0)
    assert machine.records[ADDRESS].state is ProviderState.EJECTED
    assert isinstance(actions[0], Log) and actions[-1] == Probe(ADDRESS)


def test_a_failed_connect_is_one_failed_probe_however_many_requests_saw_it() -> None:
    """Eight requests in flight when a provider dies all fail to connect: the first
    takes it out of rotation (one reconnect attempt), the others are not attempts."""
    machine = alive_machine(ClusterConfig(max_reconnect_attempts=3))
    actions = machine.on_outcome(ConnectFailed(ADDRESS), 1.0)
    assert [a.message for a in actions if isinstance(a, Log)] == [
        f"svc: provider {ADDRESS} alive -> retrying"]
    for _ in range(7):
        assert machine.on_outcome(ConnectFailed(ADDRESS), 1.0) == ()
    record = machine.records[ADDRESS]
    assert record.state is ProviderState.RETRYING and record.attempts == 1


def test_reconnects_follow_the_shared_backoff_type() -> None:
    """The delays are tether.backoff.Backoff's, built from ClusterConfig's knobs."""
    config = ClusterConfig(backoff_initial=0.5, backoff_multiplier=2.0, backoff_jitter=0.2,
                           backoff_max=3.0, max_reconnect_attempts=100)
    machine = ProviderStateMachine("svc", config, random.Random(11))
    expected = random.Random(11)
    machine.on_snapshot([Provider("svc", ADDRESS, (), "r")], 0.0)
    backoff = config.reconnect_backoff()
    now = 0.0
    for attempt in range(1, 8):
        machine.on_outcome(Probed(ADDRESS, False), now)
        delay = machine.records[ADDRESS].next_probe_at - now
        assert delay == pytest.approx(backoff.delay(attempt, expected))
        assert 0.5 * 0.8 <= delay <= 3.0 * 1.2
        now += delay
    assert backoff.base(7) == 3.0  # it climbed to the cap and stays there


def test_impossible_backoff_knobs_are_refused_with_the_config() -> None:
    with pytest.raises(ValueError, match="maximum"):
        ClusterConfig(backoff_initial=5.0, backoff_max=1.0)
    with pytest.raises(ValueError, match="jitter"):
        ClusterConfig(backoff_jitter=1.5)
    assert ClusterConfig().reconnect_backoff().base(1) == 1.0  # gRPC's defaults kept


def test_a_probe_is_about_reachability_not_about_requests() -> None:
    """The probe sent after each failed request succeeds when only requests fail (a
    stuck handler, a fine /healthz): it must not reset the run of failures, or such a
    provider is never ejected; a response below 500 does reset it."""
    machine = alive_machine(ClusterConfig(ejection_failures=3, max_ejection_percent=100))
    for _ in range(2):
        assert machine.on_outcome(RequestFailed(ADDRESS), 1.0) == [Probe(ADDRESS)]
        assert machine.on_outcome(Probed(ADDRESS, True), 1.0) == ()
    assert machine.records[ADDRESS].consecutive_failures == 2
    machine.on_outcome(RequestFailed(ADDRESS), 1.0)
    assert machine.records[ADDRESS].state is ProviderState.EJECTED


def test_an_ejected_providers_heartbeat_wakes_the_timer() -> None:
    """next_wakeup() is the earlier of the ejection's end and the heartbeat, so the
    heartbeat that may end an ejection early runs on time."""
    config = ClusterConfig(ejection_failures=1, max_ejection_percent=100,
                           heartbeat_interval=2.0, base_ejection=30.0)
    machine = alive_machine(config)
    machine.on_outcome(Answered(ADDRESS, 503), 10.0)
    assert machine.records[ADDRESS].state is ProviderState.EJECTED
    assert machine.next_wakeup() == 12.0
    assert machine.due(12.0) == [Probe(ADDRESS)]
    assert machine.on_outcome(Probed(ADDRESS, True), 12.1)  # logged: ejected -> alive
    assert machine.alive() == (ADDRESS,)
