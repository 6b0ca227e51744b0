"""The provider state machine (pure core), driven by hypothesis with a fake clock:
random interleavings of snapshots, probe results, request outcomes and time."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tether.client.cluster import (
    Close,
    ClusterConfig,
    ClusterCore,
    Log,
    Probe,
    ProviderState,
)
from tether.registry.base import Provider

ADDRESSES = [f"127.0.0.1:{8000 + i}" for i in range(5)]
CONFIG = ClusterConfig(max_reconnect_attempts=4, max_retry_duration=1000.0,
                       ejection_failures=3, heartbeat_interval=5.0)


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ClusterCore("svc", CONFIG, random.Random(7))
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
        actions = self.core.on_probe(address, ok, self.now)
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

    @rule(index=st.integers(0, 4), ok=st.booleans())
    def request_result(self, index: int, ok: bool) -> None:
        before = {a: r.state for a, r in self.core.records.items()}
        actions = self.core.on_request(ADDRESSES[index], ok, self.now)
        self._check_logs(before, actions)

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
    def alive_means_alive(self) -> None:
        for address in self.core.alive():
            assert self.core.records[address].state is ProviderState.ALIVE


TestClusterMachine = ClusterMachine.TestCase
TestClusterMachine.settings = settings(max_examples=150, stateful_step_count=60,
                                       deadline=None)


def test_dead_provider_is_evicted_and_logged_a_bounded_number_of_times() -> None:
    core = ClusterCore("svc", ClusterConfig(max_reconnect_attempts=10), random.Random(1))
    logs: list[str] = []
    provider = Provider("svc", "127.0.0.1:9", (), "r1")
    now = 0.0
    actions = core.on_snapshot([provider], now)
    for _ in range(1000):  # a dead provider probed for a long simulated time
        for action in actions:
            if isinstance(action, Log):
                logs.append(action.message)
            if isinstance(action, Probe):
                actions = core.on_probe(action.address, False, now)
                break
        else:
            now = core.next_wakeup() or now + 1
            actions = core.due(now)
    assert core.records["127.0.0.1:9"].state is ProviderState.EVICTED
    assert len(logs) < 20, logs


def test_same_address_new_registration_reconnects_promptly() -> None:
    core = ClusterCore("svc", ClusterConfig(max_reconnect_attempts=2), random.Random(1))
    old = Provider("svc", "127.0.0.1:9", (), "old")
    core.on_snapshot([old], 0.0)
    core.on_probe(old.address, False, 0.0)
    core.on_probe(old.address, False, 2.0)
    assert core.records[old.address].state is ProviderState.EVICTED
    new = Provider("svc", "127.0.0.1:9", (), "new")
    actions = core.on_snapshot([new], 3.0)
    assert Probe(old.address) in actions and Close(old.address) in actions
    assert core.records[old.address].state is ProviderState.CONNECTING
    core.on_probe(old.address, True, 3.1)
    assert core.alive() == [old.address]


def test_empty_snapshot_policies() -> None:
    provider = Provider("svc", "127.0.0.1:9", (), "r")
    keep = ClusterCore("svc", ClusterConfig(empty="keep"))
    keep.on_snapshot([provider], 0.0)
    assert not any(isinstance(a, Close) for a in keep.on_snapshot([], 1.0))
    assert provider.address in keep.records
    clear = ClusterCore("svc", ClusterConfig(empty="clear"))
    clear.on_snapshot([provider], 0.0)
    assert Close(provider.address) in clear.on_snapshot([], 1.0)
    assert not clear.records


def test_ejection_respects_the_percentage_and_heals() -> None:
    core = ClusterCore("svc", ClusterConfig(ejection_failures=2, max_ejection_percent=50))
    providers = [Provider("svc", f"127.0.0.1:{9000 + i}", (), "r") for i in range(2)]
    core.on_snapshot(providers, 0.0)
    for p in providers:
        core.on_probe(p.address, True, 0.0)
    for p in providers:
        for _ in range(2):
            core.on_request(p.address, False, 1.0)
    states = sorted(r.state.value for r in core.records.values())
    assert states == ["alive", "ejected"]  # never more than 50 %
    ejected = next(a for a, r in core.records.items() if r.state is ProviderState.EJECTED)
    core.on_probe(ejected, True, 2.0)  # a successful heartbeat brings it back early
    assert core.records[ejected].state is ProviderState.ALIVE
