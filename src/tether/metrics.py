"""Prometheus metrics, aggregated across worker processes and across their restarts.

Rules, in one place:

1. A *series* is a string ``name{label="value",...}``, exactly as it appears in the
   Prometheus text format. Each process keeps its own series and values.
2. Counters and histogram parts (``_bucket`` with a cumulative ``le``, ``_sum``,
   ``_count``) are monotonic, so the total of a series is the plain sum of the
   values every process reported. A worker reports its whole set in each heartbeat
   and a last time when it stops; the supervisor keeps the last set of every
   worker, and folds the set of an exited worker into ``retired``. Counts therefore
   survive reloads, recycling and respawns. A worker killed with SIGKILL loses what
   it counted since its last heartbeat (at most one heartbeat interval, one second).
3. Gauges describe *now*: only live workers' gauges are summed; an exited worker's
   gauges are dropped.
4. Every family is declared in :data:`FAMILIES` (type and help). Rendering a series
   whose family is not declared is a bug, caught by the tests.

This is the same arithmetic as ``prometheus_client``'s multiprocess mode (counters
"all", gauges "livesum"), carried over the supervisor's control channel instead
of mmap files, so there is no directory to clean up and nothing to configure.
"""

from __future__ import annotations

import bisect
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

Values = dict[str, float]

#: name -> (type, help). Histograms are declared by their base name.
FAMILIES: Final[dict[str, tuple[str, str]]] = {
    # server (workers)
    "tether_http_requests_total": (
        "counter", "HTTP responses by status class (499: the client left)."),
    "tether_http_request_duration_seconds": (
        "histogram", "Time from request head to last response byte."),
    "tether_http_requests_in_flight": ("gauge", "Requests being handled now."),
    "tether_http_connections": ("gauge", "Open client connections."),
    "tether_requests_cancelled_total": ("counter", "Handlers cancelled by tether, by reason."),
    "tether_requests_deadline_exceeded_total": (
        "counter", "Handlers that let DeadlineExceeded escape (answered 504)."),
    "tether_requests_unavailable_total": (
        "counter", "Handlers that raised Overloaded or NoProviderAvailable (answered 503)."),
    "tether_admission_dropped_total": (
        "counter", "Requests refused by the admission queue: expired (504) or shed (503)."),
    "tether_websocket_sessions": ("gauge", "Open WebSocket sessions (accepted, not closed)."),
    "tether_websocket_messages_total": ("counter", "WebSocket messages, by direction."),
    "tether_websocket_closes_total": (
        "counter", "WebSocket sessions ended, by close code (1006: the client vanished)."),
    "tether_http2_connections": ("gauge", "Open HTTP/2 connections."),
    "tether_http2_streams_open": ("gauge", "HTTP/2 streams open now."),
    "tether_http2_connections_opened_total": ("counter", "HTTP/2 connections begun."),
    "tether_http2_streams_total": (
        "counter", "HTTP/2 streams opened by clients, by protocol (http, grpc)."),
    "tether_http2_resets_received_total": (
        "counter", "RST_STREAM frames received (each cancels its stream's handler)."),
    "tether_http2_goaways_sent_total": ("counter", "GOAWAY frames sent."),
    "tether_http2_malformed_requests_total": (
        "counter", "HTTP/2 requests reset as malformed (RFC 9113 8.1.1)."),
    "tether_http2_refused_streams_total": (
        "counter", "Streams refused with REFUSED_STREAM after the last GOAWAY."),
    "tether_http2_connections_ended_total": (
        "counter", "HTTP/2 connections ended for what the client did, by reason "
        "(flood, protocol_error, window_timeout)."),
    "tether_fd_limit_reached_total": (
        "counter", "Once-a-second checks that found a worker at its file-descriptor limit "
        "(new connections refused)."),
    # supervisor
    "tether_worker_starts_total": ("counter", "Worker processes started."),
    "tether_worker_exits_total": (
        "counter", "Worker processes exited, by kind (expected, crashed, start_failed)."),
    "tether_reloads_total": ("counter", "Rolling reloads completed."),
    "tether_worker_stops_total": (
        "counter", "Worker graceful stops, by outcome (drained or forced)."),
    "tether_stop_requests_total": (
        "counter", "Requests in flight at a worker stop, by outcome (drained or cancelled)."),
    "tether_workers": ("gauge", "Worker processes alive now, by state."),
    # client, per origin
    "tether_client_requests_total": ("counter", "Outgoing requests, by origin."),
    "tether_client_connections_opened_total": (
        "counter", "Outgoing connections opened, by origin."),
    "tether_client_connection_reuse_ratio": (
        "gauge", "Share of outgoing requests sent on a reused connection, by origin."),
    "tether_client_connections": (
        "gauge", "Outgoing connections held now, by origin and state (idle, active)."),
    # clusters
    "tether_cluster_providers": (
        "gauge", "Providers by cluster and state (the largest count any live worker reports)."),
    "tether_cluster_ejections_total": ("counter", "Providers ejected for failing requests."),
    "tether_cluster_evictions_total": (
        "counter", "Providers evicted after failing probes too long."),
    "tether_cluster_requests_total": ("counter", "Requests sent through a cluster."),
    "tether_cluster_retries_total": ("counter", "Requests retried on another provider."),
    "tether_cluster_no_provider_total": (
        "counter", "Requests refused because no provider was alive."),
    "tether_registry_watch_errors_total": (
        "counter", "Times a registry watch found the registry unreachable."),
    # database
    "tether_db_queries_total": ("counter", "Database queries run through tether.db."),
    "tether_db_queries_cancelled_total": (
        "counter", "Database queries cancelled (deadline or disconnect)."),
    "tether_db_connections_opened_total": ("counter", "Database connections opened."),
    "tether_db_acquire_refused_total": (
        "counter", "Database pool acquisitions refused, by reason."),
}

#: Gauges whose workers each see the same thing (every worker tracks every provider):
#: summed they would count each provider once per worker, so the supervisor takes
#: the largest report instead.
MAX_GAUGES: Final = frozenset({"tether_cluster_providers"})

#: The plain counters of :class:`~tether.server.state.ServerState` and
#: :mod:`tether.db` (also shown by name in ``/status``) and the series they export as.
COUNTER_SERIES: Final[dict[str, str]] = {
    "cancelled_disconnect": 'tether_requests_cancelled_total{reason="disconnect"}',
    "cancelled_deadline": 'tether_requests_cancelled_total{reason="deadline"}',
    "deadline_exceeded": "tether_requests_deadline_exceeded_total",
    "overloaded": 'tether_requests_unavailable_total{reason="overloaded"}',
    "unavailable": 'tether_requests_unavailable_total{reason="no_provider"}',
    "queue_expired": 'tether_admission_dropped_total{reason="expired"}',
    "queue_shed": 'tether_admission_dropped_total{reason="shed"}',
    "fd_limit_reached": "tether_fd_limit_reached_total",
    "h2_connections": "tether_http2_connections_opened_total",
    "h2_streams": 'tether_http2_streams_total{protocol="http"}',
    "h2_grpc_streams": 'tether_http2_streams_total{protocol="grpc"}',
    "h2_resets_received": "tether_http2_resets_received_total",
    "h2_goaways_sent": "tether_http2_goaways_sent_total",
    "h2_malformed": "tether_http2_malformed_requests_total",
    "h2_refused_streams": "tether_http2_refused_streams_total",
    "h2_floods": 'tether_http2_connections_ended_total{reason="flood"}',
    "h2_protocol_errors": 'tether_http2_connections_ended_total{reason="protocol_error"}',
    "h2_window_timeouts": 'tether_http2_connections_ended_total{reason="window_timeout"}',
    "db_queries": "tether_db_queries_total",
    "db_queries_cancelled": "tether_db_queries_cancelled_total",
    "db_connections_opened": "tether_db_connections_opened_total",
    "db_deadline_refused": 'tether_db_acquire_refused_total{reason="deadline"}',
    "db_acquire_timeouts": 'tether_db_acquire_refused_total{reason="timeout"}',
    "db_acquire_shed": 'tether_db_acquire_refused_total{reason="shed"}',
}

#: Request duration buckets (seconds): sub-millisecond to the default graceful timeout.
DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series(name: str, **labels: str) -> str:
    """The series string of ``name`` with ``labels`` (in the order given)."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def _with_label(key: str, label: str) -> str:
    """Add ``label`` (already rendered, ``le="0.5"``) to a series string."""
    if key.endswith("}"):
        return f"{key[:-1]},{label}}}"
    return f"{key}{{{label}}}"


class Histogram:
    """A fixed-bucket histogram for one hot path: observing is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "name", "total")

    def __init__(self, name: str, bounds: Iterable[float] = DURATION_BUCKETS) -> None:
        self.name = name
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def values(self) -> Values:
        """Cumulative ``_bucket`` series, ``_sum`` and ``_count``."""
        out: Values = {}
        running = 0
        base = f"{self.name}_bucket"
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out[_with_label(base, f'le="{bound}"')] = running
        running += self.counts[-1]
        out[_with_label(base, 'le="+Inf"')] = running
        out[f"{self.name}_sum"] = self.total
        out[f"{self.name}_count"] = running
        return out


class HttpMetrics:
    """Responses by status class and their duration, for one worker."""

    __slots__ = ("by_class", "duration")

    def __init__(self) -> None:
        self.by_class = [0] * 6  # index = status // 100 (1xx..5xx); 499 counts as 4xx
        self.duration = Histogram("tether_http_request_duration_seconds")

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100
        self.by_class[cls if 0 <= cls <= 5 else (0 if cls < 0 else 5)] += 1
        self.duration.observe(seconds)

    def values(self) -> Values:
        out = self.duration.values()
        for cls in range(1, 6):
            if self.by_class[cls]:
                out[series("tether_http_requests_total", code=f"{cls}xx")] = self.by_class[cls]
        return out


#: reads an object's gauges; called with the object (a plain function, never a bound
#: method: that would keep the object alive through the weak registry's value)
GaugeSource = Callable[[Any], Values]
#: an object's part of ``/status``: lists under keys such as "clusters", "pools"
StatusSource = Callable[[Any], dict[str, list[dict[str, Any]]]]


class ProcessMetrics:
    """The counters a process adds to as things happen, and the gauges it reads when
    asked. Libraries (the client pool, clusters) write here; the worker ships it."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self._sources: weakref.WeakKeyDictionary[object, GaugeSource] = (
            weakref.WeakKeyDictionary()
        )
        self._status: weakref.WeakKeyDictionary[object, StatusSource] = (
            weakref.WeakKeyDictionary()
        )

    def inc(self, key: str, amount: int = 1) -> None:
        self.counters[key] += amount

    def add_gauges(self, owner: object, source: GaugeSource) -> None:
        """Read ``source(owner)`` at each snapshot for as long as ``owner`` is alive."""
        self._sources[owner] = source

    def gauges(self) -> Values:
        out: Counter[str] = Counter()
        for owner, source in list(self._sources.items()):
            out.update(source(owner))
        return dict(out)

    def add_status(self, owner: object, source: StatusSource) -> None:
        """Add ``source(owner)``'s lists to this process's ``/status`` while ``owner``
        lives."""
        self._status[owner] = source

    def status(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for owner, source in list(self._status.items()):
            for key, items in source(owner).items():
                out.setdefault(key, []).extend(items)
        return out


#: This process's metrics (each worker has its own; the supervisor sums them).
PROCESS: Final = ProcessMetrics()


def counter_values(plain: Mapping[str, int]) -> Values:
    """Map the plain ``/status`` counters onto their series (unknown names are skipped)."""
    out: Counter[str] = Counter()
    for name, value in plain.items():
        key = COUNTER_SERIES.get(name)
        if key is not None and value:
            out[key] += value
    return dict(out)


def plain_counters(values: Mapping[str, float]) -> dict[str, int]:
    """The reverse of :func:`counter_values`: the plain names ``/status`` shows."""
    return {name: int(values[key]) for name, key in COUNTER_SERIES.items()
            if values.get(key)}


def family_of(key: str) -> str:
    """The declared family a series belongs to."""
    name = key.split("{", 1)[0]
    if name in FAMILIES:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in FAMILIES:
            return name[: -len(suffix)]
    raise KeyError(f"undeclared metric family for series {key!r}")


def reuse_ratios(counters: Mapping[str, float]) -> Values:
    """``tether_client_connection_reuse_ratio`` per origin, from the summed counters:
    a ratio of sums, never a sum (or mean) of per-worker ratios."""
    out: Values = {}
    prefix = "tether_client_requests_total{"
    for key, sent in counters.items():
        if not key.startswith(prefix) or not sent:
            continue
        labels = key[len("tether_client_requests_total"):]
        opened = counters.get(f"tether_client_connections_opened_total{labels}", 0.0)
        out[f"tether_client_connection_reuse_ratio{labels}"] = max(0.0, 1.0 - opened / sent)
    return out


def parse_series(key: str) -> tuple[str, dict[str, str]]:
    """The name and labels of a series string made by :func:`series`."""
    name, _, rest = key.partition("{")
    labels: dict[str, str] = {}
    rest = rest[:-1] if rest.endswith("}") else rest
    while rest:
        label, _, rest = rest.partition('="')
        value: list[str] = []
        i = 0
        while i < len(rest) and rest[i] != '"':
            if rest[i] == "\\" and i + 1 < len(rest):
                i += 1
                value.append({"n": "\n"}.get(rest[i], rest[i]))
            else:
                value.append(rest[i])
            i += 1
        labels[label] = "".join(value)
        rest = rest[i + 1:].lstrip(",")
    return name, labels


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(values: Mapping[str, float]) -> bytes:
    """The Prometheus text exposition (version 0.0.4) of ``values``, grouped by family."""
    grouped: dict[str, list[str]] = {}
    for key in sorted(values):
        grouped.setdefault(family_of(key), []).append(key)
    lines: list[str] = []
    for family in sorted(grouped):
        kind, help_text = FAMILIES[family]
        lines.append(f"# HELP {family} {help_text}")
        lines.append(f"# TYPE {family} {kind}")
        keys = grouped[family]
        if kind == "histogram":
            keys = _histogram_order(keys)
        lines.extend(f"{key} {_number(values[key])}" for key in keys)
    return ("\n".join(lines) + "\n").encode()


def _histogram_order(keys: list[str]) -> list[str]:
    # Buckets in increasing ``le`` order, then _sum and _count (the parser does not
    # require it, but people read this).
    def le(key: str) -> float:
        value = key.rsplit('le="', 1)[1].split('"', 1)[0]
        return float("inf") if value == "+Inf" else float(value)

    buckets = sorted((k for k in keys if "_bucket" in k.split("{", 1)[0]), key=le)
    rest = sorted(k for k in keys if "_bucket" not in k.split("{", 1)[0])
    return buckets + rest


class Aggregate:
    """The supervisor's view: each live worker's last report, plus the retired sum."""

    def __init__(self) -> None:
        self.retired: Counter[str] = Counter()

    def retire(self, counters: Mapping[str, float]) -> None:
        """Keep an exited worker's counters for good (rule 2)."""
        self.retired.update(counters)

    def total(
        self,
        live_counters: Iterable[Mapping[str, float]],
        live_gauges: Iterable[Mapping[str, float]],
        own: Mapping[str, float],
    ) -> Values:
        counters: Counter[str] = Counter(self.retired)
        for values in live_counters:
            counters.update(values)
        counters.update(own)
        gauges: Values = {}
        for values in live_gauges:
            for key, value in values.items():
                if family_of(key) in MAX_GAUGES:
                    gauges[key] = max(gauges.get(key, 0.0), value)
                else:
                    gauges[key] = gauges.get(key, 0.0) + value
        out: Values = dict(counters)
        out.update(reuse_ratios(counters))
        out.update(gauges)
        return out
