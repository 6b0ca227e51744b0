"""Choosing a provider: power-of-two-choices on outstanding requests, or round robin.

Pure functions over the alive set; the caller tracks outstanding counts. Must never
pick a provider that is not alive, and never pick one the caller asked to avoid
(a retry goes to a *different* provider) while another is available.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


class Balancer:
    """``p2c`` (default): two random alive providers, the one with fewer requests in
    flight wins (Finagle's and Envoy's least-request). ``round_robin``: in turn."""

    def __init__(self, kind: str = "p2c", rng: random.Random | None = None) -> None:
        if kind not in ("p2c", "round_robin"):
            raise ValueError(f"balancer must be 'p2c' or 'round_robin', not {kind!r}")
        self.kind = kind
        self.rng = rng or random.Random()
        self._next = 0

    def pick(self, alive: Sequence[str], outstanding: Mapping[str, int],
             avoid: frozenset[str] | set[str] = frozenset()) -> str | None:
        candidates = ([a for a in alive if a not in avoid] or list(alive)) if avoid else alive
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.kind == "round_robin":
            self._next = (self._next + 1) % len(candidates)
            return candidates[self._next]
        a, b = self.rng.sample(candidates, 2)
        return a if outstanding.get(a, 0) <= outstanding.get(b, 0) else b

