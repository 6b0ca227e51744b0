"""Smoke test of ``bench/websocket.py``: every server, both message sizes, in its
``--quick`` mode (1 s windows, 8 connections).

Checks the harness itself (start, readiness, the echo load and its byte-for-byte
check, stop, ratios, JSON), not performance: tether must complete every run with
round trips counted; a peer's failure is reported, not asserted on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_bench_websocket_runs_every_server_and_prints_ratios(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "websocket.py"), "--quick",
               "--json", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=220)

    output = done.stdout + done.stderr
    for size in ("1 KB", "64 KB"):
        ratio = rf"^\s*{size}\s+tether/uvicorn-sansio\s+\d+\.\d+\s+CPU\s+\d+\.\d+$"
        assert re.search(ratio, done.stdout, re.M), output
        assert re.search(rf"^\s*{size}\s+tether/uvicorn's best \(uvicorn-[\w-]+\)\s+\d+\.\d+",
                         done.stdout, re.M), output
    data = json.loads(results.read_text())
    assert {run["server"] for run in data["runs"]} == {
        "tether", "uvicorn-websockets", "uvicorn-sansio", "uvicorn-wsproto", "hypercorn",
        "granian"}
    tether_runs = [run for run in data["runs"] if run["server"] == "tether"]
    assert sorted(run["size"] for run in tether_runs) == [1024, 65536], output
    for run in tether_runs:
        assert run["error"] is None, output
        assert run["result"]["round_trips"] > 0, output
        assert run["result"]["server_cpu_seconds"] > 0, output
    # exit status 1 means some peer failed: shown in the output, not a harness fault
    assert done.returncode in (0, 1), output
