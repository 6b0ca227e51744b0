"""The supervisor's memory for the dashboard (``tether.server.history``), as pure code:
rates from cumulative counters, latency percentiles from histogram buckets over a
sliding window, bounded event logs; and clusters merged over workers."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tether import metrics
from tether.server.history import (
    LATENCY_WINDOW,
    EventLog,
    TrafficHistory,
    buckets_of,
    quantile,
)
from tether.server.supervisor import merged_clusters

BUCKET = "tether_http_request_duration_seconds_bucket"


def values(ok: float = 0, errors: float = 0, buckets: Mapping[str, float] | None = None,
           disconnects: float = 0, shed: float = 0) -> metrics.Values:
    out = {
        metrics.series("tether_http_requests_total", code="2xx"): ok,
        metrics.series("tether_http_requests_total", code="5xx"): errors,
        metrics.series("tether_requests_cancelled_total", reason="disconnect"): disconnects,
        metrics.series("tether_admission_dropped_total", reason="shed"): shed,
        metrics.series("tether_admission_dropped_total", reason="expired"): shed,
    }
    for le, count in (buckets or {}).items():
        out[metrics.series(BUCKET, le=le)] = count
    return out


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    buckets = ((0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.25, buckets) == pytest.approx(0.005)
    assert quantile(0.5, ((0.01, 0.0), (float("inf"), 0.0))) is None
    # in +Inf: the largest finite bound, never infinity
    assert quantile(0.99, ((0.01, 1.0), (float("inf"), 10.0))) == pytest.approx(0.01)


def test_buckets_are_read_from_series_in_bound_order() -> None:
    got = buckets_of(values(buckets={"+Inf": 3, "0.1": 2, "0.005": 1}))
    assert got == ((0.005, 1.0), (0.1, 2.0), (float("inf"), 3.0))


def test_samples_are_per_second_rates_from_cumulative_counters() -> None:
    history = TrafficHistory()
    history.sample(values(ok=100), 1000.0)  # the baseline: no sample yet
    assert history.as_json()["t"] == []
    history.sample(values(ok=150, errors=4, disconnects=2, shed=1), 1002.0)
    data = history.as_json()
    assert data["t"] == [1002.0]
    assert data["rps"]["2xx"] == [25.0] and data["rps"]["5xx"] == [2.0]
    assert data["rps"]["4xx"] == [0.0]
    assert data["cancelled"]["disconnect"] == [1.0]
    assert data["admission_dropped"] == [1.0]  # shed and expired together
    # a counter that went back (cannot happen; never a negative rate)
    history.sample(values(ok=10), 1003.0)
    assert history.as_json()["rps"]["2xx"][-1] == 0.0


def test_latency_percentiles_cover_the_last_window_only() -> None:
    history = TrafficHistory()
    slow = {"0.01": 0, "1.0": 100, "+Inf": 100}  # 100 requests between 10 ms and 1 s
    history.sample(values(buckets={"0.01": 0, "1.0": 0, "+Inf": 0}), 0.0)
    history.sample(values(buckets=slow), 1.0)
    assert history.as_json()["latency_ms"]["p50"] == [505.0]
    fast = {"0.01": 1000, "1.0": 1100, "+Inf": 1100}  # then 1000 requests under 10 ms
    for second in range(2, 3 + LATENCY_WINDOW):
        history.sample(values(buckets=fast), float(second))
    p50 = history.as_json()["latency_ms"]["p50"]
    assert p50[1] is not None and p50[1] < 10.0  # the fast ones dominate the window
    assert p50[-1] is None  # nothing at all in the last window: no percentile


def test_history_is_bounded() -> None:
    history = TrafficHistory(samples=5)
    for second in range(20):
        history.sample(values(ok=second), float(second))
    data = history.as_json()
    assert data["t"] == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert all(len(series) == 5 for series in data["rps"].values())


def test_event_log_is_bounded_and_in_time_order() -> None:
    log = EventLog(size=3)
    for t in (5.0, 1.0, 3.0, 4.0):
        log.add({"t": t})
    assert [e["t"] for e in log.as_json()] == [1.0, 3.0, 4.0]


def test_merged_clusters_keep_the_worst_view_of_each_provider() -> None:
    def worker(state: str, failures: int, probe: float | None, budget: float) -> list[
            dict[str, object]]:
        return [{"service": "orders", "requests": 3, "retries": 1, "ejections": 0,
                 "evictions": 0, "retry_budget": budget,
                 "providers": [{"address": "127.0.0.1:1", "state": state,
                                "failures": failures, "next_probe_in": probe}]}]

    (cluster,) = merged_clusters([worker("alive", 0, None, 9.5),
                                  worker("retrying", 2, 0.7, 4.0)])
    assert cluster["requests"] == 6 and cluster["retries"] == 2
    assert cluster["retry_budget"] == 4.0
    assert cluster["providers"] == [{"address": "127.0.0.1:1",
                                     "states": {"alive": 1, "retrying": 1},
                                     "failures": 2, "next_probe_in": 0.7}]
