"""One backoff schedule for everything tether retries: worker restarts, cluster
reconnects, registry re-registration, the etcd watch reconnect.

A :class:`Backoff` is a value (frozen, no clock, no state): ``delay(n)`` is the wait
before retry ``n`` of a run of consecutive failures. Callers count failures and reset
the count on success, so the schedule climbs to its cap and *stays* there (a loop
that wrapped back to the first step after the cap was a sawtooth that hammered an
unreachable registry every few seconds). Must never sleep or read a clock itself.

    delay(0) = 0                       (nothing failed yet)
    delay(n) = min(maximum, initial x multiplier^(n-1)) x (1 +/- jitter)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff, jittered as gRPC's connection backoff is.

    ``jitter`` is a fraction: 0.2 spreads each delay uniformly over +/-20 %, so that
    many clients that failed together do not retry together. Jitter is applied after
    the cap (as gRPC does), so a delay may exceed ``maximum`` by that fraction.
    """

    initial: float
    maximum: float
    multiplier: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"backoff initial delay must be positive, got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(
                f"backoff maximum ({self.maximum}) must be at least its initial delay "
                f"({self.initial})"
            )
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")

    def base(self, attempt: int) -> float:
        """The un-jittered delay before retry ``attempt`` (1 is the first retry)."""
        if attempt <= 0:
            return 0.0
        if self.multiplier == 1 or self.initial >= self.maximum:
            return min(self.initial, self.maximum)
        # Past the step that reaches the cap the answer is the cap; computing
        # multiplier ** attempt for a large count would overflow a float.
        steps_to_cap = math.log(self.maximum / self.initial, self.multiplier)
        if attempt - 1 >= steps_to_cap:
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier ** (attempt - 1))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The jittered delay before retry ``attempt``; ``rng`` makes it reproducible."""
        base = self.base(attempt)
        if base == 0.0 or self.jitter == 0.0:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1.0 + spread)
