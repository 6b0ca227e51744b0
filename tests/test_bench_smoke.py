"""Smoke test of ``bench/server.py``: every server, the hello app, one second each.

Checks the harness itself (start, readiness, wrk parsing, stop, report), not
performance. Needs ``wrk`` (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]


@pytest.mark.timeout(150)
def test_bench_server_runs_every_server_and_prints_ratios(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    options = ["--duration", "1", "--warmup", "0", "--connections", "8", "--apps", "hello"]
    command = [sys.executable, str(ROOT / "bench" / "server.py"), *options, "--json", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    ratio_line = re.compile(r"^hello\s+tether/uvicorn\s+req/s\s+\d+\.\d+\s+p99\s+\d+\.\d+", re.M)
    assert ratio_line.search(done.stdout), output
    data = json.loads(results.read_text())
    tether_runs = [run for run in data["runs"] if run["server"] == "tether"]
    assert tether_runs, output
    for run in tether_runs:
        assert run["error"] is None, output
        assert run["result"]["requests"] > 0, output
        assert run["result"]["non_2xx"] == 0, output
