"""What the supervisor remembers for the dashboard: the last minutes of traffic, one
sample a second, and the recent events (workers' lifecycle, providers' state changes).

``/status`` and ``/metrics`` are the present; an operator opening the dashboard in the
middle of an incident needs the minutes before it too, so the supervisor keeps them
rather than the page (which would start blank on every load). Everything here is
bounded: a fixed number of samples and of events, whatever the uptime.

Samples are differences of the workers' monotonic counters (summed over live and exited
workers by the supervisor, so a reload does not make them jump back); latency
percentiles come from the request-duration histogram's buckets over a sliding window,
interpolated inside a bucket as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

from tether import metrics

#: samples kept: five minutes at one a second
SAMPLES: Final = 300
#: the window latency percentiles are computed over, in samples (seconds)
LATENCY_WINDOW: Final = 10
#: events kept (worker lifecycle; provider state changes)
EVENTS: Final = 200

STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx")
QUANTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
CANCEL_REASONS: Final = ("disconnect", "deadline")

_REQUESTS: Final = {c: metrics.series("tether_http_requests_total", code=c)
                    for c in STATUS_CLASSES}
_CANCELLED: Final = {r: metrics.series("tether_requests_cancelled_total", reason=r)
                     for r in CANCEL_REASONS}
_DROPPED_PREFIX: Final = "tether_admission_dropped_total"
_BUCKET_PREFIX: Final = "tether_http_request_duration_seconds_bucket{"

Buckets = tuple[tuple[float, float], ...]  # (le, cumulative count), by le


def buckets_of(values: metrics.Values) -> Buckets:
    """The request-duration histogram's cumulative buckets in ``values``, by bound."""
    out = []
    for key, count in values.items():
        if key.startswith(_BUCKET_PREFIX):
            le = metrics.parse_series(key)[1]["le"]
            out.append((math.inf if le == "+Inf" else float(le), count))
    return tuple(sorted(out))


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (None without observations):
    linear inside the bucket it falls in; the largest finite bound if it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _minus(newer: Buckets, older: Buckets) -> Buckets:
    before = dict(older)
    return tuple((le, max(0.0, count - before.get(le, 0.0))) for le, count in newer)


class TrafficHistory:
    """One sample a second of the supervisor's summed series: rates and percentiles."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self.t: deque[float] = deque(maxlen=samples)
        self.rps: dict[str, deque[float]] = {c: deque(maxlen=samples) for c in STATUS_CLASSES}
        self.latency_ms: dict[str, deque[float | None]] = {
            name: deque(maxlen=samples) for name, _ in QUANTILES}
        self.cancelled: dict[str, deque[float]] = {
            r: deque(maxlen=samples) for r in CANCEL_REASONS}
        self.admission_dropped: deque[float] = deque(maxlen=samples)
        self._last: metrics.Values | None = None
        self._last_at = 0.0
        self._buckets: deque[Buckets] = deque(maxlen=LATENCY_WINDOW + 1)

    def sample(self, values: metrics.Values, now: float) -> None:
        """Record ``values`` (cumulative, as ``Supervisor._totals`` sums them) taken at
        wall-clock ``now``. The first call only sets the baseline."""
        last, elapsed = self._last, now - self._last_at
        buckets = buckets_of(values)
        self._buckets.append(buckets)
        self._last, self._last_at = values, now
        if last is None or elapsed <= 0:
            return

        def rate(key: str) -> float:
            return round(max(0.0, values.get(key, 0.0) - last.get(key, 0.0)) / elapsed, 3)

        self.t.append(round(now, 3))
        for cls, key in _REQUESTS.items():
            self.rps[cls].append(rate(key))
        for reason, key in _CANCELLED.items():
            self.cancelled[reason].append(rate(key))
        self.admission_dropped.append(round(sum(
            rate(key) for key in values if key.startswith(_DROPPED_PREFIX)), 3))
        window = _minus(buckets, self._buckets[0])
        for name, q in QUANTILES:
            value = quantile(q, window)
            self.latency_ms[name].append(None if value is None else round(value * 1000, 3))

    def as_json(self) -> dict[str, Any]:
        """The samples, oldest first: ``t`` (wall clock) and one list per series."""
        return {
            "t": list(self.t),
            "rps": {k: list(v) for k, v in self.rps.items()},
            "latency_ms": {k: list(v) for k, v in self.latency_ms.items()},
            "cancelled": {k: list(v) for k, v in self.cancelled.items()},
            "admission_dropped": list(self.admission_dropped),
        }


class EventLog:
    """The last ``EVENTS`` events (plain dicts with a wall-clock ``t``), newest last."""

    def __init__(self, size: int = EVENTS) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def as_json(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda e: float(e["t"]))
