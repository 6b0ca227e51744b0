"""Whether a request may be sent again: idempotent methods, retryable statuses, and
Finagle's retry budget. One set of rules for the client (a stale keep-alive
connection) and for clusters (another provider).

Pure: no I/O, no clock (times are given). Must never allow a resend that could make
a provider act twice on a request that is not idempotent.
"""

from __future__ import annotations

from typing import Final

from tether.client.providers import Answered, ConnectFailed, NotSent, Outcome

#: RFC 9110 section 9.2.2: the methods whose effect is the same sent once or twice
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: responses that mean "another provider may do better" (gateway errors, overload)
RETRYABLE_STATUS: Final = frozenset({502, 503, 504})


def may_resend(outcome: Outcome, method: str, replayable: bool) -> bool:
    """Whether a request that ended in ``outcome`` may be sent to another provider.

    Never sent (no free pool slot, or no connection): any method, as the provider saw
    nothing (a streamed body was not touched yet). Sent: only an idempotent request
    whose body can be sent again (``replayable``), and of the answers only 502, 503
    and 504; any other status is the answer.
    """
    if isinstance(outcome, NotSent | ConnectFailed):
        return True
    if isinstance(outcome, Answered) and outcome.status not in RETRYABLE_STATUS:
        return False
    return replayable and method in IDEMPOTENT


class RetryBudget:
    """Finagle's retry budget: retries may add at most ``percent`` of the requests,
    plus ``floor_per_second`` so that a quiet client can still retry."""

    def __init__(self, percent: float = 20.0, floor_per_second: float = 10.0,
                 cap: float = 100.0) -> None:
        self.ratio = percent / 100.0
        self.floor = floor_per_second
        self.cap = cap
        self.tokens = floor_per_second
        self._last: float | None = None  # no request seen yet: nothing to refill

    def on_request(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_retry(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def try_refill(self, now: float) -> None:
        """Bring ``tokens`` up to ``now`` (to show them; spends nothing)."""
        self._refill(now)

    def _refill(self, now: float) -> None:
        if self._last is not None:
            self.tokens = min(self.cap, self.tokens + self.floor * max(0.0, now - self._last))
        self._last = now
