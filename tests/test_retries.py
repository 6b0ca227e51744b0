"""What may be sent again (``tether.client.retries``), without sockets: the resend rule
for each typed outcome, one idempotent set for the client and its clusters, and
Finagle's retry budget on a fake clock."""

from __future__ import annotations

import pytest

from tether.client import client as client_module
from tether.client.providers import Answered, ConnectFailed, NotSent, Outcome, RequestFailed
from tether.client.retries import IDEMPOTENT, RETRYABLE_STATUS, RetryBudget, may_resend

A = "10.0.0.1:80"
METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH"]


def test_the_idempotent_methods_are_rfc_9110s_and_the_clients_too() -> None:
    assert frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}) == IDEMPOTENT
    # one set, one place: the client's stale-connection retry reads this very set
    assert vars(client_module)["IDEMPOTENT"] is IDEMPOTENT
    assert frozenset({502, 503, 504}) == RETRYABLE_STATUS


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("replayable", [True, False])
def test_never_sent_goes_anywhere(method: str, replayable: bool) -> None:
    """The provider saw nothing: whatever the method, and even a streamed body."""
    assert may_resend(NotSent(A), method, replayable)
    assert may_resend(ConnectFailed(A), method, replayable)


@pytest.mark.parametrize("method", METHODS)
def test_sent_only_when_idempotent_and_replayable(method: str) -> None:
    outcomes: list[Outcome] = [RequestFailed(A), Answered(A, 502), Answered(A, 503),
                               Answered(A, 504)]
    for outcome in outcomes:
        assert may_resend(outcome, method, True) is (method in IDEMPOTENT)
        assert not may_resend(outcome, method, False)  # a consumed stream: never


@pytest.mark.parametrize("status", [200, 404, 429, 500, 501, 505])
def test_any_other_answer_is_the_answer(status: int) -> None:
    assert not may_resend(Answered(A, status), "GET", True)


def test_the_budget_allows_its_floor_then_a_share_of_the_requests() -> None:
    budget = RetryBudget(percent=20.0, floor_per_second=10.0)
    now = 0.0  # a clock may start at zero
    budget.on_request(now)
    allowed = sum(budget.try_retry(now) for _ in range(50))
    assert allowed == 10  # the floor (10) plus 0.2 of a token: not 11
    for _ in range(5):  # five more requests: one more token
        budget.on_request(now)
    assert budget.try_retry(now)
    assert not budget.try_retry(now)


def test_the_budget_refills_with_time_up_to_its_cap() -> None:
    budget = RetryBudget(percent=20.0, floor_per_second=10.0, cap=100.0)
    budget.on_request(0.0)
    while budget.try_retry(0.0):
        pass
    assert not budget.try_retry(0.05)  # half a token
    assert budget.try_retry(0.2)  # 10 tokens a second
    budget.on_request(3600.0)  # an hour later: full, not 36,000 tokens
    assert budget.tokens == 100.0
    assert sum(budget.try_retry(3600.0) for _ in range(200)) == 100


def test_under_sustained_failure_retries_add_about_the_percentage() -> None:
    """1,000 requests a second, every one failing and wanting a retry: over 10 s the
    retries stay near 20 % of the requests plus the floor, never x max_attempts."""
    budget = RetryBudget(percent=20.0, floor_per_second=10.0)
    retries = 0
    for i in range(10_000):
        now = 100.0 + i / 1000
        budget.on_request(now)
        retries += budget.try_retry(now)
    assert 0.2 * 10_000 <= retries <= 0.2 * 10_000 + 10 * 10 + 10 + 1
