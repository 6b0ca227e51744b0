"""Smoke test of ``bench/failover.py`` at a short size.

Checks the harness (3 registered providers, load through the cluster, SIGKILL and
SIGSTOP injected, both faults detected and evicted, the table, JSON, cleanup), and the
one claim that is not about speed: no request failed. The p99 ratio is printed, not
asserted (it is a measurement of a shared machine).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


@pytest.mark.timeout(120)
def test_bench_failover_short(tmp_path: Path) -> None:
    results = tmp_path / "failover.json"
    options = ["--warmup", "0.5", "--before", "1.5", "--stagger", "0.5", "--after", "1",
               "--heartbeat", "0.5", "--probe-timeout", "0.3", "--backoff", "0.1",
               "--settle-timeout", "30", "--json", str(results)]
    command = [sys.executable, str(ROOT / "bench" / "failover.py"), *options]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=100)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for needle in ("phase", "before", "during", "after", "p99 ms", "SIGKILL", "SIGSTOP",
                   "detected after", "evicted after", "target:"):
        assert needle in done.stdout, output
    data = json.loads(results.read_text())
    assert [p["name"] for p in data["phases"]] == ["before", "during", "after"], output
    assert all(p["requests"] > 0 for p in data["phases"]), output
    for fault in data["faults"]:
        assert fault["detected"] is not None, output
        assert fault["evicted"] is not None or fault["left_registry"] is not None, output
    assert data["failed_total"] == 0, output
    # every provider process is gone (the hung one was continued, then killed); a
    # worker whose supervisor was killed stops on its own, within a bounded time
    for address in data["providers"]:
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, f"{address} still accepts connections"
            time.sleep(0.05)  # polling a condition (refused) with a deadline
