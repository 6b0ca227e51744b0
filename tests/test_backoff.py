"""The one backoff schedule (tether.backoff) and the loops that follow it."""

from __future__ import annotations

import asyncio
import random

import pytest

from tether.backoff import Backoff
from tether.registry import lease
from tether.registry.base import Provider


def test_schedule_doubles_to_its_cap_and_stays_there() -> None:
    backoff = Backoff(initial=0.2, maximum=1.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_grpc_schedule_with_multiplier() -> None:
    backoff = Backoff(initial=1.0, maximum=120.0, multiplier=1.6)
    assert backoff.base(1) == 1.0
    assert backoff.base(2) == pytest.approx(1.6)
    assert backoff.base(3) == pytest.approx(2.56)
    assert backoff.base(12) == 120.0


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, multiplier=1.6, jitter=0.2)
    assert backoff.base(10**6) == 5.0
    assert 4.0 <= backoff.delay(10**9) <= 6.0


def test_jitter_stays_in_its_band_and_is_reproducible() -> None:
    backoff = Backoff(initial=1.0, maximum=120.0, multiplier=1.6, jitter=0.2)
    delays = [backoff.delay(3, random.Random(seed)) for seed in range(200)]
    assert all(2.56 * 0.8 <= d <= 2.56 * 1.2 for d in delays)
    assert len(set(delays)) > 100  # actually spread, not one value
    assert backoff.delay(3, random.Random(7)) == backoff.delay(3, random.Random(7))


def test_constant_schedule() -> None:
    backoff = Backoff(initial=0.5, maximum=0.5)
    assert [backoff.delay(n) for n in (1, 2, 50)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0.0, "maximum": 1.0}, "initial delay must be positive"),
        ({"initial": 2.0, "maximum": 1.0}, "maximum"),
        ({"initial": 1.0, "maximum": 2.0, "multiplier": 0.5}, "multiplier"),
        ({"initial": 1.0, "maximum": 2.0, "jitter": 1.0}, "jitter"),
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


async def test_registration_retries_climb_to_ttl_over_3_and_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 12, bug 4: while the registry is unreachable, re-registration used to go
    0.2, 0.4 ... ttl/3 and then back to 0.2 (a sawtooth against its own comment).
    The delays now climb to ttl/3 and stay there until a refresh succeeds."""
    delays: list[float] = []
    real_sleep = asyncio.sleep
    enough = asyncio.Event()

    async def recorded_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= 9:
            enough.set()
            await real_sleep(3600)
        await real_sleep(0)

    async def unreachable() -> bool:
        raise OSError("registry unreachable")

    async def recreate() -> None:
        raise AssertionError("never reached: refresh raises")

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    kept = lease.KeptRegistration(Provider("svc", "127.0.0.1:1"), 3.0, unreachable, recreate)
    kept.start()
    try:
        await asyncio.wait_for(enough.wait(), 5.0)
    finally:
        await kept.stop()
    period = 1.0
    assert 0.9 * period <= delays[0] <= period  # the first, spread refresh
    assert delays[1:] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
