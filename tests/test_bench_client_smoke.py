"""Smoke test of ``bench/client.py``: all three clients, 500 requests, one round.

Checks the harness itself (server start, the three clients, connection counting,
report, cleanup), not performance.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


@pytest.mark.timeout(150)
def test_bench_client_runs_every_client_and_prints_ratios(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    command = [
        sys.executable, str(ROOT / "bench" / "client.py"), "--requests", "500", "--rounds", "1",
        "--warmup", "50", "--json", str(results),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for peer in ("aiohttp", "httpx"):
        ratio = re.compile(rf"^tether/{peer}\s+req/s\s+\d+\.\d+x", re.M)
        assert ratio.search(done.stdout), output
    data = json.loads(results.read_text())
    runs = {run["client"]: run for run in data["runs"]}
    assert set(runs) == {"tether", "aiohttp", "httpx"}, output
    for run in runs.values():
        assert run["error"] is None, output
        assert run["non_200"] == 0, output
        assert 1 <= run["connections_server"] <= 32, output
    # tether's own count agrees with the connections the server saw
    assert runs["tether"]["connections_client"] == runs["tether"]["connections_server"], output
