"""Prometheus ``/metrics``: the exposition parses with the reference parser, and the
numbers are what the test did, summed over workers and kept across a reload."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import APPS, ServerProcess, server_process
from tether import metrics

# -- the pure core --------------------------------------------------------------------------


def test_series_round_trip_with_escapes() -> None:
    key = metrics.series("tether_client_requests_total", origin='http://a"b\\c\nd:1')
    assert metrics.parse_series(key) == (
        "tether_client_requests_total", {"origin": 'http://a"b\\c\nd:1'})


def test_histogram_is_cumulative() -> None:
    h = metrics.Histogram("tether_http_request_duration_seconds", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    values = h.values()
    assert values['tether_http_request_duration_seconds_bucket{le="0.1"}'] == 2
    assert values['tether_http_request_duration_seconds_bucket{le="1.0"}'] == 3
    assert values['tether_http_request_duration_seconds_bucket{le="+Inf"}'] == 4
    assert values["tether_http_request_duration_seconds_count"] == 4
    assert values["tether_http_request_duration_seconds_sum"] == pytest.approx(3.65)


def test_every_family_renders_and_parses() -> None:
    values: dict[str, float] = {}
    for name, (kind, _) in metrics.FAMILIES.items():
        if kind == "histogram":
            h = metrics.Histogram(name)
            h.observe(0.003)
            values.update(h.values())
        else:
            values[metrics.series(name, origin="http://127.0.0.1:1")] = 2
    text = metrics.render(values).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, _) in metrics.FAMILIES.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert parsed[base].type == kind, name


def test_undeclared_series_is_refused() -> None:
    with pytest.raises(KeyError):
        metrics.render({"tether_something_new_total": 1})


def test_aggregate_keeps_retired_counters_and_drops_their_gauges() -> None:
    agg = metrics.Aggregate()
    live = {"tether_worker_starts_total": 1.0}
    agg.retire({"tether_worker_starts_total": 2, "tether_client_requests_total": 0})
    total = agg.total([live], [{"tether_http_requests_in_flight": 3}], {})
    assert total["tether_worker_starts_total"] == 3
    assert total["tether_http_requests_in_flight"] == 3
    ratio = agg.total(
        [{'tether_client_requests_total{origin="o"}': 100,
          'tether_client_connections_opened_total{origin="o"}': 4}], [], {})
    assert ratio['tether_client_connection_reuse_ratio{origin="o"}'] == pytest.approx(0.96)


def test_provider_gauges_take_the_largest_worker_report() -> None:
    key = metrics.series("tether_cluster_providers", cluster="orders", state="alive")
    total = metrics.Aggregate().total([], [{key: 2}, {key: 2}], {})
    assert total[key] == 2  # two workers each tracking the same two providers


# -- a real supervisor with two workers -------------------------------------------------------


def _admin(server: ServerProcess) -> str:
    line = server.wait_for_line("admin listening on http://")
    return line.rsplit(" ", 1)[1].strip()


def _scrape(admin: str) -> dict[str, float]:
    text = httpx.get(f"{admin}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[metrics.series(sample.name, **sample.labels)] = sample.value
    return out


def _status(admin: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(httpx.get(f"{admin}/status", timeout=5).text)
    return body


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(predicate)
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_counts_match_what_happened_and_survive_a_reload(tmp_path: Path) -> None:
    disconnects, ok = 37, 25
    with server_process(
        "lifecycle_app:app", "--workers", "2", "--admin-port", "0", "--no-access-log",
        "--worker-timeout", "0.4", cwd=APPS, env={"LIFECYCLE_MARKS": str(tmp_path)},
    ) as server:
        admin = _admin(server)
        async with httpx.AsyncClient() as client:
            for _ in range(ok):
                assert (await client.get(f"{server.url}/")).status_code == 200

        # 37 clients ask for a handler that never answers, then leave.
        socks = []
        for _ in range(disconnects):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
            socks.append(sock)
        await _until(lambda: sum(w["in_flight"] for w in _status(admin)["workers"])
                     == disconnects, 10, "all 37 requests in flight")
        for sock in socks:
            sock.close()
        cancelled = 'tether_requests_cancelled_total{reason="disconnect"}'
        await _until(lambda: _scrape(admin).get(cancelled) == disconnects, 10,
                     "37 cancellations counted")

        before = _scrape(admin)
        assert before['tether_http_requests_total{code="2xx"}'] == ok
        assert before['tether_http_requests_total{code="4xx"}'] == disconnects  # 499s
        assert before["tether_http_request_duration_seconds_count"] == ok + disconnects
        assert before["tether_worker_starts_total"] == 2
        assert before['tether_workers{state="ready"}'] == 2

        # A rolling reload replaces both workers: what they counted stays.
        server.proc.send_signal(signal.SIGHUP)
        await _until(lambda: _status(admin)["reloads"] == 1, 20, "the reload")
        await _until(lambda: len(_status(admin)["workers"]) == 2, 20, "old workers gone")
        after = _scrape(admin)
        assert after[cancelled] == disconnects
        assert after['tether_http_requests_total{code="2xx"}'] == ok
        assert after["tether_reloads_total"] == 1
        assert after["tether_worker_starts_total"] == 4
        assert after['tether_worker_exits_total{kind="expected"}'] == 2
        assert after['tether_worker_stops_total{outcome="drained"}'] == 2
        assert after["tether_http_requests_in_flight"] == 0
        assert server.stop() == 0


# -- what a client and its clusters count, in this process --------------------------------------


def test_plain_counters_map_onto_their_series() -> None:
    values = metrics.counter_values({"db_queries_cancelled": 3, "db_connections_opened": 2,
                                     "queue_shed": 1, "something_else": 9})
    assert values == {
        "tether_db_queries_cancelled_total": 3,
        "tether_db_connections_opened_total": 2,
        'tether_admission_dropped_total{reason="shed"}': 1,
    }


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_client_and_cluster_series_count_what_happened() -> None:
    import tether
    from tests.support import free_port, serve

    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every connect is refused
    async with serve(_ok) as server, tether.Client() as client:
        alive = f"127.0.0.1:{server.port}"
        cluster = client.service("metrics-test", providers=[alive, dead], health_path=None,
                                 balancer="round_robin")
        await cluster.wait_ready()
        counters_before = dict(metrics.PROCESS.counters)
        for _ in range(20):
            assert (await cluster.get("/")).status_code == 200
        counted = metrics.PROCESS.counters

        def delta(key: str) -> float:
            return counted.get(key, 0) - counters_before.get(key, 0)

        origin = f"http://{alive}"
        assert delta(metrics.series("tether_cluster_requests_total",
                                    cluster="metrics-test")) == 20
        assert delta(metrics.series("tether_client_requests_total", origin=origin)) >= 20
        assert delta(metrics.series("tether_client_connections_opened_total",
                                    origin=origin)) <= 1
        gauges = metrics.PROCESS.gauges()
        assert gauges[metrics.series("tether_cluster_providers", cluster="metrics-test",
                                     state="alive")] == 1
        assert gauges[metrics.series("tether_client_connections", origin=origin,
                                     state="idle")] == 1
        status = metrics.PROCESS.status()
        mine = [c for c in status["clusters"] if c["service"] == "metrics-test"]
        assert {p["address"]: p["state"] for p in mine[0]["providers"]}[alive] == "alive"


async def test_a_retry_that_cannot_happen_is_not_counted() -> None:
    """A streamed body was consumed by the first attempt: no retry, and none counted
    (nor taken from the retry budget)."""
    import tether
    from tether.client import TransportError

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def body() -> Any:
        yield b"x" * 1000

    servers = [await asyncio.start_server(hang_up, "127.0.0.1", 0) for _ in range(2)]
    addresses = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    try:
        async with tether.Client() as client:
            cluster = client.service("no-replay", providers=addresses, health_path=None)
            await cluster.wait_ready()
            with pytest.raises(TransportError):
                async with cluster.stream("PUT", "/", content=body()):
                    pass
            assert cluster.metrics["retries"] == 0
            assert metrics.PROCESS.counters[
                metrics.series("tether_cluster_retries_total", cluster="no-replay")] == 0
            assert sum(cluster.outstanding.values()) == 0
    finally:
        for server in servers:
            server.close()
