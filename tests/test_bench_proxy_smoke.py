"""Smoke test of ``bench/proxy.py``: tether proxy and nginx, 2 s each (``--quick``).

Checks the harness itself (upstream, both proxies started and stopped, wrk parsing,
the upstream's connection count, the report), not performance: no timing is
asserted. Needs ``wrk`` and nginx (``scripts/system-deps.sh`` installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _nginx() -> str | None:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if os.access(found, os.X_OK) else None


pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
    pytest.mark.skipif(
        _nginx() is None,
        reason="nginx is not installed (scripts/system-deps.sh installs Debian's nginx)",
    ),
]


@pytest.mark.timeout(150)
def test_bench_proxy_quick_prints_both_proxies_and_the_ratio(tmp_path: Path) -> None:
    results = tmp_path / "proxy.json"
    command = [sys.executable, str(ROOT / "bench" / "proxy.py"), "--quick",
               "--json", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    number = r"[\d,]+(?:\.\d+)?"
    for proxy in ("tether", "nginx"):
        row = re.compile(
            rf"^{proxy}(?:\s+{number}){{5}}\s+1/1\s", re.M
        )
        assert row.search(done.stdout), output
    ratio = re.compile(
        r"^tether/nginx\s+req/s\s+\d+\.\d+\s+p99\s+\d+\.\d+\s+CPU per request\s+\d+\.\d+$", re.M
    )
    assert ratio.search(done.stdout), output

    data = json.loads(results.read_text())
    runs = {run["proxy"]: run for run in data["runs"]}
    assert set(runs) == {"tether", "nginx"}, output
    for run in runs.values():
        assert run["error"] is None, output
        assert run["result"]["requests"] > 0, output
        assert run["result"]["non_2xx"] == 0, output
        assert run["proxy_cpu_seconds"] > 0, output
        # Keep-alive to the upstream: far fewer connections than requests.
        assert run["upstream_connections"] is not None, output
        assert run["upstream_connections"] < run["result"]["requests"], output
    # tether's own count of upstream connections matches what the upstream saw (give or
    # take a connection opened for a request cancelled as wrk stopped).
    tether = runs["tether"]
    assert tether["proxy_count"] is not None, output
    assert abs(tether["proxy_count"] - tether["upstream_connections"]) <= 2, output
