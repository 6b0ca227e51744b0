"""HTTP/2 in ``/metrics`` and ``/status``: what a worker did with its streams, counted
by the same series a Prometheus scrape reads (docs/http2.md, docs/metrics.md).

A real ``tether serve`` with an admin port; a raw HTTP/2 client (tests/h2client.py)
opens plain and gRPC streams, resets one, and leaves a connection open: the counters
and the per-worker gauges must say exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.h2client import H2Client
from tests.support import APPS, ServerProcess, server_process
from tests.test_http2_raw import APP, GRPC
from tests.test_metrics import _admin, _scrape, _status, _until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with server_process(APP, "--admin-port", "0", "--no-access-log", "--keep-alive-timeout",
                        "30", cwd=APPS, env={"H2_MARKS": str(tmp_path)}) as running:
        yield running


async def test_streams_by_protocol_resets_and_open_connections(server: ServerProcess) -> None:
    admin = _admin(server)
    with H2Client(server.port) as client:
        for _ in range(3):
            assert client.answer(client.request(b"/scope")).status == 200
        grpc_call = client.request(b"/grpc?s=0&id=m1", method=b"POST", headers=GRPC,
                                   body=b"\x00\x00\x00\x00\x00")
        assert client.answer(grpc_call).trailer(b"grpc-status") == b"0"
        slow = client.request(b"/slow?s=30&id=m2")
        client.rst(slow)

        def counted() -> bool:
            values = _scrape(admin)
            return (values.get('tether_http2_streams_total{protocol="http"}') == 4
                    and values.get('tether_http2_streams_total{protocol="grpc"}') == 1
                    and values.get("tether_http2_resets_received_total") == 1
                    and values.get("tether_http2_connections_opened_total") == 1)

        await _until(counted, 15, "the HTTP/2 counters")

        def open_now() -> bool:
            workers = _status(admin)["workers"]
            return sum(int(w.get("h2_connections", 0)) for w in workers) == 1
        await _until(open_now, 15, "/status to show the open HTTP/2 connection")
        assert _scrape(admin).get("tether_http2_connections") == 1
    # the client closed: no HTTP/2 connection left
    await _until(lambda: _scrape(admin).get("tether_http2_connections") == 0, 15,
                 "the gauge to drop")
