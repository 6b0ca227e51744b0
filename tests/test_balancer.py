"""Choosing a provider (``tether.client.balancer``), without sockets: only alive
providers, the less loaded of two (p2c), in turn (round robin), and a retry never
back to a provider this request already tried while another remains."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tether.client.balancer import Balancer

ALIVE = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]


def test_nobody_alive_is_none() -> None:
    for kind in ("p2c", "round_robin"):
        assert Balancer(kind).pick([], {}, set()) is None
        assert Balancer(kind).pick([], {}, {"10.0.0.1:80"}) is None


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="p2c"):
        Balancer("least_loaded")


@pytest.mark.parametrize("kind", ["p2c", "round_robin"])
def test_only_the_alive_set_is_ever_chosen(kind: str) -> None:
    balancer = Balancer(kind, random.Random(1))
    alive = ALIVE[:3]
    picks = {balancer.pick(alive, {}, set()) for _ in range(300)}
    assert picks == set(alive)


@pytest.mark.parametrize("kind", ["p2c", "round_robin"])
def test_a_retry_avoids_the_providers_already_tried(kind: str) -> None:
    balancer = Balancer(kind, random.Random(2))
    for _ in range(200):
        assert balancer.pick(ALIVE, {}, {"10.0.0.1:80", "10.0.0.2:80"}) in ALIVE[2:]
        assert balancer.pick(ALIVE, {}, set(ALIVE[1:])) == ALIVE[0]
    # every alive one already tried: the request may still go to one of them
    assert balancer.pick(ALIVE[:2], {}, set(ALIVE[:2])) in ALIVE[:2]


def test_p2c_sends_to_the_less_loaded_of_two() -> None:
    balancer = Balancer("p2c", random.Random(3))
    outstanding = Counter({"10.0.0.1:80": 9, "10.0.0.2:80": 0})
    assert {balancer.pick(ALIVE[:2], outstanding) for _ in range(100)} == {"10.0.0.2:80"}
    # with many, the most loaded is never picked (it always loses its duel)
    outstanding = Counter({a: i for i, a in enumerate(ALIVE)})
    picks = Counter(balancer.pick(ALIVE, outstanding) for _ in range(2000))
    assert picks[ALIVE[-1]] == 0
    assert picks[ALIVE[0]] > picks[ALIVE[1]] > picks[ALIVE[2]] > 0


def test_p2c_spreads_equal_load_evenly() -> None:
    balancer = Balancer("p2c", random.Random(4))
    picks = Counter(balancer.pick(ALIVE, {}) for _ in range(4000))
    assert set(picks) == set(ALIVE)
    assert max(picks.values()) - min(picks.values()) < 300, picks


def test_round_robin_takes_turns() -> None:
    balancer = Balancer("round_robin")
    picks = [balancer.pick(ALIVE, {}) for _ in range(8)]
    assert set(picks[:4]) == set(ALIVE) and picks[4:] == picks[:4]
